//! [`PolicyEngine`]: the policy set in force, swapped atomically.
//!
//! Evaluation and swap take the same lock: an event is judged entirely by
//! the set that was in force when its evaluation began, and a swap waits
//! for that evaluation to finish. The new set is read, verified, compiled,
//! instantiated and measured *before* the lock is taken, so the swap itself
//! is a pointer exchange and no event waits for a compile. A reload that
//! fails anywhere leaves the old set untouched.

use std::{
    path::PathBuf,
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
};

use serde::Serialize;

use super::{
    FailMode, Limits, Measurer, Outcome, PolicyInfo, PolicySet, Runtime, StaticRules,
    event::{EventError, EventFields, JsonEvent},
    module::CallError,
    set::LoadError,
};
use crate::{
    config::{Config, FailModeSetting},
    signing::TrustedKey,
};
use guardian_policy_abi::{Decision, Event};

/// Everything the engine needs, resolved from the config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicySettings {
    /// The bundle directory.
    pub dir: PathBuf,
    /// Trusted public keys (re-read at every reload, so a rotated key takes
    /// effect with the next reload).
    pub trusted_keys: Vec<PathBuf>,
    /// The fail mode in force.
    pub fail_mode: FailMode,
    /// Module limits.
    pub limits: Limits,
}

impl PolicySettings {
    /// From the config, for a guard that does (`enforcing`) or does not
    /// enforce: `fail_mode = "auto"` is closed when enforcing.
    pub fn from_config(config: &Config, enforcing: bool) -> Self {
        let p = &config.policy;
        Self {
            dir: p.dir.clone(),
            trusted_keys: if p.trusted_keys.is_empty() {
                config.measure.trusted_keys.clone()
            } else {
                p.trusted_keys.clone()
            },
            fail_mode: match p.fail_mode {
                FailModeSetting::Closed => FailMode::Closed,
                FailModeSetting::Open => FailMode::Open,
                FailModeSetting::Auto if enforcing => FailMode::Closed,
                FailModeSetting::Auto => FailMode::Open,
            },
            limits: Limits {
                fuel: p.fuel,
                memory_pages: p.memory_pages,
                module_bytes: p.max_module_kib as usize * 1024,
            },
        }
    }
}

/// What a successful reload put in force.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReloadReport {
    /// The new generation.
    pub generation: u64,
    /// The policies, in evaluation order.
    pub policies: Vec<PolicyInfo>,
    /// Their merged static rules: write these into the kernel's maps.
    pub rules: StaticRules,
    /// How many loads were recorded without a TPM extend.
    pub not_extended: usize,
}

#[derive(Default)]
struct Counters {
    evaluations: AtomicU64,
    denied: AtomicU64,
    alerted: AtomicU64,
    failures: AtomicU64,
    out_of_fuel: AtomicU64,
    traps: AtomicU64,
    bad_verdicts: AtomicU64,
    bad_events: AtomicU64,
    reloads: AtomicU64,
    reload_failures: AtomicU64,
    loads_not_extended: AtomicU64,
}

/// Counters and state for `guardian status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PolicyStats {
    /// The generation in force (0: nothing loaded yet).
    pub generation: u64,
    /// `closed` or `open`.
    pub fail_mode: String,
    /// The policies in force.
    pub policies: Vec<PolicyInfo>,
    /// Events evaluated.
    pub evaluations: u64,
    /// Events the policies denied.
    pub denied: u64,
    /// Events the policies alerted on.
    pub alerted: u64,
    /// Policy failures on an event (each got the fail mode).
    pub failures: u64,
    /// Of which: fuel exhausted.
    pub out_of_fuel: u64,
    /// Of which: traps (including memory growth past the limit).
    pub traps: u64,
    /// Of which: a return value that is not a verdict.
    pub bad_verdicts: u64,
    /// JSON events that could not be converted (not evaluated).
    pub bad_events: u64,
    /// Successful reloads.
    pub reloads: u64,
    /// Failed reloads (the previous set stayed in force).
    pub reload_failures: u64,
    /// Why the last reload failed, if it did.
    pub last_reload_error: Option<String>,
    /// Policy loads recorded without a TPM extend.
    pub loads_not_extended: u64,
    /// Messages policies logged.
    pub policy_log_messages: u64,
    /// Messages dropped by the per-call log limit.
    pub policy_log_suppressed: u64,
}

