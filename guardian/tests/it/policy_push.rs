//! Pushed policy sets, end to end: a real nats-server with JetStream and
//! the fleet's key-value bucket (made here with async-nats exactly as the
//! fleet makes it), the real agent (`guardian run`, real eBPF in detect
//! mode, real wasmi, the attestor on a real swtpm holding the floor in an
//! NV index), and sets made by `guardian policy pack` and by hand.
//!
//! One agent's life, in phases, so that its start (the guard, the TPM)
//! is paid for a few times instead of once per case: a set published
//! before the agent connects reaches it; a newer one takes effect without
//! a restart; older, same-version-other-content, other-group,
//! other-key and empty sets are refused and the set in force stays; a
//! withdrawal changes nothing; a module changed behind the agent's back
//! is refused; the floor survives a restart; with the floor file removed
//! the NV index still refuses an older set, and the ledger says the two
//! stores disagreed.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use guardian::{policy_set, signing::SigningKey};
use sha2::{Digest as _, Sha256};

use crate::{
    common::{Board, Pins, Swtpm, guardian, openssl, stderr},
    nats_support::{free_port, start_server},
};

const GROUP: &str = "cameras";

fn wait_for<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A policy that allows everything; `n` makes each one's bytes (and
/// digest) its own.
fn allow_policy(n: i32) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(module
             (global (export "variant") i32 (i32.const {n}))
             (memory (export "memory") 1)
             (func (export "guardian_abi_version") (result i32) (i32.const 1))
             (func (export "guardian_buffer") (result i32) (i32.const 0))
             (func (export "guardian_buffer_size") (result i32) (i32.const 8192))
             (func (export "guardian_evaluate") (param i32 i32) (result i64) (i64.const 0)))"#
    ))
    .unwrap()
}

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// nats-server with JetStream (`max_payload` raised for the largest set),
/// the fleet's ingest stream (so the agent's batches are acknowledged)
/// and the policy bucket; everything the agent sends is kept here.
struct Lab {
    _nats: Child,
    url: String,
    rt: tokio::runtime::Runtime,
    kv: async_nats::jetstream::kv::Store,
    sent: Arc<Mutex<Vec<serde_json::Value>>>,
    _dir: tempfile::TempDir,
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self._nats.kill();
        let _ = self._nats.wait();
    }
}

impl Lab {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf = dir.path().join("nats.conf");
        std::fs::write(
            &conf,
            format!(
                "listen: 127.0.0.1:{port}\nmax_payload: 8MB\njetstream {{ store_dir: {:?} }}\n",
                dir.path().join("js")
            ),
        )
        .unwrap();
        let nats = start_server(&conf, port);
        let url = format!("nats://127.0.0.1:{port}");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let sent = Arc::new(Mutex::new(Vec::new()));
        let kv = rt.block_on(async {
            let client = async_nats::connect(&url).await.unwrap();
            let js = async_nats::jetstream::new(client.clone());
            js.get_or_create_stream(async_nats::jetstream::stream::Config {
                name: "TEST_IN".into(),
                subjects: vec!["guardian.in.*".into()],
                ..Default::default()
            })
            .await
            .unwrap();
            let kv = js
                .create_key_value(async_nats::jetstream::kv::Config {
                    bucket: "guardian_policy".into(),
                    history: 5,
                    // (async-nats makes every bucket with allow_direct.)
                    max_value_size: 8 << 20,
                    ..Default::default()
                })
                .await
                .unwrap();
            let mut sub = client.subscribe("guardian.in.>").await.unwrap();
            let keep = Arc::clone(&sent);
            tokio::spawn(async move {
                use futures_util::StreamExt as _;
                while let Some(m) = sub.next().await {
                    if let Ok(b) = guardian_report::wire::decode(&m.payload) {
                        for r in b.records {
                            let body: serde_json::Value =
                                serde_json::from_str(r.body.get()).unwrap_or_default();
                            keep.lock()
                                .unwrap()
                                .push(serde_json::json!({"class": r.class, "body": body}));
                        }
                    }
                }
            });
            kv
        });
        Self {
            _nats: nats,
            url,
            rt,
            kv,
            sent,
            _dir: dir,
        }
    }

    fn put(&self, key: &str, value: Vec<u8>) {
        self.rt.block_on(self.kv.put(key, value.into())).unwrap();
    }

    fn delete(&self, key: &str) {
        self.rt.block_on(self.kv.delete(key)).unwrap();
    }

    /// The policy-set records the agent sent to the fleet of `class`.
    fn sent(&self, class: &str) -> Vec<serde_json::Value> {
        self.sent
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r["class"] == class && r["body"]["kind"] == "policy_set")
            .map(|r| r["body"].clone())
            .collect()
    }
}

