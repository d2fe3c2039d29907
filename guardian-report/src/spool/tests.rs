//! The spool's tests: appends and acknowledgements across reopens, torn
//! tails, foreign files, the one-process lock, and the drop rule.

use std::{
    fs::{self, OpenOptions},
    path::Path,
};

use super::{format::seg_name, full::notice_budget, *};

fn cfg(dir: &Path, max: u64, seg: u64) -> SpoolConfig {
    SpoolConfig {
        dir: dir.to_owned(),
        max_bytes: max,
        segment_bytes: seg,
        fsync: Fsync::Always,
    }
}

#[test]
fn appends_survive_reopen_and_acks_delete_segments() {
    let d = tempfile::tempdir().unwrap();
    let mut s = Spool::open(cfg(d.path(), 1 << 20, 200)).unwrap();
    let epoch = s.epoch();
    for i in 0..20u32 {
        let a = s
            .append_at(Class::Event, 1000 + u64::from(i), &i.to_le_bytes())
            .unwrap();
        assert_eq!(a.seq, Some(u64::from(i) + 1));
        assert!(a.dropped.is_none());
    }
    let segs = fs::read_dir(d.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "seg")
        })
        .count();
    assert!(segs > 1, "200-byte segments roll over");
    drop(s);
    let mut s = Spool::open(cfg(d.path(), 1 << 20, 200)).unwrap();
    assert_eq!(s.epoch(), epoch);
    let all = s.pending(0, 100, 1 << 20).unwrap();
    assert_eq!(all.len(), 20);
    assert_eq!(all[3].payload, 3u32.to_le_bytes());
    assert_eq!(all[3].time_ms, 1003);
    for r in &all[..15] {
        s.ack(r.seq).unwrap();
    }
    assert_eq!(s.stats().depth, 5);
    drop(s);
    let s = Spool::open(cfg(d.path(), 1 << 20, 200)).unwrap();
    let left = s.pending(0, 100, 1 << 20).unwrap();
    // Acked records in a segment that still holds unacked ones may be
    // resent after a restart (the fleet deduplicates), but the first
    // records are gone for good.
    assert!(left.first().unwrap().seq > 1);
    assert_eq!(left.last().unwrap().seq, 20);
    assert_eq!(s.stats().next_seq, 21);
}

#[test]
fn sequence_numbers_are_not_reused_after_everything_is_acked() {
    let d = tempfile::tempdir().unwrap();
    let mut s = Spool::open(cfg(d.path(), 1 << 20, 100)).unwrap();
    for _ in 0..10 {
        s.append(Class::Event, b"0123456789").unwrap();
    }
    for r in s.pending(0, 100, 1 << 20).unwrap() {
        s.ack(r.seq).unwrap();
    }
    drop(s);
    let mut s = Spool::open(cfg(d.path(), 1 << 20, 100)).unwrap();
    assert_eq!(s.append(Class::Event, b"x").unwrap().seq, Some(11));
}

#[test]
fn a_torn_tail_is_cut_and_counted() {
    let d = tempfile::tempdir().unwrap();
    let mut s = Spool::open(cfg(d.path(), 1 << 20, 1 << 20)).unwrap();
    for _ in 0..3 {
        s.append(Class::Alert, b"abcdefgh").unwrap();
    }
    drop(s);
    let seg = d.path().join(seg_name(1));
    let len = fs::metadata(&seg).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 3)
        .unwrap();
    let mut s = Spool::open(cfg(d.path(), 1 << 20, 1 << 20)).unwrap();
    assert_eq!(s.stats().torn_bytes, frame_len(8) - 3);
    assert_eq!(s.pending(0, 10, 1 << 20).unwrap().len(), 2);
    assert_eq!(s.append(Class::Alert, b"z").unwrap().seq, Some(3));
    drop(s);
    let s = Spool::open(cfg(d.path(), 1 << 20, 1 << 20)).unwrap();
    let p = s.pending(0, 10, 1 << 20).unwrap();
    assert_eq!(p.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(p[2].payload, b"z");
}

#[test]
fn a_foreign_file_is_refused_by_name_and_left_alone() {
    let d = tempfile::tempdir().unwrap();
    let mut s = Spool::open(cfg(d.path(), 1 << 20, 1 << 20)).unwrap();
    s.append(Class::Event, b"x").unwrap();
    drop(s);
    let seg = d.path().join(seg_name(1));
    fs::write(&seg, b"hello world, not a segment").unwrap();
    let e = Spool::open(cfg(d.path(), 1 << 20, 1 << 20)).unwrap_err();
    assert!(e.to_string().contains(&seg.display().to_string()), "{e}");
    assert_eq!(fs::read(&seg).unwrap(), b"hello world, not a segment");
    fs::write(d.path().join("meta"), b"short").unwrap();
    let e = Spool::open(cfg(d.path(), 1 << 20, 1 << 20)).unwrap_err();
    assert!(e.to_string().contains("meta"), "{e}");
}

