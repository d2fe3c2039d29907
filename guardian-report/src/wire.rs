//! What a report looks like on the wire: one JSON batch of spool records
//! per message, on the subject `<prefix>.<device>`.
//!
//! Owns the format both sides read (the agent writes it, `guardian-fleet`
//! parses it); no I/O. The subject names the device the broker
//! authenticated (its credentials only allow that subject), and the batch
//! names it again; the fleet refuses a batch whose two names differ.
//!
//! ```json
//! {"v":1,"device":"board-7","epoch":"9f3c0a1b2c3d4e5f",
//!  "records":[{"seq":41,"time_ms":1733356800000,"class":"alert","body":{...}}]}
//! ```
//!
//! `body` is the record's payload: the agent's JSON (a security event, a
//! measurement result, a status summary, a drop notice).

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::spool::{Class, Record};

/// The format version this crate writes and reads.
pub const VERSION: u8 = 1;

/// The largest batch the fleet accepts (bytes of JSON).
pub const MAX_BATCH_BYTES: usize = 512 * 1024;

/// A batch as sent.
#[derive(Debug, Serialize, Deserialize)]
pub struct Batch {
    /// Format version ([`VERSION`]).
    pub v: u8,
    /// The device's id.
    pub device: String,
    /// The spool's epoch, 16 hex digits.
    pub epoch: String,
    /// The records, in sequence order.
    pub records: Vec<WireRecord>,
}

/// One record in a batch.
#[derive(Debug, Serialize, Deserialize)]
pub struct WireRecord {
    /// Per-device sequence number.
    pub seq: u64,
    /// When the device appended it (ms since the Unix epoch, device clock).
    pub time_ms: u64,
    /// Its class name ([`Class::name`]).
    pub class: String,
    /// The payload, as JSON.
    pub body: Box<RawValue>,
}

/// The fleet asks a device on `guardian.ask.<device>` (core NATS, not a
/// stream: a question nobody hears in time is simply not answered, and
/// the fleet says so).
pub const ASK_PREFIX: &str = "guardian.ask";
/// The device answers on the reply subject the fleet chose, which must be
/// `guardian.answer.<device>.<token>`: a broker with per-device
/// permissions lets a device publish answers under its own name only, so
/// no device answers for another.
pub const ANSWER_PREFIX: &str = "guardian.answer";

/// The fleet's key-value bucket of policy sets, one key per device group
/// (`guardian_attest::policy_set`: the signed set's wire form is the
/// value). Created by the fleet with direct gets allowed.
pub const POLICY_BUCKET: &str = "guardian_policy";
/// Where the device asks for replies of its own (the current policy set):
/// `guardian.inbox.<device>.<token>`; a broker with per-device
/// permissions lets each device subscribe under its own name only.
pub const INBOX_PREFIX: &str = "guardian.inbox";

/// The subject every put (and delete) of `group`'s key is published on:
/// `$KV.guardian_policy.<group>`.
pub fn policy_subject(group: &str) -> String {
    format!("$KV.{POLICY_BUCKET}.{group}")
}

/// The JetStream direct get of the last value of `group`'s key.
pub fn policy_direct_get(group: &str) -> String {
    format!(
        "$JS.API.DIRECT.GET.KV_{POLICY_BUCKET}.{}",
        policy_subject(group)
    )
}

/// A question from the fleet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "ask", rename_all = "snake_case")]
pub enum Question {
    /// Quote the configured PCRs for this nonce and send the evidence
    /// bundle.
    Attest {
        /// The verifier's nonce, hex.
        nonce: String,
    },
    /// Enrolment, step 1: send the enrolment request (the EK certificate,
    /// the EK's and the AK's public areas), read from the TPM.
    EnrolRequest,
    /// Enrolment, step 3: activate the credential in this challenge with
    /// the TPM and send back what it released.
    Activate {
        /// The verifier's challenge, as the verifier library writes it.
        challenge: serde_json::Value,
    },
}

