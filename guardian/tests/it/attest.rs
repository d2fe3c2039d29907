//! `guardian quote` and `guardian verify` against a real swtpm, with
//! `tpm2_checkquote` (tpm2-tools) as the independent judge of the parts it
//! can check: the signature with our exported AK public key, and the nonce.

// Tests panic on purpose: the failing line is the report.
use crate::common;

use std::process::{Command, Output};

use common::{Board, Swtpm, guardian, stderr};
use serde_json::Value;

/// A measured board with an enrolled AK.
fn measured() -> (Swtpm, Board) {
    let tpm = Swtpm::start();
    let b = Board::new(&tpm.tcti());
    let out = b.measure();
    assert!(out.status.success(), "{}", stderr(&out));
    (tpm, b)
}

fn quote(b: &Board, nonce: &str, name: &str) -> Output {
    let out = guardian(&[
        "quote",
        "-c",
        &b.s("guardian.toml"),
        "--nonce",
        nonce,
        "-o",
        &b.s(name),
        "--ak-out",
        &b.s("ak.pem"),
        "--raw",
        &b.s(name),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    out
}

fn verify(b: &Board, evidence: &str, nonce: &str) -> (Option<i32>, Value) {
    verify_with(b, evidence, nonce, &["--manifest", &b.s("manifest.toml")])
}

/// `guardian verify --json` with the board's AK and vendor key, plus `extra`.
fn verify_with(b: &Board, evidence: &str, nonce: &str, extra: &[&str]) -> (Option<i32>, Value) {
    let (evidence, ak, key) = (b.s(evidence), b.s("ak.pem"), b.s("vendor.pub"));
    let mut args = vec![
        "verify",
        "--evidence",
        &evidence,
        "--insecure-tofu",
        "--ak",
        &ak,
        "--key",
        &key,
        "--nonce",
        nonce,
        "--json",
    ];
    args.extend_from_slice(extra);
    let out = guardian(&args);
    let v = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("no verdict: {}", stderr(&out)));
    (out.status.code(), v)
}

/// tpm2_checkquote's view of the raw quote written next to `evidence`.
fn checkquote(b: &Board, evidence: &str, nonce: &str) -> bool {
    Command::new("tpm2_checkquote")
        .args(["-u", &b.s("ak.pem"), "-m", &b.s(&format!("{evidence}.msg"))])
        .args([
            "-s",
            &b.s(&format!("{evidence}.sig")),
            "-q",
            nonce,
            "-g",
            "sha256",
        ])
        .output()
        .unwrap()
        .status
        .success()
}

fn failed_checks(v: &Value) -> Vec<String> {
    v["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            format!(
                "{}: {}",
                f["check"].as_str().unwrap(),
                f["reason"].as_str().unwrap()
            )
        })
        .collect()
}

#[test]
fn fresh_quote_verifies_and_tpm2_checkquote_agrees() {
    let (_tpm, b) = measured();
    quote(&b, "a1b2c3d4e5f60718a1b2c3d4e5f60718", "ev.json");
    let (code, v) = verify(&b, "ev.json", "a1b2c3d4e5f60718a1b2c3d4e5f60718");
    assert_eq!(code, Some(0), "{v:#}");
    assert_eq!(v["trusted"], true);
    for check in [
        "signature",
        "nonce",
        "pcr_digest",
        "log_replay",
        "manifest",
        "models",
    ] {
        assert!(
            v["passed"].as_array().unwrap().iter().any(|p| p == check),
            "{check}: {v:#}"
        );
    }
    assert!(checkquote(
        &b,
        "ev.json",
        "a1b2c3d4e5f60718a1b2c3d4e5f60718"
    ));
    // The AK persists: a second quote uses the same key.
    let first_ak = std::fs::read_to_string(b.p("ak.pem")).unwrap();
    quote(&b, "0101010101010101010101010101010101", "ev2.json");
    assert_eq!(std::fs::read_to_string(b.p("ak.pem")).unwrap(), first_ak);
}

