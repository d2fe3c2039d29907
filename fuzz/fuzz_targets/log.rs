//! The measurement log reader (`evidence/log.rs`, `log::parse`): the file
//! `guardian quote`, `guardian status` and every writer read, which root
//! on the device can edit. Never a panic. What parses follows the log's
//! rules (sequence from 0, every record's digest its event's, voids only
//! of earlier extended records), accounts for every byte (complete lines
//! plus at most a torn tail), and reads back the same when written the way
//! the writer writes it. Everything that reads parsed contents (replay,
//! the bundle's prefix, the TCG and CEL exports) runs on it too.
//!
//! A fuzzer cannot compute SHA-256, so almost every record it makes fails
//! the digest check at once. Each input is therefore read twice: as it
//! is, and with every record's digest recomputed from its event (what an
//! attacker who knows the encoding does), which lets the fuzzer reach the
//! sequence, boot and void rules behind the digest.

#![no_main]

use guardian_attest::{
    attest::bundle::prefix_for,
    evidence::{
        Record,
        event::digest,
        export,
        log::{ZERO_DIGEST, parse, replay},
    },
};
use libfuzzer_sys::fuzz_target;

/// Every line that is a record gets the digest of its event (notes keep
/// theirs); other lines stay as they are.
fn rebind(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    for line in data.split_inclusive(|b| *b == b'\n') {
        let (body, nl) = match line.split_last() {
            Some((b'\n', body)) => (body, true),
            _ => (line, false),
        };
        match serde_json::from_slice::<Record>(body) {
            Ok(mut r) if !r.is_note() && r.digest != ZERO_DIGEST => {
                r.digest = hex::encode(digest(r.pcr, &r.event));
                out.extend(serde_json::to_vec(&r).unwrap_or_default());
            }
            _ => out.extend_from_slice(body),
        }
        if nl {
            out.push(b'\n');
        }
    }
    out
}

fn check(data: &[u8]) {
    let Ok(c) = parse(data) else {
        return;
    };
    assert_eq!(c.good_len as usize + c.torn_bytes, data.len());
    assert!(!data[..c.good_len as usize].is_empty() || c.records.is_empty());
    for (i, r) in c.records.iter().enumerate() {
        assert_eq!(r.seq, i as u64);
        assert_eq!(r.check(), Ok(()), "{r:?}");
        if let Some(v) = r.voids {
            assert!(r.is_note() && v < r.seq && c.records[v as usize].extended);
        }
    }
    // The writer's encoding: one JSON object and a newline per record.
    let mut written = Vec::new();
    for r in &c.records {
        written.extend(serde_json::to_vec(r).unwrap_or_default());
        written.push(b'\n');
    }
    match parse(&written) {
        Ok(back) => assert_eq!(back.records, c.records),
        Err(e) => panic!("the log as the writer writes it does not read back: {e:?}"),
    }
    // What reads the contents.
    let mut boots: Vec<&str> = c.records.iter().map(|r| r.boot_id.as_str()).collect();
    boots.sort_unstable();
    boots.dedup();
    for boot in boots.iter().take(4) {
        let this: Vec<&Record> = c.this_boot(boot).collect();
        let mut pcrs: Vec<u32> = this.iter().map(|r| r.pcr).collect();
        pcrs.sort_unstable();
        pcrs.dedup();
        // The values this boot's own records replay to (voids within the
        // boot, as a bundle carries them): the bundle's prefix replays to
        // them too.
        let voided: std::collections::HashSet<u64> = this.iter().filter_map(|r| r.voids).collect();
        let in_pcr = |rs: &[&Record], p: u32| {
            replay(
                rs.iter()
                    .copied()
                    .filter(|r| r.extended && !r.is_note() && !voided.contains(&r.seq)),
                p,
            )
        };
        let values: Vec<(u32, [u8; 32])> = pcrs.iter().map(|p| (*p, in_pcr(&this, *p))).collect();
        let prefix = prefix_for(&this, &values);
        for (p, v) in &values {
            assert_eq!(in_pcr(&prefix, *p), *v, "PCR {p}");
        }
        let _ = export::tcg(&c, boot);
        let _ = export::cel(&c, boot);
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    let rebound = rebind(data);
    if rebound != data {
        check(&rebound);
    }
});
