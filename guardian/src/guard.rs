//! The runtime guard: loads the eBPF object, fills its maps from the config,
//! attaches the strongest mechanism the kernel allows for each hook, and
//! pins everything so that enforcement outlives the agent.
//!
//! Start-up order matters, and failure at any step before pinning leaves
//! nothing behind (every program, link and map belongs to the `aya::Ebpf`
//! value, which detaches and closes them all when dropped):
//!
//! 1. Resolve protected paths, names, writers and the service's rules to
//!    inodes and prefixes, before touching the kernel: a bad path or CIDR
//!    is a config error, not a half-started guard.
//! 2. Adopt: if a guard loaded from the same object is still pinned (the
//!    agent was killed or restarted), reuse its maps and links instead of
//!    loading a second copy, and bring its tables up to date.
//! 3. Read struct offsets from the kernel's BTF (no BTF, no guard: the
//!    programs would read garbage).
//! 4. Load the object (the kernel's verifier runs here; EPERM means no
//!    privilege to use BPF).
//! 5. Fill every table, then the config entry, so that the first event a
//!    program sees is judged with the complete tables.
//! 6. For each hook, climb down the ladder: BPF LSM (the kernel denies) if
//!    it loads and attaches; for `connect`, cgroup socket programs (the
//!    kernel denies, no LSM needed); else its tracepoints (reported after
//!    the fact, answered by the configured response), else nothing, and
//!    say so. A hook named in `[guard] require` that cannot deny stops the
//!    start.
//! 7. Pin maps and links under `[guard] pin_dir`, protect the pins like
//!    guardian's own files, and remove the pins of an older object.
//!
//! The tracepoint rung uses syscall tracepoints only when `[guard]
//! syscall_detect` asks for them: any syscall tracepoint puts every system
//! call of every process on the kernel's slow path. Without them the file
//! hooks are left to the userspace rungs the daemon starts next (fanotify
//! permission events deny write-opens, [`crate::watch`] reports the
//! rest), the environment check of `exec` moves to `sched_process_exec`,
//! and `connect` is judged by the cgroup programs.

use std::{
    collections::BTreeMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, Map, MapData, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::{
        CgroupAttachMode, CgroupSockAddr, FEntry, Lsm, RawTracePoint, TracePoint,
        links::{FdLink, PinnedLink},
    },
};
use guardian_common::{
    Counter, EgressRule, InodeKey, KernelConfig, NameKey, ProtectedFile, ServiceDigest, Syscalls,
    forms, maps as map_names, mode as kmode, programs as prog_names, rules, sys,
};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::{
    btf::{Btf, BtfError},
    config::{GuardConfig, ModeRequest, ServiceConfig},
    kernel::KernelFeatures,
};

/// The mode in force.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The kernel denies (BPF LSM).
    Enforce,
    /// The kernel reports after the fact (tracepoints).
    Detect,
}

impl Mode {
    /// Lowercase name, as in events and status.
    pub const fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Detect => "detect",
        }
    }
}

pub use crate::hooks::HOOKS;

