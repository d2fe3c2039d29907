//! guardian: an integrity guardian for AI inference on edge boards.
//!
//! It keeps model files and the inference process honest: eBPF programs in
//! the kernel deny (BPF LSM) or report (tracepoints) any attempt to modify a
//! protected model, every decision is a JSON security event, and the mode in
//! force is always visible. This crate is the agent; `main.rs` only parses
//! the command line and calls into it.
//!
//! Where things are:
//!
//! | module | what |
//! |---|---|
//! | [`config`] | the TOML config, environment overrides, validation |
//! | [`kernel`] | probing the running kernel (BTF, LSM list, tracepoints) |
//! | [`btf`] | reading struct offsets from the kernel's BTF for the eBPF programs |
//! | [`guard`] | loading the eBPF object, filling its maps, choosing enforce or detect |
//! | [`events`] | decoding kernel records into JSON-line security events |
//! | [`status`] | the state `guardian status` shows |
//! | [`measure`] | the boot step: measure the manifest's models into a TPM PCR |
//! | [`manifest`] | the signed model manifest, and why PCR 14 |
//! | [`signing`] | Ed25519 / ECDSA P-256 detached signatures, as openssl makes them |
//! | [`hashing`] | streaming, parallel SHA-256 of model files |
//! | [`mlog`] | the measurement log: append-only, replay, TCG and CEL exports |
//! | [`tpm`] | the TPM through tss-esapi: PCR extend and read, attestation key, quote |
//! | [`attest`] | evidence bundles for a verifier's nonce, and the offline verifier |
//! | [`continuous`] | in the daemon: tamper records, re-measurement, guard state into the TPM |
//! | [`policy`] | signed WebAssembly policies in wasmi: load, measure, evaluate, hot swap, static rules |
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
pub mod events;
pub mod guard;
pub mod hashing;
pub mod kernel;
pub mod manifest;
pub mod measure;
pub mod mlog;
pub mod policy;
pub mod signing;
pub mod status;
pub mod tpm;

use std::{collections::BTreeMap, future::Future, time::Duration};

use tokio::io::{Interest, unix::AsyncFd};

use crate::{
    config::Config,
    events::{Decoder, Sink},
    guard::{Guard, GuardError, Mode, Targets},
    kernel::KernelFeatures,
    status::{Status, StatusError},
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
    /// The guard did not start.
    #[error(transparent)]
    Guard(#[from] GuardError),
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
}

/// Counters kept by the agent itself (the kernel keeps its own).
#[derive(Default)]
struct AgentCounters {
    written: u64,
    write_errors: u64,
    undecodable: u64,
}

/// Run the daemon until `shutdown` completes.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    // 1. Resolve paths first: a bad config must fail before the kernel is
    //    touched, so nothing is left half-attached.
    let targets = Targets::resolve(&config.guard)?;
    log::info!(
        "protecting {} file(s); {} allowed writer(s)",
        targets.files.len(),
        targets.writers.len()
    );
    // 2. The event output, for the same reason.
    let mut sink = Sink::open(&config.events.output).map_err(|source| RunError::Sink {
        path: config.events.output.clone(),
        source,
    })?;
    // 3. Kernel features decide what the guard can do.
    let features = KernelFeatures::probe();
    // 4. Load, fill, attach.
    let mut guard = Guard::start(
        EBPF_OBJECT,
        config.guard.mode,
        &targets,
        &features,
        &config.kernel.btf,
        config.events.ring_buffer_kib * 1024,
    )?;
    match guard.mode() {
        Mode::Enforce => log::info!("mode: ENFORCE — {}", guard.reason()),
        Mode::Detect => log::warn!(
            "mode: DETECT-ONLY — tampering is reported, not prevented: {}",
            guard.reason()
        ),
    }
    let mut decoder = Decoder::new(guard.mode(), &targets);
    // Continuous attestation: its own thread owns the TPM and the log.
    // The guard's state goes into the evidence first.
    let attestor = continuous::Attestor::start(&config);
    attestor.send(continuous::Message::State(format!(
        "guard started: mode {}; {}; hooks: {}",
        guard.mode().as_str(),
        guard.reason(),
        guard
            .hooks()
            .iter()
            .map(|h| format!("{} via {} ({})", h.hook, h.mechanism, h.attached.join(" ")))
            .collect::<Vec<_>>()
            .join("; ")
    )));
    let ring = guard.take_events()?;
    // SAFETY: the ring buffer owns its map fd and keeps it open, unchanged,
    // for as long as the AsyncFd owns the ring buffer.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| RunError::Events(e.into()))?;

    let mut counters = AgentCounters::default();
    let started = status::now();
    let mut last_drops = 0u64;
    let mut publish = |guard: &Guard, counters: &AgentCounters| -> Result<(), RunError> {
        let st = snapshot(
            &config,
            &features,
            &targets,
            guard,
            counters,
            &attestor.stats(),
            &started,
        );
        // Lost events are part of the evidence too.
        let drops = st.counters.get("ringbuf_drops").copied().unwrap_or(0);
        if drops > last_drops {
            attestor.send(continuous::Message::State(format!(
                "kernel ring buffer full: {drops} event(s) lost in total"
            )));
            last_drops = drops;
        }
        st.write(&config.status.path)?;
        Ok(())
    };
    // 5. Publishing the status file is the readiness signal.
    publish(&guard, &counters)?;
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
                dirty |= drain(ready.get_inner_mut(), &mut decoder, &mut sink, &mut counters, &attestor) > 0;
                ready.clear_ready();
            }
            _ = tick.tick() => {
                publish(&guard, &counters)?;
                dirty = false;
            }
            _ = soon.tick(), if dirty => {
                publish(&guard, &counters)?;
                dirty = false;
            }
        }
    }
    // 6. Last events, then withdraw the status so `guardian status` does
    //    not report a guard that is gone.
    drain(
        ring.get_mut(),
        &mut decoder,
        &mut sink,
        &mut counters,
        &attestor,
    );
    attestor.stop();
    let _ = std::fs::remove_file(&config.status.path);
    log::info!("stopped; the kernel programs are detached");
    Ok(())
}

