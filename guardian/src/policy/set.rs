//! Signed bundles, the set of loaded policies, deny-overrides, and the
//! merged static rules.

use std::path::{Path, PathBuf};

use guardian_policy_abi::{
    Actions, Decision, Egress, Event, HEADER_SIZE, OwnedStaticRules, Verdict,
};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use super::{
    FailMode,
    module::{CallError, LoadedModule, ModuleError, ModuleInfo, PolicyKind, PolicyModule, Runtime},
    rego::RegoModule,
};
use crate::signing::{self, SignError, TrustedKey};

/// Why a policy or a set could not be loaded. Each names the file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The policy directory cannot be listed.
    #[error("policy directory {dir}: {source}")]
    Dir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A pushed set's directory held other modules than the set lists
    /// when they were loaded.
    #[error(
        "{dir}: the modules loaded are not the set's (expected {expected:?}, loaded {loaded:?}); changed behind the agent's back"
    )]
    NotTheSet {
        /// The directory.
        dir: PathBuf,
        /// The set's list: `name sha256`.
        expected: Vec<String>,
        /// What was loaded: `name sha256`.
        loaded: Vec<String>,
    },
    /// A policy has no signature file.
    #[error("{path}: unsigned (no {signature}); sign it with `guardian policy sign`")]
    Unsigned {
        /// The module.
        path: PathBuf,
        /// The signature file looked for.
        signature: PathBuf,
    },
    /// No key to verify with.
    #[error(
        "{path}: no trusted keys configured ([policy] trusted_keys or [measure] trusted_keys), so no policy can be verified"
    )]
    NoTrustedKeys {
        /// The module.
        path: PathBuf,
    },
    /// A trusted key file is unusable.
    #[error("trusted key: {0}")]
    Key(#[source] SignError),
    /// The signature does not verify with any trusted key.
    #[error(transparent)]
    Signature(SignError),
    /// The module is refused.
    #[error("{path}: {source}")]
    Module {
        /// The module.
        path: PathBuf,
        /// Why.
        #[source]
        source: ModuleError,
    },
    /// A policy could not be measured into the TPM and log, so the set was
    /// not put in force.
    #[error("measuring {path}: {source}")]
    Measure {
        /// The module.
        path: PathBuf,
        /// Why.
        #[source]
        source: super::MeasureError,
    },
}

/// Who signed a bundle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Signer {
    /// The trusted key's file.
    pub key: PathBuf,
    /// SHA-256 of its SubjectPublicKeyInfo, hex.
    pub fingerprint: String,
    /// `ed25519` or `ecdsa-p256-sha256`.
    pub algorithm: &'static str,
}

/// A policy module read from disk (and, if signed, verified).
#[derive(Clone, Debug)]
pub struct Bundle {
    /// Name: the file name without `.wasm`.
    pub name: String,
    /// The `.wasm` file.
    pub path: PathBuf,
    /// Its bytes.
    pub wasm: Vec<u8>,
    /// SHA-256 of the bytes: what is measured into the TPM.
    pub sha256: [u8; 32],
    /// Who signed it; `None` only for [`Bundle::read_unsigned`].
    pub signer: Option<Signer>,
}

/// The detached signature of a policy: `NAME.wasm.sig`.
pub fn signature_path(wasm: &Path) -> PathBuf {
    let mut s = wasm.as_os_str().to_owned();
    s.push(".sig");
    PathBuf::from(s)
}

impl Bundle {
    /// Read a module without checking any signature (`guardian policy test`
    /// and `inspect`; never for loading into the daemon).
    pub fn read_unsigned(path: &Path, limit: usize) -> Result<Self, LoadError> {
        let read_err = |source| LoadError::Read {
            path: path.to_owned(),
            source,
        };
        let size = std::fs::metadata(path).map_err(read_err)?.len();
        if size > limit as u64 {
            return Err(LoadError::Module {
                path: path.to_owned(),
                source: ModuleError::TooLarge {
                    size: usize::try_from(size).unwrap_or(usize::MAX),
                    limit,
                },
            });
        }
        let wasm = std::fs::read(path).map_err(read_err)?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
            .trim_end_matches(".wasm")
            .to_owned();
        Ok(Self {
            name,
            path: path.to_owned(),
            sha256: Sha256::digest(&wasm).into(),
            wasm,
            signer: None,
        })
    }

