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
//!
//! | file | owns |
//! |---|---|
//! | `mod.rs` | the rung's handle ([`Watcher`]: start, refresh, stop), its errors and counters |
//! | `marks.rs` | the group and its marks: `fanotify_init`, one inode mark per protected file, a target set marked and re-marked |
//! | `reader.rs` | the reader thread: records → one judged event per kind of change, what the change was |

mod marks;
mod reader;

use std::{
    collections::HashMap,
    io,
    os::fd::OwnedFd,
    path::PathBuf,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
};

use guardian_common::InodeKey;
use serde::Serialize;

pub use super::change::{FileState, Verdict, attrib_change, judge};
use super::{EventSender, Grants, Rules, eventfd, stop_thread};
use crate::{
    hooks::{self, Hook},
    targets::Targets,
};
use marks::{Watched, index, init_group, mark_all, unmark};
use reader::{Reader, State};

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
