//! Alerts: what the security team must hear about at once, as a JSON
//! message on `guardian.alert.<device>` (stream `GUARDIAN_ALERTS`) and, if
//! configured, a webhook.
//!
//! Alerts come from what is stored, not from the ingest path: a durable
//! consumer on the store stream (shared by every instance, like the ingest
//! consumer) reads each stored message once and publishes its alerts with
//! a message id made of the device, the epoch, the sequence number and the
//! kind. A message redelivered after an instance died publishes the same
//! ids again, which the alert stream drops as duplicates: each alert
//! appears once. Silence is looked for in the device state (key-value): a
//! device whose last report is older than the deadline is one `silent`
//! alert per silence (its id carries the last report's time), whichever
//! instance sweeps first.
//!
//! The webhook is a second durable consumer, on the alert stream: an alert
//! is acknowledged once the receiver answered 2xx, else redelivered later,
//! so a receiver that was down gets what it missed.
//!
//! May not touch the ingest or the store (read only), nor judge evidence
//! (attestation verdicts are the verifier's).

use std::{
    collections::BTreeMap,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use async_nats::{
    HeaderMap,
    jetstream::{self, AckKind, consumer::pull, stream},
};
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    service::{STORE_STREAM, ServiceError},
    store::Stored,
};

/// The alert stream.
pub const ALERT_STREAM: &str = "GUARDIAN_ALERTS";
/// Alerts are published on `guardian.alert.<device>`.
pub const ALERT_PREFIX: &str = "guardian.alert";
/// The durable consumer on the store stream that turns records into
/// alerts.
pub const FROM_STORE: &str = "alerts";
/// The durable consumer on the alert stream that calls the webhook.
pub const WEBHOOK: &str = "webhook";
/// How far back the alert consumers start when they are first made.
pub const LOOK_BACK: Duration = Duration::from_secs(600);
/// How long the alert stream remembers a message id (a redelivery or a
/// second instance's sweep inside it is dropped as a duplicate).
pub const DEDUP_WINDOW: Duration = Duration::from_secs(600);

/// One alert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// The device.
    pub device: String,
    /// `tamper_attempt`, `guard`, `events_dropped`, `records_lost`,
    /// `records_missing` or `silent`.
    pub kind: String,
    /// What happened, in words.
    pub what: String,
    /// Since when: the device's time of the record, or of its last report
    /// for `silent` (ms since the Unix epoch).
    pub since_ms: u64,
    /// The device's spool epoch and the record's sequence number, where a
    /// record is the evidence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
    /// The record's sequence number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// The evidence: the record's body as the device sent it, or the
    /// device state for `silent`.
    pub evidence: Value,
}

impl Alert {
    /// The id the alert stream deduplicates on.
    pub fn msg_id(&self) -> String {
        match self.seq {
            Some(seq) => format!(
                "{}:{}:{seq}:{}",
                self.device,
                self.epoch.as_deref().unwrap_or("-"),
                self.kind
            ),
            None => format!("{}:{}:{}", self.device, self.kind, self.since_ms),
        }
    }
}

/// What an instance did with alerts (for `/metrics`).
#[derive(Debug, Default)]
pub struct AlertCounters {
    /// Alerts published, by kind (duplicates the stream dropped included).
    pub published: Mutex<BTreeMap<String, u64>>,
    /// Alerts the stream dropped as duplicates.
    pub duplicates: AtomicU64,
    /// Publish failures (the stored message comes back).
    pub publish_errors: AtomicU64,
    /// Webhook calls answered 2xx.
    pub webhook_delivered: AtomicU64,
    /// Webhook calls that failed (retried later).
    pub webhook_failures: AtomicU64,
    /// Devices in key-value at the last sweep.
    pub devices: AtomicU64,
    /// Of them, silent past the deadline.
    pub devices_silent: AtomicU64,
}

