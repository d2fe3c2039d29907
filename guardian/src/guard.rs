//! The runtime guard: loads the eBPF object, fills its maps from the config,
//! and attaches the strongest mechanism the kernel allows.
//!
//! Start-up order matters, and failure at any step leaves nothing behind
//! (every program, link and map belongs to the `aya::Ebpf` value, which
//! detaches and closes them all when dropped):
//!
//! 1. Resolve protected paths and allowed writers to inodes, before touching
//!    the kernel: a bad path is a config error, not a half-started guard.
//! 2. Read struct offsets from the kernel's BTF (no BTF, no guard: the
//!    programs would read garbage).
//! 3. Load the object (the kernel's verifier runs here; EPERM means no
//!    privilege to use BPF).
//! 4. Fill the protected/writer maps, then the config entry, so that the
//!    first event a program sees is judged with the complete tables.
//! 5. Enforce: load and attach the LSM `file_open` program. Detect (asked
//!    for, or the LSM cannot attach in `auto`): attach the syscall
//!    tracepoints. The mode and the reason are recorded for `status`.

use std::{
    collections::BTreeMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::{Lsm, TracePoint},
};
use guardian_common::{
    Counter, InodeKey, KernelConfig, ProtectedFile, maps as map_names, mode as kmode,
    programs as prog_names,
};
use serde::{Deserialize, Serialize};

use crate::{
    btf::{Btf, BtfError},
    config::{GuardConfig, ModeRequest},
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
    /// Detection needs syscall tracepoints.
    #[error("no syscall tracepoints to attach to: {0}")]
    NoTracepoints(String),
}

/// Maximum number of protected files (size of the kernel map).
pub const MAX_PROTECTED: usize = 16384;
/// Maximum number of allowed writer executables.
pub const MAX_WRITERS: usize = 1024;

/// The protected files and allowed writers, resolved to inodes.
#[derive(Clone, Debug, Default)]
pub struct Targets {
    /// Protected files; the index is the id the kernel reports.
    pub files: Vec<(PathBuf, InodeKey)>,
    /// Allowed writer executables.
    pub writers: Vec<(PathBuf, InodeKey)>,
}

/// The kernel-encoded key of a file's metadata (`st_dev` uses glibc's
/// `makedev` encoding, the kernel keeps `major << 20 | minor`).
pub fn inode_key(meta: &std::fs::Metadata) -> InodeKey {
    let dev = meta.dev();
    let major = (((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0x0000_0fff)) as u32;
    let minor = (((dev >> 12) & 0xffff_ff00) | (dev & 0x0000_00ff)) as u32;
    InodeKey::from_major_minor(major, minor, meta.ino())
}

impl Targets {
    /// Resolve the config's paths. Directories contribute every regular
    /// file below them (symlinks are not followed inside directories: a link
    /// could point anywhere).
    pub fn resolve(cfg: &GuardConfig) -> Result<Self, GuardError> {
        if cfg.protected.is_empty() {
            return Err(GuardError::NothingProtected);
        }
        let mut seen = BTreeMap::new();
        for p in &cfg.protected {
            let meta = std::fs::metadata(p).map_err(|source| GuardError::Path {
                what: "protected path",
                path: p.clone(),
                source,
            })?;
            if meta.is_dir() {
                walk(p, &mut seen)?;
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
        if seen.len() > MAX_PROTECTED {
            return Err(GuardError::TooMany {
                count: seen.len(),
                limit: MAX_PROTECTED,
            });
        }
        let files = seen.into_iter().map(|(k, p)| (p, k)).collect();
        let mut writers = Vec::new();
        for w in &cfg.allowed_writers {
            let meta = std::fs::metadata(w).map_err(|source| GuardError::Path {
                what: "allowed writer",
                path: w.clone(),
                source,
            })?;
            if !meta.is_file() || meta.mode() & 0o111 == 0 {
                return Err(GuardError::PathKind {
                    what: "allowed writer",
                    path: w.clone(),
                    problem: "not an executable regular file",
                });
            }
            writers.push((w.clone(), inode_key(&meta)));
        }
        if writers.len() > MAX_WRITERS {
            return Err(GuardError::TooMany {
                count: writers.len(),
                limit: MAX_WRITERS,
            });
        }
        Ok(Self { files, writers })
    }
}

fn walk(dir: &Path, out: &mut BTreeMap<InodeKey, PathBuf>) -> Result<(), GuardError> {
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
            walk(&path, out)?;
        } else if meta.is_file() {
            out.entry(inode_key(&meta)).or_insert(path);
        }
    }
    Ok(())
}

/// One attached hook, for `status`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct HookState {
    /// What it guards.
    pub hook: String,
    /// How: `lsm` (deny in kernel) or `tracepoint` (report after the fact).
    pub mechanism: String,
    /// Where it is attached.
    pub attached: Vec<String>,
}

