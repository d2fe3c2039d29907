//! What a verifier remembers about one device between quotes: the nonce
//! it issued, the TPM's clock and counters at the last quote, the last
//! manifest serial, and findings that stay open until an operator
//! acknowledges them.
//!
//! The state is only updated from evidence whose quote verified (the
//! enrolled AK's signature over the verifier's own nonce, the PCR values
//! and the log agreeing): a network attacker who mangles a bundle cannot
//! move it. It is a small JSON document saved crash-safely (a temporary
//! file, `fsync`, `rename`, `fsync` of the directory), so a crash leaves
//! the old state or the new one; the fleet service keeps the same document
//! in its replicated store.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// State format version.
pub const STATE_VERSION: u32 = 1;

/// One device's verifier state.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DeviceState {
    /// Format version.
    pub version: u32,
    /// SHA-256 of the enrolled AK's public key (SEC1 point), hex: a state
    /// belongs to one AK.
    pub ak: String,
    /// The nonce issued by `guardian challenge` and not yet used, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_nonce: Option<String>,
    /// The TPM at the last verified quote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<Seen>,
    /// The highest manifest serial seen in force.
    #[serde(default)]
    pub manifest_serial: u64,
    /// The highest pushed policy set version seen in force (or as the
    /// device's floor).
    #[serde(default)]
    pub policy_set_version: u64,
    /// The device group whose pushed sets it was last seen following
    /// (empty: none seen); another group later is a finding.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub policy_group: String,
    /// Findings, open and acknowledged.
    #[serde(default)]
    pub findings: Vec<Finding>,
    /// Quotes verified with this state.
    #[serde(default)]
    pub quotes: u64,
}

/// The TPM's clock and counters at a verified quote.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Seen {
    /// `clockInfo.clock` (ms).
    pub clock: u64,
    /// `clockInfo.resetCount`.
    pub reset_count: u32,
    /// `clockInfo.restartCount`.
    pub restart_count: u32,
    /// The boot id the device claimed.
    pub boot_id: String,
    /// When the verifier saw it (RFC 3339, the verifier's clock).
    pub at: String,
}

/// Something wrong with the device that stays open, across quotes and
/// reboots, until an operator acknowledges it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Finding {
    /// Stable id: `BOOT#SEQ:check` for a record, `BOOT:check` otherwise.
    pub id: String,
    /// The verifier check that found it.
    pub check: String,
    /// Why, in words.
    pub reason: String,
    /// When the verifier first saw it.
    pub since: String,
    /// When and by whom it was acknowledged; `None` while open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged: Option<String>,
}

/// Errors reading or saving a state; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// I/O failed.
    #[error("verifier state {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not a state document.
    #[error("verifier state {path} is malformed: {message}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// No such finding.
    #[error("verifier state {path} has no open finding {id:?}")]
    NoFinding {
        /// The file.
        path: PathBuf,
        /// The id asked for.
        id: String,
    },
}

impl DeviceState {
    /// Read `path`; `None` when it does not exist yet (first contact).
    pub fn read(path: &Path) -> Result<Option<Self>, StateError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StateError::Io {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let st: Self = serde_json::from_slice(&bytes).map_err(|e| StateError::Malformed {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        if st.version != STATE_VERSION {
            return Err(StateError::Malformed {
                path: path.to_owned(),
                message: format!("version {} is not {STATE_VERSION}", st.version),
            });
        }
        Ok(Some(st))
    }

    /// A fresh state for the AK with SEC1 point `ak`.
    pub fn new(ak_sec1: &[u8]) -> Self {
        use sha2::{Digest as _, Sha256};
        Self {
            version: STATE_VERSION,
            ak: hex::encode(Sha256::digest(ak_sec1)),
            ..Self::default()
        }
    }

    /// Save crash-safely (see the module docs).
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        let io = |source| StateError::Io {
            path: path.to_owned(),
            source,
        };
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let mut tmp = tempfile_in(dir, path).map_err(io)?;
        let json = serde_json::to_vec_pretty(self).map_err(|e| io(std::io::Error::other(e)))?;
        tmp.1.write_all(&json).map_err(io)?;
        tmp.1.sync_all().map_err(io)?;
        std::fs::rename(&tmp.0, path).map_err(io)?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
        Ok(())
    }

    /// The findings still open.
    pub fn open_findings(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| f.acknowledged.is_none())
    }

    /// Acknowledge finding `id` (or every open one for `all`).
    pub fn acknowledge(&mut self, id: &str, note: &str, path: &Path) -> Result<usize, StateError> {
        let when = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        let mut n = 0;
        for f in self
            .findings
            .iter_mut()
            .filter(|f| f.acknowledged.is_none())
        {
            if id == "all" || f.id == id {
                f.acknowledged = Some(format!("{when} {note}"));
                n += 1;
            }
        }
        if n == 0 {
            return Err(StateError::NoFinding {
                path: path.to_owned(),
                id: id.to_owned(),
            });
        }
        Ok(n)
    }
}

fn tempfile_in(dir: &Path, target: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "state".into());
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    Ok((tmp, f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_read_acknowledge() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev.json");
        assert!(DeviceState::read(&path).unwrap().is_none());
        let mut st = DeviceState::new(&[4; 65]);
        st.findings.push(Finding {
            id: "b#3:model".into(),
            check: "model".into(),
            reason: "r".into(),
            since: "t".into(),
            acknowledged: None,
        });
        st.save(&path).unwrap();
        let mut back = DeviceState::read(&path).unwrap().unwrap();
        assert_eq!(back, st);
        assert!(back.acknowledge("nope", "", &path).is_err());
        assert_eq!(back.acknowledge("b#3:model", "ops", &path).unwrap(), 1);
        assert_eq!(back.open_findings().count(), 0);
        std::fs::write(&path, b"{").unwrap();
        assert!(DeviceState::read(&path).is_err());
    }
}