/// Handle every record waiting in the ring buffer; returns how many.
fn drain(
    ring: &mut aya::maps::RingBuf<aya::maps::MapData>,
    decoder: &mut Decoder,
    sink: &mut Sink,
    counters: &mut AgentCounters,
    attestor: &continuous::Attestor,
) -> usize {
    let mut n = 0;
    while let Some(item) = ring.next() {
        n += 1;
        match decoder.decode(&item) {
            Ok(ev) => {
                match sink.write(&ev) {
                    Ok(()) => counters.written += 1,
                    Err(e) => {
                        counters.write_errors += 1;
                        log::error!("event lost: cannot write it: {e}");
                    }
                }
                attestor.send(continuous::Message::Event(Box::new(ev)));
            }
            Err(e) => {
                counters.undecodable += 1;
                log::error!("{e}");
            }
        }
    }
    n
}

fn snapshot(
    config: &Config,
    features: &KernelFeatures,
    targets: &Targets,
    guard: &Guard,
    agent: &AgentCounters,
    attest: &continuous::Stats,
    started: &str,
) -> Status {
    let mut counters: BTreeMap<String, u64> = BTreeMap::new();
    let mut warnings = Vec::new();
    match guard.counters() {
        Ok(k) => counters.extend(k.into_iter().map(|(k, v)| (k.to_owned(), v))),
        Err(e) => warnings.push(format!("kernel counters unreadable: {e}")),
    }
    counters.insert("events_written".into(), agent.written);
    counters.insert("event_write_errors".into(), agent.write_errors);
    counters.insert("events_undecodable".into(), agent.undecodable);
    counters.insert("tamper_records".into(), attest.tamper_records);
    counters.insert("tamper_rate_limited".into(), attest.tamper_suppressed);
    counters.insert("models_remeasured".into(), attest.remeasured);
    counters.insert("attest_queue_drops".into(), attest.queue_drops);
    counters.insert("attest_errors".into(), attest.errors);
    for d in &attest.degraded {
        warnings.push(format!("continuous attestation: {d}"));
    }
    let measured_boot = status::MeasuredBoot::from_log(&config.measure.log);
    warnings.extend(measured_boot.warnings());
    if guard.mode() == Mode::Detect {
        warnings.push(format!(
            "detect-only: tampering is reported after the fact, not prevented ({})",
            guard.reason()
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
        mode: guard.mode(),
        mode_reason: guard.reason().to_owned(),
        kernel: features.clone(),
        hooks: guard.hooks().to_vec(),
        protected_files: targets.files.len(),
        allowed_writers: targets.writers.len(),
        measured_boot: Some(measured_boot),
        counters,
        warnings,
    }
}