/// A running guard. Dropping it detaches every program.
pub struct Guard {
    ebpf: Ebpf,
    mode: Mode,
    reason: String,
    hooks: Vec<HookState>,
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

impl Guard {
    /// Start the guard (see the module docs for the steps).
    pub fn start(
        object: &[u8],
        request: ModeRequest,
        targets: &Targets,
        features: &KernelFeatures,
        btf_path: &Path,
        ring_buffer_bytes: u32,
    ) -> Result<Self, GuardError> {
        if object.is_empty() {
            return Err(GuardError::NoObject);
        }
        let offsets = Btf::from_file(btf_path)
            .and_then(|b| b.kernel_offsets())
            .map_err(GuardError::Btf)?;

        let mut ebpf = EbpfLoader::new()
            .map_max_entries(map_names::EVENTS, ring_buffer_bytes)
            .load(object)
            .map_err(load_error)?;

        {
            let mut files: HashMap<_, InodeKey, ProtectedFile> =
                HashMap::try_from(map(&mut ebpf, map_names::PROTECTED_FILES)?).map_err(
                    |source| GuardError::Map {
                        name: map_names::PROTECTED_FILES,
                        source,
                    },
                )?;
            for (id, (_, key)) in targets.files.iter().enumerate() {
                let value = ProtectedFile {
                    id: id as u32,
                    flags: 0,
                };
                files
                    .insert(key, value, 0)
                    .map_err(|source| GuardError::Map {
                        name: map_names::PROTECTED_FILES,
                        source,
                    })?;
            }
        }
        {
            let mut writers: HashMap<_, InodeKey, u32> =
                HashMap::try_from(map(&mut ebpf, map_names::ALLOWED_WRITERS)?).map_err(
                    |source| GuardError::Map {
                        name: map_names::ALLOWED_WRITERS,
                        source,
                    },
                )?;
            for (id, (_, key)) in targets.writers.iter().enumerate() {
                writers
                    .insert(key, id as u32, 0)
                    .map_err(|source| GuardError::Map {
                        name: map_names::ALLOWED_WRITERS,
                        source,
                    })?;
            }
        }

        let set_config = |ebpf: &mut Ebpf, mode: u32| -> Result<(), GuardError> {
            let mut cfg: Array<_, KernelConfig> = Array::try_from(map(ebpf, map_names::CONFIG)?)
                .map_err(|source| GuardError::Map {
                    name: map_names::CONFIG,
                    source,
                })?;
            cfg.set(
                0,
                KernelConfig {
                    offsets,
                    mode,
                    ready: 1,
                },
                0,
            )
            .map_err(|source| GuardError::Map {
                name: map_names::CONFIG,
                source,
            })
        };

        // Decide the mode: try the LSM unless told not to.
        let lsm_refusal = match request {
            ModeRequest::Detect => Some("detect mode requested in the config".to_owned()),
            ModeRequest::Auto | ModeRequest::Enforce => {
                set_config(&mut ebpf, kmode::ENFORCE)?;
                attach_lsm(&mut ebpf, features).err()
            }
        };
        let (mode, reason, hooks) = match lsm_refusal {
            None => (
                Mode::Enforce,
                "BPF LSM file_open attached: the kernel denies write-opens of protected files"
                    .to_owned(),
                vec![HookState {
                    hook: "file write-open".into(),
                    mechanism: "lsm".into(),
                    attached: vec!["lsm/file_open".into()],
                }],
            ),
            Some(why) => {
                if request == ModeRequest::Enforce {
                    return Err(GuardError::EnforceUnavailable(why));
                }
                set_config(&mut ebpf, kmode::DETECT)?;
                let attached = attach_tracepoints(&mut ebpf, features)?;
                (
                    Mode::Detect,
                    format!("{why}; write-opens are reported after the fact, not denied"),
                    vec![HookState {
                        hook: "file write-open".into(),
                        mechanism: "tracepoint".into(),
                        attached,
                    }],
                )
            }
        };
        Ok(Self {
            ebpf,
            mode,
            reason,
            hooks,
        })
    }

    /// The mode in force.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Why this mode.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// Attached hooks.
    pub fn hooks(&self) -> &[HookState] {
        &self.hooks
    }

    /// Take the ring buffer (once).
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, GuardError> {
        let m = self
            .ebpf
            .take_map(map_names::EVENTS)
            .ok_or(GuardError::Map {
                name: map_names::EVENTS,
                source: aya::maps::MapError::InvalidName {
                    name: map_names::EVENTS.into(),
                },
            })?;
        RingBuf::try_from(m).map_err(|source| GuardError::Map {
            name: map_names::EVENTS,
            source,
        })
    }

    /// The kernel-side counters, summed over CPUs.
    pub fn counters(&self) -> Result<BTreeMap<&'static str, u64>, GuardError> {
        let err = |source| GuardError::Map {
            name: map_names::COUNTERS,
            source,
        };
        let m = self.ebpf.map(map_names::COUNTERS).ok_or(GuardError::Map {
            name: map_names::COUNTERS,
            source: aya::maps::MapError::InvalidName {
                name: map_names::COUNTERS.into(),
            },
        })?;
        let arr: PerCpuArray<_, u64> = PerCpuArray::try_from(m).map_err(err)?;
        let mut out = BTreeMap::new();
        for c in Counter::ALL {
            let values = arr.get(&(c as u32), 0).map_err(err)?;
            out.insert(c.name(), values.iter().sum());
        }
        Ok(out)
    }
}

