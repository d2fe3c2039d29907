//! The running daemon: what it holds between wake-ups, the event loop, and
//! what each wake-up does. One task owns all of it; the parts with threads
//! of their own (the attestor, the fanotify rungs, a policy reload) are
//! told over bounded queues or awaited, never shared.

use std::{future::Future, path::Path, sync::Arc, time::Duration};

use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::mpsc::Receiver,
    task::JoinHandle,
};

use super::{
    RunError,
    counters::AgentCounters,
    output::Outputs,
    policies::{self, PolicyState},
    push::{self, Push},
    snapshot::{Parts, Publisher},
};
use crate::{
    config::Config,
    enforce::Enforcement,
    events::{Decoder, EventRing, RingReader, SecurityEvent},
    fanotify,
    hooks::{Mode, Verdict},
    kernel::KernelFeatures,
    pathcheck::PathCheck,
    policy::{self, PolicyEngine},
    prescan, systemd,
    targets::Targets,
};

/// The most bytes of ring-buffer records the reader copies out ahead of
/// the loop (`events/reader.rs`): held only while a burst is worked off,
/// given back after. As large as the ring's old default, so that a smaller
/// ring and this together hold at least what the old ring held.
pub(super) const READER_BYTES: usize = 4 << 20;

/// A policy reload, or a pushed set being put in force, running on a
/// blocking thread (one at a time: they share the engine's swap).
type Reload = JoinHandle<Done>;

/// What a blocking policy job ended with.
enum Done {
    /// A reload of the directory in force.
    Reload(Result<policy::ReloadReport, policy::LoadError>),
    /// The pushed directory in force no longer holds its signed set: not
    /// reloaded, the set in force stays.
    Tampered(crate::pushed::PushError),
    /// A pushed set received.
    Pushed(push::Outcome),
}

/// Where events and commands come from while the daemon runs.
pub(super) struct Sources {
    /// The kernel's ring buffer, woken by epoll.
    ring: AsyncFd<EventRing>,
    /// What reads it: records copied out and released at once.
    reader: RingReader,
    /// The userspace rungs' events.
    rungs: Receiver<SecurityEvent>,
    /// SIGHUP: reload the policies.
    hup: tokio::signal::unix::Signal,
    /// The fleet's questions (attestation challenges), if it may ask.
    questions: Option<crate::report::Questions>,
    /// The policy sets pushed to the device's group, if it follows one.
    sets: Option<crate::report::PolicySets>,
}

/// Everything the daemon holds while it runs.
pub(super) struct Daemon {
    config: Config,
    features: KernelFeatures,
    targets: Targets,
    enforcement: Enforcement,
    decoder: Decoder,
    engine: Arc<PolicyEngine>,
    pstate: PolicyState,
    /// Pushed policy sets, if the device follows a group.
    push: Option<Push>,
    /// Where the guarded names led when last looked at.
    paths: PathCheck,
    out: Outputs,
    counters: AgentCounters,
    publisher: Publisher,
    reloading: Option<Reload>,
    notify: systemd::Notifier,
    /// The raw syscall tracepoint reports write-opens already.
    opens_traced: bool,
    /// An allowed writer made a new name in a protected tree since the
    /// last tick: the tables take it in at the next one.
    take_in: bool,
    /// Ring-buffer records worked off since the last tick: past [`BURST`],
    /// what they freed goes back to the kernel at the tick.
    since_tick: usize,
}

/// Records between two ticks that make a burst, after which the heap is
/// trimmed (`memory::release_free_heap`): the burst's events came and
/// went, and glibc keeps what they freed in the middle of its heap
/// (measured: 1 MiB more resident after 300k events, `docs/footprint.md`).
const BURST: usize = 4096;

