//! guardian: an integrity guardian for AI inference on edge boards.
//!
//! It keeps model files and the inference process honest: eBPF programs in
//! the kernel deny (BPF LSM) or report (tracepoints) any attempt to modify a
//! protected model or tamper with the inference process, every decision is
//! a JSON security event judged again by signed policies, and what is in
//! force for each hook is always visible. This crate is the agent and does
//! every subcommand's work; the binary (`main.rs` and its `cli/` modules)
//! only parses the command line, calls into it and prints what it returns.
//!
//! Where things are:
//!
//! | module | what |
//! |---|---|
//! | [`config`] | the TOML config, environment overrides, validation |
//! | [`kernel`] | probing the running kernel (BTF, LSM list, tracepoints) |
//! | [`btf`] | reading struct offsets from the kernel's BTF for the eBPF programs |
//! | [`hooks`] | hooks, mechanisms, modes and verdicts as types (a leaf everyone may use) |
//! | [`targets`] | what is protected, allowed and recognised, resolved from the config to inodes and prefixes |
//! | [`enforce`] | one owner for every rung: starts, refreshes and stops them, and says what is in force |
//! | [`guard`] | loading (or adopting) the pinned eBPF object, filling its maps, the kernel's ladder |
//! | [`events`] | decoding kernel records into JSON-line security events |
//! | [`fanotify`] | the userspace rungs: permission events deny write-opens, notification events report changes, where BPF LSM cannot attach |
//! | [`prescan`] | writers that were there before the guard: writable descriptors and shared writable mappings of protected files, found in `/proc` at start |
//! | [`pathcheck`] | the names the service opens still lead to the guarded inodes and mounts (after the fact, on the status timer) |
//! | [`systemd`] | readiness and the watchdog for `guardian.service` (`sd_notify`) |
//! | [`status`] | the state `guardian status` shows |
//! | [`measure`] | the boot step: measure the manifest's models into a TPM PCR |
//! | [`manifest`] | the signed model manifest, and why PCR 14 |
//! | [`signing`] | Ed25519 / ECDSA P-256 detached signatures, as openssl makes them |
//! | [`hashing`] | streaming, parallel SHA-256 of model files |
//! | [`evidence`] | what is measured, the measurement log, the ledger (log + TPM: append, extend, void), TCG and CEL exports |
//! | [`tpm`] | the TPM through tss-esapi: PCR extend and read, attestation key, quote |
//! | [`attest`] | evidence bundles for a verifier's nonce, and the offline verifier |
//! | [`enrol`] | AK enrolment: EK certificate chain, software MakeCredential, ActivateCredential |
//! | [`unload`] | who may switch the guard off: operator-signed unload tokens for one boot, and what the running guard was loaded with |
//! | [`continuous`] | in the daemon: tamper records, re-measurement, guard state into the TPM |
//! | [`policy`] | signed WebAssembly policies in wasmi: load, measure, evaluate, hot swap, static rules |
//! | [`report`] | the fleet link from `[report]`: the spool and the link (`guardian-report`), and which class each record of the agent is |
//! | [`rules`] | the kernel's tables: the config widened by the policies' static rules |
//!
//! The kernel side lives in `guardian-ebpf` (one file per hook) and the
//! types both sides share in `guardian-common`. The eBPF object is built by
//! `build.rs` and embedded in this crate as [`EBPF_OBJECT`].
//!
//! [`run`] is the daemon (`guardian run`): it takes its shutdown signal as a
//! future so tests can stop it.

pub mod attest;
pub mod btf;
pub mod config;
pub mod continuous;
pub mod enforce;
pub mod enrol;
pub mod events;
pub mod evidence;
pub mod fanotify;
pub mod guard;
pub mod hashing;
pub mod hooks;
pub mod kernel;
pub mod manifest;
pub mod measure;
pub mod pathcheck;
pub mod policy;
pub mod prescan;
pub mod report;
pub mod rules;
pub mod signing;
pub mod status;
pub mod systemd;
pub mod targets;
pub mod tpm;
pub mod unload;

