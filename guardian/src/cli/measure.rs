//! `guardian measure`, `manifest` and `log`: measured boot, its signed
//! manifests and its log.

use std::{io::Write as _, path::PathBuf, process::ExitCode};

use clap::{Args, Subcommand};
use guardian::measure::tools::{self, ExportFormat, FileCheck};

use super::load_config;

/// The arguments of `guardian measure`.
#[derive(Args)]
pub struct MeasureArgs {
    /// The config file ([measure] section).
    #[arg(long, short, env = "GUARDIAN_CONFIG", default_value = guardian::config::DEFAULT_PATH)]
    pub config: PathBuf,
    /// Development only: log the measurements without any TPM. Loudly
    /// warned, and recorded in the log as not extended.
    #[arg(long)]
    pub no_tpm: bool,
}

#[derive(Subcommand)]
pub enum ManifestCommand {
    /// Hash model files and write a signed manifest (OUTPUT and OUTPUT.sig).
    ///
    /// Directories are walked for regular files. The key is a PEM private
    /// key: Ed25519 (`openssl genpkey -algorithm ed25519`) or ECDSA P-256.
    Create {
        /// Model files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Signing key (PEM).
        #[arg(long)]
        key: PathBuf,
        /// The manifest to write.
        #[arg(long, short)]
        output: PathBuf,
        /// PCR to measure into (8-15).
        #[arg(long, default_value_t = guardian::manifest::DEFAULT_PCR)]
        pcr: u32,
        /// The manifest's serial: higher than every manifest published
        /// before it (verifiers refuse an older one). Default: the time
        /// in seconds since 1970.
        #[arg(long)]
        serial: Option<u64>,
    },
    /// Turn an OpenSSF model signature (`model_signing sign key|certificate`)
    /// into a guardian manifest signed with the operator's key, after
    /// verifying it with the trusted keys or CA certificates and checking
    /// every file of the model directory against it.
    Import {
        /// The model signature (Sigstore bundle JSON, e.g. model.sig).
        bundle: PathBuf,
        /// The model directory it signs.
        #[arg(long)]
        dir: PathBuf,
        /// A public key (PEM) or CA certificates (PEM) the model signature
        /// must be made with; repeatable.
        #[arg(long = "trust", required = true)]
        trust: Vec<PathBuf>,
        /// The operator's signing key for the manifest (PEM).
        #[arg(long)]
        key: PathBuf,
        /// The manifest to write.
        #[arg(long, short)]
        output: PathBuf,
        /// PCR to measure into (8-15).
        #[arg(long, default_value_t = guardian::manifest::DEFAULT_PCR)]
        pcr: u32,
        /// The manifest's serial (default: the time in seconds since 1970).
        #[arg(long)]
        serial: Option<u64>,
    },
    /// Check a manifest's format and signature; with --files, also that
    /// the files on this machine match it.
    Verify {
        /// The manifest (default: [measure] manifest of the config).
        manifest: Option<PathBuf>,
        /// The config, for the manifest path and the trusted keys.
        #[arg(long, short, env = "GUARDIAN_CONFIG")]
        config: Option<PathBuf>,
        /// Trusted public key (PEM); repeatable. Replaces the config's.
        #[arg(long = "key")]
        keys: Vec<PathBuf>,
        /// The signature file (default: MANIFEST.sig).
        #[arg(long)]
        signature: Option<PathBuf>,
        /// Also hash the files and compare.
        #[arg(long)]
        files: bool,
    },
}

