//! The durable spool: every record the device reports waits here, on
//! persistent storage, until the fleet's broker has acknowledged it.
//!
//! Owns the spool directory and nothing else. It does not know the network
//! (the [`crate::reporter`] reads from it and acknowledges into it) nor what
//! a record means beyond its [`Class`].
//!
//! # On disk
//!
//! ```text
//! DIR/meta                     magic "GSPLMETA", version, epoch (u64), crc32
//! DIR/acked                    highest sequence below which all is acked or gone, crc32
//! DIR/00000000000000000001.seg magic "GSPOOL01", then records:
//!     u32 len | u32 crc32(body) | body = u64 seq | u64 time_ms | u8 class | payload
//! ```
//!
//! Integers are little-endian. A segment is named by the first sequence it
//! was opened for. Records are only ever appended; a segment is deleted
//! once every record in it is acknowledged (after `acked` is written, so a
//! restart never reuses a sequence number), or rewritten without some of
//! its records when the size bound forces a drop (the rewrite goes to a
//! temporary file renamed over the old one, so a crash leaves one or the
//! other).
//!
//! # Durability
//!
//! Records are handed to the reporter only once they are on disk
//! ([`Fsync::Always`]: after every append; [`Fsync::Interval`]: after the
//! next [`Spool::sync`]). So a sequence number the fleet has seen is never
//! given to another record after a power cut. A killed agent loses nothing
//! either way (the page cache survives it); a power cut loses at most the
//! records appended since the last sync.
//!
//! # When the spool is full
//!
//! The rule: the least important records go first, oldest first, and
//! records already acknowledged before anything else. Importance is the
//! [`Class`] order (status summaries, then measurement results, then
//! events, then alerts). A new record less important than everything held
//! is itself dropped. Alerts are dropped only when the spool holds nothing
//! else, oldest first. Every drop is counted by class, and a [`Class::Drop`]
//! record naming the sequence numbers dropped is appended in the same call,
//! so the fleet learns of it when the device reconnects (the sequence gaps
//! it sees are explained, not silent).

use std::{
    collections::VecDeque,
    fs::{self, File, OpenOptions},
    io::{self, Read, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
    time::Duration,
};

/// How important a record is: the order in which the spool drops them when
/// full (lowest first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Class {
    /// A periodic status summary: the next one supersedes it.
    Status = 0,
    /// A measurement result (boot or re-measurement).
    Measurement = 1,
    /// A security event that was allowed or only logged.
    Event = 2,
    /// A security event that was denied or alerted on, a tamper record.
    Alert = 3,
    /// The spool's own notice of what it dropped (never dropped for a less
    /// important record).
    Drop = 4,
}

impl Class {
    /// All classes, least important first.
    pub const ALL: [Class; 5] = [
        Class::Status,
        Class::Measurement,
        Class::Event,
        Class::Alert,
        Class::Drop,
    ];

    /// The class's name on the wire and in status.
    pub fn name(self) -> &'static str {
        match self {
            Class::Status => "status",
            Class::Measurement => "measurement",
            Class::Event => "event",
            Class::Alert => "alert",
            Class::Drop => "drop",
        }
    }

    fn from_u8(v: u8) -> Option<Class> {
        Class::ALL.get(usize::from(v)).copied()
    }
}

/// When appended records are forced to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// After every append (`fdatasync`): nothing appended is lost to a power
    /// cut; costs one flash write per record.
    Always,
    /// When the owner calls [`Spool::sync`], which the reporter does on this
    /// interval: a power cut loses at most one interval of records.
    Interval(Duration),
}

/// What the spool is told at open.
#[derive(Debug, Clone)]
pub struct SpoolConfig {
    /// The spool's directory (created if missing, mode 0700).
    pub dir: PathBuf,
    /// The bound on all segment bytes together.
    pub max_bytes: u64,
    /// A segment is closed and a new one opened past this size.
    pub segment_bytes: u64,
    /// The fsync policy.
    pub fsync: Fsync,
}