impl Daemon {
    /// The daemon over started rungs, with no policy loaded yet.
    pub(super) fn new(
        config: Config,
        features: KernelFeatures,
        targets: Targets,
        enforcement: Enforcement,
        out: Outputs,
    ) -> Self {
        let engine = Arc::new(PolicyEngine::new(
            policy::PolicySettings::from_config(&config, enforcement.mode() == Mode::Enforce),
            Box::new(out.attestor().measurer()),
        ));
        Self {
            decoder: Decoder::new(enforcement.mode(), &targets),
            opens_traced: enforcement.opens_traced(),
            take_in: false,
            since_tick: 0,
            publisher: Publisher::new(&config.measure.log),
            config,
            features,
            targets,
            enforcement,
            engine,
            pstate: PolicyState::default(),
            push: None,
            paths: PathCheck::default(),
            out,
            counters: AgentCounters::default(),
            reloading: None,
            notify: systemd::Notifier::from_env(),
        }
    }

    /// Load the signed set in the policy directory and put its static
    /// rules in force, if there is a directory.
    pub(super) fn load_policies(&mut self) {
        if self.config.policy.follows_group() {
            let (p, result) = Push::start(
                &self.config.policy,
                &self.engine,
                self.out.attestor().set_keeper(),
            );
            self.push = Some(p);
            match result {
                Some(r) => self.apply(r),
                None => log::info!(
                    "no policy directory {} and no pushed set: no policies yet; the kernel tables come from the config alone",
                    self.config.policy.dir.display()
                ),
            }
        } else if self.config.policy.dir.is_dir() {
            let result = self.engine.reload();
            self.apply(result);
        } else {
            log::info!(
                "no policy directory {}: no policies; the kernel tables come from the config alone",
                self.config.policy.dir.display()
            );
        }
        self.pstate.fingerprint = policies::fingerprint(&self.engine.dir());
    }

    /// Take where the guarded names lead now, and report the writers that
    /// hold protected files from before the guard.
    pub(super) fn look_back(&mut self) {
        self.paths = PathCheck::new(&self.targets);
        let proc = Path::new("/proc");
        // Apart from the main heap: it reads every process's maps and
        // descriptors and keeps only what it found (`memory::apart`).
        let me = std::process::id();
        let found = crate::memory::apart(|| prescan::search(proc, &self.targets, me))
            .unwrap_or_else(|| prescan::search(proc, &self.targets, me));
        self.counters.prewriters = found.len() as u64;
        for f in found {
            log::error!(
                "pid {} already holds {} on {}: opened before the guard started",
                f.pid,
                f.what,
                f.file.display()
            );
            self.handle(f.event(proc));
        }
        self.out.flush(&mut self.counters);
    }

    /// Open the event sources: SIGHUP, the kernel's ring buffer, the
    /// userspace rungs' queue.
    pub(super) fn sources(
        &mut self,
        rungs: Receiver<SecurityEvent>,
        questions: Option<crate::report::Questions>,
        sets: Option<crate::report::PolicySets>,
    ) -> Result<Sources, RunError> {
        let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(RunError::Events)?;
        let ring = self.enforcement.take_events()?;
        // SAFETY: the ring owns its map fd and keeps it open, unchanged,
        // for as long as the AsyncFd owns the ring.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(|e| RunError::Events(e.into()))?;
        Ok(Sources {
            ring,
            reader: RingReader::new(READER_BYTES),
            rungs,
            hup,
            questions,
            sets,
        })
    }

    /// Publish the first status and tell systemd.
    pub(super) fn ready(&mut self) -> Result<(), RunError> {
        self.publisher.started();
        self.publish()?;
        self.notify.ready(&format!(
            "{}: {}",
            self.enforcement.mode(),
            self.enforcement.coverage().reason
        ));
        log::info!(
            "ready; events to {}, status in {}",
            if self.config.events.output == "-" {
                "stdout"
            } else {
                &self.config.events.output
            },
            self.config.status.path.display()
        );
        Ok(())
    }

