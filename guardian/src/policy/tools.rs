//! What `guardian policy sign`, `inspect` and `test` do, for policy
//! authors. `cli/policy.rs` only parses arguments and prints.

use std::{
    io::{BufRead as _, Write},
    path::{Path, PathBuf},
};

use super::{
    FailMode, Limits, PolicySet, Runtime, StaticRules,
    event::JsonEvent,
    set::{Bundle, LoadError, LoadedPolicy, signature_path},
};
use crate::signing::{SignError, SigningKey, TrustedKey};

/// Errors of the author tools; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// Loading failed.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// A key.
    #[error(transparent)]
    Sign(#[from] SignError),
    /// Writing output.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `guardian policy rego` was given a module of guardian's own ABI.
    #[error("{path}: not a Rego module (it imports no env.memory and exports no opa_eval_ctx_new)")]
    NotRego {
        /// The module.
        path: PathBuf,
    },
    /// A policy set (`guardian policy pack`, `inspect`).
    #[error(transparent)]
    Set(#[from] crate::policy_set::SetError),
    /// Reading a file.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The events file.
    #[error("reading events {path}: {source}")]
    Events {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The module limits the tools check against: `config`'s `[policy]`
/// section (as an enforcing agent would apply it), else the defaults.
pub fn limits(config: Option<&crate::config::Config>) -> Limits {
    match config {
        Some(c) => super::PolicySettings::from_config(c, true).limits,
        None => Limits::default(),
    }
}

/// Check that `wasm` loads as a policy, then sign it: writes and returns
/// the signature file (`WASM.sig` unless `output` says otherwise).
pub fn sign(
    wasm: &Path,
    key: &Path,
    output: Option<&Path>,
    limits: Limits,
) -> Result<PathBuf, ToolError> {
    let bundle = Bundle::read_unsigned(wasm, limits.module_bytes)?;
    // Refuse to sign what guardian would refuse to load.
    LoadedPolicy::load(&Runtime::new(limits), &bundle)?;
    let key = SigningKey::load(key)?;
    let sig = key.sign(&bundle.wasm);
    let out = output
        .map(Path::to_owned)
        .unwrap_or_else(|| signature_path(wasm));
    std::fs::write(&out, sig).map_err(|source| ToolError::Write {
        path: out.clone(),
        source,
    })?;
    Ok(out)
}

/// `guardian policy rego`: a module made by `opa build -t wasm` (its
/// `/policy.wasm`) with `data` (JSON; none: `{}`) put into it as its data
/// section (`guardian.data`, replacing any), checked to load as a Rego
/// policy under `limits`, written to `output`: the file to sign and ship.
/// Returns what it declares.
pub fn rego(
    wasm: &Path,
    data: Option<&Path>,
    output: &Path,
    limits: Limits,
) -> Result<super::rego::RegoInfo, ToolError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| LoadError::Read {
            path: p.to_owned(),
            source,
        })
    };
    let module = read(wasm)?;
    let data = match data {
        Some(d) => read(d)?,
        None => b"{}".to_vec(),
    };
    let out = super::rego::with_data(&module, &data);
    let bundle = Bundle {
        name: output
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
            .trim_end_matches(".wasm")
            .to_owned(),
        path: output.to_owned(),
        sha256: <sha2::Sha256 as sha2::Digest>::digest(&out).into(),
        wasm: out,
        signer: None,
    };
    let loaded = LoadedPolicy::load(&Runtime::new(limits), &bundle)?;
    let Some(info) = loaded.module_info().rego.clone() else {
        return Err(ToolError::NotRego {
            path: wasm.to_owned(),
        });
    };
    std::fs::write(output, &bundle.wasm).map_err(|source| ToolError::Write {
        path: output.to_owned(),
        source,
    })?;
    Ok(info)
}

/// What `guardian policy inspect` shows.
#[derive(Debug, serde::Serialize)]
pub struct Inspection {
    /// The module file.
    pub file: PathBuf,
    /// SHA-256, hex.
    pub sha256: String,
    /// Size, bytes.
    pub size: usize,
    /// Signature state in words.
    pub signature: String,
    /// Which ABI: `guardian` or `rego`.
    pub kind: super::PolicyKind,
    /// guardian ABI version (0 for a Rego module).
    pub abi_version: u32,
    /// A Rego module's OPA ABI, entrypoints, builtins and data.
    pub rego: Option<super::rego::RegoInfo>,
    /// Exports with types.
    pub exports: Vec<String>,
    /// Imports.
    pub imports: Vec<String>,
    /// Linear memory at load, bytes.
    pub memory_bytes: usize,
    /// Its static rules.
    pub rules: StaticRules,
}

impl std::fmt::Display for Inspection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "policy      {}", self.file.display())?;
        writeln!(f, "sha256      {}", self.sha256)?;
        writeln!(f, "size        {} bytes", self.size)?;
        writeln!(f, "signature   {}", self.signature)?;
        match &self.rego {
            None => writeln!(f, "abi         version {}", self.abi_version)?,
            Some(r) => {
                writeln!(
                    f,
                    "abi         OPA Wasm {}.{} (Rego){}",
                    r.abi_major,
                    r.abi_minor,
                    if r.one_call {
                        ", one-call opa_eval"
                    } else {
                        ""
                    }
                )?;
                writeln!(
                    f,
                    "entrypoint  {} (of {})",
                    r.entrypoint,
                    r.entrypoints.join(", ")
                )?;
                writeln!(f, "builtins    {}", r.builtins.join(", "))?;
                writeln!(f, "data        {} bytes", r.data_bytes)?;
            }
        }
        writeln!(f, "memory      {} KiB at load", self.memory_bytes / 1024)?;
        writeln!(f, "imports     {}", self.imports.join(", "))?;
        writeln!(f, "exports")?;
        for e in &self.exports {
            writeln!(f, "  {e}")?;
        }
        writeln!(f, "static rules")?;
        write!(f, "{}", self.rules.render())
    }
}

