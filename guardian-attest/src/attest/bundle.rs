//! The evidence bundle: what a device sends a verifier (`guardian quote`),
//! as the verifier reads it; making one with the TPM is the agent's
//! (`guardian::attest::bundle`).
//!
//! One JSON document. Its quote and signature are the TPM's own bytes
//! (`TPMS_ATTEST`, `TPMT_SIGNATURE`), so `tpm2_checkquote` can check them
//! with the AK public key. The measurement log it carries is the prefix of
//! this boot's records that replays to the quoted PCR values: records added
//! while the quote was taken are left for the next quote rather than
//! making this one fail.

use std::{collections::BTreeMap, path::Path};

use serde::{Deserialize, Serialize};

use crate::evidence::{self, Record};

/// Evidence bundle format version (2: content-bound records).
pub const BUNDLE_VERSION: u32 = 2;
/// The largest bundle a verifier reads.
pub const MAX_BUNDLE_BYTES: u64 = 64 << 20;
/// The shortest nonce accepted (bytes).
pub const MIN_NONCE: usize = 16;
/// The longest nonce a quote can carry (`TPM2B_DATA` of a SHA-256 AK).
pub const MAX_NONCE: usize = 64;

/// What a device sends a verifier.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Evidence {
    /// Format version.
    pub version: u32,
    /// guardian's version on the device.
    pub guardian_version: String,
    /// Device identity (hostname, machine id, boot id): the device's word.
    pub device: Device,
    /// The verifier's nonce, hex.
    pub nonce: String,
    /// `TPMS_ATTEST`, base64.
    pub quote: String,
    /// `TPMT_SIGNATURE`, base64.
    pub signature: String,
    /// Quoted PCR values, SHA-256 bank: index -> hex.
    pub pcrs: BTreeMap<u32, String>,
    /// AK public key, PEM (informational: the verifier uses its own copy).
    pub ak_public_pem: String,
    /// AK public area, `TPM2B_PUBLIC`, base64.
    pub ak_public_tpm2b: String,
    /// This boot's measurement log records, up to the quote. Kept as JSON
    /// values so the verifier can name a record it cannot read.
    pub measurement_log: Vec<serde_json::Value>,
    /// What the agent said of its attestor when the quote was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentState>,
}

/// The daemon's attestor as `guardian status` sees it (the device's word;
/// a stalled attestor is a reason not to trust the quote's completeness).
/// The agent's status file carries it too (`guardian::status::AgentState`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AgentState {
    /// Whether `guardian run` is running.
    pub running: bool,
    /// Records waiting for the log.
    pub backlog: u64,
    /// Since when the attestor cannot write, if it cannot.
    pub stalled_since: Option<String>,
    /// Records lost (queue full, write errors).
    pub lost: u64,
}

/// Who the device says it is (the agent fills it in for the machine it
/// runs on: `guardian::attest::bundle::this_device`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Device {
    /// Host name.
    pub hostname: String,
    /// `/etc/machine-id`, if any.
    pub machine_id: Option<String>,
    /// Kernel boot id.
    pub boot_id: String,
}

/// Errors reading verifier inputs; each names the file. (Making a bundle
/// has the agent's `QuoteError`.)
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The bundle is not an evidence document.
    #[error("malformed evidence bundle {path}: {message}")]
    Bundle {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The AK file is not a P-256 public key.
    #[error("{path}: not an ECC P-256 public key in PEM")]
    Ak {
        /// The file.
        path: std::path::PathBuf,
    },
    /// The nonce is unusable.
    #[error(
        "nonce {0:?} is not {MIN_NONCE} to {MAX_NONCE} bytes of hex (a verifier's nonce must be fresh and unguessable: `guardian challenge` makes one)"
    )]
    Nonce(String),
}

/// The AK public key as PEM, from its SEC1 point.
pub fn ak_pem(sec1: &[u8]) -> Result<String, String> {
    use p256::pkcs8::EncodePublicKey as _;
    let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(sec1)
        .map_err(|e| format!("AK point is not on P-256: {e}"))?;
    key.to_public_key_pem(p256::pkcs8::LineEnding::LF)
        .map_err(|e| format!("encoding the AK public key: {e}"))
}

