//! The enrolment messages (JSON) and the verifier's two steps, which need
//! no TPM: [`challenge`] checks a device's request and makes a credential
//! only its TPM can open; [`finish`] checks the secret it sends back and
//! writes the enrolled-AK record. [`tofu`] is the explicitly insecure
//! alternative.

use std::time::{Duration, SystemTime};

use base64::{Engine as _, engine::general_purpose::STANDARD as B64};
use rand_core::{OsRng, RngCore as _};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use super::{
    credential::{self, CredentialError, HashAlg},
    ekcert::{self, CaCerts, EkCertError},
    tpmt::{self, Params, TpmtError, TpmtPublic, attr},
};
use crate::attest::Device;

/// Message format version (all four messages).
pub const VERSION: u32 = 1;

/// How long a challenge may stay open. Long enough for a device on a slow
/// link; short enough that a stolen pending secret is soon worthless.
pub const CHALLENGE_TTL: Duration = Duration::from_secs(600);

/// Which endorsement key the credential is encrypted to; the device
/// recreates it from the TCG default template of this kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EkKind {
    /// RSA-2048, template L-1, certificate at NV 0x01c00002.
    Rsa2048,
    /// ECC NIST P-256, template L-2, certificate at NV 0x01c0000a.
    EccP256,
    /// ECC NIST P-384, template H-3, certificate at NV 0x01c00016 (the
    /// ECC EK swtpm_setup certifies).
    EccP384,
}

impl EkKind {
    /// The NV index of its certificate (TCG EK Credential Profile 2.3,
    /// 2.2.1.4 and 2.2.1.5).
    pub fn nv_index(self) -> u32 {
        match self {
            Self::Rsa2048 => 0x01c0_0002,
            Self::EccP256 => 0x01c0_000a,
            Self::EccP384 => 0x01c0_0016,
        }
    }

    /// The kind of an EK public area.
    pub fn of(ek: &TpmtPublic) -> Option<Self> {
        match &ek.params {
            Params::Rsa { key_bits: 2048, .. } => Some(Self::Rsa2048),
            Params::Ecc {
                curve: tpmt::CURVE_P256,
                ..
            } => Some(Self::EccP256),
            Params::Ecc {
                curve: tpmt::CURVE_P384,
                ..
            } => Some(Self::EccP384),
            _ => None,
        }
    }
}

/// Step 1, device to verifier.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// [`VERSION`].
    pub version: u32,
    /// Who the device says it is (not checked: informational).
    pub device: Device,
    /// The EK certificate, DER, base64.
    pub ek_certificate: String,
    /// The EK's `TPM2B_PUBLIC`, base64.
    pub ek_public: String,
    /// The AK's `TPM2B_PUBLIC`, base64.
    pub ak_public: String,
}

/// Step 2, verifier to device.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Challenge {
    /// [`VERSION`].
    pub version: u32,
    /// Random id, echoed in the response.
    pub id: String,
    /// The EK the credential is for.
    pub ek: EkKind,
    /// The AK's name, hex (the device may check it is its AK's).
    pub ak_name: String,
    /// `TPM2B_ID_OBJECT` body, base64.
    pub credential_blob: String,
    /// `TPM2B_ENCRYPTED_SECRET` body, base64.
    pub encrypted_secret: String,
}

/// Step 3, device to verifier.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Response {
    /// [`VERSION`].
    pub version: u32,
    /// The challenge's id.
    pub challenge_id: String,
    /// What TPM2_ActivateCredential returned, base64.
    pub secret: String,
}

/// What the verifier keeps between [`challenge`] and [`finish`]: the secret
/// and what it was issued for. Keep it private (it is the proof); it is
/// serialisable so a verifier CLI can hold it in a file between the steps.
/// Its `Debug` does not show the secret.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PendingSecret {
    /// The challenge's id.
    pub challenge_id: String,
    /// The AK's name, hex.
    pub ak_name: String,
    /// SHA-256 of the EK certificate, hex.
    pub ek_certificate_sha256: String,
    /// The EK certificate's issuer.
    pub ek_issuer: String,
    /// The EK certificate's subject.
    pub ek_subject: String,
    /// The chain above it, issuer first.
    pub ek_chain: Vec<String>,
    /// When the challenge was made (RFC 3339).
    pub issued: String,
    /// The secret, hex.
    secret: String,
}

impl std::fmt::Debug for PendingSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingSecret")
            .field("challenge_id", &self.challenge_id)
            .field("ak_name", &self.ak_name)
            .field("issued", &self.issued)
            .finish_non_exhaustive()
    }
}