    /// Read a module and verify `NAME.wasm.sig` against the trusted keys.
    pub fn read_signed(
        path: &Path,
        trusted: &[TrustedKey],
        limit: usize,
    ) -> Result<Self, LoadError> {
        let mut b = Self::read_unsigned(path, limit)?;
        let sig_path = signature_path(path);
        let sig = match std::fs::read(&sig_path) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(LoadError::Unsigned {
                    path: path.to_owned(),
                    signature: sig_path,
                });
            }
            Err(source) => {
                return Err(LoadError::Read {
                    path: sig_path,
                    source,
                });
            }
        };
        if trusted.is_empty() {
            return Err(LoadError::NoTrustedKeys {
                path: path.to_owned(),
            });
        }
        let key = signing::verify(&b.wasm, &sig, trusted, path, &sig_path)
            .map_err(LoadError::Signature)?;
        b.signer = Some(Signer {
            key: key.path.clone(),
            fingerprint: key.fingerprint.clone(),
            algorithm: key.algorithm(),
        });
        Ok(b)
    }

    /// SHA-256, hex.
    pub fn sha256_hex(&self) -> String {
        hex::encode(self.sha256)
    }
}

/// The policy modules in a directory (`*.wasm`, sorted by name).
pub fn list_dir(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let dir_err = |source| LoadError::Dir {
        dir: dir.to_owned(),
        source,
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(dir_err)? {
        let p = entry.map_err(dir_err)?.path();
        if p.extension().is_some_and(|e| e == "wasm") && p.is_file() {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// A loaded policy, as `guardian status` and the verifier show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PolicyInfo {
    /// Name (file name without `.wasm`).
    pub name: String,
    /// The module file.
    pub file: PathBuf,
    /// SHA-256 of the module, hex (what was extended into the PCR).
    pub sha256: String,
    /// The signer (`None`: loaded unsigned, by `guardian policy test`).
    pub signer: Option<Signer>,
    /// Which ABI: `guardian` (its own, `policies/ABI.md`) or `rego` (OPA's
    /// Wasm ABI, `opa build -t wasm`).
    pub kind: PolicyKind,
    /// guardian ABI version (0 for a Rego module).
    pub abi_version: u32,
    /// Module size, bytes.
    pub size: usize,
}

/// One policy in a set.
#[derive(Debug)]
pub struct LoadedPolicy {
    info: PolicyInfo,
    module: PolicyModule,
}

impl LoadedPolicy {
    /// Compile and instantiate a bundle: a module of guardian's ABI, or a
    /// Rego module (OPA's Wasm ABI), told apart by its imports and exports
    /// ([`super::rego::is_opa`]). Both are signed and measured alike.
    pub fn load(runtime: &Runtime, bundle: &Bundle) -> Result<Self, LoadError> {
        let module = runtime
            .load_policy(&bundle.name, &bundle.wasm)
            .map_err(|source| LoadError::Module {
                path: bundle.path.clone(),
                source,
            })?;
        Ok(Self {
            info: PolicyInfo {
                name: bundle.name.clone(),
                file: bundle.path.clone(),
                sha256: bundle.sha256_hex(),
                signer: bundle.signer.clone(),
                kind: module.info().kind,
                abi_version: module.info().abi_version,
                size: bundle.wasm.len(),
            },
            module,
        })
    }

    /// Its description.
    pub fn info(&self) -> &PolicyInfo {
        &self.info
    }

    /// What the module declares.
    pub fn module_info(&self) -> &ModuleInfo {
        self.module.info()
    }

    /// Its host-function counters.
    pub fn counters(&self) -> &super::module::HostCounters {
        self.module.counters()
    }

    /// The module of guardian's ABI (for direct evaluation of encoded
    /// events); `None` for a Rego module.
    pub fn module_mut(&mut self) -> Option<&mut LoadedModule> {
        match &mut self.module {
            PolicyModule::Guardian(m) => Some(m),
            PolicyModule::Rego(_) => None,
        }
    }

    /// The Rego module (for direct evaluation of JSON input); `None` for
    /// a module of guardian's ABI.
    pub fn rego_mut(&mut self) -> Option<&mut RegoModule> {
        match &mut self.module {
            PolicyModule::Guardian(_) => None,
            PolicyModule::Rego(m) => Some(m),
        }
    }
}

/// One policy's answer to one event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyVerdict {
    /// The policy's name.
    pub policy: String,
    /// Its verdict, or why it gave none (then the fail mode applied).
    pub result: Result<Verdict, CallError>,
    /// Fuel used.
    pub fuel: u64,
}

/// The combined answer of a set to one event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Deny-overrides over every policy (failures count as the fail mode's
    /// decision).
    pub decision: Decision,
    /// Union of the actions every policy asked for.
    pub actions: Actions,
    /// The first policy (in load order) whose decision is [`Self::decision`],
    /// with its rule id; `None` when everything allowed.
    pub decided_by: Option<(String, u32)>,
    /// Each policy's answer, in load order.
    pub verdicts: Vec<PolicyVerdict>,
    /// The set that judged (increases by one per successful swap).
    pub generation: u64,
}

impl Outcome {
    /// The policies that failed on this event, with why.
    pub fn failures(&self) -> impl Iterator<Item = (&str, &CallError)> {
        self.verdicts.iter().filter_map(|v| match &v.result {
            Ok(_) => None,
            Err(e) => Some((v.policy.as_str(), e)),
        })
    }
}

/// Loaded policies, evaluated together.
#[derive(Debug)]
pub struct PolicySet {
    policies: Vec<LoadedPolicy>,
    rules: StaticRules,
    fail_mode: FailMode,
    generation: u64,
    buf: Vec<u8>,
    /// The event as Rego's `input`, made once per event when the set
    /// holds a Rego module.
    input: String,
    has_rego: bool,
}

/// Largest encoded event, bytes (paths are bounded by PATH_MAX).
const ENCODE_MAX: usize = 64 * 1024;

impl PolicySet {
    /// No policies: every event allowed.
    pub fn empty(fail_mode: FailMode) -> Self {
        Self::new(Vec::new(), fail_mode)
    }

    /// A set of loaded policies (evaluated in this order).
    pub fn new(policies: Vec<LoadedPolicy>, fail_mode: FailMode) -> Self {
        let rules = StaticRules::merge(policies.iter().map(|p| &p.module_info().rules));
        let has_rego = policies
            .iter()
            .any(|p| matches!(p.module, PolicyModule::Rego(_)));
        Self {
            policies,
            rules,
            fail_mode,
            generation: 0,
            buf: vec![0; ENCODE_MAX],
            input: String::new(),
            has_rego,
        }
    }

    /// Read, verify, compile and instantiate every `*.wasm` in `dir`; the
    /// first problem fails the whole set.
    pub fn load_dir(
        runtime: &Runtime,
        dir: &Path,
        trusted: &[TrustedKey],
        fail_mode: FailMode,
    ) -> Result<(Self, Vec<Bundle>), LoadError> {
        let mut bundles = Vec::new();
        let mut policies = Vec::new();
        for path in list_dir(dir)? {
            let b = Bundle::read_signed(&path, trusted, runtime.limits().module_bytes)?;
            policies.push(LoadedPolicy::load(runtime, &b)?);
            bundles.push(b);
        }
        Ok((Self::new(policies, fail_mode), bundles))
    }

    /// The policies.
    pub fn policies(&self) -> impl Iterator<Item = &LoadedPolicy> {
        self.policies.iter()
    }

    /// The policies, mutable (counters, direct evaluation).
    pub fn policies_mut(&mut self) -> impl Iterator<Item = &mut LoadedPolicy> {
        self.policies.iter_mut()
    }

    /// The merged static rules.
    pub fn rules(&self) -> &StaticRules {
        &self.rules
    }

    /// The fail mode.
    pub fn fail_mode(&self) -> FailMode {
        self.fail_mode
    }

    /// The generation.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub(super) fn set_generation(&mut self, g: u64) {
        self.generation = g;
    }

    /// Evaluate one event with every policy (all of them see every event,
    /// so stateful policies stay consistent) and combine deny-overrides.
    pub fn evaluate(&mut self, event: &Event<'_>) -> Outcome {
        let fail = self.fail_mode.decision();
        let mut out = Outcome {
            decision: Decision::Allow,
            actions: Actions::NONE,
            decided_by: None,
            verdicts: Vec::with_capacity(self.policies.len()),
            generation: self.generation,
        };
        // Encoded once for the whole set, the version 2 header learnt
        // while encoding and written in front (version 1 modules skip it).
        let prepared = match self
            .buf
            .split_at_mut_checked(HEADER_SIZE)
            .and_then(|(head, body)| {
                let (len, header) = event.encode(body)?;
                head.copy_from_slice(&header.to_bytes());
                Some(HEADER_SIZE + len)
            }) {
            Some(len) => &self.buf[..len],
            None => {
                // Cannot happen for events within PATH_MAX; if it does,
                // every policy is judged to have failed on it.
                let err = CallError::TooLarge {
                    len: ENCODE_MAX,
                    size: 0,
                };
                log::error!(
                    "policy: event {} does not encode in {ENCODE_MAX} bytes",
                    super::event::describe(event)
                );
                for p in &self.policies {
                    out.verdicts.push(PolicyVerdict {
                        policy: p.info.name.clone(),
                        result: Err(err.clone()),
                        fuel: 0,
                    });
                }
                if !self.policies.is_empty() {
                    out.decision = fail;
                    out.decided_by = self.policies.first().map(|p| (p.info.name.clone(), 0));
                }
                return out;
            }
        };
        if self.has_rego {
            super::rego::input_json(event, &mut self.input);
        }
        for p in &mut self.policies {
            let result = match &mut p.module {
                PolicyModule::Guardian(m) => m.evaluate_prepared(prepared),
                PolicyModule::Rego(m) => m.evaluate(self.input.as_bytes()),
            };
            let (decision, actions, rule) = match &result {
                Ok(v) => (v.decision, v.actions, v.rule),
                Err(_) => (fail, Actions::NONE, 0),
            };
            out.actions = out.actions.union(actions);
            if decision > out.decision {
                out.decision = decision;
                out.decided_by = Some((p.info.name.clone(), rule));
            }
            out.verdicts.push(PolicyVerdict {
                policy: p.info.name.clone(),
                result,
                fuel: p.module.last_fuel(),
            });
        }
        out
    }
}

