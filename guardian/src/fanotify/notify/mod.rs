//! The notification rung: fanotify reports changes to protected files
//! where no kernel program watches them.
//!
//! On kernels without BPF LSM, the detect form of the file hooks is a
//! syscall tracepoint, which puts every system call of every process on the
//! kernel's slow path to find the few that touch a protected file. A
//! fanotify *notification* group costs unprotected files nothing: guardian
//! puts an inode mark on each protected file, and only events on those
//! inodes are ever queued. A reader thread turns each into a
//! [`SecurityEvent`](crate::events::SecurityEvent) with mode `detect`: nothing is stopped, the change has
//! already happened, and the event says who did it.
//!
//! | fanotify event | what did it | `event` |
//! |---|---|---|
//! | `FAN_MODIFY` | a write through any descriptor (one opened before guardian started included), `truncate`, `ftruncate`, an `O_TRUNC` open | `file_write` |
//! | `FAN_ATTRIB`, more links than before | `link` | `file_link` |
//! | `FAN_ATTRIB`, fewer links than before | `unlink`, a rename *over* the file | `file_unlink` |
//! | `FAN_ATTRIB`, same links | `chmod`, `chown`, `utimes`, `setxattr` | `file_setattr` |
//! | `FAN_MOVE_SELF` | a rename of the file away | `file_rename` |
//! | `FAN_DELETE_SELF` | the inode's last name and user gone | `file_unlink` |
//!
//! `FAN_ATTRIB` does not say which attribute changed: the reader keeps a
//! descriptor to each file (an `O_PATH` one: it needs no read permission
//! and is not an open the permission rung or anyone else is told about),
//! `fstat`s it, and compares link count, mode, owner and group with what it
//! saw last; `flags_text` names the difference (`nlink 1→2`,
//! `mode 0644→0666`). The same descriptor keeps the inode alive, so
//! `FAN_DELETE_SELF` is rarely seen: removing the last name shows up as
//! `FAN_ATTRIB` with the link count going to 0.
//!
//! The verdict follows the rule of the other rungs, by the inode of the
//! writer's executable ([`crate::targets::inode_key`] of `/proc/PID/exe`):
//! guardian's own executable changing guardian's own files is counted and
//! not reported; an allowed writer changing a model is `allow`; anything
//! else is `alert`. fanotify reports the group owner's own changes like any
//! other process's, so guardian's own writes go through the same rule.
//!
//! # Limits (what the other rungs have to cover)
//!
//! - **Writes through a shared writable mapping produce no event**: the
//!   page cache is changed without a system call fanotify sees.
//! - **Events only while the agent runs**: the marks go with the group.
//! - **The writer is identified after the fact**, by the pid in the event:
//!   a process that has already exited is reported without `exe` (as soon
//!   as it exits: a zombie still has its status and comm, not its
//!   executable; short-lived tools such as `chmod` or `mv` are usually
//!   gone by the time the event is read), and so as `alert` even if it was
//!   an allowed writer; one that exec'd since is reported with its new
//!   executable.
//!   A pid reused in between would be misattributed (`FAN_REPORT_PIDFD`,
//!   kernel 5.15, could close that; not used yet).
//! - **Events merge**: the kernel folds an event into an identical one
//!   still queued (same file, same pid), so several writes by one process
//!   may be one `file_write`, and a record may carry several kinds of
//!   change (each becomes its own event).
//! - **Attribute changes are classified when read**, against the state
//!   seen at the previous event: changes that cancel out before the reader
//!   gets to them (a link made and removed at once) are reported as
//!   `file_setattr` saying no difference was visible, never dropped.
//! - **A full queue drops events**: the queue is left bounded (16384
//!   events) so a flood cannot pin kernel memory; the kernel then queues a
//!   single `FAN_Q_OVERFLOW`, which is counted and logged as an error.
//! - Needs `FAN_REPORT_FID` (kernel 5.1) for `FAN_ATTRIB`, `FAN_MOVE_SELF`
//!   and `FAN_DELETE_SELF`, and a filesystem that can encode file handles
//!   and has an fsid (before 6.5 and 6.8 respectively, not every one does).

