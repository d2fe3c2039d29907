//! Detached signatures over files (manifests today, policy bundles later).
//!
//! Two algorithms, both as the common tools make them, so a vendor can sign
//! with what their release pipeline already has:
//!
//! | key | signature file | made by |
//! |---|---|---|
//! | Ed25519 (PKCS#8 PEM) | 64 raw bytes | `guardian manifest create`, `openssl pkeyutl -sign -rawin` |
//! | ECDSA P-256 (PKCS#8 or SEC1 PEM) | DER, over SHA-256 | `guardian manifest create`, `openssl dgst -sha256 -sign`, `cosign sign-blob --key` (after base64 decoding) |
//! | ECDSA P-384 (public key only) | DER, over SHA-384 | `openssl dgst -sha384 -sign`, `model_signing sign key` |
//!
//! Public keys are SubjectPublicKeyInfo PEM (`openssl pkey -pubout`).
//!
//! Either signature may also come as a **keyed Sigstore bundle**, what
//! cosign 3 writes (`cosign sign-blob --key K --bundle FILE`; the raw
//! base64 signature of cosign 2 is gone): the signature file is then the
//! bundle's JSON, with `messageSignature.messageDigest` (SHA2_256, which
//! must be the file's) and `messageSignature.signature` (the same ECDSA DER
//! or Ed25519 bytes as above). It is verified offline with the trusted keys
//! like a raw signature: the bundle's `publicKey.hint`, certificate and
//! transparency-log entries are not trusted or needed. cosign signs with an
//! Ed25519 key as Ed25519ph (SHA-512 prehash) when it uploads to a
//! transparency log, so an Ed25519 bundle signature is accepted as either.
//!
//! A trusted-key file may instead hold CA certificates (PEM `CERTIFICATE`):
//! such an entry never verifies a detached signature itself; it is a trust
//! anchor for OpenSSF model signatures made with a certificate chain
//! ([`crate::model_sig`]).

use std::path::{Path, PathBuf};

use ed25519_dalek::Signer as _;
use p256::ecdsa::signature::Verifier as _;
use sha2::{Digest as _, Sha256};

/// Errors loading keys or checking signatures; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// A key or signature file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A key file holds no key we accept.
    #[error("{path}: not an Ed25519 or ECDSA P-256/P-384 {what} in PEM")]
    BadKey {
        /// The file.
        path: PathBuf,
        /// "private key" or "public key".
        what: &'static str,
    },
    /// No trusted key verifies the signature.
    #[error("signature {signature} over {file} is not valid for any trusted key ({keys} tried)")]
    Untrusted {
        /// The signed file.
        file: PathBuf,
        /// The signature file.
        signature: PathBuf,
        /// How many trusted keys were tried.
        keys: usize,
    },
    /// Signing failed.
    #[error("signing with {path} failed")]
    Sign {
        /// The key.
        path: PathBuf,
    },
}

/// A public key allowed to sign.
#[derive(Clone, Debug)]
pub struct TrustedKey {
    /// Where it came from.
    pub path: PathBuf,
    /// SHA-256 of its SubjectPublicKeyInfo DER, hex: the key's identity in
    /// logs and status.
    pub fingerprint: String,
    key: PublicKey,
}

#[derive(Clone, Debug)]
enum PublicKey {
    Ed25519(ed25519_dalek::VerifyingKey),
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
    /// CA certificates: trust anchors for certificate chains, not a key.
    Ca(Vec<x509_cert::Certificate>),
}

/// The OIDs of an EC SubjectPublicKeyInfo for P-384.
const OID_EC: &str = "1.2.840.10045.2.1";
const OID_P384: &str = "1.3.132.0.34";

