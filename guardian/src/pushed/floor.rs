//! The floor file: the version (and digest) of the last pushed set put in
//! force, so that no older set is put in force again. Written atomically
//! (temporary file, fsync, rename, fsync of the directory): a crash leaves
//! the old floor or the new one, never a torn one.
//!
//! Where there is a TPM, the same version is kept in an NV index too (the
//! attestor writes it: it owns the TPM session); [`combine`] takes the
//! higher of the two at start and says when they disagree.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
};

use crate::policy_set::Floor;

/// Why the floor file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FloorError {
    /// Reading or writing it.
    #[error("policy floor file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not a floor.
    #[error("policy floor file {path} is malformed: {source}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

/// The floor in `path`; `None` when there is no file (no set was ever put
/// in force here, or it was removed: the NV index, if any, still says).
pub fn read(path: &Path) -> Result<Option<Floor>, FloorError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(FloorError::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| FloorError::Malformed {
            path: path.to_owned(),
            source,
        })
}

/// Write `floor` to `path` atomically.
pub fn write(path: &Path, floor: &Floor) -> Result<(), FloorError> {
    let err = |source| FloorError::Io {
        path: path.to_owned(),
        source,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(err)?;
    let tmp = path.with_extension("json.tmp");
    let body = serde_json::to_vec_pretty(floor).map_err(|e| err(std::io::Error::other(e)))?;
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(&body).map_err(err)?;
    f.write_all(b"\n").map_err(err)?;
    f.sync_all().map_err(err)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(err)?;
    // The rename is durable only once the directory is.
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err)
}

/// The floor in force from the file's and the NV index's word.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Combined {
    /// The higher of the two (`None`: neither holds one).
    pub floor: Option<Floor>,
    /// How they disagreed, in words, if they did.
    pub disagreement: Option<String>,
    /// The NV index is behind the floor (it is written up to it).
    pub nv_behind: bool,
    /// The file is behind the floor (it is written up to it).
    pub file_behind: bool,
}

/// Combine the file's floor with the NV index's version (`nv`: `None`
/// when no index is kept; `Some(None)` when it is kept and not defined
/// yet). The higher wins: an attacker who can rewrite the disk cannot
/// lower the NV index, and one who can reset the NV index cannot lower
/// the file. When the NV index wins, the digest is unknown (the index
/// holds the version only) and stays empty.
pub fn combine(group: &str, file: Option<Floor>, nv: Option<Option<u64>>) -> Combined {
    let file_v = file.as_ref().map_or(0, |f| f.version);
    let Some(nv) = nv else {
        return Combined {
            floor: file,
            disagreement: None,
            nv_behind: false,
            file_behind: false,
        };
    };
    let nv_v = nv.unwrap_or(0);
    let words = |v: Option<u64>| v.map_or_else(|| "nothing".to_owned(), |v| format!("version {v}"));
    let disagreement = (nv_v != file_v).then(|| {
        format!(
            "the policy floor's stores disagree: the TPM NV index holds {}, the floor file {}; the higher ({}) is in force",
            words(nv),
            words(file.as_ref().map(|f| f.version)),
            nv_v.max(file_v)
        )
    });
    if nv_v > file_v {
        Combined {
            floor: Some(Floor {
                group: group.to_owned(),
                version: nv_v,
                digest: String::new(),
            }),
            disagreement,
            nv_behind: false,
            file_behind: true,
        }
    } else {
        Combined {
            nv_behind: nv_v < file_v,
            floor: file,
            disagreement,
            file_behind: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn floor(v: u64) -> Floor {
        Floor {
            group: "cameras".into(),
            version: v,
            digest: format!("{v:064x}"),
        }
    }

    #[test]
    fn written_floors_read_back_and_replace_each_other() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state/floor.json");
        assert_eq!(read(&p).unwrap(), None, "no file: no floor");
        write(&p, &floor(3)).unwrap();
        assert_eq!(read(&p).unwrap(), Some(floor(3)));
        write(&p, &floor(4)).unwrap();
        assert_eq!(read(&p).unwrap(), Some(floor(4)));
        assert!(
            !p.with_extension("json.tmp").exists(),
            "no temporary file left behind"
        );
    }

    #[test]
    fn a_malformed_floor_file_is_an_error_naming_it() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("floor.json");
        std::fs::write(&p, b"{\"version\": \"x\"}").unwrap();
        let e = read(&p).unwrap_err();
        assert!(matches!(e, FloorError::Malformed { .. }));
        assert!(e.to_string().contains("floor.json"), "{e}");
    }

    #[test]
    fn the_higher_store_wins_and_a_disagreement_is_said() {
        // No NV index kept: the file alone, nothing to disagree with.
        let c = combine("cameras", Some(floor(3)), None);
        assert_eq!(c.floor, Some(floor(3)));
        assert_eq!(c.disagreement, None);
        // Both agree.
        let c = combine("cameras", Some(floor(3)), Some(Some(3)));
        assert_eq!(c.floor, Some(floor(3)));
        assert_eq!(c.disagreement, None);
        assert!(!c.nv_behind && !c.file_behind);
        // The file was removed: the NV index holds the floor (its digest
        // unknown).
        let c = combine("cameras", None, Some(Some(5)));
        let f = c.floor.unwrap();
        assert_eq!((f.version, f.digest.as_str()), (5, ""));
        assert!(c.file_behind);
        assert!(c.disagreement.unwrap().contains("floor file nothing"));
        // The file was replaced by an older one.
        let c = combine("cameras", Some(floor(2)), Some(Some(5)));
        assert_eq!(c.floor.unwrap().version, 5);
        // The NV index is behind (a crash between the two writes).
        let c = combine("cameras", Some(floor(4)), Some(Some(3)));
        assert_eq!(c.floor, Some(floor(4)));
        assert!(c.nv_behind);
        assert!(c.disagreement.is_some());
        // The NV index not defined yet while the file has a floor.
        let c = combine("cameras", Some(floor(1)), Some(None));
        assert_eq!(c.floor, Some(floor(1)));
        assert!(c.nv_behind);
        // Nothing anywhere.
        let c = combine("cameras", None, Some(None));
        assert_eq!(c.floor, None);
        assert_eq!(c.disagreement, None);
    }
}