/// One record as stored and sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Per-device sequence number, strictly increasing, never reused.
    pub seq: u64,
    /// Milliseconds since the Unix epoch when it was appended.
    pub time_ms: u64,
    /// Its importance.
    pub class: Class,
    /// The record itself (JSON from the agent; opaque here).
    pub payload: Vec<u8>,
}

/// The result of one [`Spool::append`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The record's sequence number, or `None` if the record itself was
    /// dropped (less important than everything held, or larger than the
    /// spool).
    pub seq: Option<u64>,
    /// What was dropped to make room (or the record itself), if anything.
    pub dropped: Option<DropNotice>,
}

/// What one append dropped; also the payload of the [`Class::Drop`] record
/// appended with it (as JSON).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct DropNotice {
    /// Records dropped, by class name.
    pub by_class: std::collections::BTreeMap<String, u64>,
    /// Where records were dropped: each span says how many of the sequence
    /// numbers in `from..=to` are gone (one span per segment rewritten, so
    /// a few per notice). The fleet counts a span once by (id, from, to).
    /// At most what an eighth of the spool holds; `more` says some were
    /// left out.
    pub spans: Vec<Span>,
    /// Spans left out.
    pub more: bool,
    /// Sequence number of the Drop record this notice travels in.
    pub notice_seq: Option<u64>,
    /// Spans this notice may carry (from the spool's size; not sent).
    #[serde(skip)]
    cap: usize,
}

/// Some records dropped from a range of sequence numbers.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Span {
    /// The notice that first reported it (its sequence number).
    pub id: u64,
    /// First sequence number of the range.
    pub from: u64,
    /// Last sequence number of the range.
    pub to: u64,
    /// Records of the range that are gone.
    pub dropped: u64,
}

/// Bytes one span may take in a notice's JSON (the largest numbers).
const SPAN_JSON: usize = 100;

/// Counters since the spool was created (kept across restarts only as far
/// as the drop records on disk and at the fleet tell them; in memory here).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SpoolStats {
    /// Records waiting for an acknowledgement.
    pub depth: u64,
    /// Their bytes on disk (frames included).
    pub bytes: u64,
    /// The bound.
    pub max_bytes: u64,
    /// Sequence of the oldest record waiting, if any.
    pub oldest_seq: Option<u64>,
    /// When it was appended (ms since the Unix epoch).
    pub oldest_time_ms: Option<u64>,
    /// The next sequence number to be given.
    pub next_seq: u64,
    /// Records on disk but not yet synced (not yet sendable).
    pub unsynced: u64,
    /// Records dropped since this process opened the spool, by class
    /// (indexed by `Class as usize`).
    pub dropped: [u64; 5],
    /// Bytes cut off a torn tail, or unreadable, found at open.
    pub torn_bytes: u64,
    /// The spool's epoch (random, made when the spool was created).
    pub epoch: u64,
}

/// A failure of the spool, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// A file operation failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A file of the spool is not what the spool writes.
    #[error("{path}: {problem}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
}

const META_MAGIC: &[u8; 8] = b"GSPLMETA";
const META_VERSION: u16 = 1;
const SEG_MAGIC: &[u8; 8] = b"GSPOOL01";
const FRAME: u64 = 8;
const BODY_FIXED: u64 = 17;

/// Bytes a record takes in a segment.
pub fn frame_len(payload: usize) -> u64 {
    FRAME + BODY_FIXED + payload as u64
}

#[derive(Debug, Clone)]
struct Entry {
    seq: u64,
    offset: u64,
    len: u32,
    class: Class,
    time_ms: u64,
    acked: bool,
}

#[derive(Debug)]
struct Segment {
    path: PathBuf,
    bytes: u64,
    entries: Vec<Entry>,
}

impl Segment {
    fn unacked(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(|e| !e.acked)
    }
    fn all_acked(&self) -> bool {
        self.entries.iter().all(|e| e.acked)
    }
}

