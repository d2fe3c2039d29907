//! Where finished events and status snapshots go. This is the daemon's
//! seam for outputs: every event leaves through [`Outputs::event`] once
//! the policies have judged it and the response is done, and every status
//! snapshot through [`Outputs::status`]. A new output (the fleet reporter)
//! is one more field here, fed from those two functions.
//!
//! Nothing here may block the event loop: the event output gathers lines
//! and writes them in batches ([`Outputs::flush`]), the attestor is told
//! over its bounded queue (it counts what it cannot take).

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use guardian_report::Reporter;

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
    /// The fleet link (`[report]`), if configured.
    reporter: Option<Reporter>,
    /// How often a status summary goes to the fleet, and when one last did.
    report_every: Duration,
    last_reported: Option<Instant>,
}

impl Outputs {
    /// The outputs `config` names, with the attestor started for it.
    pub(super) fn new(
        sink: Sink,
        attestor: Attestor,
        reporter: Option<Reporter>,
        config: &Config,
    ) -> Self {
        Self {
            sink,
            attestor,
            status_path: config.status.path.clone(),
            reporter,
            report_every: Duration::from_secs(config.report.status_interval_secs),
            last_reported: None,
        }
    }

    /// One finished event: its JSON line (written at the next flush or
    /// when the batch is full), the fleet (queued, never waited for), then
    /// the attestor.
    pub(super) fn event(&mut self, ev: SecurityEvent, counters: &mut AgentCounters) {
        counters.written(self.sink.write(&ev));
        if let Some(r) = &self.reporter {
            crate::report::event(r, &ev);
        }
        self.attestor.event(&ev);
    }

    /// A pushed policy set refused (an alert) or put in force, for the
    /// fleet.
    pub(super) fn policy_set(&self, refused: bool, body: &serde_json::Value) {
        if let Some(r) = &self.reporter {
            crate::report::policy_set(r, refused, body);
        }
    }

    /// The fleet link's state, for the status snapshot.
    pub(super) fn report_status(&self) -> Option<guardian_report::ReportStatus> {
        self.reporter.as_ref().map(Reporter::status)
    }

    /// Write the lines gathered so far (after each batch of events).
    pub(super) fn flush(&mut self, counters: &mut AgentCounters) {
        counters.written(self.sink.flush());
    }

    /// One status snapshot: the status file, and every
    /// `[report] status_interval_secs` the fleet.
    pub(super) fn status(&mut self, st: &Status) -> Result<(), StatusError> {
        if let Some(r) = &self.reporter
            && self
                .last_reported
                .is_none_or(|t| t.elapsed() >= self.report_every)
        {
            crate::report::status(r, st);
            self.last_reported = Some(Instant::now());
        }
        st.write(&self.status_path)
    }

    /// A change of the guard's state, for the evidence.
    pub(super) fn guard(&self, action: &'static str, mode: Mode, detail: String) {
        if let Some(r) = &self.reporter {
            crate::report::guard(r, action, mode.as_str(), &detail);
        }
        self.attestor.send(Message::Guard {
            action,
            mode: mode.as_str().to_owned(),
            detail,
        });
    }

    /// Files taken into the protected trees' tables: hashed and recorded by
    /// the attestor.
    pub(super) fn take_in(&self, files: Vec<(std::path::PathBuf, String)>, mode: Mode) {
        self.attestor.send(Message::TakeIn {
            files,
            mode: mode.as_str().to_owned(),
        });
    }

    /// The attestor (its counters, the policy engine's measurer).
    pub(super) fn attestor(&self) -> &Attestor {
        &self.attestor
    }

    /// Stop the attestor once it has done what it was sent; the event
    /// output is flushed as it closes; the fleet link's queue is written to
    /// its spool (what is not acknowledged waits there for the next start).
    pub(super) async fn stop(self) {
        self.attestor.stop();
        if let Some(r) = self.reporter {
            r.shutdown().await;
        }
    }
}
