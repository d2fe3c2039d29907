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

use serde::{Deserialize, Serialize};

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
}

impl TrustState {
    /// The word status, the page and alerts use.
    pub fn as_str(self) -> &'static str {
        match self {
            TrustState::Unknown => "unknown",
            TrustState::Trusted => "trusted",
            TrustState::Untrusted => "untrusted",
            TrustState::Unreachable => "unreachable",
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