/// The set in force, hot-swappable. `Send + Sync`: share it in an `Arc`.
pub struct PolicyEngine {
    settings: PolicySettings,
    runtime: Runtime,
    current: Mutex<PolicySet>,
    /// Serialises reloads and owns the measurer.
    reload: Mutex<Box<dyn Measurer>>,
    next_generation: AtomicU64,
    counters: Counters,
    last_error: Mutex<Option<String>>,
    /// The directory the set in force came from: `settings.dir`, or a
    /// pushed set's ([`Self::reload_from`]); [`Self::reload`] reads it
    /// again.
    dir: Mutex<PathBuf>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave a half-swapped set (the
    // swap is one assignment), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl PolicyEngine {
    /// An engine with no policies yet (every event allowed until the first
    /// successful [`Self::reload`]).
    pub fn new(settings: PolicySettings, measurer: Box<dyn Measurer>) -> Self {
        Self {
            runtime: Runtime::new(settings.limits),
            dir: Mutex::new(settings.dir.clone()),
            current: Mutex::new(PolicySet::empty(settings.fail_mode)),
            settings,
            reload: Mutex::new(measurer),
            next_generation: AtomicU64::new(1),
            counters: Counters::default(),
            last_error: Mutex::new(None),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &PolicySettings {
        &self.settings
    }

    /// The directory the set in force came from (the one a reload reads).
    pub fn dir(&self) -> PathBuf {
        lock(&self.dir).clone()
    }

    /// Verify → compile → instantiate → measure the policies in the
    /// directory in force, then swap them in. On any failure the set in
    /// force stays, the failure is counted and returned.
    pub fn reload(&self) -> Result<ReloadReport, LoadError> {
        let dir = self.dir();
        self.reload_from(&dir)
    }

    /// [`Self::reload`] from `dir`, which becomes the directory in force
    /// if (and only if) its set goes in force: a pushed set's directory,
    /// or the image's again.
    pub fn reload_from(&self, dir: &std::path::Path) -> Result<ReloadReport, LoadError> {
        self.reload_checked(dir, None)
    }

    /// [`Self::reload_from`] for a pushed set's directory: what was read
    /// and compiled must be exactly `expected` (name, SHA-256), the set's
    /// own list, or nothing changes and nothing is measured. The modules
    /// are read from the directory by name, after the set was checked
    /// against it; this check on the bytes actually loaded closes the
    /// window in which another module (signed by the same key, say an
    /// older version's) could be put in its place.
    pub fn reload_checked(
        &self,
        dir: &std::path::Path,
        expected: Option<&[(String, String)]>,
    ) -> Result<ReloadReport, LoadError> {
        let mut measurer = lock(&self.reload);
        let result = self.prepare(dir, expected, &mut **measurer);
        if result.is_ok() {
            *lock(&self.dir) = dir.to_owned();
        }
        match result {
            Ok((mut set, not_extended)) => {
                let generation = self.next_generation.fetch_add(1, Ordering::SeqCst);
                set.set_generation(generation);
                let report = ReloadReport {
                    generation,
                    policies: set.policies().map(|p| p.info().clone()).collect(),
                    rules: set.rules().clone(),
                    not_extended,
                };
                let old = std::mem::replace(&mut *lock(&self.current), set);
                // The old set (and its wasmi stores) is dropped here,
                // outside the lock.
                drop(old);
                self.counters.reloads.fetch_add(1, Ordering::Relaxed);
                *lock(&self.last_error) = None;
                log::info!(
                    "policies: set {generation} in force: {} ({} policies, fail mode {})",
                    report
                        .policies
                        .iter()
                        .map(|p| format!("{} {}", p.name, &p.sha256[..16]))
                        .collect::<Vec<_>>()
                        .join(", "),
                    report.policies.len(),
                    self.settings.fail_mode.name()
                );
                if report.policies.is_empty() {
                    log::warn!(
                        "policies: {} holds no policy; only the kernel's rules apply",
                        dir.display()
                    );
                }
                Ok(report)
            }
            Err(e) => {
                self.counters
                    .reload_failures
                    .fetch_add(1, Ordering::Relaxed);
                log::error!("policies: reload refused, the previous set stays in force: {e}");
                *lock(&self.last_error) = Some(e.to_string());
                Err(e)
            }
        }
    }

    fn prepare(
        &self,
        dir: &std::path::Path,
        expected: Option<&[(String, String)]>,
        measurer: &mut dyn Measurer,
    ) -> Result<(PolicySet, usize), LoadError> {
        let trusted = TrustedKey::load_all(&self.settings.trusted_keys).map_err(LoadError::Key)?;
        let (set, _) = PolicySet::load_dir(&self.runtime, dir, &trusted, self.settings.fail_mode)?;
        if let Some(expected) = expected {
            let mut want: Vec<(String, String)> = expected
                .iter()
                .map(|(n, d)| (n.clone(), d.to_ascii_lowercase()))
                .collect();
            want.sort();
            let mut got: Vec<(String, String)> = set
                .policies()
                .map(|p| (p.info().name.clone(), p.info().sha256.to_ascii_lowercase()))
                .collect();
            got.sort();
            if got != want {
                return Err(LoadError::NotTheSet {
                    dir: dir.to_owned(),
                    expected: want.iter().map(|(n, d)| format!("{n} {d}")).collect(),
                    loaded: got.iter().map(|(n, d)| format!("{n} {d}")).collect(),
                });
            }
        }
        // Measured only once the whole set has loaded: a set that fails
        // to load leaves no trace in the PCR.
        let generation = self.next_generation.load(Ordering::SeqCst);
        let mut not_extended = 0;
        for p in set.policies() {
            let extended =
                measurer
                    .measure(p.info(), generation)
                    .map_err(|source| LoadError::Measure {
                        path: p.info().file.clone(),
                        source,
                    })?;
            if !extended {
                not_extended += 1;
                self.counters
                    .loads_not_extended
                    .fetch_add(1, Ordering::Relaxed);
                log::warn!(
                    "policy {} (sha256 {}) loaded WITHOUT a TPM extend",
                    p.info().name,
                    p.info().sha256
                );
            }
        }
        Ok((set, not_extended))
    }

    /// Judge one event with the set in force.
    pub fn evaluate(&self, event: &Event<'_>) -> Outcome {
        let outcome = lock(&self.current).evaluate(event);
        self.count(event, &outcome);
        outcome
    }

    /// Judge one JSON event (as `guardian run` prints them).
    pub fn evaluate_json(&self, event: &JsonEvent) -> Result<Outcome, EventError> {
        self.evaluate_fields(&event.fields())
    }

    /// Judge one event from its fields (the daemon's events, which are
    /// never parsed back from JSON). A failed policy is counted and logged
    /// here, once; an event that does not convert is counted as a bad
    /// event.
    pub fn evaluate_fields(&self, event: &EventFields<'_>) -> Result<Outcome, EventError> {
        match event.to_abi() {
            Ok(e) => Ok(self.evaluate(&e)),
            Err(err) => {
                self.counters.bad_events.fetch_add(1, Ordering::Relaxed);
                Err(err)
            }
        }
    }

    fn count(&self, event: &Event<'_>, outcome: &Outcome) {
        let c = &self.counters;
        c.evaluations.fetch_add(1, Ordering::Relaxed);
        match outcome.decision {
            Decision::Deny => c.denied.fetch_add(1, Ordering::Relaxed),
            Decision::Alert => c.alerted.fetch_add(1, Ordering::Relaxed),
            Decision::Allow => 0,
        };
        for (policy, err) in outcome.failures() {
            c.failures.fetch_add(1, Ordering::Relaxed);
            match err {
                CallError::OutOfFuel { .. } => c.out_of_fuel.fetch_add(1, Ordering::Relaxed),
                CallError::BadVerdict { .. } | CallError::BadResult(_) => {
                    c.bad_verdicts.fetch_add(1, Ordering::Relaxed)
                }
                CallError::Trap(_) | CallError::TooLarge { .. } => {
                    c.traps.fetch_add(1, Ordering::Relaxed)
                }
            };
            log::warn!(
                "{}",
                failure_alert(policy, err, event, self.settings.fail_mode)
            );
        }
    }

    /// The merged static rules of the set in force.
    pub fn rules(&self) -> StaticRules {
        lock(&self.current).rules().clone()
    }

    /// The generation in force.
    pub fn generation(&self) -> u64 {
        lock(&self.current).generation()
    }

    /// Counters and the policies in force.
    pub fn stats(&self) -> PolicyStats {
        let c = &self.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (generation, policies, logged, suppressed) = {
            let set = lock(&self.current);
            let generation = set.generation();
            let infos: Vec<PolicyInfo> = set.policies().map(|p| p.info().clone()).collect();
            let (mut l, mut s) = (0, 0);
            for p in set.policies() {
                l += p.counters().logged.load(Ordering::Relaxed);
                s += p.counters().log_suppressed.load(Ordering::Relaxed);
            }
            (generation, infos, l, s)
        };
        PolicyStats {
            generation,
            fail_mode: self.settings.fail_mode.name().to_owned(),
            policies,
            evaluations: g(&c.evaluations),
            denied: g(&c.denied),
            alerted: g(&c.alerted),
            failures: g(&c.failures),
            out_of_fuel: g(&c.out_of_fuel),
            traps: g(&c.traps),
            bad_verdicts: g(&c.bad_verdicts),
            bad_events: g(&c.bad_events),
            reloads: g(&c.reloads),
            reload_failures: g(&c.reload_failures),
            last_reload_error: lock(&self.last_error).clone(),
            loads_not_extended: g(&c.loads_not_extended),
            policy_log_messages: logged,
            policy_log_suppressed: suppressed,
        }
    }
}

/// The alert text for a policy that failed on an event: names the policy,
/// the event and what was applied instead.
pub fn failure_alert(policy: &str, err: &CallError, event: &Event<'_>, mode: FailMode) -> String {
    format!(
        "policy {policy} failed on {}: {err}; fail-{}: {}",
        super::event::describe(event),
        mode.name(),
        mode.decision().name()
    )
}