/// The running agent; stopped with SIGTERM (as systemd does) on drop.
struct Agent(Child);

impl Agent {
    fn start(b: &Board, n: u32) -> Self {
        let err = std::fs::File::create(b.p(&format!("agent{n}.stderr"))).unwrap();
        Self(
            Command::new(env!("CARGO_BIN_EXE_guardian"))
                .args(["run", "--config"])
                .arg(b.p("guardian.toml"))
                .env_remove("GUARDIAN_MODE")
                .env_remove("TPM2TOOLS_TCTI")
                .env("GUARDIAN_LOG", "info")
                .stdout(Stdio::null())
                .stderr(err)
                .spawn()
                .unwrap(),
        )
    }

    fn stop(mut self) {
        self.term();
    }

    fn term(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.0.try_wait().unwrap().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            self.term();
        }
    }
}

/// The board: models measured into a swtpm, the vendor key (trusted for
/// manifests and policies), an image policy directory, and the sets.
struct Scene {
    board: Board,
    _tpm: Swtpm,
    key: SigningKey,
}

impl Scene {
    fn new(lab: &Lab, pins: &str) -> Self {
        let tpm = Swtpm::start();
        let board = Board::new(&tpm.tcti());
        let out = board.measure();
        assert!(out.status.success(), "{}", stderr(&out));
        let key = SigningKey::load(&board.p("vendor.pem")).unwrap();
        std::fs::create_dir(board.p("policies")).unwrap();
        let s = Self {
            board,
            _tpm: tpm,
            key,
        };
        s.write_policy(&s.board.p("policies"), "image", &allow_policy(0));
        let cfg = std::fs::read_to_string(s.board.p("guardian.toml")).unwrap();
        std::fs::write(
            s.board.p("guardian.toml"),
            format!(
                "{cfg}[guard]\nmode = \"detect\"\nprotected = [\"models\"]\npin_dir = {pins:?}\n\
                 unload_without_token = true\n\
                 [events]\noutput = \"events.jsonl\"\n[status]\npath = \"status.json\"\ninterval_secs = 1\n\
                 [policy]\ndir = \"policies\"\ntrusted_keys = [\"vendor.pub\"]\ngroup = \"{GROUP}\"\n\
                 state_dir = \"state\"\nfloor_nv_index = \"0x01500147\"\n\
                 [report]\nservers = [{:?}]\ndevice_id = \"push-board\"\nspool_dir = \"spool\"\nstatus_interval_secs = 1\n\
                 answer_challenges = false\n",
                lab.url
            ),
        )
        .unwrap();
        s
    }

    fn write_policy(&self, dir: &Path, name: &str, wasm: &[u8]) {
        std::fs::write(dir.join(format!("{name}.wasm")), wasm).unwrap();
        std::fs::write(dir.join(format!("{name}.wasm.sig")), self.key.sign(wasm)).unwrap();
    }

    /// A set of `policies` (name, variant) for `group` at `version`, made
    /// with `guardian policy pack` and signed with `key` (a PEM file on
    /// the board).
    fn pack(&self, group: &str, version: u64, policies: &[(&str, i32)], key: &str) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        for (name, n) in policies {
            self.write_policy(dir.path(), name, &allow_policy(*n));
        }
        let out_file = dir.path().join("set.json");
        let out = guardian(&[
            "policy",
            "pack",
            dir.path().to_str().unwrap(),
            "--group",
            group,
            "--version",
            &version.to_string(),
            "--key",
            &self.board.s(key),
            "-o",
            out_file.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        std::fs::read(out_file).unwrap()
    }

    fn status(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&std::fs::read(self.board.p("status.json")).ok()?).ok()
    }

