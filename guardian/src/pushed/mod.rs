//! Policy sets pushed by the fleet, on the device: a received set checked
//! (`policy_set`: signature, contents, group, floor), written to a
//! directory of its own under `[policy] state_dir`, and the pointer to the
//! set in force; the floor file ([`floor`]); what `guardian status` says of
//! them ([`PushStatus`]).
//!
//! On disk (`[policy] state_dir`, one of guardian's own trees):
//!
//! | path | what |
//! |---|---|
//! | `floor.json` | the floor: group, version and digest of the last set put in force |
//! | `sets/<version>/` | a set: `NAME.wasm` + `NAME.wasm.sig` per policy, and `set.json` (the signed set as received, so the directory can be checked again against its signature) |
//! | `sets/current` | a symbolic link to the version in force, replaced atomically |
//!
//! Owns those files. It may not load policies (the engine does, from the
//! directory written here), touch the TPM (the attestor keeps the NV
//! floor) or decide when a set goes in force (the daemon does, in order:
//! written, loaded, pointed to, floor raised, recorded).

pub mod floor;

use std::{
    collections::BTreeMap,
    io::Write as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::{
    config::PolicyConfig,
    policy_set::{SetError, SignedSet, VerifiedSet},
    signing::{SignError, TrustedKey},
};

/// The signed set as received, kept beside its policies.
pub const SET_FILE: &str = "set.json";

/// Why a pushed set was not put in force (the set in force stays).
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The set itself: malformed, untrusted, for another group, not above
    /// the floor, ...
    #[error(transparent)]
    Set(#[from] SetError),
    /// The trusted policy keys could not be read.
    #[error("the trusted policy keys")]
    Keys(#[source] SignError),
    /// A policy of the set did not load (its own signature, its ABI, its
    /// limits).
    #[error("policy set version {version}: its policies did not load: {source}")]
    Load {
        /// The set's version.
        version: u64,
        /// Why.
        #[source]
        source: crate::policy::LoadError,
    },
    /// Writing the set's directory or its pointer.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The set's directory no longer holds what was signed.
    #[error("the pushed set in {dir} is not the set signed for it: {what}")]
    Tampered {
        /// The directory.
        dir: PathBuf,
        /// What differs.
        what: String,
    },
}

impl PushError {
    /// The reason, as `guardian status` counts refusals.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Set(e) => match e {
                SetError::Malformed(_) => "malformed",
                SetError::TooLarge(_) => "too_large",
                SetError::Untrusted(_) => "untrusted",
                SetError::NoTrustedKeys => "no_trusted_keys",
                SetError::Digest(_) => "digest",
                SetError::Empty => "empty",
                SetError::Name(..) => "name",
                SetError::Group(_) => "group_name",
                SetError::WrongGroup { .. } => "wrong_group",
                SetError::Older { .. } => "older",
                SetError::SameVersion { .. } => "same_version",
                SetError::TooFar { .. } => "too_far",
                SetError::Io { .. } => "io",
            },
            Self::Keys(_) => "keys",
            Self::Load { .. } => "load",
            Self::Io { .. } => "io",
            Self::Tampered { .. } => "tampered",
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PushError + '_ {
    move |source| PushError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Make the state directory (owner only) if it is missing, so that the
/// guard takes it among guardian's own trees from the start.
pub fn make_state_dir(cfg: &PolicyConfig) -> Result<(), PushError> {
    use std::os::unix::fs::DirBuilderExt as _;
    for d in [&cfg.state_dir, &cfg.sets_dir()] {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(d)
            .map_err(io(d))?;
    }
    Ok(())
}

/// Parse and verify `bytes` with `trusted`.
pub fn verify(bytes: &[u8], trusted: &[TrustedKey]) -> Result<VerifiedSet, PushError> {
    Ok(SignedSet::parse(bytes)?.verify(trusted)?)
}

/// The directory of `version`.
pub fn version_dir(cfg: &PolicyConfig, version: u64) -> PathBuf {
    cfg.sets_dir().join(version.to_string())
}

/// Write the verified set's policies (and the set as received, `wire`)
/// into a fresh directory for its version, every file and the directory
/// synced, and return it. A directory left by an earlier attempt at the
/// same version (one that never went in force) is replaced.
pub fn write_set(cfg: &PolicyConfig, set: &VerifiedSet, wire: &[u8]) -> Result<PathBuf, PushError> {
    let sets = cfg.sets_dir();
    std::fs::create_dir_all(&sets).map_err(io(&sets))?;
    let dir = version_dir(cfg, set.set.version);
    let tmp = sets.join(format!(".{}.tmp", set.set.version));
    for d in [&tmp, &dir] {
        clear(d)?;
    }
    std::fs::create_dir(&tmp).map_err(io(&tmp))?;
    let write = |name: &str, bytes: &[u8]| -> Result<(), PushError> {
        let p = tmp.join(name);
        let mut f = std::fs::File::create(&p).map_err(io(&p))?;
        f.write_all(bytes).map_err(io(&p))?;
        f.sync_all().map_err(io(&p))
    };
    for p in &set.set.policies {
        write(&format!("{}.wasm", p.name), &p.module()?)?;
        write(&format!("{}.wasm.sig", p.name), &p.signature_bytes()?)?;
    }
    write(SET_FILE, wire)?;
    sync_dir(&tmp)?;
    // The directory appears whole under its version's name, or not at all.
    std::fs::rename(&tmp, &dir).map_err(io(&dir))?;
    sync_dir(&sets)?;
    Ok(dir)
}

/// Remove whatever is at `path`, without following it: a directory
/// (with what it holds), or a file or a symbolic link (dangling or not) put
/// there in its place, which would otherwise make every write of this
/// version fail.
fn clear(path: &Path) -> Result<(), PushError> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(path)(e)),
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path).map_err(io(path)),
        Ok(_) => std::fs::remove_file(path).map_err(io(path)),
    }
}