/// The static rules of a set, merged: what goes into the kernel's maps.
///
/// Protected paths are the union of every policy's. Each allowlist is the
/// intersection of the lists of the policies that declare one (`None`: no
/// policy does, leave the configured or built-in default in force):
/// something is allowed in the kernel only if every policy with an opinion
/// allows it, which is deny-overrides again.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StaticRules {
    /// Files (or directories, ending in `/`) nobody but an allowed writer
    /// may change.
    pub protected: Vec<String>,
    /// Executables allowed to write protected files.
    pub writers: Option<Vec<String>>,
    /// Where the inference service may connect.
    pub egress: Option<Vec<EgressRule>>,
    /// Binaries the inference service may execute.
    pub service_exec: Option<Vec<String>>,
    /// Directories (ending in `/`) the inference service may load libraries from.
    pub library_dirs: Option<Vec<String>>,
}

/// An allowed destination, in std types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct EgressRule {
    /// Network address.
    pub net: std::net::IpAddr,
    /// Prefix length.
    pub prefix: u8,
    /// First allowed port.
    pub port_min: u16,
    /// Last allowed port.
    pub port_max: u16,
}

impl EgressRule {
    fn from_abi(e: &Egress) -> Self {
        Self {
            net: match e.net {
                guardian_policy_abi::IpAddr::V4(a) => a.into(),
                guardian_policy_abi::IpAddr::V6(a) => a.into(),
            },
            prefix: e.prefix,
            port_min: e.ports.0,
            port_max: e.ports.1,
        }
    }

