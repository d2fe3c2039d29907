//! Policy engine tests with real wasmi and real modules: the example
//! policies (built here for wasm32 from policies/examples), hand-written
//! WAT, signed bundles, hot swap, and measurement into a real swtpm.

use crate::common;

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, UNIX_EPOCH},
};

use common::{Swtpm, guardian, openssl, stderr};
use guardian::{
    evidence::{self, Event, Ledger},
    policy::{
        Actions, Decision, FailMode, JsonEvent, Limits, PolicyEngine, PolicyInfo, PolicySet,
        PolicySettings, Runtime,
        engine::failure_alert,
        measure::{MeasureError, Measurer, NoMeasurer},
        set::{Bundle, LoadedPolicy},
    },
    signing::SigningKey,
    tpm::Tpm,
};

/// The example policies, built once per test binary with the wasm32
/// target that cross/setup.sh installs.
fn examples() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/examples");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
            .join("policy-examples");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        // From the examples' directory, so its .cargo/config.toml (stack
        // size) applies; its own target dir, so the outer build's lock is
        // not in the way.
        let out = Command::new(cargo)
            .current_dir(&root)
            .args([
                "build",
                "--locked",
                "--release",
                "--target",
                "wasm32-unknown-unknown",
            ])
            .env("CARGO_TARGET_DIR", &target)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "building the example policies failed (cross/setup.sh installs the wasm32-unknown-unknown target):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        target.join("wasm32-unknown-unknown/release")
    })
}

pub(crate) fn example(name: &str) -> Vec<u8> {
    if name == "no_ptrace" {
        let wat =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/examples/wat/no-ptrace.wat");
        return wat::parse_file(wat).unwrap();
    }
    std::fs::read(examples().join(format!("{name}.wasm"))).unwrap()
}

/// A WAT policy whose evaluate function is `body`.
fn wat_policy(abi: i32, body: &str, extra: &str) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(module
             {extra}
             (memory (export "memory") 1)
             (func (export "guardian_abi_version") (result i32) (i32.const {abi}))
             (func (export "guardian_buffer") (result i32) (i32.const 0))
             (func (export "guardian_buffer_size") (result i32) (i32.const 8192))
             (func (export "guardian_evaluate") (param i32 i32) (result i64) {body}))"#
    ))
    .unwrap()
}

/// A JSON event line as `guardian run` prints it.
pub(crate) fn json(
    kind: &str,
    exe: &str,
    service: bool,
    pid: u32,
    ms: u64,
    extra: &str,
) -> JsonEvent {
    let time = humantime::format_rfc3339_nanos(UNIX_EPOCH + Duration::from_millis(ms));
    let line = format!(
        r#"{{"time":"{time}","event":"{kind}","verdict":"alert","mode":"detect","hook":"tp/x","pid":{pid},"tid":{pid},"ppid":1,"uid":0,"gid":0,"exe":"{exe}","exe_dev":"8:1","exe_ino":77,"comm":"x","service":{service}{extra}}}"#
    );
    JsonEvent::parse(&line).unwrap()
}

