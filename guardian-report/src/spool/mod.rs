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
//!
//! # Records that no longer read back
//!
//! A segment removed, cut short or replaced, or a record changed on disk
//! behind the spool (root where no BPF LSM denies it, a failing disk): the
//! records affected are given up by [`Spool::salvage`], counted apart
//! ([`SpoolStats::lost`]), and reported by a drop notice with a `reason`,
//! rather than failing every read after them.

use std::{collections::VecDeque, fs::File, io, path::PathBuf, time::Duration};

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
    /// Why the records went, when it was not the drop rule (the spool
    /// full): [`LOST_ON_DISK`] for records that no longer read back as
    /// written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
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
    /// Records given up since this process opened the spool because they
    /// no longer read back as written (a segment removed or changed on
    /// disk: [`Spool::salvage`]); not in `dropped`.
    #[serde(default)]
    pub lost: u64,
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

mod append;
mod format;
mod full;
mod open;
mod salvage;
#[cfg(test)]
mod tests;

pub use format::frame_len;
pub use salvage::LOST_ON_DISK;

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
    stats_lost: u64,
    torn_bytes: u64,
}
