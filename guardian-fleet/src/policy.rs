//! Policy sets for device groups: publishing a signed set where the
//! devices read it, the sets published, and which devices are not on
//! their group's set (drift).
//!
//! A set is packed and signed offline by whoever holds the policy signing
//! key (`guardian policy pack`); the fleet only publishes it. It goes into
//! the replicated key-value bucket [`POLICY_BUCKET`], one key per group,
//! so a device that was offline reads its group's current set when it
//! returns (a JetStream direct get, answered by the servers whether or not
//! a fleet instance runs) and hears every later one on the key's subject.
//!
//! The fleet checks what a device would before publishing, so an operator
//! learns of a mistake here rather than from a fleet of refusals: the
//! signature against the fleet's copy of the policy keys, the document,
//! the group named on the command line, and a version above the one
//! published (by compare-and-set on the key's revision, so two operators
//! publishing at once cannot both win with the same version). The devices
//! check everything again and keep their own floor; the fleet's check is a
//! convenience, not the security boundary.
//!
//! Drift is judged from quoted evidence, not from the device's word: the
//! set a device has in force is the one its last verified quote's log
//! says ([`guardian_attest::attest::PolicySetInForce`], carried in the
//! attestation record), compared by digest with its group's published set.
//!
//! Owns the policy bucket. May not touch the store, the ingest stream or
//! another bucket.

use std::collections::BTreeMap;

use async_nats::jetstream::{self, kv, stream};
use futures_util::StreamExt as _;
use guardian_attest::{
    attest::PolicySetInForce,
    policy_set::{self, SetError, SignedSet},
    signing::TrustedKey,
};
use serde::{Deserialize, Serialize};

use crate::attest::Attestation;

/// The key-value bucket of published sets: key = group.
pub const POLICY_BUCKET: &str = "guardian_policy";

/// Revisions of a group's key kept (the older sets, for the record).
const HISTORY: i64 = 5;

/// Why a set was not published or the sets cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The set is not one a device would take.
    #[error("{file}: {source}")]
    Set {
        /// Where it was read.
        file: String,
        /// Why.
        #[source]
        source: SetError,
    },
    /// Its group is not the one named.
    #[error("{file}: the set is for group {set:?}, not {asked:?}")]
    Group {
        /// Where it was read.
        file: String,
        /// The set's.
        set: String,
        /// The command line's.
        asked: String,
    },
    /// Not above the version published.
    #[error(
        "{file}: group {group} is at version {published} (sha256 {digest}); a set must have a higher version to be published"
    )]
    NotNewer {
        /// Where it was read.
        file: String,
        /// The group.
        group: String,
        /// The version published.
        published: u64,
        /// Its digest.
        digest: String,
    },
    /// Another publish won the race.
    #[error("group {0}: another set was published at the same moment; look again and retry")]
    Raced(String),
    /// JetStream failed.
    #[error("{what}")]
    JetStream {
        /// What was being done.
        what: String,
        /// Why.
        #[source]
        source: async_nats::Error,
    },
}

fn js_err(what: impl Into<String>) -> impl FnOnce(async_nats::Error) -> PolicyError {
    let what = what.into();
    move |source| PolicyError::JetStream { what, source }
}

/// A group's published set, as the fleet shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    /// The group.
    pub group: String,
    /// The set's version.
    pub version: u64,
    /// SHA-256 of its document.
    pub digest: String,
    /// The signing key's fingerprint, as the fleet's keys verified it
    /// (empty when the fleet reading it has no policy keys).
    pub signer: String,
    /// When it was packed (the packer's word).
    pub created: String,
    /// Its policies' names.
    pub policies: Vec<String>,
    /// The key's revision in the bucket.
    pub revision: u64,
    /// Set when the key's current value is not this set but an older
    /// version (or not a set at all): the broker's copy was rolled back by
    /// something that bypassed `policy publish` (a replay, a direct write).
    /// Devices refuse it; the fleet still judges them by this set, the
    /// highest it published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// Where a device stands against its group's set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Drift {
    /// Its quoted log says the group's published set is in force.
    Current {
        /// The group.
        group: String,
        /// The version.
        version: u64,
    },
    /// Another set (older, or other content) is in force.
    Drifted {
        /// The group.
        group: String,
        /// The version in force (0: the image's own policies).
        version: u64,
        /// The version published for the group.
        published: u64,
    },
    /// It follows a group that has no set published.
    NoneForGroup {
        /// The group.
        group: String,
        /// The version in force.
        version: u64,
    },
    /// No verified quote says which set is in force (not attested, or the
    /// device follows no group).
    Unknown,
}

