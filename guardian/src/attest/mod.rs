//! Remote attestation: the evidence a device produces for a verifier's
//! nonce (`guardian quote`), and the verifier (`guardian verify`).
//!
//! The verifier is `guardian-attest`'s (the fleet service runs the same
//! library), re-exported here under the agent's paths; only making a
//! bundle with the TPM lives in this folder.
//!
//! | module | owns |
//! |---|---|
//! | [`bundle`] | the evidence bundle on the device: built from a TPM quote and the log, written out (its format: `guardian-attest`'s, re-exported) |
//! | [`quote`] | (`guardian-attest`) parsing the TPM's `TPMS_ATTEST` and `TPMT_SIGNATURE`, bounded |
//! | [`verify`] | (`guardian-attest`) the checks of one bundle: what is checked and why each check exists |
//! | [`verdict`] | (`guardian-attest`) what the verifier trusts, and its answer |
//! | [`state`] | (`guardian-attest`) what the verifier remembers of a device between quotes |
//! | [`verifier`] | (`guardian-attest`) `guardian challenge` and `guardian verify` on files |

pub mod bundle;

// `verify` is both the module and its function (as `guardian_attest`
// exports them): this one line brings both.
pub use guardian_attest::attest::{quote, state, verdict, verifier, verify};

pub use bundle::{
    AgentState, BundleError, Device, Evidence, parse_evidence, parse_nonce, read_ak, read_evidence,
};
pub use state::DeviceState;
pub use verdict::{Failure, Trust, Verdict};
