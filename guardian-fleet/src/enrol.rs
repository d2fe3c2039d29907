//! Enrolment over the link: the fleet enrols the devices that report to
//! it and are not enrolled yet, with the checks `guardian enrol` makes on
//! files (the EK certificate's chain to a manufacturer CA, the AK a
//! restricted signing key of the same TPM, proven by credential
//! activation), driven from here by questions on the device's link.
//!
//! The rounds, per device not enrolled:
//! 1. ask for the enrolment request (`enrol_request`): the EK
//!    certificate, the EK's and the AK's public areas, read by the TPM;
//! 2. check it (`guardian_attest::enrol::challenge`): a chain that does
//!    not reach a configured CA is refused, with the reason kept and an
//!    alert;
//! 3. decide: a device is enrolled only if an operator approved it
//!    (`guardian-fleet enrol approve`) or a rule pre-authorises it (its EK
//!    certificate's issuer is listed, or its serial number is on the
//!    serial list); otherwise it waits in the pending bucket, shown to
//!    the operator, with an alert;
//! 4. ask the device to activate the credential (`activate`), and write
//!    the enrolment record only if the secret it returns is the one made
//!    for it (`guardian_attest::enrol::finish`). The secret never leaves
//!    this instance's memory; the attestation rounds find the new record
//!    within a second.
//!
//! Owns the `guardian_pending` bucket and the enrolled records it writes.
//! Several instances may run rounds: a device's round is claimed in its
//! pending record first (compare-and-set, with a deadline), as the
//! attestation rounds do. May not enrol a device an operator removed
//! without asking again, or trust anything of a request before the
//! credential is activated.

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use async_nats::jetstream::{self, kv};
use futures_util::StreamExt as _;
use guardian_attest::enrol::{CaCerts, Challenge, Enrolled, Request, Response};
use guardian_report::wire::Question;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::{
    alerts::Alert,
    attest::{ENROLLED_BUCKET, RecordError},
    service::{Counters, DEVICES_BUCKET, now_ms},
};

/// The bucket of devices seen and not enrolled (key = device id).
pub const PENDING_BUCKET: &str = "guardian_pending";

/// A pending record is looked at again after this (a refused chain may
/// have been a missing CA; an unapproved device's request is refreshed).
pub const RECHECK: Duration = Duration::from_secs(60);

/// Who may be enrolled without an operator's approval.
#[derive(Debug, Clone, Default)]
pub struct Preauthorised {
    /// EK certificate issuers (RFC 4514, exactly as shown by `enrol
    /// pending`).
    pub issuers: BTreeSet<String>,
    /// EK certificate serial numbers (lowercase hex, no separators).
    pub serials: BTreeSet<String>,
}

impl Preauthorised {
    /// Read a serial list: one hex serial per line (`:` and spaces allowed,
    /// `#` comments).
    pub fn read_serials(path: &std::path::Path) -> Result<BTreeSet<String>, RecordError> {
        let text = std::fs::read_to_string(path).map_err(|source| RecordError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut out = BTreeSet::new();
        for (i, line) in text.lines().enumerate() {
            let l = line.split('#').next().unwrap_or("").trim();
            if l.is_empty() {
                continue;
            }
            let hex: String = l
                .chars()
                .filter(|c| *c != ':' && !c.is_whitespace())
                .collect::<String>()
                .to_ascii_lowercase();
            if hex.is_empty() || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(RecordError::NotEnrolment {
                    path: path.to_owned(),
                    problem: format!("line {}: {l:?} is not a hex serial number", i + 1),
                });
            }
            out.insert(hex.trim_start_matches('0').to_owned());
        }
        Ok(out)
    }

    fn allows(&self, issuer: &str, serial: &str) -> Option<String> {
        if self.issuers.contains(issuer) {
            return Some(format!("pre-authorised: EK issuer {issuer}"));
        }
        if self.serials.contains(serial.trim_start_matches('0')) {
            return Some(format!("pre-authorised: EK serial {serial} on the list"));
        }
        None
    }
}