impl Drift {
    /// One word for tables and metrics.
    pub fn word(&self) -> &'static str {
        match self {
            Self::Current { .. } => "current",
            Self::Drifted { .. } => "drift",
            Self::NoneForGroup { .. } => "unpublished",
            Self::Unknown => "unknown",
        }
    }

    /// A short text: `cameras v3`, `cameras v2 (group at v3)`.
    pub fn describe(&self) -> String {
        match self {
            Self::Current { group, version } => format!("{group} v{version}"),
            Self::Drifted {
                group,
                version,
                published,
            } => format!("{group} v{version} DRIFT (group at v{published})"),
            Self::NoneForGroup { group, version } => {
                format!("{group} v{version} (no set published for the group)")
            }
            Self::Unknown => "-".to_owned(),
        }
    }

    /// Whether the device is off its group's set.
    pub fn is_drift(&self) -> bool {
        matches!(self, Self::Drifted { .. })
    }
}

/// Where `in_force` (from a device's last verified quote) stands against
/// the published sets.
pub fn drift(
    published: &BTreeMap<String, Published>,
    in_force: Option<&PolicySetInForce>,
) -> Drift {
    let Some(p) = in_force else {
        return Drift::Unknown;
    };
    match published.get(&p.group) {
        None => Drift::NoneForGroup {
            group: p.group.clone(),
            version: p.version,
        },
        Some(set) if set.digest == p.sha256 => Drift::Current {
            group: p.group.clone(),
            version: p.version,
        },
        Some(set) => Drift::Drifted {
            group: p.group.clone(),
            version: p.version,
            published: set.version,
        },
    }
}

/// A device's drift from its attestation record.
pub fn device_drift(published: &BTreeMap<String, Published>, rec: &Attestation) -> Drift {
    drift(
        published,
        rec.verdict.as_ref().and_then(|v| v.policy_set.as_ref()),
    )
}

/// The policy bucket, made if missing. Direct gets are allowed so that a
/// device reads its group's key with one request to any server.
pub async fn bucket(js: &jetstream::Context, replicas: usize) -> Result<kv::Store, PolicyError> {
    if let Ok(kv) = js.get_key_value(POLICY_BUCKET).await {
        return Ok(kv);
    }
    js.create_key_value(kv::Config {
        bucket: POLICY_BUCKET.to_owned(),
        description: "guardian policy sets, one key per device group".to_owned(),
        history: HISTORY,
        num_replicas: replicas,
        storage: stream::StorageType::File,
        // Direct gets are on for every bucket async-nats makes.
        max_value_size: policy_set::MAX_SET_BYTES as i32,
        ..Default::default()
    })
    .await
    .map_err(|e| js_err(format!("create bucket {POLICY_BUCKET}"))(e.into()))
}

/// What a stored value is, as far as the fleet can tell.
fn describe(
    group: &str,
    bytes: &[u8],
    revision: u64,
    keys: &[TrustedKey],
) -> Result<Published, SetError> {
    let signed = SignedSet::parse(bytes)?;
    let (set, signer) = if keys.is_empty() {
        // Read without keys (listing): the document is shown, not vouched for.
        let set: policy_set::PolicySet = serde_json::from_slice(&signed.document)
            .map_err(|e| SetError::Malformed(format!("document: {e}")))?;
        (set, String::new())
    } else {
        let v = signed.verify(keys)?;
        (v.set, v.signer)
    };
    Ok(Published {
        group: group.to_owned(),
        version: set.version,
        digest: signed.digest(),
        signer,
        created: set.created,
        policies: set.policies.into_iter().map(|p| p.name).collect(),
        revision,
        warning: None,
    })
}

