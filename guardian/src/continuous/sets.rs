//! The attestor's part in pushed policy sets: the floor's TPM NV index
//! read and written, and their records appended, here because the
//! attestor thread owns the TPM session and the ledger. The daemon's
//! blocking thread asks through a [`SetKeeper`] and waits for the answer.

use std::{sync::mpsc::SyncSender, time::Duration};

use super::{Message, Worker};
use crate::evidence::{Event, Ledger};

/// An error and its causes, in one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(c) = source {
        s.push_str(": ");
        s.push_str(&c.to_string());
        source = c.source();
    }
    s
}

/// What the pushed policy sets ask of the attestor.
#[derive(Debug)]
pub enum SetRequest {
    /// Read the floor kept at this NV index.
    ReadFloor(u32),
    /// Write this version at this NV index (defining it if absent).
    WriteFloor(u32, u64),
    /// Append a `policy_set` record (extended like the policy loads).
    Record(Box<crate::evidence::event::PolicySetEvent>),
    /// Append a note (not extended: something the log must say).
    Note(String),
}

/// The pushed policy sets' way to the attestor, for a blocking thread.
#[derive(Clone)]
pub struct SetKeeper {
    tx: SyncSender<Message>,
}

impl SetKeeper {
    pub(super) fn new(tx: SyncSender<Message>) -> Self {
        Self { tx }
    }

    /// Ask and wait for the answer (a blocking send: these are rare and
    /// must not be dropped like an event).
    pub fn ask(&self, request: SetRequest) -> Result<Option<u64>, String> {
        let (reply, answer) = std::sync::mpsc::channel();
        self.tx
            .send(Message::PolicySet { request, reply })
            .map_err(|_| "the attestor has stopped".to_owned())?;
        answer
            .recv_timeout(Duration::from_secs(120))
            .map_err(|_| "the attestor gave no answer within 120 s".to_owned())?
    }
}

impl Worker {
    /// A pushed policy set's request: the floor's NV index, or a record.
    pub(super) fn policy_set(&mut self, request: SetRequest) -> Result<Option<u64>, String> {
        fn tpm(ledger: &mut Option<Ledger>) -> Result<&mut crate::tpm::Tpm, String> {
            ledger
                .as_mut()
                .and_then(|l| l.tpm_mut())
                .ok_or_else(|| "no TPM: the floor is kept in the file only".to_owned())
        }
        match request {
            SetRequest::ReadFloor(index) => tpm(&mut self.ledger)?
                .nv_read_u64(index)
                .map_err(|e| chain(&e)),
            SetRequest::WriteFloor(index, version) => tpm(&mut self.ledger)?
                .nv_write_u64(index, version)
                .map(|()| None)
                .map_err(|e| chain(&e)),
            SetRequest::Record(event) => {
                if self.record(Event::PolicySet(*event)) {
                    Ok(None)
                } else {
                    Err("the policy set record waits for the measurement log (or failed; see the agent's log)".to_owned())
                }
            }
            SetRequest::Note(text) => self
                .ledger
                .as_mut()
                .ok_or_else(|| "no measurement log".to_owned())?
                .note(text)
                .map(|_| None)
                .map_err(|e| e.to_string()),
        }
    }
}
