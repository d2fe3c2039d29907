//! One line of the measurement log: a [`Record`], what it says about the
//! measurement it stands for, and the rules every record follows whoever
//! wrote it ([`Record::check`]: a note is never extended, any other
//! record's digest is the one its event encodes to). The device's log
//! ([`super::log`]), the ledger and the verifier all hold records; only
//! the log gives them their sequence number, boot and time.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::event::{self, Event, NoteEvent};

/// The digest of a note (never extended).
pub const ZERO_DIGEST: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One line of the log.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// 0, 1, 2, … with no gaps.
    pub seq: u64,
    /// `/proc/sys/kernel/random/boot_id` when written: the PCR resets at
    /// boot, so only this boot's records replay to it.
    pub boot_id: String,
    /// Wall-clock time, RFC 3339 (the device's word; not evidence).
    pub time: String,
    /// The PCR index.
    pub pcr: u32,
    /// SHA-256 of the event's canonical encoding, hex: the digest extended
    /// (all zeros for a note).
    pub digest: String,
    /// Whether `digest` was extended into the PCR.
    pub extended: bool,
    /// For a note: the record whose extend failed after it was logged, so
    /// the PCR does not contain it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voids: Option<u64>,
    /// What it stands for.
    pub event: Event,
}

impl Record {
    /// A record of `event` for `pcr`, its digest computed; the log fills in
    /// the sequence number, boot id and time.
    pub fn new(pcr: u32, event: Event) -> Self {
        let digest = match &event {
            Event::Note(_) => ZERO_DIGEST.to_owned(),
            e => hex::encode(event::digest(pcr, e)),
        };
        Self {
            seq: 0,
            boot_id: String::new(),
            time: String::new(),
            pcr,
            digest,
            extended: false,
            voids: None,
            event,
        }
    }

    /// A note.
    pub fn note(text: impl Into<String>) -> Self {
        Self::new(0, Event::Note(NoteEvent { text: text.into() }))
    }

    /// The digest as bytes (checked when the record was read or made).
    pub fn digest_bytes(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        let _ = hex::decode_to_slice(&self.digest, &mut out);
        out
    }

    /// Whether this record is a note (never extended, not evidence).
    pub fn is_note(&self) -> bool {
        matches!(self.event, Event::Note(_))
    }

    /// The rules every record follows, whoever wrote it: a note is not
    /// extended and carries no digest; any other record's digest is the one
    /// its event encodes to.
    pub fn check(&self) -> Result<(), String> {
        if self.pcr > 23 {
            return Err(format!("PCR {} does not exist", self.pcr));
        }
        if self.is_note() {
            if self.extended || self.digest != ZERO_DIGEST {
                return Err("a note is never extended and has an all-zero digest".into());
            }
            return Ok(());
        }
        if self.voids.is_some() {
            return Err(format!(
                "a {} record cannot void another record (only notes do)",
                self.event.kind()
            ));
        }
        let encoded = event::canonical(self.pcr, &self.event);
        if encoded.len() > event::MAX_ENCODED {
            return Err(format!(
                "its event encodes to {} bytes, more than the {} allowed",
                encoded.len(),
                event::MAX_ENCODED
            ));
        }
        let want = hex::encode(Sha256::digest(&encoded));
        if self.digest != want {
            return Err(format!(
                "its digest {} is not the digest of its {} event ({want}): the record was altered",
                self.digest,
                self.event.kind()
            ));
        }
        Ok(())
    }
}
