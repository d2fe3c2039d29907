//! The reporter: takes records from the agent without ever blocking it,
//! appends them to the [`Spool`], and sends what is on disk to the fleet's
//! JetStream stream, deleting records only when the stream acknowledged
//! them.
//!
//! Owns three tasks on the caller's tokio runtime: the writer (queue to
//! spool), the syncer (the [`Fsync::Interval`] policy) and the sender
//! (spool to broker, reconnecting with backoff). It may not decide what a
//! record means; the agent gives each record its [`Class`].
//!
//! Ordering and duplicates: the sender sends in sequence order and, after
//! any failure, reconnects and sends again everything not acknowledged. A
//! batch whose acknowledgement is late is not sent again at once: the
//! server is pinged first. Its PONG comes only after the server has read
//! everything sent before the PING, so a batch it covers is in the
//! server's hands and a late acknowledgement is the stream's delay (a
//! loaded cluster), which a resend would only add to. Such a batch waits
//! [`STREAM_PATIENCE`] acknowledgement timeouts (twice that after each
//! resend) before it goes again on the same connection (the same id), in
//! case the cluster lost it (a leader change); after [`MAX_RESENDS`] the
//! connection is given up. No PONG within the acknowledgement timeout
//! gives the connection up at once.
//! The stream drops an identical resend within its duplicate window
//! (`Nats-Msg-Id`); anything else the fleet deduplicates by (device,
//! epoch, sequence).

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde::Serialize;
use tokio::{
    sync::{Notify, mpsc, oneshot, watch},
    task::JoinHandle,
};

use crate::{
    nats::{Conn, Credentials, Incoming, LinkError, Message, PubAck},
    spool::{Class, Fsync, Record, Spool, SpoolError, SpoolStats},
    wire,
};

/// How the reporter reaches the fleet.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// NATS servers, tried in turn (`nats://host:port` or `host:port`).
    pub servers: Vec<String>,
    /// This device's id (1-64 of `A-Z a-z 0-9 _ -`).
    pub device: String,
    /// Subject prefix; the device publishes on `<prefix>.<device>`.
    pub subject_prefix: String,
    /// Per-device credentials.
    pub credentials: Credentials,
    /// TLS (required when set: a server that does not offer it is refused).
    pub tls: Option<crate::nats::Tls>,
    /// Batches sent and not yet acknowledged, at most. The link uses fewer
    /// while the stream shows it is behind ([`LinkStatus::window`]).
    pub window: usize,
    /// Records per batch, at most.
    pub batch_records: usize,
    /// Payload bytes per batch, about (one record may exceed it).
    pub batch_bytes: usize,
    /// A batch not acknowledged in this time has the server pinged; no
    /// PONG within it either drops the connection. A batch the PONG showed
    /// the server had read goes again on the same connection after
    /// [`STREAM_PATIENCE`] times this (doubled for each resend); one still
    /// not acknowledged after [`MAX_RESENDS`] resends drops the connection.
    pub ack_timeout: Duration,
    /// Connecting may take this long.
    pub connect_timeout: Duration,
    /// First wait after a failure; doubles up to `backoff_max`.
    pub backoff_min: Duration,
    /// Longest wait between attempts.
    pub backoff_max: Duration,
    /// Records waiting in memory for the spool writer, at most. More are
    /// dropped, counted and reported (the agent never waits).
    pub queue: usize,
    /// Who answers the fleet's questions (attestation challenges) for this
    /// device: the link subscribes to `guardian.ask.<device>` only when
    /// someone does.
    pub questions: Option<mpsc::Sender<Asked>>,
    /// An answer not ready in this time is sent as a refusal.
    pub answer_timeout: Duration,
    /// Policy sets pushed to this device's group: when set, the link
    /// follows the group's key in the fleet's bucket (on every connection,
    /// a subscription to its puts and a direct get of its current value)
    /// and hands each value over, newest first.
    pub policy_sets: Option<PolicySets>,
}

/// Where the link hands the policy sets it receives for `group`.
#[derive(Debug, Clone)]
pub struct PolicySets {
    /// The device's group (a key of [`wire::POLICY_BUCKET`]).
    pub group: String,
    /// The newest value received. A watch: a value not yet taken is
    /// replaced by a newer one, never queued behind it (only the newest
    /// set can matter; an older one would be refused anyway).
    pub tx: Arc<watch::Sender<Option<Arc<ReceivedSet>>>>,
}

/// A policy set's bytes as the link received them.
#[derive(Debug)]
pub struct ReceivedSet {
    /// The value (the signed set's wire form, unchecked).
    pub bytes: Vec<u8>,
    /// `watch` (a put to the key) or `direct-get` (asked at connect).
    pub via: &'static str,
}

