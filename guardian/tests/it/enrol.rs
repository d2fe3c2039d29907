//! Enrolment against real swtpm instances manufactured with EK
//! certificates (`swtpm_setup --create-ek-cert`, signed by swtpm_localca):
//! the full protocol succeeds, and each attack fails with the error that
//! names it.
//!
//! What swtpm 0.7 provides, found by looking (the brief assumed otherwise):
//! an RSA-2048 EK certificate at NV 0x01c00002 and an ECC **P-384** one at
//! 0x01c00016 (template H-3, userWithAuth set); nothing at the P-256 index
//! 0x01c0000a. The chain is swtpm-localca-rootca (self-signed, RSA-3072)
//! -> swtpm-localca (the "issuercert", RSA-3072) -> EK certificate, all
//! sha256WithRSAEncryption. The P-256 EK is therefore exercised without a
//! certificate (`p256_ek_opens_our_credential`).

// Tests panic on purpose: the failing line is the report.
use crate::common;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use common::openssl;

use base64::{Engine as _, engine::general_purpose::STANDARD as B64};
use guardian::{
    enrol::{
        self, DeviceError, EkCertError, EkKind, EnrolError, Request,
        credential::{self, HashAlg},
        tpmt::TpmtPublic,
    },
    tpm::Tpm,
};
use sha2::{Digest as _, Sha256};

const AK: u32 = 0x8101_0002;

/// A swtpm whose state swtpm_setup manufactured with EK certificates, and
/// a scratch directory beside it.
struct Manufactured {
    tpm: common::Swtpm,
    dir: tempfile::TempDir,
}

