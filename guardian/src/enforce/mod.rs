//! One owner for enforcement: every rung of the ladder, in the kernel and
//! in userspace, behind one [`Enforcement`] that `run()` commands with
//! [`Enforcement::start`], [`Enforcement::refresh`] and
//! [`Enforcement::stop`], and asks what is in force with
//! [`Enforcement::coverage`].
//!
//! | rung | where | what it does |
//! |---|---|---|
//! | BPF LSM | [`crate::guard`] | the kernel denies |
//! | cgroup socket programs | [`crate::guard`] | the kernel denies the service's egress |
//! | fanotify permission events | [`crate::fanotify::FanotifyGuard`] | write-opens denied from userspace while the agent runs |
//! | fanotify notification events | [`crate::fanotify::notify::Watcher`] | changes reported after the fact while the agent runs |
//! | tracepoints | [`crate::guard`] | the kernel reports after the fact |
//!
//! This is the one place that decides which rung takes a hook: the guard
//! climbs the kernel's ladder and says what it got ([`KernelHook`]); here
//! the userspace rungs take what it left, and [`Coverage`] says the result.
//! A policy reload reaches every rung through [`Enforcement::refresh`]:
//! the kernel's tables, the permission rung's marks and writers, the
//! notification rung's marks and writers.
//!
//! May not touch the TPM or the measurement log (run() hands what happens
//! to the attestor), nor decide what the targets are ([`crate::rules`]).

mod coverage;

use std::path::PathBuf;

pub use coverage::{Coverage, Rungs};

use crate::{
    config::ModeRequest,
    fanotify::{
        EventSender, FanotifyError, FanotifyGuard, FanotifyStats,
        notify::{self, WatchError, WatchStats, Watcher},
    },
    guard::{Guard, GuardError, KernelHook, StartOptions},
    hooks::{Hook, Mechanism, Mode},
    targets::Targets,
};

