//! Opening the spool: the lock that keeps it to one process, the epoch, the
//! acknowledgement mark, and the index rebuilt from the segments on disk
//! (a torn tail cut off and counted, what a killed agent left synced
//! before any of it is sent).

use std::{
    collections::VecDeque,
    fs::{self, File, OpenOptions},
    io,
    path::PathBuf,
};

use super::{
    Segment, Spool, SpoolConfig, SpoolError,
    format::{encode_meta, io_err, parse_mark, parse_meta, scan_segment, write_atomic},
};

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
            stats_lost: 0,
            torn_bytes,
        };
        spool.collect_acked()?;
        Ok(spool)
    }
}