#[test]
fn replayed_quote_with_an_old_nonce_fails() {
    let (_tpm, b) = measured();
    quote(&b, "01010101010101010101010101010101", "old.json");
    let (code, v) = verify(&b, "old.json", "02020202020202020202020202020202");
    assert_eq!(code, Some(3));
    let f = failed_checks(&v);
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(f[0].starts_with("nonce:"), "{f:?}");
    assert!(
        !checkquote(&b, "old.json", "02020202020202020202020202020202"),
        "tpm2_checkquote must refuse too"
    );
    assert!(checkquote(
        &b,
        "old.json",
        "01010101010101010101010101010101"
    ));
}

#[test]
fn modified_log_or_pcr_values_fail() {
    let (_tpm, b) = measured();
    quote(&b, "cafecafecafecafecafecafecafecafe", "ev.json");
    let ev: Value =
        serde_json::from_str(&std::fs::read_to_string(b.p("ev.json")).unwrap()).unwrap();

    // A log record's digest rewritten to the golden value of a model that
    // was really something else: the replay no longer reaches the PCR.
    let mut forged = ev.clone();
    forged["measurement_log"][1]["digest"] = Value::String("ab".repeat(32));
    std::fs::write(b.p("forged.json"), serde_json::to_vec(&forged).unwrap()).unwrap();
    let (code, v) = verify(&b, "forged.json", "cafecafecafecafecafecafecafecafe");
    assert_eq!(code, Some(3));
    assert!(
        failed_checks(&v)
            .iter()
            .any(|f| f.starts_with("log_replay:")),
        "{v:#}"
    );
    // The quote itself is untouched: tpm2_checkquote accepts it, and so
    // does our signature and nonce check; only the log is refused.
    assert!(checkquote(
        &b,
        "ev.json",
        "cafecafecafecafecafecafecafecafe"
    ));
    assert!(
        v["passed"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == "signature")
    );

    // A truncated log.
    let mut short = ev.clone();
    short["measurement_log"].as_array_mut().unwrap().pop();
    std::fs::write(b.p("short.json"), serde_json::to_vec(&short).unwrap()).unwrap();
    let (_, v) = verify(&b, "short.json", "cafecafecafecafecafecafecafecafe");
    assert!(
        failed_checks(&v)
            .iter()
            .any(|f| f.starts_with("log_replay:")),
        "{v:#}"
    );

    // A PCR value that is not the quoted one, or missing.
    let mut pcr = ev.clone();
    pcr["pcrs"]["14"] = Value::String("00".repeat(32));
    std::fs::write(b.p("pcr.json"), serde_json::to_vec(&pcr).unwrap()).unwrap();
    let (_, v) = verify(&b, "pcr.json", "cafecafecafecafecafecafecafecafe");
    assert!(
        failed_checks(&v)
            .iter()
            .any(|f| f.starts_with("pcr_digest:")),
        "{v:#}"
    );
    let mut missing = ev.clone();
    missing["pcrs"].as_object_mut().unwrap().remove("14");
    std::fs::write(b.p("missing.json"), serde_json::to_vec(&missing).unwrap()).unwrap();
    let (code, v) = verify(&b, "missing.json", "cafecafecafecafecafecafecafecafe");
    assert_eq!(code, Some(3));
    assert!(
        failed_checks(&v)
            .iter()
            .any(|f| f.starts_with("pcr_digest:") && f.contains("missing")),
        "{v:#}"
    );

    // An unknown record kind in the log.
    let mut kind = ev;
    kind["measurement_log"][0]["event"]["kind"] = Value::String("golden".into());
    std::fs::write(b.p("kind.json"), serde_json::to_vec(&kind).unwrap()).unwrap();
    let (code, v) = verify(&b, "kind.json", "cafecafecafecafecafecafecafecafe");
    assert_eq!(code, Some(3));
    assert!(
        failed_checks(&v)
            .iter()
            .any(|f| f.starts_with("log:") && f.contains("golden")),
        "{v:#}"
    );
}

