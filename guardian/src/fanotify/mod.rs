//! The userspace rungs: fanotify, where no kernel program can take a file
//! hook. Both rungs put inode marks on the protected files of the
//! [`Targets`] and judge by the same rule as the BPF LSM hooks, by the
//! inode of the actor's executable, never by name:
//!
//! | file | owns |
//! |---|---|
//! | `perm.rs` | the permission rung: `FAN_OPEN_PERM` marks and the decision thread that denies write-opens ([`FanotifyGuard`]) |
//! | `intent.rs` | what an open is for, learnt from the blocked opener's `/proc/TID/syscall` |
//! | `notify/` | the notification rung: changes to protected files reported after the fact ([`notify::Watcher`]); its group and marks (`marks.rs`) and its reader thread (`reader.rs`) in files of their own |
//! | `fid.rs` | the notification rung's event records and file handles |
//! | `change.rs` | what a reported change was (`nlink 1→2`, `mode 0644→0666`) and the rule's verdict on it |
//! | `mod.rs` | what both share: the rule ([`judge`]), the actor from `/proc`, the event they make, the reader loop |
//!
//! Both rungs follow the targets: [`FanotifyGuard::refresh`] and
//! [`notify::Watcher::refresh`] mark what a policy reload adds, unmark
//! what it removes and judge by its writers from then on.
//!
//! May not touch the kernel's tables or the eBPF object (the guard's), and
//! does not decide which hook a rung stands in for ([`crate::enforce`]
//! does); it reports events, it does not print or record them.

mod change;
mod fid;
pub mod intent;
pub mod notify;
mod perm;

use std::{
    collections::HashMap,
    ffi::c_void,
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    path::Path,
    sync::atomic::{AtomicU64, Ordering},
    thread::JoinHandle,
    time::SystemTime,
};

use guardian_common::InodeKey;

use crate::{
    events::SecurityEvent,
    targets::{Targets, inode_key},
};

pub use intent::{
    AARCH64, ARM, Abi, Flags, I386, Intent, NATIVE, SyscallState, X86_64, intent, open_call,
    parse_syscall,
};
pub use perm::{FanotifyError, FanotifyGuard, FanotifyStats, Grant, Grants, HOOK};

/// Where a rung sends the events it makes: a bounded queue into the
/// daemon's event loop (no thread between). A rung's thread never waits
/// on it: the permission rung has an opener waiting for its answer, and a
/// slow reader must not become a slow `open`. An event the queue cannot
/// take (full, or the receiver gone) is counted in the rung's
/// `unreported`, which the status shows.
pub type EventSender = tokio::sync::mpsc::Sender<SecurityEvent>;

/// Offer `ev` to `events` without waiting; false if it was not taken.
pub(crate) fn report(events: &EventSender, ev: SecurityEvent) -> bool {
    events.try_send(ev).is_ok()
}

pub(crate) fn os_err() -> io::Error {
    io::Error::last_os_error()
}

pub(crate) fn owned(fd: RawFd) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(os_err());
    }
    // SAFETY: a descriptor the kernel just returned to us, owned by no one
    // else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// What `/proc` says about the process (or thread) an event names, read
/// once: both rungs name the actor this way.
#[derive(Clone, Default)]
pub(crate) struct Actor {
    /// `/proc/ID/status`: thread group, parent, ids.
    pub status: ProcStatus,
    /// `/proc/ID/comm` (settable by the process; never trusted).
    pub comm: String,
    /// The inode of `/proc/ID/exe`; None once the process has exited.
    pub exe: Option<InodeKey>,
    /// Where `/proc/ID/exe` points, when `exe` is known.
    pub exe_link: Option<String>,
}

impl Actor {
    /// Read it for `pid` (a process or thread id; 0: nothing).
    pub(crate) fn of(pid: u32) -> Self {
        if pid == 0 {
            return Self::default();
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .map(|s| parse_status(&s))
            .unwrap_or_default();
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .map(|s| s.trim_end_matches('\n').to_owned())
            .unwrap_or_default();
        let exe_link = format!("/proc/{pid}/exe");
        let exe = std::fs::metadata(&exe_link).ok().map(|m| inode_key(&m));
        let exe_link = exe
            .and_then(|_| std::fs::read_link(&exe_link).ok())
            .map(|p| p.display().to_string());
        Self {
            status,
            comm,
            exe,
            exe_link,
        }
    }
}

/// Wake a rung's thread through `wake` and join it; a failure is counted
/// in `errors` (`what` names the thread in the log).
pub(crate) fn stop_thread(
    thread: JoinHandle<()>,
    wake_fd: &OwnedFd,
    errors: &AtomicU64,
    what: &str,
) {
    if let Err(e) = wake(wake_fd) {
        // Without the wake-up the join below would never return.
        log::error!("cannot wake the fanotify {what} thread: {e}; leaving it running");
        errors.fetch_add(1, Ordering::Relaxed);
        return;
    }
    if thread.join().is_err() {
        errors.fetch_add(1, Ordering::Relaxed);
        log::error!("the fanotify {what} thread panicked");
    }
}

/// Fields of `/proc/TID/status` events carry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcStatus {
    /// Thread group (process) id.
    pub tgid: u32,
    /// Parent process id.
    pub ppid: u32,
    /// Real uid.
    pub uid: u32,
    /// Real gid.
    pub gid: u32,
}

