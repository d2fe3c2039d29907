//! `guardian measure`: the boot step that measures every model named in
//! the signed manifest into a TPM PCR before the inference service starts.
//!
//! Order, and why:
//!
//! 1. Authenticate the manifest (trusted keys from the config). Unsigned is
//!    refused unless the config allows it, and then every run warns. Or,
//!    with `[measure] model_signature`, the OpenSSF model signature of
//!    `model_dir` is the golden reference instead: its bundle verified
//!    with the trusted keys or CA certificates (never unsigned), and the
//!    directory's shape checked against its statement (a listed file
//!    missing, a file not listed, a symlink: stop here, nothing extended).
//! 2. Hash every model, in parallel. A file that cannot be read stops the
//!    step here, before anything is extended: a partial measurement would
//!    leave a PCR that matches no complete log.
//! 3. Open the TPM (absent: stop, unless `--no-tpm`) and the ledger (a
//!    corrupt log stops the step, again before any extend).
//!    The TPM's PCR must equal the log's replay before anything is added.
//! 4. If this boot already measured the same digests (the unit was
//!    restarted), record that and extend nothing; if the digests changed
//!    since, extend again. Never a silent double extend.
//! 5. For the manifest (its whole text and signature), then each model
//!    (its digest and the manifest entry it is judged against): the ledger
//!    appends the record (fsync), then extends it. A mismatching model is
//!    extended all the same: the PCR must reflect what is on the disk, not
//!    what should be.
//! 6. One JSON security event per mismatch on the event output; the exit
//!    status says whether inference may start.
//!
//! [`tools`] holds the other measured-boot commands: signed manifests made
//! and checked, the log replayed against the TPM and exported.

pub mod tools;

use std::{io::Write, path::PathBuf};

use serde::Serialize;
use sha2::{Digest as _, Sha256};

use guardian_attest::model_sig::{self, ModelSigError};

use crate::{
    config::MeasureConfig,
    evidence::{
        Contents, Event, Ledger, LedgerError, LogError,
        event::{ManifestEvent, ModelEvent},
        ledger,
    },
    hashing::{self, HashError},
    manifest::{self, Authenticity, Manifest, ManifestError},
    signing::{SignError, TrustedKey},
    tpm::TpmError,
};

