//! `guardian run`, `status`, `stop` and `unload-token`: the daemon, what
//! it publishes, and who may switch it off.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::Args;
use guardian::{
    config::ModeRequest,
    status::{Status, StatusError},
};

use super::load_config;

/// The arguments of `guardian run`.
#[derive(Args)]
pub struct RunArgs {
    /// The config file.
    #[arg(long, short, env = "GUARDIAN_CONFIG", default_value = guardian::config::DEFAULT_PATH)]
    pub config: PathBuf,
    /// Override [guard] mode: auto, enforce or detect.
    #[arg(long)]
    pub mode: Option<ModeRequest>,
    /// Override [events] output: "-" for stdout or a file to append to.
    #[arg(long)]
    pub events: Option<String>,
}

/// The arguments of `guardian status`.
#[derive(Args)]
pub struct StatusArgs {
    /// Read the status file named in this config.
    #[arg(long, short, env = "GUARDIAN_CONFIG")]
    pub config: Option<PathBuf>,
    /// Read this status file directly.
    #[arg(long, conflicts_with = "config")]
    pub status_file: Option<PathBuf>,
    /// Print the raw JSON document.
    #[arg(long)]
    pub json: bool,
}

/// The arguments of `guardian stop`.
#[derive(Args)]
pub struct StopArgs {
    /// The config file ([status] path, [guard] pin_dir).
    #[arg(long, short, env = "GUARDIAN_CONFIG", default_value = guardian::config::DEFAULT_PATH)]
    pub config: PathBuf,
    /// Also remove the pins: the kernel stops enforcing.
    #[arg(long)]
    pub unload: bool,
    /// The unload token (its signature beside it, TOKEN.sig).
    #[arg(long, value_name = "TOKEN", requires = "unload")]
    pub token: Option<PathBuf>,
}

/// The arguments of `guardian unload-token`.
#[derive(Args)]
pub struct UnloadTokenArgs {
    /// The operator's private key (PEM; Ed25519 or ECDSA P-256).
    #[arg(long)]
    pub key: PathBuf,
    /// Its public key (PEM), carried in the token.
    #[arg(long = "pub", value_name = "PUBLIC_KEY")]
    pub public: PathBuf,
    /// The device's boot id.
    #[arg(long)]
    pub boot_id: String,
    /// The id of the loaded guard to unload (`guardian status` on the
    /// device): the token unloads that guard once; the next load of the
    /// guard has another id.
    #[arg(long, value_name = "GUARD_ID")]
    pub guard: String,
    /// How long the token is good for, in seconds (at most a day).
    #[arg(long, default_value_t = 900)]
    pub valid_secs: u64,
    /// Why, in words: goes into the device's evidence with the unload.
    #[arg(long, default_value = "maintenance")]
    pub reason: String,
    /// Where to write the token.
    #[arg(long, short)]
    pub output: PathBuf,
}

/// Resolves on SIGTERM or SIGINT (never, if they cannot be caught).
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

/// `guardian run`: the daemon, on a single-threaded runtime, until a
/// signal.
pub fn run(a: RunArgs) -> anyhow::Result<ExitCode> {
    let mut cfg = load_config(&a.config)?;
    if let Some(m) = a.mode {
        cfg.guard.mode = m;
    }
    if let Some(e) = a.events {
        cfg.events.output = e;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(guardian::run(cfg, shutdown_signal()))?;
    Ok(ExitCode::SUCCESS)
}

/// `guardian status`: 0 running, 3 not running or stale.
pub fn status(a: StatusArgs) -> anyhow::Result<ExitCode> {
    let path = match (a.status_file, a.config) {
        (Some(p), _) => p,
        (None, Some(c)) => load_config(&c)?.status.path,
        (None, None) => guardian::config::default_status_path(),
    };
    let st = match Status::read(&path) {
        Ok(st) => st,
        Err(e @ StatusError::NotRunning { .. }) => {
            println!("{e}");
            return Ok(ExitCode::from(3));
        }
        Err(e) => return Err(e.into()),
    };
    if a.json {
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

/// `guardian stop`: what was done, a line each, on stderr.
pub fn stop(a: StopArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(&a.config)?;
    for line in guardian::stop(&config, a.unload, a.token.as_deref())? {
        eprintln!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `guardian unload-token`.
pub fn unload_token(a: UnloadTokenArgs) -> anyhow::Result<ExitCode> {
    let w = guardian::unload::write_token(
        &a.key,
        &a.public,
        &a.boot_id,
        &a.guard,
        a.valid_secs,
        &a.reason,
        &a.output,
    )?;
    eprintln!(
        "wrote {} and {}: permission to unload guard {} once, in boot {}, good for {} s, signed by key {}",
        a.output.display(),
        w.signature.display(),
        a.guard,
        a.boot_id,
        w.valid_secs,
        w.fingerprint
    );
    Ok(ExitCode::SUCCESS)
}
