//! The measurement log in the formats other tools read.
//!
//! - [`tcg`]: the TCG PC Client binary event log (a `Spec ID Event03`
//!   header in the SHA-1 event format, then one `TCG_PCR_EVENT2` per
//!   extend, event type `EV_IPL`), which `tpm2_eventlog` parses and
//!   replays. Each event's data is the record's canonical encoding, so the
//!   digest in the event is SHA-256 of its data.
//! - [`cel`]: TCG Canonical Event Log records in JSON, one per line and
//!   each prefixed with an ASCII record separator (RFC 7464 JSON text
//!   sequences), the way systemd writes `/run/log/systemd/tpm2-measure.log`.

use base64::Engine as _;
use serde::Serialize;

use super::{
    event,
    log::{Contents, Record},
};

/// `EV_NO_ACTION`: not extended (the Spec ID header).
pub const EV_NO_ACTION: u32 = 0x0000_0003;
/// `EV_IPL`: a measurement made by the OS or its loader.
pub const EV_IPL: u32 = 0x0000_000d;
/// `TPM_ALG_SHA256`.
pub const TPM_ALG_SHA256: u16 = 0x000b;

fn data(r: &Record) -> Vec<u8> {
    event::canonical(r.pcr, &r.event)
}

/// The TCG PC Client binary event log of this boot's extends.
pub fn tcg(contents: &Contents, boot_id: &str) -> Vec<u8> {
    let mut out = Vec::new();
    // Header: TCG_PCClientPCREvent (SHA-1 format) carrying the
    // TCG_EfiSpecIDEvent that announces the crypto-agile format.
    let mut spec = Vec::new();
    spec.extend_from_slice(b"Spec ID Event03\0");
    spec.extend_from_slice(&0u32.to_le_bytes()); // platformClass
    spec.push(0); // specVersionMinor
    spec.push(2); // specVersionMajor
    spec.push(0); // specErrata
    spec.push(2); // uintnSize: 64-bit
    spec.extend_from_slice(&1u32.to_le_bytes()); // numberOfAlgorithms
    spec.extend_from_slice(&TPM_ALG_SHA256.to_le_bytes());
    spec.extend_from_slice(&32u16.to_le_bytes());
    spec.push(0); // vendorInfoSize
    out.extend_from_slice(&0u32.to_le_bytes()); // pcrIndex
    out.extend_from_slice(&EV_NO_ACTION.to_le_bytes());
    out.extend_from_slice(&[0u8; 20]);
    out.extend_from_slice(&(spec.len() as u32).to_le_bytes());
    out.extend_from_slice(&spec);
    for r in contents.extended_this_boot(boot_id) {
        out.extend_from_slice(&r.pcr.to_le_bytes());
        out.extend_from_slice(&EV_IPL.to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes()); // digests.count
        out.extend_from_slice(&TPM_ALG_SHA256.to_le_bytes());
        out.extend_from_slice(&r.digest_bytes());
        let d = data(r);
        out.extend_from_slice(&(d.len() as u32).to_le_bytes());
        out.extend_from_slice(&d);
    }
    out
}

/// One record of the Canonical Event Log, JSON encoding.
#[derive(Serialize)]
struct CelRecord<'a> {
    recnum: u64,
    pcr: u32,
    digests: [CelDigest<'a>; 1],
    content_type: &'static str,
    content: CelContent,
}

#[derive(Serialize)]
struct CelDigest<'a> {
    #[serde(rename = "hashAlg")]
    hash_alg: &'static str,
    digest: &'a str,
}

#[derive(Serialize)]
struct CelContent {
    event_type: &'static str,
    event_data: String,
}

/// This boot's extends as CEL-JSON records in a JSON text sequence.
pub fn cel(contents: &Contents, boot_id: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for (recnum, r) in contents.extended_this_boot(boot_id).enumerate() {
        let rec = CelRecord {
            recnum: recnum as u64,
            pcr: r.pcr,
            digests: [CelDigest {
                hash_alg: "sha256",
                digest: &r.digest,
            }],
            content_type: "pcclient_std",
            content: CelContent {
                event_type: "EV_IPL",
                event_data: base64::engine::general_purpose::STANDARD.encode(data(r)),
            },
        };
        out.push(0x1e);
        if let Ok(json) = serde_json::to_vec(&rec) {
            out.extend_from_slice(&json);
        }
        out.push(b'\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use sha2::{Digest as _, Sha256};

    use super::*;
    use crate::evidence::event::{Event, NoteEvent};

    #[test]
    fn tcg_layout_and_data_hash_to_the_digest() {
        let mut r = Record::new(
            14,
            Event::Guard(crate::evidence::event::GuardEvent {
                action: "start".into(),
                mode: "enforce".into(),
                pid: 1,
                detail: "d".into(),
            }),
        );
        r.boot_id = "b".into();
        r.extended = true;
        let mut note = Record::note("n");
        note.boot_id = "b".into();
        let c = Contents {
            records: vec![r.clone(), note],
            ..Default::default()
        };
        let bin = tcg(&c, "b");
        // Header event: 4 + 4 + 20 + 4 + spec(16+4+4+4+4+1 = 33).
        assert_eq!(&bin[32..48], b"Spec ID Event03\0");
        let first = 32 + 33;
        assert_eq!(&bin[first..first + 4], &14u32.to_le_bytes());
        let digest = &bin[first + 14..first + 46];
        let len = u32::from_le_bytes(bin[first + 46..first + 50].try_into().unwrap()) as usize;
        let d = &bin[first + 50..first + 50 + len];
        assert_eq!(bin.len(), first + 50 + len, "the note is not exported");
        assert_eq!(Sha256::digest(d)[..], digest[..]);
        assert_eq!(hex::encode(digest), r.digest);
        let out = cel(&c, "b");
        assert_eq!(out[0], 0x1e);
        let v: serde_json::Value = serde_json::from_slice(&out[1..]).unwrap();
        assert_eq!(v["pcr"], 14);
        assert_eq!(v["digests"][0]["hashAlg"], "sha256");
        let _ = NoteEvent {
            text: String::new(),
        };
    }
}
