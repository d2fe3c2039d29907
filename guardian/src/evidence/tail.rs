//! Following the measurement log as it grows: a reader that reads and
//! checks only what was appended since it last looked.
//!
//! The daemon publishes its status every few seconds, and the status
//! summarises this boot's measurements. Reading the whole log for that
//! each time costs more the longer the device runs (every tamper record
//! makes the log longer); a [`Tail`] keeps where it stopped, the sequence
//! number it expects next and which records were extended (to check what
//! a note voids), and no records. It takes no lock, like every reader
//! (see [`super::log`]).
//!
//! The log only grows. When the file at the path is another one (its
//! device or inode changed) or shorter than what was read, the tail starts
//! over from the first record and says so, so that whoever summarises the
//! records starts over too.

use std::{
    fs::File,
    io::{Read as _, Seek as _, SeekFrom},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use super::log::{self, LogError, MAX_LOG_BYTES, Record, Sequence};

/// A reader that follows one log file.
#[derive(Debug)]
pub struct Tail {
    path: PathBuf,
    /// Device and inode of the file read so far.
    file: Option<(u64, u64)>,
    /// Bytes of the complete records read.
    good_len: u64,
    /// Whether each record read was extended (index: sequence number).
    extended: Vec<bool>,
}

/// What a [`Tail`] found since it last looked.
#[derive(Debug, Default)]
pub struct Appended {
    /// The reader started over from the first record (the file was
    /// replaced or cut): forget what earlier records said.
    pub restarted: bool,
    /// The complete records appended, checked as [`log::read`] checks
    /// them, oldest first.
    pub records: Vec<Record>,
}

/// The records a [`Tail`] is reading, and what it keeps of them.
struct Batch<'a> {
    tail: &'a mut Tail,
    records: Vec<Record>,
}

impl Sequence for Batch<'_> {
    fn len(&self) -> u64 {
        self.tail.extended.len() as u64
    }

    fn extended(&self, seq: u64) -> bool {
        self.tail
            .extended
            .get(seq as usize)
            .copied()
            .unwrap_or(false)
    }

    fn push(&mut self, record: Record, line_len: u64) {
        self.tail.extended.push(record.extended);
        self.tail.good_len += line_len;
        self.records.push(record);
    }
}

