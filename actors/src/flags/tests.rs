//! Tests of the flags actor: layering, validation, audit, push, and cluster sync.

use super::*;
use serde_json::json;

fn layer(pairs: &[(&str, Value)]) -> BTreeMap<String, Value> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

fn actor(config: &[(&str, Value)], env: &[(&str, Value)]) -> Result<FlagsActor, FlagError> {
    let providers = vec!["claude".into(), "openai".into(), "deepseek".into()];
    FlagsActor::new(&layer(config), &layer(env), providers, Telemetry::disabled())
}

#[test]
fn layers_override_in_order_and_aliases_resolve() {
    let a = actor(
        &[("cacheAnalysisResults", json!(false)), ("enable_bulkhead", json!(false))],
        &[("enable_bulkhead", json!("true")), ("aiProviderPriority", json!("openai,claude"))],
    )
    .unwrap();
    let flags = a.flags();
    assert!(!flags.cache_analysis_results);
    assert!(flags.enable_bulkhead, "environment overrides the config file");
    assert_eq!(flags.ai_provider_priority, vec!["openai", "claude"]);
    // enable_bulkhead went false then true again; each real change is audited.
    assert_eq!(a.audit.len(), 4);
    assert_eq!(a.audit[2].source, FlagSource::Environment);
    let restated = actor(&[("enable_bulkhead", json!(true))], &[]).unwrap();
    assert!(restated.audit.is_empty(), "restating a default is not a change");
}

#[test]
fn bad_values_and_unknown_names_are_errors_naming_the_flag() {
    let err = actor(&[("enableBulkhead", json!(3))], &[]).err().unwrap();
    assert_eq!(
        err.to_string(),
        "invalid value for flag enable_bulkhead: expected a boolean, got a number"
    );
    let err = actor(&[], &[("no_such_flag", json!(true))]).err().unwrap();
    assert_eq!(err, FlagError::Unknown("no_such_flag".into()));
    let err = actor(&[("ai_provider_priority", json!(["claude", "gpt5"]))], &[]).err().unwrap();
    assert!(err.to_string().contains("unknown provider \"gpt5\""), "{err}");
    let err = actor(&[("ai_provider_priority", json!(["claude", "claude"]))], &[]).err().unwrap();
    assert!(err.to_string().contains("listed twice"), "{err}");
}

#[test]
fn every_flag_round_trips_through_json() {
    let flags = FlagSet::default();
    for info in FLAGS {
        let value = flags.get(info.name).unwrap();
        let mut copy = FlagSet::default();
        copy.set_json(info.name, &value).unwrap();
        assert_eq!(copy, flags, "{}", info.name);
        assert_eq!(FlagSet::canonical_name(info.alias), Some(info.name));
    }
}

#[derive(Default)]
struct Probe(Vec<Arc<FlagSet>>);
impl Actor for Probe {
    type Context = Context<Self>;
}
impl Handler<FlagsChanged> for Probe {
    type Result = ();
    fn handle(&mut self, msg: FlagsChanged, _: &mut Context<Self>) {
        self.0.push(msg.0);
    }
}
#[derive(Message)]
#[rtype(result = "Vec<Arc<FlagSet>>")]
struct Seen;
impl Handler<Seen> for Probe {
    type Result = MessageResult<Seen>;
    fn handle(&mut self, _: Seen, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.0.clone())
    }
}

#[actix_rt::test]
async fn changes_are_validated_audited_and_pushed() {
    let flags = actor(&[], &[]).unwrap().start();
    let probe = Probe::default().start();
    flags.send(Subscribe(probe.clone().recipient())).await.unwrap();

    let entry = flags
        .send(SetFlag {
            name: "maintenanceMode".into(),
            value: json!(true),
            source: FlagSource::Api,
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!((entry.old_value, entry.new_value), (json!(false), json!(true)));

    let rejected = flags
        .send(SetFlag {
            name: "maintenance_mode".into(),
            value: json!("maybe"),
            source: FlagSource::Api,
        })
        .await
        .unwrap();
    assert!(matches!(rejected, Err(FlagError::InvalidValue { .. })));

    let seen = probe.send(Seen).await.unwrap();
    assert_eq!(seen.len(), 2, "initial snapshot plus one accepted change");
    assert!(!seen[0].maintenance_mode);
    assert!(seen[1].maintenance_mode);
    let audit = flags.send(GetAudit).await.unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].source, FlagSource::Api);
}

#[test]
fn normalize_gives_the_canonical_name_and_value() {
    let (name, value) = FlagSet::normalize("enableBulkhead", &json!("off")).unwrap();
    assert_eq!((name, value), ("enable_bulkhead", json!(false)));
    let (name, value) = FlagSet::normalize("aiProviderPriority", &json!("openai, claude")).unwrap();
    assert_eq!((name, value), ("ai_provider_priority", json!(["openai", "claude"])));
    assert_eq!(
        FlagSet::normalize("no_such_flag", &json!(true)),
        Err(FlagError::Unknown("no_such_flag".into()))
    );
    assert!(FlagSet::normalize("maintenance_mode", &json!(7)).is_err());
}

#[actix_rt::test]
async fn a_sync_applies_what_it_can_and_pushes_only_changes() {
    let flags = actor(&[("enable_bulkhead", json!(false))], &[]).unwrap().start();
    let probe = Probe::default().start();
    flags.send(Subscribe(probe.clone().recipient())).await.unwrap();

    let values = layer(&[
        ("enable_bulkhead", json!(true)),
        ("maintenance_mode", json!(false)),
        ("flag_from_a_newer_node", json!(true)),
        ("ai_provider_priority", json!(["claude", "mistral"])),
    ]);
    let report = flags.send(SyncFlags(values.clone())).await.unwrap();
    assert_eq!(report.applied, 2);
    assert_eq!(report.changed, vec!["enable_bulkhead"], "a restated value is not a change");
    assert_eq!(report.refused.len(), 2, "{:?}", report.refused);
    assert!(report.refused.contains(&FlagError::Unknown("flag_from_a_newer_node".into())));
    assert!(flags.send(GetFlags).await.unwrap().enable_bulkhead, "the cluster value wins");

    // The same values again: the node already has them, so nothing is recorded or pushed.
    let again = flags.send(SyncFlags(values)).await.unwrap();
    assert!(again.changed.is_empty());

    let seen = probe.send(Seen).await.unwrap();
    assert_eq!(seen.len(), 2, "initial snapshot plus the one sync that changed something");
    let audit = flags.send(GetAudit).await.unwrap();
    let last = audit.last().unwrap();
    assert_eq!((last.flag, last.source), ("enable_bulkhead", FlagSource::Cluster));
    assert_eq!(audit.iter().filter(|e| e.source == FlagSource::Cluster).count(), 1);
}
