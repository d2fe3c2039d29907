//! The real `inference-service` binary against the committed model, its
//! test inputs and its documented attack (`model/attack.json`).

// Test helpers fail loudly, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use serde_json::Value;
use sha2::{Digest as _, Sha256};

fn model_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("model")
}

fn json(name: &str) -> Value {
    let text = std::fs::read_to_string(model_dir().join(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Run the service on `model`, feed it `stdin`, wait for it to exit.
fn run(model: &Path, stdin: &str) -> Output {
    run_with(model, &[], stdin)
}

/// The same with more arguments.
fn run_with(model: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_inference-service"))
        .arg("--model")
        .arg(model)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A service that exits early closes its stdin: ignore that write error,
    // the exit status and stderr tell the story.
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    child.wait_with_output().unwrap()
}

/// The test inputs as request lines, and their expected classes.
fn test_inputs() -> (String, Vec<u64>) {
    let doc = json("test-inputs.json");
    let inputs = doc["inputs"].as_array().unwrap();
    let mut requests = String::new();
    let mut classes = Vec::new();
    for (i, input) in inputs.iter().enumerate() {
        assert_eq!(input["id"], i as u64, "ids are positions");
        requests += &input["features"].to_string();
        requests += "\n";
        classes.push(input["class"].as_u64().unwrap());
    }
    assert!(classes.len() >= 3);
    (requests, classes)
}

/// Each response line's class, failing on any error line.
fn classes(out: &Output) -> Vec<u64> {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v["class"]
                .as_u64()
                .unwrap_or_else(|| panic!("not a prediction: {l}"))
        })
        .collect()
}

/// A copy of the committed model in a temp dir, named like the original
/// so the documented command applies to it as written.
fn model_copy() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("classifier.onnx");
    std::fs::copy(model_dir().join("classifier.onnx"), &path).unwrap();
    (dir, path)
}

fn hex_byte(v: &Value) -> u8 {
    u8::from_str_radix(v.as_str().unwrap(), 16).unwrap()
}

#[test]
fn committed_files_agree_on_the_model_digest() {
    let model = std::fs::read(model_dir().join("classifier.onnx")).unwrap();
    let digest = sha256_hex(&model);
    let sha_file = std::fs::read_to_string(model_dir().join("classifier.onnx.sha256")).unwrap();
    assert_eq!(sha_file, format!("{digest}  classifier.onnx\n"));
    assert_eq!(json("test-inputs.json")["model_sha256"], digest.as_str());
    assert_eq!(json("attack.json")["model_sha256"], digest.as_str());
}

#[test]
fn every_test_input_predicts_its_expected_class() {
    let (requests, expected) = test_inputs();
    let out = run(&model_dir().join("classifier.onnx"), &requests);
    assert_eq!(classes(&out), expected);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains(&sha256_hex(
            &std::fs::read(model_dir().join("classifier.onnx")).unwrap()
        )),
        "the start-up line names the model's digest: {log}"
    );
    assert_eq!(
        log.lines().filter(|l| l.contains(": class ")).count(),
        expected.len(),
        "one log line per prediction: {log}"
    );
}

#[test]
fn the_documented_attack_changes_the_victims_class_and_only_that() {
    let attack = json("attack.json");
    let offset = attack["offset"].as_u64().unwrap() as usize;
    let victim = attack["victim_input"].as_u64().unwrap() as usize;
    let (requests, expected) = test_inputs();
    assert_eq!(expected[victim], attack["class_before"].as_u64().unwrap());

    let (_dir, path) = model_copy();
    let mut bytes = std::fs::read(&path).unwrap();
    // The offset lies inside the named initializer and holds the byte the
    // attack expects to change.
    let start = attack["initializer_offset"].as_u64().unwrap() as usize;
    let len = attack["initializer_bytes"].as_u64().unwrap() as usize;
    assert!((start..start + len).contains(&offset));
    assert_eq!(bytes[offset], hex_byte(&attack["original_hex"]));
    bytes[offset] = hex_byte(&attack["replacement_hex"]);
    std::fs::write(&path, &bytes).unwrap();

    let got = classes(&run(&path, &requests));
    let mut want = expected.clone();
    want[victim] = attack["class_after"].as_u64().unwrap();
    assert_ne!(want, expected, "the attack must change something");
    assert_eq!(got, want);
}

