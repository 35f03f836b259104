//! Flags shared through a real Redis (127.0.0.1:6379): several "nodes" in one process, each a
//! flags actor with its own Redis handle, under a key prefix of their own per test.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use athena_actors::distributed::flags::ClusterFlags;
use athena_actors::flags::{
    FlagError, FlagSet, FlagSource, FlagsActor, FlagsChanged, GetAudit, GetFlags, SetFlag,
    Subscribe,
};
use athena_actors::telemetry::Telemetry;
use serde_json::{json, Value};
use support::{redis, unique_prefix};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const REDIS: &str = "127.0.0.1:6379";

/// Long enough for a loaded machine, far shorter than a hung test.
const PATIENCE: Duration = Duration::from_secs(10);

struct Node {
    flags: Addr<FlagsActor>,
    cluster: ClusterFlags,
}

/// A node with `config` as its config-file layer, talking to Redis at `url`.
fn node(url: &str, prefix: &str, config: &[(&str, Value)]) -> Node {
    let config: BTreeMap<String, Value> =
        config.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    let providers = vec!["claude".into(), "openai".into(), "deepseek".into()];
    let flags = FlagsActor::new(&config, &BTreeMap::new(), providers, Telemetry::disabled())
        .unwrap()
        .start();
    let cluster = ClusterFlags::new(redis(url, prefix), flags.clone());
    Node { flags, cluster }
}

impl Node {
    /// What the admin API does: apply locally, then share.
    async fn set(&self, name: &str, value: Value) {
        let entry = self
            .flags
            .send(SetFlag { name: name.into(), value, source: FlagSource::Api })
            .await
            .unwrap()
            .unwrap();
        self.cluster.publish(entry.flag, &entry.new_value).await.unwrap();
    }

    async fn snapshots(&self) -> mpsc::UnboundedReceiver<Arc<FlagSet>> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.flags.send(Subscribe(Probe(tx).start().recipient())).await.unwrap();
        rx
    }
}

/// Forwards every snapshot a node's flags actor pushes.
struct Probe(mpsc::UnboundedSender<Arc<FlagSet>>);

impl Actor for Probe {
    type Context = Context<Self>;
}

impl Handler<FlagsChanged> for Probe {
    type Result = ();

    fn handle(&mut self, msg: FlagsChanged, _: &mut Context<Self>) {
        let _ = self.0.send(msg.0);
    }
}

/// Waits for a snapshot matching `wanted`; answers how long it took.
async fn seen(
    snapshots: &mut mpsc::UnboundedReceiver<Arc<FlagSet>>,
    what: &str,
    wanted: impl Fn(&FlagSet) -> bool,
) {
    let waiting = async {
        while let Some(flags) = snapshots.recv().await {
            if wanted(&flags) {
                return;
            }
        }
        panic!("flags actor stopped before {what}");
    };
    tokio::time::timeout(PATIENCE, waiting)
        .await
        .unwrap_or_else(|_| panic!("{what}: not seen within {PATIENCE:?}"));
}

async fn hset(prefix: &str, fields: &[(&str, &str)]) {
    let redis = redis(&format!("redis://{REDIS}/0"), prefix);
    let mut cmd = redis::cmd("HSET");
    cmd.arg(redis.keys().flags());
    for (name, value) in fields {
        cmd.arg(*name).arg(*value);
    }
    redis.query::<()>(&cmd).await.unwrap();
}

async fn clean_up(prefix: &str) {
    let redis = redis(&format!("redis://{REDIS}/0"), prefix);
    redis.query::<()>(redis::cmd("DEL").arg(redis.keys().flags())).await.unwrap();
}

fn url() -> String {
    format!("redis://{REDIS}/0")
}

#[actix_rt::test]
async fn a_change_on_one_node_reaches_another_through_the_channel() {
    let prefix = unique_prefix("channel");
    let a = node(&url(), &prefix, &[]);
    // No periodic read during the test: only the channel can bring the second change.
    let b = node(&url(), &prefix, &[]);
    let follower = b.cluster.clone().resync_every(Duration::from_secs(3600)).spawn();
    let mut on_b = b.snapshots().await;

    // Seen through the first read after subscribing or through the channel: either way, B
    // is subscribed once it has it.
    a.set("enableAPM", json!(true)).await;
    seen(&mut on_b, "the first change on B", |f| f.enable_apm).await;

    a.set("maintenance_mode", json!(true)).await;
    // With the periodic read an hour away, only the channel can have brought it.
    seen(&mut on_b, "the second change on B", |f| f.maintenance_mode).await;

    let audit = b.flags.send(GetAudit).await.unwrap();
    assert!(audit.iter().all(|e| e.source == FlagSource::Cluster), "{audit:?}");
    assert_eq!(audit.len(), 2, "each change is recorded once, however often the hash is read");

    follower.abort();
    clean_up(&prefix).await;
}

#[actix_rt::test]
async fn a_node_started_later_reads_the_flags_at_start() {
    let prefix = unique_prefix("late");
    let a = node(&url(), &prefix, &[]);
    a.set("maintenance_mode", json!(true)).await;
    a.set("aiProviderPriority", json!("openai,claude")).await;

    // C's config file sets a flag the cluster also set, and one it did not.
    let c = node(
        &url(),
        &prefix,
        &[("maintenance_mode", json!(false)), ("enable_bulkhead", json!(false))],
    );
    assert_eq!(c.cluster.load().await.unwrap(), 2);

    let flags = c.flags.send(GetFlags).await.unwrap();
    assert!(flags.maintenance_mode, "the cluster's value overrides the config file");
    assert_eq!(flags.ai_provider_priority, ["openai", "claude"]);
    assert!(!flags.enable_bulkhead, "a flag only set in the config file stays local");
    clean_up(&prefix).await;
}

