//! Evidence: what guardian measures and how it is recorded, as the device
//! writes it and the verifier reads it back.
//!
//! | module | owns |
//! |---|---|
//! | [`event`] | what a record means, and its canonical encoding (the digest extended) |
//! | [`record`] | one line of the log: a record and the rules every record follows |
//! | [`log`] | the measurement log file: append-only, crash-safe, private, never blocking; parsing, replay, `extend` |
//! | [`export`] | the TCG binary event log and CEL-JSON exports |
//!
//! The log and the TPM together (the ledger: append, extend, void on
//! failure) and the reader that follows the log are the agent's
//! (`guardian::evidence::ledger`, `guardian::evidence::tail`): everything
//! that produces evidence writes through the ledger, and nothing here
//! extends a PCR. This folder knows nothing of the guard, the policies or
//! the verifier: they hand it [`event::Event`]s, and the verifier in
//! [`crate::attest`] reads the records back.

pub mod event;
pub mod export;
pub mod log;
pub mod record;

pub use event::Event;
pub use log::{Contents, LogError, Record, boot_id};
