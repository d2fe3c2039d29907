//! The runtime guard: loads the eBPF object, fills its maps from the
//! resolved targets, attaches the strongest kernel mechanism it can for
//! each hook, and pins everything so that enforcement outlives the agent.
//!
//! Owns the eBPF object, its maps, links and pins, and the kernel's half of
//! the ladder. May not touch the userspace rungs (fanotify) or decide what
//! a hook's coverage is in the end: [`crate::enforce`] commands the guard
//! and the rungs together and says what is in force. May not touch the TPM
//! or the measurement log either (it reports events; the attestor records
//! them).
//!
//! | file | owns |
//! |---|---|
//! | `mod.rs` | the running [`Guard`]: its tables kept in line with the targets, their check, its counters |
//! | `ladder.rs` | [`Guard::start`]: the kernel's ladder, hook by hook |
//! | `table.rs` | the hook table: what each hook can attach to; the syscall table |
//! | `attach.rs` | loading and attaching programs: LSM, tracepoints, fentry, cgroup |
//! | `maps.rs` | writing, syncing and comparing the maps |
//! | `pins.rs` | pinning, adopting a pinned guard, removing pins, the unload record |
//!
//! Start-up order matters, and failure at any step before pinning leaves
//! nothing behind (every program, link and map belongs to the `aya::Ebpf`
//! value, which detaches and closes them all when dropped):
//!
//! 1. Resolve protected paths, names, writers and the service's rules to
//!    inodes and prefixes ([`crate::targets`]), before touching the
//!    kernel: a bad path or CIDR is a config error, not a half-started
//!    guard.
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
//! hooks are left to the userspace rungs that [`crate::enforce`] starts
//! next (fanotify permission events deny write-opens, notification events
//! report the rest), the environment check of `exec` moves to
//! `sched_process_exec`, and `connect` is judged by the cgroup programs.

mod attach;
mod ladder;
mod maps;
mod pins;
mod table;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    maps::{Array, Map, MapData, PerCpuArray},
    programs::links::{FdLink, PinnedLink},
};
use guardian_common::{Counter, KernelConfig, ProtectedFile, maps as map_names};
use sha2::Digest as _;

use crate::{
    btf::BtfError,
    config::ModeRequest,
    events::{EventRing, RingError},
    hooks::{Hook, Mechanism},
    kernel::KernelFeatures,
    targets::{TargetsError, add_dir, add_path},
};

pub use crate::{
    hooks::{HOOKS, Mode},
    targets::{MAX_EXEC, MAX_PROTECTED, MAX_WRITERS, Targets, inode_key},
};
pub use attach::cgroup2_root;
pub use pins::{pinned_auth, pinned_guard_id, remove_pins};

use maps::{Written, diff_hash, fill_tables, set_config};

/// Errors starting the guard. Each says which step failed and why.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    /// This binary was built without the eBPF object.
    #[error(
        "this guardian binary has no eBPF object (built without the eBPF toolchain); rebuild after cross/setup.sh, or with GUARDIAN_EBPF_OBJECT=/path/to/guardian-ebpf"
    )]
    NoObject,
    /// The targets could not be resolved.
    #[error(transparent)]
    Targets(#[from] TargetsError),
    /// More entries than a kernel map holds.
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
    /// The ring buffer could not be mapped for reading.
    #[error("the event ring buffer: {0}")]
    Ring(#[source] RingError),
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

/// What the kernel does for one hook, as the ladder left it: the guard's
/// half of a hook's coverage ([`crate::enforce`] adds the userspace rungs
/// and says the rest).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelHook {
    /// The hook.
    pub hook: Hook,
    /// The kernel's mechanism for it (`lsm`, `cgroup`, `tracepoint`,
    /// `none` or `off`).
    pub mechanism: Mechanism,
    /// Where it is attached.
    pub attached: Vec<String>,
    /// Why it is not at the top of the ladder (empty under BPF LSM).
    pub why: String,
    /// What the kernel does instead.
    pub gap: Gap,
}

/// What the kernel does for a hook that BPF LSM does not take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Gap {
    /// Nothing missing: BPF LSM denies.
    Lsm,
    /// Not asked for; `why` says why.
    Off,
    /// The cgroup socket programs on this cgroup root deny (`deny`) or
    /// report.
    Cgroup {
        /// The cgroup they are attached to.
        root: String,
        /// They deny (not detect mode).
        deny: bool,
    },
    /// Tracepoints report it after the fact.
    Reported,
    /// No kernel form because `syscall_detect` is off; a userspace rung
    /// may take it.
    SyscallDetectOffUserspace,
    /// No kernel form because `syscall_detect` is off, and no userspace
    /// rung can.
    SyscallDetectOff,
    /// This kernel has no tracepoint for it.
    NoTracepoint,
    /// Adopted from pins: `why` is all that is known.
    Adopted,
}

impl KernelHook {
    /// The note `guardian status` shows for the hook when nothing but the
    /// kernel covers it.
    pub fn note(&self) -> Option<String> {
        let why = &self.why;
        match &self.gap {
            Gap::Lsm => None,
            Gap::Off | Gap::Adopted => Some(why.clone()),
            Gap::Cgroup { root, deny: true } => Some(format!(
                "{why}; denied in the kernel by cgroup socket programs on {root}"
            )),
            Gap::Cgroup { root, deny: false } => Some(format!(
                "{why}; cgroup socket programs on {root} report (detect mode asks for no denials)"
            )),
            Gap::Reported => Some(format!("{why}; reported after the fact")),
            Gap::SyscallDetectOffUserspace => Some(format!(
                "{why}; syscall_detect is off: NOT COVERED in the kernel (a userspace rung may take it, see below)"
            )),
            Gap::SyscallDetectOff => Some(format!(
                "{why}; NOT COVERED: syscall_detect is off ([guard] syscall_detect = true reports it, at a cost on every system call)"
            )),
            Gap::NoTracepoint => Some(format!(
                "{why}; and this kernel offers no tracepoint for it: NOT COVERED"
            )),
        }
    }
}

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
    hooks: Vec<KernelHook>,
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

impl Guard {
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
            .any(|h| h.hook == Hook::BpfObjects && h.mechanism == Mechanism::Lsm)
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
        diff_hash(m, map_names::MEASURED_PATHS, &w.paths, false, &mut out)?;
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

    /// The mode in force.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Why this mode, as far as the kernel goes.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// Every hook and what the kernel does for it.
    pub fn hooks(&self) -> &[KernelHook] {
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

    /// Take the ring buffer (once), mapped for reading.
    pub fn take_events(&mut self) -> Result<EventRing, GuardError> {
        let m = self
            .maps
            .remove(map_names::EVENTS)
            .ok_or_else(|| missing_map(map_names::EVENTS))?;
        let Map::RingBuf(data) = m else {
            return Err(GuardError::Ring(RingError::NotARing));
        };
        EventRing::new(data).map_err(GuardError::Ring)
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
