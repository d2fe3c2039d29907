//! Security events: reading what the kernel sends (`ring.rs`: the kernel's
//! ring buffer, its data mapped once; `reader.rs`: records copied out of it
//! and released at once), decoding it (here), and writing it as one JSON
//! object per line (`sink.rs`).

use std::{
    collections::HashMap,
    path::PathBuf,
    time::{Duration, Instant, SystemTime},
};

use guardian_common::{
    Event, EventHeader, InodeKey, NameKey, ProtectedFile, kind, oflags, preload, source as src,
    verdict as kverdict,
};
use serde::{Deserialize, Serialize};

use crate::{
    hooks::{Mode, Verdict},
    targets::Targets,
};

mod reader;
mod ring;
mod sink;

pub use reader::RingReader;
pub use ring::{EventRing, RingError};
pub use sink::{Sink, SinkError};

/// One security event, as printed: one JSON object per line. The fields up
/// to `comm` are on every event; the rest depend on `event`:
///
/// | `event` | fields |
/// |---|---|
/// | `file_write_open`, `file_write`, `file_truncate`, `file_setattr`, `file_mmap_write` | `file`, `dev`, `ino`, `flags`, `flags_text` |
/// | `file_rename`, `file_unlink`, `file_link` | the same, and `name` (the new or removed name) |
/// | `file_create` | `file` (the protected name), `name` |
/// | `exec`, `exec_preload` | `path`; `env` for `exec_preload` |
/// | `library_load` | `path`, `dev`, `ino` |
/// | `ptrace` | `target_pid`, `target_exe` |
/// | `connect` | `family`, `addr`, `port` |
/// | `open_unmeasured` | `file` (the measured file or tree at that name), `dev`, `ino` (what was opened), `name`, `reason` |
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SecurityEvent {
    /// When the kernel saw it (RFC 3339, UTC).
    pub time: String,
    /// What happened (see the table above).
    pub event: String,
    /// `deny` (the kernel refused), `allow` (allowlisted writer) or `alert`
    /// (not allowed, but it happened: detect mode).
    pub verdict: Verdict,
    /// `enforce` or `detect`.
    pub mode: Mode,
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
    /// The acting process is the inference service.
    pub service: bool,
    /// The protected file (or name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Its device, `major:minor`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev: Option<String>,
    /// Its inode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ino: Option<u64>,
    /// Kind-specific flags, numeric (open flags, `ia_valid`, mmap `prot`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flags: Option<u32>,
    /// The flags, symbolic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flags_text: Option<String>,
    /// A name: the new name of a rename or link, the removed name, the
    /// created name (at most 31 bytes, as the kernel reported it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The program executed, or the library mapped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The loader variable found in an exec's environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    /// The traced process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_pid: Option<u32>,
    /// The traced process's executable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_exe: Option<String>,
    /// `ipv4` or `ipv6`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<String>,
    /// Destination address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
    /// Destination port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// What the policies said, when any are loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyNote>,
    /// What the agent did about it, when it did more than report
    /// (`killed`, or why it could not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<String>,
    /// Why the kernel judged so, where the kind alone does not say
    /// (`open_unmeasured`: `other_inode` or `not_taken_in`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The policies' combined answer on one event.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PolicyNote {
    /// `allow`, `alert` or `deny` (deny-overrides over every policy).
    pub decision: String,
    /// `policy:rule` of the first policy that decided so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// Actions asked for: `kill`, `remeasure`, `quarantine`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<String>,
    /// Which policy set judged (it changes with every reload).
    pub generation: u64,
    /// Policies that failed on this event (each counted as the fail mode).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<String>,
}

impl SecurityEvent {
    /// A file event.
    pub fn is_file(&self) -> bool {
        self.event.starts_with("file_")
    }

