//! The same allowlist rule as a Rego policy (OPA's Wasm ABI) and as a
//! guardian SDK policy, through the agent's own policy host, in one run:
//! time per event (p50, p99), fuel, load time, and the ratios.
//!
//! `cargo bench -p guardian --bench rego` (env `GUARDIAN_BENCH_BATCHES`,
//! default 5000 batches of 64 events). The Rego side is the hand-written
//! OPA-ABI module `policies/examples/wat/opa-allowlist.wat` with
//! `policies/examples/rego/data.json` (the `opa` tool is not available
//! everywhere; a real `opa build` output does more work in the module:
//! it parses the whole input into values); the SDK side is
//! `policies/examples/exe-allowlist`, built here for wasm32. Each figure
//! is a whole `PolicySet::evaluate` of one event: the host's encoding
//! (postcard + header, or the input JSON), the call(s) with fresh fuel, and
//! the verdict (the result JSON parsed, for Rego).

// A benchmark reports by printing, and fails loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant, UNIX_EPOCH},
};

use guardian::policy::{
    Decision, FailMode, JsonEvent, Limits, PolicySet, Runtime, rego,
    set::{Bundle, LoadedPolicy},
};

const BATCH: usize = 64;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The SDK examples for wasm32, as the integration tests build them.
fn sdk_module(name: &str) -> Vec<u8> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
        .join("policy-examples");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(root().join("policies/examples"))
        .args([
            "build",
            "--locked",
            "--release",
            "--target",
            "wasm32-unknown-unknown",
            "-q",
        ])
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(target.join(format!("wasm32-unknown-unknown/release/{name}.wasm"))).unwrap()
}

fn bundle(name: &str, wasm: Vec<u8>) -> Bundle {
    Bundle {
        name: name.into(),
        path: PathBuf::from(format!("{name}.wasm")),
        wasm,
        sha256: [0; 32],
        signer: None,
    }
}