    fn push_status(&self) -> Option<serde_json::Value> {
        let st = self.status()?;
        let p = st.get("policy_sets")?.clone();
        (!p.is_null()).then_some(p)
    }

    fn ledger(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.board.p("measurements.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|v| v["event"].clone())
            .collect()
    }

    fn log(&self, n: u32) -> String {
        std::fs::read_to_string(self.board.p(&format!("agent{n}.stderr"))).unwrap_or_default()
    }

    /// Wait until the status counts `n` refusals for `reason`.
    fn refused(&self, reason: &str, n: u64, agent: u32) -> serde_json::Value {
        let mut last = None;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(p) = self.push_status() {
                if p["refused_by_reason"][reason].as_u64() == Some(n) {
                    return p;
                }
                last = Some(p);
            }
            assert!(
                Instant::now() < deadline,
                "no refusal {reason} #{n}; status {last:#?}\n{}",
                self.log(agent)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Wait until version `v` is in force with `policies` (name, variant).
    fn in_force(&self, v: u64, policies: &[(&str, i32)], agent: u32) -> serde_json::Value {
        let want: Vec<(String, String)> = policies
            .iter()
            .map(|(n, i)| ((*n).to_owned(), sha(&allow_policy(*i))))
            .collect();
        let mut last = None;
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if let Some(st) = self.status() {
                let got: Vec<(String, String)> = st["policies"]["policies"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|p| {
                                (
                                    p["name"].as_str().unwrap_or("").to_owned(),
                                    p["sha256"].as_str().unwrap_or("").to_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                if st["policy_sets"]["in_force"]["version"].as_u64() == Some(v) && got == want {
                    return st;
                }
                last = Some(st);
            }
            assert!(
                Instant::now() < deadline,
                "version {v} not in force with {want:?}; status {:#?}\n{}",
                last.map(|s| (s["policies"].clone(), s["policy_sets"].clone())),
                self.log(agent)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn pushed_policy_sets_go_in_force_in_order_and_nothing_older_ever_returns() {
    let _k = crate::host::exclusive();
    let lab = Lab::start();
    let pins = format!("/sys/fs/bpf/guardian-push-test-{}", std::process::id());
    let _pins = Pins(PathBuf::from(&pins));
    let s = Scene::new(&lab, &pins);
    let b = &s.board;
    openssl(&[
        "genpkey",
        "-algorithm",
        "ed25519",
        "-out",
        &b.s("other.pem"),
    ]);

    // 1. Published before the agent connects: it gets the set at connect
    //    (the direct get), and the image's policy is replaced.
    let v1 = s.pack(GROUP, 1, &[("alpha", 1)], "vendor.pem");
    std::fs::write(b.p("v1.json"), &v1).unwrap();
    let out = guardian(&[
        "policy",
        "inspect",
        &b.s("v1.json"),
        "--key",
        &b.s("vendor.pub"),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(text.contains("group       cameras"), "{text}");
    assert!(text.contains("version     1"), "{text}");
    assert!(text.contains("signature   valid"), "{text}");
    assert!(text.contains("alpha"), "{text}");
    lab.put(GROUP, v1.clone());
    let agent = Agent::start(b, 1);
    let st = s.in_force(1, &[("alpha", 1)], 1);
    let p = &st["policy_sets"];
    assert_eq!(p["floor"], 1);
    assert_eq!(p["floor_store"], "tpm-nv+file");
    assert_eq!(p["last_received"]["via"], "direct-get");
    assert_eq!(p["last_received"]["outcome"], "in_force");
    let ledger = s.ledger();
    let sets: Vec<_> = ledger
        .iter()
        .filter(|e| e["kind"] == "policy_set")
        .collect();
    assert_eq!(sets[0]["cause"], "start");
    assert_eq!(sets[0]["version"], 0, "nothing pushed before: {sets:#?}");
    assert_eq!(sets[1]["cause"], "push");
    assert_eq!(sets[1]["version"], 1);
    assert_eq!(sets[1]["floor_store"], "tpm-nv+file");
    assert!(
        ledger
            .iter()
            .any(|e| e["kind"] == "policy" && e["sha256"] == sha(&allow_policy(1))),
        "the pushed policy's load is measured"
    );

    // 2. A newer set takes effect without a restart (the watch).
    lab.put(
        GROUP,
        s.pack(GROUP, 2, &[("alpha", 1), ("beta", 2)], "vendor.pem"),
    );
    let st = s.in_force(2, &[("alpha", 1), ("beta", 2)], 1);
    assert_eq!(st["policy_sets"]["last_received"]["via"], "watch");
    assert_eq!(st["policy_sets"]["floor"], 2);
    let v2_digest = st["policy_sets"]["in_force"]["digest"]
        .as_str()
        .unwrap()
        .to_owned();

    // 3. Refused, each for its reason; version 2 stays in force.
    lab.put(GROUP, v1.clone());
    let p = s.refused("older", 1, 1);
    assert!(
        p["last_refusal"]
            .as_str()
            .unwrap()
            .contains("rollback refused"),
        "{p:#?}"
    );
    lab.put(GROUP, s.pack(GROUP, 2, &[("alpha", 3)], "vendor.pem"));
    s.refused("same_version", 1, 1);
    lab.put(GROUP, s.pack("doors", 3, &[("alpha", 4)], "vendor.pem"));
    s.refused("wrong_group", 1, 1);
    lab.put(GROUP, s.pack(GROUP, 3, &[("alpha", 5)], "other.pem"));
    s.refused("untrusted", 1, 1);
    let empty = {
        let set = policy_set::PolicySet {
            format: policy_set::FORMAT.to_owned(),
            group: GROUP.to_owned(),
            version: 3,
            created: "2026-12-05T00:00:00Z".to_owned(),
            policies: Vec::new(),
        };
        let document = serde_json::to_vec(&set).unwrap();
        policy_set::SignedSet {
            signature: s.key.sign(&document),
            document,
        }
        .to_bytes()
    };
    lab.put(GROUP, empty);
    s.refused("empty", 1, 1);
    lab.put(GROUP, b"not a policy set".to_vec());
    s.refused("malformed", 1, 1);
    // Signed, well formed, newer, but its module does not load (a start
    // function): the load refuses it, and its directory does not stay.
    let unloadable = {
        let dir = tempfile::tempdir().unwrap();
        let bad = wat::parse_str(
            r#"(module (memory (export "memory") 1) (func $s) (start $s)
                 (func (export "guardian_abi_version") (result i32) (i32.const 1))
                 (func (export "guardian_buffer") (result i32) (i32.const 0))
                 (func (export "guardian_buffer_size") (result i32) (i32.const 8192))
                 (func (export "guardian_evaluate") (param i32 i32) (result i64) (i64.const 0)))"#,
        )
        .unwrap();
        s.write_policy(dir.path(), "gamma", &bad);
        policy_set::pack(dir.path(), GROUP, 3, "2026-12-05T00:00:00Z", &s.key)
            .unwrap()
            .to_bytes()
    };
    lab.put(GROUP, unloadable);
    let p = s.refused("load", 1, 1);
    assert!(
        p["last_refusal"].as_str().unwrap().contains("gamma"),
        "{p:#?}"
    );
    assert!(
        !b.p("state/sets/3").exists(),
        "a set that never went in force leaves no directory"
    );
    assert_eq!(p["refused"], 7);
    s.in_force(2, &[("alpha", 1), ("beta", 2)], 1);
    // Each refusal went to the fleet as an alert naming its reason.
    let alerts = wait_for(20, "the refusals reported to the fleet", || {
        let a = lab.sent("alert");
        (a.len() >= 7).then_some(a)
    });
    let reasons: Vec<&str> = alerts.iter().filter_map(|a| a["reason"].as_str()).collect();
    for r in [
        "older",
        "same_version",
        "wrong_group",
        "untrusted",
        "empty",
        "malformed",
        "load",
    ] {
        assert!(reasons.contains(&r), "{r} not reported: {alerts:#?}");
    }
    assert!(
        lab.sent("measurement")
            .iter()
            .any(|m| m["outcome"] == "in_force" && m["version"] == 2),
        "the set put in force is reported too"
    );

    // 4. A withdrawal (the key deleted) is counted and changes nothing.
    lab.delete(GROUP);
    wait_for(20, "the withdrawal counted", || {
        (s.status()?["report"]["link"]["policy_sets_withdrawn"].as_u64()? >= 1).then_some(())
    });
    s.in_force(2, &[("alpha", 1), ("beta", 2)], 1);

    // 5. A pushed module changed behind the agent's back: the directory's
    //    watch refuses it, the set in force stays.
    let beta = b.p("state/sets/2/beta.wasm");
    let original = std::fs::read(&beta).unwrap();
    std::fs::write(&beta, allow_policy(66)).unwrap();
    let p = s.refused("tampered", 1, 1);
    assert!(
        p["last_refusal"].as_str().unwrap().contains("beta.wasm"),
        "{p:#?}"
    );
    s.in_force(2, &[("alpha", 1), ("beta", 2)], 1);
    std::fs::write(&beta, &original).unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    // Putting sets in force moved the pointer and removed old versions:
    // the agent's own doing, not a path to alert on.
    let events = std::fs::read_to_string(b.p("events.jsonl")).unwrap_or_default();
    assert!(
        !events
            .lines()
            .any(|l| l.contains("path_changed") && l.contains("state/sets")),
        "{events}"
    );
    agent.stop();

    // 6. The floor survives a restart: version 2 is in force from its
    //    directory, and an older set is still refused.
    let agent = Agent::start(b, 2);
    let st = s.in_force(2, &[("alpha", 1), ("beta", 2)], 2);
    assert_eq!(st["policy_sets"]["floor"], 2);
    lab.put(GROUP, v1.clone());
    s.refused("older", 1, 2);
    let sets: Vec<_> = s
        .ledger()
        .into_iter()
        .filter(|e| e["kind"] == "policy_set")
        .collect();
    let start = sets.iter().rev().find(|e| e["cause"] == "start").unwrap();
    assert_eq!(start["version"], 2, "{sets:#?}");
    assert_eq!(start["sha256"], v2_digest.as_str());
    assert_eq!(start["floor"], 2);
    agent.stop();

    // 7. The floor file removed: the NV index still holds version 2, so
    //    the older set (the key's value again, read at connect) is
    //    refused; the ledger says the two stores disagreed.
    std::fs::remove_file(b.p("state/floor.json")).unwrap();
    let agent = Agent::start(b, 3);
    let p = s.refused("older", 1, 3);
    assert_eq!(p["floor"], 2, "{p:#?}");
    assert_eq!(p["floor_disagreements"], 1, "{p:#?}");
    assert_eq!(p["last_received"]["via"], "direct-get", "{p:#?}");
    s.in_force(2, &[("alpha", 1), ("beta", 2)], 3);
    let notes: Vec<String> = s
        .ledger()
        .into_iter()
        .filter(|e| e["kind"] == "note")
        .filter_map(|e| e["text"].as_str().map(str::to_owned))
        .collect();
    assert!(
        notes
            .iter()
            .any(|n| n.contains("disagree") && n.contains("TPM NV index holds version 2")),
        "{notes:#?}\n{}",
        s.log(3)
    );
    // The file is written back up to the floor.
    let floor: policy_set::Floor =
        serde_json::from_slice(&std::fs::read(b.p("state/floor.json")).unwrap()).unwrap();
    assert_eq!(floor.version, 2);
    assert_eq!(floor.digest, v2_digest);
    // `guardian status` says all of it.
    let out = guardian(&["status", "--config", &b.s("guardian.toml")]);
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "policy sets: group cameras".to_owned(),
        format!("in force  version 2 sha256 {v2_digest}"),
        "floor     version 2".to_owned(),
        "kept in tpm-nv+file (NV index 0x01500147)".to_owned(),
        "older 1".to_owned(),
        "-> refused".to_owned(),
        "stores disagreed 1 time(s)".to_owned(),
    ] {
        assert!(text.contains(&want), "{want:?} not in:\n{text}");
    }
    // The status summary sent to the fleet carries the same.
    wait_for(20, "the status summary with the policy sets", || {
        lab.sent
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|r| r["class"] == "status")
            .filter(|r| r["body"]["policy_sets"]["floor_disagreements"] == 1)
            .map(|_| ())
    });
    agent.stop();
}

/// The link alone (`guardian-report`, as the agent starts it): nothing
/// published is "none published", not an error; a put arrives by the
/// watch; of two puts not yet taken only the newer is handed over; a
/// delete is a counted withdrawal that hands nothing over; an answer on
/// its inbox to a get it did not ask is dropped; a reconnect reads the
/// current value again.
#[test]
fn the_link_follows_its_group_key_newest_first() {
    use guardian_report::{LinkConfig, PolicySets, Reporter, Spool, SpoolConfig};
    let lab = Lab::start();
    let dir = tempfile::tempdir().unwrap();
    let (tx, mut rx) = tokio::sync::watch::channel(None);
    let start = |lab: &Lab, tx: Arc<tokio::sync::watch::Sender<_>>| {
        lab.rt.block_on(async {
            let spool = Spool::open(SpoolConfig {
                dir: dir.path().join("spool"),
                max_bytes: 1 << 20,
                segment_bytes: 64 << 10,
                fsync: guardian_report::Fsync::Always,
            })
            .unwrap();
            let mut link = LinkConfig::new("link-board", vec![lab.url.clone()]);
            link.policy_sets = Some(PolicySets {
                group: GROUP.to_owned(),
                tx,
            });
            Reporter::start(spool, link).unwrap()
        })
    };
    let tx = Arc::new(tx);
    let reporter = start(&lab, Arc::clone(&tx));
    let link = |r: &Reporter| r.status().link;
    wait_for(20, "none published", || {
        (link(&reporter).policy_sets_none_published == 1).then_some(())
    });
    assert!(rx.borrow_and_update().is_none());
    assert_eq!(link(&reporter).policy_sets_errors, 0);

    lab.put(GROUP, b"one".to_vec());
    let got = wait_for(20, "the put", || {
        rx.has_changed()
            .unwrap()
            .then(|| rx.borrow_and_update().clone().unwrap())
    });
    assert_eq!((got.bytes.as_slice(), got.via), (&b"one"[..], "watch"));

    // Two puts before the taker looks: the newer only.
    lab.put(GROUP, b"two".to_vec());
    lab.put(GROUP, b"three".to_vec());
    wait_for(20, "both puts received", || {
        (link(&reporter).policy_sets_received == 3).then_some(())
    });
    assert!(rx.has_changed().unwrap());
    assert_eq!(rx.borrow_and_update().clone().unwrap().bytes, b"three");

    // Anyone allowed to ask for a direct get can have the servers answer
    // on this device's inbox (the reply subject is the asker's choice):
    // an answer to no get the link asked is dropped, counted, and handed
    // to nobody.
    lab.rt.block_on(async {
        let client = async_nats::connect(&lab.url).await.unwrap();
        client
            .publish_with_reply(
                guardian_report::wire::policy_direct_get(GROUP),
                "guardian.inbox.link-board.not-asked".to_owned(),
                Vec::<u8>::new().into(),
            )
            .await
            .unwrap();
        client.flush().await.unwrap();
    });
    wait_for(20, "the answer no get asked for", || {
        (link(&reporter).policy_sets_unasked == 1).then_some(())
    });
    assert!(!rx.has_changed().unwrap());
    assert_eq!(link(&reporter).policy_sets_received, 3);

    // A withdrawal hands nothing over.
    lab.delete(GROUP);
    wait_for(20, "the withdrawal", || {
        (link(&reporter).policy_sets_withdrawn == 1).then_some(())
    });
    assert!(!rx.has_changed().unwrap());
    lab.rt.block_on(reporter.shutdown());

    // A new connection reads the current value (a put since the delete).
    lab.put(GROUP, b"four".to_vec());
    let reporter = start(&lab, Arc::clone(&tx));
    let got = wait_for(20, "the value at connect", || {
        rx.has_changed()
            .unwrap()
            .then(|| rx.borrow_and_update().clone().unwrap())
    });
    assert_eq!(
        (got.bytes.as_slice(), got.via),
        (&b"four"[..], "direct-get")
    );
    lab.rt.block_on(reporter.shutdown());
}
