//! The enrolment steps as `guardian enrol` runs them: each reads its
//! inputs from files, runs one step of [`super::device`] or
//! [`super::protocol`], and writes its output. The device's steps (they
//! need the TPM) are here; the verifier's, and the AK a verifier trusts
//! for a device, are `guardian-attest`'s
//! ([`guardian_attest::enrol::files`], re-exported here).

use std::path::Path;

pub use guardian_attest::enrol::files::*;

use super::{Challenge, DeviceError};
use crate::{
    config::Config,
    tpm::{self, Tpm, TpmError},
};

/// Errors of a device's enrolment step; each names the file or the step.
#[derive(Debug, thiserror::Error)]
pub enum DeviceStepError {
    /// A message could not be read or written.
    #[error(transparent)]
    File(#[from] FileError),
    /// The TPM could not be opened.
    #[error(transparent)]
    Tpm(#[from] TpmError),
    /// The device's step failed.
    #[error(transparent)]
    Device(#[from] DeviceError),
}

/// The device's TPM ([`Config`]'s `[measure] tcti`) and AK handle.
fn device_tpm(config: &Config) -> Result<(Tpm, u32), DeviceStepError> {
    let tcti = tpm::choose_tcti(config.measure.tcti.as_deref(), |k| std::env::var(k).ok());
    Ok((Tpm::open(&tcti)?, config.attest.ak_handle))
}

/// Device, step 1: write the enrolment request to `output`; returns the
/// AK's handle.
pub fn request(config: &Config, output: &Path) -> Result<u32, DeviceStepError> {
    let (mut tpm, handle) = device_tpm(config)?;
    let req = super::request(&mut tpm, handle)?;
    write_json(output, &req, false)?;
    Ok(handle)
}

/// Device, step 3: answer the challenge at `challenge` into `output`.
pub fn activate(config: &Config, challenge: &Path, output: &Path) -> Result<(), DeviceStepError> {
    let (mut tpm, handle) = device_tpm(config)?;
    let ch: Challenge = read_json(challenge)?;
    let resp = super::activate(&mut tpm, handle, &ch)?;
    Ok(write_json(output, &resp, false)?)
}
