//! The spool's life between open and close: records appended (sequence
//! numbers given, segments opened as they fill), synced, read back for the
//! reporter, acknowledged, and segments deleted once all of theirs are;
//! and what `guardian status` shows of it. Making room when it is full is
//! [`super::full`]'s.

use std::{
    fs::{self, File, OpenOptions},
    io::{Read, Seek, SeekFrom, Write},
};

use super::{
    Appended, Class, DropNotice, Entry, Fsync, Record, SPAN_JSON, Segment, Spool, SpoolError,
    SpoolStats,
    format::{
        BODY_FIXED, FRAME, SEG_MAGIC, crc, encode_frame, encode_mark, frame_len, io_err, now_ms,
        seg_name, sync_dir, write_atomic,
    },
    full::{Room, notice_budget},
};

impl Spool {
    /// The spool's epoch: random, made when the spool was created. The fleet
    /// keys sequence numbers by (device, epoch), so a device whose spool was
    /// wiped is seen as starting over, not as replaying.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The configured fsync policy.
    pub fn fsync(&self) -> Fsync {
        self.cfg.fsync
    }

    /// Append a record. Makes room by the drop rule if the spool is full
    /// (see the module's opening); what was dropped is returned and a
    /// [`Class::Drop`] record describing it is appended too.
    pub fn append(&mut self, class: Class, payload: &[u8]) -> Result<Appended, SpoolError> {
        self.append_at(class, now_ms(), payload)
    }

    /// [`Spool::append`] with the time given (tests, the simulator).
    pub fn append_at(
        &mut self,
        class: Class,
        time_ms: u64,
        payload: &[u8],
    ) -> Result<Appended, SpoolError> {
        let need = frame_len(payload.len());
        // Room for the notice in case something must go.
        let budget = notice_budget(self.cfg.max_bytes);
        let notice_room = frame_len(budget);
        let mut notice = DropNotice {
            cap: budget / SPAN_JSON,
            ..DropNotice::default()
        };
        let mut own_dropped = false;
        if need + notice_room > self.cfg.max_bytes {
            own_dropped = true;
        } else {
            while self.bytes + need > self.cfg.max_bytes
                || (!notice.by_class.is_empty()
                    && self.bytes + need + notice_room > self.cfg.max_bytes)
            {
                match self.make_room(class, &mut notice)? {
                    Room::Made => {}
                    Room::DropIncoming => {
                        own_dropped = true;
                        break;
                    }
                }
            }
        }
        let seq = if own_dropped {
            let seq = self.next_seq;
            self.next_seq += 1;
            notice.add(class, seq);
            self.stats_dropped[class as usize] += 1;
            // Even the incoming record gets a sequence number: the fleet
            // sees a gap that the notice explains.
            None
        } else {
            Some(self.write_record(class, time_ms, payload)?)
        };
        let dropped = if notice.by_class.is_empty() {
            None
        } else {
            let mut notice = notice;
            notice.seal(self.next_seq);
            let body = serde_json::to_vec(&notice).unwrap_or_default();
            // The notice is small and room was kept for it; if even that
            // fails the bound is exceeded by one notice rather than the
            // drop going unreported.
            self.write_record(Class::Drop, time_ms, &body)?;
            Some(notice)
        };
        if self.cfg.fsync == Fsync::Always {
            self.sync()?;
        }
        Ok(Appended { seq, dropped })
    }

    pub(super) fn write_record(
        &mut self,
        class: Class,
        time_ms: u64,
        payload: &[u8],
    ) -> Result<u64, SpoolError> {
        let seq = self.next_seq;
        let frame = encode_frame(seq, time_ms, class, payload);
        let need_new = match self.segments.back() {
            None => true,
            Some(s) => {
                s.bytes + frame.len() as u64 > self.cfg.segment_bytes && !s.entries.is_empty()
            }
        };
        if need_new || self.active.is_none() {
            if need_new {
                self.sync()?;
                let path = self.cfg.dir.join(seg_name(seq));
                let mut f = OpenOptions::new()
                    .create(true)
                    .truncate(true)
                    .write(true)
                    .open(&path)
                    .map_err(io_err("create segment", &path))?;
                f.write_all(SEG_MAGIC).map_err(io_err("write", &path))?;
                sync_dir(&self.cfg.dir)?;
                self.bytes += SEG_MAGIC.len() as u64;
                self.segments.push_back(Segment {
                    path,
                    bytes: SEG_MAGIC.len() as u64,
                    entries: Vec::new(),
                });
                self.active = Some(f);
            } else if let Some(s) = self.segments.back_mut() {
                let mut f = OpenOptions::new()
                    .write(true)
                    .open(&s.path)
                    .map_err(io_err("open segment", &s.path))?;
                if s.bytes == 0 {
                    f.write_all(SEG_MAGIC).map_err(io_err("write", &s.path))?;
                    s.bytes = SEG_MAGIC.len() as u64;
                    self.bytes += s.bytes;
                }
                f.seek(SeekFrom::Start(s.bytes))
                    .map_err(io_err("seek", &s.path))?;
                self.active = Some(f);
            }
        }
        let (Some(f), Some(seg)) = (self.active.as_mut(), self.segments.back_mut()) else {
            return Err(SpoolError::Corrupt {
                path: self.cfg.dir.clone(),
                problem: "no active segment".to_owned(),
            });
        };
        f.write_all(&frame)
            .map_err(io_err("append to", &seg.path))?;
        seg.entries.push(Entry {
            seq,
            offset: seg.bytes,
            len: frame.len() as u32,
            class,
            time_ms,
            acked: false,
        });
        seg.bytes += frame.len() as u64;
        self.bytes += frame.len() as u64;
        self.next_seq += 1;
        Ok(seq)
    }

