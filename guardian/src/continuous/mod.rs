//! Continuous attestation inside `guardian run`: the daemon keeps the TPM
//! evidence current after boot.
//!
//! - **Tamper records.** Every denied or detected change of a protected
//!   file is a tamper record carrying the security event itself, extended
//!   into the measurement PCR, so the attempt stays in every later quote
//!   even if the attacker eventually wins. Rate-limited per (file, executable) to
//!   one record per [`TAMPER_WINDOW`]; suppressed attempts are counted and
//!   the count goes into the next record.
//! - **Re-measurement.** A write-open that happened (an allowed writer, or
//!   detect mode) schedules a re-measurement of that model once writes have
//!   been quiet for [`QUIET`]; a timer (`[attest] remeasure_secs`)
//!   re-measures every model. A new record is extended only when the digest
//!   changed since its last measurement.
//! - **Guard state.** Every start, adoption, stop and unload of the guard
//!   (with the mode and hooks in force), a guard found missing, every rise
//!   of the kernel's drop counters, are guard records, so the quote proves
//!   how the device was protected, and every window without enforcement.
//! - **A new manifest.** When the manifest file changes (its signed
//!   update, by the allowed updater), the attestor checks its signature and
//!   that its serial is higher, records it, and re-measures every model
//!   against it; a manifest that fails is refused and the one in force
//!   stays.
//!
//! All of this is blocking work (hashing, TPM commands), so it runs on its
//! own thread that owns the [`Ledger`] (the log kept open, and the TPM),
//! fed through a bounded channel; a full channel is counted as a drop,
//! never silent. A log whose lock another process holds does not freeze
//! the thread: the record waits in a backlog, retried, and the stall is
//! counted and shown by `guardian status` until it clears.
//!
//! Security events do not go through that channel one by one: they are
//! coalesced in an inbox the attestor empties whenever it looks
//! ([`Attestor::event`]). In a burst, one message per event filled the
//! channel's [`QUEUE`] places within a millisecond whenever the attestor
//! was busy (hashing a model, waiting for the TPM, or off the CPU), and the
//! rest were dropped: 7–46 % of a daemon burst's tamper attempts never
//! reached the evidence (`docs/footprint.md`). What the attestor does with
//! them needs far less than every event: per file and executable, the
//! first attempt in full (its record) and how many followed (folded into
//! the next record by the rate limit anyway), and per written file one
//! re-measurement. The inbox keeps exactly that, so a burst of any length
//! on a few files takes a few entries; only more than [`INBOX_KEYS`]
//! different (file, executable) pairs or written files waiting at once are
//! dropped, and those are counted as `attest_queue_drops` as before. Every
//! message the attestor takes from its channel is handled after the inbox
//! is emptied, so the events sent before a guard record are recorded
//! before it. Woken for the inbox, the attestor lets it gather for
//! [`GATHER`] first: in a burst it looks a few hundred times a second, not
//! once per event, and leaves the CPU to the event loop, which has to keep
//! the kernel's ring from filling.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError},
    },
    time::{Duration, Instant},
};

use sha2::{Digest as _, Sha256};

mod inbox;
mod models;
mod quoting;
mod sets;
use inbox::{Inbox, is_attempt, is_write};
pub use sets::{SetKeeper, SetRequest};

use crate::{
    config::Config,
    events::SecurityEvent,
    evidence::{
        Event, Ledger, LedgerError, LogError,
        event::{ManifestEvent, ModelEvent, TamperEvent},
        ledger,
    },
    hooks::Verdict,
    manifest::{self, Authenticity, Loaded},
    signing::TrustedKey,
};

/// At most one tamper record per (file, executable) in this window.
pub const TAMPER_WINDOW: Duration = Duration::from_secs(10);
/// A written model is re-measured once it has not been written for this long.
pub const QUIET: Duration = Duration::from_millis(500);
/// Depth of the queue from the event loop.
pub const QUEUE: usize = 1024;
/// How long the attestor lets events gather in its inbox once woken.
pub const GATHER: Duration = Duration::from_millis(5);
/// The most (file, executable) pairs, and the most written files, waiting
/// in the attestor's inbox at once (see the opening).
pub const INBOX_KEYS: usize = 1024;

