//! The verifier's inputs and its answer: what it trusts ([`Trust`]), one
//! failed check ([`Failure`]) and the verdict with its reasons
//! ([`Verdict`], rendered for people by [`Verdict::render`]). Kept apart
//! from the checks ([`super::verify`]) so that the checks across quotes
//! (`continuity.rs`) and the callers name them without the judging code.

use serde::Serialize;

use super::bundle::Device;
use crate::signing::TrustedKey;

/// One failed check.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Failure {
    /// Which check (see the table in [`super::verify`]).
    pub check: &'static str,
    /// Why, in words.
    pub reason: String,
    /// The finding it opens (kept in the verifier state until
    /// acknowledged), for failures about the device's own state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finding: Option<String>,
}

/// The verifier's answer.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Verdict {
    /// True when every check passed.
    pub trusted: bool,
    /// The failures (empty when trusted).
    pub failures: Vec<Failure>,
    /// Checks that passed, by name.
    pub passed: Vec<&'static str>,
    /// Conditions that do not fail the verdict but weaken it (stateless
    /// verification, a clock not marked safe, an AK trusted on first use).
    pub warnings: Vec<String>,
    /// Device as claimed by the bundle.
    pub device: Option<Device>,
    /// The manifests put in force this boot, in order.
    pub manifests: Vec<String>,
    /// Tamper attempts recorded this boot (denied ones do not fail the
    /// verdict: nothing changed; a verifier will want to know).
    pub tamper_attempts: Vec<String>,
    /// The guard's records this boot, in order.
    pub guard: Vec<String>,
    /// The policy modules loaded this boot, in load order.
    pub policies: Vec<String>,
    /// The pushed policy sets' records this boot (put in force, or found
    /// at start), in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub policy_sets: Vec<String>,
    /// The pushed policy set in force at the end of the log, when the
    /// device follows a group's set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_set: Option<PolicySetInForce>,
}

/// The pushed policy set a quoted log says is in force.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct PolicySetInForce {
    /// The device's group.
    pub group: String,
    /// The set's version; 0 when none was pushed yet.
    pub version: u64,
    /// SHA-256 of the set's signed document; empty with version 0.
    pub sha256: String,
    /// The device's floor, as recorded.
    pub floor: u64,
}

impl Verdict {
    /// Human-readable.
    pub fn render(&self) -> String {
        let mut s = format!(
            "verdict: {}\n",
            if self.trusted {
                "TRUSTED"
            } else {
                "NOT TRUSTED"
            }
        );
        for p in &self.passed {
            s += &format!("  ok    {p}\n");
        }
        for f in &self.failures {
            s += &format!("  FAIL  {}: {}", f.check, f.reason);
            if let Some(id) = &f.finding {
                s += &format!(" [finding {id}]");
            }
            s += "\n";
        }
        for w in &self.warnings {
            s += &format!("  WARN  {w}\n");
        }
        for m in &self.manifests {
            s += &format!("  manifest {m}\n");
        }
        for g in &self.guard {
            s += &format!("  guard  {g}\n");
        }
        for p in &self.policies {
            s += &format!("  policy {p}\n");
        }
        for p in &self.policy_sets {
            s += &format!("  policy {p}\n");
        }
        if let Some(p) = &self.policy_set {
            s += &format!(
                "  policy set in force: group {} version {}{}\n",
                p.group,
                p.version,
                if p.sha256.is_empty() {
                    String::new()
                } else {
                    format!(" sha256 {}", p.sha256)
                }
            );
        }
        for t in &self.tamper_attempts {
            s += &format!("  TAMPER {t}\n");
        }
        s
    }
}

/// What the verifier trusts.
pub struct Trust<'a> {
    /// The enrolled AK public key.
    pub ak: &'a p256::ecdsa::VerifyingKey,
    /// The nonce the verifier issued (at least 16 bytes).
    pub nonce: &'a [u8],
    /// The PCRs the quote must cover, exactly (SHA-256 bank): the
    /// manifest's PCR, which policies and the guard's records share.
    pub pcrs: &'a [u32],
    /// Keys a manifest must be signed by.
    pub manifest_keys: &'a [TrustedKey],
    /// A pinned golden manifest: the one in force at the end of the log
    /// must be it or newer.
    pub golden: Option<&'a [u8]>,
    /// Fail when no guard ran this boot (otherwise a warning).
    pub require_guard: bool,
}