/// The verifier's record of an enrolled AK.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Enrolled {
    /// [`VERSION`].
    pub version: u32,
    /// The AK's name, hex (`000b` || SHA-256 of its `TPMT_PUBLIC`).
    pub ak_name: String,
    /// The AK public key, SPKI PEM (what `guardian verify` takes).
    pub ak_public_pem: String,
    /// The AK's `TPM2B_PUBLIC`, base64.
    pub ak_tpm2b_public: String,
    /// SHA-256 of the EK certificate, hex (None when trusted on first use).
    pub ek_certificate_sha256: Option<String>,
    /// Its issuer.
    pub ek_issuer: Option<String>,
    /// Its subject.
    pub ek_subject: Option<String>,
    /// The chain above it, issuer first.
    #[serde(default)]
    pub ek_chain: Vec<String>,
    /// Who the device said it was.
    pub device: Device,
    /// When (RFC 3339).
    pub enrolled_at: String,
    /// True when the AK was trusted on first use, with no proof that it is
    /// in a TPM at all.
    pub insecure_tofu: bool,
}

/// Why the verifier refused.
#[derive(Debug, thiserror::Error)]
pub enum EnrolError {
    /// A message of another format version.
    #[error("{message} has version {found}, this verifier speaks {VERSION}")]
    Version {
        /// Which message.
        message: &'static str,
        /// Its version.
        found: u32,
    },
    /// A field that is not valid base64 or hex.
    #[error("field {field} is not valid {encoding}")]
    Encoding {
        /// The field.
        field: &'static str,
        /// base64 or hex.
        encoding: &'static str,
    },
    /// A public area that does not parse.
    #[error("the {which} public area: {source}")]
    Public {
        /// "AK" or "EK".
        which: &'static str,
        /// Why.
        #[source]
        source: TpmtError,
    },
    /// An AK attribute with the wrong value.
    #[error("the AK is refused: objectAttributes.{attribute} must be {}", if *.required { "set" } else { "clear" })]
    AkAttribute {
        /// The attribute.
        attribute: &'static str,
        /// What it must be.
        required: bool,
    },
    /// An AK algorithm other than the one guardian uses.
    #[error("the AK is refused: {what} is {found:#06x}, must be {required:#06x}")]
    AkAlgorithm {
        /// Which parameter.
        what: &'static str,
        /// What it is.
        found: u16,
        /// What it must be.
        required: u16,
    },
    /// The AK is not an ECC key.
    #[error("the AK is refused: it is not an ECC key")]
    AkNotEcc,
    /// The AK's point is not on P-256.
    #[error("the AK point is not on P-256")]
    AkPoint,
    /// An EK of a kind this verifier cannot make credentials for.
    #[error("the EK is not RSA-2048, ECC P-256 or ECC P-384")]
    EkKind,
    /// The EK certificate chain or key.
    #[error("EK certificate: {source}")]
    EkCert {
        /// Why.
        #[source]
        source: EkCertError,
    },
    /// Making the credential.
    #[error("making the credential: {source}")]
    Credential {
        /// Why.
        #[source]
        source: CredentialError,
    },
    /// The system's random generator failed.
    #[error("the random generator failed: {source}")]
    Random {
        /// Why.
        #[source]
        source: rand_core::Error,
    },
    /// A response to another challenge (a replay, or a mix-up).
    #[error("the response answers challenge {got}, not the pending challenge {expected}")]
    WrongChallenge {
        /// The pending challenge.
        expected: String,
        /// The one answered.
        got: String,
    },
    /// The request given to finish is not the one challenged.
    #[error("the request does not match the one challenged ({0} differs)")]
    RequestMismatch(&'static str),
    /// The challenge is too old.
    #[error("the challenge issued at {issued} has expired (older than {}s)", CHALLENGE_TTL.as_secs())]
    Expired {
        /// When it was issued.
        issued: String,
    },
    /// The secret is wrong: the AK is not in the TPM with the certified EK.
    #[error(
        "the returned secret is wrong: the AK is not resident in the TPM that holds the certified EK"
    )]
    SecretMismatch,
}

fn b64(field: &'static str, s: &str) -> Result<Vec<u8>, EnrolError> {
    B64.decode(s).map_err(|_| EnrolError::Encoding {
        field,
        encoding: "base64",
    })
}

fn check_version(message: &'static str, found: u32) -> Result<(), EnrolError> {
    if found != VERSION {
        return Err(EnrolError::Version { message, found });
    }
    Ok(())
}

