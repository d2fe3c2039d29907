//! The userspace-deny rung: fanotify permission events.
//!
//! On kernels where BPF LSM programs cannot attach (arm64 before 6.4, the
//! 5.10/5.15 vendor kernels of Jetson boards, kernels without ftrace
//! trampolines), the kernel can still stop an open and wait for a verdict
//! from userspace: guardian creates a fanotify group of class
//! `FAN_CLASS_CONTENT`, puts a `FAN_OPEN_PERM` mark on every protected file
//! (inode marks: a rename or a second hard link does not shake them off),
//! and a decision thread answers every open of those files with `FAN_ALLOW`
//! or `FAN_DENY`. A denied open fails with `EPERM` before the file can
//! change, as with the BPF LSM `file_open` hook, and the same rule decides:
//!
//! | opened for | file | opener's executable | answer |
//! |---|---|---|---|
//! | read only, no `O_TRUNC` | any | any | allow, counted, no event |
//! | write or `O_TRUNC` | guardian's own | guardian | allow, no event |
//! | write or `O_TRUNC` | a model | an allowed writer | allow, event `allow` |
//! | write or `O_TRUNC` | any | anything else | deny, event `deny` |
//! | cannot tell | any | allowed for that file | allow, event `allow` |
//! | cannot tell | any | anything else | deny, event `deny`, counted undecidable |
//!
//! The opener is identified by the inode of `/proc/TID/exe`, compared with
//! [`crate::guard::inode_key`] keys, never by name or `comm`.
//!
//! # How the opener's flags are learnt
//!
//! The descriptor in a fanotify event is a new read-only open made by
//! fanotify itself, so it says nothing about how the opener asked. The
//! opener, though, is blocked inside its system call until guardian
//! answers, and with `FAN_REPORT_TID` the event names the blocked thread:
//! `/proc/TID/syscall` gives the system call number and its six arguments.
//! `openat` and `open_by_handle_at` carry the flags in argument 2, `open`
//! in argument 1, `creat` always writes, `openat2` keeps them in the first
//! `u64` of the `struct open_how` whose address is argument 2 (read from
//! the opener's memory with `process_vm_readv`), and `execve`/`execveat`
//! open for reading. The tables cover x86_64 (with its i386 and x32 ABIs)
//! and aarch64 (with 32-bit arm); the number sets of a native ABI and its
//! compat ABI that mean "open" overlap only on `openat2` (437 everywhere,
//! same arguments), so a number is read the same way whichever ABI the
//! thread entered with (a unit test holds this).
//!
//! Anything else is undecidable and is decided fail-closed: a system call
//! that is not in the tables (an open done by the kernel on behalf of
//! `acct`, `swapon`, an io_uring request, ...), a thread no longer there, a
//! thread outside guardian's pid namespace, unreadable opener memory. Such
//! an open is denied unless the opener may write the file anyway, and
//! counted.
//!
//! # Limits (what the other rungs have to cover)
//!
//! - **Latency on every open of a protected file, reads included**: each
//!   open waits for a round trip through the decision thread (see
//!   `benches/fanotify.rs` for the figure on this machine).
//! - **Enforcement ends with the agent**: nothing can be pinned; when the
//!   group's descriptor is closed (stop, crash, kill) the kernel allows
//!   every pending and future open.
//! - **Only opens are seen**: writes through descriptors opened before the
//!   marks were placed, `truncate(2)` by path, renames, unlinks, links and
//!   attribute changes are not permission events; the tracepoint rung
//!   reports those.
//! - **Reading `/proc/TID/syscall` and the opener's memory needs ptrace
//!   access** to the opener; [`FanotifyGuard::start`] refuses to start under
//!   Yama `ptrace_scope = 3`, where every open would be undecidable.
//! - The decision thread must never open a protected file itself (it would
//!   wait for its own answer); other threads of guardian may.

use std::{
    collections::HashMap,
    ffi::c_void,
    io,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
        unix::fs::FileExt as _,
    },
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc::Sender,
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime},
};

use guardian_common::{InodeKey, oflags};
use serde::Serialize;

use crate::{
    events::{SecurityEvent, flags_text},
    guard::{Targets, inode_key},
};

/// The hook name in events and status.
pub const HOOK: &str = crate::hooks::FANOTIFY_PERM;

