//! The maps: writing every table from the targets, syncing a map to
//! exactly what is wanted, the config entry, the unload record, and
//! comparing the kernel's copies with what the agent wrote. No attaching,
//! no pins.

use std::path::PathBuf;

use aya::maps::{Array, HashMap, LpmTrie, Map, MapData, lpm_trie::Key};
use guardian_common::{
    EgressRule, InodeKey, KernelConfig, MeasuredPath, NameKey, PathKey, ProtectedFile,
    ServiceDigest, maps as map_names,
};

use super::{GuardError, map_err, missing_map};
use crate::targets::{MAX_PROTECTED, Targets};

pub(super) fn write_auth(
    maps: &mut std::collections::HashMap<&'static str, Map>,
    auth: &crate::unload::Auth,
) -> Result<(), GuardError> {
    let m = maps
        .get_mut(map_names::AUTH)
        .ok_or_else(|| missing_map(map_names::AUTH))?;
    let mut arr: Array<&mut MapData, [u8; 32]> =
        Array::try_from(m).map_err(map_err(map_names::AUTH))?;
    for (i, e) in auth.entries().iter().enumerate() {
        arr.set(i as u32, e, 0).map_err(map_err(map_names::AUTH))?;
    }
    Ok(())
}

pub(super) fn set_config(
    maps: &mut std::collections::HashMap<&'static str, Map>,
    cfg: KernelConfig,
) -> Result<(), GuardError> {
    let m = maps
        .get_mut(map_names::CONFIG)
        .ok_or_else(|| missing_map(map_names::CONFIG))?;
    let mut arr: Array<&mut MapData, KernelConfig> =
        Array::try_from(m).map_err(map_err(map_names::CONFIG))?;
    arr.set(0, cfg, 0).map_err(map_err(map_names::CONFIG))
}

/// An entry the kernel added itself: a copy of a service executable
/// recognised by content (`exec.rs`), in the service and exec tables.
pub(super) fn kernel_added<V: aya::Pod>(name: &str, v: &V) -> bool {
    if name != map_names::SERVICE_EXES && name != map_names::ALLOWED_EXEC {
        return false;
    }
    // SAFETY: V is a Pod of at least 4 bytes for these two maps (u32).
    let bytes = unsafe {
        std::slice::from_raw_parts((v as *const V).cast::<u8>(), std::mem::size_of::<V>())
    };
    bytes.len() == 4
        && u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
            & ServiceDigest::KERNEL_ADDED
            != 0
}

/// Make a hash map hold exactly `want`: insert (or overwrite) every entry,
/// then remove the keys that are no longer wanted (but the entries the
/// kernel added itself, see [`kernel_added`]).
pub(super) fn sync_hash<K, V>(
    maps: &mut std::collections::HashMap<&'static str, Map>,
    name: &'static str,
    want: &[(K, V)],
    keep_kernel: bool,
) -> Result<(), GuardError>
where
    K: aya::Pod + Eq + std::hash::Hash,
    V: aya::Pod,
{
    let m = maps.get_mut(name).ok_or_else(|| missing_map(name))?;
    let mut h: HashMap<&mut MapData, K, V> = HashMap::try_from(m).map_err(map_err(name))?;
    for (k, v) in want {
        h.insert(k, v, 0).map_err(map_err(name))?;
    }
    let keep: std::collections::HashSet<&K> = want.iter().map(|(k, _)| k).collect();
    let stale: Vec<K> = h
        .iter()
        .filter_map(Result::ok)
        .filter(|(k, v)| !(keep.contains(k) || (keep_kernel && kernel_added(name, v))))
        .map(|(k, _)| k)
        .collect();
    for k in stale {
        h.remove(&k).map_err(map_err(name))?;
    }
    Ok(())
}