use std::{
    collections::HashMap,
    fs::File,
    io,
    os::{
        fd::{AsRawFd as _, OwnedFd},
        unix::fs::OpenOptionsExt as _,
    },
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
};

use guardian_common::InodeKey;
use serde::Serialize;

pub use super::change::{FileState, Verdict, attrib_change, judge};
use super::{
    Actor, EventSender, Grants, Intent, Rules,
    change::verdict,
    eventfd,
    fid::{Fid, ParseError, Record, fsid_of, handle_of, parse_records},
    os_err, owned, read_loop, report, stop_thread,
};
use crate::{
    hooks::{self, Hook, Mode},
    targets::{Targets, inode_key},
};

/// The hook name of events from `FAN_MODIFY`.
pub const HOOK_MODIFY: &str = "fanotify/modify";
/// The hook name of events from `FAN_ATTRIB`.
pub const HOOK_ATTRIB: &str = "fanotify/attrib";
/// The hook name of events from `FAN_MOVE_SELF`.
pub const HOOK_MOVE_SELF: &str = "fanotify/move_self";
/// The hook name of events from `FAN_DELETE_SELF`.
pub const HOOK_DELETE_SELF: &str = "fanotify/delete_self";

/// Every event this rung can ask for on a protected file.
pub const MASK: u64 =
    libc::FAN_MODIFY | libc::FAN_ATTRIB | libc::FAN_MOVE_SELF | libc::FAN_DELETE_SELF;

/// The guard's hooks this rung can report, and the events each needs.
pub const HOOKS: [(Hook, u64); 5] = hooks::NOTIFY;

/// The events to ask for when the hooks for which `uncovered` is true
/// have no other form (0: nothing to do).
pub fn mask_for(uncovered: impl Fn(Hook) -> bool) -> u64 {
    HOOKS
        .iter()
        .filter(|(h, _)| uncovered(*h))
        .fold(0, |m, (_, bits)| m | bits)
}

/// Why the rung could not start. [`WatchError::is_unavailable`] tells a
/// kernel or privilege that cannot do it apart from a bad target.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The kernel or the privileges cannot give these notification events.
    #[error("fanotify notification events are unavailable: {0}")]
    Unavailable(String),
    /// `fanotify_init` failed for another reason.
    #[error("fanotify_init: {0}")]
    Init(#[source] io::Error),
    /// The reader thread has stopped: there is no group to mark.
    #[error("the fanotify watch thread has stopped")]
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
    /// The reader thread or its wake-up descriptor could not be set up.
    #[error("fanotify watch thread: {what}: {source}")]
    Thread {
        /// The step that failed.
        what: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
}

impl WatchError {
    /// True when this kernel or these privileges cannot run the rung at all
    /// (the guard should fall to the next rung); false for a problem with
    /// one of the targets.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// Counters of the reader thread.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct WatchStats {
    /// Changes to protected files seen (one per kind of change in a
    /// record): `alerts + allowed + own`.
    pub events: u64,
    /// Changes by anything not allowed to make them (event `alert`).
    pub alerts: u64,
    /// Changes to a model by an allowed writer (event `allow`).
    pub allowed: u64,
    /// Changes to guardian's own files by guardian (no event).
    pub own: u64,
    /// `FAN_Q_OVERFLOW`: the kernel's queue was full and dropped events.
    pub overflows: u64,
    /// Events whose file handle matches no protected file.
    pub unknown: u64,
    /// Failures: malformed records, an inode that could not be `fstat`ed,
    /// a stopped reader thread.
    pub errors: u64,
    /// Events the daemon's queue could not take: it was full (the
    /// event loop fell behind), or the receiver was gone.
    pub unreported: u64,
    /// The reader thread is running (false after a fatal error or stop).
    pub running: bool,
}

#[derive(Default)]
struct Shared {
    events: AtomicU64,
    alerts: AtomicU64,
    allowed: AtomicU64,
    own: AtomicU64,
    overflows: AtomicU64,
    unknown: AtomicU64,
    errors: AtomicU64,
    unreported: AtomicU64,
    running: AtomicBool,
}

impl Shared {
    fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> WatchStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        WatchStats {
            events: get(&self.events),
            alerts: get(&self.alerts),
            allowed: get(&self.allowed),
            own: get(&self.own),
            overflows: get(&self.overflows),
            unknown: get(&self.unknown),
            errors: get(&self.errors),
            unreported: get(&self.unreported),
            running: self.running.load(Ordering::Relaxed),
        }
    }
}

