//! The measurement log: one record per PCR extend, append-only and
//! crash-safe, replayable to the PCR value, exportable in the formats other
//! tools read.
//!
//! On disk it is JSON lines, one [`Record`] per line, each written with a
//! single `write` and followed by `fsync` before the PCR is extended, so a
//! crash leaves at worst a torn last line (detected on read and reported,
//! then cut off by the next append, which records that it did) and never an
//! extend without its record. A bad line anywhere but at the end, a gap in
//! the sequence numbers or a record from another format is corruption: the
//! log is refused, never silently repaired.
//!
//! Exports:
//! - [`export_tcg`]: the TCG PC Client binary event log (a `Spec ID Event03`
//!   header in the SHA-1 event format, then one `TCG_PCR_EVENT2` per extend,
//!   event type `EV_IPL`), which `tpm2_eventlog` parses and replays;
//! - [`export_cel`]: TCG Canonical Event Log records in JSON, one per line
//!   and each prefixed with an ASCII record separator (RFC 7464 JSON text
//!   sequences), the way systemd writes `/run/log/systemd/tpm2-measure.log`.

use std::{
    fs::{File, OpenOptions},
    io::{Read as _, Seek as _, SeekFrom, Write as _},
    path::{Path, PathBuf},
};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// `EV_NO_ACTION`: not extended (the Spec ID header).
pub const EV_NO_ACTION: u32 = 0x0000_0003;
/// `EV_IPL`: a measurement made by the OS or its loader, data a string.
pub const EV_IPL: u32 = 0x0000_000d;
/// `TPM_ALG_SHA256`.
pub const TPM_ALG_SHA256: u16 = 0x000b;

/// What a record is about.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The manifest file itself (extended first).
    Manifest,
    /// One model file named by the manifest.
    Model,
    /// Not extended: something the log must say (a re-run in the same boot,
    /// a repaired torn tail).
    Note,
    /// An attempt to tamper with a protected file, seen by the runtime
    /// guard (denied, or detected after the fact). Extended, so the attempt
    /// stays in the quoted evidence even if the attacker later wins.
    Tamper,
    /// The runtime guard's state (mode and hooks in force, drop counters),
    /// extended so that the evidence proves how the device was protected.
    State,
    /// A policy module put in force (digest: SHA-256 of the `.wasm`), so
    /// the evidence names the policies that judged events.
    Policy,
}

/// One line of the log.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// 0, 1, 2, … with no gaps.
    pub seq: u64,
    /// `/proc/sys/kernel/random/boot_id` when written: the PCR resets at
    /// boot, so only this boot's records replay to it.
    pub boot_id: String,
    /// Wall-clock time, RFC 3339.
    pub time: String,
    /// What it is.
    pub kind: Kind,
    /// The PCR index.
    pub pcr: u32,
    /// Hash algorithm of `digest` (`sha256`).
    pub alg: String,
    /// The digest extended, hex (all zeros for a note).
    pub digest: String,
    /// Whether `digest` was extended into the PCR.
    pub extended: bool,
    /// Human-readable event data; also the event data of the TCG export.
    pub description: String,
    /// The measured file, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Index of the manifest entry, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry: Option<usize>,
    /// The golden digest from the manifest, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<String>,
    /// Whether the measured digest equals the golden one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matched: Option<bool>,
    /// For a note: the record whose extend failed after it was logged, so
    /// the PCR does not contain it and replay must skip it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voids: Option<u64>,
}

impl Record {
    /// The digest as bytes.
    pub fn digest_bytes(&self) -> Result<[u8; 32], LogError> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(&self.digest, &mut out).map_err(|_| LogError::Corrupt {
            path: PathBuf::new(),
            line: 0,
            problem: format!("record {}: digest is not 64 hex digits", self.seq),
        })?;
        Ok(out)
    }
}

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
    pub fn replay(&self, pcr: u32, boot_id: &str) -> Result<[u8; 32], LogError> {
        let mut value = [0u8; 32];
        for r in self.extended_this_boot(boot_id).filter(|r| r.pcr == pcr) {
            value = extend(&value, &r.digest_bytes()?);
        }
        Ok(value)
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

/// Read and check a log. A missing file is an empty log.
pub fn read(path: &Path) -> Result<Contents, LogError> {
    let io = |source| LogError::Io {
        path: path.to_owned(),
        source,
    };
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut f) => {
            f.read_to_end(&mut bytes).map_err(io)?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Contents::default()),
        Err(e) => return Err(io(e)),
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
    let mut offset = 0usize;
    let mut line_no = 0usize;
    while offset < bytes.len() {
        line_no += 1;
        let rest = &bytes[offset..];
        let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
            // No newline: the last write did not complete. That is the one
            // damage a crash can cause; report it, do not fail.
            out.torn_bytes = rest.len();
            break;
        };
        let line = &rest[..nl];
        let record: Record = serde_json::from_slice(line)
            .map_err(|e| (line_no, format!("not a measurement record: {e}")))?;
        if record.seq != out.records.len() as u64 {
            return Err((
                line_no,
                format!(
                    "sequence number {} where {} was expected (records missing or reordered)",
                    record.seq,
                    out.records.len()
                ),
            ));
        }
        if record.alg != "sha256" {
            return Err((line_no, format!("unknown hash algorithm {:?}", record.alg)));
        }
        if record.digest.len() != 64 || hex::decode(&record.digest).is_err() {
            return Err((line_no, "digest is not 64 hex digits".to_owned()));
        }
        out.records.push(record);
        offset += nl + 1;
        out.good_len = offset as u64;
    }
    Ok(out)
}

