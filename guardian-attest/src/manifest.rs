//! The model manifest: which model files a board may run, their golden
//! SHA-256 digests and sizes, and the PCR they are measured into. A TOML
//! file with a detached signature next to it (`<manifest>.sig`, see
//! [`crate::signing`]).
//!
//! ```toml
//! version = 1
//! pcr = 14
//! serial = 1764806400      # monotonic: a verifier refuses an older one
//!
//! [[model]]
//! path = "/opt/models/classifier.onnx"
//! sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
//! size = 4096
//! name = "classifier"      # optional
//! version = "2026.11"      # optional
//! ```
//!
//! # Which PCR
//!
//! The default is **14**. A measurement PCR must be one that nothing else on
//! the board extends, or the log cannot be replayed to its value, and one
//! that only a reboot resets, or an attacker could wipe the evidence:
//!
//! - 0–7: firmware and boot loader (UEFI, U-Boot measured boot);
//! - 8–9: GRUB's and U-Boot's kernel/command-line measurements;
//! - 10: IMA;
//! - 11, 12, 13, 15: systemd (unified kernel image, kernel config,
//!   system extensions, machine identity); 5 too;
//! - 14: on PCs, shim's MOK list; unused by U-Boot, systemd and the ARM
//!   boot chains guardian targets;
//! - 16: debug, and reset by Keylime on every quote; 23: resettable by
//!   anyone (locality 0); 17–22: dynamic root of trust, not extendable
//!   from the OS.
//!
//! So only 8–15 are accepted; pick another of them if the board's boot
//! chain already uses 14.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::signing::{SignError, SigningKey, TrustedKey};

/// The default measurement PCR (see the module docs).
pub const DEFAULT_PCR: u32 = 14;

/// The manifest format version this build reads and writes.
pub const VERSION: u32 = 1;

/// One model file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Absolute path on the board.
    pub path: PathBuf,
    /// Golden SHA-256, 64 lowercase hex digits.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// A name for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The model's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// A manifest.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Format version (1).
    pub version: u32,
    /// PCR index for the measurements.
    pub pcr: u32,
    /// The manifest's serial number: each manifest a fleet publishes has a
    /// higher one than the last (`guardian manifest create` uses the time
    /// in seconds unless told otherwise), so a verifier can refuse a signed
    /// but older manifest put back on a board. Manifests from before serials
    /// read as 0.
    #[serde(default)]
    pub serial: u64,
    /// The models.
    #[serde(rename = "model")]
    pub models: Vec<Entry>,
}

/// Errors reading, checking or writing manifests; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be read or written.
    #[error("manifest {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not valid TOML for a manifest.
    #[error("invalid manifest {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The signature is missing and unsigned manifests are not allowed.
    #[error(
        "manifest {path} is not signed: no signature file {signature} (set [measure] allow_unsigned = true only for development)"
    )]
    Unsigned {
        /// The manifest.
        path: PathBuf,
        /// Where the signature was looked for.
        signature: PathBuf,
    },
    /// Signature or key problem.
    #[error(transparent)]
    Signature(#[from] SignError),
}

/// How a loaded manifest was authenticated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Authenticity {
    /// Signed by this trusted key (path, fingerprint, algorithm).
    Signed {
        /// Key file.
        key: PathBuf,
        /// Key fingerprint.
        fingerprint: String,
        /// Algorithm.
        algorithm: String,
    },
    /// Accepted without a valid signature because the config allows it.
    UnsignedAllowed {
        /// Why it is not signed (no signature file, or the failure).
        why: String,
    },
}

/// A manifest with its exact bytes (what is hashed into the PCR).
#[derive(Clone, Debug)]
pub struct Loaded {
    /// Parsed.
    pub manifest: Manifest,
    /// The file's bytes.
    pub bytes: Vec<u8>,
    /// Where it came from.
    pub path: PathBuf,
    /// How it was authenticated.
    pub authenticity: Authenticity,
    /// The detached signature's bytes, when there is one.
    pub signature: Option<Vec<u8>>,
}

/// The default signature path for a manifest: `<manifest>.sig`.
pub fn signature_path(manifest: &Path) -> PathBuf {
    let mut s = manifest.as_os_str().to_owned();
    s.push(".sig");
    PathBuf::from(s)
}

impl Manifest {
    /// Parse and check TOML text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let m: Self =
            toml::from_str(text).map_err(|e| e.to_string().trim_end().replace('\n', " "))?;
        m.check()?;
        Ok(m)
    }

    /// The rules a manifest must follow.
    pub fn check(&self) -> Result<(), String> {
        if self.version != VERSION {
            return Err(format!(
                "version {} is not supported (this guardian reads version {VERSION})",
                self.version
            ));
        }
        check_pcr(self.pcr)?;
        if self.models.is_empty() {
            return Err("no [[model]] entries".to_owned());
        }
        let mut seen = std::collections::HashSet::new();
        for (i, e) in self.models.iter().enumerate() {
            if !e.path.is_absolute() {
                return Err(format!(
                    "model {i}: path {} is not absolute",
                    e.path.display()
                ));
            }
            if !seen.insert(&e.path) {
                return Err(format!("model {i}: {} is listed twice", e.path.display()));
            }
            let ok = e.sha256.len() == 64
                && e.sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if !ok {
                return Err(format!(
                    "model {i} ({}): sha256 {:?} is not 64 lowercase hex digits",
                    e.path.display(),
                    e.sha256
                ));
            }
        }
        Ok(())
    }

    /// TOML text.
    pub fn to_toml(&self) -> String {
        let mut s = String::from(
            "# guardian model manifest: golden digests of the models this board may run.\n\
             # Signed; the signature is the file next to this one with .sig appended.\n",
        );
        s += &toml::to_string(self).unwrap_or_default();
        s
    }
}

