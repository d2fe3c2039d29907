//! What a measurement record means, bound into the PCR.
//!
//! Each extended record carries an [`Event`]: what was measured, with the
//! content it stands for (the manifest's text and signature, a model's
//! digest and the manifest entry it was judged against, a policy module's
//! digest and signer, a security event, the guard's state). The digest
//! extended into the PCR is SHA-256 of the event's canonical encoding
//! ([`canonical`]), so a verifier recomputes every record's digest from its
//! fields, and a record cannot be relabelled (a bad model logged as
//! guard state, a mismatch marked as matched) without the log no longer
//! replaying to the quoted PCR. This is what IMA's template hash does for
//! file names.
//!
//! The canonical encoding, version 1, is the compact JSON serialisation of
//! `{"format":"guardian-event/1","pcr":N,"event":{"kind":…,…}}` with the
//! fields in the order declared here, optional fields left out when absent
//! and nested objects (a security event) with their keys sorted. It is
//! also the event data of the TCG export, so a reader of that log can
//! check each digest against its data the same way.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The canonical encoding's name and version, the first field of every
/// encoded event.
pub const FORMAT: &str = "guardian-event/1";

/// The most bytes one event may encode to. A manifest's text is the
/// largest thing an event carries; anything bigger is refused when
/// recorded and when read.
pub const MAX_ENCODED: usize = 1 << 20;

/// What a record stands for.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// A model manifest put in force, with its whole text and signature.
    Manifest(ManifestEvent),
    /// One model file measured against the manifest in force.
    Model(ModelEvent),
    /// A policy module put in force.
    Policy(PolicyEvent),
    /// A policy set pushed to the device's group put in force, or the set
    /// and floor found at start ([`crate::policy_set`]).
    PolicySet(PolicySetEvent),
    /// An attempt to tamper with a protected file.
    Tamper(TamperEvent),
    /// The runtime guard started, stopped, was unloaded, lost events.
    Guard(GuardEvent),
    /// Not extended: something the log must say (a torn tail cut off, a
    /// re-run, an extend that failed). Notes are not evidence; a verifier
    /// reads them only for `voids`.
    Note(NoteEvent),
}

/// A manifest measurement.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ManifestEvent {
    /// Where it was read.
    pub file: String,
    /// SHA-256 of `text`.
    pub sha256: String,
    /// The manifest's serial (monotonic per fleet; the verifier refuses a
    /// manifest older than the one before it).
    pub serial: u64,
    /// The manifest, exactly as read (TOML).
    pub text: String,
    /// Its detached signature, hex; empty when accepted unsigned.
    pub signature: String,
    /// Fingerprint of the key that signed it, as the device judged; the
    /// verifier checks the signature itself.
    pub signer: String,
    /// Why the device measured it: `boot`, `rerun` or `update`.
    pub cause: String,
    /// Set when the golden reference is an OpenSSF model signature instead
    /// of a guardian manifest ([`crate::model_sig`]): the model directory
    /// it signs. `text` is then the Sigstore bundle exactly as read (JSON),
    /// `sha256` its digest, `serial` 0 (a model signature has none),
    /// `signature` the DSSE signature (hex) and `signer` the fingerprint
    /// of the signer's key (SHA-256 of its SubjectPublicKeyInfo). Its
    /// model records name the files `<model_dir>/<name>` and their entry
    /// in the statement. Absent for a manifest, so a manifest's encoding
    /// is unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_dir: Option<String>,
}

/// A model measurement.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ModelEvent {
    /// The model file.
    pub file: String,
    /// SHA-256 of its content, as measured.
    pub sha256: String,
    /// Its size, as measured.
    pub size: u64,
    /// SHA-256 of the manifest it was judged against.
    pub manifest: String,
    /// Index of its entry in that manifest.
    pub entry: usize,
    /// Why it was measured: `boot`, `write` (after a write by an allowed
    /// updater or one detected), `timer`, `update` (a new manifest).
    pub cause: String,
}

/// A policy load.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PolicyEvent {
    /// The policy's name.
    pub name: String,
    /// The module file.
    pub file: String,
    /// SHA-256 of the `.wasm`.
    pub sha256: String,
    /// Fingerprint of the key that signed it, or `UNSIGNED`.
    pub signer: String,
    /// The policy ABI version it was loaded with.
    pub abi: u32,
    /// The set it belongs to.
    pub generation: u64,
}

