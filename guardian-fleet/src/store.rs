//! The exactly-once store: each device's records kept once by (device,
//! epoch, sequence), however often the link resent them and however many
//! fleet instances handled the resends.
//!
//! Owns the format of the store stream and the rule that decides what is
//! new. How it stays exact with any number of instances: every stored
//! message for a device (subject `guardian.store.<device>`) carries the
//! device's [`Summary`] (which sequence numbers are stored, per epoch). To
//! store a batch an instance reads the subject's last message, keeps the
//! records the summary does not have, and publishes them with the summary
//! updated and `Nats-Expected-Last-Subject-Sequence` set to the message it
//! read. If another instance stored something for the device in between,
//! the stream refuses the publish and the instance reads again. A crash
//! between the publish and the acknowledgement of the ingest message makes
//! the ingest message come back; the summary then says its records are
//! stored, and it is acknowledged as a duplicate. No clock, no lease, no
//! window: the stream's compare-and-set on the subject is the whole lock.
//! Several ingest messages of one device (one epoch) may be stored in one
//! message; the rule is the same, each record once by its sequence number.
//!
//! May not: talk to devices, or decide trust (that is the verifier's).

use std::collections::{BTreeMap, BTreeSet};

use guardian_report::{
    spool::{DropNotice, Span},
    wire::{Batch, WireRecord},
};
use serde::{Deserialize, Serialize};

/// The store stream's subject prefix.
pub const STORE_PREFIX: &str = "guardian.store";

/// A device's store subject.
pub fn store_subject(device: &str) -> String {
    format!("{STORE_PREFIX}.{device}")
}

/// What is stored for one device, carried in every stored message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Per spool epoch (16 hex digits).
    pub epochs: BTreeMap<String, EpochSummary>,
    /// The epoch of the newest record stored.
    pub current_epoch: Option<String>,
    /// When the device was last heard from (ms since the Unix epoch, fleet
    /// clock).
    pub last_seen_ms: u64,
    /// Batches that brought something new.
    pub batches: u64,
    /// Records that arrived again and were not stored again.
    pub duplicates: u64,
}

/// What is stored of one epoch of a device's spool.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochSummary {
    /// Sequence numbers stored, as sorted, disjoint, inclusive ranges.
    pub stored: Vec<(u64, u64)>,
    /// Records stored, by class name.
    pub by_class: BTreeMap<String, u64>,
    /// Drop spans the device reported (each once, by id, from, to).
    pub drop_spans: BTreeSet<Span>,
    /// Records the device reported dropped for a full in-memory queue.
    pub queue_drops: u64,
}

impl EpochSummary {
    /// Whether `seq` is stored.
    pub fn has(&self, seq: u64) -> bool {
        let i = self.stored.partition_point(|r| r.1 < seq);
        self.stored.get(i).is_some_and(|r| r.0 <= seq)
    }

    /// Mark `seq` stored.
    pub fn insert(&mut self, seq: u64) {
        let i = self.stored.partition_point(|r| r.1 < seq);
        if self.stored.get(i).is_some_and(|r| r.0 <= seq) {
            return;
        }
        let joins_prev = i > 0 && self.stored[i - 1].1 + 1 == seq;
        let joins_next = self.stored.get(i).is_some_and(|r| r.0 == seq + 1);
        match (joins_prev, joins_next) {
            (true, true) => {
                self.stored[i - 1].1 = self.stored[i].1;
                self.stored.remove(i);
            }
            (true, false) => self.stored[i - 1].1 = seq,
            (false, true) => self.stored[i].0 = seq,
            (false, false) => self.stored.insert(i, (seq, seq)),
        }
    }

    /// Records stored.
    pub fn count(&self) -> u64 {
        self.stored.iter().map(|r| r.1 - r.0 + 1).sum()
    }

    /// Records the device said it dropped (spans counted once each).
    pub fn dropped(&self) -> u64 {
        self.drop_spans.iter().map(|s| s.dropped).sum::<u64>() + self.queue_drops
    }

    /// Sequence numbers below the highest stored that are neither stored
    /// nor covered by a drop span: lost in transit (or not arrived yet).
    pub fn unexplained(&self) -> u64 {
        let Some(&(_, hi)) = self.stored.last() else {
            return 0;
        };
        let gaps = hi - self.count();
        gaps.saturating_sub(self.drop_spans.iter().map(|s| s.dropped).sum())
    }
}

/// A stored message: the records new in one ingest message, and the
/// device's summary after them.
#[derive(Debug, Serialize, Deserialize)]
pub struct Stored {
    /// The device.
    pub device: String,
    /// The spool epoch of these records.
    pub epoch: String,
    /// When the fleet stored them (ms since the Unix epoch).
    pub stored_ms: u64,
    /// The records (only those not stored before), in sequence order.
    pub records: Vec<WireRecord>,
    /// The device's summary including these records.
    pub summary: Summary,
}

