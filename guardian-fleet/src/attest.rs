//! Attestation over the link: on a schedule, the fleet asks each enrolled
//! device for a quote over a fresh nonce (`guardian.ask.<device>`), the
//! device's attestor quotes with its TPM and answers with its evidence
//! bundle, and the fleet judges it with the verifier library `guardian
//! verify` runs. Each device's attestation record (its trust state, the
//! last verdict with its reasons, the verifier's state across quotes)
//! lives in key-value, so any instance can attest any device and another
//! takes over when one dies.
//!
//! Owns the `guardian_attest` bucket and the rounds. How instances share
//! the work without a coordinator: a round starts by *claiming* the
//! device's record (a compare-and-set on its revision, with a deadline);
//! the instance that wins asks, judges, and writes the result with a
//! compare-and-set on the revision it claimed. A claim whose deadline
//! passed (its instance died) may be taken by another. A device that does
//! not answer in time is `unreachable`, never `trusted`; a verdict is
//! written only by the instance holding the claim, so two instances never
//! both move a device's verifier state.
//!
//! May not: trust anything the bundle says about itself before the quote
//! verified (that is the verifier's rule), or write to the ingest or
//! store streams.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use async_nats::jetstream::{self, kv};
use futures_util::StreamExt as _;
use guardian_attest::{
    attest::{DeviceState, Evidence, Trust, Verdict, bundle::fresh_nonce, parse_evidence},
    enrol::Enrolled,
    signing::TrustedKey,
};
use guardian_report::wire::{ANSWER_PREFIX, ASK_PREFIX, Question, Refused};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::alerts::Alert;

/// The key-value bucket of attestation records, one per device.
pub const ATTEST_BUCKET: &str = "guardian_attest";

/// Where a device stands, as the fleet last judged it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrustState {
    /// Enrolled, not yet attested.
    Unknown,
    /// The last quote verified and every check passed.
    Trusted,
    /// The last answer failed a check (see the verdict's failures).
    Untrusted,
    /// The last challenge got no answer in time (or a refusal).
    Unreachable,
    /// Shown, never stored: the record says trusted, but its next round
    /// is overdue past its deadline (the instance that claimed it died and
    /// no other has judged it yet, or no instance runs rounds). A verdict
    /// is only as good as it is fresh.
    Stale,
}

impl TrustState {
    /// The word status, the page and alerts use.
    pub fn as_str(self) -> &'static str {
        match self {
            TrustState::Unknown => "unknown",
            TrustState::Trusted => "trusted",
            TrustState::Untrusted => "untrusted",
            TrustState::Unreachable => "unreachable",
            TrustState::Stale => "stale",
        }
    }
}

/// One failed check of a verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedCheck {
    /// The verifier's check (`signature`, `nonce`, `model`, `reboot`, …).
    pub check: String,
    /// Why, in words.
    pub reason: String,
    /// The finding it opened, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finding: Option<String>,
}

/// A finding still open in the verifier's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenFinding {
    /// Its id.
    pub id: String,
    /// The check that found it.
    pub check: String,
    /// Why.
    pub reason: String,
    /// Since when (RFC 3339, the fleet's clock).
    pub since: String,
}

/// The last verdict, as the page and `guardian-fleet device` show it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastVerdict {
    /// When it was reached (ms since the Unix epoch, fleet clock).
    pub at_ms: u64,
    /// Every check passed.
    pub trusted: bool,
    /// The failed checks.
    pub failures: Vec<FailedCheck>,
    /// The checks that passed.
    pub passed: Vec<String>,
    /// What weakens it without failing it.
    pub warnings: Vec<String>,
    /// Tamper attempts this boot (denied ones do not fail the verdict).
    pub tamper_attempts: Vec<String>,
    /// The manifests in force this boot.
    pub manifests: Vec<String>,
    /// The device's boot id, as quoted.
    #[serde(default)]
    pub boot_id: String,
    /// The pushed policy set in force, as the quoted log says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_set: Option<guardian_attest::attest::PolicySetInForce>,
}

/// Who is attesting a device right now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// The instance.
    pub instance: String,
    /// Another instance may take the device after this (ms since the Unix
    /// epoch).
    pub until_ms: u64,
}