/// Load a module (any signature state) and describe it. With `trusted`
/// keys, a signature file is verified; its absence or failure is reported
/// in [`Inspection::signature`], not an error.
pub fn inspect(wasm: &Path, trusted: &[PathBuf], limits: Limits) -> Result<Inspection, ToolError> {
    let bundle = Bundle::read_unsigned(wasm, limits.module_bytes)?;
    let loaded = LoadedPolicy::load(&Runtime::new(limits), &bundle)?;
    let sig = signature_path(wasm);
    let signature = if !sig.exists() {
        format!(
            "none ({} does not exist): guardian run will refuse it",
            sig.display()
        )
    } else if trusted.is_empty() {
        format!("{} present, not checked (no --key)", sig.display())
    } else {
        let keys = TrustedKey::load_all(trusted)?;
        match Bundle::read_signed(wasm, &keys, limits.module_bytes) {
            Ok(b) => match b.signer {
                Some(s) => format!(
                    "valid, {} key {} ({})",
                    s.algorithm,
                    s.fingerprint,
                    s.key.display()
                ),
                None => "valid".into(),
            },
            Err(e) => format!("INVALID: {e}"),
        }
    };
    let m = loaded.module_info();
    Ok(Inspection {
        file: wasm.to_owned(),
        sha256: bundle.sha256_hex(),
        size: bundle.wasm.len(),
        signature,
        kind: m.kind,
        abi_version: m.abi_version,
        rego: m.rego.clone(),
        exports: m.exports.clone(),
        imports: m.imports.clone(),
        memory_bytes: m.memory_bytes,
        rules: StaticRules::merge([&m.rules]),
    })
}

/// Totals of a `guardian policy test` run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TestSummary {
    /// Events evaluated.
    pub events: usize,
    /// Denied.
    pub denied: usize,
    /// Alerted.
    pub alerted: usize,
    /// Policy failures (fail mode applied).
    pub failures: usize,
    /// Lines that are not events (reported, skipped).
    pub bad_lines: usize,
}

/// Replay JSON event lines through one policy (unsigned is fine: this is
/// the author's tool) and write one verdict line per event to `out`
/// (`json`: one JSON object per line instead).
pub fn test(
    wasm: &Path,
    events: &Path,
    limits: Limits,
    fail_mode: FailMode,
    json: bool,
    out: &mut dyn Write,
) -> Result<TestSummary, ToolError> {
    let bundle = Bundle::read_unsigned(wasm, limits.module_bytes)?;
    let loaded = LoadedPolicy::load(&Runtime::new(limits), &bundle)?;
    let mut set = PolicySet::new(vec![loaded], fail_mode);
    let ev_err = |source| ToolError::Events {
        path: events.to_owned(),
        source,
    };
    let w_err = |source| ToolError::Write {
        path: PathBuf::from("-"),
        source,
    };
    let file = std::fs::File::open(events).map_err(ev_err)?;
    let mut summary = TestSummary::default();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(ev_err)?;
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let parsed = JsonEvent::parse(&line);
        let event = match parsed
            .as_ref()
            .map_err(Clone::clone)
            .and_then(|j| j.to_abi())
        {
            Ok(e) => e,
            Err(e) => {
                summary.bad_lines += 1;
                writeln!(out, "{}:{n}: not evaluated: {e}", events.display()).map_err(w_err)?;
                continue;
            }
        };
        let o = set.evaluate(&event);
        summary.events += 1;
        match o.decision {
            guardian_policy_abi::Decision::Deny => summary.denied += 1,
            guardian_policy_abi::Decision::Alert => summary.alerted += 1,
            guardian_policy_abi::Decision::Allow => {}
        }
        let failure = o.failures().next().map(|(_, e)| e.to_string());
        summary.failures += usize::from(failure.is_some());
        let rule = o.decided_by.as_ref().map(|(_, r)| *r).unwrap_or(0);
        let actions: Vec<&str> = o.actions.names().collect();
        let fuel = o.verdicts.first().map(|v| v.fuel).unwrap_or(0);
        if json {
            let v = serde_json::json!({
                "line": n,
                "event": event.kind.name(),
                "verdict": o.decision.name(),
                "rule": rule,
                "actions": actions,
                "fuel": fuel,
                "error": failure,
            });
            writeln!(out, "{v}").map_err(w_err)?;
        } else {
            let mut text = format!(
                "{n}: {} -> {}",
                super::event::describe(&event),
                o.decision.name()
            );
            if rule != 0 {
                text += &format!(" (rule {rule})");
            }
            if !actions.is_empty() {
                text += &format!(" [{}]", actions.join(", "));
            }
            if let Some(f) = failure {
                text += &format!(" POLICY FAILED: {f}; fail-{}", fail_mode.name());
            }
            text += &format!(" ({fuel} fuel)");
            writeln!(out, "{text}").map_err(w_err)?;
        }
    }
    Ok(summary)
}