/// Why the rung could not start. [`FanotifyError::is_unavailable`] tells a
/// kernel or privilege that cannot do it apart from a bad target.
#[derive(Debug, thiserror::Error)]
pub enum FanotifyError {
    /// The kernel or the privileges cannot give permission events.
    #[error("fanotify permission events are unavailable: {0}")]
    Unavailable(String),
    /// `fanotify_init` failed for another reason.
    #[error("fanotify_init: {0}")]
    Init(#[source] io::Error),
    /// A protected file could not be opened or marked.
    #[error("protected file {path}: {what}: {source}")]
    Mark {
        /// The file.
        path: PathBuf,
        /// The step that failed.
        what: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The decision thread or its wake-up descriptor could not be set up.
    #[error("fanotify decision thread: {what}: {source}")]
    Thread {
        /// The step that failed.
        what: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
}

impl FanotifyError {
    /// True when this kernel or these privileges cannot run the rung at all
    /// (the guard should fall to the next rung); false for a problem with
    /// one of the targets.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// Counters of the decision thread.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FanotifyStats {
    /// Permission events answered.
    pub decisions: u64,
    /// Opens without write intent, allowed without an event.
    pub reads: u64,
    /// Write opens allowed (allowed writers; guardian on its own files).
    pub allowed: u64,
    /// Opens denied.
    pub denied: u64,
    /// Opens whose flags could not be learnt (decided fail-closed).
    pub undecidable: u64,
    /// Failures: unreadable events, answers the kernel refused, queue
    /// overflows, a stopped decision thread.
    pub errors: u64,
    /// Events the receiver was no longer there to take.
    pub unreported: u64,
    /// The decision thread is running (false after a fatal error or stop).
    pub running: bool,
}

#[derive(Default)]
struct Shared {
    decisions: AtomicU64,
    reads: AtomicU64,
    allowed: AtomicU64,
    denied: AtomicU64,
    undecidable: AtomicU64,
    errors: AtomicU64,
    unreported: AtomicU64,
    running: AtomicBool,
}

impl Shared {
    fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> FanotifyStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        FanotifyStats {
            decisions: get(&self.decisions),
            reads: get(&self.reads),
            allowed: get(&self.allowed),
            denied: get(&self.denied),
            undecidable: get(&self.undecidable),
            errors: get(&self.errors),
            unreported: get(&self.unreported),
            running: self.running.load(Ordering::Relaxed),
        }
    }
}

/// A write-open the permission rung allowed: which process, which file,
/// and the writer's executable as it was when the open was decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The opener's process (thread group) id.
    pub tgid: u32,
    /// The protected file.
    pub file: InodeKey,
    /// The allowed writer's executable.
    pub exe: InodeKey,
    /// Its path, as the allowlist names it.
    pub exe_path: String,
}

/// The latest write-opens the permission rung allowed, for the
/// notification rung ([`crate::watch`]): it learns who changed a file from
/// a pid after the fact, and an allowed writer that has exited by then
/// (an updater that writes and quits) has no executable left to show. A
/// grant for the same process and file stands in for it. Bounded: the
/// oldest grants go first.
#[derive(Debug, Default)]
pub struct Grants(std::sync::Mutex<std::collections::VecDeque<Grant>>);

impl Grants {
    /// How many grants are kept.
    pub const MAX: usize = 1024;

    /// Remember `g`.
    pub fn record(&self, g: Grant) {
        let mut q = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(i) = q.iter().position(|o| o.tgid == g.tgid && o.file == g.file) {
            q.remove(i);
        }
        if q.len() >= Self::MAX {
            q.pop_front();
        }
        q.push_back(g);
    }

