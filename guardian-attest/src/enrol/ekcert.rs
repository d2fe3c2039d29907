//! The EK certificate: its chain to a configured manufacturer CA, and the
//! key it certifies.
//!
//! The configured certificates (PEM files, any number of certificates each)
//! are of two kinds: self-signed roots, which are the trust anchors, and
//! intermediates, which are only path elements. A chain is accepted when,
//! walking from the EK certificate by issuer name, every signature verifies
//! with the next certificate's key, every issuer is a CA, every certificate
//! is within its validity period, and the walk ends at a configured root.
//! An intermediate alone is not trusted: an intermediate that leaked on its
//! own must not vouch for anything unless its root is configured too.
//!
//! Signatures: RSA PKCS#1 v1.5 with SHA-256/384/512 (swtpm's local CA, and
//! most TPM vendors) and ECDSA P-256/P-384 with SHA-256/384.
//!
//! Not done (see docs/enrolment.md): revocation (CRL/OCSP), name
//! constraints, policy OIDs, unknown critical extensions, RSA-PSS.

use std::{path::Path, time::SystemTime};

use der::{Decode as _, Encode as _, Reader as _};
use p256::ecdsa::signature::hazmat::PrehashVerifier as _;
use rsa::pkcs8::DecodePublicKey as _;
use sha2::{Digest as _, Sha256, Sha384, Sha512};
use x509_cert::Certificate;

use super::tpmt::{self, Params, TpmtPublic};

/// How many CA certificates a chain may have above the EK certificate.
pub const MAX_DEPTH: usize = 6;

const OID_RSA: &str = "1.2.840.113549.1.1.1";
const OID_EC: &str = "1.2.840.10045.2.1";
const OID_P256: &str = "1.2.840.10045.3.1.7";
const OID_P384: &str = "1.3.132.0.34";
const OID_BASIC_CONSTRAINTS: &str = "2.5.29.19";

/// Why an EK certificate (or a CA file) was refused.
#[derive(Debug, thiserror::Error)]
pub enum EkCertError {
    /// A CA file could not be read.
    #[error("reading CA certificate file {path}: {source}")]
    ReadCa {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A CA file is not PEM certificates.
    #[error("CA certificate file {path}: {detail}")]
    ParseCa {
        /// The file.
        path: String,
        /// What is wrong.
        detail: String,
    },
    /// No CA certificates configured.
    #[error("no manufacturer CA certificates configured: an EK certificate cannot be checked")]
    NoCa,
    /// The EK certificate is not DER X.509.
    #[error("the EK certificate is not a DER X.509 certificate: {source}")]
    ParseEkCert {
        /// Why.
        #[source]
        source: der::Error,
    },
    /// No configured certificate is named as the issuer.
    #[error(
        "no configured CA certificate is the issuer {issuer:?} of {subject:?}: untrusted chain"
    )]
    UnknownIssuer {
        /// The certificate whose issuer is missing.
        subject: String,
        /// The issuer it names.
        issuer: String,
    },
    /// A configured CA has the issuer's name but its key did not verify.
    #[error("the signature on {subject:?} does not verify with the key of {issuer:?}: {detail}")]
    BadSignature {
        /// The certificate.
        subject: String,
        /// The issuer tried.
        issuer: String,
        /// Why it failed.
        detail: String,
    },
    /// An issuer without basicConstraints cA.
    #[error("{0:?} signs certificates but is not a CA (basicConstraints cA is not set)")]
    NotCa(String),
    /// Outside the validity period.
    #[error("{subject:?} is not valid now (valid {not_before} to {not_after})")]
    Expired {
        /// The certificate.
        subject: String,
        /// Start.
        not_before: String,
        /// End.
        not_after: String,
    },
    /// The chain ended at an intermediate or went on too long.
    #[error("the chain of {0:?} does not reach a configured root within {MAX_DEPTH} certificates")]
    NoRoot(String),
    /// The certificate's key does not match the EK public area.
    #[error("the EK certificate's key does not match the EK public area in the request: {0}")]
    KeyMismatch(String),
    /// Encoding a part of the certificate failed.
    #[error("re-encoding {what}: {source}")]
    Encode {
        /// Which part.
        what: &'static str,
        /// Why.
        #[source]
        source: der::Error,
    },
}