/// Accept only PCRs 8–15 (see the module docs for why).
pub fn check_pcr(pcr: u32) -> Result<(), String> {
    match pcr {
        8..=15 => Ok(()),
        16 => Err(
            "pcr 16 is the debug PCR, reset by Keylime on every quote; use 8-15 (default 14)"
                .into(),
        ),
        23 => Err("pcr 23 can be reset by any process (locality 0); use 8-15 (default 14)".into()),
        0..=7 => Err(format!(
            "pcr {pcr} belongs to the firmware and boot loader; use 8-15 (default 14)"
        )),
        17..=22 => Err(format!(
            "pcr {pcr} is a dynamic-root-of-trust PCR the OS cannot extend; use 8-15 (default 14)"
        )),
        _ => Err(format!(
            "pcr {pcr} does not exist (a TPM has PCRs 0-23); use 8-15 (default 14)"
        )),
    }
}

/// Load a manifest and authenticate it against `trusted`. With
/// `allow_unsigned`, a missing or invalid signature is accepted and the
/// reason returned in [`Authenticity::UnsignedAllowed`] for the caller to
/// warn about.
pub fn load(
    path: &Path,
    signature: &Path,
    trusted: &[TrustedKey],
    allow_unsigned: bool,
) -> Result<Loaded, ManifestError> {
    let bytes = std::fs::read(path).map_err(|source| ManifestError::Io {
        path: path.to_owned(),
        source,
    })?;
    let text = std::str::from_utf8(&bytes).map_err(|_| ManifestError::Parse {
        path: path.to_owned(),
        message: "not UTF-8 text".to_owned(),
    })?;
    let manifest = Manifest::parse(text).map_err(|message| ManifestError::Parse {
        path: path.to_owned(),
        message,
    })?;
    let sig_bytes = std::fs::read(signature);
    let checked = match &sig_bytes {
        Ok(sig) => crate::signing::verify(&bytes, sig, trusted, path, signature)
            .map(|k| Authenticity::Signed {
                key: k.path.clone(),
                fingerprint: k.fingerprint.clone(),
                algorithm: k.algorithm().to_owned(),
            })
            .map_err(ManifestError::from),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(ManifestError::Unsigned {
            path: path.to_owned(),
            signature: signature.to_owned(),
        }),
        Err(e) => Err(SignError::Read {
            path: signature.to_owned(),
            source: std::io::Error::new(e.kind(), e.to_string()),
        }
        .into()),
    };
    let authenticity = match checked {
        Ok(a) => a,
        Err(e) if allow_unsigned => Authenticity::UnsignedAllowed { why: e.to_string() },
        Err(e) => return Err(e),
    };
    Ok(Loaded {
        manifest,
        bytes,
        path: path.to_owned(),
        authenticity,
        signature: sig_bytes.ok(),
    })
}

/// Write `manifest` to `path` and its signature to `<path>.sig`.
pub fn write_signed(
    manifest: &Manifest,
    path: &Path,
    key: &SigningKey,
) -> Result<PathBuf, ManifestError> {
    let text = manifest.to_toml();
    let io = |source| ManifestError::Io {
        path: path.to_owned(),
        source,
    };
    std::fs::write(path, &text).map_err(io)?;
    let sig = signature_path(path);
    std::fs::write(&sig, key.sign(text.as_bytes())).map_err(io)?;
    Ok(sig)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str) -> Entry {
        Entry {
            path: path.into(),
            sha256: "ab".repeat(32),
            size: 1,
            name: None,
            version: None,
        }
    }

    #[test]
    fn roundtrip_and_rules() {
        let m = Manifest {
            version: 1,
            pcr: DEFAULT_PCR,
            serial: 7,
            models: vec![entry("/opt/models/a.onnx")],
        };
        assert_eq!(Manifest::parse(&m.to_toml()).unwrap(), m);

        let mut bad = m.clone();
        bad.models[0].sha256 = "AB".repeat(32);
        assert!(bad.check().unwrap_err().contains("lowercase hex"));
        bad.models[0].sha256 = "ab".repeat(31);
        assert!(bad.check().is_err());
        let mut bad = m.clone();
        bad.models.push(entry("/opt/models/a.onnx"));
        assert!(bad.check().unwrap_err().contains("twice"));
        let mut bad = m.clone();
        bad.models[0].path = "rel.onnx".into();
        assert!(bad.check().unwrap_err().contains("absolute"));
        for pcr in [0, 7, 16, 17, 23, 24] {
            assert!(check_pcr(pcr).is_err(), "pcr {pcr}");
        }
        for pcr in 8..=15 {
            assert!(check_pcr(pcr).is_ok());
        }
        assert!(Manifest::parse("version = 1\npcr = 14\nmodel = []\n").is_err());
        assert!(Manifest::parse("version = 2\npcr = 14\n[[model]]\n").is_err());
    }
}
