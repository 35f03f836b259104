//! The memory tier of the result cache: a bounded TinyLFU cache (moka) shared by the workers.
//!
//! A TTL so stale verdicts age out as analyzers improve, and a byte budget so a burst of large
//! reports cannot grow the process without bound.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::report::AnalysisReport;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// How long a report stays valid.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Budget for the memory tier, in bytes of encoded reports.
    pub max_bytes: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig { ttl: Duration::from_secs(3600), max_bytes: 64 * 1024 * 1024 }
    }
}

/// The in-memory tier, shared by every cache worker.
#[derive(Clone)]
pub struct MemoryTier {
    cache: moka::sync::Cache<String, Arc<AnalysisReport>>,
    hits: Arc<AtomicU64>,
    misses: Arc<AtomicU64>,
}

impl MemoryTier {
    pub fn new(config: &CacheConfig) -> Self {
        let cache = moka::sync::Cache::builder()
            .max_capacity(config.max_bytes)
            .weigher(|key: &String, report: &Arc<AnalysisReport>| {
                let size = key.len() + approximate_size(report);
                u32::try_from(size).unwrap_or(u32::MAX)
            })
            .time_to_live(config.ttl)
            .build();
        MemoryTier { cache, hits: Arc::default(), misses: Arc::default() }
    }

    pub fn get(&self, key: &str) -> Option<Arc<AnalysisReport>> {
        let found = self.cache.get(key);
        let counter = if found.is_some() { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    pub fn put(&self, key: String, report: Arc<AnalysisReport>) {
        self.cache.insert(key, report);
    }

    pub fn stats(&self) -> CacheStats {
        self.cache.run_pending_tasks();
        CacheStats {
            entries: self.cache.entry_count(),
            weighted_bytes: self.cache.weighted_size(),
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }
}

/// A cheap estimate of a report's memory footprint: the text it holds dominates.
fn approximate_size(report: &AnalysisReport) -> usize {
    let strings = |v: &[String]| v.iter().map(|s| s.len() + 24).sum::<usize>();
    let facts = &report.static_facts;
    512 + strings(&report.classifications)
        + strings(&report.recommendations)
        + strings(&facts.imports)
        + strings(&facts.strings)
        + strings(&report.iocs.urls)
        + strings(&report.iocs.domains)
        + strings(&report.iocs.ips)
        + strings(&report.iocs.emails)
        + strings(&report.iocs.registry_keys)
        + report.indicators.iter().map(|i| i.id.len() + i.description.len() + 48).sum::<usize>()
        + facts.sections.len() * 64
        + report.deobfuscated_code.as_ref().map_or(0, String::len)
        + report.analysis_report.as_ref().map_or(0, String::len)
        + report.vulnerabilities.iter().map(|v| v.description.len() + 96).sum::<usize>()
}

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CacheStats {
    pub entries: u64,
    pub weighted_bytes: u64,
    pub hits: u64,
    pub misses: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_tier_counts_hits_and_misses() {
        let tier = MemoryTier::new(&CacheConfig::default());
        assert!(tier.get("k").is_none());
        tier.put("k".into(), Arc::new(AnalysisReport::default()));
        assert!(tier.get("k").is_some());
        let stats = tier.stats();
        assert_eq!((stats.entries, stats.hits, stats.misses), (1, 1, 1));
    }

    #[test]
    fn memory_tier_stays_within_its_byte_budget() {
        let tier =
            MemoryTier::new(&CacheConfig { ttl: Duration::from_secs(60), max_bytes: 100_000 });
        for i in 0..200 {
            let report = AnalysisReport {
                deobfuscated_code: Some("x".repeat(10_000)),
                ..AnalysisReport::default()
            };
            tier.put(format!("key-{i}"), Arc::new(report));
        }
        let stats = tier.stats();
        assert!(stats.weighted_bytes <= 100_000, "{stats:?}");
        assert!(stats.entries < 200, "{stats:?}");
    }
}
