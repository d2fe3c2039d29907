//! The status snapshot: what every part says, gathered into the
//! [`Status`] that `guardian status` reads, with the agent's counters
//! beside the kernel's and the rungs', and a warning for everything that
//! is lost or degraded. Also what a snapshot shows that belongs in the
//! evidence (hook calls that found no config, events lost on the way),
//! told to the attestor once per increase.

use std::collections::BTreeMap;

use super::{counters::AgentCounters, output::Outputs, policies::PolicyState};
use crate::{
    attest,
    config::Config,
    continuous,
    enforce::Enforcement,
    hooks::Mode,
    kernel::KernelFeatures,
    policy,
    status::{self, MeasuredBootWatch, Status},
    targets::Targets,
    unload,
};

/// Everything a status snapshot is made of, borrowed from the daemon.
pub(super) struct Parts<'a> {
    pub(super) config: &'a Config,
    pub(super) features: &'a KernelFeatures,
    pub(super) targets: &'a Targets,
    pub(super) enforcement: &'a Enforcement,
    pub(super) agent: &'a AgentCounters,
    pub(super) attest: &'a continuous::Stats,
    pub(super) policies: &'a policy::PolicyStats,
    pub(super) pstate: &'a PolicyState,
}

/// What the snapshots carry from one to the next: when the agent
/// started, the measured-boot summary (following the log as it grows),
/// and what of the lost evidence was already told to the attestor.
pub(super) struct Publisher {
    started: String,
    measured_boot: MeasuredBootWatch,
    last_drops: u64,
    last_unreported: u64,
    last_unconfigured: u64,
    last_report_drops: u64,
    last_report_lost: u64,
}

impl Publisher {
    /// Follow the measurement log at `log`.
    pub(super) fn new(log: &std::path::Path) -> Self {
        Self {
            started: status::now(),
            measured_boot: MeasuredBootWatch::new(log),
            last_drops: 0,
            last_unreported: 0,
            last_unconfigured: 0,
            last_report_drops: 0,
            last_report_lost: 0,
        }
    }

    /// The agent counts as started now (when it is ready).
    pub(super) fn started(&mut self) {
        self.started = status::now();
    }

    /// A snapshot of `parts`, with this boot's measurements read as far as
    /// the log has grown.
    pub(super) fn snapshot(&mut self, parts: Parts<'_>) -> Status {
        snapshot(&parts, &self.started, self.measured_boot.refresh())
    }

    /// Put into the evidence what `st` shows of evidence lost since the
    /// last snapshot: hook calls that judged nothing, events the kernel's
    /// ring buffer or the fanotify rungs' queue could not take.
    pub(super) fn evidence(&mut self, st: &Status, mode: Mode, out: &Outputs) {
        // A hook that found no config could judge nothing: evidence too.
        let unconfigured = st
            .counters
            .get("unconfigured_hook_calls")
            .copied()
            .unwrap_or(0);
        if unconfigured > self.last_unconfigured {
            log::error!(
                "{unconfigured} hook call(s) found guardian's config entry missing: they allowed without judging"
            );
            out.guard(
                "tables",
                mode,
                format!("{unconfigured} hook call(s) found the config entry missing"),
            );
            self.last_unconfigured = unconfigured;
        }
        // Lost events are part of the evidence too.
        let count = |name: &str| st.counters.get(name).copied().unwrap_or(0);
        let drops = count("ringbuf_drops");
        if drops > self.last_drops {
            out.guard(
                "drops",
                mode,
                format!("kernel ring buffer full: {drops} event(s) lost in total"),
            );
            self.last_drops = drops;
        }
        // So are records the fleet link had to drop (spool full, queue full).
        if let Some(r) = &st.report {
            let lost = r.spool.dropped.iter().sum::<u64>() + r.link.queue_drops;
            if lost > self.last_report_drops {
                log::warn!("fleet link: {lost} record(s) dropped in total (spool or queue full)");
                out.guard(
                    "drops",
                    mode,
                    format!("fleet report spool or queue full: {lost} record(s) dropped in total"),
                );
                self.last_report_drops = lost;
            }
            // Records that no longer read back as written were given up:
            // their segment removed or changed behind the spool (root where
            // no BPF LSM denies it, or a failing disk).
            let gone = r.spool.lost;
            if gone > self.last_report_lost {
                log::error!(
                    "fleet link: {gone} record(s) in total {}",
                    guardian_report::spool::LOST_ON_DISK
                );
                out.guard(
                    "drops",
                    mode,
                    format!(
                        "fleet report spool: {gone} record(s) in total {}",
                        guardian_report::spool::LOST_ON_DISK
                    ),
                );
                self.last_report_lost = gone;
            }
        }
        let unreported = count("fanotify_unreported") + count("watch_unreported");
        if unreported > self.last_unreported {
            out.guard(
                "drops",
                mode,
                format!(
                    "the fanotify rungs' event queue full: {unreported} event(s) lost in total"
                ),
            );
            self.last_unreported = unreported;
        }
    }
}

