//! Rego policies (OPA's Wasm ABI) in wasmi, beside guardian's own modules:
//! the hand-written `policies/examples/wat/opa-allowlist.wat` (OPA's ABI as
//! its documentation specifies it) on both evaluation paths, its several
//! entrypoints, a host builtin, every failure a module can have, bad
//! bundles on reload, and, when the `opa` tool is on PATH, a real
//! `opa build -t wasm` output.

use std::{io::Write as _, path::Path, process::Command};

use guardian::policy::{
    CallError, Decision, FailMode, JsonEvent, Limits, PolicyEngine, PolicyKind, PolicySet, Runtime,
    engine::failure_alert,
    measure::NoMeasurer,
    rego,
    set::{Bundle, LoadedPolicy},
};

use super::policy::{Dir, example, json};

const DATA: &str = r#"{"allowed": ["/usr/bin/python3", "/usr/sbin/model-updater"]}"#;
const ENTRYPOINTS: &str = r#"{\"guardian/allow\":0,\"guardian/verdict\":1,\"guardian/debug\":2}"#;

fn wat_source() -> String {
    let p =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/examples/wat/opa-allowlist.wat");
    std::fs::read_to_string(p).unwrap()
}

/// The module, with `(from, to)` replaced in its source (each must be
/// there) and `DATA` as its data section.
fn opa(edits: &[(&str, &str)]) -> Vec<u8> {
    let mut src = wat_source();
    for (from, to) in edits {
        assert!(src.contains(from), "{from} not in the WAT");
        src = src.replace(from, to);
    }
    rego::with_data(&wat::parse_str(src).unwrap(), DATA.as_bytes())
}

/// The module with entrypoint names mapped to other ids.
fn opa_ep(map: &str) -> Vec<u8> {
    opa(&[(ENTRYPOINTS, &map.replace('"', "\\\""))])
}

fn load(name: &str, wasm: &[u8], limits: Limits) -> Result<LoadedPolicy, String> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join(format!("{name}.wasm"));
    std::fs::write(&p, wasm).unwrap();
    LoadedPolicy::load(
        &Runtime::new(limits),
        &Bundle::read_unsigned(&p, 1 << 20).unwrap(),
    )
    .map_err(|e| e.to_string())
}

