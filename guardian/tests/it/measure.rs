//! `guardian measure` against a real software TPM (swtpm), checked with
//! the tools a verifier would use: `tpm2_pcrread` for the PCR and
//! `tpm2_eventlog` for our binary event-log export. Each test starts its own
//! swtpm on a free port, so they run in parallel.

// Tests panic on purpose: the failing line is the report.
use crate::common;

use std::process::Command;

use common::{Board, Swtpm, expected_pcr, guardian, openssl, stderr};
use sha2::{Digest as _, Sha256};

#[test]
fn measure_matches_pcrread_and_tpm2_eventlog() {
    let tpm = Swtpm::start();
    let b = Board::new(&tpm.tcti());
    assert_eq!(tpm.pcrread(14), "0".repeat(64));
    let out = b.measure();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(out.stdout.is_empty(), "no events expected");
    // swtpm is recognised as a software TPM, loudly.
    assert!(
        stderr(&out).contains("INSECURE: the TPM at"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("software TPM"), "{}", stderr(&out));

    let pcr = tpm.pcrread(14);
    // Manifest first, then the models in manifest (sorted path) order.
    let want = expected_pcr(
        &b.p("measurements.log"),
        &[
            &b.p("manifest.toml"),
            &b.p("models/classifier.onnx"),
            &b.p("models/labels.txt"),
        ],
    );
    assert_eq!(pcr, want);

    // Our replay agrees with the TPM.
    let out = guardian(&["log", "replay", "-c", &b.s("guardian.toml")]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&pcr));

    // tpm2_eventlog parses our TCG export and replays to the same value.
    let out = guardian(&[
        "log",
        "export",
        "-c",
        &b.s("guardian.toml"),
        "--format",
        "tcg",
        "-o",
        &b.s("events.bin"),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = Command::new("tpm2_eventlog")
        .arg(b.p("events.bin"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let replayed = text
        .split("pcrs:")
        .nth(1)
        .and_then(|t| t.lines().find_map(|l| l.trim().strip_prefix("14 : 0x")))
        .unwrap_or_else(|| panic!("no PCR 14 replay in tpm2_eventlog output:\n{text}"));
    assert_eq!(replayed.trim().to_lowercase(), pcr);
    assert!(
        text.contains("classifier.onnx"),
        "event data names the file"
    );

    // CEL export: one JSON record per extend.
    let out = guardian(&[
        "log",
        "export",
        "-c",
        &b.s("guardian.toml"),
        "--format",
        "cel",
    ]);
    let cel: Vec<serde_json::Value> = out
        .stdout
        .split(|&c| c == 0x1e)
        .filter(|r| !r.is_empty())
        .map(|r| serde_json::from_slice(r).unwrap())
        .collect();
    assert_eq!(cel.len(), 3);
    assert_eq!(cel[2]["pcr"], 14);

    // A restart of the step in the same boot does not extend again, and
    // says so in the log.
    let out = b.measure();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(tpm.pcrread(14), pcr);
    let log = std::fs::read_to_string(b.p("measurements.log")).unwrap();
    assert!(log.contains("not extended again"), "{log}");
    assert!(stderr(&out).contains("re-run"), "{}", stderr(&out));
}

#[test]
fn flipped_byte_fails_names_the_file_and_changes_the_pcr() {
    let good_pcr = {
        let tpm = Swtpm::start();
        let b = Board::new(&tpm.tcti());
        assert!(b.measure().status.success());
        tpm.pcrread(14)
    };
    let tpm = Swtpm::start();
    let b = Board::new(&tpm.tcti());
    let model = b.p("models/classifier.onnx");
    let mut bytes = std::fs::read(&model).unwrap();
    bytes[123_456] ^= 0x01;
    std::fs::write(&model, bytes).unwrap();

    let out = b.measure();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["event"], "model_mismatch");
    assert_eq!(events[0]["file"], model.display().to_string());
    // The PCR reflects the file as it is, and differs from the good run's.
    let pcr = tpm.pcrread(14);
    assert_ne!(pcr, good_pcr);
    assert_eq!(
        pcr,
        expected_pcr(
            &b.p("measurements.log"),
            &[&b.p("manifest.toml"), &model, &b.p("models/labels.txt")]
        )
    );
    assert_eq!(
        events[0]["actual"],
        hex::encode(Sha256::digest(std::fs::read(&model).unwrap()))
    );
}

/// Every bad input: exit 1, one error line naming the problem, PCR 14
/// untouched and no measurement record written.
#[test]
fn bad_input_extends_nothing() {
    let tpm = Swtpm::start();
    let check = |b: &Board, needle: &str| {
        let before = b.log_records();
        let out = b.measure();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{needle}: {err}");
        let errors: Vec<&str> = err
            .lines()
            .filter(|l| l.starts_with("guardian: error:"))
            .collect();
        assert_eq!(errors.len(), 1, "{needle}: {err}");
        assert!(
            errors[0].contains(needle),
            "{needle:?} not in {:?}",
            errors[0]
        );
        assert_eq!(
            tpm.pcrread(14),
            "0".repeat(64),
            "{needle}: PCR was extended"
        );
        assert_eq!(b.log_records(), before, "{needle}: log written");
    };

    // Missing model file.
    let b = Board::new(&tpm.tcti());
    std::fs::remove_file(b.p("models/labels.txt")).unwrap();
    check(&b, "labels.txt");

    // Unreadable model (a directory where the file should be).
    let b = Board::new(&tpm.tcti());
    std::fs::remove_file(b.p("models/labels.txt")).unwrap();
    std::fs::create_dir(b.p("models/labels.txt")).unwrap();
    check(&b, "not a regular file");

    // A digest that is not hex, in a correctly signed manifest.
    let b = Board::new(&tpm.tcti());
    let m = std::fs::read_to_string(b.p("manifest.toml")).unwrap();
    let digest = m
        .lines()
        .find_map(|l| l.strip_prefix("sha256 = "))
        .unwrap()
        .trim_matches('"')
        .to_owned();
    std::fs::write(
        b.p("manifest.toml"),
        m.replace(&digest, &digest.to_uppercase()),
    )
    .unwrap();
    b.sign_with("vendor.pem");
    check(&b, "lowercase hex");

    // Unknown / forbidden PCR index, signed.
    for (pcr, needle) in [("16", "debug PCR"), ("42", "does not exist")] {
        let b = Board::new(&tpm.tcti());
        let m = std::fs::read_to_string(b.p("manifest.toml")).unwrap();
        std::fs::write(
            b.p("manifest.toml"),
            m.replace("pcr = 14", &format!("pcr = {pcr}")),
        )
        .unwrap();
        b.sign_with("vendor.pem");
        check(&b, needle);
    }

    // Signed by a key that is not trusted.
    let b = Board::new(&tpm.tcti());
    openssl(&[
        "genpkey",
        "-algorithm",
        "ed25519",
        "-out",
        &b.s("attacker.pem"),
    ]);
    b.sign_with("attacker.pem");
    check(&b, "not valid for any trusted key");

    // Unsigned.
    let b = Board::new(&tpm.tcti());
    std::fs::remove_file(b.p("manifest.toml.sig")).unwrap();
    check(&b, "is not signed");

    // Corrupt log (a damaged record in the middle).
    let b = Board::new(&tpm.tcti());
    let rec = r#"{"seq":0,"boot_id":"x","time":"t","kind":"model","pcr":14,"alg":"sha256","digest":"00","extended":false,"description":"d"}"#;
    std::fs::write(b.p("measurements.log"), format!("{rec}\n{rec}\n")).unwrap();
    check(&b, "corrupt at line 1");

    // A log truncated at a record boundary: it no longer explains the PCR.
    // (A fresh TPM for this one: it needs an extended PCR.)
    let tpm2 = Swtpm::start();
    let b = Board::new(&tpm2.tcti());
    assert!(b.measure().status.success());
    let pcr = tpm2.pcrread(14);
    let log = std::fs::read_to_string(b.p("measurements.log")).unwrap();
    let first: String = log.lines().take(1).map(|l| format!("{l}\n")).collect();
    std::fs::write(b.p("measurements.log"), first).unwrap();
    let out = b.measure();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("does not explain PCR 14"),
        "{}",
        stderr(&out)
    );
    assert_eq!(tpm2.pcrread(14), pcr, "nothing more extended");

    // TPM absent.
    let b = Board::new("swtpm:host=127.0.0.1,port=1");
    let out = b.measure();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no TPM reachable"),
        "{}",
        stderr(&out)
    );
    assert_eq!(b.log_records(), 0);
}

#[test]
fn no_tpm_mode_logs_and_warns() {
    let b = Board::new("device:/dev/does-not-exist");
    let out = guardian(&["measure", "--no-tpm", "-c", &b.s("guardian.toml")]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("INSECURE: --no-tpm"),
        "{}",
        stderr(&out)
    );
    let log = std::fs::read_to_string(b.p("measurements.log")).unwrap();
    assert_eq!(log.lines().count(), 3);
    assert!(log.contains("\"extended\":false"));
}

/// cosign 3 writes only Sigstore bundles (`cosign sign-blob --key K
/// --bundle F`): a manifest whose `.sig` is such a bundle (no tlog entry),
/// around an openssl ECDSA P-256 signature, is measured like one with a raw
/// signature; a bundle whose digest is another file's is refused.
#[test]
fn cosign_keyed_bundle_signs_a_manifest() {
    use base64::Engine as _;
    let tpm = Swtpm::start();
    let b = common::Board::new(&tpm.tcti());
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        &b.s("cosign.key"),
    ]);
    openssl(&[
        "pkey",
        "-in",
        &b.s("cosign.key"),
        "-pubout",
        "-out",
        &b.s("cosign.pub"),
    ]);
    openssl(&[
        "dgst",
        "-sha256",
        "-sign",
        &b.s("cosign.key"),
        "-out",
        &b.s("raw.sig"),
        &b.s("manifest.toml"),
    ]);
    let b64 = base64::engine::general_purpose::STANDARD;
    let bundle = |file: &str| {
        let digest = Sha256::digest(std::fs::read(b.p(file)).unwrap());
        serde_json::json!({
            "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
            "verificationMaterial": {"publicKey": {"hint": "bm90IHRydXN0ZWQ="}, "tlogEntries": []},
            "messageSignature": {
                "messageDigest": {"algorithm": "SHA2_256", "digest": b64.encode(digest)},
                "signature": b64.encode(std::fs::read(b.p("raw.sig")).unwrap())
            }
        })
        .to_string()
    };
    let toml = std::fs::read_to_string(b.p("guardian.toml")).unwrap();
    std::fs::write(
        b.p("guardian.toml"),
        toml.replace("\"vendor.pub\"", "\"cosign.pub\""),
    )
    .unwrap();

    std::fs::write(b.p("manifest.toml.sig"), bundle("guardian.toml")).unwrap();
    let out = b.measure();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not valid for any trusted key"),
        "{}",
        stderr(&out)
    );
    assert_eq!(tpm.pcrread(14), "0".repeat(64));

    std::fs::write(b.p("manifest.toml.sig"), bundle("manifest.toml")).unwrap();
    let out = b.measure();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = guardian(&[
        "manifest",
        "verify",
        &b.s("manifest.toml"),
        "--key",
        &b.s("cosign.pub"),
        "--files",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // The verifier checks the bundle in the manifest record with its key.
    let nonce = "a1b2c3d4e5f60718a1b2c3d4e5f60718";
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
    for (key, want) in [("cosign.pub", Some(0)), ("vendor.pub", Some(3))] {
        let out = guardian(&[
            "verify",
            "--evidence",
            &b.s("ev.json"),
            "--insecure-tofu",
            "--ak",
            &b.s("ak.pem"),
            "--key",
            &b.s(key),
            "--nonce",
            nonce,
        ]);
        assert_eq!(
            out.status.code(),
            want,
            "{key}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            stderr(&out)
        );
    }
}