#[test]
fn one_process_at_a_time() {
    let d = tempfile::tempdir().unwrap();
    let s = Spool::open(cfg(d.path(), 1 << 20, 1 << 20)).unwrap();
    let e = Spool::open(cfg(d.path(), 1 << 20, 1 << 20)).unwrap_err();
    assert!(e.to_string().contains("in use"), "{e}");
    drop(s);
    Spool::open(cfg(d.path(), 1 << 20, 1 << 20)).unwrap();
}

#[test]
fn unsynced_records_are_not_sendable() {
    let d = tempfile::tempdir().unwrap();
    let mut c = cfg(d.path(), 1 << 20, 1 << 20);
    c.fsync = Fsync::Interval(Duration::from_secs(1));
    let mut s = Spool::open(c).unwrap();
    s.append(Class::Event, b"a").unwrap();
    assert!(s.pending(0, 10, 1 << 20).unwrap().is_empty());
    assert_eq!(s.stats().unsynced, 1);
    s.sync().unwrap();
    assert_eq!(s.pending(0, 10, 1 << 20).unwrap().len(), 1);
}

#[test]
fn full_spool_drops_least_important_first_and_says_so() {
    let d = tempfile::tempdir().unwrap();
    let payload = [7u8; 100];
    let max = 32 * 1024;
    let mut s = Spool::open(cfg(d.path(), max, 16 * frame_len(100))).unwrap();
    let classes = [
        Class::Status,
        Class::Alert,
        Class::Measurement,
        Class::Event,
    ];
    let mut notices = Vec::new();
    for i in 0..400 {
        let a = s.append(classes[i % 4], &payload).unwrap();
        if let Some(n) = a.dropped {
            notices.push(n);
        }
        assert!(
            s.stats().bytes <= max + frame_len(notice_budget(max)),
            "bound kept"
        );
    }
    assert!(!notices.is_empty());
    let held = s.pending(0, 10_000, usize::MAX).unwrap();
    let alerts = held.iter().filter(|r| r.class == Class::Alert).count();
    let status = held.iter().filter(|r| r.class == Class::Status).count();
    // Alerts are never dropped while anything less important is held.
    assert_eq!(alerts, 100);
    let st = s.stats();
    assert_eq!(st.dropped[Class::Alert as usize], 0);
    // Status summaries go first: only those appended since the last
    // drop remain.
    assert!(status <= 16, "{status} status summaries held");
    assert!(
        st.dropped[Class::Status as usize] >= 100 - status as u64 - 1,
        "{:?}",
        st.dropped
    );
    // Every sequence number given is held, or named in a notice.
    // The fleet's accounting: distinct spans, and every missing
    // sequence number inside one, their counts adding up exactly.
    let spans: std::collections::BTreeSet<Span> = notices
        .iter()
        .flat_map(|n| n.spans.iter().copied())
        .collect();
    assert!(notices.iter().all(|n| !n.more));
    let missing: Vec<u64> = (1..st.next_seq)
        .filter(|s| !held.iter().any(|r| r.seq == *s))
        .collect();
    assert_eq!(
        spans.iter().map(|s| s.dropped).sum::<u64>(),
        missing.len() as u64
    );
    for m in &missing {
        assert!(
            spans.iter().any(|s| s.from <= *m && *m <= s.to),
            "seq {m} missing, in no span"
        );
    }
    // The notices are records themselves.
    let drop_records: Vec<_> = held.iter().filter(|r| r.class == Class::Drop).collect();
    assert!(!drop_records.is_empty());
    let n: DropNotice = serde_json::from_slice(&drop_records.last().unwrap().payload).unwrap();
    assert_eq!(n.notice_seq, Some(drop_records.last().unwrap().seq));
}

#[test]
fn a_record_larger_than_the_spool_is_dropped_and_reported() {
    let d = tempfile::tempdir().unwrap();
    let mut s = Spool::open(cfg(d.path(), 20 * 1024, 4096)).unwrap();
    let a = s.append(Class::Alert, &vec![0u8; 64 * 1024]).unwrap();
    assert_eq!(a.seq, None);
    let n = a.dropped.unwrap();
    assert_eq!(
        n.spans,
        vec![Span {
            id: 2,
            from: 1,
            to: 1,
            dropped: 1
        }]
    );
    assert_eq!(n.notice_seq, Some(2));
}

/// The segment files, oldest first.
fn segments(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    v.sort();
    v
}

/// The drop notice the spool appended last.
fn last_notice(s: &Spool) -> DropNotice {
    let recs = s.pending(0, usize::MAX, usize::MAX).unwrap();
    let r = recs.iter().rev().find(|r| r.class == Class::Drop).unwrap();
    serde_json::from_slice(&r.payload).unwrap()
}

