//! Records that can no longer be read back as they were written: a segment
//! removed, cut short or replaced, or a record changed on disk, while the
//! spool held them (root on a board without BPF LSM, where guardian cannot
//! deny it, or a failing disk).
//!
//! Such records are given up rather than retried: a spool that insisted
//! on reading them would fail every send after, and one removed segment
//! would silence the device for good. They are counted apart from the drop
//! rule's drops ([`SpoolStats::lost`](super::SpoolStats::lost)), and a
//! [`Class::Drop`] notice naming their sequence numbers, with its
//! `reason`, is appended, so that the fleet sees the gap explained and
//! raises an alert saying why, and the agent records it in the evidence.

use std::{collections::BTreeSet, fs, io};

use super::{
    Class, DropNotice, SPAN_JSON, Spool, SpoolError,
    format::{BODY_FIXED, FRAME, crc, io_err, now_ms},
    full::{Given, notice_budget},
};

/// The `reason` of a notice for records lost on disk.
pub const LOST_ON_DISK: &str = "removed or changed on disk before they were sent";

impl Spool {
    /// Give up every unacknowledged record that no longer reads back as
    /// written, and append a drop notice for them. Returns how many were
    /// given up (zero: the spool was intact, nothing appended).
    ///
    /// The reporter calls this when reading records back failed; it is
    /// cheap only in the sense that it reads each segment once.
    pub fn salvage(&mut self) -> Result<u64, SpoolError> {
        let mut notice = DropNotice {
            cap: notice_budget(self.cfg.max_bytes) / SPAN_JSON,
            reason: Some(LOST_ON_DISK.to_owned()),
            ..DropNotice::default()
        };
        let mut lost = 0u64;
        let mut i = 0;
        while i < self.segments.len() {
            let seg = &self.segments[i];
            let seg_path = seg.path.clone();
            if seg.unacked().next().is_none() {
                i += 1;
                continue;
            }
            let data = match fs::read(&seg.path) {
                Ok(d) => Some(d),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err(io_err("read", &seg.path)(e)),
            };
            let bad: Vec<(u64, Class)> = seg
                .unacked()
                .filter(|e| !data.as_deref().is_some_and(|d| intact(d, e)))
                .map(|e| (e.seq, e.class))
                .collect();
            let (Some(&(lo, _)), Some(&(hi, _))) = (bad.first(), bad.last()) else {
                i += 1;
                continue;
            };
            lost += bad.len() as u64;
            if data.is_some() {
                // Keep what is intact; the rewrite (to a temporary file
                // renamed over this one) gives up the rest, into the notice.
                let bad: BTreeSet<u64> = bad.iter().map(|b| b.0).collect();
                self.rewrite(i, |e| !bad.contains(&e.seq), &mut notice, Given::Lost)?;
                if i < self.segments.len() && self.segments[i].path == seg_path {
                    i += 1;
                }
                continue;
            }
            // The file is gone: so is the whole segment (its acknowledged
            // records with it: nothing of it is left to collect). Appends go
            // to a new segment, as the open one writes to a removed file.
            if i + 1 == self.segments.len() {
                self.active = None;
            }
            for (_, class) in &bad {
                *notice.by_class.entry(class.name().to_owned()).or_default() += 1;
            }
            notice.add_span(lo, hi, bad.len() as u64);
            if let Some(seg) = self.segments.remove(i) {
                self.bytes -= seg.bytes;
            }
        }
        if lost == 0 {
            return Ok(0);
        }
        self.stats_lost += lost;
        notice.seal(self.next_seq);
        let body = serde_json::to_vec(&notice).unwrap_or_default();
        self.write_record(Class::Drop, now_ms(), &body)?;
        if self.cfg.fsync == super::Fsync::Always {
            self.sync()?;
        }
        Ok(lost)
    }
}

/// Whether entry `e` reads back from `data` as written: the frame in
/// place, its CRC right, its sequence number its own.
fn intact(data: &[u8], e: &super::Entry) -> bool {
    let (a, b) = (e.offset as usize, e.offset as usize + e.len as usize);
    let Some(frame) = data.get(a..b) else {
        return false;
    };
    if (e.len as u64) < FRAME + BODY_FIXED {
        return false;
    }
    let body = &frame[FRAME as usize..];
    let stored_crc = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let seq = u64::from_le_bytes(body[..8].try_into().unwrap_or([0; 8]));
    stored_crc == crc(body) && seq == e.seq
}