/// How enrolment rounds run.
#[derive(Debug, Clone)]
pub struct EnrolConfig {
    /// The manufacturer CAs EK certificates must chain to.
    pub cas: CaCerts,
    /// Who is enrolled without approval.
    pub preauthorised: Preauthorised,
    /// A device that has not answered in this time is tried again later.
    pub answer_timeout: Duration,
}

/// Where a device stands in enrolment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// The device.
    pub device: String,
    /// `pending` (checked, waiting for approval), `approved` (an operator
    /// approved; enrolled at the next round), `refused` (the request
    /// failed a check), `unreachable` (it did not answer).
    pub state: String,
    /// Why, in words.
    pub reason: String,
    /// The EK certificate's issuer, subject, serial (hex) and SHA-256,
    /// once a request was read.
    #[serde(default)]
    pub ek_issuer: String,
    /// Its subject.
    #[serde(default)]
    pub ek_subject: String,
    /// Its serial number, hex.
    #[serde(default)]
    pub ek_serial: String,
    /// The AK's name, hex.
    #[serde(default)]
    pub ak_name: String,
    /// When this was last looked at (ms since the Unix epoch).
    pub checked_ms: u64,
    /// The round in progress: instance and deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<crate::attest::Claim>,
    /// Who approved, when (for `approved`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_by: Option<String>,
}

/// Ask `device` `q` and read the answer as `T`, or why not in words.
async fn ask<T: serde::de::DeserializeOwned>(
    client: &async_nats::Client,
    device: &str,
    q: &Question,
    timeout: Duration,
) -> Result<T, String> {
    crate::attest::ask(client, device, q, timeout)
        .await
        .map_err(|u| u.1)
}

/// Run enrolment rounds until `stop`: every few seconds, the devices that
/// report and are not enrolled.
pub async fn rounds(
    client: async_nats::Client,
    js: jetstream::Context,
    cfg: Arc<EnrolConfig>,
    instance: String,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let (Ok(devices), Ok(enrolled), Ok(pending)) = (
            js.get_key_value(DEVICES_BUCKET).await,
            js.get_key_value(ENROLLED_BUCKET).await,
            js.get_key_value(PENDING_BUCKET).await,
        ) else {
            continue;
        };
        let (Ok(seen), Ok(done)) = (keys(&devices).await, keys(&enrolled).await) else {
            continue;
        };
        for device in seen.difference(&done) {
            let now = now_ms();
            let entry = pending.entry(device).await.ok().flatten();
            let current: Option<(u64, Pending)> = entry.and_then(|e| {
                serde_json::from_slice(&e.value)
                    .ok()
                    .map(|p| (e.revision, p))
            });
            let due = match &current {
                None => true,
                Some((_, p)) => {
                    let free = p.claim.as_ref().is_none_or(|c| c.until_ms < now);
                    let fresh = now.saturating_sub(p.checked_ms) < RECHECK.as_millis() as u64;
                    // A device the operator removed waits for an approval.
                    free && (p.state == "approved" || (p.state != "removed" && !fresh))
                }
            };
            if !due {
                continue;
            }
            let mut claimed = current.as_ref().map_or_else(
                || Pending {
                    device: device.clone(),
                    state: "new".to_owned(),
                    reason: "seen reporting, not enrolled".to_owned(),
                    ek_issuer: String::new(),
                    ek_subject: String::new(),
                    ek_serial: String::new(),
                    ak_name: String::new(),
                    checked_ms: now,
                    claim: None,
                    approved_by: None,
                },
                |(_, p)| p.clone(),
            );
            claimed.claim = Some(crate::attest::Claim {
                instance: instance.clone(),
                until_ms: now + 3 * cfg.answer_timeout.as_millis() as u64 + 5_000,
            });
            let Ok(value) = serde_json::to_vec(&claimed) else {
                continue;
            };
            let rev = match &current {
                Some((rev, _)) => pending.update(device, value.into(), *rev).await.ok(),
                None => pending.create(device, value.into()).await.ok(),
            };
            let Some(rev) = rev else {
                continue;
            };
            let (client, js, pending, enrolled, cfg, counters, device) = (
                client.clone(),
                js.clone(),
                pending.clone(),
                enrolled.clone(),
                cfg.clone(),
                counters.clone(),
                device.clone(),
            );
            tokio::spawn(async move {
                round(
                    &client, &js, &pending, &enrolled, &cfg, &counters, claimed, rev, &device,
                )
                .await;
            });
        }
    }
}

