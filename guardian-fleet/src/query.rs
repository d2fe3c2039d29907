//! Reading the fleet back: every device's state from key-value, and one
//! device's stored records from the store stream.
//!
//! Owns nothing; reads only. May not write to any stream.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::DeliverPolicy};
use futures_util::StreamExt;

use crate::{
    service::{DEVICES_BUCKET, DeviceState, STORE_STREAM, ServiceError},
    store::{Stored, store_subject},
};

fn err(what: impl Into<String>) -> impl FnOnce(async_nats::Error) -> ServiceError {
    let what = what.into();
    move |source| ServiceError::JetStream { what, source }
}

/// Every device's state, sorted by id.
pub async fn devices(js: &jetstream::Context) -> Result<Vec<DeviceState>, ServiceError> {
    let kv = js
        .get_key_value(DEVICES_BUCKET)
        .await
        .map_err(|e| err(format!("open bucket {DEVICES_BUCKET}"))(e.into()))?;
    let mut keys = kv.keys().await.map_err(|e| err("list devices")(e.into()))?;
    let mut out = Vec::new();
    while let Some(k) = keys.next().await {
        let k = k.map_err(|e| err("list devices")(e.into()))?;
        if let Some(v) = kv
            .get(&k)
            .await
            .map_err(|e| err(format!("read device {k}"))(e.into()))?
        {
            let v: &[u8] = &v;
            match serde_json::from_slice::<DeviceState>(v) {
                Ok(s) => out.push(s),
                Err(e) => log::warn!("device {k}: unreadable state: {e}"),
            }
        }
    }
    out.sort_by(|a, b| a.device.cmp(&b.device));
    Ok(out)
}

/// Every device's attestation record, sorted by id.
pub async fn attestations(
    js: &jetstream::Context,
) -> Result<Vec<crate::attest::Attestation>, ServiceError> {
    use crate::attest::{ATTEST_BUCKET, Attestation};
    let kv = js
        .get_key_value(ATTEST_BUCKET)
        .await
        .map_err(|e| err(format!("open bucket {ATTEST_BUCKET}"))(e.into()))?;
    let mut keys = kv
        .keys()
        .await
        .map_err(|e| err("list attestations")(e.into()))?;
    let mut out = Vec::new();
    while let Some(k) = keys.next().await {
        let k = k.map_err(|e| err("list attestations")(e.into()))?;
        if let Some(v) = kv
            .get(&k)
            .await
            .map_err(|e| err(format!("read attestation {k}"))(e.into()))?
        {
            match serde_json::from_slice::<Attestation>(&v) {
                Ok(a) => out.push(a),
                Err(e) => log::warn!("attestation {k}: unreadable: {e}"),
            }
        }
    }
    out.sort_by(|a, b| a.device.cmp(&b.device));
    Ok(out)
}

/// One device's stored messages since `since` (fleet clock), oldest first.
pub async fn events(
    js: &jetstream::Context,
    device: &str,
    since: std::time::SystemTime,
) -> Result<Vec<Stored>, ServiceError> {
    read_since(js, STORE_STREAM, &store_subject(device), since).await
}

/// Alerts since `since` (fleet clock), oldest first: one device's, or
/// every device's.
pub async fn alerts(
    js: &jetstream::Context,
    device: Option<&str>,
    since: std::time::SystemTime,
) -> Result<Vec<crate::alerts::Alert>, ServiceError> {
    let subject = format!("{}.{}", crate::alerts::ALERT_PREFIX, device.unwrap_or("*"));
    read_since(js, crate::alerts::ALERT_STREAM, &subject, since).await
}

/// The messages of `stream` on `subject` since `since`, decoded; one that
/// does not decode is said and skipped.
async fn read_since<T: serde::de::DeserializeOwned>(
    js: &jetstream::Context,
    stream: &str,
    subject: &str,
    since: std::time::SystemTime,
) -> Result<Vec<T>, ServiceError> {
    let stream_name = stream;
    let stream = js
        .get_stream(stream_name)
        .await
        .map_err(|e| err(format!("open stream {stream_name}"))(e.into()))?;
    let start = time::OffsetDateTime::from(since);
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: subject.to_owned(),
            deliver_policy: DeliverPolicy::ByStartTime { start_time: start },
            ..Default::default()
        })
        .await
        .map_err(|e| err(format!("read {stream_name}"))(e.into()))?;
    let mut msgs = consumer
        .messages()
        .await
        .map_err(|e| err(format!("read {stream_name}"))(e.into()))?;
    let mut out = Vec::new();
    loop {
        let next = tokio::time::timeout(Duration::from_millis(500), msgs.next()).await;
        let Ok(Some(m)) = next else { break };
        let m = m.map_err(|e| err(format!("read {stream_name}"))(e.into()))?;
        let pending = m.info().map(|i| i.pending).unwrap_or(0);
        match serde_json::from_slice::<T>(&m.payload) {
            Ok(s) => out.push(s),
            Err(e) => log::warn!("{stream_name} message on {}: unreadable: {e}", m.subject),
        }
        if pending == 0 {
            break;
        }
    }
    Ok(out)
}

