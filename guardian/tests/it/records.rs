//! The guard's and the daemon's records in the evidence log, each made by
//! the code that makes them in `guardian run` (the attestor thread,
//! [`guardian::continuous::Attestor`], fed the messages the daemon sends
//! it), extended into a real swtpm, and then judged by the verifier:
//!
//! - `guard gap`: a start that finds the previous guard ended without a
//!   clean stop (or stopped, and its pins were removed behind its back);
//! - `guard stalled`: another process held the log's lock, records
//!   waited, and the stall is itself recorded when it clears (and no
//!   local user can hold that lock);
//! - the daemon's manifest update: a signed manifest with a higher serial
//!   is recorded and every model re-measured against it; a lower serial,
//!   a bad signature or no signature is refused, counted, and the one in
//!   force stays;
//! - `guard unload`: `guardian stop --unload` on a running agent (real
//!   eBPF programs on this kernel, so it needs root);
//! - `guard drops` for the fleet link: `guardian run` with a report spool
//!   that fills while the fleet is unreachable records the drops, and the
//!   verifier fails on them.

// Tests panic on purpose: the failing line is the report.
use crate::common;
use common::{KillOnDrop, Pins};

use std::{
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{Board, Swtpm, guardian, stderr};
use guardian::{
    config::Config,
    continuous::{Attestor, Message, Stats},
    events::SecurityEvent,
    evidence::{Event, Ledger, Record, ledger, log},
    hooks::{Mode, Verdict},
    manifest::{self, Manifest},
    signing::SigningKey,
};
use serde_json::Value;
use sha2::Digest as _;

const PCR: u32 = 14;

/// A measured board whose config also names the daemon's parts (no
/// remeasure timer: the tests drive every re-measurement).
fn board() -> (Swtpm, Board) {
    let tpm = Swtpm::start();
    let b = Board::new(&tpm.tcti());
    let out = b.measure();
    assert!(out.status.success(), "{}", stderr(&out));
    let cfg = std::fs::read_to_string(b.p("guardian.toml")).unwrap();
    std::fs::write(
        b.p("guardian.toml"),
        format!("[attest]\nremeasure_secs = 0\n{cfg}"),
    )
    .unwrap();
    (tpm, b)
}

fn config(b: &Board) -> Config {
    Config::load(&b.p("guardian.toml"), |_| None).unwrap()
}

fn records(b: &Board) -> Vec<Record> {
    log::read(&b.p("measurements.log")).unwrap().records
}

/// The guard records' actions, in order.
fn guard_actions(recs: &[Record]) -> Vec<String> {
    recs.iter()
        .filter_map(|r| match &r.event {
            Event::Guard(g) => Some(g.action.clone()),
            _ => None,
        })
        .collect()
}

fn guard_msg(action: &'static str) -> Message {
    Message::Guard {
        action,
        mode: "enforce".into(),
        detail: format!("test: {action}"),
    }
}

/// Wait until the attestor's counters satisfy `f`.
fn wait_stats(a: &Attestor, secs: u64, what: &str, f: impl Fn(&Stats) -> bool) -> Stats {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let s = a.stats();
        if f(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The log explains the TPM's PCR (read by tpm2-tools, not our code).
fn assert_log_explains_pcr(tpm: &Swtpm, b: &Board) {
    let c = log::read(&b.p("measurements.log")).unwrap();
    assert_eq!(
        hex::encode(c.replay(PCR, &guardian::evidence::boot_id())),
        tpm.pcrread(PCR),
        "the log no longer replays to the PCR"
    );
}

/// `guardian quote` then `guardian verify --json` (stateless).
fn quote_and_verify(b: &Board, nonce: &str) -> Value {
    let out = guardian(&[
        "quote",
        "-c",
        &b.s("guardian.toml"),
        "--nonce",
        nonce,
        "-o",
        &b.s("ev.json"),
        "--ak-out",
        &b.s("ak.pem"),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = guardian(&[
        "verify",
        "--evidence",
        &b.s("ev.json"),
        "--insecure-tofu",
        "--ak",
        &b.s("ak.pem"),
        "--key",
        &b.s("vendor.pub"),
        "--nonce",
        nonce,
        "--json",
    ]);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("no verdict: {}", stderr(&out)))
}

fn failures(v: &Value, check: &str) -> Vec<String> {
    v["failures"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["check"] == check)
        .map(|f| f["reason"].as_str().unwrap().to_owned())
        .collect()
}

// ---------------------------------------------------------------------
// guard gap
// ---------------------------------------------------------------------

/// Every pairing of the last lifecycle record of this boot with the next
/// agent's start or adoption, and whether a gap must be recorded before
/// it: an agent that starts afresh after one that never said stop (killed,
/// crashed: its programs went with it), or after one that stopped with its
/// programs pinned but found the pins gone (removed without `guardian stop
/// --unload`). Adopting pins means enforcement never stopped; an unload
/// or a gap is already on record.
#[test]
fn a_start_after_no_clean_stop_records_a_gap_first() {
    let (tpm, b) = board();
    let cases: [(Option<&'static str>, &'static str, bool); 9] = [
        (None, "start", false),
        (Some("start"), "start", true),
        (Some("adopt"), "start", true),
        (Some("stop"), "start", true),
        (Some("start"), "adopt", false),
        (Some("adopt"), "adopt", false),
        (Some("stop"), "adopt", false),
        (Some("unload"), "start", false),
        (Some("gap"), "start", false),
    ];
    let mut cfg = config(&b);
    for (i, (before, action, gap)) in cases.into_iter().enumerate() {
        // A log of its own for each case (same boot, same TPM).
        cfg.measure.log = b.p(&format!("case{i}/measurements.log"));
        if let Some(prev) = before {
            let t = ledger::open_tpm(Some(&tpm.tcti())).unwrap();
            let mut l = Ledger::open(&cfg.measure.log, Some(t.tpm)).unwrap();
            l.record(PCR, ledger::guard_event(prev, "enforce", "earlier agent"))
                .unwrap();
        }
        let a = Attestor::start(&cfg);
        a.send(guard_msg(action));
        a.stop();
        let recs = log::read(&cfg.measure.log).unwrap().records;
        let mut want: Vec<String> = before.iter().map(|s| s.to_string()).collect();
        if gap {
            want.push("gap".into());
        }
        want.push(action.into());
        assert_eq!(
            guard_actions(&recs),
            want,
            "{before:?} then {action}: {recs:#?}"
        );
        for r in &recs {
            assert!(r.extended || r.is_note(), "{r:?}");
            if let Event::Guard(g) = &r.event
                && g.action == "gap"
                && g.detail != "earlier agent"
            {
                assert!(
                    g.detail.contains("nothing was enforced")
                        || g.detail.contains("pins were gone"),
                    "the gap says why: {}",
                    g.detail
                );
                assert_eq!(g.pid, std::process::id());
            }
        }
    }
}

/// On the board's own log: a killed agent's start followed by a new
/// agent's start is a gap in the evidence, the log still explains the PCR,
/// and the verifier fails the quote on it.
#[test]
fn a_gap_is_in_the_quote_and_fails_the_verdict() {
    let (tpm, b) = board();
    let cfg = config(&b);
    let a = Attestor::start(&cfg);
    a.send(guard_msg("start"));
    // The agent dies here: no stop record.
    a.stop();
    let a = Attestor::start(&cfg);
    a.send(guard_msg("start"));
    a.send(guard_msg("stop"));
    a.stop();
    assert_eq!(
        guard_actions(&records(&b)),
        ["start", "gap", "start", "stop"]
    );
    assert_log_explains_pcr(&tpm, &b);
    let v = quote_and_verify(&b, "9a9a9a9a9a9a9a9a9a9a9a9a9a9a9a9a");
    assert_eq!(v["trusted"], false, "{v:#}");
    let f = failures(&v, "guard");
    assert!(
        f.len() == 1 && f[0].contains("window without enforcement") && f[0].contains("guard gap"),
        "{v:#}"
    );
    // Only the guard: the rest of the evidence is sound.
    assert_eq!(v["failures"].as_array().unwrap().len(), 1, "{v:#}");
}

// ---------------------------------------------------------------------
// guard stalled
// ---------------------------------------------------------------------

/// A process that holds an exclusive `flock` on `path` until killed.
struct Holder(Child);

impl Holder {
    fn start(path: &Path, as_user: Option<&str>) -> Self {
        let mut cmd = match as_user {
            Some(uid) => {
                let mut c = Command::new("setpriv");
                c.args([
                    &format!("--reuid={uid}"),
                    &format!("--regid={uid}"),
                    "--clear-groups",
                    "flock",
                ]);
                c
            }
            None => Command::new("flock"),
        };
        // Its own process group, so the command flock runs (which
        // inherits the locked descriptor) goes with it.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd
            .args(["--exclusive", "--nonblock"])
            .arg(path)
            .args(["sleep", "60"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("!!! cannot run flock ({e}): the stall is NOT tested"));
        Self(child)
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        // SAFETY: kill(2) of the process group this test started.
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether someone holds `path`'s lock (probed on a descriptor of our own).
fn locked(path: &Path) -> bool {
    let f = std::fs::File::open(path).unwrap();
    // SAFETY: flock on a descriptor this function owns.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    rc != 0
}

#[test]
fn a_held_log_lock_stalls_the_attestor_and_the_stall_is_recorded() {
    let (tpm, b) = board();
    let path = b.p("measurements.log");
    let a = Attestor::start(&config(&b));
    a.send(guard_msg("start"));
    wait_stats(&a, 10, "the start record", |_| {
        guard_actions(&records(&b)) == ["start"]
    });

    // Another process takes the log's lock and keeps it.
    let holder = Holder::start(&path, None);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !locked(&path) {
        assert!(Instant::now() < deadline, "flock never took the lock");
        std::thread::sleep(Duration::from_millis(10));
    }
    let before = records(&b).len();
    a.send(guard_msg("drops"));
    let s = wait_stats(&a, 15, "the stall", |s| {
        s.stalled_since.is_some() && s.backlog == 1
    });
    assert_eq!((s.backlog, s.stalls), (1, 1), "{s:?}");
    // Nothing is written, nothing extended, nothing lost meanwhile.
    a.event(&tamper_event(&b.s("models/labels.txt")));
    let s = wait_stats(&a, 15, "the second record to wait", |s| s.backlog == 2);
    assert_eq!((s.errors, s.queue_drops, s.stalls), (0, 0, 1), "{s:?}");
    assert_eq!(records(&b).len(), before);

    // The holder goes: the backlog drains in order, then the stall is
    // recorded with how long records waited.
    drop(holder);
    let s = wait_stats(&a, 15, "the backlog to clear", |s| {
        s.backlog == 0 && s.stalled_since.is_none()
    });
    assert_eq!(s.errors, 0, "{s:?}");
    a.stop();
    let recs = records(&b);
    let kinds: Vec<String> = recs[before..].iter().map(|r| r.event.describe()).collect();
    assert_eq!(kinds.len(), 3, "{kinds:#?}");
    assert!(kinds[0].starts_with("guard drops"), "{kinds:#?}");
    assert!(kinds[1].starts_with("tamper attempt denied"), "{kinds:#?}");
    let Event::Guard(g) = &recs[before + 2].event else {
        panic!("{kinds:#?}");
    };
    assert_eq!(g.action, "stalled");
    let waited: u64 = g
        .detail
        .strip_prefix("another process held the measurement log's lock; records waited ")
        .and_then(|s| s.strip_suffix(" s"))
        .unwrap_or_else(|| panic!("{}", g.detail))
        .parse()
        .unwrap();
    assert!(waited >= 2, "at least one lock wait: {}", g.detail);
    assert!(recs.iter().all(|r| r.extended || r.is_note()));
    assert_log_explains_pcr(&tpm, &b);

    // The verifier names the stall (and the drops) in the guard check.
    let v = quote_and_verify(&b, "5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e");
    assert_eq!(v["trusted"], false);
    let f = failures(&v, "guard");
    assert!(
        f.iter().any(|f| f.contains("guard stalled"))
            && f.iter().any(|f| f.contains("guard drops")),
        "{v:#}"
    );
}

fn tamper_event(file: &str) -> SecurityEvent {
    SecurityEvent {
        time: "2026-12-04T10:00:00Z".into(),
        event: "file_write_open".into(),
        verdict: Verdict::Deny,
        mode: Mode::Enforce,
        hook: "lsm/file_open".into(),
        pid: 4242,
        exe: Some("/usr/bin/dd".into()),
        exe_ino: 77,
        comm: "dd".into(),
        file: Some(file.into()),
        ..SecurityEvent::default()
    }
}

/// A burst of tamper attempts while the attestor is busy elsewhere (here:
/// hashing a file that a FIFO keeps it waiting on, as a large model would)
/// reaches the evidence whole: one record per file and executable, and
/// every other attempt counted in it, none dropped on the way.
#[test]
fn a_burst_of_tamper_attempts_while_the_attestor_is_busy_loses_none() {
    const BURST: u64 = 20_000;
    let (_tpm, b) = board();
    let a = Attestor::start(&config(&b));
    let fifo = b.p("slow-file");
    let c = std::ffi::CString::new(fifo.display().to_string()).unwrap();
    // SAFETY: mkfifo with a valid path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    a.send(Message::TakeIn {
        files: vec![(fifo.clone(), "0:0:1".into())],
        mode: "enforce".into(),
    });
    // The attestor now waits in `open` for a writer of the FIFO: it takes
    // nothing from its queue until one comes.
    std::thread::sleep(Duration::from_millis(300));
    let files = [b.s("models/classifier.onnx"), b.s("models/labels.txt")];
    for i in 0..BURST {
        a.event(&tamper_event(&files[(i % 2) as usize]));
    }
    // Let the attestor go on: a writer opens and closes the FIFO.
    drop(std::fs::OpenOptions::new().write(true).open(&fifo).unwrap());
    let s = wait_stats(&a, 20, "every attempt of the burst", |s| {
        s.tamper_records + s.tamper_suppressed + s.queue_drops >= BURST
    });
    assert_eq!(s.queue_drops, 0, "{s:?}");
    assert_eq!(
        (s.tamper_records, s.tamper_suppressed),
        (2, BURST - 2),
        "{s:?}"
    );
    a.stop();
    // In the evidence: each file's first attempt in full, then at the stop
    // the attempts folded into it, BURST in all.
    let recs = records(&b);
    let (mut full, mut folded) = (0, 0);
    for r in &recs {
        if let Event::Tamper(t) = &r.event {
            assert!(files.contains(&t.file), "{t:?}");
            if t.event.is_null() {
                folded += t.folded;
            } else {
                full += 1;
                folded += t.folded;
            }
        }
    }
    assert_eq!((full, full + folded), (2, BURST), "{recs:#?}");
}

/// The threat model's local user cannot stall the attestor: the log is
/// 0600 in a 0700 directory, so they cannot open it to lock it.
#[test]
fn a_local_user_cannot_hold_the_log_lock() {
    assert!(
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() } == 0,
        "!!! this test switches to user nobody and must run as root (./test.sh does); NOT tested"
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let path = dir.path().join("evidence/measurements.log");
    let mut l = Ledger::open(&path, None).unwrap();
    l.note("exists").unwrap();
    let mut h = Holder::start(&path, Some("65534"));
    let status = h.0.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(h.0.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "nobody took the log's lock");
    assert!(err.contains("Permission denied"), "{err}");
    assert!(!locked(&path));
    l.note("still writable").unwrap();
}

// ---------------------------------------------------------------------
// The daemon's manifest update
// ---------------------------------------------------------------------

/// The manifest file changed (what a write-open by the allowed updater
/// reports): the attestor looks at it once writes are quiet.
fn manifest_written(b: &Board) -> SecurityEvent {
    let mut ev = tamper_event(&b.s("manifest.toml"));
    ev.verdict = Verdict::Allow;
    ev
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

#[test]
fn a_newer_signed_manifest_replaces_the_one_in_force_and_others_are_refused() {
    let (tpm, b) = board();
    let key = SigningKey::load(&b.p("vendor.pem")).unwrap();
    let boot_text = std::fs::read(b.p("manifest.toml")).unwrap();
    let boot = Manifest::parse(std::str::from_utf8(&boot_text).unwrap()).unwrap();
    let a = Attestor::start(&config(&b));
    let before = records(&b).len();

    // 1. A signed manifest with a higher serial (the same models).
    let newer = Manifest {
        serial: boot.serial + 10,
        ..boot.clone()
    };
    manifest::write_signed(&newer, &b.p("manifest.toml"), &key).unwrap();
    let newer_text = std::fs::read(b.p("manifest.toml")).unwrap();
    a.event(&manifest_written(&b));
    wait_stats(&a, 10, "the update", |s| {
        s.manifest_updates == 1 && s.remeasured == 2
    });
    let recs = records(&b);
    let added = &recs[before..];
    assert_eq!(added.len(), 3, "{added:#?}");
    let Event::Manifest(m) = &added[0].event else {
        panic!("{added:#?}")
    };
    assert_eq!(
        (m.serial, m.cause.as_str(), m.sha256.clone()),
        (newer.serial, "update", sha256_hex(&newer_text))
    );
    assert_eq!(m.text.as_bytes(), newer_text);
    assert!(!m.signature.is_empty() && m.signer.len() == 64, "{m:?}");
    let mut files = Vec::new();
    for r in &added[1..] {
        let Event::Model(me) = &r.event else {
            panic!("{added:#?}")
        };
        assert_eq!(me.cause, "update");
        assert_eq!(me.manifest, m.sha256, "judged against the new manifest");
        files.push(me.file.clone());
    }
    files.sort();
    let mut want: Vec<String> = newer
        .models
        .iter()
        .map(|e| e.path.display().to_string())
        .collect();
    want.sort();
    assert_eq!(files, want, "every model re-measured");

    // 2. A signed manifest with a lower serial: refused, nothing recorded.
    let older = Manifest {
        serial: boot.serial + 5,
        ..boot.clone()
    };
    manifest::write_signed(&older, &b.p("manifest.toml"), &key).unwrap();
    a.event(&manifest_written(&b));
    wait_stats(&a, 10, "the older one refused", |s| {
        s.manifests_refused == 1
    });

    // 3. A higher serial with a signature that is not the vendor's.
    let forged = Manifest {
        serial: boot.serial + 20,
        ..boot.clone()
    };
    manifest::write_signed(&forged, &b.p("manifest.toml"), &key).unwrap();
    let mut sig = std::fs::read(b.p("manifest.toml.sig")).unwrap();
    sig[0] ^= 1;
    std::fs::write(b.p("manifest.toml.sig"), sig).unwrap();
    a.event(&manifest_written(&b));
    wait_stats(&a, 10, "the forged one refused", |s| {
        s.manifests_refused == 2
    });

    // 4. A higher serial with no signature at all.
    std::fs::remove_file(b.p("manifest.toml.sig")).unwrap();
    a.event(&manifest_written(&b));
    let s = wait_stats(&a, 10, "the unsigned one refused", |s| {
        s.manifests_refused == 3
    });
    assert_eq!((s.manifest_updates, s.errors), (1, 0), "{s:?}");
    assert_eq!(records(&b).len(), before + 3, "refusals record nothing");

    // The newer manifest is still the one in force: a model changed now
    // is judged against it.
    let model = b.p("models/labels.txt");
    std::fs::write(&model, b"cat\nwolf\n").unwrap();
    let mut ev = tamper_event(&model.display().to_string());
    ev.verdict = Verdict::Allow;
    a.event(&ev);
    wait_stats(&a, 10, "the re-measurement", |s| s.remeasured == 3);
    a.stop();
    let recs = records(&b);
    let Event::Model(me) = &recs.last().unwrap().event else {
        panic!("{recs:#?}")
    };
    assert_eq!(
        (me.cause.as_str(), me.manifest.clone()),
        ("write", sha256_hex(&newer_text))
    );
    assert_eq!(me.sha256, sha256_hex(b"cat\nwolf\n"));
    assert_log_explains_pcr(&tpm, &b);

    // The verifier follows the update (two manifests, both signed, the
    // serial going up) and names only the changed model.
    let v = quote_and_verify(&b, "3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c");
    assert_eq!(v["manifests"].as_array().unwrap().len(), 2, "{v:#}");
    assert!(failures(&v, "manifest").is_empty(), "{v:#}");
    let f = failures(&v, "model");
    assert!(
        !f.is_empty() && f.iter().all(|f| f.contains("labels.txt")),
        "{v:#}"
    );
}

/// Before the model changed, the same update is trusted.
#[test]
fn a_legitimate_manifest_update_in_the_daemon_stays_trusted() {
    let (_tpm, b) = board();
    let key = SigningKey::load(&b.p("vendor.pem")).unwrap();
    let boot = Manifest::parse(&std::fs::read_to_string(b.p("manifest.toml")).unwrap()).unwrap();
    let a = Attestor::start(&config(&b));
    let newer = Manifest {
        serial: boot.serial + 1,
        ..boot
    };
    manifest::write_signed(&newer, &b.p("manifest.toml"), &key).unwrap();
    a.event(&manifest_written(&b));
    wait_stats(&a, 10, "the update", |s| {
        s.manifest_updates == 1 && s.remeasured == 2
    });
    a.stop();
    let v = quote_and_verify(&b, "4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d");
    assert_eq!(v["trusted"], true, "{v:#}");
    assert_eq!(v["manifests"].as_array().unwrap().len(), 2, "{v:#}");
}

// ---------------------------------------------------------------------
// guard unload: `guardian stop --unload` on a running agent
// ---------------------------------------------------------------------

#[test]
fn stop_unload_records_the_unload_before_the_programs_go() {
    assert!(
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() } == 0,
        "!!! this test runs the agent, which loads eBPF programs: it must run as root (./test.sh does); NOT tested"
    );
    let (tpm, b) = board();
    let pins = Pins(PathBuf::from(format!(
        "/sys/fs/bpf/guardian-test-unload-{}",
        std::process::id()
    )));
    // The operator key whose token authorises the unload.
    for args in [
        vec![
            "genpkey",
            "-algorithm",
            "ed25519",
            "-out",
            &*b.s("operator.pem"),
        ],
        vec![
            "pkey",
            "-in",
            &*b.s("operator.pem"),
            "-pubout",
            "-out",
            &*b.s("operator.pub"),
        ],
    ] {
        let out = Command::new("openssl").args(&args).output().unwrap();
        assert!(out.status.success(), "openssl {args:?}: {}", stderr(&out));
    }
    let cfg = std::fs::read_to_string(b.p("guardian.toml")).unwrap();
    std::fs::write(
        b.p("guardian.toml"),
        format!(
            "[guard]\nmode = \"detect\"\nsyscall_detect = true\nprotected = [{:?}]\npin_dir = {:?}\nunload_keys = [{:?}]\n\
             [events]\noutput = \"events.jsonl\"\n[status]\npath = \"status.json\"\ninterval_secs = 1\n{cfg}",
            b.s("models"),
            pins.0.display().to_string(),
            b.s("operator.pub"),
        ),
    )
    .unwrap();
    let agent = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_guardian"))
            .args(["run", "--config"])
            .arg(b.p("guardian.toml"))
            .env("GUARDIAN_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(b.p("agent.stderr")).unwrap())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !b.p("status.json").exists() {
        assert!(
            Instant::now() < deadline,
            "agent not ready: {}",
            std::fs::read_to_string(b.p("agent.stderr")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        std::fs::read_dir(&pins.0).unwrap().next().is_some(),
        "the agent pinned its programs"
    );
    // Reap the agent as soon as it exits: `guardian stop` waits for its
    // pid to disappear, which a zombie child of ours would not do.
    let mut agent = agent;
    let pid = agent.0.id();
    let reaped = std::thread::spawn(move || agent.0.wait().map(|s| s.success()));
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let status: Value =
        serde_json::from_str(&std::fs::read_to_string(b.p("status.json")).unwrap()).unwrap();
    let guard_id = status["guard_id"].as_str().unwrap().to_owned();
    let out = guardian(&[
        "unload-token",
        "--key",
        &b.s("operator.pem"),
        "--pub",
        &b.s("operator.pub"),
        "--boot-id",
        boot.trim(),
        "--guard",
        &guard_id,
        "--reason",
        "records test",
        "-o",
        &b.s("unload.json"),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = guardian(&[
        "stop",
        "--unload",
        "-c",
        &b.s("guardian.toml"),
        "--token",
        &b.s("unload.json"),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let said = stderr(&out);
    assert!(
        said.contains(&format!("stopped guardian (pid {pid})"))
            && said.contains("recorded the unload")
            && said.contains("removed the pins"),
        "{said}"
    );
    assert!(reaped.join().unwrap().unwrap(), "the agent exited cleanly");
    assert!(!pins.0.exists(), "the pins are gone");

    // start (the agent), stop (its exit, pins kept), unload (the command,
    // before it removed them).
    let recs = records(&b);
    assert_eq!(
        guard_actions(&recs),
        ["start", "stop", "unload"],
        "{recs:#?}"
    );
    let Event::Guard(g) = &recs.last().unwrap().event else {
        unreachable!()
    };
    assert!(
        g.detail.contains("`guardian stop --unload` by uid 0")
            && g.detail.contains("reason: records test")
            && g.detail.contains(&*pins.0.to_string_lossy()),
        "{}",
        g.detail
    );
    assert!(recs.last().unwrap().extended);
    assert_log_explains_pcr(&tpm, &b);
    // The next start finds the unload on record: no gap.
    let a = Attestor::start(&config(&b));
    a.send(guard_msg("start"));
    a.stop();
    assert_eq!(
        guard_actions(&records(&b)),
        ["start", "stop", "unload", "start"]
    );
    // The verifier: a window without enforcement.
    let v = quote_and_verify(&b, "2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b");
    assert_eq!(v["trusted"], false, "{v:#}");
    let f = failures(&v, "guard");
    assert!(
        f.len() == 1
            && f[0].contains("window without enforcement")
            && f[0].contains("guard unload"),
        "{v:#}"
    );
}

// ---------------------------------------------------------------------
// guard drops: the fleet link's spool full while the fleet is away
// ---------------------------------------------------------------------

/// For a test that runs the agent: root (it loads eBPF programs), the
/// host tests' lock, a measured board and a pin directory of its own.
fn agent_board(tag: &str) -> (std::sync::MutexGuard<'static, ()>, Swtpm, Board, Pins) {
    assert!(
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() } == 0,
        "!!! this test runs the agent, which loads eBPF programs: it must run as root (./test.sh does); NOT tested"
    );
    let k = crate::host::exclusive();
    let (tpm, b) = board();
    let pins = Pins(PathBuf::from(format!(
        "/sys/fs/bpf/guardian-test-{tag}-{}",
        std::process::id()
    )));
    (k, tpm, b, pins)
}

/// Run `guardian run` on `b`: the guard in detect mode over its models,
/// pinned under `pins`, events and a status file each second, and the
/// `[report]` section `report` (TOML); its stderr in `agent.stderr`.
fn start_reporting_agent(b: &Board, pins: &Pins, report: &str) -> KillOnDrop {
    let cfg = std::fs::read_to_string(b.p("guardian.toml")).unwrap();
    std::fs::write(
        b.p("guardian.toml"),
        format!(
            "[guard]\nmode = \"detect\"\nprotected = [{:?}]\npin_dir = {:?}\nunload_without_token = true\n\
             [events]\noutput = \"events.jsonl\"\n[status]\npath = \"status.json\"\ninterval_secs = 1\n\
             [report]\n{report}\n{cfg}",
            b.s("models"),
            pins.0.display().to_string(),
        ),
    )
    .unwrap();
    KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_guardian"))
            .args(["run", "--config"])
            .arg(b.p("guardian.toml"))
            .env("GUARDIAN_LOG", "info")
            .env_remove("TPM2TOOLS_TCTI")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(b.p("agent.stderr")).unwrap())
            .spawn()
            .unwrap(),
    )
}

/// A board that was cut off from its fleet until its report spool was all
/// but full, restarted: `guardian run` goes on reporting into the spool,
/// the spool drops its least important records to make room, and the
/// drops are recorded in the evidence (a `guard drops` record, extended),
/// so the next quote fails on them. The spool is filled beforehand with
/// `guardian-report`'s own spool code, as the agent's earlier life would
/// have; what fills it the rest of the way is the agent's own status
/// reports.
#[test]
fn a_report_spool_that_fills_while_the_fleet_is_away_is_in_the_evidence() {
    use guardian_report::{Class, Fsync, Spool, SpoolConfig};
    let (_k, tpm, b, pins) = agent_board("spool");
    // The fleet: a port that takes connections and never speaks NATS.
    let fleet = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let fleet = format!("nats://{}", fleet.local_addr().unwrap());
    // The spool as a long time offline left it: 1 MiB, all but 8 KiB of
    // it events waiting to be sent. (Which records the drop rule gives up
    // is the spool's own tests' business; that drops are recorded is
    // this test's.)
    let max = 1u64 << 20;
    {
        let mut spool = Spool::open(SpoolConfig {
            dir: b.p("spool"),
            max_bytes: max,
            segment_bytes: 64 << 10,
            fsync: Fsync::Always,
        })
        .unwrap();
        let body = format!(r#"{{"kind":"tamper","pad":"{}"}}"#, "x".repeat(900));
        while spool.stats().bytes + 8 * 1024 < max {
            spool.append(Class::Event, body.as_bytes()).unwrap();
        }
        let st = spool.stats();
        assert_eq!(st.dropped.iter().sum::<u64>(), 0, "{st:?}");
        assert!(st.depth > 900, "{st:?}");
    }
    let mut agent = start_reporting_agent(
        &b,
        &pins,
        &format!(
            "servers = [{fleet:?}]\ndevice_id = \"away-board\"\nspool_dir = {:?}\n\
             spool_max_mib = 1\nsegment_kib = 64\nstatus_interval_secs = 1\nanswer_challenges = false",
            b.s("spool")
        ),
    );
    let said = || std::fs::read_to_string(b.p("agent.stderr")).unwrap_or_default();
    // The drops, in the evidence (the status reports are a few KiB each:
    // the 8 KiB left are used up within seconds).
    let deadline = Instant::now() + Duration::from_secs(60);
    let detail = loop {
        let found = log::read(&b.p("measurements.log"))
            .ok()
            .into_iter()
            .flat_map(|c| c.records)
            .find_map(|r| match r.event {
                Event::Guard(g) if g.action == "drops" && r.extended => Some(g.detail),
                _ => None,
            });
        if let Some(d) = found {
            break d;
        }
        assert!(
            Instant::now() < deadline,
            "no `guard drops` record in the evidence within 60 s:\n{}",
            said()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        detail.contains("fleet report spool or queue full"),
        "{detail}"
    );
    // `guardian status` shows them too (at its next write), and the link
    // not connected.
    let deadline = Instant::now() + Duration::from_secs(10);
    let report = loop {
        let st: Value = std::fs::read_to_string(b.p("status.json"))
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default();
        let dropped: u64 = st["report"]["spool"]["dropped"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_u64)
            .sum();
        if dropped > 0 {
            break st["report"].clone();
        }
        assert!(
            Instant::now() < deadline,
            "`guardian status` shows no drops: {:#}",
            st["report"]
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_ne!(report["link"]["state"], "connected", "{report:#}");
    // SIGTERM: a clean stop (no gap in the evidence to confuse the verdict).
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(agent.0.id() as i32, libc::SIGTERM) };
    assert!(agent.0.wait().unwrap().success(), "{}", said());
    assert_log_explains_pcr(&tpm, &b);
    let v = quote_and_verify(&b, "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a");
    assert_eq!(v["trusted"], false, "{v:#}");
    let f = failures(&v, "guard");
    assert!(
        f.iter()
            .any(|r| r.contains("fleet report spool or queue full")),
        "{v:#}"
    );
}

/// Root on a board without BPF LSM (this host: the agent runs its
/// fanotify rungs) removes a report spool segment while the fleet is away.
/// When the fleet is back, the agent gives those records up instead of
/// failing every send after; the fleet stores everything else, explains
/// the gap with the device's notice and raises a `records_lost` alert;
/// and the evidence records it, so the next quote fails.
#[test]
fn a_spool_segment_removed_while_the_fleet_is_away_is_reported_and_in_the_evidence() {
    use crate::nats_support::free_port;
    let (_k, tpm, b, pins) = agent_board("lost");
    let port = free_port();
    let js_dir = b.p("js");
    let server = crate::host::start_nats(port, &js_dir);
    let url = format!("nats://127.0.0.1:{port}");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let fleet = rt.spawn(guardian_fleet::service::serve(
        guardian_fleet::service::ServiceConfig::new(vec![url.clone()]),
        "records-test",
        std::sync::Arc::new(guardian_fleet::service::Counters::default()),
        async {
            let _ = stop_rx.await;
        },
    ));
    let js = |f: &dyn Fn(
        async_nats::jetstream::Context,
    )
        -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<Value>>>>|
     -> Option<Value> {
        rt.block_on(async {
            let client = guardian_fleet::service::connect(std::slice::from_ref(&url), "probe")
                .await
                .ok()?;
            f(async_nats::jetstream::new(client)).await
        })
    };
    let mut agent = start_reporting_agent(
        &b,
        &pins,
        &format!(
            "servers = [{url:?}]\ndevice_id = \"rm-board\"\nspool_dir = {:?}\n\
             segment_kib = 1\nstatus_interval_secs = 1\nanswer_challenges = false",
            b.s("spool")
        ),
    );
    let said = || std::fs::read_to_string(b.p("agent.stderr")).unwrap_or_default();
    let status = || -> Value {
        std::fs::read_to_string(b.p("status.json"))
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default()
    };
    let wait = |secs: u64, what: &str, f: &dyn Fn(&Value) -> bool| -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let st = status();
            if f(&st) {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {:#}\n{}",
                st["report"],
                said()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    wait(60, "records acknowledged by the fleet", &|st| {
        st["report"]["link"]["records_acked"].as_u64() >= Some(2)
    });
    // The fleet goes away; the agent's status reports pile up in the
    // spool, one 1 KiB segment or so each.
    drop(server);
    wait(30, "several segments waiting", &|st| {
        st["report"]["spool"]["depth"].as_u64() >= Some(4)
    });
    let mut segs: Vec<PathBuf> = std::fs::read_dir(b.p("spool"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segs.sort();
    assert!(segs.len() >= 3, "{segs:?}");
    // The oldest segment still waiting goes (as root, which nothing here
    // denies: no BPF LSM on this kernel).
    std::fs::remove_file(&segs[0]).unwrap();
    let _server = crate::host::start_nats(port, &js_dir);
    let st = wait(60, "the segment's records given up", &|st| {
        st["report"]["spool"]["lost"].as_u64() > Some(0)
            && st["report"]["spool"]["depth"].as_u64() <= Some(2)
    });
    let lost = st["report"]["spool"]["lost"].as_u64().unwrap();
    // At the fleet: a notice with the reason, and the alert.
    let alert = (0..150)
        .find_map(|_| {
            let a = js(&|js| {
                Box::pin(async move {
                    guardian_fleet::query::alerts(
                        &js,
                        Some("rm-board"),
                        std::time::SystemTime::now() - Duration::from_secs(600),
                    )
                    .await
                    .ok()?
                    .into_iter()
                    .find(|a| a.kind == "records_lost")
                    .map(|a| serde_json::to_value(a).unwrap())
                })
            });
            if a.is_none() {
                std::thread::sleep(Duration::from_millis(200));
            }
            a
        })
        .unwrap_or_else(|| panic!("no records_lost alert at the fleet\n{}", said()));
    assert!(
        alert["what"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{lost} records lost on the device")),
        "{alert:#}"
    );
    assert_eq!(
        alert["evidence"]["reason"],
        guardian_report::spool::LOST_ON_DISK,
        "{alert:#}"
    );
    // In the evidence, and the verdict.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !records(&b).iter().any(|r| {
        matches!(&r.event, Event::Guard(g) if g.action == "drops"
            && g.detail.contains(guardian_report::spool::LOST_ON_DISK))
            && r.extended
    }) {
        assert!(
            Instant::now() < deadline,
            "no `guard drops` record for the lost records:\n{}",
            said()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(agent.0.id() as i32, libc::SIGTERM) };
    assert!(agent.0.wait().unwrap().success(), "{}", said());
    let _ = stop_tx.send(());
    let _ = rt.block_on(fleet);
    assert_log_explains_pcr(&tpm, &b);
    let v = quote_and_verify(&b, "6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b");
    assert_eq!(v["trusted"], false, "{v:#}");
    assert!(
        failures(&v, "guard")
            .iter()
            .any(|r| r.contains(guardian_report::spool::LOST_ON_DISK)),
        "{v:#}"
    );
}