    /// What a tamper record is about, for the events guardian keeps tamper
    /// records for: changes to protected files and to the paths that lead
    /// to them, and attempts on the guard itself (its kernel objects, the
    /// identities it trusts). Process events against the service (exec,
    /// ptrace, connect) are reported and counted, not recorded.
    pub fn tamper_subject(&self) -> Option<String> {
        match self.event.as_str() {
            e if e.starts_with("file_")
                || e == "mount"
                || e == "open_unmeasured"
                || e == "path_changed"
                || e == "preexisting_writer" =>
            {
                self.file.clone().or_else(|| self.name.clone())
            }
            "bpf_object" => Some(format!(
                "guardian's BPF object {}",
                self.name.as_deref().unwrap_or("?")
            )),
            "prctl_exe" => Some("the executable identity of a process".to_owned()),
            "tables_changed" => Some("guardian's kernel tables".to_owned()),
            _ => None,
        }
    }
}

/// Turns raw ring-buffer records into events.
pub struct Decoder {
    mode: Mode,
    files: Vec<PathBuf>,
    /// Directories guarded for the files' sake, by
    /// `id - ProtectedFile::DIR_ID_BASE`.
    dirs: Vec<PathBuf>,
    names: Vec<(PathBuf, NameKey)>,
    /// Executable paths by inode: the allowed writers, the service, its
    /// allowlist, plus every executable seen through `/proc` (short-lived
    /// processes are often gone by the time their event is read).
    exes: HashMap<InodeKey, String>,
    service: Vec<InodeKey>,
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

fn cstr(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&c| c == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

fn hook_name(source: u16) -> &'static str {
    match source {
        src::LSM_FILE_OPEN => "lsm/file_open",
        src::RAW_SYS_OPEN => "raw_tracepoint/sys_exit (open)",
        src::LSM_FILE_PERMISSION => "lsm/file_permission",
        src::LSM_INODE_SETATTR => "lsm/inode_setattr",
        src::LSM_INODE_RENAME => "lsm/inode_rename",
        src::LSM_INODE_UNLINK => "lsm/inode_unlink",
        src::LSM_INODE_LINK => "lsm/inode_link",
        src::LSM_INODE_CREATE => "lsm/inode_create",
        src::LSM_MMAP_FILE => "lsm/mmap_file",
        src::LSM_BPRM_CHECK => "lsm/bprm_check_security",
        src::LSM_PTRACE => "lsm/ptrace_access_check",
        src::LSM_SOCKET_CONNECT => "lsm/socket_connect",
        src::RAW_SYS_WRITE => "raw_tracepoint/sys_exit (write)",
        src::RAW_SYS_FTRUNCATE => "raw_tracepoint/sys_exit (ftruncate)",
        src::RAW_SYS_MMAP => "raw_tracepoint/sys_exit (mmap)",
        src::RAW_SYS_CONNECT => "raw_tracepoint/sys_exit (connect)",
        src::TP_PROCESS_EXEC => "tracepoint/sched/sched_process_exec",
        src::CGROUP_CONNECT4 => "cgroup/connect4",
        src::CGROUP_CONNECT6 => "cgroup/connect6",
        src::CGROUP_SENDMSG4 => "cgroup/sendmsg4",
        src::CGROUP_SENDMSG6 => "cgroup/sendmsg6",
        src::LSM_INODE_RMDIR => "lsm/inode_rmdir",
        src::LSM_INODE_MKDIR => "lsm/inode_mkdir",
        src::LSM_INODE_SYMLINK => "lsm/inode_symlink",
        src::LSM_INODE_MKNOD => "lsm/inode_mknod",
        src::LSM_SB_MOUNT => "lsm/sb_mount",
        src::LSM_MOVE_MOUNT => "lsm/move_mount",
        src::LSM_SB_UMOUNT => "lsm/sb_umount",
        src::LSM_SB_PIVOTROOT => "lsm/sb_pivotroot",
        src::LSM_BPF => "lsm/bpf",
        src::LSM_BPF_MAP => "lsm/bpf_map",
        src::LSM_BPF_PROG => "lsm/bpf_prog",
        src::LSM_TASK_PRCTL => "lsm/task_prctl",
        src::LSM_PTRACE_TRACEME => "lsm/ptrace_traceme",
        src::LSM_BPRM_CREDS_FROM_FILE => "lsm/bprm_creds_from_file",
        _ => "unknown",
    }
}

fn kind_name(k: u16) -> Option<&'static str> {
    Some(match k {
        kind::FILE_WRITE_OPEN => "file_write_open",
        kind::FILE_WRITE => "file_write",
        kind::FILE_TRUNCATE => "file_truncate",
        kind::FILE_RENAME => "file_rename",
        kind::FILE_UNLINK => "file_unlink",
        kind::FILE_LINK => "file_link",
        kind::FILE_SETATTR => "file_setattr",
        kind::FILE_MMAP_WRITE => "file_mmap_write",
        kind::FILE_CREATE => "file_create",
        kind::EXEC => "exec",
        kind::EXEC_PRELOAD => "exec_preload",
        kind::LIBRARY_LOAD => "library_load",
        kind::PTRACE => "ptrace",
        kind::CONNECT => "connect",
        kind::MOUNT => "mount",
        kind::BPF_OBJECT => "bpf_object",
        kind::PRCTL_EXE => "prctl_exe",
        kind::SERVICE_COPY => "service_copy",
        kind::OPEN_UNMEASURED => "open_unmeasured",
        _ => return None,
    })
}

