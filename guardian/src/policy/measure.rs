//! Policies are part of the attested state: every load of a policy appends
//! a [`Kind::Policy`](crate::mlog::Kind::Policy) record (digest: SHA-256
//! of the `.wasm`) to the measurement log and extends it into the PCR,
//! before the set that contains it is put in force.

use std::path::PathBuf;

use crate::{
    mlog::{Kind, Log, LogError, Record},
    tpm::{Tpm, TpmError},
};

use super::PolicyInfo;

/// Why a policy could not be measured.
#[derive(Debug, thiserror::Error)]
pub enum MeasureError {
    /// The measurement log failed.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The extend failed (the record was voided in the log).
    #[error("extending PCR {pcr}: {source}")]
    Extend {
        /// The PCR.
        pcr: u32,
        /// Why.
        #[source]
        source: TpmError,
    },
    /// The daemon's attestor (which owns the log and the TPM) did not
    /// record it.
    #[error("the attestor did not record the policy: {0}")]
    Attestor(String),
}

/// Records policy loads. The daemon's implementation writes the
/// measurement log and extends the TPM; tests use swtpm.
pub trait Measurer: Send {
    /// Measure one loaded policy. `Ok(true)`: extended into a PCR;
    /// `Ok(false)`: recorded without a TPM (counted and reported).
    fn measure(&mut self, policy: &PolicyInfo, generation: u64) -> Result<bool, MeasureError>;
}

/// Measures nothing. For tools that load policies only to try them
/// (`guardian policy test`); every load counts as not extended.
pub struct NoMeasurer;

impl Measurer for NoMeasurer {
    fn measure(&mut self, _: &PolicyInfo, _: u64) -> Result<bool, MeasureError> {
        Ok(false)
    }
}

/// The measurement log plus, when there is one, the TPM.
pub struct LogMeasurer {
    log: PathBuf,
    tpm: Option<Tpm>,
    pcr: u32,
}

impl LogMeasurer {
    /// Append to `log` and extend `pcr` of `tpm` (`None`: log only, every
    /// record marked as not extended).
    pub fn new(log: PathBuf, tpm: Option<Tpm>, pcr: u32) -> Self {
        Self { log, tpm, pcr }
    }
}

/// The log record's description of a policy load.
pub fn description(p: &PolicyInfo, generation: u64) -> String {
    let signer = match &p.signer {
        Some(s) => format!(
            "signed by {} ({})",
            s.fingerprint.get(..16).unwrap_or(&s.fingerprint),
            s.algorithm
        ),
        None => "UNSIGNED".to_owned(),
    };
    format!(
        "guardian policy {} sha256 {} {signer} ABI {} loaded (set {generation})",
        p.name, p.sha256, p.abi_version
    )
}

impl Measurer for LogMeasurer {
    fn measure(&mut self, p: &PolicyInfo, generation: u64) -> Result<bool, MeasureError> {
        let mut digest = [0u8; 32];
        hex::decode_to_slice(&p.sha256, &mut digest).map_err(|_| {
            MeasureError::Log(LogError::Corrupt {
                path: self.log.clone(),
                line: 0,
                problem: format!("policy digest {:?} is not 64 hex digits", p.sha256),
            })
        })?;
        let mut log = Log::open(&self.log)?;
        // Log first, then extend: a record without its extend is visible
        // on replay (and voided below); an extend without a record is not
        // explainable.
        let rec = log.append(Record {
            kind: Kind::Policy,
            pcr: self.pcr,
            digest: p.sha256.clone(),
            extended: self.tpm.is_some(),
            description: description(p, generation),
            file: Some(p.file.display().to_string()),
            ..Record::blank()
        })?;
        let Some(tpm) = self.tpm.as_mut() else {
            return Ok(false);
        };
        if let Err(source) = tpm.extend(self.pcr, &digest) {
            log.append(Record {
                kind: Kind::Note,
                pcr: self.pcr,
                digest: "0".repeat(64),
                description: format!("extend of record {} failed: {source}", rec.seq),
                voids: Some(rec.seq),
                ..Record::blank()
            })?;
            return Err(MeasureError::Extend {
                pcr: self.pcr,
                source,
            });
        }
        Ok(true)
    }
}