/// A P-384 key from SubjectPublicKeyInfo DER (the `p384` crate is built
/// without its PEM/PKCS#8 features; the SPKI is read here instead).
pub(crate) fn p384_from_spki_der(der: &[u8]) -> Option<p384::ecdsa::VerifyingKey> {
    use der::Decode as _;
    let spki = spki::SubjectPublicKeyInfoOwned::from_der(der).ok()?;
    if spki.algorithm.oid.to_string() != OID_EC {
        return None;
    }
    let curve = spki
        .algorithm
        .parameters
        .as_ref()?
        .decode_as::<der::asn1::ObjectIdentifier>()
        .ok()?;
    if curve.to_string() != OID_P384 {
        return None;
    }
    p384::ecdsa::VerifyingKey::from_sec1_bytes(spki.subject_public_key.raw_bytes()).ok()
}

fn read(path: &Path) -> Result<String, SignError> {
    std::fs::read_to_string(path).map_err(|source| SignError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The DER inside a one-block PEM.
fn pem_der(pem: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let body: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat();
    base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .ok()
}

fn fingerprint_of_pem(pem: &str) -> String {
    // The base64 body of the PEM is the SPKI DER; hash the decoded bytes.
    hex::encode(Sha256::digest(pem_der(pem).unwrap_or_default()))
}

impl TrustedKey {
    /// Load a PEM public key.
    pub fn load(path: &Path) -> Result<Self, SignError> {
        let pem = read(path)?;
        Self::from_pem(&pem, path)
    }

    /// A PEM public key given as text; `origin` names where it came from.
    pub fn from_pem(pem: &str, origin: &Path) -> Result<Self, SignError> {
        use ed25519_dalek::pkcs8::DecodePublicKey as _;
        let path = origin;
        if pem.contains("-----BEGIN CERTIFICATE-----") {
            return Self::from_ca_pem(pem, origin);
        }
        let key = if let Ok(k) = ed25519_dalek::VerifyingKey::from_public_key_pem(pem) {
            PublicKey::Ed25519(k)
        } else if let Ok(k) = p256::ecdsa::VerifyingKey::from_public_key_pem(pem) {
            PublicKey::P256(k)
        } else if let Some(k) = pem_der(pem).and_then(|d| p384_from_spki_der(&d)) {
            PublicKey::P384(k)
        } else {
            return Err(SignError::BadKey {
                path: path.to_owned(),
                what: "public key",
            });
        };
        Ok(Self {
            path: path.to_owned(),
            fingerprint: fingerprint_of_pem(pem),
            key,
        })
    }

    /// A P-256, P-384 or Ed25519 key from SubjectPublicKeyInfo DER (a
    /// certificate's key); `origin` names where it came from.
    pub fn from_spki_der(der: &[u8], origin: &Path) -> Option<Self> {
        use ed25519_dalek::pkcs8::DecodePublicKey as _;
        let key = if let Ok(k) = p256::ecdsa::VerifyingKey::from_public_key_der(der) {
            PublicKey::P256(k)
        } else if let Some(k) = p384_from_spki_der(der) {
            PublicKey::P384(k)
        } else {
            PublicKey::Ed25519(ed25519_dalek::VerifyingKey::from_public_key_der(der).ok()?)
        };
        Some(Self {
            path: origin.to_owned(),
            fingerprint: hex::encode(Sha256::digest(der)),
            key,
        })
    }

    /// CA certificates (PEM, one or more): a trust anchor for model
    /// signatures made with a certificate chain. The fingerprint is
    /// SHA-256 of the first certificate's DER.
    fn from_ca_pem(pem: &str, origin: &Path) -> Result<Self, SignError> {
        use der::Encode as _;
        let bad = || SignError::BadKey {
            path: origin.to_owned(),
            what: "CA certificate",
        };
        let certs = x509_cert::Certificate::load_pem_chain(pem.as_bytes()).map_err(|_| bad())?;
        let first = certs.first().ok_or_else(bad)?.to_der().map_err(|_| bad())?;
        Ok(Self {
            path: origin.to_owned(),
            fingerprint: hex::encode(Sha256::digest(first)),
            key: PublicKey::Ca(certs),
        })
    }

    /// The CA certificates of a trust anchor entry (empty for a key).
    pub fn ca_certificates(&self) -> &[x509_cert::Certificate] {
        match &self.key {
            PublicKey::Ca(c) => c,
            _ => &[],
        }
    }

    /// Load every key in `paths`; the first that fails stops it, named.
    pub fn load_all(paths: &[PathBuf]) -> Result<Vec<Self>, SignError> {
        paths.iter().map(|p| Self::load(p)).collect()
    }

    /// Whether `signature` (a detached signature file's bytes) over
    /// `message` is this key's.
    pub fn verifies_detached(&self, message: &[u8], signature: &[u8]) -> bool {
        self.verifies(message, signature)
    }

    /// Algorithm name.
    pub fn algorithm(&self) -> &'static str {
        match self.key {
            PublicKey::Ed25519(_) => "ed25519",
            PublicKey::P256(_) => "ecdsa-p256-sha256",
            PublicKey::P384(_) => "ecdsa-p384-sha384",
            PublicKey::Ca(_) => "x509-ca",
        }
    }

    fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        if let Some(b) = bundle_signature(signature) {
            // The digest the bundle claims must be the message's; the
            // signature is then checked over the message itself.
            if b.digest[..] != Sha256::digest(message)[..] {
                return false;
            }
            return self.verifies_raw(message, &b.signature)
                || self.verifies_ed25519ph(message, &b.signature);
        }
        self.verifies_raw(message, signature)
    }

    /// Ed25519ph (RFC 8032, SHA-512 prehash, empty context): cosign's
    /// Ed25519 signatures when it uploads to a transparency log.
    fn verifies_ed25519ph(&self, message: &[u8], signature: &[u8]) -> bool {
        let PublicKey::Ed25519(k) = &self.key else {
            return false;
        };
        let mut h = sha2::Sha512::new();
        h.update(message);
        ed25519_dalek::Signature::from_slice(signature)
            .is_ok_and(|s| k.verify_prehashed_strict(h, None, &s).is_ok())
    }

    fn verifies_raw(&self, message: &[u8], signature: &[u8]) -> bool {
        match &self.key {
            PublicKey::Ed25519(k) => ed25519_dalek::Signature::from_slice(signature)
                .is_ok_and(|s| k.verify_strict(message, &s).is_ok()),
            PublicKey::P256(k) => p256::ecdsa::Signature::from_der(signature)
                .is_ok_and(|s| k.verify(message, &s).is_ok()),
            PublicKey::P384(k) => p384::ecdsa::Signature::from_der(signature)
                .is_ok_and(|s| k.verify(message, &s).is_ok()),
            PublicKey::Ca(_) => false,
        }
    }
}

