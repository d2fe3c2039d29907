//! The fleet attesting many boards, and failing over: the issue's "done
//! means" figures for attestation.
//!
//! `guardian-fleet/bench/attest.sh [DEVICES] [SECONDS]` builds what it
//! needs and runs this (env `GUARDIAN_FLEET_BIN`, the release
//! `guardian-fleet`; `GUARDIAN_FLEET_DEVICES`, default 100;
//! `GUARDIAN_FLEET_SECS`, default 120; `GUARDIAN_FLEET_TAMPERED`, default
//! 5; `GUARDIAN_FLEET_JOBS`, parallel device set-ups, default 6).
//!
//! What runs, all on this machine: a nats-server with JetStream; two
//! `guardian-fleet serve` processes (instances `fleet-a`, `fleet-b`)
//! attesting every 10 s; N boards, each a swtpm manufactured with EK
//! certificates by `swtpm_setup`, its models measured under a manifest
//! signed by one vendor key, its AK enrolled by credential activation
//! against swtpm's local CA and imported into the fleet; each board
//! answers the fleet's questions on guardian's real link (`Reporter` with
//! `LinkConfig::questions`), quoting with guardian's real code
//! (`attest::bundle::quote`) on its own swtpm.
//!
//! Once every board is trusted, the run lasts SECONDS: a third of the way
//! in, the instance holding most claims (else the one that ran more
//! rounds) is killed with SIGKILL and, at once, a few boards switch to a
//! tampered model (a byte of the model flipped, the TPM power-cycled, the
//! models measured again, the answers saying so by a new boot id). The
//! survivor must take every board over, the tampered ones must turn
//! untrusted within `claim_for + every + answer_timeout` of the kill, and
//! none may ever show trusted on a verdict made after its tamper. Every
//! write to the attestation bucket is watched, so each verdict is
//! attributed to the instance whose claim preceded it.
//!
//! Prints a table and one JSON line; exits 1 naming each failed check.

// A benchmark reports by printing, and fails loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

// The integration tests' support; this benchmark uses a part of it.
#[allow(dead_code)]
#[path = "../tests/it/common/mod.rs"]
mod common;
#[path = "../../guardian-report/tests/support/nats.rs"]
mod nats_support;

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::StreamExt as _;
use guardian::{attest::bundle, config::Config, enrol, tpm::Tpm};
use guardian_fleet::attest::{ATTEST_BUCKET, Attestation, TrustState};
use guardian_report::{Asked, LinkConfig, Reporter, Spool, SpoolConfig, wire::Question};

const AK: u32 = 0x8101_0002;
/// The schedule the instances are started with (and the claim deadline
/// that follows from it, `AttestConfig::claim_for`).
const EVERY_S: u64 = 10;
const ANSWER_TIMEOUT_S: u64 = 5;
const CLAIM_FOR_S: u64 = 2 * ANSWER_TIMEOUT_S + 5;
/// The boot id a tampered board's answers carry (the host cannot reboot;
/// the TPM was power-cycled, as `guardian/tests/it/fleet.rs` does).
const TAMPERED_BOOT: &str = "tampered-boot";

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

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

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every child of this process, by pid (swtpm, nats-server, the fleet
/// instances): the release profile aborts on panic, so no destructor runs
/// then; the panic hook kills them by this list instead.
fn kill_children() {
    let me = std::process::id().to_string();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1));
        if ppid == Some(me.as_str()) {
            // SAFETY: a plain signal to a process this one started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// CPU seconds (user + system) a process has used.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    // After the name: state is field 3, utime 14, stime 15.
    let ticks = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    // SAFETY: sysconf reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / hz
}

