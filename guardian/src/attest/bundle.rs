//! The evidence bundle: what a device sends a verifier (`guardian quote`).
//!
//! One JSON document. Its quote and signature are the TPM's own bytes
//! (`TPMS_ATTEST`, `TPMT_SIGNATURE`), so `tpm2_checkquote` can check them
//! with the AK public key. The measurement log it carries is the prefix of
//! this boot's records that replays to the quoted PCR values: records added
//! while the quote was taken are left for the next quote rather than
//! making this one fail.

use std::{collections::BTreeMap, path::Path};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::{
    config::Config,
    evidence::{self, Contents, Record},
    tpm::{self, AkPublic, Quote, TpmError},
};

/// Evidence bundle format version (2: content-bound records).
pub const BUNDLE_VERSION: u32 = 2;
/// The largest bundle a verifier reads.
pub const MAX_BUNDLE_BYTES: u64 = 64 << 20;
/// The shortest nonce accepted (bytes).
pub const MIN_NONCE: usize = 16;
/// The longest nonce a quote can carry (`TPM2B_DATA` of a SHA-256 AK).
pub const MAX_NONCE: usize = 64;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

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

pub use crate::status::AgentState;

/// Who the device says it is.
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

impl Device {
    /// This machine.
    pub fn this() -> Self {
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
        };
        Self {
            hostname: read("/proc/sys/kernel/hostname").unwrap_or_default(),
            machine_id: read("/etc/machine-id"),
            boot_id: evidence::boot_id(),
        }
    }
}

/// Errors reading verifier inputs or making a bundle; each names the file.
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
    /// The config's quote PCRs are unusable.
    #[error("[attest] pcrs: {0}")]
    Pcrs(String),
    /// The TPM failed.
    #[error(transparent)]
    Tpm(#[from] TpmError),
    /// The measurement log is unreadable.
    #[error(transparent)]
    Log(#[from] evidence::LogError),
    /// The AK's public part could not be encoded.
    #[error("encoding the AK public key: {0}")]
    AkEncoding(String),
    /// The bundle could not be encoded.
    #[error("encoding the evidence bundle")]
    Encode(#[source] serde_json::Error),
    /// An output could not be written.
    #[error("writing {what}")]
    Write {
        /// The file, or what it holds.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
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

/// Build the bundle from a quote and the log.
pub fn build(
    nonce: &[u8],
    quote: &Quote,
    ak: &AkPublic,
    log: &Contents,
    agent: Option<AgentState>,
) -> Result<Evidence, BundleError> {
    let device = Device::this();
    let this_boot: Vec<&Record> = log.this_boot(&device.boot_id).collect();
    let records = prefix_for(&this_boot, &quote.pcrs);
    Ok(Evidence {
        version: BUNDLE_VERSION,
        guardian_version: crate::VERSION.to_owned(),
        nonce: hex::encode(nonce),
        quote: B64.encode(&quote.attest),
        signature: B64.encode(&quote.signature),
        pcrs: quote
            .pcrs
            .iter()
            .map(|(p, v)| (*p, hex::encode(v)))
            .collect(),
        ak_public_pem: ak_pem(&ak.sec1).map_err(BundleError::AkEncoding)?,
        ak_public_tpm2b: B64.encode(&ak.tpm2b_public),
        measurement_log: records
            .into_iter()
            .filter_map(|r| serde_json::to_value(r).ok())
            .collect(),
        agent,
        device,
    })
}

/// `guardian quote`: quote the configured PCRs for `nonce` with the AK
/// (created at `[attest] ak_handle` on first use) and bundle the evidence.
pub fn quote(config: &Config, nonce: &[u8]) -> Result<(Evidence, Quote), BundleError> {
    if nonce.len() < MIN_NONCE || nonce.len() > MAX_NONCE {
        return Err(BundleError::Nonce(hex::encode(nonce)));
    }
    let pcrs = &config.attest.pcrs;
    if pcrs.is_empty() {
        return Err(BundleError::Pcrs("no PCR to quote".into()));
    }
    if let Some(p) = pcrs.iter().find(|p| **p > 23) {
        return Err(BundleError::Pcrs(format!("{p} is not a PCR")));
    }
    let tcti = tpm::choose_tcti(config.measure.tcti.as_deref(), |k| std::env::var(k).ok());
    let mut t = tpm::Tpm::open(&tcti)?;
    let (ak, ak_pub) = t.ak(config.attest.ak_handle)?;
    let q = t.quote(ak, nonce, pcrs)?;
    // The log is read after the quote: it holds every record the quoted
    // values contain (appended before extended), maybe more.
    let log = evidence::log::read(&config.measure.log)?;
    let agent = crate::status::Status::read(&config.status.path)
        .ok()
        .map(|st| st.attestor_state());
    let ev = build(nonce, &q, &ak_pub, &log, agent)?;
    Ok((ev, q))
}

/// Where `guardian quote` puts what it made, besides the bundle.
#[derive(Clone, Copy, Debug, Default)]
pub struct QuoteFiles<'a> {
    /// The bundle (`None`: it is returned, for stdout).
    pub bundle: Option<&'a Path>,
    /// The AK public key (PEM), for enrolment.
    pub ak: Option<&'a Path>,
    /// `PREFIX.msg` and `PREFIX.sig`: the raw quote and signature, for
    /// `tpm2_checkquote`.
    pub raw: Option<&'a Path>,
}

/// Write the outputs of a quote; returns the bundle's JSON when it has no
/// file of its own.
pub fn save(
    evidence: &Evidence,
    quote: &Quote,
    files: QuoteFiles<'_>,
) -> Result<Option<Vec<u8>>, BundleError> {
    let write = |path: &Path, what: &dyn Fn() -> String, bytes: &[u8]| {
        std::fs::write(path, bytes).map_err(|source| BundleError::Write {
            what: what(),
            source,
        })
    };
    if let Some(p) = files.ak {
        write(
            p,
            &|| p.display().to_string(),
            evidence.ak_public_pem.as_bytes(),
        )?;
    }
    if let Some(prefix) = files.raw {
        let with = |ext: &str| {
            let mut s = prefix.as_os_str().to_owned();
            s.push(ext);
            std::path::PathBuf::from(s)
        };
        write(&with(".msg"), &|| "the raw quote".into(), &quote.attest)?;
        write(
            &with(".sig"),
            &|| "the raw signature".into(),
            &quote.signature,
        )?;
    }
    let json = serde_json::to_vec_pretty(evidence).map_err(BundleError::Encode)?;
    match files.bundle {
        Some(p) => write(p, &|| p.display().to_string(), &json).map(|()| None),
        None => Ok(Some(json)),
    }
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