#[actix_rt::test]
async fn values_a_node_cannot_use_are_reported_and_the_rest_still_apply() {
    let prefix = unique_prefix("refused");
    hset(
        &prefix,
        &[
            ("flag_from_a_newer_node", "true"),
            ("maintenance_mode", "true"),
            ("enable_apm", "{not json"),
            ("ai_provider_priority", r#"["claude","mistral"]"#),
        ],
    )
    .await;

    let b = node(&url(), &prefix, &[]);
    assert_eq!(b.cluster.load().await.unwrap(), 1);
    let report = b.cluster.sync().await.unwrap();
    assert!(report.changed.is_empty(), "the second read finds nothing new");
    let mut refused: Vec<&str> = report
        .refused
        .iter()
        .map(|e| match e {
            FlagError::Unknown(name) => name.as_str(),
            FlagError::InvalidValue { flag, .. } => flag.as_str(),
        })
        .collect();
    refused.sort();
    assert_eq!(refused, ["ai_provider_priority", "enable_apm", "flag_from_a_newer_node"]);
    assert!(b.flags.send(GetFlags).await.unwrap().maintenance_mode);

    // Refusals on every read do not stop the node from following changes.
    let follower = b.cluster.clone().resync_every(Duration::from_secs(3600)).spawn();
    let mut on_b = b.snapshots().await;
    let a = node(&url(), &prefix, &[]);
    a.set("enable_local_models", json!(true)).await;
    seen(&mut on_b, "a change next to refused values", |f| f.enable_local_models).await;

    follower.abort();
    clean_up(&prefix).await;
}

#[actix_rt::test]
async fn a_node_without_redis_starts_on_its_local_flags() {
    // A port nothing listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let prefix = unique_prefix("offline");
    let lonely =
        node(&format!("redis://127.0.0.1:{port}/0"), &prefix, &[("enableAPM", json!(true))]);
    let follower = lonely.cluster.spawn();

    // Bounded by the command timeout: a node never hangs on a Redis that is not there.
    let load = tokio::time::timeout(PATIENCE, lonely.cluster.load()).await;
    assert!(load.expect("load gives up").is_err());
    assert!(lonely.flags.send(GetFlags).await.unwrap().enable_apm);

    // Local changes still work; sharing them is refused, and the caller is told.
    lonely
        .flags
        .send(SetFlag {
            name: "maintenance_mode".into(),
            value: json!(true),
            source: FlagSource::Api,
        })
        .await
        .unwrap()
        .unwrap();
    assert!(lonely.cluster.publish("maintenance_mode", &json!(true)).await.is_err());
    assert!(lonely.flags.send(GetFlags).await.unwrap().maintenance_mode);
    assert!(!follower.is_finished(), "the follower keeps retrying");
    follower.abort();
}

#[actix_rt::test]
async fn a_node_cut_off_from_redis_catches_up_when_it_returns() {
    let prefix = unique_prefix("cut");
    let mut proxy = Proxy::start(REDIS.parse().unwrap()).await;
    let a = node(&url(), &prefix, &[]);
    // Only the read after reconnecting can bring what B missed: no periodic read.
    let b = node(&format!("redis://127.0.0.1:{}/0", proxy.port), &prefix, &[]);
    let follower = b.cluster.clone().resync_every(Duration::from_secs(3600)).spawn();
    let mut on_b = b.snapshots().await;
    a.set("enableAPM", json!(true)).await;
    seen(&mut on_b, "a change before the cut", |f| f.enable_apm).await;

    // Redis "goes away" for B, and the message of this change is lost to it.
    proxy.cut().await;
    a.set("maintenance_mode", json!(true)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!b.flags.send(GetFlags).await.unwrap().maintenance_mode);

    proxy.restore().await;
    seen(&mut on_b, "the missed change after reconnecting", |f| f.maintenance_mode).await;

    follower.abort();
    proxy.cut().await;
    clean_up(&prefix).await;
}

/// A TCP relay to Redis that a test can cut (closing every connection and the port) and
/// restore on the same port: Redis going away for one node only.
struct Proxy {
    port: u16,
    target: SocketAddr,
    acceptor: Option<actix_rt::task::JoinHandle<()>>,
    relays: Arc<Mutex<Vec<actix_rt::task::JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut proxy = Proxy { port, target, acceptor: None, relays: Arc::default() };
        proxy.accept(listener);
        proxy
    }

    fn accept(&mut self, listener: TcpListener) {
        let (target, relays) = (self.target, self.relays.clone());
        self.acceptor = Some(actix_rt::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let relay = actix_rt::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                relays.lock().unwrap().push(relay);
            }
        }));
    }

    /// Closes the port and every relayed connection, and waits until they are closed.
    async fn cut(&mut self) {
        let mut tasks: Vec<_> = self.relays.lock().unwrap().drain(..).collect();
        tasks.extend(self.acceptor.take());
        for task in &tasks {
            task.abort();
        }
        for task in tasks {
            let _ = task.await;
        }
    }

    async fn restore(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        self.accept(listener);
    }
}