/// Manufacturer CA certificates the verifier trusts for EK certificates.
#[derive(Clone, Debug, Default)]
pub struct CaCerts {
    certs: Vec<Certificate>,
}

impl CaCerts {
    /// From already-parsed certificates.
    pub fn new(certs: Vec<Certificate>) -> Self {
        Self { certs }
    }

    /// Load every certificate in each PEM file.
    pub fn from_pem_files<P: AsRef<Path>>(paths: &[P]) -> Result<Self, EkCertError> {
        let mut certs = Vec::new();
        for p in paths {
            certs.extend(load_pem_file(p.as_ref())?);
        }
        Ok(Self { certs })
    }

    /// How many certificates are configured.
    pub fn len(&self) -> usize {
        self.certs.len()
    }

    /// True if none are.
    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
    }
}

/// Every certificate in a PEM file.
pub fn load_pem_file(path: &Path) -> Result<Vec<Certificate>, EkCertError> {
    let text = std::fs::read(path).map_err(|source| EkCertError::ReadCa {
        path: path.display().to_string(),
        source,
    })?;
    let certs = Certificate::load_pem_chain(&text).map_err(|e| EkCertError::ParseCa {
        path: path.display().to_string(),
        detail: e.to_string(),
    })?;
    if certs.is_empty() {
        return Err(EkCertError::ParseCa {
            path: path.display().to_string(),
            detail: "no certificate in it".into(),
        });
    }
    Ok(certs)
}

/// A checked EK certificate.
#[derive(Clone, Debug)]
pub struct CheckedEkCert {
    /// The certificate.
    pub cert: Certificate,
    /// SHA-256 of its DER, hex.
    pub fingerprint_sha256: String,
    /// Its subject (RFC 4514).
    pub subject: String,
    /// Its issuer (RFC 4514).
    pub issuer: String,
    /// Subjects from the issuer up to the root.
    pub chain: Vec<String>,
}

/// The length of the DER element at the start of `bytes`, if it is one.
/// TPM NV indices are often larger than the certificate they hold; the
/// device trims the padding with this.
pub fn der_len(bytes: &[u8]) -> Option<usize> {
    let mut r = der::SliceReader::new(bytes).ok()?;
    let h = der::Header::decode(&mut r).ok()?;
    let header_len = usize::try_from(r.position()).ok()?;
    let body = usize::try_from(h.length).ok()?;
    header_len.checked_add(body).filter(|n| *n <= bytes.len())
}

/// The bytes of the signed part (`tbsCertificate`) exactly as they are in
/// `der`; re-encoding a parsed certificate need not give them back.
fn tbs_bytes(der: &[u8]) -> Option<&[u8]> {
    let mut r = der::SliceReader::new(der).ok()?;
    der::Header::decode(&mut r).ok()?;
    let start = usize::try_from(r.position()).ok()?;
    let len = der_len(der.get(start..)?)?;
    der.get(start..start.checked_add(len)?)
}

