//! The shape of an analysis result, as clients and the cache see it.
//!
//! One [`AnalysisReport`] is assembled per job from the stages' outputs. Field names are
//! camelCase on the wire because the original Athena clients read them that way. Every struct
//! takes `#[serde(default)]` so that JSON written by an older build still decodes.
//!
//! # One shape in every encoding
//!
//! An absent optional field is `null` in JSON, never left out. The Redis tier of the result
//! cache stores reports in bincode, which is positional: a field that is sometimes skipped
//! shifts every field after it, and the report no longer decodes. So no type here may use
//! `skip_serializing_if`, `flatten`, untagged enums or `serde_json::Value`, none of which
//! bincode can read back. Adding, removing or reordering a field changes the bincode layout
//! too: bump [`FORMAT_VERSION`](crate::distributed::cache_tier::FORMAT_VERSION) with it, so
//! entries of the old layout are dropped as misses instead of decoding into the wrong fields.

use serde::{Deserialize, Serialize};

/// How dangerous a sample looks, from the summed indicator weights.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum ThreatLevel {
    #[default]
    Clean,
    Low,
    Medium,
    High,
    Critical,
}

impl ThreatLevel {
    pub const ALL: [ThreatLevel; 5] = [
        ThreatLevel::Clean,
        ThreatLevel::Low,
        ThreatLevel::Medium,
        ThreatLevel::High,
        ThreatLevel::Critical,
    ];

    /// Maps a 0-100 score to a level: below 10 clean, below 30 low, below 60 medium,
    /// below 80 high, else critical.
    pub fn from_score(score: u8) -> Self {
        match score {
            0..=9 => ThreatLevel::Clean,
            10..=29 => ThreatLevel::Low,
            30..=59 => ThreatLevel::Medium,
            60..=79 => ThreatLevel::High,
            _ => ThreatLevel::Critical,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ThreatLevel::Clean => "clean",
            ThreatLevel::Low => "low",
            ThreatLevel::Medium => "medium",
            ThreatLevel::High => "high",
            ThreatLevel::Critical => "critical",
        }
    }
}

/// File type recognised from the content (never from the file name alone).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FileType {
    Pe,
    Elf,
    #[serde(rename = "macho")]
    MachO,
    JavaScript,
    PowerShell,
    VbScript,
    Shell,
    Python,
    Batch,
    Zip,
    Office,
    Pdf,
    #[default]
    Unknown,
}

impl FileType {
    pub const ALL: [FileType; 13] = [
        FileType::Pe,
        FileType::Elf,
        FileType::MachO,
        FileType::JavaScript,
        FileType::PowerShell,
        FileType::VbScript,
        FileType::Shell,
        FileType::Python,
        FileType::Batch,
        FileType::Zip,
        FileType::Office,
        FileType::Pdf,
        FileType::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FileType::Pe => "pe",
            FileType::Elf => "elf",
            FileType::MachO => "macho",
            FileType::JavaScript => "javascript",
            FileType::PowerShell => "powershell",
            FileType::VbScript => "vbscript",
            FileType::Shell => "shell",
            FileType::Python => "python",
            FileType::Batch => "batch",
            FileType::Zip => "zip",
            FileType::Office => "office",
            FileType::Pdf => "pdf",
            FileType::Unknown => "unknown",
        }
    }

    /// Scripts are text the deobfuscator and the AI providers read as code.
    pub fn is_script(self) -> bool {
        matches!(
            self,
            FileType::JavaScript
                | FileType::PowerShell
                | FileType::VbScript
                | FileType::Shell
                | FileType::Python
                | FileType::Batch
        )
    }

    pub fn is_executable(self) -> bool {
        matches!(self, FileType::Pe | FileType::Elf | FileType::MachO)
    }
}

/// One named reason behind a verdict. The verdict is the sum of the weights, capped at 100,
/// so a report can always be explained from its indicators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Indicator {
    /// Stable identifier, e.g. `eicar-test-file`, `packer-section-names`.
    pub id: String,
    pub description: String,
    /// Contribution to `threatScore`, 0-100.
    pub weight: u8,
}

