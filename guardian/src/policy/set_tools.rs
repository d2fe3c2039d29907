//! What `guardian policy pack` does, and `guardian policy inspect` given a
//! policy set: the operator's side of pushed policy sets
//! (`policy_set`, `docs/policies.md`, "Pushed policy sets"). `cli/policy.rs`
//! only parses arguments and prints.

use std::path::{Path, PathBuf};

use super::tools::ToolError;
use crate::{
    policy_set::{self, PolicySet, SignedSet},
    signing::{SigningKey, TrustedKey},
};

/// Pack the signed policies of `dir` into a set for `group` at
/// `version`, signed with the key at `key`, and write it to `output`.
/// Each module is checked to load first (as `guardian policy sign`
/// does), so a set is never packed around a module no device would take.
pub fn pack(
    dir: &Path,
    group: &str,
    version: u64,
    key: &Path,
    output: &Path,
    limits: super::Limits,
) -> Result<SetInspection, ToolError> {
    let runtime = super::Runtime::new(limits);
    for path in super::set::list_dir(dir)? {
        let bundle = super::Bundle::read_unsigned(&path, limits.module_bytes)?;
        super::set::LoadedPolicy::load(&runtime, &bundle)?;
    }
    let key = SigningKey::load(key)?;
    let created = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let signed = policy_set::pack(dir, group, version, &created, &key)?;
    let bytes = signed.to_bytes();
    std::fs::write(output, &bytes).map_err(|source| ToolError::Write {
        path: output.to_owned(),
        source,
    })?;
    inspect_bytes(output, &bytes, &[])
}

/// Whether `bytes` look like a policy set rather than a module (a module
/// starts with `\0asm`).
pub fn is_set(bytes: &[u8]) -> bool {
    !bytes.starts_with(b"\0asm") && SignedSet::parse(bytes).is_ok()
}

/// A policy set's contents, as `guardian policy inspect` shows them.
#[derive(Debug, serde::Serialize)]
pub struct SetInspection {
    /// The file.
    pub file: PathBuf,
    /// SHA-256 of the signed document: the set's identity (what the
    /// device's floor and evidence record).
    pub digest: String,
    /// The group.
    pub group: String,
    /// The version.
    pub version: u64,
    /// When it was packed.
    pub created: String,
    /// The signature in words: valid (by whom), INVALID, or not checked.
    pub signature: String,
    /// Each policy: name, SHA-256, size.
    pub policies: Vec<(String, String, usize)>,
}

impl std::fmt::Display for SetInspection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "policy set  {}", self.file.display())?;
        writeln!(f, "group       {}", self.group)?;
        writeln!(f, "version     {}", self.version)?;
        writeln!(f, "created     {}", self.created)?;
        writeln!(f, "sha256      {}", self.digest)?;
        writeln!(f, "signature   {}", self.signature)?;
        writeln!(f, "policies    {}", self.policies.len())?;
        for (name, sha, size) in &self.policies {
            writeln!(f, "  {name:<20} sha256 {sha} ({size} bytes)")?;
        }
        Ok(())
    }
}

/// Read the set at `file` and show it; its signature is checked when
/// `trusted` names keys (and with them, every check a device makes but
/// the group and the floor).
pub fn inspect(file: &Path, trusted: &[PathBuf]) -> Result<SetInspection, ToolError> {
    let bytes = std::fs::read(file).map_err(|source| ToolError::Read {
        path: file.to_owned(),
        source,
    })?;
    inspect_bytes(file, &bytes, trusted)
}

fn inspect_bytes(
    file: &Path,
    bytes: &[u8],
    trusted: &[PathBuf],
) -> Result<SetInspection, ToolError> {
    let signed = SignedSet::parse(bytes)?;
    let set: PolicySet = serde_json::from_slice(&signed.document)
        .map_err(|e| policy_set::SetError::Malformed(format!("document: {e}")))?;
    let signature = if trusted.is_empty() {
        "present, not checked (no --key)".to_owned()
    } else {
        let keys = TrustedKey::load_all(trusted)?;
        match signed.verify(&keys) {
            Ok(v) => format!("valid, key {}", v.signer),
            Err(e) => format!("INVALID: {e}"),
        }
    };
    let policies = set
        .policies
        .iter()
        .map(|p| {
            let size = p.module().map(|m| m.len()).unwrap_or(0);
            (p.name.clone(), p.sha256.clone(), size)
        })
        .collect();
    Ok(SetInspection {
        file: file.to_owned(),
        digest: signed.digest(),
        group: set.group,
        version: set.version,
        created: set.created,
        signature,
        policies,
    })
}
