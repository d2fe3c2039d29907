//! `guardian-fleet lab` starts a working fleet in one command: a device
//! running guardian's reporter reports to it and `guardian-fleet status`
//! shows the device; and a broker with per-device permissions (the
//! authorization block `lab::authorization` writes) refuses a device
//! publishing as another, whether devices log in with a password or
//! with a client certificate mapped to their user (`verify_and_map`).
//!
//! nats-server comes from `cross/setup.sh` (or `GUARDIAN_NATS_SERVER`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../guardian-report/tests/support/nats.rs"]
mod support;
use support::{free_port, nats_server, start_server};
#[path = "../../guardian-report/tests/support/pki.rs"]
mod pki;

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use guardian_report::{
    Class, Fsync, LinkConfig, Reporter, Spool, SpoolConfig,
    nats::{Conn, Credentials, Incoming, LinkError},
};

/// Publish on `subject` and expect the broker's permissions violation.
async fn publish_is_refused(conn: &mut Conn, subject: &str) {
    conn.publish(subject, "x", "1", b"{}").await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), conn.replies.recv())
        .await
        .unwrap()
        .unwrap();
    match got {
        Err(LinkError::Refused { what, .. }) => {
            assert!(what.contains("Permissions Violation"), "{what}")
        }
        other => panic!("expected a permissions violation on {subject}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lab_starts_in_one_command_and_shows_a_reporting_device() {
    let tmp = tempfile::tempdir().unwrap();
    let (port, mqtt, http) = (free_port(), free_port(), free_port());
    let url = format!("nats://127.0.0.1:{port}");
    let mut lab = Command::new(env!("CARGO_BIN_EXE_guardian-fleet"))
        .args([
            "--nats",
            &url,
            "lab",
            "--port",
            &port.to_string(),
            "--mqtt-port",
            &mqtt.to_string(),
        ])
        .args(["--http-port", &http.to_string(), "--dir"])
        .arg(tmp.path().join("lab"))
        .arg("--nats-server")
        .arg(nats_server())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let spool = Spool::open(SpoolConfig {
        dir: tmp.path().join("spool"),
        max_bytes: 8 << 20,
        segment_bytes: 1 << 20,
        fsync: Fsync::Always,
    })
    .unwrap();
    let r = Reporter::start(spool, LinkConfig::new("lab-board", vec![url.clone()])).unwrap();
    for i in 0..50 {
        assert!(r.submit(
            if i % 5 == 0 {
                Class::Alert
            } else {
                Class::Event
            },
            format!("{{\"n\":{i}}}").into_bytes()
        ));
    }
    // The device's records reach the store, and status shows them.
    let deadline = Instant::now() + Duration::from_secs(30);
    let table = loop {
        let out = Command::new(env!("CARGO_BIN_EXE_guardian-fleet"))
            .args(["--nats", &url, "status", "--json"])
            .output()
            .unwrap();
        if out.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let dev = v
                .as_array()
                .unwrap()
                .iter()
                .find(|d| d["device"] == "lab-board")
                .cloned();
            if let Some(d) = dev {
                let epoch = d["summary"]["current_epoch"].as_str().unwrap().to_owned();
                let e = &d["summary"]["epochs"][&epoch];
                if e["by_class"]["alert"] == 10 && e["by_class"]["event"] == 40 {
                    let t = Command::new(env!("CARGO_BIN_EXE_guardian-fleet"))
                        .args(["--nats", &url, "status"])
                        .output()
                        .unwrap();
                    break String::from_utf8(t.stdout).unwrap();
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "the lab never showed the device's 50 records"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let line = table.lines().find(|l| l.starts_with("lab-board")).unwrap();
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cols[2], "50", "records column: {table}");
    assert_eq!(cols[3], "10", "alerts column: {table}");
    // And events shows them.
    let ev = Command::new(env!("CARGO_BIN_EXE_guardian-fleet"))
        .args(["--nats", &url, "events", "--device", "lab-board", "--json"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(ev.stdout).unwrap().lines().count(), 50);
    r.shutdown().await;
    // SIGTERM: the lab stops its nats-server too.
    let ok = Command::new("kill")
        .args(["-TERM", &lab.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while lab.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the lab did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
    let conf = tmp.path().join("lab").join("nats.conf");
    let left = Command::new("pgrep")
        .arg("-f")
        .arg(conf.display().to_string())
        .output()
        .unwrap();
    assert!(left.stdout.is_empty(), "the lab's nats-server outlived it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_cannot_publish_as_another_under_per_device_permissions() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let conf = tmp.path().join("auth.conf");
    std::fs::write(
        &conf,
        format!(
            "listen: 127.0.0.1:{port}\njetstream {{ store_dir: {:?} }}\n{}",
            tmp.path().join("js"),
            guardian_fleet::lab::authorization(
                ("fleet", "fleet-secret"),
                &[("board-a", "a-secret"), ("board-b", "b-secret")]
            )
        ),
    )
    .unwrap();
    let mut server = start_server(&conf, port);
    let url = format!("nats://127.0.0.1:{port}");
    let creds = |u: &str, p: &str| Credentials {
        user: Some(u.into()),
        password: Some(p.into()),
    };
    // Wrong password: refused at CONNECT.
    let e = Conn::connect(
        &url,
        "board-a",
        &creds("board-a", "wrong"),
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, LinkError::Refused { .. }), "{e}");
    // board-a publishing on board-b's subject: the broker refuses it.
    let mut conn = Conn::connect(
        &url,
        "board-a",
        &creds("board-a", "a-secret"),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    publish_is_refused(&mut conn, "guardian.in.board-b").await;
    // Nor answer a question asked of board-b (an attestation challenge).
    let mut conn = Conn::connect(
        &url,
        "board-a",
        &creds("board-a", "a-secret"),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    publish_is_refused(&mut conn, "guardian.answer.board-b.t1").await;
    // Its own answer subject and its own question subject are allowed: a
    // question to board-a arrives, and its answer reaches the asker.
    let fleet =
        async_nats::ConnectOptions::with_user_and_password("fleet".into(), "fleet-secret".into())
            .connect(url.as_str())
            .await
            .unwrap();
    let mut a = Conn::connect(
        &url,
        "board-a",
        &creds("board-a", "a-secret"),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    a.subscribe("guardian.ask.board-a", 2).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ask = tokio::spawn({
        let fleet = fleet.clone();
        async move {
            fleet
                .send_request(
                    "guardian.ask.board-a",
                    async_nats::Request::new()
                        .payload("q".into())
                        .inbox("guardian.answer.board-a.t2".into())
                        .timeout(Some(Duration::from_secs(5))),
                )
                .await
        }
    });
    let m = loop {
        match tokio::time::timeout(Duration::from_secs(5), a.replies.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            Incoming::Message(m) => break m,
            Incoming::Ping => a.pong().await.unwrap(),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(m.reply.as_deref(), Some("guardian.answer.board-a.t2"));
    a.publish_plain("guardian.answer.board-a.t2", b"answer")
        .await
        .unwrap();
    let got = ask.await.unwrap().unwrap();
    assert_eq!(&got.payload[..], b"answer");
    // A device cannot read another's acknowledgements either.
    // (Connecting as board-a under board-b's name subscribes to board-b's
    // inbox, which board-a's permissions refuse.)
    let mut c = Conn::connect(
        &url,
        "board-b",
        &creds("board-a", "a-secret"),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let got = loop {
        match tokio::time::timeout(Duration::from_secs(5), c.replies.recv())
            .await
            .unwrap()
            .unwrap()
        {
            Ok(Incoming::Ping) => continue,
            other => break other,
        }
    };
    match got {
        Err(LinkError::Refused { what, .. }) => assert!(
            what.contains("Permissions Violation for Subscription"),
            "{what}"
        ),
        other => panic!("expected a subscription violation, got {other:?}"),
    }
    // A device reads the policy bucket: the key's subject (every group's;
    // sets are signed) and a direct get of its group's value.
    let js = async_nats::jetstream::new(fleet.clone());
    let kv = guardian_fleet::policy::bucket(&js, 1).await.unwrap();
    let mut a = Conn::connect(
        &url,
        "board-a",
        &creds("board-a", "a-secret"),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    a.subscribe("$KV.guardian_policy.>", 3).await.unwrap();
    a.publish(
        "$JS.API.DIRECT.GET.KV_guardian_policy.$KV.guardian_policy.cameras",
        "get-1",
        "t3",
        b"",
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    kv.put("cameras", "a set".into()).await.unwrap();
    let mut got_put = false;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !got_put && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), a.replies.recv())
            .await
            .unwrap()
            .unwrap()
        {
            Ok(Incoming::Message(m)) => {
                assert_eq!(m.subject, "$KV.guardian_policy.cameras");
                assert_eq!(&m.payload[..], b"a set");
                got_put = true;
            }
            Ok(Incoming::Ping) => a.pong().await.unwrap(),
            Err(LinkError::Refused { what, .. }) if what.contains("Permissions Violation") => {
                panic!("a device may read the policy bucket: {what}")
            }
            // The direct get's answer (404: nothing published yet when it
            // was asked).
            Ok(_) | Err(_) => {}
        }
    }
    assert!(got_put, "the put to the group's key reached the device");
    // But it may not write to it.
    publish_is_refused(&mut a, "$KV.guardian_policy.cameras").await;
    // guardian's own link, as board-a, following group cameras: the direct
    // get at connect is allowed and answered on its inbox.
    let spool = Spool::open(SpoolConfig {
        dir: tmp.path().join("spool-a"),
        max_bytes: 1 << 20,
        segment_bytes: 64 << 10,
        fsync: Fsync::Always,
    })
    .unwrap();
    let mut link = LinkConfig::new("board-a", vec![url.clone()]);
    link.credentials = creds("board-a", "a-secret");
    let (tx, mut rx) = tokio::sync::watch::channel(None);
    link.policy_sets = Some(guardian_report::PolicySets {
        group: "cameras".into(),
        tx: std::sync::Arc::new(tx),
    });
    let reporter = Reporter::start(spool, link).unwrap();
    tokio::time::timeout(Duration::from_secs(15), rx.changed())
        .await
        .expect("the group's set at connect")
        .unwrap();
    let got = rx.borrow_and_update().clone().unwrap();
    assert_eq!(
        (got.bytes.as_slice(), got.via),
        (&b"a set"[..], "direct-get")
    );
    assert_eq!(reporter.status().link.policy_sets_errors, 0);
    reporter.shutdown().await;
    let _ = server.kill();
    let _ = server.wait();
}

/// Production's certificate login: TLS with `verify_and_map`, each
/// device's user its certificate's subject (the block
/// `lab::authorization_by_certificate` writes). A device with its
/// certificate reports and its records are stored in the ingest stream; a
/// device with another valid certificate from the same CA cannot publish
/// as it; a certificate the map does not know is refused at connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_is_the_device_user_under_verify_and_map() {
    use guardian_report::nats::{Tls, TlsFiles};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pki");
    std::fs::create_dir_all(&dir).unwrap();
    pki::make_pki(&dir, &["board-a", "board-b", "fleet", "stranger"]);
    let port = free_port();
    let conf = tmp.path().join("mapped.conf");
    std::fs::write(
        &conf,
        format!(
            "listen: 127.0.0.1:{port}\njetstream {{ store_dir: {:?} }}\n\
             tls {{ cert_file: {:?}, key_file: {:?}, ca_file: {:?}, verify_and_map: true, timeout: 2 }}\n{}",
            tmp.path().join("js"),
            dir.join("server.pem"),
            dir.join("server.key"),
            dir.join("ca.pem"),
            guardian_fleet::lab::authorization_by_certificate("CN=fleet", &["board-a", "board-b"])
        ),
    )
    .unwrap();
    let mut server = start_server(&conf, port);
    let url = format!("nats://127.0.0.1:{port}");
    let tls = |who: &str| {
        Tls::load(&TlsFiles {
            ca: dir.join("ca.pem"),
            cert: Some(dir.join(format!("{who}.pem"))),
            key: Some(dir.join(format!("{who}.key"))),
        })
        .unwrap()
    };
    let none = Credentials::default();
    // The fleet (its own certificate) makes the ingest stream.
    let mut fleet = Conn::connect_tls(
        &url,
        "fleet",
        &none,
        Some(&tls("fleet")),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    fleet
        .publish(
            "$JS.API.STREAM.CREATE.GUARDIAN_IN",
            "fleet",
            "create",
            br#"{"name":"GUARDIAN_IN","subjects":["guardian.in.*"],"storage":"file","num_replicas":1}"#,
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // board-a, by its certificate alone, reports.
    let spool = Spool::open(SpoolConfig {
        dir: tmp.path().join("spool-a"),
        max_bytes: 1 << 20,
        segment_bytes: 64 << 10,
        fsync: Fsync::Interval(Duration::from_millis(20)),
    })
    .unwrap();
    let mut cfg = LinkConfig::new("board-a", vec![url.clone()]);
    cfg.tls = Some(tls("board-a"));
    let rep = Reporter::start(spool, cfg).unwrap();
    for i in 0..20 {
        assert!(rep.submit(Class::Alert, format!("{{\"n\":{i}}}").into_bytes()));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while rep.status().link.records_acked < 20 {
        assert!(Instant::now() < deadline, "{:?}", rep.status());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    rep.shutdown().await;
    // board-b's certificate (same CA, valid) cannot publish as board-a.
    let mut b = Conn::connect_tls(
        &url,
        "board-b",
        &none,
        Some(&tls("board-b")),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    publish_is_refused(&mut b, "guardian.in.board-a").await;
    // A certificate from the right CA that maps to no user: refused.
    let refused = match Conn::connect_tls(
        &url,
        "stranger",
        &none,
        Some(&tls("stranger")),
        Duration::from_secs(5),
    )
    .await
    {
        Err(e) => e.to_string(),
        Ok(mut c) => match tokio::time::timeout(Duration::from_secs(5), c.replies.recv()).await {
            Ok(Some(Err(e))) => e.to_string(),
            other => panic!("a stranger's certificate was let in: {other:?}"),
        },
    };
    assert!(
        refused.contains("Authorization") || refused.contains("authorization"),
        "{refused}"
    );
    let _ = server.kill();
    let _ = server.wait();
}
