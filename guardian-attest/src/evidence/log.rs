//! The measurement log on disk: one [`Record`] per line, append-only and
//! crash-safe, private to guardian. What a record is and the rules it
//! follows are [`super::record`]'s; this file writes, locks and reads the
//! file they are lines of.
//!
//! Each record is written with a single `write` and followed by `fsync`
//! before its PCR is extended, so a crash leaves at worst a torn last line
//! (detected on read, cut off by the next writer, which notes it) and never
//! an extend without its record. A bad line anywhere but at the end, a gap
//! in the sequence numbers, a digest that is not the one its event encodes
//! to, or a record of an unknown kind is corruption: the log is refused,
//! never silently repaired.
//!
//! Who may touch it: the file is created 0600 in a 0700 directory, and an
//! existing one with wider permissions is narrowed (and said so), so no
//! other user can read it, let alone hold its lock. Writers (the boot step,
//! the daemon's attestor, `guardian stop --unload`) take an exclusive
//! `flock` for each append only, never blocking: a lock that cannot be had
//! within [`LOCK_WAIT`] is an error the caller counts and reports (a stalled
//! attestor is visible), not a thread frozen by whoever holds it. Readers
//! (`guardian quote`, `guardian status`) take no lock at all.

use std::{
    fs::{File, OpenOptions},
    io::{Read as _, Seek as _, SeekFrom, Write as _},
    os::{
        fd::AsRawFd as _,
        unix::fs::{
            DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _,
        },
    },
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use sha2::{Digest as _, Sha256};

// The tests make records of events, as they did when `Record` lived here.
#[cfg(test)]
use super::event::Event;
// Where the record lived before it had a file of its own; callers and
// the fuzz targets name it `log::Record`.
pub use super::record::{Record, ZERO_DIGEST};

/// How long a writer tries to take the log's lock before giving up.
pub const LOCK_WAIT: Duration = Duration::from_secs(2);

/// The largest log a reader accepts (a day of tamper records at the rate
/// limit is far below this).
pub const MAX_LOG_BYTES: u64 = 256 << 20;

/// Errors reading or writing the log; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// I/O failed.
    #[error("measurement log {path}: {source}")]
    Io {
        /// The log.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The log is damaged somewhere a crash cannot explain.
    #[error("measurement log {path} is corrupt at line {line}: {problem}")]
    Corrupt {
        /// The log.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        problem: String,
    },
    /// Another process holds the log's lock.
    #[error(
        "measurement log {path}: another process has held its lock for more than {} s; the record is not written yet",
        LOCK_WAIT.as_secs()
    )]
    Busy {
        /// The log.
        path: PathBuf,
    },
    /// The log's directory is not one guardian can keep private.
    #[error("measurement log {path}: {problem}")]
    Unsafe {
        /// The log.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
}

/// The log as read.
#[derive(Clone, Debug, Default)]
pub struct Contents {
    /// The complete records.
    pub records: Vec<Record>,
    /// Bytes of a torn last line (a crash mid-write), if any.
    pub torn_bytes: usize,
    /// Length of the file up to the end of the last complete record.
    pub good_len: u64,
}

impl Contents {
    /// Replay this boot's extends of `pcr` from the all-zero reset value.
    pub fn replay(&self, pcr: u32, boot_id: &str) -> [u8; 32] {
        replay(self.extended_this_boot(boot_id), pcr)
    }

    /// Records whose extend failed after they were logged (voided by a
    /// later note): the PCR does not contain them.
    pub fn voided(&self) -> std::collections::HashSet<u64> {
        self.records.iter().filter_map(|r| r.voids).collect()
    }

    /// This boot's records.
    pub fn this_boot<'a>(&'a self, boot_id: &'a str) -> impl Iterator<Item = &'a Record> + 'a {
        self.records.iter().filter(move |r| r.boot_id == boot_id)
    }

    /// This boot's records that are in the PCR (extended, not voided).
    pub fn extended_this_boot<'a>(
        &'a self,
        boot_id: &'a str,
    ) -> impl Iterator<Item = &'a Record> + 'a {
        let voided = self.voided();
        self.this_boot(boot_id)
            .filter(move |r| r.extended && !voided.contains(&r.seq))
    }

    /// Parse what follows the records held (whoever calls this has no
    /// torn tail left: a fresh read, or a writer that just cut it off).
    fn push_parsed(&mut self, bytes: &[u8]) -> Result<(), (usize, String)> {
        self.torn_bytes = parse_into(bytes, self)?;
        Ok(())
    }
}