/// One protected inode and what the reader knows about it.
struct Watched {
    /// Index in `Targets::files`.
    id: usize,
    path: PathBuf,
    key: InodeKey,
    fsid: [u8; 8],
    /// An `O_PATH` descriptor to the inode, held for the watcher's
    /// lifetime: `fstat` through it says what a `FAN_ATTRIB` changed, and
    /// `/proc/self/fd/N` where a `FAN_MOVE_SELF` took it.
    file: File,
    state: FileState,
    /// Its file handle: type and bytes, as FID records carry it.
    handle: (i32, Vec<u8>),
}

/// `fanotify_init` with the flags the rung needs, with a reason when the
/// kernel or the caller cannot.
fn init_group() -> Result<OwnedFd, WatchError> {
    // FAN_REPORT_FID: without it, FAN_ATTRIB, FAN_MOVE_SELF and
    // FAN_DELETE_SELF cannot be asked for (they have no open file to hand
    // over). No FAN_UNLIMITED_QUEUE: an overflow costs events, not the
    // machine's memory, and is counted.
    let flags = libc::FAN_CLASS_NOTIF
        | libc::FAN_CLOEXEC
        | libc::FAN_NONBLOCK
        | libc::FAN_REPORT_FID
        | libc::FAN_UNLIMITED_MARKS;
    let event_flags = (libc::O_RDONLY | libc::O_CLOEXEC) as libc::c_uint;
    // SAFETY: plain system call, no pointers.
    let fd = unsafe { libc::fanotify_init(flags, event_flags) };
    owned(fd).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOSYS) => {
            WatchError::Unavailable(format!("kernel built without CONFIG_FANOTIFY ({e})"))
        }
        Some(libc::EPERM) => WatchError::Unavailable(format!(
            "fanotify_init needs CAP_SYS_ADMIN; run as root ({e})"
        )),
        Some(libc::EINVAL) => {
            // Tell a kernel without FAN_REPORT_FID from one refusing even
            // the plainest group.
            let plain = libc::FAN_CLASS_NOTIF | libc::FAN_CLOEXEC;
            // SAFETY: as above.
            let probe = owned(unsafe { libc::fanotify_init(plain, event_flags) });
            WatchError::Unavailable(if probe.is_ok() {
                format!("kernel older than 5.1: no FAN_REPORT_FID ({e})")
            } else {
                format!("fanotify_init refuses a notification group ({e})")
            })
        }
        _ => WatchError::Init(e),
    })
}