/// Publish the signed set `bytes` (read from `file`, named in errors) for
/// `group`, after checking it as a device of the group would, with `keys`
/// (the fleet's copy of the policy keys).
pub async fn publish(
    kv: &kv::Store,
    group: &str,
    file: &str,
    bytes: &[u8],
    keys: &[TrustedKey],
) -> Result<Published, PolicyError> {
    let set_err = |source| PolicyError::Set {
        file: file.to_owned(),
        source,
    };
    policy_set::check_group(group).map_err(set_err)?;
    let signed = SignedSet::parse(bytes).map_err(set_err)?;
    let verified = signed.verify(keys).map_err(set_err)?;
    if verified.set.group != group {
        return Err(PolicyError::Group {
            file: file.to_owned(),
            set: verified.set.group,
            asked: group.to_owned(),
        });
    }
    // The highest version ever published for the group (the key's kept
    // revisions), not only the current value: a value rolled back behind
    // the fleet's back does not lower the bar.
    let history = group_history(kv, group, &[]).await?;
    if let Some(top) = history.highest.as_ref()
        && top.version >= verified.set.version
    {
        return Err(PolicyError::NotNewer {
            file: file.to_owned(),
            group: group.to_owned(),
            published: top.version,
            digest: top.digest.clone(),
        });
    }
    // The step a device accepts above its floor: a version further above
    // the last published would be refused by every device of the group.
    let base = history.highest.as_ref().map_or(0, |t| t.version);
    if verified.set.version.saturating_sub(base) > policy_set::MAX_STEP {
        return Err(PolicyError::Set {
            file: file.to_owned(),
            source: SetError::TooFar {
                version: verified.set.version,
                floor: base,
            },
        });
    }
    let current = history.current_revision;
    let value = signed.to_bytes();
    // Compare-and-set on what was read: two publishes at once cannot both
    // win, whatever their versions.
    let revision = match current {
        Some(revision) => kv
            .update(group, value.into(), revision)
            .await
            .map_err(|e| match e.kind() {
                kv::UpdateErrorKind::WrongLastRevision => PolicyError::Raced(group.to_owned()),
                _ => js_err(format!("publish group {group}"))(e.into()),
            })?,
        None => kv
            .create(group, value.into())
            .await
            .map_err(|e| match e.kind() {
                kv::CreateErrorKind::AlreadyExists => PolicyError::Raced(group.to_owned()),
                _ => js_err(format!("publish group {group}"))(e.into()),
            })?,
    };
    Ok(Published {
        group: group.to_owned(),
        version: verified.set.version,
        digest: verified.digest,
        signer: verified.signer,
        created: verified.set.created,
        policies: verified.set.policies.into_iter().map(|p| p.name).collect(),
        revision,
        warning: None,
    })
}

/// What a group's key holds over its kept revisions.
struct GroupHistory {
    /// The highest version among the sets stored (with `keys`: among those
    /// that verify).
    highest: Option<Published>,
    /// The current value's revision (a put, a delete or a purge), for the
    /// compare-and-set of the next publish.
    current_revision: Option<u64>,
    /// Why the current value is not `highest`, when it is not.
    current_warning: Option<String>,
}

