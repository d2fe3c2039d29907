//! guardian's fleet link, device side: every security event, measurement
//! result and status summary leaves the board through a durable spool and
//! reaches the fleet's NATS JetStream exactly as often as the fleet's
//! deduplication needs (at least once on the wire, once in the store).
//!
//! | module | what it owns |
//! |---|---|
//! | [`spool`] | the on-disk spool: segments, CRCs, the fsync policy, the size bound and its drop rule, acknowledgement marks |
//! | [`wire`] | the batch format both the device and `guardian-fleet` read |
//! | [`nats`] | one connection to a NATS server: publish into JetStream, read the acknowledgements, hear the fleet's questions and answer them; header blocks and requests (a key-value direct get) |
//! | [`reporter`] | the tasks tying them together: queue → spool → link, reconnect with backoff, status; the fleet's questions handed to whoever answers for the device ([`Asked`]) and their answers sent back; the device group's pushed policy set followed in the fleet's key-value bucket and handed over ([`PolicySets`]), newest first |
//!
//! This crate knows nothing of the agent (no TPM, no eBPF): the agent and
//! the fleet's device simulator both run it, so the simulator exercises
//! the same code a board runs.

pub mod nats;
pub mod reporter;
pub mod spool;
pub mod wire;

pub use reporter::{Asked, LinkConfig, PolicySets, ReceivedSet, ReportStatus, Reporter};
pub use spool::{Class, Fsync, Spool, SpoolConfig};