/// A device's attestation record (key-value, key = device id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attestation {
    /// The device.
    pub device: String,
    /// Where it stands.
    pub trust: TrustState,
    /// Since when it stands there (ms since the Unix epoch).
    pub since_ms: u64,
    /// The last verdict reached (an unreachable round keeps the one
    /// before, and says so by `trust`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<LastVerdict>,
    /// Why the last round was unreachable, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreachable: Option<String>,
    /// Findings open in the verifier's state (kept until an operator
    /// acknowledges them; a reboot does not close them).
    #[serde(default)]
    pub open_findings: Vec<OpenFinding>,
    /// The verifier's state across quotes (clock, counters, manifest
    /// serial, findings), as the verifier library keeps it.
    #[serde(default)]
    pub verifier: serde_json::Value,
    /// When the next round is due (ms since the Unix epoch).
    pub next_due_ms: u64,
    /// The round in progress, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<Claim>,
    /// Rounds: verified, failed, unreachable.
    #[serde(default)]
    pub rounds: Rounds,
    /// After this a trusted record shows as [`TrustState::Stale`] (ms since
    /// the Unix epoch; the next round's due time plus the answer timeout
    /// and [`STALE_ROOM_MS`]). 0: not set.
    #[serde(default)]
    pub stale_at_ms: u64,
}

impl Attestation {
    /// Where the device stands at `now_ms`, for people and metrics: a
    /// trusted record whose next verdict is overdue shows as stale.
    pub fn trust_now(&self, now_ms: u64) -> TrustState {
        if self.trust == TrustState::Trusted && self.stale_at_ms != 0 && now_ms > self.stale_at_ms {
            TrustState::Stale
        } else {
            self.trust
        }
    }
}

/// How a device's rounds went.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rounds {
    /// Verdicts reached.
    pub verified: u64,
    /// Of them, not trusted.
    pub failed: u64,
    /// Rounds without an answer.
    pub unreachable: u64,
}

/// Room beyond a round's due time and answer timeout before a trusted
/// verdict shows stale (the rounds' tick, the verifier, the write).
pub const STALE_ROOM_MS: u64 = 2_000;

/// The key-value bucket of enrolled devices: key = device id, value = the
/// enrolment record (`guardian_attest::enrol::Enrolled`: the AK the fleet
/// trusts for the device, and how it came to trust it).
pub const ENROLLED_BUCKET: &str = "guardian_enrolled";

/// How rounds run.
#[derive(Debug, Clone)]
pub struct AttestConfig {
    /// A round per device this often.
    pub every: Duration,
    /// A device that has not answered in this time is unreachable.
    pub answer_timeout: Duration,
    /// Rounds in flight at once on this instance.
    pub concurrency: usize,
    /// The PCRs every quote must cover, exactly.
    pub pcrs: Vec<u32>,
    /// Keys manifests must be signed by.
    pub manifest_keys: Vec<TrustedKey>,
    /// A golden manifest to pin (its bytes), if any.
    pub golden: Option<Vec<u8>>,
    /// Fail a device on which no guard ran this boot.
    pub require_guard: bool,
}

impl AttestConfig {
    /// A claim lasts this long: a round's whole life, with room to spare.
    pub fn claim_for(&self) -> Duration {
        self.answer_timeout * 2 + Duration::from_secs(5)
    }
}

/// What this instance's rounds did (for `/metrics`).
#[derive(Debug, Default)]
pub struct AttestCounters {
    /// Rounds started (claims won).
    pub rounds: AtomicU64,
    /// Claims lost to another instance.
    pub claims_lost: AtomicU64,
    /// Verdicts reached, trusted.
    pub trusted: AtomicU64,
    /// Verdicts reached, not trusted, by failed check.
    pub failed_by_check: Mutex<BTreeMap<String, u64>>,
    /// Rounds without an answer, by why (`timeout`, `no_responders`,
    /// `refused`, `malformed`).
    pub unreachable_by_why: Mutex<BTreeMap<String, u64>>,
    /// Results not written because the claim had passed to another
    /// instance.
    pub results_dropped: AtomicU64,
    /// Microseconds spent verifying (for verifications per second per
    /// core).
    pub verify_micros: AtomicU64,
}

fn bump(m: &Mutex<BTreeMap<String, u64>>, k: &str) {
    if let Ok(mut m) = m.lock() {
        *m.entry(k.to_owned()).or_default() += 1;
    }
}

/// A device due for a round: its id, its enrolment, its record and the
/// record's revision (none yet: a first round).
type Due = (String, Enrolled, Option<(u64, Attestation)>);

/// A bucket kept in memory by watching it: key → (revision, value).
type Mirror<T> = Arc<Mutex<HashMap<String, (u64, T)>>>;

