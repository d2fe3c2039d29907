//! The fleet service: consumes every device's batches from the ingest
//! stream through one durable consumer shared by any number of instances,
//! checks them, stores each record once ([`crate::store`]), and keeps each
//! device's state in key-value.
//!
//! Owns the JetStream objects (created idempotently at start: any instance
//! may be first) and the per-instance counters. May not trust a batch's
//! own word for who sent it: the subject (which the broker's per-device
//! permissions fix) must name the same device.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use async_nats::{
    HeaderMap,
    jetstream::{self, AckKind, consumer::pull, context::PublishErrorKind, stream},
};
use futures_util::StreamExt;
use guardian_report::wire::{self, Batch};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::store::{self, Stored, Summary};

/// The ingest stream: what devices publish.
pub const INGEST_STREAM: &str = "GUARDIAN_IN";
/// Its subjects: `guardian.in.<device>`.
pub const INGEST_SUBJECTS: &str = "guardian.in.*";
/// The store stream.
pub const STORE_STREAM: &str = "GUARDIAN_STORE";
/// The key-value bucket of per-device state.
pub const DEVICES_BUCKET: &str = "guardian_devices";
/// The durable consumer all instances share.
pub const CONSUMER: &str = "fleet";

/// How the service runs.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// NATS servers (any node of the cluster).
    pub servers: Vec<String>,
    /// Replicas of every stream and bucket (3 in production, 1 in a lab).
    pub replicas: usize,
    /// An ingest message not acknowledged in this time goes to another
    /// instance (a dead instance's work is taken over after this).
    pub ack_wait: Duration,
    /// Lanes the devices are spread over (by their subject). A lane
    /// stores its devices concurrently, each device's batches one store
    /// after another, in order.
    pub lanes: usize,
    /// How long stored records are kept.
    pub retention: Duration,
    /// A device that has not reported for this long is a `silent` alert.
    pub silent_after: Duration,
    /// How often device state is looked at for silence.
    pub sweep_every: Duration,
    /// Where alerts are also POSTed (`http://host:port/path`), if anywhere.
    pub webhook: Option<String>,
    /// Where the operator's page and `/metrics` are served, if anywhere.
    pub listen: Option<std::net::SocketAddr>,
    /// Attestation rounds over the link, if this instance runs them.
    pub attest: Option<Arc<crate::attest::AttestConfig>>,
    /// Enrolment over the link, if this instance enrols devices.
    pub enrol: Option<Arc<crate::enrol::EnrolConfig>>,
}

impl ServiceConfig {
    /// Defaults for `servers`.
    pub fn new(servers: Vec<String>) -> ServiceConfig {
        ServiceConfig {
            servers,
            replicas: 1,
            ack_wait: Duration::from_secs(30),
            lanes: 256,
            retention: Duration::from_secs(90 * 24 * 3600),
            silent_after: Duration::from_secs(300),
            sweep_every: Duration::from_secs(10),
            webhook: None,
            listen: None,
            attest: None,
            enrol: None,
        }
    }
}

/// What this instance has done (for logs now, `/metrics` later).
#[derive(Debug, Default)]
pub struct Counters {
    /// Ingest messages taken.
    pub batches_in: AtomicU64,
    /// Records stored.
    pub records_stored: AtomicU64,
    /// Records not stored again.
    pub duplicates: AtomicU64,
    /// Batches refused, by reason.
    pub rejected_malformed: AtomicU64,
    /// Batches whose subject names another device than the batch.
    pub rejected_wrong_device: AtomicU64,
    /// Batches over the size limit.
    pub rejected_oversize: AtomicU64,
    /// Store publishes retried because another instance stored first.
    pub store_conflicts: AtomicU64,
    /// Store attempts that failed (the ingest message comes back).
    pub store_errors: AtomicU64,
    /// Alerts, the webhook and the device gauges.
    pub alerts: crate::alerts::AlertCounters,
    /// Attestation rounds.
    pub attest: crate::attest::AttestCounters,
    /// Enrolment rounds.
    pub enrol: crate::enrol::EnrolCounters,
}

/// Per-device state in key-value: a cache of the newest summary, for the
/// CLI and the web page (the summary in the store stream is the truth).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceState {
    /// The device.
    pub device: String,
    /// Store stream sequence of the summary this reflects.
    pub store_seq: u64,
    /// The summary.
    pub summary: Summary,
}

