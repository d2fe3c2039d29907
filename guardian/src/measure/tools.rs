//! The other measured-boot commands: making and checking signed manifests
//! (`guardian manifest`), and reading the measurement log back (`guardian
//! log`: replay against the TPM, export for other tools).

use std::path::{Path, PathBuf};

use crate::{
    config::Config,
    evidence::{self, LogError},
    hashing::{self, HashError},
    manifest::{self, Entry, Loaded, Manifest, ManifestError},
    signing::{SignError, SigningKey, TrustedKey},
    tpm::{self, TpmError},
};

/// Errors of the manifest and log commands; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// A file or directory given could not be read.
    #[error("{}", path.display())]
    Path {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A directory entry could not be read (the error names no path).
    #[error(transparent)]
    Walk(std::io::Error),
    /// Something given is neither a regular file nor a directory.
    #[error("{}: not a regular file or directory", path.display())]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// A manifest (or its PCR) would be invalid.
    #[error("{0}")]
    Invalid(String),
    /// The clock is before 1970 (no default serial).
    #[error("the clock is before 1970")]
    Clock(#[source] std::time::SystemTimeError),
    /// A key could not be loaded.
    #[error(transparent)]
    Key(#[from] SignError),
    /// A model could not be hashed.
    #[error(transparent)]
    Hash(#[from] HashError),
    /// The manifest could not be read, authenticated or written.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// No manifest given.
    #[error("no manifest given (argument or --config)")]
    NoManifest,
    /// The manifest named by the config could not be read.
    #[error("reading {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The manifest named by the config is not a manifest.
    #[error("{}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The model signature is unusable, or the directory does not match it.
    #[error(transparent)]
    ModelSig(#[from] guardian_attest::model_sig::ModelSigError),
    /// The log is unusable.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The TPM failed.
    #[error(transparent)]
    Tpm(#[from] TpmError),
    /// An output could not be written.
    #[error("writing {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Regular files under `p` (or `p` itself).
fn collect(p: &Path, out: &mut Vec<PathBuf>) -> Result<(), ToolError> {
    let io = |source| ToolError::Path {
        path: p.to_owned(),
        source,
    };
    let meta = std::fs::metadata(p).map_err(io)?;
    if meta.is_dir() {
        for e in std::fs::read_dir(p).map_err(io)? {
            let e = e.map_err(ToolError::Walk)?;
            let ft = e.file_type().map_err(ToolError::Walk)?;
            if ft.is_dir() || ft.is_file() {
                collect(&e.path(), out)?;
            }
        }
    } else if meta.is_file() {
        out.push(p.to_owned());
    } else {
        return Err(ToolError::NotAFile { path: p.to_owned() });
    }
    Ok(())
}

/// `guardian manifest create`: hash the regular files under `paths` and
/// write a manifest for `pcr` with `serial` (default: seconds since 1970)
/// to `output`, signed with the key at `key`; returns it and where its
/// signature went.
pub fn create_manifest(
    paths: &[PathBuf],
    key: &Path,
    output: &Path,
    pcr: u32,
    serial: Option<u64>,
) -> Result<(Manifest, PathBuf), ToolError> {
    manifest::check_pcr(pcr).map_err(ToolError::Invalid)?;
    let serial = match serial {
        Some(s) => s,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(ToolError::Clock)?
            .as_secs(),
    };
    let key = SigningKey::load(key)?;
    let mut files = Vec::new();
    for p in paths {
        let p = std::path::absolute(p).map_err(|source| ToolError::Path {
            path: p.clone(),
            source,
        })?;
        collect(&p, &mut files)?;
    }
    files.sort();
    files.dedup();
    let digests = hashing::hash_files(&files, 0)
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
    m.check().map_err(ToolError::Invalid)?;
    let sig = manifest::write_signed(&m, output, &key)?;
    Ok((m, sig))
}

/// `guardian manifest import`: verify the OpenSSF model signature at
/// `bundle` with `trusted` (public keys, or CA certificates for the
/// certificate method), check the model directory `dir` against it
/// entirely (shape and every file's digest), and write a guardian manifest
/// of those files for `pcr` with `serial` (default: seconds since 1970) to
/// `output`, signed with the operator's `key`. Returns the manifest, where
/// its signature went, and the model signature's signer fingerprint.
pub fn import_model_signature(
    bundle: &Path,
    dir: &Path,
    trusted: &[PathBuf],
    key: &Path,
    output: &Path,
    pcr: u32,
    serial: Option<u64>,
) -> Result<(Manifest, PathBuf, String), ToolError> {
    use guardian_attest::model_sig;
    manifest::check_pcr(pcr).map_err(ToolError::Invalid)?;
    let serial = match serial {
        Some(s) => s,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(ToolError::Clock)?
            .as_secs(),
    };
    let key = SigningKey::load(key)?;
    let trusted = TrustedKey::load_all(trusted)?;
    let dir = std::path::absolute(dir).map_err(|source| ToolError::Path {
        path: dir.to_owned(),
        source,
    })?;
    let verified = model_sig::load(bundle, &trusted)?;
    let files = model_sig::check_dir(&dir, &verified, bundle)?;
    let sizes: Vec<u64> = files.iter().map(|f| f.size).collect();
    let mut m = model_sig::to_manifest(&verified.statement, &dir, pcr, Some(&sizes))
        .map_err(ToolError::Invalid)?;
    m.serial = serial;
    let sig = manifest::write_signed(&m, output, &key)?;
    Ok((m, sig, verified.signer))
}

/// `guardian manifest verify`: load and authenticate the manifest at
/// `path` (default: the config's) with `keys` (default: the config's
/// trusted keys) and its signature at `signature` (default: `PATH.sig`).
pub fn verify_manifest(
    path: Option<PathBuf>,
    config: Option<&Config>,
    keys: Vec<PathBuf>,
    signature: Option<PathBuf>,
) -> Result<Loaded, ToolError> {
    let path = path
        .or_else(|| config.map(|c| c.measure.manifest.clone()))
        .ok_or(ToolError::NoManifest)?;
    let keys = if keys.is_empty() {
        config
            .map(|c| c.measure.trusted_keys.clone())
            .unwrap_or_default()
    } else {
        keys
    };
    let trusted = keys
        .iter()
        .map(|k| TrustedKey::load(k))
        .collect::<Result<Vec<_>, _>>()?;
    let sig = signature.unwrap_or_else(|| manifest::signature_path(&path));
    Ok(manifest::load(&path, &sig, &trusted, false)?)
}

/// One model file compared with its manifest entry.
#[derive(Debug)]
pub enum FileCheck<'a> {
    /// Digest and size match.
    Match(&'a Entry),
    /// They do not: the digest found, hex.
    Mismatch(&'a Entry, String),
    /// The file could not be hashed.
    Unreadable(&'a Entry, HashError),
}

/// Hash every model of `manifest` (in parallel) and compare, in the
/// manifest's order.
pub fn check_files(manifest: &Manifest) -> Vec<FileCheck<'_>> {
    let paths: Vec<PathBuf> = manifest.models.iter().map(|e| e.path.clone()).collect();
    manifest
        .models
        .iter()
        .zip(hashing::hash_files(&paths, 0))
        .map(|(e, r)| match r {
            Ok(d) if hex::encode(d.sha256) == e.sha256 && d.size == e.size => FileCheck::Match(e),
            Ok(d) => FileCheck::Mismatch(e, hex::encode(d.sha256)),
            Err(err) => FileCheck::Unreadable(e, err),
        })
        .collect()
}

/// A PCR replayed from this boot's log, and the TPM's value of it.
#[derive(Debug)]
pub struct Replay {
    /// The PCR.
    pub pcr: u32,
    /// This boot's records extended into it.
    pub records: usize,
    /// The value the records replay to.
    pub replayed: [u8; 32],
    /// The value in the TPM.
    pub tpm: [u8; 32],
}

impl Replay {
    /// Whether the log explains the PCR.
    pub fn matches(&self) -> bool {
        self.replayed == self.tpm
    }
}

/// `guardian log replay`: replay this boot's extends of `pcr` (default:
/// the config's manifest's, or `model_pcr` with a model signature) from the log and read the TPM's value.
pub fn replay(config: &Config, pcr: Option<u32>) -> Result<Replay, ToolError> {
    let m = &config.measure;
    let pcr = match pcr.or(m.model_signature_pcr()) {
        Some(p) => p,
        None => {
            let text = std::fs::read_to_string(&m.manifest).map_err(|source| ToolError::Read {
                path: m.manifest.clone(),
                source,
            })?;
            Manifest::parse(&text)
                .map_err(|message| ToolError::Parse {
                    path: m.manifest.clone(),
                    message,
                })?
                .pcr
        }
    };
    let contents = evidence::log::read(&m.log)?;
    if contents.torn_bytes > 0 {
        log::warn!(
            "{}: torn last record of {} bytes ignored",
            m.log.display(),
            contents.torn_bytes
        );
    }
    let boot = evidence::boot_id();
    let replayed = contents.replay(pcr, &boot);
    let tcti = tpm::choose_tcti(m.tcti.as_deref(), |k| std::env::var(k).ok());
    let actual = tpm::Tpm::open(&tcti)?.read(pcr)?;
    let records = contents
        .extended_this_boot(&boot)
        .filter(|r| r.pcr == pcr)
        .count();
    Ok(Replay {
        pcr,
        records,
        replayed,
        tpm: actual,
    })
}

/// The formats `guardian log export` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    /// The TCG PC Client binary event log (for `tpm2_eventlog`).
    Tcg,
    /// TCG Canonical Event Log JSON records (a JSON text sequence).
    Cel,
}

/// `guardian log export`: this boot's measurements in `format`, written to
/// `output`, or returned when there is none (for stdout).
pub fn export(
    config: &Config,
    format: ExportFormat,
    output: Option<&Path>,
) -> Result<Option<Vec<u8>>, ToolError> {
    let contents = evidence::log::read(&config.measure.log)?;
    let boot = evidence::boot_id();
    let bytes = match format {
        ExportFormat::Tcg => evidence::export::tcg(&contents, &boot),
        ExportFormat::Cel => evidence::export::cel(&contents, &boot),
    };
    match output {
        Some(p) => std::fs::write(p, bytes)
            .map(|()| None)
            .map_err(|source| ToolError::Write {
                path: p.to_owned(),
                source,
            }),
        None => Ok(Some(bytes)),
    }
}
