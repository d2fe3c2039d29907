//! Writers that were there before the guard: a search of `/proc` at start.
//!
//! The hooks judge operations as they happen. A descriptor opened for
//! writing, or a shared writable mapping made, before guardian started is
//! outside every hook that judges opens and maps, and a write through a
//! mapping is no system call at all: such a writer can change a model
//! under a running guard. So the agent looks for them once, as it starts:
//!
//! | found in | what | reported as |
//! |---|---|---|
//! | `/proc/PID/fd/N` + `/proc/PID/fdinfo/N` | a descriptor on a protected file whose `flags` are `O_WRONLY` or `O_RDWR` | `preexisting_writer`, `name` = `fd N open for writing (flags 0…)` |
//! | `/proc/PID/maps` | a mapping of a protected file that is shared (`s`) and writable (`w`) | `preexisting_writer`, `name` = `shared writable mapping START-END` |
//!
//! Each is an event with verdict `alert` (it happened before anything could
//! refuse it), so it gets the configured response (`[guard] response =
//! "kill"` kills the holder, never pid 1 or guardian), a tamper record in
//! the evidence, and a re-measurement of the model. Under BPF LSM a write
//! through such a descriptor is still refused by `file_permission`; a
//! write through such a mapping is not (no hook sees it), which is why the
//! finding goes into the evidence either way.
//!
//! Processes in another pid namespace than the agent's are not visible
//! here; a process that exits during the search is skipped.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::SystemTime,
};

use guardian_common::InodeKey;

use crate::{
    events::SecurityEvent,
    hooks::{Mode, Verdict},
    targets::{Targets, inode_key},
};

/// One writer found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// The holder.
    pub pid: u32,
    /// The protected file.
    pub file: PathBuf,
    /// What it holds, in words.
    pub what: String,
}

/// Search `proc` (normally `/proc`) for writers of the files in
/// `targets`, skipping the process `own_pid`.
pub fn search(proc: &Path, targets: &Targets, own_pid: u32) -> Vec<Found> {
    let protected: HashMap<InodeKey, &PathBuf> =
        targets.files.iter().map(|(p, k)| (*k, p)).collect();
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir(proc) else {
        return out;
    };
    let mut pids: Vec<u32> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|p| *p != own_pid)
        .collect();
    pids.sort_unstable();
    for pid in pids {
        let base = proc.join(pid.to_string());
        if let Ok(fds) = std::fs::read_dir(base.join("fd")) {
            let mut fds: Vec<(u32, PathBuf)> = fds
                .flatten()
                .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path())))
                .collect();
            fds.sort_unstable();
            for (fd, link) in fds {
                let Ok(meta) = std::fs::metadata(&link) else {
                    continue;
                };
                let Some(file) = protected.get(&inode_key(&meta)) else {
                    continue;
                };
                let Some(flags) = fd_flags(&base.join("fdinfo").join(fd.to_string())) else {
                    continue;
                };
                if flags & 0o3 != 0 {
                    out.push(Found {
                        pid,
                        file: (*file).clone(),
                        what: format!("fd {fd} open for writing (flags 0{flags:o})"),
                    });
                }
            }
        }
        if let Ok(maps) = std::fs::read_to_string(base.join("maps")) {
            for line in maps.lines() {
                if let Some((range, key)) = shared_writable(line)
                    && let Some(file) = protected.get(&key)
                {
                    out.push(Found {
                        pid,
                        file: (*file).clone(),
                        what: format!("shared writable mapping {range}"),
                    });
                }
            }
        }
    }
    out
}

/// The `flags:` line of an fdinfo file (octal).
fn fd_flags(path: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find_map(|l| l.strip_prefix("flags:"))?;
    u32::from_str_radix(line.trim(), 8).ok()
}

/// A `/proc/PID/maps` line of a shared, writable, file-backed mapping: its
/// address range and the file's key. Format: `start-end perms offset
/// major:minor inode path` (device numbers in hex).
pub fn shared_writable(line: &str) -> Option<(&str, InodeKey)> {
    let mut parts = line.split_whitespace();
    let range = parts.next()?;
    let perms = parts.next()?.as_bytes();
    let _offset = parts.next()?;
    let dev = parts.next()?;
    let ino: u64 = parts.next()?.parse().ok()?;
    if perms.len() < 4 || perms[1] != b'w' || perms[3] != b's' || ino == 0 {
        return None;
    }
    let (major, minor) = dev.split_once(':')?;
    let major = u32::from_str_radix(major, 16).ok()?;
    let minor = u32::from_str_radix(minor, 16).ok()?;
    Some((range, InodeKey::from_major_minor(major, minor, ino)))
}