/// An open log, for appending.
pub struct Log {
    path: PathBuf,
    file: File,
    next_seq: u64,
    contents: Contents,
}

impl Log {
    /// Open (creating it and its directory if needed) and check the log. A
    /// torn tail is cut off and the cut recorded as a note.
    pub fn open(path: &Path) -> Result<Self, LogError> {
        let io = |source| LogError::Io {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        // One writer at a time (the boot step and the daemon share the log):
        // an exclusive lock, taken before reading, held until drop.
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(io)?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&file), libc::LOCK_EX) } != 0 {
            return Err(io(std::io::Error::last_os_error()));
        }
        let contents = read(path)?;
        let torn = contents.torn_bytes;
        if torn > 0 {
            file.set_len(contents.good_len).map_err(io)?;
            file.seek(SeekFrom::End(0)).map_err(io)?;
            file.sync_all().map_err(io)?;
            log::warn!(
                "measurement log {}: removed a torn last record ({torn} bytes, an interrupted write)",
                path.display()
            );
        }
        let mut log = Self {
            path: path.to_owned(),
            file,
            next_seq: contents.records.len() as u64,
            contents,
        };
        if torn > 0 {
            log.append(Record {
                kind: Kind::Note,
                pcr: 0,
                digest: "0".repeat(64),
                extended: false,
                description: format!(
                    "torn last record of {torn} bytes removed (interrupted write; it was never extended)"
                ),
                ..Record::blank()
            })?;
        }
        Ok(log)
    }

    /// What the log held when opened, plus what was appended since.
    pub fn contents(&self) -> &Contents {
        &self.contents
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append a record durably (write, then fsync) and return it with its
    /// sequence number, boot id and time filled in. Call this *before*
    /// extending the PCR: a record without its extend is visible on replay,
    /// an extend without its record would be unexplainable.
    pub fn append(&mut self, mut record: Record) -> Result<Record, LogError> {
        let io = |source| LogError::Io {
            path: self.path.clone(),
            source,
        };
        record.seq = self.next_seq;
        if record.boot_id.is_empty() {
            record.boot_id = boot_id();
        }
        if record.time.is_empty() {
            record.time =
                humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string();
        }
        let mut line = serde_json::to_vec(&record).map_err(|e| io(std::io::Error::other(e)))?;
        line.push(b'\n');
        self.file.write_all(&line).map_err(io)?;
        self.file.sync_data().map_err(io)?;
        self.next_seq += 1;
        self.contents.good_len += line.len() as u64;
        self.contents.records.push(record.clone());
        Ok(record)
    }
}

impl Record {
    /// A record with every field empty, to fill in.
    pub fn blank() -> Self {
        Self {
            seq: 0,
            boot_id: String::new(),
            time: String::new(),
            kind: Kind::Note,
            pcr: 0,
            alg: "sha256".to_owned(),
            digest: String::new(),
            extended: false,
            description: String::new(),
            file: None,
            entry: None,
            expected: None,
            matched: None,
            voids: None,
        }
    }
}

/// The TCG PC Client binary event log of this boot's extends.
pub fn export_tcg(contents: &Contents, boot_id: &str) -> Result<Vec<u8>, LogError> {
    let mut out = Vec::new();
    // Header: TCG_PCClientPCREvent (SHA-1 format) carrying the
    // TCG_EfiSpecIDEvent that announces the crypto-agile format.
    let mut spec = Vec::new();
    spec.extend_from_slice(b"Spec ID Event03\0");
    spec.extend_from_slice(&0u32.to_le_bytes()); // platformClass
    spec.push(0); // specVersionMinor
    spec.push(2); // specVersionMajor
    spec.push(0); // specErrata
    spec.push(2); // uintnSize: 64-bit
    spec.extend_from_slice(&1u32.to_le_bytes()); // numberOfAlgorithms
    spec.extend_from_slice(&TPM_ALG_SHA256.to_le_bytes());
    spec.extend_from_slice(&32u16.to_le_bytes());
    spec.push(0); // vendorInfoSize
    out.extend_from_slice(&0u32.to_le_bytes()); // pcrIndex
    out.extend_from_slice(&EV_NO_ACTION.to_le_bytes());
    out.extend_from_slice(&[0u8; 20]);
    out.extend_from_slice(&(spec.len() as u32).to_le_bytes());
    out.extend_from_slice(&spec);
    for r in contents.extended_this_boot(boot_id) {
        out.extend_from_slice(&r.pcr.to_le_bytes());
        out.extend_from_slice(&EV_IPL.to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes()); // digests.count
        out.extend_from_slice(&TPM_ALG_SHA256.to_le_bytes());
        out.extend_from_slice(&r.digest_bytes()?);
        let data = r.description.as_bytes();
        out.extend_from_slice(&(data.len() as u32 + 1).to_le_bytes());
        out.extend_from_slice(data);
        out.push(0);
    }
    Ok(out)
}