/// A checked AK: its name and PEM.
#[derive(Debug)]
struct CheckedAk {
    name: Vec<u8>,
    pem: String,
}

/// Parse the AK public area and check it is a key guardian can trust to
/// sign quotes: restricted (it signs only TPM-made structures, so it cannot
/// be made to sign a forged quote), a signing key and not a decryption
/// key, fixedTPM and fixedParent (never duplicated out of this TPM),
/// sensitiveDataOrigin (generated inside, not imported), ECC P-256 with
/// ECDSA/SHA-256 and a SHA-256 name.
fn check_ak(tpm2b: &[u8]) -> Result<CheckedAk, EnrolError> {
    let (ak, tpmt_bytes) = TpmtPublic::parse_tpm2b(tpm2b).map_err(|source| EnrolError::Public {
        which: "AK",
        source,
    })?;
    for (bit, attribute, required) in [
        (attr::RESTRICTED, "restricted", true),
        (attr::SIGN, "sign", true),
        (attr::FIXED_TPM, "fixedTPM", true),
        (attr::FIXED_PARENT, "fixedParent", true),
        (attr::SENSITIVE_DATA_ORIGIN, "sensitiveDataOrigin", true),
        (attr::DECRYPT, "decrypt", false),
    ] {
        if ak.has(bit) != required {
            return Err(EnrolError::AkAttribute {
                attribute,
                required,
            });
        }
    }
    if ak.name_alg != tpmt::ALG_SHA256 {
        return Err(EnrolError::AkAlgorithm {
            what: "nameAlg",
            found: ak.name_alg,
            required: tpmt::ALG_SHA256,
        });
    }
    let Params::Ecc {
        scheme,
        curve,
        x,
        y,
        ..
    } = &ak.params
    else {
        return Err(EnrolError::AkNotEcc);
    };
    for (what, found, required) in [
        ("curveID", *curve, tpmt::CURVE_P256),
        ("scheme", scheme.scheme, tpmt::ALG_ECDSA),
        ("scheme hash", scheme.hash, tpmt::ALG_SHA256),
    ] {
        if found != required {
            return Err(EnrolError::AkAlgorithm {
                what,
                found,
                required,
            });
        }
    }
    if x.len() > 32 || y.len() > 32 {
        return Err(EnrolError::AkPoint);
    }
    let mut sec1 = vec![4u8];
    sec1.extend(std::iter::repeat_n(0, 32 - x.len()));
    sec1.extend(x);
    sec1.extend(std::iter::repeat_n(0, 32 - y.len()));
    sec1.extend(y);
    let pem = crate::attest::bundle::ak_pem(&sec1).map_err(|_| EnrolError::AkPoint)?;
    Ok(CheckedAk {
        name: credential::name(tpmt_bytes, HashAlg::Sha256),
        pem,
    })
}

/// Verifier, step 2: check the request and challenge the device.
///
/// Checks, in order: the EK certificate chains to `cas`; the EK public area
/// in the request is the certified key (else the credential would go to a
/// key the attacker holds); the AK is a restricted, TPM-resident signing
/// key of guardian's kind. Then encrypts a fresh 32-byte secret to the EK,
/// bound to the AK's name.
pub fn challenge(
    request: &Request,
    cas: &CaCerts,
) -> Result<(Challenge, PendingSecret), EnrolError> {
    challenge_at(request, cas, SystemTime::now())
}

/// [`challenge`] at a given time (certificate validity), for tests.
pub fn challenge_at(
    request: &Request,
    cas: &CaCerts,
    now: SystemTime,
) -> Result<(Challenge, PendingSecret), EnrolError> {
    check_version("the request", request.version)?;
    let ek_der = b64("ek_certificate", &request.ek_certificate)?;
    let ek_tpm2b = b64("ek_public", &request.ek_public)?;
    let ak_tpm2b = b64("ak_public", &request.ak_public)?;
    let cert =
        ekcert::check_chain(&ek_der, cas, now).map_err(|source| EnrolError::EkCert { source })?;
    let (ek, _) = TpmtPublic::parse_tpm2b(&ek_tpm2b).map_err(|source| EnrolError::Public {
        which: "EK",
        source,
    })?;
    ekcert::key_matches(&cert.cert, &ek).map_err(|source| EnrolError::EkCert { source })?;
    let kind = EkKind::of(&ek).ok_or(EnrolError::EkKind)?;
    let ak = check_ak(&ak_tpm2b)?;

    let mut secret = [0u8; 32];
    let mut id = [0u8; 16];
    OsRng
        .try_fill_bytes(&mut secret)
        .and_then(|()| OsRng.try_fill_bytes(&mut id))
        .map_err(|source| EnrolError::Random { source })?;
    let cred = credential::make_credential(&ek, &secret, &ak.name, &mut OsRng)
        .map_err(|source| EnrolError::Credential { source })?;
    let id = hex::encode(id);
    Ok((
        Challenge {
            version: VERSION,
            id: id.clone(),
            ek: kind,
            ak_name: hex::encode(&ak.name),
            credential_blob: B64.encode(&cred.id_object),
            encrypted_secret: B64.encode(&cred.encrypted_secret),
        },
        PendingSecret {
            challenge_id: id,
            ak_name: hex::encode(&ak.name),
            ek_certificate_sha256: cert.fingerprint_sha256,
            ek_issuer: cert.issuer,
            ek_subject: cert.subject,
            ek_chain: cert.chain,
            issued: humantime::format_rfc3339_seconds(now).to_string(),
            secret: hex::encode(secret),
        },
    ))
}