/// Why enforcement could not start or follow new targets.
#[derive(Debug, thiserror::Error)]
pub enum EnforceError {
    /// The guard (the kernel's rungs) failed.
    #[error(transparent)]
    Guard(#[from] GuardError),
    /// The permission rung could not mark a protected file.
    #[error(transparent)]
    Fanotify(#[from] FanotifyError),
    /// The notification rung could not mark a protected file.
    #[error(transparent)]
    Watch(#[from] WatchError),
}

/// Every rung, started.
pub struct Enforcement {
    guard: Guard,
    perm: Option<FanotifyGuard>,
    notify: Option<Watcher>,
    rungs: Rungs,
    coverage: Coverage,
}

impl Enforcement {
    /// Start every rung for `targets`, strongest first; the userspace
    /// rungs send what they decide and see to `events` (bounded: what it
    /// cannot take is counted, see [`EventSender`]).
    ///
    /// 1. The guard: the kernel's ladder, hook by hook (it may adopt a
    ///    pinned guard).
    /// 2. The permission rung, where BPF LSM could not take write-opens
    ///    (not in detect mode, which asks for no denials).
    /// 3. The notification rung, for the file hooks that nothing in the
    ///    kernel reports (in every mode). It starts after the permission
    ///    rung so that it knows who that one let write.
    pub fn start(
        opts: &StartOptions<'_>,
        targets: &Targets,
        events: &EventSender,
    ) -> Result<Self, EnforceError> {
        let guard = Guard::start(opts, targets)?;
        let mut rungs = Rungs::default();
        let kernel = |hook: Hook| guard.hooks().iter().find(|h| h.hook == hook);
        let mut perm = None;
        if opts.request != ModeRequest::Detect
            && kernel(Hook::FileWriteOpen).is_some_and(|h| h.mechanism != Mechanism::Lsm)
        {
            match FanotifyGuard::start(targets, events.clone()) {
                Ok(f) => {
                    log::warn!(
                        "hook file_write_open: FANOTIFY — BPF LSM could not take it; write-opens of {} protected file(s) are denied from userspace while the agent runs",
                        f.marked()
                    );
                    rungs.perm = Some(f.marked());
                    perm = Some(f);
                }
                Err(e) if e.is_unavailable() => {
                    log::warn!("hook file_write_open: no fanotify rung either: {e}");
                }
                Err(e) => return Err(e.into()),
            }
        }
        let mask =
            notify::mask_for(|hook| kernel(hook).is_some_and(|h| h.mechanism == Mechanism::None));
        let mut watcher = None;
        if mask != 0 && !targets.files.is_empty() {
            let grants = perm.as_ref().map(FanotifyGuard::grants);
            match Watcher::start_with(targets, mask, grants, events.clone()) {
                Ok(w) => {
                    log::warn!(
                        "file hooks without a kernel program: changes to {} protected file(s) are reported through fanotify notification events, after the fact, while the agent runs",
                        w.marked()
                    );
                    rungs.notify = Some((w.marked(), mask));
                    watcher = Some(w);
                }
                // Marks fail on filesystems that cannot encode file handles
                // (some FUSE and overlay setups): the agent still runs, and
                // the hooks stay NOT COVERED, loudly.
                Err(e) => {
                    log::error!("no fanotify notification rung: {e}");
                    rungs.notify_missing =
                        Some(format!("fanotify notification rung unavailable: {e}"));
                }
            }
        }
        let coverage = Coverage::render(guard.hooks(), guard.mode(), guard.reason(), &rungs);
        Ok(Self {
            guard,
            perm,
            notify: watcher,
            rungs,
            coverage,
        })
    }

    /// Bring every rung in line with `targets` (a policy reload): the
    /// kernel's tables first, then the userspace rungs' marks and writers.
    /// A rung that fails keeps what it had; the others still follow, and
    /// the first failure is returned.
    pub fn refresh(&mut self, targets: &Targets) -> Result<(), EnforceError> {
        self.guard.refresh(targets)?;
        let mut first: Option<EnforceError> = None;
        if let Some(f) = self.perm.as_mut() {
            match f.refresh(targets) {
                Ok(()) => self.rungs.perm = Some(f.marked()),
                Err(e) => first = first.or(Some(e.into())),
            }
        }
        if let Some(w) = self.notify.as_mut() {
            match w.refresh(targets) {
                Ok(()) => {
                    if let Some((marked, _)) = self.rungs.notify.as_mut() {
                        *marked = w.marked();
                    }
                }
                Err(e) => first = first.or(Some(e.into())),
            }
        }
        self.coverage = Coverage::render(
            self.guard.hooks(),
            self.guard.mode(),
            self.guard.reason(),
            &self.rungs,
        );
        first.map_or(Ok(()), Err)
    }

    /// Stop the userspace rungs (their enforcement ends with the agent)
    /// and let go of the guard: pinned programs stay attached, the others
    /// are detached. Returns where they stay pinned, if they do.
    pub fn stop(mut self) -> Option<PathBuf> {
        if let Some(f) = self.perm.take() {
            f.stop();
        }
        if let Some(w) = self.notify.take() {
            w.stop();
        }
        self.guard.pinned().map(PathBuf::from)
    }

    /// What is in force, hook by hook.
    pub fn coverage(&self) -> &Coverage {
        &self.coverage
    }

    /// The mode in force.
    pub fn mode(&self) -> Mode {
        self.coverage.mode
    }

    /// The guard (the kernel's rungs).
    pub fn guard(&self) -> &Guard {
        &self.guard
    }

    /// The kernel's half of each hook.
    pub fn kernel(&self) -> &[KernelHook] {
        self.guard.hooks()
    }

    /// The raw syscall tracepoint reports write-opens already (so the
    /// permission rung's `allow` events would say it twice).
    pub fn opens_traced(&self) -> bool {
        self.kernel().iter().any(|h| {
            h.hook == Hook::FileWriteOpen
                && h.attached.iter().any(|a| a.starts_with("raw_tracepoint"))
        })
    }

    /// Take the kernel's ring buffer (once).
    pub fn take_events(&mut self) -> Result<crate::events::EventRing, GuardError> {
        self.guard.take_events()
    }

    /// Compare the kernel's tables with what was written, and put them
    /// back (see [`Guard::check_tables`]).
    pub fn check_tables(&mut self, targets: &Targets) -> Result<Vec<String>, GuardError> {
        self.guard.check_tables(targets)
    }

    /// The permission rung's counters, if it runs.
    pub fn perm_stats(&self) -> Option<FanotifyStats> {
        self.perm.as_ref().map(FanotifyGuard::stats)
    }

    /// The notification rung's counters, if it runs.
    pub fn notify_stats(&self) -> Option<WatchStats> {
        self.notify.as_ref().map(Watcher::stats)
    }

    /// Every userspace rung that answers the kernel still runs (the
    /// watchdog is fed only then).
    pub fn alive(&self) -> bool {
        self.perm.as_ref().is_none_or(|f| f.stats().running)
    }
}