/// The largest Sigstore bundle read as a signature file.
pub const MAX_SIGNATURE_BUNDLE: usize = 64 * 1024;

/// A keyed Sigstore bundle's message signature.
struct BundleSignature {
    digest: Vec<u8>,
    signature: Vec<u8>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawBundle {
    media_type: String,
    message_signature: RawMessageSignature,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMessageSignature {
    message_digest: RawDigest,
    signature: String,
}

#[derive(serde::Deserialize)]
struct RawDigest {
    algorithm: String,
    digest: String,
}

/// A signature file that is a Sigstore bundle with a message signature
/// over SHA2_256 (cosign 3's `sign-blob --bundle`); `None` for anything
/// else, raw signatures included (a raw signature never starts with `{`
/// and parses as such a bundle).
fn bundle_signature(file: &[u8]) -> Option<BundleSignature> {
    use base64::Engine as _;
    if file.len() > MAX_SIGNATURE_BUNDLE || file.trim_ascii_start().first() != Some(&b'{') {
        return None;
    }
    let raw: RawBundle = serde_json::from_slice(file).ok()?;
    if !raw
        .media_type
        .starts_with("application/vnd.dev.sigstore.bundle")
        || raw.message_signature.message_digest.algorithm != "SHA2_256"
    {
        return None;
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    Some(BundleSignature {
        digest: b64
            .decode(raw.message_signature.message_digest.digest.trim())
            .ok()?,
        signature: b64.decode(raw.message_signature.signature.trim()).ok()?,
    })
}

/// Check `signature` (a detached signature file's bytes) over `message`
/// against every trusted key; the first that verifies is returned.
pub fn verify<'a>(
    message: &[u8],
    signature: &[u8],
    trusted: &'a [TrustedKey],
    file: &Path,
    signature_path: &Path,
) -> Result<&'a TrustedKey, SignError> {
    trusted
        .iter()
        .find(|k| k.verifies(message, signature))
        .ok_or_else(|| SignError::Untrusted {
            file: file.to_owned(),
            signature: signature_path.to_owned(),
            keys: trusted.len(),
        })
}

/// A private key, for signing.
pub enum SigningKey {
    /// Ed25519.
    Ed25519(Box<ed25519_dalek::SigningKey>),
    /// ECDSA P-256 with SHA-256.
    P256(p256::ecdsa::SigningKey),
}

impl SigningKey {
    /// Load a PEM private key (PKCS#8, or SEC1 for P-256).
    pub fn load(path: &Path) -> Result<Self, SignError> {
        use ed25519_dalek::pkcs8::DecodePrivateKey as _;
        let pem = read(path)?;
        if let Ok(k) = ed25519_dalek::SigningKey::from_pkcs8_pem(&pem) {
            return Ok(Self::Ed25519(Box::new(k)));
        }
        if let Ok(k) = p256::ecdsa::SigningKey::from_pkcs8_pem(&pem) {
            return Ok(Self::P256(k));
        }
        if let Ok(k) = p256::SecretKey::from_sec1_pem(&pem) {
            return Ok(Self::P256(k.into()));
        }
        Err(SignError::BadKey {
            path: path.to_owned(),
            what: "private key",
        })
    }

