//! The resolved targets: everything the kernel tables and the userspace
//! rungs protect, allow and recognise, from the config's paths and the
//! policies' static rules, as inodes, name keys and prefixes.
//!
//! Owns resolving paths (symlinks followed component by component, every
//! directory on the way guarded), walking protected trees and library
//! directories, the service's executables by content, and the egress
//! allowlist. It resolves before anything touches the kernel, so a bad
//! path or CIDR is a config error, not a half-started guard.
//!
//! May not touch the kernel (the guard writes the tables, the rungs place
//! their marks): every part of enforcement reads a [`Targets`], none of
//! them is needed to make one.

use std::{
    collections::BTreeMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use guardian_common::{EgressRule, InodeKey, NameKey, ProtectedFile, ServiceDigest, rules};

use crate::config::{GuardConfig, ServiceConfig, parse_egress};

/// Why the config's paths could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum TargetsError {
    /// A protected path or writer could not be resolved.
    #[error("{what} {path}: {source}")]
    Path {
        /// "protected path" or "allowed writer".
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A protected path or writer is of the wrong kind.
    #[error("{what} {path}: {problem}")]
    PathKind {
        /// "protected path" or "allowed writer".
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// The config protects nothing.
    #[error("[guard] protected is empty: nothing to protect")]
    NothingProtected,
    /// Too many entries for a kernel map.
    #[error("{count} protected files exceed the limit of {limit}")]
    TooMany {
        /// How many were found.
        count: usize,
        /// The map's size.
        limit: usize,
    },
    /// An egress entry is malformed.
    #[error("[service] egress: {0}")]
    Egress(String),
}

/// Maximum number of protected files (size of the kernel map).
pub const MAX_PROTECTED: usize = 16384;
/// Maximum number of allowed writer executables.
pub const MAX_WRITERS: usize = 1024;
/// Maximum number of files the service may execute or map executable.
pub const MAX_EXEC: usize = 16384;

/// Everything the kernel tables hold, resolved from the config.
#[derive(Clone, Debug, Default)]
pub struct Targets {
    /// Protected files; the index is the id the kernel reports. Entries
    /// from `own_from` on are guardian's own files.
    pub files: Vec<(PathBuf, InodeKey)>,
    /// Index of the first of guardian's own files in `files`.
    pub own_from: usize,
    /// Allowed writer executables.
    pub writers: Vec<(PathBuf, InodeKey)>,
    /// Protected names that do not exist yet.
    pub names: Vec<(PathBuf, NameKey)>,
    /// The inference service's executables.
    pub service: Vec<(PathBuf, InodeKey)>,
    /// What the service may execute or map executable.
    pub exec: Vec<(PathBuf, InodeKey)>,
    /// IPv4 egress allowlist: prefix, length, ports.
    pub egress4: Vec<([u8; 4], u32, EgressRule)>,
    /// IPv6 egress allowlist.
    pub egress6: Vec<([u8; 16], u32, EgressRule)>,
    /// `guardian_common::rules` bits in force.
    pub rules: u32,
    /// guardian's own executable.
    pub self_exe: InodeKey,
    /// The root directory, `/`: every protected path lies below it
    /// (`pivot_root(2)` moving it away is refused).
    pub root: InodeKey,
    /// Directories guarded for the files' sake, with their
    /// `ProtectedFile` flags: every directory on the path to a protected
    /// file (`PATH`), every directory inside a protected tree (`TREE`),
    /// every symlink met on the way to one (`PATH`: it may not be
    /// replaced). Events name them by `ProtectedFile::DIR_ID_BASE + index`.
    pub dirs: Vec<(PathBuf, InodeKey, u32)>,
    /// The service's executables by content (size and SHA-256), for
    /// recognising a copy at another inode.
    pub service_digests: Vec<ServiceDigest>,
}

/// Symlinks followed while resolving one path, at most (as the kernel's
/// `MAXSYMLINKS`).
const MAX_LINKS: usize = 40;

/// Resolve `path` to an absolute path without symlinks, component by
/// component, and collect every symlink met on the way (by its own
/// inode): each is a name the path depends on.
fn resolve_links(path: &Path) -> Result<(PathBuf, Vec<(PathBuf, InodeKey)>), TargetsError> {
    use std::path::Component;
    let err = |problem| TargetsError::PathKind {
        what: "protected path",
        path: path.to_owned(),
        problem,
    };
    let mut links = Vec::new();
    let mut todo: Vec<std::ffi::OsString> = Vec::new();
    let abs = if path.is_absolute() {
        path.to_owned()
    } else {
        std::env::current_dir()
            .map_err(io_err("protected path", path))?
            .join(path)
    };
    for c in abs.components().rev() {
        match c {
            Component::Normal(n) => todo.push(n.to_owned()),
            Component::ParentDir => todo.push("..".into()),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    let mut at = PathBuf::from("/");
    while let Some(name) = todo.pop() {
        if name == ".." {
            at.pop();
            continue;
        }
        let next = at.join(&name);
        let meta = std::fs::symlink_metadata(&next).map_err(io_err("protected path", &next))?;
        if !meta.file_type().is_symlink() {
            at = next;
            continue;
        }
        if links.len() >= MAX_LINKS {
            return Err(err("too many levels of symbolic links"));
        }
        links.push((next.clone(), inode_key(&meta)));
        let target = std::fs::read_link(&next).map_err(io_err("protected path", &next))?;
        if target.is_absolute() {
            at = PathBuf::from("/");
        }
        for c in target.components().rev() {
            match c {
                Component::Normal(n) => todo.push(n.to_owned()),
                Component::ParentDir => todo.push("..".into()),
                Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            }
        }
    }
    Ok((at, links))
}

/// Add `flags` to the directory entry of `path` in `dirs` (by inode).
pub(crate) fn add_dir(
    dirs: &mut BTreeMap<InodeKey, (PathBuf, u32)>,
    path: &Path,
    flags: u32,
) -> Result<(), TargetsError> {
    let meta = std::fs::symlink_metadata(path).map_err(io_err("protected path", path))?;
    let e = dirs
        .entry(inode_key(&meta))
        .or_insert_with(|| (path.to_owned(), 0));
    e.1 |= flags;
    Ok(())
}

/// Guard the path to `target` (already free of symlinks): every directory
/// above it but the root, which nothing can rename and whose mounts do
/// not change what running processes see. `own`: guardian's own path
/// (only guardian may change it, and only where no model needs it).
pub(crate) fn add_path(
    dirs: &mut BTreeMap<InodeKey, (PathBuf, u32)>,
    target: &Path,
    own: bool,
) -> Result<(), TargetsError> {
    let mut at = target.parent();
    while let Some(dir) = at {
        if dir.parent().is_none() {
            break;
        }
        let flags = ProtectedFile::PATH | if own { ProtectedFile::SELF } else { 0 };
        add_dir(dirs, dir, flags)?;
        at = dir.parent();
    }
    Ok(())
}

/// Settle the flags of directories guarded for several reasons: guardian's
/// own mark is dropped where a model's path or tree needs the directory
/// too (the stricter rule wins).
fn settle_dirs(
    dirs: BTreeMap<InodeKey, (PathBuf, u32)>,
    model: &std::collections::BTreeSet<InodeKey>,
) -> Vec<(PathBuf, InodeKey, u32)> {
    dirs.into_iter()
        .map(|(k, (p, mut f))| {
            if model.contains(&k) {
                f &= !ProtectedFile::SELF;
            }
            (p, k, f)
        })
        .collect()
}

/// The kernel-encoded key of a file's metadata (`st_dev` uses glibc's
/// `makedev` encoding, the kernel keeps `major << 20 | minor`).
pub fn inode_key(meta: &std::fs::Metadata) -> InodeKey {
    let dev = meta.dev();
    let major = (((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0x0000_0fff)) as u32;
    let minor = (((dev >> 12) & 0xffff_ff00) | (dev & 0x0000_00ff)) as u32;
    InodeKey::from_major_minor(major, minor, meta.ino())
}

fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> TargetsError + 'a {
    move |source| TargetsError::Path {
        what,
        path: path.to_owned(),
        source,
    }
}

fn executable(what: &'static str, p: &Path) -> Result<InodeKey, TargetsError> {
    let meta = std::fs::metadata(p).map_err(io_err(what, p))?;
    if !meta.is_file() || meta.mode() & 0o111 == 0 {
        return Err(TargetsError::PathKind {
            what,
            path: p.to_owned(),
            problem: "not an executable regular file",
        });
    }
    Ok(inode_key(&meta))
}

impl Targets {
    /// Resolve the config's paths. Directories contribute every regular
    /// file below them (symlinks are not followed inside directories: a link
    /// could point anywhere). `own` are guardian's own files (binary,
    /// config, keys, manifest), protected so that only guardian may change
    /// them; those that do not exist are skipped.
    pub fn resolve(
        cfg: &GuardConfig,
        service: &ServiceConfig,
        own: &[PathBuf],
    ) -> Result<Self, TargetsError> {
        if cfg.protected.is_empty() {
            return Err(TargetsError::NothingProtected);
        }
        let mut seen = BTreeMap::new();
        let mut dirs = BTreeMap::new();
        let mut model_dirs = std::collections::BTreeSet::new();
        for p in &cfg.protected {
            let meta = std::fs::metadata(p).map_err(io_err("protected path", p))?;
            // The name the service opens: every symlink and directory on
            // it is guarded, so it keeps leading to the measured inodes.
            let (real, links) = resolve_links(p)?;
            for (l, k) in links {
                add_path(&mut dirs, &l, false)?;
                dirs.entry(k).or_insert((l, 0)).1 |= ProtectedFile::PATH;
                model_dirs.insert(k);
            }
            add_path(&mut dirs, &real, false)?;
            if meta.is_dir() {
                add_dir(&mut dirs, &real, ProtectedFile::PATH | ProtectedFile::TREE)?;
                walk(&real, &mut seen, &mut dirs)?;
            } else if meta.is_file() {
                seen.entry(inode_key(&meta)).or_insert_with(|| p.clone());
            } else {
                return Err(TargetsError::PathKind {
                    what: "protected path",
                    path: p.clone(),
                    problem: "not a regular file or directory",
                });
            }
        }
        // A protected name that exists is protected by its inode.
        let mut names = Vec::new();
        for n in &cfg.protected_names {
            match std::fs::symlink_metadata(n) {
                Ok(meta) => {
                    seen.entry(inode_key(&meta)).or_insert_with(|| n.clone());
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let (Some(dir), Some(file)) = (n.parent(), n.file_name()) else {
                        return Err(TargetsError::PathKind {
                            what: "protected name",
                            path: n.clone(),
                            problem: "needs a directory and a file name",
                        });
                    };
                    let meta = std::fs::metadata(dir).map_err(io_err("protected name", n))?;
                    let bytes = file.as_encoded_bytes();
                    if bytes.len() >= NameKey::LEN {
                        return Err(TargetsError::PathKind {
                            what: "protected name",
                            path: n.clone(),
                            problem: "file name too long to protect by name",
                        });
                    }
                    let mut key = NameKey {
                        dir: inode_key(&meta),
                        name: [0; NameKey::LEN],
                    };
                    key.name[..bytes.len()].copy_from_slice(bytes);
                    names.push((n.clone(), key));
                }
                Err(e) => return Err(io_err("protected name", n)(e)),
            }
        }
        model_dirs.extend(dirs.keys().copied());
        let mut files: Vec<_> = seen.into_iter().map(|(k, p)| (p, k)).collect();
        let own_from = files.len();
        if cfg.protect_self {
            for p in own {
                let Ok(meta) = std::fs::metadata(p) else {
                    continue;
                };
                // A directory of guardian's (the fleet spool): a tree only
                // guardian writes in. Its files come and go with every
                // segment, so the directory's entry governs them, as it
                // does a file created in a model tree.
                if meta.is_dir() {
                    if let Ok((real, links)) = resolve_links(p) {
                        for (l, k) in links {
                            add_path(&mut dirs, &l, true)?;
                            dirs.entry(k).or_insert((l, 0)).1 |=
                                ProtectedFile::PATH | ProtectedFile::SELF;
                        }
                        add_path(&mut dirs, &real, true)?;
                        add_dir(
                            &mut dirs,
                            &real,
                            ProtectedFile::PATH | ProtectedFile::TREE | ProtectedFile::SELF,
                        )?;
                    }
                    continue;
                }
                if meta.is_file() {
                    let key = inode_key(&meta);
                    if !files.iter().any(|(_, k)| *k == key) {
                        files.push((p.clone(), key));
                    }
                    // Its path too: a directory of guardian's renamed away
                    // and rebuilt would hand the next start another config.
                    if let Ok((real, links)) = resolve_links(p) {
                        for (l, k) in links {
                            add_path(&mut dirs, &l, true)?;
                            dirs.entry(k).or_insert((l, 0)).1 |=
                                ProtectedFile::PATH | ProtectedFile::SELF;
                        }
                        add_path(&mut dirs, &real, true)?;
                    }
                }
            }
        }
        let dirs = settle_dirs(dirs, &model_dirs);
        if files.len() > MAX_PROTECTED {
            return Err(TargetsError::TooMany {
                count: files.len(),
                limit: MAX_PROTECTED,
            });
        }
        let mut writers = Vec::new();
        for w in &cfg.allowed_writers {
            writers.push((w.clone(), executable("allowed writer", w)?));
        }
        if writers.len() > MAX_WRITERS {
            return Err(TargetsError::TooMany {
                count: writers.len(),
                limit: MAX_WRITERS,
            });
        }
        let self_exe = std::fs::metadata("/proc/self/exe")
            .map(|m| inode_key(&m))
            .unwrap_or_default();
        let root = std::fs::metadata("/")
            .map(|m| inode_key(&m))
            .unwrap_or_default();
        if files.len() + dirs.len() > MAX_PROTECTED {
            return Err(TargetsError::TooMany {
                count: files.len() + dirs.len(),
                limit: MAX_PROTECTED,
            });
        }
        let mut t = Self {
            files,
            own_from,
            writers,
            names,
            self_exe,
            root,
            dirs,
            rules: rules::GUARD_SELF,
            ..Self::default()
        };
        t.resolve_service(service)?;
        Ok(t)
    }

    fn resolve_service(&mut self, svc: &ServiceConfig) -> Result<(), TargetsError> {
        if svc.exe.is_empty() {
            return Ok(());
        }
        for e in &svc.exe {
            self.service
                .push((e.clone(), executable("service exe", e)?));
        }
        // The same executables by content: a copy at another path is the
        // service too (the kernel hashes a file of one of these sizes with
        // IMA when it is run).
        for (p, _) in &self.service {
            if self.service_digests.len() >= ServiceDigest::MAX as usize {
                break;
            }
            let d = crate::hashing::hash_file(p).map_err(|_| TargetsError::PathKind {
                what: "service exe",
                path: p.clone(),
                problem: "cannot be read to hash it",
            })?;
            if !self.service_digests.iter().any(|s| s.sha256 == d.sha256) {
                self.service_digests.push(ServiceDigest {
                    size: d.size,
                    sha256: d.sha256,
                });
            }
        }
        self.rules |= rules::SERVICE_BY_CONTENT;
        if svc.deny_ptrace {
            self.rules |= rules::NO_PTRACE;
        }
        if svc.deny_preload {
            self.rules |= rules::NO_PRELOAD;
        }
        if svc.measured_open {
            self.rules |= rules::MEASURED_OPEN;
        }
        if svc.exec_allowlist {
            self.rules |= rules::EXEC_ALLOWLIST;
            for e in &svc.allowed_exec {
                self.exec
                    .push((e.clone(), executable("service allowed_exec", e)?));
            }
        }
        if !svc.library_dirs.is_empty() {
            self.rules |= rules::LIBRARY_ALLOWLIST;
            let mut seen = BTreeMap::new();
            for d in &svc.library_dirs {
                let meta = std::fs::metadata(d).map_err(io_err("service library_dirs", d))?;
                if !meta.is_dir() {
                    return Err(TargetsError::PathKind {
                        what: "service library_dirs",
                        path: d.clone(),
                        problem: "not a directory",
                    });
                }
                walk_following(d, &mut seen, 0)?;
            }
            self.exec.extend(seen.into_iter().map(|(k, p)| (p, k)));
        }
        // The service's own binaries are always allowed to run and map.
        let own: Vec<_> = self.service.clone();
        self.exec.extend(own);
        if self.exec.len() > MAX_EXEC {
            return Err(TargetsError::TooMany {
                count: self.exec.len(),
                limit: MAX_EXEC,
            });
        }
        if let Some(egress) = &svc.egress {
            self.rules |= rules::EGRESS_ALLOWLIST;
            for e in egress {
                match parse_egress(e).map_err(TargetsError::Egress)? {
                    (std::net::IpAddr::V4(a), len, rule) => {
                        self.egress4.push((a.octets(), len, rule))
                    }
                    (std::net::IpAddr::V6(a), len, rule) => {
                        self.egress6.push((a.octets(), len, rule))
                    }
                }
            }
        }
        Ok(())
    }
}

/// Every regular file under `dir`, following symlinks (library
/// directories are full of them, and what the loader maps is the target),
/// to a bounded depth.
fn walk_following(
    dir: &Path,
    out: &mut BTreeMap<InodeKey, PathBuf>,
    depth: u32,
) -> Result<(), TargetsError> {
    if depth > 6 {
        return Ok(());
    }
    let entries = std::fs::read_dir(dir).map_err(io_err("service library_dirs", dir))?;
    for e in entries.flatten() {
        let path = e.path();
        // Dangling links and unreadable entries are not libraries.
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            if !e.file_type().is_ok_and(|t| t.is_symlink()) {
                walk_following(&path, out, depth + 1)?;
            }
        } else if meta.is_file() {
            out.entry(inode_key(&meta)).or_insert(path);
        }
    }
    Ok(())
}

fn walk(
    dir: &Path,
    out: &mut BTreeMap<InodeKey, PathBuf>,
    dirs: &mut BTreeMap<InodeKey, (PathBuf, u32)>,
) -> Result<(), TargetsError> {
    let err = |source| TargetsError::Path {
        what: "protected path",
        path: dir.to_owned(),
        source,
    };
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(err)?
        .collect::<Result<_, _>>()
        .map_err(err)?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let meta = std::fs::symlink_metadata(&path).map_err(|source| TargetsError::Path {
            what: "protected path",
            path: path.clone(),
            source,
        })?;
        if meta.is_dir() {
            dirs.entry(inode_key(&meta))
                .or_insert_with(|| (path.clone(), 0))
                .1 |= ProtectedFile::TREE;
            walk(&path, out, dirs)?;
        } else if meta.is_file() {
            out.entry(inode_key(&meta)).or_insert(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{EgressEntry, PortSpec};
    use guardian_common::EgressRule;

    #[test]
    fn service_rules_and_egress() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("m.onnx"), b"m").unwrap();
        let cfg = GuardConfig {
            protected: vec![dir.path().to_owned()],
            ..GuardConfig::default()
        };
        let entry = |cidr: &str, ports: Vec<PortSpec>| EgressEntry {
            cidr: cidr.into(),
            ports,
        };
        let svc = ServiceConfig {
            exe: vec![PathBuf::from("/bin/sh")],
            library_dirs: vec![dir.path().to_owned()],
            egress: Some(vec![
                entry("127.0.0.2/32", vec![PortSpec::Port(8080)]),
                entry(
                    "10.0.0.0/8",
                    vec![PortSpec::Range("8000-8100".into()), PortSpec::Port(443)],
                ),
                entry("fd00::/8", vec![]),
            ]),
            ..ServiceConfig::default()
        };
        let t = Targets::resolve(&cfg, &svc, &[]).unwrap();
        assert_eq!(
            t.rules,
            rules::GUARD_SELF
                | rules::SERVICE_BY_CONTENT
                | rules::NO_PTRACE
                | rules::NO_PRELOAD
                | rules::MEASURED_OPEN
                | rules::EXEC_ALLOWLIST
                | rules::LIBRARY_ALLOWLIST
                | rules::EGRESS_ALLOWLIST
        );
        assert_eq!(t.service.len(), 1);
        // The library dir's file and the service itself.
        assert_eq!(t.exec.len(), 2);
        assert_eq!(t.egress4.len(), 2);
        assert_eq!(
            t.egress4[0],
            ([127, 0, 0, 2], 32, {
                let mut r = EgressRule::default();
                r.ports[0] = [8080, 8080];
                r.count = 1;
                r
            })
        );
        assert_eq!(t.egress4[1].2.count, 2);
        assert_eq!(t.egress4[1].2.ports[0], [8000, 8100]);
        assert_eq!(t.egress6[0].1, 8);
        assert_eq!(t.egress6[0].2.ports[0], [0, u16::MAX]);

        // Bad entries name themselves.
        for (cidr, ports, want) in [
            ("10.0.0.1/8", vec![], "bits set past the /8"),
            ("10.0.0.0/33", vec![], "prefix length"),
            ("example.com", vec![], "not an IPv4 or IPv6 address"),
            ("10.0.0.0/8", vec![PortSpec::Port(70000)], "port"),
            ("10.0.0.0/8", vec![PortSpec::Range("9-1".into())], "port"),
        ] {
            let e = parse_egress(&entry(cidr, ports)).unwrap_err();
            assert!(
                e.contains(want) && e.contains(cidr.split('/').next().unwrap()),
                "{cidr}: {e}"
            );
        }
        let bad_exe = ServiceConfig {
            exe: vec![dir.path().join("m.onnx")],
            ..ServiceConfig::default()
        };
        let e = Targets::resolve(&cfg, &bad_exe, &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("service exe ") && e.contains("not an executable"),
            "{e}"
        );
    }

    #[test]
    fn dev_encoding_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x");
        std::fs::write(&f, b"x").unwrap();
        let meta = std::fs::metadata(&f).unwrap();
        let key = inode_key(&meta);
        assert_eq!(key.ino, meta.ino());
        // Re-encode with glibc's makedev and compare with st_dev.
        let (ma, mi) = (u64::from(key.major()), u64::from(key.minor()));
        let st_dev = ((ma & 0xffff_f000) << 32)
            | ((ma & 0x0000_0fff) << 8)
            | ((mi & 0xffff_ff00) << 12)
            | (mi & 0x0000_00ff);
        assert_eq!(st_dev, meta.dev());
    }

    #[test]
    fn resolve_walks_directories_and_rejects_bad_paths() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("a.onnx"), b"a").unwrap();
        std::fs::write(dir.path().join("sub/b.onnx"), b"b").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("link")).unwrap();
        let cfg = GuardConfig {
            protected: vec![dir.path().to_owned()],
            allowed_writers: vec![PathBuf::from("/bin/sh")],
            protected_names: vec![dir.path().join("absent.so"), dir.path().join("a.onnx")],
            ..GuardConfig::default()
        };
        let svc = ServiceConfig::default();
        let elsewhere = tempfile::tempdir().unwrap();
        let own = [
            elsewhere.path().join("own.toml"),
            elsewhere.path().join("missing"),
        ];
        std::fs::write(&own[0], b"x").unwrap();
        let t = Targets::resolve(&cfg, &svc, &own).unwrap();
        // The name that does not exist is protected by name, the one that
        // does by inode (it is a protected file already).
        assert_eq!(t.names.len(), 1);
        assert_eq!(&t.names[0].1.name[..9], b"absent.so");
        // guardian's own existing file comes after the models.
        assert_eq!(t.own_from, 2, "{:?}", t.files);
        assert_eq!(t.files.len(), 3);
        assert_eq!(t.files[2].0, own[0]);
        assert_eq!(
            t.rules,
            rules::GUARD_SELF,
            "no [service]: no process rules but guardian's own"
        );
        let names: Vec<_> = t
            .files
            .iter()
            .filter_map(|(p, _)| p.strip_prefix(dir.path()).ok().map(Path::to_owned))
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(names.contains(&PathBuf::from("a.onnx")));
        assert!(names.contains(&PathBuf::from("sub/b.onnx")));
        assert_eq!(t.writers.len(), 1);

        let missing = GuardConfig {
            protected: vec![dir.path().join("nope")],
            ..cfg.clone()
        };
        let e = Targets::resolve(&missing, &svc, &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("protected path ") && e.contains("nope"),
            "{e}"
        );

        let not_exe = GuardConfig {
            allowed_writers: vec![dir.path().join("a.onnx")],
            ..cfg
        };
        let e = Targets::resolve(&not_exe, &svc, &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("not an executable"), "{e}");
    }
}
