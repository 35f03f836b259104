//! Indicators of compromise: URLs, IPv4 addresses, domains, e-mail addresses, registry keys.
//!
//! Regexes find candidates; code then rejects the usual false positives, because binaries and
//! scripts are full of dotted names that are not hosts: version numbers (`6.1.0.0`), file names
//! (`kernel32.dll`, `setup.py`) and code (`this.app`, `System.Net.WebClient`). Domains must end
//! in a known TLD (any two letters, or a listed generic TLD) that is not also a file extension,
//! and may not look like camelCase code. Results are deduplicated, sorted and capped per kind.

use std::collections::BTreeSet;
use std::sync::LazyLock;

use regex::Regex;

use crate::report::Iocs;

fn re(pattern: &str) -> Option<Regex> {
    super::text::regex(pattern)
}

static URL: LazyLock<Option<Regex>> =
    LazyLock::new(|| re(r#"(?i)\b(?:https?|ftp)://[^\s"'<>`\\{}|^]{3,}"#));
static IPV4: LazyLock<Option<Regex>> = LazyLock::new(|| {
    let o = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])";
    re(&format!(r"\b{o}\.{o}\.{o}\.{o}\b"))
});
static DOMAIN: LazyLock<Option<Regex>> =
    LazyLock::new(|| re(r"(?i)\b(?:[a-z0-9][a-z0-9-]*\.)+[a-z][a-z0-9-]{1,23}\b"));
static EMAIL: LazyLock<Option<Regex>> =
    LazyLock::new(|| re(r"(?i)\b[a-z0-9][a-z0-9._%+-]*@(?:[a-z0-9][a-z0-9-]*\.)+[a-z]{2,24}\b"));
static REGISTRY: LazyLock<Option<Regex>> = LazyLock::new(|| {
    re(concat!(
        r#"(?i)\b(?:HKEY_LOCAL_MACHINE|HKEY_CURRENT_USER|HKEY_CLASSES_ROOT|HKEY_USERS|"#,
        r#"HKEY_CURRENT_CONFIG|HKLM|HKCU|HKCR|HKU):?\\[^\s"'<>|*?]+(?: [A-Za-z][^\s"'<>|"#,
        r#"*?]*)*"#,
    ))
});

/// Country-code TLDs (ISO 3166-1 alpha-2 plus `uk`, `eu`, `su`, `ac`), space separated.
const COUNTRY_TLDS: &str = "\
    ac ad ae af ag ai al am ao aq ar as at au aw ax az ba bb bd be bf bg bh bi bj bm bn bo br \
    bs bt bw by bz ca cc cd cf cg ch ci ck cl cm cn co cr cu cv cw cx cy cz de dj dk dm do dz \
    ec ee eg er es et eu fi fj fk fm fo fr ga gd ge gf gg gh gi gl gm gn gp gq gr gs gt gu gw \
    gy hk hm hn hr ht hu id ie il im in io iq ir is it je jm jo jp ke kg kh ki km kn kp kr kw \
    ky kz la lb lc li lk lr ls lt lu lv ly ma mc md me mg mh mk ml mm mn mo mp mq mr ms mt mu \
    mv mw mx my mz na nc ne nf ng ni nl no np nr nu nz om pa pe pf pg ph pk pl pm pn pr ps pt \
    pw py qa re ro rs ru rw sa sb sc sd se sg sh si sk sl sm sn so sr ss st su sv sx sy sz tc \
    td tf tg th tj tk tl tm tn to tr tt tv tw tz ua ug uk us uy uz va vc ve vg vi vn vu wf ws \
    ye yt za zm zw";