impl Sequence for Contents {
    fn len(&self) -> u64 {
        self.records.len() as u64
    }

    fn extended(&self, seq: u64) -> bool {
        self.records.get(seq as usize).is_some_and(|r| r.extended)
    }

    fn push(&mut self, record: Record, line_len: u64) {
        self.records.push(record);
        self.good_len += line_len;
    }
}

/// What the parser appends checked records to: the whole log
/// ([`Contents`]), or what the agent's follower of the log
/// (`guardian::evidence::tail::Tail`) keeps. Public for that follower
/// only: it is how it shares the parser's checks.
#[allow(
    clippy::len_without_is_empty,
    reason = "the parser asks for the next sequence number, never for emptiness"
)]
pub trait Sequence {
    /// Records so far (the sequence number of the next one).
    fn len(&self) -> u64;
    /// Whether record `seq` exists and was extended.
    fn extended(&self, seq: u64) -> bool;
    /// Take a checked record and the length of its line, newline included.
    fn push(&mut self, record: Record, line_len: u64);
}

/// Parse and check the complete lines of `bytes`, which continue `seq`,
/// pushing each record; returns the length of a torn last line (0 if the
/// bytes end with a newline). Errors are (1-based line, problem).
pub fn parse_into(bytes: &[u8], seq: &mut impl Sequence) -> Result<usize, (usize, String)> {
    let mut offset = 0usize;
    let mut line_no = seq.len() as usize;
    while offset < bytes.len() {
        line_no += 1;
        let rest = &bytes[offset..];
        let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
            // No newline: the last write did not complete. That is the
            // one damage a crash can cause; report it, do not fail.
            return Ok(rest.len());
        };
        let record: Record = serde_json::from_slice(&rest[..nl])
            .map_err(|e| (line_no, format!("not a measurement record: {e}")))?;
        if record.seq != seq.len() {
            return Err((
                line_no,
                format!(
                    "sequence number {} where {} was expected (records missing or reordered)",
                    record.seq,
                    seq.len()
                ),
            ));
        }
        record
            .check()
            .map_err(|p| (line_no, format!("record {}: {p}", record.seq)))?;
        if let Some(v) = record.voids
            && !seq.extended(v)
        {
            return Err((
                line_no,
                format!(
                    "record {} voids record {v}, which is not an earlier extended record",
                    record.seq
                ),
            ));
        }
        seq.push(record, (nl + 1) as u64);
        offset += nl + 1;
    }
    Ok(0)
}

/// Replay `records`' extends of `pcr` from the all-zero reset value.
pub fn replay<'a>(records: impl IntoIterator<Item = &'a Record>, pcr: u32) -> [u8; 32] {
    records
        .into_iter()
        .filter(|r| r.pcr == pcr)
        .fold([0u8; 32], |v, r| extend(&v, &r.digest_bytes()))
}

/// `PCR_new = SHA-256(PCR_old || digest)`.
pub fn extend(pcr: &[u8; 32], digest: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(pcr);
    h.update(digest);
    h.finalize().into()
}

/// The running kernel's boot id.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// Read and check a log, without any lock. A missing file is an empty log.
pub fn read(path: &Path) -> Result<Contents, LogError> {
    let io = |source| LogError::Io {
        path: path.to_owned(),
        source,
    };
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(f) => {
            f.take(MAX_LOG_BYTES + 1)
                .read_to_end(&mut bytes)
                .map_err(io)?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Contents::default()),
        Err(e) => return Err(io(e)),
    }
    if bytes.len() as u64 > MAX_LOG_BYTES {
        return Err(LogError::Corrupt {
            path: path.to_owned(),
            line: 0,
            problem: format!("larger than {} MiB", MAX_LOG_BYTES >> 20),
        });
    }
    parse(&bytes).map_err(|(line, problem)| LogError::Corrupt {
        path: path.to_owned(),
        line,
        problem,
    })
}

/// Parse log bytes; errors are (line, problem).
pub fn parse(bytes: &[u8]) -> Result<Contents, (usize, String)> {
    let mut out = Contents::default();
    out.push_parsed(bytes)?;
    Ok(out)
}