fn exec(exe: &str) -> JsonEvent {
    json("exec", exe, false, 9, 0, r#","path":"/bin/sh""#)
}

#[track_caller]
fn decides(set: &mut PolicySet, e: &JsonEvent, decision: Decision, by: Option<(&str, u32)>) {
    let o = set.evaluate(&e.to_abi().unwrap());
    assert_eq!(o.failures().count(), 0, "{o:?}");
    assert_eq!(o.decision, decision, "{o:?}");
    assert_eq!(
        o.decided_by.as_ref().map(|(n, r)| (n.as_str(), *r)),
        by,
        "{o:?}"
    );
}

#[test]
fn rego_allowlist_decides_beside_guardian_policies_on_both_abi_paths() {
    // Minor version 3 is evaluated by one call of opa_eval; 1 by the
    // evaluation-context calls. Same module otherwise, same verdicts.
    for (minor, one_call) in [("3", true), ("1", false)] {
        let wasm = opa(&[(
            r#"(global (export "opa_wasm_abi_minor_version") i32 (i32.const 3))"#,
            &format!(r#"(global (export "opa_wasm_abi_minor_version") i32 (i32.const {minor}))"#),
        )]);
        let rego = load("allowlist", &wasm, Limits::default()).unwrap();
        assert_eq!(rego.info().kind, PolicyKind::Rego);
        assert_eq!(rego.info().abi_version, 0);
        let info = rego.module_info().rego.clone().unwrap();
        assert_eq!(info.one_call, one_call);
        assert_eq!(
            (info.abi_major, info.abi_minor.to_string()),
            (1, minor.to_owned())
        );
        assert_eq!(info.entrypoint, "guardian/verdict");
        assert_eq!(
            info.entrypoints,
            ["guardian/allow", "guardian/debug", "guardian/verdict"]
        );
        assert_eq!(info.builtins, ["startswith"]);
        assert_eq!(info.data_bytes, DATA.len());
        // A guardian-ABI module in the same set: deny-overrides across kinds.
        let native = load("no_ptrace", &example("no_ptrace"), Limits::default()).unwrap();
        assert_eq!(native.info().kind, PolicyKind::Guardian);
        let mut set = PolicySet::new(vec![rego, native], FailMode::Closed);

        decides(&mut set, &exec("/usr/bin/python3"), Decision::Allow, None);
        decides(
            &mut set,
            &exec("/usr/bin/curl"),
            Decision::Alert,
            Some(("allowlist", 3)),
        );
        // Through the host's startswith builtin.
        let o = set.evaluate(&exec("/tmp/x").to_abi().unwrap());
        assert_eq!(
            (o.decision, o.actions, o.decided_by.clone()),
            (
                Decision::Deny,
                guardian::policy::Actions::KILL,
                Some(("allowlist".into(), 7))
            ),
            "{o:?}"
        );
        // The Rego module allows the tracer; the guardian module denies.
        let ptrace = json(
            "ptrace",
            "/usr/sbin/model-updater",
            false,
            9,
            0,
            r#","target_pid":7"#,
        );
        decides(&mut set, &ptrace, Decision::Deny, Some(("no_ptrace", 40)));

        // The heap is reset before every evaluation: memory does not grow
        // and every evaluation costs the same.
        let rego = set.policies_mut().next().unwrap().rego_mut().unwrap();
        let mut input = String::new();
        rego::input_json(&exec("/usr/bin/curl").to_abi().unwrap(), &mut input);
        let before = rego.memory_bytes();
        rego.evaluate(input.as_bytes()).unwrap();
        let fuel = rego.last_fuel();
        for _ in 0..2000 {
            rego.evaluate(input.as_bytes()).unwrap();
            assert_eq!(rego.last_fuel(), fuel);
        }
        assert_eq!(rego.memory_bytes(), before);
        assert!(fuel > 100, "{fuel}");
    }
}

#[test]
fn rego_entrypoints_are_chosen_by_name() {
    // Only guardian/allow: a boolean, false (and undefined) is deny.
    let wasm = opa_ep(r#"{"guardian/allow":0,"other/rule":2}"#);
    let p = load("allow_only", &wasm, Limits::default()).unwrap();
    assert_eq!(
        p.module_info().rego.as_ref().unwrap().entrypoint,
        "guardian/allow"
    );
    let mut set = PolicySet::new(vec![p], FailMode::Open);
    decides(
        &mut set,
        &exec("/usr/sbin/model-updater"),
        Decision::Allow,
        None,
    );
    decides(
        &mut set,
        &exec("/tmp/x"),
        Decision::Deny,
        Some(("allow_only", 0)),
    );

    // The verdict entrypoint wins whatever its id.
    let wasm = opa_ep(r#"{"guardian/verdict":1,"guardian/allow":2}"#);
    let mut set = PolicySet::new(
        vec![load("both", &wasm, Limits::default()).unwrap()],
        FailMode::Open,
    );
    decides(
        &mut set,
        &exec("/usr/bin/curl"),
        Decision::Alert,
        Some(("both", 3)),
    );

    // Neither: refused, naming what it has.
    let e = load(
        "neither",
        &opa_ep(r#"{"guardian/debug":2,"x/y":0}"#),
        Limits::default(),
    )
    .unwrap_err();
    assert!(
        e.contains("neither.wasm")
            && e.contains("no entrypoint guardian/verdict or guardian/allow")
            && e.contains("\"guardian/debug\", \"x/y\""),
        "{e}"
    );
}

#[test]
fn rego_failures_get_the_fail_mode_and_an_alert_naming_the_policy() {
    let limits = Limits {
        fuel: 20_000,
        memory_pages: 8,
        ..Limits::default()
    };
    type Check = fn(&CallError) -> bool;
    let cases: [(&str, &str, Check); 4] = [
        // opa_abort, as OPA's eval calls it for an unknown entrypoint.
        (
            "aborts",
            r#"{"guardian/verdict":9}"#,
            |e| matches!(e, CallError::Trap(m) if m.contains("opa_abort: invalid entrypoint id")),
        ),
        ("loops", r#"{"guardian/verdict":3}"#, |e| {
            *e == CallError::OutOfFuel { fuel: 20_000 }
        }),
        // memory.grow past [policy] memory_pages traps.
        ("grows", r#"{"guardian/verdict":4}"#, |e| {
            matches!(e, CallError::Trap(_))
        }),
        (
            "garbles",
            r#"{"guardian/verdict":5}"#,
            |e| matches!(e, CallError::BadResult(m) if m.contains("not a result set")),
        ),
    ];
    for (name, map, expected) in cases {
        for mode in [FailMode::Closed, FailMode::Open] {
            let d = Dir::new();
            d.put(name, &opa_ep(map), Some("vendor.pem"));
            let mut settings = d.settings(mode);
            settings.limits = limits;
            let engine = PolicyEngine::new(settings, Box::new(NoMeasurer));
            engine.reload().unwrap();
            let event = exec("/usr/bin/python3");
            let o = engine.evaluate_json(&event).unwrap();
            assert_eq!(o.decision, mode.decision(), "{name}: {o:?}");
            let (policy, err) = o.failures().next().unwrap();
            assert_eq!(policy, name);
            assert!(expected(err), "{name}: {err}");
            let alert = failure_alert(policy, err, &event.to_abi().unwrap(), mode);
            assert!(
                alert.starts_with(&format!("policy {name} failed on exec by pid 9")),
                "{alert}"
            );
            // The instance is kept: the next event fails the same way.
            let again = engine.evaluate_json(&event).unwrap();
            assert!(expected(again.failures().next().unwrap().1), "{name}");
            let stats = engine.stats();
            assert_eq!(stats.failures, 2, "{name}: {stats:?}");
        }
    }
}

#[test]
fn bad_rego_modules_are_refused_and_the_previous_set_stays() {
    let d = Dir::new();
    d.put("allowlist", &opa(&[]), Some("vendor.pem"));
    let engine = PolicyEngine::new(d.settings(FailMode::Closed), Box::new(NoMeasurer));
    engine.reload().unwrap();
    let curl = exec("/usr/bin/curl");
    let decides = |generation| {
        let o = engine.evaluate_json(&curl).unwrap();
        assert_eq!(
            (o.decision, o.decided_by.clone(), o.generation),
            (Decision::Alert, Some(("allowlist".into(), 3)), generation),
            "{o:?}"
        );
    };
    decides(1);
    let base = wat_source();
    let with_data = |wasm: Vec<u8>| rego::with_data(&wasm, DATA.as_bytes());
    assert_eq!(rego::DATA_SECTION, "guardian.data");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "unknown_builtin",
            opa(&[(r#"{\"startswith\":0}"#, r#"{\"http.send\":0}"#)]),
            "needs builtin \"http.send\", which guardian does not provide (it provides startswith, endswith, count)",
        ),
        (
            "abi_2",
            opa(&[(
                r#"(global (export "opa_wasm_abi_version") i32 (i32.const 1))"#,
                r#"(global (export "opa_wasm_abi_version") i32 (i32.const 2))"#,
            )]),
            "OPA Wasm ABI version 2.3, but guardian hosts ABI 1.x",
        ),
        (
            "no_abi_global",
            opa(&[(
                r#"(global (export "opa_wasm_abi_version") i32 (i32.const 1))"#,
                "",
            )]),
            "OPA Wasm ABI version 0.3",
        ),
        (
            "wasi",
            opa(&[(
                r#"(import "env" "memory" (memory 2))"#,
                r#"(import "env" "memory" (memory 2))
                   (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))"#,
            )]),
            "imports wasi_snapshot_preview1.fd_write",
        ),
        (
            "unknown_env_import",
            opa(&[(
                r#"(import "env" "memory" (memory 2))"#,
                r#"(import "env" "memory" (memory 2))
                   (import "env" "opa_builtin5" (func (param i32 i32 i32 i32 i32 i32 i32) (result i32)))"#,
            )]),
            "imports env.opa_builtin5",
        ),
        (
            "builtin_wrong_type",
            opa(&[(
                r#"(import "env" "opa_println" (func $opa_println (param i32)))"#,
                r#"(import "env" "opa_println" (func $opa_println (param i32)))
                   (import "env" "opa_builtin1" (func (param i32 i32) (result i32)))"#,
            )]),
            "imports env.opa_builtin1 (func [I32, I32] -> [I32])",
        ),
        (
            "big_memory",
            opa(&[(
                r#"(import "env" "memory" (memory 2))"#,
                r#"(import "env" "memory" (memory 100))"#,
            )]),
            "imports a memory of at least 100 pages, over the limit of 4",
        ),
        (
            "missing_export",
            opa(&[(r#"(export "opa_json_dump")"#, r#"(export "opa_json_dump_")"#)]),
            "export opa_json_dump: missing",
        ),
        (
            "bad_data",
            rego::with_data(&wat::parse_str(&base).unwrap(), b"{\"allowed\": [oops"),
            "data (custom section guardian.data): not JSON",
        ),
        (
            "bad_map",
            opa_ep(r#"{"guardian/verdict":"one"}"#),
            "entrypoints() is not a JSON object of names to small ids",
        ),
        (
            "aborts_at_load",
            with_data(
                wat::parse_str(base.replace(
                    r#"(func (export "builtins") (result i32) (call $static (i32.const 1024)))"#,
                    r#"(func (export "builtins") (result i32) (call $opa_abort (i32.const 2112)) (i32.const 0))"#,
                ))
                .unwrap(),
            ),
            "builtins failed: trapped: opa_abort: invalid entrypoint id",
        ),
        (
            "truncated",
            opa(&[])[..600].to_vec(),
            "not a loadable WebAssembly module",
        ),
    ];
    for (name, wasm, problem) in cases {
        d.put(name, &wasm, Some("vendor.pem"));
        let e = engine.reload().unwrap_err().to_string();
        assert!(
            e.contains(&format!("{name}.wasm")) && e.contains(problem),
            "{name}: {e}"
        );
        d.remove(name);
        decides(1);
    }
    assert_eq!(engine.stats().reload_failures, 12);
    // A good Rego module among guardian's: loaded, signed and in force.
    d.put("no_ptrace", &example("no_ptrace"), Some("vendor.pem"));
    let report = engine.reload().unwrap();
    assert_eq!(
        report
            .policies
            .iter()
            .map(|p| (p.name.as_str(), p.kind))
            .collect::<Vec<_>>(),
        [
            ("allowlist", PolicyKind::Rego),
            ("no_ptrace", PolicyKind::Guardian)
        ]
    );
    decides(2);
    // The signature covers the data section: changing the data alone is
    // refused.
    let other = rego::with_data(&opa(&[]), br#"{"allowed":["/usr/bin/curl"]}"#);
    std::fs::write(d.dir.path().join("allowlist.wasm"), other).unwrap();
    let e = engine.reload().unwrap_err().to_string();
    assert!(e.contains("allowlist.wasm"), "{e}");
    decides(2);
}

/// The same rule, compiled by the real `opa build -t wasm`; run only when
/// `opa` is on PATH.
#[test]
fn real_opa_build_output_runs_in_wasmi() {
    let opa_ok = Command::new("opa")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !opa_ok {
        // Straight to stderr, past the test harness's capture: a skip is
        // seen whether or not the test passes.
        writeln!(
            std::io::stderr(),
            "\n==================== SKIPPED ====================\n\
             policy_rego::real_opa_build_output_runs_in_wasmi: the `opa` tool is not on PATH,\n\
             so no real `opa build -t wasm` output was run. Only the hand-written\n\
             OPA-ABI modules (policies/examples/wat/opa-allowlist.wat) were tested.\n\
             Install opa (https://www.openpolicyagent.org/docs/#running-opa) to run it.\n\
             =================================================\n"
        )
        .unwrap();
        return;
    }
    let rego_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/examples/rego");
    let out = tempfile::tempdir().unwrap();
    let bundle = out.path().join("bundle.tar.gz");
    let status = Command::new("opa")
        .args([
            "build",
            "-t",
            "wasm",
            "-e",
            "guardian/verdict",
            "-e",
            "guardian/allow",
            "-o",
        ])
        .arg(&bundle)
        .arg(rego_dir.join("allowlist.rego"))
        .status()
        .unwrap();
    assert!(status.success(), "opa build failed");
    let status = Command::new("tar")
        .arg("-xzf")
        .arg(&bundle)
        .arg("-C")
        .arg(out.path())
        .arg("/policy.wasm")
        .status()
        .unwrap();
    assert!(status.success(), "no /policy.wasm in the bundle");
    let wasm = std::fs::read(out.path().join("policy.wasm")).unwrap();
    let data = std::fs::read(rego_dir.join("data.json")).unwrap();
    let limits = Limits {
        fuel: 10_000_000,
        memory_pages: 64,
        module_bytes: 4 << 20,
    };
    let p = load("opa_allowlist", &rego::with_data(&wasm, &data), limits).unwrap();
    eprintln!("real opa module: {:?}", p.module_info().rego);
    let mut set = PolicySet::new(vec![p], FailMode::Closed);
    decides(&mut set, &exec("/usr/bin/python3"), Decision::Allow, None);
    decides(
        &mut set,
        &exec("/usr/bin/curl"),
        Decision::Alert,
        Some(("opa_allowlist", 3)),
    );
    decides(
        &mut set,
        &exec("/tmp/x"),
        Decision::Deny,
        Some(("opa_allowlist", 7)),
    );
}

/// `guardian policy rego` puts the data into an `opa build` module; then
/// it is signed, inspected and tested like any policy.
#[test]
fn policy_rego_cli_packs_signs_inspects_and_tests() {
    use super::common::{guardian, stderr};
    let d = Dir::new();
    let s = |p: &Path| p.display().to_string();
    let raw = d.dir.path().join("policy.wasm");
    std::fs::write(&raw, wat::parse_str(wat_source()).unwrap()).unwrap();
    let data = d.dir.path().join("data.json");
    std::fs::write(&data, DATA).unwrap();
    let out_wasm = d.dir.path().join("allowlist.wasm");
    let out = guardian(&[
        "policy",
        "rego",
        &s(&raw),
        "--data",
        &s(&data),
        "-o",
        &s(&out_wasm),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("OPA Wasm ABI 1.3, entrypoint guardian/verdict")
            && text.contains("bytes of data"),
        "{text}"
    );
    let out = guardian(&[
        "policy",
        "sign",
        &s(&out_wasm),
        "--key",
        &s(&d.key("vendor.pem")),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = guardian(&[
        "policy",
        "inspect",
        &s(&out_wasm),
        "--key",
        &s(&d.key("vendor.pub")),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && text.contains("OPA Wasm 1.3 (Rego), one-call opa_eval")
            && text.contains(
                "entrypoint  guardian/verdict (of guardian/allow, guardian/debug, guardian/verdict)"
            )
            && text.contains("builtins    startswith")
            && text.contains("signature   valid"),
        "{text}{}",
        stderr(&out)
    );
    let events = d.dir.path().join("events.jsonl");
    let line = |exe: &str| {
        format!(
            r#"{{"time":"2026-01-01T00:00:00Z","event":"exec","verdict":"allow","mode":"enforce","pid":3,"exe":"{exe}","path":"/bin/sh"}}"#
        )
    };
    std::fs::write(
        &events,
        format!("{}\n{}\n", line("/usr/bin/python3"), line("/tmp/x")),
    )
    .unwrap();
    let out = guardian(&[
        "policy",
        "test",
        &s(&out_wasm),
        "--events",
        &s(&events),
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].contains("\"allow\""), "{text}");
    assert!(
        lines[1].contains("\"deny\"") && lines[1].contains("kill"),
        "{text}"
    );
    // guardian's own modules are not Rego: refused, saying so.
    let native = d.put("no_ptrace", &example("no_ptrace"), None);
    let out = guardian(&[
        "policy",
        "rego",
        &s(&native),
        "-o",
        &s(&d.dir.path().join("x.wasm")),
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("not a Rego module"),
        "{}",
        stderr(&out)
    );
}