/// Keep `mirror` equal to `bucket` until `stop` (the watch is made again
/// after the cluster went away).
async fn mirror<T: serde::de::DeserializeOwned + Send + 'static>(
    kv: kv::Store,
    mirror: Mirror<T>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        if *stop.borrow() {
            return;
        }
        let mut w = match kv.watch_with_history(">").await {
            Ok(w) => w,
            Err(e) => {
                log::warn!("attest: watching {}: {e}; retrying", kv.name);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        loop {
            let next = tokio::select! {
                n = w.next() => n,
                _ = stop.changed() => return,
            };
            let Some(Ok(e)) = next else {
                break;
            };
            let mut m = mirror.lock().unwrap_or_else(|p| p.into_inner());
            match e.operation {
                kv::Operation::Put => match serde_json::from_slice::<T>(&e.value) {
                    Ok(v) => {
                        let newer = m.get(&e.key).is_none_or(|(r, _)| *r < e.revision);
                        if newer {
                            m.insert(e.key.clone(), (e.revision, v));
                        }
                    }
                    Err(err) => log::warn!("attest: {} {}: unreadable: {err}", kv.name, e.key),
                },
                kv::Operation::Delete | kv::Operation::Purge => {
                    m.remove(&e.key);
                }
            }
        }
        log::warn!("attest: the watch on {} ended; watching again", kv.name);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A fresh record for a device just enrolled: due at once.
pub fn first_record(device: &str, now_ms: u64) -> Attestation {
    Attestation {
        device: device.to_owned(),
        trust: TrustState::Unknown,
        since_ms: now_ms,
        verdict: None,
        unreachable: None,
        open_findings: Vec::new(),
        verifier: serde_json::Value::Null,
        next_due_ms: now_ms,
        claim: None,
        rounds: Rounds::default(),
        stale_at_ms: 0,
    }
}

/// Whether `instance` may claim `rec` at `now_ms`.
pub fn claimable(rec: &Attestation, now_ms: u64) -> bool {
    rec.next_due_ms <= now_ms && rec.claim.as_ref().is_none_or(|c| c.until_ms < now_ms)
}

/// Run rounds until `stop`: every second, claim the devices that are due
/// and attest them, at most `concurrency` at once.
pub async fn rounds(
    client: async_nats::Client,
    js: jetstream::Context,
    cfg: Arc<AttestConfig>,
    instance: String,
    counters: Arc<crate::service::Counters>,
    stop: watch::Receiver<bool>,
) {
    let (attest_kv, enrolled_kv) = loop {
        match (
            js.get_key_value(ATTEST_BUCKET).await,
            js.get_key_value(ENROLLED_BUCKET).await,
        ) {
            (Ok(a), Ok(e)) => break (a, e),
            (Err(e), _) | (_, Err(e)) => {
                log::warn!("attest: opening the buckets: {e}; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                if *stop.borrow() {
                    return;
                }
            }
        }
    };
    let records: Mirror<Attestation> = Arc::default();
    let enrolled: Mirror<Enrolled> = Arc::default();
    let watchers = [
        tokio::spawn(mirror(attest_kv.clone(), records.clone(), stop.clone())),
        tokio::spawn(mirror(enrolled_kv, enrolled.clone(), stop.clone())),
    ];
    let slots = Arc::new(tokio::sync::Semaphore::new(cfg.concurrency.max(1)));
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut stop_rx = stop.clone();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop_rx.changed() => break,
        }
        let now = now_ms();
        let due: Vec<Due> = {
            let e = enrolled.lock().unwrap_or_else(|p| p.into_inner());
            let r = records.lock().unwrap_or_else(|p| p.into_inner());
            e.iter()
                .filter_map(|(dev, (_, en))| match r.get(dev) {
                    None => Some((dev.clone(), en.clone(), None)),
                    Some((rev, rec)) if claimable(rec, now) => {
                        Some((dev.clone(), en.clone(), Some((*rev, rec.clone()))))
                    }
                    Some(_) => None,
                })
                .collect()
        };
        for (device, en, current) in due {
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                break;
            };
            let mut rec = current
                .as_ref()
                .map_or_else(|| first_record(&device, now), |(_, r)| r.clone());
            rec.claim = Some(Claim {
                instance: instance.clone(),
                until_ms: now + cfg.claim_for().as_millis() as u64,
            });
            let Ok(value) = serde_json::to_vec(&rec) else {
                continue;
            };
            // The claim: whoever writes first on this revision runs the
            // round; everyone else sees the new revision and waits.
            let claimed = match &current {
                Some((rev, _)) => attest_kv.update(&device, value.into(), *rev).await.ok(),
                None => attest_kv.create(&device, value.into()).await.ok(),
            };
            let Some(rev) = claimed else {
                counters.attest.claims_lost.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            counters.attest.rounds.fetch_add(1, Ordering::Relaxed);
            let (client, js, kv, cfg, counters) = (
                client.clone(),
                js.clone(),
                attest_kv.clone(),
                cfg.clone(),
                counters.clone(),
            );
            tokio::spawn(async move {
                let _permit = permit;
                round(&client, &js, &kv, &cfg, &counters, en, rec, rev).await;
            });
        }
    }
    for w in watchers {
        let _ = w.await;
    }
}