    /// The grant for process `tgid` and `file`, if any.
    pub fn find(&self, tgid: u32, file: &InodeKey) -> Option<Grant> {
        let q = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        q.iter()
            .rev()
            .find(|g| g.tgid == tgid && g.file == *file)
            .cloned()
    }
}

/// A running fanotify rung: the group with its marks and the decision
/// thread. Dropping it stops it, like [`FanotifyGuard::stop`].
pub struct FanotifyGuard {
    shared: Arc<Shared>,
    grants: Arc<Grants>,
    wake: Arc<OwnedFd>,
    thread: Option<JoinHandle<()>>,
    marked: usize,
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

/// `fanotify_init` with the flags the rung needs, with a reason when the
/// kernel or the caller cannot.
fn init_group() -> Result<OwnedFd, FanotifyError> {
    // FAN_UNLIMITED_QUEUE: on overflow the kernel drops a permission event
    // and lets the open through, so the queue must not have a limit.
    // FAN_REPORT_TID: the event names the blocked thread, whose
    // /proc/TID/syscall holds the flags.
    let flags = libc::FAN_CLASS_CONTENT
        | libc::FAN_CLOEXEC
        | libc::FAN_NONBLOCK
        | libc::FAN_UNLIMITED_QUEUE
        | libc::FAN_UNLIMITED_MARKS
        | libc::FAN_REPORT_TID;
    let event_flags = (libc::O_RDONLY | libc::O_LARGEFILE | libc::O_CLOEXEC) as libc::c_uint;
    // SAFETY: plain system call, no pointers.
    let fd = unsafe { libc::fanotify_init(flags, event_flags) };
    match owned(fd) {
        Ok(fd) => Ok(fd),
        Err(e) => Err(match e.raw_os_error() {
            Some(libc::ENOSYS) => {
                FanotifyError::Unavailable(format!("kernel built without CONFIG_FANOTIFY ({e})"))
            }
            Some(libc::EPERM) => FanotifyError::Unavailable(format!(
                "fanotify_init needs CAP_SYS_ADMIN; run as root ({e})"
            )),
            Some(libc::EINVAL) => {
                // Tell a kernel without permission events from one
                // without FAN_REPORT_TID.
                let plain = libc::FAN_CLASS_CONTENT | libc::FAN_CLOEXEC;
                // SAFETY: as above.
                let probe = owned(unsafe { libc::fanotify_init(plain, event_flags) });
                FanotifyError::Unavailable(if probe.is_ok() {
                    format!("kernel older than 4.20: no FAN_REPORT_TID ({e})")
                } else {
                    format!(
                        "kernel without CONFIG_FANOTIFY_ACCESS_PERMISSIONS: FAN_CLASS_CONTENT refused ({e})"
                    )
                })
            }
            _ => FanotifyError::Init(e),
        }),
    }
}

/// Open a protected file, put the `FAN_OPEN_PERM` mark on its inode, and
/// return the key of the inode marked.
fn mark(group: &OwnedFd, path: &Path) -> Result<InodeKey, FanotifyError> {
    let err = |what| {
        move |source| FanotifyError::Mark {
            path: path.to_owned(),
            what,
            source,
        }
    };
    // Marking through a descriptor ties the mark and the key to the same
    // inode, whatever happens to the path meanwhile.
    let file = std::fs::File::open(path).map_err(err("cannot open it to mark it"))?;
    let meta = file.metadata().map_err(err("cannot stat it"))?;
    if !meta.is_file() {
        return Err(err("cannot mark it")(io::Error::other(
            "not a regular file",
        )));
    }
    // SAFETY: valid descriptors; a null path marks the descriptor's inode.
    let r = unsafe {
        libc::fanotify_mark(
            group.as_raw_fd(),
            libc::FAN_MARK_ADD | libc::FAN_MARK_INODE,
            libc::FAN_OPEN_PERM,
            file.as_raw_fd(),
            std::ptr::null(),
        )
    };
    if r != 0 {
        let e = os_err();
        return Err(match e.raw_os_error() {
            Some(libc::EINVAL) | Some(libc::ENOSYS) => FanotifyError::Unavailable(format!(
                "FAN_OPEN_PERM mark on {} refused: kernel without CONFIG_FANOTIFY_ACCESS_PERMISSIONS? ({e})",
                path.display()
            )),
            Some(libc::EPERM) => FanotifyError::Unavailable(format!(
                "FAN_OPEN_PERM mark on {} refused: needs CAP_SYS_ADMIN ({e})",
                path.display()
            )),
            _ => err("fanotify_mark FAN_OPEN_PERM")(e),
        });
    }
    Ok(inode_key(&meta))
}

impl FanotifyGuard {
    /// Mark every file of `targets` and start the decision thread. Every
    /// decision on a write open becomes an event sent to `events`.
    ///
    /// Start-up order:
    /// 1. Check that this architecture has syscall tables and that ptrace
    ///    access to other processes is possible: without them every open
    ///    would be undecidable, and denying every read of a model is no
    ///    guard.
    /// 2. Create the group (nothing is stopped yet).
    /// 3. Mark every protected file. A file that cannot be marked stops the
    ///    start, naming it; the marks already placed go with the group.
    /// 4. Start the decision thread; from the first mark to here, opens of
    ///    marked files wait in the queue, and are answered once it runs.
    pub fn start(targets: &Targets, events: Sender<SecurityEvent>) -> Result<Self, FanotifyError> {
        if NATIVE.is_empty() {
            return Err(FanotifyError::Unavailable(format!(
                "no system call tables for {} to learn open flags from",
                std::env::consts::ARCH
            )));
        }
        if let Ok(scope) = std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope")
            && scope.trim() == "3"
        {
            return Err(FanotifyError::Unavailable(
                "Yama ptrace_scope is 3: /proc/TID/syscall of other processes cannot be read, so no open could be decided".to_owned(),
            ));
        }
        let group = init_group()?;
        let mut files = HashMap::new();
        for (id, (path, expected)) in targets.files.iter().enumerate() {
            let key = mark(&group, path)?;
            if key != *expected {
                log::warn!(
                    "protected file {} was replaced since it was resolved; marked the file there now",
                    path.display()
                );
            }
            files.insert(key, id);
        }
        let wake = eventfd().map_err(|source| FanotifyError::Thread {
            what: "eventfd",
            source,
        })?;
        let wake = Arc::new(wake);
        let shared = Arc::new(Shared::default());
        shared.running.store(true, Ordering::Relaxed);
        let marked = files.len();
        let grants = Arc::new(Grants::default());
        let decider = Decider::new(targets, files, Arc::clone(&grants));
        let worker = Worker {
            group,
            wake: Arc::clone(&wake),
            shared: Arc::clone(&shared),
            decider,
            events,
        };
        let thread = std::thread::Builder::new()
            .name("guardian-fanotify".to_owned())
            .spawn(move || worker.run())
            .map_err(|source| FanotifyError::Thread {
                what: "spawn",
                source,
            })?;
        Ok(Self {
            shared,
            grants,
            wake,
            thread: Some(thread),
            marked,
        })
    }