/// A pushed policy set: which is in force, and the device's floor.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PolicySetEvent {
    /// The device's group.
    pub group: String,
    /// The set's version in force; 0 when none was ever pushed (the
    /// image's own policy directory is in force).
    pub version: u64,
    /// SHA-256 of the set's signed document, hex; empty with version 0.
    pub sha256: String,
    /// Fingerprint of the key that signed it; empty with version 0.
    pub signer: String,
    /// `push` (a set received and put in force) or `start` (what was in
    /// force, and the floor, when the agent started).
    pub cause: String,
    /// The device's floor after this record: no set below it goes in force.
    pub floor: u64,
    /// Where the floor is kept: `tpm-nv` and `file`, or `file` alone.
    pub floor_store: String,
}

/// A tamper attempt, with the security event that reported it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TamperEvent {
    /// The protected file.
    pub file: String,
    /// `denied` (nothing changed) or `detected` (it happened).
    pub outcome: String,
    /// Similar attempts folded into this record by the rate limit.
    pub folded: u64,
    /// The security event (as printed on the event output); `null` for a
    /// record that only counts folded attempts.
    pub event: serde_json::Value,
}

/// A change of the guard's state.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GuardEvent {
    /// `start`, `adopt` (a restarted agent took over pinned programs),
    /// `stop` (the agent ended; pinned programs stay), `unload` (the
    /// programs were removed: nothing enforces), `gap` (the agent found
    /// that a previous guard ended without a record), `drops` (events
    /// lost), `stalled` (the attestor could not record in time), `tables`
    /// (the kernel's tables were found changed behind guardian's back, and
    /// put back).
    pub action: String,
    /// `enforce` or `detect`, or empty when nothing runs.
    pub mode: String,
    /// The agent's pid.
    pub pid: u32,
    /// What, in words: hooks and mechanisms, counters, reasons.
    pub detail: String,
}

/// A note (not extended).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NoteEvent {
    /// What happened.
    pub text: String,
}

#[derive(Serialize)]
struct Canonical<'a> {
    format: &'static str,
    pcr: u32,
    event: &'a Event,
}

impl Event {
    /// The record kind, as it appears in the log.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Manifest(_) => "manifest",
            Self::Model(_) => "model",
            Self::Policy(_) => "policy",
            Self::PolicySet(_) => "policy_set",
            Self::Tamper(_) => "tamper",
            Self::Guard(_) => "guard",
            Self::Note(_) => "note",
        }
    }

    /// One line for people.
    pub fn describe(&self) -> String {
        match self {
            Self::Manifest(m) if m.model_dir.is_some() => format!(
                "model signature {} for {} sha256 {} ({}, {})",
                m.file,
                m.model_dir.as_deref().unwrap_or_default(),
                short(&m.sha256),
                if m.signature.is_empty() {
                    "UNSIGNED".to_owned()
                } else {
                    format!("signed by {}", short(&m.signer))
                },
                m.cause
            ),
            Self::Manifest(m) => format!(
                "manifest {} serial {} sha256 {} ({}, {})",
                m.file,
                m.serial,
                short(&m.sha256),
                if m.signature.is_empty() {
                    "UNSIGNED".to_owned()
                } else {
                    format!("signed by {}", short(&m.signer))
                },
                m.cause
            ),
            Self::Model(m) => format!(
                "model {} entry {} sha256 {} ({})",
                m.file,
                m.entry,
                short(&m.sha256),
                m.cause
            ),
            Self::Policy(p) => format!(
                "policy {} sha256 {} {} ABI {} (set {})",
                p.name,
                short(&p.sha256),
                if p.signer == "UNSIGNED" {
                    "UNSIGNED".to_owned()
                } else {
                    format!("signed by {}", short(&p.signer))
                },
                p.abi,
                p.generation
            ),
            Self::PolicySet(p) if p.version == 0 => format!(
                "policy set for group {}: none pushed yet, floor {} ({}, kept in {})",
                p.group, p.floor, p.cause, p.floor_store
            ),
            Self::PolicySet(p) => format!(
                "policy set {} version {} sha256 {} signed by {}, floor {} ({}, kept in {})",
                p.group,
                p.version,
                short(&p.sha256),
                short(&p.signer),
                p.floor,
                p.cause,
                p.floor_store
            ),
            Self::Tamper(t) => {
                let ev = &t.event;
                let field = |k: &str| ev.get(k).and_then(|v| v.as_str()).unwrap_or("?");
                let mut s = if ev.is_null() {
                    format!("tamper attempts on {} (rate-limited)", t.file)
                } else {
                    format!(
                        "tamper attempt {}: {} of {} by {} (pid {})",
                        if t.outcome == "detected" {
                            "DETECTED (not prevented)"
                        } else {
                            &t.outcome
                        },
                        field("event"),
                        t.file,
                        ev.get("exe")
                            .and_then(|v| v.as_str())
                            .unwrap_or("an unknown executable"),
                        ev.get("pid").and_then(|v| v.as_u64()).unwrap_or(0)
                    )
                };
                if t.folded > 0 {
                    s += &format!(", {} similar attempt(s) folded", t.folded);
                }
                s
            }
            Self::Guard(g) => format!(
                "guard {}{}: {}",
                g.action,
                if g.mode.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", g.mode)
                },
                g.detail
            ),
            Self::Note(n) => n.text.clone(),
        }
    }
}