    /// The event loop, until `shutdown` completes.
    pub(super) async fn serve(
        &mut self,
        src: &mut Sources,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), RunError> {
        let mut dog = tokio::time::interval(
            self.notify
                .ping_every()
                .unwrap_or(Duration::from_secs(3600)),
        );
        // Counters are refreshed on a timer, and shortly after events
        // arrive (at most every 200 ms, so a flood does not turn into a
        // flood of status writes).
        let mut tick = tokio::time::interval(Duration::from_secs(self.config.status.interval_secs));
        let mut soon = tokio::time::interval(Duration::from_millis(200));
        let mut dirty = false;
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                ready = src.ring.readable_mut() => {
                    let mut ready = ready.map_err(RunError::Events)?;
                    dirty |= self.drain(ready.get_inner_mut(), &mut src.reader) > 0;
                    ready.clear_ready();
                }
                Some(ev) = src.rungs.recv() => dirty |= self.rung_event(ev),
                Some(asked) = async {
                    match src.questions.as_mut() {
                        Some(q) => q.recv().await,
                        None => std::future::pending().await,
                    }
                } => crate::report::answer(asked, self.out.attestor()),
                changed = async {
                    match src.sets.as_mut() {
                        Some(rx) => rx.changed().await,
                        None => std::future::pending().await,
                    }
                } => match changed {
                    Ok(()) => {
                        let received = src.sets.as_mut().and_then(|rx| rx.borrow_and_update().clone());
                        if let Some(r) = received {
                            self.set_received(r);
                        }
                    }
                    // The link stopped: no more sets come.
                    Err(_) => src.sets = None,
                },
                _ = src.hup.recv() => {
                    log::info!("SIGHUP: reloading the policies from {}", self.engine.dir().display());
                    self.start_reload();
                }
                done = async {
                    match self.reloading.as_mut() {
                        Some(h) => h.await,
                        None => std::future::pending().await,
                    }
                }, if self.reloading.is_some() => {
                    self.reloading = None;
                    self.reloaded(done)?;
                }
                _ = tick.tick() => {
                    self.on_tick()?;
                    dirty = false;
                }
                _ = dog.tick(), if self.notify.ping_every().is_some() => self.feed_watchdog(),
                _ = soon.tick(), if dirty => {
                    self.publish()?;
                    dirty = false;
                }
            }
        }
        Ok(())
    }

    /// The last events, then stop every part and withdraw the status.
    pub(super) async fn stop(mut self, src: &mut Sources) {
        self.notify.stopping();
        self.drain(src.ring.get_mut(), &mut src.reader);
        let mode = self.enforcement.mode();
        let pinned = self.enforcement.stop();
        self.out.guard(
            if pinned.is_some() { "stop" } else { "unload" },
            mode,
            match &pinned {
                Some(p) => format!(
                    "the agent stopped; its kernel programs stay attached, pinned in {}",
                    p.display()
                ),
                None => "the agent stopped; its kernel programs are detached".to_owned(),
            },
        );
        self.out.stop().await;
        let _ = std::fs::remove_file(&self.config.status.path);
        match &pinned {
            Some(p) => log::info!(
                "stopped; the kernel programs stay attached (pinned in {}); `guardian stop --unload` removes them",
                p.display()
            ),
            None => log::info!("stopped; the kernel programs are detached"),
        }
    }

    /// One event: judged, answered, written (see `event.rs`).
    fn handle(&mut self, ev: SecurityEvent) {
        if ev.verdict == Verdict::Allow
            && matches!(
                ev.event.as_str(),
                "file_create" | "file_rename" | "file_link" | "file_unlink"
            )
        {
            self.take_in = true;
        }
        super::event::handle(
            ev,
            &self.engine,
            self.config.guard.response,
            &mut self.out,
            &mut self.counters,
        );
    }

    /// Handle every record waiting in the ring buffer; returns how many.
    fn drain(&mut self, ring: &mut EventRing, reader: &mut RingReader) -> usize {
        let n = reader.drain(ring, |record| match self.decoder.decode(record) {
            Ok(ev) => self.handle(ev),
            Err(e) => {
                self.counters.undecodable += 1;
                log::error!("{e}");
            }
        });
        // The batch goes out in one write.
        self.out.flush(&mut self.counters);
        self.since_tick += n;
        n
    }

    /// One event of a userspace rung; true if it was handled.
    fn rung_event(&mut self, ev: SecurityEvent) -> bool {
        // With syscall_detect, the raw tracepoint reports allowed
        // write-opens already.
        if ev.verdict == Verdict::Allow && ev.hook == fanotify::HOOK && self.opens_traced {
            return false;
        }
        self.handle(ev);
        self.out.flush(&mut self.counters);
        true
    }

    /// Reload the policies on a blocking thread, unless one is running.
    /// A pushed directory is checked against its signed set first.
    fn start_reload(&mut self) {
        if self.reloading.is_none() {
            let e = Arc::clone(&self.engine);
            let dir = e.dir();
            let check = self
                .push
                .as_ref()
                .filter(|p| p.is_pushed(&dir))
                .map(|p| p.recheck_job(&dir));
            self.reloading = Some(tokio::task::spawn_blocking(move || {
                // A pushed directory: checked against its signed set, then
                // loaded checked against the set's own list, so a module
                // put in place between the two is refused too.
                match check.map(|check| check()) {
                    None => Done::Reload(e.reload()),
                    Some(Err(why)) => Done::Tampered(why),
                    Some(Ok(listed)) => Done::Reload(e.reload_checked(&dir, Some(&listed))),
                }
            }));
        }
    }

    /// A pushed set came from the link: put in force on a blocking thread,
    /// or, if a job runs, next (replacing any set waiting: the newest
    /// wins).
    fn set_received(&mut self, received: Arc<guardian_report::ReceivedSet>) {
        let Some(p) = self.push.as_mut() else {
            return;
        };
        if self.reloading.is_some() {
            p.pending = Some(received);
            return;
        }
        let job = p.job(&self.engine, received);
        self.reloading = Some(tokio::task::spawn_blocking(move || Done::Pushed(job.run())));
    }

    /// A blocking policy job finished: a reload's or a pushed set's set in
    /// force (or the refusal counted), then the names it guards; then the
    /// set that waited, if one did.
    fn reloaded(&mut self, done: Result<Done, tokio::task::JoinError>) -> Result<(), RunError> {
        let result = match done {
            Ok(Done::Reload(r)) => Some(r),
            Ok(Done::Tampered(e)) => {
                if let Some(p) = self.push.as_mut() {
                    p.refused(&e, None, &self.out);
                }
                None
            }
            Ok(Done::Pushed(o)) => match self.push.as_mut() {
                Some(p) => p.finished(o, &self.out).map(Ok),
                None => None,
            },
            Err(e) => {
                log::error!("policies: the reload task failed: {e}");
                None
            }
        };
        // What the job looked at is what the watch compares with next.
        self.pstate.fingerprint = policies::fingerprint(&self.engine.dir());
        if let Some(result) = result {
            self.apply(result);
            // The policies may guard more paths: report what changed
            // so far, then watch the new set.
            for ev in self.path_changes() {
                self.counters.path_changes += u64::from(ev.verdict == Verdict::Alert);
                self.handle(ev);
            }
            self.out.flush(&mut self.counters);
            self.paths = PathCheck::new(&self.targets);
        }
        if let Some(next) = self.push.as_mut().and_then(|p| p.pending.take()) {
            self.set_received(next);
        }
        self.publish()
    }

    /// What the path check found, less the pushed sets' pointer and
    /// version directories: guardian itself moves the pointer and removes
    /// the old versions with each set it puts in force (the tree stays
    /// guarded as guardian's own, and a pushed directory is checked
    /// against its signed set before any load, so a name there leading
    /// elsewhere changes nothing in force).
    fn path_changes(&mut self) -> Vec<SecurityEvent> {
        let found = self.paths.check();
        if !self.config.policy.follows_group() {
            return found;
        }
        let sets = self.config.policy.sets_dir();
        found
            .into_iter()
            .filter(|ev| {
                !ev.file
                    .as_deref()
                    .is_some_and(|f| Path::new(f).starts_with(&sets))
            })
            .collect()
    }

    /// Put a reload's result in force (see [`PolicyState::apply`]).
    fn apply(&mut self, result: Result<policy::ReloadReport, policy::LoadError>) {
        self.pstate.apply(
            result,
            &self.config,
            &mut self.enforcement,
            &mut self.targets,
            &mut self.decoder,
        );
    }

    /// Take into the tables what an allowed writer added to a protected
    /// tree: until then the service may not open it (measure at use,
    /// `not_taken_in`). The targets are resolved again with the policies'
    /// rules in force, and what came in is a guard record in the evidence.
    fn take_in(&mut self) {
        self.take_in = false;
        let before: std::collections::HashSet<_> =
            self.targets.files.iter().map(|(_, k)| *k).collect();
        if let Err(e) = policies::put_in_force(
            &self.config,
            &self.engine.rules(),
            &mut self.enforcement,
            &mut self.targets,
            &mut self.decoder,
        ) {
            log::error!("cannot take in the new files of the protected trees: {e}");
            return;
        }
        self.paths = PathCheck::new(&self.targets);
        let t = &self.targets;
        let new: Vec<(std::path::PathBuf, String)> = t
            .files
            .iter()
            .take(t.own_from)
            .filter(|(_, k)| !before.contains(k))
            .map(|(p, k)| (p.clone(), format!("{}:{}:{}", k.major(), k.minor(), k.ino)))
            .collect();
        if !new.is_empty() {
            log::info!(
                "protected trees: taken in {}",
                new.iter()
                    .map(|(p, _)| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            self.out.take_in(new, self.enforcement.mode());
        }
    }

    /// The status timer: what can only be looked at, looked at again;
    /// then the status.
    fn on_tick(&mut self) -> Result<(), RunError> {
        if self.take_in {
            self.take_in();
        }
        if std::mem::take(&mut self.since_tick) >= BURST {
            crate::memory::release_free_heap();
        }
        // The names still lead where they did?
        for ev in self.path_changes() {
            self.counters.path_changes += u64::from(ev.verdict == Verdict::Alert);
            log::error!(
                "{}: {}",
                ev.file.as_deref().unwrap_or("?"),
                ev.name.as_deref().unwrap_or("")
            );
            self.handle(ev);
            self.out.flush(&mut self.counters);
        }
        // The kernel's tables still hold what guardian wrote?
        match self.enforcement.check_tables(&self.targets) {
            Ok(diffs) if !diffs.is_empty() => {
                self.counters.tables_tampered += diffs.len() as u64;
                for d in &diffs {
                    log::error!("guard tables changed behind guardian's back, put back: {d}");
                }
                self.out
                    .guard("tables", self.enforcement.mode(), diffs.join("; "));
            }
            Ok(_) => {}
            Err(e) => log::warn!("cannot check the guard's tables: {e}"),
        }
        // A change in the policy directory in force is a reload too.
        let dir = self.engine.dir();
        let fp = policies::fingerprint(&dir);
        if fp != self.pstate.fingerprint && self.reloading.is_none() {
            log::info!("the policy directory {} changed: reloading", dir.display());
            self.pstate.fingerprint = fp;
            self.start_reload();
        }
        self.publish()
    }

    /// Feed systemd's watchdog, if every part that answers the kernel is
    /// alive.
    fn feed_watchdog(&self) {
        if self.enforcement.alive() {
            self.notify.ping();
        } else {
            log::error!(
                "the fanotify decision thread has stopped: the watchdog is no longer fed, so systemd restarts the agent"
            );
        }
    }

    /// Take a status snapshot, put what it shows of lost evidence into the
    /// evidence, and hand it to the outputs.
    fn publish(&mut self) -> Result<(), RunError> {
        let mut st = self.publisher.snapshot(Parts {
            config: &self.config,
            features: &self.features,
            targets: &self.targets,
            enforcement: &self.enforcement,
            agent: &self.counters,
            attest: &self.out.attestor().stats(),
            policies: &self.engine.stats(),
            pstate: &self.pstate,
        });
        st.report = self.out.report_status();
        if let Some(p) = &self.push {
            st.warnings.extend(p.status.warnings());
            st.policy_sets = Some(p.status.clone());
        }
        self.publisher
            .evidence(&st, self.enforcement.mode(), &self.out);
        self.out.status(&st)?;
        Ok(())
    }
}
