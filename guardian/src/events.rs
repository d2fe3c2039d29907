//! Security events: decoding what the kernel sends and writing it as one
//! JSON object per line.

use std::{
    collections::HashMap,
    io::Write as _,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use guardian_common::{
    EventHeader, FileOpenEvent, InodeKey, kind, oflags, source as src, verdict as kverdict,
};
use serde::{Deserialize, Serialize};

use crate::guard::{Mode, Targets};

/// A write-open of a protected file, as printed.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileWriteEvent {
    /// When the kernel saw it (RFC 3339, UTC).
    pub time: String,
    /// Always `file_write_open`.
    pub event: String,
    /// `deny` (the kernel refused), `allow` (allowlisted writer) or `alert`
    /// (not allowed, but it happened: detect mode).
    pub verdict: String,
    /// `enforce` or `detect`.
    pub mode: String,
    /// The program that saw it.
    pub hook: String,
    /// Process id (thread group).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Parent process id.
    pub ppid: u32,
    /// Real uid.
    pub uid: u32,
    /// Real gid.
    pub gid: u32,
    /// The executable, if it could be named (allowlist entry, or
    /// `/proc/PID/exe` when it still matches the inode the kernel reported).
    pub exe: Option<String>,
    /// The executable's device, `major:minor`.
    pub exe_dev: String,
    /// The executable's inode.
    pub exe_ino: u64,
    /// The process's `comm` (settable by the process; never trusted).
    pub comm: String,
    /// The protected file.
    pub file: String,
    /// Its device, `major:minor`.
    pub dev: String,
    /// Its inode.
    pub ino: u64,
    /// The open flags, numeric.
    pub flags: u32,
    /// The open flags, symbolic.
    pub flags_text: String,
}

/// Turns raw ring-buffer records into events.
pub struct Decoder {
    mode: Mode,
    files: Vec<PathBuf>,
    /// Executable paths by inode: the allowed writers, plus every
    /// executable seen through `/proc` (short-lived processes are often
    /// gone by the time their event is read).
    exes: HashMap<InodeKey, String>,
    /// Inodes a `/proc` scan could not name, and when that was.
    unknown: HashMap<InodeKey, Instant>,
}

/// How long an executable inode that no running process has stays unnamed
/// before `/proc` is scanned for it again.
const RESCAN_AFTER: Duration = Duration::from_secs(10);

/// A record that could not be decoded (counted, never silent).
#[derive(Debug, thiserror::Error)]
#[error("undecodable event record ({len} bytes): {problem}")]
pub struct DecodeError {
    /// Record length.
    pub len: usize,
    /// What is wrong.
    pub problem: &'static str,
}

impl Decoder {
    /// A decoder naming files from `targets`.
    pub fn new(mode: Mode, targets: &Targets) -> Self {
        Self {
            mode,
            files: targets.files.iter().map(|(p, _)| p.clone()).collect(),
            exes: targets
                .writers
                .iter()
                .map(|(p, k)| (*k, p.display().to_string()))
                .collect(),
            unknown: HashMap::new(),
        }
    }