/// The spool. Not shared between threads by itself: the reporter owns it
/// behind a mutex.
#[derive(Debug)]
pub struct Spool {
    /// Held for the spool's life (see [`Spool::open`]).
    _lock: File,
    cfg: SpoolConfig,
    epoch: u64,
    segments: VecDeque<Segment>,
    active: Option<File>,
    next_seq: u64,
    durable_seq: u64,
    acked_mark: u64,
    bytes: u64,
    stats_dropped: [u64; 5],
    torn_bytes: u64,
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SpoolError + 'a {
    move |source| SpoolError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

fn crc(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync directory", dir))
}

/// Write `bytes` to `path` through a temporary file and a rename, synced.
fn write_atomic(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), SpoolError> {
    let tmp = path.with_extension("tmp");
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(io_err("create", &tmp))?;
    f.write_all(bytes).map_err(io_err("write", &tmp))?;
    f.sync_all().map_err(io_err("sync", &tmp))?;
    fs::rename(&tmp, path).map_err(io_err("rename into place", path))?;
    sync_dir(dir)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn encode_frame(seq: u64, time_ms: u64, class: Class, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(BODY_FIXED as usize + payload.len());
    body.extend_from_slice(&seq.to_le_bytes());
    body.extend_from_slice(&time_ms.to_le_bytes());
    body.push(class as u8);
    body.extend_from_slice(payload);
    let mut out = Vec::with_capacity(FRAME as usize + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc(&body).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// Read one segment's records. Returns the entries read and the offset
/// where valid records end (less than the file's length if the tail is
/// torn or a record is damaged).
fn scan_segment(path: &Path) -> Result<(Vec<Entry>, u64, u64), SpoolError> {
    let data = fs::read(path).map_err(io_err("read", path))?;
    if data.len() < SEG_MAGIC.len() || &data[..SEG_MAGIC.len()] != SEG_MAGIC {
        if data.is_empty() {
            // Created but never written: a crash right after the create.
            return Ok((Vec::new(), 0, 0));
        }
        return Err(SpoolError::Corrupt {
            path: path.to_owned(),
            problem: "not a spool segment (bad magic)".to_owned(),
        });
    }
    let mut entries = Vec::new();
    let mut off = SEG_MAGIC.len();
    let mut last_seq = 0u64;
    while off + FRAME as usize <= data.len() {
        let len = u32::from_le_bytes([data[off], data[off + 1], data[off + 2], data[off + 3]]);
        let sum = u32::from_le_bytes([data[off + 4], data[off + 5], data[off + 6], data[off + 7]]);
        let start = off + FRAME as usize;
        let Some(end) = start.checked_add(len as usize) else {
            break;
        };
        if (len as u64) < BODY_FIXED || end > data.len() {
            break;
        }
        let body = &data[start..end];
        if crc(body) != sum {
            break;
        }
        let seq = u64::from_le_bytes(body[0..8].try_into().unwrap_or_default());
        let time_ms = u64::from_le_bytes(body[8..16].try_into().unwrap_or_default());
        let Some(class) = Class::from_u8(body[16]) else {
            break;
        };
        if seq <= last_seq {
            // Sequence numbers only grow within a segment; anything else is
            // not something the spool wrote.
            break;
        }
        last_seq = seq;
        entries.push(Entry {
            seq,
            offset: off as u64,
            len: len + FRAME as u32,
            class,
            time_ms,
            acked: false,
        });
        off = end;
    }
    Ok((entries, off as u64, data.len() as u64))
}

fn seg_name(first: u64) -> String {
    format!("{first:020}.seg")
}

impl Spool {
    /// Open (or create) the spool in `cfg.dir`. A torn tail (a crash in the
    /// middle of an append) is cut off and counted; a segment that is not
    /// the spool's is an error naming it, and nothing is changed.
    pub fn open(cfg: SpoolConfig) -> Result<Spool, SpoolError> {
        let dir = cfg.dir.clone();
        fs::create_dir_all(&dir).map_err(io_err("create directory", &dir))?;
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
                .map_err(io_err("set mode 0700 on", &dir))?;
        }
        // One writer: a second agent (or a `guardian measure` while the
        // daemon runs) appending to the same spool would interleave
        // sequence numbers. The lock goes with the process.
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err("open", &lock_path))?;
        if let Err(e) = lock.try_lock() {
            return Err(match e {
                fs::TryLockError::WouldBlock => SpoolError::Corrupt {
                    path: lock_path,
                    problem: "the spool is in use by another process".to_owned(),
                },
                fs::TryLockError::Error(source) => SpoolError::Io {
                    op: "lock",
                    path: lock_path,
                    source,
                },
            });
        }
        let mut seg_files: Vec<(u64, PathBuf)> = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err("list", &dir))? {
            let entry = entry.map_err(io_err("list", &dir))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(first) = name
                .strip_suffix(".seg")
                .and_then(|s| s.parse::<u64>().ok())
            {
                seg_files.push((first, entry.path()));
                continue;
            }
            if name.ends_with(".tmp") {
                // A rewrite or a mark interrupted before its rename: the
                // original is still in place.
                let p = entry.path();
                fs::remove_file(&p).map_err(io_err("remove leftover", &p))?;
            }
        }
        seg_files.sort();
        let meta_path = dir.join("meta");
        let epoch = match fs::read(&meta_path) {
            Ok(bytes) => parse_meta(&meta_path, &bytes)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if !seg_files.is_empty() {
                    return Err(SpoolError::Corrupt {
                        path: meta_path,
                        problem: "missing, but segments exist (the spool's epoch is lost)"
                            .to_owned(),
                    });
                }
                let mut b = [0u8; 8];
                rand_core::RngCore::try_fill_bytes(&mut rand_core::OsRng, &mut b).map_err(|e| {
                    SpoolError::Io {
                        op: "draw a random epoch for",
                        path: meta_path.clone(),
                        source: io::Error::other(e.to_string()),
                    }
                })?;
                let epoch = u64::from_le_bytes(b) | 1;
                write_atomic(&dir, &meta_path, &encode_meta(epoch))?;
                epoch
            }
            Err(e) => return Err(io_err("read", &meta_path)(e)),
        };
        let mark_path = dir.join("acked");
        let acked_mark = match fs::read(&mark_path) {
            Ok(bytes) => parse_mark(&mark_path, &bytes)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io_err("read", &mark_path)(e)),
        };

