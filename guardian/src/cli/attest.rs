//! `guardian quote`, `challenge` and `verify`: evidence on the device, and
//! the verifier.

use std::{io::Write as _, path::PathBuf, process::ExitCode};

use clap::Args;
use guardian::{
    attest::{
        bundle::{self, QuoteFiles},
        verifier::{self, Inputs, Judge},
    },
    enrol::files::{TrustedAk, trusted_ak},
};

use super::load_config;

/// The arguments of `guardian quote`.
#[derive(Args)]
pub struct QuoteArgs {
    /// The verifier's nonce, hex (16 to 64 bytes; `guardian challenge`
    /// on the verifier makes one).
    #[arg(long)]
    pub nonce: String,
    /// The config ([attest], [measure] log and tcti).
    #[arg(long, short, env = "GUARDIAN_CONFIG", default_value = guardian::config::DEFAULT_PATH)]
    pub config: PathBuf,
    /// Write the bundle here (default: stdout).
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// Also write the AK public key (PEM) here, for enrolment.
    #[arg(long)]
    pub ak_out: Option<PathBuf>,
    /// Also write the raw quote (TPMS_ATTEST) and signature
    /// (TPMT_SIGNATURE) as PREFIX.msg and PREFIX.sig, for tpm2_checkquote.
    #[arg(long)]
    pub raw: Option<PathBuf>,
}

/// The arguments of `guardian challenge`.
#[derive(Args)]
pub struct ChallengeArgs {
    /// The device's verifier state (created on first use).
    #[arg(long)]
    pub state: PathBuf,
    /// The device's AK public key (PEM), trusted as given: needs
    /// --insecure-tofu. Binds a new state to it.
    #[arg(long, required_unless_present = "device", conflicts_with = "device")]
    pub ak: Option<PathBuf>,
    /// The device's enrolment record (`guardian enrol finish`).
    #[arg(long)]
    pub device: Option<PathBuf>,
    /// Accept an AK given with --ak without proof that a certified TPM
    /// holds it (trust on first use).
    #[arg(long, requires = "ak")]
    pub insecure_tofu: bool,
}

/// The arguments of `guardian verify`.
#[derive(Args)]
pub struct VerifyArgs {
    /// The evidence bundle (from `guardian quote`).
    #[arg(long)]
    pub evidence: PathBuf,
    /// The AK public key (PEM) the device showed, trusted as it is:
    /// needs --insecure-tofu, and the verdict says so.
    #[arg(long, required_unless_present = "device", conflicts_with = "device")]
    pub ak: Option<PathBuf>,
    /// The device's enrolment record (`guardian enrol finish`): its AK,
    /// proven resident in a TPM whose EK a trusted CA certifies.
    #[arg(long)]
    pub device: Option<PathBuf>,
    /// Accept an AK given with --ak without proof that a certified TPM
    /// holds it (trust on first use); recorded in the verdict.
    #[arg(long, requires = "ak")]
    pub insecure_tofu: bool,
    /// A key manifests and model signatures must be signed by (PEM), or CA
    /// certificates (PEM) a model signature's certificate must chain to;
    /// repeatable.
    #[arg(long = "key", required = true)]
    pub keys: Vec<PathBuf>,
    /// Pin a golden manifest: the one in force must be it or newer.
    #[arg(long)]
    pub manifest: Option<PathBuf>,
    /// The PCRs the quote must cover, exactly (default: the golden
    /// manifest's, else 14).
    #[arg(long = "pcr")]
    pub pcrs: Vec<u32>,
    /// The nonce the verifier issued, hex (not needed with a --state
    /// that holds one from `guardian challenge`).
    #[arg(long)]
    pub nonce: Option<String>,
    /// The device's verifier state: the issued nonce, TPM counters,
    /// open findings. Read and updated. Without it, reboots, resets and
    /// rollbacks are not checked (said in the verdict).
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// Acknowledge an open finding in --state (its id, or `all`) before
    /// judging; repeatable.
    #[arg(long, requires = "state")]
    pub ack: Vec<String>,
    /// Fail when no runtime guard started this boot.
    #[arg(long)]
    pub require_guard: bool,
    /// Print the verdict as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The AK to verify with, warning when it is not proven.
fn ak(
    ak: Option<&std::path::Path>,
    device: Option<&std::path::Path>,
    insecure_tofu: bool,
) -> anyhow::Result<TrustedAk> {
    let ak = trusted_ak(ak, device, insecure_tofu)?;
    if let Some(why) = &ak.insecure {
        eprintln!("guardian: warning: {why}");
    }
    Ok(ak)
}

/// `guardian quote`: the bundle on stdout unless `--output`.
pub fn quote(a: QuoteArgs) -> anyhow::Result<ExitCode> {
    let cfg = load_config(&a.config)?;
    let nonce = guardian::attest::parse_nonce(&a.nonce)?;
    let (ev, quote) = bundle::quote(&cfg, &nonce)?;
    let files = QuoteFiles {
        bundle: a.output.as_deref(),
        ak: a.ak_out.as_deref(),
        raw: a.raw.as_deref(),
    };
    if let Some(json) = bundle::save(&ev, &quote, files)? {
        let mut out = std::io::stdout().lock();
        out.write_all(&json)?;
        out.write_all(b"\n")?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `guardian challenge`: the nonce on stdout.
pub fn challenge(a: ChallengeArgs) -> anyhow::Result<ExitCode> {
    let ak = ak(a.ak.as_deref(), a.device.as_deref(), a.insecure_tofu)?;
    println!("{}", verifier::issue_nonce(&a.state, &ak.key)?);
    Ok(ExitCode::SUCCESS)
}

/// `guardian verify`: 0 trusted, 3 not trusted.
pub fn verify(a: VerifyArgs) -> anyhow::Result<ExitCode> {
    // Every input first: a bad one changes nothing.
    let evidence = guardian::attest::read_evidence(&a.evidence)?;
    let ak = ak(a.ak.as_deref(), a.device.as_deref(), a.insecure_tofu)?;
    let mut judge = Judge::new(Inputs {
        evidence,
        ak: ak.key,
        insecure_ak: ak.insecure,
        keys: &a.keys,
        manifest: a.manifest.as_deref(),
        pcrs: &a.pcrs,
        state: a.state.as_deref(),
        require_guard: a.require_guard,
    })?;
    for id in &a.ack {
        let n = judge.acknowledge(id)?;
        eprintln!("acknowledged {n} finding(s) ({id})");
    }
    let verdict = judge.verdict(a.nonce.as_deref())?;
    if a.json {
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
