//! When the spool is full: the drop rule (acknowledged records first, then
//! the least important class, oldest segment first; the incoming record
//! itself when it is less important than everything held), the segment
//! rewrite that carries it out, and the [`DropNotice`] that reports it.

use std::fs;

use super::{
    Class, DropNotice, Entry, Span, Spool, SpoolError,
    format::{SEG_MAGIC, io_err, write_atomic},
};

impl Spool {
    pub(super) fn make_room(
        &mut self,
        incoming: Class,
        notice: &mut DropNotice,
    ) -> Result<Room, SpoolError> {
        // Acknowledged records still on disk go first: nothing is lost.
        if let Some(i) = self
            .segments
            .iter()
            .position(|s| s.entries.iter().any(|e| e.acked))
        {
            self.rewrite(i, |e| !e.acked, notice, Given::Dropped)?;
            return Ok(Room::Made);
        }
        let Some(lowest) = self
            .segments
            .iter()
            .flat_map(|s| s.unacked())
            .map(|e| e.class)
            .min()
        else {
            // Nothing held at all and still no room: the record alone is
            // larger than the bound (checked by the caller) or the bound
            // is smaller than a segment header.
            return Ok(Room::DropIncoming);
        };
        if incoming < lowest {
            return Ok(Room::DropIncoming);
        }
        let Some(i) = self
            .segments
            .iter()
            .position(|s| s.unacked().any(|e| e.class == lowest))
        else {
            return Ok(Room::DropIncoming);
        };
        // One rewrite drops every record of the class in the oldest segment
        // holding it: few rewrites, and so few notices (a notice is about
        // 150 bytes against a segment's worth of records freed). When only
        // alerts are left, the oldest segment's alerts go; when only drop
        // notices are (a spool far too small for its segments), the oldest
        // notices, and the gaps they explained become unexplained ones at
        // the fleet.
        self.rewrite(i, |e| e.class != lowest, notice, Given::Dropped)?;
        Ok(Room::Made)
    }

    /// Rewrite segment `i` keeping the unacknowledged records `keep` says
    /// to keep; the others unacknowledged are given up (recorded in the
    /// notice, and counted as `given`).
    pub(super) fn rewrite(
        &mut self,
        i: usize,
        keep: impl Fn(&Entry) -> bool,
        notice: &mut DropNotice,
        given: Given,
    ) -> Result<(), SpoolError> {
        let is_active = i + 1 == self.segments.len();
        if is_active {
            self.active = None;
        }
        let seg = &self.segments[i];
        let data = fs::read(&seg.path).map_err(io_err("read", &seg.path))?;
        let mut out = Vec::with_capacity(data.len());
        out.extend_from_slice(SEG_MAGIC);
        let mut entries = Vec::new();
        let mut dropped = Vec::new();
        for e in &seg.entries {
            if e.acked {
                continue;
            }
            if !keep(e) {
                dropped.push((e.class, e.seq));
                continue;
            }
            let (a, b) = (e.offset as usize, e.offset as usize + e.len as usize);
            let Some(frame) = data.get(a..b) else {
                return Err(SpoolError::Corrupt {
                    path: seg.path.clone(),
                    problem: format!("shorter than its index (record {})", e.seq),
                });
            };
            let mut e = e.clone();
            e.offset = out.len() as u64;
            out.extend_from_slice(frame);
            entries.push(e);
        }
        let path = seg.path.clone();
        let old_bytes = seg.bytes;
        // Keep a segment file even when emptied: its name holds the
        // sequence it started at, and the active one is appended to.
        write_atomic(&self.cfg.dir, &path, &out)?;
        if let (Some(lo), Some(hi)) = (
            dropped.iter().map(|d| d.1).min(),
            dropped.iter().map(|d| d.1).max(),
        ) {
            notice.add_span(lo, hi, dropped.len() as u64);
        }
        for (class, _) in dropped {
            *notice.by_class.entry(class.name().to_owned()).or_default() += 1;
            match given {
                Given::Dropped => self.stats_dropped[class as usize] += 1,
                // Counted by the caller, apart from the drop rule's drops.
                Given::Lost => {}
            }
        }
        let seg = &mut self.segments[i];
        seg.entries = entries;
        seg.bytes = out.len() as u64;
        self.bytes = self.bytes - old_bytes + seg.bytes;
        if seg.entries.is_empty() && !is_active {
            let seg = self.segments.remove(i);
            if let Some(seg) = seg {
                self.bytes -= seg.bytes;
                fs::remove_file(&seg.path).map_err(io_err("remove emptied segment", &seg.path))?;
            }
        }
        // Records written before the rewrite stay durable (the rewrite is
        // synced), so `durable_seq` is unchanged.
        Ok(())
    }
}

/// Payload bytes kept free for a drop notice: an eighth of the spool,
/// between 1 and 32 KiB (so a notice carries 10 to 327 spans).
pub(super) fn notice_budget(max_bytes: u64) -> usize {
    (max_bytes / 8).clamp(1024, 32 * 1024) as usize
}

/// Why a rewrite gives records up.
pub(super) enum Given {
    /// The drop rule, to make room.
    Dropped,
    /// They no longer read back as written ([`Spool::salvage`]).
    Lost,
}

pub(super) enum Room {
    Made,
    DropIncoming,
}

impl DropNotice {
    /// A span made by this notice (its id is filled in when the notice's
    /// own sequence number is known).
    pub(super) fn add_span(&mut self, from: u64, to: u64, dropped: u64) {
        self.keep_span(Span {
            id: 0,
            from,
            to,
            dropped,
        });
    }

    fn keep_span(&mut self, span: Span) {
        if self.spans.len() >= self.cap {
            self.more = true;
        } else {
            self.spans.push(span);
        }
    }

    pub(super) fn add(&mut self, class: Class, seq: u64) {
        *self.by_class.entry(class.name().to_owned()).or_default() += 1;
        self.add_span(seq, seq, 1);
    }

    /// The notice will travel as record `seq`.
    pub(super) fn seal(&mut self, seq: u64) {
        self.notice_seq = Some(seq);
        for s in &mut self.spans {
            if s.id == 0 {
                s.id = seq;
            }
        }
    }
}
