//! `guardian enrol`: the four steps of AK enrolment, two on the device and
//! two on the verifier; each says on stderr what it wrote.

use std::{path::PathBuf, process::ExitCode};

use clap::Subcommand;
use guardian::enrol::files::{self, FileError};

use super::load_config;

#[derive(Subcommand)]
pub enum EnrolCommand {
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

/// `guardian enrol …`: 0 done, 1 refused.
pub fn enrol(cmd: EnrolCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        EnrolCommand::Request { config, output } => {
            let handle = files::request(&load_config(&config)?, &output)?;
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
            let c = files::challenge(&request, &cas, &output, &pending)?;
            eprintln!(
                "{}: EK certified by {} ({}); challenge {} written to {}, secret kept in {}",
                request.display(),
                c.secret.ek_issuer,
                c.secret.ek_subject,
                c.challenge.id,
                output.display(),
                pending.display()
            );
        }
        EnrolCommand::Activate {
            config,
            challenge,
            output,
        } => {
            files::activate(&load_config(&config)?, &challenge, &output)?;
            eprintln!("wrote the response to {}", output.display());
        }
        EnrolCommand::Finish {
            request,
            pending,
            response,
            output,
        } => {
            let rec = match files::finish(&request, &pending, &response, &output) {
                Ok(r) => r,
                Err(FileError::NotEnrolled(e)) => {
                    eprintln!("guardian: enrolment refused: {e}");
                    return Ok(ExitCode::FAILURE);
                }
                Err(e) => return Err(e.into()),
            };
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
