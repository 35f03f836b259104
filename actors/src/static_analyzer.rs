//! The static stage's worker: runs the analyzer off the actor thread.
//!
//! Analysis is CPU-bound (hashing, parsing, string scans of up to the body limit), so it runs
//! on tokio's blocking pool and the actor stays responsive. A panic inside the analyzer is
//! caught at the join, fails only the job that caused it, and stops the worker so its
//! supervisor restarts it with a clean context.

use std::time::Instant;

use actix::prelude::*;

use crate::analysis::{self, Depth};
use crate::error::StageError;
use crate::job::Sample;
use crate::report::StaticReport;
use crate::supervisor::{Retire, WorkerBook};
use crate::telemetry::{Telemetry, TelemetryEvent};

/// Analyse one sample.
#[derive(Debug, Message)]
#[rtype(result = "Result<StaticReport, StageError>")]
pub struct AnalyzeSample {
    pub sample: Sample,
    pub depth: Depth,
}

/// With the `test-hooks` feature, a sample starting with these bytes makes the analyzer
/// panic every time: the poison job of the queue tests. Never in a build that ships.
#[cfg(feature = "test-hooks")]
pub const POISON_SAMPLE: &[u8] = b"ATHENA-TEST-POISON";

/// Worker of the `static` service.
pub struct StaticAnalyzer {
    telemetry: Telemetry,
    book: WorkerBook,
}

impl StaticAnalyzer {
    pub fn new(telemetry: Telemetry) -> Self {
        StaticAnalyzer { telemetry, book: WorkerBook::new("static") }
    }
}

impl Actor for StaticAnalyzer {
    type Context = Context<Self>;
}

impl Supervised for StaticAnalyzer {
    fn restarting(&mut self, _: &mut Self::Context) {
        self.book.restarted(&self.telemetry);
    }
}

impl Handler<AnalyzeSample> for StaticAnalyzer {
    type Result = ResponseActFuture<Self, Result<StaticReport, StageError>>;

    fn handle(&mut self, msg: AnalyzeSample, _: &mut Self::Context) -> Self::Result {
        self.book.begin();
        let started = Instant::now();
        let work = tokio::task::spawn_blocking(move || {
            #[cfg(feature = "test-hooks")]
            if msg.sample.bytes.starts_with(POISON_SAMPLE) {
                panic!("poison sample (test hook)");
            }
            analysis::analyze(&msg.sample.file_name, &msg.sample.bytes, msg.depth)
        });
        Box::pin(work.into_actor(self).map(move |joined, act, ctx| {
            act.book.end(ctx);
            match joined {
                Ok(report) => {
                    act.telemetry
                        .emit(TelemetryEvent::SampleAnalysed { file_type: report.facts.file_type });
                    tracing::debug!(elapsed = ?started.elapsed(), "static analysis done");
                    Ok(report)
                }
                Err(join) => {
                    tracing::error!(cause = %join, "static analyzer failed; restarting worker");
                    ctx.stop();
                    Err(StageError::Panicked { service: act.book.service().to_string() })
                }
            }
        }))
    }
}

/// Nothing this worker does depends on flags: each request carries what it needs.
impl Handler<crate::flags::FlagsChanged> for StaticAnalyzer {
    type Result = ();

    fn handle(&mut self, _: crate::flags::FlagsChanged, _: &mut Self::Context) {}
}

impl Handler<Retire> for StaticAnalyzer {
    type Result = ();

    fn handle(&mut self, _: Retire, ctx: &mut Self::Context) {
        self.book.retire(ctx);
    }
}
