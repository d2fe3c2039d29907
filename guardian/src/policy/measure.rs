//! Policies are part of the attested state: every load of a policy is a
//! [`PolicyEvent`] record (the module's SHA-256, name, signer, ABI and set)
//! in the evidence, extended into the PCR before the set that contains it
//! is put in force.
//!
//! This module only says *what* is recorded; the policy engine hands each
//! load to a [`Measurer`], and in the daemon that is the attestor, which
//! owns the ledger (log and TPM). Policies never touch the TPM themselves.

use crate::evidence::{Event, event::PolicyEvent};

use super::PolicyInfo;

/// Why a policy could not be measured.
#[derive(Debug, thiserror::Error)]
pub enum MeasureError {
    /// Whoever records the evidence (in the daemon, the attestor thread,
    /// which owns the measurement log and the TPM) did not record it.
    #[error("the attestor did not record the policy: {0}")]
    Attestor(String),
}

/// Records policy loads.
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

/// The evidence record of a policy load.
pub fn event(p: &PolicyInfo, generation: u64) -> Event {
    Event::Policy(PolicyEvent {
        name: p.name.clone(),
        file: p.file.display().to_string(),
        sha256: p.sha256.clone(),
        signer: p
            .signer
            .as_ref()
            .map_or_else(|| "UNSIGNED".to_owned(), |s| s.fingerprint.clone()),
        abi: p.abi_version,
        generation,
    })
}