/// Parse a hex nonce: [`MIN_NONCE`] to [`MAX_NONCE`] bytes.
pub fn parse_nonce(s: &str) -> Result<Vec<u8>, BundleError> {
    match hex::decode(s) {
        Ok(v) if (MIN_NONCE..=MAX_NONCE).contains(&v.len()) => Ok(v),
        _ => Err(BundleError::Nonce(s.to_owned())),
    }
}

/// A fresh nonce from the operating system's random source (32 bytes).
pub fn fresh_nonce() -> Result<Vec<u8>, std::io::Error> {
    let mut n = vec![0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut n))?;
    Ok(n)
}

/// The shortest prefix of `records` that replays to `pcrs` (every quoted
/// PCR), or all of them when none does (the verifier then says why).
pub fn prefix_for<'a>(records: &[&'a Record], pcrs: &[(u32, [u8; 32])]) -> Vec<&'a Record> {
    let voided: std::collections::HashSet<u64> = records.iter().filter_map(|r| r.voids).collect();
    let mut values: BTreeMap<u32, [u8; 32]> = pcrs.iter().map(|(p, _)| (*p, [0u8; 32])).collect();
    let matches = |values: &BTreeMap<u32, [u8; 32]>| {
        pcrs.iter()
            .all(|(p, want)| values.get(p).is_some_and(|v| v == want))
    };
    if matches(&values) {
        // Nothing extended yet; keep the notes that came before anything.
        let end = records
            .iter()
            .position(|r| r.extended)
            .unwrap_or(records.len());
        return records[..end].to_vec();
    }
    for (i, r) in records.iter().enumerate() {
        if r.extended
            && !voided.contains(&r.seq)
            && let Some(v) = values.get_mut(&r.pcr)
        {
            *v = evidence::log::extend(v, &r.digest_bytes());
            if matches(&values) {
                // Include the notes right after it (a void for a later
                // record would be past the quote anyway).
                return records[..=i].to_vec();
            }
        }
    }
    records.to_vec()
}

/// Read a bundle file (at most [`MAX_BUNDLE_BYTES`]).
pub fn read_evidence(path: &Path) -> Result<Evidence, BundleError> {
    use std::io::Read as _;
    let io = |source| BundleError::Io {
        path: path.to_owned(),
        source,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .map_err(io)?
        .take(MAX_BUNDLE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    parse_evidence(&bytes).map_err(|message| BundleError::Bundle {
        path: path.to_owned(),
        message,
    })
}

/// Parse a bundle's bytes (what [`read_evidence`] read): at most
/// [`MAX_BUNDLE_BYTES`], JSON, version [`BUNDLE_VERSION`]. The error says
/// what is wrong; the caller names the file. Everything in the result is
/// still the device's word until [`super::verify`] judges it.
pub fn parse_evidence(bytes: &[u8]) -> Result<Evidence, String> {
    if bytes.len() as u64 > MAX_BUNDLE_BYTES {
        return Err(format!("larger than {} MiB", MAX_BUNDLE_BYTES >> 20));
    }
    let ev: Evidence = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if ev.version != BUNDLE_VERSION {
        return Err(format!(
            "version {} is not supported (this verifier reads version {BUNDLE_VERSION})",
            ev.version
        ));
    }
    Ok(ev)
}

/// Read an AK public key (PEM).
pub fn read_ak(path: &Path) -> Result<p256::ecdsa::VerifyingKey, BundleError> {
    use p256::pkcs8::DecodePublicKey as _;
    let pem = std::fs::read_to_string(path).map_err(|source| BundleError::Io {
        path: path.to_owned(),
        source,
    })?;
    p256::ecdsa::VerifyingKey::from_public_key_pem(&pem).map_err(|_| BundleError::Ak {
        path: path.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonces_are_long_enough() {
        assert_eq!(parse_nonce(&"0a".repeat(16)).unwrap().len(), 16);
        assert!(parse_nonce("00").is_err(), "one byte is refused");
        assert!(parse_nonce(&"00".repeat(15)).is_err());
        assert!(parse_nonce("zz").is_err());
        assert!(parse_nonce(&"00".repeat(65)).is_err());
        let a = fresh_nonce().unwrap();
        assert_eq!(a.len(), 32);
        assert_ne!(a, fresh_nonce().unwrap());
    }
}
