//! OpenSSF model signatures against the real `model_signing` CLI (PyPI
//! `model-signing`, installed by `cross/setup.sh`): directories signed with
//! a key and with a certificate chain made here with openssl, measured by
//! `guardian measure` into a real swtpm, judged by `guardian verify`,
//! checked by the library, and imported into a guardian manifest. The bad
//! cases (a tampered file, a missing file, an extra file, a symlink, an
//! untrusted key or CA, a truncated bundle) each fail naming the file and
//! the problem.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use guardian::signing::TrustedKey;
use guardian_attest::model_sig::{self, ModelSigError};
use serde_json::Value;

use crate::common::{Swtpm, expected_pcr, guardian, openssl, stderr};

/// `model_signing`: `GUARDIAN_MODEL_SIGNING`, else cross/setup.sh's venv,
/// else PATH. Missing, the test fails saying so: it must not pass by not
/// running.
fn model_signing_cli() -> PathBuf {
    if let Ok(p) = std::env::var("GUARDIAN_MODEL_SIGNING") {
        return PathBuf::from(p);
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let venv = Path::new(&home).join(".cache/guardian/model-signing-venv/bin/model_signing");
    if venv.exists() {
        return venv;
    }
    if let Ok(out) = Command::new("sh")
        .args(["-c", "command -v model_signing"])
        .output()
        && out.status.success()
    {
        return PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    }
    panic!(
        "model_signing NOT FOUND: these tests need the real OpenSSF model signing CLI. \
         Run cross/setup.sh (installs model-signing into ~/.cache/guardian/model-signing-venv) \
         or set GUARDIAN_MODEL_SIGNING."
    );
}

fn model_signing(args: &[&str]) -> Output {
    let out = Command::new(model_signing_cli())
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "model_signing {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    out
}

/// A model directory, an EC P-256 signer key, and a config measuring the
/// directory against its model signature.
struct Scene {
    dir: tempfile::TempDir,
}

impl Scene {
    fn new(tcti: &str) -> Self {
        let s = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::create_dir_all(s.p("models/tokenizer")).unwrap();
        std::fs::write(s.p("models/model.onnx"), vec![7u8; 300_000]).unwrap();
        std::fs::write(s.p("models/tokenizer/vocab.txt"), b"cat\ndog\n").unwrap();
        s.ec_key("signer");
        std::fs::write(
            s.p("guardian.toml"),
            format!(
                "[measure]\nmodel_signature = \"model.sig\"\nmodel_dir = \"models\"\n\
                 trusted_keys = [\"signer.pub\"]\nlog = \"measurements.log\"\ntcti = \"{tcti}\"\n"
            ),
        )
        .unwrap();
        s
    }
    fn p(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn s(&self, name: &str) -> String {
        self.p(name).display().to_string()
    }
    /// `NAME.pem` (private) and `NAME.pub`, EC P-256.
    fn ec_key(&self, name: &str) {
        openssl(&[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            &self.s(&format!("{name}.pem")),
        ]);
        openssl(&[
            "ec",
            "-in",
            &self.s(&format!("{name}.pem")),
            "-pubout",
            "-out",
            &self.s(&format!("{name}.pub")),
        ]);
    }
    /// `model_signing sign key models` with `NAME.pem`, to model.sig.
    fn sign_key(&self, name: &str) {
        model_signing(&[
            "sign",
            "key",
            &self.s("models"),
            "--private_key",
            &self.s(&format!("{name}.pem")),
            "--signature",
            &self.s("model.sig"),
        ]);
    }
    fn measure(&self) -> Output {
        guardian(&["measure", "-c", &self.s("guardian.toml")])
    }
    fn log_records(&self) -> usize {
        std::fs::read_to_string(self.p("measurements.log"))
            .unwrap_or_default()
            .lines()
            .count()
    }
    fn trusted(&self, names: &[&str]) -> Vec<TrustedKey> {
        names
            .iter()
            .map(|n| TrustedKey::load(&self.p(n)).unwrap())
            .collect()
    }
    /// The library's whole check of the directory.
    fn check(&self, trusted: &[&str]) -> Result<Vec<model_sig::FileDigest>, ModelSigError> {
        let bundle = self.p("model.sig");
        let v = model_sig::load(&bundle, &self.trusted(trusted))?;
        model_sig::check_dir(&self.p("models"), &v, &bundle)
    }

    /// A CA hierarchy made with openssl: `ROOT.pem` (self-signed root),
    /// `ROOT-int.pem` (intermediate) and `ROOT-leaf.pem` (the signer's
    /// code-signing certificate), with their keys.
    fn ca(&self, root: &str) {
        let k = |n: &str| self.s(&format!("{root}{n}.key"));
        let c = |n: &str| self.s(&format!("{root}{n}.pem"));
        for n in ["", "-int", "-leaf"] {
            openssl(&[
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
                &k(n),
            ]);
        }
        openssl(&[
            "req",
            "-x509",
            "-new",
            "-key",
            &k(""),
            "-subj",
            &format!("/CN={root} root"),
            "-days",
            "30",
            "-out",
            &c(""),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ]);
        std::fs::write(
            self.p("ca.ext"),
            "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign\n",
        )
        .unwrap();
        std::fs::write(
            self.p("leaf.ext"),
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=codeSigning\n",
        )
        .unwrap();
        for (n, issuer, subj, ext) in [
            ("-int", "", format!("/CN={root} intermediate"), "ca.ext"),
            ("-leaf", "-int", format!("/CN={root} signer"), "leaf.ext"),
        ] {
            let csr = self.s(&format!("{root}{n}.csr"));
            openssl(&["req", "-new", "-key", &k(n), "-subj", &subj, "-out", &csr]);
            openssl(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &c(issuer),
                "-CAkey",
                &k(issuer),
                "-CAcreateserial",
                "-days",
                "30",
                "-out",
                &c(n),
                "-extfile",
                &self.s(ext),
            ]);
        }
    }

    /// `model_signing sign certificate models` with ROOT's leaf, the chain
    /// (intermediate and root) in the bundle.
    fn sign_certificate(&self, root: &str) {
        let c = |n: &str| self.s(&format!("{root}{n}.pem"));
        model_signing(&[
            "sign",
            "certificate",
            &self.s("models"),
            "--private_key",
            &self.s(&format!("{root}-leaf.key")),
            "--signing_certificate",
            &c("-leaf"),
            "--certificate_chain",
            &c("-int"),
            "--certificate_chain",
            &c(""),
            "--signature",
            &self.s("model.sig"),
        ]);
    }
}

/// One error line, exit 1, nothing in the PCR or the log.
fn refused(s: &Scene, tpm: &Swtpm, needles: &[&str]) {
    let before = s.log_records();
    let out = s.measure();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{needles:?}: {err}");
    let errors: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("guardian: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{needles:?}: {err}");
    for n in needles {
        assert!(errors[0].contains(n), "{n:?} not in {:?}", errors[0]);
    }
    assert!(errors[0].contains("nothing was extended"), "{}", errors[0]);
    assert_eq!(tpm.pcrread(14), "0".repeat(64), "{needles:?}: PCR extended");
    assert_eq!(s.log_records(), before, "{needles:?}: log written");
}

fn quote_and_verify(s: &Scene, keys: &[&str]) -> (Option<i32>, Value) {
    let nonce = "a1b2c3d4e5f60718a1b2c3d4e5f60718";
    let out = guardian(&[
        "quote",
        "-c",
        &s.s("guardian.toml"),
        "--nonce",
        nonce,
        "-o",
        &s.s("ev.json"),
        "--ak-out",
        &s.s("ak.pem"),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (ev, ak) = (s.s("ev.json"), s.s("ak.pem"));
    let mut args = vec![
        "verify",
        "--evidence",
        &ev,
        "--insecure-tofu",
        "--ak",
        &ak,
        "--nonce",
        nonce,
        "--json",
    ];
    let keys: Vec<String> = keys.iter().map(|k| s.s(k)).collect();
    for k in &keys {
        args.extend(["--key", k]);
    }
    let out = guardian(&args);
    let v = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("no verdict: {}", stderr(&out)));
    (out.status.code(), v)
}

#[test]
fn key_signed_directory_is_measured_and_verified() {
    let tpm = Swtpm::start();
    let s = Scene::new(&tpm.tcti());
    s.sign_key("signer");
    // The library agrees with `model_signing verify`.
    let files = s.check(&["signer.pub"]).unwrap();
    assert_eq!(files.len(), 2);
    model_signing(&[
        "verify",
        "key",
        &s.s("models"),
        "--signature",
        &s.s("model.sig"),
        "--public_key",
        &s.s("signer.pub"),
    ]);

    let out = s.measure();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // The bundle first, then each file in the statement's (sorted) order.
    let want = expected_pcr(
        &s.p("measurements.log"),
        &[
            &s.p("model.sig"),
            &s.p("models/model.onnx"),
            &s.p("models/tokenizer/vocab.txt"),
        ],
    );
    assert_eq!(tpm.pcrread(14), want);
    let log = std::fs::read_to_string(s.p("measurements.log")).unwrap();
    let first: Value = log
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|r| r["event"]["kind"] == "manifest")
        .unwrap();
    let signer = TrustedKey::load(&s.p("signer.pub")).unwrap().fingerprint;
    assert_eq!(first["event"]["signer"], signer.as_str());
    assert_eq!(first["event"]["model_dir"], s.s("models").as_str());
    // The status summary judges the files against the statement.
    let summary = guardian::status::MeasuredBoot::from_log(&s.p("measurements.log"));
    assert_eq!(summary.models_extended, 2, "{summary:?}");
    assert!(summary.mismatches.is_empty(), "{summary:?}");
    // `guardian log replay` knows the PCR without a manifest.
    let out = guardian(&["log", "replay", "-c", &s.s("guardian.toml")]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    // The verifier judges it with its own key, not the device's word.
    let (code, v) = quote_and_verify(&s, &["signer.pub"]);
    assert_eq!(code, Some(0), "{v:#}");
    assert_eq!(v["trusted"], true, "{v:#}");
    s.ec_key("other");
    let (code, v) = quote_and_verify(&s, &["other.pub"]);
    assert_ne!(code, Some(0), "{v:#}");
    assert!(
        v.to_string()
            .contains("is not signed by a key the verifier trusts"),
        "{v:#}"
    );
}

#[test]
fn certificate_signed_directory_chains_to_the_configured_ca() {
    let tpm = Swtpm::start();
    let s = Scene::new(&tpm.tcti());
    s.ca("vendor");
    s.sign_certificate("vendor");
    let files = s.check(&["vendor.pem"]).unwrap();
    assert_eq!(files.len(), 2);
    // The intermediate alone is not a trust anchor, nor is a key.
    let e = s.check(&["vendor-int.pem"]).unwrap_err().to_string();
    assert!(e.contains("chain is not trusted"), "{e}");
    let e = s.check(&["signer.pub"]).unwrap_err().to_string();
    assert!(e.contains("no CA certificate is configured"), "{e}");
    // Another CA's hierarchy, its own root in the bundle: refused.
    s.ca("attacker");
    s.sign_certificate("attacker");
    let e = s.check(&["vendor.pem"]).unwrap_err().to_string();
    assert!(
        e.contains("model.sig") && e.contains("chain is not trusted"),
        "{e}"
    );
    refused(&s, &tpm, &["model.sig", "not signed by a trusted key"]);

    s.sign_certificate("vendor");
    let toml = std::fs::read_to_string(s.p("guardian.toml")).unwrap();
    std::fs::write(
        s.p("guardian.toml"),
        toml.replace("\"signer.pub\"", "\"vendor.pem\""),
    )
    .unwrap();
    let out = s.measure();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let (code, v) = quote_and_verify(&s, &["vendor.pem"]);
    assert_eq!(code, Some(0), "{v:#}");
}

#[test]
fn tampered_file_is_measured_as_it_is_and_named() {
    let tpm = Swtpm::start();
    let s = Scene::new(&tpm.tcti());
    s.sign_key("signer");
    let mut bytes = std::fs::read(s.p("models/model.onnx")).unwrap();
    bytes[1000] ^= 1;
    std::fs::write(s.p("models/model.onnx"), bytes).unwrap();
    let e = s.check(&["signer.pub"]).unwrap_err().to_string();
    assert!(
        e.contains("models/model.onnx") && e.contains("model.sig signs"),
        "{e}"
    );
    // As for a manifest: exit 3, extended as it is (the PCR shows what is
    // on the disk), one mismatch event naming the file.
    let out = s.measure();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let event: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(event["event"], "model_mismatch");
    assert_eq!(event["file"], s.s("models/model.onnx").as_str());
    assert_ne!(tpm.pcrread(14), "0".repeat(64));
    let summary = guardian::status::MeasuredBoot::from_log(&s.p("measurements.log"));
    assert_eq!(
        summary.mismatches,
        vec![s.s("models/model.onnx")],
        "{summary:?}"
    );
    let (code, v) = quote_and_verify(&s, &["signer.pub"]);
    assert_ne!(code, Some(0), "{v:#}");
    assert!(v.to_string().contains("model.onnx"), "{v:#}");
}

#[test]
fn bad_directories_and_bundles_extend_nothing() {
    let tpm = Swtpm::start();

    // A missing file.
    let s = Scene::new(&tpm.tcti());
    s.sign_key("signer");
    std::fs::remove_file(s.p("models/tokenizer/vocab.txt")).unwrap();
    let e = s.check(&["signer.pub"]).unwrap_err().to_string();
    assert!(
        e.contains("tokenizer/vocab.txt") && e.contains("missing"),
        "{e}"
    );
    refused(&s, &tpm, &["tokenizer/vocab.txt", "missing"]);

    // An extra file.
    let s = Scene::new(&tpm.tcti());
    s.sign_key("signer");
    std::fs::write(s.p("models/tokenizer/extra.bin"), b"x").unwrap();
    let e = s.check(&["signer.pub"]).unwrap_err().to_string();
    assert!(
        e.contains("tokenizer/extra.bin") && e.contains("extra"),
        "{e}"
    );
    refused(&s, &tpm, &["tokenizer/extra.bin", "not signed in"]);
    // ... but what the signer ignored (.git) is not extra.
    std::fs::remove_file(s.p("models/tokenizer/extra.bin")).unwrap();
    std::fs::create_dir(s.p("models/.git")).unwrap();
    std::fs::write(s.p("models/.git/HEAD"), b"ref").unwrap();
    s.check(&["signer.pub"]).unwrap();

    // A symlink, even to a signed file.
    let s = Scene::new(&tpm.tcti());
    s.sign_key("signer");
    std::os::unix::fs::symlink(s.p("models/model.onnx"), s.p("models/link.onnx")).unwrap();
    refused(&s, &tpm, &["link.onnx", "a symlink"]);

    // Signed by a key that is not trusted (its hint in the bundle is ignored).
    let s = Scene::new(&tpm.tcti());
    s.ec_key("attacker");
    s.sign_key("attacker");
    let e = s.check(&["signer.pub"]).unwrap_err().to_string();
    assert!(e.contains("not signed by a trusted key"), "{e}");
    refused(&s, &tpm, &["model.sig", "not signed by a trusted key"]);

    // A truncated bundle.
    let s = Scene::new(&tpm.tcti());
    s.sign_key("signer");
    let b = std::fs::read(s.p("model.sig")).unwrap();
    std::fs::write(s.p("model.sig"), &b[..b.len() / 2]).unwrap();
    let e = s.check(&["signer.pub"]).unwrap_err().to_string();
    assert!(e.contains("not a Sigstore bundle"), "{e}");
    refused(&s, &tpm, &["model.sig", "not a Sigstore bundle"]);

    // A bundle of another directory.
    let s = Scene::new(&tpm.tcti());
    std::fs::create_dir(s.p("other")).unwrap();
    std::fs::write(s.p("other/model.onnx"), b"another model").unwrap();
    model_signing(&[
        "sign",
        "key",
        &s.s("other"),
        "--private_key",
        &s.s("signer.pem"),
        "--signature",
        &s.s("model.sig"),
    ]);
    refused(&s, &tpm, &["model.sig", "not signed in"]);
}

#[test]
fn import_turns_a_model_signature_into_a_signed_manifest() {
    let tpm = Swtpm::start();
    let s = Scene::new(&tpm.tcti());
    // The signature inside the directory, as is common: it is not extra.
    model_signing(&[
        "sign",
        "key",
        &s.s("models"),
        "--private_key",
        &s.s("signer.pem"),
        "--signature",
        &s.s("models/model.sig"),
    ]);
    openssl(&[
        "genpkey",
        "-algorithm",
        "ed25519",
        "-out",
        &s.s("operator.pem"),
    ]);
    openssl(&[
        "pkey",
        "-in",
        &s.s("operator.pem"),
        "-pubout",
        "-out",
        &s.s("operator.pub"),
    ]);
    let import = |trust: &str| {
        guardian(&[
            "manifest",
            "import",
            &s.s("models/model.sig"),
            "--dir",
            &s.s("models"),
            "--trust",
            &s.s(trust),
            "--key",
            &s.s("operator.pem"),
            "-o",
            &s.s("manifest.toml"),
            "--serial",
            "7",
        ])
    };
    s.ec_key("other");
    let out = import("other.pub");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not signed by a trusted key"),
        "{}",
        stderr(&out)
    );
    assert!(!s.p("manifest.toml").exists());

    let out = import("signer.pub");
    assert!(out.status.success(), "{}", stderr(&out));
    let m = guardian::manifest::Manifest::parse(
        &std::fs::read_to_string(s.p("manifest.toml")).unwrap(),
    )
    .unwrap();
    assert_eq!(m.serial, 7);
    assert_eq!(m.models.len(), 2);
    assert_eq!(m.models[0].size, 300_000);
    std::fs::write(
        s.p("guardian.toml"),
        format!(
            "[measure]\nmanifest = \"manifest.toml\"\ntrusted_keys = [\"operator.pub\"]\n\
             log = \"measurements.log\"\ntcti = \"{}\"\n",
            tpm.tcti()
        ),
    )
    .unwrap();
    let out = s.measure();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn p384_key_signature_verifies() {
    let s = Scene::new("unused");
    openssl(&[
        "ecparam",
        "-name",
        "secp384r1",
        "-genkey",
        "-noout",
        "-out",
        &s.s("p384.pem"),
    ]);
    openssl(&[
        "ec",
        "-in",
        &s.s("p384.pem"),
        "-pubout",
        "-out",
        &s.s("p384.pub"),
    ]);
    s.sign_key("p384");
    assert_eq!(s.check(&["p384.pub"]).unwrap().len(), 2);
    let e = s.check(&["signer.pub"]).unwrap_err().to_string();
    assert!(e.contains("not signed by a trusted key"), "{e}");
}

/// Seeds for the `model_sig` fuzz target (`fuzz_seeds.rs`): a bundle of
/// each method, made by `model_signing` and verified here first.
pub fn seed_bundles() -> Vec<(String, Vec<u8>)> {
    let s = Scene::new("unused");
    s.sign_key("signer");
    s.check(&["signer.pub"]).unwrap();
    let key = std::fs::read(s.p("model.sig")).unwrap();
    s.ca("vendor");
    s.sign_certificate("vendor");
    s.check(&["vendor.pem"]).unwrap();
    let cert = std::fs::read(s.p("model.sig")).unwrap();
    vec![("key.sig".into(), key), ("certificate.sig".into(), cert)]
}
