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
    /// Sequence numbers below this are settled: a status summary of the
    /// device said its spool no longer held any of them (all acknowledged
    /// by the fleet's stream, or dropped with a notice), and another
    /// summary has come since. What of them is neither stored nor in a
    /// drop span will never come. (The second summary is the margin for
    /// batches stored out of order: several instances share the ingest,
    /// and one that dies has its batches delivered again later.)
    #[serde(default)]
    pub settled_below: u64,
    /// Where the latest status summary settles (`settled_below` once the
    /// next summary comes).
    #[serde(default)]
    pub settling: u64,
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

    /// Settled sequence numbers (below `settled_below`) neither stored nor
    /// covered by a drop span: records the device no longer holds and the
    /// fleet never got, with no notice to explain them (removed from the
    /// device's spool while the agent was stopped, or lost on the way).
    pub fn missing(&self) -> u64 {
        let below = self.settled_below.saturating_sub(1);
        let stored: u64 = self
            .stored
            .iter()
            .filter(|r| r.0 <= below)
            .map(|r| r.1.min(below) - r.0 + 1)
            .sum();
        let spanned: u64 = self
            .drop_spans
            .iter()
            .filter(|s| s.to <= below)
            .map(|s| s.dropped)
            .sum();
        below.saturating_sub(stored).saturating_sub(spanned)
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
    /// Settled sequence numbers found missing by these records (a status
    /// summary among them settled them; see [`EpochSummary::missing`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub newly_missing: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Where a status summary (its JSON body, record `seq` of the spool epoch
/// `epoch`) settles its device's sequence numbers: below the oldest record
/// its spool still held, or below its next number if it held none; never
/// above the summary itself. `None` for a body without the spool's figures
/// or of another epoch.
pub fn settles(body: &str, seq: u64, epoch: &str) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    let spool = v.get("report")?.get("spool")?;
    let own = spool.get("epoch")?.as_u64()?;
    if format!("{own:016x}") != epoch {
        return None;
    }
    let next = spool.get("next_seq")?.as_u64()?;
    let oldest = spool.get("oldest_seq").and_then(serde_json::Value::as_u64);
    Some(oldest.unwrap_or(next).min(seq))
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
        if r.class == "status"
            && let Some(b) = settles(r.body.get(), r.seq, &epoch)
        {
            e.settled_below = e.settled_below.max(e.settling);
            e.settling = e.settling.max(b);
        }
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
    fn settled_numbers_neither_stored_nor_spanned_are_missing() {
        let mut e = EpochSummary::default();
        for s in (1..=20).filter(|s| !(5..=7).contains(s) && *s != 12) {
            e.insert(s);
        }
        e.drop_spans.insert(Span {
            id: 13,
            from: 12,
            to: 12,
            dropped: 1,
        });
        // Nothing settled yet: nothing is missing, however it looks.
        assert_eq!(e.missing(), 0);
        e.settled_below = 5;
        assert_eq!(e.missing(), 0);
        e.settled_below = 8;
        assert_eq!(e.missing(), 3, "5, 6, 7");
        e.settled_below = 21;
        assert_eq!(e.missing(), 3, "12 is explained by its span");
        // A status settles below its spool's oldest waiting record, or its
        // next number, never above itself; another epoch's says nothing.
        let body = |oldest: &str| {
            format!(
                r#"{{"report":{{"spool":{{"epoch":255,"next_seq":40,"oldest_seq":{oldest}}}}}}}"#
            )
        };
        assert_eq!(settles(&body("31"), 45, "00000000000000ff"), Some(31));
        assert_eq!(settles(&body("null"), 45, "00000000000000ff"), Some(40));
        assert_eq!(settles(&body("null"), 38, "00000000000000ff"), Some(38));
        assert_eq!(settles(&body("31"), 45, "00000000000000fe"), None);
        assert_eq!(settles("{}", 45, "00000000000000ff"), None);
    }

    /// A batch of `records` (seq, class, body) of epoch 0xff.
    fn batch_of(records: &[(u64, &str, &str)]) -> Batch {
        Batch {
            v: 1,
            device: "d".into(),
            epoch: "00000000000000ff".into(),
            records: records
                .iter()
                .map(|&(seq, class, body)| WireRecord {
                    seq,
                    time_ms: seq,
                    class: class.into(),
                    body: serde_json::value::RawValue::from_string(body.into()).unwrap(),
                })
                .collect(),
        }
    }

    /// Stored in the order given, one batch at a time: the summary after.
    fn store_all(batches: Vec<Batch>) -> Summary {
        let mut summary = Summary::default();
        for b in batches {
            let bs = [b];
            let fresh = new_records(&summary, &bs);
            summary = updated(&summary, &bs, &fresh, 1);
        }
        summary
    }

    /// Records 3 and 4 never come (removed from the device while its agent
    /// was stopped, no notice): a status that says the spool holds nothing
    /// below 6 makes them settling, and the next status settles them.
    /// Stored out of order (3 and 4 late, after the first status), they
    /// are not missing.
    #[test]
    fn a_gap_is_missing_once_a_second_status_settles_it() {
        let status = r#"{"report":{"spool":{"epoch":255,"next_seq":6,"oldest_seq":null}}}"#;
        let ev = "{}";
        let lost = store_all(vec![
            batch_of(&[(1, "event", ev), (2, "event", ev), (5, "event", ev)]),
            batch_of(&[(6, "status", status)]),
        ]);
        let e = &lost.epochs["00000000000000ff"];
        assert_eq!((e.settling, e.settled_below, e.missing()), (6, 0, 0));
        let lost = store_all(vec![
            batch_of(&[(1, "event", ev), (2, "event", ev), (5, "event", ev)]),
            batch_of(&[(6, "status", status)]),
            batch_of(&[(7, "status", status)]),
        ]);
        let e = &lost.epochs["00000000000000ff"];
        assert_eq!((e.settled_below, e.missing()), (6, 2));
        let late = store_all(vec![
            batch_of(&[(1, "event", ev), (2, "event", ev), (5, "event", ev)]),
            batch_of(&[(6, "status", status)]),
            batch_of(&[(3, "event", ev), (4, "event", ev)]),
            batch_of(&[(7, "status", status)]),
        ]);
        assert_eq!(late.epochs["00000000000000ff"].missing(), 0);
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
