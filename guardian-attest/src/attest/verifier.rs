//! The verifier on files, as `guardian challenge` and `guardian verify` run
//! it: the inputs read and checked before anything is judged (a bad one
//! changes nothing), the operator's acknowledgements, the verdict, and the
//! device's state saved after it.
//!
//! The AK comes from the caller (an enrolment record, or a key trusted on
//! first use: [`crate::enrol::files::trusted_ak`]), so this module knows
//! nothing of enrolment.

use std::path::{Path, PathBuf};

use p256::ecdsa::VerifyingKey;

use super::{BundleError, DeviceState, Evidence, Trust, Verdict, bundle, state::StateError};
use crate::{
    manifest::{self, Manifest},
    signing::{SignError, TrustedKey},
};

/// Errors in the verifier's inputs or state; each names the file or flag.
#[derive(Debug, thiserror::Error)]
pub enum VerifierError {
    /// A manifest key could not be loaded.
    #[error(transparent)]
    Key(#[from] SignError),
    /// The golden manifest could not be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The golden manifest is not UTF-8.
    #[error("{}: not UTF-8", path.display())]
    NotText {
        /// The file.
        path: PathBuf,
    },
    /// The golden manifest is not a manifest.
    #[error("{}: {message}", path.display())]
    Manifest {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A PCR asked for cannot hold measurements.
    #[error("--pcr {pcr}: {message}")]
    Pcr {
        /// The PCR.
        pcr: u32,
        /// Why not.
        message: String,
    },
    /// The state could not be read, updated or saved.
    #[error(transparent)]
    State(#[from] StateError),
    /// The nonce is unusable.
    #[error(transparent)]
    Nonce(#[from] BundleError),
    /// No nonce given and none issued.
    #[error("no nonce: give --nonce, or issue one with `guardian challenge --state`")]
    NoNonce,
    /// The random generator failed.
    #[error(transparent)]
    Random(std::io::Error),
}

/// The device's state at `path`, or a new one bound to `ak` on first
/// contact.
fn state_for(path: &Path, ak: &VerifyingKey) -> Result<DeviceState, StateError> {
    Ok(match DeviceState::read(path)? {
        Some(st) => st,
        None => DeviceState::new(ak.to_encoded_point(false).as_bytes()),
    })
}

/// `guardian challenge`: issue a fresh nonce for the device whose state is
/// at `state` (created, bound to `ak`, on first use) and remember it there;
/// returns it in hex.
pub fn issue_nonce(state: &Path, ak: &VerifyingKey) -> Result<String, VerifierError> {
    let mut st = state_for(state, ak)?;
    let nonce = hex::encode(bundle::fresh_nonce().map_err(VerifierError::Random)?);
    st.pending_nonce = Some(nonce.clone());
    st.save(state)?;
    Ok(nonce)
}

/// What `guardian verify` is given.
#[derive(Debug)]
pub struct Inputs<'a> {
    /// The bundle, read.
    pub evidence: Evidence,
    /// The AK to check the quote with.
    pub ak: VerifyingKey,
    /// Why the AK is trusted without proof, if it is (goes into the
    /// verdict's warnings).
    pub insecure_ak: Option<String>,
    /// Keys manifests must be signed by.
    pub keys: &'a [PathBuf],
    /// A golden manifest to pin.
    pub manifest: Option<&'a Path>,
    /// The PCRs the quote must cover (empty: the golden manifest's, else
    /// [`manifest::DEFAULT_PCR`]).
    pub pcrs: &'a [u32],
    /// The device's state file.
    pub state: Option<&'a Path>,
    /// Fail when no guard ran this boot.
    pub require_guard: bool,
}

/// A verification with every input read and checked, ready to judge.
#[derive(Debug)]
pub struct Judge {
    evidence: Evidence,
    ak: VerifyingKey,
    insecure_ak: Option<String>,
    manifest_keys: Vec<TrustedKey>,
    golden: Option<Vec<u8>>,
    pcrs: Vec<u32>,
    state: Option<(DeviceState, PathBuf)>,
    require_guard: bool,
}

impl Judge {
    /// Read and check every input (keys, golden manifest, PCRs, state):
    /// an error here changes nothing.
    pub fn new(inputs: Inputs<'_>) -> Result<Self, VerifierError> {
        let manifest_keys = TrustedKey::load_all(inputs.keys)?;
        let golden = match inputs.manifest {
            Some(p) => {
                let bytes = std::fs::read(p).map_err(|source| VerifierError::Read {
                    path: p.to_owned(),
                    source,
                })?;
                let text = std::str::from_utf8(&bytes)
                    .map_err(|_| VerifierError::NotText { path: p.to_owned() })?;
                let m = Manifest::parse(text).map_err(|message| VerifierError::Manifest {
                    path: p.to_owned(),
                    message,
                })?;
                Some((bytes, m.pcr))
            }
            None => None,
        };
        let pcrs = if !inputs.pcrs.is_empty() {
            inputs.pcrs.to_vec()
        } else {
            vec![golden.as_ref().map_or(manifest::DEFAULT_PCR, |g| g.1)]
        };
        for p in &pcrs {
            manifest::check_pcr(*p).map_err(|message| VerifierError::Pcr { pcr: *p, message })?;
        }
        let state = match inputs.state {
            Some(path) => Some((state_for(path, &inputs.ak)?, path.to_owned())),
            None => None,
        };
        Ok(Self {
            evidence: inputs.evidence,
            ak: inputs.ak,
            insecure_ak: inputs.insecure_ak,
            manifest_keys,
            golden: golden.map(|g| g.0),
            pcrs,
            state,
            require_guard: inputs.require_guard,
        })
    }

    /// Acknowledge the open finding `id` (or `all`) in the state; returns
    /// how many. Without a state, nothing is acknowledged.
    pub fn acknowledge(&mut self, id: &str) -> Result<usize, VerifierError> {
        match &mut self.state {
            Some((st, path)) => Ok(st.acknowledge(id, "acknowledged by the operator", path)?),
            None => Ok(0),
        }
    }

    /// Judge the bundle against `nonce` (else the one the state holds),
    /// then save the state.
    pub fn verdict(mut self, nonce: Option<&str>) -> Result<Verdict, VerifierError> {
        let pending = self
            .state
            .as_ref()
            .and_then(|(s, _)| s.pending_nonce.clone());
        let nonce = match (nonce, pending.as_deref()) {
            (Some(n), _) | (None, Some(n)) => bundle::parse_nonce(n)?,
            (None, None) => return Err(VerifierError::NoNonce),
        };
        let mut verdict = super::verify(
            &self.evidence,
            &Trust {
                ak: &self.ak,
                nonce: &nonce,
                pcrs: &self.pcrs,
                manifest_keys: &self.manifest_keys,
                golden: self.golden.as_deref(),
                require_guard: self.require_guard,
            },
            self.state.as_mut().map(|(s, _)| s),
        );
        if let Some(why) = &self.insecure_ak {
            verdict.warnings.push(format!("INSECURE: {why}"));
        }
        if let Some((st, path)) = &self.state {
            st.save(path)?;
        }
        Ok(verdict)
    }
}
