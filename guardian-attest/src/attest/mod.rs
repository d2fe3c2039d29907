//! Remote attestation, the verifier's half: the evidence bundle's format
//! and nonces, and the verifier (`guardian verify`, and the fleet's).
//!
//! | module | owns |
//! |---|---|
//! | [`quote`] | parsing the TPM's `TPMS_ATTEST` and `TPMT_SIGNATURE`, bounded |
//! | [`bundle`] | the evidence bundle's format: reading it on the verifier, nonces, the log prefix a quote covers |
//! | [`verify`] | the checks of one bundle: what is checked and why each check exists |
//! | [`verdict`] | what the verifier trusts, and its answer: the failures, the verdict, its rendering |
//! | `continuity.rs` | the checks across quotes: reboots and rollback against the state, open findings, the state's update |
//! | [`state`] | what the verifier remembers of a device between quotes |
//! | [`verifier`] | `guardian challenge` and `guardian verify` on files: the inputs, the findings acknowledged, the verdict, the state saved |
//!
//! Making a bundle with the TPM (`guardian quote`) is the agent's
//! (`guardian::attest::bundle`).
//!
//! The verifier trusts only what it holds itself: the enrolled AK, the
//! nonce it issued, the PCRs it judges, the keys manifests must be signed
//! by, and its state for the device. Everything in a bundle is the
//! device's word until the quote (signed by the AK, over the verifier's
//! nonce) and the replay of content-bound records (see
//! [`crate::evidence::event`]) make it evidence. This folder reads the
//! evidence records; it never writes them.

pub mod bundle;
mod continuity;
pub mod quote;
pub mod state;
pub mod verdict;
pub mod verifier;
pub mod verify;

pub use bundle::{
    AgentState, BundleError, Device, Evidence, parse_evidence, parse_nonce, read_ak, read_evidence,
};
pub use state::DeviceState;
pub use verdict::{Failure, PolicySetInForce, Trust, Verdict};
pub use verify::verify;
