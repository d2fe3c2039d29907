//! `guardian quote` and `guardian verify` against a real swtpm, with
//! `tpm2_checkquote` (tpm2-tools) as the independent judge of the parts it
//! can check: the signature with our exported AK public key, and the nonce.

// Tests panic on purpose: the failing line is the report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

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
    let out = guardian(&[
        "verify",
        "--evidence",
        &b.s(evidence),
        "--ak",
        &b.s("ak.pem"),
        "--key",
        &b.s("vendor.pub"),
        "--manifest",
        &b.s("manifest.toml"),
        "--nonce",
        nonce,
        "--json",
    ]);
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