/// One record of the Canonical Event Log, JSON encoding.
#[derive(Serialize)]
struct CelRecord<'a> {
    recnum: u64,
    pcr: u32,
    digests: [CelDigest<'a>; 1],
    content_type: &'static str,
    content: CelContent,
}

#[derive(Serialize)]
struct CelDigest<'a> {
    #[serde(rename = "hashAlg")]
    hash_alg: &'static str,
    digest: &'a str,
}

#[derive(Serialize)]
struct CelContent {
    event_type: &'static str,
    event_data: String,
}

/// This boot's extends as CEL-JSON records in a JSON text sequence.
pub fn export_cel(contents: &Contents, boot_id: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for (recnum, r) in contents.extended_this_boot(boot_id).enumerate() {
        let mut data = r.description.as_bytes().to_vec();
        data.push(0);
        let rec = CelRecord {
            recnum: recnum as u64,
            pcr: r.pcr,
            digests: [CelDigest {
                hash_alg: "sha256",
                digest: &r.digest,
            }],
            content_type: "pcclient_std",
            content: CelContent {
                event_type: "EV_IPL",
                event_data: base64::engine::general_purpose::STANDARD.encode(&data),
            },
        };
        out.push(0x1e);
        if let Ok(json) = serde_json::to_vec(&rec) {
            out.extend_from_slice(&json);
        }
        out.push(b'\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(digest: u8) -> Record {
        Record {
            kind: Kind::Model,
            pcr: 14,
            digest: hex::encode([digest; 32]),
            extended: true,
            description: format!("model {digest}"),
            ..Record::blank()
        }
    }

    #[test]
    fn append_read_replay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/m.log");
        let mut log = Log::open(&path).unwrap();
        log.append(model(1)).unwrap();
        log.append(model(2)).unwrap();
        let c = read(&path).unwrap();
        assert_eq!(c.records.len(), 2);
        assert_eq!(c.records[1].seq, 1);
        let want = extend(&extend(&[0; 32], &[1; 32]), &[2; 32]);
        assert_eq!(c.replay(14, &boot_id()).unwrap(), want);
        assert_eq!(c.replay(14, "another-boot").unwrap(), [0; 32]);
        assert_eq!(c.replay(15, &boot_id()).unwrap(), [0; 32]);
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
        assert_eq!(recs[1].kind, Kind::Note);
        assert!(recs[1].description.contains("torn"));
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
        // Damage the middle record.
        let bad = text.replacen("\"seq\":1", "\"seq\":7", 1);
        std::fs::write(&path, bad).unwrap();
        let e = read(&path).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("m.log"), "{e}");
        let bad = text.replacen("\"digest\":\"01", "\"digest\":\"zz", 1);
        std::fs::write(&path, bad).unwrap();
        assert!(matches!(
            read(&path),
            Err(LogError::Corrupt { line: 2, .. })
        ));
        std::fs::write(&path, b"garbage\n").unwrap();
        assert!(Log::open(&path).is_err());
    }

    #[test]
    fn tcg_export_layout() {
        let c = Contents {
            records: vec![Record {
                boot_id: "b".into(),
                ..model(7)
            }],
            ..Default::default()
        };
        let bin = export_tcg(&c, "b").unwrap();
        // Header event: 4 + 4 + 20 + 4 + spec(16+4+4+4+4+1 = 33).
        assert_eq!(&bin[32..48], b"Spec ID Event03\0");
        let first = 32 + 33;
        assert_eq!(
            bin.len(),
            first + 4 + 4 + 4 + 2 + 32 + 4 + "model 7".len() + 1
        );
        assert_eq!(&bin[first..first + 4], &14u32.to_le_bytes());
        let cel = export_cel(&c, "b");
        assert_eq!(cel[0], 0x1e);
        let v: serde_json::Value = serde_json::from_slice(&cel[1..]).unwrap();
        assert_eq!(v["pcr"], 14);
        assert_eq!(v["digests"][0]["hashAlg"], "sha256");
    }
}
