//! Where finished events and status snapshots go. This is the daemon's
//! seam for outputs: every event leaves through [`Outputs::event`] once
//! the policies have judged it and the response is done, and every status
//! snapshot through [`Outputs::status`]. A new output (the fleet reporter)
//! is one more field here, fed from those two functions.
//!
//! Nothing here may block the event loop: the event output gathers lines
//! and writes them in batches ([`Outputs::flush`]), the attestor is told
//! over its bounded queue (it counts what it cannot take).

use std::path::PathBuf;

use super::counters::AgentCounters;
use crate::{
    config::Config,
    continuous::{Attestor, Message},
    events::{SecurityEvent, Sink},
    hooks::Mode,
    status::{Status, StatusError},
};

/// The daemon's outputs.
pub(super) struct Outputs {
    /// The JSON-lines event output.
    sink: Sink,
    /// Continuous attestation: tamper records and the guard's state in
    /// the measurement log and the TPM.
    attestor: Attestor,
    /// The status file `guardian status` reads.
    status_path: PathBuf,
}

impl Outputs {
    /// The outputs `config` names, with the attestor started for it.
    pub(super) fn new(sink: Sink, attestor: Attestor, config: &Config) -> Self {
        Self {
            sink,
            attestor,
            status_path: config.status.path.clone(),
        }
    }

    /// One finished event: its JSON line (written at the next flush or
    /// when the batch is full), then the attestor.
    pub(super) fn event(&mut self, ev: SecurityEvent, counters: &mut AgentCounters) {
        counters.written(self.sink.write(&ev));
        self.attestor.send(Message::Event(Box::new(ev)));
    }

    /// Write the lines gathered so far (after each batch of events).
    pub(super) fn flush(&mut self, counters: &mut AgentCounters) {
        counters.written(self.sink.flush());
    }

    /// One status snapshot: the status file.
    pub(super) fn status(&mut self, st: &Status) -> Result<(), StatusError> {
        st.write(&self.status_path)
    }

    /// A change of the guard's state, for the evidence.
    pub(super) fn guard(&self, action: &'static str, mode: Mode, detail: String) {
        self.attestor.send(Message::Guard {
            action,
            mode: mode.as_str().to_owned(),
            detail,
        });
    }

    /// The attestor (its counters, the policy engine's measurer).
    pub(super) fn attestor(&self) -> &Attestor {
        &self.attestor
    }

    /// Stop the attestor once it has done what it was sent; the event
    /// output is flushed as it closes.
    pub(super) fn stop(self) {
        self.attestor.stop();
    }
}