/// The alerts in one stored message.
pub fn from_stored(s: &Stored) -> Vec<Alert> {
    let mut out = Vec::new();
    for r in &s.records {
        let body: Value = serde_json::from_str(r.body.get()).unwrap_or(Value::Null);
        let text = |k: &str| body.get(k).and_then(Value::as_str).unwrap_or("?");
        let (kind, what) = match r.class.as_str() {
            "alert" if body.get("kind").and_then(Value::as_str) == Some("guard") => (
                "guard",
                format!("guard {}: {}", text("action"), text("detail")),
            ),
            "alert" => (
                "tamper_attempt",
                format!(
                    "{} {} ({}) of {} by {}",
                    text("event"),
                    text("verdict"),
                    text("mode"),
                    body.get("file")
                        .or_else(|| body.get("path"))
                        .or_else(|| body.get("name"))
                        .and_then(Value::as_str)
                        .unwrap_or("?"),
                    body.get("exe").and_then(Value::as_str).unwrap_or("?")
                ),
            ),
            "drop" => {
                let n: u64 = body
                    .get("by_class")
                    .and_then(Value::as_object)
                    .map(|m| m.values().filter_map(Value::as_u64).sum())
                    .unwrap_or(0);
                match body.get("reason").and_then(Value::as_str) {
                    // Not the drop rule: records the device's spool could
                    // no longer read back (removed or changed on disk).
                    Some(why) => (
                        "records_lost",
                        format!("{n} records lost on the device: {why}"),
                    ),
                    None => (
                        "events_dropped",
                        format!("{n} records dropped on the device"),
                    ),
                }
            }
            _ => continue,
        };
        out.push(Alert {
            device: s.device.clone(),
            kind: kind.to_owned(),
            what,
            since_ms: r.time_ms,
            epoch: Some(s.epoch.clone()),
            seq: Some(r.seq),
            evidence: body,
        });
    }
    if s.newly_missing > 0
        && let Some(last) = s.records.last()
    {
        let e = s.summary.epochs.get(&s.epoch);
        out.push(Alert {
            device: s.device.clone(),
            kind: "records_missing".to_owned(),
            what: format!(
                "{} records will never arrive: the device's spool no longer holds them and no drop notice covers them (removed on the device, or lost on the way)",
                s.newly_missing
            ),
            since_ms: last.time_ms,
            epoch: Some(s.epoch.clone()),
            seq: Some(last.seq),
            evidence: serde_json::json!({
                "newly_missing": s.newly_missing,
                "missing": e.map(crate::store::EpochSummary::missing),
                "settled_below": e.map(|e| e.settled_below),
            }),
        });
    }
    out
}

/// The alert stream, made if missing.
pub async fn ensure(
    js: &jetstream::Context,
    replicas: usize,
    retention: Duration,
) -> Result<(), ServiceError> {
    js.get_or_create_stream(stream::Config {
        name: ALERT_STREAM.to_owned(),
        subjects: vec![format!("{ALERT_PREFIX}.*")],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        max_age: retention,
        duplicate_window: DEDUP_WINDOW,
        ..Default::default()
    })
    .await
    .map(|_| ())
    .map_err(|e| ServiceError::JetStream {
        what: format!("create stream {ALERT_STREAM}"),
        source: e.into(),
    })
}

/// Publish one alert (once: see the module docs).
pub async fn publish(
    js: &jetstream::Context,
    a: &Alert,
    counters: &AlertCounters,
) -> Result<(), async_nats::Error> {
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", a.msg_id().as_str());
    let ack = js
        .publish_with_headers(
            format!("{ALERT_PREFIX}.{}", a.device),
            headers,
            serde_json::to_vec(a)?.into(),
        )
        .await?
        .await?;
    if let Ok(mut m) = counters.published.lock() {
        *m.entry(a.kind.clone()).or_default() += 1;
    }
    if ack.duplicate {
        counters.duplicates.fetch_add(1, Ordering::Relaxed);
    } else {
        log::warn!("ALERT {} {}: {}", a.device, a.kind, a.what);
    }
    Ok(())
}