fn snapshot(parts: &Parts<'_>, started: &str, measured_boot: &status::MeasuredBoot) -> Status {
    let Parts {
        config,
        features,
        targets,
        enforcement,
        agent,
        attest,
        policies: pstats,
        pstate,
    } = *parts;
    let guard = enforcement.guard();
    let coverage = enforcement.coverage();
    let fanotify = enforcement.perm_stats();
    let watch = enforcement.notify_stats();
    let mut counters: BTreeMap<String, u64> = BTreeMap::new();
    let mut warnings = Vec::new();
    match guard.counters() {
        Ok(k) => counters.extend(k.into_iter().map(|(k, v)| (k.to_owned(), v))),
        Err(e) => warnings.push(format!("kernel counters unreadable: {e}")),
    }
    counters.insert("events_written".into(), agent.written);
    counters.insert("event_write_errors".into(), agent.write_errors);
    counters.insert("events_undecodable".into(), agent.undecodable);
    counters.insert("tables_tampered".into(), agent.tables_tampered);
    counters.insert("path_changes".into(), agent.path_changes);
    counters.insert("preexisting_writers".into(), agent.prewriters);
    if let Some(f) = &fanotify {
        for (name, v) in [
            ("fanotify_decisions", f.decisions),
            ("fanotify_denied", f.denied),
            ("fanotify_allowed", f.allowed),
            ("fanotify_undecidable", f.undecidable),
            ("fanotify_errors", f.errors),
            ("fanotify_unreported", f.unreported),
        ] {
            counters.insert(name.into(), v);
        }
        if !f.running {
            warnings.push("the fanotify decision thread has stopped: write-opens are no longer denied from userspace".into());
        }
        if f.errors > 0 {
            warnings.push(format!("{} fanotify error(s)", f.errors));
        }
        if f.unreported > 0 {
            warnings.push(format!(
                "{} fanotify decision(s) not reported: the agent's event queue was full",
                f.unreported
            ));
        }
    }
    if let Some(w) = &watch {
        for (name, v) in [
            ("watch_events", w.events),
            ("watch_alerts", w.alerts),
            ("watch_allowed", w.allowed),
            ("watch_overflows", w.overflows),
            ("watch_unknown", w.unknown),
            ("watch_errors", w.errors),
            ("watch_unreported", w.unreported),
        ] {
            counters.insert(name.into(), v);
        }
        if !w.running {
            warnings.push("the fanotify notification thread has stopped: changes to protected files are no longer reported from userspace".into());
        }
        if w.overflows > 0 {
            warnings.push(format!(
                "the fanotify notification queue overflowed {} time(s): changes to protected files were lost",
                w.overflows
            ));
        }
        if w.errors > 0 {
            warnings.push(format!("{} fanotify notification error(s)", w.errors));
        }
        if w.unreported > 0 {
            warnings.push(format!(
                "{} change(s) to protected files not reported: the agent's event queue was full",
                w.unreported
            ));
        }
    }
    counters.insert("responses_killed".into(), agent.killed);
    counters.insert("response_failures".into(), agent.kill_failures);
    counters.insert("tamper_records".into(), attest.tamper_records);
    counters.insert("tamper_rate_limited".into(), attest.tamper_suppressed);
    counters.insert("models_remeasured".into(), attest.remeasured);
    counters.insert("attest_queue_drops".into(), attest.queue_drops);
    counters.insert("attest_errors".into(), attest.errors);
    counters.insert("attest_backlog".into(), attest.backlog as u64);
    counters.insert("attest_stalls".into(), attest.stalls);
    counters.insert("manifest_updates".into(), attest.manifest_updates);
    counters.insert("manifests_refused".into(), attest.manifests_refused);
    if let Some(since) = &attest.stalled_since {
        warnings.push(format!(
            "continuous attestation is STALLED since {since}: another process holds the measurement log's lock; {} record(s) wait",
            attest.backlog
        ));
    }
    if attest.manifests_refused > 0 {
        warnings.push(format!(
            "continuous attestation: {} new manifest(s) refused (the one in force stays; see the log)",
            attest.manifests_refused
        ));
    }
    for d in &attest.degraded {
        warnings.push(format!("continuous attestation: {d}"));
    }
    if let Some(e) = &pstats.last_reload_error {
        warnings.push(format!(
            "policies: the last reload failed (previous set in force): {e}"
        ));
    }
    if let Some(e) = &pstate.rules_error {
        warnings.push(format!("policies: static rules not in the kernel: {e}"));
    }
    if pstats.failures > 0 {
        warnings.push(format!(
            "policies: {} evaluation failure(s) (fuel {}, traps {}, bad verdicts {}), each decided fail-{}",
            pstats.failures, pstats.out_of_fuel, pstats.traps, pstats.bad_verdicts, pstats.fail_mode
        ));
    }
    if pstats.loads_not_extended > 0 {
        warnings.push(format!(
            "policies: {} load(s) recorded without a TPM extend",
            pstats.loads_not_extended
        ));
    }
    warnings.extend(measured_boot.warnings());
    if coverage.mode == Mode::Detect {
        warnings.push(format!(
            "detect-only: tampering is reported after the fact, not prevented ({})",
            coverage.reason
        ));
    }
    for (name, what) in [
        (
            "ringbuf_drops",
            "events lost in the kernel: ring buffer full",
        ),
        (
            "pending_open_drops",
            "opens not tracked: pending-open table full",
        ),
        (
            "kernel_read_errors",
            "kernel struct reads failed (decisions defaulted to allow)",
        ),
        ("event_write_errors", "events lost: output not writable"),
        (
            "events_undecodable",
            "event records the agent could not decode",
        ),
    ] {
        if let Some(n) = counters.get(name).filter(|n| **n > 0) {
            warnings.push(format!("{n} {what}"));
        }
    }
    Status {
        version: crate::VERSION.to_owned(),
        pid: std::process::id(),
        started: started.to_owned(),
        updated: status::now(),
        requested_mode: format!("{:?}", config.guard.mode).to_lowercase(),
        mode: coverage.mode,
        mode_reason: coverage.reason.clone(),
        kernel: features.clone(),
        hooks: coverage.hooks.clone(),
        pinned: guard.pinned().map(|p| p.display().to_string()),
        adopted: guard.adopted(),
        unload: unload_words(config),
        boot_id: unload::boot_id().unwrap_or_default(),
        guard_id: guard
            .pinned()
            .map(crate::guard::pinned_guard_id)
            .unwrap_or_default(),
        protected_files: targets.files.len(),
        allowed_writers: targets.writers.len(),
        measured_boot: Some(measured_boot.clone()),
        report: None,
        policy_sets: None,
        attestor: Some(attest::AgentState {
            running: true,
            backlog: parts.attest.backlog as u64,
            stalled_since: parts.attest.stalled_since.clone(),
            lost: parts.attest.queue_drops + parts.attest.errors,
        }),
        policies: serde_json::to_value(pstats).ok(),
        counters,
        warnings,
    }
}

/// Who may unload the guard, for `guardian status`.
fn unload_words(config: &Config) -> String {
    let g = &config.guard;
    if g.unload_without_token {
        "MAINTENANCE MODE: any root may unload without a token".to_owned()
    } else if g.unload_keys.is_empty() {
        "refused (no [guard] unload_keys): only a boot without the guard removes it".to_owned()
    } else {
        format!(
            "with a token signed by one of {} operator key(s), for this boot",
            g.unload_keys.len()
        )
    }
}