    /// Force appended records to disk; they become sendable.
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        if let (Some(f), Some(seg)) = (self.active.as_ref(), self.segments.back()) {
            f.sync_data().map_err(io_err("sync", &seg.path))?;
        }
        self.durable_seq = self.next_seq - 1;
        Ok(())
    }

    /// Unacknowledged records with a sequence number above `after`, synced
    /// to disk, oldest first: at most `max_records` and about `max_bytes`
    /// of payload (at least one record if any is waiting).
    pub fn pending(
        &self,
        after: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>, SpoolError> {
        let mut out = Vec::new();
        let mut size = 0usize;
        for seg in &self.segments {
            let mut file: Option<File> = None;
            for e in seg.unacked() {
                if e.seq <= after {
                    continue;
                }
                if e.seq > self.durable_seq
                    || out.len() >= max_records
                    || (!out.is_empty() && size + e.len as usize > max_bytes)
                {
                    return Ok(out);
                }
                let f = match file.as_mut() {
                    Some(f) => f,
                    None => file.insert(File::open(&seg.path).map_err(io_err("open", &seg.path))?),
                };
                let mut buf = vec![0u8; e.len as usize];
                f.seek(SeekFrom::Start(e.offset))
                    .and_then(|_| f.read_exact(&mut buf))
                    .map_err(io_err("read", &seg.path))?;
                let body = &buf[FRAME as usize..];
                if crc(body) != u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]) {
                    return Err(SpoolError::Corrupt {
                        path: seg.path.clone(),
                        problem: format!("record {} changed on disk (crc mismatch)", e.seq),
                    });
                }
                size += e.len as usize;
                out.push(Record {
                    seq: e.seq,
                    time_ms: e.time_ms,
                    class: e.class,
                    payload: body[BODY_FIXED as usize..].to_vec(),
                });
            }
        }
        Ok(out)
    }

    /// The broker acknowledged record `seq`. Unknown or already acknowledged
    /// sequence numbers are ignored (a late duplicate acknowledgement).
    /// Segments whose every record is acknowledged are deleted.
    pub fn ack(&mut self, seq: u64) -> Result<(), SpoolError> {
        let idx = self
            .segments
            .partition_point(|s| s.entries.first().is_some_and(|e| e.seq <= seq))
            .checked_sub(1);
        let Some(idx) = idx else { return Ok(()) };
        let Some(seg) = self.segments.get_mut(idx) else {
            return Ok(());
        };
        if let Ok(i) = seg.entries.binary_search_by_key(&seq, |e| e.seq) {
            seg.entries[i].acked = true;
        }
        if idx == 0 && seg.all_acked() {
            self.collect_acked()?;
        }
        Ok(())
    }

    /// Delete fully acknowledged segments from the front (the active one too
    /// once it is full or all acked: the next append opens a new one).
    pub(super) fn collect_acked(&mut self) -> Result<(), SpoolError> {
        let mut last_gone = None;
        let mut gone = Vec::new();
        while let Some(seg) = self.segments.front() {
            if !seg.all_acked() {
                break;
            }
            if self.segments.len() == 1 && seg.entries.is_empty() {
                break;
            }
            let Some(seg) = self.segments.pop_front() else {
                break;
            };
            if let Some(e) = seg.entries.last() {
                last_gone = Some(e.seq);
            }
            gone.push(seg);
        }
        if gone.is_empty() {
            return Ok(());
        }
        if self.segments.is_empty() {
            self.active = None;
        }
        // The mark first: after a crash between the two, segments that are
        // all below the mark are simply removed again at open.
        let mark = last_gone.unwrap_or(self.acked_mark).max(self.acked_mark);
        if mark > self.acked_mark {
            self.acked_mark = mark;
            write_atomic(
                &self.cfg.dir,
                &self.cfg.dir.join("acked"),
                &encode_mark(mark),
            )?;
        }
        for seg in gone {
            self.bytes -= seg.bytes;
            match fs::remove_file(&seg.path) {
                // Removed behind the spool: nothing of it was still needed.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                r => r.map_err(io_err("remove acknowledged segment", &seg.path))?,
            }
        }
        sync_dir(&self.cfg.dir)
    }

    /// What `guardian status` shows of the spool.
    pub fn stats(&self) -> SpoolStats {
        let mut depth = 0;
        let mut oldest = None;
        for e in self.segments.iter().flat_map(|s| s.unacked()) {
            depth += 1;
            if oldest.is_none() {
                oldest = Some((e.seq, e.time_ms));
            }
        }
        SpoolStats {
            depth,
            bytes: self.bytes,
            max_bytes: self.cfg.max_bytes,
            oldest_seq: oldest.map(|o| o.0),
            oldest_time_ms: oldest.map(|o| o.1),
            next_seq: self.next_seq,
            unsynced: self.next_seq - 1 - self.durable_seq,
            dropped: self.stats_dropped,
            lost: self.stats_lost,
            torn_bytes: self.torn_bytes,
            epoch: self.epoch,
        }
    }
}