/// Resident and peak resident memory, MiB.
fn rss_mib(pid: u32) -> (f64, f64) {
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let get = |k: &str| {
        st.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (get("VmRSS:"), get("VmHWM:"))
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// An instance's `/metrics`: sample (name with labels) → value.
fn scrape(port: u16) -> BTreeMap<String, f64> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

/// The sum of a metric over its labels.
fn total(m: &BTreeMap<String, f64>, name: &str) -> f64 {
    m.iter()
        .filter(|(k, _)| k.split('{').next() == Some(name))
        .map(|(_, v)| v)
        .sum()
}

/// Verdicts an instance reached: rounds without the unanswered ones.
fn verdicts(m: &BTreeMap<String, f64>) -> f64 {
    total(m, "guardian_fleet_attest_rounds_total") - total(m, "guardian_fleet_unreachable_total")
}

/// A board: its TPM (the lock also orders quotes against the tamper), its
/// files, how it answers.
struct Dev {
    id: String,
    tpm: Mutex<common::Swtpm>,
    board: common::Board,
    tampered: AtomicBool,
    /// When it switched to the tampered model (ms since the epoch; 0: not).
    tampered_at: AtomicU64,
    /// When it last sent an honest answer.
    last_honest_ms: AtomicU64,
    answers: AtomicU64,
}

impl Dev {
    /// A manufactured TPM, the models measured under the shared vendor's
    /// manifest, the AK enrolled by credential activation.
    fn make(id: String, vendor: &Path, ca: &enrol::CaCerts) -> Self {
        let tpm = common::Swtpm::manufactured();
        let board = common::Board {
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::create_dir(board.p("models")).unwrap();
        std::fs::write(board.p("models/classifier.onnx"), vec![7u8; 300_000]).unwrap();
        std::fs::write(board.p("models/labels.txt"), b"cat\ndog\n").unwrap();
        for k in ["vendor.pem", "vendor.pub"] {
            std::fs::copy(vendor.join(k), board.p(k)).unwrap();
        }
        let out = common::guardian(&[
            "manifest",
            "create",
            &board.s("models"),
            "--key",
            &board.s("vendor.pem"),
            "-o",
            &board.s("manifest.toml"),
        ]);
        assert!(out.status.success(), "{}", common::stderr(&out));
        std::fs::write(
            board.p("guardian.toml"),
            format!(
                "[measure]\nmanifest = \"manifest.toml\"\ntrusted_keys = [\"vendor.pub\"]\n\
                 log = \"measurements.log\"\ntcti = \"{}\"\n",
                tpm.tcti()
            ),
        )
        .unwrap();
        let out = board.measure();
        assert!(out.status.success(), "{}", common::stderr(&out));
        let mut t = Tpm::open(&tpm.tcti()).unwrap();
        let req = enrol::request(&mut t, AK).unwrap();
        let (challenge, pending) = enrol::challenge(&req, ca).unwrap();
        let response = enrol::activate(&mut t, AK, &challenge).unwrap();
        let rec = enrol::finish(&req, pending, &response).unwrap();
        assert!(!rec.insecure_tofu);
        drop(t);
        std::fs::write(board.p("enrolled.json"), serde_json::to_vec(&rec).unwrap()).unwrap();
        Self {
            id,
            tpm: Mutex::new(tpm),
            board,
            tampered: AtomicBool::new(false),
            tampered_at: AtomicU64::new(0),
            last_honest_ms: AtomicU64::new(0),
            answers: AtomicU64::new(0),
        }
    }

    /// The answer to the fleet's `nonce`: a bundle quoted by this board's
    /// TPM with guardian's code (a refusal if quoting failed).
    fn answer(&self, nonce: &[u8]) -> Vec<u8> {
        let _tpm = self.tpm.lock().unwrap();
        let tampered = self.tampered.load(Ordering::SeqCst);
        let config = Config::load(&self.board.p("guardian.toml"), |_| None).unwrap();
        let body = match bundle::quote(&config, nonce) {
            Ok((ev, _)) => {
                let mut ev = serde_json::to_value(ev).unwrap();
                if tampered {
                    ev["device"]["boot_id"] = TAMPERED_BOOT.into();
                    for r in ev["measurement_log"].as_array_mut().unwrap() {
                        r["boot_id"] = TAMPERED_BOOT.into();
                    }
                } else {
                    self.last_honest_ms.store(now_ms(), Ordering::SeqCst);
                }
                ev
            }
            Err(e) => {
                eprintln!("{}: quote failed: {e}", self.id);
                serde_json::json!({ "error": format!("quote failed: {e}") })
            }
        };
        self.answers.fetch_add(1, Ordering::Relaxed);
        serde_json::to_vec(&body).unwrap()
    }

    /// Switch to a tampered model: a byte flipped, the TPM power-cycled,
    /// the models measured again (which finds the mismatch). From the
    /// moment the lock is held no honest answer leaves.
    fn tamper(&self) {
        let mut tpm = self.tpm.lock().unwrap();
        self.tampered_at.store(now_ms(), Ordering::SeqCst);
        self.tampered.store(true, Ordering::SeqCst);
        let model = self.board.p("models/classifier.onnx");
        let mut bytes = std::fs::read(&model).unwrap();
        bytes[1000] ^= 0x80;
        std::fs::write(&model, &bytes).unwrap();
        std::fs::remove_file(self.board.p("measurements.log")).unwrap();
        tpm.reboot();
        assert_eq!(
            self.board.measure().status.code(),
            Some(3),
            "{}: measuring the tampered model",
            self.id
        );
    }
}

/// One write to a device's attestation record, as the watch saw it.
#[derive(Clone)]
struct Seen {
    at_ms: u64,
    rec: Attestation,
}

/// A verdict (or unanswered round), attributed to the instance whose
/// claim preceded it.
#[derive(Clone, Debug)]
struct Round {
    at_ms: u64,
    by: String,
    verdict: bool,
    trusted: bool,
}

fn rounds_of(history: &[Seen]) -> Vec<Round> {
    let mut out = Vec::new();
    let mut claimer = String::from("?");
    let mut last = (0u64, 0u64);
    for s in history {
        if let Some(c) = &s.rec.claim {
            claimer = c.instance.clone();
            continue;
        }
        let r = &s.rec.rounds;
        if r.verified > last.0 {
            let v = s.rec.verdict.clone().unwrap_or_default();
            out.push(Round {
                at_ms: v.at_ms,
                by: claimer.clone(),
                verdict: true,
                trusted: v.trusted,
            });
        } else if r.unreachable > last.1 {
            out.push(Round {
                at_ms: s.at_ms,
                by: claimer.clone(),
                verdict: false,
                trusted: false,
            });
        }
        last = (r.verified, r.unreachable);
    }
    out
}

struct Instance {
    name: String,
    port: u16,
    child: Option<KillOnDrop>,
    pid: u32,
}

fn main() {
    std::panic::set_hook({
        let default = std::panic::take_hook();
        Box::new(move |info| {
            default(info);
            eprintln!("!!! fleet_attest panicked: killing its children");
            kill_children();
        })
    });
    let failures = run();
    kill_children();
    if failures.is_empty() {
        println!("fleet_attest: every check passed");
    } else {
        for f in &failures {
            eprintln!("FAILED: {f}");
        }
        std::process::exit(1);
    }
}

fn run() -> Vec<String> {
    let n = env_or("GUARDIAN_FLEET_DEVICES", 100);
    let secs = env_or("GUARDIAN_FLEET_SECS", 120) as u64;
    let n_tampered = env_or("GUARDIAN_FLEET_TAMPERED", 5).min(n);
    let jobs = env_or("GUARDIAN_FLEET_JOBS", 6).max(1);
    let bin = PathBuf::from(std::env::var("GUARDIAN_FLEET_BIN").expect(
        "GUARDIAN_FLEET_BIN: the release guardian-fleet (guardian-fleet/bench/attest.sh sets it)",
    ));
    assert!(bin.exists(), "no guardian-fleet at {}", bin.display());
    // The phases: both instances for a third, then the survivor alone for
    // at least a claim's deadline and two rounds, with room.
    let phase_a = (secs / 3).max(EVERY_S * 2);
    let phase_b = secs
        .saturating_sub(phase_a)
        .max(CLAIM_FOR_S + 2 * EVERY_S + 15);
    // SAFETY: no other thread yet. The TSS libraries log the expected "no
    // AK yet" lookup failure to stderr otherwise.
    unsafe { std::env::set_var("TSS2_LOG", "all+none") };
    let load_start = loadavg();
    println!(
        "# fleet_attest: {n} devices, every {EVERY_S} s, answer timeout {ANSWER_TIMEOUT_S} s, \
         claim {CLAIM_FOR_S} s; {phase_a} s with two instances, then kill -9, {phase_b} s; \
         {n_tampered} tampered at the kill; load {load_start}"
    );

    // 1. The vendor (one key signs every board's manifest) and the boards,
    //    made in parallel: swtpm_setup's EK generation is most of it.
    let work = tempfile::tempdir().unwrap();
    let vendor = work.path().join("vendor");
    std::fs::create_dir(&vendor).unwrap();
    let (pem, pubk) = (vendor.join("vendor.pem"), vendor.join("vendor.pub"));
    common::openssl(&[
        "genpkey",
        "-algorithm",
        "ed25519",
        "-out",
        pem.to_str().unwrap(),
    ]);
    common::openssl(&[
        "pkey",
        "-in",
        pem.to_str().unwrap(),
        "-pubout",
        "-out",
        pubk.to_str().unwrap(),
    ]);
    let t_setup = Instant::now();
    let next = AtomicUsize::new(0);
    let made: Mutex<Vec<Option<Arc<Dev>>>> = Mutex::new((0..n).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..jobs.min(n) {
            s.spawn(|| {
                let ca = common::localca();
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= n {
                        break;
                    }
                    let d = Dev::make(format!("board-{i:04}"), &vendor, &ca);
                    made.lock().unwrap()[i] = Some(Arc::new(d));
                    if (i + 1).is_multiple_of(25) {
                        eprintln!(
                            "  {} boards made ({:.0} s)",
                            i + 1,
                            t_setup.elapsed().as_secs_f64()
                        );
                    }
                }
            });
        }
    });
    let devs: Vec<Arc<Dev>> = made.into_inner().unwrap().into_iter().flatten().collect();
    assert_eq!(devs.len(), n);
    let setup_s = t_setup.elapsed().as_secs_f64();
    println!("boards made (swtpm_setup, measure, enrolment): {setup_s:.0} s");

    // 2. The broker and the two instances.
    let nats_port = nats_support::free_port();
    let nats = KillOnDrop(
        common::no_inherited_fds(&mut Command::new(nats_support::nats_server()))
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &nats_port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(work.path().join("js"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for(10, "nats-server listening", || {
        std::net::TcpStream::connect(("127.0.0.1", nats_port)).ok()
    });
    let url = format!("nats://127.0.0.1:{nats_port}");
    let mut instances: Vec<Instance> = ["fleet-a", "fleet-b"]
        .iter()
        .map(|name| {
            let port = nats_support::free_port();
            let log = std::fs::File::create(work.path().join(format!("{name}.log"))).unwrap();
            let child = common::no_inherited_fds(&mut Command::new(&bin))
                .args(["--nats", &url, "serve", "--instance", name])
                .args(["--listen", &format!("127.0.0.1:{port}")])
                .args(["--attest-every", &format!("{EVERY_S}s")])
                .args(["--answer-timeout", &format!("{ANSWER_TIMEOUT_S}s")])
                .arg("--manifest-key")
                .arg(&pubk)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap();
            let pid = child.id();
            Instance {
                name: (*name).to_owned(),
                port,
                child: Some(KillOnDrop(child)),
                pid,
            }
        })
        .collect();
    for i in &instances {
        wait_for(30, "the instance's /metrics", || {
            std::net::TcpStream::connect(("127.0.0.1", i.port)).ok()
        });
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let js = rt.block_on(async {
        let client = guardian_fleet::service::connect(std::slice::from_ref(&url), "bench")
            .await
            .unwrap();
        async_nats::jetstream::new(client)
    });
    wait_for(30, "the fleet's buckets", || {
        rt.block_on(guardian_fleet::attest::enrolled(&js)).ok()
    });

    // 3. Every write to the attestation records, with when it was seen.
    let history: Arc<Mutex<HashMap<String, Vec<Seen>>>> = Arc::default();
    {
        let kv = rt.block_on(js.get_key_value(ATTEST_BUCKET)).unwrap();
        let mut w = rt.block_on(kv.watch_with_history(">")).unwrap();
        let history = history.clone();
        rt.spawn(async move {
            while let Some(e) = w.next().await {
                let Ok(e) = e else {
                    eprintln!("!!! the watch on {ATTEST_BUCKET} failed: {e:?}");
                    break;
                };
                if let Ok(rec) = serde_json::from_slice::<Attestation>(&e.value) {
                    history
                        .lock()
                        .unwrap()
                        .entry(e.key.clone())
                        .or_default()
                        .push(Seen {
                            at_ms: now_ms(),
                            rec,
                        });
                }
            }
        });
    }
    let latest = |h: &Arc<Mutex<HashMap<String, Vec<Seen>>>>| -> HashMap<String, Attestation> {
        h.lock()
            .unwrap()
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.last()?.rec.clone())))
            .collect()
    };

    // 4. The boards answer on guardian's real link, then are enrolled.
    let spools = tempfile::tempdir().unwrap();
    let mut reporters: Vec<Reporter> = Vec::new();
    for d in &devs {
        let r = rt.block_on(async {
            let spool = Spool::open(SpoolConfig {
                dir: spools.path().join(&d.id),
                max_bytes: 1 << 20,
                segment_bytes: 64 << 10,
                fsync: guardian_report::Fsync::Always,
            })
            .unwrap();
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Asked>(1);
            let mut link = LinkConfig::new(&d.id, vec![url.clone()]);
            link.questions = Some(tx);
            let d = d.clone();
            tokio::spawn(async move {
                while let Some(asked) = rx.recv().await {
                    // These boards were enrolled on files: they answer
                    // challenges only.
                    let Question::Attest { nonce } = asked.question else {
                        let _ = asked.answer.send(Err("not enrolling".to_owned()));
                        continue;
                    };
                    let nonce = hex::decode(nonce).unwrap();
                    let d = d.clone();
                    let body = tokio::task::spawn_blocking(move || d.answer(&nonce))
                        .await
                        .unwrap();
                    let _ = asked.answer.send(Ok(body));
                }
            });
            Reporter::start(spool, link).unwrap()
        });
        reporters.push(r);
    }
    // The links connected (a question to an unconnected board is
    // "no responders": unreachable).
    std::thread::sleep(Duration::from_secs(2));
    let t_enrol = Instant::now();
    for d in &devs {
        let file = d.board.p("enrolled.json");
        rt.block_on(guardian_fleet::attest::import_enrolment(&js, &d.id, &file))
            .unwrap();
    }
    let warm = wait_for(180, "every board trusted", || {
        let l = latest(&history);
        let trusted = l
            .values()
            .filter(|r| r.trust == TrustState::Trusted)
            .count();
        (trusted == n).then_some(t_enrol.elapsed())
    });
    println!(
        "every board trusted {:.1} s after enrolment",
        warm.as_secs_f64()
    );

    // 5. Two instances.
    let t_start_ms = now_ms();
    let m_start: Vec<_> = instances.iter().map(|i| scrape(i.port)).collect();
    let cpu_start: Vec<f64> = instances.iter().map(|i| cpu_secs(i.pid)).collect();
    let nats_pid = nats.0.id();
    let nats_cpu_start = cpu_secs(nats_pid);
    let quote_cpu_start = cpu_secs(std::process::id());
    let progress = |label: &str| {
        let l = latest(&history);
        let c = |s: TrustState| l.values().filter(|r| r.trust == s).count();
        eprintln!(
            "  {label}: trusted {}, untrusted {}, unreachable {}, load {}",
            c(TrustState::Trusted),
            c(TrustState::Untrusted),
            c(TrustState::Unreachable),
            loadavg()
        );
    };
    let sleep_until = |t_ms: u64, label: &str| {
        while now_ms() < t_ms {
            std::thread::sleep(Duration::from_millis((t_ms - now_ms()).min(EVERY_S * 1000)));
            progress(label);
        }
    };
    sleep_until(t_start_ms + phase_a * 1000, "two instances");

    // 6. The kill, in a burst of rounds (boards enrolled together have
    //    their rounds together): the instance holding most live claims
    //    dies, and the boards it holds wait for the claims' deadline. If
    //    no claim shows within a round, the one that ran more rounds.
    let m_kill: Vec<_> = instances.iter().map(|i| scrape(i.port)).collect();
    let cpu_kill: Vec<f64> = instances.iter().map(|i| cpu_secs(i.pid)).collect();
    let live_claims = || {
        let now = now_ms();
        let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (k, v) in history.lock().unwrap().iter() {
            if let Some(c) = v.last().and_then(|s| s.rec.claim.as_ref())
                && c.until_ms > now
            {
                m.entry(c.instance.clone()).or_default().push(k.clone());
            }
        }
        m
    };
    let t_a_end_ms = now_ms();
    // Poll for a burst: kill when one instance holds a tenth of the
    // boards, or when the claims it holds start to fall (the peak).
    let want = (n / 10).max(1);
    let deadline = now_ms() + (EVERY_S + 5) * 1000;
    let mut claims = BTreeMap::new();
    let mut prev = 0;
    while now_ms() < deadline {
        let c = live_claims();
        let most = c.values().map(Vec::len).max().unwrap_or(0);
        if most >= want || (most > 0 && most < prev) {
            claims = c;
            break;
        }
        prev = most;
        std::thread::sleep(Duration::from_millis(1));
    }
    let victim = match claims.iter().max_by_key(|(_, v)| v.len()) {
        Some((name, _)) => instances.iter().position(|i| &i.name == name).unwrap(),
        None => {
            let r = |i: usize| total(&m_kill[i], "guardian_fleet_attest_rounds_total");
            usize::from(r(1) > r(0))
        }
    };
    let survivor = 1 - victim;
    let (vname, sname) = (
        instances[victim].name.clone(),
        instances[survivor].name.clone(),
    );
    let rss_victim = rss_mib(instances[victim].pid);
    // Which boards the victim holds, and which it attested last: the
    // tampered ones are taken from these first.
    let mut held: Vec<String> = claims.get(&vname).cloned().unwrap_or_default();
    held.sort();
    let last_by: HashMap<String, String> = history
        .lock()
        .unwrap()
        .iter()
        .filter_map(|(k, h)| Some((k.clone(), rounds_of(h).last()?.by.clone())))
        .collect();
    let mut pick: Vec<String> = held.clone();
    let mut by_victim: Vec<&String> = last_by
        .iter()
        .filter(|(k, by)| **by == vname && !held.contains(k))
        .map(|(k, _)| k)
        .collect();
    by_victim.sort();
    pick.extend(by_victim.into_iter().cloned());
    for d in &devs {
        if !pick.contains(&d.id) {
            pick.push(d.id.clone());
        }
    }
    pick.truncate(n_tampered);
    let t_kill_ms = now_ms();
    // SAFETY: a signal to the instance this process started.
    unsafe { libc::kill(instances[victim].pid as i32, libc::SIGKILL) };
    let _ = instances[victim].child.take().map(|mut k| k.0.wait());
    // The survivor's own figures start here, before the tamper below.
    let t_after_ms = now_ms();
    let m_after = scrape(instances[survivor].port);
    let cpu_after = cpu_secs(instances[survivor].pid);
    let tampered: Vec<Arc<Dev>> = devs
        .iter()
        .filter(|d| pick.contains(&d.id))
        .cloned()
        .collect();
    std::thread::scope(|s| {
        for d in &tampered {
            s.spawn(|| d.tamper());
        }
    });
    println!(
        "killed {vname} (pid {}, holding {} live claim(s): {:?}); tampered {:?} ({} ms after the kill)",
        instances[victim].pid,
        held.len(),
        held,
        pick,
        now_ms() - t_kill_ms
    );

    // 7. The survivor alone.
    sleep_until(t_kill_ms + phase_b * 1000, "survivor alone");
    let t_end_ms = now_ms();
    let m_end = scrape(instances[survivor].port);
    let cpu_end = cpu_secs(instances[survivor].pid);
    let rss_survivor = rss_mib(instances[survivor].pid);
    let nats_cpu = cpu_secs(nats_pid) - nats_cpu_start;
    let quote_cpu = cpu_secs(std::process::id()) - quote_cpu_start;
    let nats_rss = rss_mib(nats_pid);
    let load_end = loadavg();
    let finals = rt
        .block_on(guardian_fleet::query::attestations(&js))
        .unwrap();
    let history = history.lock().unwrap().clone();

    // 8. The checks.
    let mut failures = Vec::new();
    let bound_ms = (CLAIM_FOR_S + EVERY_S + ANSWER_TIMEOUT_S) * 1000;
    let mut rounds_window = Vec::new();
    let mut intervals = Vec::new();
    let mut by_instance: BTreeMap<String, usize> = BTreeMap::new();
    let mut gaps = Vec::new();
    let mut survivor_rounds = Vec::new();
    let mut unreachable_rounds = 0usize;
    let mut honest_failed = Vec::new();
    for d in &devs {
        let h = history.get(&d.id).cloned().unwrap_or_default();
        let rs = rounds_of(&h);
        unreachable_rounds += rs
            .iter()
            .filter(|r| !r.verdict && r.at_ms >= t_start_ms)
            .count();
        let vs: Vec<&Round> = rs.iter().filter(|r| r.verdict).collect();
        rounds_window.push(
            vs.iter()
                .filter(|r| r.at_ms >= t_start_ms && r.at_ms <= t_end_ms)
                .count(),
        );
        for w in vs.windows(2) {
            let spans_kill = w[0].at_ms <= t_kill_ms && w[1].at_ms > t_kill_ms;
            if w[0].at_ms >= t_start_ms && !spans_kill && !d.tampered.load(Ordering::SeqCst) {
                intervals.push((w[1].at_ms - w[0].at_ms) as f64 / 1000.0);
            }
        }
        for r in vs.iter().filter(|r| r.at_ms >= t_start_ms) {
            let phase = if r.at_ms <= t_kill_ms { "two" } else { "alone" };
            *by_instance.entry(format!("{phase}:{}", r.by)).or_insert(0) += 1;
        }
        let before = vs.iter().rev().find(|r| r.at_ms <= t_kill_ms);
        let after = vs.iter().find(|r| r.at_ms > t_kill_ms);
        match (before, after) {
            (Some(b), Some(a)) => gaps.push(((a.at_ms - b.at_ms) as f64 / 1000.0, d.id.clone())),
            _ => failures.push(format!("{}: no verdict across the kill", d.id)),
        }
        let by_survivor = vs
            .iter()
            .filter(|r| r.at_ms > t_kill_ms && r.by == sname)
            .count();
        survivor_rounds.push(by_survivor);
        if by_survivor < 2 {
            failures.push(format!(
                "{}: {by_survivor} verdict(s) by the survivor after the kill",
                d.id
            ));
        }
        if vs.iter().any(|r| r.at_ms > t_kill_ms && r.by == vname) {
            failures.push(format!(
                "{}: a verdict by the killed instance after the kill",
                d.id
            ));
        }
        let fin = finals.iter().find(|a| a.device == d.id);
        let Some(fin) = fin else {
            failures.push(format!("{}: no attestation record at the end", d.id));
            continue;
        };
        if let Some(last) = vs.last()
            && t_end_ms.saturating_sub(last.at_ms) > (EVERY_S + ANSWER_TIMEOUT_S + 5) * 1000
        {
            failures.push(format!(
                "{}: last verdict {:.0} s before the end",
                d.id,
                (t_end_ms - last.at_ms) as f64 / 1000.0
            ));
        }
        if d.tampered.load(Ordering::SeqCst) {
            continue;
        }
        if vs.iter().any(|r| r.at_ms >= t_start_ms && !r.trusted) {
            honest_failed.push(d.id.clone());
        }
        if fin.trust != TrustState::Trusted {
            failures.push(format!(
                "{}: honest, {} at the end: {:?}",
                d.id,
                fin.trust.as_str(),
                fin.verdict.as_ref().map(|v| &v.failures)
            ));
        }
    }
    if !honest_failed.is_empty() {
        failures.push(format!("honest boards judged untrusted: {honest_failed:?}"));
    }

    // The tampered boards: untrusted in bounded time, never trusted on a
    // verdict made after the tamper.
    let mut shown_trusted_after_tamper = Vec::new();
    let mut untrusted_after_kill = Vec::new();
    let mut tamper_checks = BTreeMap::new();
    for d in &tampered {
        let h = history.get(&d.id).cloned().unwrap_or_default();
        let t_tamper = d.tampered_at.load(Ordering::SeqCst);
        let honest_until = d.last_honest_ms.load(Ordering::SeqCst);
        for s in &h {
            let Some(v) = &s.rec.verdict else { continue };
            if s.rec.trust == TrustState::Trusted
                && (v.boot_id == TAMPERED_BOOT
                    || v.at_ms > honest_until + (ANSWER_TIMEOUT_S + 1) * 1000)
            {
                failures.push(format!(
                    "{}: WRONGLY SHOWN TRUSTED on a verdict at {} (tampered at {t_tamper}, \
                     last honest answer {honest_until}, boot {})",
                    d.id, v.at_ms, v.boot_id
                ));
            }
        }
        match h
            .iter()
            .find(|s| s.at_ms >= t_tamper && s.rec.trust == TrustState::Untrusted)
        {
            Some(s) => {
                shown_trusted_after_tamper.push((s.at_ms - t_tamper) as f64 / 1000.0);
                untrusted_after_kill.push((s.at_ms - t_kill_ms) as f64 / 1000.0);
                if s.at_ms - t_kill_ms > bound_ms {
                    failures.push(format!(
                        "{}: untrusted {:.1} s after the kill (bound {} s)",
                        d.id,
                        (s.at_ms - t_kill_ms) as f64 / 1000.0,
                        bound_ms / 1000
                    ));
                }
            }
            None => failures.push(format!("{}: tampered, never shown untrusted", d.id)),
        }
        if let Some(f) = finals.iter().find(|a| a.device == d.id) {
            if f.trust != TrustState::Untrusted {
                failures.push(format!(
                    "{}: tampered, {} at the end",
                    d.id,
                    f.trust.as_str()
                ));
            }
            for c in f.verdict.iter().flat_map(|v| &v.failures) {
                *tamper_checks.entry(c.check.clone()).or_insert(0) += 1;
            }
        }
    }

    // What an operator saw of the boards the killed instance held: their
    // last state, until the survivor's claim.
    let mut takeover = Vec::new();
    for id in &held {
        let h = history.get(id).cloned().unwrap_or_default();
        if let Some(s) = h.iter().find(|s| {
            s.at_ms > t_kill_ms && s.rec.claim.as_ref().is_some_and(|c| c.instance == sname)
        }) {
            takeover.push((s.at_ms - t_kill_ms) as f64 / 1000.0);
        }
    }

    // 9. The figures.
    let stat = |v: &[f64]| -> (f64, f64, f64) {
        if v.is_empty() {
            return (0.0, 0.0, 0.0);
        }
        let min = v.iter().cloned().fold(f64::INFINITY, f64::min);
        let max = v.iter().cloned().fold(0.0, f64::max);
        (min, v.iter().sum::<f64>() / v.len() as f64, max)
    };
    let a_secs = (t_a_end_ms - t_start_ms) as f64 / 1000.0;
    let b_secs = (t_end_ms - t_after_ms) as f64 / 1000.0;
    let mut per_instance = Vec::new();
    for i in 0..2 {
        let v = verdicts(&m_kill[i]) - verdicts(&m_start[i]);
        let cpu = cpu_kill[i] - cpu_start[i];
        let us = total(&m_kill[i], "guardian_fleet_verify_microseconds_total")
            - total(&m_start[i], "guardian_fleet_verify_microseconds_total");
        per_instance.push((instances[i].name.clone(), v, cpu, us));
    }
    let surv_v = verdicts(&m_end) - verdicts(&m_after);
    let surv_cpu = cpu_end - cpu_after;
    let surv_us = total(&m_end, "guardian_fleet_verify_microseconds_total")
        - total(&m_after, "guardian_fleet_verify_microseconds_total");
    let a_v: f64 = per_instance.iter().map(|p| p.1).sum();
    let a_cpu: f64 = per_instance.iter().map(|p| p.2).sum();
    let a_us: f64 = per_instance.iter().map(|p| p.3).sum();
    let rw: Vec<f64> = rounds_window.iter().map(|&r| r as f64).collect();
    let (rmin, rmean, _) = stat(&rw);
    let (imin, imean, imax) = stat(&intervals);
    let gap_s: Vec<f64> = gaps.iter().map(|g| g.0).collect();
    let (_, gmean, gmax) = stat(&gap_s);
    let longest = gaps
        .iter()
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|g| g.1.clone())
        .unwrap_or_default();
    let over = gap_s.iter().filter(|&&g| g > (EVERY_S + 3) as f64).count();
    let (_, shown_mean, shown_max) = stat(&shown_trusted_after_tamper);
    let (_, _, untr_max) = stat(&untrusted_after_kill);
    let (_, take_mean, take_max) = stat(&takeover);
    let trusted_end = finals
        .iter()
        .filter(|a| a.trust == TrustState::Trusted)
        .count();
    let claims_lost = total(&m_end, "guardian_fleet_attest_claims_lost_total")
        - total(&m_after, "guardian_fleet_attest_claims_lost_total");
    let dropped = total(&m_end, "guardian_fleet_attest_results_dropped_total");
    let per_cpu = |v: f64, c: f64| if c > 0.0 { v / c } else { 0.0 };

    println!();
    println!("| figure | value |");
    println!("|---|---|");
    println!("| devices (swtpm, EK certs, enrolled) | {n} |");
    println!("| set-up (parallel {jobs}) | {setup_s:.0} s |");
    println!(
        "| all trusted after enrolment | {:.1} s |",
        warm.as_secs_f64()
    );
    println!(
        "| trusted at the end | {trusted_end} of {n} ({} tampered) |",
        tampered.len()
    );
    println!(
        "| verdicts per device in the {:.0} s run | min {rmin:.0}, mean {rmean:.1} |",
        (t_end_ms - t_start_ms) as f64 / 1000.0
    );
    println!(
        "| interval between a board's verdicts (not across the kill) | min {imin:.1}, mean {imean:.2}, max {imax:.1} s |"
    );
    println!("| verdicts by instance (watched: phase:instance) | {by_instance:?} |");
    println!("| unanswered rounds in the run | {unreachable_rounds} |");
    for (name, v, cpu, us) in &per_instance {
        println!(
            "| {name}, two instances ({a_secs:.0} s) | {v:.0} verdicts ({:.2}/s), CPU {cpu:.1} s → {:.0} verdicts per CPU-second; verify {:.0} µs mean |",
            v / a_secs,
            per_cpu(*v, *cpu),
            if *v > 0.0 { us / v } else { 0.0 }
        );
    }
    println!(
        "| {sname} alone after the kill ({b_secs:.0} s) | {surv_v:.0} verdicts ({:.2}/s), CPU {surv_cpu:.1} s ({:.1}% of a core) → {:.0} verdicts per CPU-second; verify {:.0} µs mean |",
        surv_v / b_secs,
        100.0 * surv_cpu / b_secs,
        per_cpu(surv_v, surv_cpu),
        if surv_v > 0.0 { surv_us / surv_v } else { 0.0 }
    );
    println!(
        "| fleet RSS | {sname} {:.1} MiB (peak {:.1}); {vname} {:.1} MiB at the kill |",
        rss_survivor.0, rss_survivor.1, rss_victim.0
    );
    println!(
        "| nats-server | CPU {nats_cpu:.1} s over the run, RSS {:.1} MiB |",
        nats_rss.0
    );
    println!(
        "| boards' side (this process: quotes, links; swtpm not counted) | CPU {quote_cpu:.1} s |"
    );
    println!(
        "| claims lost while alone / results dropped ({sname}) | {claims_lost:.0} / {dropped:.0} |"
    );
    println!(
        "| kill -9 {vname}: live claims it held | {} (taken over after mean {take_mean:.1}, max {take_max:.1} s) |",
        held.len()
    );
    println!(
        "| verdict gap across the kill | mean {gmean:.1}, max {gmax:.1} s ({longest}); {over} device(s) over {} s |",
        EVERY_S + 3
    );
    println!(
        "| tampered: shown trusted after the tamper (last state) | mean {shown_mean:.1}, max {shown_max:.1} s; untrusted ≤ {untr_max:.1} s after the kill (bound {} s) |",
        bound_ms / 1000
    );
    println!("| tampered: failed checks at the end | {tamper_checks:?} |");
    println!("| load average | {load_start} at the start, {load_end} at the end (2 cores) |");
    let json = serde_json::json!({
        "devices": n,
        "every_s": EVERY_S,
        "claim_for_s": CLAIM_FOR_S,
        "setup_s": setup_s,
        "all_trusted_after_enrol_s": warm.as_secs_f64(),
        "trusted_end": trusted_end,
        "tampered": pick,
        "verdicts_per_device_min": rmin,
        "verdicts_per_device_mean": rmean,
        "round_interval_s": {"min": imin, "mean": imean, "max": imax},
        "verdicts_by_instance": by_instance,
        "unreachable_rounds": unreachable_rounds,
        "two_instances": per_instance.iter().map(|(name, v, cpu, us)| serde_json::json!({
            "instance": name, "secs": a_secs, "verdicts": v, "cpu_s": cpu,
            "verdicts_per_cpu_s": per_cpu(*v, *cpu),
            "verify_us_mean": if *v > 0.0 { us / v } else { 0.0 },
        })).collect::<Vec<_>>(),
        "two_instances_total": {"verdicts": a_v, "cpu_s": a_cpu, "verify_us": a_us},
        "survivor": {
            "instance": sname, "secs": b_secs, "verdicts": surv_v, "cpu_s": surv_cpu,
            "verdicts_per_s": surv_v / b_secs,
            "verdicts_per_cpu_s": per_cpu(surv_v, surv_cpu),
            "verify_us_mean": if surv_v > 0.0 { surv_us / surv_v } else { 0.0 },
            "rss_mib": rss_survivor.0, "rss_peak_mib": rss_survivor.1,
            "claims_lost": claims_lost, "results_dropped": dropped,
        },
        "killed": {"instance": vname, "live_claims": held,
                   "takeover_s": takeover, "rss_mib": rss_victim.0},
        "gap_across_kill_s": {"mean": gmean, "max": gmax, "over_every": over},
        "tampered_shown_trusted_s": shown_trusted_after_tamper,
        "tampered_untrusted_after_kill_s": untrusted_after_kill,
        "tampered_checks": tamper_checks,
        "nats": {"cpu_s": nats_cpu, "rss_mib": nats_rss.0},
        "boards_process_cpu_s": quote_cpu,
        "load_start": load_start,
        "load_end": load_end,
        "failures": failures.len(),
    });
    println!("{json}");

    // Everything stops: the links, the instance, the broker, the TPMs.
    for r in reporters {
        let _ =
            rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), r.shutdown()).await });
    }
    rt.shutdown_timeout(Duration::from_secs(5));
    drop(instances);
    drop(nats);
    drop(tampered);
    drop(devs);
    failures
}
