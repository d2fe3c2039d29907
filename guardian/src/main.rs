//! The `guardian` command: parses the command line, installs logging,
//! hands each subcommand to its module in `cli/` (which calls the library
//! and prints what it returns) and maps the outcome to an exit status.

mod cli;

use std::{io::Write as _, process::ExitCode};

use clap::{Parser, Subcommand};

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
    Run(cli::daemon::RunArgs),
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
    Measure(cli::measure::MeasureArgs),
    /// Produce an evidence bundle for a verifier: a TPM quote over the
    /// measurement PCRs with the verifier's nonce, the PCR values, this
    /// boot's measurement log up to the quote and the attestation key's
    /// public part.
    ///
    /// The attestation key is created at [attest] ak_handle on first use.
    Quote(cli::attest::QuoteArgs),
    /// On the verifier: issue a fresh nonce (32 random bytes) for a device,
    /// remembered in its state file so the next `guardian verify --state`
    /// accepts exactly one quote for it.
    Challenge(cli::attest::ChallengeArgs),
    /// Check an evidence bundle: signature by the enrolled AK, the nonce,
    /// exactly the judged PCRs quoted, every record since boot bound to its
    /// content and replayed, every manifest signed and not older than the
    /// one before, every model measurement against the manifest in force,
    /// tamper, guard and attestor records, and (with --state) reboots, TPM
    /// resets, clock rollback and findings still open.
    ///
    /// Exit status 0 trusted, 3 not trusted, 1 bad input (the state is then
    /// left unchanged).
    Verify(cli::attest::VerifyArgs),
    /// Enrol the device's attestation key: prove to a verifier, with the
    /// TPM's manufacturer-certified endorsement key, that the AK lives in
    /// that TPM (credential activation). Two steps on the device, two on
    /// the verifier; the verifier's steps need no TPM. See
    /// docs/enrolment.md.
    #[command(subcommand)]
    Enrol(cli::enrol::EnrolCommand),
    /// Create, sign and verify model manifests.
    #[command(subcommand)]
    Manifest(cli::measure::ManifestCommand),
    /// Read the measurement log: replay it against the TPM, export it.
    #[command(subcommand)]
    Log(cli::measure::LogCommand),
    /// Sign, inspect and try out WebAssembly policy modules.
    #[command(subcommand)]
    Policy(cli::policy::PolicyCommand),
    /// Show what the running daemon is doing: the mode in force and why,
    /// kernel features, attached hooks, counters (drops included), warnings.
    ///
    /// Exit status: 0 running, 3 not running or stale.
    Status(cli::daemon::StatusArgs),
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
    /// this device and this load of the guard by `guardian unload-token`;
    /// a root shell alone cannot, and a used token is refused.
    /// The unload is recorded in the measurement log and the TPM first, so
    /// the next quote shows the window without enforcement.
    ///
    /// Exit status: 0 stopped (or was not running), 1 it did not stop or
    /// the unload was refused (nothing is touched then).
    Stop(cli::daemon::StopArgs),
    /// Make an unload token: permission to switch the guard off once, on
    /// one device, for one boot, for a short time (run by the operator,
    /// with a key named in the device's [guard] unload_keys).
    ///
    /// Writes OUTPUT and OUTPUT.sig. The device's boot id and the running
    /// guard's id are in `guardian status` (the boot id also in
    /// /proc/sys/kernel/random/boot_id on the device); each load of the
    /// guard draws a new guard id, so the token unloads that guard once.
    UnloadToken(cli::daemon::UnloadTokenArgs),
}

/// Under systemd, journald priorities; otherwise `guardian: level: text`.
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
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            log::error!("{}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, each said once (a message that
/// already holds its cause's text is not followed by it again).
fn one_line(e: &anyhow::Error) -> String {
    e.chain()
        .map(ToString::to_string)
        .fold(String::new(), |acc, s| {
            if acc.is_empty() {
                s
            } else if acc.contains(&s) {
                acc
            } else {
                format!("{acc}: {s}")
            }
        })
}

fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    use cli::{attest, daemon, enrol, measure, policy};
    match command {
        Command::Run(a) => daemon::run(a),
        Command::Measure(a) => measure::measure(a),
        Command::Quote(a) => attest::quote(a),
        Command::Challenge(a) => attest::challenge(a),
        Command::Verify(a) => attest::verify(a),
        Command::Enrol(c) => enrol::enrol(c),
        Command::Manifest(c) => measure::manifest(c),
        Command::Log(c) => measure::log(c),
        Command::Policy(c) => policy::policy(c),
        Command::Status(a) => daemon::status(a),
        Command::Stop(a) => daemon::stop(a),
        Command::UnloadToken(a) => daemon::unload_token(a),
    }
}