/// Root on a board without BPF LSM removes a segment while the spool holds
/// it: reading back fails, and salvage gives up exactly that segment's
/// records, counted as lost (not as drops), with a notice whose spans and
/// reason say which and why. Everything else still reads back, and appends
/// go on.
#[test]
fn a_removed_segment_is_given_up_and_reported_not_retried_forever() {
    let d = tempfile::tempdir().unwrap();
    let mut s = Spool::open(cfg(d.path(), 1 << 20, 200)).unwrap();
    for i in 0..20u32 {
        s.append(Class::Event, &i.to_le_bytes()).unwrap();
    }
    let segs = segments(d.path());
    assert!(segs.len() >= 3, "{segs:?}");
    let in_second: Vec<u64> = {
        let all = s.pending(0, 100, 1 << 20).unwrap();
        let first_of =
            |p: &Path| -> u64 { p.file_stem().unwrap().to_str().unwrap().parse().unwrap() };
        let (lo, hi) = (first_of(&segs[1]), first_of(&segs[2]));
        all.iter()
            .map(|r| r.seq)
            .filter(|&q| q >= lo && q < hi)
            .collect()
    };
    fs::remove_file(&segs[1]).unwrap();
    assert!(s.pending(0, 100, 1 << 20).is_err(), "reading it back fails");
    let lost = s.salvage().unwrap();
    assert_eq!(lost, in_second.len() as u64);
    let st = s.stats();
    assert_eq!(st.lost, lost);
    assert_eq!(st.dropped, [0; 5], "lost records are not drop-rule drops");
    let n = last_notice(&s);
    assert_eq!(n.reason.as_deref(), Some(LOST_ON_DISK));
    assert_eq!(n.by_class.get("event"), Some(&lost));
    assert_eq!(n.spans.len(), 1);
    assert_eq!(
        (n.spans[0].from, n.spans[0].to, n.spans[0].dropped),
        (in_second[0], *in_second.last().unwrap(), lost)
    );
    // Everything else reads back; nothing is given up twice.
    let left: Vec<u64> = s
        .pending(0, 100, 1 << 20)
        .unwrap()
        .iter()
        .filter(|r| r.class == Class::Event)
        .map(|r| r.seq)
        .collect();
    assert_eq!(left.len(), 20 - in_second.len());
    assert!(left.iter().all(|q| !in_second.contains(q)));
    assert_eq!(s.salvage().unwrap(), 0);
    // Appends go on, and survive a reopen.
    let a = s.append(Class::Alert, b"after").unwrap();
    drop(s);
    let s = Spool::open(cfg(d.path(), 1 << 20, 200)).unwrap();
    let all = s.pending(0, 100, 1 << 20).unwrap();
    assert_eq!(all.last().unwrap().seq, a.seq.unwrap());
}

/// A record changed on disk (its CRC no longer matches) is given up alone;
/// its neighbours in the segment are kept. The open segment removed: what
/// it held is given up and new appends go to a new segment, not to the
/// removed file.
#[test]
fn a_changed_record_is_given_up_alone_and_a_removed_open_segment_is_replaced() {
    let d = tempfile::tempdir().unwrap();
    let mut s = Spool::open(cfg(d.path(), 1 << 20, 1 << 16)).unwrap();
    for i in 0..5u32 {
        s.append(Class::Event, format!("record {i}").as_bytes())
            .unwrap();
    }
    let seg = segments(d.path()).remove(0);
    let mut data = fs::read(&seg).unwrap();
    let at = data.windows(8).position(|w| w == b"record 2").unwrap();
    data[at + 7] = b'X';
    fs::write(&seg, &data).unwrap();
    assert!(s.pending(0, 100, 1 << 20).is_err());
    assert_eq!(s.salvage().unwrap(), 1);
    let n = last_notice(&s);
    assert_eq!(
        (n.spans[0].from, n.spans[0].to, n.spans[0].dropped),
        (3, 3, 1)
    );
    let kept: Vec<u64> = s
        .pending(0, 100, 1 << 20)
        .unwrap()
        .iter()
        .filter(|r| r.class == Class::Event)
        .map(|r| r.seq)
        .collect();
    assert_eq!(kept, [1, 2, 4, 5]);

    // Now the whole (open) segment goes.
    fs::remove_file(&seg).unwrap();
    assert!(s.pending(0, 100, 1 << 20).is_err());
    assert_eq!(s.salvage().unwrap(), 5, "four events and the first notice");
    assert_eq!(s.stats().lost, 6);
    s.append(Class::Event, b"after").unwrap();
    let segs = segments(d.path());
    assert_eq!(segs.len(), 1, "{segs:?}");
    let left = s.pending(0, 100, 1 << 20).unwrap();
    assert_eq!(left.last().unwrap().payload, b"after");
    assert_eq!(left.len(), 2, "the second notice and the new record");
}