/// Parse the lines of `/proc/TID/status` that events need.
pub fn parse_status(text: &str) -> ProcStatus {
    let mut s = ProcStatus::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let first = value
            .split_ascii_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_default();
        match key {
            "Tgid" => s.tgid = first,
            "PPid" => s.ppid = first,
            "Uid" => s.uid = first,
            "Gid" => s.gid = first,
            _ => {}
        }
    }
    s
}

/// The answer to one open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Judgement {
    /// No write intent: allowed, no event.
    Read,
    /// guardian writing its own file: allowed, no event.
    OwnWrite,
    /// An allowed writer: allowed, event `allow`.
    Allow,
    /// Denied, event `deny`.
    Deny,
}

/// The rule of the module table: may `exe` open the file (guardian's own
/// when `own`) with `intent`?
pub fn judge(
    intent: &Intent,
    own: bool,
    exe: Option<&InodeKey>,
    is_writer: impl Fn(&InodeKey) -> bool,
    self_exe: &InodeKey,
) -> Judgement {
    if *intent == Intent::Read {
        return Judgement::Read;
    }
    let Some(exe) = exe.filter(|e| e.ino != 0) else {
        return Judgement::Deny;
    };
    if own {
        if exe == self_exe {
            Judgement::OwnWrite
        } else {
            Judgement::Deny
        }
    } else if is_writer(exe) {
        Judgement::Allow
    } else {
        Judgement::Deny
    }
}

/// What both fanotify rungs know of the targets: the rule of the module
/// table, and how an event names the actor and the file.
pub(crate) struct Rules {
    /// Index of the first of guardian's own files in `Targets::files`.
    pub own_from: usize,
    writers: HashMap<InodeKey, String>,
    service: Vec<InodeKey>,
    self_exe: InodeKey,
}

impl Rules {
    pub(crate) fn new(t: &Targets) -> Self {
        Self {
            own_from: t.own_from,
            writers: t
                .writers
                .iter()
                .map(|(p, k)| (*k, p.display().to_string()))
                .collect(),
            service: t.service.iter().map(|(_, k)| *k).collect(),
            self_exe: t.self_exe,
        }
    }

    /// [`judge`] with these targets.
    pub(crate) fn judge(&self, intent: &Intent, own: bool, exe: Option<&InodeKey>) -> Judgement {
        judge(
            intent,
            own,
            exe,
            |k| self.writers.contains_key(k),
            &self.self_exe,
        )
    }

    /// The allowlist's name of writer `exe`, if it is one.
    pub(crate) fn writer(&self, exe: &InodeKey) -> Option<&String> {
        self.writers.get(exe)
    }

    /// An event with what both rungs say of every change: when, who
    /// (thread or process `id`, as `actor` found it in `/proc`), and the
    /// file. The caller sets what happened and the verdict.
    pub(crate) fn event(
        &self,
        actor: Actor,
        id: u32,
        file: Option<&Path>,
        key: Option<InodeKey>,
    ) -> SecurityEvent {
        let exe_key = actor.exe.unwrap_or_default();
        SecurityEvent {
            time: humantime::format_rfc3339_micros(SystemTime::now()).to_string(),
            pid: if actor.status.tgid != 0 {
                actor.status.tgid
            } else {
                id
            },
            tid: id,
            ppid: actor.status.ppid,
            uid: actor.status.uid,
            gid: actor.status.gid,
            exe: actor
                .exe
                .and_then(|k| self.writers.get(&k).cloned())
                .or(actor.exe_link),
            exe_dev: format!("{}:{}", exe_key.major(), exe_key.minor()),
            exe_ino: exe_key.ino,
            comm: actor.comm,
            service: exe_key.ino != 0 && self.service.contains(&exe_key),
            file: Some(
                file.map(|p| p.display().to_string())
                    .unwrap_or_else(|| "<unknown marked inode>".to_owned()),
            ),
            dev: key.map(|k| format!("{}:{}", k.major(), k.minor())),
            ino: key.map(|k| k.ino),
            ..SecurityEvent::default()
        }
    }
}

