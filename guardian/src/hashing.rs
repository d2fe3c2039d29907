//! Streaming SHA-256 of model files, several files in parallel.
//!
//! Models can be larger than RAM, so each file is read in large blocks and
//! never held whole. The `sha2` crate picks the CPU's SHA instructions at
//! run time (SHA-NI on x86_64, the ARMv8 cryptography extensions on
//! aarch64), falling back to portable code.

use std::{
    fs::File,
    io::Read as _,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use sha2::{Digest as _, Sha256};

/// Read size: large enough that the per-call overhead disappears, small
/// enough to stay in L2 on the boards we target.
pub const BLOCK: usize = 1 << 20;

/// The digest and size of one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileDigest {
    /// SHA-256.
    pub sha256: [u8; 32],
    /// Bytes hashed.
    pub size: u64,
}

/// Hashing one file failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot hash {path}: {source}")]
pub struct HashError {
    /// The file.
    pub path: PathBuf,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

/// SHA-256 of one file, streamed.
pub fn hash_file(path: &Path) -> Result<FileDigest, HashError> {
    let err = |source| HashError {
        path: path.to_owned(),
        source,
    };
    let mut f = File::open(path).map_err(err)?;
    let meta = f.metadata().map_err(err)?;
    if !meta.is_file() {
        return Err(err(std::io::Error::other("not a regular file")));
    }
    // Tell the kernel we read front to back once: bigger readahead, and
    // the pages need not crowd out the inference service's working set.
    // SAFETY: advisory call on a valid descriptor.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL) };
    let mut h = Sha256::new();
    let mut buf = vec![0u8; BLOCK];
    let mut size = 0u64;
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(err(e)),
        };
        h.update(&buf[..n]);
        size += n as u64;
    }
    Ok(FileDigest {
        sha256: h.finalize().into(),
        size,
    })
}

/// Hash `paths` on up to `threads` threads (0: one per core). Results come
/// back in the order of `paths`.
pub fn hash_files(paths: &[PathBuf], threads: usize) -> Vec<Result<FileDigest, HashError>> {
    let threads = if threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        threads
    }
    .clamp(1, paths.len().max(1));
    let next = AtomicUsize::new(0);
    let results: Vec<Mutex<Option<Result<FileDigest, HashError>>>> =
        paths.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(p) = paths.get(i) else { break };
                    let r = hash_file(p);
                    if let Ok(mut slot) = results[i].lock() {
                        *slot = Some(r);
                    }
                }
            });
        }
    });
    results
        .into_iter()
        .zip(paths)
        .map(|(m, p)| {
            m.into_inner().ok().flatten().unwrap_or_else(|| {
                Err(HashError {
                    path: p.clone(),
                    source: std::io::Error::other("hashing thread failed"),
                })
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digests_across_block_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, b"").unwrap();
        let abc = dir.path().join("abc");
        std::fs::write(&abc, b"abc").unwrap();
        let big = dir.path().join("big");
        let data: Vec<u8> = (0..(BLOCK * 2 + 17)).map(|i| (i % 251) as u8).collect();
        std::fs::write(&big, &data).unwrap();
        let r = hash_files(&[empty, abc, big.clone()], 2);
        assert_eq!(
            hex::encode(r[0].as_ref().unwrap().sha256),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hex::encode(r[1].as_ref().unwrap().sha256),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let want: [u8; 32] = Sha256::digest(&data).into();
        assert_eq!(r[2].as_ref().unwrap().sha256, want);
        assert_eq!(r[2].as_ref().unwrap().size, data.len() as u64);
    }

    #[test]
    fn errors_name_the_file_and_keep_order() {
        let dir = tempfile::tempdir().unwrap();
        let ok = dir.path().join("ok");
        std::fs::write(&ok, b"x").unwrap();
        let missing = dir.path().join("missing.onnx");
        let r = hash_files(&[missing, ok, dir.path().to_owned()], 0);
        assert!(
            r[0].as_ref()
                .unwrap_err()
                .to_string()
                .contains("missing.onnx")
        );
        assert!(r[1].is_ok());
        assert!(
            r[2].as_ref()
                .unwrap_err()
                .to_string()
                .contains("not a regular file")
        );
    }
}