fn map<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut aya::maps::Map, GuardError> {
    ebpf.map_mut(name).ok_or(GuardError::Map {
        name,
        source: aya::maps::MapError::InvalidName { name: name.into() },
    })
}

/// Load and attach the LSM program; on failure, say why in words a board
/// integrator can act on.
fn attach_lsm(ebpf: &mut Ebpf, features: &KernelFeatures) -> Result<(), String> {
    match &features.lsm {
        None => {
            return Err(
                "BPF LSM unavailable: securityfs is not mounted, cannot read /sys/kernel/security/lsm"
                    .to_owned(),
            );
        }
        Some(list) if !features.bpf_lsm_active() => {
            return Err(format!(
                "BPF LSM unavailable: \"bpf\" is not in the active LSM list ({}); boot with lsm=...,bpf",
                list.join(",")
            ));
        }
        Some(_) => {}
    }
    let btf =
        aya::Btf::from_sys_fs().map_err(|e| format!("BPF LSM unavailable: kernel BTF: {e}"))?;
    let prog: &mut Lsm = ebpf
        .program_mut(prog_names::LSM_FILE_OPEN)
        .ok_or_else(|| {
            format!(
                "program {} missing from the object",
                prog_names::LSM_FILE_OPEN
            )
        })?
        .try_into()
        .map_err(|e| format!("program {}: {e}", prog_names::LSM_FILE_OPEN))?;
    prog.load("file_open", &btf).map_err(|e| {
        format!(
            "BPF LSM program did not load: {} (kernels without BPF trampolines refuse LSM programs; arm64 needs Linux >= 6.4)",
            chain(&e).trim_end().trim_end_matches("Verifier output:").trim_end_matches(['.', ' '])
        )
    })?;
    prog.attach().map_err(|e| {
        format!(
            "BPF LSM program did not attach: {} (arm64 needs Linux >= 6.4 for BPF trampolines)",
            chain(&e)
        )
    })?;
    Ok(())
}

/// Attach the enter/exit tracepoints for each open syscall the kernel has.
fn attach_tracepoints(
    ebpf: &mut Ebpf,
    features: &KernelFeatures,
) -> Result<Vec<String>, GuardError> {
    if features.tracefs.is_none() {
        return Err(GuardError::NoTracepoints(
            "tracefs is not mounted (mount -t tracefs none /sys/kernel/tracing)".to_owned(),
        ));
    }
    if features.open_tracepoints.is_empty() {
        return Err(GuardError::NoTracepoints(
            "the kernel has no syscalls/sys_exit_open* tracepoints (CONFIG_FTRACE_SYSCALLS)"
                .to_owned(),
        ));
    }
    let enter_prog = |syscall: &str| match syscall {
        "open" => prog_names::TP_ENTER_OPEN,
        "openat2" => prog_names::TP_ENTER_OPENAT2,
        "creat" => prog_names::TP_ENTER_CREAT,
        _ => prog_names::TP_ENTER_OPENAT,
    };
    let mut attached = Vec::new();
    // Exit before enter: an exit without its enter finds no pending entry
    // and reports nothing, whereas an enter without its exit would only fill
    // the LRU map.
    for syscall in &features.open_tracepoints {
        for (name, tp) in [
            (prog_names::TP_EXIT_OPEN, format!("sys_exit_{syscall}")),
            (enter_prog(syscall), format!("sys_enter_{syscall}")),
        ] {
            let err = |source| GuardError::Program { name, source };
            let prog: &mut TracePoint = ebpf
                .program_mut(name)
                .ok_or(GuardError::Program {
                    name,
                    source: aya::programs::ProgramError::NotLoaded,
                })?
                .try_into()
                .map_err(err)?;
            if prog.fd().is_err() {
                prog.load().map_err(err)?;
            }
            prog.attach("syscalls", &tp).map_err(err)?;
            attached.push(format!("tracepoint/syscalls/{tp}"));
        }
    }
    Ok(attached)
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
            mode: ModeRequest::Auto,
            protected: vec![dir.path().to_owned()],
            allowed_writers: vec![PathBuf::from("/bin/sh")],
        };
        let t = Targets::resolve(&cfg).unwrap();
        let names: Vec<_> = t
            .files
            .iter()
            .map(|(p, _)| p.strip_prefix(dir.path()).unwrap().to_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(names.contains(&PathBuf::from("a.onnx")));
        assert!(names.contains(&PathBuf::from("sub/b.onnx")));
        assert_eq!(t.writers.len(), 1);

        let missing = GuardConfig {
            protected: vec![dir.path().join("nope")],
            ..cfg.clone()
        };
        let e = Targets::resolve(&missing).unwrap_err().to_string();
        assert!(
            e.starts_with("protected path ") && e.contains("nope"),
            "{e}"
        );

        let not_exe = GuardConfig {
            allowed_writers: vec![dir.path().join("a.onnx")],
            ..cfg
        };
        let e = Targets::resolve(&not_exe).unwrap_err().to_string();
        assert!(e.contains("not an executable"), "{e}");
    }
}
