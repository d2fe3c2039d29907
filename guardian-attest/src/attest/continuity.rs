//! The checks that span quotes: a verdict is finished against what the
//! verifier remembers of the device ([`super::state`]). The TPM's reset
//! and restart counts and clock must not go back and must agree with the
//! claimed boot; findings from earlier quotes stay open until
//! acknowledged; and only an authentic quote moves the state. Apart from
//! the checks of one bundle ([`super::verify`]) because without `--state`
//! none of this runs.

use std::collections::HashSet;

use sha2::{Digest as _, Sha256};

use super::{
    quote,
    state::{DeviceState, Finding, Seen},
    verdict::{Failure, Trust, Verdict},
};

/// Reboot and rollback checks against the state, open findings, and the
/// state's update.
pub(super) fn finish(
    mut v: Verdict,
    state: Option<&mut DeviceState>,
    info: Option<&quote::QuoteInfo>,
    serial: Option<u64>,
    authentic: bool,
    trust: &Trust<'_>,
) -> Verdict {
    let boot = v
        .device
        .as_ref()
        .map(|d| d.boot_id.clone())
        .unwrap_or_default();
    let Some(state) = state else {
        v.warnings.push(
            "stateless verification: reboots, TPM resets, clock rollback and earlier findings are not checked (use --state)".into(),
        );
        v.trusted = v.failures.is_empty();
        return v;
    };
    // A nonce is good for one verification, whatever its outcome.
    state.pending_nonce = None;
    let ak_id = {
        let point = trust.ak.to_encoded_point(false);
        hex::encode(Sha256::digest(point.as_bytes()))
    };
    if state.ak != ak_id {
        v.failures.push(Failure {
            check: "state",
            reason: format!(
                "the verifier state belongs to AK {} but this bundle is judged against AK {ak_id}",
                state.ak
            ),
            finding: None,
        });
        v.trusted = false;
        return v;
    }
    let mut reboot_ok = true;
    if let (Some(info), Some(last)) = (info, &state.last) {
        let problem = if info.reset_count < last.reset_count {
            Some(format!(
                "the TPM's reset count went back from {} to {} (a cleared TPM, or another TPM)",
                last.reset_count, info.reset_count
            ))
        } else if info.reset_count == last.reset_count && info.restart_count < last.restart_count {
            Some(format!(
                "the TPM's restart count went back from {} to {} within one reset",
                last.restart_count, info.restart_count
            ))
        } else if info.reset_count == last.reset_count && info.clock < last.clock {
            Some(format!(
                "the TPM's clock went back from {} ms to {} ms without a reset",
                last.clock, info.clock
            ))
        } else if info.reset_count == last.reset_count && boot != last.boot_id {
            Some(format!(
                "the device claims a new boot ({boot}) but the TPM was not reset since boot {}",
                last.boot_id
            ))
        } else if info.reset_count > last.reset_count && boot == last.boot_id {
            Some(format!(
                "the TPM was reset (count {} → {}) but the device claims the same boot {boot}",
                last.reset_count, info.reset_count
            ))
        } else {
            None
        };
        if let Some(p) = problem {
            reboot_ok = false;
            v.failures.push(Failure {
                check: "reboot",
                reason: p,
                finding: Some(format!("{boot}:reboot")),
            });
        } else if info.reset_count > last.reset_count {
            v.warnings.push(format!(
                "the device rebooted since the last verified quote (reset count {} → {}, boot {} → {boot})",
                last.reset_count, info.reset_count, last.boot_id
            ));
        }
    } else if state.last.is_none() {
        v.warnings.push(
            "first verified quote from this device: no earlier TPM clock or counters to compare"
                .into(),
        );
    }
    if reboot_ok && info.is_some() && state.last.is_some() {
        v.passed.push("reboot");
    }
    // Findings still open from earlier quotes.
    let now_ids: HashSet<String> = v
        .failures
        .iter()
        .filter_map(|f| f.finding.clone())
        .collect();
    for f in state.open_findings() {
        if !now_ids.contains(&f.id) {
            v.failures.push(Failure {
                check: "finding",
                reason: format!(
                    "open since {}: {}: {} (acknowledge with `guardian verify --state … --ack {}`)",
                    f.since, f.check, f.reason, f.id
                ),
                finding: None,
            });
        }
    }
    // Acknowledged findings seen again (the same record in a later quote
    // of the same boot) no longer fail.
    let acked: HashSet<&str> = state
        .findings
        .iter()
        .filter(|f| f.acknowledged.is_some())
        .map(|f| f.id.as_str())
        .collect();
    let before = v.failures.len();
    v.failures
        .retain(|f| f.finding.as_deref().is_none_or(|id| !acked.contains(id)));
    if v.failures.len() < before {
        v.warnings.push(format!(
            "{} acknowledged finding(s) seen again, not counted",
            before - v.failures.len()
        ));
    }
    // Only an authentic quote moves the state.
    if authentic && let Some(info) = info {
        let when = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        let known: HashSet<String> = state.findings.iter().map(|f| f.id.clone()).collect();
        for f in &v.failures {
            if let Some(id) = &f.finding
                && !known.contains(id)
            {
                state.findings.push(Finding {
                    id: id.clone(),
                    check: f.check.to_owned(),
                    reason: f.reason.clone(),
                    since: when.clone(),
                    acknowledged: None,
                });
            }
        }
        // Counters that went back are not adopted: the next quote is
        // judged against the highest seen.
        if reboot_ok {
            state.last = Some(Seen {
                clock: info.clock,
                reset_count: info.reset_count,
                restart_count: info.restart_count,
                boot_id: boot,
                at: when,
            });
        }
        if let Some(serial) = serial {
            state.manifest_serial = state.manifest_serial.max(serial);
        }
        // Only the versions seen in force are remembered, not the floor the
        // device claims: a floor written far too high (root with the TPM's
        // empty owner auth) is a finding of that quote, and must not make
        // every later quote fail once the device is put right.
        if let Some(p) = &v.policy_set {
            state.policy_set_version = state.policy_set_version.max(p.version);
            state.policy_group = p.group.clone();
        }
        state.quotes += 1;
    }
    v.trusted = v.failures.is_empty();
    v
}