#[test]
fn model_swapped_after_boot_is_named() {
    let (tpm, b) = measured();
    // The model is replaced after the boot measurement, and measured again
    // (the re-measurement the daemon performs when a probe reports a change).
    let model = b.p("models/labels.txt");
    std::fs::write(&model, b"cat\nwolf\n").unwrap();
    let out = b.measure();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    quote(&b, "beefbeefbeefbeefbeefbeefbeefbeef", "ev.json");
    let (code, v) = verify(&b, "ev.json", "beefbeefbeefbeefbeefbeefbeefbeef");
    assert_eq!(code, Some(3));
    let f = failed_checks(&v);
    assert!(
        f.iter()
            .any(|f| f.starts_with("model:") && f.contains(&*model.to_string_lossy())),
        "{f:?}"
    );
    // The quote is genuine and tpm2_checkquote says so: the evidence is
    // honest about a dishonest model.
    assert!(checkquote(
        &b,
        "ev.json",
        "beefbeefbeefbeefbeefbeefbeefbeef"
    ));
    assert!(
        v["passed"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == "log_replay"),
        "{v:#}"
    );
    drop(tpm);
}

#[test]
fn bad_verifier_input_is_a_clear_error() {
    let (_tpm, b) = measured();
    quote(&b, "10101010101010101010101010101010", "ev.json");
    let run = |evidence: &str, ak: &str, nonce: &str| {
        guardian(&[
            "verify",
            "--evidence",
            &b.s(evidence),
            "--insecure-tofu",
            "--ak",
            &b.s(ak),
            "--key",
            &b.s("vendor.pub"),
            "--manifest",
            &b.s("manifest.toml"),
            "--nonce",
            nonce,
        ])
    };
    // Malformed bundle: exit 1, the file named.
    std::fs::write(b.p("bad.json"), b"{\"version\": 1, \"quote\": ").unwrap();
    let out = run("bad.json", "ak.pem", "10101010101010101010101010101010");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("malformed evidence bundle") && stderr(&out).contains("bad.json")
    );
    // An AK file that is not a key.
    let out = run(
        "ev.json",
        "manifest.toml",
        "10101010101010101010101010101010",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not an ECC P-256 public key"),
        "{}",
        stderr(&out)
    );
    // A nonce that is not hex, or too short to be fresh.
    let out = run("ev.json", "ak.pem", "xyz");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("bytes of hex"), "{}", stderr(&out));
    let out = run("ev.json", "ak.pem", "00");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("16 to 64 bytes"), "{}", stderr(&out));
    // The wrong AK (another device's): not trusted, signature named.
    let other = Swtpm::start();
    let b2 = Board::new(&other.tcti());
    assert!(b2.measure().status.success());
    quote(&b2, "10101010101010101010101010101010", "other.json");
    std::fs::copy(b2.p("ak.pem"), b.p("other-ak.pem")).unwrap();
    let out = run(
        "ev.json",
        "other-ak.pem",
        "10101010101010101010101010101010",
    );
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stdout).contains("FAIL  signature"));
    assert!(
        !Command::new("tpm2_checkquote")
            .args([
                "-u",
                &b.s("other-ak.pem"),
                "-m",
                &b.s("ev.json.msg"),
                "-s",
                &b.s("ev.json.sig")
            ])
            .args(["-q", "10101010101010101010101010101010", "-g", "sha256"])
            .output()
            .unwrap()
            .status
            .success()
    );
}

// ---------------------------------------------------------------------
// The attacks a device root or a network attacker makes on the evidence.
// ---------------------------------------------------------------------

const N: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";

fn flip_model(b: &Board) {
    let model = b.p("models/classifier.onnx");
    let mut bytes = std::fs::read(&model).unwrap();
    bytes[1000] ^= 0x80;
    std::fs::write(&model, bytes).unwrap();
}

fn read_json(b: &Board, name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(b.p(name)).unwrap()).unwrap()
}

fn write_json(b: &Board, name: &str, v: &Value) {
    std::fs::write(b.p(name), serde_json::to_vec(v).unwrap()).unwrap();
}

/// Recompute a record's digest after editing its event, as an attacker who
/// knows the encoding would.
fn rebind(r: &mut Value) {
    let rec: guardian::evidence::Record = serde_json::from_value(r.clone()).unwrap();
    r["digest"] = Value::String(hex::encode(guardian::evidence::event::digest(
        rec.pcr, &rec.event,
    )));
}

fn has_failure(v: &Value, check: &str) -> bool {
    failed_checks(v)
        .iter()
        .any(|f| f.starts_with(&format!("{check}:")))
}