fn sync_dir(dir: &Path) -> Result<(), PushError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

/// Point `sets/current` at `version`'s directory: a new link under a
/// temporary name, renamed over the old one (atomic), the directory synced.
pub fn make_current(cfg: &PolicyConfig, version: u64) -> Result<(), PushError> {
    let sets = cfg.sets_dir();
    let link = cfg.current_set();
    let tmp = sets.join(".current.tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(version.to_string(), &tmp).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &link).map_err(io(&link))?;
    sync_dir(&sets)
}

/// The directory `sets/current` points to, if it points anywhere.
pub fn current(cfg: &PolicyConfig) -> Option<PathBuf> {
    let target = std::fs::read_link(cfg.current_set()).ok()?;
    // Only a version's directory beside the link counts: a link elsewhere
    // is not one guardian made.
    let name = target.to_str()?;
    name.parse::<u64>().ok()?;
    Some(cfg.sets_dir().join(name))
}

/// Remove the version directories other than `keep` (and leftovers of
/// interrupted writes). What cannot be removed is logged and left.
pub fn prune(cfg: &PolicyConfig, keep: u64) {
    let sets = cfg.sets_dir();
    let Ok(entries) = std::fs::read_dir(&sets) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let old_version = name.parse::<u64>().is_ok_and(|v| v != keep);
        let leftover = name.starts_with('.') && name.ends_with(".tmp");
        if (old_version || leftover)
            && e.file_type().is_ok_and(|t| t.is_dir())
            && let Err(err) = std::fs::remove_dir_all(e.path())
        {
            log::warn!("policy sets: cannot remove {}: {err}", e.path().display());
        }
    }
}

