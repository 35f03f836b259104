//! The Redis tier of the result cache: reports shared by every node of a fleet.
//!
//! A report one node computed answers the same work on any other node. Entries live at
//! `cache:{work key}` for the cache TTL, stored as one format byte followed by the report in
//! bincode: compact, quick to decode, and with no field names repeated in every entry.
//!
//! # Why a breaker, and what a job sees
//!
//! The cache only saves work, so Redis being away must cost a job nothing more than the lookup
//! it skips. Every command already runs under `redis.command_timeout`, but without a breaker
//! every job would wait out that timeout twice (lookup and write) for as long as Redis is down.
//! A circuit breaker counts the commands that did not reach Redis; once it opens, lookups and
//! writes skip Redis at once and the memory tier keeps serving. After the open period a trial
//! command goes through, and the tier closes again by itself when Redis answers. An error that
//! Redis answered with proves it reachable and is not counted.
//!
//! Nothing here fails a job: an error, a timeout, an open breaker or an entry that does not
//! decode is a miss to the caller, told apart only in the `athena_cache_requests_total` series
//! (`tier="redis"`, `result` one of [`RESULTS`]).
//!
//! # Format
//!
//! The first byte is [`FORMAT_VERSION`]; the rest is `bincode::serde` with the standard
//! configuration. An entry with another version (written by a build with another report
//! layout), or one that does not decode, is deleted and read as a miss. Limits: during a
//! rolling upgrade that changes the version, nodes of the two builds delete each other's
//! entries, which costs recomputing those reports but never serves a wrong one; a report that
//! encodes to more than [`MAX_ENTRY_BYTES`] stays in the memory tier only.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use redis::{RedisError, RedisResult};

use super::conn::is_unreachable;
use super::Redis;
use crate::breaker::{
    BackoffKind, BreakerConfig, BreakerSnapshot, BreakerState, CallPermit, CircuitBreaker,
    FailureKind, Outcome, WindowKind,
};
use crate::clock::SharedClock;
use crate::report::AnalysisReport;
use crate::telemetry::{Telemetry, TelemetryEvent};

/// The layout of an entry. Bump it whenever a type inside [`AnalysisReport`] changes shape.
pub const FORMAT_VERSION: u8 = 1;

/// The largest encoded report (the version byte aside) written or decoded. Decoding trusts the
/// lengths inside an entry, so without a bound a corrupt length would make it allocate whatever
/// the garbage says.
pub const MAX_ENTRY_BYTES: usize = 32 * 1024 * 1024;

/// Redis refuses an expiry past its millisecond clock; a century is far inside it.
const LONGEST_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Every `result` label the tier reports, registered at zero by the telemetry actor.
pub const RESULTS: [&str; 5] = ["hit", "miss", "write", "error", "skipped"];

/// The bincode configuration of every entry: the standard one, with decoding bounded.
fn wire() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_ENTRY_BYTES>()
}

/// Why stored bytes are not a report this build can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("the entry is empty")]
    Empty,
    #[error("format version {0}, this build reads version {FORMAT_VERSION}")]
    UnknownVersion(u8),
    #[error("the report does not decode: {0}")]
    Malformed(String),
}

/// A report as stored: [`FORMAT_VERSION`], then the report in bincode.
pub fn encode(report: &AnalysisReport) -> Result<Vec<u8>, bincode::error::EncodeError> {
    let mut bytes = vec![FORMAT_VERSION];
    // The same bytes as `encode_to_vec`, written after the version without a second copy.
    bincode::serde::encode_into_std_write(report, &mut bytes, wire())?;
    Ok(bytes)
}

/// The report in stored bytes, refusing any other version and any trailing bytes (a longer
/// layout whose version was not bumped).
pub fn decode(bytes: &[u8]) -> Result<AnalysisReport, DecodeError> {
    let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if version != FORMAT_VERSION {
        return Err(DecodeError::UnknownVersion(version));
    }
    let (report, read) = bincode::serde::decode_from_slice(body, wire())
        .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if read != body.len() {
        let extra = body.len() - read;
        return Err(DecodeError::Malformed(format!("{extra} bytes after the report")));
    }
    Ok(report)
}

/// What a lookup came to. Only `Hit` carries a report; every other case is a miss to the job.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    Hit(Arc<AnalysisReport>),
    /// No entry, or one this build cannot read (deleted on the way).
    Miss,
    /// Redis was not reached in time, or answered with an error.
    Error,
    /// The breaker is open: Redis was not asked.
    Skipped,
}

