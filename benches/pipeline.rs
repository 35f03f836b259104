//! One job through the whole actor pipeline: router, cache service, static service, result.
//!
//! `pipeline/static_job` runs the full static path on a new small script each time (a cache
//! miss, the analysis, the cache write);
//! `pipeline/cached_job` is an identical resubmission answered by the cache service. Both
//! include the wait for the job's completion event. Run: `cargo bench --bench pipeline`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actix_rt::System;
use athena_actors::clock;
use athena_actors::engine::{Engine, EngineConfig, FlagLayers};
use athena_actors::job::{AnalysisType, JobSpec, Sample};
use athena_actors::router::SubmitJob;
use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::json;

/// Distinct samples across every batch criterion runs, so none is answered by the cache.
static NEXT_SAMPLE: AtomicU64 = AtomicU64::new(0);

fn spec(distinct: bool) -> JobSpec {
    let n = NEXT_SAMPLE.fetch_add(1, Ordering::Relaxed);
    let body = if distinct { format!("echo {n}\n") } else { "echo same\n".to_string() };
    let mut spec = JobSpec::new(Sample::new("bench.sh", format!("#!/bin/sh\n{body}").into_bytes()));
    spec.analysis_type = AnalysisType::Static;
    spec
}

async fn run_jobs(engine: &Engine, iters: u64, distinct: bool) -> Duration {
    let mut events = engine.events.subscribe();
    let started = Instant::now();
    for _ in 0..iters {
        let id = engine.router.send(SubmitJob(spec(distinct))).await.unwrap().unwrap();
        loop {
            let event = events.recv().await.unwrap();
            if event.analysis_id == id && event.kind == "complete" {
                break;
            }
        }
    }
    started.elapsed()
}

fn pipeline(c: &mut Criterion) {
    let system = System::new();
    let engine = system.block_on(async {
        let mut layers = FlagLayers::default();
        layers.config.insert("enable_performance_monitoring".into(), json!(true));
        Engine::start(&EngineConfig::default(), &layers, clock::system()).unwrap()
    });

    c.bench_function("pipeline/static_job", |b| {
        b.iter_custom(|iters| system.block_on(run_jobs(&engine, iters, true)))
    });
    c.bench_function("pipeline/cached_job", |b| {
        b.iter_custom(|iters| system.block_on(run_jobs(&engine, iters, false)))
    });
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
