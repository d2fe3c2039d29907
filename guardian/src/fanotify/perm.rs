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
//! [`crate::targets::inode_key`] keys, never by name or `comm`.
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
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    sync::{
        Arc, PoisonError, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
};

use guardian_common::InodeKey;
use serde::Serialize;

use super::{
    Actor, EventSender, Judgement, Rules, eventfd,
    intent::{Intent, NATIVE, opener_intent},
    os_err, owned, read_loop, report, stop_thread,
};
use crate::{
    events::{SecurityEvent, flags_text},
    hooks::{Mode, Verdict},
    targets::{Targets, inode_key},
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
    /// The decision thread has stopped: there is no group to mark.
    #[error("the fanotify decision thread has stopped")]
    Stopped,
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
    /// Events the daemon's queue could not take: it was full (the
    /// event loop fell behind), or the receiver was gone.
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
/// notification rung ([`super::notify`]): it learns who changed a file from
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
    /// The group, owned by the decision thread: when it stops, the group
    /// closes and the kernel allows what waits (a strong reference here
    /// would leave those opens waiting for an answer that never comes).
    group: std::sync::Weak<OwnedFd>,
    /// The rule and the files the decision thread judges by, swapped
    /// whole on [`FanotifyGuard::refresh`].
    decider: Arc<RwLock<Arc<Decider>>>,
    /// Every inode carrying a mark, with the path it was marked by.
    marks: HashMap<InodeKey, PathBuf>,
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

/// [`mark`], saying so when the file found is not the one resolved.
fn mark_expected(
    group: &OwnedFd,
    path: &Path,
    expected: &InodeKey,
) -> Result<InodeKey, FanotifyError> {
    let key = mark(group, path)?;
    if key != *expected {
        log::warn!(
            "protected file {} was replaced since it was resolved; marked the file there now",
            path.display()
        );
    }
    Ok(key)
}

/// Take the marks of `mask` off the inode `key`, found at `path`
/// (through a descriptor: never off another file now at that path).
pub(super) fn unmark(group: &OwnedFd, path: &Path, key: &InodeKey, mask: u64) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(path)?;
    if inode_key(&file.metadata()?) != *key {
        return Err(io::Error::other("another file is at that path now"));
    }
    let proc_path = std::ffi::CString::new(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .map_err(io::Error::other)?;
    // SAFETY: valid descriptor and C string.
    let r = unsafe {
        libc::fanotify_mark(
            group.as_raw_fd(),
            libc::FAN_MARK_REMOVE | libc::FAN_MARK_INODE,
            mask,
            libc::AT_FDCWD,
            proc_path.as_ptr(),
        )
    };
    if r == 0 { Ok(()) } else { Err(os_err()) }
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
    pub fn start(targets: &Targets, events: EventSender) -> Result<Self, FanotifyError> {
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
        let mut marks = HashMap::new();
        for (id, (path, expected)) in targets.files.iter().enumerate() {
            let key = mark_expected(&group, path, expected)?;
            files.insert(key, id);
            marks.insert(key, path.clone());
        }
        let wake = eventfd().map_err(|source| FanotifyError::Thread {
            what: "eventfd",
            source,
        })?;
        let wake = Arc::new(wake);
        let shared = Arc::new(Shared::default());
        shared.running.store(true, Ordering::Relaxed);
        let grants = Arc::new(Grants::default());
        let decider = Arc::new(RwLock::new(Arc::new(Decider::new(
            targets,
            files,
            Arc::clone(&grants),
        ))));
        let group = Arc::new(group);
        let weak = Arc::downgrade(&group);
        let worker = Worker {
            group,
            wake: Arc::clone(&wake),
            shared: Arc::clone(&shared),
            decider: Arc::clone(&decider),
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
            group: weak,
            decider,
            marks,
        })
    }

    /// Follow new targets (a policy reload): mark the files they add, judge
    /// by their writers and files from now on, then unmark the files they
    /// no longer protect. Marks go on before the rule changes and come off
    /// after it, so a file protected before and after is never unmarked in
    /// between; a newly marked file judged by the previous rule is judged
    /// as a model (writers only).
    pub fn refresh(&mut self, targets: &Targets) -> Result<(), FanotifyError> {
        let group = self.group.upgrade().ok_or(FanotifyError::Stopped)?;
        let mut files = HashMap::new();
        let mut marks = HashMap::new();
        for (id, (path, expected)) in targets.files.iter().enumerate() {
            // An inode mark stays on the inode: one already placed holds.
            let key = if self.marks.contains_key(expected) {
                *expected
            } else {
                let key = mark_expected(&group, path, expected)?;
                // Known from now on, even if a later file fails.
                self.marks.insert(key, path.clone());
                key
            };
            files.insert(key, id);
            marks.insert(key, path.clone());
        }
        let decider = Arc::new(Decider::new(targets, files, Arc::clone(&self.grants)));
        *self.decider.write().unwrap_or_else(PoisonError::into_inner) = decider;
        for (key, path) in &self.marks {
            if !marks.contains_key(key)
                && let Err(e) = unmark(&group, path, key, libc::FAN_OPEN_PERM)
            {
                // Still marked: judged as a model (writers only).
                log::warn!(
                    "fanotify: {} is no longer protected but keeps its mark: {e}",
                    path.display()
                );
            }
        }
        self.marks = marks;
        Ok(())
    }

    /// How many inodes carry a mark.
    pub fn marked(&self) -> usize {
        self.marks.len()
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
            Verdict::Deny
        } else {
            Verdict::Allow
        };
        ev.mode = Mode::Enforce;
        ev.hook = HOOK.to_owned();
        ev.flags = flags;
        ev.flags_text = Some(text);
        (j, intent, Some(ev))
    }
}

/// The decision thread's state.
struct Worker {
    /// The only strong reference to the group: it closes with the thread.
    group: Arc<OwnedFd>,
    wake: Arc<OwnedFd>,
    shared: Arc<Shared>,
    decider: Arc<RwLock<Arc<Decider>>>,
    events: EventSender,
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
        let decider = Arc::clone(&self.decider.read().unwrap_or_else(PoisonError::into_inner));
        let (j, intent, ev) = decider.decide(&file, tid);
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
            && !report(&self.events, ev)
        {
            Shared::bump(&s.unreported);
        }
    }
}
