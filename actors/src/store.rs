//! Job records: the life cycle every reader sees.
//!
//! The embedded store is a concurrent map. Finished records are kept for a retention period
//! and then swept, so a long-running process does not accumulate every job it ever ran.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use dashmap::DashMap;

use crate::job::{JobId, JobRecord, JobStatus};

#[derive(Debug, Clone, Default)]
pub struct JobStore {
    jobs: Arc<DashMap<JobId, JobRecord>>,
}

impl JobStore {
    pub fn insert(&self, record: JobRecord) {
        self.jobs.insert(record.analysis_id, record);
    }

    pub fn get(&self, id: &JobId) -> Option<JobRecord> {
        self.jobs.get(id).map(|r| r.clone())
    }

    pub fn contains(&self, id: &JobId) -> bool {
        self.jobs.contains_key(id)
    }

    pub fn remove(&self, id: &JobId) {
        self.jobs.remove(id);
    }

    /// Applies `change` to a record; a finished record is never changed again.
    pub fn update(&self, id: &JobId, change: impl FnOnce(&mut JobRecord)) {
        if let Some(mut record) = self.jobs.get_mut(id) {
            if !record.status.is_finished() {
                change(&mut record);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// Removes finished records older than `retention`, then the oldest finished ones beyond
    /// `max_records`; answers how many went. Unfinished records are never removed.
    pub fn sweep(&self, retention: Duration, max_records: usize) -> usize {
        let now = SystemTime::now();
        let before = self.jobs.len();
        self.jobs.retain(|_, r| match r.finished_at {
            Some(at) if r.status.is_finished() => {
                now.duration_since(at).map_or(true, |age| age < retention)
            }
            _ => true,
        });
        if self.jobs.len() > max_records {
            // Job ids are ULIDs: sorting them sorts by submission time.
            let mut finished: Vec<JobId> =
                self.jobs.iter().filter(|r| r.status.is_finished()).map(|r| *r.key()).collect();
            finished.sort_unstable();
            let excess = self.jobs.len() - max_records;
            for id in finished.into_iter().take(excess) {
                self.jobs.remove(&id);
            }
        }
        before - self.jobs.len()
    }

    /// Jobs by status, for `/api/status`.
    pub fn counts(&self) -> [(JobStatus, usize); 4] {
        let mut counts = [
            (JobStatus::Pending, 0),
            (JobStatus::Processing, 0),
            (JobStatus::Completed, 0),
            (JobStatus::Failed, 0),
        ];
        for r in self.jobs.iter() {
            if let Some(slot) = counts.iter_mut().find(|(s, _)| *s == r.status) {
                slot.1 += 1;
            }
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{JobSpec, Sample};

    #[test]
    fn finished_records_are_frozen_and_swept_after_retention() {
        let store = JobStore::default();
        let spec = JobSpec::new(Sample::new("a", b"x".to_vec()));
        let (done, running) = (JobId::new(), JobId::new());
        store.insert(JobRecord::pending(done, &spec));
        store.insert(JobRecord::pending(running, &spec));
        store.update(&done, |r| {
            r.status = JobStatus::Completed;
            r.finished_at = Some(SystemTime::now() - Duration::from_secs(120));
        });
        store.update(&done, |r| r.status = JobStatus::Failed);
        assert_eq!(store.get(&done).unwrap().status, JobStatus::Completed);

        assert_eq!(store.sweep(Duration::from_secs(600), 10), 0);
        assert_eq!(store.sweep(Duration::from_secs(60), 10), 1);
        assert!(store.get(&done).is_none());
        assert!(store.get(&running).is_some(), "unfinished jobs are never swept");
    }

    #[test]
    fn the_record_bound_drops_the_oldest_finished_jobs_first() {
        let store = JobStore::default();
        let spec = JobSpec::new(Sample::new("a", b"x".to_vec()));
        let running = JobId::new();
        store.insert(JobRecord::pending(running, &spec));
        let finished: Vec<JobId> = (0..5).map(|_| JobId::new()).collect();
        for id in &finished {
            store.insert(JobRecord::pending(*id, &spec));
            store.update(id, |r| {
                r.status = JobStatus::Completed;
                r.finished_at = Some(SystemTime::now());
            });
        }
        assert_eq!(store.sweep(Duration::from_secs(3600), 3), 3);
        assert!(store.get(&running).is_some());
        assert!(store.get(&finished[0]).is_none() && store.get(&finished[2]).is_none());
        assert!(store.get(&finished[3]).is_some() && store.get(&finished[4]).is_some());
    }
}