/// A question from the fleet, handed to whoever answers for the device
/// (in the agent: a quote by the TPM). The answer is the JSON to send
/// back, or why there is none (the link sends that as a
/// [`wire::Refused`]).
#[derive(Debug)]
pub struct Asked {
    /// The question.
    pub question: wire::Question,
    /// Where the answer goes.
    pub answer: oneshot::Sender<Result<Vec<u8>, String>>,
}

impl LinkConfig {
    /// Defaults for `device` reporting to `servers`.
    pub fn new(device: &str, servers: Vec<String>) -> LinkConfig {
        LinkConfig {
            servers,
            device: device.to_owned(),
            subject_prefix: "guardian.in".to_owned(),
            credentials: Credentials::default(),
            tls: None,
            window: 32,
            batch_records: 256,
            batch_bytes: 64 * 1024,
            ack_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            queue: 4096,
            questions: None,
            answer_timeout: Duration::from_secs(20),
            policy_sets: None,
        }
    }
}

/// The link's state, as `guardian status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkState {
    /// Trying to connect.
    Connecting,
    /// Connected; sending.
    Connected,
    /// Waiting before the next attempt.
    Disconnected,
    /// Stopped (the agent is shutting down).
    Stopped,
}

/// What the link has done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct LinkStatus {
    /// The state now.
    pub state: LinkState,
    /// The server connected to (or last tried).
    pub server: Option<String>,
    /// When the state last changed (ms since the Unix epoch).
    pub since_ms: u64,
    /// Why the last connection failed or ended.
    pub last_error: Option<String>,
    /// Connections made after the first.
    pub reconnects: u64,
    /// Batches sent.
    pub batches_sent: u64,
    /// Records acknowledged by the stream.
    pub records_acked: u64,
    /// Batches the stream reported as duplicates (a resend it already had).
    pub duplicates: u64,
    /// Batches sent again on the same connection because the stream had
    /// not acknowledged them within [`STREAM_PATIENCE`] acknowledgement
    /// timeouts though the server had read them (a PONG came after).
    #[serde(default)]
    pub resent: u64,
    /// Batches the stream said it was too busy to take (429), each sent
    /// again after a pause on the same connection.
    #[serde(default)]
    pub busy: u64,
    /// Batches the link lets be in flight now: [`LinkConfig::window`] while
    /// the stream keeps up, less (down to 1) after it showed it does not.
    #[serde(default)]
    pub window: u64,
    /// Times the window was halved (an acknowledgement overdue, a 429).
    #[serde(default)]
    pub window_cuts: u64,
    /// When the last acknowledgement came.
    pub last_ack_ms: Option<u64>,
    /// Records dropped because the in-memory queue before the spool was full.
    pub queue_drops: u64,
    /// Records in the in-memory queue, not yet in the spool.
    #[serde(default)]
    pub queued: u64,
    /// Records lost because the spool could not be written.
    pub spool_errors: u64,
    /// Questions the fleet asked (attestation challenges).
    #[serde(default)]
    pub questions: u64,
    /// Of them, answered with what was asked for.
    #[serde(default)]
    pub answered: u64,
    /// Of them, answered with a refusal (busy, no answer in time, too
    /// large, not understood) or not answered (a reply subject not under
    /// this device's name).
    #[serde(default)]
    pub refused: u64,
    /// Policy set values received for the device's group (handed to the
    /// agent, which checks them).
    #[serde(default)]
    pub policy_sets_received: u64,
    /// Deletes or purges of the group's key: logged and counted; the set
    /// in force stays (a withdrawal never rolls a device back).
    #[serde(default)]
    pub policy_sets_withdrawn: u64,
    /// Connections at which no set was published for the group.
    #[serde(default)]
    pub policy_sets_none_published: u64,
    /// Reads of the current set that failed (no bucket, no direct get).
    #[serde(default)]
    pub policy_sets_errors: u64,
    /// Messages on the direct get's inbox that answer no get this link
    /// asked (another token, or a second answer): dropped unread. Anyone
    /// allowed to ask for a direct get may name this device's inbox as
    /// the reply subject.
    #[serde(default)]
    pub policy_sets_unasked: u64,
}

/// The spool and the link together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ReportStatus {
    /// The device id.
    pub device: String,
    /// The spool.
    pub spool: SpoolStats,
    /// The link.
    pub link: LinkStatus,
}

/// A reporter that could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The device id is not valid.
    #[error("invalid device id {0:?} (1-64 of A-Z a-z 0-9 _ -)")]
    DeviceId(String),
    /// No server to report to.
    #[error("no fleet server configured")]
    NoServer,
}

#[derive(Debug)]
struct Shared {
    spool: Mutex<Spool>,
    link: Mutex<LinkStatus>,
    wake: Notify,
    queue_drops: AtomicU64,
    /// Records handed over and not yet appended to the spool.
    queued: AtomicU64,
    /// Rounds of appends the writer made (the syncer skips its fsync when
    /// none came since the last).
    appended: AtomicU64,
    epoch: u64,
}

