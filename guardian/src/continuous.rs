//! Continuous attestation inside `guardian run`: the daemon keeps the TPM
//! evidence current after boot.
//!
//! - **Tamper records.** Every denied or detected write-open of a protected
//!   file is logged and extended into the measurement PCR (digest: SHA-256
//!   of the event's JSON), so the attempt stays in every later quote even if
//!   the attacker eventually wins. Rate-limited per (file, executable) to
//!   one record per [`TAMPER_WINDOW`]; suppressed attempts are counted and
//!   the count goes into the next record.
//! - **Re-measurement.** A write-open that happened (an allowed writer, or
//!   detect mode) schedules a re-measurement of that model once writes have
//!   been quiet for [`QUIET`]; a timer (`[attest] remeasure_secs`)
//!   re-measures every model. A new record is extended only when the digest
//!   changed since its last measurement.
//! - **Guard state.** The mode and hooks in force at start, and every rise
//!   of the kernel's drop counters, are extended as state records, so the
//!   quote proves how the device was protected, not just what it ran.
//!
//! All of this is blocking work (hashing, TPM commands), so it runs on its
//! own thread that owns the TPM context, fed through a bounded channel; a
//! full channel is counted as a drop, never silent.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError},
    },
    time::{Duration, Instant},
};

use sha2::{Digest as _, Sha256};

use crate::{
    config::Config,
    events::SecurityEvent,
    manifest::{self, Manifest},
    mlog::{Kind, Log, Record},
    signing::TrustedKey,
    tpm::{self, Tpm},
};

/// At most one tamper record per (file, executable) in this window.
pub const TAMPER_WINDOW: Duration = Duration::from_secs(10);
/// A written model is re-measured once it has not been written for this long.
pub const QUIET: Duration = Duration::from_millis(500);
/// Depth of the queue from the event loop.
pub const QUEUE: usize = 1024;

/// What the event loop tells the attestor.
pub enum Message {
    /// A security event.
    Event(Box<SecurityEvent>),
    /// The guard's state, to be recorded (at start, and on drop increases).
    State(String),
    /// A policy load to record and extend before its set is put in force;
    /// the answer (extended or not) goes back on `reply`.
    Policy {
        /// The policy.
        info: Box<crate::policy::PolicyInfo>,
        /// The set it belongs to.
        generation: u64,
        /// Where the answer goes.
        reply: std::sync::mpsc::Sender<Result<bool, String>>,
    },
    /// Finish queued work and stop (other senders, such as the policy
    /// engine's measurer, may still hold the channel open).
    Stop,
}

/// The policy engine's [`Measurer`](crate::policy::Measurer) in the daemon:
/// the attestor thread, which owns the measurement log and the TPM, records
/// each policy load, so there is one writer and one TPM session.
pub struct AttestorMeasurer {
    tx: SyncSender<Message>,
}

impl crate::policy::Measurer for AttestorMeasurer {
    fn measure(
        &mut self,
        policy: &crate::policy::PolicyInfo,
        generation: u64,
    ) -> Result<bool, crate::policy::MeasureError> {
        use crate::policy::MeasureError;
        let (reply, answer) = std::sync::mpsc::channel();
        // A blocking send: a policy load must not be dropped like an event.
        self.tx
            .send(Message::Policy {
                info: Box::new(policy.clone()),
                generation,
                reply,
            })
            .map_err(|_| MeasureError::Attestor("the attestor has stopped".into()))?;
        // Re-measuring a large model can keep the attestor busy for a while.
        answer
            .recv_timeout(Duration::from_secs(120))
            .map_err(|_| MeasureError::Attestor("no answer within 120 s".into()))?
            .map_err(MeasureError::Attestor)
    }
}

/// Counters and conditions, for `guardian status`.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Tamper records extended.
    pub tamper_records: u64,
    /// Tamper attempts folded into a later record by the rate limit.
    pub tamper_suppressed: u64,
    /// Re-measurements that extended a changed digest.
    pub remeasured: u64,
    /// Messages lost because the queue was full.
    pub queue_drops: u64,
    /// Records or extends that failed.
    pub errors: u64,
    /// Why continuous attestation is degraded, if it is.
    pub degraded: Vec<String>,
}