#[test]
fn the_documented_dd_command_flips_exactly_that_byte() {
    let attack = json("attack.json");
    let (dir, path) = model_copy();
    let status = Command::new("sh")
        .arg("-c")
        .arg(attack["command"].as_str().unwrap())
        .current_dir(dir.path())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let before = std::fs::read(model_dir().join("classifier.onnx")).unwrap();
    let after = std::fs::read(&path).unwrap();
    assert_eq!(before.len(), after.len());
    let diff: Vec<usize> = (0..before.len())
        .filter(|&i| before[i] != after[i])
        .collect();
    let offset = attack["offset"].as_u64().unwrap() as usize;
    assert_eq!(diff, vec![offset]);
    assert_eq!(after[offset], hex_byte(&attack["replacement_hex"]));
}

#[test]
fn malformed_requests_get_an_error_line_and_the_service_keeps_going() {
    let (requests, expected) = test_inputs();
    let first = requests.lines().next().unwrap();
    let bad = [
        "not json",
        "[1, 2, 3]",
        "[1, 2, 3, \"four\"]",
        "{\"features\": [1, 2, 3, 4]}",
        "",
        "[1e39, 0, 0, 0]",
        "[1, 2, 3, 4",
    ];
    let input = format!("{}\n{first}\n", bad.join("\n"));
    let out = run(&model_dir().join("classifier.onnx"), &input);
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    let replies: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(replies.len(), bad.len() + 1, "{stdout}");
    for (r, b) in replies.iter().zip(bad) {
        let e = r["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{b:?} got {r}"));
        assert!(!e.is_empty());
        assert!(r.get("class").is_none());
    }
    assert_eq!(replies[1]["error"], "expected 4 features, got 3");
    assert_eq!(replies[bad.len()]["class"], expected[0]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(log.matches(": error: ").count(), bad.len(), "{log}");
}

#[test]
fn a_missing_model_is_one_line_naming_the_file_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-model.onnx");
    let out = run(&missing, "[1, 2, 3, 4]\n");
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(&missing.display().to_string()), "{err}");
    assert!(err.contains("No such file"), "{err}");
}

#[test]
fn a_model_that_is_not_onnx_is_one_line_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("truncated.onnx");
    let model = std::fs::read(model_dir().join("classifier.onnx")).unwrap();
    std::fs::write(&path, &model[..model.len() / 2]).unwrap();
    let out = run(&path, "");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("cannot load model"), "{err}");
    assert!(err.contains(&path.display().to_string()), "{err}");
}

/// The committed model, reporting to `addr`, fed `stdin`.
fn run_reporting(addr: std::net::SocketAddr, stdin: &str) -> Output {
    let addr = addr.to_string();
    run_with(
        &model_dir().join("classifier.onnx"),
        &["--report-to", &addr],
        stdin,
    )
}

#[test]
fn report_to_sends_one_summary_line_and_a_refused_collector_is_not_fatal() {
    let (requests, expected) = test_inputs();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let collector = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut s, &mut text).unwrap();
        text
    });
    let out = run_reporting(addr, &requests);
    assert_eq!(classes(&out), expected);
    let summary: Value = serde_json::from_str(collector.join().unwrap().trim()).unwrap();
    assert_eq!(summary["predictions"], expected.len() as u64);
    assert_eq!(summary["errors"], 0);
    assert_eq!(
        summary["model_sha256"],
        json("test-inputs.json")["model_sha256"]
    );

    // Nobody listening: logged, and the predictions still come.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let out = run_reporting(closed, &requests);
    assert_eq!(classes(&out), expected);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cannot report to {closed}")), "{err}");
}