/// Generic TLDs accepted besides country codes.
const GENERIC_TLDS: &[&str] = &[
    "com",
    "net",
    "org",
    "info",
    "biz",
    "edu",
    "gov",
    "mil",
    "int",
    "arpa",
    "onion",
    "xyz",
    "top",
    "online",
    "site",
    "club",
    "shop",
    "store",
    "dev",
    "tech",
    "live",
    "life",
    "cloud",
    "space",
    "website",
    "icu",
    "cyou",
    "buzz",
    "fun",
    "monster",
    "click",
    "work",
    "today",
    "world",
    "digital",
    "network",
    "host",
    "press",
    "news",
    "blog",
    "mobi",
    "tel",
    "asia",
    "jobs",
    "travel",
    "museum",
    "aero",
    "coop",
    "bid",
    "loan",
    "racing",
    "review",
    "stream",
    "trade",
    "party",
    "science",
    "men",
    "accountant",
    "cricket",
    "faith",
    "webcam",
    "lol",
    "wang",
    "ltd",
    "group",
    "company",
    "services",
    "support",
    "solutions",
    "agency",
    "center",
    "systems",
    "global",
    "media",
    "vip",
    "fit",
    "kim",
    "ink",
    "best",
    "bond",
    "sbs",
    "cfd",
    "quest",
    "rocks",
    "ninja",
    "guru",
    "land",
    "finance",
    "money",
    "bank",
    "trading",
    "market",
    "cash",
    "casino",
    "bet",
    "games",
    "software",
    "social",
    "gdn",
    "uno",
    "xin",
    "ren",
];

/// File extensions that are never TLDs here (`a.js`, `kernel32.dll`, `x.tar.gz`).
const FILE_EXTENSIONS: &[&str] = &[
    "js", "cs", "db", "gz", "rb", "ko", "ts", "vb", "hh", "el", "go", "jar", "exe", "dll", "sys",
    "zip", "mov", "bat", "cmd", "app", "bin", "dat", "log", "tmp", "ini", "cfg", "xml", "json",
    "txt", "pdf", "doc", "docx", "xls", "xlsx", "ppt", "png", "gif", "jpg", "jpeg", "htm", "html",
    "php", "asp", "aspx", "jsp", "css", "vbs", "ps1", "lnk", "scr", "cpl", "ocx", "msi", "hta",
    "wsf", "jse", "tar", "rar", "cab", "iso", "img", "run", "pro", "one", "art", "page", "link",
    "name", "date", "download", "win", "zone", "tools", "cat", "mom", "bar", "rest",
];

/// Country codes that are also common file extensions: a host only with three or more labels
/// and a wordy second-level label (`www.evil.pl` yes; `setup.py`, `lib.rs`, `gpg.0.sh` no).
const AMBIGUOUS_CC: &[&str] =
    &["pl", "cc", "rs", "md", "sh", "so", "mo", "ps", "py", "ml", "pm", "mk", "pe", "cr"];

/// Code words that precede a dot in programs but never start a real host name.
const CODE_WORDS: &[&str] = &[
    "this", "self", "window", "document", "console", "module", "exports", "process", "math",
    "json", "string", "object", "array", "system", "os", "sys", "re", "e", "x", "i", "j", "obj",
    "args", "event", "err", "res", "req", "response", "request", "ctx", "app", "config",
];

fn tld_ok(tld: &str) -> bool {
    let t = tld.to_ascii_lowercase();
    if !t.chars().all(|c| c.is_ascii_lowercase()) || FILE_EXTENSIONS.contains(&t.as_str()) {
        return false;
    }
    if t.len() == 2 {
        return COUNTRY_TLDS.split(' ').any(|c| c == t);
    }
    GENERIC_TLDS.contains(&t.as_str())
}