impl Lookup {
    /// The `result` label of this outcome.
    pub fn as_str(&self) -> &'static str {
        match self {
            Lookup::Hit(_) => "hit",
            Lookup::Miss => "miss",
            Lookup::Error => "error",
            Lookup::Skipped => "skipped",
        }
    }

    pub fn into_report(self) -> Option<Arc<AnalysisReport>> {
        match self {
            Lookup::Hit(report) => Some(report),
            Lookup::Miss | Lookup::Error | Lookup::Skipped => None,
        }
    }
}

/// What a write came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    Written,
    /// Redis was not reached in time or refused the write, or the report is too large.
    Error,
    /// The breaker is open: Redis was not asked.
    Skipped,
}

impl Put {
    /// The `result` label of this outcome.
    pub fn as_str(self) -> &'static str {
        match self {
            Put::Written => "write",
            Put::Error => "error",
            Put::Skipped => "skipped",
        }
    }
}

/// The Redis tier; cheap to clone, and clones share one breaker so that every cache worker of
/// a node learns at once that Redis is away.
#[derive(Clone)]
pub struct RedisTier {
    inner: Arc<Inner>,
}

struct Inner {
    redis: Redis,
    /// Milliseconds an entry lives (`SET ... PX`), at least 1 since Redis refuses 0.
    ttl_ms: u64,
    /// Held only to ask for a permit or hand one back, never across a command.
    breaker: Mutex<CircuitBreaker>,
    telemetry: Telemetry,
}

impl std::fmt::Debug for RedisTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTier")
            .field("redis", &self.inner.redis)
            .field("ttl_ms", &self.inner.ttl_ms)
            .field("breaker", &self.inner.lock().snapshot().state)
            .finish()
    }
}

impl RedisTier {
    /// A tier over `redis` whose entries live for `ttl`. `breaker` is assumed validated;
    /// [`RedisTier::default_breaker`] suits most deployments.
    pub fn new(
        redis: Redis,
        ttl: Duration,
        breaker: BreakerConfig,
        clock: SharedClock,
        telemetry: Telemetry,
    ) -> Self {
        let ttl_ms = ttl.min(LONGEST_TTL).as_millis().max(1) as u64;
        let breaker = Mutex::new(CircuitBreaker::new(breaker, clock));
        RedisTier { inner: Arc::new(Inner { redis, ttl_ms, breaker, telemetry }) }
    }