/// Errors starting the guard. Each says which step failed and why.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    /// This binary was built without the eBPF object.
    #[error(
        "this guardian binary has no eBPF object (built without the eBPF toolchain); rebuild after cross/setup.sh, or with GUARDIAN_EBPF_OBJECT=/path/to/guardian-ebpf"
    )]
    NoObject,
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
    /// Too many protected files for the map.
    #[error("{count} protected files exceed the limit of {limit}")]
    TooMany {
        /// How many were found.
        count: usize,
        /// The map's size.
        limit: usize,
    },
    /// No usable BTF.
    #[error("no kernel BTF: {0}")]
    Btf(#[source] BtfError),
    /// The process may not use BPF.
    #[error(
        "no permission to load eBPF programs ({0}); run as root or with CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN"
    )]
    Permission(String),
    /// The object did not load (verifier or kernel refused it).
    #[error("loading the eBPF object failed: {0}")]
    Load(#[source] aya::EbpfError),
    /// A map could not be found or written.
    #[error("eBPF map {name}: {source}")]
    Map {
        /// The map.
        name: &'static str,
        /// Why.
        #[source]
        source: aya::maps::MapError,
    },
    /// A program could not be found, loaded or attached.
    #[error("eBPF program {name}: {source}")]
    Program {
        /// The program.
        name: &'static str,
        /// Why.
        #[source]
        source: aya::programs::ProgramError,
    },
    /// Enforcement was required but the kernel cannot deny.
    #[error("mode = \"enforce\" but the kernel cannot deny: {0}")]
    EnforceUnavailable(String),
    /// A hook named in `[guard] require` cannot deny on this kernel.
    #[error("[guard] require names {hook}, but the kernel cannot deny it: {why}")]
    Required {
        /// The hook.
        hook: &'static str,
        /// Why it cannot.
        why: String,
    },
    /// An egress entry is malformed.
    #[error("[service] egress: {0}")]
    Egress(String),
    /// Pinning or adopting pinned objects failed.
    #[error("pins under {path}: {message}")]
    Pin {
        /// The pin directory.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// The running guard was loaded with another configuration: taking it
    /// over would change what it enforces.
    #[error(
        "the running guard pinned in {pins} was loaded with another configuration (sha256 {running}…; this one's is {ours}…): taking it over would change what it enforces. Unload it first (`guardian stop --unload --token TOKEN`, see `guardian unload-token`), or start with the configuration it was loaded with"
    )]
    Reconfigured {
        /// The pinned guard.
        pins: PathBuf,
        /// Its config digest (hex, shortened).
        running: String,
        /// Ours (hex, shortened).
        ours: String,
    },
    /// Detection needs syscall tracepoints.
    #[error("no syscall tracepoints to attach to: {0}")]
    NoTracepoints(String),
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
fn resolve_links(path: &Path) -> Result<(PathBuf, Vec<(PathBuf, InodeKey)>), GuardError> {
    use std::path::Component;
    let err = |problem| GuardError::PathKind {
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
fn add_dir(
    dirs: &mut BTreeMap<InodeKey, (PathBuf, u32)>,
    path: &Path,
    flags: u32,
) -> Result<(), GuardError> {
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
fn add_path(
    dirs: &mut BTreeMap<InodeKey, (PathBuf, u32)>,
    target: &Path,
    own: bool,
) -> Result<(), GuardError> {
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
) -> impl FnOnce(std::io::Error) -> GuardError + 'a {
    move |source| GuardError::Path {
        what,
        path: path.to_owned(),
        source,
    }
}

fn executable(what: &'static str, p: &Path) -> Result<InodeKey, GuardError> {
    let meta = std::fs::metadata(p).map_err(io_err(what, p))?;
    if !meta.is_file() || meta.mode() & 0o111 == 0 {
        return Err(GuardError::PathKind {
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
    ) -> Result<Self, GuardError> {
        if cfg.protected.is_empty() {
            return Err(GuardError::NothingProtected);
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
                return Err(GuardError::PathKind {
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
                        return Err(GuardError::PathKind {
                            what: "protected name",
                            path: n.clone(),
                            problem: "needs a directory and a file name",
                        });
                    };
                    let meta = std::fs::metadata(dir).map_err(io_err("protected name", n))?;
                    let bytes = file.as_encoded_bytes();
                    if bytes.len() >= NameKey::LEN {
                        return Err(GuardError::PathKind {
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
                if let Ok(meta) = std::fs::metadata(p)
                    && meta.is_file()
                {
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
            return Err(GuardError::TooMany {
                count: files.len(),
                limit: MAX_PROTECTED,
            });
        }
        let mut writers = Vec::new();
        for w in &cfg.allowed_writers {
            writers.push((w.clone(), executable("allowed writer", w)?));
        }
        if writers.len() > MAX_WRITERS {
            return Err(GuardError::TooMany {
                count: writers.len(),
                limit: MAX_WRITERS,
            });
        }
        let self_exe = std::fs::metadata("/proc/self/exe")
            .map(|m| inode_key(&m))
            .unwrap_or_default();
        if files.len() + dirs.len() > MAX_PROTECTED {
            return Err(GuardError::TooMany {
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
            dirs,
            rules: rules::GUARD_SELF,
            ..Self::default()
        };
        t.resolve_service(service)?;
        Ok(t)
    }

    fn resolve_service(&mut self, svc: &ServiceConfig) -> Result<(), GuardError> {
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
            let d = crate::hashing::hash_file(p).map_err(|_| GuardError::PathKind {
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
                    return Err(GuardError::PathKind {
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
            return Err(GuardError::TooMany {
                count: self.exec.len(),
                limit: MAX_EXEC,
            });
        }
        if let Some(egress) = &svc.egress {
            self.rules |= rules::EGRESS_ALLOWLIST;
            for e in egress {
                match parse_egress(e).map_err(GuardError::Egress)? {
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

pub use crate::config::parse_egress;

/// Every regular file under `dir`, following symlinks (library
/// directories are full of them, and what the loader maps is the target),
/// to a bounded depth.
fn walk_following(
    dir: &Path,
    out: &mut BTreeMap<InodeKey, PathBuf>,
    depth: u32,
) -> Result<(), GuardError> {
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
) -> Result<(), GuardError> {
    let err = |source| GuardError::Path {
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
        let meta = std::fs::symlink_metadata(&path).map_err(|source| GuardError::Path {
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

/// One hook and what is in force for it, for `status`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct HookState {
    /// Its name (one of [`HOOKS`]).
    pub hook: String,
    /// How: `lsm` (the kernel denies), `tracepoint` (reported after the
    /// fact), `none` (this kernel offers neither), `off` (not asked for).
    pub mechanism: String,
    /// Where it is attached.
    pub attached: Vec<String>,
    /// Why it is not at the top of the ladder, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// What a hook can attach to.
struct HookDef {
    name: &'static str,
    /// LSM programs and their hooks (all or none attach).
    lsm: &'static [(&'static str, &'static str)],
    /// Detect form: the syscalls (bits of `guardian_common::sys`) the raw
    /// `sys_exit` program watches for this hook.
    syscalls: u32,
    /// Detect form: program, tracepoint category, tracepoint names (those
    /// the kernel lacks are skipped).
    detect: &'static [(&'static str, &'static str, &'static [&'static str])],
    /// Tracepoints attached whatever the form (they feed the LSM program).
    always: &'static [(&'static str, &'static str, &'static [&'static str])],
    /// Only meaningful with a `[service]`.
    service: bool,
    /// Has the cgroup socket programs as its rung below LSM.
    cgroup: bool,
}

impl HookDef {
    /// A hook with LSM programs only (and, for the detect rung, the
    /// syscalls the raw `sys_exit` program watches for it): no tracepoint
    /// of its own, not tied to the service, no cgroup form.
    const fn plain(
        name: &'static str,
        lsm: &'static [(&'static str, &'static str)],
        syscalls: u32,
    ) -> Self {
        Self {
            name,
            lsm,
            syscalls,
            detect: &[],
            always: &[],
            service: false,
            cgroup: false,
        }
    }
}

const EXECVE: &[(&str, &str, &[&str])] = &[
    (
        prog_names::TP_ENTER_EXECVE,
        "syscalls",
        &["sys_enter_execve"],
    ),
    (
        prog_names::TP_ENTER_EXECVEAT,
        "syscalls",
        &["sys_enter_execveat"],
    ),
];

const DEFS: [HookDef; 14] = [
    HookDef::plain(
        "file_write_open",
        &[(prog_names::LSM_FILE_OPEN, "file_open")],
        sys::OPENS,
    ),
    HookDef::plain(
        "file_write",
        &[(prog_names::LSM_FILE_PERMISSION, "file_permission")],
        sys::WRITES,
    ),
    HookDef::plain(
        "file_setattr",
        &[(prog_names::LSM_INODE_SETATTR, "inode_setattr")],
        1 << sys::FTRUNCATE,
    ),
    HookDef::plain(
        "file_rename",
        &[(prog_names::LSM_INODE_RENAME, "inode_rename")],
        0,
    ),
    HookDef::plain(
        "file_unlink",
        &[
            (prog_names::LSM_INODE_UNLINK, "inode_unlink"),
            (prog_names::LSM_INODE_RMDIR, "inode_rmdir"),
        ],
        0,
    ),
    HookDef::plain(
        "file_link",
        &[(prog_names::LSM_INODE_LINK, "inode_link")],
        0,
    ),
    HookDef::plain(
        "file_create",
        &[
            (prog_names::LSM_INODE_CREATE, "inode_create"),
            (prog_names::LSM_INODE_MKDIR, "inode_mkdir"),
            (prog_names::LSM_INODE_SYMLINK, "inode_symlink"),
            (prog_names::LSM_INODE_MKNOD, "inode_mknod"),
        ],
        0,
    ),
    HookDef::plain(
        "file_mmap",
        &[(prog_names::LSM_MMAP_FILE, "mmap_file")],
        1 << sys::MMAP,
    ),
    HookDef::plain(
        "mount",
        &[
            (prog_names::LSM_SB_MOUNT, "sb_mount"),
            (prog_names::LSM_MOVE_MOUNT, "move_mount"),
            (prog_names::LSM_SB_UMOUNT, "sb_umount"),
        ],
        0,
    ),
    HookDef {
        name: "exec",
        lsm: &[
            (prog_names::LSM_BPRM_CHECK, "bprm_check_security"),
            (prog_names::LSM_BPRM_CREDS_FROM_FILE, "bprm_creds_from_file"),
        ],
        syscalls: 0,
        detect: &[(
            prog_names::TP_PROCESS_EXEC,
            "sched",
            &["sched_process_exec"],
        )],
        always: EXECVE,
        service: true,
        cgroup: false,
    },
    // Not tied to the service: it guards guardian's own processes too.
    HookDef::plain(
        "ptrace",
        &[
            (prog_names::LSM_PTRACE, "ptrace_access_check"),
            (prog_names::LSM_PTRACE_TRACEME, "ptrace_traceme"),
        ],
        0,
    ),
    HookDef::plain("prctl", &[(prog_names::LSM_TASK_PRCTL, "task_prctl")], 0),
    HookDef {
        name: "connect",
        lsm: &[(prog_names::LSM_SOCKET_CONNECT, "socket_connect")],
        syscalls: 1 << sys::CONNECT,
        detect: &[],
        always: &[],
        service: true,
        cgroup: true,
    },
    HookDef::plain(
        "bpf_objects",
        &[
            (prog_names::LSM_BPF_MAP, "bpf_map"),
            (prog_names::LSM_BPF_PROG, "bpf_prog"),
            (prog_names::LSM_BPF, "bpf"),
        ],
        0,
    ),
];

/// Every map the agent reads or writes, by name.
const MAP_NAMES: [&str; 15] = [
    map_names::PROTECTED_FILES,
    map_names::ALLOWED_WRITERS,
    map_names::CONFIG,
    map_names::EVENTS,
    map_names::COUNTERS,
    map_names::SERVICE_EXES,
    map_names::ALLOWED_EXEC,
    map_names::PROTECTED_NAMES,
    map_names::EGRESS_V4,
    map_names::EGRESS_V6,
    map_names::PENDING_PRELOAD,
    map_names::PENDING_ENVP,
    map_names::REPORTED_FILES,
    map_names::AUTH,
    map_names::SERVICE_DIGESTS,
];

/// A running guard. Dropping it detaches the programs unless they are
/// pinned: pinned links stay attached until `guardian stop --unload`.
pub struct Guard {
    /// The loaded object; `None` when the pinned guard was adopted.
    _ebpf: Option<Ebpf>,
    maps: std::collections::HashMap<&'static str, Map>,
    _links: Vec<PinnedLink>,
    /// Links kept alive without pins (no bpffs): they go with the agent.
    unpinned: Vec<FdLink>,
    mode: Mode,
    reason: String,
    hooks: Vec<HookState>,
    pins: Option<PathBuf>,
    adopted: bool,
    /// What the agent last wrote to its tables.
    written: Written,
    /// The config entry as the agent last wrote it.
    config: KernelConfig,
}

fn load_error(e: aya::EbpfError) -> GuardError {
    let text = e.to_string();
    let eperm = matches!(&e, aya::EbpfError::MapError(aya::maps::MapError::CreateError { io_error, .. })
            if io_error.raw_os_error() == Some(libc::EPERM))
        || text.contains("Operation not permitted");
    if eperm {
        GuardError::Permission(text)
    } else {
        GuardError::Load(e)
    }
}

fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> GuardError {
    move |source| GuardError::Map { name, source }
}

fn missing_map(name: &'static str) -> GuardError {
    GuardError::Map {
        name,
        source: aya::maps::MapError::InvalidName { name: name.into() },
    }
}

/// The short digest of an object that names its pin directory.
pub fn object_id(object: &[u8]) -> String {
    hex::encode(&sha2::Sha256::digest(object)[..8])
}

/// Options for [`Guard::start`].
pub struct StartOptions<'a> {
    /// The eBPF object.
    pub object: &'a [u8],
    /// The mode asked for.
    pub request: ModeRequest,
    /// Hooks that must deny.
    pub require: &'a [String],
    /// Kernel features found.
    pub features: &'a KernelFeatures,
    /// BTF for the struct offsets.
    pub btf_path: &'a Path,
    /// Ring buffer size in bytes.
    pub ring_buffer_bytes: u32,
    /// Where to pin; `None`: do not pin (tests that must not outlive
    /// themselves).
    pub pin_dir: Option<&'a Path>,
    /// Attach the raw syscall tracepoint (and the `execve` entry
    /// tracepoints) as detect forms where nothing stronger is in force.
    pub syscall_detect: bool,
    /// What to fix into a fresh guard, and what a pinned one must have been
    /// loaded with to be adopted (see [`crate::unload`]). `None`: neither
    /// (tests and benchmarks that own their guard).
    pub auth: Option<&'a crate::unload::Auth>,
}

/// What the pinned guard in `mine` (an object's pin directory) was loaded
/// with: `Ok(None)` when it keeps no such record (an older guard, or no
/// pins), an error when the record is there but cannot be read (under BPF
/// LSM, by any program but guardian's own executable: a copy of guardian
/// is not guardian).
pub fn pinned_auth(mine: &Path) -> Result<Option<crate::unload::Auth>, GuardError> {
    let pin = mine.join("maps").join(map_names::AUTH);
    if !pin.exists() {
        return Ok(None);
    }
    let perr = |message: String| GuardError::Pin {
        path: pin.clone(),
        message,
    };
    let data = MapData::from_pin(&pin).map_err(|e| perr(format!("cannot open: {e}")))?;
    let arr: Array<MapData, [u8; 32]> =
        Array::try_from(Map::Array(data)).map_err(|e| perr(e.to_string()))?;
    let mut entries = Vec::new();
    for i in 0..crate::unload::AUTH_ENTRIES {
        entries.push(arr.get(&i, 0).map_err(|e| perr(e.to_string()))?);
    }
    Ok(crate::unload::Auth::from_entries(&entries))
}

/// Refuse to take over (or replace) the guard pinned in `mine` if it was
/// loaded with another configuration.
fn same_config(mine: &Path, auth: Option<&crate::unload::Auth>) -> Result<(), GuardError> {
    let Some(ours) = auth else {
        return Ok(());
    };
    let Some(running) = pinned_auth(mine)? else {
        return Ok(());
    };
    if ours.config == running.config {
        return Ok(());
    }
    Err(GuardError::Reconfigured {
        pins: mine.to_owned(),
        running: hex::encode(&running.config[..6]),
        ours: hex::encode(&ours.config[..6]),
    })
}

fn write_auth(
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

impl Guard {
    /// Start the guard, or adopt the pinned one (see the module docs).
    pub fn start(opts: &StartOptions<'_>, targets: &Targets) -> Result<Self, GuardError> {
        if opts.object.is_empty() {
            return Err(GuardError::NoObject);
        }
        // The syscall tracepoints are part of what is pinned: a config that
        // asks otherwise must not adopt them.
        let id = format!(
            "{}{}",
            object_id(opts.object),
            if opts.syscall_detect { "-sys" } else { "" }
        );
        if let Some(dir) = opts.pin_dir {
            // A guard loaded with another configuration is neither taken
            // over nor replaced: that would change what it enforces.
            if let Ok(entries) = std::fs::read_dir(dir) {
                for e in entries.flatten() {
                    same_config(&e.path(), opts.auth)?;
                }
            }
            let mine = dir.join(&id);
            if mine.join("links").is_dir() {
                match Self::adopt(&mine, targets) {
                    Ok(g) => return Ok(g),
                    Err(e) => {
                        log::warn!(
                            "the pinned guard in {} could not be adopted ({e}); loading afresh",
                            mine.display()
                        );
                        let _ = remove_pins(&mine);
                    }
                }
            }
        }
        let offsets = Btf::from_file(opts.btf_path)
            .and_then(|b| b.kernel_offsets())
            .map_err(GuardError::Btf)?;

        let mut ebpf = EbpfLoader::new()
            .map_max_entries(map_names::EVENTS, opts.ring_buffer_bytes)
            .load(opts.object)
            .map_err(load_error)?;
        let mut maps = std::collections::HashMap::new();
        for name in MAP_NAMES {
            if let Some(m) = ebpf.take_map(name) {
                maps.insert(name, m);
            }
        }
        let written = fill_tables(&mut maps, targets, &[], &[], false)?;
        if let Some(auth) = opts.auth {
            write_auth(&mut maps, auth)?;
        }

        let mut config = KernelConfig {
            offsets,
            mode: kmode::DETECT,
            ready: 1,
            rules: targets.rules,
            forms: 0,
            self_exe: targets.self_exe,
            // The register layout is read by the fentry programs too;
            // which syscalls the raw tracepoint handles is decided below.
            syscalls: syscall_table(),
        };
        let service = !targets.service.is_empty();
        let try_lsm = opts.request != ModeRequest::Detect;
        let lsm_blocker = if try_lsm {
            lsm_unavailable(opts.features)
        } else {
            Some("detect mode requested in the config".to_owned())
        };
        // The LSM programs read the mode: set it before any can run.
        if lsm_blocker.is_none() {
            config.mode = kmode::ENFORCE;
        }
        set_config(&mut maps, config)?;

        let btf = if lsm_blocker.is_none() {
            Some(aya::Btf::from_sys_fs().map_err(|e| GuardError::EnforceUnavailable(e.to_string())))
        } else {
            None
        };
        let mut hooks = Vec::new();
        let mut links: Vec<(String, FdLink)> = Vec::new();
        let mut any_lsm = false;
        let syscall_table = syscall_table();
        let mut raw_watch = 0;
        for def in &DEFS {
            if def.service && !service {
                hooks.push(HookState {
                    hook: def.name.into(),
                    mechanism: "off".into(),
                    attached: vec![],
                    note: Some("no [service] exe configured".into()),
                });
                continue;
            }
            let mut attached = Vec::new();
            let mut why_not = lsm_blocker.clone();
            if why_not.is_none()
                && def.name == "file_setattr"
                && offsets.setattr_dentry_arg == u32::MAX
            {
                why_not =
                    Some("the kernel's BTF does not describe inode_setattr's arguments".into());
            }
            // inode_setattr lost its first argument before Linux 6.3: a
            // program per layout.
            let lsm: Vec<(&'static str, &'static str)> = def
                .lsm
                .iter()
                .map(|&(prog, hook)| {
                    if prog == prog_names::LSM_INODE_SETATTR && offsets.setattr_dentry_arg == 0 {
                        (prog_names::LSM_INODE_SETATTR_OLD, hook)
                    } else {
                        (prog, hook)
                    }
                })
                .collect();
            if why_not.is_none()
                && !lsm.is_empty()
                && let Some(Ok(btf)) = btf.as_ref()
            {
                // All of a hook's programs or none: a hook half attached
                // would be reported as enforcing what it does not.
                let mut got = Vec::new();
                for (prog, hook) in &lsm {
                    match attach_lsm(&mut ebpf, prog, hook, btf) {
                        Ok(link) => got.push((*hook, link)),
                        Err(e) => {
                            why_not = Some(e);
                            break;
                        }
                    }
                }
                if why_not.is_none() {
                    any_lsm = true;
                    // What feeds the LSM program: fentry where it loads
                    // (no syscall tracepoint), else the tracepoints.
                    let fed = !def.always.is_empty()
                        && match attach_fentry_execve(&mut ebpf, btf, def.name, &mut links) {
                            Ok(at) => {
                                attached.extend(at);
                                true
                            }
                            Err(e) => {
                                log::warn!(
                                    "hook {}: fentry on the execve syscalls did not attach ({e}); the sys_enter_execve tracepoints read the environment instead, at a cost on every system call",
                                    def.name
                                );
                                false
                            }
                        };
                    if !fed {
                        attach_tracepoints(
                            &mut ebpf,
                            def.always,
                            def.name,
                            &mut attached,
                            &mut links,
                        )?;
                    }
                    for (hook, link) in got {
                        attached.push(format!("lsm/{hook}"));
                        links.push((format!("{}-lsm-{hook}", def.name), link));
                    }
                    hooks.push(HookState {
                        hook: def.name.into(),
                        mechanism: "lsm".into(),
                        attached,
                        note: None,
                    });
                    continue;
                }
            } else if let Some(Err(e)) = btf.as_ref()
                && why_not.is_none()
            {
                why_not = Some(format!("kernel BTF unreadable for LSM attachment: {e}"));
            }
            let mut why_not = why_not.unwrap_or_else(|| "no LSM form".into());
            if def.cgroup {
                match attach_cgroup(&mut ebpf, &mut config, &mut maps, opts.request, &mut links) {
                    Ok((root, deny)) => {
                        if !deny && opts.require.iter().any(|r| r == def.name) {
                            return Err(GuardError::Required {
                                hook: def.name,
                                why: "detect mode requested".into(),
                            });
                        }
                        attached.extend(CGROUP_PROGS.iter().map(|(_, at)| format!("cgroup/{at}")));
                        hooks.push(HookState {
                            hook: def.name.into(),
                            mechanism: "cgroup".into(),
                            attached,
                            note: Some(if deny {
                                format!("{why_not}; denied in the kernel by cgroup socket programs on {root}")
                            } else {
                                format!("{why_not}; cgroup socket programs on {root} report (detect mode asks for no denials)")
                            }),
                        });
                        continue;
                    }
                    Err(e) => why_not = format!("{why_not}; no cgroup programs: {e}"),
                }
            }
            if opts.require.iter().any(|r| r == def.name) {
                return Err(GuardError::Required {
                    hook: def.name,
                    why: why_not,
                });
            }
            let before = attached.len();
            let watched = if opts.syscall_detect {
                attach_tracepoints(&mut ebpf, def.always, def.name, &mut attached, &mut links)?;
                def.syscalls & present(&syscall_table)
            } else {
                0
            };
            if !def.always.is_empty() && !attached.iter().any(|a| a.contains("sys_enter_execve")) {
                // No entry tracepoint feeds it: sched_process_exec reads the
                // environment itself. Set before it is attached.
                config.forms |= forms::ENV_AT_EXEC;
                set_config(&mut maps, config)?;
            }
            if watched != 0 {
                raw_watch |= watched;
                attached.push(format!(
                    "raw_tracepoint/sys_exit ({})",
                    syscall_names(watched)
                ));
            }
            attach_tracepoints(&mut ebpf, def.detect, def.name, &mut attached, &mut links)?;
            let detect = attached.len() > before;
            let skipped = !opts.syscall_detect && def.syscalls != 0;
            hooks.push(HookState {
                hook: def.name.into(),
                mechanism: if detect { "tracepoint" } else { "none" }.into(),
                attached,
                note: Some(if detect {
                    format!("{why_not}; reported after the fact")
                } else if skipped
                    && (def.name == "file_write_open"
                        || crate::hooks::NOTIFY.iter().any(|(h, _)| *h == def.name))
                {
                    format!(
                        "{why_not}; syscall_detect is off: NOT COVERED in the kernel (a userspace rung may take it, see below)"
                    )
                } else if skipped {
                    format!(
                        "{why_not}; NOT COVERED: syscall_detect is off ([guard] syscall_detect = true reports it, at a cost on every system call)"
                    )
                } else {
                    format!("{why_not}; and this kernel offers no tracepoint for it: NOT COVERED")
                }),
            });
        }
        if raw_watch != 0 {
            // The programs read which syscalls to handle from the config:
            // fill it before they can run.
            config.syscalls = Syscalls {
                enabled: raw_watch,
                ..syscall_table
            };
            set_config(&mut maps, config)?;
            attach_raw_syscalls(&mut ebpf, &mut links)?;
        }
        if opts.request == ModeRequest::Enforce && !any_lsm {
            return Err(GuardError::EnforceUnavailable(
                lsm_blocker.unwrap_or_else(|| "no LSM hook attached".into()),
            ));
        }
        if !any_lsm {
            // No LSM program runs: the mode they read says detect (the
            // cgroup programs read their own bit, `forms::CGROUP_DENY`).
            config.mode = kmode::DETECT;
            set_config(&mut maps, config)?;
        }
        let cgroup_deny = config.forms & forms::CGROUP_DENY != 0;
        let degraded: Vec<_> = hooks
            .iter()
            .filter(|h| {
                h.mechanism != "lsm"
                    && h.mechanism != "off"
                    && !(h.mechanism == "cgroup" && cgroup_deny)
            })
            .map(|h| h.hook.clone())
            .collect();
        let (mode, reason) = if any_lsm {
            let r = if degraded.is_empty() {
                "BPF LSM attached for every hook: the kernel denies".to_owned()
            } else {
                format!(
                    "BPF LSM attached; NOT denied in the kernel: {} (see hooks)",
                    degraded.join(", ")
                )
            };
            (Mode::Enforce, r)
        } else {
            (
                Mode::Detect,
                format!(
                    "{}; operations are reported after the fact, not denied{}",
                    lsm_blocker.unwrap_or_else(|| {
                        "BPF LSM is active but no LSM program could attach (see hooks)".into()
                    }),
                    if cgroup_deny {
                        " (but egress of the service is denied in the kernel by cgroup socket programs)"
                    } else {
                        ""
                    }
                ),
            )
        };

        let mut guard = Self {
            _ebpf: Some(ebpf),
            maps,
            _links: Vec::new(),
            unpinned: Vec::new(),
            mode,
            reason,
            hooks,
            pins: None,
            adopted: false,
            written,
            config,
        };
        match opts.pin_dir {
            Some(dir) if is_bpffs(dir.parent().unwrap_or(dir)) => {
                if let Err(e) = guard.pin(dir, &id, links, targets) {
                    let _ = remove_pins(&dir.join(&id));
                    return Err(e);
                }
            }
            Some(dir) => {
                // Still running, just not surviving the agent: say so.
                log::warn!(
                    "{} is not on a BPF filesystem (mount -t bpf bpf {}): nothing is pinned, enforcement stops when the agent stops",
                    dir.display(),
                    dir.parent().unwrap_or(dir).display()
                );
                guard.unpinned = links.into_iter().map(|(_, l)| l).collect();
            }
            None => guard.unpinned = links.into_iter().map(|(_, l)| l).collect(),
        }
        Ok(guard)
    }

    /// Pin maps and links under `dir/id`, protect the pins, and remove
    /// the pins of any other object.
    fn pin(
        &mut self,
        dir: &Path,
        id: &str,
        links: Vec<(String, FdLink)>,
        targets: &Targets,
    ) -> Result<(), GuardError> {
        let perr = |message: String| GuardError::Pin {
            path: dir.to_owned(),
            message,
        };
        let mine = dir.join(id);
        if mine.exists() {
            remove_pins(&mine)
                .map_err(|e| perr(format!("clearing stale {}: {e}", mine.display())))?;
        }
        for sub in ["maps", "links"] {
            std::fs::create_dir_all(mine.join(sub)).map_err(|e| {
                perr(format!(
                    "cannot create {} (is bpffs mounted at {}?): {e}",
                    mine.join(sub).display(),
                    dir.display()
                ))
            })?;
        }
        for (name, map) in &self.maps {
            map.pin(mine.join("maps").join(name))
                .map_err(|e| perr(format!("map {name}: {e}")))?;
        }
        // (bpffs refuses names with dots: none are used.) Pinning consumes
        // the link, and a failed pin drops it, detaching its program: so a
        // failure here is fatal to the start, never a silent gap.
        for (n, (name, link)) in links.into_iter().enumerate() {
            let p = mine.join("links").join(format!("{n:02}-{name}"));
            let pinned = link
                .pin(&p)
                .map_err(|e| perr(format!("link {name}: {}", chain(&e))))?;
            self._links.push(pinned);
        }
        // Other objects' pins: an older guardian, replaced by this one. The
        // new programs are attached already, so there is no gap.
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_name() != id {
                    log::info!(
                        "removing the pins of a previous object: {}",
                        e.path().display()
                    );
                    if let Err(err) = remove_pins(&e.path()) {
                        log::warn!("cannot remove {}: {err}", e.path().display());
                    }
                }
            }
        }
        self.pins = Some(mine.clone());
        self.refresh(targets)?;
        Ok(())
    }

    /// Take over a pinned guard: its maps and links stay as they are; the
    /// tables are brought up to date with `targets`.
    fn adopt(mine: &Path, targets: &Targets) -> Result<Self, GuardError> {
        let perr = |message: String| GuardError::Pin {
            path: mine.to_owned(),
            message,
        };
        let mut maps = std::collections::HashMap::new();
        for name in MAP_NAMES {
            let p = mine.join("maps").join(name);
            let data = MapData::from_pin(&p).map_err(|e| perr(format!("map {name}: {e}")))?;
            maps.insert(name, Map::from_map_data(data).map_err(map_err(name))?);
        }
        let mut links = Vec::new();
        let mut by_hook: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
        let mut entries: Vec<_> = std::fs::read_dir(mine.join("links"))
            .map_err(|e| perr(format!("links: {e}")))?
            .flatten()
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let file = e.file_name().to_string_lossy().into_owned();
            links.push(
                PinnedLink::from_pin(e.path())
                    .map_err(|err| perr(format!("link {file}: {err}")))?,
            );
            // "NN-hook-mechanism-where"
            let mut parts = file.splitn(4, '-');
            let (_, Some(hook), Some(mech), Some(at)) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(perr(format!("unexpected link pin name {file}")));
            };
            let entry = by_hook
                .entry(hook.to_owned())
                .or_insert_with(|| (mech.to_owned(), Vec::new()));
            if mech == "lsm" {
                entry.0 = "lsm".into();
            }
            if mech == "cgroup" {
                entry.0 = "cgroup".into();
            }
            entry.1.push(match mech {
                "lsm" => format!("lsm/{at}"),
                "cgroup" => format!("cgroup/{at}"),
                "fentry" => format!("fentry/{at}"),
                _ => format!("tracepoint/{}", at.replacen('-', "/", 1)),
            });
        }
        let config: KernelConfig = {
            let m = maps
                .get(map_names::CONFIG)
                .ok_or_else(|| missing_map(map_names::CONFIG))?;
            let arr: Array<&MapData, KernelConfig> =
                Array::try_from(m).map_err(map_err(map_names::CONFIG))?;
            arr.get(&0, 0).map_err(map_err(map_names::CONFIG))?
        };
        if config.ready == 0 {
            return Err(perr("the pinned config entry was never filled".into()));
        }
        // The raw syscall tracepoint serves every hook whose syscalls the
        // config says it watches.
        if by_hook.remove(SYSCALLS_PIN).is_some() {
            for def in &DEFS {
                let watched = def.syscalls & config.syscalls.enabled;
                if watched != 0 {
                    by_hook
                        .entry(def.name.to_owned())
                        .or_insert_with(|| ("raw".to_owned(), Vec::new()))
                        .1
                        .push(format!(
                            "raw_tracepoint/sys_exit ({})",
                            syscall_names(watched)
                        ));
                }
            }
        }
        let hooks = HOOKS
            .iter()
            .map(|h| match by_hook.remove(*h) {
                Some((mech, attached)) => HookState {
                    hook: (*h).into(),
                    mechanism: match mech.as_str() {
                        "lsm" | "cgroup" => mech.clone(),
                        _ => "tracepoint".into(),
                    },
                    attached,
                    note: match mech.as_str() {
                        "lsm" => None,
                        "cgroup" if config.forms & forms::CGROUP_DENY != 0 => {
                            Some("adopted: denied in the kernel by cgroup socket programs".into())
                        }
                        _ => Some("adopted: reported after the fact".into()),
                    },
                },
                None => HookState {
                    hook: (*h).into(),
                    mechanism: "none".into(),
                    attached: vec![],
                    note: Some("adopted: nothing attached for this hook".into()),
                },
            })
            .collect::<Vec<_>>();
        let mode = if config.mode == kmode::ENFORCE {
            Mode::Enforce
        } else {
            Mode::Detect
        };
        let mut g = Self {
            _ebpf: None,
            maps,
            _links: links,
            unpinned: Vec::new(),
            mode,
            reason: format!(
                "adopted the pinned guard in {} (it kept running while no agent was)",
                mine.display()
            ),
            hooks,
            pins: Some(mine.to_owned()),
            adopted: true,
            written: Written::default(),
            config,
        };
        // Rules may have changed with the config.
        let mut cfg = config;
        cfg.rules = targets.rules;
        cfg.self_exe = targets.self_exe;
        set_config(&mut g.maps, cfg)?;
        g.config = cfg;
        g.refresh(targets)?;
        log::info!("adopted the pinned guard in {}", mine.display());
        Ok(g)
    }

    /// Bring every table in line with `targets` (plus the pins, which are
    /// guardian's own files): new entries go in before stale ones go out,
    /// so nothing protected is ever unprotected in between.
    pub fn refresh(&mut self, targets: &Targets) -> Result<(), GuardError> {
        let mut pins = Vec::new();
        if let Some(dir) = &self.pins {
            for sub in ["maps", "links"] {
                if let Ok(entries) = std::fs::read_dir(dir.join(sub)) {
                    for e in entries.flatten() {
                        if let Ok(meta) = std::fs::symlink_metadata(e.path()) {
                            pins.push((e.path(), inode_key(&meta)));
                        }
                    }
                }
            }
        }
        // The pin directories are guardian's: only guardian makes or
        // removes pins in them, and the path down to them stays (an
        // unmounted or renamed bpffs would take the pins out of sight).
        let mut pin_dirs = Vec::new();
        if let Some(dir) = &self.pins {
            let mut dirs = BTreeMap::new();
            for sub in ["maps", "links"] {
                let _ = add_dir(
                    &mut dirs,
                    &dir.join(sub),
                    ProtectedFile::TREE | ProtectedFile::SELF,
                );
            }
            let _ = add_dir(&mut dirs, dir, ProtectedFile::PATH | ProtectedFile::SELF);
            let _ = add_path(&mut dirs, dir, true);
            pin_dirs = dirs.into_iter().map(|(k, (p, f))| (p, k, f)).collect();
        }
        // Service copies the kernel recognised by content stay, where only
        // the kernel can have put them there.
        let keep_kernel = self.kernel_adds();
        self.written = fill_tables(&mut self.maps, targets, &pins, &pin_dirs, keep_kernel)?;
        // The process rules may have changed with the tables.
        let m = self
            .maps
            .get(map_names::CONFIG)
            .ok_or_else(|| missing_map(map_names::CONFIG))?;
        let arr: Array<&MapData, KernelConfig> =
            Array::try_from(m).map_err(map_err(map_names::CONFIG))?;
        let mut cfg = arr.get(&0, 0).map_err(map_err(map_names::CONFIG))?;
        if cfg.rules != targets.rules || cfg.self_exe != targets.self_exe {
            cfg.rules = targets.rules;
            cfg.self_exe = targets.self_exe;
            set_config(&mut self.maps, cfg)?;
        }
        self.config = cfg;
        Ok(())
    }

    /// Entries the kernel adds itself (service copies) are trusted only
    /// where nothing else can write the maps: with the bpf_objects hook in
    /// the kernel.
    fn kernel_adds(&self) -> bool {
        self.hooks
            .iter()
            .any(|h| h.hook == "bpf_objects" && h.mechanism == "lsm")
    }

    /// Compare the kernel's tables with what the agent wrote, put back
    /// what differs, and name each difference. Under BPF LSM no other
    /// program can reach the maps (the `bpf_objects` hook), so a
    /// difference there means that hook failed; without it, this is how a
    /// root shell editing the pinned maps (adding itself as a writer,
    /// clearing the config) is found.
    pub fn check_tables(&mut self, targets: &Targets) -> Result<Vec<String>, GuardError> {
        let mut out = Vec::new();
        let w = &self.written;
        let kernel_adds = self.kernel_adds();
        let m = &self.maps;
        diff_hash(m, map_names::PROTECTED_FILES, &w.protected, false, &mut out)?;
        diff_hash(m, map_names::ALLOWED_WRITERS, &w.writers, false, &mut out)?;
        diff_hash(
            m,
            map_names::SERVICE_EXES,
            &w.service,
            kernel_adds,
            &mut out,
        )?;
        diff_hash(m, map_names::ALLOWED_EXEC, &w.exec, kernel_adds, &mut out)?;
        diff_hash(m, map_names::PROTECTED_NAMES, &w.names, false, &mut out)?;
        let m = self
            .maps
            .get(map_names::CONFIG)
            .ok_or_else(|| missing_map(map_names::CONFIG))?;
        let arr: Array<&MapData, KernelConfig> =
            Array::try_from(m).map_err(map_err(map_names::CONFIG))?;
        let cfg = arr.get(&0, 0).map_err(map_err(map_names::CONFIG))?;
        if cfg != self.config {
            out.push(if cfg.ready == 0 {
                format!(
                    "{}: the config entry was cleared (every hook would allow)",
                    map_names::CONFIG
                )
            } else {
                format!(
                    "{}: mode {} rules {:#x} where guardian wrote mode {} rules {:#x}{}",
                    map_names::CONFIG,
                    cfg.mode,
                    cfg.rules,
                    self.config.mode,
                    self.config.rules,
                    if cfg.self_exe != self.config.self_exe || cfg.offsets != self.config.offsets {
                        ", and its identity or offsets changed"
                    } else {
                        ""
                    }
                )
            });
            set_config(&mut self.maps, self.config)?;
        }
        if !out.is_empty() {
            self.refresh(targets)?;
        }
        Ok(out)
    }

    /// Record that the fanotify rung denies write-opens of protected files
    /// (from userspace, while the agent runs) where BPF LSM could not.
    pub fn note_fanotify(&mut self, marked: usize) {
        if let Some(h) = self.hooks.iter_mut().find(|h| h.hook == "file_write_open") {
            let why = h.note.take().unwrap_or_default();
            let traced = h.mechanism == "tracepoint";
            let why = why
                .split("; reported after the fact")
                .next()
                .unwrap_or_default();
            let why = why
                .split("; syscall_detect is off")
                .next()
                .unwrap_or_default();
            h.mechanism = "fanotify".into();
            h.attached.insert(
                0,
                format!("{} ({marked} file(s))", crate::hooks::FANOTIFY_PERM),
            );
            h.note = Some(format!(
                "{why}; denied from userspace (fanotify) while the agent runs{}",
                if traced {
                    ", the raw syscall tracepoint reports when it does not"
                } else {
                    "; nothing when it does not"
                }
            ));
        }
        self.reason = format!(
            "{}; write-opens of protected files are denied from userspace (fanotify permission events)",
            self.reason
        );
    }

    /// Record that the notification rung reports changes to protected
    /// files (from userspace, while the agent runs) for the hooks no
    /// kernel program covers; `mask` is what it asked fanotify for.
    pub fn note_watch(&mut self, marked: usize, mask: u64) {
        let mut covered = Vec::new();
        for (hook, bits) in crate::hooks::NOTIFY {
            if mask & bits == 0 {
                continue;
            }
            let Some(h) = self.hooks.iter_mut().find(|h| h.hook == hook) else {
                continue;
            };
            if h.mechanism != "none" {
                continue;
            }
            let why = h.note.take().unwrap_or_default();
            let why = why
                .split("; syscall_detect is off")
                .next()
                .unwrap_or_default();
            let why = why
                .split("; and this kernel offers")
                .next()
                .unwrap_or_default();
            h.mechanism = "notify".into();
            h.attached
                .insert(0, format!("fanotify notification ({marked} file(s))"));
            h.note = Some(format!(
                "{why}; reported after the fact by fanotify notification events, while the agent runs"
            ));
            covered.push(hook);
        }
        if !covered.is_empty() {
            self.reason = format!(
                "{}; {} of protected files reported through fanotify notification events",
                self.reason,
                covered.join(", ")
            );
        }
    }

    /// Record that a userspace rung the hooks counted on did not start.
    pub fn note_missing_rung(&mut self, why: &str) {
        self.reason = format!("{}; {why}", self.reason);
    }

    /// The mode in force.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Why this mode.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// Every hook and what is in force for it.
    pub fn hooks(&self) -> &[HookState] {
        &self.hooks
    }

    /// Where the guard is pinned, if it is.
    pub fn pinned(&self) -> Option<&Path> {
        self.pins.as_deref()
    }

    /// This guard was adopted from pins, not loaded.
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// Take the ring buffer (once).
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, GuardError> {
        let m = self
            .maps
            .remove(map_names::EVENTS)
            .ok_or_else(|| missing_map(map_names::EVENTS))?;
        RingBuf::try_from(m).map_err(map_err(map_names::EVENTS))
    }

    /// The kernel-side counters, summed over CPUs.
    pub fn counters(&self) -> Result<BTreeMap<&'static str, u64>, GuardError> {
        let m = self
            .maps
            .get(map_names::COUNTERS)
            .ok_or_else(|| missing_map(map_names::COUNTERS))?;
        let arr: PerCpuArray<_, u64> =
            PerCpuArray::try_from(m).map_err(map_err(map_names::COUNTERS))?;
        let mut out = BTreeMap::new();
        for c in Counter::ALL {
            let values = arr
                .get(&(c as u32), 0)
                .map_err(map_err(map_names::COUNTERS))?;
            out.insert(c.name(), values.iter().sum());
        }
        Ok(out)
    }
}

/// `BPF_FS_MAGIC` from `include/uapi/linux/magic.h`.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

fn is_bpffs(dir: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: zeroed statfs is valid; statfs fills it or fails.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out pointer.
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC }
}

/// Remove a pin directory: links first (the programs detach when the last
/// reference goes), then maps.
pub fn remove_pins(dir: &Path) -> std::io::Result<()> {
    for sub in ["links", "maps"] {
        if let Ok(entries) = std::fs::read_dir(dir.join(sub)) {
            for e in entries.flatten() {
                std::fs::remove_file(e.path())?;
            }
        }
        let _ = std::fs::remove_dir(dir.join(sub));
    }
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn set_config(
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
fn kernel_added<V: aya::Pod>(name: &str, v: &V) -> bool {
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
fn sync_hash<K, V>(
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

fn sync_lpm<const N: usize>(
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
fn indexed<K: Copy>(entries: &[(PathBuf, K)]) -> Vec<(K, u32)> {
    entries
        .iter()
        .enumerate()
        .map(|(i, (_, k))| (*k, i as u32))
        .collect()
}

/// What the agent last wrote to the tables it owns: what the kernel's
/// copies must still hold when [`Guard::check_tables`] looks.
#[derive(Clone, Debug, Default)]
struct Written {
    protected: Vec<(InodeKey, ProtectedFile)>,
    writers: Vec<(InodeKey, u32)>,
    service: Vec<(InodeKey, u32)>,
    exec: Vec<(InodeKey, u32)>,
    names: Vec<(NameKey, u32)>,
}

/// Write every table from `targets`; `pins` are added as guardian's own
/// files, `pin_dirs` as guardian's own directories.
fn fill_tables(
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
    };
    sync_hash(maps, map_names::PROTECTED_FILES, &w.protected, false)?;
    sync_hash(maps, map_names::ALLOWED_WRITERS, &w.writers, false)?;
    sync_hash(maps, map_names::SERVICE_EXES, &w.service, keep_kernel)?;
    sync_hash(maps, map_names::ALLOWED_EXEC, &w.exec, keep_kernel)?;
    sync_hash(maps, map_names::PROTECTED_NAMES, &w.names, false)?;
    sync_digests(maps, &targets.service_digests)?;
    sync_lpm(maps, map_names::EGRESS_V4, &targets.egress4)?;
    sync_lpm(maps, map_names::EGRESS_V6, &targets.egress6)?;
    Ok(w)
}

/// Write the service's executables by content (unused slots zeroed).
fn sync_digests(
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
fn diff_hash<K, V>(
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

/// Why BPF LSM cannot be used at all, in words a board integrator can act
/// on; `None` if it may work (each program may still fail to attach).
fn lsm_unavailable(features: &KernelFeatures) -> Option<String> {
    match &features.lsm {
        None => Some(
            "BPF LSM unavailable: securityfs is not mounted, cannot read /sys/kernel/security/lsm"
                .to_owned(),
        ),
        Some(list) if !features.bpf_lsm_active() => Some(format!(
            "BPF LSM unavailable: \"bpf\" is not in the active LSM list ({}); boot with lsm=...,bpf",
            list.join(",")
        )),
        Some(_) => None,
    }
}

/// The object's program `name`, as its type `T`.
fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, GuardError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(GuardError::Program {
            name,
            source: aya::programs::ProgramError::NotLoaded,
        })?
        .try_into()
        .map_err(|source| GuardError::Program { name, source })
}

/// Load and attach one LSM program.
fn attach_lsm(
    ebpf: &mut Ebpf,
    prog_name: &'static str,
    hook: &str,
    btf: &aya::Btf,
) -> Result<FdLink, String> {
    let prog: &mut Lsm = ebpf
        .program_mut(prog_name)
        .ok_or_else(|| format!("program {prog_name} missing from the object"))?
        .try_into()
        .map_err(|e| format!("program {prog_name}: {e}"))?;
    prog.load(hook, btf).map_err(|e| {
        let text = chain(&e);
        // The verifier's log is long; its last lines say why.
        let (head, log) = text.split_once("Verifier output:").unwrap_or((&text, ""));
        // (Its last lines are statistics; the reason comes before them.)
        let tail: Vec<&str> = log
            .lines()
            .filter(|l| {
                let l = l.trim();
                !l.is_empty()
                    && !l.starts_with("verification time")
                    && !l.starts_with("stack depth")
                    && !l.starts_with("processed ")
            })
            .collect();
        let why = tail[tail.len().saturating_sub(3)..].join(" / ");
        let hint = if text.contains("os error 524") || text.contains("Invalid argument") {
            " (kernels without BPF trampolines refuse LSM programs; arm64 needs Linux >= 6.4)"
        } else {
            ""
        };
        format!(
            "BPF LSM program for {hook} did not load: {}{}{hint}",
            head.trim_end().trim_end_matches(['.', ' ']),
            if why.is_empty() {
                String::new()
            } else {
                format!(" (verifier: {why})")
            }
        )
    })?;
    let id = prog.attach().map_err(|e| {
        format!(
            "BPF LSM program for {hook} did not attach: {} (arm64 needs Linux >= 6.4 for BPF trampolines)",
            chain(&e)
        )
    })?;
    let link = prog
        .take_link(id)
        .map_err(|e| format!("BPF LSM link for {hook}: {e}"))?;
    Ok(link.into())
}

/// Tracepoint programs: program, tracepoint category, tracepoint names.
type Tracepoints = [(&'static str, &'static str, &'static [&'static str])];

/// Attach each program to each named tracepoint the kernel has.
fn attach_tracepoints(
    ebpf: &mut Ebpf,
    entries: &Tracepoints,
    hook: &str,
    attached: &mut Vec<String>,
    links: &mut Vec<(String, FdLink)>,
) -> Result<(), GuardError> {
    let tracefs = crate::kernel::TRACEFS
        .iter()
        .find(|p| Path::new(p).join("events").is_dir());
    let Some(tracefs) = tracefs else {
        return Ok(());
    };
    for &(prog_name, category, names) in entries {
        for tp in names {
            if !Path::new(tracefs)
                .join("events")
                .join(category)
                .join(tp)
                .is_dir()
            {
                continue;
            }
            let err = |source| GuardError::Program {
                name: prog_name,
                source,
            };
            let prog: &mut TracePoint = program(ebpf, prog_name)?;
            if prog.fd().is_err() {
                prog.load().map_err(err)?;
            }
            let id = prog.attach(category, tp).map_err(err)?;
            attached.push(format!("tracepoint/{category}/{tp}"));
            // A perf-event link (Linux >= 5.15) can be pinned; an older
            // kernel's cannot, and that tracepoint then lives with the agent.
            let link = prog.take_link(id).map_err(err)?;
            match FdLink::try_from(link) {
                Ok(fd) => links.push((format!("{hook}-tp-{category}-{tp}"), fd)),
                Err(e) => log::warn!(
                    "tracepoint {category}/{tp} cannot be pinned ({e}); it stops with the agent"
                ),
            }
        }
    }
    Ok(())
}

/// The `execve` and `execveat` syscall wrappers of this architecture, with
/// the fentry program for each.
const EXECVE_FENTRY: [(&str, &str); 2] = [
    #[cfg(target_arch = "x86_64")]
    (prog_names::FENTRY_EXECVE, "__x64_sys_execve"),
    #[cfg(target_arch = "x86_64")]
    (prog_names::FENTRY_EXECVEAT, "__x64_sys_execveat"),
    #[cfg(target_arch = "aarch64")]
    (prog_names::FENTRY_EXECVE, "__arm64_sys_execve"),
    #[cfg(target_arch = "aarch64")]
    (prog_names::FENTRY_EXECVEAT, "__arm64_sys_execveat"),
];

/// Attach the fentry programs that read an exec's environment for the LSM
/// `bprm_check_security` program. Both or neither: on an error the one
/// already attached is dropped (detached) with its link.
fn attach_fentry_execve(
    ebpf: &mut Ebpf,
    btf: &aya::Btf,
    hook: &str,
    links: &mut Vec<(String, FdLink)>,
) -> Result<Vec<String>, String> {
    let mut mine = Vec::new();
    let mut attached = Vec::new();
    for (name, function) in EXECVE_FENTRY {
        let prog: &mut FEntry = program(ebpf, name).map_err(|e| chain(&e))?;
        prog.load(function, btf)
            .map_err(|e| format!("{name} on {function} did not load: {}", chain(&e)))?;
        let id = prog
            .attach()
            .map_err(|e| format!("{name} on {function} did not attach: {}", chain(&e)))?;
        let link: FdLink = prog.take_link(id).map_err(|e| chain(&e))?.into();
        mine.push((format!("{hook}-fentry-{function}"), link));
        attached.push(format!("fentry/{function}"));
    }
    links.extend(mine);
    Ok(attached)
}

/// The cgroup socket programs and where they attach.
const CGROUP_PROGS: [(&str, &str); 4] = [
    (prog_names::CGROUP_CONNECT4, "connect4"),
    (prog_names::CGROUP_CONNECT6, "connect6"),
    (prog_names::CGROUP_SENDMSG4, "sendmsg4"),
    (prog_names::CGROUP_SENDMSG6, "sendmsg6"),
];

/// The root of the cgroup v2 hierarchy (from `/proc/self/mountinfo`:
/// `/sys/fs/cgroup` on a unified system, `/sys/fs/cgroup/unified` on a
/// hybrid one).
pub fn cgroup2_root() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        let mut f = left.split_whitespace();
        let root = f.nth(3)?;
        let point = f.next()?;
        (fstype == "cgroup2" && root == "/").then(|| PathBuf::from(point))
    })
}

/// Attach the cgroup socket programs to the root of the cgroup v2
/// hierarchy, so that every socket of every process is judged (the
/// programs pass everything but the service's egress). Deny unless detect
/// mode was asked for. Returns the cgroup and whether it denies.
fn attach_cgroup(
    ebpf: &mut Ebpf,
    config: &mut KernelConfig,
    maps: &mut std::collections::HashMap<&'static str, Map>,
    request: ModeRequest,
    links: &mut Vec<(String, FdLink)>,
) -> Result<(String, bool), String> {
    let root = cgroup2_root().ok_or_else(|| {
        "no cgroup v2 hierarchy is mounted (mount -t cgroup2 none /sys/fs/cgroup)".to_owned()
    })?;
    let dir = std::fs::File::open(&root).map_err(|e| format!("{}: {e}", root.display()))?;
    let deny = request != ModeRequest::Detect;
    if deny {
        // Before the first program can run; taken back if one fails.
        config.forms |= forms::CGROUP_DENY;
        set_config(maps, *config).map_err(|e| e.to_string())?;
    }
    match attach_cgroup_progs(ebpf, &dir, &root) {
        Ok(mine) => links.extend(mine),
        Err(e) => {
            // The links made so far are dropped (detached) with `mine`.
            config.forms &= !forms::CGROUP_DENY;
            set_config(maps, *config).map_err(|e| e.to_string())?;
            return Err(e);
        }
    }
    Ok((root.display().to_string(), deny))
}

/// Load and attach the four cgroup programs to `dir`: all, or none.
fn attach_cgroup_progs(
    ebpf: &mut Ebpf,
    dir: &std::fs::File,
    root: &Path,
) -> Result<Vec<(String, FdLink)>, String> {
    let mut mine = Vec::new();
    for (name, at) in CGROUP_PROGS {
        let prog: &mut CgroupSockAddr = program(ebpf, name).map_err(|e| chain(&e))?;
        prog.load()
            .map_err(|e| format!("program {name} did not load: {}", chain(&e)))?;
        let id = prog
            // Through a BPF link the kernel refuses attach flags: a link
            // always runs beside the cgroup's other programs, so `Single`
            // (flags 0) is what gives "multiple" here.
            .attach(dir, CgroupAttachMode::Single)
            .map_err(|e| {
                format!(
                    "program {name} did not attach to {}: {}",
                    root.display(),
                    chain(&e)
                )
            })?;
        let link = prog.take_link(id).map_err(|e| chain(&e))?;
        let link = FdLink::try_from(link).map_err(|e| {
            format!("cgroup/{at} is attached without a BPF link (Linux < 5.7?), which cannot be pinned: {e}")
        })?;
        mine.push((format!("connect-cgroup-{at}"), link));
    }
    Ok(mine)
}

/// The raw syscall tracepoint of the detect rung (`syscalls.rs` in the
/// eBPF crate says why one program on `sys_exit`).
fn attach_raw_syscalls(
    ebpf: &mut Ebpf,
    links: &mut Vec<(String, FdLink)>,
) -> Result<(), GuardError> {
    let name = prog_names::RAW_SYS_EXIT;
    let err = |source| GuardError::Program { name, source };
    let prog: &mut RawTracePoint = program(ebpf, name)?;
    if prog.fd().is_err() {
        prog.load().map_err(err)?;
    }
    let id = prog.attach("sys_exit").map_err(|e| {
        GuardError::NoTracepoints(format!("raw tracepoint sys_exit: {}", chain(&e)))
    })?;
    let link: FdLink = prog.take_link(id).map_err(err)?.into();
    links.push((format!("{SYSCALLS_PIN}-raw-sys_exit"), link));
    Ok(())
}

/// The pin name prefix of the raw syscall tracepoints' links (shared by
/// every hook whose detect form is a syscall).
const SYSCALLS_PIN: &str = "syscalls";

/// The watched syscalls of this architecture: their numbers and where
/// `struct pt_regs` keeps the arguments and the syscall number. The agent
/// runs on the architecture it was built for, and so do the programs it
/// loads.
fn syscall_table() -> Syscalls {
    const ABSENT: u32 = u32::MAX;
    let n = |v: libc::c_long| v as u32;
    #[cfg(target_arch = "x86_64")]
    let (open, creat) = (n(libc::SYS_open), n(libc::SYS_creat));
    #[cfg(not(target_arch = "x86_64"))]
    let (open, creat) = (ABSENT, ABSENT);
    let mut nr = [ABSENT; sys::COUNT];
    nr[sys::OPENAT] = n(libc::SYS_openat);
    nr[sys::OPEN] = open;
    nr[sys::CREAT] = creat;
    nr[sys::OPENAT2] = n(libc::SYS_openat2);
    nr[sys::WRITE] = n(libc::SYS_write);
    nr[sys::PWRITE64] = n(libc::SYS_pwrite64);
    nr[sys::WRITEV] = n(libc::SYS_writev);
    nr[sys::PWRITEV] = n(libc::SYS_pwritev);
    nr[sys::PWRITEV2] = n(libc::SYS_pwritev2);
    nr[sys::FTRUNCATE] = n(libc::SYS_ftruncate);
    nr[sys::MMAP] = n(libc::SYS_mmap);
    nr[sys::CONNECT] = n(libc::SYS_connect);
    // struct pt_regs (arch/x86/include/asm/ptrace.h): r15, r14, r13, r12,
    // bp, bx, r11, r10 (56), r9, r8, ax, cx, dx, si, di (112), orig_ax
    // (120), ... as u64; the syscall ABI passes di, si, dx, r10, r8, r9:
    // all in the eight registers from r10.
    #[cfg(target_arch = "x86_64")]
    let (regs_base, regs_arg, regs_arg0, regs_nr) = (56, [7, 6, 5, 0, 2, 1], u32::MAX, 120);
    // struct pt_regs (arch/arm64/include/asm/ptrace.h): regs[31], sp, pc,
    // pstate, orig_x0 (272), then syscallno (s32) at 280; arguments in
    // x0..x5, and x0 is the result after the syscall: argument 0 is
    // orig_x0.
    #[cfg(target_arch = "aarch64")]
    let (regs_base, regs_arg, regs_arg0, regs_nr) = (0, [0, 1, 2, 3, 4, 5], 272, 280);
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    compile_error!("the raw syscall tracepoints know x86_64 and aarch64 only");
    Syscalls {
        nr,
        enabled: 0,
        regs_nr,
        regs_base,
        regs_arg,
        regs_arg0,
    }
}

/// The `sys` bits of the syscalls this architecture has.
fn present(s: &Syscalls) -> u32 {
    (0..sys::COUNT)
        .filter(|&i| s.nr[i] != u32::MAX)
        .fold(0, |m, i| m | 1 << i)
}

/// `write, pwrite64, ...` for a set of `sys` bits.
fn syscall_names(bits: u32) -> String {
    (0..sys::COUNT)
        .filter(|&i| bits & (1 << i) != 0)
        .map(|i| sys::NAMES[i])
        .collect::<Vec<_>>()
        .join(", ")
}

/// An error and its causes on one line.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{EgressEntry, PortSpec};

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
