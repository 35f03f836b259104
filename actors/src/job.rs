//! Jobs and samples: what a client asks for and what it gets back.
//!
//! A [`JobSpec`] is immutable once admitted. The mutable side, a [`JobRecord`], lives in the
//! [`crate::store::JobStore`] so any reader (the HTTP status route, later a Redis-backed node)
//! sees the same life cycle: pending, processing, then completed or failed.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::analysis::Depth;
use crate::bulkhead::Priority;
use crate::report::AnalysisReport;

/// Opaque job identifier: a ULID, so ids sort by submission time and carry no guessable counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(ulid::Ulid);

/// Ids made in the same millisecond still sort in the order they were made.
static ID_GENERATOR: std::sync::Mutex<ulid::Generator> =
    std::sync::Mutex::new(ulid::Generator::new());

impl JobId {
    pub fn new() -> Self {
        let mut generator = ID_GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
        // The generator only fails when 2^80 ids were made in one millisecond.
        JobId(generator.generate().unwrap_or_else(|_| ulid::Ulid::new()))
    }
}

impl Default for JobId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for JobId {
    type Err = ulid::DecodeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ulid::Ulid::from_string(s).map(JobId)
    }
}

/// What a client wants done with a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AnalysisType {
    /// Static analysis only; never calls a provider.
    Static,
    Deobfuscate,
    Vulnerabilities,
    /// Static, sandbox (when enabled) and every AI analysis.
    #[default]
    Full,
}

impl AnalysisType {
    pub fn as_str(self) -> &'static str {
        match self {
            AnalysisType::Static => "static",
            AnalysisType::Deobfuscate => "deobfuscate",
            AnalysisType::Vulnerabilities => "vulnerabilities",
            AnalysisType::Full => "full",
        }
    }

    /// Whether this analysis asks the AI stage for anything.
    pub fn wants_ai(self) -> bool {
        !matches!(self, AnalysisType::Static)
    }
}

impl FromStr for AnalysisType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "static" => Ok(AnalysisType::Static),
            "deobfuscate" => Ok(AnalysisType::Deobfuscate),
            "vulnerabilities" => Ok(AnalysisType::Vulnerabilities),
            "full" => Ok(AnalysisType::Full),
            other => Err(format!(
                "unknown analysisType {other:?}: \
                 expected static, deobfuscate, vulnerabilities or full"
            )),
        }
    }
}

impl Depth {
    pub fn as_str(self) -> &'static str {
        match self {
            Depth::Quick => "quick",
            Depth::Standard => "standard",
            Depth::Deep => "deep",
        }
    }
}

impl FromStr for Depth {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "quick" => Ok(Depth::Quick),
            "standard" => Ok(Depth::Standard),
            "deep" => Ok(Depth::Deep),
            other => {
                Err(format!("unknown analysisDepth {other:?}: expected quick, standard or deep"))
            }
        }
    }
}

/// A submitted file. The bytes are shared, never copied, between the stages.
#[derive(Clone)]
pub struct Sample {
    pub file_name: String,
    pub bytes: Arc<[u8]>,
    /// Lowercase hex SHA-256 of `bytes`: the cache key and the single-flight key start here.
    pub sha256: String,
}

impl Sample {
    pub fn new(file_name: impl Into<String>, bytes: impl Into<Arc<[u8]>>) -> Self {
        let bytes = bytes.into();
        let sha256 = hex::encode(Sha256::digest(&bytes));
        Sample { file_name: file_name.into(), bytes, sha256 }
    }
}

impl fmt::Debug for Sample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sample")
            .field("file_name", &self.file_name)
            .field("len", &self.bytes.len())
            .field("sha256", &self.sha256)
            .finish()
    }
}

/// Everything the router needs to run a job.
#[derive(Debug, Clone)]
pub struct JobSpec {
    pub sample: Sample,
    pub analysis_type: AnalysisType,
    pub depth: Depth,
    /// Provider the client prefers; it is tried first, then the flag's priority order.
    pub ai_model: Option<String>,
    /// Free-form sandbox settings passed to the container stage.
    pub container_config: Option<serde_json::Value>,
    /// Lane in every bulkhead the job passes through.
    pub priority: Priority,
    /// Chaos testing (`X-Simulate-Failure: primary` while `chaos_testing` is on): the first
    /// provider tried fails without a call, so the failover path runs.
    pub simulate_failure: bool,
}