fn short(hex: &str) -> &str {
    hex.get(..16).unwrap_or(hex)
}

/// The canonical encoding of `event` measured into `pcr` (see the module
/// docs): the bytes whose SHA-256 is extended, and the TCG event data.
pub fn canonical(pcr: u32, event: &Event) -> Vec<u8> {
    // Serialising these types cannot fail: every map key is a string and
    // nothing is a non-finite float.
    serde_json::to_vec(&Canonical {
        format: FORMAT,
        pcr,
        event,
    })
    .unwrap_or_default()
}

/// SHA-256 of the canonical encoding: the digest a record extends.
pub fn digest(pcr: u32, event: &Event) -> [u8; 32] {
    Sha256::digest(canonical(pcr, event)).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> Event {
        Event::Model(ModelEvent {
            file: "/opt/models/a.onnx".into(),
            sha256: "ab".repeat(32),
            size: 7,
            manifest: "cd".repeat(32),
            entry: 0,
            cause: "boot".into(),
        })
    }

    #[test]
    fn digest_binds_kind_pcr_and_every_field() {
        let d = digest(14, &model());
        assert_ne!(d, digest(15, &model()), "the PCR is bound");
        let Event::Model(mut m) = model() else {
            unreachable!()
        };
        m.entry = 1;
        assert_ne!(
            d,
            digest(14, &Event::Model(m.clone())),
            "the entry is bound"
        );
        m.entry = 0;
        m.cause = "timer".into();
        assert_ne!(d, digest(14, &Event::Model(m)), "the cause is bound");
        let relabelled = Event::Guard(GuardEvent {
            action: "start".into(),
            mode: String::new(),
            pid: 0,
            detail: "ab".repeat(32),
        });
        assert_ne!(d, digest(14, &relabelled), "the kind is bound");
    }

    #[test]
    fn encoding_survives_a_round_trip_through_the_log() {
        let tamper = Event::Tamper(TamperEvent {
            file: "/m \"quoted\" \u{e9}\n".into(),
            outcome: "denied".into(),
            folded: 2,
            event: serde_json::json!({"z": 1, "a": {"y": "x", "b": [1, "\u{1}"]}, "m": null}),
        });
        for ev in [model(), tamper] {
            let text = serde_json::to_string(&ev).unwrap();
            let back: Event = serde_json::from_str(&text).unwrap();
            assert_eq!(canonical(14, &back), canonical(14, &ev));
        }
    }

    #[test]
    fn nested_objects_are_encoded_with_sorted_keys() {
        // The canonical form relies on serde_json's map being ordered by
        // key (no `preserve_order` feature); this fails if that changes.
        let ev = Event::Tamper(TamperEvent {
            file: "f".into(),
            outcome: "denied".into(),
            folded: 0,
            event: serde_json::from_str(r#"{"zeta":1,"alpha":2}"#).unwrap(),
        });
        let text = String::from_utf8(canonical(14, &ev)).unwrap();
        assert!(
            text.find("alpha").unwrap() < text.find("zeta").unwrap(),
            "{text}"
        );
        assert!(
            text.starts_with(r#"{"format":"guardian-event/1","pcr":14,"event":{"kind":"tamper""#)
        );
    }

    #[test]
    fn unknown_kinds_and_fields_are_refused() {
        assert!(serde_json::from_str::<Event>(r#"{"kind":"golden","file":"x"}"#).is_err());
        let mut v = serde_json::to_value(model()).unwrap();
        v["matched"] = true.into();
        assert!(serde_json::from_value::<Event>(v).is_err());
    }
}