/// Check that `dir` still holds exactly the set signed for it: `set.json`
/// verifies with `trusted` and is for `group`, and the directory's
/// policies are the set's, byte for byte (module and signature file).
/// The policy loader checks each module's own signature after this.
pub fn check_dir(
    dir: &Path,
    trusted: &[TrustedKey],
    group: &str,
) -> Result<VerifiedSet, PushError> {
    let tampered = |what: String| PushError::Tampered {
        dir: dir.to_owned(),
        what,
    };
    let wire_path = dir.join(SET_FILE);
    let wire = std::fs::read(&wire_path).map_err(io(&wire_path))?;
    let set = verify(&wire, trusted).map_err(|e| tampered(format!("{SET_FILE}: {e}")))?;
    if set.set.group != group {
        return Err(tampered(format!(
            "{SET_FILE} is for group {:?}, this device is in {group:?}",
            set.set.group
        )));
    }
    if dir.file_name().and_then(|n| n.to_str()) != Some(&set.set.version.to_string()) {
        return Err(tampered(format!(
            "{SET_FILE} is version {}, the directory is not named so",
            set.set.version
        )));
    }
    let mut on_disk: BTreeMap<String, ()> = BTreeMap::new();
    for e in std::fs::read_dir(dir).map_err(io(dir))? {
        let name = e
            .map_err(io(dir))?
            .file_name()
            .to_string_lossy()
            .into_owned();
        if name != SET_FILE {
            on_disk.insert(name, ());
        }
    }
    for p in &set.set.policies {
        for (file, want) in [
            (format!("{}.wasm", p.name), p.module()?),
            (format!("{}.wasm.sig", p.name), p.signature_bytes()?),
        ] {
            if on_disk.remove(&file).is_none() {
                return Err(tampered(format!("{file} is missing")));
            }
            let path = dir.join(&file);
            let got = std::fs::read(&path).map_err(io(&path))?;
            if Sha256::digest(&got) != Sha256::digest(&want) {
                return Err(tampered(format!("{file} is not the file the set signs")));
            }
        }
    }
    if let Some(extra) = on_disk.keys().next() {
        return Err(tampered(format!("{extra} is not part of the set")));
    }
    Ok(set)
}

/// A set in force, as the status shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetInForce {
    /// Its version.
    pub version: u64,
    /// SHA-256 of its signed document.
    pub digest: String,
    /// Fingerprint of the key that signed it.
    pub signer: String,
    /// Its policies' names.
    pub policies: Vec<String>,
    /// Where it was loaded from.
    pub dir: String,
}

/// The last set received and what became of it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Received {
    /// When (RFC 3339).
    pub at: String,
    /// How it came: `watch`, `direct-get`.
    pub via: String,
    /// Its version, if it could be read.
    pub version: Option<u64>,
    /// Its digest, if it could be read.
    pub digest: Option<String>,
    /// `in_force` (put in force now), `already_in_force`, `refused`.
    pub outcome: String,
    /// Why it was refused, or what happened, in words.
    pub detail: String,
}

/// What `guardian status` (and the status summary sent to the fleet)
/// says of pushed policy sets.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushStatus {
    /// The device's group.
    pub group: String,
    /// The pushed set in force; `None`: the image's `[policy] dir`.
    pub in_force: Option<SetInForce>,
    /// The floor: no set below it goes in force.
    pub floor: u64,
    /// The floor's digest (empty when only the NV index knew the floor).
    pub floor_digest: String,
    /// Where the floor is kept: `tpm-nv` and `file`, or `file`.
    pub floor_store: String,
    /// The NV index, if one is kept (hex).
    pub floor_nv_index: Option<String>,
    /// Why the NV index is not kept, if it is configured and failed.
    pub floor_nv_error: Option<String>,
    /// The last set received.
    pub last_received: Option<Received>,
    /// Sets received.
    pub received: u64,
    /// Of which put in force.
    pub put_in_force: u64,
    /// Of which refused (the set in force stayed).
    pub refused: u64,
    /// Refusals by reason (`older`, `same_version`, `wrong_group`,
    /// `untrusted`, `empty`, `malformed`, `load`, `tampered`, ...).
    pub refused_by_reason: BTreeMap<String, u64>,
    /// The last refusal, in words.
    pub last_refusal: Option<String>,
    /// Times the floor's stores (file, NV index) disagreed.
    pub floor_disagreements: u64,
    /// Errors keeping the floor or the pointer (the set went in force,
    /// but a store lags; see the log).
    pub store_errors: u64,
}