    /// How many inodes carry a mark.
    pub fn marked(&self) -> usize {
        self.marked
    }

    /// The write-opens allowed so far (see [`Grants`]).
    pub fn grants(&self) -> Arc<Grants> {
        Arc::clone(&self.grants)
    }

    /// The counters so far.
    pub fn stats(&self) -> FanotifyStats {
        self.shared.snapshot()
    }

    /// Stop the decision thread and close the group: the kernel then allows
    /// every open still waiting and puts no more on hold. Returns the final
    /// counters.
    pub fn stop(mut self) -> FanotifyStats {
        self.shutdown();
        self.shared.snapshot()
    }

    fn shutdown(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        stop_thread(thread, &self.wake, &self.shared.errors, "decision");
    }
}

impl Drop for FanotifyGuard {
    fn drop(&mut self) {
        self.shutdown();
    }
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

/// The state of a thread as `/proc/TID/syscall` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyscallState {
    /// The thread is running (its registers cannot be read).
    Running,
    /// Blocked, but not in a system call.
    NotInSyscall,
    /// In system call `nr` with these arguments.
    In {
        /// The number, as the thread's ABI numbers it.
        nr: i64,
        /// The six argument registers.
        args: [u64; 6],
    },
}

fn hex(s: &str) -> Option<u64> {
    u64::from_str_radix(s.strip_prefix("0x")?, 16).ok()
}

/// Parse `/proc/TID/syscall`: `running`, `-1 SP PC`, or
/// `NR ARG0 .. ARG5 SP PC` (number in decimal, the rest `0x` hex).
pub fn parse_syscall(text: &str) -> Option<SyscallState> {
    let text = text.trim();
    if text == "running" {
        return Some(SyscallState::Running);
    }
    let mut words = text.split_ascii_whitespace();
    let nr: i64 = words.next()?.parse().ok()?;
    let rest: Vec<u64> = words.map(hex).collect::<Option<_>>()?;
    if nr < 0 {
        return (rest.len() == 2).then_some(SyscallState::NotInSyscall);
    }
    if rest.len() != 8 {
        return None;
    }
    let mut args = [0; 6];
    args.copy_from_slice(&rest[..6]);
    Some(SyscallState::In { nr, args })
}

/// Where a system call that opens keeps its flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flags {
    /// In this argument.
    Arg(usize),
    /// Always `O_CREAT|O_WRONLY|O_TRUNC` (`creat`).
    Creat,
    /// In the first `u64` of a `struct open_how` at the address in this
    /// argument (`openat2`).
    OpenHow(usize),
    /// Opens for reading (`execve`, `execveat`).
    Exec,
}

/// The system calls of one ABI that open files.
#[derive(Clone, Copy, Debug)]
pub struct Abi {
    /// Name, for messages.
    pub name: &'static str,
    /// Number and where the flags are.
    pub calls: &'static [(i64, Flags)],
    /// A bit set in the number by a sub-ABI sharing the table (x32), or 0.
    pub strip: i64,
}

/// x86_64 (`arch/x86/entry/syscalls/syscall_64.tbl`), with x32's numbers
/// (the same with bit 30 set; x32 has its own `execve`/`execveat`, 520 and
/// 545, which are not valid 64-bit numbers).
pub const X86_64: Abi = Abi {
    name: "x86_64",
    calls: &[
        (2, Flags::Arg(1)),       // open
        (85, Flags::Creat),       // creat
        (257, Flags::Arg(2)),     // openat
        (304, Flags::Arg(2)),     // open_by_handle_at
        (437, Flags::OpenHow(2)), // openat2
        (59, Flags::Exec),        // execve
        (322, Flags::Exec),       // execveat
        (520, Flags::Exec),       // x32 execve
        (545, Flags::Exec),       // x32 execveat
    ],
    strip: 0x4000_0000,
};

/// i386, as 32-bit processes on an x86_64 kernel use it
/// (`arch/x86/entry/syscalls/syscall_32.tbl`).
pub const I386: Abi = Abi {
    name: "i386",
    calls: &[
        (5, Flags::Arg(1)),
        (8, Flags::Creat),
        (295, Flags::Arg(2)),
        (342, Flags::Arg(2)),
        (437, Flags::OpenHow(2)),
        (11, Flags::Exec),
        (358, Flags::Exec),
    ],
    strip: 0,
};

/// aarch64 (`include/uapi/asm-generic/unistd.h`: no `open`, no `creat`).
pub const AARCH64: Abi = Abi {
    name: "aarch64",
    calls: &[
        (56, Flags::Arg(2)),
        (265, Flags::Arg(2)),
        (437, Flags::OpenHow(2)),
        (221, Flags::Exec),
        (281, Flags::Exec),
    ],
    strip: 0,
};

/// 32-bit arm (EABI), as compat processes on an arm64 kernel use it
/// (`arch/arm/tools/syscall.tbl`).
pub const ARM: Abi = Abi {
    name: "arm",
    calls: &[
        (5, Flags::Arg(1)),
        (8, Flags::Creat),
        (322, Flags::Arg(2)),
        (371, Flags::Arg(2)),
        (437, Flags::OpenHow(2)),
        (11, Flags::Exec),
        (387, Flags::Exec),
    ],
    strip: 0,
};

/// The ABIs a thread on this kernel may have entered with.
#[cfg(target_arch = "x86_64")]
pub const NATIVE: &[Abi] = &[X86_64, I386];
/// The ABIs a thread on this kernel may have entered with.
#[cfg(target_arch = "aarch64")]
pub const NATIVE: &[Abi] = &[AARCH64, ARM];
/// The ABIs a thread on this kernel may have entered with (none known).
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub const NATIVE: &[Abi] = &[];

/// Where system call `nr` keeps its open flags, if it is one that opens.
pub fn open_call(abis: &[Abi], nr: i64) -> Option<Flags> {
    abis.iter().find_map(|abi| {
        let nr = if abi.strip != 0 { nr & !abi.strip } else { nr };
        abi.calls
            .iter()
            .find(|(n, _)| *n == nr)
            .map(|(_, flags)| *flags)
    })
}

/// What an open is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Intent {
    /// Reading only.
    Read,
    /// Writing (or truncating), with these open flags.
    Write(u32),
    /// Cannot tell, and why.
    Unknown(String),
}

