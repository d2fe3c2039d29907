//! The `guardian` command: parses the command line, installs logging, loads
//! the config and hands over to the library.

use std::{io::Write as _, path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use guardian::config::{Config, ModeRequest};

/// Integrity guardian for AI inference on edge boards.
///
/// guardian measures model files into a TPM at boot, guards them and the
/// inference process at runtime with eBPF (denied in the kernel with BPF
/// LSM; denied from userspace or reported without it), judges every event
/// with signed WebAssembly policies, and proves its state to a verifier
/// with TPM quotes.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// Log level: error, warn, info, debug or trace.
    #[arg(long, global = true, env = "GUARDIAN_LOG", default_value = "info")]
    log_level: log::LevelFilter,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the guard daemon: load the eBPF programs, protect the configured
    /// files, print security events as JSON lines until SIGINT/SIGTERM.
    ///
    /// With BPF LSM the kernel refuses every change to a protected file, to
    /// the directories and mounts on its path, to guardian's own files and
    /// kernel objects, and the service's rule breaks (mode enforce).
    /// Without it, each hook falls back, and says so in `guardian status`:
    /// write-opens denied from userspace by fanotify permission events,
    /// other changes reported by fanotify notification events and the path
    /// check, egress denied by cgroup programs (mode detect); syscall
    /// tracepoints only with `[guard] syscall_detect = true`. Under systemd
    /// it signals readiness and feeds the watchdog. Needs root (or CAP_BPF,
    /// CAP_PERFMON, CAP_SYS_ADMIN).
    Run {
        /// The config file.
        #[arg(long, short, env = "GUARDIAN_CONFIG", default_value = guardian::config::DEFAULT_PATH)]
        config: PathBuf,
        /// Override [guard] mode: auto, enforce or detect.
        #[arg(long)]
        mode: Option<ModeRequest>,
        /// Override [events] output: "-" for stdout or a file to append to.
        #[arg(long)]
        events: Option<String>,
    },
    /// Measure the models named in the signed manifest into the TPM: the
    /// boot step that runs before the inference service.
    ///
    /// Every model is hashed (SHA-256, in parallel), recorded in the
    /// measurement log, then extended into the manifest's PCR (default 14),
    /// after the manifest itself. A model that does not match its golden
    /// digest is still extended (the PCR reflects what is on disk) and
    /// reported as a JSON `model_mismatch` event on stdout.
    ///
    /// Exit status: 0 every model matches (inference may start), 3 a model
    /// does not match, 1 the measurement could not be made (nothing was
    /// extended: missing or unreadable model, bad manifest or signature,
    /// corrupt log, no TPM).
    Measure {
        /// The config file ([measure] section).
        #[arg(long, short, env = "GUARDIAN_CONFIG", default_value = guardian::config::DEFAULT_PATH)]
        config: PathBuf,
        /// Development only: log the measurements without any TPM. Loudly
        /// warned, and recorded in the log as not extended.
        #[arg(long)]
        no_tpm: bool,
    },
    /// Produce an evidence bundle for a verifier: a TPM quote over the
    /// measurement PCRs with the verifier's nonce, the PCR values, this
    /// boot's measurement log up to the quote and the attestation key's
    /// public part.
    ///
    /// The attestation key is created at [attest] ak_handle on first use.
    Quote {
        /// The verifier's nonce, hex (16 to 64 bytes; `guardian challenge`
        /// on the verifier makes one).
        #[arg(long)]
        nonce: String,
        /// The config ([attest], [measure] log and tcti).
        #[arg(long, short, env = "GUARDIAN_CONFIG", default_value = guardian::config::DEFAULT_PATH)]
        config: PathBuf,
        /// Write the bundle here (default: stdout).
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Also write the AK public key (PEM) here, for enrolment.
        #[arg(long)]
        ak_out: Option<PathBuf>,
        /// Also write the raw quote (TPMS_ATTEST) and signature
        /// (TPMT_SIGNATURE) as PREFIX.msg and PREFIX.sig, for tpm2_checkquote.
        #[arg(long)]
        raw: Option<PathBuf>,
    },
    /// On the verifier: issue a fresh nonce (32 random bytes) for a device,
    /// remembered in its state file so the next `guardian verify --state`
    /// accepts exactly one quote for it.
    Challenge {
        /// The device's verifier state (created on first use).
        #[arg(long)]
        state: PathBuf,
        /// The device's AK public key (PEM), trusted as given: needs
        /// --insecure-tofu. Binds a new state to it.
        #[arg(long, required_unless_present = "device", conflicts_with = "device")]
        ak: Option<PathBuf>,
        /// The device's enrolment record (`guardian enrol finish`).
        #[arg(long)]
        device: Option<PathBuf>,
        /// Accept an AK given with --ak without proof that a certified TPM
        /// holds it (trust on first use).
        #[arg(long, requires = "ak")]
        insecure_tofu: bool,
    },
    /// Check an evidence bundle: signature by the enrolled AK, the nonce,
    /// exactly the judged PCRs quoted, every record since boot bound to its
    /// content and replayed, every manifest signed and not older than the
    /// one before, every model measurement against the manifest in force,
    /// tamper, guard and attestor records, and (with --state) reboots, TPM
    /// resets, clock rollback and findings still open.
    ///
    /// Exit status 0 trusted, 3 not trusted, 1 bad input (the state is then
    /// left unchanged).
    Verify {
        /// The evidence bundle (from `guardian quote`).
        #[arg(long)]
        evidence: PathBuf,
        /// The AK public key (PEM) the device showed, trusted as it is:
        /// needs --insecure-tofu, and the verdict says so.
        #[arg(long, required_unless_present = "device", conflicts_with = "device")]
        ak: Option<PathBuf>,
        /// The device's enrolment record (`guardian enrol finish`): its AK,
        /// proven resident in a TPM whose EK a trusted CA certifies.
        #[arg(long)]
        device: Option<PathBuf>,
        /// Accept an AK given with --ak without proof that a certified TPM
        /// holds it (trust on first use); recorded in the verdict.
        #[arg(long, requires = "ak")]
        insecure_tofu: bool,
        /// A key manifests must be signed by (PEM); repeatable.
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
        /// Pin a golden manifest: the one in force must be it or newer.
        #[arg(long)]
        manifest: Option<PathBuf>,
        /// The PCRs the quote must cover, exactly (default: the golden
        /// manifest's, else 14).
        #[arg(long = "pcr")]
        pcrs: Vec<u32>,
        /// The nonce the verifier issued, hex (not needed with a --state
        /// that holds one from `guardian challenge`).
        #[arg(long)]
        nonce: Option<String>,
        /// The device's verifier state: the issued nonce, TPM counters,
        /// open findings. Read and updated. Without it, reboots, resets and
        /// rollbacks are not checked (said in the verdict).
        #[arg(long)]
        state: Option<PathBuf>,
        /// Acknowledge an open finding in --state (its id, or `all`) before
        /// judging; repeatable.
        #[arg(long, requires = "state")]
        ack: Vec<String>,
        /// Fail when no runtime guard started this boot.
        #[arg(long)]
        require_guard: bool,
        /// Print the verdict as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Enrol the device's attestation key: prove to a verifier, with the
    /// TPM's manufacturer-certified endorsement key, that the AK lives in
    /// that TPM (credential activation). Two steps on the device, two on
    /// the verifier; the verifier's steps need no TPM. See
    /// docs/enrolment.md.
    #[command(subcommand)]
    Enrol(EnrolCommand),
    /// Create, sign and verify model manifests.
    #[command(subcommand)]
    Manifest(ManifestCommand),
    /// Read the measurement log: replay it against the TPM, export it.
    #[command(subcommand)]
    Log(LogCommand),
    /// Sign, inspect and try out WebAssembly policy modules.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Show what the running daemon is doing: the mode in force and why,
    /// kernel features, attached hooks, counters (drops included), warnings.
    ///
    /// Exit status: 0 running, 3 not running or stale.
    Status {
        /// Read the status file named in this config.
        #[arg(long, short, env = "GUARDIAN_CONFIG")]
        config: Option<PathBuf>,
        /// Read this status file directly.
        #[arg(long, conflicts_with = "config")]
        status_file: Option<PathBuf>,
        /// Print the raw JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Stop the running daemon (SIGTERM, then wait for it).
    ///
    /// The kernel programs stay attached: they are pinned under
    /// [guard] pin_dir, so the guard keeps enforcing with no agent running
    /// and the next `guardian run` adopts them. With --unload the pins are
    /// removed too, which detaches the programs: the only way to switch the
    /// guard off (for an upgrade of guardian itself, say).
    ///
    /// Unloading takes a token signed by one of the operator keys the
    /// guard was loaded with ([guard] unload_keys), made for this boot of
    /// this device by `guardian unload-token`; a root shell alone cannot.
    /// The unload is recorded in the measurement log and the TPM first, so
    /// the next quote shows the window without enforcement.
    ///
    /// Exit status: 0 stopped (or was not running), 1 it did not stop or
    /// the unload was refused (nothing is touched then).
    Stop {
        /// The config file ([status] path, [guard] pin_dir).
        #[arg(long, short, env = "GUARDIAN_CONFIG", default_value = guardian::config::DEFAULT_PATH)]
        config: PathBuf,
        /// Also remove the pins: the kernel stops enforcing.
        #[arg(long)]
        unload: bool,
        /// The unload token (its signature beside it, TOKEN.sig).
        #[arg(long, value_name = "TOKEN", requires = "unload")]
        token: Option<PathBuf>,
    },
    /// Make an unload token: permission to switch the guard off on one
    /// device, for one boot, for a short time (run by the operator, with a
    /// key named in the device's [guard] unload_keys).
    ///
    /// Writes OUTPUT and OUTPUT.sig. The device's boot id is in `guardian
    /// status` (and /proc/sys/kernel/random/boot_id on the device).
    UnloadToken {
        /// The operator's private key (PEM; Ed25519 or ECDSA P-256).
        #[arg(long)]
        key: PathBuf,
        /// Its public key (PEM), carried in the token.
        #[arg(long = "pub", value_name = "PUBLIC_KEY")]
        public: PathBuf,
        /// The device's boot id.
        #[arg(long)]
        boot_id: String,
        /// How long the token is good for, in seconds (at most a day).
        #[arg(long, default_value_t = 900)]
        valid_secs: u64,
        /// Why, in words: goes into the device's evidence with the unload.
        #[arg(long, default_value = "maintenance")]
        reason: String,
        /// Where to write the token.
        #[arg(long, short)]
        output: PathBuf,
    },
}

#[derive(Subcommand)]
enum EnrolCommand {
    /// Device, step 1: the enrolment request (EK certificate, EK and AK
    /// public areas, device identity). Creates the AK if there is none.
    Request {
        /// The config ([measure] tcti, [attest] ak_handle).
        #[arg(long, short, env = "GUARDIAN_CONFIG", default_value = guardian::config::DEFAULT_PATH)]
        config: PathBuf,
        /// Where to write the request (JSON).
        #[arg(long, short)]
        output: PathBuf,
    },
    /// Verifier, step 2: check a request (EK certificate chain to a CA
    /// given here, AK attributes) and make a credential only that TPM can
    /// open. Writes the challenge for the device, and the pending secret
    /// to keep (mode 0600, never sent).
    Challenge {
        /// The device's request.
        #[arg(long)]
        request: PathBuf,
        /// A trusted EK CA certificate (PEM; roots and intermediates);
        /// repeatable.
        #[arg(long = "ca", required = true)]
        cas: Vec<PathBuf>,
        /// Where to write the challenge (JSON).
        #[arg(long, short)]
        output: PathBuf,
        /// Where to keep the pending secret (JSON).
        #[arg(long)]
        pending: PathBuf,
    },
    /// Device, step 3: answer the challenge (TPM2_ActivateCredential with
    /// the AK and the EK).
    Activate {
        /// The config ([measure] tcti, [attest] ak_handle).
        #[arg(long, short, env = "GUARDIAN_CONFIG", default_value = guardian::config::DEFAULT_PATH)]
        config: PathBuf,
        /// The verifier's challenge.
        #[arg(long)]
        challenge: PathBuf,
        /// Where to write the response (JSON).
        #[arg(long, short)]
        output: PathBuf,
    },
    /// Verifier, step 4: check the device's answer against the pending
    /// secret and write the enrolment record `guardian verify --device`
    /// takes.
    ///
    /// Exit status: 0 enrolled, 1 refused (the record is not written).
    Finish {
        /// The device's request (the one challenged).
        #[arg(long)]
        request: PathBuf,
        /// The pending secret from `enrol challenge`.
        #[arg(long)]
        pending: PathBuf,
        /// The device's response.
        #[arg(long)]
        response: PathBuf,
        /// Where to write the enrolment record (JSON).
        #[arg(long, short)]
        output: PathBuf,
    },
}

#[derive(Subcommand)]
enum ManifestCommand {
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
enum PolicyCommand {
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
    /// and signer.
    Inspect {
        /// The policy module (.wasm).
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
}

#[derive(Subcommand)]
enum LogCommand {
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

fn init_logging(level: log::LevelFilter) {
    // Under systemd, stderr goes to the journal: prefix each line with its
    // syslog priority (journald reads "<N>") and leave timestamps to it.
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    // tss-esapi logs every TPM error it returns, which we report ourselves
    // with context; keep its records for debugging only.
    let tss_level = if level >= log::LevelFilter::Debug {
        level
    } else {
        log::LevelFilter::Off
    };
    env_logger::Builder::new()
        .filter_level(level)
        .filter_module("tss_esapi", tss_level)
        .format(move |buf, record| {
            if journal {
                let prio = match record.level() {
                    log::Level::Error => 3,
                    log::Level::Warn => 4,
                    log::Level::Info => 6,
                    _ => 7,
                };
                writeln!(buf, "<{prio}>{}", record.args())
            } else {
                writeln!(
                    buf,
                    "guardian: {}: {}",
                    record.level().as_str().to_lowercase(),
                    record.args()
                )
            }
        })
        .init();
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => log::info!("SIGTERM received, stopping"),
                _ = int.recv() => log::info!("SIGINT received, stopping"),
            }
        }
        _ => {
            log::error!("cannot install signal handlers; stop with SIGKILL");
            std::future::pending::<()>().await;
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The TSS C libraries print their own warnings to stderr; quiet unless
    // asked for (TSS2_LOG is theirs, e.g. TSS2_LOG=all+debug).
    if std::env::var_os("TSS2_LOG").is_none() {
        // SAFETY: single-threaded at this point; nothing reads the
        // environment concurrently.
        unsafe { std::env::set_var("TSS2_LOG", "all+none") };
    }
    init_logging(cli.log_level);
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            // One line: the error and its causes.
            let msg = e
                .chain()
                .map(ToString::to_string)
                .fold(String::new(), |acc, s| {
                    if acc.is_empty() {
                        s
                    } else if acc.contains(&s) {
                        acc
                    } else {
                        format!("{acc}: {s}")
                    }
                });
            log::error!("{msg}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run {
            config,
            mode,
            events,
        } => {
            let mut cfg = Config::load(&config, |k| std::env::var(k).ok())?;
            if let Some(m) = mode {
                cfg.guard.mode = m;
            }
            if let Some(e) = events {
                cfg.events.output = e;
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            rt.block_on(guardian::run(cfg, shutdown_signal()))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Measure { config, no_tpm } => {
            let cfg = Config::load(&config, |k| std::env::var(k).ok())?;
            let mut out = std::io::stdout().lock();
            let o = guardian::measure::measure(&cfg.measure, no_tpm, &mut out)?;
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
        Command::Quote {
            nonce,
            config,
            output,
            ak_out,
            raw,
        } => {
            let cfg = Config::load(&config, |k| std::env::var(k).ok())?;
            let nonce = guardian::attest::parse_nonce(&nonce)?;
            let (ev, quote) = guardian::attest::bundle::quote(&cfg, &nonce)?;
            if let Some(p) = ak_out {
                std::fs::write(&p, &ev.ak_public_pem)
                    .with_context(|| format!("writing {}", p.display()))?;
            }
            if let Some(prefix) = raw {
                let with = |ext: &str| {
                    let mut s = prefix.as_os_str().to_owned();
                    s.push(ext);
                    PathBuf::from(s)
                };
                std::fs::write(with(".msg"), &quote.attest).context("writing the raw quote")?;
                std::fs::write(with(".sig"), &quote.signature)
                    .context("writing the raw signature")?;
            }
            let json = serde_json::to_vec_pretty(&ev)?;
            match output {
                Some(p) => {
                    std::fs::write(&p, json).with_context(|| format!("writing {}", p.display()))?
                }
                None => {
                    let mut out = std::io::stdout().lock();
                    out.write_all(&json)?;
                    out.write_all(b"\n")?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Challenge {
            state,
            ak,
            device,
            insecure_tofu,
        } => {
            use guardian::attest::DeviceState;
            let (key, _) = ak_of(ak.as_deref(), device.as_deref(), insecure_tofu)?;
            let mut st = match DeviceState::read(&state)? {
                Some(st) => st,
                None => DeviceState::new(key.to_encoded_point(false).as_bytes()),
            };
            let nonce = hex::encode(guardian::attest::bundle::fresh_nonce()?);
            st.pending_nonce = Some(nonce.clone());
            st.save(&state)?;
            println!("{nonce}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify {
            evidence,
            ak,
            device,
            insecure_tofu,
            keys,
            manifest,
            pcrs,
            nonce,
            state,
            ack,
            require_guard,
            json,
        } => {
            use guardian::attest::DeviceState;
            // Every input first: a bad one changes nothing.
            let ev = guardian::attest::read_evidence(&evidence)?;
            let (ak, insecure_ak) = ak_of(ak.as_deref(), device.as_deref(), insecure_tofu)?;
            let manifest_keys = guardian::signing::TrustedKey::load_all(&keys)?;
            let golden = match &manifest {
                Some(p) => {
                    let bytes =
                        std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
                    let text = std::str::from_utf8(&bytes)
                        .map_err(|_| anyhow::anyhow!("{}: not UTF-8", p.display()))?;
                    let m = guardian::manifest::Manifest::parse(text)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
                    Some((bytes, m.pcr))
                }
                None => None,
            };
            let pcrs = if !pcrs.is_empty() {
                pcrs
            } else {
                vec![
                    golden
                        .as_ref()
                        .map_or(guardian::manifest::DEFAULT_PCR, |g| g.1),
                ]
            };
            for p in &pcrs {
                guardian::manifest::check_pcr(*p).map_err(|e| anyhow::anyhow!("--pcr {p}: {e}"))?;
            }
            let mut st = match &state {
                Some(path) => Some(match DeviceState::read(path)? {
                    Some(st) => st,
                    None => DeviceState::new(ak.to_encoded_point(false).as_bytes()),
                }),
                None => None,
            };
            if let (Some(st), Some(path)) = (st.as_mut(), &state) {
                for id in &ack {
                    let n = st.acknowledge(id, "acknowledged by the operator", path)?;
                    eprintln!("acknowledged {n} finding(s) ({id})");
                }
            }
            let nonce = match (nonce, st.as_ref().and_then(|s| s.pending_nonce.clone())) {
                (Some(n), _) | (None, Some(n)) => guardian::attest::parse_nonce(&n)?,
                (None, None) => anyhow::bail!(
                    "no nonce: give --nonce, or issue one with `guardian challenge --state`"
                ),
            };
            let mut verdict = guardian::attest::verify(
                &ev,
                &guardian::attest::Trust {
                    ak: &ak,
                    nonce: &nonce,
                    pcrs: &pcrs,
                    manifest_keys: &manifest_keys,
                    golden: golden.as_ref().map(|g| g.0.as_slice()),
                    require_guard,
                },
                st.as_mut(),
            );
            if let Some(why) = &insecure_ak {
                verdict.warnings.push(format!("INSECURE: {why}"));
            }
            if let (Some(st), Some(path)) = (&st, &state) {
                st.save(path)?;
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&verdict)?);
            } else {
                print!("{}", verdict.render());
            }
            Ok(if verdict.trusted {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            })
        }
        Command::Enrol(cmd) => enrol_cmd(cmd),
        Command::Manifest(cmd) => manifest_cmd(cmd),
        Command::Log(cmd) => log_cmd(cmd),
        Command::Policy(cmd) => policy_cmd(cmd),
        Command::UnloadToken {
            key,
            public,
            boot_id,
            valid_secs,
            reason,
            output,
        } => {
            let sk = guardian::signing::SigningKey::load(&key)?;
            let pem = std::fs::read_to_string(&public)
                .with_context(|| format!("reading {}", public.display()))?;
            let pk = guardian::signing::TrustedKey::from_pem(&pem, &public)?;
            let (bytes, sig) = guardian::unload::create(&sk, &pem, &boot_id, valid_secs, &reason);
            if !pk.verifies_detached(&bytes, &sig) {
                anyhow::bail!(
                    "{} is not the public half of {}",
                    public.display(),
                    key.display()
                );
            }
            std::fs::write(&output, &bytes)
                .with_context(|| format!("writing {}", output.display()))?;
            let sig_path = guardian::manifest::signature_path(&output);
            std::fs::write(&sig_path, &sig)
                .with_context(|| format!("writing {}", sig_path.display()))?;
            eprintln!(
                "wrote {} and {}: unload permission for boot {boot_id}, good for {} s, signed by key {}",
                output.display(),
                sig_path.display(),
                valid_secs.min(guardian::unload::MAX_VALID),
                pk.fingerprint
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Stop {
            config,
            unload,
            token,
        } => {
            let config = Config::load(&config, |k| std::env::var(k).ok())?;
            let report = guardian::stop(&config, unload, token.as_deref())?;
            for line in report {
                eprintln!("{line}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status {
            config,
            status_file,
            json,
        } => {
            let path = match (status_file, config) {
                (Some(p), _) => p,
                (None, Some(c)) => Config::load(&c, |k| std::env::var(k).ok())?.status.path,
                (None, None) => guardian::config::default_status_path(),
            };
            let st = match guardian::status::Status::read(&path) {
                Ok(st) => st,
                Err(e @ guardian::status::StatusError::NotRunning { .. }) => {
                    println!("{e}");
                    return Ok(ExitCode::from(3));
                }
                Err(e) => return Err(e.into()),
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                print!("{}", st.render());
            }
            Ok(if st.agent_alive() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            })
        }
    }
}

/// The AK to verify with: given as a PEM key (trusted as given, only with
/// `insecure_tofu`), or from an enrolment record; and, when it was not
/// proven, why (for the verdict).
fn ak_of(
    ak: Option<&std::path::Path>,
    device: Option<&std::path::Path>,
    insecure_tofu: bool,
) -> anyhow::Result<(p256::ecdsa::VerifyingKey, Option<String>)> {
    match (ak, device) {
        (Some(p), _) => {
            if !insecure_tofu {
                anyhow::bail!(
                    "--ak {}: an AK given as a key is trusted on first use, without proof that a certified TPM holds it; enrol the device (`guardian enrol`) and pass --device, or say --insecure-tofu",
                    p.display()
                );
            }
            let why = format!(
                "AK {} trusted on first use (--insecure-tofu), not enrolled",
                p.display()
            );
            eprintln!("guardian: warning: {why}");
            Ok((guardian::attest::read_ak(p)?, Some(why)))
        }
        (None, Some(p)) => {
            let rec: guardian::enrol::Enrolled = read_json(p)?;
            let why = rec.insecure_tofu.then(|| {
                format!(
                    "{}: enrolled on first use, without proof of a certified TPM",
                    p.display()
                )
            });
            if let Some(w) = &why {
                eprintln!("guardian: warning: {w}");
            }
            use p256::pkcs8::DecodePublicKey as _;
            let key = p256::ecdsa::VerifyingKey::from_public_key_pem(&rec.ak_public_pem).map_err(
                |_| anyhow::anyhow!("{}: ak_public_pem is not a P-256 key", p.display()),
            )?;
            Ok((key, why))
        }
        (None, None) => anyhow::bail!("--ak or --device is needed"),
    }
}

/// Read a JSON file, naming it in the error.
fn read_json<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> anyhow::Result<T> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_slice(&bytes)
        .with_context(|| format!("{}: not a valid message", path.display()))
}

/// Write a JSON file (0600 when `secret`), naming it in the error.
fn write_json<T: serde::Serialize>(
    path: &std::path::Path,
    value: &T,
    secret: bool,
) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut text = serde_json::to_vec_pretty(value)?;
    text.push(b'\n');
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(&text)
        .with_context(|| format!("cannot write {}", path.display()))
}

fn enrol_cmd(cmd: EnrolCommand) -> anyhow::Result<ExitCode> {
    use guardian::enrol;
    let device_tpm = |config: &std::path::Path| -> anyhow::Result<(guardian::tpm::Tpm, u32)> {
        let cfg = Config::load(config, |k| std::env::var(k).ok())?;
        let tcti =
            guardian::tpm::choose_tcti(cfg.measure.tcti.as_deref(), |k| std::env::var(k).ok());
        Ok((guardian::tpm::Tpm::open(&tcti)?, cfg.attest.ak_handle))
    };
    match cmd {
        EnrolCommand::Request { config, output } => {
            let (mut tpm, handle) = device_tpm(&config)?;
            let req = enrol::request(&mut tpm, handle)?;
            write_json(&output, &req, false)?;
            eprintln!(
                "wrote the enrolment request to {} (AK at handle {handle:#010x}): send it to the verifier",
                output.display()
            );
        }
        EnrolCommand::Challenge {
            request,
            cas,
            output,
            pending,
        } => {
            let req: enrol::Request = read_json(&request)?;
            let cas = enrol::load_ca_certs(&cas)?;
            let (ch, secret) = enrol::challenge(&req, &cas)
                .map_err(|e| anyhow::anyhow!("{}: refused: {e}", request.display()))?;
            write_json(&pending, &secret, true)?;
            write_json(&output, &ch, false)?;
            eprintln!(
                "{}: EK certified by {} ({}); challenge {} written to {}, secret kept in {}",
                request.display(),
                secret.ek_issuer,
                secret.ek_subject,
                ch.id,
                output.display(),
                pending.display()
            );
        }
        EnrolCommand::Activate {
            config,
            challenge,
            output,
        } => {
            let (mut tpm, handle) = device_tpm(&config)?;
            let ch: enrol::Challenge = read_json(&challenge)?;
            let resp = enrol::activate(&mut tpm, handle, &ch)?;
            write_json(&output, &resp, false)?;
            eprintln!("wrote the response to {}", output.display());
        }
        EnrolCommand::Finish {
            request,
            pending,
            response,
            output,
        } => {
            let req: enrol::Request = read_json(&request)?;
            let secret: enrol::PendingSecret = read_json(&pending)?;
            let resp: enrol::Response = read_json(&response)?;
            let rec = match enrol::finish(&req, secret, &resp) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("guardian: enrolment refused: {e}");
                    return Ok(ExitCode::FAILURE);
                }
            };
            write_json(&output, &rec, false)?;
            eprintln!(
                "enrolled: AK {} of {} is resident in the TPM whose EK {} certifies; record in {}",
                rec.ak_name,
                rec.device.hostname,
                rec.ek_issuer.as_deref().unwrap_or("?"),
                output.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn manifest_cmd(cmd: ManifestCommand) -> anyhow::Result<ExitCode> {
    use guardian::manifest::{self, Entry, Manifest};
    match cmd {
        ManifestCommand::Create {
            paths,
            key,
            output,
            pcr,
            serial,
        } => {
            manifest::check_pcr(pcr).map_err(anyhow::Error::msg)?;
            let serial = match serial {
                Some(s) => s,
                None => std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .context("the clock is before 1970")?
                    .as_secs(),
            };
            let key = guardian::signing::SigningKey::load(&key)?;
            let mut files = Vec::new();
            for p in &paths {
                let p = std::path::absolute(p).with_context(|| format!("{}", p.display()))?;
                collect(&p, &mut files)?;
            }
            files.sort();
            files.dedup();
            let digests = guardian::hashing::hash_files(&files, 0)
                .into_iter()
                .collect::<Result<Vec<_>, _>>()?;
            let models = files
                .iter()
                .zip(&digests)
                .map(|(p, d)| Entry {
                    path: p.clone(),
                    sha256: hex::encode(d.sha256),
                    size: d.size,
                    name: p.file_stem().map(|s| s.to_string_lossy().into_owned()),
                    version: None,
                })
                .collect();
            let m = Manifest {
                version: manifest::VERSION,
                pcr,
                serial,
                models,
            };
            m.check().map_err(anyhow::Error::msg)?;
            let sig = manifest::write_signed(&m, &output, &key)?;
            println!(
                "wrote {} ({} models, PCR {pcr}, serial {serial}) and its signature {}",
                output.display(),
                m.models.len(),
                sig.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        ManifestCommand::Verify {
            manifest: path,
            config,
            keys,
            signature,
            files,
        } => {
            let cfg = match &config {
                Some(c) => Some(Config::load(c, |k| std::env::var(k).ok())?),
                None => None,
            };
            let path = path
                .or_else(|| cfg.as_ref().map(|c| c.measure.manifest.clone()))
                .context("no manifest given (argument or --config)")?;
            let keys = if keys.is_empty() {
                cfg.as_ref()
                    .map(|c| c.measure.trusted_keys.clone())
                    .unwrap_or_default()
            } else {
                keys
            };
            let trusted = keys
                .iter()
                .map(|k| guardian::signing::TrustedKey::load(k))
                .collect::<Result<Vec<_>, _>>()?;
            let sig = signature.unwrap_or_else(|| manifest::signature_path(&path));
            let loaded = manifest::load(&path, &sig, &trusted, false)?;
            if let manifest::Authenticity::Signed {
                key,
                fingerprint,
                algorithm,
            } = &loaded.authenticity
            {
                println!(
                    "{}: valid {algorithm} signature by {} (sha256 {fingerprint}); {} models, PCR {}",
                    path.display(),
                    key.display(),
                    loaded.manifest.models.len(),
                    loaded.manifest.pcr
                );
            }
            if !files {
                return Ok(ExitCode::SUCCESS);
            }
            let paths: Vec<PathBuf> = loaded
                .manifest
                .models
                .iter()
                .map(|e| e.path.clone())
                .collect();
            let mut bad = 0;
            for (e, r) in loaded
                .manifest
                .models
                .iter()
                .zip(guardian::hashing::hash_files(&paths, 0))
            {
                match r {
                    Ok(d) if hex::encode(d.sha256) == e.sha256 && d.size == e.size => {
                        println!("  ok        {}", e.path.display());
                    }
                    Ok(d) => {
                        bad += 1;
                        println!(
                            "  MISMATCH  {} sha256 {}",
                            e.path.display(),
                            hex::encode(d.sha256)
                        );
                    }
                    Err(err) => {
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

/// Regular files under `p` (or `p` itself).
fn collect(p: &std::path::Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let meta = std::fs::metadata(p).with_context(|| format!("{}", p.display()))?;
    if meta.is_dir() {
        for e in std::fs::read_dir(p).with_context(|| format!("{}", p.display()))? {
            let e = e?;
            let ft = e.file_type()?;
            if ft.is_dir() || ft.is_file() {
                collect(&e.path(), out)?;
            }
        }
    } else if meta.is_file() {
        out.push(p.to_owned());
    } else {
        anyhow::bail!("{}: not a regular file or directory", p.display());
    }
    Ok(())
}

fn policy_limits(config: Option<&std::path::Path>) -> anyhow::Result<guardian::policy::Limits> {
    Ok(match config {
        Some(c) => {
            let config = Config::load(c, |k| std::env::var(k).ok())?;
            guardian::policy::PolicySettings::from_config(&config, true).limits
        }
        None => guardian::policy::Limits::default(),
    })
}

fn policy_cmd(cmd: PolicyCommand) -> anyhow::Result<ExitCode> {
    use guardian::policy::{FailMode, tools};
    match cmd {
        PolicyCommand::Sign {
            policy,
            key,
            output,
            config,
        } => {
            let limits = policy_limits(config.as_deref())?;
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
            let limits = policy_limits(config.as_deref())?;
            let i = tools::inspect(&policy, &keys, limits)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&i)?);
            } else {
                print!("{i}");
            }
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Test {
            policy,
            events,
            fail_mode,
            json,
            config,
        } => {
            let limits = policy_limits(config.as_deref())?;
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
    }
}

fn log_cmd(cmd: LogCommand) -> anyhow::Result<ExitCode> {
    use guardian::evidence;
    match cmd {
        LogCommand::Replay { config, pcr } => {
            let cfg = Config::load(&config, |k| std::env::var(k).ok())?;
            let pcr = match pcr {
                Some(p) => p,
                None => {
                    let text = std::fs::read_to_string(&cfg.measure.manifest)
                        .with_context(|| format!("reading {}", cfg.measure.manifest.display()))?;
                    guardian::manifest::Manifest::parse(&text)
                        .map_err(anyhow::Error::msg)
                        .with_context(|| format!("{}", cfg.measure.manifest.display()))?
                        .pcr
                }
            };
            let contents = evidence::log::read(&cfg.measure.log)?;
            if contents.torn_bytes > 0 {
                log::warn!(
                    "{}: torn last record of {} bytes ignored",
                    cfg.measure.log.display(),
                    contents.torn_bytes
                );
            }
            let boot = evidence::boot_id();
            let replay = contents.replay(pcr, &boot);
            let tcti =
                guardian::tpm::choose_tcti(cfg.measure.tcti.as_deref(), |k| std::env::var(k).ok());
            let actual = guardian::tpm::Tpm::open(&tcti)?.read(pcr)?;
            let n = contents
                .extended_this_boot(&boot)
                .filter(|r| r.pcr == pcr)
                .count();
            println!(
                "pcr {pcr} sha256 replayed from {n} record(s): {}",
                hex::encode(replay)
            );
            println!(
                "pcr {pcr} sha256 in the TPM:                 {}",
                hex::encode(actual)
            );
            if replay == actual {
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
            let cfg = Config::load(&config, |k| std::env::var(k).ok())?;
            let contents = evidence::log::read(&cfg.measure.log)?;
            let boot = evidence::boot_id();
            let bytes = if format == "tcg" {
                evidence::export::tcg(&contents, &boot)
            } else {
                evidence::export::cel(&contents, &boot)
            };
            match output {
                Some(p) => {
                    std::fs::write(&p, bytes).with_context(|| format!("writing {}", p.display()))?
                }
                None => std::io::stdout().lock().write_all(&bytes)?,
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
