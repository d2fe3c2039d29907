//! The `guardian` command: parses the command line, installs logging, loads
//! the config and hands over to the library.

use std::{io::Write as _, path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use guardian::config::{Config, ModeRequest};

/// Integrity guardian for AI inference on edge boards.
///
/// guardian protects model files and the inference process: eBPF programs
/// in the kernel deny (BPF LSM) or report (tracepoints) every attempt to
/// open a protected file for writing by a process that is not an allowed
/// writer, and each attempt becomes a JSON security event.
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
    /// On a kernel with BPF LSM the kernel denies unauthorised write-opens
    /// with EPERM (mode enforce); otherwise they are reported after the fact
    /// from syscall tracepoints (mode detect), and guardian says why.
    /// Needs root (or CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN).
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
}

fn init_logging(level: log::LevelFilter) {
    // Under systemd, stderr goes to the journal: prefix each line with its
    // syslog priority (journald reads "<N>") and leave timestamps to it.
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    env_logger::Builder::new()
        .filter_level(level)
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
        Command::Status {
            config,
            status_file,
            json,
        } => {
            let path = match (status_file, config) {
                (Some(p), _) => p,
                (None, Some(c)) => Config::load(&c, |k| std::env::var(k).ok())?.status.path,
                (None, None) => guardian::default_status_path(),
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