/// A failure to start or keep serving.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Could not connect.
    #[error("connect to NATS at {servers}")]
    Connect {
        /// The servers tried.
        servers: String,
        /// Why.
        #[source]
        source: async_nats::ConnectError,
    },
    /// A JetStream object could not be made or read.
    #[error("{what}")]
    JetStream {
        /// What was being done.
        what: String,
        /// Why.
        #[source]
        source: async_nats::Error,
    },
}

fn js_err(what: impl Into<String>) -> impl FnOnce(async_nats::Error) -> ServiceError {
    let what = what.into();
    move |source| ServiceError::JetStream { what, source }
}

/// Connect to the cluster.
pub async fn connect(servers: &[String], name: &str) -> Result<async_nats::Client, ServiceError> {
    let joined = servers.join(",");
    let mut addrs = Vec::with_capacity(servers.len());
    for s in servers {
        let a: async_nats::ServerAddr =
            s.parse()
                .map_err(|e: std::io::Error| ServiceError::Connect {
                    servers: joined.clone(),
                    source: async_nats::ConnectError::with_source(
                        async_nats::ConnectErrorKind::ServerParse,
                        e,
                    ),
                })?;
        addrs.push(a);
    }
    async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5))
        .connect(addrs.as_slice())
        .await
        .map_err(|source| ServiceError::Connect {
            servers: joined,
            source,
        })
}