use std::{collections::BTreeMap, future::Future, path::Path, sync::Arc, time::Duration};

use tokio::io::{Interest, unix::AsyncFd};

use crate::{
    config::Config,
    config::Response,
    enforce::{EnforceError, Enforcement},
    events::{Decoder, Sink},
    guard::{GuardError, StartOptions},
    hooks::{Mechanism, Mode, Verdict},
    kernel::KernelFeatures,
    status::{Status, StatusError},
    targets::{Targets, TargetsError},
};

/// The eBPF object, built by `build.rs` (empty if this binary was built
/// without the eBPF toolchain; [`run`] then refuses to start and says so).
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/guardian-ebpf"));

/// guardian's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

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
}

/// Counters kept by the agent itself (the kernel keeps its own).
#[derive(Default)]
struct AgentCounters {
    written: u64,
    write_errors: u64,
    undecodable: u64,
    killed: u64,
    kill_failures: u64,
    /// Differences found between the kernel's tables and what guardian
    /// wrote (each one put back).
    tables_tampered: u64,
    /// Guarded names found leading elsewhere by the path check.
    path_changes: u64,
    /// Writers of protected files found holding them at start.
    prewriters: u64,
}

/// Run the daemon until `shutdown` completes.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    // 1. Resolve paths first: a bad config must fail before the kernel is
    //    touched, so nothing is left half-attached.
    let targets = Targets::resolve(&config.guard, &config.service, &config.own_files())?;
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
    // 2. The event output, for the same reason.
    let mut sink = Sink::open(&config.events.output).map_err(|source| RunError::Sink {
        path: config.events.output.clone(),
        source,
    })?;
    // 3. Kernel features decide what the guard can do.
    let features = KernelFeatures::probe();
    // 4. Who may unload it, fixed into the guard with a digest of this
    //    config (a pinned guard loaded with another config is not taken
    //    over).
    let auth = unload::auth_for(&config)?;
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
    // 5. Every rung, strongest first: load, fill and attach the guard,
    //    then the userspace rungs for what the kernel could not take.
    let (fan_tx, mut fan_rx) = tokio::sync::mpsc::unbounded_channel();
    let (tx, rx) = std::sync::mpsc::channel();
    let mut enforcement = Enforcement::start(
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
        &tx,
    )?;
    drop(tx);
    forward(rx, fan_tx);
    log_coverage(enforcement.coverage());
    let opens_traced = enforcement.opens_traced();
    let mut decoder = Decoder::new(enforcement.mode(), &targets);
    // Continuous attestation: its own thread owns the TPM and the log.
    // The guard's state goes into the evidence first.
    let attestor = continuous::Attestor::start(&config);
    attestor.send(continuous::Message::Guard {
        action: if enforcement.guard().adopted() {
            "adopt"
        } else {
            "start"
        },
        mode: enforcement.mode().as_str().to_owned(),
        detail: format!(
            "{}; hooks: {}",
            enforcement.coverage().reason,
            enforcement
                .coverage()
                .hooks
                .iter()
                .map(|h| format!("{} via {} ({})", h.hook, h.mechanism, h.attached.join(" ")))
                .collect::<Vec<_>>()
                .join("; ")
        ),
    });
    // 6. Policies: the signed set in the policy directory, each load
    //    measured into the TPM by the attestor before the set is put in
    //    force; their static rules widen the kernel's tables.
    let engine = Arc::new(policy::PolicyEngine::new(
        policy::PolicySettings::from_config(&config, enforcement.mode() == Mode::Enforce),
        Box::new(attestor.measurer()),
    ));
    let mut targets = targets;
    let mut pstate = PolicyState::default();
    if config.policy.dir.is_dir() {
        let result = engine.reload();
        pstate.apply(
            result,
            &config,
            &mut enforcement,
            &mut targets,
            &mut decoder,
        );
    } else {
        log::info!(
            "no policy directory {}: no policies; the kernel tables come from the config alone",
            config.policy.dir.display()
        );
    }
    // Where the guarded names lead now: what the path check compares with.
    let mut paths = pathcheck::PathCheck::new(&targets);
    // Writers from before the guard: no hook judged their opens or maps.
    let mut prewriters = Vec::new();
    let proc = Path::new("/proc");
    for found in prescan::search(proc, &targets, std::process::id()) {
        log::error!(
            "pid {} already holds {} on {}: opened before the guard started",
            found.pid,
            found.what,
            found.file.display()
        );
        prewriters.push(found.event(proc));
    }
    pstate.fingerprint = dir_fingerprint(&config.policy.dir);
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(RunError::Events)?;
    let mut reloading: Option<
        tokio::task::JoinHandle<Result<policy::ReloadReport, policy::LoadError>>,
    > = None;

    let ring = enforcement.take_events()?;
    // SAFETY: the ring buffer owns its map fd and keeps it open, unchanged,
    // for as long as the AsyncFd owns the ring buffer.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| RunError::Events(e.into()))?;

    // (Writers found at start are reported before readiness: the first
    // status counts them.)
    let mut counters = AgentCounters {
        prewriters: prewriters.len() as u64,
        ..AgentCounters::default()
    };
    for ev in prewriters {
        handle_event(
            ev,
            &mut sink,
            &mut counters,
            &attestor,
            config.guard.response,
            &engine,
        );
    }
    count_written(&mut counters, sink.flush());
    let started = status::now();
    let mut last_drops = 0u64;
    let mut last_unconfigured = 0u64;
    let mut measured_boot = status::MeasuredBootWatch::new(&config.measure.log);
    let mut publish = |enforcement: &Enforcement,
                       targets: &Targets,
                       counters: &AgentCounters,
                       pstate: &PolicyState|
     -> Result<(), RunError> {
        let st = snapshot(&Parts {
            config: &config,
            features: &features,
            targets,
            enforcement,
            agent: counters,
            attest: &attestor.stats(),
            started: &started,
            policies: &engine.stats(),
            pstate,
            measured_boot: measured_boot.refresh(),
        });
        // A hook that found no config could judge nothing: evidence too.
        let unconfigured = st
            .counters
            .get("unconfigured_hook_calls")
            .copied()
            .unwrap_or(0);
        if unconfigured > last_unconfigured {
            log::error!(
                "{unconfigured} hook call(s) found guardian's config entry missing: they allowed without judging"
            );
            attestor.send(continuous::Message::Guard {
                action: "tables",
                mode: enforcement.mode().as_str().to_owned(),
                detail: format!("{unconfigured} hook call(s) found the config entry missing"),
            });
            last_unconfigured = unconfigured;
        }
        // Lost events are part of the evidence too.
        let drops = st.counters.get("ringbuf_drops").copied().unwrap_or(0);
        if drops > last_drops {
            attestor.send(continuous::Message::Guard {
                action: "drops",
                mode: enforcement.mode().as_str().to_owned(),
                detail: format!("kernel ring buffer full: {drops} event(s) lost in total"),
            });
            last_drops = drops;
        }
        st.write(&config.status.path)?;
        Ok(())
    };
    // 7. Publishing the status file is the readiness signal (and, under
    //    systemd, READY=1: the inference service is ordered after it).
    publish(&enforcement, &targets, &counters, &pstate)?;
    let notify = systemd::Notifier::from_env();
    notify.ready(&format!(
        "{}: {}",
        enforcement.mode(),
        enforcement.coverage().reason
    ));
    let mut dog = tokio::time::interval(notify.ping_every().unwrap_or(Duration::from_secs(3600)));
    log::info!(
        "ready; events to {}, status in {}",
        if config.events.output == "-" {
            "stdout"
        } else {
            &config.events.output
        },
        config.status.path.display()
    );

    // Counters are refreshed on a timer, and shortly after events arrive
    // (at most every 200 ms, so a flood does not turn into a flood of
    // status writes).
    let mut tick = tokio::time::interval(Duration::from_secs(config.status.interval_secs));
    let mut soon = tokio::time::interval(Duration::from_millis(200));
    let mut dirty = false;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            ready = ring.readable_mut() => {
                let mut ready = ready.map_err(RunError::Events)?;
                dirty |= drain(ready.get_inner_mut(), &mut decoder, &mut sink, &mut counters, &attestor, config.guard.response, &engine) > 0;
                ready.clear_ready();
            }
            Some(ev) = fan_rx.recv() => {
                // With syscall_detect, the raw tracepoint reports allowed
                // write-opens already.
                if !(ev.verdict == Verdict::Allow && ev.hook == fanotify::HOOK && opens_traced) {
                    handle_event(ev, &mut sink, &mut counters, &attestor, config.guard.response, &engine);
                    let flushed = sink.flush();
                    count_written(&mut counters, flushed);
                    dirty = true;
                }
            }
            _ = hup.recv() => {
                log::info!("SIGHUP: reloading the policies from {}", config.policy.dir.display());
                if reloading.is_none() {
                    let e = Arc::clone(&engine);
                    reloading = Some(tokio::task::spawn_blocking(move || e.reload()));
                }
            }
            done = async {
                match reloading.as_mut() {
                    Some(h) => h.await,
                    None => std::future::pending().await,
                }
            }, if reloading.is_some() => {
                reloading = None;
                match done {
                    Ok(result) => {
                        pstate.apply(result, &config, &mut enforcement, &mut targets, &mut decoder);
                        // The policies may guard more paths: report what
                        // changed so far, then watch the new set.
                        for ev in paths.check() {
                            counters.path_changes += u64::from(ev.verdict == Verdict::Alert);
                            handle_event(ev, &mut sink, &mut counters, &attestor, config.guard.response, &engine);
                        }
                        count_written(&mut counters, sink.flush());
                        paths = pathcheck::PathCheck::new(&targets);
                    }
                    Err(e) => log::error!("policies: the reload task failed: {e}"),
                }
                publish(&enforcement, &targets, &counters, &pstate)?;
            }
            _ = tick.tick() => {
                // The names still lead where they did?
                for ev in paths.check() {
                    counters.path_changes += u64::from(ev.verdict == Verdict::Alert);
                    log::error!("{}: {}", ev.file.as_deref().unwrap_or("?"), ev.name.as_deref().unwrap_or(""));
                    handle_event(ev, &mut sink, &mut counters, &attestor, config.guard.response, &engine);
                    count_written(&mut counters, sink.flush());
                }
                // The kernel's tables still hold what guardian wrote?
                match enforcement.check_tables(&targets) {
                    Ok(diffs) if !diffs.is_empty() => {
                        counters.tables_tampered += diffs.len() as u64;
                        for d in &diffs {
                            log::error!("guard tables changed behind guardian's back, put back: {d}");
                        }
                        attestor.send(continuous::Message::Guard {
                            action: "tables",
                            mode: enforcement.mode().as_str().to_owned(),
                            detail: diffs.join("; "),
                        });
                    }
                    Ok(_) => {}
                    Err(e) => log::warn!("cannot check the guard's tables: {e}"),
                }
                // A change in the policy directory is a reload too.
                let fp = dir_fingerprint(&config.policy.dir);
                if fp != pstate.fingerprint && reloading.is_none() {
                    log::info!("the policy directory {} changed: reloading", config.policy.dir.display());
                    pstate.fingerprint = fp;
                    let e = Arc::clone(&engine);
                    reloading = Some(tokio::task::spawn_blocking(move || e.reload()));
                }
                publish(&enforcement, &targets, &counters, &pstate)?;
                dirty = false;
            }
            _ = dog.tick(), if notify.ping_every().is_some() => {
                // Alive only if every part that answers the kernel is.
                if enforcement.alive() {
                    notify.ping();
                } else {
                    log::error!("the fanotify decision thread has stopped: the watchdog is no longer fed, so systemd restarts the agent");
                }
            }
            _ = soon.tick(), if dirty => {
                publish(&enforcement, &targets, &counters, &pstate)?;
                dirty = false;
            }
        }
    }
    notify.stopping();
    // 8. Last events, then withdraw the status so `guardian status` does
    //    not report a guard that is gone.
    drain(
        ring.get_mut(),
        &mut decoder,
        &mut sink,
        &mut counters,
        &attestor,
        config.guard.response,
        &engine,
    );
    let mode = enforcement.mode();
    let pinned = enforcement.stop();
    attestor.send(continuous::Message::Guard {
        action: if pinned.is_some() { "stop" } else { "unload" },
        mode: mode.as_str().to_owned(),
        detail: match &pinned {
            Some(p) => format!(
                "the agent stopped; its kernel programs stay attached, pinned in {}",
                p.display()
            ),
            None => "the agent stopped; its kernel programs are detached".to_owned(),
        },
    });
    attestor.stop();
    let _ = std::fs::remove_file(&config.status.path);
    match &pinned {
        Some(p) => log::info!(
            "stopped; the kernel programs stay attached (pinned in {}); `guardian stop --unload` removes them",
            p.display()
        ),
        None => log::info!("stopped; the kernel programs are detached"),
    }
    Ok(())
}

