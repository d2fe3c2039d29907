//! The agent's own counters: what happened to events on their way out and
//! what the daemon found by looking (the kernel and the rungs keep their
//! own; the status shows them side by side).

use crate::events::SinkError;

/// Counters kept by the agent itself (the kernel keeps its own).
#[derive(Default)]
pub(super) struct AgentCounters {
    pub(super) written: u64,
    pub(super) write_errors: u64,
    pub(super) undecodable: u64,
    pub(super) killed: u64,
    pub(super) kill_failures: u64,
    /// Differences found between the kernel's tables and what guardian
    /// wrote (each one put back).
    pub(super) tables_tampered: u64,
    /// Guarded names found leading elsewhere by the path check.
    pub(super) path_changes: u64,
    /// Writers of protected files found holding them at start.
    pub(super) prewriters: u64,
}

impl AgentCounters {
    /// Count what a sink write or flush did.
    pub(super) fn written(&mut self, result: Result<u64, SinkError>) {
        match result {
            Ok(n) => self.written += n,
            Err(e) => {
                self.write_errors += e.lost;
                log::error!("cannot write events: {e}");
            }
        }
    }
}
