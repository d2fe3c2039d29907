//! `/metrics`: this instance's counters in Prometheus' text format,
//! served by the service's HTTP listener ([`crate::web`], `guardian-fleet
//! serve --listen ADDR`) beside the operator's page.
//!
//! Counters are per instance (Prometheus sums them over instances); the
//! reporting and silent gauges come from the last silence sweep; the
//! consumer lag and the devices by trust state (the attestation records)
//! are asked of JetStream at each scrape, and left out of a scrape they
//! do not answer in time. Read only: it may not change anything it shows.
//!
//! To add a metric, add a [`Family`] to the list [`text`] renders.

use std::{
    collections::BTreeMap, fmt::Write as _, sync::atomic::AtomicU64, sync::atomic::Ordering,
    time::Duration,
};

use async_nats::jetstream;

use crate::{
    attest::TrustState,
    service::{CONSUMER, Counters, INGEST_STREAM},
};

/// How long a scrape waits for each thing it asks JetStream.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// A metric's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (per instance).
    Counter,
    /// A value now.
    Gauge,
}

/// One metric family: its name, help, type, and samples (labels as
/// `{k="v"}` or empty, value).
#[derive(Debug, Clone)]
pub struct Family {
    /// The metric's name.
    pub name: &'static str,
    /// Its help line.
    pub help: &'static str,
    /// Its type.
    pub kind: Kind,
    /// Its samples.
    pub samples: Vec<(String, u64)>,
}

impl Family {
    /// A counter with one unlabelled sample.
    fn one(name: &'static str, help: &'static str, a: &AtomicU64) -> Family {
        Family {
            name,
            help,
            kind: Kind::Counter,
            samples: vec![(String::new(), a.load(Ordering::Relaxed))],
        }
    }
}

/// `{name="value"}`, the value escaped as the text format wants.
pub fn label(name: &str, value: &str) -> String {
    let v = value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n");
    format!("{{{name}=\"{v}\"}}")
}

/// What a scrape asked JetStream (each `None` when it did not answer in
/// time).
#[derive(Debug, Clone, Default)]
pub struct Live {
    /// Ingest messages not yet taken by any instance.
    pub lag: Option<u64>,
    /// Attestation records by trust state.
    pub trust: Option<BTreeMap<&'static str, u64>>,
    /// Per group: the published set's version, and the attested devices
    /// by where they stand against it (`current`, `drift`, ...).
    pub policy: Option<PolicyLive>,
}

/// The policy sets at a scrape.
#[derive(Debug, Clone, Default)]
pub struct PolicyLive {
    /// Group → published version.
    pub published: BTreeMap<String, u64>,
    /// (group, state) → devices; devices whose set is unknown under group "".
    pub devices: BTreeMap<(String, &'static str), u64>,
}

impl PolicyLive {
    /// From the published sets and the attestation records.
    pub fn of(
        sets: &BTreeMap<String, crate::policy::Published>,
        records: &[crate::attest::Attestation],
    ) -> Self {
        let mut out = Self {
            published: sets.iter().map(|(g, p)| (g.clone(), p.version)).collect(),
            devices: BTreeMap::new(),
        };
        for r in records {
            let d = crate::policy::device_drift(sets, r);
            let group = match &d {
                crate::policy::Drift::Current { group, .. }
                | crate::policy::Drift::Drifted { group, .. }
                | crate::policy::Drift::NoneForGroup { group, .. } => group.clone(),
                crate::policy::Drift::Unknown => String::new(),
            };
            *out.devices.entry((group, d.word())).or_default() += 1;
        }
        out
    }
}

/// The text of one scrape: the counters, and what JetStream says now.
pub async fn render(counters: &Counters, js: Option<&jetstream::Context>) -> String {
    let mut live = Live::default();
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
        let records = async {
            let a = crate::query::attestations(js).await.ok()?;
            let sets = crate::policy::published(js, &[]).await.ok()?;
            Some((a, sets))
        };
        let (lag, records) = tokio::join!(
            tokio::time::timeout(ASK_TIMEOUT, lag),
            tokio::time::timeout(ASK_TIMEOUT, records)
        );
        live.lag = lag.ok().flatten();
        if let Some((a, sets)) = records.ok().flatten() {
            let now = crate::service::now_ms();
            live.trust = Some(trust_counts(a.iter().map(|a| a.trust_now(now))));
            live.policy = Some(PolicyLive::of(&sets, &a));
        }
    }
    text(counters, &live)
}