/// Check `ek_der` against `cas` at time `now`.
pub fn check_chain(
    ek_der: &[u8],
    cas: &CaCerts,
    now: SystemTime,
) -> Result<CheckedEkCert, EkCertError> {
    if cas.is_empty() {
        return Err(EkCertError::NoCa);
    }
    let leaf =
        Certificate::from_der(ek_der).map_err(|source| EkCertError::ParseEkCert { source })?;
    let subject_of = |c: &Certificate| c.tbs_certificate.subject.to_string();
    valid_now(&leaf, now)?;
    let mut chain = Vec::new();
    let mut current = leaf.clone();
    let mut current_der = ek_der.to_vec();
    for _ in 0..MAX_DEPTH {
        // Names are compared in their RFC 4514 form, not as DER: issuers
        // encode the same name as PrintableString in one certificate and
        // UTF8String in another. The signature is what decides; the name
        // only picks which keys to try.
        let issuer_name = current.tbs_certificate.issuer.to_string();
        let mut tried = None;
        let mut found = None;
        for ca in cas
            .certs
            .iter()
            .filter(|c| c.tbs_certificate.subject.to_string() == issuer_name)
        {
            match verify_signature(&current, &current_der, ca) {
                Ok(()) => {
                    found = Some(ca);
                    break;
                }
                Err(detail) => tried = Some((subject_of(ca), detail)),
            }
        }
        let Some(ca) = found else {
            return Err(match tried {
                Some((issuer, detail)) => EkCertError::BadSignature {
                    subject: subject_of(&current),
                    issuer,
                    detail,
                },
                None => EkCertError::UnknownIssuer {
                    subject: subject_of(&current),
                    issuer: issuer_name,
                },
            });
        };
        if !is_ca(ca) {
            return Err(EkCertError::NotCa(subject_of(ca)));
        }
        valid_now(ca, now)?;
        chain.push(subject_of(ca));
        if ca.tbs_certificate.subject.to_string() == ca.tbs_certificate.issuer.to_string() {
            return Ok(CheckedEkCert {
                fingerprint_sha256: hex::encode(Sha256::digest(ek_der)),
                subject: subject_of(&leaf),
                issuer: leaf.tbs_certificate.issuer.to_string(),
                cert: leaf,
                chain,
            });
        }
        current_der = ca.to_der().map_err(|source| EkCertError::Encode {
            what: "a CA certificate",
            source,
        })?;
        current = ca.clone();
    }
    Err(EkCertError::NoRoot(subject_of(&leaf)))
}

fn valid_now(c: &Certificate, now: SystemTime) -> Result<(), EkCertError> {
    let v = &c.tbs_certificate.validity;
    if now < v.not_before.to_system_time() || now > v.not_after.to_system_time() {
        return Err(EkCertError::Expired {
            subject: c.tbs_certificate.subject.to_string(),
            not_before: v.not_before.to_string(),
            not_after: v.not_after.to_string(),
        });
    }
    Ok(())
}

fn is_ca(c: &Certificate) -> bool {
    c.tbs_certificate
        .extensions
        .iter()
        .flatten()
        .find(|e| e.extn_id.to_string() == OID_BASIC_CONSTRAINTS)
        .and_then(|e| {
            x509_cert::ext::pkix::BasicConstraints::from_der(e.extn_value.as_bytes()).ok()
        })
        .is_some_and(|bc| bc.ca)
}

/// Verify `cert`'s signature (over its TBS bytes as found in `der`) with
/// `issuer`'s key.
fn verify_signature(cert: &Certificate, der: &[u8], issuer: &Certificate) -> Result<(), String> {
    let tbs = tbs_bytes(der).ok_or("the certificate's signed part cannot be located")?;
    let sig = cert
        .signature
        .as_bytes()
        .ok_or("the signature is not a whole number of bytes")?;
    let spki = &issuer.tbs_certificate.subject_public_key_info;
    let alg = cert.signature_algorithm.oid.to_string();
    let digest = match alg.as_str() {
        "1.2.840.113549.1.1.11" | "1.2.840.10045.4.3.2" => Sha256::digest(tbs).to_vec(),
        "1.2.840.113549.1.1.12" | "1.2.840.10045.4.3.3" => Sha384::digest(tbs).to_vec(),
        "1.2.840.113549.1.1.13" => Sha512::digest(tbs).to_vec(),
        other => return Err(format!("signature algorithm {other} is not supported")),
    };
    if alg.starts_with("1.2.840.113549.1.1.") {
        let spki_der = spki.to_der().map_err(|e| e.to_string())?;
        let key = rsa::RsaPublicKey::from_public_key_der(&spki_der)
            .map_err(|e| format!("issuer key is not RSA: {e}"))?;
        let scheme = match alg.as_str() {
            "1.2.840.113549.1.1.11" => rsa::Pkcs1v15Sign::new::<Sha256>(),
            "1.2.840.113549.1.1.12" => rsa::Pkcs1v15Sign::new::<Sha384>(),
            _ => rsa::Pkcs1v15Sign::new::<Sha512>(),
        };
        return key.verify(scheme, &digest, sig).map_err(|e| e.to_string());
    }
    let point = spki.subject_public_key.raw_bytes();
    match ec_curve(spki).as_deref() {
        Some(OID_P256) => {
            let key =
                p256::ecdsa::VerifyingKey::from_sec1_bytes(point).map_err(|e| e.to_string())?;
            let s = p256::ecdsa::Signature::from_der(sig).map_err(|e| e.to_string())?;
            key.verify_prehash(&digest, &s).map_err(|e| e.to_string())
        }
        Some(OID_P384) => {
            let key =
                p384::ecdsa::VerifyingKey::from_sec1_bytes(point).map_err(|e| e.to_string())?;
            let s = p384::ecdsa::Signature::from_der(sig).map_err(|e| e.to_string())?;
            key.verify_prehash(&digest, &s).map_err(|e| e.to_string())
        }
        other => Err(format!("issuer key curve {other:?} is not supported")),
    }
}

