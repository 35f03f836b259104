//! Office documents: VBA macros and the entry points that run them automatically.
//!
//! OOXML files (`.docm`, `.xlsm`) keep macros in a `vbaProject.bin` entry; legacy OLE2 files
//! (`.doc`, `.xls`) keep them in a `_VBA_PROJECT` stream whose name appears as a UTF-16 string in
//! the compound file directory. Auto-run procedure names (`AutoOpen`, `Document_Open`, ...) are
//! searched in the strings and in the VBA project bytes; VBA source is stored compressed, but its
//! identifiers usually survive as literal runs, so this is a cheap check, not a VBA decompiler.

use std::sync::LazyLock;

use regex::Regex;

use super::indicators::Ind;
use crate::report::Indicator;

static AUTO_EXEC: LazyLock<Option<Regex>> = LazyLock::new(|| {
    super::text::regex(concat!(
        r"(?i)\b(?:AutoOpen|Auto_Open|AutoExec|AutoClose|Auto_Close|Document_Open|",
        r"DocumentOpen|Document_Close|Document_New|Workbook_Open|Workbook_Activate|",
        r"Workbook_BeforeClose)\b",
    ))
});

/// Indicators for an Office document given its ZIP entry names (empty for OLE2), its VBA project
/// blobs and the corpus of its strings.
pub fn indicators(entry_names: &[String], vba_blobs: &[Vec<u8>], corpus: &str) -> Vec<Indicator> {
    let mut out = Vec::new();
    let ooxml_vba = entry_names.iter().any(|n| n.to_ascii_lowercase().ends_with("vbaproject.bin"));
    let ole_vba = corpus.contains("_VBA_PROJECT") || corpus.contains("Attribute VB_Name");
    if ooxml_vba || ole_vba {
        let where_ = if ooxml_vba { "a vbaProject.bin part" } else { "a _VBA_PROJECT stream" };
        out.push(Ind::OfficeMacros.with(format!("The document carries VBA macros ({where_})")));
    }
    let Some(re) = AUTO_EXEC.as_ref() else {
        return out;
    };
    let blob_text: Vec<String> =
        vba_blobs.iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect();
    let mut names: Vec<String> = std::iter::once(corpus)
        .chain(blob_text.iter().map(String::as_str))
        .flat_map(|t| re.find_iter(t).take(100).map(|m| m.as_str().to_string()))
        .collect();
    names.sort();
    names.dedup();
    if !names.is_empty() && (ooxml_vba || ole_vba) {
        out.push(
            Ind::OfficeAutoExec
                .with(format!("Macros run automatically on open or close: {}", names.join(", "))),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(names: &[&str], blobs: &[&[u8]], corpus: &str) -> Vec<String> {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let blobs: Vec<Vec<u8>> = blobs.iter().map(|b| b.to_vec()).collect();
        indicators(&names, &blobs, corpus).into_iter().map(|i| i.id).collect()
    }

    #[test]
    fn ooxml_macro_with_auto_open() {
        let got =
            ids(&["[Content_Types].xml", "word/vbaProject.bin"], &[b"..Sub AutoOpen()..."], "");
        assert_eq!(got, ["office-macros", "office-auto-exec"]);
    }

    #[test]
    fn ole_macro_from_strings() {
        assert_eq!(
            ids(&[], &[], "_VBA_PROJECT\nWorkbook_Open\n"),
            ["office-macros", "office-auto-exec"]
        );
    }

    #[test]
    fn no_macros_no_auto_exec() {
        assert!(ids(&["word/document.xml"], &[], "Document_Open in prose").is_empty());
    }
}