impl PushStatus {
    /// Count a refusal.
    pub fn refuse(&mut self, e: &PushError) {
        self.refused += 1;
        *self
            .refused_by_reason
            .entry(e.reason().to_owned())
            .or_default() += 1;
        self.last_refusal = Some(format!("{}: {e}", e.reason()));
    }

    /// Warnings for `guardian status`.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.refused > 0 {
            w.push(format!(
                "policy sets: {} pushed set(s) refused (the set in force stayed); last: {}",
                self.refused,
                self.last_refusal.as_deref().unwrap_or("-")
            ));
        }
        if self.in_force.is_none() && self.floor > 0 {
            w.push(format!(
                "policy sets: the floor is version {} but no pushed set is in force: the image's policy directory is",
                self.floor
            ));
        }
        if let Some(e) = &self.floor_nv_error {
            w.push(format!("policy sets: the floor's TPM NV index: {e}"));
        }
        if self.floor_disagreements > 0 {
            w.push(format!(
                "policy sets: the floor's stores disagreed {} time(s) (the higher was kept)",
                self.floor_disagreements
            ));
        }
        if self.store_errors > 0 {
            w.push(format!(
                "policy sets: {} error(s) keeping the floor or the pointer to the set in force",
                self.store_errors
            ));
        }
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What sits where a version's directory goes (a file, a dangling
    /// link, a link to a directory elsewhere) is replaced, and a link is
    /// never followed: the directory it pointed to is left alone.
    #[test]
    fn a_version_directory_replaces_whatever_was_planted_in_its_place() {
        let d = tempfile::tempdir().unwrap();
        let cfg = PolicyConfig {
            group: "cameras".into(),
            state_dir: d.path().join("state"),
            ..PolicyConfig::default()
        };
        let policies = d.path().join("policies");
        std::fs::create_dir(&policies).unwrap();
        std::fs::write(policies.join("p.wasm"), b"\0asm").unwrap();
        std::fs::write(policies.join("p.wasm.sig"), b"sig").unwrap();
        let secret = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap();
        let pem = {
            use p256::pkcs8::{EncodePublicKey as _, LineEnding};
            secret
                .verifying_key()
                .to_public_key_pem(LineEnding::LF)
                .unwrap()
        };
        let key = crate::signing::SigningKey::P256(secret);
        let trusted = TrustedKey::from_pem(&pem, Path::new("k.pem")).unwrap();
        let wire = crate::policy_set::pack(&policies, "cameras", 5, "t", &key)
            .unwrap()
            .to_bytes();
        let set = verify(&wire, &[trusted]).unwrap();
        let elsewhere = d.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::fs::write(elsewhere.join("keep"), b"x").unwrap();
        let planted = version_dir(&cfg, 5);
        std::fs::create_dir_all(cfg.sets_dir()).unwrap();
        for plant in 0..3 {
            let _ = clear(&planted);
            match plant {
                0 => std::fs::write(&planted, b"a file").unwrap(),
                1 => std::os::unix::fs::symlink("/nonexistent", &planted).unwrap(),
                _ => std::os::unix::fs::symlink(&elsewhere, &planted).unwrap(),
            }
            let dir = write_set(&cfg, &set, &wire).unwrap();
            assert!(
                std::fs::symlink_metadata(&dir).unwrap().is_dir(),
                "plant {plant}"
            );
            assert_eq!(std::fs::read(dir.join("p.wasm")).unwrap(), b"\0asm");
        }
        assert!(elsewhere.join("keep").exists(), "a link is not followed");
    }
}