/// The named curve of an EC SPKI.
fn ec_curve(spki: &spki::SubjectPublicKeyInfoOwned) -> Option<String> {
    if spki.algorithm.oid.to_string() != OID_EC {
        return None;
    }
    let params = spki.algorithm.parameters.as_ref()?;
    params
        .decode_as::<der::asn1::ObjectIdentifier>()
        .ok()
        .map(|o| o.to_string())
}

/// Strip leading zero bytes (big-endian integers).
fn trim(b: &[u8]) -> &[u8] {
    &b[b.iter().take_while(|x| **x == 0).count()..]
}

/// Check that the certificate certifies the key in the EK public area.
pub fn key_matches(cert: &Certificate, ek: &TpmtPublic) -> Result<(), EkCertError> {
    let spki = &cert.tbs_certificate.subject_public_key_info;
    let mismatch = |s: &str| Err(EkCertError::KeyMismatch(s.to_owned()));
    match &ek.params {
        Params::Rsa {
            modulus, exponent, ..
        } => {
            if spki.algorithm.oid.to_string() != OID_RSA {
                return mismatch("the public area is RSA, the certificate is not rsaEncryption");
            }
            let spki_der = spki.to_der().map_err(|source| EkCertError::Encode {
                what: "the EK certificate's key",
                source,
            })?;
            let key = rsa::RsaPublicKey::from_public_key_der(&spki_der)
                .map_err(|e| EkCertError::KeyMismatch(format!("certificate RSA key: {e}")))?;
            use rsa::traits::PublicKeyParts as _;
            let e = if *exponent == 0 { 65537 } else { *exponent };
            if trim(&key.n().to_bytes_be()) != trim(modulus) {
                return mismatch("RSA moduli differ");
            }
            if key.e() != &rsa::BigUint::from(e) {
                return mismatch("RSA exponents differ");
            }
            Ok(())
        }
        Params::Ecc { curve, x, y, .. } => {
            let (oid, width) = match *curve {
                tpmt::CURVE_P256 => (OID_P256, 32),
                tpmt::CURVE_P384 => (OID_P384, 48),
                other => {
                    return Err(EkCertError::KeyMismatch(format!(
                        "EK curve {other:#06x} is not supported"
                    )));
                }
            };
            if ec_curve(spki).as_deref() != Some(oid) {
                return mismatch("the certificate's key is not on the EK's curve");
            }
            let point = spki.subject_public_key.raw_bytes();
            let (x, y) = (trim(x), trim(y));
            if x.len() > width || y.len() > width {
                return mismatch("EK coordinates are longer than the curve");
            }
            let mut want = vec![4u8];
            want.extend(std::iter::repeat_n(0, width - x.len()));
            want.extend(x);
            want.extend(std::iter::repeat_n(0, width - y.len()));
            want.extend(y);
            if point != want.as_slice() {
                return mismatch("EC points differ");
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_len_trims_nv_padding_and_refuses_garbage() {
        let cert = [0x30, 0x03, 0x02, 0x01, 0x05, 0xff, 0xff];
        assert_eq!(der_len(&cert), Some(5));
        assert_eq!(der_len(&[0x30, 0x10, 0x00]), None);
        assert_eq!(der_len(&[]), None);
    }

    #[test]
    fn no_ca_is_an_error_not_a_pass() {
        assert!(matches!(
            check_chain(&[0x30, 0x00], &CaCerts::default(), SystemTime::now()),
            Err(EkCertError::NoCa)
        ));
    }
}