fn file(kind: &str, exe: &str, pid: u32, ms: u64, path: &str) -> JsonEvent {
    json(
        kind,
        exe,
        false,
        pid,
        ms,
        &format!(r#","file":"{path}","dev":"8:1","ino":5,"flags":1,"flags_text":"O_WRONLY""#),
    )
}

fn set_of(names: &[&str]) -> PolicySet {
    let rt = Runtime::new(Limits::default());
    let policies = names
        .iter()
        .map(|n| {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join(format!("{n}.wasm"));
            std::fs::write(&p, example(n)).unwrap();
            LoadedPolicy::load(&rt, &Bundle::read_unsigned(&p, 1 << 20).unwrap()).unwrap()
        })
        .collect();
    PolicySet::new(policies, FailMode::Closed)
}

#[track_caller]
fn expect(set: &mut PolicySet, e: &JsonEvent, decision: Decision, rule: u32, actions: Actions) {
    let o = set.evaluate(&e.to_abi().unwrap());
    assert_eq!(o.failures().count(), 0, "{o:?}");
    assert_eq!(o.decision, decision, "{e:?}\n{o:?}");
    assert_eq!(
        o.decided_by.as_ref().map(|d| d.1).unwrap_or(0),
        rule,
        "{o:?}"
    );
    assert_eq!(o.actions, actions, "{o:?}");
}

const UPDATER: &str = "/usr/sbin/model-updater";

#[test]
fn example_policies_decide_as_documented() {
    use Decision::*;
    let none = Actions::NONE;
    let (kill, remeasure) = (Actions::KILL, Actions::REMEASURE);

    let mut s = set_of(&["model_writer"]);
    for kind in [
        "file_write_open",
        "file_truncate",
        "file_unlink",
        "file_mmap_write",
    ] {
        expect(
            &mut s,
            &file(kind, "/usr/bin/dd", 9, 0, "/opt/models/m.onnx"),
            Deny,
            1,
            remeasure,
        );
        expect(
            &mut s,
            &file(kind, UPDATER, 9, 0, "/opt/models/m.onnx"),
            Allow,
            0,
            none,
        );
    }
    expect(
        &mut s,
        &file("file_write", "/usr/bin/dd", 9, 0, "/opt/modelsX/m"),
        Allow,
        0,
        none,
    );
    expect(
        &mut s,
        &file("file_write", "/usr/bin/dd", 9, 0, "/tmp/m.onnx"),
        Allow,
        0,
        none,
    );
    expect(
        &mut s,
        &json("exec", "/bin/sh", false, 9, 0, r#","path":"/opt/models/x""#),
        Allow,
        0,
        none,
    );

    let mut s = set_of(&["service_exec"]);
    let exec = |path: &str, service: bool| {
        json(
            "exec",
            "/usr/bin/python3",
            service,
            5,
            0,
            &format!(r#","path":"{path}""#),
        )
    };
    expect(&mut s, &exec("/usr/bin/python3", true), Allow, 0, none);
    expect(&mut s, &exec("/bin/sh", true), Deny, 11, kill);
    expect(&mut s, &exec("/bin/sh", false), Allow, 0, none);
    let preload = |service| {
        json(
            "exec_preload",
            "/bin/sh",
            service,
            5,
            0,
            r#","path":"/usr/bin/python3","env":"LD_PRELOAD""#,
        )
    };
    expect(&mut s, &preload(true), Deny, 10, kill);
    expect(&mut s, &preload(false), Alert, 13, none);
    let lib = |path: &str| {
        json(
            "library_load",
            "/usr/bin/python3",
            true,
            5,
            0,
            &format!(r#","path":"{path}""#),
        )
    };
    expect(
        &mut s,
        &lib("/usr/lib/x86_64-linux-gnu/libm.so.6"),
        Allow,
        0,
        none,
    );
    expect(&mut s, &lib("/tmp/evil.so"), Deny, 12, kill);
    expect(
        &mut s,
        &file("file_write_open", "/bin/sh", 5, 0, "/etc/ld.so.preload"),
        Deny,
        14,
        none,
    );

    let mut s = set_of(&["egress"]);
    let connect = |addr: &str, port: u16, service| {
        let fam = if addr.contains(':') { "ipv6" } else { "ipv4" };
        json(
            "connect",
            "/usr/bin/python3",
            service,
            5,
            0,
            &format!(r#","family":"{fam}","addr":"{addr}","port":{port}"#),
        )
    };
    expect(&mut s, &connect("10.20.30.40", 443, true), Allow, 0, none);
    expect(&mut s, &connect("127.0.0.1", 8080, true), Allow, 0, none);
    expect(&mut s, &connect("::1", 9000, true), Allow, 0, none);
    expect(&mut s, &connect("10.20.30.40", 80, true), Deny, 20, kill);
    expect(&mut s, &connect("8.8.8.8", 53, true), Deny, 20, kill);
    expect(&mut s, &connect("2001:db8::1", 443, true), Deny, 20, kill);
    expect(&mut s, &connect("8.8.8.8", 53, false), Allow, 0, none);

    // Rate anomaly: more than 5 distinct files within 1 s by one process.
    let mut s = set_of(&["rate_anomaly"]);
    for i in 0..5 {
        let e = file(
            "file_write",
            UPDATER,
            100,
            1000 + i * 100,
            &format!("/opt/models/{i}"),
        );
        expect(&mut s, &e, Allow, 0, none);
        // The same file again does not count, nor does another process.
        expect(
            &mut s,
            &file(
                "file_write",
                UPDATER,
                100,
                1000 + i * 100,
                &format!("/opt/models/{i}"),
            ),
            Allow,
            0,
            none,
        );
        expect(
            &mut s,
            &file(
                "file_write",
                UPDATER,
                200 + i as u32,
                1000,
                &format!("/opt/models/{i}"),
            ),
            Allow,
            0,
            none,
        );
    }
    expect(
        &mut s,
        &file("file_write", UPDATER, 100, 1600, "/opt/models/5"),
        Alert,
        30,
        remeasure,
    );
    expect(
        &mut s,
        &file("file_write", UPDATER, 100, 1700, "/opt/models/6"),
        Alert,
        30,
        remeasure,
    );
    // A new window: quiet again.
    expect(
        &mut s,
        &file("file_write", UPDATER, 100, 3000, "/opt/models/7"),
        Allow,
        0,
        none,
    );
    expect(
        &mut s,
        &file("file_write", UPDATER, 100, 3000, "/tmp/x"),
        Allow,
        0,
        none,
    );

    // The hand-written WAT policy.
    let mut s = set_of(&["no_ptrace"]);
    let ptrace = json(
        "ptrace",
        "/usr/bin/gdb",
        false,
        5,
        0,
        r#","target_pid":77,"target_exe":"/usr/bin/python3""#,
    );
    expect(&mut s, &ptrace, Deny, 40, kill);
    expect(&mut s, &preload(false), Alert, 41, none);
    expect(&mut s, &exec("/bin/sh", true), Allow, 0, none);
}

pub(crate) struct Dir {
    pub(crate) dir: tempfile::TempDir,
    keys: tempfile::TempDir,
}

impl Dir {
    pub(crate) fn new() -> Self {
        let keys = tempfile::tempdir().unwrap();
        let k = |n: &str| keys.path().join(n).display().to_string();
        openssl(&["genpkey", "-algorithm", "ed25519", "-out", &k("vendor.pem")]);
        openssl(&[
            "pkey",
            "-in",
            &k("vendor.pem"),
            "-pubout",
            "-out",
            &k("vendor.pub"),
        ]);
        openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            &k("ec.pem"),
        ]);
        openssl(&["pkey", "-in", &k("ec.pem"), "-pubout", "-out", &k("ec.pub")]);
        openssl(&[
            "genpkey",
            "-algorithm",
            "ed25519",
            "-out",
            &k("stranger.pem"),
        ]);
        Self {
            dir: tempfile::tempdir().unwrap(),
            keys,
        }
    }
    pub(crate) fn key(&self, n: &str) -> PathBuf {
        self.keys.path().join(n)
    }
    /// Put a module in the directory, signed with `key` (None: unsigned).
    pub(crate) fn put(&self, name: &str, wasm: &[u8], key: Option<&str>) -> PathBuf {
        let p = self.dir.path().join(format!("{name}.wasm"));
        std::fs::write(&p, wasm).unwrap();
        if let Some(k) = key {
            let sig = SigningKey::load(&self.key(k)).unwrap().sign(wasm);
            std::fs::write(self.dir.path().join(format!("{name}.wasm.sig")), sig).unwrap();
        }
        p
    }
    pub(crate) fn remove(&self, name: &str) {
        for ext in ["wasm", "wasm.sig"] {
            let _ = std::fs::remove_file(self.dir.path().join(format!("{name}.{ext}")));
        }
    }
    pub(crate) fn settings(&self, fail_mode: FailMode) -> PolicySettings {
        PolicySettings {
            dir: self.dir.path().to_owned(),
            trusted_keys: vec![self.key("vendor.pub"), self.key("ec.pub")],
            fail_mode,
            limits: Limits {
                fuel: 50_000,
                memory_pages: 4,
                module_bytes: 256 * 1024,
            },
        }
    }
}

#[test]
fn signed_set_combines_deny_overrides_and_merges_static_rules() {
    let d = Dir::new();
    for n in ["egress", "model_writer", "rate_anomaly", "service_exec"] {
        d.put(n, &example(n), Some("vendor.pem"));
    }
    // ECDSA P-256 signatures are accepted too.
    d.put("no_ptrace", &example("no_ptrace"), Some("ec.pem"));
    let engine = PolicyEngine::new(d.settings(FailMode::Closed), Box::new(NoMeasurer));
    let report = engine.reload().unwrap();
    assert_eq!(report.generation, 1);
    assert_eq!(report.not_extended, 5);
    let names: Vec<_> = report.policies.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "egress",
            "model_writer",
            "no_ptrace",
            "rate_anomaly",
            "service_exec"
        ]
    );
    assert_eq!(
        report.policies[2].signer.as_ref().unwrap().algorithm,
        "ecdsa-p256-sha256"
    );
    let r = &report.rules;
    assert_eq!(r.protected, ["/opt/models/", "/etc/ld.so.preload"]);
    assert_eq!(r.writers.as_deref(), Some(&[UPDATER.to_owned()][..]));
    assert_eq!(r.egress.as_ref().unwrap().len(), 3);
    assert_eq!(r.service_exec.as_ref().unwrap().len(), 2);
    assert_eq!(r.library_dirs.as_ref().unwrap().len(), 3);
    assert_eq!(engine.rules(), *r);

    // The sixth distinct model file by a non-updater within 1 s: the rate
    // policy alerts and the writer policy denies; deny wins, actions add up.
    let mut last = None;
    for i in 0..6 {
        last = Some(
            engine
                .evaluate_json(&file(
                    "file_write",
                    "/usr/bin/dd",
                    42,
                    10 + i,
                    &format!("/opt/models/{i}"),
                ))
                .unwrap(),
        );
    }
    let o = last.unwrap();
    assert_eq!(o.decision, Decision::Deny);
    assert_eq!(o.decided_by, Some(("model_writer".to_owned(), 1)));
    assert_eq!(o.actions, Actions::REMEASURE);
    assert_eq!(o.verdicts.len(), 5);
    let rate = o
        .verdicts
        .iter()
        .find(|v| v.policy == "rate_anomaly")
        .unwrap();
    assert_eq!(rate.result.as_ref().unwrap().decision, Decision::Alert);
    let st = engine.stats();
    assert_eq!(
        (st.evaluations, st.denied, st.failures, st.generation),
        (6, 6, 0, 1)
    );
}

#[test]
fn bad_policies_are_refused_or_contained_while_the_previous_set_decides() {
    let d = Dir::new();
    d.put("model_writer", &example("model_writer"), Some("vendor.pem"));
    let engine = PolicyEngine::new(d.settings(FailMode::Closed), Box::new(NoMeasurer));
    engine.reload().unwrap();
    let dd = file("file_write_open", "/usr/bin/dd", 7, 0, "/opt/models/m.onnx");
    let decides = || {
        let o = engine.evaluate_json(&dd).unwrap();
        assert_eq!((o.decision, o.generation), (Decision::Deny, 1), "{o:?}");
    };
    decides();

    let good = example("model_writer");
    let cases: Vec<(&str, Vec<u8>, Option<&str>, &str)> = vec![
        (
            "wrong_abi",
            wat_policy(3, "(i64.const 0)", ""),
            Some("vendor.pem"),
            "ABI version 3",
        ),
        ("unsigned", good.clone(), None, "unsigned"),
        (
            "untrusted",
            good.clone(),
            Some("stranger.pem"),
            "not valid for any trusted key",
        ),
        (
            "truncated",
            good[..good.len() / 2].to_vec(),
            Some("vendor.pem"),
            "not a loadable WebAssembly module",
        ),
        (
            "start_fn",
            wat_policy(1, "(i64.const 0)", "(func $s) (start $s)"),
            Some("vendor.pem"),
            "not a loadable",
        ),
        (
            "wasi",
            wat_policy(
                1,
                "(i64.const 0)",
                r#"(import "wasi_snapshot_preview1" "proc_exit" (func (param i32)))"#,
            ),
            Some("vendor.pem"),
            "no WASI",
        ),
        (
            "big_memory",
            wat_policy(1, "(i64.const 0)", "").into_iter().collect(),
            Some("vendor.pem"),
            "",
        ),
    ];
    for (name, wasm, key, problem) in cases {
        if name == "big_memory" {
            // Declares 5 pages where 4 are allowed.
            let wasm = wat::parse_str(
                r#"(module (memory (export "memory") 5)
                   (func (export "guardian_abi_version") (result i32) (i32.const 1))
                   (func (export "guardian_buffer") (result i32) (i32.const 0))
                   (func (export "guardian_buffer_size") (result i32) (i32.const 8192))
                   (func (export "guardian_evaluate") (param i32 i32) (result i64) (i64.const 0)))"#,
            )
            .unwrap();
            d.put(name, &wasm, key);
        } else {
            d.put(name, &wasm, key);
        }
        let e = engine.reload().unwrap_err().to_string();
        assert!(e.contains(&format!("{name}.wasm")), "{name}: {e}");
        assert!(e.contains(problem), "{name}: {e}");
        assert_eq!(engine.stats().last_reload_error.as_deref(), Some(&*e));
        decides();
        d.remove(name);
    }
    assert_eq!(engine.stats().reload_failures, 7);
    // The directory is good again: reload works.
    assert_eq!(engine.reload().unwrap().generation, 2);
    assert_eq!(engine.stats().last_reload_error, None);

    // Modules that load but fail at evaluation: contained, fail-closed,
    // and the alert names the policy and the event.
    d.put(
        "loop",
        &wat_policy(1, "(loop $l (br $l)) (i64.const 0)", ""),
        Some("vendor.pem"),
    );
    d.put(
        "trap",
        &wat_policy(1, "unreachable", ""),
        Some("vendor.pem"),
    );
    d.put(
        "grow",
        &wat_policy(1, "(drop (memory.grow (i32.const 10))) (i64.const 0)", ""),
        Some("vendor.pem"),
    );
    engine.reload().unwrap();
    let exec = json("exec", "/bin/sh", false, 8, 0, r#","path":"/bin/true""#);
    let o = engine.evaluate_json(&exec).unwrap();
    assert_eq!(o.decision, Decision::Deny, "{o:?}");
    let failures: Vec<_> = o
        .failures()
        .map(|(p, e)| (p.to_owned(), e.to_string()))
        .collect();
    assert_eq!(failures.len(), 3, "{failures:?}");
    assert!(
        failures[0].0 == "grow" && failures[0].1.contains("trapped"),
        "{failures:?}"
    );
    assert!(
        failures[1].0 == "loop" && failures[1].1.contains("out of fuel after 50000"),
        "{failures:?}"
    );
    assert!(
        failures[2].0 == "trap" && failures[2].1.contains("unreachable"),
        "{failures:?}"
    );
    let mw = o
        .verdicts
        .iter()
        .find(|v| v.policy == "model_writer")
        .unwrap();
    assert_eq!(mw.result.as_ref().unwrap().decision, Decision::Allow);
    let (p, err) = o.failures().nth(1).unwrap();
    let alert = failure_alert(p, err, &exec.to_abi().unwrap(), FailMode::Closed);
    assert!(
        alert.contains("policy loop failed on exec by pid 8 (/bin/sh) /bin/true"),
        "{alert}"
    );
    assert!(alert.ends_with("fail-closed: deny"), "{alert}");
    // The engine keeps working: they fail the same way on the next event.
    assert_eq!(engine.evaluate_json(&exec).unwrap().failures().count(), 3);
    let st = engine.stats();
    assert_eq!((st.failures, st.out_of_fuel, st.traps), (6, 2, 4));

    // Fail-open: the same failures alert instead.
    let open = PolicyEngine::new(d.settings(FailMode::Open), Box::new(NoMeasurer));
    open.reload().unwrap();
    assert_eq!(open.evaluate_json(&exec).unwrap().decision, Decision::Alert);
    // An unconvertible event is counted, not evaluated.
    let bad = json("file_write", "/bin/sh", false, 8, 0, "");
    assert!(open.evaluate_json(&bad).is_err());
    assert_eq!(open.stats().bad_events, 1);
}

#[test]
fn hot_swap_under_a_stream_of_events_switches_at_one_point() {
    let d = Dir::new();
    d.put("model_writer", &example("model_writer"), Some("vendor.pem"));
    let engine = Arc::new(PolicyEngine::new(
        d.settings(FailMode::Closed),
        Box::new(NoMeasurer),
    ));
    engine.reload().unwrap();
    let evaluated = Arc::new(AtomicUsize::new(0));
    let swapped = Arc::new(AtomicBool::new(false));
    let stream = {
        let (engine, evaluated, swapped) = (engine.clone(), evaluated.clone(), swapped.clone());
        std::thread::spawn(move || {
            let ev = file("file_write_open", "/usr/bin/dd", 7, 0, "/opt/models/m.onnx");
            let mut results = Vec::new();
            let mut after = 0;
            while after < 300 && results.len() < 5_000_000 {
                let o = engine.evaluate_json(&ev).unwrap();
                results.push((o.generation, o.decision, o.verdicts.len()));
                evaluated.fetch_add(1, Ordering::SeqCst);
                // Only events the new set judged: one judged by the old set
                // can finish just before the flag is raised.
                if swapped.load(Ordering::SeqCst) && o.generation == 2 {
                    after += 1;
                }
            }
            results
        })
    };
    while evaluated.load(Ordering::SeqCst) < 300 {
        std::thread::yield_now();
    }
    // Swap in a set that allows the writer (only the ptrace policy).
    d.remove("model_writer");
    d.put("no_ptrace", &example("no_ptrace"), Some("vendor.pem"));
    assert_eq!(engine.reload().unwrap().generation, 2);
    swapped.store(true, Ordering::SeqCst);
    let results = stream.join().unwrap();

    assert_eq!(results.len(), evaluated.load(Ordering::SeqCst));
    assert_eq!(
        engine.stats().evaluations as usize,
        results.len(),
        "each event evaluated once"
    );
    let switch = results.iter().position(|r| r.0 == 2).unwrap();
    assert!(switch >= 300, "{switch}");
    assert!(
        results[..switch]
            .iter()
            .all(|r| *r == (1, Decision::Deny, 1))
    );
    assert!(
        results[switch..]
            .iter()
            .all(|r| *r == (2, Decision::Allow, 1))
    );
    assert!(results.len() - switch >= 300);
}

/// What the daemon's attestor does with a policy load, without the
/// daemon: record it in a ledger over a real TPM.
struct LedgerMeasurer(Ledger);

impl Measurer for LedgerMeasurer {
    fn measure(&mut self, p: &PolicyInfo, generation: u64) -> Result<bool, MeasureError> {
        self.0
            .record(14, guardian::policy::measure::event(p, generation))
            .map(|_| true)
            .map_err(|e| MeasureError::Attestor(e.to_string()))
    }
}

#[test]
fn policy_loads_are_extended_into_the_pcr_and_logged() {
    let tpm = Swtpm::start();
    let d = Dir::new();
    let a = d.put("model_writer", &example("model_writer"), Some("vendor.pem"));
    let b = d.put("no_ptrace", &example("no_ptrace"), Some("vendor.pem"));
    let log = d.dir.path().join("measurements.log");
    let ledger = Ledger::open(&log, Some(Tpm::open(&tpm.tcti()).unwrap())).unwrap();
    let engine = PolicyEngine::new(
        d.settings(FailMode::Closed),
        Box::new(LedgerMeasurer(ledger)),
    );
    let report = engine.reload().unwrap();
    assert_eq!(report.not_extended, 0);
    let records = evidence::log::read(&log).unwrap().records;
    assert_eq!(records.len(), 2);
    let replay =
        |records: &[evidence::Record]| hex::encode(evidence::log::replay(records.iter(), 14));
    assert_eq!(tpm.pcrread(14), replay(&records));
    for (r, p) in records.iter().zip([&a, &b]) {
        let Event::Policy(pe) = &r.event else {
            panic!("not a policy record: {r:?}")
        };
        assert!(r.extended);
        assert_eq!(pe.file, p.display().to_string());
        assert_eq!(pe.sha256, expected_pcr_digest(p));
        assert_ne!(pe.signer, "UNSIGNED");
        // The extended digest is bound to the whole record.
        assert_eq!(r.digest, hex::encode(evidence::event::digest(14, &r.event)));
    }
    // A reload measures the set again; a refused one measures nothing.
    engine.reload().unwrap();
    let records = evidence::log::read(&log).unwrap().records;
    assert_eq!(records.len(), 4);
    assert_eq!(tpm.pcrread(14), replay(&records));
    d.put("bad", b"\0asm", Some("vendor.pem"));
    assert!(engine.reload().is_err());
    assert_eq!(evidence::log::read(&log).unwrap().records.len(), 4);
    assert_eq!(tpm.pcrread(14), replay(&records));
    // Replay of the log gives the PCR.
    let c = evidence::log::read(&log).unwrap();
    assert_eq!(
        hex::encode(c.replay(14, &evidence::boot_id())),
        tpm.pcrread(14)
    );
}

/// A pushed set's directory is loaded by name after the set was checked
/// against it: the engine compares what it actually read and compiled with
/// the set's list, so a module put in place of another in between (an
/// older version's, signed by the same key) is refused, nothing measured,
/// the set in force kept.
#[test]
fn a_checked_reload_refuses_modules_other_than_the_sets() {
    let tpm = Swtpm::start();
    let d = Dir::new();
    let a = d.put("model_writer", &example("model_writer"), Some("vendor.pem"));
    let log = d.dir.path().join("measurements.log");
    let ledger = Ledger::open(&log, Some(Tpm::open(&tpm.tcti()).unwrap())).unwrap();
    let engine = PolicyEngine::new(
        d.settings(FailMode::Closed),
        Box::new(LedgerMeasurer(ledger)),
    );
    let listed = |names: &[(&str, &Path)]| -> Vec<(String, String)> {
        names
            .iter()
            .map(|(n, p)| ((*n).to_owned(), expected_pcr_digest(p)))
            .collect()
    };
    let first = engine
        .reload_checked(d.dir.path(), Some(&listed(&[("model_writer", &a)])))
        .unwrap();
    assert_eq!(first.policies.len(), 1);
    let measured = evidence::log::read(&log).unwrap().records.len();
    // Another validly signed module in its place.
    let swapped = d.put("model_writer", &example("no_ptrace"), Some("vendor.pem"));
    assert_ne!(expected_pcr_digest(&swapped), first.policies[0].sha256);
    let e = engine
        .reload_checked(
            d.dir.path(),
            Some(&[("model_writer".to_owned(), first.policies[0].sha256.clone())]),
        )
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("the modules loaded are not the set's"),
        "{e}"
    );
    // One more module than the set lists.
    d.put("model_writer", &example("model_writer"), Some("vendor.pem"));
    d.put("no_ptrace", &example("no_ptrace"), Some("vendor.pem"));
    assert!(
        engine
            .reload_checked(d.dir.path(), Some(&listed(&[("model_writer", &a)])))
            .is_err()
    );
    assert_eq!(
        evidence::log::read(&log).unwrap().records.len(),
        measured,
        "a refused set measures nothing"
    );
    assert_eq!(engine.stats().reloads, 1, "the first set stays in force");
}