/// A question a device did not answer usably: a word for the counters
/// (`timeout`, `no_responders`, `refused`, `malformed`, `link`) and a
/// sentence for people.
#[derive(Debug)]
pub(crate) struct Unanswered(pub &'static str, pub String);

/// Ask `device` `q` and read the answer as `T`.
pub(crate) async fn ask<T: serde::de::DeserializeOwned>(
    client: &async_nats::Client,
    device: &str,
    q: &Question,
    timeout: Duration,
) -> Result<T, Unanswered> {
    let payload = ask_raw(client, device, q, timeout).await?;
    serde_json::from_slice(&payload)
        .map_err(|e| Unanswered("malformed", format!("not the answer asked for: {e}")))
}

/// Ask `device` `q` on its question subject, with the answer expected on
/// a fresh token under its own answer subject: the answer's bytes, or why
/// there is none (a refusal included). Shared by the attestation and the
/// enrolment rounds.
async fn ask_raw(
    client: &async_nats::Client,
    device: &str,
    q: &Question,
    timeout: Duration,
) -> Result<bytes::Bytes, Unanswered> {
    let body = serde_json::to_vec(q).map_err(|e| Unanswered("malformed", e.to_string()))?;
    let mut token = [0u8; 12];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut token))
        .map_err(|e| Unanswered("malformed", format!("no random token: {e}")))?;
    let req = async_nats::Request::new()
        .payload(body.into())
        .inbox(format!("{ANSWER_PREFIX}.{device}.{}", hex::encode(token)))
        .timeout(Some(timeout));
    let msg = client
        .send_request(format!("{ASK_PREFIX}.{device}"), req)
        .await
        .map_err(|e| match e.kind() {
            async_nats::RequestErrorKind::NoResponders => Unanswered(
                "no_responders",
                "not connected (nobody listens on its question subject)".to_owned(),
            ),
            async_nats::RequestErrorKind::TimedOut => Unanswered(
                "timeout",
                format!("no answer within {} s", timeout.as_secs_f32()),
            ),
            _ => Unanswered("link", format!("asking failed: {e}")),
        })?;
    if let Ok(r) = serde_json::from_slice::<Refused>(&msg.payload) {
        return Err(Unanswered(
            "refused",
            format!("the device refused: {}", r.error),
        ));
    }
    Ok(msg.payload)
}

