//! The fleet attests boards over the link: a real nats-server, the fleet
//! service's attestation rounds, boards with a real swtpm manufactured
//! with EK certificates and enrolled by credential activation, answering
//! through guardian's real link (`guardian-report`) and quoting with
//! guardian's real code (the daemon's attestor; for the attackers below,
//! the code `guardian quote` runs).
//!
//! The attacks are the network attacker's and the impostor's moves: a
//! replayed bundle, a bundle quoted over another device's nonce, a quote by
//! a TPM the fleet never enrolled, and a board that reboots with a finding
//! open. None may ever show as trusted, and each is an alert naming the
//! failed check.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use guardian::{attest::bundle, config::Config, enrol, tpm::Tpm};
use guardian_fleet::attest::{Attestation, TrustState};
use guardian_report::{Asked, LinkConfig, Reporter, Spool, SpoolConfig, wire::Question};

use crate::{
    common::{Board, KillOnDrop, Pins, Swtpm, localca, stderr},
    nats_support::{free_port, nats_server},
};

const AK: u32 = 0x8101_0002;

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

/// A board: a manufactured TPM, models measured into it, its AK enrolled
/// by credential activation (the record written to `enrolled.json`).
struct Device {
    tpm: Swtpm,
    board: Board,
    id: String,
}

impl Device {
    fn new(id: &str) -> Self {
        Self::signed_like(id, None)
    }

    /// A board whose manifest the vendor of `like` signed (so that only
    /// what an attack changes fails).
    fn signed_like(id: &str, like: Option<&Device>) -> Self {
        let d = Self::unenrolled(id, like);
        d.enrol_on_files();
        d
    }

    /// A measured board whose AK no one has enrolled yet.
    fn unenrolled(id: &str, like: Option<&Device>) -> Self {
        let tpm = Swtpm::manufactured();
        let board = Board::new(&tpm.tcti());
        if let Some(like) = like {
            for k in ["vendor.pem", "vendor.pub"] {
                std::fs::copy(like.board.p(k), board.p(k)).unwrap();
            }
            let out = crate::common::guardian(&[
                "manifest",
                "create",
                &board.s("models"),
                "--key",
                &board.s("vendor.pem"),
                "-o",
                &board.s("manifest.toml"),
            ]);
            assert!(out.status.success(), "{}", stderr(&out));
        }
        let out = board.measure();
        assert!(out.status.success(), "{}", stderr(&out));
        Self {
            tpm,
            board,
            id: id.to_owned(),
        }
    }

    /// Enrolment as `guardian enrol` does it on files, the record written
    /// to `enrolled.json`.
    fn enrol_on_files(&self) {
        let d = self;
        let mut t = Tpm::open(&d.tpm.tcti()).unwrap();
        let req = enrol::request(&mut t, AK).unwrap();
        let (challenge, pending) = enrol::challenge(&req, &localca()).unwrap();
        let response = enrol::activate(&mut t, AK, &challenge).unwrap();
        let rec = enrol::finish(&req, pending, &response).unwrap();
        assert!(!rec.insecure_tofu);
        drop(t);
        std::fs::write(
            d.board.p("enrolled.json"),
            serde_json::to_vec(&rec).unwrap(),
        )
        .unwrap();
    }

    /// This board's answer to any question, as the daemon's attestor gives
    /// it (the same library calls, with a TPM session per question).
    fn answer(&self, q: Question) -> serde_json::Value {
        let refuse = |e: String| serde_json::json!({ "error": e });
        match q {
            Question::Attest { nonce } => self.quote(&hex::decode(nonce).unwrap()),
            Question::EnrolRequest => {
                let mut t = Tpm::open(&self.tpm.tcti()).unwrap();
                match enrol::request(&mut t, AK) {
                    Ok(r) => serde_json::to_value(r).unwrap(),
                    Err(e) => refuse(e.to_string()),
                }
            }
            Question::Activate { challenge } => {
                let mut t = Tpm::open(&self.tpm.tcti()).unwrap();
                let c = serde_json::from_value(challenge).unwrap();
                match enrol::activate(&mut t, AK, &c) {
                    Ok(r) => serde_json::to_value(r).unwrap(),
                    Err(e) => refuse(e.to_string()),
                }
            }
        }
    }