#[test]
fn attack_the_device_chooses_what_is_quoted() {
    let (_tpm, b) = measured();
    flip_model(&b);
    assert_eq!(b.measure().status.code(), Some(3));
    // The device quotes PCR 16 only, and fixes up the model record.
    let mut cfg = std::fs::read_to_string(b.p("guardian.toml")).unwrap();
    cfg += "[attest]\npcrs = [16]\n";
    std::fs::write(b.p("guardian.toml"), cfg).unwrap();
    quote(&b, N, "ev.json");
    let mut ev = read_json(&b, "ev.json");
    let golden = hex::encode(sha2::Sha256::digest(
        std::fs::read(b.p("models/classifier.onnx")).unwrap(),
    ));
    for r in ev["measurement_log"].as_array_mut().unwrap() {
        if r["event"]["kind"] == "model" {
            r["event"]["sha256"] = Value::String(golden.clone());
            rebind(r);
        }
    }
    write_json(&b, "forged.json", &ev);
    let (code, v) = verify(&b, "forged.json", N);
    assert_eq!(code, Some(3), "{v:#}");
    assert!(has_failure(&v, "selection"), "{v:#}");
}

use sha2::Digest as _;

#[test]
fn attack_only_the_last_run_counts() {
    // A fresh board whose model is bad at boot, restored, then measured
    // again in the same boot.
    let tpm2 = Swtpm::start();
    let b2 = Board::new(&tpm2.tcti());
    let model = b2.p("models/classifier.onnx");
    let good = std::fs::read(&model).unwrap();
    flip_model(&b2);
    assert_eq!(b2.measure().status.code(), Some(3));
    std::fs::write(&model, good).unwrap();
    assert_eq!(b2.measure().status.code(), Some(0));
    quote(&b2, N, "ev.json");
    let (code, v) = verify(&b2, "ev.json", N);
    assert_eq!(code, Some(3), "{v:#}");
    let f = failed_checks(&v);
    assert!(
        f.iter().any(|f| f.starts_with("model:")
            && f.contains("classifier.onnx")
            && f.contains("record 2")),
        "the boot-time mismatch is named with its record: {f:?}"
    );
}

#[test]
fn attack_a_record_relabelled_or_rewritten() {
    let (_tpm, b) = measured();
    flip_model(&b);
    assert_eq!(b.measure().status.code(), Some(3));
    quote(&b, N, "ev.json");
    let ev = read_json(&b, "ev.json");
    let bad = ev["measurement_log"]
        .as_array()
        .unwrap()
        .iter()
        .rposition(|r| {
            r["event"]["kind"] == "model"
                && r["event"]["file"]
                    .as_str()
                    .unwrap()
                    .ends_with("classifier.onnx")
        })
        .unwrap();
    // The bad model's extend, logged as guard state (digest kept).
    let mut relabelled = ev.clone();
    relabelled["measurement_log"][bad]["event"] = serde_json::json!({
        "kind": "guard", "action": "start", "mode": "enforce", "pid": 1, "detail": "x"
    });
    write_json(&b, "relabelled.json", &relabelled);
    let (code, v) = verify(&b, "relabelled.json", N);
    assert_eq!(code, Some(3));
    assert!(has_failure(&v, "log"), "{v:#}");
    // The same with the digest recomputed: the replay no longer matches.
    rebind(&mut relabelled["measurement_log"][bad]);
    write_json(&b, "rebound.json", &relabelled);
    let (code, v) = verify(&b, "rebound.json", N);
    assert_eq!(code, Some(3));
    assert!(has_failure(&v, "log_replay"), "{v:#}");
    // Every other mutation of every record: drop, duplicate, swap with the
    // next, change each string field, mark not extended, void it.
    let n = ev["measurement_log"].as_array().unwrap().len();
    let mut cases = 0;
    for i in 0..n {
        let mut mutations: Vec<Value> = Vec::new();
        let mut drop = ev.clone();
        drop["measurement_log"].as_array_mut().unwrap().remove(i);
        mutations.push(drop);
        let mut dup = ev.clone();
        let r = dup["measurement_log"][i].clone();
        dup["measurement_log"].as_array_mut().unwrap().insert(i, r);
        mutations.push(dup);
        if i + 1 < n {
            let mut swap = ev.clone();
            swap["measurement_log"]
                .as_array_mut()
                .unwrap()
                .swap(i, i + 1);
            mutations.push(swap);
        }
        let fields: Vec<String> = ev["measurement_log"][i]["event"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, v)| v.is_string() && *k != "kind")
            .map(|(k, _)| k.clone())
            .collect();
        for f in fields {
            for rebound in [false, true] {
                let mut m = ev.clone();
                let cur = m["measurement_log"][i]["event"][&f]
                    .as_str()
                    .unwrap()
                    .to_owned();
                m["measurement_log"][i]["event"][&f] = Value::String(format!("{cur}x"));
                if rebound {
                    rebind(&mut m["measurement_log"][i]);
                }
                mutations.push(m);
            }
        }
        if ev["measurement_log"][i]["extended"] == true {
            let mut m = ev.clone();
            m["measurement_log"][i]["extended"] = Value::Bool(false);
            mutations.push(m);
        }
        for m in mutations {
            write_json(&b, "m.json", &m);
            let (code, v) = verify(&b, "m.json", N);
            assert_ne!(code, Some(0), "record {i} mutated and still trusted: {v:#}");
            cases += 1;
        }
    }
    assert!(cases > 20, "only {cases} mutations tried");
}