fn from_flags(flags: u64) -> Intent {
    // The access mode and O_TRUNC sit in the low 32 bits on every ABI; for
    // an existing file O_CREAT changes nothing, the access mode counts.
    let flags = flags as u32;
    if oflags::is_write(flags) {
        Intent::Write(flags)
    } else {
        Intent::Read
    }
}

/// The intent of system call `nr` with `args`; `read_how` reads the flags
/// of a `struct open_how` at an address in the opener's memory.
pub fn intent(
    abis: &[Abi],
    nr: i64,
    args: &[u64; 6],
    read_how: impl FnOnce(u64) -> io::Result<u64>,
) -> Intent {
    let Some(call) = open_call(abis, nr) else {
        return Intent::Unknown(format!("system call {nr} is not one that opens"));
    };
    let arg = |i: usize| args.get(i).copied().unwrap_or_default();
    match call {
        Flags::Arg(i) => from_flags(arg(i)),
        Flags::Creat => Intent::Write(oflags::O_CREAT | oflags::O_WRONLY | oflags::O_TRUNC),
        Flags::OpenHow(i) => match read_how(arg(i)) {
            Ok(flags) => from_flags(flags),
            Err(e) => Intent::Unknown(format!("cannot read struct open_how at {:#x}: {e}", arg(i))),
        },
        Flags::Exec => Intent::Read,
    }
}

/// Read a `u64` at `addr` in thread `tid`'s memory.
fn read_remote_u64(tid: u32, addr: u64) -> io::Result<u64> {
    let mut buf = [0u8; 8];
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as usize as *mut c_void,
        iov_len: buf.len(),
    };
    // SAFETY: `local` points to our 8-byte buffer; the kernel checks the
    // remote range against the other process's mappings.
    let n = unsafe { libc::process_vm_readv(tid as libc::pid_t, &local, 1, &remote, 1, 0) };
    if n == 8 {
        return Ok(u64::from_ne_bytes(buf));
    }
    let e = if n < 0 {
        os_err()
    } else {
        io::Error::from(io::ErrorKind::UnexpectedEof)
    };
    if e.raw_os_error() != Some(libc::ENOSYS) {
        return Err(e);
    }
    // Kernels without CONFIG_CROSS_MEMORY_ATTACH: /proc/TID/mem.
    let mem = std::fs::File::open(format!("/proc/{tid}/mem"))?;
    mem.read_exact_at(&mut buf, addr)?;
    Ok(u64::from_ne_bytes(buf))
}