/// Read every kept revision of `group`'s key.
async fn group_history(
    kv: &kv::Store,
    group: &str,
    keys: &[TrustedKey],
) -> Result<GroupHistory, PolicyError> {
    let mut out = GroupHistory {
        highest: None,
        current_revision: None,
        current_warning: None,
    };
    // (A key never written gives an empty history.)
    let mut entries = kv
        .history(group)
        .await
        .map_err(|e| js_err(format!("read group {group}"))(e.into()))?;
    let mut current: Option<Result<Published, String>> = None;
    while let Some(entry) = entries.next().await {
        let entry = entry.map_err(|e| js_err(format!("read group {group}"))(e.into()))?;
        out.current_revision = Some(entry.revision);
        if entry.operation != kv::Operation::Put {
            current = Some(Err(format!("withdrawn ({:?})", entry.operation)));
            continue;
        }
        match describe(group, &entry.value, entry.revision, keys) {
            Ok(p) => {
                if out.highest.as_ref().is_none_or(|h| p.version > h.version) {
                    out.highest = Some(p.clone());
                }
                current = Some(Ok(p));
            }
            Err(e) => {
                log::warn!(
                    "policy bucket: group {group} revision {}: {e}",
                    entry.revision
                );
                current = Some(Err(e.to_string()));
            }
        }
    }
    if let Some(top) = &out.highest {
        out.current_warning = match current {
            Some(Ok(c)) if c.revision == top.revision => None,
            Some(Ok(c)) => Some(format!(
                "the bucket's current value is version {} (revision {}), older than version {} published before it: rolled back behind the fleet (a replay, or a write that bypassed `policy publish`); devices refuse it",
                c.version, c.revision, top.version
            )),
            Some(Err(why)) => Some(format!(
                "the bucket's current value is not a set the fleet accepts ({why}); version {} is the last published",
                top.version
            )),
            None => None,
        };
    }
    Ok(out)
}

/// Every group's published set. A value that is not a set is said and
/// skipped; with `keys`, one that does not verify is too.
pub async fn published(
    js: &jetstream::Context,
    keys: &[TrustedKey],
) -> Result<BTreeMap<String, Published>, PolicyError> {
    let mut out = BTreeMap::new();
    let Ok(kv) = js.get_key_value(POLICY_BUCKET).await else {
        // No bucket: nothing was ever published.
        return Ok(out);
    };
    let mut keys_of = kv
        .keys()
        .await
        .map_err(|e| js_err("list policy groups")(e.into()))?;
    while let Some(group) = keys_of.next().await {
        let group = group.map_err(|e| js_err("list policy groups")(e.into()))?;
        let history = group_history(&kv, &group, keys).await?;
        if let Some(mut top) = history.highest {
            top.warning = history.current_warning;
            out.insert(group, top);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn published_set(group: &str, version: u64, digest: &str) -> Published {
        Published {
            group: group.into(),
            version,
            digest: digest.into(),
            signer: String::new(),
            created: String::new(),
            policies: vec!["p".into()],
            revision: 1,
            warning: None,
        }
    }

    fn in_force(group: &str, version: u64, digest: &str) -> PolicySetInForce {
        PolicySetInForce {
            group: group.into(),
            version,
            sha256: digest.into(),
            floor: version,
        }
    }

    #[test]
    fn drift_compares_the_quoted_set_with_its_groups_by_digest() {
        let mut sets = BTreeMap::new();
        sets.insert("cameras".to_owned(), published_set("cameras", 3, "c3"));
        assert_eq!(drift(&sets, None), Drift::Unknown);
        let d = drift(&sets, Some(&in_force("cameras", 3, "c3")));
        assert_eq!(d.word(), "current");
        let d = drift(&sets, Some(&in_force("cameras", 2, "c2")));
        assert!(d.is_drift());
        assert_eq!(d.describe(), "cameras v2 DRIFT (group at v3)");
        // The same version with other content is drift too: the digest is
        // what counts.
        assert!(drift(&sets, Some(&in_force("cameras", 3, "xx"))).is_drift());
        // The image's policies (version 0) on a group with a set.
        assert!(drift(&sets, Some(&in_force("cameras", 0, ""))).is_drift());
        let d = drift(&sets, Some(&in_force("doors", 1, "d1")));
        assert_eq!(d.word(), "unpublished");
        assert!(!d.is_drift());
    }
}