/// Indicators of compromise found in the sample's strings (and deobfuscated text).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
pub struct Iocs {
    pub urls: Vec<String>,
    pub ips: Vec<String>,
    pub domains: Vec<String>,
    pub emails: Vec<String>,
    pub registry_keys: Vec<String>,
}

/// A section of an executable, with its entropy (packed or encrypted code is near 8 bits/byte).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Section {
    pub name: String,
    pub size: u64,
    pub entropy: f64,
    pub executable: bool,
}

/// Facts about the sample that need no judgement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
pub struct StaticFacts {
    pub file_name: String,
    pub file_type: FileType,
    pub size: u64,
    pub md5: String,
    pub sha1: String,
    pub sha256: String,
    /// Shannon entropy of the whole file, bits per byte (0-8).
    pub entropy: f64,
    pub sections: Vec<Section>,
    /// Imported functions as `library!function` (or the bare name where the format has no library).
    pub imports: Vec<String>,
    /// Printable strings worth a researcher's look (bounded in count and length).
    pub strings: Vec<String>,
    /// Target architecture of an executable, e.g. `x86_64`.
    pub architecture: Option<String>,
}

/// What the static stage hands to the router.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
pub struct StaticReport {
    pub facts: StaticFacts,
    pub iocs: Iocs,
    pub indicators: Vec<Indicator>,
    pub classifications: Vec<String>,
    pub recommendations: Vec<String>,
    /// Script text with its obfuscation layers removed, when there were any.
    pub deobfuscated_code: Option<String>,
}

/// A vulnerability an AI provider (or a later analyzer) listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
pub struct Vulnerability {
    pub name: String,
    pub description: String,
    pub severity: String,
    pub cve_id: Option<String>,
    pub metasploit_module: Option<String>,
}

/// How one provider call went, kept in the result so failover is visible.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
pub struct ProviderAttempt {
    pub provider: String,
    /// `success`, `failure`, `rejected` (breaker or bulkhead), `unavailable` (not configured).
    pub outcome: String,
    pub detail: Option<String>,
    pub latency_ms: u64,
}

/// What the sandbox stage reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
pub struct ContainerReport {
    /// `completed`, `skipped` or `failed`.
    pub status: String,
    pub detail: String,
    pub exit_code: Option<i32>,
    pub output: Option<String>,
}

/// The whole result of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
pub struct AnalysisReport {
    pub threat_level: ThreatLevel,
    pub threat_score: u8,
    pub classifications: Vec<String>,
    pub recommendations: Vec<String>,
    pub indicators: Vec<Indicator>,
    pub iocs: Iocs,
    #[serde(rename = "static")]
    pub static_facts: StaticFacts,
    pub providers: Vec<ProviderAttempt>,
    pub deobfuscated_code: Option<String>,
    pub analysis_report: Option<String>,
    pub vulnerabilities: Vec<Vulnerability>,
    pub container: Option<ContainerReport>,
    /// Whether an AI provider other than the first one tried produced the AI part.
    pub used_fallback: bool,
    /// Why an AI analysis the job asked for is missing, when it is.
    pub ai_error: Option<String>,
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    #[test]
    fn absent_optional_fields_are_null_in_json() {
        let report = AnalysisReport {
            providers: vec![ProviderAttempt::default()],
            vulnerabilities: vec![Vulnerability::default()],
            container: Some(ContainerReport::default()),
            ..AnalysisReport::default()
        };
        let json = serde_json::to_value(&report).unwrap();
        for field in ["aiError", "analysisReport", "deobfuscatedCode"] {
            assert!(json.get(field).is_some_and(Value::is_null), "{field}");
        }
        assert!(json["static"].get("architecture").is_some_and(Value::is_null));
        assert!(json["providers"][0].get("detail").is_some_and(Value::is_null));
        assert!(json["vulnerabilities"][0].get("cveId").is_some_and(Value::is_null));
        assert!(json["container"].get("exitCode").is_some_and(Value::is_null));
        let back: AnalysisReport = serde_json::from_value(json).unwrap();
        assert_eq!(back, report);
    }
}