        let mut segments = VecDeque::new();
        let mut torn_bytes = 0;
        let mut last_seq = acked_mark;
        let n = seg_files.len();
        for (i, (_, path)) in seg_files.into_iter().enumerate() {
            let (mut entries, valid, total) = scan_segment(&path)?;
            // What a killed agent left in the page cache is on disk before
            // any of it is sent: a sequence number the fleet sees must
            // survive a power cut that follows.
            if valid > 0 {
                File::open(&path)
                    .and_then(|f| f.sync_data())
                    .map_err(io_err("sync", &path))?;
            }
            if valid < total {
                torn_bytes += total - valid;
                // Cut the damage off so appends continue after valid data
                // (only the last segment is appended to, but a damaged
                // middle segment is cut too: what follows the damage cannot
                // be framed).
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_err("open", &path))?;
                f.set_len(valid)
                    .map_err(io_err("truncate torn tail of", &path))?;
                f.sync_all().map_err(io_err("sync", &path))?;
            }
            // Sequence numbers grow across segments; records out of order
            // are dropped as damage.
            entries.retain(|e| e.seq > last_seq || e.seq <= acked_mark);
            for e in &mut entries {
                if e.seq <= acked_mark {
                    e.acked = true;
                }
                last_seq = last_seq.max(e.seq);
            }
            let bytes = if valid == 0 { 0 } else { valid };
            if entries.is_empty() && i + 1 < n {
                fs::remove_file(&path).map_err(io_err("remove empty segment", &path))?;
                continue;
            }
            segments.push_back(Segment {
                path,
                bytes,
                entries,
            });
        }
        let bytes = segments.iter().map(|s| s.bytes).sum();
        let next_seq = last_seq + 1;
        let mut spool = Spool {
            _lock: lock,
            cfg,
            epoch,
            segments,
            active: None,
            next_seq,
            durable_seq: last_seq,
            acked_mark,
            bytes,
            stats_dropped: [0; 5],
            torn_bytes,
        };
        spool.collect_acked()?;
        Ok(spool)
    }

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

    fn write_record(
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
    fn collect_acked(&mut self) -> Result<(), SpoolError> {
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
            fs::remove_file(&seg.path).map_err(io_err("remove acknowledged segment", &seg.path))?;
        }
        sync_dir(&self.cfg.dir)
    }

    fn make_room(&mut self, incoming: Class, notice: &mut DropNotice) -> Result<Room, SpoolError> {
        // Acknowledged records still on disk go first: nothing is lost.
        if let Some(i) = self
            .segments
            .iter()
            .position(|s| s.entries.iter().any(|e| e.acked))
        {
            self.rewrite(i, |e| !e.acked, notice)?;
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
        self.rewrite(i, |e| e.class != lowest, notice)?;
        Ok(Room::Made)
    }

    /// Rewrite segment `i` keeping the unacknowledged records `keep` says
    /// to keep; the others unacknowledged are dropped (recorded in the
    /// notice).
    fn rewrite(
        &mut self,
        i: usize,
        keep: impl Fn(&Entry) -> bool,
        notice: &mut DropNotice,
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
            self.stats_dropped[class as usize] += 1;
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
            torn_bytes: self.torn_bytes,
            epoch: self.epoch,
        }
    }
}