    fn to_abi(self) -> Egress {
        Egress {
            net: match self.net {
                std::net::IpAddr::V4(a) => guardian_policy_abi::IpAddr::V4(a.octets()),
                std::net::IpAddr::V6(a) => guardian_policy_abi::IpAddr::V6(a.octets()),
            },
            prefix: self.prefix,
            ports: (self.port_min, self.port_max),
        }
    }

    /// The destinations both allow, if any.
    pub fn intersect(&self, other: &EgressRule) -> Option<EgressRule> {
        let (lo, hi) = (
            self.port_min.max(other.port_min),
            self.port_max.min(other.port_max),
        );
        if lo > hi {
            return None;
        }
        let (a, b) = (self.to_abi(), other.to_abi());
        // Two prefixes overlap only if one contains the other; the
        // intersection is then the narrower one.
        let narrower = if a.prefix >= b.prefix
            && guardian_policy_abi::prefix_match(&b.net, &a.net, b.prefix)
        {
            self
        } else if b.prefix > a.prefix && guardian_policy_abi::prefix_match(&a.net, &b.net, a.prefix)
        {
            other
        } else {
            return None;
        };
        Some(EgressRule {
            port_min: lo,
            port_max: hi,
            ..*narrower
        })
    }
}

impl std::fmt::Display for EgressRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{} ", self.net, self.prefix)?;
        if (self.port_min, self.port_max) == (0, 65535) {
            write!(f, "any port")
        } else if self.port_min == self.port_max {
            write!(f, "port {}", self.port_min)
        } else {
            write!(f, "ports {}-{}", self.port_min, self.port_max)
        }
    }
}

fn push_unique(v: &mut Vec<String>, s: &str) {
    if !v.iter().any(|x| x == s) {
        v.push(s.to_owned());
    }
}