/// Devices by trust state, every state present (zero if none).
pub fn trust_counts(states: impl Iterator<Item = TrustState>) -> BTreeMap<&'static str, u64> {
    let mut out: BTreeMap<&'static str, u64> = [
        TrustState::Trusted,
        TrustState::Untrusted,
        TrustState::Unreachable,
        TrustState::Stale,
        TrustState::Unknown,
    ]
    .into_iter()
    .map(|s| (s.as_str(), 0))
    .collect();
    for s in states {
        *out.entry(s.as_str()).or_default() += 1;
    }
    out
}

/// The families of one scrape.
pub fn families(counters: &Counters, live: &Live) -> Vec<Family> {
    let alerts = &counters.alerts;
    let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let alerts_by_kind: Vec<(String, u64)> = alerts
        .published
        .lock()
        .map(|m| m.iter().map(|(k, v)| (label("kind", k), *v)).collect())
        .unwrap_or_default();
    let (all, silent) = (c(&alerts.devices), c(&alerts.devices_silent));
    let mut devices = vec![
        (label("state", "reporting"), all.saturating_sub(silent)),
        (label("state", "silent"), silent),
    ];
    if let Some(trust) = &live.trust {
        devices.extend(trust.iter().map(|(s, n)| (label("state", s), *n)));
    }
    let mut out = vec![
        Family::one(
            "guardian_fleet_batches_total",
            "Ingest messages taken by this instance.",
            &counters.batches_in,
        ),
        Family::one(
            "guardian_fleet_records_stored_total",
            "Records stored (each once).",
            &counters.records_stored,
        ),
        Family::one(
            "guardian_fleet_duplicates_total",
            "Records received again and not stored again.",
            &counters.duplicates,
        ),
        Family::one(
            "guardian_fleet_store_conflicts_total",
            "Store publishes retried because another instance stored first.",
            &counters.store_conflicts,
        ),
        Family::one(
            "guardian_fleet_store_errors_total",
            "Store attempts that failed (the batch is retried).",
            &counters.store_errors,
        ),
        Family {
            name: "guardian_fleet_rejected_total",
            help: "Batches refused, by reason.",
            kind: Kind::Counter,
            samples: [
                ("malformed", &counters.rejected_malformed),
                ("wrong_device", &counters.rejected_wrong_device),
                ("oversize", &counters.rejected_oversize),
            ]
            .into_iter()
            .map(|(r, v)| (label("reason", r), c(v)))
            .collect(),
        },
        Family {
            name: "guardian_fleet_alerts_total",
            help: "Alerts published by this instance, by kind.",
            kind: Kind::Counter,
            samples: alerts_by_kind,
        },
        Family::one(
            "guardian_fleet_alert_duplicates_total",
            "Alerts the alert stream dropped as already published.",
            &alerts.duplicates,
        ),
        Family::one(
            "guardian_fleet_webhook_delivered_total",
            "Alerts the webhook receiver accepted.",
            &alerts.webhook_delivered,
        ),
        Family::one(
            "guardian_fleet_webhook_failures_total",
            "Webhook calls that failed (retried).",
            &alerts.webhook_failures,
        ),
        Family::one(
            "guardian_fleet_alert_publish_errors_total",
            "Alert publishes that failed (retried).",
            &alerts.publish_errors,
        ),
        Family::one(
            "guardian_fleet_attest_rounds_total",
            "Attestation rounds this instance started (claims won).",
            &counters.attest.rounds,
        ),
        Family::one(
            "guardian_fleet_attest_claims_lost_total",
            "Rounds another instance claimed first.",
            &counters.attest.claims_lost,
        ),
        Family::one(
            "guardian_fleet_verifications_trusted_total",
            "Verdicts reached by this instance with every check passed.",
            &counters.attest.trusted,
        ),
        Family {
            name: "guardian_fleet_verification_failures_total",
            help: "Failed checks in the verdicts this instance reached, by check (a verdict may fail several).",
            kind: Kind::Counter,
            samples: by_label("check", &counters.attest.failed_by_check),
        },
        Family {
            name: "guardian_fleet_unreachable_total",
            help: "Rounds without a usable answer, by why (timeout, no_responders, refused, malformed, link).",
            kind: Kind::Counter,
            samples: by_label("why", &counters.attest.unreachable_by_why),
        },
        Family::one(
            "guardian_fleet_attest_results_dropped_total",
            "Round results not written because the claim had passed to another instance.",
            &counters.attest.results_dropped,
        ),
        Family::one(
            "guardian_fleet_enrolled_total",
            "Devices this instance enrolled over the link (EK chain checked, credential activated).",
            &counters.enrol.enrolled,
        ),
        Family::one(
            "guardian_fleet_enrolment_refused_total",
            "Enrolment requests this instance refused (a failed check).",
            &counters.enrol.refused,
        ),
        Family::one(
            "guardian_fleet_verify_microseconds_total",
            "Time spent in the verifier (divide by verdicts for the cost of one).",
            &counters.attest.verify_micros,
        ),
        Family {
            name: "guardian_fleet_devices",
            help: "Devices by state: reporting and silent at the last sweep; trusted, untrusted, unreachable and unknown from the attestation records.",
            kind: Kind::Gauge,
            samples: devices,
        },
    ];
    if let Some(p) = &live.policy {
        out.push(Family {
            name: "guardian_fleet_policy_set_version",
            help: "The policy set version published for each device group.",
            kind: Kind::Gauge,
            samples: p
                .published
                .iter()
                .map(|(g, v)| (label("group", g), *v))
                .collect(),
        });
        out.push(Family {
            name: "guardian_fleet_policy_devices",
            help: "Attested devices by group and by where their quoted policy set stands against the group's published one (current, drift, unpublished; group \"\" and unknown: no set known).",
            kind: Kind::Gauge,
            samples: p
                .devices
                .iter()
                .map(|((g, st), n)| (format!("{{group=\"{}\",state=\"{st}\"}}", g.replace('\\', "\\\\").replace('"', "\\\"")), *n))
                .collect(),
        });
    }
    if let Some(lag) = live.lag {
        out.push(Family {
            name: "guardian_fleet_consumer_lag",
            help: "Ingest messages not yet taken by any instance.",
            kind: Kind::Gauge,
            samples: vec![(String::new(), lag)],
        });
    }
    out
}

