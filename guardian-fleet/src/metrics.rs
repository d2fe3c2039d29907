//! `/metrics`: this instance's counters in Prometheus' text format, on a
//! small HTTP listener of its own (`guardian-fleet serve --listen ADDR`).
//!
//! Counters are per instance (Prometheus sums them over instances); the
//! device gauges come from the last silence sweep, and the consumer lag
//! is asked of JetStream at each scrape. Read only: it may not change
//! anything it shows.

use std::{fmt::Write as _, net::SocketAddr, sync::Arc, sync::atomic::Ordering};

use async_nats::jetstream;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::service::{CONSUMER, Counters, INGEST_STREAM};

/// A counter family: name, help, samples (labels, value).
type Family = (&'static str, &'static str, Vec<(String, u64)>);

/// The text of one scrape.
pub async fn render(counters: &Counters, js: Option<&jetstream::Context>) -> String {
    let alerts = &counters.alerts;
    let mut out = String::new();
    let c = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let alerts_by_kind: Vec<(String, u64)> = alerts
        .published
        .lock()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), *v)).collect())
        .unwrap_or_default();
    let families: [Family; 10] = [
        (
            "guardian_fleet_batches_total",
            "Ingest messages taken by this instance.",
            vec![(String::new(), c(&counters.batches_in))],
        ),
        (
            "guardian_fleet_records_stored_total",
            "Records stored (each once).",
            vec![(String::new(), c(&counters.records_stored))],
        ),
        (
            "guardian_fleet_duplicates_total",
            "Records received again and not stored again.",
            vec![(String::new(), c(&counters.duplicates))],
        ),
        (
            "guardian_fleet_store_conflicts_total",
            "Store publishes retried because another instance stored first.",
            vec![(String::new(), c(&counters.store_conflicts))],
        ),
        (
            "guardian_fleet_store_errors_total",
            "Store attempts that failed (the batch is retried).",
            vec![(String::new(), c(&counters.store_errors))],
        ),
        (
            "guardian_fleet_rejected_total",
            "Batches refused, by reason.",
            [
                ("malformed", &counters.rejected_malformed),
                ("wrong_device", &counters.rejected_wrong_device),
                ("oversize", &counters.rejected_oversize),
            ]
            .into_iter()
            .map(|(r, v)| (format!("{{reason=\"{r}\"}}"), c(v)))
            .collect(),
        ),
        (
            "guardian_fleet_alerts_total",
            "Alerts published by this instance, by kind.",
            alerts_by_kind
                .into_iter()
                .map(|(k, v)| (format!("{{kind=\"{k}\"}}"), v))
                .collect(),
        ),
        (
            "guardian_fleet_alert_duplicates_total",
            "Alerts the alert stream dropped as already published.",
            vec![(String::new(), c(&alerts.duplicates))],
        ),
        (
            "guardian_fleet_webhook_delivered_total",
            "Alerts the webhook receiver accepted.",
            vec![(String::new(), c(&alerts.webhook_delivered))],
        ),
        (
            "guardian_fleet_webhook_failures_total",
            "Webhook calls that failed (retried).",
            vec![(String::new(), c(&alerts.webhook_failures))],
        ),
    ];
    for (name, help, samples) in families.iter() {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    }
    let _ = writeln!(
        out,
        "# HELP guardian_fleet_alert_publish_errors_total Alert publishes that failed (retried).\n# TYPE guardian_fleet_alert_publish_errors_total counter\nguardian_fleet_alert_publish_errors_total {}",
        c(&alerts.publish_errors)
    );
    let _ = writeln!(
        out,
        "# HELP guardian_fleet_devices Devices known, by state, at the last sweep.\n# TYPE guardian_fleet_devices gauge"
    );
    let (all, silent) = (c(&alerts.devices), c(&alerts.devices_silent));
    let _ = writeln!(
        out,
        "guardian_fleet_devices{{state=\"reporting\"}} {}",
        all.saturating_sub(silent)
    );
    let _ = writeln!(out, "guardian_fleet_devices{{state=\"silent\"}} {silent}");
    if let Some(js) = js {
        let lag = async {
            let mut consumer: jetstream::consumer::PullConsumer = js
                .get_stream(INGEST_STREAM)
                .await
                .ok()?
                .get_consumer(CONSUMER)
                .await
                .ok()?;
            Some(consumer.info().await.ok()?.num_pending)
        };
        if let Ok(Some(lag)) = tokio::time::timeout(std::time::Duration::from_secs(2), lag).await {
            let _ = writeln!(
                out,
                "# HELP guardian_fleet_consumer_lag Ingest messages not yet taken by any instance.\n# TYPE guardian_fleet_consumer_lag gauge\nguardian_fleet_consumer_lag {lag}"
            );
        }
    }
    out
}

/// Serve `/metrics` on `addr` until `stop` says so.
pub async fn serve(
    addr: SocketAddr,
    counters: Arc<Counters>,
    js: jetstream::Context,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    log::info!("metrics on http://{}/metrics", listener.local_addr()?);
    loop {
        let (mut s, _) = tokio::select! {
            _ = stop.changed() => return Ok(()),
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    log::warn!("metrics: accept: {e}");
                    continue;
                }
            },
        };
        let (counters, js) = (counters.clone(), js.clone());
        tokio::spawn(async move {
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            let read = async {
                while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 8192 {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
            };
            if tokio::time::timeout(std::time::Duration::from_secs(5), read)
                .await
                .is_err()
            {
                return;
            }
            let line = String::from_utf8_lossy(&req)
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned();
            let (status, ctype, body) = if line.starts_with("GET /metrics ") {
                (
                    "200 OK",
                    "text/plain; version=0.0.4",
                    render(&counters, Some(&js)).await,
                )
            } else {
                ("404 Not Found", "text/plain", "not found\n".to_owned())
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(body.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_counter_is_in_the_text_format() {
        let c = Counters::default();
        c.records_stored.store(42, Ordering::Relaxed);
        c.rejected_wrong_device.store(2, Ordering::Relaxed);
        let a = &c.alerts;
        a.published
            .lock()
            .unwrap()
            .insert("tamper_attempt".into(), 3);
        a.devices.store(5, Ordering::Relaxed);
        a.devices_silent.store(1, Ordering::Relaxed);
        let t = render(&c, None).await;
        assert!(
            t.contains("\nguardian_fleet_records_stored_total 42\n"),
            "{t}"
        );
        assert!(t.contains("guardian_fleet_rejected_total{reason=\"wrong_device\"} 2"));
        assert!(t.contains("guardian_fleet_alerts_total{kind=\"tamper_attempt\"} 3"));
        assert!(t.contains("guardian_fleet_devices{state=\"reporting\"} 4"));
        assert!(t.contains("guardian_fleet_devices{state=\"silent\"} 1"));
        // Every sample line belongs to a declared metric.
        for l in t.lines().filter(|l| !l.starts_with('#')) {
            let name = l.split(['{', ' ']).next().unwrap();
            assert!(t.contains(&format!("# TYPE {name} ")), "{name} undeclared");
        }
    }
}
