//! The verifier's enrolment steps as `guardian enrol` runs them: each reads
//! its inputs from files, runs one step of [`super::protocol`], and writes
//! its output (the pending secret mode 0600, since it must never leave the
//! verifier). Also the AK a verifier trusts for a device: from its
//! enrolment record, or given as a key and trusted on first use. The
//! device's steps (they need the TPM) are the agent's
//! (`guardian::enrol::files`).

use std::{
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use p256::ecdsa::VerifyingKey;

use super::{Challenge, EkCertError, EnrolError, Enrolled, PendingSecret, Request, Response};
use crate::attest::BundleError;

/// Errors of a verifier's enrolment step, or of the AK it trusts; each
/// names the file or the step.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// A message could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file is not the message expected.
    #[error("{path}: not a valid message")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// A message could not be encoded.
    #[error("encoding {path}")]
    Encode {
        /// The file it was for.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// A message could not be written.
    #[error("cannot write {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The CA certificates could not be loaded.
    #[error(transparent)]
    Ca(#[from] EkCertError),
    /// The verifier refused the request.
    #[error("{path}: refused")]
    Refused {
        /// The request.
        path: PathBuf,
        /// Why.
        #[source]
        source: EnrolError,
    },
    /// The verifier refused the device's answer: not enrolled.
    #[error("enrolment refused")]
    NotEnrolled(#[source] EnrolError),
    /// An AK given as a key, without consent to trust it on first use.
    #[error(
        "--ak {}: an AK given as a key is trusted on first use, without proof that a certified TPM holds it; enrol the device (`guardian enrol`) and pass --device, or say --insecure-tofu",
        path.display()
    )]
    Tofu {
        /// The key file.
        path: PathBuf,
    },
    /// Neither an AK nor an enrolment record.
    #[error("--ak or --device is needed")]
    NoAk,
    /// The AK key file is unusable.
    #[error(transparent)]
    Ak(#[from] BundleError),
    /// The enrolment record's AK is not a P-256 key.
    #[error("{}: ak_public_pem is not a P-256 key", path.display())]
    RecordAk {
        /// The record.
        path: PathBuf,
    },
}

/// Read a JSON message, naming the file in the error.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, FileError> {
    let bytes = std::fs::read(path).map_err(|source| FileError::Read {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|source| FileError::Parse {
        path: path.to_owned(),
        source,
    })
}

/// Write a JSON message (mode 0600 when `secret`), naming the file in the
/// error.
pub fn write_json<T: serde::Serialize>(
    path: &Path,
    value: &T,
    secret: bool,
) -> Result<(), FileError> {
    let mut text = serde_json::to_vec_pretty(value).map_err(|source| FileError::Encode {
        path: path.to_owned(),
        source,
    })?;
    text.push(b'\n');
    let write = |source| FileError::Write {
        path: path.to_owned(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .map_err(write)?;
    f.write_all(&text).map_err(write)
}

/// What the verifier's step 2 made.
#[derive(Debug)]
pub struct Challenged {
    /// The challenge sent to the device.
    pub challenge: Challenge,
    /// The secret kept (its issuer and subject say whose EK it is).
    pub secret: PendingSecret,
}

/// Verifier, step 2: check `request` against the CA certificates `cas`,
/// write the challenge to `output` and the secret to `pending` (0600).
pub fn challenge(
    request: &Path,
    cas: &[PathBuf],
    output: &Path,
    pending: &Path,
) -> Result<Challenged, FileError> {
    let req: Request = read_json(request)?;
    let cas = super::load_ca_certs(cas)?;
    let (challenge, secret) =
        super::challenge(&req, &cas).map_err(|source| FileError::Refused {
            path: request.to_owned(),
            source,
        })?;
    write_json(pending, &secret, true)?;
    write_json(output, &challenge, false)?;
    Ok(Challenged { challenge, secret })
}

/// Verifier, step 4: check the device's response against the pending
/// secret and write the enrolment record to `output`. A refusal is
/// [`FileError::NotEnrolled`] (nothing is written).
pub fn finish(
    request: &Path,
    pending: &Path,
    response: &Path,
    output: &Path,
) -> Result<Enrolled, FileError> {
    let req: Request = read_json(request)?;
    let secret: PendingSecret = read_json(pending)?;
    let resp: Response = read_json(response)?;
    let rec = super::finish(&req, secret, &resp).map_err(FileError::NotEnrolled)?;
    write_json(output, &rec, false)?;
    Ok(rec)
}

/// The AK a verifier checks a device's quotes with.
#[derive(Debug)]
pub struct TrustedAk {
    /// The key.
    pub key: VerifyingKey,
    /// When it was not proven resident in a certified TPM: why it is
    /// trusted anyway, in words (for a warning and the verdict).
    pub insecure: Option<String>,
}

/// The AK to verify with: given as a PEM key (trusted as given, only with
/// `insecure_tofu`), or from an enrolment record.
pub fn trusted_ak(
    ak: Option<&Path>,
    device: Option<&Path>,
    insecure_tofu: bool,
) -> Result<TrustedAk, FileError> {
    match (ak, device) {
        (Some(p), _) => {
            if !insecure_tofu {
                return Err(FileError::Tofu { path: p.to_owned() });
            }
            Ok(TrustedAk {
                key: crate::attest::read_ak(p)?,
                insecure: Some(format!(
                    "AK {} trusted on first use (--insecure-tofu), not enrolled",
                    p.display()
                )),
            })
        }
        (None, Some(p)) => {
            use p256::pkcs8::DecodePublicKey as _;
            let rec: Enrolled = read_json(p)?;
            let key = VerifyingKey::from_public_key_pem(&rec.ak_public_pem)
                .map_err(|_| FileError::RecordAk { path: p.to_owned() })?;
            Ok(TrustedAk {
                key,
                insecure: rec.insecure_tofu.then(|| {
                    format!(
                        "{}: enrolled on first use, without proof of a certified TPM",
                        p.display()
                    )
                }),
            })
        }
        (None, None) => Err(FileError::NoAk),
    }
}