    /// Breaker settings for a Redis a few milliseconds away: open after 3 commands in a row
    /// did not reach it, for 5 s doubling up to a minute, and close on the first trial that
    /// does. Rate rules are off: a cache sees too few calls on a quiet node for rates to mean
    /// anything, and a reachable Redis answers every command.
    pub fn default_breaker() -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: 3,
            failure_rate_threshold: 0.0,
            slow_call_rate_threshold: 0.0,
            window: WindowKind::Count { size: 20 },
            minimum_calls: 0,
            slow_call_target: Duration::ZERO,
            half_open_max_calls: 1,
            half_open_successes: 1,
            half_open_max_wait: Duration::from_secs(30),
            open_duration: Duration::from_secs(5),
            max_open_duration: Duration::from_secs(60),
            backoff: BackoffKind::Exponential { multiplier: 2.0 },
            reset_after: Duration::from_secs(300),
            ..BreakerConfig::default()
        }
    }

    /// Looks `key` (a work key) up. Never fails: see [`Lookup`].
    pub async fn get(&self, key: &str) -> Lookup {
        let lookup = self.lookup(key).await;
        self.emit(lookup.as_str());
        lookup
    }

    async fn lookup(&self, key: &str) -> Lookup {
        let Some(attempt) = self.admit() else { return Lookup::Skipped };
        let redis_key = self.inner.redis.keys().cache(key);
        let mut cmd = redis::cmd("GET");
        cmd.arg(&redis_key);
        let answer: RedisResult<Option<Vec<u8>>> = self.inner.redis.query(&cmd).await;
        attempt.settle(answer.as_ref().err());
        let bytes = match answer {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Lookup::Miss,
            Err(e) => {
                tracing::debug!(cause = %e, "redis cache lookup failed");
                return Lookup::Error;
            }
        };
        match decode(&bytes) {
            Ok(report) => Lookup::Hit(Arc::new(report)),
            Err(e) => {
                // Left in place, the entry would cost a round trip on every lookup until it
                // expires.
                tracing::debug!(key, cause = %e, "dropping an unreadable cache entry");
                self.delete(&redis_key).await;
                Lookup::Miss
            }
        }
    }

    /// Stores `report` under `key` (a work key) for the TTL. Never fails: see [`Put`].
    pub async fn put(&self, key: &str, report: &AnalysisReport) -> Put {
        let put = self.store(key, report).await;
        self.emit(put.as_str());
        put
    }

    async fn store(&self, key: &str, report: &AnalysisReport) -> Put {
        let bytes = match encode(report) {
            Ok(bytes) if bytes.len() <= MAX_ENTRY_BYTES + 1 => bytes,
            Ok(bytes) => {
                tracing::debug!(key, bytes = bytes.len(), "report too large for the redis cache");
                return Put::Error;
            }
            Err(e) => {
                tracing::debug!(key, cause = %e, "report does not encode for the redis cache");
                return Put::Error;
            }
        };
        let Some(attempt) = self.admit() else { return Put::Skipped };
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.inner.redis.keys().cache(key)).arg(bytes).arg("PX").arg(self.inner.ttl_ms);
        let answer: RedisResult<()> = self.inner.redis.query(&cmd).await;
        attempt.settle(answer.as_ref().err());
        match answer {
            Ok(()) => Put::Written,
            Err(e) => {
                tracing::debug!(cause = %e, "redis cache write failed");
                Put::Error
            }
        }
    }

    /// Where the breaker is now, with any transition that is due applied.
    pub fn breaker_state(&self) -> BreakerState {
        let mut breaker = self.inner.lock();
        let state = breaker.state();
        log_transitions(&mut breaker);
        state
    }

    /// The breaker's counters and state, for status pages.
    pub fn breaker_snapshot(&self) -> BreakerSnapshot {
        let mut breaker = self.inner.lock();
        breaker.state();
        log_transitions(&mut breaker);
        breaker.snapshot()
    }

    /// A permit from the breaker, or `None` while it is open.
    fn admit(&self) -> Option<Attempt<'_>> {
        let mut breaker = self.inner.lock();
        let permit = breaker.try_acquire().ok();
        log_transitions(&mut breaker);
        permit.map(|permit| Attempt { inner: &self.inner, permit: Some(permit) })
    }

    /// Deletes an entry this build cannot use. Best effort: if it fails, the TTL removes it.
    async fn delete(&self, redis_key: &str) {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(redis_key);
        if let Err(e) = self.inner.redis.query::<()>(&cmd).await {
            tracing::debug!(cause = %e, "unreadable cache entry not deleted");
        }
    }

    fn emit(&self, result: &'static str) {
        self.inner.telemetry.emit(TelemetryEvent::CacheRequest { tier: "redis", result });
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, CircuitBreaker> {
        // The breaker holds no invariant a panicking holder could break half-way.
        self.breaker.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One admitted command. Handed back with its outcome by [`Attempt::settle`]; dropped unsettled
/// (the lookup was cancelled), it goes back as ignored so it cannot hold a half-open trial slot.
struct Attempt<'a> {
    inner: &'a Inner,
    permit: Option<CallPermit>,
}

impl Attempt<'_> {
    /// Only a command that did not reach Redis counts against it.
    fn settle(mut self, error: Option<&RedisError>) {
        let outcome = match error {
            None => Outcome::Success,
            Some(e) if e.is_timeout() => Outcome::Failure(FailureKind::Timeout),
            Some(e) if is_unreachable(e) => Outcome::Failure(FailureKind::Connection),
            Some(_) => Outcome::Ignored,
        };
        self.finish(outcome);
    }

    fn finish(&mut self, outcome: Outcome) {
        if let Some(permit) = self.permit.take() {
            let mut breaker = self.inner.lock();
            breaker.record(permit, outcome);
            log_transitions(&mut breaker);
        }
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        self.finish(Outcome::Ignored);
    }
}