impl Tail {
    /// A reader of the log at `path`, before its first record.
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            file: None,
            good_len: 0,
            extended: Vec::new(),
        }
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Forget everything read: the next [`Tail::read_new`] starts from the
    /// first record (and says it restarted).
    pub fn reset(&mut self) {
        self.file = None;
        self.good_len = 0;
        self.extended.clear();
    }

    /// Read the complete records appended since the last call. A missing
    /// file is an empty log; a torn last line is left for the next call
    /// (its writer may still be writing it). An error leaves the reader
    /// where it was before the bad record: call [`Tail::reset`] to read
    /// everything again.
    pub fn read_new(&mut self) -> Result<Appended, LogError> {
        let path = self.path.clone();
        let io = |source| LogError::Io {
            path: path.clone(),
            source,
        };
        let mut f = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let restarted = self.file.is_some();
                self.reset();
                return Ok(Appended {
                    restarted,
                    records: Vec::new(),
                });
            }
            Err(e) => return Err(io(e)),
        };
        let meta = f.metadata().map_err(io)?;
        let id = (meta.dev(), meta.ino());
        let restarted = self.file.is_some_and(|known| known != id) || meta.len() < self.good_len;
        if restarted || self.file.is_none() {
            self.reset();
            self.file = Some(id);
        }
        if meta.len() > MAX_LOG_BYTES {
            return Err(LogError::Corrupt {
                path: self.path.clone(),
                line: 0,
                problem: format!("larger than {} MiB", MAX_LOG_BYTES >> 20),
            });
        }
        let mut bytes = Vec::new();
        f.seek(SeekFrom::Start(self.good_len)).map_err(io)?;
        f.take(MAX_LOG_BYTES - self.good_len)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        let mut batch = Batch {
            tail: self,
            records: Vec::new(),
        };
        log::parse_into(&bytes, &mut batch).map_err(|(line, problem)| LogError::Corrupt {
            path,
            line,
            problem,
        })?;
        Ok(Appended {
            restarted,
            records: batch.records,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::{Event, event::ModelEvent, log::Log};

    fn model(n: u8) -> Record {
        let mut r = Record::new(
            14,
            Event::Model(ModelEvent {
                file: format!("/opt/models/{n}.onnx"),
                sha256: hex::encode([n; 32]),
                size: 1,
                manifest: hex::encode([0; 32]),
                entry: 0,
                cause: "boot".into(),
            }),
        );
        r.extended = true;
        r
    }

    fn seqs(a: &Appended) -> Vec<u64> {
        a.records.iter().map(|r| r.seq).collect()
    }

    #[test]
    fn reads_only_what_was_appended() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("evidence/m.log");
        let mut tail = Tail::new(&path);
        assert!(tail.read_new().unwrap().records.is_empty(), "no file yet");
        let mut log = Log::open(&path).unwrap();
        log.append(model(1)).unwrap();
        log.append(model(2)).unwrap();
        let a = tail.read_new().unwrap();
        assert_eq!(seqs(&a), [0, 1]);
        assert!(!a.restarted);
        assert!(tail.read_new().unwrap().records.is_empty());
        log.append(model(3)).unwrap();
        let a = tail.read_new().unwrap();
        assert_eq!(seqs(&a), [2]);
        assert_eq!(a.records[0], log.contents().records[2]);
    }

    #[test]
    fn a_torn_line_waits_and_a_voiding_note_is_checked() {
        use std::io::Write as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.log");
        let mut log = Log::open(&path).unwrap();
        let first = log.append(model(1)).unwrap();
        let mut void = Record::note("extend failed");
        void.voids = Some(first.seq);
        let void = log.append(void).unwrap();
        let mut tail = Tail::new(&path);
        assert_eq!(seqs(&tail.read_new().unwrap()), [0, 1]);
        // Half a line: not read yet; the rest of it: read.
        let mut r = model(2);
        r.seq = void.seq + 1;
        r.boot_id = "b".into();
        r.time = "t".into();
        let line = serde_json::to_vec(&r).unwrap();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(&line[..10]).unwrap();
        assert!(tail.read_new().unwrap().records.is_empty());
        f.write_all(&line[10..]).unwrap();
        f.write_all(b"\n").unwrap();
        assert_eq!(seqs(&tail.read_new().unwrap()), [2]);
        // A note voiding a record that was never extended is corruption,
        // found by the tail as by a whole read.
        let mut bad = Record::note("extend failed");
        bad.voids = Some(1);
        bad.seq = 3;
        bad.boot_id = "b".into();
        bad.time = "t".into();
        let mut line = serde_json::to_vec(&bad).unwrap();
        line.push(b'\n');
        f.write_all(&line).unwrap();
        let whole = log::read(&path).unwrap_err().to_string();
        let tailed = tail.read_new().unwrap_err().to_string();
        assert_eq!(tailed, whole);
        assert!(whole.contains("voids record 1"), "{whole}");
    }

    #[test]
    fn a_replaced_or_cut_file_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.log");
        let mut log = Log::open(&path).unwrap();
        log.append(model(1)).unwrap();
        log.append(model(2)).unwrap();
        let mut tail = Tail::new(&path);
        assert_eq!(seqs(&tail.read_new().unwrap()), [0, 1]);
        drop(log);
        std::fs::remove_file(&path).unwrap();
        let mut log = Log::open(&path).unwrap();
        log.append(model(3)).unwrap();
        let a = tail.read_new().unwrap();
        assert!(a.restarted);
        assert_eq!(seqs(&a), [0]);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(0)
            .unwrap();
        let a = tail.read_new().unwrap();
        assert!(a.restarted && a.records.is_empty());
    }
}