/// Errors that stop the measurement before (or, for a TPM failure, at) the
/// first extend. Each names its cause.
#[derive(Debug, thiserror::Error)]
pub enum MeasureError {
    /// A trusted key could not be loaded.
    #[error("trusted key: {0}")]
    Key(#[source] SignError),
    /// The manifest is unusable.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The model signature is unusable, or the model directory does not
    /// have the shape it signs; nothing was extended.
    #[error("{0}; nothing was extended")]
    ModelSig(#[from] ModelSigError),
    /// The model directory cannot be a golden reference's.
    #[error("[measure] model_dir {dir}: {problem}; nothing was extended")]
    ModelDir {
        /// The directory.
        dir: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A model could not be hashed; nothing was extended.
    #[error("{0}; nothing was extended")]
    Hash(#[source] HashError),
    /// The log is unusable; nothing was extended.
    #[error("{0}; nothing was extended")]
    Log(#[source] LogError),
    /// The TPM is unusable.
    #[error(transparent)]
    Tpm(#[from] TpmError),
    /// A record could not be extended (it was voided in the log).
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The log does not explain the PCR's current value.
    #[error(
        "measurement log {} does not explain PCR {pcr}: it replays to {replay} but the TPM holds {tpm} (log truncated or lost, or another component extends PCR {pcr}); nothing was extended",
        log.display()
    )]
    Unexplained {
        /// The log.
        log: PathBuf,
        /// The PCR.
        pcr: u32,
        /// Replayed value.
        replay: String,
        /// TPM value.
        tpm: String,
    },
}

/// A model whose digest is not the golden one (the security event).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Mismatch {
    /// When.
    pub time: String,
    /// Always `model_mismatch`.
    pub event: &'static str,
    /// The model file.
    pub file: String,
    /// Its name in the manifest.
    pub name: Option<String>,
    /// Golden digest.
    pub expected: String,
    /// Measured digest (the one extended).
    pub actual: String,
    /// Golden size (a model signature signs no sizes: then the measured
    /// one).
    pub expected_size: u64,
    /// Measured size.
    pub actual_size: u64,
    /// The PCR it went into.
    pub pcr: u32,
    /// Its record in the measurement log.
    pub log_seq: u64,
}

/// What a measurement run did.
#[derive(Debug)]
pub struct Outcome {
    /// The PCR.
    pub pcr: u32,
    /// Models measured.
    pub models: usize,
    /// Models that did not match.
    pub mismatches: Vec<Mismatch>,
    /// Records extended in this run (0 for an unchanged re-run).
    pub extended: usize,
    /// The PCR value the log replays to for this boot.
    pub replay: [u8; 32],
    /// The PCR value read from the TPM afterwards (`None` with `--no-tpm`).
    pub tpm_value: Option<[u8; 32]>,
    /// Degraded or insecure conditions.
    pub warnings: Vec<String>,
}

/// Measure. `events` receives one JSON line per mismatch.
pub fn measure(
    cfg: &MeasureConfig,
    no_tpm: bool,
    events: &mut dyn Write,
) -> Result<Outcome, MeasureError> {
    let mut warnings = Vec::new();
    // 1. Authenticate.
    let trusted = TrustedKey::load_all(&cfg.trusted_keys).map_err(MeasureError::Key)?;
    let golden = match (&cfg.model_signature, &cfg.model_dir) {
        (Some(bundle), Some(dir)) => model_signature_golden(bundle, dir, cfg.model_pcr, &trusted)?,
        _ => manifest_golden(cfg, &trusted, &mut warnings)?,
    };
    let m = &golden.manifest;
    let pcr = m.pcr;

    // 2. Hash everything before touching the TPM.
    let paths: Vec<PathBuf> = m.models.iter().map(|e| e.path.clone()).collect();
    let started = std::time::Instant::now();
    let digests = hashing::hash_files(&paths, cfg.threads)
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(MeasureError::Hash)?;
    let total: u64 = digests.iter().map(|d| d.size).sum();
    log::info!(
        "hashed {} model(s), {} MiB in {:.2} s",
        digests.len(),
        total / (1 << 20),
        started.elapsed().as_secs_f64()
    );

    // 3. TPM, then the ledger (a corrupt log stops here, before any extend).
    let (tpm, software) = if no_tpm {
        let w =
            "INSECURE: --no-tpm: measurements are logged but not extended into any TPM".to_owned();
        log::warn!("{w}");
        warnings.push(w);
        (None, None)
    } else {
        let t = ledger::open_tpm(cfg.tcti.as_deref())?;
        (Some(t.tpm), t.software)
    };
    let mut ledger = Ledger::open(&cfg.log, tpm).map_err(MeasureError::Log)?;
    let log_err = MeasureError::Log;
    if let Some(w) = software {
        ledger.note(w.clone()).map_err(log_err)?;
        warnings.push(w);
    }

    // The records this run would make.
    let manifest_event = golden.event;
    let models: Vec<ModelEvent> = m
        .models
        .iter()
        .zip(&digests)
        .enumerate()
        .map(|(i, (e, d))| ModelEvent {
            file: e.path.display().to_string(),
            sha256: hex::encode(d.sha256),
            size: d.size,
            manifest: manifest_event.sha256.clone(),
            entry: i,
            cause: "boot".to_owned(),
        })
        .collect();

    // 4. A re-run in the same boot.
    let previous = last_run(ledger.contents(), ledger.boot_id(), pcr);
    let unchanged = previous.as_ref().is_some_and(|(mf, prev)| {
        mf.sha256 == manifest_event.sha256
            && prev.len() == models.len()
            && prev
                .iter()
                .zip(&models)
                .all(|((a, _), b)| a.sha256 == b.sha256 && a.file == b.file)
    });
    if let Some((_, prev)) = &previous {
        let note = if unchanged {
            format!(
                "measure re-run in the same boot: the manifest and all {} model digests are unchanged; not extended again",
                prev.len()
            )
        } else {
            "measure re-run in the same boot with a changed manifest or model digests; extending again".to_owned()
        };
        log::warn!("{note}");
        warnings.push(note.clone());
        ledger.note(note).map_err(log_err)?;
    }

    // The PCR must hold what the log replays to before we add to it;
    // otherwise the log is truncated or lost, or something else extends
    // this PCR, and any further extend would be evidence nobody can check.
    if let Some(before) = ledger.read_pcr(pcr)? {
        let replay = ledger.replay(pcr);
        if before != replay {
            return Err(MeasureError::Unexplained {
                log: cfg.log.clone(),
                pcr,
                replay: hex::encode(replay),
                tpm: hex::encode(before),
            });
        }
    }

    // 5. Record, then extend (the ledger does both, or voids).
    let mut extended = 0;
    let mut seqs = vec![None; models.len()];
    if !unchanged {
        let cause = if previous.is_some() { "rerun" } else { "boot" };
        let mut mf = manifest_event;
        mf.cause = cause.to_owned();
        ledger.record(pcr, Event::Manifest(mf))?;
        extended += usize::from(ledger.has_tpm());
        for (i, mut model) in models.into_iter().enumerate() {
            model.cause = cause.to_owned();
            let rec = ledger.record(pcr, Event::Model(model))?;
            seqs[i] = Some(rec.seq);
            extended += usize::from(ledger.has_tpm());
        }
    }
    let mut mismatches = Vec::new();
    for (i, (e, d)) in m.models.iter().zip(&digests).enumerate() {
        let actual = hex::encode(d.sha256);
        if actual == e.sha256 && (!golden.sizes || d.size == e.size) {
            continue;
        }
        let mm = Mismatch {
            time: humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string(),
            event: "model_mismatch",
            file: e.path.display().to_string(),
            name: e.name.clone(),
            expected: e.sha256.clone(),
            actual,
            expected_size: if golden.sizes { e.size } else { d.size },
            actual_size: d.size,
            pcr,
            log_seq: seqs[i]
                .or_else(|| {
                    previous
                        .as_ref()
                        .and_then(|(_, p)| p.get(i))
                        .map(|(_, seq)| *seq)
                })
                .unwrap_or(0),
        };
        if let Ok(line) = serde_json::to_string(&mm) {
            let _ = writeln!(events, "{line}");
        }
        log::error!(
            "model {} does not match the manifest: sha256 {} (expected {})",
            mm.file,
            mm.actual,
            mm.expected
        );
        mismatches.push(mm);
    }
    let _ = events.flush();

    let replay = ledger.replay(pcr);
    let tpm_value = ledger.read_pcr(pcr)?;
    Ok(Outcome {
        pcr,
        models: m.models.len(),
        mismatches,
        extended,
        replay,
        tpm_value,
        warnings,
    })
}

/// The golden reference of a run: the models and their digests, and the
/// record that puts it in force.
struct Golden {
    manifest: Manifest,
    event: ManifestEvent,
    /// Whether it signs sizes (a model signature does not).
    sizes: bool,
}

/// A guardian manifest, authenticated with the trusted keys.
fn manifest_golden(
    cfg: &MeasureConfig,
    trusted: &[TrustedKey],
    warnings: &mut Vec<String>,
) -> Result<Golden, MeasureError> {
    let loaded = manifest::load(
        &cfg.manifest,
        &cfg.signature_path(),
        trusted,
        cfg.allow_unsigned,
    )?;
    let signer = match &loaded.authenticity {
        Authenticity::Signed { fingerprint, .. } => fingerprint.clone(),
        Authenticity::UnsignedAllowed { why } => {
            let w = format!("INSECURE: manifest accepted without a valid signature ({why})");
            log::warn!("{w}");
            warnings.push(w);
            "UNSIGNED".to_owned()
        }
    };
    let event = ManifestEvent {
        file: loaded.path.display().to_string(),
        sha256: hex::encode(Sha256::digest(&loaded.bytes)),
        serial: loaded.manifest.serial,
        text: String::from_utf8_lossy(&loaded.bytes).into_owned(),
        signature: match (&loaded.authenticity, &loaded.signature) {
            (Authenticity::Signed { .. }, Some(sig)) => hex::encode(sig),
            _ => String::new(),
        },
        signer,
        cause: "boot".to_owned(),
        model_dir: None,
    };
    Ok(Golden {
        manifest: loaded.manifest,
        event,
        sizes: true,
    })
}

/// An OpenSSF model signature of `dir`: the bundle verified with the
/// trusted keys or CA certificates (`allow_unsigned` does not apply: a
/// model signature is signed or it is nothing), and the directory's shape
/// checked against the statement before anything is hashed or extended.
fn model_signature_golden(
    bundle: &std::path::Path,
    dir: &std::path::Path,
    pcr: u32,
    trusted: &[TrustedKey],
) -> Result<Golden, MeasureError> {
    // Absolute, so the records name the files wherever the config was
    // found from (a config given by a relative path leaves them relative).
    let absolute = |p: &std::path::Path| {
        std::path::absolute(p).map_err(|e| MeasureError::ModelDir {
            dir: p.to_owned(),
            problem: e.to_string(),
        })
    };
    let (bundle, dir) = (&absolute(bundle)?, &absolute(dir)?);
    let verified = model_sig::load(bundle, trusted)?;
    model_sig::check_tree(dir, &verified.statement, bundle)?;
    let manifest =
        model_sig::to_manifest(&verified.statement, dir, pcr, None).map_err(|problem| {
            MeasureError::ModelDir {
                dir: dir.to_owned(),
                problem,
            }
        })?;
    log::info!(
        "model signature {} for {}: {} file(s), signed by {} ({:?})",
        bundle.display(),
        dir.display(),
        manifest.models.len(),
        verified.signer,
        verified.signed_by
    );
    let event = ManifestEvent {
        file: bundle.display().to_string(),
        sha256: verified.sha256.clone(),
        serial: 0,
        text: String::from_utf8_lossy(&verified.bytes).into_owned(),
        signature: hex::encode(&verified.bundle.signature),
        signer: verified.signer.clone(),
        cause: "boot".to_owned(),
        model_dir: Some(dir.display().to_string()),
    };
    Ok(Golden {
        manifest,
        event,
        sizes: false,
    })
}

/// A model record of an earlier run: what was measured, and its sequence
/// number.
struct Previous {
    file: String,
    sha256: String,
}

/// The most recent measurement run of this boot into `pcr`: its manifest
/// and, in order, its model records with their sequence numbers.
fn last_run(
    contents: &Contents,
    boot: &str,
    pcr: u32,
) -> Option<(ManifestEvent, Vec<(Previous, u64)>)> {
    // Extended or not (a --no-tpm run counts as a run), but not voided.
    let voided = contents.voided();
    let mut run: Option<(ManifestEvent, Vec<(Previous, u64)>)> = None;
    for r in contents
        .this_boot(boot)
        .filter(|r| r.pcr == pcr && !voided.contains(&r.seq))
    {
        match &r.event {
            Event::Manifest(m) => run = Some((m.clone(), Vec::new())),
            Event::Model(m) if m.cause == "boot" || m.cause == "rerun" => {
                if let Some((_, models)) = run.as_mut() {
                    models.push((
                        Previous {
                            file: m.file.clone(),
                            sha256: m.sha256.clone(),
                        },
                        r.seq,
                    ));
                }
            }
            _ => {}
        }
    }
    run
}
