//! Every Redis key and channel Athena uses, under one prefix.
//!
//! | key | type | holds | expires |
//! |---|---|---|---|
//! | `jobs` | stream | one entry per delivery to make (`id` field) | deleted when acknowledged |
//! | `dead` | stream | jobs past their delivery limit, with the reason | trimmed to a length |
//! | `delayed` | sorted set | jobs waiting for a retry, scored by due time (ms) | when due |
//! | `job:{id}` | hash | spec, record, status, counts, lease (`owner`, `leaseUntil`) | finished |
//! | `sample:{sha256}` | string | the sample's bytes | `queue.sample_ttl`, renewed |
//! | `idem:{key}` | string | the job id an `Idempotency-Key` created | retention |
//! | `cache:{work key}` | string | format byte + bincode report | `cache.ttl` |
//! | `flags` | hash | flag name → JSON value | never |
//! | `pools` | hash | service → worker pool size | never |
//! | `events`, `flags:changed`, `pools` | channels | job events, flag names, pool sizes | - |

#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Keys { prefix: prefix.to_string() }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn stream(&self) -> String {
        format!("{}jobs", self.prefix)
    }

    /// The consumer group every worker node reads the job stream through.
    pub fn group(&self) -> &'static str {
        "workers"
    }

    pub fn dead(&self) -> String {
        format!("{}dead", self.prefix)
    }

    pub fn delayed(&self) -> String {
        format!("{}delayed", self.prefix)
    }

    pub fn job(&self, id: &str) -> String {
        format!("{}job:{id}", self.prefix)
    }

    pub fn sample(&self, sha256: &str) -> String {
        format!("{}sample:{sha256}", self.prefix)
    }

    pub fn idempotency(&self, key: &str) -> String {
        format!("{}idem:{key}", self.prefix)
    }

    pub fn cache(&self, work_key: &str) -> String {
        format!("{}cache:{work_key}", self.prefix)
    }

    pub fn flags(&self) -> String {
        format!("{}flags", self.prefix)
    }

    pub fn flags_channel(&self) -> String {
        format!("{}flags:changed", self.prefix)
    }

    pub fn pools(&self) -> String {
        format!("{}pools", self.prefix)
    }

    pub fn pools_channel(&self) -> String {
        format!("{}pools", self.prefix)
    }

    pub fn events_channel(&self) -> String {
        format!("{}events", self.prefix)
    }
}