/// What the event loop tells the attestor (security events go through
/// [`Attestor::event`] instead).
pub enum Message {
    /// The inbox has security events (sent when it stops being empty).
    Wake,
    /// A change of the guard's state (see [`crate::evidence::event::GuardEvent`]).
    Guard {
        /// `start`, `adopt`, `stop`, `gap`, `drops`, …
        action: &'static str,
        /// The mode in force.
        mode: String,
        /// What, in words.
        detail: String,
    },
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
    /// Files an allowed writer added to a protected tree, now in the
    /// guard's tables: hashed here (off the daemon's task) and recorded
    /// as one `take_in` guard record with each file's SHA-256.
    TakeIn {
        /// Each file's path, and its inode as `dev:ino` (what the kernel
        /// now lets the service open).
        files: Vec<(PathBuf, String)>,
        /// The mode in force.
        mode: String,
    },
    /// The fleet's challenge: quote the configured PCRs for `nonce` with
    /// the AK, and answer with the evidence bundle as JSON (the same
    /// bundle `guardian quote` writes). Here because this thread owns the
    /// TPM session.
    Quote {
        /// The verifier's nonce.
        nonce: Vec<u8>,
        /// Where the bundle (or why there is none) goes.
        reply: Reply,
    },
    /// The fleet's enrolment: read the enrolment request from the TPM, or
    /// activate the fleet's credential; the answer as JSON.
    Enrol {
        /// Which step.
        step: EnrolStep,
        /// Where the answer (or why there is none) goes.
        reply: Reply,
    },
    /// For pushed policy sets: the floor's NV index read or written, or
    /// their record appended (here because this thread owns the TPM
    /// session and the ledger); the answer goes back on `reply`.
    PolicySet {
        /// What to do.
        request: SetRequest,
        /// The NV index's value for a read (`None`: not defined), or why
        /// it failed.
        reply: std::sync::mpsc::Sender<Result<Option<u64>, String>>,
    },
    /// Finish queued work and stop (other senders, such as the policy
    /// engine's measurer, may still hold the channel open).
    Stop,
}

/// Where the attestor's answer to the fleet goes: the JSON to send, or why
/// there is none.
pub type Reply = tokio::sync::oneshot::Sender<Result<Vec<u8>, String>>;
/// The other end of a [`Reply`].
pub type Answer = tokio::sync::oneshot::Receiver<Result<Vec<u8>, String>>;

/// A step of enrolment the fleet asks the device for.
#[derive(Debug)]
pub enum EnrolStep {
    /// The request: EK certificate, EK and AK public areas.
    Request,
    /// Activate this credential.
    Activate(Box<crate::enrol::Challenge>),
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
    /// Records waiting because the log's lock was held by another process.
    pub backlog: usize,
    /// Since when (RFC 3339) the attestor has been unable to write, if it is.
    pub stalled_since: Option<String>,
    /// How many times a record had to wait for the log's lock.
    pub stalls: u64,
    /// New manifests put in force by the daemon.
    pub manifest_updates: u64,
    /// New manifests refused (bad signature, not newer, unreadable).
    pub manifests_refused: u64,
    /// Why continuous attestation is degraded, if it is.
    pub degraded: Vec<String>,
}

/// What the attestor needs to answer the fleet's challenges.
struct Quoting {
    ak_handle: u32,
    pcrs: Vec<u32>,
    log: PathBuf,
    status: PathBuf,
    /// The AK, loaded at the first challenge and kept.
    ak: Option<(tss_esapi::handles::KeyHandle, crate::tpm::AkPublic)>,
}

