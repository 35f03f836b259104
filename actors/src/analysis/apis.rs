//! Suspicious Windows APIs and the combinations that suggest a capability.
//!
//! Single imports say little (almost every program can create a process), so indicators fire on
//! combinations that together implement a technique: allocate + write + run in another process is
//! injection, a keyboard hook plus key-state polling is a keylogger. API names are taken from the
//! import table and also from strings, because packed or evasive code resolves its APIs at run
//! time with `GetProcAddress` and then the names exist only as strings. Names are compared
//! case-insensitively without the `A`/`W` suffix.

use std::collections::BTreeSet;

use super::indicators::Ind;
use crate::report::Indicator;

const ALLOC_REMOTE: &[&str] =
    &["VirtualAllocEx", "NtAllocateVirtualMemory", "ZwAllocateVirtualMemory"];
const WRITE_REMOTE: &[&str] =
    &["WriteProcessMemory", "NtWriteVirtualMemory", "ZwWriteVirtualMemory"];
const EXEC_REMOTE: &[&str] = &[
    "CreateRemoteThread",
    "CreateRemoteThreadEx",
    "NtCreateThreadEx",
    "ZwCreateThreadEx",
    "RtlCreateUserThread",
    "QueueUserAPC",
    "NtQueueApcThread",
    "SetThreadContext",
];
const UNMAP: &[&str] = &["NtUnmapViewOfSection", "ZwUnmapViewOfSection"];
const HOOK: &[&str] = &["SetWindowsHookEx"];
const KEY_STATE: &[&str] = &["GetAsyncKeyState", "GetKeyState", "GetKeyboardState"];
/// `IsDebuggerPresent` alone is imported by the MSVC runtime, so it needs company.
const ANTI_DEBUG_WEAK: &[&str] = &["IsDebuggerPresent", "OutputDebugString"];
const ANTI_DEBUG_STRONG: &[&str] = &[
    "CheckRemoteDebuggerPresent",
    "NtQueryInformationProcess",
    "ZwQueryInformationProcess",
    "NtSetInformationThread",
];
pub const REG_WRITE: &[&str] =
    &["RegSetValueEx", "RegSetValue", "RegSetKeyValue", "RegCreateKeyEx", "RegCreateKey"];
pub const SERVICE: &[&str] = &["CreateService", "ChangeServiceConfig"];
const CRYPTO: &[&str] = &[
    "CryptEncrypt",
    "CryptDecrypt",
    "CryptGenKey",
    "CryptImportKey",
    "CryptDeriveKey",
    "BCryptEncrypt",
    "BCryptDecrypt",
    "BCryptGenerateSymmetricKey",
    "BCryptImportKey",
    "BCryptOpenAlgorithmProvider",
];
const NETWORK: &[&str] = &[
    "InternetOpen",
    "InternetOpenUrl",
    "InternetConnect",
    "InternetReadFile",
    "HttpOpenRequest",
    "HttpSendRequest",
    "WSAStartup",
    "WinHttpOpen",
    "WinHttpConnect",
    "WinHttpSendRequest",
    "WinHttpReadData",
];
const DOWNLOAD: &[&str] = &["URLDownloadToFile", "URLDownloadToCacheFile"];
const LAUNCH: &[&str] = &["ShellExecute", "ShellExecuteEx", "WinExec"];
const CREATE_PROCESS: &[&str] = &["CreateProcess", "CreateProcessAsUser"];
/// Dynamic API resolution; with a tiny import table this is the classic packer stub.
pub const DYNAMIC: &[&str] =
    &["LoadLibrary", "LoadLibraryEx", "GetProcAddress", "LdrLoadDll", "LdrGetProcedureAddress"];

const GROUPS: &[&[&str]] = &[
    ALLOC_REMOTE,
    WRITE_REMOTE,
    EXEC_REMOTE,
    UNMAP,
    HOOK,
    KEY_STATE,
    ANTI_DEBUG_WEAK,
    ANTI_DEBUG_STRONG,
    REG_WRITE,
    SERVICE,
    CRYPTO,
    NETWORK,
    DOWNLOAD,
    LAUNCH,
    CREATE_PROCESS,
    DYNAMIC,
];

/// Every API name in the catalogue (without `A`/`W` suffix).
pub static ALL: std::sync::LazyLock<Vec<&'static str>> = std::sync::LazyLock::new(|| {
    let mut all: Vec<&str> = GROUPS.iter().flat_map(|g| g.iter().copied()).collect();
    // Longest first so that a regex alternation prefers `CreateRemoteThreadEx` to its prefix.
    all.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
    all.dedup();
    all
});

/// API names as whole words (optionally with `A`/`W`), case-sensitive as Windows spells them.
static WORDS: std::sync::LazyLock<Option<regex::Regex>> =
    std::sync::LazyLock::new(|| super::text::regex(&format!(r"\b(?:{})[AW]?\b", ALL.join("|"))));

/// Catalogue API names mentioned in `text` (at most `max` mentions are read).
pub fn words_in(text: &str, max: usize) -> impl Iterator<Item = &str> {
    WORDS.as_ref().into_iter().flat_map(move |re| re.find_iter(text).take(max).map(|m| m.as_str()))
}

/// The catalogue name for an API name as found (any case, with or without `A`/`W`, with a
/// Mach-O/ELF leading underscore or a `dll!` prefix), if it is one of ours.
pub fn canonical(name: &str) -> Option<&'static str> {
    let bare = name.rsplit('!').next().unwrap_or(name).trim_start_matches('_');
    let lookup = |n: &str| ALL.iter().copied().find(|c| c.eq_ignore_ascii_case(n));
    lookup(bare).or_else(|| {
        let stem = bare.strip_suffix(['A', 'W'])?;
        lookup(stem)
    })
}