fn log_transitions(breaker: &mut CircuitBreaker) {
    for t in breaker.take_transitions() {
        tracing::info!(from = %t.from, to = %t.to, reason = t.reason, "redis cache breaker");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{
        ContainerReport, FileType, Indicator, Iocs, ProviderAttempt, Section, StaticFacts,
        ThreatLevel, Vulnerability,
    };

    /// Every optional field set, every list non-empty, no enum at its default: a field
    /// skipped or misplaced by the encoding cannot hide behind a default value.
    fn full_report() -> AnalysisReport {
        let strings = |prefix: &str| vec![format!("{prefix}-1"), format!("{prefix}-2")];
        AnalysisReport {
            threat_level: ThreatLevel::Critical,
            threat_score: 97,
            classifications: strings("class"),
            recommendations: strings("advice"),
            indicators: vec![Indicator {
                id: "eicar-test-file".into(),
                description: "the EICAR test string".into(),
                weight: 100,
            }],
            iocs: Iocs {
                urls: strings("http://example.test/a"),
                ips: strings("192.0.2.1"),
                domains: strings("example.test"),
                emails: strings("x@example.test"),
                registry_keys: strings(r"HKLM\Software\Run"),
            },
            static_facts: StaticFacts {
                file_name: "sample.exe".into(),
                file_type: FileType::Pe,
                size: 4096,
                md5: "m".repeat(32),
                sha1: "s".repeat(40),
                sha256: "h".repeat(64),
                entropy: 7.25,
                sections: vec![Section {
                    name: ".text".into(),
                    size: 512,
                    entropy: 6.5,
                    executable: true,
                }],
                imports: strings("kernel32.dll!VirtualAlloc"),
                strings: strings("printable"),
                architecture: Some("x86_64".into()),
            },
            providers: vec![ProviderAttempt {
                provider: "claude".into(),
                outcome: "failure".into(),
                detail: Some("timed out".into()),
                latency_ms: 1200,
            }],
            deobfuscated_code: Some("eval(atob(p))".into()),
            analysis_report: Some("looks bad".into()),
            vulnerabilities: vec![Vulnerability {
                name: "overflow".into(),
                description: "stack overflow".into(),
                severity: "high".into(),
                cve_id: Some("CVE-2024-0001".into()),
                metasploit_module: Some("exploit/windows/x".into()),
            }],
            container: Some(ContainerReport {
                status: "completed".into(),
                detail: "ran".into(),
                exit_code: Some(3),
                output: Some("stdout".into()),
            }),
            used_fallback: true,
            ai_error: Some("one provider failed".into()),
        }
    }

    #[test]
    fn a_full_report_survives_the_round_trip() {
        let report = full_report();
        let bytes = encode(&report).unwrap();
        assert_eq!(bytes[0], FORMAT_VERSION);
        assert_eq!(decode(&bytes), Ok(report));
    }

    #[test]
    fn an_empty_report_survives_the_round_trip() {
        let report = AnalysisReport::default();
        assert_eq!(decode(&encode(&report).unwrap()), Ok(report));
    }

    #[test]
    fn the_body_is_plain_bincode_of_the_report() {
        let report = full_report();
        let plain = bincode::serde::encode_to_vec(&report, bincode::config::standard()).unwrap();
        assert_eq!(encode(&report).unwrap()[1..], plain[..]);
    }

    #[test]
    fn another_version_is_refused() {
        let mut bytes = encode(&full_report()).unwrap();
        bytes[0] = FORMAT_VERSION + 1;
        assert_eq!(decode(&bytes), Err(DecodeError::UnknownVersion(FORMAT_VERSION + 1)));
        assert_eq!(decode(&[]), Err(DecodeError::Empty));
    }

    #[test]
    fn garbage_and_truncated_entries_are_refused() {
        let bytes = encode(&full_report()).unwrap();
        assert!(matches!(decode(&bytes[..bytes.len() / 2]), Err(DecodeError::Malformed(_))));
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(decode(&longer), Err(DecodeError::Malformed(_))));
        // Clean, score 0, one classification claiming to be 1 TiB long (253 announces a
        // u64 length): refused by the limit, never allocated.
        let mut huge = vec![FORMAT_VERSION, 0, 0, 1, 253];
        huge.extend_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(matches!(decode(&huge), Err(DecodeError::Malformed(_))));
        for seed in 0..200u64 {
            let len = (seed as usize * 7) % 300;
            let mut noise: Vec<u8> = (0..len as u64)
                .map(|i| (i.wrapping_mul(0x9e37_79b9).wrapping_add(seed * 31) >> 3) as u8)
                .collect();
            noise.insert(0, FORMAT_VERSION);
            // Any answer is fine as long as it is an answer and not a panic or an abort.
            let _ = decode(&noise);
        }
    }

    #[test]
    fn every_result_is_registered() {
        let lookups = [Lookup::Hit(Arc::default()), Lookup::Miss, Lookup::Error, Lookup::Skipped];
        let labels = lookups.iter().map(Lookup::as_str);
        let puts = [Put::Written, Put::Error, Put::Skipped].into_iter().map(Put::as_str);
        for label in labels.chain(puts) {
            assert!(RESULTS.contains(&label), "{label} is not in RESULTS");
        }
    }

    #[test]
    fn the_default_breaker_is_valid() {
        RedisTier::default_breaker().validate().unwrap();
    }
}