/// One round for one device, with the claim at revision `rev`.
#[allow(clippy::too_many_arguments)]
async fn round(
    client: &async_nats::Client,
    js: &jetstream::Context,
    kv: &kv::Store,
    cfg: &AttestConfig,
    counters: &crate::service::Counters,
    enrolled: Enrolled,
    mut rec: Attestation,
    rev: u64,
) {
    let device = rec.device.clone();
    let before = (rec.trust, rec.verdict.as_ref().map(|v| v.boot_id.clone()));
    let nonce = match fresh_nonce() {
        Ok(n) => n,
        Err(e) => {
            // This instance's fault, not the device's: the round is given
            // back (the claim cleared, due again in a round's time) rather
            // than held until its deadline.
            log::error!("attest {device}: no nonce: {e}");
            rec.claim = None;
            rec.next_due_ms = now_ms() + cfg.every.as_millis() as u64;
            if let Ok(value) = serde_json::to_vec(&rec) {
                let _ = kv.update(&device, value.into(), rev).await;
            }
            return;
        }
    };
    let question = Question::Attest {
        nonce: hex::encode(&nonce),
    };
    // Parsed as the verifier library parses a bundle file (its size bound
    // included).
    let answer = ask_raw(client, &device, &question, cfg.answer_timeout)
        .await
        .and_then(|raw| {
            parse_evidence(&raw)
                .map_err(|e| Unanswered("malformed", format!("not an evidence bundle: {e}")))
        });
    let now = now_ms();
    match answer {
        Err(Unanswered(why, text)) => {
            bump(&counters.attest.unreachable_by_why, why);
            if rec.trust != TrustState::Unreachable {
                rec.since_ms = now;
            }
            rec.trust = TrustState::Unreachable;
            rec.unreachable = Some(text);
            rec.rounds.unreachable += 1;
        }
        Ok(ev) => {
            let judged = judge(cfg, &enrolled, &rec.verifier, &ev, &nonce);
            let (verdict, state, micros) = match judged {
                Ok(j) => j,
                Err(why) => {
                    log::error!("attest {device}: cannot judge: {why}");
                    (
                        Verdict {
                            failures: vec![guardian_attest::attest::Failure {
                                check: "enrolment",
                                reason: why,
                                finding: None,
                            }],
                            ..Verdict::default()
                        },
                        rec.verifier.clone(),
                        0,
                    )
                }
            };
            counters
                .attest
                .verify_micros
                .fetch_add(micros, Ordering::Relaxed);
            let trust = if verdict.trusted {
                counters.attest.trusted.fetch_add(1, Ordering::Relaxed);
                TrustState::Trusted
            } else {
                for f in &verdict.failures {
                    bump(&counters.attest.failed_by_check, f.check);
                }
                rec.rounds.failed += 1;
                TrustState::Untrusted
            };
            if trust != rec.trust {
                rec.since_ms = now;
            }
            rec.trust = trust;
            rec.unreachable = None;
            rec.rounds.verified += 1;
            rec.open_findings = open_findings(&state);
            rec.verifier = state;
            rec.verdict = Some(LastVerdict {
                at_ms: now,
                trusted: verdict.trusted,
                failures: verdict
                    .failures
                    .iter()
                    .map(|f| FailedCheck {
                        check: f.check.to_owned(),
                        reason: f.reason.clone(),
                        finding: f.finding.clone(),
                    })
                    .collect(),
                passed: verdict.passed.iter().map(|s| (*s).to_owned()).collect(),
                warnings: verdict.warnings.clone(),
                tamper_attempts: verdict.tamper_attempts.clone(),
                manifests: verdict.manifests.clone(),
                boot_id: ev.device.boot_id.clone(),
                policy_set: verdict.policy_set.clone(),
            });
        }
    }
    rec.claim = None;
    rec.next_due_ms = now + cfg.every.as_millis() as u64;
    // The fleet stops vouching for a verdict once the next one should
    // have been reached (its round due, answered within the timeout, with
    // a little room): a device whose instance died shows stale from then
    // until another instance's claim takes it, not trusted on an old
    // verdict for the claim's whole deadline.
    rec.stale_at_ms = rec.next_due_ms + cfg.answer_timeout.as_millis() as u64 + STALE_ROOM_MS;
    let Ok(value) = serde_json::to_vec(&rec) else {
        return;
    };
    if let Err(e) = kv.update(&device, value.into(), rev).await {
        // The claim ran out and another instance took the device: its
        // round decides; this one's result (and the verifier state it
        // moved) is dropped, so the state never forks.
        counters
            .attest
            .results_dropped
            .fetch_add(1, Ordering::Relaxed);
        log::warn!("attest {device}: result not written (the claim passed on): {e}");
        return;
    }
    for a in alerts_for(&before, &rec) {
        if let Err(e) = crate::alerts::publish(js, &a, &counters.alerts).await {
            counters
                .alerts
                .publish_errors
                .fetch_add(1, Ordering::Relaxed);
            log::warn!("alerts: publishing {} for {device}: {e}", a.kind);
        }
    }
}

/// Judge `ev` with the verifier library: (verdict, the verifier state
/// after it, microseconds spent).
fn judge(
    cfg: &AttestConfig,
    enrolled: &Enrolled,
    state: &serde_json::Value,
    ev: &Evidence,
    nonce: &[u8],
) -> Result<(Verdict, serde_json::Value, u64), String> {
    use p256::pkcs8::DecodePublicKey as _;
    let ak = p256::ecdsa::VerifyingKey::from_public_key_pem(&enrolled.ak_public_pem)
        .map_err(|e| format!("the enrolled AK is not a P-256 public key: {e}"))?;
    let mut st = if state.is_null() {
        DeviceState::new(ak.to_encoded_point(false).as_bytes())
    } else {
        serde_json::from_value::<DeviceState>(state.clone())
            .map_err(|e| format!("the verifier state is unreadable: {e}"))?
    };
    let t0 = std::time::Instant::now();
    let mut v = guardian_attest::attest::verify(
        ev,
        &Trust {
            ak: &ak,
            nonce,
            pcrs: &cfg.pcrs,
            manifest_keys: &cfg.manifest_keys,
            golden: cfg.golden.as_deref(),
            require_guard: cfg.require_guard,
        },
        Some(&mut st),
    );
    let micros = t0.elapsed().as_micros() as u64;
    if enrolled.insecure_tofu {
        v.warnings
            .push("INSECURE: the AK was enrolled by trust on first use".to_owned());
    }
    let st = serde_json::to_value(&st).map_err(|e| e.to_string())?;
    Ok((v, st, micros))
}

