//! Remote attestation: the evidence a device produces for a verifier's
//! nonce (`guardian quote`), and the verifier (`guardian verify`).
//!
//! | module | owns |
//! |---|---|
//! | [`quote`] | parsing the TPM's `TPMS_ATTEST` and `TPMT_SIGNATURE`, bounded |
//! | [`bundle`] | the evidence bundle: building it on the device, reading it on the verifier, nonces |
//! | [`verify`] | the verdict: what is checked and why each check exists |
//! | [`state`] | what the verifier remembers of a device between quotes |
//! | [`verifier`] | `guardian challenge` and `guardian verify` on files: the inputs, the findings acknowledged, the verdict, the state saved |
//!
//! The verifier trusts only what it holds itself: the enrolled AK, the
//! nonce it issued, the PCRs it judges, the keys manifests must be signed
//! by, and its state for the device. Everything in a bundle is the
//! device's word until the quote (signed by the AK, over the verifier's
//! nonce) and the replay of content-bound records (see
//! [`crate::evidence::event`]) make it evidence. This folder reads the
//! evidence records; it never writes them.

pub mod bundle;
pub mod quote;
pub mod state;
pub mod verifier;
pub mod verify;

pub use bundle::{
    AgentState, BundleError, Device, Evidence, parse_evidence, parse_nonce, read_ak, read_evidence,
};
pub use state::DeviceState;
pub use verify::{Failure, Trust, Verdict, verify};