/// The JetStream objects the fleet uses, made if missing (same config from
/// every instance, so whichever starts first makes them).
pub async fn ensure(js: &jetstream::Context, cfg: &ServiceConfig) -> Result<(), ServiceError> {
    js.get_or_create_stream(stream::Config {
        name: INGEST_STREAM.to_owned(),
        subjects: vec![INGEST_SUBJECTS.to_owned()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        num_replicas: cfg.replicas,
        duplicate_window: Duration::from_secs(120),
        max_message_size: wire::MAX_BATCH_BYTES as i32 + 4096,
        ..Default::default()
    })
    .await
    .map_err(|e| js_err(format!("create stream {INGEST_STREAM}"))(e.into()))?;
    js.get_or_create_stream(stream::Config {
        name: STORE_STREAM.to_owned(),
        subjects: vec![format!("{}.*", store::STORE_PREFIX)],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        num_replicas: cfg.replicas,
        max_age: cfg.retention,
        allow_direct: true,
        ..Default::default()
    })
    .await
    .map_err(|e| js_err(format!("create stream {STORE_STREAM}"))(e.into()))?;
    crate::alerts::ensure(js, cfg.replicas, cfg.retention).await?;
    // Made here too, so that a device asking for its group's set before
    // any was published hears "none" rather than "no such bucket".
    crate::policy::bucket(js, cfg.replicas)
        .await
        .map_err(|e| ServiceError::JetStream {
            what: format!("create bucket {}", crate::policy::POLICY_BUCKET),
            source: e.into(),
        })?;
    if js.get_key_value(DEVICES_BUCKET).await.is_err() {
        js.create_key_value(jetstream::kv::Config {
            bucket: DEVICES_BUCKET.to_owned(),
            history: 1,
            num_replicas: cfg.replicas,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| js_err(format!("create bucket {DEVICES_BUCKET}"))(e.into()))?;
    }
    for bucket in [
        crate::attest::ATTEST_BUCKET,
        crate::attest::ENROLLED_BUCKET,
        crate::enrol::PENDING_BUCKET,
    ] {
        if js.get_key_value(bucket).await.is_err() {
            js.create_key_value(jetstream::kv::Config {
                bucket: bucket.to_owned(),
                history: 1,
                num_replicas: cfg.replicas,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| js_err(format!("create bucket {bucket}"))(e.into()))?;
        }
    }
    Ok(())
}

/// Now, in ms since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Why a batch was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not a valid batch (the reason).
    Malformed(String),
    /// Over the size limit.
    Oversize(usize),
    /// The subject names another device.
    WrongDevice {
        /// From the subject.
        subject: String,
        /// From the batch.
        claimed: String,
    },
}

/// Check an ingest message: a valid batch, from the device its subject
/// names.
pub fn check(subject: &str, payload: &[u8]) -> Result<Batch, Refusal> {
    let from = subject.rsplit('.').next().unwrap_or_default();
    let batch = wire::decode(payload).map_err(|e| match e {
        wire::WireError::TooLarge(n) => Refusal::Oversize(n),
        other => Refusal::Malformed(other.to_string()),
    })?;
    if batch.device != from {
        return Err(Refusal::WrongDevice {
            subject: from.to_owned(),
            claimed: batch.device,
        });
    }
    Ok(batch)
}

/// What a lane last stored per device: (store sequence, summary). Only a
/// hint (the stream's compare-and-set is the truth); bounded by the devices
/// the lane serves.
pub type LaneMemory = std::collections::HashMap<String, (u64, Summary)>;

/// What storing a device's batches came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOutcome {
    /// Records stored.
    pub stored: u64,
    /// Records not stored again.
    pub duplicates: u64,
    /// The device's last stored message now: (store sequence, summary).
    pub last: (u64, Summary),
}

/// Store what is new in `batches` (one device's, one epoch's, in the order
/// they came) in one message. `hint` is what this instance believes the
/// device's last stored message is; without it the store is read.
pub async fn store_batches(
    js: &jetstream::Context,
    store_stream: &stream::Stream,
    cache: &DeviceCache,
    mut hint: Option<(u64, Summary)>,
    batches: &[Batch],
    counters: &Counters,
) -> Result<StoreOutcome, async_nats::Error> {
    let Some(first) = batches.first() else {
        return Err("no batch to store".into());
    };
    // One message carries one device's summary and one epoch field: a mix
    // would store records under the wrong epoch.
    if batches
        .iter()
        .any(|b| b.device != first.device || b.epoch != first.epoch)
    {
        return Err("batches of more than one device or epoch to store together".into());
    }
    let device = first.device.clone();
    let subject = store::store_subject(&device);
    let given: usize = batches.iter().map(|b| b.records.len()).sum();
    for _ in 0..50 {
        // What this instance stored last for the device saves a read; if
        // another instance stored since, the publish below is refused and
        // the store is read.
        let (last, summary) = match hint.take() {
            Some(k) => k,
            None => match store_stream.get_last_raw_message_by_subject(&subject).await {
                Ok(m) => {
                    let s: Stored = serde_json::from_slice(&m.payload)?;
                    (m.sequence, s.summary)
                }
                Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => {
                    (0, Summary::default())
                }
                Err(e) => return Err(e.into()),
            },
        };
        let fresh = store::new_records(&summary, batches);
        let duplicates = (given - fresh.len()) as u64;
        if fresh.is_empty() {
            return Ok(StoreOutcome {
                stored: 0,
                duplicates,
                last: (last, summary),
            });
        }
        let now = now_ms();
        let missing = |s: &store::Summary| {
            s.epochs
                .get(&batches[0].epoch)
                .map_or(0, store::EpochSummary::missing)
        };
        let before = missing(&summary);
        let summary = store::updated(&summary, batches, &fresh, now);
        let newly_missing = missing(&summary).saturating_sub(before);
        let records = fresh
            .iter()
            .map(|&(bi, ri)| {
                let r = &batches[bi].records[ri];
                wire::WireRecord {
                    seq: r.seq,
                    time_ms: r.time_ms,
                    class: r.class.clone(),
                    body: r.body.clone(),
                }
            })
            .collect();
        let stored = Stored {
            device: device.clone(),
            epoch: batches[0].epoch.clone(),
            stored_ms: now,
            records,
            summary: summary.clone(),
            newly_missing,
        };
        let mut headers = HeaderMap::new();
        headers.insert(
            "Nats-Expected-Last-Subject-Sequence",
            last.to_string().as_str(),
        );
        let ack = js
            .publish_with_headers(
                subject.clone(),
                headers,
                serde_json::to_vec(&stored)?.into(),
            )
            .await?;
        match ack.await {
            Ok(a) => {
                cache.note(&device, a.sequence, summary.clone());
                return Ok(StoreOutcome {
                    stored: fresh.len() as u64,
                    duplicates,
                    last: (a.sequence, summary),
                });
            }
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                // Another instance stored for this device in between: read
                // again.
                counters.store_conflicts.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err("gave up after 50 store conflicts for one device".into())
}

/// The per-device key-value cache, written beside the lanes, not in them:
/// during a leader election a write may take seconds, and the store is
/// already right. Holds the newest state per device not yet written; one
/// task writes them, and keeps trying until each is in.
#[derive(Debug, Clone, Default)]
pub struct DeviceCache {
    dirty: Arc<std::sync::Mutex<std::collections::HashMap<String, (u64, Summary)>>>,
}

impl DeviceCache {
    /// The store holds `summary` for `device` at `store_seq`.
    pub fn note(&self, device: &str, store_seq: u64, summary: Summary) {
        let mut d = self.dirty.lock().unwrap_or_else(|p| p.into_inner());
        let e = d
            .entry(device.to_owned())
            .or_insert((0, Summary::default()));
        if store_seq > e.0 {
            *e = (store_seq, summary);
        }
    }

    /// Devices whose state is not written yet.
    pub fn lagging(&self) -> usize {
        self.dirty.lock().map(|d| d.len()).unwrap_or(0)
    }

    /// Write what is dirty, until `stop`.
    pub async fn run(self, kv: jetstream::kv::Store, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            let batch: Vec<(String, (u64, Summary))> = {
                let mut d = self.dirty.lock().unwrap_or_else(|p| p.into_inner());
                d.drain().collect()
            };
            let mut failed = 0;
            for (device, (seq, summary)) in batch {
                if let Err(e) = write_device(&kv, &device, seq, &summary).await {
                    log::debug!("device state {device}: {e}; will retry");
                    failed += 1;
                    self.note(&device, seq, summary);
                }
            }
            if failed > 0 {
                log::info!(
                    "device state: {failed} device(s) not written yet (the store is right; the cache lags)"
                );
            }
            if *stop.borrow() {
                // One last pass was just made.
                return;
            }
            let pause = if failed > 0 {
                Duration::from_millis(500)
            } else {
                Duration::from_millis(100)
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.changed() => {}
            }
        }
    }
}

/// Write one device's state, never going backwards (compare-and-set on the
/// key's revision).
async fn write_device(
    kv: &jetstream::kv::Store,
    device: &str,
    store_seq: u64,
    summary: &Summary,
) -> Result<(), String> {
    let state = DeviceState {
        device: device.to_owned(),
        store_seq,
        summary: summary.clone(),
    };
    let value = serde_json::to_vec(&state).map_err(|e| e.to_string())?;
    match kv.entry(device).await.map_err(|e| e.to_string())? {
        Some(e) => {
            let newer = serde_json::from_slice::<DeviceState>(&e.value)
                .map(|old| old.store_seq >= store_seq)
                .unwrap_or(false);
            if newer {
                return Ok(());
            }
            kv.update(device, value.into(), e.revision)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
        None => kv
            .create(device, value.into())
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
    }
}

/// The streams, the device bucket and the shared ingest consumer, made if
/// missing ([`ensure`]) and opened: the store stream, the bucket and the
/// consumer.
async fn open(
    js: &jetstream::Context,
    cfg: &ServiceConfig,
) -> Result<
    (
        stream::Stream,
        jetstream::kv::Store,
        jetstream::consumer::PullConsumer,
    ),
    ServiceError,
> {
    ensure(js, cfg).await?;
    let ingest = js
        .get_stream(INGEST_STREAM)
        .await
        .map_err(|e| js_err(format!("open stream {INGEST_STREAM}"))(e.into()))?;
    let store_stream = js
        .get_stream(STORE_STREAM)
        .await
        .map_err(|e| js_err(format!("open stream {STORE_STREAM}"))(e.into()))?;
    let kv = js
        .get_key_value(DEVICES_BUCKET)
        .await
        .map_err(|e| js_err(format!("open bucket {DEVICES_BUCKET}"))(e.into()))?;
    let consumer: jetstream::consumer::PullConsumer = ingest
        .get_or_create_consumer(
            CONSUMER,
            pull::Config {
                durable_name: Some(CONSUMER.to_owned()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: cfg.ack_wait,
                max_ack_pending: 20_000,
                num_replicas: cfg.replicas,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| js_err(format!("create consumer {CONSUMER}"))(e.into()))?;
    Ok((store_stream, kv, consumer))
}

/// Run the service until `shutdown` completes.
pub async fn serve(
    cfg: ServiceConfig,
    instance: &str,
    counters: Arc<Counters>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServiceError> {
    let client = connect(&cfg.servers, &format!("guardian-fleet {instance}")).await?;
    let js = jetstream::new(client.clone());
    // A fleet started with (or before) its cluster, or whose cluster goes
    // away while it starts, waits for JetStream (up to two minutes) rather
    // than exiting; it says so while it waits.
    let mut waited = Duration::ZERO;
    let (store_stream, kv, consumer) = loop {
        match open(&js, &cfg).await {
            Ok(parts) => break parts,
            Err(e) if waited < Duration::from_secs(120) => {
                log::warn!("JetStream not ready ({e}); retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                waited += Duration::from_secs(1);
            }
            Err(e) => return Err(e),
        }
    };
    let cache = DeviceCache::default();
    let (cache_stop, cache_stopped) = tokio::sync::watch::channel(false);
    let cache_task = tokio::spawn(cache.clone().run(kv, cache_stopped.clone()));
    // Alerts, from what is stored; silence, from device state; the
    // webhook and /metrics if asked for. They stop with the cache writer.
    let mut side = vec![
        tokio::spawn(crate::alerts::from_store(
            js.clone(),
            cfg.replicas,
            counters.clone(),
            cache_stopped.clone(),
        )),
        tokio::spawn(crate::alerts::sweep_silent(
            js.clone(),
            cfg.silent_after,
            cfg.sweep_every,
            counters.clone(),
            cache_stopped.clone(),
        )),
    ];
    if let Some(e) = cfg.enrol.clone() {
        side.push(tokio::spawn(crate::enrol::rounds(
            client.clone(),
            js.clone(),
            e,
            instance.to_owned(),
            counters.clone(),
            cache_stopped.clone(),
        )));
    }
    if let Some(a) = cfg.attest.clone() {
        side.push(tokio::spawn(crate::attest::rounds(
            client.clone(),
            js.clone(),
            a,
            instance.to_owned(),
            counters.clone(),
            cache_stopped.clone(),
        )));
    }
    if let Some(url) = cfg.webhook.clone() {
        side.push(tokio::spawn(crate::alerts::webhook(
            js.clone(),
            url,
            cfg.replicas,
            counters.clone(),
            cache_stopped.clone(),
        )));
    }
    if let Some(addr) = cfg.listen {
        let web = crate::web::Web {
            counters: counters.clone(),
            js: js.clone(),
            instance: instance.to_owned(),
            silent_after: cfg.silent_after,
        };
        let st = cache_stopped.clone();
        side.push(tokio::spawn(async move {
            if let Err(e) = crate::web::serve(addr, web, st).await {
                log::error!("web: cannot serve on {addr}: {e}");
            }
        }));
    }
    let mut messages = pull(&consumer)
        .await
        .map_err(|e| js_err("pull from the ingest consumer")(e.into()))?;
    log::info!("guardian-fleet {instance}: consuming {INGEST_STREAM} as {CONSUMER}");

    // Lanes: a device's batches go to one lane, handled in order, so this
    // instance never races itself on a device. Within a lane, devices are
    // stored concurrently (see `lane`).
    let mut lanes = Vec::with_capacity(cfg.lanes.max(1));
    for _ in 0..cfg.lanes.max(1) {
        let (tx, rx) = mpsc::channel::<jetstream::Message>(LANE_QUEUE);
        tokio::spawn(lane(
            js.clone(),
            store_stream.clone(),
            cache.clone(),
            counters.clone(),
            rx,
        ));
        lanes.push(tx);
    }
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            next = messages.next() => match next {
                None => {
                    // The pull ended (the cluster went away for long): pull
                    // again once it is back; the consumer is durable.
                    log::warn!("ingest consumer: the pull ended; pulling again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    match pull(&consumer).await {
                        Ok(m) => messages = m,
                        Err(e) => log::warn!("ingest consumer: {e}; retrying"),
                    }
                }
                Some(Err(e)) => {
                    log::warn!("ingest consumer: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Some(Ok(msg)) => {
                    counters.batches_in.fetch_add(1, Ordering::Relaxed);
                    let lane = lane_of(&msg.subject, lanes.len());
                    if lanes[lane].send(msg).await.is_err() {
                        break;
                    }
                }
            }
        }
    }
    let _ = cache_stop.send(true);
    let _ = cache_task.await;
    for t in side {
        let _ = t.await;
    }
    Ok(())
}

/// Ingest messages asked for in one pull, at most, and their bytes.
const PULL_BATCH: usize = 4_000;
const PULL_BYTES: usize = 32 << 20;

/// The ingest consumer's messages. The client asks for more once half of
/// what it asked for has come, so what can be on its way is about one and
/// a half pulls: with the library's default of 200 messages and a
/// cluster taking a few hundred milliseconds to answer a pull under load,
/// that alone held the service near 1,000 batches a second with 10,000
/// devices sending 10,000 (measured: the ingest stream held 120,000
/// messages while the consumer had 200 to 700 delivered and unacknowledged
/// and the instance used 4% of a core).
async fn pull(
    consumer: &jetstream::consumer::PullConsumer,
) -> Result<pull::Stream, jetstream::consumer::StreamError> {
    consumer
        .stream()
        .max_messages_per_batch(PULL_BATCH)
        .max_bytes_per_batch(PULL_BYTES)
        .heartbeat(Duration::from_secs(15))
        .messages()
        .await
}

fn lane_of(subject: &str, lanes: usize) -> usize {
    // FNV-1a: stable and cheap; any spread will do.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in subject.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    (h % lanes as u64) as usize
}

/// Ingest messages queued per lane, at most.
const LANE_QUEUE: usize = 512;
/// Ingest messages a lane takes at once, at most.
const LANE_TAKE: usize = 256;
/// Ingest payload bytes stored in one message, about: well under the
/// server's 1 MiB payload limit with the summary added (one batch is at
/// most 512 KiB and is always stored alone if it must).
const STORE_MESSAGE_BYTES: usize = 512 * 1024;

/// One lane: takes what has queued up, refuses what must be refused, and
/// stores each device's batches in order, one device's store at a time
/// and every device concurrently (each its own compare-and-set on its own
/// subject, so they cannot interfere). Batches of a device that arrive
/// while it is being stored wait, and are then stored together.
///
/// Why: storing a batch waits for an R3 publish's acknowledgement, a few
/// milliseconds on a quiet cluster and up to seconds on a loaded one; one
/// publish after another per lane bounds the rate at lanes / latency, and
/// with 10,000 devices each sending a batch a second that is far below
/// what arrives (measured: 25 to 40 s behind). A lane that took many and
/// waited for all of them would wait for its slowest device each time; so
/// each device goes on as soon as its own store is done. A device whose
/// batches queued up has them stored in one message, so the store catches
/// up faster the further behind it is.
async fn lane(
    js: jetstream::Context,
    store_stream: stream::Stream,
    cache: DeviceCache,
    counters: Arc<Counters>,
    mut rx: mpsc::Receiver<jetstream::Message>,
) {
    use futures_util::stream::FuturesUnordered;
    let (js, store_stream, cache, counters) = (&js, &store_stream, &cache, &*counters);
    let mut known = LaneMemory::new();
    let mut waiting: std::collections::HashMap<String, Vec<(Batch, jetstream::Message)>> =
        std::collections::HashMap::new();
    let mut running = FuturesUnordered::new();
    let mut taken = Vec::with_capacity(LANE_TAKE);
    let start = |device: String,
                 items: Vec<(Batch, jetstream::Message)>,
                 hint: Option<(u64, Summary)>| async move {
        let last = store_device(js, store_stream, cache, counters, hint, items).await;
        (device, last)
    };
    let mut open = true;
    while open || !running.is_empty() {
        tokio::select! {
            n = rx.recv_many(&mut taken, LANE_TAKE), if open => {
                if n == 0 {
                    open = false;
                    continue;
                }
                let mut fresh: Vec<(String, Vec<(Batch, jetstream::Message)>)> = Vec::new();
                for msg in taken.drain(..) {
                    match check(&msg.subject, &msg.payload) {
                        Err(refusal) => refuse(counters, msg, refusal).await,
                        Ok(batch) => {
                            // A device being stored (its entry in `waiting`
                            // exists, perhaps empty) queues; others start.
                            if let Some(q) = waiting.get_mut(&batch.device) {
                                q.push((batch, msg));
                            } else if let Some(f) = fresh.iter_mut().find(|f| f.0 == batch.device) {
                                f.1.push((batch, msg));
                            } else {
                                fresh.push((batch.device.clone(), vec![(batch, msg)]));
                            }
                        }
                    }
                }
                for (device, items) in fresh {
                    waiting.insert(device.clone(), Vec::new());
                    let hint = known.remove(&device);
                    running.push(start(device, items, hint));
                }
            }
            Some((device, last)) = running.next() => {
                match waiting.remove(&device) {
                    Some(items) if !items.is_empty() => {
                        waiting.insert(device.clone(), Vec::new());
                        running.push(start(device, items, last));
                    }
                    _ => {
                        if let Some(l) = last {
                            known.insert(device, l);
                        }
                    }
                }
            }
        }
    }
}

/// A refused batch: counted by reason, and terminated, not acknowledged as
/// handled: it stays visible as such in the consumer's state and is never
/// stored.
async fn refuse(counters: &Counters, msg: jetstream::Message, refusal: Refusal) {
    match &refusal {
        Refusal::Malformed(_) => counters.rejected_malformed.fetch_add(1, Ordering::Relaxed),
        Refusal::Oversize(_) => counters.rejected_oversize.fetch_add(1, Ordering::Relaxed),
        Refusal::WrongDevice { .. } => counters
            .rejected_wrong_device
            .fetch_add(1, Ordering::Relaxed),
    };
    log::warn!("refused a batch on {}: {refusal:?}", msg.subject);
    let _ = msg.ack_with(AckKind::Term).await;
}

/// Store one device's batches, in the order they came: runs of the same
/// epoch, each run (up to [`STORE_MESSAGE_BYTES`]) one message. An ingest
/// message is acknowledged only once the store holds its records; if a
/// run cannot be stored, it and every later one of the device come back
/// (in order, after a pause), and the store is read again next time.
/// Returns the device's last stored message, if known.
async fn store_device(
    js: &jetstream::Context,
    store_stream: &stream::Stream,
    cache: &DeviceCache,
    counters: &Counters,
    mut hint: Option<(u64, Summary)>,
    items: Vec<(Batch, jetstream::Message)>,
) -> Option<(u64, Summary)> {
    let mut items = items.into_iter().peekable();
    while let Some((first, msg)) = items.next() {
        let mut bytes = msg.payload.len();
        let mut batches = vec![first];
        let mut msgs = vec![msg];
        while let Some((b, m)) = items.next_if(|(b, m)| {
            b.epoch == batches[0].epoch && bytes + m.payload.len() <= STORE_MESSAGE_BYTES
        }) {
            bytes += m.payload.len();
            batches.push(b);
            msgs.push(m);
        }
        match store_batches(js, store_stream, cache, hint.take(), &batches, counters).await {
            Ok(out) => {
                counters
                    .records_stored
                    .fetch_add(out.stored, Ordering::Relaxed);
                counters
                    .duplicates
                    .fetch_add(out.duplicates, Ordering::Relaxed);
                hint = Some(out.last);
                for m in msgs {
                    if let Err(e) = m.ack().await {
                        // It comes back after ack_wait and is then a
                        // duplicate.
                        log::warn!("ack of a stored batch from {}: {e}", batches[0].device);
                    }
                }
            }
            Err(e) => {
                counters.store_errors.fetch_add(1, Ordering::Relaxed);
                log::warn!(
                    "storing {} batch(es) from {}: {e}; they will be retried",
                    batches.len(),
                    batches[0].device
                );
                for m in msgs.into_iter().chain(items.map(|(_, m)| m)) {
                    let _ = m
                        .ack_with(AckKind::Nak(Some(Duration::from_millis(500))))
                        .await;
                }
                return None;
            }
        }
    }
    hint
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_must_come_from_the_device_it_names() {
        let recs = vec![guardian_report::spool::Record {
            seq: 1,
            time_ms: 1,
            class: guardian_report::Class::Alert,
            payload: b"{}".to_vec(),
        }];
        let p = wire::encode("dev-a", 1, &recs).unwrap();
        assert!(check("guardian.in.dev-a", &p).is_ok());
        assert_eq!(
            check("guardian.in.dev-b", &p).unwrap_err(),
            Refusal::WrongDevice {
                subject: "dev-b".into(),
                claimed: "dev-a".into()
            }
        );
        assert!(matches!(
            check("guardian.in.x", b"{"),
            Err(Refusal::Malformed(_))
        ));
        let big = vec![b' '; wire::MAX_BATCH_BYTES + 1];
        assert!(matches!(
            check("guardian.in.x", &big),
            Err(Refusal::Oversize(_))
        ));
    }
}