/// A counter family's samples from a map of label value → count.
fn by_label(name: &str, m: &std::sync::Mutex<BTreeMap<String, u64>>) -> Vec<(String, u64)> {
    m.lock()
        .map(|m| m.iter().map(|(k, v)| (label(name, k), *v)).collect())
        .unwrap_or_default()
}

/// The text format of [`families`].
pub fn text(counters: &Counters, live: &Live) -> String {
    let mut out = String::new();
    for f in families(counters, live) {
        let kind = match f.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        let _ = writeln!(
            out,
            "# HELP {} {}\n# TYPE {} {kind}",
            f.name, f.help, f.name
        );
        for (labels, v) in &f.samples {
            let _ = writeln!(out, "{}{labels} {v}", f.name);
        }
    }
    out
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
        // No trust states when the attestation records were not read.
        assert!(!t.contains("state=\"trusted\""), "{t}");
        let live = Live {
            lag: Some(7),
            trust: Some(trust_counts(
                [
                    TrustState::Trusted,
                    TrustState::Untrusted,
                    TrustState::Trusted,
                ]
                .into_iter(),
            )),
            policy: Some(PolicyLive {
                published: [("cameras".to_owned(), 3)].into(),
                devices: [
                    (("cameras".to_owned(), "current"), 5),
                    (("cameras".to_owned(), "drift"), 1),
                    ((String::new(), "unknown"), 2),
                ]
                .into(),
            }),
        };
        let t = text(&c, &live);
        assert!(
            t.contains("\nguardian_fleet_policy_set_version{group=\"cameras\"} 3\n"),
            "{t}"
        );
        assert!(
            t.contains("\nguardian_fleet_policy_devices{group=\"cameras\",state=\"drift\"} 1\n"),
            "{t}"
        );
        assert!(
            t.contains("\nguardian_fleet_policy_devices{group=\"\",state=\"unknown\"} 2\n"),
            "{t}"
        );
        assert!(
            t.contains("\nguardian_fleet_devices{state=\"trusted\"} 2\n"),
            "{t}"
        );
        assert!(
            t.contains("\nguardian_fleet_devices{state=\"untrusted\"} 1\n"),
            "{t}"
        );
        assert!(
            t.contains("\nguardian_fleet_devices{state=\"unreachable\"} 0\n"),
            "{t}"
        );
        assert!(
            t.contains("\nguardian_fleet_devices{state=\"unknown\"} 0\n"),
            "{t}"
        );
        assert!(t.contains("# TYPE guardian_fleet_devices gauge\n"), "{t}");
        assert!(t.contains("\nguardian_fleet_consumer_lag 7\n"), "{t}");
        assert_eq!(t.matches("# TYPE guardian_fleet_devices ").count(), 1);
        // Every sample line belongs to a declared metric.
        for l in t.lines().filter(|l| !l.starts_with('#')) {
            let name = l.split(['{', ' ']).next().unwrap();
            assert!(t.contains(&format!("# TYPE {name} ")), "{name} undeclared");
        }
    }
}