impl Manufactured {
    fn start() -> Self {
        Self {
            tpm: common::Swtpm::manufactured(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn tcti(&self) -> String {
        self.tpm.tcti()
    }

    fn open(&self) -> Tpm {
        Tpm::open(&self.tcti()).unwrap()
    }

    fn p(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// tpm2-tools against this TPM (no Tpm may be open: swtpm serves one
    /// connection at a time).
    fn tools(&self, args: &[&str]) -> String {
        let out = Command::new(args[0])
            .args(["-T", &self.tcti()])
            .args(&args[1..])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The whole protocol, with the EK `kind`; returns the record.
fn enrol_fully(tpm: &Manufactured, kind: Option<EkKind>) -> (Request, enrol::Enrolled) {
    let mut dev = tpm.open();
    let req = match kind {
        Some(k) => enrol::request_with_ek(&mut dev, AK, k).unwrap(),
        None => enrol::request(&mut dev, AK).unwrap(),
    };
    // Through JSON, as it travels.
    let req: Request = serde_json::from_str(&serde_json::to_string(&req).unwrap()).unwrap();
    let (challenge, pending) = enrol::challenge(&req, &common::localca()).unwrap();
    let response = enrol::activate(&mut dev, AK, &challenge).unwrap();
    let rec = enrol::finish(&req, pending, &response).unwrap();
    (req, rec)
}

#[test]
fn full_enrolment_with_the_rsa_ek() {
    let tpm = Manufactured::start();
    let (_, rec) = enrol_fully(&tpm, None);
    assert!(!rec.insecure_tofu);
    assert_eq!(rec.ek_issuer.as_deref(), Some("CN=swtpm-localca"));
    assert_eq!(
        rec.ek_chain,
        vec!["CN=swtpm-localca", "CN=swtpm-localca-rootca"]
    );
    // The fingerprint is of the certificate tpm2-tools reads from NV
    // 0x01c00002 (swtpm's RSA EK index), trimmed to its DER length.
    let nv = tpm.p("ek.der");
    tpm.tools(&["tpm2_nvread", "0x01c00002", "-o", s(&nv)]);
    let raw = std::fs::read(&nv).unwrap();
    let len = enrol::ekcert::der_len(&raw).unwrap();
    assert_eq!(
        rec.ek_certificate_sha256.as_deref(),
        Some(hex::encode(Sha256::digest(&raw[..len])).as_str())
    );
    // The AK's name agrees with the TPM's own, as tpm2-tools reports it.
    let out = tpm.tools(&["tpm2_readpublic", "-c", &format!("{AK:#x}")]);
    let name = out
        .lines()
        .find_map(|l| l.strip_prefix("name: "))
        .unwrap()
        .trim();
    assert_eq!(rec.ak_name, name);
    assert!(rec.ak_public_pem.starts_with("-----BEGIN PUBLIC KEY-----"));
    let json = serde_json::to_string(&rec).unwrap();
    assert!(json.contains("\"insecure_tofu\":false"), "{json}");
}

#[test]
fn full_enrolment_with_the_p384_ek() {
    let tpm = Manufactured::start();
    let (req, rec) = enrol_fully(&tpm, Some(EkKind::EccP384));
    let ek = B64.decode(&req.ek_public).unwrap();
    let (ek, _) = TpmtPublic::parse_tpm2b(&ek).unwrap();
    assert_eq!(EkKind::of(&ek), Some(EkKind::EccP384));
    assert!(!rec.insecure_tofu);
    assert_eq!(rec.ek_issuer.as_deref(), Some("CN=swtpm-localca"));
}

/// swtpm certifies no P-256 EK, so the P-256 path (ECDH, KDFe with
/// SHA-256, AES-128, the PolicySecret session) is checked without a
/// certificate: our credential for the TPM's P-256 EK opens in the TPM.
#[test]
fn p256_ek_opens_our_credential() {
    let tpm = Manufactured::start();
    let mut dev = tpm.open();
    assert_eq!(
        dev.ek_certificate(EkKind::EccP256).unwrap(),
        None,
        "swtpm now certifies a P-256 EK: extend full enrolment to it"
    );
    let ek = dev.ek_public(EkKind::EccP256).unwrap();
    let (ek, _) = TpmtPublic::parse_tpm2b(&ek).unwrap();
    let (ak, public) = dev.ak(AK).unwrap();
    let name = credential::name(&public.tpm2b_public[2..], HashAlg::Sha256);
    let secret = [0x42u8; 32];
    let cred = credential::make_credential(&ek, &secret, &name, &mut rand_core::OsRng).unwrap();
    let out = dev
        .activate_credential(ak, EkKind::EccP256, &cred.id_object, &cred.encrypted_secret)
        .unwrap();
    assert_eq!(out, secret);
}

fn request_of(tpm: &Manufactured) -> Request {
    enrol::request(&mut tpm.open(), AK).unwrap()
}

/// A CA that is not the manufacturer's: one that copies the real issuer's
/// name (so the chain walk finds the real CA and its key refuses the
/// signature), and one with its own name (no configured issuer).
#[test]
fn ek_certificate_from_an_untrusted_ca_is_refused() {
    let tpm = Manufactured::start();
    let req = request_of(&tpm);
    let ek_der = tpm.p("ek.der");
    std::fs::write(&ek_der, B64.decode(&req.ek_certificate).unwrap()).unwrap();
    let ek_pub = tpm.p("ek.pub.pem");
    openssl(&[
        "x509",
        "-inform",
        "DER",
        "-in",
        s(&ek_der),
        "-pubkey",
        "-noout",
        "-out",
        s(&ek_pub),
    ]);
    for (ca_name, expect_unknown) in [("/CN=swtpm-localca", false), ("/CN=evil-ca", true)] {
        let key = tpm.p("rogue.key");
        let ca = tpm.p("rogue.pem");
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            s(&key),
            "-out",
            s(&ca),
            "-subj",
            ca_name,
            "-days",
            "30",
        ]);
        let csr_key = tpm.p("csr.key");
        let csr = tpm.p("csr.pem");
        openssl(&[
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            s(&csr_key),
            "-out",
            s(&csr),
            "-subj",
            "/CN=unknown",
        ]);
        let forged = tpm.p("forged.der");
        // The forged certificate certifies the real EK's key.
        openssl(&[
            "x509",
            "-req",
            "-in",
            s(&csr),
            "-force_pubkey",
            s(&ek_pub),
            "-CA",
            s(&ca),
            "-CAkey",
            s(&key),
            "-CAcreateserial",
            "-days",
            "30",
            "-outform",
            "DER",
            "-out",
            s(&forged),
        ]);
        let mut bad = req.clone();
        bad.ek_certificate = B64.encode(std::fs::read(&forged).unwrap());
        let err = enrol::challenge(&bad, &common::localca()).unwrap_err();
        eprintln!("{ca_name}: {err}");
        match err {
            EnrolError::EkCert {
                source: EkCertError::UnknownIssuer { issuer, .. },
            } if expect_unknown => assert_eq!(issuer, "CN=evil-ca"),
            EnrolError::EkCert {
                source: EkCertError::BadSignature { issuer, .. },
            } if !expect_unknown => assert_eq!(issuer, "CN=swtpm-localca"),
            other => panic!("{ca_name}: {other:?}"),
        }
    }
}

/// The intermediate alone is not a trust anchor: its root must be
/// configured too.
#[test]
fn intermediate_alone_is_not_trusted() {
    let tpm = Manufactured::start();
    let req = request_of(&tpm);
    let (_, issuer) = common::localca_files();
    let only_intermediate = enrol::load_ca_certs(&[issuer]).unwrap();
    match enrol::challenge(&req, &only_intermediate) {
        Err(EnrolError::EkCert {
            source: EkCertError::UnknownIssuer { issuer, .. },
        }) => assert_eq!(issuer, "CN=swtpm-localca-rootca"),
        other => panic!("{other:?}"),
    }
}

/// A genuine certificate, but of another TPM's EK: the credential would be
/// encrypted to a key the request's EK is not.
#[test]
fn ek_certificate_of_another_tpm_is_refused() {
    let (a, b) = (Manufactured::start(), Manufactured::start());
    let mut req = request_of(&a);
    req.ek_certificate = request_of(&b).ek_certificate;
    match enrol::challenge(&req, &common::localca()) {
        Err(EnrolError::EkCert {
            source: EkCertError::KeyMismatch(why),
        }) => assert_eq!(why, "RSA moduli differ"),
        other => panic!("{other:?}"),
    }
}

/// An unrestricted signing key in the right TPM: it could sign a forged
/// TPMS_ATTEST, so it is refused before any credential is made.
#[test]
fn unrestricted_ak_is_refused() {
    let tpm = Manufactured::start();
    let ctx = tpm.p("key.ctx");
    tpm.tools(&[
        "tpm2_createprimary",
        "-C",
        "o",
        "-G",
        "ecc256:ecdsa-sha256",
        "-a",
        "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|sign",
        "-c",
        s(&ctx),
    ]);
    tpm.tools(&["tpm2_evictcontrol", "-C", "o", "-c", s(&ctx), "0x81010030"]);
    tpm.tools(&["tpm2_flushcontext", "-t"]);
    let req = enrol::request(&mut tpm.open(), 0x8101_0030).unwrap();
    match enrol::challenge(&req, &common::localca()) {
        Err(e @ EnrolError::AkAttribute { .. }) => {
            assert_eq!(
                e.to_string(),
                "the AK is refused: objectAttributes.restricted must be set"
            );
        }
        other => panic!("{other:?}"),
    }
}

/// A device that presents a certified EK with an AK that lives in ANOTHER
/// TPM (or in software: to the verifier both are a public area it cannot
/// place): the challenge is made, but neither TPM can open it, and a
/// guessed secret is refused.
#[test]
fn ak_from_another_tpm_cannot_enrol() {
    let (a, b) = (Manufactured::start(), Manufactured::start());
    let mut req = request_of(&a);
    req.ak_public = request_of(&b).ak_public;
    let (challenge, pending) = enrol::challenge(&req, &common::localca()).unwrap();
    // B holds the AK but not the certified EK.
    let err = enrol::activate(&mut b.open(), AK, &challenge).unwrap_err();
    eprintln!("on the AK's TPM: {err}");
    assert!(
        matches!(
            err,
            DeviceError::Tpm {
                what: "ActivateCredential",
                ..
            }
        ),
        "{err:?}"
    );
    // A holds the EK, but its own AK has another name.
    let err = enrol::activate(&mut a.open(), AK, &challenge).unwrap_err();
    eprintln!("on the EK's TPM: {err}");
    assert!(
        matches!(
            err,
            DeviceError::Tpm {
                what: "ActivateCredential",
                ..
            }
        ),
        "{err:?}"
    );
    let guess = enrol::Response {
        version: enrol::protocol::VERSION,
        challenge_id: challenge.id.clone(),
        secret: B64.encode([0u8; 32]),
    };
    assert!(matches!(
        enrol::finish(&req, pending, &guess),
        Err(EnrolError::SecretMismatch)
    ));
}

/// A response from an earlier challenge: refused for its id, and, with the
/// id rewritten, for its secret.
#[test]
fn replayed_response_is_refused() {
    let tpm = Manufactured::start();
    let mut dev = tpm.open();
    let req = enrol::request(&mut dev, AK).unwrap();
    let (c1, p1) = enrol::challenge(&req, &common::localca()).unwrap();
    let r1 = enrol::activate(&mut dev, AK, &c1).unwrap();
    enrol::finish(&req, p1, &r1).unwrap();
    let (c2, p2) = enrol::challenge(&req, &common::localca()).unwrap();
    assert_ne!(c1.id, c2.id);
    match enrol::finish(&req, p2.clone(), &r1) {
        Err(EnrolError::WrongChallenge { expected, got }) => {
            assert_eq!(expected, c2.id);
            assert_eq!(got, c1.id);
        }
        other => panic!("{other:?}"),
    }
    let mut rewritten = r1.clone();
    rewritten.challenge_id = c2.id.clone();
    assert!(matches!(
        enrol::finish(&req, p2, &rewritten),
        Err(EnrolError::SecretMismatch)
    ));
}

/// A credential blob or encrypted seed changed in transit: the TPM's
/// integrity check (or the seed's decryption) fails, nothing is released.
#[test]
fn tampered_credential_is_refused_by_the_tpm() {
    let tpm = Manufactured::start();
    let mut dev = tpm.open();
    let req = enrol::request(&mut dev, AK).unwrap();
    let (challenge, _pending) = enrol::challenge(&req, &common::localca()).unwrap();
    let blob = B64.decode(&challenge.credential_blob).unwrap();
    let seed = B64.decode(&challenge.encrypted_secret).unwrap();
    // In the HMAC, in the encrypted credential, in the encrypted seed.
    for (what, at) in [
        ("hmac", 5usize),
        ("credential", blob.len() - 1),
        ("seed", 17),
    ] {
        let mut c = challenge.clone();
        if what == "seed" {
            let mut s = seed.clone();
            s[at] ^= 0x01;
            c.encrypted_secret = B64.encode(s);
        } else {
            let mut b = blob.clone();
            b[at] ^= 0x01;
            c.credential_blob = B64.encode(b);
        }
        let err = enrol::activate(&mut dev, AK, &c).unwrap_err();
        eprintln!("tampered {what}: {err}");
        assert!(
            matches!(
                err,
                DeviceError::Tpm {
                    what: "ActivateCredential",
                    ..
                }
            ),
            "{what}: {err:?}"
        );
    }
    // The untampered challenge still opens: the failures above are the
    // tampering, not the setup.
    enrol::activate(&mut dev, AK, &challenge).unwrap();
}

/// The four `guardian enrol` commands end to end against a manufactured
/// swtpm (two on the "device", two on the "verifier"), then a real quote
/// verified with `--device` (the enrolment record) instead of `--ak`; a
/// record enrolled by another TPM does not verify this device's quote.
#[test]
fn enrol_commands_then_verify_with_the_record() {
    let m = Manufactured::start();
    let b = common::Board::new(&m.tcti());
    let (root, issuer) = common::localca_files();
    let run = |args: &[&str]| {
        let out = common::guardian(args);
        assert!(
            out.status.success(),
            "guardian {args:?}: {}",
            common::stderr(&out)
        );
        common::stderr(&out)
    };
    run(&[
        "enrol",
        "request",
        "-c",
        &b.s("guardian.toml"),
        "-o",
        &b.s("request.json"),
    ]);
    let said = run(&[
        "enrol",
        "challenge",
        "--request",
        &b.s("request.json"),
        "--ca",
        s(&root),
        "--ca",
        s(&issuer),
        "-o",
        &b.s("challenge.json"),
        "--pending",
        &b.s("pending.json"),
    ]);
    assert!(said.contains("EK certified by"), "{said}");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(b.p("pending.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o077,
        0,
        "the pending secret is readable by others: {mode:o}"
    );
    run(&[
        "enrol",
        "activate",
        "-c",
        &b.s("guardian.toml"),
        "--challenge",
        &b.s("challenge.json"),
        "-o",
        &b.s("response.json"),
    ]);
    let said = run(&[
        "enrol",
        "finish",
        "--request",
        &b.s("request.json"),
        "--pending",
        &b.s("pending.json"),
        "--response",
        &b.s("response.json"),
        "-o",
        &b.s("device.json"),
    ]);
    assert!(said.contains("enrolled"), "{said}");
    let rec: enrol::Enrolled =
        serde_json::from_slice(&std::fs::read(b.p("device.json")).unwrap()).unwrap();
    assert!(!rec.insecure_tofu);

    // A wrong answer is refused and writes no record.
    let mut resp: serde_json::Value =
        serde_json::from_slice(&std::fs::read(b.p("response.json")).unwrap()).unwrap();
    resp["secret"] = serde_json::Value::String(B64.encode([0u8; 32]));
    std::fs::write(b.p("bad-response.json"), resp.to_string()).unwrap();
    let out = common::guardian(&[
        "enrol",
        "finish",
        "--request",
        &b.s("request.json"),
        "--pending",
        &b.s("pending.json"),
        "--response",
        &b.s("bad-response.json"),
        "-o",
        &b.s("bad-device.json"),
    ]);
    assert!(!out.status.success());
    assert!(
        common::stderr(&out).contains("refused"),
        "{}",
        common::stderr(&out)
    );
    assert!(!b.p("bad-device.json").exists());

    // A quote from this TPM verifies against the record.
    let out = b.measure();
    assert!(out.status.success(), "{}", common::stderr(&out));
    let nonce = "11".repeat(16);
    run(&[
        "quote",
        "-c",
        &b.s("guardian.toml"),
        "--nonce",
        &nonce,
        "-o",
        &b.s("evidence.json"),
    ]);
    let verify = |device: &str| {
        common::guardian(&[
            "verify",
            "--evidence",
            &b.s("evidence.json"),
            "--device",
            device,
            "--key",
            &b.s("vendor.pub"),
            "--nonce",
            &nonce,
        ])
    };
    let out = verify(&b.s("device.json"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", common::stderr(&out));
    assert!(text.contains("TRUSTED"), "{text}");
    assert!(!common::stderr(&out).contains("trusted as given"));

    // The same AK given as a bare key: refused without --insecure-tofu,
    // and with it the verdict says the AK was not proven.
    std::fs::write(b.p("ak.pem"), &rec.ak_public_pem).unwrap();
    let bare = |extra: &[&str]| {
        let mut args = vec![
            "verify",
            "--evidence",
            &*b.s("evidence.json"),
            "--ak",
            &*b.s("ak.pem"),
            "--key",
            &*b.s("vendor.pub"),
            "--nonce",
            &*nonce,
        ]
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        common::guardian(&refs)
    };
    let out = bare(&[]);
    assert!(!out.status.success());
    assert!(
        common::stderr(&out).contains("--insecure-tofu"),
        "{}",
        common::stderr(&out)
    );
    let out = bare(&["--insecure-tofu"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", common::stderr(&out));
    assert!(text.contains("INSECURE"), "{text}");

    // Another TPM's record: its AK did not sign this quote.
    let other = Manufactured::start();
    let (_, rec2) = enrol_fully(&other, None);
    std::fs::write(b.p("other-device.json"), serde_json::to_vec(&rec2).unwrap()).unwrap();
    let out = verify(&b.s("other-device.json"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "another TPM's record verified: {text}"
    );
    assert!(text.contains("NOT TRUSTED"), "{text}");
}
