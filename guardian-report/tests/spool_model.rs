//! The spool against a model, under random appends, syncs, acknowledgements
//! and restarts: every sequence number given is acknowledged, still held
//! with its exact payload, or named in a drop notice, never two of the
//! last two; sequence numbers never repeat; the bound holds.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use guardian_report::spool::{Class, Fsync, Span, Spool, SpoolConfig, frame_len};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Append(u8, usize),
    Sync,
    Ack(usize),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..4, 0usize..600).prop_map(|(c, n)| Op::Append(c, n)),
        1 => Just(Op::Sync),
        1 => (0usize..30).prop_map(Op::Ack),
        1 => Just(Op::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn spool_keeps_or_explains_every_record(ops in proptest::collection::vec(op(), 1..300), always in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        let max = 8 * 1024;
        let cfg = SpoolConfig {
            dir: dir.path().to_owned(),
            max_bytes: max,
            segment_bytes: 1500,
            fsync: if always { Fsync::Always } else { Fsync::Interval(std::time::Duration::from_secs(1)) },
        };
        let mut spool = Spool::open(cfg.clone()).unwrap();
        let epoch = spool.epoch();
        let mut given: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        let mut acked = std::collections::BTreeSet::new();
        let mut spans: std::collections::BTreeSet<Span> = std::collections::BTreeSet::new();
        let mut last_seq = 0u64;
        let mut n = 0u32;
        for op in ops {
            match op {
                Op::Append(c, len) => {
                    n += 1;
                    let class = Class::ALL[usize::from(c)];
                    let payload: Vec<u8> = n.to_le_bytes().iter().copied().cycle().take(len.max(4)).collect();
                    let a = spool.append(class, &payload).unwrap();
                    if let Some(seq) = a.seq {
                        prop_assert!(seq > last_seq, "seq {} after {}", seq, last_seq);
                        last_seq = seq;
                        given.insert(seq, payload);
                    }
                    if let Some(notice) = a.dropped {
                        let ns = notice.notice_seq.unwrap();
                        prop_assert!(ns > last_seq);
                        last_seq = ns;
                        prop_assert!(!notice.more);
                        spans.extend(notice.spans.iter().copied());
                                                given.insert(ns, serde_json::to_vec(&notice).unwrap());
                    }
                    prop_assert!(spool.stats().bytes <= max + frame_len(1024), "bound");
                }
                Op::Sync => spool.sync().unwrap(),
                Op::Ack(k) => {
                    let p = spool.pending(0, k, usize::MAX).unwrap();
                    for r in p.iter().take(k) {
                        spool.ack(r.seq).unwrap();
                        acked.insert(r.seq);
                    }
                }
                Op::Reopen => {
                    spool.sync().unwrap();
                    drop(spool);
                    spool = Spool::open(cfg.clone()).unwrap();
                    prop_assert_eq!(spool.epoch(), epoch);
                    prop_assert!(spool.stats().next_seq > last_seq);
                }
            }
        }
        spool.sync().unwrap();
        let held: BTreeMap<u64, Vec<u8>> = spool
            .pending(0, usize::MAX, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|r| (r.seq, r.payload))
            .collect();
        for (seq, payload) in &held {
            // Drop notices included: what the spool wrote is the notice it
            // returned.
            prop_assert_eq!(Some(payload), given.get(seq), "seq {} payload changed", seq);
        }
        // The fleet's accounting: records neither acknowledged nor held are
        // exactly those the distinct spans count, each inside a span.
        let last = spool.stats().next_seq;
        let missing: Vec<u64> = (1..last).filter(|s| !acked.contains(s) && !held.contains_key(s)).collect();
        for m in &missing {
            prop_assert!(spans.iter().any(|s| s.from <= *m && *m <= s.to), "seq {} lost: not acked, not held, in no span", m);
        }
        let counted: u64 = spans.iter().map(|s| s.dropped).sum();
        // Acknowledged records can sit inside a span's range too, so the
        // spans count exactly the missing ones when nothing in them was
        // acknowledged; in general never fewer.
        prop_assert!(counted >= missing.len() as u64, "spans count {} < {} missing", counted, missing.len());
        prop_assert!(counted <= missing.len() as u64 + acked.len() as u64);
    }
}
