//! `guardian policy`: the policy author's tools (sign, inspect, test,
//! rego) and the operator's (pack a set for a device group).

use std::{path::PathBuf, process::ExitCode};

use clap::Subcommand;
use guardian::policy::{FailMode, set_tools, tools};

use super::load_config;

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Check that a module loads as a policy (ABI, exports, limits), then
    /// write its detached signature (POLICY.sig unless --output).
    ///
    /// Ed25519 or ECDSA P-256 PEM private key; `openssl pkeyutl -sign
    /// -rawin` or `openssl dgst -sha256 -sign` make the same signatures.
    Sign {
        /// The policy module (.wasm).
        policy: PathBuf,
        /// Signing key (PEM).
        #[arg(long)]
        key: PathBuf,
        /// Where to write the signature.
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Take the module limits from this config's [policy] section.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Show a module's ABI version, exports, imports, static rules, digest
    /// and signer; or, given a policy set (`guardian policy pack`), its
    /// group, version, digest, policies and signer.
    Inspect {
        /// The policy module (.wasm), or a policy set.
        policy: PathBuf,
        /// Trusted public key (PEM) to check POLICY.sig with; repeatable.
        #[arg(long = "key")]
        keys: Vec<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Take the module limits from this config's [policy] section.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Pack a directory of signed policies (NAME.wasm + NAME.wasm.sig) into
    /// a policy set for a device group, signed with KEY, for the fleet to
    /// publish (`docs/policies.md`, "Pushed policy sets"). Every module is
    /// checked to load first; the version must be above every version the
    /// group's devices have put in force.
    Pack {
        /// The directory of signed policies.
        dir: PathBuf,
        /// The device group (1-64 of A-Z a-z 0-9 _ -).
        #[arg(long)]
        group: String,
        /// The set's version (monotonic per group).
        #[arg(long)]
        version: u64,
        /// The policy signing key (PEM): one the devices trust for policies.
        #[arg(long)]
        key: PathBuf,
        /// Where to write the set.
        #[arg(long, short)]
        output: PathBuf,
        /// Take the module limits from this config's [policy] section.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Replay recorded events (the JSON lines `guardian run` prints)
    /// through a policy and print each verdict. The module need not be
    /// signed. Exit status 0, or 1 if a line was not an event.
    Test {
        /// The policy module (.wasm).
        policy: PathBuf,
        /// JSON event lines.
        #[arg(long)]
        events: PathBuf,
        /// What a policy failure counts as: closed (deny) or open (alert).
        #[arg(long, default_value = "closed", value_parser = ["closed", "open"])]
        fail_mode: String,
        /// One JSON object per verdict.
        #[arg(long)]
        json: bool,
        /// Take the module limits (fuel, memory, size) from this config.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Make a Rego policy from `opa build -t wasm` output: put the data
    /// document into the module (signed and measured with it), check that
    /// it loads, write it. Then `guardian policy sign` it.
    ///
    /// `opa build -t wasm -e guardian/verdict policy.rego && tar -xzf
    /// bundle.tar.gz /policy.wasm`
    Rego {
        /// The module (`policy.wasm` of the bundle).
        policy: PathBuf,
        /// The data document (JSON); none: `{}`.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Where to write the policy (`NAME.wasm`).
        #[arg(long, short)]
        output: PathBuf,
        /// Take the module limits from this config's [policy] section.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

/// The module limits: from `config`'s `[policy]`, else the defaults.
fn limits(config: Option<&std::path::Path>) -> anyhow::Result<guardian::policy::Limits> {
    let config = config.map(load_config).transpose()?;
    Ok(tools::limits(config.as_ref()))
}

/// `guardian policy …`.
pub fn policy(cmd: PolicyCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        PolicyCommand::Sign {
            policy,
            key,
            output,
            config,
        } => {
            let limits = limits(config.as_deref())?;
            let sig = tools::sign(&policy, &key, output.as_deref(), limits)?;
            println!("signed {} -> {}", policy.display(), sig.display());
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Inspect {
            policy,
            keys,
            json,
            config,
        } => {
            let head = std::fs::read(&policy).unwrap_or_default();
            if set_tools::is_set(&head) {
                let i = set_tools::inspect(&policy, &keys)?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&i)?);
                } else {
                    print!("{i}");
                }
                return Ok(ExitCode::SUCCESS);
            }
            let limits = limits(config.as_deref())?;
            let i = tools::inspect(&policy, &keys, limits)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&i)?);
            } else {
                print!("{i}");
            }
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Pack {
            dir,
            group,
            version,
            key,
            output,
            config,
        } => {
            let limits = limits(config.as_deref())?;
            let i = set_tools::pack(&dir, &group, version, &key, &output, limits)?;
            println!(
                "packed {} polic{} from {} -> {}: group {}, version {}, sha256 {}",
                i.policies.len(),
                if i.policies.len() == 1 { "y" } else { "ies" },
                dir.display(),
                output.display(),
                i.group,
                i.version,
                i.digest
            );
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Test {
            policy,
            events,
            fail_mode,
            json,
            config,
        } => {
            let limits = limits(config.as_deref())?;
            let mode = if fail_mode == "open" {
                FailMode::Open
            } else {
                FailMode::Closed
            };
            let mut out = std::io::stdout().lock();
            let s = tools::test(&policy, &events, limits, mode, json, &mut out)?;
            eprintln!(
                "{} events: {} denied, {} alerted, {} policy failures; {} lines not evaluated",
                s.events, s.denied, s.alerted, s.failures, s.bad_lines
            );
            Ok(if s.bad_lines > 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        PolicyCommand::Rego {
            policy,
            data,
            output,
            config,
        } => {
            let limits = limits(config.as_deref())?;
            let info = tools::rego(&policy, data.as_deref(), &output, limits)?;
            println!(
                "{} -> {}: OPA Wasm ABI {}.{}, entrypoint {}, {} bytes of data",
                policy.display(),
                output.display(),
                info.abi_major,
                info.abi_minor,
                info.entrypoint,
                info.data_bytes
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