    fn config(&self) -> Config {
        Config::load(&self.board.p("guardian.toml"), |_| None).unwrap()
    }

    /// A quote for `nonce` with this board's TPM, as `guardian quote` makes
    /// it (the TPM must not be held by an agent).
    fn quote(&self, nonce: &[u8]) -> serde_json::Value {
        let (ev, _) = bundle::quote(&self.config(), nonce).unwrap();
        serde_json::to_value(ev).unwrap()
    }
}

/// A nats-server with JetStream and one fleet instance attesting every
/// second.
struct Fleet {
    _nats: KillOnDrop,
    url: String,
    rt: tokio::runtime::Runtime,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), guardian_fleet::service::ServiceError>>>,
    _dir: tempfile::TempDir,
}

impl Fleet {
    fn start(manifest_key: &Path) -> Self {
        Self::start_with(manifest_key, None)
    }

    fn start_with(manifest_key: &Path, enrol: Option<guardian_fleet::enrol::EnrolConfig>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let nats = KillOnDrop(
            Command::new(nats_server())
                .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
                .arg(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        wait_for(10, "nats-server listening", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        let url = format!("nats://127.0.0.1:{port}");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let mut cfg = guardian_fleet::service::ServiceConfig::new(vec![url.clone()]);
        cfg.attest = Some(Arc::new(guardian_fleet::attest::AttestConfig {
            every: Duration::from_secs(1),
            answer_timeout: Duration::from_secs(10),
            concurrency: 8,
            pcrs: vec![14],
            manifest_keys: vec![guardian::signing::TrustedKey::load(manifest_key).unwrap()],
            golden: None,
            require_guard: false,
        }));
        cfg.enrol = enrol.map(Arc::new);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = rt.spawn(guardian_fleet::service::serve(
            cfg,
            "fleet-test",
            Arc::new(guardian_fleet::service::Counters::default()),
            async {
                let _ = stopped.await;
            },
        ));
        let f = Self {
            _nats: nats,
            url,
            rt,
            stop: Some(stop),
            task: Some(task),
            _dir: dir,
        };
        // The service made its buckets.
        wait_for(20, "the fleet's buckets", || {
            f.js(|js| async move { guardian_fleet::attest::enrolled(&js).await.ok() })
        });
        f
    }

    fn js<T, F, Fut>(&self, f: F) -> T
    where
        F: FnOnce(async_nats::jetstream::Context) -> Fut,
        Fut: std::future::Future<Output = T>,
    {
        self.rt.block_on(async {
            let client = guardian_fleet::service::connect(std::slice::from_ref(&self.url), "probe")
                .await
                .unwrap();
            f(async_nats::jetstream::new(client)).await
        })
    }

    fn enrol(&self, d: &Device) {
        let file = d.board.p("enrolled.json");
        let id = d.id.clone();
        self.js(|js| async move {
            guardian_fleet::attest::import_enrolment(&js, &id, &file)
                .await
                .unwrap()
        });
    }

    fn record(&self, device: &str) -> Option<Attestation> {
        self.js(|js| async move {
            guardian_fleet::query::attestations(&js)
                .await
                .ok()?
                .into_iter()
                .find(|a| a.device == device)
        })
    }

    /// Wait until `device`'s record satisfies `want`; every record seen on
    /// the way goes to `seen`.
    fn wait(
        &self,
        device: &str,
        secs: u64,
        what: &str,
        seen: &mut Vec<Attestation>,
        want: impl Fn(&Attestation) -> bool,
    ) -> Attestation {
        wait_for(secs, what, || {
            let r = self.record(device)?;
            if seen.last() != Some(&r) {
                seen.push(r.clone());
            }
            want(&r).then_some(r)
        })
    }

    fn alerts(&self, device: &str) -> Vec<guardian_fleet::alerts::Alert> {
        let device = device.to_owned();
        self.js(|js| async move {
            guardian_fleet::query::alerts(
                &js,
                Some(&device),
                std::time::SystemTime::now() - Duration::from_secs(600),
            )
            .await
            .unwrap_or_default()
        })
    }

    fn acknowledge(&self, device: &str) -> usize {
        let device = device.to_owned();
        self.js(|js| async move {
            guardian_fleet::attest::acknowledge(&js, &device, "all")
                .await
                .unwrap()
        })
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = self
                .rt
                .block_on(async { tokio::time::timeout(Duration::from_secs(10), t).await });
        }
    }
}

fn failed(r: &Attestation, check: &str) -> bool {
    r.verdict
        .as_ref()
        .is_some_and(|v| v.failures.iter().any(|f| f.check == check))
}

/// A device on guardian's real link, whose answers `answer` makes from the
/// fleet's nonce (honestly, or as an attacker would).
struct Answering {
    reporter: Option<Reporter>,
    _spool: tempfile::TempDir,
}

impl Answering {
    /// Answers attestation challenges with `answer(nonce)` (and refuses
    /// enrolment).
    fn start(
        fleet: &Fleet,
        device: &str,
        answer: impl Fn(Vec<u8>) -> serde_json::Value + Send + Sync + 'static,
    ) -> Self {
        Self::questions(fleet, device, move |q| match q {
            Question::Attest { nonce } => answer(hex::decode(nonce).unwrap()),
            _ => serde_json::json!({"error": "this test device does not enrol"}),
        })
    }

    /// Answers every question with `answer(question)`, and reports one
    /// status record (so the fleet sees it reporting).
    fn questions(
        fleet: &Fleet,
        device: &str,
        answer: impl Fn(Question) -> serde_json::Value + Send + Sync + 'static,
    ) -> Self {
        let spool_dir = tempfile::tempdir().unwrap();
        let answer = Arc::new(answer);
        let reporter = fleet.rt.block_on(async {
            let spool = Spool::open(SpoolConfig {
                dir: spool_dir.path().join("spool"),
                max_bytes: 1 << 20,
                segment_bytes: 64 << 10,
                fsync: guardian_report::Fsync::Always,
            })
            .unwrap();
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Asked>(1);
            let mut link = LinkConfig::new(device, vec![fleet.url.clone()]);
            link.questions = Some(tx);
            tokio::spawn(async move {
                while let Some(asked) = rx.recv().await {
                    let answer = answer.clone();
                    let q = asked.question;
                    let body = tokio::task::spawn_blocking(move || answer(q))
                        .await
                        .unwrap();
                    // `{"error": why}` from the closure is a refusal, as
                    // the agent gives one; the link sends it as such.
                    let answer = match body.get("error").and_then(|e| e.as_str()) {
                        Some(why) => Err(why.to_owned()),
                        None => Ok(serde_json::to_vec(&body).unwrap()),
                    };
                    let _ = asked.answer.send(answer);
                }
            });
            let r = Reporter::start(spool, link).unwrap();
            r.submit(
                guardian_report::Class::Status,
                br#"{"hello":true}"#.to_vec(),
            );
            r
        });
        Self {
            reporter: Some(reporter),
            _spool: spool_dir,
        }
    }

    fn stop(mut self, fleet: &Fleet) {
        if let Some(r) = self.reporter.take() {
            fleet.rt.block_on(r.shutdown());
        }
    }
}

/// An honest board, a replaying one, one answering with a bundle for the
/// nonce the fleet sent another device, one whose quotes come from a TPM
/// the fleet never enrolled, and a board that reboots with a finding open:
/// every attack is untrusted with the right failed check and an alert, and
/// never shows as trusted; the honest board stays trusted throughout.
#[test]
fn the_fleet_never_trusts_replays_borrowed_nonces_or_unenrolled_quotes() {
    let honest = Arc::new(Device::new("honest"));
    let fleet = Fleet::start(&honest.board.p("vendor.pub"));
    fleet.enrol(&honest);

    // The honest board answers every question with a fresh quote; the
    // nonces it was asked are kept (an eavesdropper sees them too).
    let asked_honest: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let h = honest.clone();
    let heard = asked_honest.clone();
    let honest_link = Answering::start(&fleet, "honest", move |nonce| {
        heard.lock().unwrap().push(nonce.clone());
        h.quote(&nonce)
    });
    let mut seen = Vec::new();
    let r = fleet.wait("honest", 60, "the honest board trusted", &mut seen, |r| {
        r.trust == TrustState::Trusted
    });
    let v = r.verdict.clone().unwrap();
    for check in [
        "signature",
        "nonce",
        "pcr_digest",
        "log_replay",
        "manifest",
        "models",
    ] {
        assert!(
            v.passed.iter().any(|p| p == check),
            "{check} not passed: {v:#?}"
        );
    }
    assert!(r.open_findings.is_empty());

    // 1. Replay: a board that answers with the bundle it made for its
    //    first question, for ever after.
    let replayer = Arc::new(Device::signed_like("replayer", Some(&honest)));
    fleet.enrol(&replayer);
    let first: Arc<Mutex<Option<serde_json::Value>>> = Arc::default();
    let (d, keep) = (replayer.clone(), first.clone());
    let replay_link = Answering::start(&fleet, "replayer", move |nonce| {
        let mut k = keep.lock().unwrap();
        k.get_or_insert_with(|| d.quote(&nonce)).clone()
    });

    // 2. Another device's nonce: a board that quotes, with its own TPM,
    //    the nonce the fleet last sent the honest board.
    let borrower = Arc::new(Device::signed_like("borrower", Some(&honest)));
    fleet.enrol(&borrower);
    let (d, heard) = (borrower.clone(), asked_honest.clone());
    let borrow_link = Answering::start(&fleet, "borrower", move |_own| {
        let theirs = heard.lock().unwrap().last().cloned().unwrap();
        d.quote(&theirs)
    });

    // 3. An unenrolled AK: the fleet enrolled this board's TPM, but its
    //    answers are quoted by another TPM (over the right nonce).
    let enrolled_one = Device::signed_like("swapped", Some(&honest));
    fleet.enrol(&enrolled_one);
    let other_tpm = Arc::new(Device::signed_like("swapped", Some(&honest)));
    let d = other_tpm.clone();
    let swap_link = Answering::start(&fleet, "swapped", move |nonce| d.quote(&nonce));

    let mut seen_replay = Vec::new();
    let mut seen_borrow = Vec::new();
    let mut seen_swap = Vec::new();
    let r = fleet.wait(
        "replayer",
        60,
        "the replayer untrusted for its nonce",
        &mut seen_replay,
        |r| r.rounds.verified >= 2 && failed(r, "nonce"),
    );
    assert_eq!(r.trust, TrustState::Untrusted, "{r:#?}");
    let r = fleet.wait(
        "borrower",
        60,
        "the borrower untrusted for its nonce",
        &mut seen_borrow,
        |r| failed(r, "nonce"),
    );
    assert_eq!(r.trust, TrustState::Untrusted, "{r:#?}");
    let r = fleet.wait(
        "swapped",
        60,
        "the swapped TPM untrusted for its signature",
        &mut seen_swap,
        |r| failed(r, "signature"),
    );
    assert_eq!(r.trust, TrustState::Untrusted, "{r:#?}");
    // The replayer's first answer was genuine and fresh: that one round
    // may be trusted; every later one is not. The others never were.
    let trusted_rounds = |seen: &[Attestation]| {
        seen.iter()
            .filter(|r| r.trust == TrustState::Trusted)
            .map(|r| r.rounds.verified)
            .collect::<std::collections::BTreeSet<_>>()
    };
    assert!(
        trusted_rounds(&seen_replay).iter().all(|&n| n <= 1),
        "a replayed bundle was trusted: {seen_replay:#?}"
    );
    assert!(trusted_rounds(&seen_borrow).is_empty(), "{seen_borrow:#?}");
    assert!(trusted_rounds(&seen_swap).is_empty(), "{seen_swap:#?}");
    for (dev, check) in [
        ("replayer", "nonce"),
        ("borrower", "nonce"),
        ("swapped", "signature"),
    ] {
        let alerts = wait_for(20, "the attestation alert", || {
            let a: Vec<_> = fleet
                .alerts(dev)
                .into_iter()
                .filter(|a| a.kind == "attestation_failed")
                .collect();
            (!a.is_empty()).then_some(a)
        });
        assert!(alerts[0].what.contains(check), "{dev}: {alerts:#?}");
        assert_eq!(alerts[0].evidence["trust"], "untrusted");
    }
    // Still untrusted rounds later: still one alert each (per episode).
    std::thread::sleep(Duration::from_secs(3));
    for dev in ["borrower", "swapped"] {
        let n = fleet
            .alerts(dev)
            .iter()
            .filter(|a| a.kind == "attestation_failed")
            .count();
        assert_eq!(n, 1, "{dev}: one alert per episode");
    }
    // The honest board never left trusted once trusted.
    let r = fleet.record("honest").unwrap();
    assert_eq!(r.trust, TrustState::Trusted, "{r:#?}");
    assert!(r.rounds.verified >= 3);
    assert_eq!(r.rounds.failed, 0, "{r:#?}");

    // 4. A board stops answering: unreachable (never trusted), an alert.
    honest_link.stop(&fleet);
    let mut seen_gone = Vec::new();
    let r = fleet.wait(
        "honest",
        30,
        "the silent board unreachable",
        &mut seen_gone,
        |r| r.trust == TrustState::Unreachable,
    );
    assert!(
        r.unreachable.as_deref().unwrap().contains("not connected"),
        "{r:#?}"
    );
    let a = wait_for(20, "the unreachable alert", || {
        fleet
            .alerts("honest")
            .into_iter()
            .find(|a| a.kind == "unreachable")
    });
    assert!(a.what.contains("not connected"), "{a:#?}");

    replay_link.stop(&fleet);
    borrow_link.stop(&fleet);
    swap_link.stop(&fleet);
}

/// A board with a tampered model is untrusted with a finding; it reboots
/// with the model restored, and is still untrusted (the finding is open)
/// with a `reboot_with_finding` alert, until the operator acknowledges it.
#[test]
fn a_board_that_reboots_with_a_finding_open_stays_untrusted_until_acknowledged() {
    let mut dev = Device::new("rebooter");
    let fleet = Fleet::start(&dev.board.p("vendor.pub"));
    fleet.enrol(&dev);
    let model = dev.board.p("models/classifier.onnx");
    let good = std::fs::read(&model).unwrap();
    let mut bad = good.clone();
    bad[1000] ^= 0x80;
    std::fs::write(&model, &bad).unwrap();
    std::fs::remove_file(dev.board.p("measurements.log")).unwrap();
    dev.tpm.reboot();
    assert_eq!(dev.board.measure().status.code(), Some(3));
    // The second boot's bundles say so in what the TPM does not sign (the
    // host test cannot reboot the host; see attest.rs).
    let boot: Arc<Mutex<Option<String>>> = Arc::default();
    let config = dev.config();
    let which = boot.clone();
    let link = Answering::start(&fleet, "rebooter", move |nonce| {
        let (ev, _) = bundle::quote(&config, &nonce).unwrap();
        let mut ev = serde_json::to_value(ev).unwrap();
        if let Some(b) = which.lock().unwrap().clone() {
            ev["device"]["boot_id"] = b.clone().into();
            for r in ev["measurement_log"].as_array_mut().unwrap() {
                r["boot_id"] = b.clone().into();
            }
        }
        ev
    });
    let mut seen = Vec::new();
    let r = fleet.wait(
        "rebooter",
        60,
        "the tampered board untrusted",
        &mut seen,
        |r| failed(r, "model"),
    );
    assert!(!r.open_findings.is_empty(), "{r:#?}");
    link.stop(&fleet);

    // Reboot: the model restored, the TPM reset, a clean measurement.
    std::fs::write(&model, &good).unwrap();
    std::fs::remove_file(dev.board.p("measurements.log")).unwrap();
    dev.tpm.reboot();
    let out = dev.board.measure();
    assert!(out.status.success(), "{}", stderr(&out));
    *boot.lock().unwrap() = Some("second-boot".to_owned());
    let config = dev.config();
    let which = boot.clone();
    let link = Answering::start(&fleet, "rebooter", move |nonce| {
        let (ev, _) = bundle::quote(&config, &nonce).unwrap();
        let mut ev = serde_json::to_value(ev).unwrap();
        let b = which.lock().unwrap().clone().unwrap();
        ev["device"]["boot_id"] = b.clone().into();
        for r in ev["measurement_log"].as_array_mut().unwrap() {
            r["boot_id"] = b.clone().into();
        }
        ev
    });
    let r = fleet.wait(
        "rebooter",
        60,
        "the rebooted board judged on its new boot",
        &mut seen,
        |r| {
            r.verdict
                .as_ref()
                .is_some_and(|v| v.boot_id == "second-boot")
        },
    );
    assert_eq!(r.trust, TrustState::Untrusted, "{r:#?}");
    assert!(failed(&r, "finding"), "{r:#?}");
    assert!(!failed(&r, "model"), "the new boot is clean: {r:#?}");
    let a = wait_for(20, "the reboot_with_finding alert", || {
        fleet
            .alerts("rebooter")
            .into_iter()
            .find(|a| a.kind == "reboot_with_finding")
    });
    assert!(a.what.contains("open finding"), "{a:#?}");
    assert!(
        seen.iter().all(|r| r.trust != TrustState::Trusted),
        "trusted with a finding open: {seen:#?}"
    );

    // The operator acknowledges: the next round is trusted.
    assert!(fleet.acknowledge("rebooter") >= 1);
    let r = fleet.wait(
        "rebooter",
        30,
        "trusted after the acknowledgement",
        &mut seen,
        |r| r.trust == TrustState::Trusted,
    );
    assert!(r.open_findings.is_empty(), "{r:#?}");
    link.stop(&fleet);
    drop(dev);
}

/// The daemon answers the fleet: `guardian run` with `[report]` quotes
/// with its attestor for each challenge, and the fleet trusts it; a
/// tampered model (detect mode: the write goes through) turns it
/// untrusted, with an alert.
#[test]
fn the_agent_answers_the_fleet_and_a_tamper_turns_it_untrusted() {
    let _k = crate::host::exclusive();
    let dev = Device::new("agent-board");
    let fleet = Fleet::start(&dev.board.p("vendor.pub"));
    fleet.enrol(&dev);
    let pins = format!("/sys/fs/bpf/guardian-fleet-test-{}", std::process::id());
    // Removed however the test ends (declared before the agent, so dropped
    // after it): a failed assertion must not leave the guard's objects in
    // the kernel for the next test or benchmark.
    let _pins = Pins(PathBuf::from(&pins));
    let cfg = std::fs::read_to_string(dev.board.p("guardian.toml")).unwrap();
    std::fs::write(
        dev.board.p("guardian.toml"),
        format!(
            "{cfg}[guard]\nmode = \"detect\"\nprotected = [\"models\"]\npin_dir = {pins:?}\n\
             unload_without_token = true\n\
             [events]\noutput = \"events.jsonl\"\n[status]\npath = \"status.json\"\ninterval_secs = 1\n\
             [report]\nservers = [{:?}]\ndevice_id = \"agent-board\"\nspool_dir = \"spool\"\nstatus_interval_secs = 1\n",
            fleet.url
        ),
    )
    .unwrap();
    let err = std::fs::File::create(dev.board.p("agent.stderr")).unwrap();
    let agent = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_guardian"))
            .args(["run", "--config"])
            .arg(dev.board.p("guardian.toml"))
            .env_remove("GUARDIAN_MODE")
            .env_remove("TPM2TOOLS_TCTI")
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap(),
    );
    let log = || std::fs::read_to_string(dev.board.p("agent.stderr")).unwrap_or_default();
    let mut seen = Vec::new();
    let r = wait_for(90, "the agent trusted", || {
        let r = fleet.record("agent-board")?;
        seen.push(r.clone());
        (r.trust == TrustState::Trusted).then_some(r)
    });
    assert!(
        r.verdict.as_ref().unwrap().failures.is_empty(),
        "{r:#?}\n{}",
        log()
    );

    // Tamper: detect mode lets the write through; the tamper record goes
    // into the evidence, and the next rounds fail on it.
    std::fs::write(dev.board.p("models/labels.txt"), b"cat\ndog\nwolf\n").unwrap();
    let r = wait_for(60, "the tampered agent untrusted", || {
        let r = fleet.record("agent-board")?;
        (r.trust == TrustState::Untrusted).then_some(r)
    });
    let checks: Vec<&str> = r
        .verdict
        .as_ref()
        .unwrap()
        .failures
        .iter()
        .map(|f| f.check.as_str())
        .collect();
    assert!(
        checks.contains(&"tamper") || checks.contains(&"model"),
        "{r:#?}\n{}",
        log()
    );
    let a = wait_for(20, "the attestation alert", || {
        fleet
            .alerts("agent-board")
            .into_iter()
            .find(|a| a.kind == "attestation_failed")
    });
    assert_eq!(a.device, "agent-board");
    // `guardian status` counts the questions it answered.
    wait_for(20, "the answers counted in the status", || {
        let st: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dev.board.p("status.json")).ok()?).ok()?;
        (st["report"]["link"]["answered"].as_u64()? >= 2).then_some(())
    });
    drop(agent);
}