    /// A detached signature over `message`.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        match self {
            Self::Ed25519(k) => k.sign(message).to_bytes().to_vec(),
            Self::P256(k) => {
                let s: p256::ecdsa::Signature = k.sign(message);
                s.to_der().as_bytes().to_vec()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys made with openssl, so the formats are the real ones.
    fn openssl(args: &[&str]) -> bool {
        std::process::Command::new("openssl")
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    }

    #[test]
    fn interoperates_with_openssl_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n).display().to_string();
        assert!(openssl(&[
            "genpkey",
            "-algorithm",
            "ed25519",
            "-out",
            &p("ed.pem")
        ]));
        assert!(openssl(&[
            "pkey",
            "-in",
            &p("ed.pem"),
            "-pubout",
            "-out",
            &p("ed.pub")
        ]));
        assert!(openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            &p("ec.pem")
        ]));
        assert!(openssl(&[
            "pkey",
            "-in",
            &p("ec.pem"),
            "-pubout",
            "-out",
            &p("ec.pub")
        ]));
        std::fs::write(p("msg"), b"manifest bytes\n").unwrap();
        let msg = std::fs::read(p("msg")).unwrap();

        let trusted = vec![
            TrustedKey::load(Path::new(&p("ed.pub"))).unwrap(),
            TrustedKey::load(Path::new(&p("ec.pub"))).unwrap(),
        ];
        let f = Path::new("m");
        // Ours, verified by openssl.
        let ed = SigningKey::load(Path::new(&p("ed.pem"))).unwrap();
        std::fs::write(p("ed.sig"), ed.sign(&msg)).unwrap();
        assert!(openssl(&[
            "pkeyutl",
            "-verify",
            "-pubin",
            "-inkey",
            &p("ed.pub"),
            "-rawin",
            "-in",
            &p("msg"),
            "-sigfile",
            &p("ed.sig")
        ]));
        let ec = SigningKey::load(Path::new(&p("ec.pem"))).unwrap();
        std::fs::write(p("ec.sig"), ec.sign(&msg)).unwrap();
        assert!(openssl(&[
            "dgst",
            "-sha256",
            "-verify",
            &p("ec.pub"),
            "-signature",
            &p("ec.sig"),
            &p("msg")
        ]));
        // openssl's, verified by us.
        assert!(openssl(&[
            "dgst",
            "-sha256",
            "-sign",
            &p("ec.pem"),
            "-out",
            &p("ossl-ec.sig"),
            &p("msg")
        ]));
        let sig = std::fs::read(p("ossl-ec.sig")).unwrap();
        assert_eq!(
            verify(&msg, &sig, &trusted, f, f).unwrap().algorithm(),
            "ecdsa-p256-sha256"
        );
        assert!(openssl(&[
            "pkeyutl",
            "-sign",
            "-inkey",
            &p("ed.pem"),
            "-rawin",
            "-in",
            &p("msg"),
            "-out",
            &p("ossl-ed.sig")
        ]));
        let sig = std::fs::read(p("ossl-ed.sig")).unwrap();
        assert_eq!(
            verify(&msg, &sig, &trusted, f, f).unwrap().algorithm(),
            "ed25519"
        );

        // A changed message, or only an untrusted key: refused.
        assert!(verify(b"other", &sig, &trusted, f, f).is_err());
        let e = verify(&msg, &sig, &trusted[1..], f, f).unwrap_err();
        assert!(matches!(e, SignError::Untrusted { keys: 1, .. }));
        assert_eq!(trusted[0].fingerprint.len(), 64);
        assert!(TrustedKey::load(Path::new(&p("msg"))).is_err());
    }

    /// A keyed Sigstore bundle as cosign 3's `sign-blob --key --bundle`
    /// writes it (no tlog entry), around `sig`.
    fn cosign_bundle(message: &[u8], sig: &[u8]) -> Vec<u8> {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        serde_json::json!({
            "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
            "verificationMaterial": {"publicKey": {"hint": "aGludA=="}, "tlogEntries": []},
            "messageSignature": {
                "messageDigest": {"algorithm": "SHA2_256", "digest": b64.encode(Sha256::digest(message))},
                "signature": b64.encode(sig)
            }
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn keyed_sigstore_bundles_verify_like_raw_signatures() {
        use ed25519_dalek::pkcs8::EncodePublicKey as _;
        use p256::pkcs8::LineEnding;
        let f = Path::new("m");
        let msg = b"manifest bytes\n";
        let ec = p256::ecdsa::SigningKey::from_slice(&[5; 32]).unwrap();
        let ed = ed25519_dalek::SigningKey::from_bytes(&[6; 32]);
        let trusted = vec![
            TrustedKey::from_pem(
                &ec.verifying_key()
                    .to_public_key_pem(LineEnding::LF)
                    .unwrap(),
                f,
            )
            .unwrap(),
            TrustedKey::from_pem(
                &ed.verifying_key()
                    .to_public_key_pem(LineEnding::LF)
                    .unwrap(),
                f,
            )
            .unwrap(),
        ];
        let ec_sig = SigningKey::P256(ec).sign(msg);
        let b = cosign_bundle(msg, &ec_sig);
        assert_eq!(
            verify(msg, &b, &trusted, f, f).unwrap().algorithm(),
            "ecdsa-p256-sha256"
        );
        // Pure Ed25519, and Ed25519ph (cosign with a transparency log).
        let b = cosign_bundle(msg, &SigningKey::Ed25519(Box::new(ed.clone())).sign(msg));
        assert_eq!(
            verify(msg, &b, &trusted, f, f).unwrap().algorithm(),
            "ed25519"
        );
        let mut h = sha2::Sha512::new();
        h.update(msg);
        let ph = ed.sign_prehashed(h, None).unwrap().to_bytes();
        let b = cosign_bundle(msg, &ph);
        assert_eq!(
            verify(msg, &b, &trusted, f, f).unwrap().algorithm(),
            "ed25519"
        );
        // Another message, a digest that is not the message's, a key
        // that is not trusted, a cut bundle: refused.
        let b = cosign_bundle(msg, &ec_sig);
        assert!(verify(b"other", &b, &trusted, f, f).is_err());
        let wrong = cosign_bundle(b"other", &ec_sig);
        assert!(verify(msg, &wrong, &trusted, f, f).is_err());
        assert!(verify(msg, &b, &trusted[1..], f, f).is_err());
        assert!(verify(msg, &b[..b.len() - 2], &trusted, f, f).is_err());
    }
}