async fn keys(store: &kv::Store) -> Result<BTreeSet<String>, async_nats::Error> {
    let mut out = BTreeSet::new();
    let mut k = store.keys().await?;
    while let Some(key) = k.next().await {
        out.insert(key?);
    }
    Ok(out)
}

/// What one round concluded.
enum Outcome {
    Enrolled(Box<Enrolled>, String),
    Pending(String),
    Refused(String),
    Unreachable(String),
}

#[allow(clippy::too_many_arguments)]
async fn round(
    client: &async_nats::Client,
    js: &jetstream::Context,
    pending: &kv::Store,
    enrolled: &kv::Store,
    cfg: &EnrolConfig,
    counters: &Counters,
    mut rec: Pending,
    rev: u64,
    device: &str,
) {
    let before = rec.state.clone();
    let outcome = enrol_one(client, cfg, &mut rec, device).await;
    rec.checked_ms = now_ms();
    rec.claim = None;
    let alert = |rec: &Pending, kind: &str, what: String| Alert {
        device: device.to_owned(),
        kind: kind.to_owned(),
        what,
        since_ms: rec.checked_ms,
        epoch: None,
        seq: None,
        evidence: serde_json::to_value(rec).unwrap_or(serde_json::Value::Null),
    };
    let mut alerts = Vec::new();
    match outcome {
        Outcome::Enrolled(e, why) => {
            let Ok(value) = serde_json::to_vec(&e) else {
                return;
            };
            if let Err(err) = enrolled.create(device, value.into()).await {
                log::warn!("enrol {device}: not written (enrolled meanwhile?): {err}");
            } else {
                log::info!(
                    "enrolled {device}: AK {} in a TPM whose EK {} certified ({why})",
                    e.ak_name,
                    e.ek_issuer.as_deref().unwrap_or("?")
                );
                counters
                    .enrol
                    .enrolled
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            let _ = pending.purge(device).await;
            return;
        }
        Outcome::Pending(why) => {
            rec.state = "pending".to_owned();
            rec.reason = why;
            if before != "pending" {
                alerts.push(alert(
                    &rec,
                    "enrolment_pending",
                    format!(
                        "waiting for approval: EK issuer {}, serial {} ({})",
                        rec.ek_issuer, rec.ek_serial, rec.reason
                    ),
                ));
            }
        }
        Outcome::Refused(why) => {
            counters
                .enrol
                .refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let again = before == "refused" && rec.reason == why;
            rec.state = "refused".to_owned();
            rec.reason = why;
            if !again {
                alerts.push(alert(
                    &rec,
                    "enrolment_refused",
                    format!("enrolment refused: {}", rec.reason),
                ));
            }
        }
        Outcome::Unreachable(why) => {
            // An approved device stays approved; the next round tries again.
            if rec.state != "approved" {
                rec.state = "unreachable".to_owned();
            }
            rec.reason = why;
        }
    }
    let Ok(value) = serde_json::to_vec(&rec) else {
        return;
    };
    if pending.update(device, value.into(), rev).await.is_err() {
        log::warn!("enrol {device}: result not written (the claim passed on)");
        return;
    }
    for a in alerts {
        if let Err(e) = crate::alerts::publish(js, &a, &counters.alerts).await {
            log::warn!("alerts: publishing {} for {device}: {e}", a.kind);
        }
    }
}

async fn enrol_one(
    client: &async_nats::Client,
    cfg: &EnrolConfig,
    rec: &mut Pending,
    device: &str,
) -> Outcome {
    use base64::Engine as _;
    let req: Request = match ask(client, device, &Question::EnrolRequest, cfg.answer_timeout).await
    {
        Ok(r) => r,
        Err(why) => return Outcome::Unreachable(why),
    };
    // The chain first: nothing of the request is believed before it.
    let der = match base64::engine::general_purpose::STANDARD.decode(&req.ek_certificate) {
        Ok(d) => d,
        Err(e) => return Outcome::Refused(format!("EK certificate is not base64: {e}")),
    };
    let checked = match guardian_attest::enrol::ekcert::check_chain(
        &der,
        &cfg.cas,
        std::time::SystemTime::now(),
    ) {
        Ok(c) => c,
        Err(e) => return Outcome::Refused(format!("EK certificate: {e}")),
    };
    rec.ek_issuer = checked.issuer.clone();
    rec.ek_subject = checked.subject.clone();
    rec.ek_serial = hex::encode(checked.cert.tbs_certificate.serial_number.as_bytes());
    let (challenge, secret) = match guardian_attest::enrol::challenge(&req, &cfg.cas) {
        Ok(c) => c,
        Err(e) => return Outcome::Refused(e.to_string()),
    };
    rec.ak_name = challenge.ak_name.clone();
    let why = if rec.state == "approved" {
        format!(
            "approved by {}",
            rec.approved_by.as_deref().unwrap_or("the operator")
        )
    } else if let Some(why) = cfg.preauthorised.allows(&rec.ek_issuer, &rec.ek_serial) {
        why
    } else {
        return Outcome::Pending(
            "no rule pre-authorises this EK; an operator must approve it (guardian-fleet enrol approve)"
                .to_owned(),
        );
    };
    let q = Question::Activate {
        challenge: match serde_json::to_value::<&Challenge>(&challenge) {
            Ok(v) => v,
            Err(e) => return Outcome::Refused(e.to_string()),
        },
    };
    let response: Response = match ask(client, device, &q, cfg.answer_timeout).await {
        Ok(r) => r,
        Err(why) => return Outcome::Unreachable(why),
    };
    match guardian_attest::enrol::finish(&req, secret, &response) {
        Ok(e) => Outcome::Enrolled(Box::new(e), why),
        Err(e) => Outcome::Refused(format!("credential activation: {e}")),
    }
}

/// What enrolment rounds did (for `/metrics`).
#[derive(Debug, Default)]
pub struct EnrolCounters {
    /// Devices enrolled by this instance.
    pub enrolled: std::sync::atomic::AtomicU64,
    /// Requests refused.
    pub refused: std::sync::atomic::AtomicU64,
}

/// Devices not enrolled, as the pending bucket has them.
pub async fn pending(js: &jetstream::Context) -> Result<Vec<Pending>, RecordError> {
    let kv = js
        .get_key_value(PENDING_BUCKET)
        .await
        .map_err(|e| store_err(format!("open bucket {PENDING_BUCKET}"), e.into()))?;
    let names = keys(&kv)
        .await
        .map_err(|e| store_err("list pending devices".to_owned(), e))?;
    let mut out = Vec::new();
    for k in names {
        if let Ok(Some(v)) = kv.get(&k).await
            && let Ok(p) = serde_json::from_slice::<Pending>(&v)
        {
            out.push(p);
        }
    }
    Ok(out)
}

fn store_err(what: String, source: async_nats::Error) -> RecordError {
    RecordError::Store { what, source }
}

/// `guardian-fleet enrol remove`: forget `device`'s enrolment and its
/// attestation record; it is not enrolled again (even if a rule would
/// pre-authorise it) until an operator approves it.
pub async fn remove(js: &jetstream::Context, device: &str, by: &str) -> Result<(), RecordError> {
    let kv = js
        .get_key_value(PENDING_BUCKET)
        .await
        .map_err(|e| store_err(format!("open bucket {PENDING_BUCKET}"), e.into()))?;
    let p = Pending {
        device: device.to_owned(),
        state: "removed".to_owned(),
        reason: format!(
            "enrolment removed by {by} at {}; approve to enrol again",
            humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        ),
        ek_issuer: String::new(),
        ek_subject: String::new(),
        ek_serial: String::new(),
        ak_name: String::new(),
        checked_ms: now_ms(),
        claim: None,
        approved_by: None,
    };
    let value = serde_json::to_vec(&p).map_err(|e| store_err("encode".to_owned(), e.into()))?;
    // First the marker, so no round re-enrols it in between.
    kv.put(device, value.into())
        .await
        .map_err(|e| store_err(format!("mark {device} removed"), e.into()))?;
    for bucket in [ENROLLED_BUCKET, crate::attest::ATTEST_BUCKET] {
        let kv = js
            .get_key_value(bucket)
            .await
            .map_err(|e| store_err(format!("open bucket {bucket}"), e.into()))?;
        kv.purge(device)
            .await
            .map_err(|e| store_err(format!("remove {device} from {bucket}"), e.into()))?;
    }
    Ok(())
}

/// `guardian-fleet enrol approve`: let `device` be enrolled at the next
/// round (its request is checked again then; approval does not skip the
/// chain or the activation).
pub async fn approve(js: &jetstream::Context, device: &str, by: &str) -> Result<(), RecordError> {
    let kv = js
        .get_key_value(PENDING_BUCKET)
        .await
        .map_err(|e| store_err(format!("open bucket {PENDING_BUCKET}"), e.into()))?;
    for _ in 0..100 {
        let entry = kv
            .entry(device)
            .await
            .map_err(|e| store_err(format!("read {device}"), e.into()))?
            .ok_or_else(|| {
                RecordError::NotFound(format!(
                    "{device} is not waiting for enrolment (see `guardian-fleet enrol pending`)"
                ))
            })?;
        let mut p: Pending = serde_json::from_slice(&entry.value)
            .map_err(|e| store_err(format!("read {device}"), e.into()))?;
        if p.state == "refused" {
            return Err(RecordError::NotFound(format!(
                "{device}'s request was refused ({}); approval cannot override a failed check",
                p.reason
            )));
        }
        p.state = "approved".to_owned();
        p.approved_by = Some(format!(
            "{by} at {}",
            humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        ));
        let value = serde_json::to_vec(&p).map_err(|e| store_err("encode".to_owned(), e.into()))?;
        if kv
            .update(device, value.into(), entry.revision)
            .await
            .is_ok()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(RecordError::NotFound(format!(
        "{device}: the record kept changing; try again"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_lists_read_hex_in_any_usual_spelling_and_refuse_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("serials");
        std::fs::write(&p, "# factory batch 7\n00:1A:2b\n  03ff  # spare\n\n").unwrap();
        let s = Preauthorised::read_serials(&p).unwrap();
        assert_eq!(s, ["1a2b".to_owned(), "3ff".to_owned()].into());
        let rule = Preauthorised {
            issuers: ["CN=vendor-ca".to_owned()].into(),
            serials: s,
        };
        assert!(rule.allows("CN=other", "001a2b").is_some());
        assert!(rule.allows("CN=vendor-ca", "ffff").is_some());
        assert!(
            rule.allows("CN=vendor-ca,O=x", "ffff").is_none(),
            "issuers match exactly"
        );
        assert!(rule.allows("CN=other", "1a2c").is_none());
        std::fs::write(&p, "12:zz\n").unwrap();
        let e = Preauthorised::read_serials(&p).unwrap_err().to_string();
        assert!(
            e.contains("line 1") && e.contains("not a hex serial"),
            "{e}"
        );
    }
}