/// The largest question a device reads.
pub const MAX_QUESTION_BYTES: usize = 4096;

/// Read a question, or say why it is not one this device understands.
pub fn decode_question(payload: &[u8]) -> Result<Question, String> {
    if payload.len() > MAX_QUESTION_BYTES {
        return Err(format!(
            "question of {} bytes is over the limit of {MAX_QUESTION_BYTES}",
            payload.len()
        ));
    }
    serde_json::from_slice(payload).map_err(|e| format!("not a question: {e}"))
}

/// Whether `reply` is a subject `device` may answer on.
pub fn answer_subject_ok(device: &str, reply: &str) -> bool {
    reply
        .strip_prefix(ANSWER_PREFIX)
        .and_then(|r| r.strip_prefix('.'))
        .and_then(|r| r.strip_prefix(device))
        .and_then(|r| r.strip_prefix('.'))
        .is_some_and(|token| {
            !token.is_empty()
                && token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// A device's answer that is not the thing asked for: why not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    /// Why the device could not answer.
    pub error: String,
}

/// Why a message is not a valid batch.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// Larger than [`MAX_BATCH_BYTES`].
    #[error("batch of {0} bytes is over the limit of {MAX_BATCH_BYTES}")]
    TooLarge(usize),
    /// Not the JSON of a batch.
    #[error("not a report batch: {0}")]
    Malformed(String),
    /// A version this side does not read.
    #[error("batch version {0}, this side reads {VERSION}")]
    Version(u8),
    /// The device id is not a valid one.
    #[error("invalid device id {0:?} (1-64 of A-Z a-z 0-9 _ -)")]
    DeviceId(String),
    /// The epoch is not 16 hex digits.
    #[error("invalid epoch {0:?}")]
    Epoch(String),
    /// Records out of order, repeated, or empty.
    #[error("records not in strictly increasing sequence order")]
    Order,
    /// A class name not known.
    #[error("unknown record class {0:?}")]
    Class(String),
}

/// Whether `id` can name a device (and so a subject token).
pub fn valid_device_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The class of a name on the wire.
pub fn class_of(name: &str) -> Option<Class> {
    Class::ALL.into_iter().find(|c| c.name() == name)
}

/// Encode spool records as one batch. A payload that is not JSON is sent as
/// a JSON string of its (lossy UTF-8) text.
pub fn encode(device: &str, epoch: u64, records: &[Record]) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::with_capacity(records.len());
    for r in records {
        let body = match std::str::from_utf8(&r.payload)
            .ok()
            .and_then(|s| RawValue::from_string(s.to_owned()).ok())
        {
            Some(raw) => raw,
            None => serde_json::value::to_raw_value(&String::from_utf8_lossy(&r.payload))?,
        };
        out.push(WireRecord {
            seq: r.seq,
            time_ms: r.time_ms,
            class: r.class.name().to_owned(),
            body,
        });
    }
    let batch = Batch {
        v: VERSION,
        device: device.to_owned(),
        epoch: format!("{epoch:016x}"),
        records: out,
    };
    serde_json::to_vec(&batch)
}

/// Parse and check a batch: size, version, device id, epoch, order, classes.
pub fn decode(bytes: &[u8]) -> Result<Batch, WireError> {
    if bytes.len() > MAX_BATCH_BYTES {
        return Err(WireError::TooLarge(bytes.len()));
    }
    let b: Batch =
        serde_json::from_slice(bytes).map_err(|e| WireError::Malformed(e.to_string()))?;
    if b.v != VERSION {
        return Err(WireError::Version(b.v));
    }
    if !valid_device_id(&b.device) {
        return Err(WireError::DeviceId(b.device));
    }
    if b.epoch.len() != 16 || !b.epoch.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Err(WireError::Epoch(b.epoch));
    }
    if b.records.is_empty() || b.records.windows(2).any(|w| w[0].seq >= w[1].seq) {
        return Err(WireError::Order);
    }
    if let Some(r) = b.records.iter().find(|r| class_of(&r.class).is_none()) {
        return Err(WireError::Class(r.class.clone()));
    }
    Ok(b)
}