/// The intent of the open thread `tid` is blocked in.
fn opener_intent(tid: u32) -> Intent {
    if tid == 0 {
        return Intent::Unknown("the opener is outside guardian's pid namespace".to_owned());
    }
    let path = format!("/proc/{tid}/syscall");
    // The event is queued before the opener goes to sleep waiting for the
    // answer; until it is off the CPU the kernel shows "running". It will
    // sleep (it cannot get past the open without an answer), so wait for
    // that: a few yields, then short sleeps. A preempted opener on a busy
    // machine can take a while to get there; past the deadline, give up.
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut attempt = 0u32;
    let text = loop {
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => return Intent::Unknown(format!("{path}: {e}")),
        };
        if text.trim() != "running" || Instant::now() > deadline {
            break text;
        }
        attempt += 1;
        if attempt < 20 {
            std::thread::yield_now();
        } else {
            std::thread::sleep(Duration::from_micros(100));
        }
    };
    match parse_syscall(&text) {
        None => Intent::Unknown(format!("{path}: unexpected content {:?}", text.trim())),
        Some(SyscallState::Running) => {
            Intent::Unknown("the opener stayed running instead of waiting for its open".to_owned())
        }
        Some(SyscallState::NotInSyscall) => Intent::Unknown(
            "the opener is not in a system call (an open by the kernel on its behalf)".to_owned(),
        ),
        Some(SyscallState::In { nr, args }) => {
            intent(NATIVE, nr, &args, |addr| read_remote_u64(tid, addr))
        }
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

/// What the decision thread knows about the targets.
struct Decider {
    /// Marked inode → index in `paths`.
    files: HashMap<InodeKey, usize>,
    paths: Vec<PathBuf>,
    rules: Rules,
    grants: Arc<Grants>,
}

impl Decider {
    fn new(t: &Targets, files: HashMap<InodeKey, usize>, grants: Arc<Grants>) -> Self {
        Self {
            grants,
            files,
            paths: t.files.iter().map(|(p, _)| p.clone()).collect(),
            rules: Rules::new(t),
        }
    }

    /// Decide on one open of `file` by thread `tid`.
    fn decide(&self, file: &std::fs::File, tid: u32) -> (Judgement, Intent, Option<SecurityEvent>) {
        let intent = opener_intent(tid);
        if intent == Intent::Read {
            return (Judgement::Read, intent, None);
        }
        let key = file.metadata().ok().map(|m| inode_key(&m));
        let id = key.and_then(|k| self.files.get(&k).copied());
        // An inode not in the table cannot carry our mark; if it ever does,
        // judge it as a model (writers only), never as guardian's own.
        let own = id.is_some_and(|i| i >= self.rules.own_from);
        let actor = Actor::of(tid);
        let j = self.rules.judge(&intent, own, actor.exe.as_ref());
        if j == Judgement::OwnWrite {
            return (j, intent, None);
        }
        let exe = actor.exe;
        let path = id.and_then(|i| self.paths.get(i));
        let mut ev = self
            .rules
            .event(actor, tid, path.map(PathBuf::as_path), key);
        if j == Judgement::Allow
            && let (Some(file), Some(exe)) = (key, exe)
            && let Some(writer) = self.rules.writer(&exe)
        {
            self.grants.record(Grant {
                tgid: ev.pid,
                file,
                exe,
                exe_path: writer.clone(),
            });
        }
        let (flags, text) = match &intent {
            Intent::Write(f) => (Some(*f), flags_text(*f)),
            Intent::Unknown(why) => (None, format!("unknown ({why})")),
            Intent::Read => (None, String::new()),
        };
        ev.event = "file_write_open".to_owned();
        ev.verdict = if j == Judgement::Deny {
            "deny"
        } else {
            "allow"
        }
        .to_owned();
        ev.mode = "enforce".to_owned();
        ev.hook = HOOK.to_owned();
        ev.flags = flags;
        ev.flags_text = Some(text);
        (j, intent, Some(ev))
    }
}

/// The decision thread's state.
struct Worker {
    group: OwnedFd,
    wake: Arc<OwnedFd>,
    shared: Arc<Shared>,
    decider: Decider,
    events: Sender<SecurityEvent>,
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

const META_LEN: usize = size_of::<libc::fanotify_event_metadata>();

impl Worker {
    fn run(self) {
        if let Err(e) = self.serve() {
            Shared::bump(&self.shared.errors);
            log::error!(
                "fanotify decision thread stopped: {e}; protected files are no longer guarded by fanotify"
            );
        }
        self.shared.running.store(false, Ordering::Relaxed);
        // Dropping `self.group` closes the group: the kernel allows what
        // is still pending.
    }

    fn serve(&self) -> io::Result<()> {
        read_loop(&self.group, &self.wake, |bytes| self.handle_all(bytes))
    }

    fn handle_all(&self, mut bytes: &[u8]) -> io::Result<()> {
        while bytes.len() >= META_LEN {
            // SAFETY: at least META_LEN bytes; every bit pattern is a valid
            // fanotify_event_metadata.
            let meta: libc::fanotify_event_metadata =
                unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
            if meta.vers != libc::FANOTIFY_METADATA_VERSION {
                // The layout is not the one we know: nothing in the record,
                // not even the descriptor to answer, can be trusted.
                return Err(io::Error::other(format!(
                    "fanotify metadata version {} (expected {})",
                    meta.vers,
                    libc::FANOTIFY_METADATA_VERSION
                )));
            }
            let len = meta.event_len as usize;
            if len < META_LEN || len > bytes.len() {
                return Err(io::Error::other(format!(
                    "fanotify event of {len} bytes in a read of {}",
                    bytes.len()
                )));
            }
            self.handle(&meta);
            bytes = &bytes[len..];
        }
        Ok(())
    }

    fn handle(&self, meta: &libc::fanotify_event_metadata) {
        let s = &self.shared;
        if meta.mask & libc::FAN_Q_OVERFLOW != 0 {
            Shared::bump(&s.errors);
            log::error!("fanotify queue overflow");
        }
        if meta.fd < 0 {
            if meta.mask & libc::FAN_Q_OVERFLOW == 0 {
                Shared::bump(&s.errors);
            }
            return;
        }
        // SAFETY: the kernel opened this descriptor for us with the event;
        // nobody else owns it.
        let file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(meta.fd) });
        if meta.mask & libc::FAN_OPEN_PERM == 0 {
            return;
        }
        let tid = u32::try_from(meta.pid).unwrap_or(0);
        let (j, intent, ev) = self.decider.decide(&file, tid);
        // Counted before answering, so that the counters already include
        // this open when the opener sees its result.
        Shared::bump(&s.decisions);
        if matches!(intent, Intent::Unknown(_)) {
            Shared::bump(&s.undecidable);
        }
        match j {
            Judgement::Read => Shared::bump(&s.reads),
            Judgement::OwnWrite | Judgement::Allow => Shared::bump(&s.allowed),
            Judgement::Deny => Shared::bump(&s.denied),
        }
        let allow = j != Judgement::Deny;
        let response = libc::fanotify_response {
            fd: meta.fd,
            response: if allow {
                libc::FAN_ALLOW
            } else {
                libc::FAN_DENY
            },
        };
        loop {
            // SAFETY: valid descriptor; the response is a plain 8-byte struct.
            let n = unsafe {
                libc::write(
                    self.group.as_raw_fd(),
                    (&response as *const libc::fanotify_response).cast::<c_void>(),
                    size_of::<libc::fanotify_response>(),
                )
            };
            if n == size_of::<libc::fanotify_response>() as isize {
                break;
            }
            let e = os_err();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            // ENOENT: the opener was killed while it waited. Anything else
            // leaves it waiting until the group is closed.
            Shared::bump(&s.errors);
            log::warn!("fanotify answer for thread {tid} not taken: {e}");
            break;
        }
        drop(file);
        if let Some(ev) = ev
            && self.events.send(ev).is_err()
        {
            Shared::bump(&s.unreported);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_syscall() {
        assert_eq!(parse_syscall("running\n"), Some(SyscallState::Running));
        assert_eq!(
            parse_syscall("-1 0x7ffd5b1c8e58 0x7f3a2b1c4d5e\n"),
            Some(SyscallState::NotInSyscall)
        );
        assert_eq!(
            parse_syscall(
                "257 0xffffff9c 0x55d0c0ffee00 0x441 0x1b6 0x0 0x0 0x7ffd5b1c8e58 0x7f3a2b1c4d5e\n"
            ),
            Some(SyscallState::In {
                nr: 257,
                args: [0xffff_ff9c, 0x55d0_c0ff_ee00, 0x441, 0x1b6, 0, 0],
            })
        );
        for bad in [
            "",
            "257 0x1 0x2",
            "257 1 2 3 4 5 6 7 8",
            "x 0x1 0x2 0x3 0x4 0x5 0x6 0x7 0x8",
            "-1 0x1",
            "257 0x1 0x2 0x3 0x4 0x5 0x6 0x7 0x8 0x9",
        ] {
            assert_eq!(parse_syscall(bad), None, "{bad:?}");
        }
    }

    fn no_how(_: u64) -> io::Result<u64> {
        panic!("no open_how expected")
    }

    #[test]
    fn decodes_flags_per_abi() {
        let o = |flags: u32| u64::from(flags);
        let (wr, rdwr, creat, trunc, append) = (
            oflags::O_WRONLY,
            oflags::O_RDWR,
            oflags::O_CREAT,
            oflags::O_TRUNC,
            oflags::O_APPEND,
        );
        // x86_64 openat: flags in argument 2.
        let args = [0xffff_ff9c, 0x1000, o(wr | creat | append), 0o644, 0, 0];
        assert_eq!(
            intent(&[X86_64], 257, &args, no_how),
            Intent::Write(wr | creat | append)
        );
        // open: argument 1; O_CREAT on a read-only open is a read.
        let args = [0x1000, o(creat), 0o644, 0, 0, 0];
        assert_eq!(intent(&[X86_64], 2, &args, no_how), Intent::Read);
        // O_RDONLY|O_TRUNC truncates.
        let args = [0x1000, o(trunc), 0, 0, 0, 0];
        assert_eq!(intent(&[X86_64], 2, &args, no_how), Intent::Write(trunc));
        // x32 openat.
        let args = [0, 0x1000, o(rdwr), 0, 0, 0];
        assert_eq!(
            intent(&[X86_64], 0x4000_0000 | 257, &args, no_how),
            Intent::Write(rdwr)
        );
        // creat always writes, whatever its arguments.
        assert_eq!(
            intent(&[X86_64], 85, &[0; 6], no_how),
            Intent::Write(creat | wr | trunc)
        );
        assert_eq!(
            intent(&[I386], 8, &[0; 6], no_how),
            Intent::Write(creat | wr | trunc)
        );
        // openat2: the flags come from the opener's memory.
        let args = [0xffff_ff9c, 0x1000, 0x2000, 24, 0, 0];
        assert_eq!(
            intent(&[X86_64], 437, &args, |addr| {
                assert_eq!(addr, 0x2000);
                Ok(o(wr))
            }),
            Intent::Write(wr)
        );
        assert_eq!(intent(&[AARCH64], 437, &args, |_| Ok(0)), Intent::Read);
        assert!(matches!(
            intent(&[AARCH64], 437, &args, |_| Err(io::Error::from_raw_os_error(libc::ESRCH))),
            Intent::Unknown(why) if why.contains("0x2000")
        ));
        // aarch64 openat is 56; its 2 (x86_64 open) is io_cancel.
        let args = [0xffff_ff9c, 0x1000, o(rdwr), 0, 0, 0];
        assert_eq!(intent(&[AARCH64], 56, &args, no_how), Intent::Write(rdwr));
        assert!(matches!(
            intent(&[AARCH64], 2, &args, no_how),
            Intent::Unknown(_)
        ));
        // 32-bit arm openat (322) and open (5).
        assert_eq!(
            intent(&[AARCH64, ARM], 322, &args, no_how),
            Intent::Write(rdwr)
        );
        let args = [0x1000, o(wr), 0, 0, 0, 0];
        assert_eq!(intent(&[AARCH64, ARM], 5, &args, no_how), Intent::Write(wr));
        // exec opens for reading.
        for (abi, nr) in [
            (X86_64, 59),
            (X86_64, 322),
            (I386, 11),
            (AARCH64, 221),
            (ARM, 387),
        ] {
            assert_eq!(
                intent(&[abi], nr, &[0; 6], no_how),
                Intent::Read,
                "{}",
                abi.name
            );
        }
        // A system call that opens on the kernel's behalf: undecidable.
        let swapon = 167;
        assert!(matches!(
            intent(&[X86_64, I386], swapon, &[0; 6], no_how),
            Intent::Unknown(why) if why.contains("167")
        ));
    }

    #[test]
    fn native_and_compat_tables_agree_where_they_overlap() {
        // A thread's ABI is not in /proc/TID/syscall, so a number must mean
        // the same open in both tables of a kernel, or be in only one.
        for (native, compat) in [(X86_64, I386), (AARCH64, ARM)] {
            for (n, f) in native.calls {
                if let Some((_, g)) = compat.calls.iter().find(|(m, _)| m == n) {
                    assert_eq!(f, g, "{} vs {} at {n}", native.name, compat.name);
                }
            }
        }
        assert!(!NATIVE.is_empty(), "no tables for this architecture");
    }

    #[test]
    fn reads_the_real_proc_syscall_of_a_blocked_thread() {
        // A thread blocked in read(2) on a pipe: the format this module
        // parses, from this kernel.
        let mut fds = [0; 2];
        // SAFETY: valid array of two ints.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = fds[0];
        let t = std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            tx.send(unsafe { libc::gettid() }).unwrap();
            let mut b = [0u8; 1];
            // SAFETY: valid descriptor and buffer.
            unsafe { libc::read(reader, b.as_mut_ptr().cast(), 1) };
        });
        let tid = rx.recv().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let state = loop {
            let text = std::fs::read_to_string(format!("/proc/{tid}/syscall")).unwrap();
            match parse_syscall(&text) {
                Some(SyscallState::In { nr, args }) if nr == libc::SYS_read => break args,
                other => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "{other:?} from {text:?}"
                    );
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            }
        };
        assert_eq!(state[0], reader as u64);
        assert_eq!(state[2], 1);
        // SAFETY: valid descriptor and buffer.
        unsafe { libc::write(fds[1], b"x".as_ptr().cast(), 1) };
        t.join().unwrap();
        // SAFETY: our descriptors.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
    }

    #[test]
    fn reads_open_how_flags_from_process_memory() {
        // struct open_how: flags, mode, resolve.
        let how: [u64; 3] = [u64::from(oflags::O_RDWR | oflags::O_APPEND), 0o644, 0];
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() } as u32;
        let got = read_remote_u64(tid, how.as_ptr() as u64).unwrap();
        assert_eq!(got, how[0]);
        assert!(read_remote_u64(tid, 8).is_err(), "page 0 is never mapped");
    }

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
