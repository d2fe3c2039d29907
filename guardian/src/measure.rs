//! `guardian measure`: the boot step that measures every model named in
//! the signed manifest into a TPM PCR before the inference service starts.
//!
//! Order, and why:
//!
//! 1. Authenticate the manifest (trusted keys from the config). Unsigned is
//!    refused unless the config allows it, and then every run warns.
//! 2. Hash every model, in parallel. A file that cannot be read stops the
//!    step here, before anything is extended: a partial measurement would
//!    leave a PCR that matches no complete log.
//! 3. Open the measurement log (a corrupt log stops the step, again before
//!    any extend) and the TPM (absent: stop, unless `--no-tpm`).
//!    The TPM's PCR must equal the log's replay before anything is added.
//! 4. If this boot already measured the same digests (the unit was
//!    restarted), record that and extend nothing; if the digests changed
//!    since, extend again. Never a silent double extend.
//! 5. For the manifest, then each model: append the record (fsync), then
//!    extend. A mismatching model is extended all the same: the PCR must
//!    reflect what is on the disk, not what should be.
//! 6. One JSON security event per mismatch on the event output; the exit
//!    status says whether inference may start.

use std::{io::Write, path::PathBuf};

use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::{
    config::MeasureConfig,
    hashing::{self, HashError},
    manifest::{self, Authenticity, ManifestError},
    mlog::{self, Kind, Log, LogError, Record},
    signing::{SignError, TrustedKey},
    tpm::{self, Tpm, TpmError},
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
    /// A model could not be hashed; nothing was extended.
    #[error("{0}; nothing was extended")]
    Hash(#[source] HashError),
    /// The log is unusable; nothing was extended.
    #[error("{0}; nothing was extended")]
    Log(#[source] LogError),
    /// The TPM is unusable.
    #[error(transparent)]
    Tpm(#[from] TpmError),
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
    /// Golden size.
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
    let trusted = cfg
        .trusted_keys
        .iter()
        .map(|k| TrustedKey::load(k))
        .collect::<Result<Vec<_>, _>>()
        .map_err(MeasureError::Key)?;
    let loaded = manifest::load(
        &cfg.manifest,
        &cfg.signature_path(),
        &trusted,
        cfg.allow_unsigned,
    )?;
    let signer = match &loaded.authenticity {
        Authenticity::Signed {
            fingerprint,
            algorithm,
            ..
        } => format!("signed {algorithm} key {}", &fingerprint[..16]),
        Authenticity::UnsignedAllowed { why } => {
            let w = format!("INSECURE: manifest accepted without a valid signature ({why})");
            log::warn!("{w}");
            warnings.push(w);
            "UNSIGNED".to_owned()
        }
    };
    let m = &loaded.manifest;
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
    let manifest_digest: [u8; 32] = Sha256::digest(&loaded.bytes).into();

    // 3. Log, then TPM.
    let mut log = Log::open(&cfg.log).map_err(MeasureError::Log)?;
    let mut tpm = if no_tpm {
        let w =
            "INSECURE: --no-tpm: measurements are logged but not extended into any TPM".to_owned();
        log::warn!("{w}");
        warnings.push(w);
        None
    } else {
        let tcti = tpm::choose_tcti(cfg.tcti.as_deref(), |k| std::env::var(k).ok());
        let mut t = Tpm::open(&tcti)?;
        if t.is_software() {
            let w = format!(
                "INSECURE: the TPM at {tcti} is a software TPM ({}); its measurements are not rooted in hardware",
                t.vendor()
            );
            log::warn!("{w}");
            log.append(Record {
                kind: Kind::Note,
                digest: "0".repeat(64),
                description: w.clone(),
                ..Record::blank()
            })
            .map_err(MeasureError::Log)?;
            warnings.push(w);
        }
        Some(t)
    };
    let boot = mlog::boot_id();

    // The records this run would make.
    let mut planned = vec![Record {
        kind: Kind::Manifest,
        pcr,
        digest: hex::encode(manifest_digest),
        extended: tpm.is_some(),
        description: format!(
            "guardian manifest {} ({signer}, {} models)",
            loaded.path.display(),
            m.models.len()
        ),
        file: Some(loaded.path.display().to_string()),
        ..Record::blank()
    }];
    for (i, (e, d)) in m.models.iter().zip(&digests).enumerate() {
        let actual = hex::encode(d.sha256);
        let matched = actual == e.sha256 && d.size == e.size;
        planned.push(Record {
            kind: Kind::Model,
            pcr,
            digest: actual,
            extended: tpm.is_some(),
            description: format!(
                "guardian model {} entry {i}{}",
                e.path.display(),
                e.name
                    .as_ref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default()
            ),
            file: Some(e.path.display().to_string()),
            entry: Some(i),
            expected: Some(e.sha256.clone()),
            matched: Some(matched),
            ..Record::blank()
        });
    }

    // 4. A re-run in the same boot.
    let previous: Vec<Record> = last_run(log.contents(), &boot, pcr)
        .into_iter()
        .cloned()
        .collect();
    let unchanged = !previous.is_empty()
        && previous.len() == planned.len()
        && previous
            .iter()
            .zip(&planned)
            .all(|(a, b)| a.digest == b.digest && a.file == b.file && a.kind == b.kind);
    let log_err = MeasureError::Log;
    if !previous.is_empty() {
        let first = previous[0].seq;
        let note = if unchanged {
            format!(
                "measure re-run in the same boot: all {} digests unchanged since record {first}; not extended again",
                planned.len()
            )
        } else {
            format!(
                "measure re-run in the same boot with changed digests (previous run from record {first}); extending again"
            )
        };
        log::warn!("{note}");
        warnings.push(note.clone());
        log.append(Record {
            kind: Kind::Note,
            pcr,
            digest: "0".repeat(64),
            description: note,
            ..Record::blank()
        })
        .map_err(log_err)?;
    }

    // The PCR must hold what the log replays to before we add to it;
    // otherwise the log is truncated or lost, or something else extends
    // this PCR, and any further extend would be evidence nobody can check.
    if let Some(t) = tpm.as_mut() {
        let before = t.read(pcr)?;
        let replay = log.contents().replay(pcr, &boot).map_err(log_err)?;
        if before != replay {
            return Err(MeasureError::Unexplained {
                log: cfg.log.clone(),
                pcr,
                replay: hex::encode(replay),
                tpm: hex::encode(before),
            });
        }
    }

    // 5. Record, then extend.
    let mut extended = 0;
    let mut mismatches = Vec::new();
    for (idx, rec) in planned.into_iter().enumerate() {
        let (matched, entry) = (rec.matched, rec.entry);
        let digest: [u8; 32] = rec.digest_bytes().map_err(log_err)?;
        let rec = if unchanged {
            None
        } else {
            Some(log.append(rec).map_err(log_err)?)
        };
        if let (Some(rec), Some(t)) = (&rec, tpm.as_mut()) {
            if let Err(e) = t.extend(pcr, &digest) {
                let _ = log.append(Record {
                    kind: Kind::Note,
                    pcr,
                    digest: "0".repeat(64),
                    description: format!("extend of record {} failed: {e}", rec.seq),
                    voids: Some(rec.seq),
                    ..Record::blank()
                });
                return Err(e.into());
            }
            extended += 1;
        }
        if matched == Some(false)
            && let Some(i) = entry
        {
            let e = &m.models[i];
            let mm = Mismatch {
                time: humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string(),
                event: "model_mismatch",
                file: e.path.display().to_string(),
                name: e.name.clone(),
                expected: e.sha256.clone(),
                actual: hex::encode(digests[i].sha256),
                expected_size: e.size,
                actual_size: digests[i].size,
                pcr,
                log_seq: rec
                    .as_ref()
                    .map(|r| r.seq)
                    .or_else(|| previous.get(idx).map(|r| r.seq))
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
    }
    let _ = events.flush();

    let replay = log.contents().replay(pcr, &boot).map_err(log_err)?;
    let tpm_value = match tpm.as_mut() {
        Some(t) => Some(t.read(pcr)?),
        None => None,
    };
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

/// The records of the most recent measurement run of this boot into `pcr`
/// (from its manifest record on), if any.
fn last_run<'a>(contents: &'a mlog::Contents, boot: &'a str, pcr: u32) -> Vec<&'a Record> {
    // Extended or not (a --no-tpm run counts as a run), but not voided.
    let voided = contents.voided();
    let recs: Vec<&Record> = contents
        .this_boot(boot)
        .filter(|r| {
            r.pcr == pcr
                && matches!(r.kind, Kind::Manifest | Kind::Model)
                && !voided.contains(&r.seq)
        })
        .collect();
    match recs.iter().rposition(|r| r.kind == Kind::Manifest) {
        Some(i) => recs[i..].to_vec(),
        None => Vec::new(),
    }
}
