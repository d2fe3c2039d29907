//! The evidence bundle on the device: building it from a TPM quote and the
//! measurement log (`guardian quote`) and writing it out. Its format, and
//! reading it on the verifier, are `guardian-attest`'s
//! ([`guardian_attest::attest::bundle`], re-exported here).
//!
//! The measurement log a bundle carries is the prefix of this boot's
//! records that replays to the quoted PCR values ([`prefix_for`]): records
//! added while the quote was taken are left for the next quote rather than
//! making this one fail.

use std::path::Path;

use base64::Engine as _;

pub use guardian_attest::attest::bundle::*;

use crate::{
    config::Config,
    evidence::{self, Contents, Record},
    tpm::{self, AkPublic, Quote, TpmError},
};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Errors making a bundle or writing what `guardian quote` made.
#[derive(Debug, thiserror::Error)]
pub enum QuoteError {
    /// The nonce is unusable.
    #[error(transparent)]
    Nonce(#[from] BundleError),
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

/// This machine, as a bundle and an enrolment request name it.
pub fn this_device() -> Device {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    };
    Device {
        hostname: read("/proc/sys/kernel/hostname").unwrap_or_default(),
        machine_id: read("/etc/machine-id"),
        boot_id: evidence::boot_id(),
    }
}

/// Build the bundle from a quote and the log.
pub fn build(
    nonce: &[u8],
    quote: &Quote,
    ak: &AkPublic,
    log: &Contents,
    agent: Option<AgentState>,
) -> Result<Evidence, QuoteError> {
    let device = this_device();
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
        ak_public_pem: ak_pem(&ak.sec1).map_err(QuoteError::AkEncoding)?,
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
pub fn quote(config: &Config, nonce: &[u8]) -> Result<(Evidence, Quote), QuoteError> {
    if nonce.len() < MIN_NONCE || nonce.len() > MAX_NONCE {
        return Err(BundleError::Nonce(hex::encode(nonce)).into());
    }
    let pcrs = &config.attest.pcrs;
    if pcrs.is_empty() {
        return Err(QuoteError::Pcrs("no PCR to quote".into()));
    }
    if let Some(p) = pcrs.iter().find(|p| **p > 23) {
        return Err(QuoteError::Pcrs(format!("{p} is not a PCR")));
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
) -> Result<Option<Vec<u8>>, QuoteError> {
    let write = |path: &Path, what: &dyn Fn() -> String, bytes: &[u8]| {
        std::fs::write(path, bytes).map_err(|source| QuoteError::Write {
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
    let json = serde_json::to_vec_pretty(evidence).map_err(QuoteError::Encode)?;
    match files.bundle {
        Some(p) => write(p, &|| p.display().to_string(), &json).map(|()| None),
        None => Ok(Some(json)),
    }
}