impl Decoder {
    /// A decoder naming files and programs from `targets`.
    pub fn new(mode: Mode, targets: &Targets) -> Self {
        let mut exes: HashMap<InodeKey, String> = HashMap::new();
        for (p, k) in targets
            .writers
            .iter()
            .chain(&targets.service)
            .chain(&targets.exec)
        {
            exes.entry(*k).or_insert_with(|| p.display().to_string());
        }
        Self {
            mode,
            files: targets.files.iter().map(|(p, _)| p.clone()).collect(),
            dirs: targets.dirs.iter().map(|(p, _, _)| p.clone()).collect(),
            names: targets.names.clone(),
            exes,
            service: targets.service.iter().map(|(_, k)| *k).collect(),
            unknown: HashMap::new(),
        }
    }

    /// Decode one record.
    pub fn decode(&mut self, bytes: &[u8]) -> Result<SecurityEvent, DecodeError> {
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
        let Some(event) = kind_name(header.kind) else {
            return Err(err("unknown event kind"));
        };
        if bytes.len() < size_of::<Event>() || usize::from(header.size) != size_of::<Event>() {
            return Err(err("size does not match the event layout"));
        }
        // SAFETY: as above, for the full event.
        let ev: Event = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        let mut out = SecurityEvent {
            time: wall_clock(ev.header.ktime_ns),
            event: event.to_owned(),
            verdict: match ev.header.verdict {
                kverdict::ALLOW => Verdict::Allow,
                kverdict::DENY => Verdict::Deny,
                _ => Verdict::Alert,
            },
            // A denial is enforcement, whatever the guard's overall mode
            // (the cgroup programs deny on kernels without BPF LSM).
            mode: if ev.header.verdict == kverdict::DENY {
                Mode::Enforce
            } else {
                self.mode
            },
            hook: hook_name(ev.header.source).to_owned(),
            pid: ev.pid,
            tid: ev.tid,
            ppid: ev.ppid,
            uid: ev.uid,
            gid: ev.gid,
            exe: self.exe_path(ev.pid, &ev.exe),
            exe_dev: format!("{}:{}", ev.exe.major(), ev.exe.minor()),
            exe_ino: ev.exe.ino,
            comm: cstr(&ev.comm),
            service: ev.exe.ino != 0 && self.service.contains(&ev.exe),
            ..SecurityEvent::default()
        };
        let name = cstr(&ev.name);
        let name = (!name.is_empty()).then_some(name);
        match header.kind {
            kind::FILE_CREATE if ev.protected_id != Event::NOT_PROTECTED => {
                // A name made in a protected tree: the tree's directory.
                out.file = Some(self.protected_path(ev.protected_id));
                out.dev = Some(format!("{}:{}", ev.file.major(), ev.file.minor()));
                out.ino = Some(ev.file.ino);
                out.name = name;
            }
            kind::FILE_CREATE => {
                out.file = self
                    .names
                    .iter()
                    .find(|(_, k)| k.dir == ev.file && k.name == ev.name)
                    .map(|(p, _)| p.display().to_string());
                out.name = name;
            }
            kind::MOUNT if header.source == src::LSM_SB_PIVOTROOT => {
                // The root moved away; the new root by inode and name.
                out.file = Some("/".to_owned());
                out.dev = Some(format!("{}:{}", ev.file.major(), ev.file.minor()));
                out.ino = Some(ev.file.ino);
                out.name = name;
            }
            kind::BPF_OBJECT => {
                out.name = name;
                out.flags = Some(ev.flags);
            }
            kind::PRCTL_EXE => {
                out.flags = Some(ev.flags);
            }
            kind::EXEC | kind::EXEC_PRELOAD | kind::LIBRARY_LOAD | kind::SERVICE_COPY => {
                out.path = self.exes.get(&ev.file).cloned().or(name);
                out.dev = Some(format!("{}:{}", ev.file.major(), ev.file.minor()));
                out.ino = Some(ev.file.ino);
                if header.kind == kind::EXEC_PRELOAD {
                    out.env = Some(preload::name(ev.aux).to_owned());
                }
            }
            kind::OPEN_UNMEASURED => {
                // Only the service is judged so (a copy the kernel
                // recognised by content included, which the targets do
                // not list).
                out.service = true;
                // The measured file (or tree) whose name the service used,
                // and the inode it reached instead.
                out.file = Some(self.protected_path(ev.protected_id));
                out.dev = Some(format!("{}:{}", ev.file.major(), ev.file.minor()));
                out.ino = Some(ev.file.ino);
                out.name = name;
                out.reason = Some(
                    if ev.aux == Event::OPEN_UNKNOWN_IN_TREE {
                        "not_taken_in"
                    } else {
                        "other_inode"
                    }
                    .to_owned(),
                );
            }
            kind::PTRACE => {
                out.target_pid = Some(ev.aux);
                out.target_exe = self.exe_path(ev.aux, &ev.file);
            }
            kind::CONNECT => {
                let (family, addr) = if ev.family == 10 {
                    ("ipv6", std::net::Ipv6Addr::from(ev.addr).to_string())
                } else {
                    let a = [ev.addr[0], ev.addr[1], ev.addr[2], ev.addr[3]];
                    ("ipv4", std::net::Ipv4Addr::from(a).to_string())
                };
                out.family = Some(family.to_owned());
                out.addr = Some(addr);
                out.port = Some(ev.aux as u16);
            }
            _ => {
                // File events on a protected file (or, for a rename or link
                // that would create a protected name, that name).
                out.file = if ev.protected_id == Event::NOT_PROTECTED {
                    self.names
                        .iter()
                        .find(|(_, k)| k.dir == ev.file && k.name == ev.name)
                        .map(|(p, _)| p.display().to_string())
                } else {
                    Some(self.protected_path(ev.protected_id))
                };
                out.dev = Some(format!("{}:{}", ev.file.major(), ev.file.minor()));
                out.ino = Some(ev.file.ino);
                out.name = name;
                if header.kind == kind::FILE_WRITE_OPEN {
                    out.flags = Some(ev.flags);
                    out.flags_text = Some(flags_text(ev.flags));
                } else if ev.flags != 0 {
                    out.flags = Some(ev.flags);
                }
            }
        }
        Ok(out)
    }

