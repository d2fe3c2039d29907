//! The spool's files byte for byte: a segment's magic and its records' frames
//! (length, CRC-32 of the body, the body), the `meta` and `acked` files,
//! and the file operations every part of the spool writes through (an
//! atomic replace by rename, a synced directory). Reading a segment back
//! stops at the first frame that does not check out (see the format in the
//! module's opening, [`super`]).

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write},
    path::Path,
};

use super::{Class, Entry, SpoolError};

pub(super) const META_MAGIC: &[u8; 8] = b"GSPLMETA";
pub(super) const META_VERSION: u16 = 1;
pub(super) const SEG_MAGIC: &[u8; 8] = b"GSPOOL01";
pub(super) const FRAME: u64 = 8;
pub(super) const BODY_FIXED: u64 = 17;

/// Bytes a record takes in a segment.
pub fn frame_len(payload: usize) -> u64 {
    FRAME + BODY_FIXED + payload as u64
}

pub(super) fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> SpoolError + 'a {
    move |source| SpoolError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

pub(super) fn crc(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

pub(super) fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync directory", dir))
}

/// Write `bytes` to `path` through a temporary file and a rename, synced.
pub(super) fn write_atomic(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), SpoolError> {
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

pub(super) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub(super) fn encode_frame(seq: u64, time_ms: u64, class: Class, payload: &[u8]) -> Vec<u8> {
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
pub(super) fn scan_segment(path: &Path) -> Result<(Vec<Entry>, u64, u64), SpoolError> {
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

pub(super) fn seg_name(first: u64) -> String {
    format!("{first:020}.seg")
}

pub(super) fn encode_meta(epoch: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(22);
    b.extend_from_slice(META_MAGIC);
    b.extend_from_slice(&META_VERSION.to_le_bytes());
    b.extend_from_slice(&epoch.to_le_bytes());
    let sum = crc(&b);
    b.extend_from_slice(&sum.to_le_bytes());
    b
}

pub(super) fn parse_meta(path: &Path, b: &[u8]) -> Result<u64, SpoolError> {
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

pub(super) fn encode_mark(mark: u64) -> Vec<u8> {
    let mut b = mark.to_le_bytes().to_vec();
    let sum = crc(&b);
    b.extend_from_slice(&sum.to_le_bytes());
    b
}

pub(super) fn parse_mark(path: &Path, b: &[u8]) -> Result<u64, SpoolError> {
    if b.len() != 12 || crc(&b[..8]).to_le_bytes() != b[8..12] {
        return Err(SpoolError::Corrupt {
            path: path.to_owned(),
            problem: "not an acknowledgement mark (bad length or checksum)".to_owned(),
        });
    }
    Ok(u64::from_le_bytes(b[..8].try_into().unwrap_or_default()))
}
