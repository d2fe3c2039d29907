//! The fleet link end to end on loopback: devices running guardian's real
//! reporter, a three-node NATS JetStream cluster (R3), and guardian-fleet
//! instances. Nothing lost and nothing doubled in the store, compared by
//! sequence numbers, through `kill -9` of a NATS node and of a fleet
//! instance; bad input refused with its reason and nothing stored under the
//! wrong device.
//!
//! nats-server comes from `cross/setup.sh` (or `GUARDIAN_NATS_SERVER`, or
//! PATH). Without it these tests fail, saying so.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../guardian-report/tests/support/nats.rs"]
mod support;
use support::{free_port, nats_server};

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use async_nats::jetstream;
use futures_util::StreamExt;
use guardian_fleet::{
    service::{self, Counters, STORE_STREAM, ServiceConfig},
    store::Stored,
};
use guardian_report::{
    Class, Fsync, LinkConfig, Reporter, Spool, SpoolConfig, spool::Record, wire,
};

struct Node {
    name: String,
    child: Option<Child>,
    conf: PathBuf,
    port: u16,
}

impl Node {
    fn spawn(&mut self) {
        let child = Command::new(nats_server())
            .arg("-c")
            .arg(&self.conf)
            .arg("-l")
            .arg(self.conf.with_extension("log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "{} did not listen", self.name);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }
    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Three nodes with routes to each other, JetStream on each.
fn cluster(dir: &Path) -> Vec<Node> {
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let mut nodes = Vec::new();
    for (i, (port, cport)) in ports.iter().enumerate() {
        let name = format!("n{}", i + 1);
        let routes: Vec<String> = ports
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, (_, c))| format!("nats-route://127.0.0.1:{c}"))
            .collect();
        let conf = dir.join(format!("{name}.conf"));
        std::fs::write(
            &conf,
            format!(
                "server_name: {name}\nlisten: 127.0.0.1:{port}\njetstream {{ store_dir: {:?} }}\n\
                 cluster {{ name: guardian-test, listen: 127.0.0.1:{cport}, routes: [{}] }}\n",
                dir.join(&name),
                routes.join(", ")
            ),
        )
        .unwrap();
        nodes.push(Node {
            name,
            child: None,
            conf,
            port: *port,
        });
    }
    for n in &mut nodes {
        n.spawn();
    }
    nodes
}

fn urls(nodes: &[Node]) -> Vec<String> {
    nodes.iter().map(Node::url).collect()
}

async fn js(nodes: &[Node]) -> jetstream::Context {
    jetstream::new(service::connect(&urls(nodes), "test").await.unwrap())
}

/// Wait for the cluster to elect its JetStream leader and make the fleet's
/// streams (R3).
async fn ready(nodes: &[Node]) -> jetstream::Context {
    let js = js(nodes).await;
    let mut cfg = ServiceConfig::new(urls(nodes));
    cfg.replicas = 3;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match service::ensure(&js, &cfg).await {
            Ok(()) => return js,
            Err(e) => {
                assert!(Instant::now() < deadline, "cluster not ready: {e:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// A fleet instance as its own process (so it can be killed with SIGKILL),
/// logging to DIR/NAME.log; killed when dropped.
struct Instance(Child);

impl Instance {
    fn start(nodes: &[Node], dir: &Path, name: &str) -> Instance {
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
        Instance(
            Command::new(env!("CARGO_BIN_EXE_guardian-fleet"))
                .arg("--nats")
                .arg(urls(nodes).join(","))
                .args([
                    "serve",
                    "--replicas",
                    "3",
                    "--ack-wait",
                    "3s",
                    "--instance",
                    name,
                ])
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        )
    }
    fn kill9(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Every message in the store, in order, or those of one device
/// (`device`); each checked to be on its device's subject.
async fn stored_messages(js: &jetstream::Context, device: Option<&str>) -> Vec<Stored> {
    // Right after the cluster came back (a leader election, under the load
    // of the other tests), reading may need a few tries.
    let deadline = Instant::now() + Duration::from_secs(60);
    let consumer = loop {
        let made = match js.get_stream(STORE_STREAM).await {
            Ok(stream) => stream
                .create_consumer(jetstream::consumer::pull::OrderedConfig {
                    filter_subject: device
                        .map(|d| format!("guardian.store.{d}"))
                        .unwrap_or_default(),
                    ..Default::default()
                })
                .await
                .map_err(|e| format!("{e:?}")),
            Err(e) => Err(format!("{e:?}")),
        };
        match made {
            Ok(c) => break c,
            Err(e) => {
                assert!(Instant::now() < deadline, "reading the store: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    let mut msgs = consumer.messages().await.unwrap();
    let mut out = Vec::new();
    loop {
        let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(2), msgs.next()).await else {
            break;
        };
        let m = m.unwrap();
        let pending = m.info().unwrap().pending;
        let s: Stored = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(m.subject.as_str(), format!("guardian.store.{}", s.device));
        out.push(s);
        if pending == 0 {
            break;
        }
    }
    out
}

/// Every stored record per device: seq -> times stored.
async fn stored(js: &jetstream::Context) -> BTreeMap<String, BTreeMap<u64, u32>> {
    let mut out: BTreeMap<String, BTreeMap<u64, u32>> = BTreeMap::new();
    for s in stored_messages(js, None).await {
        let dev = out.entry(s.device).or_default();
        for r in s.records {
            *dev.entry(r.seq).or_insert(0) += 1;
        }
    }
    out
}

fn device(dir: &Path, id: &str, servers: Vec<String>) -> Reporter {
    let spool = Spool::open(SpoolConfig {
        dir: dir.join(id),
        max_bytes: 64 << 20,
        segment_bytes: 1 << 20,
        fsync: Fsync::Interval(Duration::from_millis(50)),
    })
    .unwrap();
    let mut cfg = LinkConfig::new(id, servers);
    cfg.backoff_max = Duration::from_millis(500);
    cfg.ack_timeout = Duration::from_secs(3);
    Reporter::start(spool, cfg).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_lost_nothing_doubled_through_node_and_instance_kills() {
    let tmp = tempfile::tempdir().unwrap();
    // GUARDIAN_KEEP_TEST_DIR=1 keeps the nodes' and instances' logs.
    let tmp_keep = tmp.path().to_owned();
    let _tmp = if std::env::var_os("GUARDIAN_KEEP_TEST_DIR").is_some() {
        eprintln!("cluster in {}", tmp_keep.display());
        std::mem::forget(tmp);
        None
    } else {
        Some(tmp)
    };
    let mut nodes = cluster(&tmp_keep);
    let js = ready(&nodes).await;
    let mut fleet_a = Instance::start(&nodes, &tmp_keep, "fleet-a");
    let fleet_b = Instance::start(&nodes, &tmp_keep, "fleet-b");
    let devices: Vec<(String, Reporter)> = (0..12)
        .map(|i| {
            let id = format!("board-{i:02}");
            // Each device knows every node, starting at a different one.
            let mut servers = urls(&nodes);
            servers.rotate_left(i % 3);
            let r = device(&tmp_keep, &id, servers);
            (id, r)
        })
        .collect();
    let per_device = 3000u32;
    let mut victim = 0;
    let classes = [
        Class::Event,
        Class::Alert,
        Class::Status,
        Class::Measurement,
    ];
    for i in 0..per_device {
        for (id, r) in &devices {
            let body = format!(r#"{{"device":"{id}","n":{i}}}"#);
            while !r.submit(classes[i as usize % 4], body.clone().into_bytes()) {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        // About 6 s of traffic, so each fault lasts seconds under load.
        if i % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if i == per_device / 3 {
            // The node leading the ingest stream dies: the streams are R3,
            // a new leader is elected, the devices on it move on.
            let leader = js
                .get_stream(service::INGEST_STREAM)
                .await
                .unwrap()
                .info()
                .await
                .unwrap()
                .cluster
                .as_ref()
                .and_then(|c| c.leader.clone())
                .unwrap();
            victim = nodes.iter().position(|n| n.name == leader).unwrap();
            nodes[victim].kill9();
        }
        if i == per_device / 2 {
            // A fleet instance dies mid-batch: the other takes its unacked
            // work after ack_wait.
            fleet_a.kill9();
        }
        if i == 2 * per_device / 3 {
            nodes[victim].spawn();
        }
    }
    // Every device's spool drains (the stream has acknowledged everything).
    let deadline = Instant::now() + Duration::from_secs(180);
    for (id, r) in &devices {
        loop {
            let st = r.status();
            if st.link.queued == 0 && st.spool.depth == 0 && st.spool.unsynced == 0 {
                break;
            }
            assert!(Instant::now() < deadline, "{id} not drained: {st:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // The kill was felt: the devices on the dead node reconnected elsewhere.
    let reconnected = devices
        .iter()
        .filter(|(_, r)| r.status().link.reconnects > 0)
        .count();
    assert!(
        reconnected > 0,
        "no device lost its node: the fault was not exercised"
    );
    // And the fleet has stored everything: wait for the store to be complete.
    let given: BTreeMap<String, u64> = devices
        .iter()
        .map(|(id, r)| (id.clone(), r.status().spool.next_seq - 1))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    let got = loop {
        let got = stored(&js).await;
        let complete = given
            .iter()
            .all(|(id, n)| got.get(id).map(|s| s.len() as u64) == Some(*n));
        if complete || Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    for (id, n) in &given {
        let seqs = got
            .get(id)
            .unwrap_or_else(|| panic!("{id}: nothing stored"));
        let missing: Vec<u64> = (1..=*n).filter(|s| !seqs.contains_key(s)).collect();
        assert!(
            missing.is_empty(),
            "{id}: {} lost, first {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        let doubled: Vec<(&u64, &u32)> = seqs.iter().filter(|(_, c)| **c > 1).collect();
        assert!(
            doubled.is_empty(),
            "{id}: stored twice: {:?}",
            &doubled[..doubled.len().min(5)]
        );
        assert_eq!(
            seqs.len() as u64,
            *n,
            "{id}: records that no device produced"
        );
    }
    // The device state in key-value agrees (a cache, written beside the
    // store: it converges).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let agree = match guardian_fleet::query::devices(&js).await {
            Ok(states) => {
                states.len() == devices.len()
                    && states.iter().all(|s| {
                        let e = &s.summary.epochs[s.summary.current_epoch.as_ref().unwrap()];
                        e.count() == given[&s.device] && e.unexplained() == 0
                    })
            }
            Err(_) => false,
        };
        if agree {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "device state in key-value did not converge"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(fleet_b);
    for (_, r) in devices {
        r.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_nothing_is_stored_under_the_wrong_device() {
    let tmp = tempfile::tempdir().unwrap();
    let nodes = cluster(tmp.path());
    let js = ready(&nodes).await;
    let counters = Arc::new(Counters::default());
    let mut cfg = ServiceConfig::new(urls(&nodes));
    cfg.replicas = 3;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let svc = tokio::spawn(service::serve(cfg, "fleet-t", counters.clone(), async {
        let _ = stop_rx.await;
    }));
    let client = service::connect(&urls(&nodes), "attacker").await.unwrap();
    let pub_js = jetstream::new(client);
    let rec = |seq| Record {
        seq,
        time_ms: 1,
        class: Class::Alert,
        payload: br#"{"forged":true}"#.to_vec(),
    };
    // A device claiming another's id (publishing on its own subject).
    let forged = wire::encode("victim", 1, &[rec(1)]).unwrap();
    pub_js
        .publish("guardian.in.mallory", forged.into())
        .await
        .unwrap()
        .await
        .unwrap();
    // Malformed, an unknown class, out of order, oversized.
    pub_js
        .publish("guardian.in.mallory", "{not json".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let text = String::from_utf8(wire::encode("mallory", 1, &[rec(1)]).unwrap()).unwrap();
    pub_js
        .publish(
            "guardian.in.mallory",
            text.replace("\"alert\"", "\"root\"").into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let big = wire::encode(
        "mallory",
        1,
        &[Record {
            payload: format!("\"{}\"", "x".repeat(wire::MAX_BATCH_BYTES)).into_bytes(),
            ..rec(2)
        }],
    )
    .unwrap();
    pub_js
        .publish("guardian.in.mallory", big.into())
        .await
        .unwrap()
        .await
        .unwrap();
    // And one good batch, which must be stored.
    let good = wire::encode("mallory", 7, &[rec(1), rec(2)]).unwrap();
    pub_js
        .publish("guardian.in.mallory", good.into())
        .await
        .unwrap()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while counters
        .records_stored
        .load(std::sync::atomic::Ordering::Relaxed)
        < 2
    {
        assert!(
            Instant::now() < deadline,
            "good batch not stored: {counters:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(counters.rejected_wrong_device.load(Relaxed), 1);
    assert_eq!(counters.rejected_malformed.load(Relaxed), 2);
    assert_eq!(counters.rejected_oversize.load(Relaxed), 1);
    let got = stored(&js).await;
    assert!(
        !got.contains_key("victim"),
        "a record stored under the device another claimed"
    );
    assert_eq!(got["mallory"].len(), 2);
    let _ = stop_tx.send(());
    svc.await.unwrap().unwrap();
}

/// Every stored record of one device, as stored (class and body kept).
async fn stored_records(js: &jetstream::Context, device: &str) -> Vec<wire::WireRecord> {
    stored_messages(js, Some(device))
        .await
        .into_iter()
        .flat_map(|s| s.records)
        .collect()
}

/// A device cut off from the fleet long enough to fill its spool: the
/// spool drops what matters least (never an alert while anything less
/// important is held), says so in drop notices, and once the fleet is back
/// every sequence number the device gave is accounted for at the fleet,
/// exactly: stored once, or inside a span a notice reported, with the
/// spans' counts equal to what the device dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_is_accounted_for_at_the_fleet_number_by_number() {
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = cluster(tmp.path());
    let js = ready(&nodes).await;
    let _fleet = Instance::start(&nodes, tmp.path(), "fleet");
    // The whole cluster goes away while the device produces.
    for n in nodes.iter_mut() {
        n.kill9();
    }
    let id = "board-full";
    let spool = Spool::open(SpoolConfig {
        dir: tmp.path().join(id),
        max_bytes: 64 << 10,
        segment_bytes: 8 << 10,
        fsync: Fsync::Interval(Duration::from_millis(50)),
    })
    .unwrap();
    let mut cfg = LinkConfig::new(id, urls(&nodes));
    cfg.backoff_max = Duration::from_millis(500);
    cfg.ack_timeout = Duration::from_secs(3);
    let r = Reporter::start(spool, cfg).unwrap();
    // About 450 KB of records into a 64 KiB spool: one in fifty an alert,
    // one in seven a status summary, the rest events.
    let mut alerts = 0u64;
    for i in 0..3000u32 {
        let class = if i % 50 == 0 {
            alerts += 1;
            Class::Alert
        } else if i % 7 == 0 {
            Class::Status
        } else {
            Class::Event
        };
        let body = format!(r#"{{"n":{i},"pad":"{}"}}"#, "x".repeat(100));
        while !r.submit(class, body.clone().into_bytes()) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if i % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while r.status().link.queued > 0 || r.status().spool.unsynced > 0 {
        assert!(
            Instant::now() < deadline,
            "the spool did not take the records"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = r.status();
    let spool_drops: u64 = before.spool.dropped.iter().sum();
    assert!(
        spool_drops > 1000,
        "the spool never filled: {:?}",
        before.spool
    );
    // The fleet comes back; the spool drains.
    for n in nodes.iter_mut() {
        n.spawn();
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while !r.drained() {
        assert!(Instant::now() < deadline, "not drained: {:?}", r.status());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let st = r.status();
    let given = st.spool.next_seq - 1;
    // Read the store until it holds all that was sent.
    let deadline = Instant::now() + Duration::from_secs(60);
    let records = loop {
        let recs = stored_records(&js, id).await;
        let highest = recs.iter().map(|r| r.seq).max().unwrap_or(0);
        if highest == given || Instant::now() > deadline {
            break recs;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let mut stored: BTreeMap<u64, u32> = BTreeMap::new();
    let mut spans = std::collections::BTreeSet::new();
    let mut stored_alerts = 0u64;
    for rec in &records {
        *stored.entry(rec.seq).or_insert(0) += 1;
        match rec.class.as_str() {
            "drop" => {
                let n: guardian_report::spool::DropNotice =
                    serde_json::from_str(rec.body.get()).unwrap();
                assert!(!n.more, "a notice left spans out: {n:?}");
                spans.extend(n.spans);
            }
            "alert" => stored_alerts += 1,
            _ => {}
        }
    }
    let doubled: Vec<_> = stored.iter().filter(|(_, c)| **c > 1).collect();
    assert!(doubled.is_empty(), "stored twice: {doubled:?}");
    eprintln!(
        "{given} numbers given, {} stored, {spool_drops} dropped by the spool in {} spans, {alerts} alerts all stored",
        stored.len(),
        spans.len()
    );
    let span_dropped: u64 = spans.iter().map(|s| s.dropped).sum();
    assert_eq!(
        span_dropped, spool_drops,
        "the notices at the fleet do not add up to what the spool dropped"
    );
    assert_eq!(
        stored.len() as u64 + span_dropped,
        given,
        "stored plus dropped is not every number given"
    );
    for seq in 1..=given {
        if !stored.contains_key(&seq) {
            assert!(
                spans.iter().any(|s| s.from <= seq && seq <= s.to),
                "seq {seq} is neither stored nor inside a reported span"
            );
        }
    }
    assert_eq!(
        stored_alerts, alerts,
        "an alert was dropped while less important records were held"
    );
    assert_eq!(before.spool.dropped[Class::Alert as usize], 0);
    // The device's state in key-value says the same.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let states = guardian_fleet::query::devices(&js)
            .await
            .unwrap_or_default();
        if let Some(s) = states.iter().find(|s| s.device == id) {
            let e = &s.summary.epochs[s.summary.current_epoch.as_ref().unwrap()];
            if e.count() == stored.len() as u64 {
                assert_eq!(e.unexplained(), 0);
                assert_eq!(e.dropped(), spool_drops + st.link.queue_drops);
                break;
            }
        }
        assert!(Instant::now() < deadline, "device state did not converge");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    r.shutdown().await;
}

/// A webhook receiver on loopback: answers the first call 503, then 200,
/// and passes on every body it accepted.
async fn webhook_receiver() -> (
    String,
    tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks/guardian", l.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut calls = 0;
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            calls += 1;
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            let body = loop {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0, "the webhook call ended early");
                req.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&req).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let len: usize = text
                        .lines()
                        .find_map(|l| l.strip_prefix("Content-Length: "))
                        .unwrap()
                        .trim()
                        .parse()
                        .unwrap();
                    if req.len() >= end + 4 + len {
                        assert!(text.starts_with("POST /hooks/guardian HTTP/1.1\r\n"));
                        break req[end + 4..end + 4 + len].to_vec();
                    }
                }
            };
            let answer = if calls == 1 {
                "HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n"
            } else {
                tx.send(serde_json::from_slice(&body).unwrap()).unwrap();
                "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
            };
            s.write_all(answer.as_bytes()).await.unwrap();
        }
    });
    (url, rx)
}

/// Alerts end to end, with two fleet instances sharing the work: a denied
/// tamper attempt, a guard unloaded, and the device then going silent are
/// each one alert on the alert stream (the silence swept by both
/// instances, published once), each delivered once to a webhook whose
/// first answer was a refusal, and counted in `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_reach_the_stream_and_the_webhook_once_each() {
    let tmp = tempfile::tempdir().unwrap();
    let nodes = cluster(tmp.path());
    let js = ready(&nodes).await;
    let (hook_url, mut hooks) = webhook_receiver().await;
    let metrics_addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut instances = Vec::new();
    let counters_a = Arc::new(Counters::default());
    for (name, with_outputs) in [("fleet-a", true), ("fleet-b", false)] {
        let mut cfg = ServiceConfig::new(urls(&nodes));
        cfg.replicas = 3;
        cfg.silent_after = Duration::from_secs(4);
        cfg.sweep_every = Duration::from_secs(1);
        if with_outputs {
            cfg.webhook = Some(hook_url.clone());
            cfg.listen = Some(metrics_addr);
        }
        let counters = if with_outputs {
            counters_a.clone()
        } else {
            Arc::new(Counters::default())
        };
        let mut stop = stop_rx.clone();
        instances.push(tokio::spawn(service::serve(
            cfg,
            name,
            counters,
            async move {
                let _ = stop.changed().await;
            },
        )));
    }
    let id = "board-alerts";
    let r = device(tmp.path(), id, urls(&nodes));
    let tamper = r#"{"event":"file_write_open","verdict":"deny","mode":"enforce","file":"/opt/models/model.onnx","exe":"/tmp/evil"}"#;
    let unload = r#"{"kind":"guard","action":"unload","mode":"enforce","detail":"the agent stopped; its kernel programs are detached"}"#;
    for (class, body) in [
        (Class::Status, r#"{"mode":"enforce"}"#),
        (
            Class::Event,
            r#"{"event":"file_write_open","verdict":"allow"}"#,
        ),
        (Class::Alert, tamper),
        (Class::Measurement, r#"{"kind":"guard","action":"start"}"#),
        (Class::Alert, unload),
    ] {
        assert!(r.submit(class, body.as_bytes().to_vec()));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while !r.drained() {
        assert!(Instant::now() < deadline, "not drained: {:?}", r.status());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The device says nothing more.
    r.shutdown().await;
    // The webhook: the first call refused, then each alert once.
    let mut delivered = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while delivered.len() < 3 {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, hooks.recv()).await {
            Ok(Some(v)) => delivered.push(v),
            _ => panic!("webhook got only {delivered:?}"),
        }
    }
    // Nothing more comes (no alert twice), while both instances sweep.
    assert!(
        tokio::time::timeout(Duration::from_secs(8), hooks.recv())
            .await
            .is_err(),
        "an alert was delivered twice"
    );
    let mut kinds: Vec<String> = delivered
        .iter()
        .map(|v| v["kind"].as_str().unwrap().to_owned())
        .collect();
    kinds.sort();
    assert_eq!(kinds, ["guard", "silent", "tamper_attempt"]);
    let t = delivered
        .iter()
        .find(|v| v["kind"] == "tamper_attempt")
        .unwrap();
    assert_eq!(t["device"], id);
    assert_eq!(t["evidence"]["file"], "/opt/models/model.onnx");
    assert!(t["what"].as_str().unwrap().contains("/tmp/evil"));
    assert!(t["seq"].as_u64().is_some() && t["since_ms"].as_u64().unwrap() > 0);
    let s = delivered.iter().find(|v| v["kind"] == "silent").unwrap();
    assert!(s["what"].as_str().unwrap().contains("no report for"));
    // The alert stream holds the same three, once each.
    let stream = js
        .get_stream(guardian_fleet::alerts::ALERT_STREAM)
        .await
        .unwrap();
    let mut info = stream.clone();
    assert_eq!(info.info().await.unwrap().state.messages, 3);
    // /metrics on the instance with the webhook.
    let text = {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut s = tokio::net::TcpStream::connect(metrics_addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    };
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(
        text.contains("\nguardian_fleet_webhook_delivered_total 3\n"),
        "{text}"
    );
    assert!(
        text.contains("\nguardian_fleet_webhook_failures_total 1\n"),
        "{text}"
    );
    assert!(
        text.contains("guardian_fleet_devices{state=\"silent\"} 1"),
        "{text}"
    );
    assert!(text.contains("\nguardian_fleet_consumer_lag 0\n"), "{text}");
    // What the operator types.
    let cli = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_guardian-fleet"))
            .arg("--nats")
            .arg(urls(&nodes).join(","))
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let listed = cli(&["alerts", "--device", id]);
    assert_eq!(listed.lines().count(), 3, "{listed}");
    for kind in ["tamper_attempt", "guard", "silent"] {
        assert!(listed.contains(kind), "{listed}");
    }
    let shown = cli(&["device", id]);
    assert!(shown.contains(&format!("device      {id}")), "{shown}");
    assert!(
        shown.contains("alerts (3):") && shown.contains("records (5):"),
        "{shown}"
    );
    assert!(shown.contains("0 unexplained"), "{shown}");
    let _ = stop_tx.send(true);
    for i in instances {
        i.await.unwrap().unwrap();
    }
}

/// The store's concurrency attacked: a backlog of overlapping batches
/// (resends cut differently, the same batch resent under another id) for
/// many devices, so each lane takes many devices at once and stores each
/// device's queued batches in one message; two instances on the same
/// consumer; every store publish failing for a while (the store refuses
/// messages over a size it is set to), so runs fail mid-pipeline beside
/// runs that succeed; one instance killed with SIGKILL, its unacknowledged
/// messages redelivered to the other; and some devices whose records an
/// earlier instance stored without acknowledging the ingest messages. The
/// store must hold every sequence number once, and each device's last
/// summary must say exactly that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_together_and_concurrently_still_exactly_once() {
    use std::sync::atomic::Ordering::Relaxed;
    let tmp = tempfile::tempdir().unwrap();
    let nodes = cluster(tmp.path());
    let js = ready(&nodes).await;
    let store = js.get_stream(STORE_STREAM).await.unwrap();
    let mut limited = store.cached_info().config.clone();
    limited.max_message_size = 2_000;
    js.update_stream(&limited).await.unwrap();

    let devices: Vec<String> = (0..40).map(|i| format!("dev-{i:02}")).collect();
    let epoch = 0x5eed_u64;
    let rec = |dev: &str, seq: u64| Record {
        seq,
        time_ms: seq,
        class: if seq.is_multiple_of(7) {
            Class::Alert
        } else {
            Class::Event
        },
        payload: format!(
            r#"{{"device":"{dev}","seq":{seq},"pad":"{}"}}"#,
            "p".repeat(60)
        )
        .into_bytes(),
    };
    let batch = |dev: &str, seqs: std::ops::RangeInclusive<u64>| {
        let recs: Vec<Record> = seqs.map(|s| rec(dev, s)).collect();
        wire::encode(dev, epoch, &recs).unwrap()
    };
    // Five devices whose 1..=3 an instance stored and died before
    // acknowledging: the ingest batches come (again) and must be
    // duplicates.
    for dev in &devices[..5] {
        let b = wire::decode(&batch(dev, 1..=3)).unwrap();
        let bs = [b];
        let fresh = guardian_fleet::store::new_records(&Default::default(), &bs);
        let summary = guardian_fleet::store::updated(&Default::default(), &bs, &fresh, 1);
        let [b] = bs;
        let s = Stored {
            device: dev.clone(),
            epoch: b.epoch.clone(),
            stored_ms: 1,
            records: b.records,
            summary,
            newly_missing: 0,
        };
        let mut h = async_nats::HeaderMap::new();
        h.insert("Nats-Expected-Last-Subject-Sequence", "0");
        js.publish_with_headers(
            format!("guardian.store.{dev}"),
            h,
            serde_json::to_vec(&s).unwrap().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    // The backlog, interleaved across devices: overlapping resends, a
    // whole resend, the same batch under two ids.
    let cuts: [std::ops::RangeInclusive<u64>; 7] =
        [1..=10, 5..=20, 1..=20, 21..=40, 5..=20, 35..=60, 41..=60];
    for (k, cut) in cuts.iter().enumerate() {
        for dev in &devices {
            let mut h = async_nats::HeaderMap::new();
            h.insert("Nats-Msg-Id", format!("{dev}.{k}").as_str());
            js.publish_with_headers(
                format!("guardian.in.{dev}"),
                h,
                batch(dev, cut.clone()).into(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        }
    }

    let mut fleet_a = Instance::start(&nodes, tmp.path(), "fleet-a");
    let counters = Arc::new(Counters::default());
    let mut cfg = ServiceConfig::new(urls(&nodes));
    cfg.replicas = 3;
    cfg.ack_wait = Duration::from_secs(3);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let svc = tokio::spawn(service::serve(cfg, "fleet-b", counters.clone(), async {
        let _ = stop_rx.await;
    }));
    // Publishes fail while the limit holds (every message with more than a
    // dozen records is over it); some small ones go through.
    tokio::time::sleep(Duration::from_secs(3)).await;
    fleet_a.kill9();
    let mut open = limited.clone();
    open.max_message_size = -1;
    js.update_stream(&open).await.unwrap();

    let want: u64 = 60;
    let deadline = Instant::now() + Duration::from_secs(60);
    let got = loop {
        let got = stored(&js).await;
        let complete = devices
            .iter()
            .all(|d| got.get(d).is_some_and(|s| s.len() as u64 == want));
        if complete {
            // Redelivered messages may still come; they must change
            // nothing.
            tokio::time::sleep(Duration::from_secs(4)).await;
            break stored(&js).await;
        }
        assert!(
            Instant::now() < deadline,
            "not everything stored: {:?} (fleet-b: {counters:?})",
            got.iter().map(|(d, s)| (d, s.len())).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let fleet_a_log = std::fs::read_to_string(tmp.path().join("fleet-a.log")).unwrap();
    let failed_a = fleet_a_log.contains("they will be retried");
    assert!(
        counters.store_errors.load(Relaxed) > 0 || failed_a,
        "no store publish failed: the test did not attack what it means to"
    );
    let mut most = 0;
    for dev in &devices {
        let seqs = &got[dev];
        let doubled: Vec<_> = seqs.iter().filter(|(_, n)| **n != 1).collect();
        assert!(
            doubled.is_empty(),
            "{dev}: stored more than once: {doubled:?}"
        );
        assert_eq!(
            seqs.keys().copied().collect::<Vec<_>>(),
            (1..=want).collect::<Vec<_>>(),
            "{dev}"
        );
        let last = store
            .get_last_raw_message_by_subject(&format!("guardian.store.{dev}"))
            .await
            .unwrap();
        let s: Stored = serde_json::from_slice(&last.payload).unwrap();
        let e = &s.summary.epochs[&format!("{epoch:016x}")];
        assert_eq!(e.stored, vec![(1, want)], "{dev}: the summary");
        assert_eq!(e.by_class.values().sum::<u64>(), want, "{dev}: by class");
        assert_eq!(e.unexplained(), 0);
        most = most.max(most_in_one_message(&js, dev).await);
    }
    // The widest batch is 26 records: a message with more holds several
    // batches of one device stored together.
    assert!(
        most > 26,
        "no device had batches stored together (at most {most} records in one message)"
    );
    let _ = stop_tx.send(());
    svc.await.unwrap().unwrap();
}

/// The most records in one stored message of `device`.
async fn most_in_one_message(js: &jetstream::Context, device: &str) -> usize {
    stored_messages(js, Some(device))
        .await
        .iter()
        .map(|s| s.records.len())
        .max()
        .unwrap_or(0)
}

/// Root removes a spool segment while the agent is stopped (where no BPF
/// LSM denies it): the restarted agent's spool has no record of them and
/// sends no notice, so the fleet sees a gap nothing explains. Once two
/// status summaries from the device say its spool holds nothing below the
/// gap, the fleet raises one `records_missing` alert naming how many will
/// never arrive; a device whose records merely came late raises none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_removed_while_the_agent_was_stopped_are_found_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = cluster(tmp.path());
    let js = ready(&nodes).await;
    let _fleet = Instance::start(&nodes, tmp.path(), "fleet");
    let id = "board-rm";
    let dir = tmp.path().join(id);
    let spool = || {
        Spool::open(SpoolConfig {
            dir: dir.clone(),
            max_bytes: 8 << 20,
            segment_bytes: 2 << 10,
            fsync: Fsync::Interval(Duration::from_millis(50)),
        })
        .unwrap()
    };
    let servers = urls(&nodes);
    let start = |spool: Spool| {
        let mut cfg = LinkConfig::new(id, servers.clone());
        cfg.backoff_max = Duration::from_millis(500);
        cfg.ack_timeout = Duration::from_secs(3);
        Reporter::start(spool, cfg).unwrap()
    };
    // What the agent sends as its status summary: its report status.
    let status = |r: &Reporter| {
        let body = serde_json::json!({ "report": r.status() });
        assert!(r.submit(Class::Status, body.to_string().into_bytes()));
    };
    let events = |r: &Reporter, n: u32| {
        for i in 0..n {
            let body = format!(r#"{{"n":{i},"pad":"{}"}}"#, "x".repeat(100));
            assert!(r.submit(Class::Event, body.into_bytes()));
        }
    };
    let r = start(spool());
    events(&r, 10);
    wait_drained(&r).await;
    // The instance is serving (it stored them) before the cluster goes.
    let deadline = Instant::now() + Duration::from_secs(60);
    while stored_records(&js, id).await.len() < 10 {
        assert!(Instant::now() < deadline, "the first records not stored");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The fleet away; 100 records wait in 2 KiB segments; the agent stops.
    for n in nodes.iter_mut() {
        n.kill9();
    }
    events(&r, 100);
    let deadline = Instant::now() + Duration::from_secs(10);
    while r.status().link.queued > 0 || r.status().spool.unsynced > 0 {
        assert!(Instant::now() < deadline, "{:?}", r.status());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    r.shutdown().await;
    let mut segs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segs.sort();
    assert!(segs.len() >= 4, "{segs:?}");
    let first_of = |p: &Path| -> u64 { p.file_stem().unwrap().to_str().unwrap().parse().unwrap() };
    let gone = first_of(&segs[2]) - first_of(&segs[1]);
    std::fs::remove_file(&segs[1]).unwrap();

    // The fleet back, the agent restarted: what is left arrives.
    for n in nodes.iter_mut() {
        n.spawn();
    }
    let r = start(spool());
    wait_drained(&r).await;
    // Everything sent is stored before the summaries come (the instance
    // recovers from the whole cluster's restart in its own time; under a
    // loaded machine that has taken over a minute).
    let instance_log = || {
        let log = std::fs::read_to_string(tmp.path().join("fleet.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        tail.join("\n")
    };
    let given = r.status().spool.next_seq - 1;
    let deadline = Instant::now() + Duration::from_secs(180);
    while stored_records(&js, id).await.iter().map(|r| r.seq).max() != Some(given) {
        assert!(
            Instant::now() < deadline,
            "not stored up to {given} in 180 s; the instance said (last lines first):\n{}",
            instance_log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let alerts = |kind: &'static str| {
        let js = js.clone();
        async move {
            guardian_fleet::query::alerts(
                &js,
                Some(id),
                std::time::SystemTime::now() - Duration::from_secs(600),
            )
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|a| a.kind == kind)
            .collect::<Vec<_>>()
        }
    };
    // One summary: the gap is settling, not yet settled.
    status(&r);
    wait_drained(&r).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(alerts("records_missing").await.is_empty());
    // The next settles it.
    status(&r);
    wait_drained(&r).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    let found = loop {
        let a = alerts("records_missing").await;
        if !a.is_empty() {
            break a;
        }
        assert!(
            Instant::now() < deadline,
            "no records_missing alert; the instance said (last lines first):\n{}",
            instance_log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].evidence["newly_missing"], gone, "{found:?}");
    assert!(
        found[0]
            .what
            .starts_with(&format!("{gone} records will never arrive")),
        "{}",
        found[0].what
    );
    // More summaries: the same gap is not alerted again.
    status(&r);
    status(&r);
    wait_drained(&r).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(alerts("records_missing").await.len(), 1);
    r.shutdown().await;
}

/// Wait (60 s at most) until `r` has nothing left to send.
async fn wait_drained(r: &Reporter) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !r.drained() {
        assert!(Instant::now() < deadline, "not drained: {:?}", r.status());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