fn event(exe: &str) -> JsonEvent {
    let time = humantime::format_rfc3339_nanos(UNIX_EPOCH + Duration::from_secs(1_764_900_000));
    JsonEvent::parse(&format!(
        r#"{{"time":"{time}","event":"exec","verdict":"allow","mode":"enforce","hook":"lsm/bprm_check_security","pid":4242,"tid":4242,"ppid":1,"uid":0,"gid":0,"exe":"{exe}","exe_dev":"179:2","exe_ino":131074,"comm":"python3","service":true,"path":"/usr/bin/python3"}}"#
    ))
    .unwrap()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// p50, p99 of the time per event over `batches` batches of [`BATCH`].
fn per_event(batches: usize, mut f: impl FnMut()) -> (f64, f64) {
    for _ in 0..batches / 10 {
        f();
    }
    let mut t = Vec::with_capacity(batches);
    for _ in 0..batches {
        let start = Instant::now();
        for _ in 0..BATCH {
            f();
        }
        t.push(start.elapsed().as_nanos() as f64 / BATCH as f64);
    }
    t.sort_by(f64::total_cmp);
    (percentile(&t, 0.5), percentile(&t, 0.99))
}

/// Median load time (compile + instantiate + the ABI's load calls), µs.
fn load_us(rt: &Runtime, b: &Bundle) -> f64 {
    let mut t: Vec<f64> = (0..60)
        .map(|_| {
            let start = Instant::now();
            let p = LoadedPolicy::load(rt, b).unwrap();
            let d = start.elapsed();
            drop(p);
            d.as_secs_f64() * 1e6
        })
        .collect();
    t.sort_by(f64::total_cmp);
    percentile(&t, 0.5)
}

fn main() {
    let batches: usize = std::env::var("GUARDIAN_BENCH_BATCHES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5000);
    let rt = Runtime::new(Limits::default());
    let sdk = bundle("exe_allowlist", sdk_module("exe_allowlist"));
    let wat = root().join("policies/examples/wat/opa-allowlist.wat");
    let data = std::fs::read(root().join("policies/examples/rego/data.json")).unwrap();
    let rego_b = bundle(
        "opa_allowlist",
        rego::with_data(&wat::parse_file(wat).unwrap(), &data),
    );

    let mut sets: Vec<(&str, &Bundle, PolicySet)> = [
        ("sdk (guardian ABI 2)", &sdk),
        ("rego (OPA ABI 1.3, WAT)", &rego_b),
    ]
    .into_iter()
    .map(|(n, b)| {
        (
            n,
            b,
            PolicySet::new(vec![LoadedPolicy::load(&rt, b).unwrap()], FailMode::Closed),
        )
    })
    .collect();

    // Both decide alike on the rule's three cases.
    for (exe, decision, rule) in [
        ("/usr/bin/python3", Decision::Allow, 0),
        ("/usr/bin/curl", Decision::Alert, 3),
        ("/tmp/x", Decision::Deny, 7),
    ] {
        for (name, _, set) in &mut sets {
            let o = set.evaluate(&event(exe).to_abi().unwrap());
            assert_eq!(
                (o.decision, o.decided_by.map_or(0, |d| d.1)),
                (decision, rule),
                "{name} on {exe}"
            );
        }
    }

    println!(
        "{batches} batches of {BATCH} events (exec by an allowed executable), load = median of 60"
    );
    println!("| policy | .wasm bytes | p50 / event | p99 / event | fuel | load |");
    println!("|---|---:|---:|---:|---:|---:|");
    let allowed = event("/usr/bin/python3");
    let ev = allowed.to_abi().unwrap();
    let mut rows = Vec::new();
    for (name, b, set) in &mut sets {
        let fuel = set.evaluate(&ev).verdicts[0].fuel;
        let (p50, p99) = per_event(batches, || {
            std::hint::black_box(set.evaluate(std::hint::black_box(&ev)));
        });
        let load = load_us(&rt, b);
        println!(
            "| {name} | {} | {p50:.0} ns | {p99:.0} ns | {fuel} | {load:.0} µs |",
            b.wasm.len()
        );
        rows.push((p50, p99, load));
    }
    let (s, r) = (rows[0], rows[1]);
    println!(
        "rego / sdk: p50 {:.1}x, p99 {:.1}x, load {:.1}x",
        r.0 / s.0,
        r.1 / s.1,
        r.2 / s.2
    );

    // The host's own part: a module that answers at once (entrypoint 6 of
    // the WAT), so the input JSON, writing it, the call and the result
    // parsed, and nothing of the rule.
    let src = std::fs::read_to_string(root().join("policies/examples/wat/opa-allowlist.wat"))
        .unwrap()
        .replace(
            r#"{\"guardian/allow\":0,\"guardian/verdict\":1,\"guardian/debug\":2}"#,
            r#"{\"guardian/verdict\":6}"#,
        );
    let floor = bundle(
        "opa_floor",
        rego::with_data(&wat::parse_str(src).unwrap(), &data),
    );
    let mut floor_set = PolicySet::new(
        vec![LoadedPolicy::load(&rt, &floor).unwrap()],
        FailMode::Closed,
    );
    let o = floor_set.evaluate(&ev);
    assert_eq!(
        (o.decision, o.verdicts[0].result.is_ok()),
        (Decision::Allow, true)
    );
    let floor_fuel = o.verdicts[0].fuel;
    let (floor50, floor99) = per_event(batches, || {
        std::hint::black_box(floor_set.evaluate(std::hint::black_box(&ev)));
    });
    println!(
        "rego host part (a module that answers at once): p50 {floor50:.0} ns, p99 {floor99:.0} ns, fuel {floor_fuel}"
    );

    // Where a Rego evaluation goes.
    let mut input = String::new();
    let (json50, _) = per_event(batches, || {
        rego::input_json(std::hint::black_box(&ev), &mut input);
    });
    rego::input_json(&ev, &mut input);
    let module = sets[1].2.policies_mut().next().unwrap().rego_mut().unwrap();
    let (call50, _) = per_event(batches, || {
        std::hint::black_box(
            module
                .evaluate(std::hint::black_box(input.as_bytes()))
                .unwrap(),
        );
    });
    println!(
        "rego breakdown (p50): input JSON {json50:.0} ns ({} bytes); opa_eval + result {call50:.0} ns",
        input.len()
    );
}