pub(super) fn sync_lpm<const N: usize>(
    maps: &mut std::collections::HashMap<&'static str, Map>,
    name: &'static str,
    want: &[([u8; N], u32, EgressRule)],
) -> Result<(), GuardError> {
    let m = maps.get_mut(name).ok_or_else(|| missing_map(name))?;
    let mut t: LpmTrie<&mut MapData, [u8; N], EgressRule> =
        LpmTrie::try_from(m).map_err(map_err(name))?;
    for (addr, len, rule) in want {
        t.insert(&Key::new(*len, *addr), rule, 0)
            .map_err(map_err(name))?;
    }
    let keep: Vec<(u32, [u8; N])> = want.iter().map(|(a, l, _)| (*l, *a)).collect();
    let stale: Vec<Key<[u8; N]>> = t
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !keep.contains(&(k.prefix_len(), k.data())))
        .collect();
    for k in stale {
        t.remove(&k).map_err(map_err(name))?;
    }
    Ok(())
}

/// A table's entries: each key with its position (the id events report).
pub(super) fn indexed<K: Copy>(entries: &[(PathBuf, K)]) -> Vec<(K, u32)> {
    entries
        .iter()
        .enumerate()
        .map(|(i, (_, k))| (*k, i as u32))
        .collect()
}

/// What the agent last wrote to the tables it owns: what the kernel's
/// copies must still hold when [`super::Guard::check_tables`] looks.
#[derive(Clone, Debug, Default)]
pub(super) struct Written {
    pub(super) protected: Vec<(InodeKey, ProtectedFile)>,
    pub(super) writers: Vec<(InodeKey, u32)>,
    pub(super) service: Vec<(InodeKey, u32)>,
    pub(super) exec: Vec<(InodeKey, u32)>,
    pub(super) names: Vec<(NameKey, u32)>,
    pub(super) paths: Vec<(PathKey, MeasuredPath)>,
}

/// The measured paths: every protected file that is not guardian's own,
/// and every directory of a protected tree, by the absolute path without
/// symlinks that the kernel's `d_path` gives for it (see
/// `guardian_common::rules::MEASURED_OPEN`). A path that no longer
/// resolves, or is too long for a key, is left out and said.
pub(super) fn measured_paths(targets: &Targets) -> Vec<(PathKey, MeasuredPath)> {
    use std::os::unix::ffi::OsStrExt as _;
    let files = targets
        .files
        .iter()
        .take(targets.own_from)
        .enumerate()
        .map(|(id, (p, k))| (p, *k, 0, id as u32));
    let trees = targets
        .dirs
        .iter()
        .enumerate()
        .filter(|(_, (_, _, f))| f & ProtectedFile::TREE != 0 && f & ProtectedFile::SELF == 0)
        .map(|(i, (p, k, _))| {
            (
                p,
                *k,
                MeasuredPath::TREE,
                ProtectedFile::DIR_ID_BASE + i as u32,
            )
        });
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (path, key, flags, id) in files.chain(trees) {
        let real = match std::fs::canonicalize(path) {
            Ok(r) => r,
            Err(e) => {
                log::warn!(
                    "measure at use: {} is not checked by name ({e})",
                    path.display()
                );
                continue;
            }
        };
        let Some(k) = PathKey::new(real.as_os_str().as_bytes()) else {
            log::warn!(
                "measure at use: {} is not checked by name (longer than {} bytes)",
                real.display(),
                PathKey::LEN - 1
            );
            continue;
        };
        if seen.insert(k) {
            out.push((k, MeasuredPath { key, flags, id }));
        }
    }
    out
}

