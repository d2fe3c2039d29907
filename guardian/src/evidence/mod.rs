//! Evidence: what guardian measures, how it is recorded, and how it is
//! bound into the TPM.
//!
//! The formats (what a record means, the log file, its exports) are
//! `guardian-attest`'s, which the verifier shares; they are re-exported
//! here under the agent's paths. The TPM's half lives in this folder.
//!
//! | module | owns |
//! |---|---|
//! | [`event`] | (`guardian-attest`) what a record means, and its canonical encoding (the digest extended) |
//! | [`record`] | (`guardian-attest`) one line of the log: a record and the rules every record follows |
//! | [`log`] | (`guardian-attest`) the measurement log file: append-only, crash-safe, private, never blocking |
//! | [`ledger`] | the log and the TPM together: append, extend, void on failure, in one place |
//! | [`tail`] | a reader that follows the log, reading only what was appended (the daemon's status) |
//! | [`export`] | (`guardian-attest`) the TCG binary event log and CEL-JSON exports |
//!
//! Everything that produces evidence (the boot step in [`crate::measure`],
//! the daemon's attestor in [`crate::continuous`], policy loads, `guardian
//! stop --unload`) writes through a [`ledger::Ledger`]; nothing else
//! extends a PCR. This folder knows nothing of the guard, the policies or
//! the verifier: they hand it [`event::Event`]s, and the verifier in
//! [`crate::attest`] reads the records back.

pub use guardian_attest::evidence::{event, export, log, record};

pub mod ledger;
pub mod tail;

pub use event::Event;
pub use ledger::{Ledger, LedgerError};
pub use log::{Contents, LogError, Record, boot_id};