/// The handle the event loop keeps.
pub struct Attestor {
    tx: SyncSender<Message>,
    inbox: Arc<Mutex<Inbox>>,
    stats: Arc<Mutex<Stats>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Attestor {
    /// Start the attestor thread. It never fails to start: what it cannot
    /// do (no manifest, no TPM) is reported in [`Stats::degraded`].
    pub fn start(config: &Config) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let stats = Arc::new(Mutex::new(Stats::default()));
        let inbox = Arc::new(Mutex::new(Inbox::default()));
        let worker = Worker::new(config, Arc::clone(&stats), Arc::clone(&inbox));
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
        Self {
            tx,
            inbox,
            stats,
            thread,
        }
    }

    /// One security event, for the tamper records and re-measurements:
    /// added to the inbox (see the module's opening), never waited for.
    /// Events that are neither a tamper attempt nor a write of what the
    /// attestor measures do not concern it.
    pub fn event(&self, ev: &SecurityEvent) {
        let (attempt, written) = (is_attempt(ev), is_write(ev));
        if !attempt && !written {
            return;
        }
        let Some(subject) = ev.tamper_subject() else {
            return;
        };
        let (kept, wake) = match self.inbox.lock() {
            Ok(mut inbox) => {
                let wake = inbox.is_empty();
                (inbox.add(ev, subject, attempt, written), wake)
            }
            Err(_) => (false, false),
        };
        if !kept && let Ok(mut s) = self.stats.lock() {
            s.queue_drops += 1;
        }
        if wake {
            // A full queue loses nothing here: the attestor looks at its
            // inbox at least every 200 ms.
            let _ = self.tx.try_send(Message::Wake);
        }
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

    /// Ask for a quote for the fleet's `nonce` (see [`Message::Quote`]); a
    /// full queue answers at once with why.
    pub fn quote(&self, nonce: Vec<u8>) -> Answer {
        self.ask(|reply| Message::Quote { nonce, reply })
    }

    /// Ask for a step of the fleet's enrolment (see [`Message::Enrol`]); a
    /// full queue answers at once with why.
    pub fn enrol(&self, step: EnrolStep) -> Answer {
        self.ask(|reply| Message::Enrol { step, reply })
    }

    fn ask(&self, message: impl FnOnce(Reply) -> Message) -> Answer {
        let (reply, rx) = tokio::sync::oneshot::channel();
        if let Err(TrySendError::Full(m) | TrySendError::Disconnected(m)) =
            self.tx.try_send(message(reply))
            && let Message::Quote { reply, .. } | Message::Enrol { reply, .. } = m
        {
            let _ = reply.send(Err("the attestor's queue is full".to_owned()));
        }
        rx
    }

    /// A measurer for the policy engine that goes through this attestor.
    pub fn measurer(&self) -> AttestorMeasurer {
        AttestorMeasurer {
            tx: self.tx.clone(),
        }
    }

    /// The pushed policy sets' way to this attestor.
    pub fn set_keeper(&self) -> SetKeeper {
        SetKeeper::new(self.tx.clone())
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
    inbox: Arc<Mutex<Inbox>>,
    ledger: Option<Ledger>,
    quoting: Quoting,
    manifest_path: PathBuf,
    signature_path: PathBuf,
    trusted: Vec<TrustedKey>,
    allow_unsigned: bool,
    manifest: Option<(Loaded, String)>,
    pcr: u32,
    remeasure_every: Option<Duration>,
    stats: Arc<Mutex<Stats>>,
    last_tamper: HashMap<(String, u64), Instant>,
    suppressed: HashMap<(String, u64), u64>,
    pending: HashMap<PathBuf, Instant>,
    last_digest: HashMap<PathBuf, String>,
    backlog: VecDeque<(u32, Event)>,
    stalled_since: Option<Instant>,
}

impl Worker {
    fn new(config: &Config, stats: Arc<Mutex<Stats>>, inbox: Arc<Mutex<Inbox>>) -> Self {
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
        let manifest = if let Some(sig) = &m.model_signature {
            // The boot step measured the directory against its model
            // signature; re-measuring here follows manifests only.
            degraded.push(format!(
                "no re-measurement of models: the golden reference is the model signature {} (the daemon re-measures against a manifest only; `guardian manifest import` makes one)",
                sig.display()
            ));
            None
        } else {
            match manifest::load(&m.manifest, &m.signature_path(), &trusted, m.allow_unsigned) {
                Ok(l) => {
                    let digest = hex::encode(Sha256::digest(&l.bytes));
                    Some((l, digest))
                }
                Err(e) => {
                    degraded.push(format!("no re-measurement of models: {e}"));
                    None
                }
            }
        };
        let tpm = match ledger::open_tpm(m.tcti.as_deref()) {
            Ok(t) => {
                degraded.extend(t.software);
                Some(t.tpm)
            }
            Err(e) => {
                degraded.push(format!(
                    "tamper and guard records are logged but NOT extended: {e}"
                ));
                None
            }
        };
        let ledger = match Ledger::open(&m.log, tpm) {
            Ok(l) => Some(l),
            Err(e) => {
                degraded.push(format!("no evidence is recorded: {e}"));
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
        if let Some(l) = &ledger {
            for r in l.contents().extended_this_boot(l.boot_id()) {
                if let Event::Model(me) = &r.event {
                    last_digest.insert(PathBuf::from(&me.file), me.sha256.clone());
                }
            }
        }
        Self {
            inbox,
            ledger,
            quoting: Quoting {
                ak_handle: config.attest.ak_handle,
                pcrs: config.attest.pcrs.clone(),
                log: m.log.clone(),
                status: config.status.path.clone(),
                ak: None,
            },
            manifest_path: m.manifest.clone(),
            signature_path: m.signature_path(),
            trusted,
            allow_unsigned: m.allow_unsigned,
            pcr: manifest.as_ref().map_or(
                m.model_signature_pcr().unwrap_or(manifest::DEFAULT_PCR),
                |(l, _)| l.manifest.pcr,
            ),
            manifest,
            remeasure_every: (config.attest.remeasure_secs > 0)
                .then(|| Duration::from_secs(config.attest.remeasure_secs)),
            stats,
            last_tamper: HashMap::new(),
            suppressed: HashMap::new(),
            pending: HashMap::new(),
            last_digest,
            backlog: VecDeque::new(),
            stalled_since: None,
        }
    }

    fn run(mut self, rx: Receiver<Message>) {
        let mut next_timer = self.remeasure_every.map(|d| Instant::now() + d);
        loop {
            let message = rx.recv_timeout(Duration::from_millis(200));
            if matches!(message, Ok(Message::Wake)) {
                // Let a burst gather: one look per GATHER rather than one
                // per event, so this thread leaves the cores to the event
                // loop while the kernel's ring fills.
                std::thread::sleep(GATHER);
            }
            // Whatever came, the events sent before it first.
            self.take_inbox();
            match message {
                Ok(Message::Wake) => {}
                Ok(Message::Guard {
                    action,
                    mode,
                    detail,
                }) => {
                    if action == "start" || action == "adopt" {
                        self.record_gap(action);
                    }
                    self.record(ledger::guard_event(action, &mode, detail));
                }
                Ok(Message::TakeIn { files, mode }) => {
                    let detail = files
                        .iter()
                        .map(|(p, inode)| match crate::hashing::hash_file(p) {
                            Ok(d) => format!(
                                "{} (inode {inode}, sha256 {})",
                                p.display(),
                                hex::encode(d.sha256)
                            ),
                            Err(e) => format!("{} (inode {inode}, not hashed: {e})", p.display()),
                        })
                        .collect::<Vec<_>>()
                        .join(", ");
                    self.record(ledger::guard_event("take_in", &mode, detail));
                }
                Ok(Message::Policy {
                    info,
                    generation,
                    reply,
                }) => {
                    let _ = reply.send(self.measure_policy(&info, generation));
                }
                Ok(Message::Enrol { step, reply }) => {
                    let answer = self.enrol(step);
                    if let Err(e) = &answer {
                        log::warn!("fleet enrolment step not answered: {e}");
                    }
                    let _ = reply.send(answer);
                }
                Ok(Message::Quote { nonce, reply }) => {
                    let answer = self.quote(&nonce);
                    if let Err(e) = &answer {
                        log::warn!("fleet challenge not answered: {e}");
                    }
                    let _ = reply.send(answer);
                }
                Ok(Message::PolicySet { request, reply }) => {
                    let _ = reply.send(self.policy_set(request));
                }
                Err(RecvTimeoutError::Timeout) => {}
                Ok(Message::Stop) | Err(RecvTimeoutError::Disconnected) => {
                    // Finish what writes are waiting for, then stop.
                    self.flush_suppressed(Instant::now() + TAMPER_WINDOW);
                    let due: Vec<PathBuf> = self.pending.drain().map(|(p, _)| p).collect();
                    for p in due {
                        self.remeasure(&p, "write");
                    }
                    // The backlog gets one last, bounded, chance.
                    let deadline = Instant::now() + Duration::from_secs(5);
                    while !self.backlog.is_empty() && Instant::now() < deadline {
                        self.drain_backlog();
                    }
                    return;
                }
            }
            self.drain_backlog();
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
                self.remeasure(&p, "write");
            }
            if let (Some(at), Some(every)) = (next_timer, self.remeasure_every)
                && now >= at
            {
                // A manifest replaced without an event reaching us is
                // found here too.
                let mp = self.manifest_path.clone();
                self.remeasure(&mp, "timer");
                for p in self.model_paths() {
                    self.remeasure(&p, "timer");
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

    /// Everything in the inbox: the attempts (records, or counts folded
    /// into the next), and the written files to re-measure.
    fn take_inbox(&mut self) {
        let inbox = match self.inbox.lock() {
            Ok(mut inbox) if !inbox.is_empty() => std::mem::take(&mut *inbox),
            _ => return,
        };
        for a in inbox.attempts {
            self.attempts(&a.first, a.subject, a.more);
        }
        let now = Instant::now();
        for file in inbox.written {
            self.pending.insert(PathBuf::from(file), now);
        }
    }

    /// `first` and `more` attempts after it by the same executable on
    /// `file`: a tamper record for the first unless one was made in this
    /// window, the rest folded into the next (see [`TAMPER_WINDOW`]).
    fn attempts(&mut self, first: &SecurityEvent, file: String, more: u64) {
        let key = (file.clone(), first.exe_ino);
        let now = Instant::now();
        let recent = self
            .last_tamper
            .get(&key)
            .is_some_and(|t| now.duration_since(*t) < TAMPER_WINDOW);
        let suppressed = if recent {
            more + 1
        } else {
            let folded = self.suppressed.remove(&key).unwrap_or(0);
            self.last_tamper.insert(key.clone(), now);
            let outcome = if first.verdict == Verdict::Deny {
                "denied"
            } else {
                "detected"
            };
            let tamper = Event::Tamper(TamperEvent {
                file,
                outcome: outcome.to_owned(),
                folded,
                event: serde_json::to_value(first).unwrap_or_default(),
            });
            if self.record(tamper) {
                self.bump(|s| s.tamper_records += 1);
            }
            more
        };
        if suppressed > 0 {
            *self.suppressed.entry(key).or_default() += suppressed;
            self.bump(|s| s.tamper_suppressed += suppressed);
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
            self.last_tamper.insert(key.clone(), now);
            let tamper = Event::Tamper(TamperEvent {
                file: key.0,
                outcome: "attempted".to_owned(),
                folded: n,
                event: serde_json::Value::Null,
            });
            if self.record(tamper) {
                self.bump(|s| s.tamper_records += 1);
            }
        }
    }

    /// Before a start or adoption: if the last lifecycle record of this
    /// boot says a guard was running (no stop) and this agent had to load
    /// afresh, or the last one stopped and the pins were gone, a window
    /// without enforcement is recorded first, as a `gap`.
    fn record_gap(&mut self, action: &str) {
        let Some(ledger) = &self.ledger else {
            return;
        };
        let last = ledger.last_guard().map(|g| g.action.clone());
        let gap = match (last.as_deref(), action) {
            (None | Some("unload" | "gap"), _) => None,
            (Some("start" | "adopt"), "start") => Some(
                "the previous agent ended without a stop record and its pinned programs were gone when this one started: nothing was enforced in between",
            ),
            (Some("stop"), "start") => Some(
                "the guard stopped with its programs pinned, but the pins were gone when this agent started: they were removed without `guardian stop --unload`",
            ),
            _ => None,
        };
        if let Some(why) = gap {
            log::error!("guard gap: {why}");
            self.record(ledger::guard_event("gap", "", why));
        }
    }

    /// Record an event in the ledger, behind anything already waiting.
    /// Returns whether it was written now.
    fn record(&mut self, event: Event) -> bool {
        self.backlog.push_back((self.pcr, event));
        let before = self.backlog.len();
        self.drain_backlog();
        self.backlog.len() < before
    }

    /// Write what waits, in order, until the log's lock is refused.
    fn drain_backlog(&mut self) {
        let Some(ledger) = self.ledger.as_mut() else {
            if !self.backlog.is_empty() {
                let n = self.backlog.len() as u64;
                self.backlog.clear();
                if let Ok(mut s) = self.stats.lock() {
                    s.errors += n;
                }
            }
            return;
        };
        while let Some((pcr, event)) = self.backlog.front().cloned() {
            match ledger.record(pcr, event) {
                Ok(_) => {
                    self.backlog.pop_front();
                }
                Err(LedgerError::Log(LogError::Busy { .. })) => {
                    if self.stalled_since.is_none() {
                        log::error!(
                            "continuous attestation: another process holds the measurement log's lock; {} record(s) wait",
                            self.backlog.len()
                        );
                        self.stalled_since = Some(Instant::now());
                        if let Ok(mut s) = self.stats.lock() {
                            s.stalls += 1;
                            s.stalled_since = Some(
                                humantime::format_rfc3339_seconds(std::time::SystemTime::now())
                                    .to_string(),
                            );
                        }
                    }
                    break;
                }
                Err(e) => {
                    log::error!("continuous attestation: {e}");
                    self.backlog.pop_front();
                    if let Ok(mut s) = self.stats.lock() {
                        s.errors += 1;
                    }
                }
            }
        }
        if self.backlog.is_empty()
            && let Some(since) = self.stalled_since.take()
        {
            // The stall itself is evidence: records were late by this much.
            let why = format!(
                "another process held the measurement log's lock; records waited {} s",
                since.elapsed().as_secs()
            );
            log::warn!("continuous attestation: the measurement log is writable again ({why})");
            if let Ok(mut s) = self.stats.lock() {
                s.stalled_since = None;
            }
            if let Some(ledger) = self.ledger.as_mut()
                && let Err(e) = ledger.record(self.pcr, ledger::guard_event("stalled", "", why))
            {
                log::error!("continuous attestation: recording the stall: {e}");
            }
        }
        let n = self.backlog.len();
        if let Ok(mut s) = self.stats.lock() {
            s.backlog = n;
        }
    }

    /// A policy load: its record, extended before the set is put in force.
    /// `Ok(true)` extended, `Ok(false)` logged without a TPM.
    fn measure_policy(
        &mut self,
        p: &crate::policy::PolicyInfo,
        generation: u64,
    ) -> Result<bool, String> {
        if self.record(crate::policy::measure::event(p, generation)) {
            Ok(self.ledger.as_ref().is_some_and(Ledger::has_tpm))
        } else {
            // Not recorded: the set will not be put in force, so its record
            // must not be written later either.
            self.backlog.pop_back();
            Err(format!(
                "recording policy {} failed or waits for the measurement log (see the agent's log)",
                p.name
            ))
        }
    }
}