/// True for `a.b.tld` strings that are plausibly host names.
pub fn is_domain(candidate: &str) -> bool {
    let labels: Vec<&str> = candidate.split('.').collect();
    let (Some(tld), Some(first)) = (labels.last(), labels.first()) else {
        return false;
    };
    // Label syntax: 1-63 characters, no hyphen at either end (the regex cannot count cheaply).
    let bad_label =
        |l: &&str| l.is_empty() || l.len() > 63 || l.starts_with('-') || l.ends_with('-');
    if candidate.len() > 253 || labels.iter().any(bad_label) {
        return false;
    }
    let code_word = CODE_WORDS.contains(&first.to_ascii_lowercase().as_str());
    if labels.len() < 2 || !tld_ok(tld) || code_word {
        return false;
    }
    if AMBIGUOUS_CC.contains(&tld.to_ascii_lowercase().as_str()) {
        // `lib.rs`, `setup.py`, `gpg.0.sh`: need a third label and a wordy second one.
        let sld = labels[labels.len() - 2];
        if labels.len() < 3 || sld.len() < 2 || !sld.chars().any(|c| c.is_ascii_alphabetic()) {
            return false;
        }
    }
    // camelCase inside a label (`WebClient`, `getElementById`) is code, not a host.
    !labels.iter().any(|l| {
        l.as_bytes().windows(2).any(|w| w[0].is_ascii_lowercase() && w[1].is_ascii_uppercase())
    })
}

fn ip_ok(text: &str, start: usize, end: usize, ip: &str) -> bool {
    let before = text[..start].chars().next_back();
    let after: Vec<char> = text[end..].chars().take(2).collect();
    if matches!(before, Some(c) if c == '.' || c.is_ascii_alphanumeric()) {
        return false; // part of a longer dotted run or `v1.2.3.4`
    }
    if after.first() == Some(&'.') && after.get(1).is_some_and(char::is_ascii_digit) {
        return false; // 1.2.3.4.5 is a version, not an address
    }
    let octets: Vec<u8> = ip.split('.').filter_map(|o| o.parse().ok()).collect();
    match octets.as_slice() {
        [0, ..] | [255, 255, 255, 255] => false,
        // Networks and version-like quads (1.0.0.0, 6.1.0.0) are not addresses of interest.
        [_, _, 0, 0] => false,
        [_, _, _, _] => true,
        _ => false,
    }
}

fn trim_url(url: &str) -> &str {
    url.trim_end_matches(['.', ',', ';', ':', ')', '!', '?', '\'', '"', ']'])
}

/// IOCs found in `text` (each list sorted, deduplicated, at most `max` entries) and the byte
/// offsets at which any of them was found.
pub fn extract(text: &str, max: usize) -> (Iocs, Vec<usize>) {
    let mut hits = Vec::new();
    let mut urls = BTreeSet::new();
    let mut ips = BTreeSet::new();
    let mut domains = BTreeSet::new();
    let mut emails = BTreeSet::new();
    let mut keys = BTreeSet::new();
    // Bounds the work on pathological input: beyond this many matches per kind, stop looking.
    let scan_cap = max.saturating_mul(50).max(1000);
    if let Some(re) = URL.as_ref() {
        for m in re.find_iter(text).take(scan_cap) {
            let url = super::text::clip(trim_url(m.as_str()), 2048);
            if url.len() > "http://".len() + 2 {
                urls.insert(url.to_string());
                hits.push(m.start());
            }
        }
    }
    if let Some(re) = IPV4.as_ref() {
        for m in re.find_iter(text).take(scan_cap) {
            if ip_ok(text, m.start(), m.end(), m.as_str()) {
                ips.insert(m.as_str().to_string());
                hits.push(m.start());
            }
        }
    }
    if let Some(re) = EMAIL.as_ref() {
        for m in re.find_iter(text).take(scan_cap) {
            let (local, domain) = m.as_str().rsplit_once('@').unwrap_or(("", ""));
            if local.len() <= 64 && is_domain(domain) {
                emails.insert(m.as_str().to_ascii_lowercase());
                hits.push(m.start());
            }
        }
    }
    if let Some(re) = DOMAIN.as_ref() {
        for m in re.find_iter(text).take(scan_cap) {
            let prev = text[..m.start()].chars().next_back();
            // `@host` is already an e-mail; `\host` or `/path.ext` is a path segment.
            let in_path = matches!(prev, Some('\\' | '_' | '-' | '.'));
            if !in_path && is_domain(m.as_str()) {
                domains.insert(m.as_str().to_ascii_lowercase());
                hits.push(m.start());
            }
        }
    }
    if let Some(re) = REGISTRY.as_ref() {
        for m in re.find_iter(text).take(scan_cap) {
            let key = m.as_str().trim_end_matches(['.', ',', ';', ')', '\\']);
            keys.insert(super::text::clip(key, 512).to_string());
            hits.push(m.start());
        }
    }
    let cap = |s: BTreeSet<String>| s.into_iter().take(max).collect::<Vec<_>>();
    let iocs = Iocs {
        urls: cap(urls),
        ips: cap(ips),
        domains: cap(domains),
        emails: cap(emails),
        registry_keys: cap(keys),
    };
    (iocs, hits)
}

