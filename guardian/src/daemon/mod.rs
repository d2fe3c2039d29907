//! The daemon, `guardian run`: it starts every part in an order that
//! leaves nothing half-done, then runs one event loop until its shutdown
//! future completes, then stops them.
//!
//! | file | owns |
//! |---|---|
//! | `mod.rs` | [`run`]: the start-up steps, in order, each saying why it comes where it does |
//! | `serve.rs` | the running daemon: its state, the event loop and what each wake-up does, the stop |
//! | `event.rs` | one finished event: the policies' judgement (from the event's fields, no JSON between), the response, the outputs |
//! | `output.rs` | where finished events and status snapshots go: the event output, the attestor, the status file |
//! | `snapshot.rs` | the status snapshot: what the parts say, with counters and warnings |
//! | `counters.rs` | the agent's own counters (the kernel and the rungs keep theirs) |
//! | `policies.rs` | the policy set in force between reloads: its static rules into every rung |
//! | `push.rs` | pushed policy sets: at start the set in force and the floor, then each set the link receives put in force (or refused) in order, and the pushed directory checked before a reload |
//! | `stop.rs` | [`stop`], `guardian stop`: signalling the agent, and the authorised unload |
//!
//! It owns the run loop's state: the event output, the status file, the
//! policy engine, the decoder and the one [`Enforcement`], which only it
//! commands. It may not reach past them: the kernel's tables and the
//! fanotify marks are `enforce`'s, the TPM and the measurement log the
//! attestor's (`continuous`, its own thread, told over a bounded queue),
//! the policies' code `policy`'s.
//!
//! Where a new output plugs in: every event, once the policies have
//! judged it and the response is done, is handed to `Outputs::event`
//! (`output.rs`), and every status snapshot the daemon publishes (on its
//! timer, after a reload, shortly after events) to `Outputs::status`. A
//! new output, such as a reporter sending each event and the periodic
//! status to the fleet, is one more field of `Outputs` fed from those two
//! functions; nothing else in the daemon changes. Neither may block: the
//! loop also answers the kernel's ring buffer.
//!
//! Events come from two sources into the one loop: the kernel's ring
//! buffer (read on readiness) and the userspace rungs, over one bounded
//! queue ([`RUNG_QUEUE`]); what the queue cannot take is counted by the
//! rung as unreported and shown in the status.

mod counters;
mod event;
mod output;
mod policies;
mod push;
mod serve;
mod snapshot;
mod stop;

use std::future::Future;

pub use stop::{StopError, stop};

use crate::{
    EBPF_OBJECT,
    config::Config,
    continuous,
    enforce::{EnforceError, Enforcement},
    events::Sink,
    guard::{GuardError, StartOptions},
    hooks::{Mechanism, Mode},
    kernel::KernelFeatures,
    status::StatusError,
    targets::{Targets, TargetsError},
    unload,
};
use output::Outputs;
use serve::Daemon;

/// How many events of the userspace rungs wait for the event loop before
/// the rungs count the next ones as unreported. The loop takes them as
/// they come; the depth only absorbs bursts (a rung's thread never waits
/// on it).
pub const RUNG_QUEUE: usize = 4096;