/// An open log, for appending. The file stays open and what it holds is
/// kept in memory; records another writer added meanwhile are read when
/// the lock is next taken.
pub struct Log {
    path: PathBuf,
    file: File,
    contents: Contents,
}

/// Create `dir` private (0700), or narrow an existing one that guardian
/// owns; refuse one it cannot keep private.
fn private_dir(path: &Path, dir: &Path) -> Result<(), LogError> {
    let unsafe_dir = |problem: String| LogError::Unsafe {
        path: path.to_owned(),
        problem,
    };
    let io = |source| LogError::Io {
        path: path.to_owned(),
        source,
    };
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io)?;
            // The umask may have narrowed it further; never wider.
            Ok(())
        }
        Err(e) => Err(io(e)),
        Ok(m) if !m.is_dir() => Err(unsafe_dir(format!(
            "{} is not a directory (a symlink is refused: it could point anywhere)",
            dir.display()
        ))),
        Ok(m) => {
            // SAFETY: geteuid has no preconditions.
            let me = unsafe { libc::geteuid() };
            if m.uid() != me {
                return Err(unsafe_dir(format!(
                    "its directory {} belongs to uid {}, not to guardian (uid {me}); use a directory of its own, such as /run/guardian/evidence",
                    dir.display(),
                    m.uid()
                )));
            }
            let mode = m.permissions().mode() & 0o7777;
            if mode & 0o077 != 0 {
                log::warn!(
                    "measurement log {}: its directory {} was mode {mode:04o}; narrowed to 0700 so no other user can read the log or hold its lock",
                    path.display(),
                    dir.display()
                );
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                    .map_err(io)?;
            }
            Ok(())
        }
    }
}