/// The message id the link puts on a batch (`Nats-Msg-Id`): the broker
/// drops a resend of the very same batch within its duplicate window.
pub fn msg_id(device: &str, epoch: u64, first: u64, last: u64) -> String {
    format!("{device}.{epoch:016x}.{first}-{last}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64, payload: &[u8]) -> Record {
        Record {
            seq,
            time_ms: 5,
            class: Class::Alert,
            payload: payload.to_vec(),
        }
    }

    #[test]
    fn round_trip_keeps_json_bodies_as_they_are() {
        let bytes = encode(
            "dev-1",
            0xabc,
            &[rec(1, br#"{"a":[1,2]}"#), rec(3, b"not json \xff")],
        )
        .unwrap();
        let b = decode(&bytes).unwrap();
        assert_eq!(b.device, "dev-1");
        assert_eq!(b.epoch, "0000000000000abc");
        assert_eq!(b.records[0].body.get(), r#"{"a":[1,2]}"#);
        assert_eq!(b.records[1].body.get(), "\"not json \u{fffd}\"");
        assert_eq!(b.records[1].class, "alert");
    }

    #[test]
    fn bad_batches_are_refused_with_the_reason() {
        assert!(matches!(decode(b"{"), Err(WireError::Malformed(_))));
        let big = vec![b' '; MAX_BATCH_BYTES + 1];
        assert_eq!(
            decode(&big).unwrap_err(),
            WireError::TooLarge(MAX_BATCH_BYTES + 1)
        );
        let bad_id = encode("dev.1", 1, &[rec(1, b"1")]).unwrap();
        assert!(matches!(decode(&bad_id), Err(WireError::DeviceId(_))));
        let dup = encode("d", 1, &[rec(2, b"1"), rec(2, b"1")]).unwrap();
        assert_eq!(decode(&dup).unwrap_err(), WireError::Order);
        let empty = encode("d", 1, &[]).unwrap();
        assert_eq!(decode(&empty).unwrap_err(), WireError::Order);
        let text = String::from_utf8(encode("d", 1, &[rec(1, b"1")]).unwrap()).unwrap();
        let v2 = text.replace("\"v\":1", "\"v\":2");
        assert_eq!(decode(v2.as_bytes()).unwrap_err(), WireError::Version(2));
        let cls = text.replace("\"alert\"", "\"bogus\"");
        assert!(matches!(decode(cls.as_bytes()), Err(WireError::Class(_))));
        let ep = text.replace("0000000000000001", "xyz");
        assert!(matches!(decode(ep.as_bytes()), Err(WireError::Epoch(_))));
    }

    #[test]
    fn questions_parse_and_answers_go_only_under_the_devices_name() {
        assert_eq!(
            decode_question(br#"{"ask":"attest","nonce":"00ff"}"#).unwrap(),
            Question::Attest {
                nonce: "00ff".into()
            }
        );
        assert!(decode_question(br#"{"ask":"reboot"}"#).is_err());
        assert_eq!(
            decode_question(br#"{"ask":"enrol_request"}"#).unwrap(),
            Question::EnrolRequest
        );
        assert!(matches!(
            decode_question(br#"{"ask":"activate","challenge":{"id":"x"}}"#).unwrap(),
            Question::Activate { .. }
        ));
        assert!(decode_question(&vec![b' '; MAX_QUESTION_BYTES + 1]).is_err());
        assert!(answer_subject_ok("dev-1", "guardian.answer.dev-1.abc_9"));
        for bad in [
            "guardian.answer.dev-2.abc",
            "guardian.answer.dev-1",
            "guardian.answer.dev-1.",
            "guardian.answer.dev-1.a.b",
            "guardian.answer.dev-10.a",
            "guardian.in.dev-1",
            "_INBOX.x",
        ] {
            assert!(!answer_subject_ok("dev-1", bad), "{bad}");
        }
    }
}