/// Payload bytes kept free for a drop notice: an eighth of the spool,
/// between 1 and 32 KiB (so a notice carries 10 to 327 spans).
fn notice_budget(max_bytes: u64) -> usize {
    (max_bytes / 8).clamp(1024, 32 * 1024) as usize
}

enum Room {
    Made,
    DropIncoming,
}

impl DropNotice {
    /// A span made by this notice (its id is filled in when the notice's
    /// own sequence number is known).
    fn add_span(&mut self, from: u64, to: u64, dropped: u64) {
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

    fn add(&mut self, class: Class, seq: u64) {
        *self.by_class.entry(class.name().to_owned()).or_default() += 1;
        self.add_span(seq, seq, 1);
    }

    /// The notice will travel as record `seq`.
    fn seal(&mut self, seq: u64) {
        self.notice_seq = Some(seq);
        for s in &mut self.spans {
            if s.id == 0 {
                s.id = seq;
            }
        }
    }
}

fn encode_meta(epoch: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(22);
    b.extend_from_slice(META_MAGIC);
    b.extend_from_slice(&META_VERSION.to_le_bytes());
    b.extend_from_slice(&epoch.to_le_bytes());
    let sum = crc(&b);
    b.extend_from_slice(&sum.to_le_bytes());
    b
}

fn parse_meta(path: &Path, b: &[u8]) -> Result<u64, SpoolError> {
    let bad = |problem: &str| SpoolError::Corrupt {
        path: path.to_owned(),
        problem: problem.to_owned(),
    };
    if b.len() != 22 || &b[..8] != META_MAGIC {
        return Err(bad("not a spool meta file (bad magic or length)"));
    }
    if crc(&b[..18]).to_le_bytes() != b[18..22] {
        return Err(bad("checksum mismatch"));
    }
    let version = u16::from_le_bytes([b[8], b[9]]);
    if version != META_VERSION {
        return Err(bad(&format!(
            "version {version}, this agent reads {META_VERSION}"
        )));
    }
    Ok(u64::from_le_bytes(b[10..18].try_into().unwrap_or_default()))
}

fn encode_mark(mark: u64) -> Vec<u8> {
    let mut b = mark.to_le_bytes().to_vec();
    let sum = crc(&b);
    b.extend_from_slice(&sum.to_le_bytes());
    b
}

fn parse_mark(path: &Path, b: &[u8]) -> Result<u64, SpoolError> {
    if b.len() != 12 || crc(&b[..8]).to_le_bytes() != b[8..12] {
        return Err(SpoolError::Corrupt {
            path: path.to_owned(),
            problem: "not an acknowledgement mark (bad length or checksum)".to_owned(),
        });
    }
    Ok(u64::from_le_bytes(b[..8].try_into().unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