/// One device, for `guardian-fleet device D`: its state, then its recent
/// alerts and records.
pub fn device_report(
    state: Option<&DeviceState>,
    alerts: &[crate::alerts::Alert],
    stored: &[Stored],
    now_ms: u64,
) -> String {
    let mut out = String::new();
    match state {
        None => out.push_str("no state for this device in the fleet (never reported?)\n"),
        Some(d) => {
            let s = &d.summary;
            out.push_str(&format!(
                "device      {}\nlast seen   {} s ago\nbatches     {}\nduplicates  {}\n",
                d.device,
                now_ms.saturating_sub(s.last_seen_ms) / 1000,
                s.batches,
                s.duplicates
            ));
            for (epoch, e) in &s.epochs {
                let current = s.current_epoch.as_deref() == Some(epoch.as_str());
                out.push_str(&format!(
                    "epoch       {epoch}{}: {} records ({}), {} dropped, {} unexplained, {} missing for good\n",
                    if current { " (current)" } else { "" },
                    e.count(),
                    e.by_class
                        .iter()
                        .map(|(c, n)| format!("{c} {n}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    e.dropped(),
                    e.unexplained(),
                    e.missing()
                ));
            }
        }
    }
    out.push_str(&format!("\nalerts ({}):\n", alerts.len()));
    for a in alerts {
        out.push_str(&format!(
            "  {:>14}  {:<15} {}\n",
            a.since_ms, a.kind, a.what
        ));
    }
    let n: usize = stored.iter().map(|s| s.records.len()).sum();
    out.push_str(&format!("\nrecords ({n}):\n"));
    for s in stored {
        for r in &s.records {
            out.push_str(&format!(
                "  {:>8}  {:<11}  {}  {}\n",
                r.seq,
                r.class,
                r.time_ms,
                r.body.get()
            ));
        }
    }
    out
}

/// The status table: one line per device.
pub fn table(
    devices: &[DeviceState],
    policy: &std::collections::BTreeMap<String, crate::policy::Drift>,
    now_ms: u64,
) -> String {
    let mut out = format!(
        "{:<24} {:>10} {:>9} {:>7} {:>8} {:>10} {:>12}  {:<17}  {}\n",
        "DEVICE",
        "LAST SEEN",
        "RECORDS",
        "ALERTS",
        "DROPPED",
        "DUPLICATES",
        "UNEXPLAINED",
        "EPOCH",
        "POLICY SET"
    );
    for d in devices {
        let s = &d.summary;
        let epoch = s.current_epoch.clone().unwrap_or_default();
        let e = s.epochs.get(&epoch).cloned().unwrap_or_default();
        let ago = now_ms.saturating_sub(s.last_seen_ms) / 1000;
        out.push_str(&format!(
            "{:<24} {:>9}s {:>9} {:>7} {:>8} {:>10} {:>12}  {:<17}  {}\n",
            d.device,
            ago,
            e.count(),
            e.by_class.get("alert").copied().unwrap_or(0),
            e.dropped(),
            s.duplicates,
            e.unexplained(),
            epoch,
            policy
                .get(&d.device)
                .map(crate::policy::Drift::describe)
                .unwrap_or_else(|| "-".to_owned())
        ));
    }
    out
}

/// What the store holds, read end to end: per device the sequence numbers
/// stored (and how many were stored more than once, which must be none),
/// and each record's latency from the device's append to the fleet's store.
#[derive(Debug, Default)]
pub struct Audit {
    /// Per device: sequence numbers stored (epochs together).
    pub stored: std::collections::BTreeMap<String, std::collections::BTreeSet<(String, u64)>>,
    /// Records stored more than once.
    pub doubled: u64,
    /// Milliseconds from append (device clock) to store (fleet clock), per
    /// record; meaningful when both run on one host.
    pub latency_ms: Vec<u64>,
}

/// Read the whole store.
pub async fn audit(js: &jetstream::Context) -> Result<Audit, ServiceError> {
    let stream = js
        .get_stream(STORE_STREAM)
        .await
        .map_err(|e| err(format!("open stream {STORE_STREAM}"))(e.into()))?;
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig::default())
        .await
        .map_err(|e| err("read the store")(e.into()))?;
    let mut msgs = consumer
        .messages()
        .await
        .map_err(|e| err("read the store")(e.into()))?;
    let mut out = Audit::default();
    loop {
        let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(3), msgs.next()).await else {
            break;
        };
        let m = m.map_err(|e| err("read the store")(e.into()))?;
        let pending = m.info().map(|i| i.pending).unwrap_or(0);
        if let Ok(s) = serde_json::from_slice::<Stored>(&m.payload) {
            let dev = out.stored.entry(s.device.clone()).or_default();
            for r in &s.records {
                if !dev.insert((s.epoch.clone(), r.seq)) {
                    out.doubled += 1;
                }
                out.latency_ms.push(s.stored_ms.saturating_sub(r.time_ms));
            }
        }
        if pending == 0 {
            break;
        }
    }
    Ok(out)
}