/// Verifier, step 4: check the device's answer and, only if the secret is
/// the one sent, write the record. The pending secret is consumed: one
/// challenge, one answer.
pub fn finish(
    request: &Request,
    pending: PendingSecret,
    response: &Response,
) -> Result<Enrolled, EnrolError> {
    finish_at(request, pending, response, SystemTime::now())
}

/// [`finish`] at a given time, for tests.
pub fn finish_at(
    request: &Request,
    pending: PendingSecret,
    response: &Response,
    now: SystemTime,
) -> Result<Enrolled, EnrolError> {
    check_version("the response", response.version)?;
    if response.challenge_id != pending.challenge_id {
        return Err(EnrolError::WrongChallenge {
            expected: pending.challenge_id,
            got: response.challenge_id.clone(),
        });
    }
    let issued = humantime::parse_rfc3339(&pending.issued).map_err(|_| EnrolError::Encoding {
        field: "issued",
        encoding: "RFC 3339",
    })?;
    if now.duration_since(issued).unwrap_or_default() > CHALLENGE_TTL {
        return Err(EnrolError::Expired {
            issued: pending.issued,
        });
    }
    // The record is written from the request; it must be the request the
    // challenge was made for, or a checked AK could be swapped for another.
    let ak_tpm2b = b64("ak_public", &request.ak_public)?;
    let ak = check_ak(&ak_tpm2b)?;
    if hex::encode(&ak.name) != pending.ak_name {
        return Err(EnrolError::RequestMismatch("the AK"));
    }
    let ek_der = b64("ek_certificate", &request.ek_certificate)?;
    if hex::encode(Sha256::digest(&ek_der)) != pending.ek_certificate_sha256 {
        return Err(EnrolError::RequestMismatch("the EK certificate"));
    }
    let expected = hex::decode(&pending.secret).map_err(|_| EnrolError::Encoding {
        field: "secret",
        encoding: "hex",
    })?;
    let got = b64("secret", &response.secret)?;
    // Constant time: a verifier that answers faster for a longer correct
    // prefix would let a device guess the secret byte by byte.
    if !bool::from(expected.ct_eq(&got)) {
        return Err(EnrolError::SecretMismatch);
    }
    Ok(Enrolled {
        version: VERSION,
        ak_name: pending.ak_name,
        ak_public_pem: ak.pem,
        ak_tpm2b_public: request.ak_public.clone(),
        ek_certificate_sha256: Some(pending.ek_certificate_sha256),
        ek_issuer: Some(pending.ek_issuer),
        ek_subject: Some(pending.ek_subject),
        ek_chain: pending.ek_chain,
        device: request.device.clone(),
        enrolled_at: humantime::format_rfc3339_seconds(now).to_string(),
        insecure_tofu: false,
    })
}

