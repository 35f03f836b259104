//! Engine-level behaviour that HTTP timing would make nondeterministic.

use athena_actors::clock;
use athena_actors::engine::{Engine, EngineConfig, FlagLayers};
use athena_actors::job::{AnalysisType, JobSpec, JobStatus, Sample};
use athena_actors::router::SubmitJob;

#[actix_rt::test]
async fn identical_work_in_flight_runs_once_and_is_shared() {
    let engine =
        Engine::start(&EngineConfig::default(), &FlagLayers::default(), clock::system()).unwrap();
    let mut events = engine.events.subscribe();
    let spec = || {
        let mut spec = JobSpec::new(Sample::new("same.sh", b"#!/bin/sh\necho same\n".to_vec()));
        spec.analysis_type = AnalysisType::Static;
        spec
    };
    // Both submissions reach the router's mailbox before the first run can finish.
    let (a, b) = futures_util::join!(
        engine.router.send(SubmitJob(spec())),
        engine.router.send(SubmitJob(spec()))
    );
    let (a, b) = (a.unwrap().unwrap(), b.unwrap().unwrap());
    assert_ne!(a, b);

    let mut finished = 0;
    while finished < 2 {
        let event = events.recv().await.unwrap();
        if event.kind == "complete" {
            finished += 1;
        }
    }
    let (ra, rb) = (engine.job(&a).unwrap(), engine.job(&b).unwrap());
    assert_eq!((ra.status, rb.status), (JobStatus::Completed, JobStatus::Completed));
    assert!(
        std::sync::Arc::ptr_eq(ra.results.as_ref().unwrap(), rb.results.as_ref().unwrap()),
        "one run, one report"
    );
    assert!(!ra.from_cache && !rb.from_cache, "shared, not cached");

    let metrics = engine.telemetry.gather().await;
    assert!(metrics.contains(r#"athena_samples_analysed_total{file_type="shell"} 1"#), "{metrics}");
    assert!(metrics.contains("athena_jobs_submitted_total 2"));
}

#[actix_rt::test]
async fn shutdown_finishes_or_visibly_fails_every_accepted_job_and_refuses_new_ones() {
    let mut config = EngineConfig::default();
    config.services.static_analysis.workers = 1;
    config.services.static_analysis.bulkhead.max_concurrent = 1;
    let engine = Engine::start(&config, &FlagLayers::default(), clock::system()).unwrap();
    let mut events = engine.events.subscribe();

    let mut ids = Vec::new();
    for n in 0..40 {
        let mut spec = JobSpec::new(Sample::new("q.sh", format!("echo {n}\n").into_bytes()));
        spec.analysis_type = AnalysisType::Static;
        ids.push(engine.submit(spec).await.unwrap());
    }
    engine.shutdown(std::time::Duration::ZERO).await;

    let late = JobSpec::new(Sample::new("late.sh", b"echo late\n".to_vec()));
    assert_eq!(engine.submit(late).await, Err(athena_actors::error::SubmitError::ShuttingDown));

    let mut finished = 0;
    while finished < ids.len() {
        let event = tokio::time::timeout(std::time::Duration::from_secs(60), events.recv())
            .await
            .expect("every job finishes")
            .unwrap();
        if matches!(event.kind, "complete" | "error") {
            finished += 1;
        }
    }
    let mut failed = 0;
    for id in &ids {
        let record = engine.job(id).unwrap();
        match record.status {
            JobStatus::Completed => {}
            JobStatus::Failed => {
                assert_eq!(record.error.unwrap().code, "shutting_down");
                failed += 1;
            }
            other => panic!("job {id} left {other:?}"),
        }
    }
    assert!(failed > 0, "with one slot and no grace, queued jobs were turned away");
}