impl JobSpec {
    pub fn new(sample: Sample) -> Self {
        JobSpec {
            sample,
            analysis_type: AnalysisType::default(),
            depth: Depth::default(),
            ai_model: None,
            container_config: None,
            priority: Priority::Normal,
            simulate_failure: false,
        }
    }

    /// Identical work: jobs with the same work key share one run and one cache entry.
    pub fn work_key(&self) -> WorkKey {
        WorkKey {
            sha256: self.sample.sha256.clone(),
            analysis_type: self.analysis_type,
            depth: self.depth,
            ai_model: self.ai_model.clone(),
            simulate_failure: self.simulate_failure,
        }
    }
}

/// The identity of a piece of work, for single-flight and the result cache.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WorkKey {
    pub sha256: String,
    pub analysis_type: AnalysisType,
    pub depth: Depth,
    pub ai_model: Option<String>,
    /// A chaos job neither joins nor is served by ordinary work: it exists to run failover.
    pub simulate_failure: bool,
}

impl fmt::Display for WorkKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.sha256, self.analysis_type.as_str(), self.depth.as_str())?;
        if let Some(model) = &self.ai_model {
            write!(f, ":{model}")?;
        }
        if self.simulate_failure {
            write!(f, ":simulated-failure")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Pending,
    Processing,
    Completed,
    Failed,
}

impl JobStatus {
    pub fn is_finished(self) -> bool {
        matches!(self, JobStatus::Completed | JobStatus::Failed)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Processing => "processing",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
        }
    }
}

/// Why a job failed, in words a client can act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobFailure {
    /// Stable machine-readable code, e.g. `deadline_exceeded`, `cancelled`, `stage_failed`.
    pub code: String,
    pub message: String,
}

/// The state of one job as clients see it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobRecord {
    pub analysis_id: JobId,
    pub status: JobStatus,
    pub from_cache: bool,
    /// 0-100, moved forward by each finished stage.
    pub progress: u8,
    /// Name of the stage running now, or the last one.
    pub stage: Option<String>,
    pub results: Option<Arc<AnalysisReport>>,
    pub error: Option<JobFailure>,
    pub file_name: String,
    pub sha256: String,
    pub analysis_type: AnalysisType,
    #[serde(with = "humantime_serde")]
    pub submitted_at: SystemTime,
    #[serde(with = "humantime_serde")]
    pub finished_at: Option<SystemTime>,
}

impl JobRecord {
    pub fn pending(id: JobId, spec: &JobSpec) -> Self {
        JobRecord {
            analysis_id: id,
            status: JobStatus::Pending,
            from_cache: false,
            progress: 0,
            stage: None,
            results: None,
            error: None,
            file_name: spec.sample.file_name.clone(),
            sha256: spec.sample.sha256.clone(),
            analysis_type: spec.analysis_type,
            submitted_at: SystemTime::now(),
            finished_at: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_key_separates_type_depth_and_model() {
        let sample = Sample::new("a.js", b"alert(1)".to_vec());
        let mut a = JobSpec::new(sample.clone());
        let b = JobSpec::new(sample);
        assert_eq!(a.work_key(), b.work_key());
        a.depth = Depth::Deep;
        assert_ne!(a.work_key(), b.work_key());
        a.depth = Depth::Standard;
        a.analysis_type = AnalysisType::Static;
        assert_ne!(a.work_key(), b.work_key());
    }

    #[test]
    fn sample_hash_is_sha256_of_bytes() {
        let sample = Sample::new("x", b"abc".to_vec());
        assert_eq!(
            sample.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn parse_rejects_unknown_values_with_the_allowed_ones() {
        assert_eq!("FULL".parse::<AnalysisType>(), Ok(AnalysisType::Full));
        let err = "everything".parse::<AnalysisType>().unwrap_err();
        assert!(err.contains("static, deobfuscate"), "{err}");
        assert!("medium".parse::<Depth>().is_err());
        assert!("not-a-ulid".parse::<JobId>().is_err());
    }
}