/// Read `group` until `wake` becomes readable, passing every batch of
/// event records read to `each`; an error from `each`, from `poll` or from
/// `read` ends the loop. Shared by the permission and the notification
/// rungs, whose groups are both non-blocking.
pub(crate) fn read_loop(
    group: &OwnedFd,
    wake: &OwnedFd,
    mut each: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<()> {
    // u64s keep the buffer aligned for the event records.
    let mut buf = vec![0u64; 1024];
    loop {
        let mut fds = [
            libc::pollfd {
                fd: group.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: valid array of two pollfds.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if r < 0 {
            let e = os_err();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if fds[1].revents != 0 {
            return Ok(());
        }
        if fds[0].revents & (libc::POLLERR | libc::POLLNVAL) != 0 {
            return Err(io::Error::other("poll reports an error on the group"));
        }
        loop {
            let bytes = size_of_val(buf.as_slice());
            // SAFETY: the buffer is valid for `bytes` bytes.
            let n =
                unsafe { libc::read(group.as_raw_fd(), buf.as_mut_ptr().cast::<c_void>(), bytes) };
            if n < 0 {
                let e = os_err();
                match e.kind() {
                    io::ErrorKind::WouldBlock => break,
                    io::ErrorKind::Interrupted => continue,
                    _ => return Err(e),
                }
            }
            let n = n as usize;
            if n == 0 {
                break;
            }
            // SAFETY: `n` bytes of the u64 buffer were written.
            let bytes = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n) };
            each(bytes)?;
        }
    }
}

/// A non-blocking eventfd to wake a reader thread out of `poll`.
pub(crate) fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain system call.
    owned(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })
}

/// Make `fd` (an eventfd from [`eventfd`]) readable.
pub(crate) fn wake(fd: &OwnedFd) -> io::Result<()> {
    let one: u64 = 1;
    // SAFETY: valid descriptor and an 8-byte buffer, as eventfd wants.
    let n = unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast::<c_void>(), 8) };
    if n == 8 { Ok(()) } else { Err(os_err()) }
}

#[cfg(test)]
mod tests {
    use guardian_common::oflags;

    use super::*;

    #[test]
    fn parses_proc_status() {
        let text = "Name:\tsh\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t4242\nNgid:\t0\n\
                    Pid:\t4243\nPPid:\t17\nTracerPid:\t0\nUid:\t1000\t0\t0\t0\nGid:\t100\t0\t0\t0\n";
        assert_eq!(
            parse_status(text),
            ProcStatus {
                tgid: 4242,
                ppid: 17,
                uid: 1000,
                gid: 100
            }
        );
        assert_eq!(parse_status("garbage"), ProcStatus::default());
    }

    #[test]
    fn judges_like_the_lsm_hook() {
        let me = InodeKey::from_major_minor(8, 1, 10);
        let writer = InodeKey::from_major_minor(8, 1, 11);
        let other = InodeKey::from_major_minor(8, 1, 12);
        let is_writer = |k: &InodeKey| *k == writer;
        let w = Intent::Write(oflags::O_WRONLY);
        let unknown = Intent::Unknown("io_uring".to_owned());
        let j = |i: &Intent, own, exe: Option<&InodeKey>| judge(i, own, exe, is_writer, &me);
        assert_eq!(j(&Intent::Read, false, Some(&other)), Judgement::Read);
        assert_eq!(j(&Intent::Read, true, None), Judgement::Read);
        assert_eq!(j(&w, false, Some(&writer)), Judgement::Allow);
        assert_eq!(j(&w, false, Some(&other)), Judgement::Deny);
        assert_eq!(j(&w, false, Some(&me)), Judgement::Deny);
        assert_eq!(j(&w, true, Some(&me)), Judgement::OwnWrite);
        assert_eq!(j(&w, true, Some(&writer)), Judgement::Deny);
        assert_eq!(j(&w, false, None), Judgement::Deny);
        assert_eq!(j(&w, false, Some(&InodeKey::default())), Judgement::Deny);
        // Flags unknown: fail-closed, except for who may write anyway.
        assert_eq!(j(&unknown, false, Some(&other)), Judgement::Deny);
        assert_eq!(j(&unknown, false, Some(&writer)), Judgement::Allow);
        assert_eq!(j(&unknown, true, Some(&me)), Judgement::OwnWrite);
    }
}