/// True when the URL's host is a literal IPv4 address (a classic sign of throwaway infra).
pub fn url_has_ip_host(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host_port = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = host_port.rsplit('@').next().unwrap_or("").split(':').next().unwrap_or("");
    let parts: Vec<&str> = host.split('.').collect();
    parts.len() == 4 && parts.iter().all(|p| !p.is_empty() && p.parse::<u8>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_each_kind() {
        let text = "get http://evil.example.com/a.exe, then mail bob@phish.ru; \
                    beacon 45.33.12.7 via cdn.badhost.xyz \
                    reg HKCU\\Software\\Microsoft\\Windows\\CurrentVersion\\Run /v x";
        let (iocs, hits) = extract(text, 100);
        assert_eq!(iocs.urls, ["http://evil.example.com/a.exe"]);
        assert_eq!(iocs.ips, ["45.33.12.7"]);
        assert_eq!(iocs.emails, ["bob@phish.ru"]);
        assert!(iocs.domains.contains(&"evil.example.com".to_string()));
        assert!(iocs.domains.contains(&"cdn.badhost.xyz".to_string()));
        assert_eq!(iocs.registry_keys, ["HKCU\\Software\\Microsoft\\Windows\\CurrentVersion\\Run"]);
        assert!(hits.len() >= 6);
    }

    #[test]
    fn rejects_false_positives() {
        let text = "kernel32.dll foo.exe a.js setup.py version 1.0.0.0 and 6.1.7601.17514 \
                    System.Net.WebClient this.app document.write 999.1.1.1 v1.2.3.4 x@2x.png \
                    key.fd gpg.0.sh .data.rel.ro jquery.min.js archive.tar.gz";
        let (iocs, _) = extract(text, 100);
        assert!(iocs.domains.is_empty(), "{:?}", iocs.domains);
        assert!(iocs.ips.is_empty(), "{:?}", iocs.ips);
        assert!(iocs.emails.is_empty(), "{:?}", iocs.emails);
    }

    #[test]
    fn sorted_deduped_and_capped() {
        let text = "http://b.com/ http://a.com/ http://b.com/ http://c.com/";
        let (iocs, _) = extract(text, 2);
        assert_eq!(iocs.urls, ["http://a.com/", "http://b.com/"]);
    }

    #[test]
    fn registry_keys_with_spaces_and_powershell_drive() {
        let text = r"HKLM:\Software\Microsoft\Windows NT\CurrentVersion\Winlogon /f";
        let (iocs, _) = extract(text, 10);
        assert_eq!(
            iocs.registry_keys,
            [r"HKLM:\Software\Microsoft\Windows NT\CurrentVersion\Winlogon"]
        );
    }

    #[test]
    fn ip_hosts() {
        assert!(url_has_ip_host("http://10.1.2.3:8080/x"));
        assert!(!url_has_ip_host("https://example.com/1.2.3.4"));
    }
}