/// The EK certificate serial (hex) of `d`'s TPM, as the fleet reads it.
fn ek_serial(d: &Device) -> String {
    use base64::Engine as _;
    let mut t = Tpm::open(&d.tpm.tcti()).unwrap();
    let req = enrol::request(&mut t, AK).unwrap();
    let der = base64::engine::general_purpose::STANDARD
        .decode(&req.ek_certificate)
        .unwrap();
    let c =
        guardian_attest::enrol::ekcert::check_chain(&der, &localca(), std::time::SystemTime::now())
            .unwrap();
    hex::encode(c.cert.tbs_certificate.serial_number.as_bytes())
}

fn pending(fleet: &Fleet, device: &str) -> Option<guardian_fleet::enrol::Pending> {
    let device = device.to_owned();
    fleet.js(|js| async move {
        guardian_fleet::enrol::pending(&js)
            .await
            .ok()?
            .into_iter()
            .find(|p| p.device == device)
    })
}

fn is_enrolled(fleet: &Fleet, device: &str) -> bool {
    let device = device.to_owned();
    fleet.js(|js| async move {
        guardian_fleet::attest::enrolled(&js)
            .await
            .unwrap()
            .iter()
            .any(|(d, _)| *d == device)
    })
}

/// Enrolment over the link: a board whose EK serial is on the list is
/// enrolled by itself and then attested trusted; one not on it waits for
/// the operator (pending, an alert, never attested), is enrolled once
/// approved, and once removed is not enrolled again by itself.
#[test]
fn the_fleet_enrols_reporting_boards_by_rule_or_by_approval() {
    let auto = Arc::new(Device::unenrolled("auto", None));
    let manual = Arc::new(Device::unenrolled("manual", Some(&auto)));
    let serials = auto.board.p("serials.txt");
    std::fs::write(
        &serials,
        format!("# the factory's list\n{}\n", ek_serial(&auto)),
    )
    .unwrap();
    let (root, issuer) = crate::common::localca_files();
    let fleet = Fleet::start_with(
        &auto.board.p("vendor.pub"),
        Some(guardian_fleet::enrol::EnrolConfig {
            cas: enrol::load_ca_certs(&[root, issuer]).unwrap(),
            preauthorised: guardian_fleet::enrol::Preauthorised {
                issuers: Default::default(),
                serials: guardian_fleet::enrol::Preauthorised::read_serials(&serials).unwrap(),
            },
            answer_timeout: Duration::from_secs(10),
        }),
    );
    let a = auto.clone();
    let auto_link = Answering::questions(&fleet, "auto", move |q| a.answer(q));
    let m = manual.clone();
    let manual_link = Answering::questions(&fleet, "manual", move |q| m.answer(q));

    let mut seen = Vec::new();
    let r = fleet.wait(
        "auto",
        60,
        "the listed board enrolled and trusted",
        &mut seen,
        |r| r.trust == TrustState::Trusted,
    );
    assert!(
        r.verdict
            .unwrap()
            .warnings
            .iter()
            .all(|w| !w.contains("INSECURE"))
    );
    let p = wait_for(30, "the unlisted board pending", || {
        pending(&fleet, "manual").filter(|p| p.state == "pending")
    });
    assert_eq!(p.ek_issuer, "CN=swtpm-localca", "{p:#?}");
    assert!(!p.ek_serial.is_empty() && !p.ak_name.is_empty(), "{p:#?}");
    let a = wait_for(20, "the enrolment_pending alert", || {
        fleet
            .alerts("manual")
            .into_iter()
            .find(|a| a.kind == "enrolment_pending")
    });
    assert!(a.what.contains("waiting for approval"), "{a:#?}");
    std::thread::sleep(Duration::from_secs(3));
    assert!(!is_enrolled(&fleet, "manual"));
    assert!(fleet.record("manual").is_none(), "attested before approval");

    // The operator approves: enrolled (chain and activation checked
    // again), then attested.
    fleet.js(|js| async move {
        guardian_fleet::enrol::approve(&js, "manual", "test")
            .await
            .unwrap()
    });
    let mut seen = Vec::new();
    fleet.wait("manual", 60, "the approved board trusted", &mut seen, |r| {
        r.trust == TrustState::Trusted
    });
    assert!(pending(&fleet, "manual").is_none());

    // Removed: attestation stops, and the rule does not enrol it again.
    fleet.js(|js| async move {
        guardian_fleet::enrol::remove(&js, "auto", "test")
            .await
            .unwrap()
    });
    std::thread::sleep(Duration::from_secs(5));
    assert!(!is_enrolled(&fleet, "auto"), "re-enrolled after removal");
    assert_eq!(pending(&fleet, "auto").unwrap().state, "removed");
    auto_link.stop(&fleet);
    manual_link.stop(&fleet);
}