#[derive(Subcommand)]
pub enum LogCommand {
    /// Recompute this boot's PCR value from the log and compare it with the
    /// TPM. Exit status 0 when they agree, 3 when they do not.
    Replay {
        /// The config ([measure] log, manifest for the PCR, tcti).
        #[arg(long, short, env = "GUARDIAN_CONFIG", default_value = guardian::config::DEFAULT_PATH)]
        config: PathBuf,
        /// PCR to replay (default: the manifest's).
        #[arg(long)]
        pcr: Option<u32>,
    },
    /// Export this boot's measurements for other tools.
    Export {
        /// The config ([measure] log).
        #[arg(long, short, env = "GUARDIAN_CONFIG", default_value = guardian::config::DEFAULT_PATH)]
        config: PathBuf,
        /// `tcg`: TCG PC Client binary event log (for `tpm2_eventlog`);
        /// `cel`: TCG Canonical Event Log JSON records (a JSON text sequence,
        /// as systemd writes its own measurement log).
        #[arg(long, value_parser = ["tcg", "cel"])]
        format: String,
        /// Output file (default: stdout).
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

/// `guardian measure`: 0 every model matches, 3 one does not.
pub fn measure(a: MeasureArgs) -> anyhow::Result<ExitCode> {
    let cfg = load_config(&a.config)?;
    let mut out = std::io::stdout().lock();
    let o = guardian::measure::measure(&cfg.measure, a.no_tpm, &mut out)?;
    let value = o.tpm_value.map(hex::encode);
    log::info!(
        "measured {} model(s) into PCR {}: {} extend(s), {} mismatch(es); log replays to {}{}",
        o.models,
        o.pcr,
        o.extended,
        o.mismatches.len(),
        hex::encode(o.replay),
        match &value {
            Some(v) if *v == hex::encode(o.replay) => ", equal to the TPM".to_owned(),
            Some(v) => format!(", but the TPM holds {v}"),
            None => " (no TPM)".to_owned(),
        }
    );
    Ok(if o.mismatches.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

/// `guardian manifest …`.
pub fn manifest(cmd: ManifestCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ManifestCommand::Create {
            paths,
            key,
            output,
            pcr,
            serial,
        } => {
            let (m, sig) = tools::create_manifest(&paths, &key, &output, pcr, serial)?;
            println!(
                "wrote {} ({} models, PCR {pcr}, serial {}) and its signature {}",
                output.display(),
                m.models.len(),
                m.serial,
                sig.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        ManifestCommand::Import {
            bundle,
            dir,
            trust,
            key,
            output,
            pcr,
            serial,
        } => {
            let (m, sig, signer) =
                tools::import_model_signature(&bundle, &dir, &trust, &key, &output, pcr, serial)?;
            println!(
                "{}: model signature by {signer} verified, {} files match; wrote {} (PCR {pcr}, serial {}) and its signature {}",
                bundle.display(),
                m.models.len(),
                output.display(),
                m.serial,
                sig.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        ManifestCommand::Verify {
            manifest,
            config,
            keys,
            signature,
            files,
        } => {
            let cfg = config.as_deref().map(load_config).transpose()?;
            let loaded = tools::verify_manifest(manifest, cfg.as_ref(), keys, signature)?;
            if let guardian::manifest::Authenticity::Signed {
                key,
                fingerprint,
                algorithm,
            } = &loaded.authenticity
            {
                println!(
                    "{}: valid {algorithm} signature by {} (sha256 {fingerprint}); {} models, PCR {}",
                    loaded.path.display(),
                    key.display(),
                    loaded.manifest.models.len(),
                    loaded.manifest.pcr
                );
            }
            if !files {
                return Ok(ExitCode::SUCCESS);
            }
            let mut bad = 0;
            for check in tools::check_files(&loaded.manifest) {
                match check {
                    FileCheck::Match(e) => println!("  ok        {}", e.path.display()),
                    FileCheck::Mismatch(e, digest) => {
                        bad += 1;
                        println!("  MISMATCH  {} sha256 {digest}", e.path.display());
                    }
                    FileCheck::Unreadable(_, err) => {
                        bad += 1;
                        println!("  ERROR     {err}");
                    }
                }
            }
            Ok(if bad == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            })
        }
    }
}

/// `guardian log …`.
pub fn log(cmd: LogCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        LogCommand::Replay { config, pcr } => {
            let r = tools::replay(&load_config(&config)?, pcr)?;
            let pcr = r.pcr;
            println!(
                "pcr {pcr} sha256 replayed from {} record(s): {}",
                r.records,
                hex::encode(r.replayed)
            );
            println!(
                "pcr {pcr} sha256 in the TPM:                 {}",
                hex::encode(r.tpm)
            );
            if r.matches() {
                println!("match");
                Ok(ExitCode::SUCCESS)
            } else {
                println!("MISMATCH: the log does not explain the PCR");
                Ok(ExitCode::from(3))
            }
        }
        LogCommand::Export {
            config,
            format,
            output,
        } => {
            let format = if format == "tcg" {
                ExportFormat::Tcg
            } else {
                ExportFormat::Cel
            };
            if let Some(bytes) = tools::export(&load_config(&config)?, format, output.as_deref())? {
                std::io::stdout().lock().write_all(&bytes)?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