/// Errors that stop the daemon.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The config's paths could not be resolved.
    #[error(transparent)]
    Targets(#[from] TargetsError),
    /// The guard failed.
    #[error(transparent)]
    Guard(#[from] GuardError),
    /// A rung did not start.
    #[error(transparent)]
    Enforce(#[from] EnforceError),
    /// The event output could not be opened.
    #[error("cannot open event output {path}: {source}")]
    Sink {
        /// The configured output.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The status file could not be written.
    #[error(transparent)]
    Status(#[from] StatusError),
    /// Waiting on the ring buffer failed.
    #[error("reading events from the kernel: {0}")]
    Events(#[source] std::io::Error),
    /// The unload keys could not be loaded.
    #[error(transparent)]
    Unload(#[from] unload::UnloadError),
    /// The pushed policy sets' state directory could not be made.
    #[error("cannot create [policy] state_dir")]
    PolicyState(#[source] crate::pushed::PushError),
    /// The fleet link could not start (its spool, its password file).
    #[error(transparent)]
    Report(#[from] crate::report::ReportError),
}

/// Run the daemon until `shutdown` completes.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    // 0. The allocator's thresholds fixed before start-up's large blocks
    //    come and go (`memory.rs` says why).
    crate::memory::fix_allocator_thresholds();
    // 1. Resolve paths first: a bad config must fail before the kernel is
    //    touched, so nothing is left half-attached. The fleet spool is one
    //    of guardian's own trees: it must exist to be guarded (the spool
    //    would make it anyway, moments later).
    if config.report.enabled() {
        crate::report::make_spool_dir(&config.report)?;
    }
    //    So is the pushed policy sets' state directory.
    if config.policy.follows_group() {
        crate::pushed::make_state_dir(&config.policy).map_err(RunError::PolicyState)?;
    }
    let targets = Targets::resolve(&config.guard, &config.service, &config.own_files())?;
    log_targets(&config, &targets);
    // 2. The event output, for the same reason.
    let sink = Sink::open(&config.events.output).map_err(|source| RunError::Sink {
        path: config.events.output.clone(),
        source,
    })?;
    // 3. Kernel features decide what the guard can do.
    let features = KernelFeatures::probe();
    // 4. Who may unload it, fixed into the guard with a digest of this
    //    config (a pinned guard loaded with another config is not taken
    //    over).
    let auth = unload::auth_for(&config)?;
    log_unload(&auth);
    // 5. Every rung, strongest first: load, fill and attach the guard,
    //    then the userspace rungs for what the kernel could not take. They
    //    hold the only senders of their queue, so it closes when they stop.
    let (rung_tx, rung_rx) = tokio::sync::mpsc::channel(RUNG_QUEUE);
    let enforcement = Enforcement::start(
        &StartOptions {
            object: EBPF_OBJECT,
            request: config.guard.mode,
            require: &config.guard.require,
            features: &features,
            btf_path: &config.kernel.btf,
            ring_buffer_bytes: config.events.ring_buffer_kib * 1024,
            pin_dir: Some(&config.guard.pin_dir),
            syscall_detect: config.guard.syscall_detect,
            auth: Some(&auth),
        },
        &targets,
        &rung_tx,
    )?;
    drop(rung_tx);
    log_coverage(enforcement.coverage());
    // 6. Continuous attestation: its own thread owns the TPM and the log.
    //    The guard's state goes into the evidence first, before any event
    //    or policy load it is the context of.
    //    The fleet link starts here too, so the first record it carries is
    //    the guard's start.
    let (reporter, questions, policy_sets) =
        match crate::report::start(&config.report, &config.policy.group)? {
            Some(s) => (Some(s.reporter), s.questions, s.policy_sets),
            None => (None, None, None),
        };
    if config.policy.follows_group() && policy_sets.is_none() {
        log::warn!(
            "[policy] group = {:?} but no fleet link ([report] servers is empty): no pushed set can arrive; the one in force stays",
            config.policy.group
        );
    }
    match &reporter {
        Some(r) => log::info!(
            "reporting to the fleet as {} via {} (spool {}){}",
            r.status().device,
            config.report.servers.join(", "),
            config.report.spool_dir.display(),
            if questions.is_some() {
                "; answering its attestation challenges"
            } else {
                "; NOT answering its attestation challenges ([report] answer_challenges = false)"
            }
        ),
        None => {
            log::warn!("fleet reporting off ([report] servers is empty): events stay on this board")
        }
    }
    let out = Outputs::new(
        sink,
        continuous::Attestor::start(&config),
        reporter,
        &config,
    );
    out.guard(
        if enforcement.guard().adopted() {
            "adopt"
        } else {
            "start"
        },
        enforcement.mode(),
        guard_detail(&enforcement),
    );
    let mut daemon = Daemon::new(config, features, targets, enforcement, out);
    // 7. Policies: the signed set in the policy directory (or, for a
    //    device that follows a group, the pushed set in force if it still
    //    verifies and is at the floor), each load measured into the TPM by
    //    the attestor before the set is put in force; their static rules
    //    widen the kernel's tables. Before the path check and the search
    //    for writers, which look at what the policies protect too.
    daemon.load_policies();
    // 8. The event sources, before the slow look back below: from here a
    //    SIGHUP asks for a reload instead of ending the agent (its default
    //    action), and the kernel's records wait in the ring buffer for the
    //    loop.
    let mut sources = daemon.sources(rung_rx, questions, policy_sets)?;
    // 9. What the guard could not see: where the guarded names lead now
    //    (what the path check compares with), and writers that opened
    //    before the guard (no hook judged their opens or maps). Reported
    //    before readiness, so the first status counts them.
    daemon.look_back();
    // 10. Publishing the status file is the readiness signal (and, under
    //     systemd, READY=1: the inference service is ordered after it).
    //     The shutdown future is polled once first, so that whatever it
    //     listens to (SIGTERM, SIGINT) is caught from here on: a stop
    //     asked for as soon as the agent says it is ready ends the loop
    //     cleanly instead of killing the agent in the steps below.
    let mut shutdown = std::pin::pin!(shutdown);
    let stop_early = tokio::select! {
        biased;
        () = &mut shutdown => true,
        () = std::future::ready(()) => false,
    };
    daemon.ready()?;
    //     Start-up's freed memory goes back to the kernel now, not never,
    //     and so do the pages of code and constants only start-up used.
    crate::memory::release_free_heap();
    let pages = crate::memory::release_startup_pages();
    log::info!(
        "start-up pages released: resident {} KiB -> {} KiB ({} read-only file mapping(s){})",
        pages.rss_before_kib,
        pages.rss_after_kib,
        pages.mappings,
        if pages.refused > 0 {
            format!(", {} refused by the kernel", pages.refused)
        } else {
            String::new()
        }
    );
    // 11. The event loop, until the shutdown future completes.
    if !stop_early {
        daemon.serve(&mut sources, shutdown).await?;
    }
    // 12. Last events, then withdraw the status so `guardian status` does
    //     not report a guard that is gone.
    daemon.stop(&mut sources).await;
    Ok(())
}

/// Say what is protected, once the paths are resolved.
fn log_targets(config: &Config, targets: &Targets) {
    log::info!(
        "protecting {} model file(s) and {} of guardian's own; {} protected name(s); {} allowed writer(s); service: {}",
        targets.own_from,
        targets.files.len() - targets.own_from,
        targets.names.len(),
        targets.writers.len(),
        if targets.service.is_empty() {
            "none configured (process rules off)".to_owned()
        } else {
            format!(
                "{} executable(s), {} allowed exec/library file(s), egress {}",
                targets.service.len(),
                targets.exec.len(),
                if config.service.egress.is_some() {
                    format!(
                        "limited to {} prefix(es)",
                        targets.egress4.len() + targets.egress6.len()
                    )
                } else {
                    "unrestricted".to_owned()
                }
            )
        }
    );
}

/// Say who may unload the guard (loudly when anyone may).
fn log_unload(auth: &unload::Auth) {
    if auth.without_token {
        log::warn!(
            "INSECURE: maintenance mode ([guard] unload_without_token): anyone with root can switch the guard off"
        );
    } else if auth.keys.is_empty() {
        log::info!(
            "no [guard] unload_keys: `guardian stop --unload` is refused; only a boot without the guard removes it"
        );
    } else {
        log::info!(
            "unloading the guard takes a token signed by one of {} operator key(s)",
            auth.keys.len()
        );
    }
}

/// Say what is in force, hook by hook, now that every rung has started.
fn log_coverage(c: &crate::enforce::Coverage) {
    match c.mode {
        Mode::Enforce => log::info!("mode: ENFORCE — {}", c.reason),
        Mode::Detect => log::warn!(
            "mode: DETECT-ONLY — tampering is reported, not prevented: {}",
            c.reason
        ),
    }
    for h in &c.hooks {
        match (h.mechanism, &h.note) {
            (Mechanism::Lsm, _) => log::info!(
                "hook {}: denied in the kernel ({})",
                h.hook,
                h.attached.join(" ")
            ),
            (Mechanism::Off, Some(n)) => log::info!("hook {}: off ({n})", h.hook),
            (m, Some(n)) => log::warn!("hook {}: {} — {n}", h.hook, m.as_str().to_uppercase()),
            (m, None) => log::warn!("hook {}: {m}", h.hook),
        }
    }
}

/// What the evidence says of the guard as it started.
fn guard_detail(enforcement: &Enforcement) -> String {
    format!(
        "{}; hooks: {}",
        enforcement.coverage().reason,
        enforcement
            .coverage()
            .hooks
            .iter()
            .map(|h| format!("{} via {} ({})", h.hook, h.mechanism, h.attached.join(" ")))
            .collect::<Vec<_>>()
            .join("; ")
    )
}
