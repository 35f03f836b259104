//! PDF action markers: JavaScript, automatic actions, Launch, embedded files.
//!
//! PDF names may be written with `#xx` hex escapes (`/J#61vaScript`), a trick to slip past naive
//! string matching, so every name is decoded before comparison and an escaped match is itself an
//! indicator. Limits stated plainly: only the scanned prefix is read, and names inside compressed
//! object streams (`/ObjStm`, PDF 1.5+) are not inflated, so markers hidden there are missed.

use std::collections::BTreeSet;
use std::sync::LazyLock;

use regex::bytes::Regex;

use super::indicators::Ind;
use crate::report::Indicator;

static NAME: LazyLock<Option<Regex>> = LazyLock::new(|| Regex::new(r"/[A-Za-z0-9#]{2,64}").ok());

/// Decodes `#xx` escapes in a PDF name (without the leading slash).
fn decode_name(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'#' && i + 2 < raw.len() {
            let hex = std::str::from_utf8(&raw[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(raw[i]);
        i += 1;
    }
    out
}

fn marker(name: &[u8]) -> Option<Ind> {
    Some(match name {
        b"JavaScript" | b"JS" => Ind::PdfJavaScript,
        b"OpenAction" | b"AA" => Ind::PdfOpenAction,
        b"Launch" => Ind::PdfLaunchAction,
        b"EmbeddedFile" | b"EmbeddedFiles" => Ind::PdfEmbeddedFile,
        _ => return None,
    })
}

/// Indicators for the action markers in the first `scan` bytes of a PDF.
pub fn indicators(data: &[u8], scan: usize) -> Vec<Indicator> {
    let Some(re) = NAME.as_ref() else {
        return Vec::new();
    };
    let data = &data[..data.len().min(scan)];
    let mut seen: BTreeSet<(&'static str, String)> = BTreeSet::new();
    let mut escaped: BTreeSet<String> = BTreeSet::new();
    for m in re.find_iter(data).take(1_000_000) {
        let raw = &m.as_bytes()[1..];
        let decoded = if raw.contains(&b'#') { decode_name(raw) } else { raw.to_vec() };
        if let Some(ind) = marker(&decoded) {
            let name = String::from_utf8_lossy(&decoded).into_owned();
            if raw.contains(&b'#') {
                escaped.insert(format!("/{}", String::from_utf8_lossy(raw)));
            }
            seen.insert((ind.id(), name));
        }
    }
    let mut out = Vec::new();
    for ind in [Ind::PdfJavaScript, Ind::PdfOpenAction, Ind::PdfLaunchAction, Ind::PdfEmbeddedFile]
    {
        let names: Vec<String> =
            seen.iter().filter(|(id, _)| *id == ind.id()).map(|(_, n)| format!("/{n}")).collect();
        if names.is_empty() {
            continue;
        }
        let what = match ind {
            Ind::PdfJavaScript => "Contains JavaScript",
            Ind::PdfOpenAction => "Runs an action automatically when opened",
            Ind::PdfLaunchAction => "Can launch external programs",
            _ => "Carries embedded files",
        };
        out.push(ind.with(format!("{what} ({})", names.join(", "))));
    }
    if !escaped.is_empty() {
        let list: Vec<String> = escaped.into_iter().take(10).collect();
        out.push(Ind::PdfNameObfuscation.with(format!(
            "Hex-escaped action names hide from simple scanners: {}",
            list.join(", ")
        )));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::testdata;

    fn ids(data: &[u8]) -> Vec<String> {
        indicators(data, usize::MAX).into_iter().map(|i| i.id).collect()
    }

    #[test]
    fn markers_found() {
        assert_eq!(
            ids(&testdata::malicious_pdf()),
            ["pdf-javascript", "pdf-open-action", "pdf-embedded-file"]
        );
        assert_eq!(ids(b"%PDF-1.4\n<< /S /Launch /F (cmd.exe) >>"), ["pdf-launch-action"]);
    }

    #[test]
    fn hex_escaped_names_are_decoded_and_flagged() {
        assert_eq!(
            ids(b"%PDF-1.4 << /S /J#61vaScript /JS (x) >>"),
            ["pdf-javascript", "pdf-name-obfuscation"]
        );
        assert_eq!(decode_name(b"J#61va#5"), b"Java#5");
    }

    #[test]
    fn plain_pdf_is_quiet() {
        assert!(ids(b"%PDF-1.4\n1 0 obj << /Type /Page /Contents 2 0 R >> endobj").is_empty());
    }
}