/// Write every table from `targets`; `pins` are added as guardian's own
/// files, `pin_dirs` as guardian's own directories.
pub(super) fn fill_tables(
    maps: &mut std::collections::HashMap<&'static str, Map>,
    targets: &Targets,
    pins: &[(PathBuf, InodeKey)],
    pin_dirs: &[(PathBuf, InodeKey, u32)],
    keep_kernel: bool,
) -> Result<Written, GuardError> {
    let mut files: Vec<(InodeKey, ProtectedFile)> = targets
        .files
        .iter()
        .enumerate()
        .map(|(id, (_, key))| {
            let flags = if id >= targets.own_from {
                ProtectedFile::SELF
            } else {
                0
            };
            (
                *key,
                ProtectedFile {
                    id: id as u32,
                    flags,
                },
            )
        })
        .collect();
    let base = targets.files.len();
    files.extend(pins.iter().enumerate().map(|(i, (_, key))| {
        (
            *key,
            ProtectedFile {
                id: (base + i) as u32,
                flags: ProtectedFile::SELF,
            },
        )
    }));
    // Directories after files: a file's own entry wins over a directory
    // entry for the same inode (there is none: one is a file, the other
    // a directory or symlink).
    let mut seen: std::collections::HashSet<InodeKey> = files.iter().map(|(k, _)| *k).collect();
    let all_dirs = targets.dirs.iter().chain(pin_dirs);
    for (i, (_, key, flags)) in all_dirs.enumerate() {
        if seen.insert(*key) {
            files.push((
                *key,
                ProtectedFile {
                    id: ProtectedFile::DIR_ID_BASE + i as u32,
                    flags: *flags,
                },
            ));
        }
    }
    if files.len() > MAX_PROTECTED {
        return Err(GuardError::TooMany {
            count: files.len(),
            limit: MAX_PROTECTED,
        });
    }
    let w = Written {
        protected: files,
        writers: indexed(&targets.writers),
        service: indexed(&targets.service),
        exec: indexed(&targets.exec),
        names: indexed(&targets.names),
        paths: measured_paths(targets),
    };
    sync_hash(maps, map_names::PROTECTED_FILES, &w.protected, false)?;
    sync_hash(maps, map_names::ALLOWED_WRITERS, &w.writers, false)?;
    sync_hash(maps, map_names::SERVICE_EXES, &w.service, keep_kernel)?;
    sync_hash(maps, map_names::ALLOWED_EXEC, &w.exec, keep_kernel)?;
    sync_hash(maps, map_names::PROTECTED_NAMES, &w.names, false)?;
    sync_hash(maps, map_names::MEASURED_PATHS, &w.paths, false)?;
    sync_digests(maps, &targets.service_digests)?;
    sync_lpm(maps, map_names::EGRESS_V4, &targets.egress4)?;
    sync_lpm(maps, map_names::EGRESS_V6, &targets.egress6)?;
    Ok(w)
}

/// Write the service's executables by content (unused slots zeroed).
pub(super) fn sync_digests(
    maps: &mut std::collections::HashMap<&'static str, Map>,
    digests: &[ServiceDigest],
) -> Result<(), GuardError> {
    let name = map_names::SERVICE_DIGESTS;
    let m = maps.get_mut(name).ok_or_else(|| missing_map(name))?;
    let mut arr: Array<&mut MapData, ServiceDigest> = Array::try_from(m).map_err(map_err(name))?;
    for i in 0..ServiceDigest::MAX {
        let d = digests.get(i as usize).copied().unwrap_or_default();
        arr.set(i, d, 0).map_err(map_err(name))?;
    }
    Ok(())
}

/// Compare a hash map with what was written: every difference, named.
pub(super) fn diff_hash<K, V>(
    maps: &std::collections::HashMap<&'static str, Map>,
    name: &'static str,
    want: &[(K, V)],
    kernel_adds: bool,
    out: &mut Vec<String>,
) -> Result<(), GuardError>
where
    K: aya::Pod + Eq + std::hash::Hash + std::fmt::Debug,
    V: aya::Pod + PartialEq + std::fmt::Debug,
{
    let m = maps.get(name).ok_or_else(|| missing_map(name))?;
    let h: HashMap<&MapData, K, V> = HashMap::try_from(m).map_err(map_err(name))?;
    let want_map: std::collections::HashMap<&K, &V> = want.iter().map(|(k, v)| (k, v)).collect();
    let mut found = 0usize;
    for item in h.iter() {
        let (k, v) = item.map_err(map_err(name))?;
        found += 1;
        match want_map.get(&k) {
            None if kernel_added(name, &v) && kernel_adds => {}
            None => out.push(format!("{name}: entry {k:?} added behind guardian's back")),
            Some(w) if **w != v => {
                out.push(format!("{name}: entry {k:?} changed from {w:?} to {v:?}"))
            }
            Some(_) => {}
        }
    }
    if found < want.len() {
        for (k, _) in want {
            if h.get(k, 0).is_err() {
                out.push(format!(
                    "{name}: entry {k:?} removed behind guardian's back"
                ));
            }
        }
    }
    Ok(())
}