/// Open a protected file with `O_PATH`, learn its handle and filesystem
/// id, and put the inode mark on it.
fn mark(group: &OwnedFd, id: usize, path: &Path, mask: u64) -> Result<Watched, WatchError> {
    let err = |what| {
        move |source| WatchError::Mark {
            path: path.to_owned(),
            what,
            source,
        }
    };
    // One descriptor for everything that follows ties the handle, the
    // stat and the mark to the same inode, whatever happens to the path.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(path)
        .map_err(err("cannot open it (O_PATH) to watch it"))?;
    let meta = file.metadata().map_err(err("cannot stat it"))?;
    if !meta.is_file() {
        return Err(err("cannot watch it")(io::Error::other(
            "not a regular file",
        )));
    }
    let handle = handle_of(&file).map_err(err(
        "name_to_handle_at (fanotify FID events need a filesystem that encodes file handles)",
    ))?;
    let fsid = fsid_of(&file).map_err(err("fstatfs"))?;
    // fanotify_mark cannot take an O_PATH descriptor as the object (it
    // wants a file it can fdget()), but the magic link to it resolves to
    // exactly its inode.
    let proc_path = std::ffi::CString::new(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .map_err(|e| err("fanotify_mark")(io::Error::other(e)))?;
    // SAFETY: valid descriptor and C string.
    let r = unsafe {
        libc::fanotify_mark(
            group.as_raw_fd(),
            libc::FAN_MARK_ADD | libc::FAN_MARK_INODE,
            mask,
            libc::AT_FDCWD,
            proc_path.as_ptr(),
        )
    };
    if r != 0 {
        let e = os_err();
        return Err(match e.raw_os_error() {
            Some(libc::EPERM) => WatchError::Unavailable(format!(
                "fanotify mark on {} refused: needs CAP_SYS_ADMIN ({e})",
                path.display()
            )),
            Some(libc::ENODEV) => err(
                "fanotify_mark (the filesystem has no fsid, which FID reporting needs before 6.8)",
            )(e),
            Some(libc::EOPNOTSUPP) | Some(libc::EXDEV) => err(
                "fanotify_mark (FID reporting is not supported on this filesystem or subvolume)",
            )(e),
            _ => err("fanotify_mark FAN_MODIFY|FAN_ATTRIB|FAN_MOVE_SELF|FAN_DELETE_SELF")(e),
        });
    }
    let w = Watched {
        id,
        path: path.to_owned(),
        key: inode_key(&meta),
        fsid,
        file,
        state: FileState::of(&meta),
        handle,
    };
    Ok(w)
}

/// Take the marks of `mask` off a watched inode, through its descriptor.
fn unmark(group: &OwnedFd, w: &Watched, mask: u64) -> io::Result<()> {
    let proc_path = std::ffi::CString::new(format!("/proc/self/fd/{}", w.file.as_raw_fd()))
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

/// Index watched inodes by file handle.
fn index(watched: &[Watched]) -> HashMap<(i32, Vec<u8>), Vec<usize>> {
    let mut handles: HashMap<(i32, Vec<u8>), Vec<usize>> = HashMap::new();
    for (i, w) in watched.iter().enumerate() {
        handles.entry(w.handle.clone()).or_default().push(i);
    }
    handles
}

/// Mark what `targets` protect: each inode once (a second name is judged
/// as the first entry), reusing the entries of `known` (already marked)
/// and marking the rest. On an error the marks placed here are taken off
/// again.
fn mark_all(
    group: &OwnedFd,
    targets: &Targets,
    mask: u64,
    known: &mut HashMap<InodeKey, Watched>,
) -> Result<Vec<Watched>, WatchError> {
    let mut watched: Vec<Watched> = Vec::new();
    let mut fresh = Vec::new();
    for (id, (path, expected)) in targets.files.iter().enumerate() {
        let w = match known.remove(expected) {
            Some(mut w) => {
                w.id = id;
                w.path = path.clone();
                w
            }
            None => match mark(group, id, path, mask) {
                Ok(w) => {
                    fresh.push(w.key);
                    w
                }
                Err(e) => {
                    // Back as they were: the entries reused stay known
                    // (and marked), the marks placed here come off.
                    for w in watched {
                        if fresh.contains(&w.key) {
                            let _ = unmark(group, &w, mask);
                        } else {
                            known.insert(w.key, w);
                        }
                    }
                    return Err(e);
                }
            },
        };
        if w.key != *expected {
            log::warn!(
                "protected file {} was replaced since it was resolved; watching the file there now",
                path.display()
            );
        }
        if let Some(first) = watched.iter().find(|o| o.key == w.key) {
            // The same inode twice (a second name): one mark, judged as
            // the first entry.
            log::debug!(
                "{} is the inode of {}; watched once",
                path.display(),
                first.path.display()
            );
            continue;
        }
        watched.push(w);
    }
    Ok(watched)
}

/// A running notification rung: the group with its marks and the reader
/// thread. Dropping it stops it, like [`Watcher::stop`].
pub struct Watcher {
    shared: Arc<Shared>,
    wake: Arc<OwnedFd>,
    thread: Option<JoinHandle<()>>,
    /// The group, owned by the reader thread (its marks go with it).
    group: std::sync::Weak<OwnedFd>,
    /// What the reader knows, shared so that a refresh can change it
    /// between two reads.
    state: Arc<Mutex<State>>,
    /// The events asked for on each file.
    mask: u64,
}

impl Watcher {
    /// Mark every file of `targets` and start the reader thread. Every
    /// change to a protected file, except guardian's to its own, becomes an
    /// event sent to `events`.
    ///
    /// Start-up order:
    /// 1. Create the group (nothing is watched yet).
    /// 2. Open, stat and mark every protected file. A file that cannot be
    ///    marked stops the start, naming it; the marks already placed go
    ///    with the group. The state recorded here is what the first
    ///    `FAN_ATTRIB` is compared with.
    /// 3. Start the reader thread; changes from the first mark to here wait
    ///    in the queue.
    pub fn start(targets: &Targets, events: EventSender) -> Result<Self, WatchError> {
        Self::start_with(targets, MASK, None, events)
    }

    /// [`Watcher::start`] asking only for the events of `mask` (a subset of
    /// [`MASK`]; see [`mask_for`]), so that a change another form already
    /// reports is not reported twice; with the permission rung's `grants`,
    /// an allowed writer that has exited before its change is read is
    /// still recognised (see [`Grants`]).
    pub fn start_with(
        targets: &Targets,
        mask: u64,
        grants: Option<Arc<Grants>>,
        events: EventSender,
    ) -> Result<Self, WatchError> {
        let mask = mask & MASK;
        let group = init_group()?;
        let watched = mark_all(&group, targets, mask, &mut HashMap::new())?;
        let wake = Arc::new(eventfd().map_err(|source| WatchError::Thread {
            what: "eventfd",
            source,
        })?);
        let shared = Arc::new(Shared::default());
        shared.running.store(true, Ordering::Relaxed);
        let state = Arc::new(Mutex::new(State {
            shared: Arc::clone(&shared),
            handles: index(&watched),
            watched,
            rules: Rules::new(targets),
            grants,
            events,
        }));
        let group = Arc::new(group);
        let weak = Arc::downgrade(&group);
        let reader = Reader {
            group,
            wake: Arc::clone(&wake),
            state: Arc::clone(&state),
        };
        let thread = std::thread::Builder::new()
            .name("guardian-watch".to_owned())
            .spawn(move || reader.run())
            .map_err(|source| WatchError::Thread {
                what: "spawn",
                source,
            })?;
        Ok(Self {
            shared,
            wake,
            thread: Some(thread),
            group: weak,
            state,
            mask,
        })
    }

    /// Follow new targets (a policy reload): mark the files they add,
    /// judge by their writers from now on, then unmark the files they no
    /// longer protect. A file watched before and after keeps its mark and
    /// the state its next `FAN_ATTRIB` is compared with.
    pub fn refresh(&mut self, targets: &Targets) -> Result<(), WatchError> {
        let group = self.group.upgrade().ok_or(WatchError::Stopped)?;
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut known: HashMap<InodeKey, Watched> =
            st.watched.drain(..).map(|w| (w.key, w)).collect();
        let result = mark_all(&group, targets, self.mask, &mut known);
        let watched = match result {
            Ok(w) => w,
            Err(e) => {
                // The previous set stays watched, as it was.
                let mut back: Vec<Watched> = known.into_values().collect();
                back.sort_by_key(|w| w.id);
                st.handles = index(&back);
                st.watched = back;
                return Err(e);
            }
        };
        st.handles = index(&watched);
        st.watched = watched;
        st.rules = Rules::new(targets);
        drop(st);
        for w in known.into_values() {
            if let Err(e) = unmark(&group, &w, self.mask) {
                log::warn!(
                    "fanotify watch: {} is no longer protected but keeps its mark: {e}",
                    w.path.display()
                );
            }
        }
        Ok(())
    }

    /// How many inodes carry a mark.
    pub fn marked(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .watched
            .len()
    }

    /// The counters so far.
    pub fn stats(&self) -> WatchStats {
        self.shared.snapshot()
    }

    /// Stop the reader thread and close the group (the marks go with it).
    /// Events still queued are not read. Returns the final counters.
    pub fn stop(mut self) -> WatchStats {
        self.shutdown();
        self.shared.snapshot()
    }

    fn shutdown(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        stop_thread(thread, &self.wake, &self.shared.errors, "watch");
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The reader thread: the group, its wake-up, and what it knows.
struct Reader {
    /// The only strong reference to the group: it closes with the thread.
    group: Arc<OwnedFd>,
    wake: Arc<OwnedFd>,
    state: Arc<Mutex<State>>,
}

/// What the reader knows about the targets.
struct State {
    shared: Arc<Shared>,
    watched: Vec<Watched>,
    /// (handle type, handle) → indexes in `watched` (more than one only
    /// when two filesystems encode the same handle; the fsid decides).
    handles: HashMap<(i32, Vec<u8>), Vec<usize>>,
    rules: Rules,
    /// The permission rung's allowed write-opens, when it runs.
    grants: Option<Arc<Grants>>,
    events: EventSender,
}

/// The kinds of change, in the order a record's bits are reported.
const KINDS: [(u64, &str); 4] = [
    (libc::FAN_MODIFY, HOOK_MODIFY),
    (libc::FAN_ATTRIB, HOOK_ATTRIB),
    (libc::FAN_MOVE_SELF, HOOK_MOVE_SELF),
    (libc::FAN_DELETE_SELF, HOOK_DELETE_SELF),
];

impl Reader {
    fn run(self) {
        let Self { group, wake, state } = self;
        let lock = || state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(e) = read_loop(&group, &wake, |bytes| lock().handle_all(bytes)) {
            Shared::bump(&lock().shared.errors);
            log::error!(
                "fanotify watch thread stopped: {e}; changes to protected files are no longer reported by fanotify"
            );
        }
        lock().shared.running.store(false, Ordering::Relaxed);
        // Dropping `group` closes the group and removes the marks.
    }
}

impl State {
    fn handle_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        let (records, err) = parse_records(bytes);
        for r in &records {
            self.handle(r);
        }
        match err {
            None => Ok(()),
            Some(ParseError::Version(v)) => Err(io::Error::other(format!(
                "fanotify metadata version {v} (expected {})",
                libc::FANOTIFY_METADATA_VERSION
            ))),
            Some(ParseError::Malformed(what)) => {
                // Each read returns whole records, so the next one starts
                // clean; only the rest of this one is lost.
                Shared::bump(&self.shared.errors);
                log::error!("fanotify watch: malformed event, rest of the read dropped: {what}");
                Ok(())
            }
        }
    }

    fn find(&self, fid: &Fid) -> Option<usize> {
        let candidates = self.handles.get(&(fid.handle_type, fid.handle.clone()))?;
        candidates
            .iter()
            .copied()
            .find(|&i| self.watched.get(i).is_some_and(|w| w.fsid == fid.fsid))
            // A filesystem without a real fsid (6.8+ allows inode marks on
            // one) may report another one than fstatfs; a single candidate
            // is still unambiguous.
            .or_else(|| (candidates.len() == 1).then(|| candidates[0]))
    }

    fn handle(&mut self, r: &Record) {
        let s = Arc::clone(&self.shared);
        if r.mask & libc::FAN_Q_OVERFLOW != 0 {
            Shared::bump(&s.overflows);
            log::error!(
                "fanotify queue overflow: changes to protected files were dropped unreported"
            );
            return;
        }
        let Some(fid) = &r.fid else {
            Shared::bump(&s.errors);
            log::error!("fanotify event {:#x} without a file handle", r.mask);
            return;
        };
        let Some(i) = self.find(fid) else {
            Shared::bump(&s.unknown);
            log::warn!(
                "fanotify event {:#x} on a file handle that matches no protected file",
                r.mask
            );
            return;
        };
        let pid = u32::try_from(r.pid).unwrap_or(0);
        let mut actor = Actor::of(pid);
        let own = self
            .watched
            .get(i)
            .is_some_and(|w| w.id >= self.rules.own_from);
        // A writer gone before its change was read: the permission rung
        // may have allowed its write-open, naming its executable then.
        if actor.exe.is_none()
            && !own
            && let (Some(g), Some(w)) = (self.grants.as_ref(), self.watched.get(i))
            && let Some(grant) = g.find(pid, &w.key)
        {
            actor.exe = Some(grant.exe);
            actor.exe_link = Some(grant.exe_path);
        }
        let verdict = verdict(self.rules.judge(&Intent::Write(0), own, actor.exe.as_ref()));
        // One fstat for every kind of change the record carries.
        let now = self.watched.get(i).map(|w| w.file.metadata());
        for (bit, hook) in KINDS {
            if r.mask & bit == 0 {
                continue;
            }
            let Some((event, text, name)) = self.change(i, bit, &now) else {
                continue;
            };
            Shared::bump(&s.events);
            match verdict {
                Verdict::Own => {
                    Shared::bump(&s.own);
                    continue;
                }
                Verdict::Allow => Shared::bump(&s.allowed),
                Verdict::Alert => Shared::bump(&s.alerts),
            }
            let Some(w) = self.watched.get(i) else {
                continue;
            };
            let mut ev = self
                .rules
                .event(actor.clone(), pid, Some(&w.path), Some(w.key));
            ev.event = event.to_owned();
            ev.verdict = if verdict == Verdict::Allow {
                hooks::Verdict::Allow
            } else {
                hooks::Verdict::Alert
            };
            ev.mode = Mode::Detect;
            ev.hook = hook.to_owned();
            ev.flags_text = Some(text);
            ev.name = name;
            if !report(&self.events, ev) {
                Shared::bump(&s.unreported);
            }
        }
    }

    /// What change `bit` made to watched file `i`: event name,
    /// `flags_text` and the new name, updating the recorded state. None
    /// (counted as an error) when the index is out of range.
    fn change(
        &mut self,
        i: usize,
        bit: u64,
        stat: &Option<io::Result<std::fs::Metadata>>,
    ) -> Option<(&'static str, String, Option<String>)> {
        let shared = Arc::clone(&self.shared);
        let Some(w) = self.watched.get_mut(i) else {
            Shared::bump(&shared.errors);
            return None;
        };
        let now = match stat {
            Some(Ok(m)) => Some(FileState::of(m)),
            Some(Err(e)) => {
                Shared::bump(&shared.errors);
                log::warn!("cannot fstat protected file {}: {e}", w.path.display());
                None
            }
            None => None,
        };
        Some(match bit {
            libc::FAN_MODIFY => {
                let text = match now {
                    Some(n) => {
                        let before = std::mem::replace(&mut w.state.size, n.size);
                        if before == n.size {
                            format!("size {}", n.size)
                        } else {
                            format!("size {before}→{}", n.size)
                        }
                    }
                    None => "size unknown".to_owned(),
                };
                ("file_write", text, None)
            }
            libc::FAN_ATTRIB => match now {
                Some(n) => {
                    let after = FileState {
                        size: w.state.size,
                        ..n
                    };
                    let (event, text) = attrib_change(&w.state, &after);
                    w.state = after;
                    (event, text, None)
                }
                None => ("file_setattr", "cannot fstat the inode".to_owned(), None),
            },
            libc::FAN_MOVE_SELF => {
                // Where the inode is now (as of reading the event).
                let at = std::fs::read_link(format!("/proc/self/fd/{}", w.file.as_raw_fd()))
                    .ok()
                    .map(|p| p.display().to_string());
                let text = match &at {
                    Some(p) => format!("now at {p}"),
                    None => "new name unknown".to_owned(),
                };
                ("file_rename", text, at)
            }
            _ => ("file_unlink", "inode deleted".to_owned(), None),
        })
    }
}