/// A board whose EK certificate chains to no CA the fleet trusts is
/// refused, with the reason and an alert, and never enrolled or attested.
#[test]
fn the_fleet_refuses_to_enrol_a_tpm_from_an_unknown_manufacturer() {
    let dev = Arc::new(Device::unenrolled("foreign", None));
    let dir = tempfile::tempdir().unwrap();
    let (key, cert) = (dir.path().join("ca.key"), dir.path().join("ca.pem"));
    crate::common::openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        cert.to_str().unwrap(),
        "-subj",
        "/CN=another-manufacturer",
        "-days",
        "2",
    ]);
    let fleet = Fleet::start_with(
        &dev.board.p("vendor.pub"),
        Some(guardian_fleet::enrol::EnrolConfig {
            cas: enrol::load_ca_certs(&[cert]).unwrap(),
            preauthorised: guardian_fleet::enrol::Preauthorised {
                issuers: ["CN=swtpm-localca".to_owned()].into(),
                serials: Default::default(),
            },
            answer_timeout: Duration::from_secs(10),
        }),
    );
    let d = dev.clone();
    let link = Answering::questions(&fleet, "foreign", move |q| d.answer(q));
    let p = wait_for(30, "the foreign board refused", || {
        pending(&fleet, "foreign").filter(|p| p.state == "refused")
    });
    assert!(p.reason.contains("EK certificate"), "{p:#?}");
    let a = wait_for(20, "the enrolment_refused alert", || {
        fleet
            .alerts("foreign")
            .into_iter()
            .find(|a| a.kind == "enrolment_refused")
    });
    assert!(a.what.contains("refused"), "{a:#?}");
    // An approval cannot override a failed check.
    let err = fleet.js(|js| async move {
        guardian_fleet::enrol::approve(&js, "foreign", "test")
            .await
            .unwrap_err()
            .to_string()
    });
    assert!(err.contains("cannot override"), "{err}");
    assert!(!is_enrolled(&fleet, "foreign"));
    assert!(fleet.record("foreign").is_none());
    link.stop(&fleet);
}
