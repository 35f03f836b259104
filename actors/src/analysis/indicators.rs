//! The catalogue of every indicator the analyzer can raise.
//!
//! Ids and weights live in one table so that they stay stable across releases (clients and the
//! cache key on the id) and so that the verdict can be explained: the score is the sum of these
//! weights. Analyzers name an indicator through [`Ind`], never through a free string, so a typo
//! cannot create an id that the verdict does not know. The per-report description is free text
//! (it says what was actually seen); the catalogue only fixes id, weight and classification.

use crate::report::Indicator;

macro_rules! catalogue {
    ($($variant:ident => ($id:literal, $weight:literal, $class:literal),)*) => {
        /// Every indicator the analyzer can raise.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Ind {
            $($variant,)*
        }

        impl Ind {
            /// All indicators, in catalogue order.
            pub const ALL: &'static [Ind] = &[$(Ind::$variant,)*];

            /// Stable kebab-case id.
            pub fn id(self) -> &'static str {
                match self {
                    $(Ind::$variant => $id,)*
                }
            }

            /// Contribution to the threat score, 0-100.
            pub fn weight(self) -> u8 {
                match self {
                    $(Ind::$variant => $weight,)*
                }
            }

            /// Classification this indicator implies; empty when it implies none on its own.
            pub fn classification(self) -> &'static str {
                match self {
                    $(Ind::$variant => $class,)*
                }
            }
        }
    };
}

catalogue! {
    EicarTestFile => ("eicar-test-file", 100, "test-file:eicar"),
    ZipBomb => ("zip-bomb", 90, "archive:zip-bomb"),
    ArchiveEncryptedEntries => ("archive-encrypted-entries", 15, "archive:encrypted"),
    ArchiveExecutableEntry => ("archive-executable-entry", 15, ""),
    ArchiveDoubleExtension => ("archive-double-extension", 25, "deceptive-file-name"),
    ArchivePathTraversal => ("archive-path-traversal", 20, "archive:path-traversal"),
    ArchiveMalformed => ("archive-malformed", 10, ""),
    ArchiveTruncated => ("archive-analysis-truncated", 0, ""),
    ProcessInjection => ("process-injection", 40, "trojan:injector"),
    KeyloggerApis => ("keylogger-apis", 30, "spyware:keylogger"),
    AntiDebugging => ("anti-debugging", 10, "evasion:anti-debug"),
    Persistence => ("persistence", 20, "persistence"),
    CryptoApis => ("crypto-apis", 10, ""),
    NetworkApis => ("network-apis", 5, ""),
    DownloaderApis => ("downloader-apis", 25, "downloader"),
    ProcessLaunchApis => ("process-launch-apis", 5, ""),
    PackerSectionNames => ("packer-section-names", 25, "packed"),
    HighEntropySection => ("high-entropy-executable-section", 20, "packed"),
    TinyImportTable => ("tiny-import-table", 15, "packed"),
    NoImports => ("no-imports", 10, ""),
    MalformedExecutable => ("malformed-executable", 15, ""),
    PeOverlay => ("pe-overlay", 5, ""),
    PeTimestampZero => ("pe-timestamp-zero", 5, ""),
    PeTimestampFuture => ("pe-timestamp-future", 10, ""),
    PeTimestampImplausible => ("pe-timestamp-implausible", 5, ""),
    PeSigned => ("pe-signed", 0, ""),
    PeUnsigned => ("pe-unsigned", 3, ""),
    PeCompileTime => ("pe-compile-time", 0, ""),
    HighEntropyFile => ("high-entropy-file", 15, ""),
    ObfuscationBase64 => ("obfuscation-base64", 10, "obfuscated-script"),
    ObfuscationFromCharCode => ("obfuscation-fromcharcode", 15, "obfuscated-script"),
    ObfuscationCharCodes => ("obfuscation-char-codes", 10, "obfuscated-script"),
    ObfuscationHexEscapes => ("obfuscation-hex-escapes", 5, "obfuscated-script"),
    ObfuscationUnicodeEscapes => ("obfuscation-unicode-escapes", 5, "obfuscated-script"),
    ObfuscationStringConcat => ("obfuscation-string-concat", 5, "obfuscated-script"),
    ObfuscationStringReversal => ("obfuscation-string-reversal", 15, "obfuscated-script"),
    ObfuscationStringReplace => ("obfuscation-string-replace", 5, "obfuscated-script"),
    ObfuscationFormatString => ("obfuscation-format-string", 10, "obfuscated-script"),
    ObfuscationBacktick => ("obfuscation-backtick", 10, "obfuscated-script"),
    PowershellEncodedCommand => ("powershell-encoded-command", 25, "obfuscated-script"),
    EvalChain => ("eval-chain", 15, "obfuscated-script"),
    DownloadExecute => ("download-execute", 40, "downloader"),
    WscriptShellExec => ("wscript-shell-exec", 15, ""),
    ActiveXObject => ("activex-object", 10, ""),
    AmsiBypass => ("amsi-bypass", 40, "evasion:amsi-bypass"),
    ExecutionPolicyBypass => ("execution-policy-bypass", 15, ""),
    HiddenWindow => ("hidden-window", 10, ""),
    ShadowCopyDeletion => ("shadow-copy-deletion", 35, "ransomware"),
    ReverseShell => ("reverse-shell", 40, "backdoor:reverse-shell"),
    UrlWithIpHost => ("url-with-ip-host", 15, ""),
    PdfJavaScript => ("pdf-javascript", 25, "pdf:javascript"),
    PdfOpenAction => ("pdf-open-action", 10, ""),
    PdfLaunchAction => ("pdf-launch-action", 35, "pdf:launch"),
    PdfEmbeddedFile => ("pdf-embedded-file", 15, "pdf:embedded-file"),
    PdfNameObfuscation => ("pdf-name-obfuscation", 15, "pdf:obfuscated"),
    OfficeMacros => ("office-macros", 30, "office:macros"),
    OfficeAutoExec => ("office-auto-exec", 20, "office:macros"),
}

impl Ind {
    /// An indicator with this catalogue entry's id and weight and a description of what was seen.
    pub fn with(self, description: impl Into<String>) -> Indicator {
        Indicator {
            id: self.id().to_string(),
            description: description.into(),
            weight: self.weight(),
        }
    }

    /// The catalogue entry for an id, if the id is ours.
    pub fn from_id(id: &str) -> Option<Ind> {
        Ind::ALL.iter().copied().find(|i| i.id() == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_are_unique_kebab_case_and_weights_bounded() {
        let mut seen = HashSet::new();
        for ind in Ind::ALL {
            let id = ind.id();
            assert!(seen.insert(id), "duplicate id {id}");
            assert!(!id.is_empty() && !id.starts_with('-') && !id.ends_with('-'), "{id}");
            assert!(id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
            assert!(ind.weight() <= 100);
            assert_eq!(Ind::from_id(id), Some(*ind));
        }
    }

    #[test]
    fn with_carries_catalogue_weight() {
        let i = Ind::ZipBomb.with("declared 1 TiB");
        assert_eq!(i.id, "zip-bomb");
        assert_eq!(i.weight, 90);
        assert_eq!(i.description, "declared 1 TiB");
        assert_eq!(Ind::from_id("no-such-id"), None);
    }
}