fn open_findings(state: &serde_json::Value) -> Vec<OpenFinding> {
    serde_json::from_value::<DeviceState>(state.clone())
        .map(|st| {
            st.open_findings()
                .map(|f| OpenFinding {
                    id: f.id.clone(),
                    check: f.check.clone(),
                    reason: f.reason.clone(),
                    since: f.since.clone(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The alerts a round's result raises, given where the device stood
/// before (its trust, and the boot it was quoted in). Once per episode:
/// each alert's id carries the time the device entered its state, so a
/// device that stays untrusted is one alert, not one per round.
pub fn alerts_for(before: &(TrustState, Option<String>), rec: &Attestation) -> Vec<Alert> {
    let mut out = Vec::new();
    let evidence = serde_json::to_value(rec).unwrap_or(serde_json::Value::Null);
    let evidence = match evidence {
        serde_json::Value::Object(mut m) => {
            // The verifier's raw state is for the verifier; the alert
            // carries the verdict and the findings.
            m.remove("verifier");
            serde_json::Value::Object(m)
        }
        other => other,
    };
    match rec.trust {
        TrustState::Untrusted => {
            let v = rec.verdict.clone().unwrap_or_default();
            let what = v
                .failures
                .iter()
                .map(|f| format!("{}: {}", f.check, f.reason))
                .collect::<Vec<_>>()
                .join("; ");
            out.push(Alert {
                device: rec.device.clone(),
                kind: "attestation_failed".to_owned(),
                what: format!("attestation failed: {what}"),
                since_ms: rec.since_ms,
                epoch: None,
                seq: None,
                evidence: evidence.clone(),
            });
            // A new boot, judged while findings of an earlier boot are
            // still open (finding ids begin with the boot they are from;
            // findings this boot opened itself are the alert above).
            let rebooted =
                matches!((&before.1, rec.verdict.as_ref()), (Some(b), Some(v)) if *b != v.boot_id);
            let carried: Vec<&OpenFinding> = rec
                .open_findings
                .iter()
                .filter(|f| !f.id.starts_with(v.boot_id.as_str()))
                .collect();
            if rebooted && !carried.is_empty() {
                out.push(Alert {
                    device: rec.device.clone(),
                    kind: "reboot_with_finding".to_owned(),
                    what: format!(
                        "rebooted with {} open finding(s): {}",
                        carried.len(),
                        carried
                            .iter()
                            .map(|f| f.id.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    since_ms: v.at_ms,
                    epoch: None,
                    seq: None,
                    evidence: evidence.clone(),
                });
            }
        }
        TrustState::Unreachable if before.0 != TrustState::Unreachable => out.push(Alert {
            device: rec.device.clone(),
            kind: "unreachable".to_owned(),
            what: format!(
                "attestation: {}",
                rec.unreachable.as_deref().unwrap_or("no answer")
            ),
            since_ms: rec.since_ms,
            epoch: None,
            seq: None,
            evidence,
        }),
        _ => {}
    }
    out
}

fn now_ms() -> u64 {
    crate::service::now_ms()
}

/// A device's attestation, for `guardian-fleet device`.
pub fn render(rec: Option<&Attestation>, now_ms: u64) -> String {
    let Some(r) = rec else {
        return "attestation: none (not enrolled, or not attested yet)\n\n".to_owned();
    };
    let ago = |ms: u64| format!("{} s ago", now_ms.saturating_sub(ms) / 1000);
    let mut s = format!(
        "trust       {} since {} ({} verified, {} failed, {} unreachable)\n",
        r.trust_now(now_ms).as_str(),
        ago(r.since_ms),
        r.rounds.verified,
        r.rounds.failed,
        r.rounds.unreachable
    );
    if let Some(why) = &r.unreachable {
        s += &format!("unreachable {why}\n");
    }
    if let Some(v) = &r.verdict {
        s += &format!(
            "verdict     {} {}, boot {}\n",
            if v.trusted { "TRUSTED" } else { "NOT TRUSTED" },
            ago(v.at_ms),
            v.boot_id
        );
        for f in &v.failures {
            s += &format!("  FAIL  {}: {}\n", f.check, f.reason);
        }
        for w in &v.warnings {
            s += &format!("  WARN  {w}\n");
        }
        for t in &v.tamper_attempts {
            s += &format!("  TAMPER {t}\n");
        }
    }
    for f in &r.open_findings {
        s += &format!(
            "finding     {} ({}): {} since {}\n",
            f.id, f.check, f.reason, f.since
        );
    }
    s + "\n"
}

/// Something the operator asked of the enrolment or attestation records
/// that could not be done.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The file could not be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not an enrolment record, or one whose AK is unusable.
    #[error("{}: {problem}", path.display())]
    NotEnrolment {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// Not a device id.
    #[error("invalid device id {0:?} (1-64 of A-Z a-z 0-9 _ -)")]
    DeviceId(String),
    /// No such device or finding.
    #[error("{0}")]
    NotFound(String),
    /// The bucket could not be read or written.
    #[error("{what}")]
    Store {
        /// What was being done.
        what: String,
        /// Why.
        #[source]
        source: async_nats::Error,
    },
}

fn store_err(what: impl Into<String>) -> impl FnOnce(async_nats::Error) -> RecordError {
    let what = what.into();
    move |source| RecordError::Store { what, source }
}

/// `guardian-fleet enrol import`: trust the AK of the enrolment record in
/// `file` for `device`. Checked before it is stored: the record parses and
/// its AK is a P-256 public key.
pub async fn import_enrolment(
    js: &jetstream::Context,
    device: &str,
    file: &std::path::Path,
) -> Result<Enrolled, RecordError> {
    use p256::pkcs8::DecodePublicKey as _;
    if !guardian_report::wire::valid_device_id(device) {
        return Err(RecordError::DeviceId(device.to_owned()));
    }
    let bytes = std::fs::read(file).map_err(|source| RecordError::Read {
        path: file.to_owned(),
        source,
    })?;
    let bad = |problem: String| RecordError::NotEnrolment {
        path: file.to_owned(),
        problem,
    };
    let e: Enrolled = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    p256::ecdsa::VerifyingKey::from_public_key_pem(&e.ak_public_pem)
        .map_err(|err| bad(format!("its AK is not a P-256 public key: {err}")))?;
    let kv = js
        .get_key_value(ENROLLED_BUCKET)
        .await
        .map_err(|err| store_err(format!("open bucket {ENROLLED_BUCKET}"))(err.into()))?;
    let value = serde_json::to_vec(&e).map_err(|err| bad(err.to_string()))?;
    kv.put(device, value.into())
        .await
        .map_err(|err| store_err(format!("enrol {device}"))(err.into()))?;
    Ok(e)
}

/// Every enrolled device, sorted.
pub async fn enrolled(js: &jetstream::Context) -> Result<Vec<(String, Enrolled)>, RecordError> {
    let kv = js
        .get_key_value(ENROLLED_BUCKET)
        .await
        .map_err(|err| store_err(format!("open bucket {ENROLLED_BUCKET}"))(err.into()))?;
    let mut keys = kv
        .keys()
        .await
        .map_err(|err| store_err("list enrolled devices")(err.into()))?;
    let mut out = Vec::new();
    while let Some(k) = keys.next().await {
        let k = k.map_err(|err| store_err("list enrolled devices")(err.into()))?;
        if let Some(v) = kv
            .get(&k)
            .await
            .map_err(|err| store_err(format!("read {k}"))(err.into()))?
        {
            match serde_json::from_slice::<Enrolled>(&v) {
                Ok(e) => out.push((k, e)),
                Err(err) => log::warn!("enrolment of {k}: unreadable: {err}"),
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// `guardian-fleet ack`: acknowledge `device`'s open finding `id` (or
/// `all`) in its verifier state. Waits for a round in progress to end
/// (its result would otherwise be written over the acknowledgement).
pub async fn acknowledge(
    js: &jetstream::Context,
    device: &str,
    id: &str,
) -> Result<usize, RecordError> {
    let kv = js
        .get_key_value(ATTEST_BUCKET)
        .await
        .map_err(|err| store_err(format!("open bucket {ATTEST_BUCKET}"))(err.into()))?;
    for _ in 0..300 {
        let entry = kv
            .entry(device)
            .await
            .map_err(|err| store_err(format!("read {device}"))(err.into()))?
            .ok_or_else(|| RecordError::NotFound(format!("{device} has never been attested")))?;
        let mut rec: Attestation = serde_json::from_slice(&entry.value)
            .map_err(|err| store_err(format!("read {device}"))(err.into()))?;
        if rec.claim.as_ref().is_some_and(|c| c.until_ms >= now_ms()) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let mut st: DeviceState = serde_json::from_value(rec.verifier.clone())
            .map_err(|err| store_err(format!("read {device}'s verifier state"))(err.into()))?;
        let when = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
        let mut n = 0;
        for f in st
            .findings
            .iter_mut()
            .filter(|f| f.acknowledged.is_none() && (id == "all" || f.id == id))
        {
            f.acknowledged = Some(format!("{when} by the operator (guardian-fleet ack)"));
            n += 1;
        }
        if n == 0 {
            return Err(RecordError::NotFound(format!(
                "{device} has no open finding {id:?}"
            )));
        }
        rec.verifier = serde_json::to_value(&st)
            .map_err(|err| store_err("encode the verifier state")(err.into()))?;
        rec.open_findings = open_findings(&rec.verifier);
        let value =
            serde_json::to_vec(&rec).map_err(|err| store_err("encode the record")(err.into()))?;
        match kv.update(device, value.into(), entry.revision).await {
            Ok(_) => return Ok(n),
            // A round claimed it in between: read again.
            Err(_) => continue,
        }
    }
    Err(RecordError::NotFound(format!(
        "{device}: a round held the record for 30 s; try again"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(trust: TrustState) -> Attestation {
        let mut r = first_record("dev-1", 1_000);
        r.trust = trust;
        r
    }

    #[test]
    fn a_device_is_claimed_once_due_and_only_when_no_live_claim_holds_it() {
        let mut r = rec(TrustState::Unknown);
        assert!(claimable(&r, 1_000));
        r.next_due_ms = 5_000;
        assert!(!claimable(&r, 4_999));
        r.claim = Some(Claim {
            instance: "a".into(),
            until_ms: 9_000,
        });
        assert!(!claimable(&r, 6_000), "a live claim holds it");
        assert!(claimable(&r, 9_001), "a dead instance's claim runs out");
    }

    #[test]
    fn a_trusted_verdict_past_its_deadline_shows_stale_never_trusted() {
        let mut r = rec(TrustState::Trusted);
        r.stale_at_ms = 10_000;
        assert_eq!(r.trust_now(9_999), TrustState::Trusted);
        assert_eq!(r.trust_now(10_001), TrustState::Stale);
        let mut u = rec(TrustState::Untrusted);
        u.stale_at_ms = 10_000;
        assert_eq!(u.trust_now(20_000), TrustState::Untrusted);
    }

    #[test]
    fn alerts_come_once_per_episode_and_name_the_failed_checks() {
        let mut r = rec(TrustState::Untrusted);
        r.since_ms = 7_000;
        r.verdict = Some(LastVerdict {
            at_ms: 8_000,
            failures: vec![FailedCheck {
                check: "nonce".into(),
                reason: "not ours".into(),
                finding: None,
            }],
            boot_id: "b2".into(),
            ..LastVerdict::default()
        });
        let a = alerts_for(&(TrustState::Untrusted, Some("b2".into())), &r);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].kind, "attestation_failed");
        assert!(a[0].what.contains("nonce: not ours"));
        // The id carries the episode's start: every round of one episode
        // publishes the same id, which the alert stream keeps once.
        let again = alerts_for(&(TrustState::Untrusted, Some("b2".into())), &r);
        assert_eq!(a[0].msg_id(), again[0].msg_id());
        assert!(a[0].evidence.get("verifier").is_none());
        // A new boot with a finding open is its own alert.
        r.open_findings.push(OpenFinding {
            id: "b1#3:model".into(),
            check: "model".into(),
            reason: "x".into(),
            since: "t".into(),
        });
        let a = alerts_for(&(TrustState::Untrusted, Some("b1".into())), &r);
        assert_eq!(
            a.iter().map(|a| a.kind.as_str()).collect::<Vec<_>>(),
            ["attestation_failed", "reboot_with_finding"]
        );
        // Findings the new boot opened itself are not carried over.
        r.open_findings[0].id = "b2#3:model".into();
        let a = alerts_for(&(TrustState::Trusted, Some("b1".into())), &r);
        assert_eq!(
            a.iter().map(|a| a.kind.as_str()).collect::<Vec<_>>(),
            ["attestation_failed"]
        );
        // Unreachable: on entering it only.
        let mut u = rec(TrustState::Unreachable);
        u.unreachable = Some("no answer within 5 s".into());
        assert_eq!(alerts_for(&(TrustState::Trusted, None), &u).len(), 1);
        assert!(alerts_for(&(TrustState::Unreachable, None), &u).is_empty());
        assert!(alerts_for(&(TrustState::Unknown, None), &rec(TrustState::Trusted)).is_empty());
    }
}