fn expected_pcr_digest(p: &Path) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(std::fs::read(p).unwrap()))
}

#[test]
fn cli_sign_inspect_and_test() {
    let d = Dir::new();
    let wasm = d.put("model_writer", &example("model_writer"), None);
    let s = |p: &Path| p.display().to_string();
    let out = guardian(&[
        "policy",
        "sign",
        &s(&wasm),
        "--key",
        &s(&d.key("vendor.pem")),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    // openssl agrees with the signature.
    openssl(&[
        "pkeyutl",
        "-verify",
        "-pubin",
        "-inkey",
        &s(&d.key("vendor.pub")),
        "-rawin",
        "-in",
        &s(&wasm),
        "-sigfile",
        &format!("{}.sig", s(&wasm)),
    ]);
    let out = guardian(&[
        "policy",
        "inspect",
        &s(&wasm),
        "--key",
        &s(&d.key("vendor.pub")),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", stderr(&out));
    for want in [
        "abi         version 2",
        "valid, ed25519 key",
        "/opt/models/",
        UPDATER,
        "guardian_evaluate",
        &expected_pcr_digest(&wasm),
    ] {
        assert!(text.contains(want), "{want} not in\n{text}");
    }
    let out = guardian(&[
        "policy",
        "inspect",
        &s(&wasm),
        "--key",
        &s(&d.key("ec.pub")),
    ]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("INVALID"));
    // Refuses to sign what would not load.
    let bad = d.put("bad", &wat_policy(7, "(i64.const 0)", ""), None);
    let out = guardian(&[
        "policy",
        "sign",
        &s(&bad),
        "--key",
        &s(&d.key("vendor.pem")),
    ]);
    assert!(
        !out.status.success() && stderr(&out).contains("ABI version 7"),
        "{}",
        stderr(&out)
    );

    let events = d.dir.path().join("events.jsonl");
    let line = |e: &str| e.to_owned();
    let dd = r#"{"time":"2025-01-01T00:00:00Z","event":"file_write_open","verdict":"deny","mode":"enforce","hook":"lsm/file_open","pid":7,"tid":7,"ppid":1,"uid":0,"gid":0,"exe":"/usr/bin/dd","exe_dev":"8:1","exe_ino":3,"comm":"dd","service":false,"file":"/opt/models/m.onnx","dev":"8:1","ino":9,"flags":1,"flags_text":"O_WRONLY"}"#;
    let up = dd.replace("/usr/bin/dd", UPDATER);
    std::fs::write(
        &events,
        [line(dd), up, "{not json".into(), String::new()].join("\n"),
    )
    .unwrap();
    let out = guardian(&["policy", "test", &s(&wasm), "--events", &s(&events)]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a bad line fails the run\n{text}{}",
        stderr(&out)
    );
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("1: file_write_open by pid 7 (/usr/bin/dd) /opt/models/m.onnx -> deny (rule 1) [remeasure]"), "{text}");
    assert!(
        lines[1].starts_with("2: ") && lines[1].contains("-> allow"),
        "{text}"
    );
    assert!(lines[2].contains("events.jsonl:3: not evaluated"), "{text}");
    assert!(
        stderr(&out).contains("2 events: 1 denied"),
        "{}",
        stderr(&out)
    );
    let out = guardian(&[
        "policy",
        "test",
        &s(&wasm),
        "--events",
        &s(&events),
        "--json",
    ]);
    let first: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(first["verdict"], "deny");
    assert_eq!(first["rule"], 1);
}

/// A module of ABI version 1 (the hand-written WAT) and modules of version
/// 2 (the SDK examples, and a WAT one that reads the header) in one set,
/// evaluated by the same host: each receives its own layout.
#[test]
fn abi_v1_and_v2_modules_are_evaluated_by_the_same_host() {
    use guardian_policy_abi::{HEADER_SIZE, wire::Header};

    // Version 2 in WAT: checks that `len` is the header plus the event the
    // header announces, then alerts with rule id = the header's path
    // length, or rule 0 when the path is absent (offset 0xffff_ffff).
    let header_reader = wat_policy(
        2,
        &format!(
            r#"(if (result i64)
                 (i32.ne (local.get 1)
                         (i32.add (i32.load (local.get 0)) (i32.const {HEADER_SIZE})))
                 (then (i64.const 0xff))
                 (else
                   (if (result i64) (i32.eq (i32.load offset={po} (local.get 0)) (i32.const -1))
                     (then (i64.const 1))
                     (else (i64.or (i64.const 1)
                       (i64.shl (i64.extend_i32_u (i32.load offset={pl} (local.get 0)))
                                (i64.const 32)))))))"#,
            po = Header::PATH_OFF,
            pl = Header::PATH_LEN,
        ),
        "",
    );
    let rt = Runtime::new(Limits::default());
    let dir = tempfile::tempdir().unwrap();
    let mut policies = Vec::new();
    for (name, wasm) in [
        ("a_model_writer", example("model_writer")),
        ("b_no_ptrace", example("no_ptrace")),
        ("c_header_reader", header_reader),
        ("d_egress", example("egress")),
    ] {
        let p = dir.path().join(format!("{name}.wasm"));
        std::fs::write(&p, wasm).unwrap();
        policies
            .push(LoadedPolicy::load(&rt, &Bundle::read_unsigned(&p, 1 << 20).unwrap()).unwrap());
    }
    let versions: Vec<u32> = policies.iter().map(|p| p.info().abi_version).collect();
    assert_eq!(versions, [2, 1, 2, 2]);
    let mut set = PolicySet::new(policies, FailMode::Closed);

    let verdicts = |set: &mut PolicySet, e: &JsonEvent| {
        let o = set.evaluate(&e.to_abi().unwrap());
        assert_eq!(o.failures().count(), 0, "{o:?}");
        o.verdicts
            .iter()
            .map(|v| {
                let v = v.result.as_ref().unwrap();
                (v.decision, v.rule)
            })
            .collect::<Vec<_>>()
    };
    use Decision::*;
    let path = "/opt/models/resnet50.onnx";
    let write = file("file_write_open", "/usr/bin/dd", 9, 0, path);
    assert_eq!(
        verdicts(&mut set, &write),
        [
            (Deny, 1),
            (Allow, 0),
            (Alert, path.len() as u32),
            (Allow, 0)
        ]
    );
    let ok = file("file_write_open", UPDATER, 9, 0, path);
    assert_eq!(
        verdicts(&mut set, &ok),
        [
            (Allow, 0),
            (Allow, 0),
            (Alert, path.len() as u32),
            (Allow, 0)
        ]
    );
    let ptrace = json(
        "ptrace",
        "/usr/bin/gdb",
        false,
        5,
        0,
        r#","target_pid":77,"target_exe":"/usr/bin/python3""#,
    );
    assert_eq!(
        verdicts(&mut set, &ptrace),
        [(Allow, 0), (Deny, 40), (Alert, 0), (Allow, 0)]
    );
    let connect = json(
        "connect",
        "/usr/bin/python3",
        true,
        5,
        0,
        r#","family":"ipv4","addr":"192.0.2.1","port":80"#,
    );
    assert_eq!(
        verdicts(&mut set, &connect),
        [(Allow, 0), (Allow, 0), (Alert, 0), (Deny, 20)]
    );
}

/// A version 2 module whose input is not a header and the event it
/// announces (cut short, lengths that disagree, offsets past the event)
/// answers with its decode error; through the host that is a policy
/// failure with a clear message, never a trap.
#[test]
fn v2_module_given_a_bad_header_answers_decode_error() {
    use guardian_policy_abi::{HEADER_SIZE, Verdict, wire::Header};

    let event = file("file_write_open", "/usr/bin/dd", 9, 0, "/opt/models/m.onnx");
    let encoded = postcard::to_allocvec(&event.to_abi().unwrap()).unwrap();
    let head = Header::of(&encoded).unwrap();
    let good: Vec<u8> = head.to_bytes().iter().chain(&encoded).copied().collect();

    // Straight into the module with wasmi, as a buggy host would write it.
    let engine = wasmi::Engine::default();
    let module = wasmi::Module::new(&engine, example("model_writer")).unwrap();
    let mut store = wasmi::Store::new(&engine, ());
    let mut linker = wasmi::Linker::<()>::new(&engine);
    linker
        .func_wrap("guardian", "log", |_: i32, _: i32, _: i32| {})
        .unwrap();
    linker
        .func_wrap("guardian", "monotonic_ns", || 0i64)
        .unwrap();
    let inst = linker.instantiate_and_start(&mut store, &module).unwrap();
    let memory = inst.get_memory(&store, "memory").unwrap();
    let buf = inst
        .get_typed_func::<(), i32>(&store, "guardian_buffer")
        .unwrap()
        .call(&mut store, ())
        .unwrap();
    let eval = inst
        .get_typed_func::<(i32, i32), i64>(&store, "guardian_evaluate")
        .unwrap();
    let mut run = |input: &[u8]| {
        memory.write(&mut store, buf as usize, input).unwrap();
        eval.call(&mut store, (buf, input.len() as i32)).unwrap()
    };
    assert_eq!(
        Verdict::unpack(run(&good)).unwrap(),
        Verdict::deny(1).with(Actions::REMEASURE)
    );
    let patched = |at: usize, v: u32| {
        let mut b = good.clone();
        b[at..at + 4].copy_from_slice(&v.to_le_bytes());
        b
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("header cut short", good[..HEADER_SIZE - 8].to_vec()),
        ("header without the event", good[..HEADER_SIZE].to_vec()),
        ("event cut short", good[..good.len() - 3].to_vec()),
        (
            "event length disagrees",
            patched(Header::EVENT_LEN, head.event_len + 1),
        ),
        (
            "path past the event",
            patched(Header::PATH_OFF, head.event_len),
        ),
        (
            "path length past the event",
            patched(Header::PATH_LEN, u32::MAX),
        ),
        ("exe past the event", patched(Header::EXE_OFF, 0x7fff_ffff)),
    ];
    for (what, input) in &cases {
        assert_eq!(run(input), Verdict::DECODE_ERROR, "{what}");
    }

    // Through the host: bytes that are not an event get a header of absent
    // fields; the module's decode error is reported as such.
    let mut set = set_of(&["model_writer"]);
    let p = set.policies_mut().next().unwrap();
    let err = p.module_mut().unwrap().evaluate(&encoded[..5]).unwrap_err();
    assert!(
        err.to_string().contains("could not decode the event"),
        "{err}"
    );
    assert_eq!(
        p.module_mut().unwrap().evaluate(&encoded).unwrap(),
        Verdict::deny(1).with(Actions::REMEASURE)
    );
}