    /// Decode one record.
    pub fn decode(&mut self, bytes: &[u8]) -> Result<FileWriteEvent, DecodeError> {
        let err = |problem| DecodeError {
            len: bytes.len(),
            problem,
        };
        if bytes.len() < size_of::<EventHeader>() {
            return Err(err("shorter than the header"));
        }
        // SAFETY: length checked; read_unaligned copes with any alignment
        // and every bit pattern is a valid EventHeader.
        let header: EventHeader = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        if header.kind != kind::FILE_WRITE_OPEN {
            return Err(err("unknown event kind"));
        }
        if bytes.len() < size_of::<FileOpenEvent>()
            || usize::from(header.size) != size_of::<FileOpenEvent>()
        {
            return Err(err("size does not match file_write_open"));
        }
        // SAFETY: as above, for the full event.
        let ev: FileOpenEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        let comm_len = ev
            .comm
            .iter()
            .position(|&c| c == 0)
            .unwrap_or(ev.comm.len());
        Ok(FileWriteEvent {
            time: wall_clock(ev.header.ktime_ns),
            event: "file_write_open".to_owned(),
            verdict: match ev.header.verdict {
                kverdict::ALLOW => "allow",
                kverdict::DENY => "deny",
                _ => "alert",
            }
            .to_owned(),
            mode: self.mode.as_str().to_owned(),
            hook: match ev.header.source {
                src::LSM_FILE_OPEN => "lsm/file_open",
                _ => "tracepoint/syscalls/sys_exit_open",
            }
            .to_owned(),
            pid: ev.pid,
            tid: ev.tid,
            ppid: ev.ppid,
            uid: ev.uid,
            gid: ev.gid,
            exe: self.exe_path(ev.pid, &ev.exe),
            exe_dev: format!("{}:{}", ev.exe.major(), ev.exe.minor()),
            exe_ino: ev.exe.ino,
            comm: String::from_utf8_lossy(&ev.comm[..comm_len]).into_owned(),
            file: self
                .files
                .get(ev.protected_id as usize)
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| format!("<protected #{}>", ev.protected_id)),
            dev: format!("{}:{}", ev.file.major(), ev.file.minor()),
            ino: ev.file.ino,
            flags: ev.flags,
            flags_text: flags_text(ev.flags),
        })
    }

    fn exe_path(&mut self, pid: u32, exe: &InodeKey) -> Option<String> {
        if exe.ino == 0 {
            return None; // a kernel thread
        }
        if let Some(p) = self.exes.get(exe) {
            return Some(p.clone());
        }
        // The process itself, if /proc/PID/exe is still that inode (it may
        // have exited or exec'd since).
        if let Some(p) = proc_exe_if(pid, exe) {
            self.exes.insert(*exe, p.clone());
            return Some(p);
        }
        // Otherwise any other running process of the same executable, at
        // most once per RESCAN_AFTER for a given inode.
        if self
            .unknown
            .get(exe)
            .is_some_and(|t| t.elapsed() < RESCAN_AFTER)
        {
            return None;
        }
        let found = std::fs::read_dir("/proc").ok().and_then(|dir| {
            dir.filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .find_map(|other| proc_exe_if(other, exe))
        });
        match &found {
            Some(p) => {
                self.exes.insert(*exe, p.clone());
                self.unknown.remove(exe);
            }
            None => {
                self.unknown.insert(*exe, Instant::now());
            }
        }
        found
    }
}

/// `/proc/PID/exe`, if it is the executable `exe`.
fn proc_exe_if(pid: u32, exe: &InodeKey) -> Option<String> {
    let link = PathBuf::from(format!("/proc/{pid}/exe"));
    let meta = std::fs::metadata(&link).ok()?;
    if crate::guard::inode_key(&meta) != *exe {
        return None;
    }
    std::fs::read_link(&link)
        .ok()
        .map(|p| p.display().to_string())
}

