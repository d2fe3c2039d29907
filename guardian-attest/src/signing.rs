//! Detached signatures over files (manifests today, policy bundles later).
//!
//! Two algorithms, both as the common tools make them, so a vendor can sign
//! with what their release pipeline already has:
//!
//! | key | signature file | made by |
//! |---|---|---|
//! | Ed25519 (PKCS#8 PEM) | 64 raw bytes | `guardian manifest create`, `openssl pkeyutl -sign -rawin` |
//! | ECDSA P-256 (PKCS#8 or SEC1 PEM) | DER, over SHA-256 | `guardian manifest create`, `openssl dgst -sha256 -sign`, `cosign sign-blob --key` (after base64 decoding) |
//!
//! Public keys are SubjectPublicKeyInfo PEM (`openssl pkey -pubout`).

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
    #[error("{path}: not an Ed25519 or ECDSA P-256 {what} in PEM")]
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
}

fn read(path: &Path) -> Result<String, SignError> {
    std::fs::read_to_string(path).map_err(|source| SignError::Read {
        path: path.to_owned(),
        source,
    })
}

fn fingerprint_of_pem(pem: &str) -> String {
    // The base64 body of the PEM is the SPKI DER; hash the decoded bytes.
    use base64::Engine as _;
    let body: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .unwrap_or_default();
    hex::encode(Sha256::digest(der))
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
        let key = if let Ok(k) = ed25519_dalek::VerifyingKey::from_public_key_pem(pem) {
            PublicKey::Ed25519(k)
        } else if let Ok(k) = p256::ecdsa::VerifyingKey::from_public_key_pem(pem) {
            PublicKey::P256(k)
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
        }
    }

    fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        match &self.key {
            PublicKey::Ed25519(k) => ed25519_dalek::Signature::from_slice(signature)
                .is_ok_and(|s| k.verify_strict(message, &s).is_ok()),
            PublicKey::P256(k) => p256::ecdsa::Signature::from_der(signature)
                .is_ok_and(|s| k.verify(message, &s).is_ok()),
        }
    }
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
}