/// The handle the event loop keeps.
pub struct Attestor {
    tx: SyncSender<Message>,
    stats: Arc<Mutex<Stats>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Attestor {
    /// Start the attestor thread. It never fails to start: what it cannot
    /// do (no manifest, no TPM) is reported in [`Stats::degraded`].
    pub fn start(config: &Config) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let stats = Arc::new(Mutex::new(Stats::default()));
        let worker = Worker::new(config, Arc::clone(&stats));
        let thread = std::thread::Builder::new()
            .name("attestor".into())
            .spawn(move || worker.run(rx))
            .ok();
        if thread.is_none()
            && let Ok(mut s) = stats.lock()
        {
            s.degraded
                .push("continuous attestation thread did not start".into());
        }
        Self { tx, stats, thread }
    }

    /// Queue a message; a full queue is counted.
    pub fn send(&self, m: Message) {
        match self.tx.try_send(m) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                if let Ok(mut s) = self.stats.lock() {
                    s.queue_drops += 1;
                }
            }
        }
    }

    /// A measurer for the policy engine that goes through this attestor.
    pub fn measurer(&self) -> AttestorMeasurer {
        AttestorMeasurer {
            tx: self.tx.clone(),
        }
    }

    /// A copy of the counters.
    pub fn stats(&self) -> Stats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Finish queued work and stop.
    pub fn stop(mut self) {
        // Queued behind everything already sent, so that is done first.
        let _ = self.tx.send(Message::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Worker {
    log_path: PathBuf,
    manifest: Option<Manifest>,
    tpm: Option<Tpm>,
    pcr: u32,
    remeasure_every: Option<Duration>,
    stats: Arc<Mutex<Stats>>,
    last_tamper: HashMap<(String, u64), Instant>,
    suppressed: HashMap<(String, u64), u64>,
    pending: HashMap<PathBuf, Instant>,
    last_digest: HashMap<PathBuf, String>,
}

impl Worker {
    fn new(config: &Config, stats: Arc<Mutex<Stats>>) -> Self {
        let m = &config.measure;
        let mut degraded = Vec::new();
        let trusted: Vec<TrustedKey> = m
            .trusted_keys
            .iter()
            .filter_map(|k| match TrustedKey::load(k) {
                Ok(k) => Some(k),
                Err(e) => {
                    degraded.push(format!("trusted key: {e}"));
                    None
                }
            })
            .collect();
        let manifest =
            match manifest::load(&m.manifest, &m.signature_path(), &trusted, m.allow_unsigned) {
                Ok(l) => Some(l.manifest),
                Err(e) => {
                    degraded.push(format!("no re-measurement of models: {e}"));
                    None
                }
            };
        let tcti = tpm::choose_tcti(m.tcti.as_deref(), |k| std::env::var(k).ok());
        let tpm = match Tpm::open(&tcti) {
            Ok(mut t) => {
                if t.is_software() {
                    degraded.push(format!(
                        "the TPM at {tcti} is a software TPM ({}): evidence is not rooted in hardware",
                        t.vendor()
                    ));
                }
                Some(t)
            }
            Err(e) => {
                degraded.push(format!(
                    "tamper and state records are logged but NOT extended: {e}"
                ));
                None
            }
        };
        for d in &degraded {
            log::warn!("continuous attestation: {d}");
        }
        if let Ok(mut s) = stats.lock() {
            s.degraded = degraded;
        }
        // The last measured digest of each model this boot, so timers and
        // writes that change nothing extend nothing.
        let mut last_digest = HashMap::new();
        if let Ok(c) = crate::mlog::read(&m.log) {
            for r in c.extended_this_boot(&crate::mlog::boot_id()) {
                if r.kind == Kind::Model
                    && let Some(f) = &r.file
                {
                    last_digest.insert(PathBuf::from(f), r.digest.clone());
                }
            }
        }
        Self {
            log_path: m.log.clone(),
            pcr: manifest.as_ref().map_or(manifest::DEFAULT_PCR, |mf| mf.pcr),
            manifest,
            tpm,
            remeasure_every: (config.attest.remeasure_secs > 0)
                .then(|| Duration::from_secs(config.attest.remeasure_secs)),
            stats,
            last_tamper: HashMap::new(),
            suppressed: HashMap::new(),
            pending: HashMap::new(),
            last_digest,
        }
    }

    fn run(mut self, rx: Receiver<Message>) {
        let mut next_timer = self.remeasure_every.map(|d| Instant::now() + d);
        loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(Message::Event(ev)) => self.on_event(&ev),
                Ok(Message::State(s)) => {
                    self.record(Kind::State, s.as_bytes(), s.clone(), None);
                }
                Ok(Message::Policy {
                    info,
                    generation,
                    reply,
                }) => {
                    let _ = reply.send(self.measure_policy(&info, generation));
                }
                Err(RecvTimeoutError::Timeout) => {}
                Ok(Message::Stop) | Err(RecvTimeoutError::Disconnected) => {
                    // Finish what writes are waiting for, then stop.
                    self.flush_suppressed(Instant::now() + TAMPER_WINDOW);
                    let due: Vec<PathBuf> = self.pending.drain().map(|(p, _)| p).collect();
                    for p in due {
                        self.remeasure(&p);
                    }
                    return;
                }
            }
            let now = Instant::now();
            self.flush_suppressed(now);
            let due: Vec<PathBuf> = self
                .pending
                .iter()
                .filter(|(_, t)| now.duration_since(**t) >= QUIET)
                .map(|(p, _)| p.clone())
                .collect();
            for p in due {
                self.pending.remove(&p);
                self.remeasure(&p);
            }
            if let (Some(at), Some(every)) = (next_timer, self.remeasure_every)
                && now >= at
            {
                let all: Vec<PathBuf> = self
                    .manifest
                    .iter()
                    .flat_map(|m| m.models.iter().map(|e| e.path.clone()))
                    .collect();
                for p in all {
                    self.remeasure(&p);
                }
                next_timer = Some(now + every);
            }
        }
    }

    fn bump(&self, f: impl FnOnce(&mut Stats)) {
        if let Ok(mut s) = self.stats.lock() {
            f(&mut s);
        }
    }

    fn on_event(&mut self, ev: &SecurityEvent) {
        // Tamper records are about files; process events (exec, ptrace,
        // connect) are reported, and reach the evidence through the
        // guard's state and counters.
        let Some(file) = ev.file.clone().filter(|_| ev.is_file()) else {
            return;
        };
        if ev.verdict == "deny" || ev.verdict == "alert" {
            let key = (file.clone(), ev.exe_ino);
            let now = Instant::now();
            let recent = self
                .last_tamper
                .get(&key)
                .is_some_and(|t| now.duration_since(*t) < TAMPER_WINDOW);
            if recent {
                *self.suppressed.entry(key).or_default() += 1;
                self.bump(|s| s.tamper_suppressed += 1);
            } else {
                let folded = self.suppressed.remove(&key).unwrap_or(0);
                self.last_tamper.insert(key, now);
                let json = serde_json::to_string(ev).unwrap_or_default();
                let what = if ev.verdict == "deny" {
                    "denied"
                } else {
                    "DETECTED (not prevented)"
                };
                let desc = format!(
                    "tamper attempt {what}: {} of {} by {} (pid {}, uid {}){}",
                    ev.event.trim_start_matches("file_").replace('_', " "),
                    file,
                    ev.exe.as_deref().unwrap_or("unknown executable"),
                    ev.pid,
                    ev.uid,
                    if folded > 0 {
                        format!(", plus {folded} similar attempt(s) rate-limited before it")
                    } else {
                        String::new()
                    }
                );
                if self.record(Kind::Tamper, json.as_bytes(), desc, Some(file.clone())) {
                    self.bump(|s| s.tamper_records += 1);
                }
            }
        }
        // The write happened: the model may have changed.
        if ev.verdict == "allow" || ev.verdict == "alert" {
            self.pending.insert(PathBuf::from(&file), Instant::now());
        }
    }

    /// Attempts folded by the rate limit must reach the evidence too: when a
    /// window closes with some, record how many.
    fn flush_suppressed(&mut self, now: Instant) {
        let closed: Vec<(String, u64)> = self
            .suppressed
            .keys()
            .filter(|k| {
                self.last_tamper
                    .get(*k)
                    .is_none_or(|t| now.duration_since(*t) >= TAMPER_WINDOW)
            })
            .cloned()
            .collect();
        for key in closed {
            let n = self.suppressed.remove(&key).unwrap_or(0);
            let desc = format!(
                "tamper attempts: {n} more write-open(s) of {} by the executable with inode {} within {} s of the last record (rate-limited)",
                key.0,
                key.1,
                TAMPER_WINDOW.as_secs()
            );
            self.last_tamper.insert(key.clone(), now);
            if self.record(Kind::Tamper, desc.as_bytes(), desc.clone(), Some(key.0)) {
                self.bump(|s| s.tamper_records += 1);
            }
        }
    }

    fn remeasure(&mut self, path: &PathBuf) {
        let Some(m) = &self.manifest else { return };
        let Some((i, entry)) = m.models.iter().enumerate().find(|(_, e)| &e.path == path) else {
            return; // protected, but not a manifest model
        };
        let (expected, name) = (entry.sha256.clone(), entry.name.clone());
        let d = match crate::hashing::hash_file(path) {
            Ok(d) => d,
            Err(e) => {
                log::error!("re-measurement: {e}");
                self.bump(|s| s.errors += 1);
                return;
            }
        };
        let digest = hex::encode(d.sha256);
        if self.last_digest.get(path) == Some(&digest) {
            return;
        }
        let matched = digest == expected;
        if !matched {
            log::error!(
                "re-measurement: model {} changed to sha256 {digest} (manifest: {expected})",
                path.display()
            );
        }
        let rec = Record {
            kind: Kind::Model,
            pcr: self.pcr,
            digest: digest.clone(),
            extended: self.tpm.is_some(),
            description: format!(
                "guardian model {} entry {i}{} re-measured after a change",
                path.display(),
                name.map(|n| format!(" ({n})")).unwrap_or_default()
            ),
            file: Some(path.display().to_string()),
            entry: Some(i),
            expected: Some(expected),
            matched: Some(matched),
            ..Record::blank()
        };
        if self.append_and_extend(rec, d.sha256) {
            self.last_digest.insert(path.clone(), digest);
            self.bump(|s| s.remeasured += 1);
        }
    }

    /// Log and extend a record whose digest is SHA-256 of `content`.
    fn record(
        &mut self,
        kind: Kind,
        content: &[u8],
        description: String,
        file: Option<String>,
    ) -> bool {
        let digest: [u8; 32] = Sha256::digest(content).into();
        let rec = Record {
            kind,
            pcr: self.pcr,
            digest: hex::encode(digest),
            extended: self.tpm.is_some(),
            description,
            file,
            ..Record::blank()
        };
        self.append_and_extend(rec, digest)
    }

    /// A policy load: its record (digest: the module's SHA-256), then the
    /// extend. `Ok(true)` extended, `Ok(false)` logged without a TPM.
    fn measure_policy(
        &mut self,
        p: &crate::policy::PolicyInfo,
        generation: u64,
    ) -> Result<bool, String> {
        let mut digest = [0u8; 32];
        hex::decode_to_slice(&p.sha256, &mut digest)
            .map_err(|_| format!("policy digest {:?} is not 64 hex digits", p.sha256))?;
        let rec = Record {
            kind: Kind::Policy,
            pcr: self.pcr,
            digest: p.sha256.clone(),
            extended: self.tpm.is_some(),
            description: crate::policy::measure::description(p, generation),
            file: Some(p.file.display().to_string()),
            ..Record::blank()
        };
        if self.append_and_extend(rec, digest) {
            Ok(self.tpm.is_some())
        } else {
            Err(format!(
                "recording policy {} in {} failed (see the agent's log)",
                p.name,
                self.log_path.display()
            ))
        }
    }

    fn append_and_extend(&mut self, rec: Record, digest: [u8; 32]) -> bool {
        // Open per batch: the lock is held only while writing, so a
        // `guardian measure` re-run is never blocked for long.
        let mut log = match Log::open(&self.log_path) {
            Ok(l) => l,
            Err(e) => {
                log::error!("continuous attestation: {e}");
                self.bump(|s| s.errors += 1);
                return false;
            }
        };
        let rec = match log.append(rec) {
            Ok(r) => r,
            Err(e) => {
                log::error!("continuous attestation: {e}");
                self.bump(|s| s.errors += 1);
                return false;
            }
        };
        if let Some(t) = self.tpm.as_mut()
            && let Err(e) = t.extend(self.pcr, &digest)
        {
            log::error!("continuous attestation: {e}");
            let _ = log.append(Record {
                kind: Kind::Note,
                pcr: self.pcr,
                digest: "0".repeat(64),
                description: format!("extend of record {} failed: {e}", rec.seq),
                voids: Some(rec.seq),
                ..Record::blank()
            });
            self.bump(|s| s.errors += 1);
            return false;
        }
        true
    }
}