impl Found {
    /// The security event for this writer.
    pub fn event(&self, proc: &Path) -> SecurityEvent {
        let base = proc.join(self.pid.to_string());
        let exe_meta = std::fs::metadata(base.join("exe")).ok();
        let exe_key = exe_meta.as_ref().map(inode_key).unwrap_or_default();
        let status = std::fs::read_to_string(base.join("status")).unwrap_or_default();
        let field = |name: &str| -> u32 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or(0)
        };
        SecurityEvent {
            time: humantime::format_rfc3339_micros(SystemTime::now()).to_string(),
            event: "preexisting_writer".to_owned(),
            verdict: Verdict::Alert,
            mode: Mode::Detect,
            hook: "agent/start-scan".to_owned(),
            pid: self.pid,
            tid: self.pid,
            ppid: field("PPid:"),
            uid: field("Uid:"),
            gid: field("Gid:"),
            exe: std::fs::read_link(base.join("exe"))
                .ok()
                .map(|p| p.display().to_string()),
            exe_dev: format!("{}:{}", exe_key.major(), exe_key.minor()),
            exe_ino: exe_key.ino,
            comm: std::fs::read_to_string(base.join("comm"))
                .unwrap_or_default()
                .trim_end()
                .to_owned(),
            file: Some(self.file.display().to_string()),
            name: Some(self.what.clone()),
            ..SecurityEvent::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt as _;

    #[test]
    fn maps_lines() {
        let k = shared_writable(
            "7f00-7f10 rw-s 00000000 08:01 1234                       /opt/models/m.onnx",
        )
        .expect("a shared writable mapping");
        assert_eq!(k.0, "7f00-7f10");
        assert_eq!(k.1, InodeKey::from_major_minor(8, 1, 1234));
        for not in [
            "7f00-7f10 r--s 00000000 08:01 1234 /m",
            "7f00-7f10 rw-p 00000000 08:01 1234 /m",
            "7f00-7f10 rw-s 00000000 00:00 0",
            "garbage",
            "",
        ] {
            assert_eq!(shared_writable(not), None, "{not}");
        }
    }

    /// This process opens a protected file for writing and maps it shared
    /// and writable; the search (of the real /proc) names both, and
    /// nothing for a read-only descriptor or a private mapping.
    #[test]
    fn finds_this_processes_writers() {
        let t = tempfile::tempdir().expect("tempdir");
        let model = t.path().join("m.onnx");
        std::fs::write(&model, vec![7u8; 8192]).expect("write");
        let meta = std::fs::metadata(&model).expect("stat");
        let targets = Targets {
            files: vec![(model.clone(), inode_key(&meta))],
            own_from: 1,
            ..Targets::default()
        };
        let _ro = std::fs::File::open(&model).expect("open ro");
        assert!(
            search(Path::new("/proc"), &targets, 0)
                .iter()
                .all(|f| f.pid != std::process::id()),
            "a read-only descriptor is no writer"
        );
        let rw = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&model)
            .expect("open rw");
        // SAFETY: a fresh shared mapping of our own file, unmapped below.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                8192,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(&rw),
                0,
            )
        };
        assert_ne!(map, libc::MAP_FAILED);
        let found: Vec<_> = search(Path::new("/proc"), &targets, 0)
            .into_iter()
            .filter(|f| f.pid == std::process::id())
            .collect();
        // SAFETY: the mapping made above.
        unsafe { libc::munmap(map, 8192) };
        assert!(
            found
                .iter()
                .any(|f| f.what.starts_with("fd ") && f.what.contains("open for writing")),
            "{found:?}"
        );
        assert!(
            found
                .iter()
                .any(|f| f.what.starts_with("shared writable mapping")),
            "{found:?}"
        );
        assert!(found.iter().all(|f| f.file == model));
        let ev = found[0].event(Path::new("/proc"));
        assert_eq!(ev.event, "preexisting_writer");
        assert_eq!(ev.verdict, "alert");
        assert_eq!(ev.pid, std::process::id());
        assert_eq!(
            ev.exe_ino,
            std::fs::metadata("/proc/self/exe").expect("exe").ino()
        );
        assert!(ev.exe.is_some());
    }
}