impl Log {
    /// Open (creating it and its private directory if needed) and check
    /// the log. A torn tail is cut off and the cut recorded as a note.
    pub fn open(path: &Path) -> Result<Self, LogError> {
        let io = |source| LogError::Io {
            path: path.to_owned(),
            source,
        };
        let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
            Some(d) => d.to_owned(),
            None => PathBuf::from("."),
        };
        private_dir(path, &dir)?;
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        if !meta.is_file() {
            return Err(LogError::Unsafe {
                path: path.to_owned(),
                problem: "not a regular file".into(),
            });
        }
        if meta.permissions().mode() & 0o077 != 0 {
            log::warn!(
                "measurement log {} was mode {:04o}; narrowed to 0600",
                path.display(),
                meta.permissions().mode() & 0o7777
            );
            file.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(io)?;
        }
        let mut log = Self {
            path: path.to_owned(),
            file,
            contents: Contents::default(),
        };
        let lock = log.lock()?;
        let torn = log.contents.torn_bytes;
        if torn > 0 {
            log.file.set_len(log.contents.good_len).map_err(io)?;
            log.file.sync_all().map_err(io)?;
            log.contents.torn_bytes = 0;
            log::warn!(
                "measurement log {}: removed a torn last record ({torn} bytes, an interrupted write)",
                path.display()
            );
            log.write_locked(Record::note(format!(
                "torn last record of {torn} bytes removed (an interrupted write; it was never extended)"
            )))?;
        }
        drop(lock);
        Ok(log)
    }

    /// What the log holds (as of the last append or [`Log::refresh`]).
    pub fn contents(&self) -> &Contents {
        &self.contents
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Take the lock (never blocking longer than [`LOCK_WAIT`]) and read
    /// anything appended by another writer.
    fn lock(&mut self) -> Result<Locked, LogError> {
        let fd = self.file.as_raw_fd();
        let deadline = Instant::now() + LOCK_WAIT;
        loop {
            // SAFETY: flock on a descriptor this struct owns.
            if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                break;
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(LogError::Io {
                    path: self.path.clone(),
                    source: e,
                });
            }
            if Instant::now() >= deadline {
                return Err(LogError::Busy {
                    path: self.path.clone(),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let locked = Locked { fd };
        self.catch_up()?;
        Ok(locked)
    }

    fn catch_up(&mut self) -> Result<(), LogError> {
        let io = |source| LogError::Io {
            path: self.path.clone(),
            source,
        };
        let len = self.file.metadata().map_err(io)?.len();
        let known = self.contents.good_len + self.contents.torn_bytes as u64;
        if len == known {
            return Ok(());
        }
        if len < self.contents.good_len {
            return Err(LogError::Corrupt {
                path: self.path.clone(),
                line: self.contents.records.len(),
                problem: format!(
                    "the file shrank from {} to {len} bytes behind guardian's back",
                    self.contents.good_len
                ),
            });
        }
        let mut tail = Vec::new();
        self.file
            .seek(SeekFrom::Start(self.contents.good_len))
            .map_err(io)?;
        (&self.file)
            .take(MAX_LOG_BYTES)
            .read_to_end(&mut tail)
            .map_err(io)?;
        self.contents.torn_bytes = 0;
        self.contents
            .push_parsed(&tail)
            .map_err(|(line, problem)| LogError::Corrupt {
                path: self.path.clone(),
                line,
                problem,
            })
    }

    /// Append a record durably (write, then fsync) and return it with its
    /// sequence number, boot id and time filled in. Call this *before*
    /// extending the PCR: a record without its extend is visible on replay,
    /// an extend without its record would be unexplainable.
    pub fn append(&mut self, record: Record) -> Result<Record, LogError> {
        let lock = self.lock()?;
        if self.contents.torn_bytes > 0 {
            // Another writer died mid-line: cut it off, and say so.
            let torn = self.contents.torn_bytes;
            self.file
                .set_len(self.contents.good_len)
                .map_err(|source| LogError::Io {
                    path: self.path.clone(),
                    source,
                })?;
            self.contents.torn_bytes = 0;
            self.write_locked(Record::note(format!(
                "torn last record of {torn} bytes removed (another writer was interrupted)"
            )))?;
        }
        let out = self.write_locked(record);
        drop(lock);
        out
    }

    fn write_locked(&mut self, mut record: Record) -> Result<Record, LogError> {
        let io = |source| LogError::Io {
            path: self.path.clone(),
            source,
        };
        record.seq = self.contents.records.len() as u64;
        if record.boot_id.is_empty() {
            record.boot_id = boot_id();
        }
        if record.time.is_empty() {
            record.time =
                humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string();
        }
        record.check().map_err(|problem| LogError::Corrupt {
            path: self.path.clone(),
            line: self.contents.records.len() + 1,
            problem: format!("refusing to write record {}: {problem}", record.seq),
        })?;
        let mut line = serde_json::to_vec(&record).map_err(|e| io(std::io::Error::other(e)))?;
        line.push(b'\n');
        self.file.write_all(&line).map_err(io)?;
        self.file.sync_data().map_err(io)?;
        self.contents.good_len += line.len() as u64;
        self.contents.records.push(record.clone());
        Ok(record)
    }
}

/// The log's lock, released on drop.
struct Locked {
    fd: i32,
}

impl Drop for Locked {
    fn drop(&mut self) {
        // SAFETY: the descriptor belongs to the Log that outlives this guard.
        unsafe { libc::flock(self.fd, libc::LOCK_UN) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::event::{ModelEvent, TamperEvent};

    fn model(digest: u8) -> Record {
        let mut r = Record::new(
            14,
            Event::Model(ModelEvent {
                file: format!("/opt/models/{digest}.onnx"),
                sha256: hex::encode([digest; 32]),
                size: 1,
                manifest: hex::encode([0; 32]),
                entry: 0,
                cause: "boot".into(),
            }),
        );
        r.extended = true;
        r
    }

    #[test]
    fn append_read_replay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/m.log");
        let mut log = Log::open(&path).unwrap();
        let a = log.append(model(1)).unwrap();
        let b = log.append(model(2)).unwrap();
        let c = read(&path).unwrap();
        assert_eq!(c.records.len(), 2);
        assert_eq!(c.records[1].seq, 1);
        let want = extend(&extend(&[0; 32], &a.digest_bytes()), &b.digest_bytes());
        assert_eq!(c.replay(14, &boot_id()), want);
        assert_eq!(c.replay(14, "another-boot"), [0; 32]);
        assert_eq!(c.replay(15, &boot_id()), [0; 32]);
    }

    #[test]
    fn private_file_in_a_private_directory() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("ev");
        std::fs::create_dir(&sub).unwrap();
        std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = sub.join("m.log");
        std::fs::write(&path, b"").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        Log::open(&path).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&sub), 0o700);
        assert_eq!(mode(&path), 0o600);
        // A fresh one is created that way.
        let fresh = dir.path().join("new/m.log");
        Log::open(&fresh).unwrap();
        assert_eq!(mode(fresh.parent().unwrap()), 0o700);
        assert_eq!(mode(&fresh), 0o600);
        // A symlinked log is refused.
        let link = sub.join("link.log");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(Log::open(&link).is_err());
    }

    #[test]
    fn a_held_lock_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.log");
        let mut log = Log::open(&path).unwrap();
        let other = File::open(&path).unwrap();
        // SAFETY: flock on a descriptor the test owns.
        assert_eq!(unsafe { libc::flock(other.as_raw_fd(), libc::LOCK_EX) }, 0);
        let started = Instant::now();
        let e = log.append(model(1)).unwrap_err();
        assert!(matches!(e, LogError::Busy { .. }), "{e}");
        assert!(started.elapsed() < LOCK_WAIT * 3);
        drop(other);
        log.append(model(1)).unwrap();
    }

    #[test]
    fn two_writers_interleave_without_gaps() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.log");
        let mut a = Log::open(&path).unwrap();
        let mut b = Log::open(&path).unwrap();
        a.append(model(1)).unwrap();
        b.append(model(2)).unwrap();
        a.append(model(3)).unwrap();
        let c = read(&path).unwrap();
        assert_eq!(c.records.len(), 3);
        assert_eq!(a.contents().records.len(), 3);
    }

    #[test]
    fn torn_tail_is_reported_then_cut_and_noted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.log");
        let mut log = Log::open(&path).unwrap();
        log.append(model(1)).unwrap();
        drop(log);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"seq\":1,\"boot_i").unwrap();
        drop(f);
        let c = read(&path).unwrap();
        assert_eq!(c.records.len(), 1);
        assert_eq!(c.torn_bytes, 16);
        let log = Log::open(&path).unwrap();
        let recs = &log.contents().records;
        assert_eq!(recs.len(), 2);
        assert!(recs[1].is_note());
        assert!(recs[1].event.describe().contains("torn"));
        assert_eq!(read(&path).unwrap().torn_bytes, 0);
    }

    #[test]
    fn corruption_is_refused_with_line_number() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.log");
        let mut log = Log::open(&path).unwrap();
        for i in 0..3 {
            log.append(model(i)).unwrap();
        }
        drop(log);
        let text = std::fs::read_to_string(&path).unwrap();
        let bad = text.replacen("\"seq\":1", "\"seq\":7", 1);
        std::fs::write(&path, bad).unwrap();
        let e = read(&path).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("m.log"), "{e}");
        // A relabelled or altered event no longer encodes to its digest.
        let bad = text.replacen("\"kind\":\"model\"", "\"kind\":\"note\"", 1);
        std::fs::write(&path, bad).unwrap();
        assert!(read(&path).is_err());
        let bad = text.replacen("\"cause\":\"boot\"", "\"cause\":\"timer\"", 1);
        std::fs::write(&path, bad).unwrap();
        let e = read(&path).unwrap_err().to_string();
        assert!(e.contains("altered") && e.contains("line 1"), "{e}");
        std::fs::write(&path, b"garbage\n").unwrap();
        assert!(Log::open(&path).is_err());
    }

    #[test]
    fn voids_only_from_notes_and_only_earlier_extends() {
        let mut c = Contents::default();
        let mut lines = Vec::new();
        let mut first = model(1);
        first.boot_id = "b".into();
        lines.push(serde_json::to_string(&first).unwrap());
        let mut t = Record::new(
            14,
            Event::Tamper(TamperEvent {
                file: "f".into(),
                outcome: "denied".into(),
                folded: 0,
                event: serde_json::Value::Null,
            }),
        );
        t.seq = 1;
        t.voids = Some(0);
        lines.push(serde_json::to_string(&t).unwrap());
        let text = lines.join("\n") + "\n";
        assert!(
            c.push_parsed(text.as_bytes())
                .unwrap_err()
                .1
                .contains("only notes")
        );
        let mut n = Record::note("x");
        n.seq = 1;
        n.voids = Some(5);
        let text = format!("{}\n{}\n", lines[0], serde_json::to_string(&n).unwrap());
        let mut c = Contents::default();
        assert!(
            c.push_parsed(text.as_bytes())
                .unwrap_err()
                .1
                .contains("not an earlier")
        );
    }
}
