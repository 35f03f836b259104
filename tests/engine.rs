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