#[test]
fn a_legitimate_update_stays_trusted_and_a_rollback_does_not() {
    let (_tpm, b) = measured();
    let old_manifest = std::fs::read(b.p("manifest.toml")).unwrap();
    let old_sig = std::fs::read(b.p("manifest.toml.sig")).unwrap();
    let old_model = std::fs::read(b.p("models/classifier.onnx")).unwrap();
    // The vendor ships a new model with a new signed manifest (a higher
    // serial); the board installs both and measures them.
    flip_model(&b);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let out = guardian(&[
        "manifest",
        "create",
        &b.s("models"),
        "--key",
        &b.s("vendor.pem"),
        "-o",
        &b.s("manifest.toml"),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(b.measure().status.code(), Some(0));
    quote(&b, N, "ev.json");
    let (code, v) = verify(&b, "ev.json", N);
    assert_eq!(code, Some(0), "{v:#}");
    assert_eq!(v["manifests"].as_array().unwrap().len(), 2, "{v:#}");
    // The old (signed, genuine) manifest and model put back: a rollback.
    std::fs::write(b.p("manifest.toml"), old_manifest).unwrap();
    std::fs::write(b.p("manifest.toml.sig"), old_sig).unwrap();
    std::fs::write(b.p("models/classifier.onnx"), old_model).unwrap();
    assert_eq!(b.measure().status.code(), Some(0));
    quote(&b, N, "ev2.json");
    let (code, v) = verify(&b, "ev2.json", N);
    assert_eq!(code, Some(3));
    assert!(
        failed_checks(&v)
            .iter()
            .any(|f| f.starts_with("manifest:") && f.contains("rollback")),
        "{v:#}"
    );
    // A manifest signed by a key the verifier does not trust.
    let tpm3 = Swtpm::start();
    let b3 = Board::new(&tpm3.tcti());
    assert!(b3.measure().status.success());
    quote(&b3, N, "ev.json");
    std::fs::copy(b.p("vendor.pub"), b3.p("vendor.pub")).unwrap();
    let (code, v) = verify(&b3, "ev.json", N);
    assert_eq!(code, Some(3));
    assert!(has_failure(&v, "manifest"), "{v:#}");
}

fn verify_with_state(
    b: &Board,
    evidence: &str,
    nonce: &str,
    extra: &[&str],
) -> (Option<i32>, Value) {
    let state = b.s("state.json");
    let mut args = vec!["--state", &state];
    args.extend_from_slice(extra);
    verify_with(b, evidence, nonce, &args)
}

/// What a reboot changes in a bundle that the TPM does not sign: the boot
/// id the device reports (the host test cannot reboot the host).
fn as_new_boot(b: &Board, name: &str, boot: &str) {
    let mut ev = read_json(b, name);
    ev["device"]["boot_id"] = Value::String(boot.into());
    for r in ev["measurement_log"].as_array_mut().unwrap() {
        r["boot_id"] = Value::String(boot.into());
    }
    write_json(b, name, &ev);
}

#[test]
fn state_keeps_a_finding_across_a_reboot_and_sees_resets_go_back() {
    let tpm = Swtpm::start();
    let mut tpm = tpm;
    let b = Board::new(&tpm.tcti());
    let model = b.p("models/classifier.onnx");
    let good = std::fs::read(&model).unwrap();
    flip_model(&b);
    assert_eq!(b.measure().status.code(), Some(3));
    quote(&b, N, "boot1.json");
    let (code, v) = verify_with_state(&b, "boot1.json", N, &[]);
    assert_eq!(code, Some(3), "{v:#}");
    assert!(has_failure(&v, "model"));
    // The board reboots with the model restored: the log is gone with /run,
    // the TPM's PCRs reset, its reset count goes up.
    std::fs::write(&model, good).unwrap();
    tpm.reboot();
    std::fs::remove_file(b.p("measurements.log")).unwrap();
    assert_eq!(b.measure().status.code(), Some(0));
    let n2 = "6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b";
    quote(&b, n2, "boot2.json");
    as_new_boot(&b, "boot2.json", "second-boot");
    // Stateless, the second boot looks clean; with the state it does not.
    let (code, _) = verify(&b, "boot2.json", n2);
    assert_eq!(code, Some(0));
    let (code, v) = verify_with_state(&b, "boot2.json", n2, &[]);
    assert_eq!(code, Some(3), "{v:#}");
    assert!(has_failure(&v, "finding"), "{v:#}");
    assert!(
        v["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().contains("rebooted")),
        "{v:#}"
    );
    // The first boot's bundle again: the TPM's reset count went back.
    let (code, v) = verify_with_state(&b, "boot1.json", N, &[]);
    assert_eq!(code, Some(3));
    assert!(has_failure(&v, "reboot"), "{v:#}");
    // A bundle claiming a new boot without a TPM reset.
    let n3 = "7c7c7c7c7c7c7c7c7c7c7c7c7c7c7c7c";
    quote(&b, n3, "boot3.json");
    as_new_boot(&b, "boot3.json", "third-boot");
    let state_before = std::fs::read(b.p("state.json")).unwrap();
    let (code, v) = verify_with_state(&b, "boot3.json", n3, &[]);
    assert_eq!(code, Some(3));
    assert!(has_failure(&v, "reboot"), "{v:#}");
    // The operator acknowledges; the same boot's next quote is trusted.
    let n4 = "8d8d8d8d8d8d8d8d8d8d8d8d8d8d8d8d";
    quote(&b, n4, "boot2b.json");
    as_new_boot(&b, "boot2b.json", "second-boot");
    let (code, v) = verify_with_state(&b, "boot2b.json", n4, &["--ack", "all"]);
    assert_eq!(code, Some(0), "{v:#}");
    // Bad input leaves the state alone.
    let state_now = std::fs::read(b.p("state.json")).unwrap();
    std::fs::write(b.p("junk.json"), b"{").unwrap();
    let (code, _) = (
        guardian(&[
            "verify",
            "--evidence",
            &b.s("junk.json"),
            "--insecure-tofu",
            "--ak",
            &b.s("ak.pem"),
            "--key",
            &b.s("vendor.pub"),
            "--nonce",
            n4,
            "--state",
            &b.s("state.json"),
        ])
        .status
        .code(),
        (),
    );
    assert_eq!(code, Some(1));
    assert_eq!(std::fs::read(b.p("state.json")).unwrap(), state_now);
    assert_ne!(state_before, state_now);
}

#[test]
fn challenge_nonces_are_single_use() {
    let (_tpm, b) = measured();
    quote(&b, N, "ev.json");
    let out = guardian(&[
        "challenge",
        "--state",
        &b.s("state.json"),
        "--insecure-tofu",
        "--ak",
        &b.s("ak.pem"),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let nonce = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(nonce.len(), 64);
    quote(&b, &nonce, "fresh.json");
    let run = || {
        guardian(&[
            "verify",
            "--evidence",
            &b.s("fresh.json"),
            "--insecure-tofu",
            "--ak",
            &b.s("ak.pem"),
            "--key",
            &b.s("vendor.pub"),
            "--state",
            &b.s("state.json"),
        ])
    };
    assert_eq!(run().status.code(), Some(0), "{}", stderr(&run()));
    // Used: the same bundle again has no nonce to match.
    let again = run();
    assert_eq!(again.status.code(), Some(1), "{}", stderr(&again));
    assert!(stderr(&again).contains("no nonce"), "{}", stderr(&again));
}