impl Shared {
    fn spool(&self) -> std::sync::MutexGuard<'_, Spool> {
        // A panic while holding the lock cannot leave the spool's files
        // inconsistent (every change is a synced append or an atomic
        // rename), so a poisoned lock is still usable.
        self.spool.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// [`Spool::pending`], giving up first what no longer reads back as
    /// written ([`Spool::salvage`]): a segment removed or changed behind
    /// the spool must cost its records (reported), not every send after.
    /// Blocking.
    fn pending(&self, after: u64, n: usize, bytes: usize) -> Result<Vec<Record>, SpoolError> {
        let mut spool = self.spool();
        match spool.pending(after, n, bytes) {
            Ok(recs) => Ok(recs),
            Err(e) => {
                if salvage(&mut spool, &e)? == 0 {
                    return Err(e);
                }
                // The notice is appended, and must be synced to be sent.
                self.appended.fetch_add(1, Ordering::Release);
                spool.pending(after, n, bytes)
            }
        }
    }
}

/// After `failed`, give up what in the spool no longer reads back as
/// written; how many records that was (zero: not the cause).
fn salvage(spool: &mut Spool, failed: &SpoolError) -> Result<u64, SpoolError> {
    let lost = spool.salvage()?;
    if lost > 0 {
        log::error!(
            "report spool: {lost} record(s) {} ({failed}); given up, and a drop notice says so",
            crate::spool::LOST_ON_DISK
        );
    }
    Ok(lost)
}

/// [`Spool::append`], retried once after [`salvage`] when it failed on
/// what no longer reads back (the drop rule rewrites segments).
fn append(spool: &mut Spool, class: Class, payload: &[u8]) -> Result<(), SpoolError> {
    match spool.append(class, payload) {
        Ok(_) => Ok(()),
        Err(e) => match salvage(spool, &e) {
            Ok(0) | Err(_) => Err(e),
            Ok(_) => spool.append(class, payload).map(|_| ()),
        },
    }
}