/// INSECURE: trust the request's AK on first use, with no EK certificate
/// and no credential activation. Nothing shows the AK is in a TPM at all
/// (it may be a software key); the record says so (`insecure_tofu`). The
/// AK's attributes are still checked, for what a claim is worth.
pub fn tofu(request: &Request) -> Result<Enrolled, EnrolError> {
    check_version("the request", request.version)?;
    let ak_tpm2b = b64("ak_public", &request.ak_public)?;
    let ak = check_ak(&ak_tpm2b)?;
    log::warn!(
        "enrolling AK {} of {:?} by trust on first use: nothing proves it is in a TPM",
        hex::encode(&ak.name),
        request.device.hostname
    );
    Ok(Enrolled {
        version: VERSION,
        ak_name: hex::encode(&ak.name),
        ak_public_pem: ak.pem,
        ak_tpm2b_public: request.ak_public.clone(),
        ek_certificate_sha256: None,
        ek_issuer: None,
        ek_subject: None,
        ek_chain: Vec::new(),
        device: request.device.clone(),
        enrolled_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        insecure_tofu: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrol::tpmt::tests::ecc_ak;

    const GOOD: u32 = 0x0005_0072;

    fn tpm2b(t: &[u8]) -> Vec<u8> {
        let mut v = (t.len() as u16).to_be_bytes().to_vec();
        v.extend(t);
        v
    }

    fn point() -> ([u8; 32], [u8; 32]) {
        use p256::elliptic_curve::sec1::ToEncodedPoint as _;
        let p = p256::SecretKey::random(&mut OsRng)
            .public_key()
            .to_encoded_point(false);
        (
            <[u8; 32]>::try_from(&p.x().unwrap()[..]).unwrap(),
            <[u8; 32]>::try_from(&p.y().unwrap()[..]).unwrap(),
        )
    }

    #[test]
    fn accepts_guardians_ak() {
        let (x, y) = point();
        let t = ecc_ak(GOOD, &x, &y);
        let ak = check_ak(&tpm2b(&t)).unwrap();
        assert_eq!(ak.name[..2], [0x00, 0x0b]);
        assert_eq!(ak.name[2..], Sha256::digest(&t)[..]);
        assert!(ak.pem.starts_with("-----BEGIN PUBLIC KEY-----"));
    }

    #[test]
    fn refuses_aks_without_the_protective_attributes() {
        let (x, y) = point();
        for (attrs, attribute) in [
            (GOOD & !attr::RESTRICTED, "restricted"),
            (GOOD | attr::DECRYPT, "decrypt"),
            (GOOD & !attr::FIXED_TPM, "fixedTPM"),
            (GOOD & !attr::FIXED_PARENT, "fixedParent"),
            (GOOD & !attr::SENSITIVE_DATA_ORIGIN, "sensitiveDataOrigin"),
            (GOOD & !attr::SIGN, "sign"),
        ] {
            match check_ak(&tpm2b(&ecc_ak(attrs, &x, &y))) {
                Err(EnrolError::AkAttribute { attribute: a, .. }) => assert_eq!(a, attribute),
                other => panic!("{attribute}: {other:?}"),
            }
        }
    }

    #[test]
    fn refuses_other_algorithms() {
        let (x, y) = point();
        let mut t = ecc_ak(GOOD, &x, &y);
        t[2..4].copy_from_slice(&tpmt::ALG_SHA384.to_be_bytes());
        assert!(matches!(
            check_ak(&tpm2b(&t)),
            Err(EnrolError::AkAlgorithm {
                what: "nameAlg",
                ..
            })
        ));
        let mut t = ecc_ak(GOOD, &x, &y);
        // The scheme hash sits after type, nameAlg, attrs, policy size,
        // symmetric and scheme: offset 14.
        t[14..16].copy_from_slice(&tpmt::ALG_SHA384.to_be_bytes());
        assert!(matches!(
            check_ak(&tpm2b(&t)),
            Err(EnrolError::AkAlgorithm {
                what: "scheme hash",
                ..
            })
        ));
        let t = ecc_ak(GOOD, &[0xff; 32], &[0xff; 32]);
        assert!(matches!(check_ak(&tpm2b(&t)), Err(EnrolError::AkPoint)));
    }

    #[test]
    fn tofu_is_marked_insecure() {
        let (x, y) = point();
        let req = Request {
            version: VERSION,
            device: Device::default(),
            ek_certificate: String::new(),
            ek_public: String::new(),
            ak_public: B64.encode(tpm2b(&ecc_ak(GOOD, &x, &y))),
        };
        let rec = tofu(&req).unwrap();
        assert!(rec.insecure_tofu);
        assert_eq!(rec.ek_certificate_sha256, None);
        let json = serde_json::to_string(&rec).unwrap();
        assert!(json.contains("\"insecure_tofu\":true"), "{json}");
    }

    #[test]
    fn pending_secret_debug_hides_the_secret() {
        let p = PendingSecret {
            challenge_id: "c".into(),
            ak_name: "n".into(),
            ek_certificate_sha256: String::new(),
            ek_issuer: String::new(),
            ek_subject: String::new(),
            ek_chain: Vec::new(),
            issued: String::new(),
            secret: "deadbeef".into(),
        };
        assert!(!format!("{p:?}").contains("deadbeef"));
    }
}