    /// The path of a protected file or directory, by the id the kernel
    /// reports.
    fn protected_path(&self, id: u32) -> String {
        if id >= ProtectedFile::DIR_ID_BASE {
            return self
                .dirs
                .get((id - ProtectedFile::DIR_ID_BASE) as usize)
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| format!("<guardian pin directory #{id}>"));
        }
        self.files
            .get(id as usize)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| format!("<guardian pin #{id}>"))
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
    if crate::targets::inode_key(&meta) != *exe {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn record(ev: &Event) -> Vec<u8> {
        // SAFETY: repr(C) POD without padding.
        unsafe { std::slice::from_raw_parts((ev as *const Event).cast::<u8>(), size_of::<Event>()) }
            .to_vec()
    }

    #[test]
    fn decodes_a_denial() {
        let file = InodeKey::from_major_minor(8, 1, 1234);
        let writer = InodeKey::from_major_minor(8, 1, 99);
        let targets = Targets {
            files: vec![(PathBuf::from("/opt/models/m.onnx"), file)],
            own_from: 1,
            writers: vec![(PathBuf::from("/usr/bin/updater"), writer)],
            ..Targets::default()
        };
        let mut d = Decoder::new(Mode::Enforce, &targets);
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"evil");
        let ev = Event {
            header: EventHeader {
                kind: kind::FILE_WRITE_OPEN,
                source: src::LSM_FILE_OPEN,
                verdict: kverdict::DENY,
                size: size_of::<Event>() as u16,
                ktime_ns: monotonic_ns(),
            },
            file,
            exe: writer,
            pid: 42,
            tid: 43,
            ppid: 1,
            flags: oflags::O_WRONLY | oflags::O_APPEND,
            fmode: 2,
            protected_id: 0,
            comm,
            ..Event::default()
        };
        let out = d.decode(&record(&ev)).unwrap();
        assert_eq!(out.event, "file_write_open");
        assert_eq!(out.verdict, "deny");
        assert_eq!(out.mode, "enforce");
        assert_eq!(out.hook, "lsm/file_open");
        assert_eq!(out.file.as_deref(), Some("/opt/models/m.onnx"));
        assert_eq!(out.dev.as_deref(), Some("8:1"));
        assert_eq!(out.ino, Some(1234));
        assert_eq!(out.comm, "evil");
        assert_eq!(out.exe.as_deref(), Some("/usr/bin/updater"));
        assert_eq!(out.flags_text.as_deref(), Some("O_WRONLY|O_APPEND"));
        assert!(!out.service);

        // A connect by the service, and a create of a protected name.
        let svc = InodeKey::from_major_minor(8, 1, 7);
        let etc = InodeKey::from_major_minor(8, 1, 2);
        let mut name = [0u8; NameKey::LEN];
        name[..13].copy_from_slice(b"ld.so.preload");
        let targets = Targets {
            service: vec![(PathBuf::from("/usr/bin/infer"), svc)],
            names: vec![(
                PathBuf::from("/etc/ld.so.preload"),
                NameKey { dir: etc, name },
            )],
            ..Targets::default()
        };
        let mut d = Decoder::new(Mode::Enforce, &targets);
        let mut c = ev;
        c.header.kind = kind::CONNECT;
        c.header.source = src::LSM_SOCKET_CONNECT;
        c.exe = svc;
        c.family = 2;
        c.aux = 9999;
        c.addr[..4].copy_from_slice(&[127, 0, 0, 3]);
        let out = d.decode(&record(&c)).unwrap();
        assert_eq!(out.event, "connect");
        assert!(out.service);
        assert_eq!(out.addr.as_deref(), Some("127.0.0.3"));
        assert_eq!(out.port, Some(9999));
        assert_eq!(out.file, None);
        let json = serde_json::to_string(&out).unwrap();
        assert!(!json.contains("\"file\""), "{json}");
        let mut k = ev;
        k.header.kind = kind::FILE_CREATE;
        k.file = etc;
        k.name = name;
        k.protected_id = Event::NOT_PROTECTED;
        let out = d.decode(&record(&k)).unwrap();
        assert_eq!(out.file.as_deref(), Some("/etc/ld.so.preload"));
        assert_eq!(out.name.as_deref(), Some("ld.so.preload"));
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
        let key = crate::targets::inode_key(&me);
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