impl StaticRules {
    /// Merge the rules of several policies.
    pub fn merge<'a>(all: impl IntoIterator<Item = &'a OwnedStaticRules>) -> Self {
        let mut out = StaticRules::default();
        for r in all {
            for p in &r.protected {
                push_unique(&mut out.protected, p);
            }
            if let Some(w) = &r.writers {
                out.writers = Some(match out.writers.take() {
                    None => dedup(w),
                    Some(prev) => prev.into_iter().filter(|x| w.contains(x)).collect(),
                });
            }
            if let Some(x) = &r.service_exec {
                out.service_exec = Some(match out.service_exec.take() {
                    None => dedup(x),
                    Some(prev) => prev.into_iter().filter(|p| x.contains(p)).collect(),
                });
            }
            if let Some(dirs) = &r.library_dirs {
                out.library_dirs = Some(match out.library_dirs.take() {
                    None => dedup(dirs),
                    Some(prev) => {
                        // A directory both allow: the deeper of two nested ones.
                        let mut v = Vec::new();
                        for a in &prev {
                            for b in dirs {
                                if guardian_policy_abi::path_matches(b, a.as_bytes()) || a == b {
                                    push_unique(&mut v, a);
                                } else if guardian_policy_abi::path_matches(a, b.as_bytes()) {
                                    push_unique(&mut v, b);
                                }
                            }
                        }
                        v
                    }
                });
            }
            if let Some(eg) = &r.egress {
                let new: Vec<EgressRule> = eg.iter().map(EgressRule::from_abi).collect();
                out.egress = Some(match out.egress.take() {
                    None => new,
                    Some(prev) => {
                        let mut v: Vec<EgressRule> = Vec::new();
                        for a in &prev {
                            for b in &new {
                                if let Some(i) = a.intersect(b)
                                    && !v.contains(&i)
                                {
                                    v.push(i);
                                }
                            }
                        }
                        v
                    }
                });
            }
        }
        out
    }

    /// Human-readable, one rule per line.
    pub fn render(&self) -> String {
        let list = |o: &Option<Vec<String>>| match o {
            None => "(no opinion)".to_owned(),
            Some(v) if v.is_empty() => "(none allowed)".to_owned(),
            Some(v) => v.join(", "),
        };
        let egress = match &self.egress {
            None => "(no opinion)".to_owned(),
            Some(v) if v.is_empty() => "(none allowed)".to_owned(),
            Some(v) => v
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        };
        format!(
            "  protected:    {}\n  writers:      {}\n  egress:       {egress}\n  service exec: {}\n  library dirs: {}\n",
            if self.protected.is_empty() {
                "(none)".to_owned()
            } else {
                self.protected.join(", ")
            },
            list(&self.writers),
            list(&self.service_exec),
            list(&self.library_dirs),
        )
    }
}

fn dedup(v: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for s in v {
        push_unique(&mut out, s);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use guardian_policy_abi::IpAddr;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn merge_is_union_of_protected_and_intersection_of_allowlists() {
        let a = OwnedStaticRules {
            protected: s(&["/opt/models/"]),
            writers: Some(s(&["/usr/sbin/updater", "/usr/bin/cp"])),
            egress: Some(vec![Egress {
                net: IpAddr::V4([10, 0, 0, 0]),
                prefix: 8,
                ports: (0, 65535),
            }]),
            service_exec: None,
            library_dirs: Some(s(&["/usr/lib/", "/opt/x/"])),
        };
        let b = OwnedStaticRules {
            protected: s(&["/etc/ld.so.preload", "/opt/models/"]),
            writers: Some(s(&["/usr/sbin/updater"])),
            egress: Some(vec![
                Egress {
                    net: IpAddr::V4([10, 1, 0, 0]),
                    prefix: 16,
                    ports: (443, 443),
                },
                Egress {
                    net: IpAddr::V4([192, 168, 0, 0]),
                    prefix: 16,
                    ports: (0, 65535),
                },
            ]),
            service_exec: Some(s(&["/usr/bin/python3"])),
            library_dirs: Some(s(&["/usr/lib/python3/", "/lib/"])),
        };
        let m = StaticRules::merge([&a, &b]);
        assert_eq!(m.protected, s(&["/opt/models/", "/etc/ld.so.preload"]));
        assert_eq!(m.writers, Some(s(&["/usr/sbin/updater"])));
        assert_eq!(m.service_exec, Some(s(&["/usr/bin/python3"])));
        assert_eq!(m.library_dirs, Some(s(&["/usr/lib/python3/"])));
        let eg = m.egress.unwrap();
        assert_eq!(eg.len(), 1);
        assert_eq!(eg[0].to_string(), "10.1.0.0/16 port 443");
        // Nobody with an opinion: none.
        let m = StaticRules::merge([&OwnedStaticRules::default()]);
        assert_eq!(m.writers, None);
        assert!(m.render().contains("(no opinion)"));
    }
}