/// Convert a CLOCK_MONOTONIC timestamp to wall-clock RFC 3339.
fn wall_clock(ktime_ns: u64) -> String {
    let now_wall = SystemTime::now();
    let now_mono = monotonic_ns();
    let t = if now_mono >= ktime_ns {
        now_wall - Duration::from_nanos(now_mono - ktime_ns)
    } else {
        now_wall
    };
    humantime::format_rfc3339_micros(t).to_string()
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// `O_WRONLY|O_APPEND` style rendering of open flags.
pub fn flags_text(flags: u32) -> String {
    let mut parts = vec![match flags & oflags::O_ACCMODE {
        0 => "O_RDONLY",
        oflags::O_WRONLY => "O_WRONLY",
        oflags::O_RDWR => "O_RDWR",
        _ => "O_ACCMODE",
    }];
    for (bit, name) in [
        (oflags::O_CREAT, "O_CREAT"),
        (oflags::O_TRUNC, "O_TRUNC"),
        (oflags::O_APPEND, "O_APPEND"),
    ] {
        if flags & bit != 0 {
            parts.push(name);
        }
    }
    parts.join("|")
}

/// Where events go: stdout or an append-only file. Write errors are
/// returned so the caller counts them.
pub enum Sink {
    /// Standard output.
    Stdout,
    /// A file opened with `O_APPEND`.
    File(std::fs::File),
}

impl Sink {
    /// `-` is standard output; anything else a file to append to.
    pub fn open(spec: &str) -> std::io::Result<Self> {
        if spec == "-" {
            return Ok(Self::Stdout);
        }
        let path = Path::new(spec);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map(Self::File)
    }

    /// Write one event as one line, in a single `write` so that concurrent
    /// readers never see half a line.
    pub fn write(&mut self, ev: &FileWriteEvent) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(ev).map_err(std::io::Error::other)?;
        line.push(b'\n');
        match self {
            Self::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(&line)?;
                out.flush()
            }
            Self::File(f) => f.write_all(&line),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(ev: &FileOpenEvent) -> Vec<u8> {
        // SAFETY: repr(C) POD without padding.
        unsafe {
            std::slice::from_raw_parts(
                (ev as *const FileOpenEvent).cast::<u8>(),
                size_of::<FileOpenEvent>(),
            )
        }
        .to_vec()
    }

    #[test]
    fn decodes_a_denial() {
        let file = InodeKey::from_major_minor(8, 1, 1234);
        let writer = InodeKey::from_major_minor(8, 1, 99);
        let targets = Targets {
            files: vec![(PathBuf::from("/opt/models/m.onnx"), file)],
            writers: vec![(PathBuf::from("/usr/bin/updater"), writer)],
        };
        let mut d = Decoder::new(Mode::Enforce, &targets);
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"evil");
        let ev = FileOpenEvent {
            header: EventHeader {
                kind: kind::FILE_WRITE_OPEN,
                source: src::LSM_FILE_OPEN,
                verdict: kverdict::DENY,
                size: size_of::<FileOpenEvent>() as u16,
                ktime_ns: monotonic_ns(),
            },
            file,
            exe: writer,
            pid: 42,
            tid: 43,
            ppid: 1,
            uid: 0,
            gid: 0,
            flags: oflags::O_WRONLY | oflags::O_APPEND,
            fmode: 2,
            protected_id: 0,
            comm,
        };
        let out = d.decode(&record(&ev)).unwrap();
        assert_eq!(out.verdict, "deny");
        assert_eq!(out.mode, "enforce");
        assert_eq!(out.hook, "lsm/file_open");
        assert_eq!(out.file, "/opt/models/m.onnx");
        assert_eq!(out.dev, "8:1");
        assert_eq!(out.ino, 1234);
        assert_eq!(out.comm, "evil");
        assert_eq!(out.exe.as_deref(), Some("/usr/bin/updater"));
        assert_eq!(out.flags_text, "O_WRONLY|O_APPEND");
        assert!(out.time.ends_with('Z'), "{}", out.time);

        let mut bad = record(&ev);
        bad.truncate(20);
        assert!(d.decode(&bad).is_err());
        let mut other = ev;
        other.header.kind = 77;
        assert!(d.decode(&record(&other)).is_err());
    }

    #[test]
    fn names_executables_of_exited_processes_from_other_processes() {
        // Our own executable, reported for a pid that does not exist: the
        // decoder finds it through this (running) test process.
        let me = std::fs::metadata("/proc/self/exe").unwrap();
        let key = crate::guard::inode_key(&me);
        let mut d = Decoder::new(Mode::Detect, &Targets::default());
        let want = std::fs::read_link("/proc/self/exe").unwrap();
        assert_eq!(
            d.exe_path(u32::MAX, &key).as_deref(),
            Some(&*want.display().to_string())
        );
        // An inode nobody runs stays unnamed, and is not rescanned at once.
        let nobody = InodeKey::from_major_minor(0, 0, u64::MAX - 1);
        assert_eq!(d.exe_path(u32::MAX, &nobody), None);
        assert!(d.unknown.contains_key(&nobody));
    }

    #[test]
    fn flags_rendering() {
        assert_eq!(flags_text(0), "O_RDONLY");
        assert_eq!(
            flags_text(oflags::O_RDWR | oflags::O_CREAT | oflags::O_TRUNC),
            "O_RDWR|O_CREAT|O_TRUNC"
        );
    }
}