/// Catalogue APIs named by imports or by `words` (API-like tokens found in strings).
pub fn found<'a>(
    imports: &'a [String],
    words: impl Iterator<Item = &'a str>,
) -> BTreeSet<&'static str> {
    imports.iter().map(String::as_str).chain(words).filter_map(canonical).collect()
}

fn any_of(found: &BTreeSet<&'static str>, group: &[&str]) -> Vec<&'static str> {
    found.iter().copied().filter(|f| group.contains(f)).collect()
}

fn listed(names: &[&str]) -> String {
    names.join(", ")
}

/// Indicators for the capabilities that the found APIs implement.
pub fn indicators(found: &BTreeSet<&'static str>) -> Vec<Indicator> {
    let mut out = Vec::new();
    let (alloc, write, exec, unmap) = (
        any_of(found, ALLOC_REMOTE),
        any_of(found, WRITE_REMOTE),
        any_of(found, EXEC_REMOTE),
        any_of(found, UNMAP),
    );
    let classic = !alloc.is_empty() && !write.is_empty() && !exec.is_empty();
    let hollowing = !unmap.is_empty() && (!write.is_empty() || exec.contains(&"SetThreadContext"));
    if classic || hollowing {
        let all = [alloc, write, exec, unmap].concat();
        let what = if hollowing { "process hollowing" } else { "remote thread injection" };
        out.push(
            Ind::ProcessInjection
                .with(format!("Code injection into another process ({what}): {}", listed(&all))),
        );
    }
    let (hook, keys) = (any_of(found, HOOK), any_of(found, KEY_STATE));
    if !hook.is_empty() && !keys.is_empty() {
        out.push(Ind::KeyloggerApis.with(format!(
            "Keyboard hook with key-state polling: {}",
            listed(&[hook, keys].concat())
        )));
    }
    let (weak, strong) = (any_of(found, ANTI_DEBUG_WEAK), any_of(found, ANTI_DEBUG_STRONG));
    if !strong.is_empty() || weak.len() >= 2 {
        out.push(
            Ind::AntiDebugging
                .with(format!("Debugger detection: {}", listed(&[strong, weak].concat()))),
        );
    }
    let crypto = any_of(found, CRYPTO);
    if !crypto.is_empty() {
        out.push(Ind::CryptoApis.with(format!("Encryption APIs: {}", listed(&crypto))));
    }
    let (net, download) = (any_of(found, NETWORK), any_of(found, DOWNLOAD));
    let launch = any_of(found, LAUNCH);
    let runs = !launch.is_empty() || !any_of(found, CREATE_PROCESS).is_empty();
    if !download.is_empty() || (!net.is_empty() && runs && net.iter().any(|n| n.contains("Read"))) {
        let mut names = [download, net.clone()].concat();
        names.sort_unstable();
        out.push(
            Ind::DownloaderApis
                .with(format!("Downloads content and can run it: {}", listed(&names))),
        );
    } else if !net.is_empty() {
        out.push(Ind::NetworkApis.with(format!("Network APIs: {}", listed(&net))));
    }
    if !launch.is_empty() {
        out.push(Ind::ProcessLaunchApis.with(format!("Launches programs: {}", listed(&launch))));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(names: &[&str]) -> Vec<String> {
        let imports: Vec<String> = names.iter().map(|n| format!("kernel32.dll!{n}")).collect();
        indicators(&found(&imports, std::iter::empty())).into_iter().map(|i| i.id).collect()
    }

    #[test]
    fn canonical_names() {
        assert_eq!(canonical("kernel32.dll!SetWindowsHookExA"), Some("SetWindowsHookEx"));
        assert_eq!(canonical("_createremotethread"), Some("CreateRemoteThread"));
        assert_eq!(canonical("CreateRemoteThreadEx"), Some("CreateRemoteThreadEx"));
        assert_eq!(canonical("printf"), None);
    }

    #[test]
    fn injection_needs_the_whole_chain() {
        assert_eq!(ids(&["VirtualAllocEx", "WriteProcessMemory"]), Vec::<String>::new());
        let three = ids(&["VirtualAllocEx", "WriteProcessMemory", "CreateRemoteThread"]);
        assert_eq!(three, ["process-injection"]);
        assert_eq!(ids(&["NtUnmapViewOfSection", "WriteProcessMemory"]), ["process-injection"]);
    }

    #[test]
    fn other_capabilities() {
        assert_eq!(ids(&["SetWindowsHookExW", "GetAsyncKeyState"]), ["keylogger-apis"]);
        assert!(ids(&["IsDebuggerPresent"]).is_empty());
        assert_eq!(ids(&["CheckRemoteDebuggerPresent"]), ["anti-debugging"]);
        assert_eq!(ids(&["URLDownloadToFileW"]), ["downloader-apis"]);
        assert_eq!(ids(&["WSAStartup"]), ["network-apis"]);
        assert_eq!(ids(&["BCryptEncrypt"]), ["crypto-apis"]);
        assert_eq!(
            ids(&["InternetOpenUrlA", "InternetReadFile", "WinExec"]),
            ["downloader-apis", "process-launch-apis"]
        );
    }

    #[test]
    fn names_from_strings_count_too() {
        let f = found(&[], ["GetProcAddress", "VirtualAllocEx", "hello"].into_iter());
        assert!(f.contains("GetProcAddress") && f.contains("VirtualAllocEx") && f.len() == 2);
    }
}