/// A durable pull consumer named `name` on `stream` (made if missing),
/// waiting for the cluster as long as it takes; `None` once `stop` says
/// so.
async fn durable(
    js: &jetstream::Context,
    stream: &str,
    name: &str,
    replicas: usize,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> Option<jetstream::consumer::PullConsumer> {
    loop {
        let made = async {
            js.get_stream(stream)
                .await?
                .get_or_create_consumer(
                    name,
                    pull::Config {
                        durable_name: Some(name.to_owned()),
                        // Made once, then found by name on every start:
                        // from a little before now, not from the start of
                        // a store that may hold 90 days (a first start
                        // over an existing fleet does not replay its
                        // history as alerts); the margin covers records
                        // stored while the first instance came up.
                        deliver_policy: jetstream::consumer::DeliverPolicy::ByStartTime {
                            start_time: time::OffsetDateTime::now_utc() - LOOK_BACK,
                        },
                        ack_policy: jetstream::consumer::AckPolicy::Explicit,
                        ack_wait: Duration::from_secs(30),
                        num_replicas: replicas,
                        ..Default::default()
                    },
                )
                .await
                .map_err(async_nats::Error::from)
        };
        match made.await {
            Ok(c) => return Some(c),
            Err(e) => {
                log::warn!("{name}: cannot read {stream} yet ({e}); retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.changed() => return None,
                }
            }
        }
    }
}

/// Hand every message of `consumer` to `each` (which acknowledges it),
/// pulling again whenever a pull ends, until `stop` says so.
async fn each_message<F, Fut>(
    consumer: jetstream::consumer::PullConsumer,
    mut stop: tokio::sync::watch::Receiver<bool>,
    mut each: F,
) where
    F: FnMut(jetstream::Message) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    loop {
        let mut messages = match consumer.messages().await {
            Ok(m) => m,
            Err(e) => {
                log::warn!("pulling: {e}; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        loop {
            let msg = tokio::select! {
                _ = stop.changed() => return,
                m = messages.next() => m,
            };
            match msg {
                None => break,
                Some(Err(_)) => tokio::time::sleep(Duration::from_millis(200)).await,
                Some(Ok(msg)) => each(msg).await,
            }
        }
    }
}

/// Turn every stored message into its alerts, until `stop` says so.
pub async fn from_store(
    js: jetstream::Context,
    replicas: usize,
    counters: std::sync::Arc<crate::service::Counters>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let Some(consumer) = durable(&js, STORE_STREAM, FROM_STORE, replicas, &mut stop).await else {
        return;
    };
    each_message(consumer, stop, |msg| {
        let (js, counters) = (&js, &counters);
        async move {
            let Ok(stored) = serde_json::from_slice::<Stored>(&msg.payload) else {
                // The store holds only what this service wrote; something
                // else there is said and skipped.
                log::error!("alerts: a store message that is not a stored batch");
                let _ = msg.ack_with(AckKind::Term).await;
                return;
            };
            for a in from_stored(&stored) {
                if let Err(e) = publish(js, &a, &counters.alerts).await {
                    counters
                        .alerts
                        .publish_errors
                        .fetch_add(1, Ordering::Relaxed);
                    log::warn!("alerts: publishing {} for {}: {e}", a.kind, a.device);
                    let _ = msg
                        .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                        .await;
                    return;
                }
            }
            let _ = msg.ack().await;
        }
    })
    .await;
}

/// Every `every`, a `silent` alert for each device whose last report is
/// older than `after`.
pub async fn sweep_silent(
    js: jetstream::Context,
    after: Duration,
    every: Duration,
    counters: std::sync::Arc<crate::service::Counters>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        let Ok(states) = crate::query::devices(&js).await else {
            continue;
        };
        let now = crate::service::now_ms();
        let mut silent = 0;
        for s in &states {
            let last = s.summary.last_seen_ms;
            if last == 0 || now.saturating_sub(last) < after.as_millis() as u64 {
                continue;
            }
            silent += 1;
            let a = Alert {
                device: s.device.clone(),
                kind: "silent".to_owned(),
                what: format!(
                    "no report for {} s (deadline {} s)",
                    now.saturating_sub(last) / 1000,
                    after.as_secs()
                ),
                since_ms: last,
                epoch: s.summary.current_epoch.clone(),
                seq: None,
                evidence: serde_json::to_value(s).unwrap_or(Value::Null),
            };
            if let Err(e) = publish(&js, &a, &counters.alerts).await {
                counters
                    .alerts
                    .publish_errors
                    .fetch_add(1, Ordering::Relaxed);
                log::warn!("alerts: publishing silent for {}: {e}", a.device);
            }
        }
        counters
            .alerts
            .devices
            .store(states.len() as u64, Ordering::Relaxed);
        counters
            .alerts
            .devices_silent
            .store(silent, Ordering::Relaxed);
    }
}

/// Deliver every alert to `url` (http://host:port/path), once each
/// answered 2xx.
pub async fn webhook(
    js: jetstream::Context,
    url: String,
    replicas: usize,
    counters: std::sync::Arc<crate::service::Counters>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let Some(consumer) = durable(&js, ALERT_STREAM, WEBHOOK, replicas, &mut stop).await else {
        return;
    };
    each_message(consumer, stop, |msg| {
        let (url, counters) = (&url, &counters);
        async move {
            match post(url, &msg.payload).await {
                Ok(()) => {
                    counters
                        .alerts
                        .webhook_delivered
                        .fetch_add(1, Ordering::Relaxed);
                    let _ = msg.ack().await;
                }
                Err(e) => {
                    counters
                        .alerts
                        .webhook_failures
                        .fetch_add(1, Ordering::Relaxed);
                    log::warn!("webhook {url}: {e}; retrying in 5 s");
                    let _ = msg
                        .ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
                        .await;
                }
            }
        }
    })
    .await;
}

/// Why a webhook call failed.
#[derive(Debug, thiserror::Error)]
pub enum PostError {
    /// Not an `http://host:port/path` URL.
    #[error("not an http:// URL: {0}")]
    Url(String),
    /// Could not connect, write or read.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The receiver answered something else than 2xx.
    #[error("answered {0:?}")]
    Status(String),
    /// No answer in time.
    #[error("no answer in 10 s")]
    Timeout,
}

/// POST `body` as JSON to an `http://` URL (HTTP/1.1, one request per
/// connection). HTTPS receivers sit behind a local proxy for now.
pub async fn post(url: &str, body: &[u8]) -> Result<(), PostError> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| PostError::Url(url.to_owned()))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if host.is_empty() {
        return Err(PostError::Url(url.to_owned()));
    }
    let call = async {
        let mut s = tokio::net::TcpStream::connect(host).await?;
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\nUser-Agent: guardian-fleet\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await?;
        s.write_all(body).await?;
        let mut answer = Vec::new();
        let mut buf = [0u8; 512];
        while !answer.windows(2).any(|w| w == b"\r\n") {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
            if answer.len() > 8192 {
                break;
            }
        }
        let line = String::from_utf8_lossy(&answer)
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned();
        match line.split_whitespace().nth(1) {
            Some(code) if code.starts_with('2') => Ok(()),
            _ => Err(PostError::Status(line)),
        }
    };
    tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .map_err(|_| PostError::Timeout)?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(class: &str, body: &str) -> Stored {
        Stored {
            device: "board-1".into(),
            epoch: "e1".into(),
            stored_ms: 5,
            records: vec![guardian_report::wire::WireRecord {
                seq: 7,
                time_ms: 3,
                class: class.into(),
                body: serde_json::value::RawValue::from_string(body.into()).unwrap(),
            }],
            summary: Default::default(),
            newly_missing: 0,
        }
    }

    #[test]
    fn records_become_the_alerts_they_stand_for() {
        let a = from_stored(&stored(
            "alert",
            r#"{"event":"file_write_open","verdict":"deny","mode":"enforce","file":"/m.onnx","exe":"/tmp/x"}"#,
        ));
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].kind, "tamper_attempt");
        assert!(a[0].what.contains("/m.onnx") && a[0].what.contains("/tmp/x"));
        assert_eq!(a[0].msg_id(), "board-1:e1:7:tamper_attempt");
        let g = from_stored(&stored(
            "alert",
            r#"{"kind":"guard","action":"unload","mode":"enforce","detail":"token"}"#,
        ));
        assert_eq!(g[0].kind, "guard");
        let d = from_stored(&stored("drop", r#"{"by_class":{"event":4,"status":2}}"#));
        assert_eq!(d[0].kind, "events_dropped");
        assert!(d[0].what.starts_with("6 "));
        // Records the spool could no longer read back: their own kind,
        // the device's reason in the words.
        let l = from_stored(&stored(
            "drop",
            &format!(
                r#"{{"by_class":{{"event":3}},"reason":"{}"}}"#,
                guardian_report::spool::LOST_ON_DISK
            ),
        ));
        assert_eq!(l[0].kind, "records_lost");
        assert!(
            l[0].what.starts_with("3 records lost") && l[0].what.contains("on disk"),
            "{}",
            l[0].what
        );
        assert!(from_stored(&stored("event", "{}")).is_empty());
        assert!(from_stored(&stored("status", "{}")).is_empty());
    }

    #[tokio::test]
    async fn a_webhook_must_answer_2xx() {
        assert!(matches!(
            post("https://x/", b"{}").await,
            Err(PostError::Url(_))
        ));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            for answer in [
                "HTTP/1.1 500 Oops\r\n\r\n",
                "HTTP/1.1 204 No Content\r\n\r\n",
            ] {
                let (mut s, _) = l.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                s.write_all(answer.as_bytes()).await.unwrap();
            }
        });
        let url = format!("http://{addr}/hook");
        assert!(matches!(post(&url, b"{}").await, Err(PostError::Status(_))));
        post(&url, b"{}").await.unwrap();
    }
}