/// Handle every record waiting in the ring buffer; returns how many.
fn drain(
    ring: &mut aya::maps::RingBuf<aya::maps::MapData>,
    decoder: &mut Decoder,
    sink: &mut Sink,
    counters: &mut AgentCounters,
    attestor: &continuous::Attestor,
    response: Response,
    engine: &policy::PolicyEngine,
) -> usize {
    let mut n = 0;
    while let Some(item) = ring.next() {
        n += 1;
        match decoder.decode(&item) {
            Ok(ev) => handle_event(ev, sink, counters, attestor, response, engine),
            Err(e) => {
                counters.undecodable += 1;
                log::error!("{e}");
            }
        }
    }
    // The batch goes out in one write.
    let flushed = sink.flush();
    count_written(counters, flushed);
    n
}

/// `guardian stop`: SIGTERM the running agent (found through its status
/// file) and wait up to 10 s for it to go; with `unload`, remove the pins,
/// which detaches the kernel programs. Returns what was done, line by line.
pub fn stop(config: &Config, unload: bool, token: Option<&Path>) -> Result<Vec<String>, StopError> {
    let mut done = Vec::new();
    // Unloading ends enforcement: it needs the authorisation the guard was
    // loaded with, checked before anything is touched.
    let mut why = String::new();
    if unload {
        why = authorise_unload(config, token, &mut done)?;
    }
    match status::Status::read(&config.status.path) {
        Ok(st) if st.agent_alive() => {
            let pid = st.pid as libc::pid_t;
            // SAFETY: plain kill(2).
            if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
                return Err(StopError::Signal {
                    pid,
                    source: std::io::Error::last_os_error(),
                });
            }
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while std::path::Path::new(&format!("/proc/{pid}")).exists() {
                if std::time::Instant::now() > deadline {
                    return Err(StopError::Timeout { pid });
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            done.push(format!("stopped guardian (pid {pid})"));
        }
        _ => done.push("no guardian agent was running".to_owned()),
    }
    let dir = &config.guard.pin_dir;
    if unload && dir.is_dir() {
        // The window without enforcement starts now: it goes into the
        // evidence before the programs go.
        match record_unload(config, &why) {
            Ok(()) => done.push("recorded the unload in the measurement log and the TPM".into()),
            Err(e) => {
                log::error!("the unload could not be recorded in the evidence: {e}");
                done.push(format!("the unload is NOT in the evidence: {e}"));
            }
        }
    }
    if unload {
        let mut n = 0;
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                guard::remove_pins(&e.path()).map_err(|source| StopError::Pins {
                    path: e.path(),
                    source,
                })?;
                n += 1;
            }
        }
        let _ = std::fs::remove_dir(dir);
        done.push(if n > 0 {
            format!(
                "removed the pins in {}: the kernel programs are detached, nothing is enforced now",
                dir.display()
            )
        } else {
            format!("no pins in {}", dir.display())
        });
    } else if dir.is_dir() {
        done.push(format!(
            "the kernel programs stay attached (pinned in {}); `guardian stop --unload` removes them",
            dir.display()
        ));
    }
    Ok(done)
}