impl Shared {
    fn link(&self) -> std::sync::MutexGuard<'_, LinkStatus> {
        self.link.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn set_state(&self, state: LinkState, server: Option<&str>, error: Option<String>) {
        let mut l = self.link();
        l.state = state;
        if let Some(s) = server {
            l.server = Some(s.to_owned());
        }
        if error.is_some() {
            l.last_error = error;
        }
        l.since_ms = now_ms();
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The running reporter. Dropping it stops nothing; call
/// [`Reporter::shutdown`].
#[derive(Debug)]
pub struct Reporter {
    tx: mpsc::Sender<(Class, Vec<u8>)>,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    device: String,
}

impl Reporter {
    /// Start reporting from `spool` over `cfg` on the current tokio runtime.
    pub fn start(spool: Spool, cfg: LinkConfig) -> Result<Reporter, StartError> {
        if !wire::valid_device_id(&cfg.device) {
            return Err(StartError::DeviceId(cfg.device));
        }
        if cfg.servers.is_empty() {
            return Err(StartError::NoServer);
        }
        let fsync = spool.fsync();
        let shared = Arc::new(Shared {
            epoch: spool.epoch(),
            spool: Mutex::new(spool),
            link: Mutex::new(LinkStatus {
                state: LinkState::Connecting,
                server: None,
                since_ms: now_ms(),
                last_error: None,
                reconnects: 0,
                batches_sent: 0,
                records_acked: 0,
                duplicates: 0,
                resent: 0,
                busy: 0,
                window: 0,
                window_cuts: 0,
                last_ack_ms: None,
                queue_drops: 0,
                queued: 0,
                spool_errors: 0,
                questions: 0,
                answered: 0,
                refused: 0,
                policy_sets_received: 0,
                policy_sets_withdrawn: 0,
                policy_sets_none_published: 0,
                policy_sets_errors: 0,
                policy_sets_unasked: 0,
            }),
            wake: Notify::new(),
            queue_drops: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            appended: AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::channel(cfg.queue.max(1));
        let (stop, stopped) = watch::channel(false);
        let device = cfg.device.clone();
        let mut tasks = vec![
            tokio::spawn(writer(shared.clone(), rx)),
            tokio::spawn(sender(shared.clone(), cfg, stopped.clone())),
        ];
        if let Fsync::Interval(every) = fsync {
            tasks.push(tokio::spawn(syncer(shared.clone(), every, stopped)));
        }
        Ok(Reporter {
            tx,
            shared,
            stop,
            tasks,
            device,
        })
    }

    /// Hand a record over. Never waits: if the queue before the spool is
    /// full the record is dropped, counted, and a drop notice follows it
    /// into the spool. Returns whether it was queued.
    pub fn submit(&self, class: Class, payload: Vec<u8>) -> bool {
        // Counted before the send, so the writer never sees a record the
        // count does not include.
        self.shared.queued.fetch_add(1, Ordering::Relaxed);
        match self.tx.try_send((class, payload)) {
            Ok(()) => true,
            Err(_) => {
                self.shared.queued.fetch_sub(1, Ordering::Relaxed);
                self.shared.queue_drops.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Whether everything handed over so far is in the spool, synced, and
    /// acknowledged by the stream.
    pub fn drained(&self) -> bool {
        let st = self.status();
        st.link.queued == 0 && st.spool.depth == 0 && st.spool.unsynced == 0
    }

    /// The spool and the link now.
    pub fn status(&self) -> ReportStatus {
        let spool = self.shared.spool().stats();
        let mut link = self.shared.link().clone();
        link.queue_drops = self.shared.queue_drops.load(Ordering::Relaxed);
        link.queued = self.shared.queued.load(Ordering::Relaxed);
        ReportStatus {
            device: self.device.clone(),
            spool,
            link,
        }
    }

    /// Stop: the queue is written to the spool and synced; what was not
    /// acknowledged stays there for the next start.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        drop(self.tx);
        for t in self.tasks {
            let _ = t.await;
        }
        let shared = self.shared.clone();
        let _ = tokio::task::spawn_blocking(move || shared.spool().sync()).await;
    }
}

async fn writer(shared: Arc<Shared>, mut rx: mpsc::Receiver<(Class, Vec<u8>)>) {
    let mut buf = Vec::with_capacity(512);
    let mut reported_queue_drops = 0u64;
    while rx.recv_many(&mut buf, 512).await > 0 {
        let items = std::mem::take(&mut buf);
        let taken = items.len() as u64;
        let drops = shared.queue_drops.load(Ordering::Relaxed);
        let new_drops = drops - reported_queue_drops;
        reported_queue_drops = drops;
        let sh = shared.clone();
        let res = tokio::task::spawn_blocking(move || -> (u64, Option<SpoolError>) {
            let mut spool = sh.spool();
            let mut failed = 0;
            let mut last_err = None;
            if new_drops > 0 {
                let body = serde_json::json!({"by_class": {"queue_full": new_drops}, "seqs": [], "more": false});
                if let Err(e) = append(&mut spool, Class::Drop, body.to_string().as_bytes()) {
                    last_err = Some(e);
                }
            }
            for (class, payload) in items {
                if let Err(e) = append(&mut spool, class, &payload) {
                    failed += 1;
                    last_err = Some(e);
                }
            }
            (failed, last_err)
        })
        .await;
        match res {
            Ok((failed, err)) => {
                if let Some(e) = err {
                    let cause = std::error::Error::source(&e)
                        .map(|c| format!(": {c}"))
                        .unwrap_or_default();
                    log::error!("report spool: {failed} record(s) lost: {e}{cause}");
                    let mut l = shared.link();
                    l.spool_errors += failed;
                    l.last_error = Some(format!("spool: {e}"));
                }
            }
            Err(e) => log::error!("report spool writer failed: {e}"),
        }
        shared.appended.fetch_add(1, Ordering::Release);
        shared.queued.fetch_sub(taken, Ordering::Relaxed);
        shared.wake.notify_one();
    }
}

async fn syncer(shared: Arc<Shared>, every: Duration, mut stopped: watch::Receiver<bool>) {
    let mut synced = 0;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stopped.changed() => return,
        }
        // Nothing appended since the last sync: nothing to force to disk
        // and nothing new to send. A board that reports a record a second
        // would otherwise fsync five times a second for one; a host
        // simulating thousands of boards on one disk would spend its disk
        // on fsyncs that do nothing.
        let appended = shared.appended.load(Ordering::Acquire);
        if appended == synced {
            continue;
        }
        let sh = shared.clone();
        match tokio::task::spawn_blocking(move || sh.spool().sync()).await {
            Ok(Ok(())) => {
                synced = appended;
                shared.wake.notify_one();
            }
            Ok(Err(e)) => log::error!("report spool: {e}"),
            Err(e) => log::error!("report spool syncer failed: {e}"),
        }
    }
}

async fn sender(shared: Arc<Shared>, cfg: LinkConfig, mut stopped: watch::Receiver<bool>) {
    let mut backoff = cfg.backoff_min;
    let mut idx = 0usize;
    let mut connected_before = false;
    loop {
        if *stopped.borrow() {
            break;
        }
        let server = cfg.servers[idx % cfg.servers.len()].clone();
        shared.set_state(LinkState::Connecting, Some(&server), None);
        match Conn::connect_tls(
            &server,
            &cfg.device,
            &cfg.credentials,
            cfg.tls.as_ref(),
            cfg.connect_timeout,
        )
        .await
        {
            Ok(mut conn) => {
                log::info!("report link: connected to {server}");
                backoff = cfg.backoff_min;
                if connected_before {
                    shared.link().reconnects += 1;
                }
                connected_before = true;
                shared.set_state(LinkState::Connected, Some(&server), None);
                match session(&shared, &cfg, &mut conn, &mut stopped).await {
                    Ok(()) => break,
                    Err(why) => {
                        log::warn!(
                            "report link to {server} lost: {why}; records stay in the spool"
                        );
                        shared.set_state(LinkState::Disconnected, None, Some(why));
                    }
                }
            }
            Err(e) => {
                let why = link_error(&e);
                log::warn!("report link: {why}");
                shared.set_state(LinkState::Disconnected, None, Some(why));
                idx += 1;
            }
        }
        // Jitter keeps a fleet that lost its broker from returning in step.
        let jitter = Duration::from_millis(u64::from(
            rand_core::RngCore::next_u32(&mut rand_core::OsRng) % 250,
        ));
        tokio::select! {
            _ = tokio::time::sleep(backoff + jitter) => {}
            _ = stopped.changed() => break,
        }
        backoff = (backoff * 2).min(cfg.backoff_max);
    }
    shared.set_state(LinkState::Stopped, None, None);
}

/// Times a batch is sent again on one connection before the connection is
/// given up.
pub const MAX_RESENDS: u32 = 3;

/// Acknowledgement timeouts a batch the server has read (a PONG came after
/// it) waits for the stream before it is sent again, doubled for each
/// resend. The stream's acknowledgement of such a batch is late because
/// the cluster is behind (measured: tens of seconds at 10,000 devices on
/// two cores), and a resend is one more publish for it to deduplicate;
/// what the cluster really lost (its leader changed under the batch) still
/// goes again.
pub const STREAM_PATIENCE: u32 = 4;

struct InFlight {
    seqs: Vec<u64>,
    /// The message id it was sent with (a resend must carry the same).
    id: String,
    /// When it was (last) sent.
    sent: Instant,
    /// Sent again on this connection this many times.
    resends: u32,
    /// A PONG came after it was (last) sent: the server has read it.
    read: bool,
    /// The stream said it was too busy to take it (429): it goes again
    /// then, on this connection, without counting as a resend.
    retry_at: Option<Instant>,
    /// Times the stream said so for it, in a row.
    busy: u32,
}

impl InFlight {
    fn new(seqs: Vec<u64>, id: String, now: Instant) -> Self {
        Self {
            seqs,
            id,
            sent: now,
            resends: 0,
            read: false,
            retry_at: None,
            busy: 0,
        }
    }

    /// When something must be done about it: not yet known to be read, a
    /// PING is due after `ack_timeout`; read, a resend after
    /// [`STREAM_PATIENCE`] of them, doubled for each resend.
    fn due(&self, ack_timeout: Duration) -> Instant {
        if let Some(t) = self.retry_at {
            return t;
        }
        match self.read {
            false => self.sent + ack_timeout,
            true => self.sent + ack_timeout * STREAM_PATIENCE * (1u32 << self.resends.min(8)),
        }
    }
}

/// How long a batch the stream was too busy to take waits before it goes
/// again, the `n`th time in a row (from 0): a quarter of `ack_timeout`,
/// doubled each time up to four times it, plus up to half again at random.
fn busy_pause(ack_timeout: Duration, n: u32) -> Duration {
    let base = (ack_timeout / 4) * (1u32 << n.min(4));
    let jitter = u64::from(rand_core::RngCore::next_u32(&mut rand_core::OsRng) % 1000);
    base + base / 2 * u32::try_from(jitter).unwrap_or(0) / 1000
}

/// The batches a connection lets be in flight now (see `session`), shown
/// in the link's status.
struct Window {
    now: usize,
}

impl Window {
    fn new(shared: &Shared, max: usize) -> Self {
        let w = Window { now: max.max(1) };
        shared.link().window = w.now as u64;
        w
    }

    fn shrink(&mut self, shared: &Shared) {
        self.now = (self.now / 2).max(1);
        let mut l = shared.link();
        l.window = self.now as u64;
        l.window_cuts += 1;
    }

    fn grow(&mut self, shared: &Shared, max: usize) {
        if self.now < max {
            self.now += 1;
            shared.link().window = self.now as u64;
        }
    }
}

/// A PING that is out: when it went, and by when its PONG must come.
#[derive(Clone, Copy)]
struct Ping {
    sent: Instant,
    pong_by: Instant,
}

/// One connection's life: send, take acknowledgements, until it fails (the
/// reason) or the reporter stops.
async fn session(
    shared: &Arc<Shared>,
    cfg: &LinkConfig,
    conn: &mut Conn,
    stopped: &mut watch::Receiver<bool>,
) -> Result<(), String> {
    let subject = format!("{}.{}", cfg.subject_prefix, cfg.device);
    let ask_subject = format!("{}.{}", wire::ASK_PREFIX, cfg.device);
    if cfg.questions.is_some() {
        conn.subscribe(&ask_subject, 2)
            .await
            .map_err(|e| link_error(&e))?;
    }
    let mut follow = cfg
        .policy_sets
        .as_ref()
        .map(|p| Follow::new(&cfg.device, p));
    if let Some(f) = &mut follow {
        f.start(conn).await.map_err(|e| link_error(&e))?;
    }
    // Answers come back from their own tasks (a quote takes a while) and
    // are sent from here, on this connection; an answer for a connection
    // that died is lost, and the fleet says "unreachable".
    let (answers_tx, mut answers) = mpsc::channel::<(String, Result<Vec<u8>, String>)>(16);
    let mut inflight: BTreeMap<u64, InFlight> = BTreeMap::new();
    let mut next_token = 0u64;
    let mut sent_upto = 0u64;
    // A PING is out (a batch's acknowledgement was late): its PONG must
    // come in time, or the connection is dead.
    let mut ping: Option<Ping> = None;
    // Batches let in flight now: the configured window while the stream
    // keeps up; halved whenever it shows it does not (an acknowledgement
    // overdue, a 429), down to one; one more for each acknowledgement in
    // under half the acknowledgement timeout. A device then sends fewer,
    // larger batches to a cluster that is behind (its records wait in the
    // spool meanwhile), so ten thousand of them together ask it for what
    // it can store rather than for ever more messages.
    let mut window = Window::new(shared, cfg.window);
    loop {
        while inflight.len() < window.now {
            let sh = shared.clone();
            let (after, n, b) = (sent_upto, cfg.batch_records, cfg.batch_bytes);
            let recs = tokio::task::spawn_blocking(move || sh.pending(after, n, b))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            let (Some(first), Some(last)) = (recs.first(), recs.last()) else {
                break;
            };
            let (first, last) = (first.seq, last.seq);
            let payload =
                wire::encode(&cfg.device, shared.epoch, &recs).map_err(|e| e.to_string())?;
            let id = wire::msg_id(&cfg.device, shared.epoch, first, last);
            let token = next_token;
            next_token += 1;
            conn.publish(&subject, &id, &token.to_string(), &payload)
                .await
                .map_err(|e| e.to_string())?;
            sent_upto = last;
            inflight.insert(
                token,
                InFlight::new(recs.iter().map(|r| r.seq).collect(), id, Instant::now()),
            );
            shared.link().batches_sent += 1;
        }
        let deadline = next_deadline(&inflight, ping, cfg.ack_timeout, Instant::now())
            .map(tokio::time::Instant::from_std);
        tokio::select! {
            _ = stopped.changed() => return Ok(()),
            _ = shared.wake.notified() => {}
            _ = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => {
                let now = Instant::now();
                if ping.is_some_and(|p| now >= p.pong_by) {
                    return Err(format!(
                        "no acknowledgement within {:?}, and no PONG within {:?}",
                        cfg.ack_timeout, cfg.ack_timeout
                    ));
                }
                resend_overdue(shared, cfg, conn, &subject, &mut inflight, now).await?;
                let unread_overdue = inflight
                    .values()
                    .any(|f| !f.read && now >= f.due(cfg.ack_timeout));
                if ping.is_none() && unread_overdue {
                    window.shrink(shared);
                    conn.ping().await.map_err(|e| link_error(&e))?;
                    ping = Some(Ping { sent: now, pong_by: now + cfg.ack_timeout });
                }
            }
            Some((reply, answer)) = answers.recv() => {
                let answer = answer.and_then(|body| match body.len() > conn.max_payload() {
                    true => Err(format!(
                        "the answer is {} bytes, over the server's limit of {}",
                        body.len(),
                        conn.max_payload()
                    )),
                    false => Ok(body),
                });
                let body = match &answer {
                    Ok(body) => body.clone(),
                    Err(why) => {
                        log::warn!("report link: question refused: {why}");
                        refusal(why)
                    }
                };
                conn.publish_plain(&reply, &body).await.map_err(|e| link_error(&e))?;
                let mut l = shared.link();
                match answer {
                    Ok(_) => l.answered += 1,
                    Err(_) => l.refused += 1,
                }
            }
            inc = conn.replies.recv() => match inc {
                None => return Err("connection reader ended".to_owned()),
                Some(Err(e)) => return Err(link_error(&e)),
                Some(Ok(Incoming::Ping)) => conn.pong().await.map_err(|e| e.to_string())?,
                Some(Ok(Incoming::Pong)) => {
                    // Everything sent before the PING has been read.
                    if let Some(p) = ping.take() {
                        for f in inflight.values_mut().filter(|f| f.sent <= p.sent) {
                            f.read = true;
                        }
                    }
                }
                Some(Ok(Incoming::Message(m))) => {
                    if m.subject == ask_subject {
                        question(shared, cfg, m, &answers_tx);
                    } else if let Some(f) = &mut follow {
                        f.message(shared, m);
                    }
                }
                Some(Ok(Incoming::Reply(r))) => {
                    let Some((token, f)) = r
                        .token
                        .parse::<u64>()
                        .ok()
                        .and_then(|t| inflight.remove(&t).map(|f| (t, f)))
                    else {
                        continue;
                    };
                    match r.ack {
                        PubAck::Stored { duplicate, .. } => {
                            if f.sent.elapsed() < cfg.ack_timeout / 2 {
                                window.grow(shared, cfg.window);
                            }
                            let n = f.seqs.len() as u64;
                            let sh = shared.clone();
                            tokio::task::spawn_blocking(move || {
                                let mut spool = sh.spool();
                                f.seqs.iter().try_for_each(|&s| spool.ack(s))
                            })
                            .await
                            .map_err(|e| e.to_string())?
                            .map_err(|e| format!("spool: {e}"))?;
                            let mut l = shared.link();
                            l.records_acked += n;
                            l.last_ack_ms = Some(now_ms());
                            if duplicate {
                                l.duplicates += 1;
                            }
                        }
                        PubAck::Refused(why) => return Err(format!("stream refused a batch: {why}")),
                        PubAck::Busy(_) => {
                            // Not a refusal: the stream's inbound queue is
                            // full. The batch goes again after a pause that
                            // grows while it stays so (a quarter of the
                            // acknowledgement timeout, doubling, up to four
                            // times it), jittered so that a fleet told so at
                            // once does not come back at once.
                            window.shrink(shared);
                            let mut f = f;
                            let pause = busy_pause(cfg.ack_timeout, f.busy);
                            f.busy += 1;
                            f.read = true;
                            f.retry_at = Some(Instant::now() + pause);
                            inflight.insert(token, f);
                            shared.link().busy += 1;
                        }
                    }
                }
            }
        }
    }
}

/// When the sender must next look at its batches: the PONG's deadline, a
/// batch's PING, a read batch's resend. A batch waiting for the PONG of
/// the PING that is out does not count (the PONG decides for it; one
/// sent after that PING is looked at again once the PONG has come).
fn next_deadline(
    inflight: &BTreeMap<u64, InFlight>,
    ping: Option<Ping>,
    ack_timeout: Duration,
    now: Instant,
) -> Option<Instant> {
    inflight
        .values()
        .map(|f| f.due(ack_timeout))
        .filter(|&due| ping.is_none() || due > now)
        .chain(ping.map(|p| p.pong_by))
        .min()
}

/// Send again, on this connection and under the same ids, the batches the
/// server has read (a PONG came after them) whose acknowledgement is
/// overdue at `now` (read again from the spool: they are still there,
/// unacknowledged). A batch already sent
/// [`MAX_RESENDS`] times, or one the spool no longer gives back the same
/// (a record of it dropped to make room), ends the connection: the next
/// sends everything again from the spool, as after any failure.
async fn resend_overdue(
    shared: &Arc<Shared>,
    cfg: &LinkConfig,
    conn: &mut Conn,
    subject: &str,
    inflight: &mut BTreeMap<u64, InFlight>,
    now: Instant,
) -> Result<(), String> {
    let overdue: Vec<u64> = inflight
        .iter()
        .filter(|(_, f)| f.read && now >= f.due(cfg.ack_timeout))
        .map(|(t, _)| *t)
        .collect();
    for token in overdue {
        let Some(f) = inflight.get_mut(&token) else {
            continue;
        };
        let busy_retry = f.retry_at.take().is_some();
        if !busy_retry && f.resends >= MAX_RESENDS {
            return Err(format!(
                "no acknowledgement within {:?} after {} resends on a live connection",
                cfg.ack_timeout, f.resends
            ));
        }
        let (Some(&first), n) = (f.seqs.first(), f.seqs.len()) else {
            continue;
        };
        let sh = shared.clone();
        let recs =
            tokio::task::spawn_blocking(move || sh.pending(first.saturating_sub(1), n, usize::MAX))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
        if recs.iter().map(|r| r.seq).ne(f.seqs.iter().copied()) {
            return Err(format!(
                "no acknowledgement within {:?}, and the batch {}..={} is no longer whole in the spool",
                cfg.ack_timeout,
                first,
                f.seqs.last().copied().unwrap_or(first)
            ));
        }
        let payload = wire::encode(&cfg.device, shared.epoch, &recs).map_err(|e| e.to_string())?;
        conn.publish(subject, &f.id, &token.to_string(), &payload)
            .await
            .map_err(|e| e.to_string())?;
        f.sent = now;
        f.read = false;
        if !busy_retry {
            f.resends += 1;
            shared.link().resent += 1;
        }
    }
    Ok(())
}

/// The JSON of a refusal ([`wire::Refused`]).
fn refusal(why: &str) -> Vec<u8> {
    serde_json::to_vec(&wire::Refused {
        error: why.to_owned(),
    })
    .unwrap_or_else(|_| br#"{"error":"refused"}"#.to_vec())
}

/// A question came: hand it to whoever answers, and send their answer (or
/// a refusal) back through `answers` when it is ready. Never waits.
fn question(
    shared: &Arc<Shared>,
    cfg: &LinkConfig,
    m: Message,
    answers: &mpsc::Sender<(String, Result<Vec<u8>, String>)>,
) {
    shared.link().questions += 1;
    let Some(reply) = m.reply.filter(|r| wire::answer_subject_ok(&cfg.device, r)) else {
        log::warn!(
            "report link: a question without a reply subject under {}.{}; not answered",
            wire::ANSWER_PREFIX,
            cfg.device
        );
        shared.link().refused += 1;
        return;
    };
    let refuse = |why: String| {
        // The answers queue is drained by this very session; when it is
        // full the fleet hears nothing and says "unreachable".
        let _ = answers.try_send((reply.clone(), Err(why)));
    };
    let q = match wire::decode_question(&m.payload) {
        Ok(q) => q,
        Err(why) => return refuse(why),
    };
    let Some(to) = &cfg.questions else {
        return refuse("this device answers no questions".to_owned());
    };
    let (tx, rx) = oneshot::channel();
    if to
        .try_send(Asked {
            question: q,
            answer: tx,
        })
        .is_err()
    {
        return refuse("busy: a question is already being answered".to_owned());
    }
    let (answers, timeout) = (answers.clone(), cfg.answer_timeout);
    tokio::spawn(async move {
        let body = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err("the agent dropped the question".to_owned()),
            Err(_) => Err(format!("no answer within {timeout:?}")),
        };
        let _ = answers.send((reply, body)).await;
    });
}

/// Following a group's policy set on one connection.
struct Follow {
    sets: PolicySets,
    /// `$KV.guardian_policy.<group>`.
    subject: String,
    /// `guardian.inbox.<device>.`, where the direct get's answer comes.
    inbox: String,
    /// The one reply subject of the get asked on this connection, until
    /// its answer came.
    asked: Option<String>,
}

impl Follow {
    fn new(device: &str, sets: &PolicySets) -> Self {
        Self {
            subject: wire::policy_subject(&sets.group),
            inbox: format!("{}.{device}.", wire::INBOX_PREFIX),
            sets: sets.clone(),
            asked: None,
        }
    }

    /// Subscribe to the key's puts first, then ask for its current value:
    /// a put between the two is then heard either way, and a device that
    /// was offline gets the set published while it was away.
    async fn start(&mut self, conn: &mut Conn) -> Result<(), LinkError> {
        conn.subscribe(&self.subject, 3).await?;
        conn.subscribe(&format!("{}>", self.inbox), 4).await?;
        let mut token = [0u8; 8];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut token);
        let reply = format!("{}{}", self.inbox, hex::encode(token));
        self.asked = Some(reply.clone());
        conn.request(&wire::policy_direct_get(&self.sets.group), &reply, b"")
            .await
    }

    /// A message on the key's subject or the inbox: a value to hand over,
    /// a withdrawal, or "nothing published".
    fn message(&mut self, shared: &Shared, m: Message) {
        let group = &self.sets.group;
        let via = if m.subject == self.subject {
            "watch"
        } else if self.asked.as_deref() == Some(m.subject.as_str()) {
            // Its one answer: a later message there answers nothing.
            self.asked = None;
            "direct-get"
        } else if m.subject.starts_with(&self.inbox) {
            // Any client allowed to ask for a direct get can have the
            // servers answer on this inbox (a reply subject is not checked
            // against the asker's permissions): another group's set, or
            // this one's again and again, each costing a signature check,
            // a refusal and an alert.
            log::warn!(
                "policy sets: a message on {} answers no direct get this link asked; dropped",
                m.subject
            );
            shared.link().policy_sets_unasked += 1;
            return;
        } else {
            return;
        };
        if let Some(h) = &m.headers {
            if let Some((code, text)) = crate::nats::header_status(h) {
                if code == 404 {
                    log::info!("policy sets: no set published for group {group}");
                    shared.link().policy_sets_none_published += 1;
                } else {
                    log::error!(
                        "policy sets: reading the current set of group {group} failed: status {code} {text} (is the fleet's bucket {} there, with direct gets allowed?)",
                        wire::POLICY_BUCKET
                    );
                    shared.link().policy_sets_errors += 1;
                }
                return;
            }
            if let Some(op) = crate::nats::header_value(h, "KV-Operation")
                .filter(|op| op.eq_ignore_ascii_case("DEL") || op.eq_ignore_ascii_case("PURGE"))
            {
                log::warn!(
                    "policy sets: the set of group {group} was withdrawn ({op}, seen by {via}); the set in force stays (a withdrawal never rolls a device back)"
                );
                shared.link().policy_sets_withdrawn += 1;
                return;
            }
        }
        log::info!(
            "policy sets: a set for group {group} received ({} bytes, by {via})",
            m.payload.len()
        );
        shared.link().policy_sets_received += 1;
        self.sets.tx.send_replace(Some(Arc::new(ReceivedSet {
            bytes: m.payload,
            via,
        })));
    }
}

fn link_error(e: &LinkError) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}