/// The records of `batches` (one device's, one epoch's, in the order they
/// came) that `summary` does not have: each sequence number once (a device
/// that resent after a reconnect may have cut its batches differently, so
/// two of them can share records), in sequence order, as (batch, record)
/// indices.
pub fn new_records(summary: &Summary, batches: &[Batch]) -> Vec<(usize, usize)> {
    let have = batches.first().and_then(|b| summary.epochs.get(&b.epoch));
    let mut seen = BTreeSet::new();
    let mut fresh: Vec<(u64, (usize, usize))> = Vec::new();
    for (bi, batch) in batches.iter().enumerate() {
        for (ri, r) in batch.records.iter().enumerate() {
            if !have.is_some_and(|e| e.has(r.seq)) && seen.insert(r.seq) {
                fresh.push((r.seq, (bi, ri)));
            }
        }
    }
    fresh.sort_unstable_by_key(|f| f.0);
    fresh.into_iter().map(|f| f.1).collect()
}

/// The summary after storing the `fresh` records of `batches` (as
/// [`new_records`] gave them).
pub fn updated(
    summary: &Summary,
    batches: &[Batch],
    fresh: &[(usize, usize)],
    now_ms: u64,
) -> Summary {
    let mut s = summary.clone();
    let Some(epoch) = batches.first().map(|b| b.epoch.clone()) else {
        return s;
    };
    let e = s.epochs.entry(epoch.clone()).or_default();
    let mut contributed = BTreeSet::new();
    for &(bi, ri) in fresh {
        let r = &batches[bi].records[ri];
        contributed.insert(bi);
        e.insert(r.seq);
        *e.by_class.entry(r.class.clone()).or_default() += 1;
        if r.class == "drop"
            && let Ok(n) = serde_json::from_str::<DropNotice>(r.body.get())
        {
            e.drop_spans.extend(n.spans.iter().copied());
            if let Some(q) = n.by_class.get("queue_full") {
                e.queue_drops += q;
            }
        }
    }
    let given: usize = batches.iter().map(|b| b.records.len()).sum();
    s.current_epoch = Some(epoch);
    s.last_seen_ms = now_ms;
    s.batches += contributed.len() as u64;
    s.duplicates += (given - fresh.len()) as u64;
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_insert_and_merge() {
        let mut e = EpochSummary::default();
        for s in [5, 3, 4, 10, 1, 2, 9, 11, 7] {
            e.insert(s);
        }
        assert_eq!(e.stored, vec![(1, 5), (7, 7), (9, 11)]);
        e.insert(6);
        e.insert(8);
        assert_eq!(e.stored, vec![(1, 11)]);
        assert!(e.has(1) && e.has(11) && !e.has(12) && !e.has(0));
        e.insert(4);
        assert_eq!(e.count(), 11);
    }

    #[test]
    fn unexplained_gaps_are_the_ones_no_span_covers() {
        let mut e = EpochSummary::default();
        for s in [1, 2, 5, 6, 9] {
            e.insert(s);
        }
        assert_eq!(e.unexplained(), 4);
        e.drop_spans.insert(Span {
            id: 9,
            from: 3,
            to: 4,
            dropped: 2,
        });
        assert_eq!(e.unexplained(), 2);
        assert_eq!(e.dropped(), 2);
    }

    fn batch(epoch: &str, seqs: &[u64]) -> Batch {
        Batch {
            v: 1,
            device: "dev".into(),
            epoch: epoch.into(),
            records: seqs
                .iter()
                .map(|&seq| WireRecord {
                    seq,
                    time_ms: seq,
                    class: "event".into(),
                    body: serde_json::value::RawValue::from_string("{}".into()).unwrap(),
                })
                .collect(),
        }
    }

    #[test]
    fn batches_stored_together_keep_each_record_once_in_order() {
        // A resend cut differently: 4..=6 come twice, 7 once, 1..=3 are
        // already stored.
        let mut summary = Summary::default();
        let first = [batch("e1", &[1, 2, 3])];
        let fresh = new_records(&summary, &first);
        summary = updated(&summary, &first, &fresh, 10);
        let next = [batch("e1", &[5, 6, 7]), batch("e1", &[3, 4, 5, 6])];
        let fresh = new_records(&summary, &next);
        let seqs: Vec<u64> = fresh.iter().map(|&(b, r)| next[b].records[r].seq).collect();
        assert_eq!(seqs, vec![4, 5, 6, 7]);
        let after = updated(&summary, &next, &fresh, 20);
        let e = &after.epochs["e1"];
        assert_eq!(e.stored, vec![(1, 7)]);
        assert_eq!(e.by_class["event"], 7);
        assert_eq!(after.batches, 3);
        assert_eq!(after.duplicates, 3);
        // Everything again: nothing new.
        assert!(new_records(&after, &next).is_empty());
    }
}