/// Why `guardian stop` failed. Nothing is touched when an unload is
/// refused.
#[derive(Debug, thiserror::Error)]
pub enum StopError {
    /// The agent could not be signalled.
    #[error("cannot signal guardian (pid {pid})")]
    Signal {
        /// Its pid.
        pid: libc::pid_t,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The agent did not go in time.
    #[error("guardian (pid {pid}) did not stop within 10 s")]
    Timeout {
        /// Its pid.
        pid: libc::pid_t,
    },
    /// A pin directory could not be removed.
    #[error("cannot remove the pins in {path}")]
    Pins {
        /// The object's pin directory.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The record of who may unload a pinned guard could not be read.
    #[error(transparent)]
    Guard(#[from] GuardError),
    /// This boot's id could not be read.
    #[error(transparent)]
    Unload(#[from] unload::UnloadError),
    /// No token was given where one is needed.
    #[error(
        "unloading the guard takes a token signed by an operator key it was loaded with ([guard] unload_keys): `guardian unload-token --key OPERATOR.pem --pub OPERATOR.pub --boot-id {boot_id} --guard GUARD_ID -o unload.json` on the operator's machine, then `guardian stop --unload --token unload.json` (the device's boot id is {boot_id}; `guardian status` shows the guard id)"
    )]
    TokenNeeded {
        /// This boot's id.
        boot_id: String,
    },
    /// The token does not authorise unloading a pinned guard.
    #[error("the unload of the guard pinned in {pins} is refused")]
    Refused {
        /// The guard's pin directory.
        pins: std::path::PathBuf,
        /// Why.
        #[source]
        source: unload::UnloadError,
    },
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

/// May the pinned guard be unloaded? Checks `token` against every pinned
/// guard's record of who may; returns the words for the evidence.
fn authorise_unload(
    config: &Config,
    token: Option<&Path>,
    done: &mut Vec<String>,
) -> Result<String, StopError> {
    let dir = &config.guard.pin_dir;
    let mut auths: Vec<(std::path::PathBuf, unload::Auth)> = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        // A record that is there but cannot be read refuses the unload.
        if let Some(a) = guard::pinned_auth(&e.path())? {
            auths.push((e.path(), a));
        }
    }
    if auths.is_empty() {
        return Ok("no record of who may unload it (an older guard)".to_owned());
    }
    if auths.iter().all(|(_, a)| a.without_token) {
        log::warn!("maintenance mode: unloading without a token");
        done.push("maintenance mode: unloaded without a token".to_owned());
        return Ok("maintenance mode, no token".to_owned());
    }
    let here = unload::boot_id()?;
    let Some(path) = token else {
        return Err(StopError::TokenNeeded { boot_id: here });
    };
    let mut reason = String::new();
    for (pins, auth) in auths.iter().filter(|(_, a)| !a.without_token) {
        let t = unload::check(path, auth, &here, unload::now()).map_err(|source| {
            StopError::Refused {
                pins: pins.clone(),
                source,
            }
        })?;
        let signer = signing::TrustedKey::from_pem(&t.signer, path)
            .map(|k| k.fingerprint)
            .unwrap_or_default();
        reason = format!(
            "token for guard {} signed by key {}…, issued {}, reason: {}",
            t.guard,
            &signer[..signer.len().min(16)],
            t.issued,
            t.reason
        );
    }
    done.push(format!("unload authorised: {reason}"));
    Ok(reason)
}

/// Record `guardian stop --unload` in the ledger.
fn record_unload(config: &Config, why: &str) -> Result<(), evidence::LedgerError> {
    let tpm = evidence::ledger::open_tpm(config.measure.tcti.as_deref())
        .map(|t| t.tpm)
        .map_err(evidence::LedgerError::Tpm)?;
    let mut ledger = evidence::Ledger::open(&config.measure.log, Some(tpm))?;
    let pcr = std::fs::read_to_string(&config.measure.manifest)
        .ok()
        .and_then(|t| manifest::Manifest::parse(&t).ok())
        .map_or(manifest::DEFAULT_PCR, |m| m.pcr);
    let who = format!(
        "`guardian stop --unload` by uid {} ({why}): the pinned programs in {} are removed; nothing enforces until the next start",
        // SAFETY: getuid has no preconditions.
        unsafe { libc::getuid() },
        config.guard.pin_dir.display()
    );
    ledger.record(pcr, evidence::ledger::guard_event("unload", "", who))?;
    Ok(())
}

/// One decoded event: the policies, the response, the output, the
/// attestor.
fn handle_event(
    mut ev: events::SecurityEvent,
    sink: &mut Sink,
    counters: &mut AgentCounters,
    attestor: &continuous::Attestor,
    response: Response,
    engine: &policy::PolicyEngine,
) {
    // Every event goes through the policies in force.
    let mut policy_kill = false;
    if engine.generation() > 0 {
        match serde_json::to_value(&ev).and_then(serde_json::from_value::<policy::JsonEvent>) {
            Ok(json) => match engine.evaluate_json(&json) {
                Ok(outcome) => {
                    if let Ok(abi) = json.to_abi() {
                        for (name, err) in outcome.failures() {
                            log::warn!(
                                "{}",
                                policy::engine::failure_alert(
                                    name,
                                    err,
                                    &abi,
                                    engine.settings().fail_mode
                                )
                            );
                        }
                    }
                    policy_kill = outcome.decision != policy::Decision::Allow
                        && outcome.actions.contains(policy::Actions::KILL);
                    ev.policy = Some(rules::note(&outcome));
                }
                Err(e) => log::warn!("policies: event not evaluated: {e}"),
            },
            Err(e) => log::warn!("policies: event not converted: {e}"),
        }
    }
    // Nothing to answer when the kernel refused: nothing happened.
    let happened = ev.verdict != Verdict::Deny;
    if happened && ((ev.verdict == Verdict::Alert && response == Response::Kill) || policy_kill) {
        ev.response = Some(respond_kill(&ev, counters));
    }
    let written = sink.write(&ev);
    count_written(counters, written);
    attestor.send(continuous::Message::Event(Box::new(ev)));
}

/// Count what a sink write or flush did.
fn count_written(counters: &mut AgentCounters, result: Result<u64, events::SinkError>) {
    match result {
        Ok(n) => counters.written += n,
        Err(e) => {
            counters.write_errors += e.lost;
            log::error!("cannot write events: {e}");
        }
    }
}

/// Say what is in force, hook by hook, now that every rung has started.
fn log_coverage(c: &enforce::Coverage) {
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

/// Move fanotify's decisions from its thread into the event loop.
fn forward(
    rx: std::sync::mpsc::Receiver<events::SecurityEvent>,
    tx: tokio::sync::mpsc::UnboundedSender<events::SecurityEvent>,
) {
    let spawned = std::thread::Builder::new()
        .name("fanotify-events".into())
        .spawn(move || {
            while let Ok(ev) = rx.recv() {
                if tx.send(ev).is_err() {
                    break;
                }
            }
        });
    if let Err(e) = spawned {
        log::error!("fanotify events will not be printed: {e}");
    }
}

/// The daemon's view of the policy engine between reloads.
#[derive(Default)]
struct PolicyState {
    /// Names, sizes and times of the files in the policy directory.
    fingerprint: Vec<(String, u64, i64)>,
    /// Why the last set's static rules are not (all) in the kernel.
    rules_error: Option<String>,
}

impl PolicyState {
    /// Put a reload's result in force: the new set's static rules into the
    /// kernel's tables (the events already use the new set). A failed
    /// reload changes nothing.
    fn apply(
        &mut self,
        result: Result<policy::ReloadReport, policy::LoadError>,
        config: &Config,
        enforcement: &mut Enforcement,
        targets: &mut Targets,
        decoder: &mut Decoder,
    ) {
        let report = match result {
            Ok(r) => r,
            Err(e) => {
                log::error!("policies: reload failed, the previous set stays in force: {e}");
                return;
            }
        };
        log::info!(
            "policies: set {} in force: {}{}",
            report.generation,
            if report.policies.is_empty() {
                "none".to_owned()
            } else {
                report
                    .policies
                    .iter()
                    .map(|p| format!("{} ({}…)", p.name, p.sha256.get(..12).unwrap_or(&p.sha256)))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            if report.not_extended > 0 {
                format!(
                    "; {} load(s) NOT extended into the TPM",
                    report.not_extended
                )
            } else {
                String::new()
            }
        );
        let applied = rules::targets(config, &report.rules)
            .map_err(|e| e.to_string())
            .and_then(|t| {
                enforcement
                    .refresh(&t)
                    .map(|()| t)
                    .map_err(|e| e.to_string())
            });
        match applied {
            Ok(t) => {
                *decoder = Decoder::new(enforcement.mode(), &t);
                *targets = t;
                self.rules_error = None;
            }
            Err(e) => {
                log::error!(
                    "policies: the static rules of set {} are NOT in the kernel (the previous tables stay): {e}",
                    report.generation
                );
                self.rules_error = Some(format!("set {}: {e}", report.generation));
            }
        }
    }
}

/// What is in the policy directory, to notice a change.
fn dir_fingerprint(dir: &Path) -> Vec<(String, u64, i64)> {
    use std::os::unix::fs::MetadataExt as _;
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            Some((
                e.file_name().to_string_lossy().into_owned(),
                m.len(),
                m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            ))
        })
        .collect();
    out.sort();
    out
}

/// Kill the process behind an event the kernel could not deny. Only if
/// the pid still runs the executable the kernel reported (a recycled pid
/// is left alone), and never guardian itself or pid 1.
fn respond_kill(ev: &events::SecurityEvent, counters: &mut AgentCounters) -> String {
    let pid = ev.pid;
    if pid <= 1 || pid == std::process::id() {
        return format!("not killed: pid {pid} is exempt");
    }
    let same = std::fs::metadata(format!("/proc/{pid}/exe"))
        .map(|m| targets::inode_key(&m).ino == ev.exe_ino)
        .unwrap_or(false);
    if !same {
        counters.kill_failures += 1;
        return "not killed: the process is gone or runs another program now".to_owned();
    }
    // SAFETY: plain syscall with a pid and a signal number.
    let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    if rc == 0 {
        counters.killed += 1;
        log::warn!("killed pid {pid} ({}) after {}", ev.comm, ev.event);
        "killed".to_owned()
    } else {
        counters.kill_failures += 1;
        format!("not killed: {}", std::io::Error::last_os_error())
    }
}

/// Everything a status snapshot is made of.
struct Parts<'a> {
    config: &'a Config,
    features: &'a KernelFeatures,
    targets: &'a Targets,
    enforcement: &'a Enforcement,
    agent: &'a AgentCounters,
    attest: &'a continuous::Stats,
    started: &'a str,
    policies: &'a policy::PolicyStats,
    pstate: &'a PolicyState,
    /// This boot's measurements, read as the log grows.
    measured_boot: &'a status::MeasuredBoot,
}

fn snapshot(parts: &Parts<'_>) -> Status {
    let Parts {
        config,
        features,
        targets,
        enforcement,
        agent,
        attest,
        started,
        policies: pstats,
        pstate,
        measured_boot,
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
        version: VERSION.to_owned(),
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
            .map(unload::pinned_guard_id)
            .unwrap_or_default(),
        protected_files: targets.files.len(),
        allowed_writers: targets.writers.len(),
        measured_boot: Some(measured_boot.clone()),
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
