//! The subcommands of the `guardian` command, one module per group: each
//! holds its arguments (clap) and prints what the library returns. The
//! work is the library's; these modules read no file themselves but the
//! config, and decide nothing but the exit status.
//!
//! | module | subcommands | library |
//! |---|---|---|
//! | [`daemon`] | `run`, `status`, `stop`, `unload-token` | [`guardian::run`], [`guardian::status`], [`guardian::stop`], [`guardian::unload`] |
//! | [`measure`] | `measure`, `manifest`, `log` | [`guardian::measure`] (and its [`tools`](guardian::measure::tools)) |
//! | [`attest`] | `quote`, `challenge`, `verify` | [`guardian::attest`] (the [`verifier`](guardian::attest::verifier)) |
//! | [`enrol`] | `enrol request`, `challenge`, `activate`, `finish` | [`guardian::enrol::files`] |
//! | [`policy`] | `policy sign`, `inspect`, `test` | [`guardian::policy::tools`] |
//!
//! Each returns the exit status, or an error that `main` prints as one
//! line and maps to 1.

pub mod attest;
pub mod daemon;
pub mod enrol;
pub mod measure;
pub mod policy;

use std::path::Path;

use guardian::config::Config;

/// Load the config at `path`, with the `GUARDIAN_*` environment over it.
pub fn load_config(path: &Path) -> anyhow::Result<Config> {
    Ok(Config::load(path, |k| std::env::var(k).ok())?)
}
