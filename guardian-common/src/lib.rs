//! Types shared by guardian's eBPF programs (`guardian-ebpf`, built for
//! `bpfel-unknown-none`) and the agent (`guardian`).
//!
//! Everything here crosses the kernel/user boundary byte for byte, so every
//! type is `#[repr(C)]`, `Copy`, free of implicit padding (explicit `_pad`
//! fields, always zero, because hash-map keys are compared as raw bytes), and
//! its size is asserted at compile time. Map names are shared constants so the
//! two sides cannot disagree on a string.
//!
//! The `user` feature adds the `aya::Pod` impls the agent needs; the eBPF
//! side builds this crate without features, as `no_std`.
#![cfg_attr(not(test), no_std)]
#![deny(missing_docs)]

/// Names of the BPF maps, as the eBPF object defines them and the agent
/// looks them up.
pub mod maps {
    /// Hash map `InodeKey -> ProtectedFile`: the files guardian protects.
    pub const PROTECTED_FILES: &str = "GUARDIAN_PROTECTED";
    /// Hash map `InodeKey -> u32`: executables allowed to open protected
    /// files for writing, identified by the inode of their binary.
    pub const ALLOWED_WRITERS: &str = "GUARDIAN_WRITERS";
    /// Array with one `KernelConfig` at index 0: struct offsets read from the
    /// running kernel's BTF, and the enforcement mode.
    pub const CONFIG: &str = "GUARDIAN_CONFIG";
    /// Ring buffer carrying `FileOpenEvent`s to the agent.
    pub const EVENTS: &str = "GUARDIAN_EVENTS";
    /// Per-CPU array of `u64` counters, indexed by `Counter`.
    pub const COUNTERS: &str = "GUARDIAN_COUNTERS";
    /// Hash map `InodeKey -> u32`: executables of the inference service.
    pub const SERVICE_EXES: &str = "GUARDIAN_SERVICE";
    /// Hash map `InodeKey -> u32`: files the inference service may execute
    /// or map executable (its own binary, its loader, its libraries).
    pub const ALLOWED_EXEC: &str = "GUARDIAN_EXEC";
    /// Hash map `NameKey -> u32`: directory entries that must not be
    /// created (e.g. `/etc/ld.so.preload` while it does not exist).
    pub const PROTECTED_NAMES: &str = "GUARDIAN_NAMES";
    /// LPM trie `[u8; 4] -> EgressRule`: IPv4 destinations the service may
    /// connect to.
    pub const EGRESS_V4: &str = "GUARDIAN_EGRESS4";
    /// LPM trie `[u8; 16] -> EgressRule`: IPv6 destinations.
    pub const EGRESS_V6: &str = "GUARDIAN_EGRESS6";
    /// LRU hash `struct file * -> u32`: open files already reported (at
    /// their write-open, or at their first write), so that a loop of
    /// `write` calls on one descriptor is one event, not thousands.
    pub const REPORTED_FILES: &str = "GUARDIAN_REPORTED";
    /// LRU hash `pid_tgid -> u32`: an `execve` in flight whose environment
    /// sets a loader variable (`LD_PRELOAD`, ...); value: which one.
    pub const PENDING_PRELOAD: &str = "GUARDIAN_PENDING_PRELOAD";
    /// LRU hash `pid_tgid -> u64`: the `envp` of an `execve` in flight
    /// whose environment could not be read without faulting; the exec
    /// check reads it again where it may fault.
    pub const PENDING_ENVP: &str = "GUARDIAN_PENDING_ENVP";
    /// Array of `[u8; 32]`: what the guard was loaded with (a digest of the
    /// agent's effective config, flags, the operator keys that may unload
    /// it). Read and written by the agent only; no program uses it.
    pub const AUTH: &str = "GUARDIAN_AUTH";
    /// Array of [`ServiceDigest`](crate::ServiceDigest): the service's
    /// executables by content (size and SHA-256), so that a copy of one at
    /// another inode is recognised as the service when it runs.
    pub const SERVICE_DIGESTS: &str = "GUARDIAN_SERVICE_DIGESTS";
    /// Hash map [`PathKey`](crate::PathKey) -> [`MeasuredPath`](crate::MeasuredPath):
    /// the absolute path of every protected file and protected tree, as
    /// the agent resolved it, and the inode it led to. The service's
    /// opens are checked against it ([`rules::MEASURED_OPEN`](crate::rules::MEASURED_OPEN)).
    pub const MEASURED_PATHS: &str = "GUARDIAN_PATHS";
}

/// Names of the eBPF programs in the object.
pub mod programs {
    /// LSM `file_open`: denies write-opens of protected files.
    pub const LSM_FILE_OPEN: &str = "guardian_file_open";
    /// LSM `file_open`, sleepable: the service opens a protected name only
    /// at its measured inode (see [`rules::MEASURED_OPEN`](crate::rules::MEASURED_OPEN)).
    pub const LSM_OPEN_MEASURED: &str = "guardian_open_measured";
    /// Raw tracepoint `sys_exit`: the detect rung's view of the watched
    /// syscalls (open family, write family, `ftruncate`, `mmap`,
    /// `connect`; see [`Syscalls`](crate::Syscalls)).
    pub const RAW_SYS_EXIT: &str = "guardian_sys_exit";
    /// LSM `file_permission`: writes through descriptors opened earlier.
    pub const LSM_FILE_PERMISSION: &str = "guardian_file_permission";
    /// LSM `inode_setattr`: truncate, chmod, chown, utimes (Linux >= 6.3
    /// argument layout).
    pub const LSM_INODE_SETATTR: &str = "guardian_inode_setattr";
    /// The same for Linux < 6.3 (no `idmap` argument).
    pub const LSM_INODE_SETATTR_OLD: &str = "guardian_inode_setattr_old";
    /// LSM `inode_rename`: renames onto or away from protected files.
    pub const LSM_INODE_RENAME: &str = "guardian_inode_rename";
    /// LSM `inode_unlink`.
    pub const LSM_INODE_UNLINK: &str = "guardian_inode_unlink";
    /// LSM `inode_link`: hard links to protected files.
    pub const LSM_INODE_LINK: &str = "guardian_inode_link";
    /// LSM `inode_create`: creation of protected names.
    pub const LSM_INODE_CREATE: &str = "guardian_inode_create";
    /// LSM `mmap_file`: shared writable maps of protected files, and
    /// executable maps by the service of files not allowed.
    pub const LSM_MMAP_FILE: &str = "guardian_mmap_file";
    /// LSM `bprm_check_security`: exec by or of the inference service.
    pub const LSM_BPRM_CHECK: &str = "guardian_bprm_check";
    /// LSM `ptrace_access_check`: ptrace (and /proc/PID/mem) of the service.
    pub const LSM_PTRACE: &str = "guardian_ptrace";
    /// LSM `socket_connect`: egress of the service.
    pub const LSM_SOCKET_CONNECT: &str = "guardian_socket_connect";
    /// Tracepoint `syscalls/sys_enter_execve(at)`: looks for loader
    /// variables in the environment.
    pub const TP_ENTER_EXECVE: &str = "guardian_enter_execve";
    /// Same, for `execveat` (the environment is argument 3).
    pub const TP_ENTER_EXECVEAT: &str = "guardian_enter_execveat";
    /// fentry on the `execve` syscall's wrapper: the same as
    /// [`TP_ENTER_EXECVE`] without a syscall tracepoint (needs BPF
    /// trampolines, like BPF LSM).
    pub const FENTRY_EXECVE: &str = "guardian_fentry_execve";
    /// The same for `execveat`.
    pub const FENTRY_EXECVEAT: &str = "guardian_fentry_execveat";
    /// Tracepoint `sched/sched_process_exec`: detect-mode exec checks.
    pub const TP_PROCESS_EXEC: &str = "guardian_process_exec";
    /// cgroup `connect4`: egress of the service over IPv4 (denies without
    /// BPF LSM).
    pub const CGROUP_CONNECT4: &str = "guardian_connect4";
    /// cgroup `connect6`: the same over IPv6.
    pub const CGROUP_CONNECT6: &str = "guardian_connect6";
    /// cgroup `sendmsg4`: unconnected UDP `sendto`/`sendmsg` over IPv4.
    pub const CGROUP_SENDMSG4: &str = "guardian_sendmsg4";
    /// cgroup `sendmsg6`: the same over IPv6.
    pub const CGROUP_SENDMSG6: &str = "guardian_sendmsg6";
    /// LSM `inode_rmdir`: removal of a protected directory.
    pub const LSM_INODE_RMDIR: &str = "guardian_inode_rmdir";
    /// LSM `inode_mkdir`: a directory made in a protected tree.
    pub const LSM_INODE_MKDIR: &str = "guardian_inode_mkdir";
    /// LSM `inode_symlink`: a symlink made in a protected tree, or as a
    /// protected name.
    pub const LSM_INODE_SYMLINK: &str = "guardian_inode_symlink";
    /// LSM `inode_mknod`: a device node, FIFO or socket made in a
    /// protected tree, or as a protected name.
    pub const LSM_INODE_MKNOD: &str = "guardian_inode_mknod";
    /// LSM `sb_mount`: a mount on a protected path.
    pub const LSM_SB_MOUNT: &str = "guardian_sb_mount";
    /// LSM `move_mount`: a mount moved onto or away from a protected path.
    pub const LSM_MOVE_MOUNT: &str = "guardian_move_mount";
    /// LSM `sb_umount`: unmounting a filesystem a protected path lies on.
    pub const LSM_SB_UMOUNT: &str = "guardian_sb_umount";
    /// LSM `sb_pivotroot`: the root moved away from above the protected
    /// paths.
    pub const LSM_SB_PIVOTROOT: &str = "guardian_sb_pivotroot";
    /// LSM `bpf`: link detach and update on guardian's links.
    pub const LSM_BPF: &str = "guardian_bpf";
    /// LSM `bpf_map`: descriptors for guardian's maps.
    pub const LSM_BPF_MAP: &str = "guardian_bpf_map";
    /// LSM `bpf_prog`: descriptors for guardian's programs.
    pub const LSM_BPF_PROG: &str = "guardian_bpf_prog";
    /// LSM `task_prctl`: changing a process's recorded executable.
    pub const LSM_TASK_PRCTL: &str = "guardian_task_prctl";
    /// LSM `ptrace_traceme`: the service asking to be traced.
    pub const LSM_PTRACE_TRACEME: &str = "guardian_ptrace_traceme";
    /// LSM `bprm_creds_from_file`: a copy of the service's executable
    /// recognised by content.
    pub const LSM_BPRM_CREDS_FROM_FILE: &str = "guardian_bprm_creds";
}

/// A file identity as the kernel sees it: `inode->i_sb->s_dev` (the
/// kernel's internal `dev_t` encoding, `major << 20 | minor`) and
/// `inode->i_ino`.
///
/// Userspace builds these from `stat(2)` with [`InodeKey::from_major_minor`]
/// because `st_dev` uses a different encoding from the kernel's.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InodeKey {
    /// Inode number.
    pub ino: u64,
    /// Device, kernel encoding.
    pub dev: u32,
    /// Always zero (keys are compared as bytes).
    pub _pad: u32,
}

impl InodeKey {
    /// Bits of the minor number in the kernel's internal `dev_t`
    /// (`MINORBITS` in `include/linux/kdev_t.h`).
    pub const MINOR_BITS: u32 = 20;

    /// A key from a device's major and minor numbers and an inode number.
    pub const fn from_major_minor(major: u32, minor: u32, ino: u64) -> Self {
        Self {
            ino,
            dev: (major << Self::MINOR_BITS) | (minor & ((1 << Self::MINOR_BITS) - 1)),
            _pad: 0,
        }
    }

    /// Major number of the device.
    pub const fn major(&self) -> u32 {
        self.dev >> Self::MINOR_BITS
    }

    /// Minor number of the device.
    pub const fn minor(&self) -> u32 {
        self.dev & ((1 << Self::MINOR_BITS) - 1)
    }
}

/// Value of the protected-files map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProtectedFile {
    /// Index of the file in the agent's table (to name it in events).
    pub id: u32,
    /// [`ProtectedFile::SELF`] or zero.
    pub flags: u32,
}

impl ProtectedFile {
    /// One of guardian's own files (binary, config, keys, policies, pins):
    /// only guardian's own executable may change it, not the model writers.
    pub const SELF: u32 = 1;
    /// A directory on the path to a protected file, from the root down:
    /// nobody renames or removes it, and nothing is mounted on it, so the
    /// name the service opens keeps leading to the measured inode.
    pub const PATH: u32 = 2;
    /// A directory inside a protected tree: only the allowed writers (for
    /// guardian's own directories, guardian) create, rename or remove
    /// entries in it, and a file created in it is protected like the
    /// others before the agent has even seen it.
    pub const TREE: u32 = 4;
    /// `id` of the first directory entry (see [`ProtectedFile::PATH`]):
    /// directories are numbered from here, files and pins below it.
    pub const DIR_ID_BASE: u32 = 1 << 24;
}

/// Byte offsets of the kernel struct fields the programs read, taken from
/// the running kernel's BTF (`/sys/kernel/btf/vmlinux`) by the agent at load
/// time. This is what lets one eBPF object run on kernels whose struct
/// layouts differ, without compiler support for CO-RE relocations.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `struct file`, `f_inode`.
    pub file_f_inode: u32,
    /// `struct file`, `f_flags`.
    pub file_f_flags: u32,
    /// `struct file`, `f_mode`.
    pub file_f_mode: u32,
    /// `struct inode`, `i_ino`.
    pub inode_i_ino: u32,
    /// `struct inode`, `i_sb`.
    pub inode_i_sb: u32,
    /// `struct super_block`, `s_dev`.
    pub sb_s_dev: u32,
    /// `struct task_struct`, `mm`.
    pub task_mm: u32,
    /// `struct task_struct`, `real_parent`.
    pub task_real_parent: u32,
    /// `struct task_struct`, `tgid`.
    pub task_tgid: u32,
    /// `struct task_struct`, `files`.
    pub task_files: u32,
    /// `struct mm_struct`, `exe_file`.
    pub mm_exe_file: u32,
    /// `struct files_struct`, `fdt`.
    pub files_fdt: u32,
    /// `struct fdtable`, `max_fds`.
    pub fdt_max_fds: u32,
    /// `struct fdtable`, `fd`.
    pub fdt_fd: u32,
    /// `struct dentry`, `d_inode`.
    pub dentry_d_inode: u32,
    /// `struct dentry`, `d_name` (a `struct qstr`).
    pub dentry_d_name: u32,
    /// `struct qstr`, `name`.
    pub qstr_name: u32,
    /// `struct linux_binprm`, `file`.
    pub bprm_file: u32,
    /// `struct linux_binprm`, `filename` (the path as passed to exec).
    pub bprm_filename: u32,
    /// `struct iattr`, `ia_valid`.
    pub iattr_ia_valid: u32,
    /// Argument position of `struct dentry *` in the `inode_setattr` hook
    /// (1 since Linux 6.3 added `struct mnt_idmap *` in front, 0 before).
    pub setattr_dentry_arg: u32,
    /// `struct mm_struct`, `start_stack`: where a new program's `argc`,
    /// `argv[]` and `envp[]` begin.
    pub mm_start_stack: u32,
    /// `struct dentry`, `d_parent`.
    pub dentry_d_parent: u32,
    /// `struct path`, `dentry`.
    pub path_dentry: u32,
    /// `struct vfsmount`, `mnt_root`.
    pub vfsmount_mnt_root: u32,
    /// `struct file`, `private_data` (a `struct bpf_link *` for a link's
    /// descriptor).
    pub file_private_data: u32,
    /// `struct bpf_map`, `name`.
    pub bpf_map_name: u32,
    /// `struct bpf_prog`, `aux`.
    pub bpf_prog_aux: u32,
    /// `struct bpf_prog_aux`, `name`.
    pub bpf_prog_aux_name: u32,
    /// `struct bpf_link`, `prog`.
    pub bpf_link_prog: u32,
    /// `struct task_struct`, `ptrace` (`PT_PTRACED` while traced).
    pub task_ptrace: u32,
    /// `struct file`, `f_path` (a `struct path`).
    pub file_f_path: u32,
    /// `struct inode`, `i_size`.
    pub inode_i_size: u32,
    /// `struct task_struct`, `fs` (a `struct fs_struct *`).
    pub task_fs: u32,
    /// `struct fs_struct`, `root` (a `struct path`: the task's root).
    pub fs_root: u32,
    /// Always zero (keeps the struct a multiple of 8 bytes, so that
    /// [`KernelConfig`] has no implicit padding).
    pub _pad: u32,
}

/// Enforcement mode, as the programs see it.
pub mod mode {
    /// Report only: the kernel lets the operation happen.
    pub const DETECT: u32 = 0;
    /// Deny in the kernel (BPF LSM attached).
    pub const ENFORCE: u32 = 1;
}

/// Bits of [`KernelConfig::forms`]: how some hooks run on this kernel.
pub mod forms {
    /// The cgroup socket programs deny: a connect or send of the service
    /// outside the egress allowlist fails with `EPERM`. Without it they
    /// report only (detect mode requested).
    pub const CGROUP_DENY: u32 = 1;
    /// No syscall-entry tracepoint reads an exec's environment:
    /// `sched_process_exec` reads it from the new program's stack, and
    /// takes the parent for the program that did the exec.
    pub const ENV_AT_EXEC: u32 = 2;
}

/// The one entry of the config map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelConfig {
    /// Field offsets of the running kernel.
    pub offsets: KernelOffsets,
    /// One of [`mode`].
    pub mode: u32,
    /// Non-zero once the agent has filled this entry; until then the
    /// programs allow everything and report nothing (an all-zero offset
    /// table would make them read garbage).
    pub ready: u32,
    /// Bits of [`rules`]: which process rules are switched on.
    pub rules: u32,
    /// Bits of [`forms`]: how some hooks run on this kernel.
    pub forms: u32,
    /// The agent's own executable: the only program that may change
    /// guardian's own files (those with [`ProtectedFile::SELF`]).
    pub self_exe: InodeKey,
    /// The root directory (`/`) as the agent found it: every protected
    /// path lies below it, so `pivot_root(2)` moving it away is refused.
    pub root: InodeKey,
    /// The syscalls the detect rung watches through the raw `sys_exit`
    /// tracepoint.
    pub syscalls: Syscalls,
}

/// What the raw syscall tracepoint (`raw_tracepoint/sys_exit`) needs to
/// know of the running architecture, and which of the syscalls in [`sys`]
/// it handles.
///
/// One program sees every syscall of every task, so it must
/// decide in a few instructions that a syscall is not one it handles; and
/// it gets the arguments only as the saved user registers (`struct
/// pt_regs`), whose layout is the architecture's. The agent fills both
/// from its own architecture (it runs on the same one).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Syscalls {
    /// Syscall number of each [`sys`] entry on this architecture
    /// (`u32::MAX`: the architecture has no such syscall).
    pub nr: [u32; sys::COUNT],
    /// Bit `1 << i` set: the syscall `sys` index `i` is handled.
    pub enabled: u32,
    /// Offset in `struct pt_regs` of the syscall number as the exit side
    /// reads it (`orig_ax` on x86_64, `syscallno` on arm64).
    pub regs_nr: u32,
    /// Offset in `struct pt_regs` of a block of eight `u64` registers that
    /// holds the six syscall arguments.
    pub regs_base: u32,
    /// Where each of the six arguments is in that block (index 0–7).
    pub regs_arg: [u32; 6],
    /// Offset in `struct pt_regs` of argument 0 as it is after the
    /// syscall, when not in the block (`orig_x0` on arm64, whose `x0` is
    /// the result by then); `u32::MAX`: take it from the block.
    pub regs_arg0: u32,
}

/// The syscalls of [`Syscalls`], by index.
pub mod sys {
    /// `openat`.
    pub const OPENAT: usize = 0;
    /// `open` (x86_64 only).
    pub const OPEN: usize = 1;
    /// `creat` (x86_64 only).
    pub const CREAT: usize = 2;
    /// `openat2`.
    pub const OPENAT2: usize = 3;
    /// `write`.
    pub const WRITE: usize = 4;
    /// `pwrite64`.
    pub const PWRITE64: usize = 5;
    /// `writev`.
    pub const WRITEV: usize = 6;
    /// `pwritev`.
    pub const PWRITEV: usize = 7;
    /// `pwritev2`.
    pub const PWRITEV2: usize = 8;
    /// `ftruncate`.
    pub const FTRUNCATE: usize = 9;
    /// `mmap`.
    pub const MMAP: usize = 10;
    /// `connect`.
    pub const CONNECT: usize = 11;
    /// How many.
    pub const COUNT: usize = 12;
    /// Names, in index order (as in `sys_enter_<name>`).
    pub const NAMES: [&str; COUNT] = [
        "openat",
        "open",
        "creat",
        "openat2",
        "write",
        "pwrite64",
        "writev",
        "pwritev",
        "pwritev2",
        "ftruncate",
        "mmap",
        "connect",
    ];
    /// The open family.
    pub const OPENS: u32 = 1 << OPENAT | 1 << OPEN | 1 << CREAT | 1 << OPENAT2;
    /// The write family.
    pub const WRITES: u32 = 1 << WRITE | 1 << PWRITE64 | 1 << WRITEV | 1 << PWRITEV | 1 << PWRITEV2;
}

/// Process rules, switched on by the agent in [`KernelConfig::rules`] when
/// the config names an inference service.
pub mod rules {
    /// The service may only execute files in the exec allowlist.
    pub const EXEC_ALLOWLIST: u32 = 1 << 0;
    /// The service may only map executable files in the exec allowlist.
    pub const LIBRARY_ALLOWLIST: u32 = 1 << 1;
    /// The service may only connect to the egress allowlist.
    pub const EGRESS_ALLOWLIST: u32 = 1 << 2;
    /// Nobody may ptrace the service.
    pub const NO_PTRACE: u32 = 1 << 3;
    /// Loader variables (`LD_PRELOAD`, ...) are refused on exec of, or by,
    /// the service.
    pub const NO_PRELOAD: u32 = 1 << 4;
    /// guardian's own executable gets the service's protections whatever
    /// the config says: no loader variables and no tracer at its exec, no
    /// `ptrace` attach. Always set by the agent.
    pub const GUARD_SELF: u32 = 1 << 5;
    /// A file with the content of one of the service's executables (same
    /// size and SHA-256, as IMA computes it) is the service when it runs,
    /// whatever its inode.
    pub const SERVICE_BY_CONTENT: u32 = 1 << 6;
    /// Measure at use: when the service opens a file, a protected name
    /// must lead to the inode the agent measured there, and a file in a
    /// protected tree must be one the agent knows. A chroot, a mount
    /// namespace or anything else that makes the service's name for a
    /// model lead to another file is refused (reported in detect mode).
    pub const MEASURED_OPEN: u32 = 1 << 7;
}

/// Key of the measured-paths map: an absolute path, NUL-padded to
/// [`PathKey::LEN`] bytes (the kernel's `d_path` writes it so; a longer
/// path is never checked, and the agent says so when it fills the map).
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PathKey {
    /// The path's bytes, then zeros.
    pub path: [u8; PathKey::LEN],
}

impl PathKey {
    /// Longest path, with its terminating NUL.
    pub const LEN: usize = 256;

    /// `path` as a key; `None` when it does not fit (with its NUL).
    pub fn new(path: &[u8]) -> Option<Self> {
        if path.len() >= Self::LEN {
            return None;
        }
        let mut k = Self {
            path: [0; Self::LEN],
        };
        k.path[..path.len()].copy_from_slice(path);
        Some(k)
    }
}

impl core::fmt::Debug for PathKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // The path as text (what a reader of a table difference wants),
        // bytes outside printable ASCII escaped.
        f.write_str("\"")?;
        for &b in self.path.iter().take_while(|&&b| b != 0) {
            if (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\' {
                core::fmt::Write::write_char(f, b as char)?;
            } else {
                write!(f, "\\x{b:02x}")?;
            }
        }
        f.write_str("\"")
    }
}

impl Default for PathKey {
    fn default() -> Self {
        Self {
            path: [0; Self::LEN],
        }
    }
}

/// Value of the measured-paths map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MeasuredPath {
    /// The inode the path led to when the agent resolved it.
    pub key: InodeKey,
    /// [`MeasuredPath::TREE`] or zero.
    pub flags: u32,
    /// The [`ProtectedFile::id`] of what the path names (a file's, or a
    /// tree directory's), to name it in events.
    pub id: u32,
}

impl MeasuredPath {
    /// The path is a protected tree's directory: a file opened in it must
    /// be one the agent knows (in the protected-files map).
    pub const TREE: u32 = 1;
}

/// One of the service's executables by content: an entry of the
/// service-digests map (all zero: unused).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceDigest {
    /// File size in bytes (compared first: hashing is only done for a file
    /// of a service executable's size).
    pub size: u64,
    /// SHA-256 of the content.
    pub sha256: [u8; 32],
}

impl ServiceDigest {
    /// Entries of the map.
    pub const MAX: u32 = 8;
    /// In the service and exec tables, the value of an entry the kernel
    /// added itself (a copy recognised by content), ORed with the digest's
    /// index: the agent keeps such entries when it brings the tables in
    /// line.
    pub const KERNEL_ADDED: u32 = 1 << 31;
}

/// Key of the protected-names map: a directory and one name in it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NameKey {
    /// The directory.
    pub dir: InodeKey,
    /// The entry's name, NUL-padded (names longer than this are never
    /// protected by name).
    pub name: [u8; NameKey::LEN],
}

impl NameKey {
    /// Longest name that can be protected.
    pub const LEN: usize = 32;
}

/// Value of the egress LPM tries: up to [`EgressRule::MAX_PORTS`] port
/// ranges allowed to one network prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EgressRule {
    /// `[low, high]` inclusive port ranges; `[0, 65535]` is any port.
    pub ports: [[u16; 2]; EgressRule::MAX_PORTS],
    /// How many of `ports` are in use.
    pub count: u32,
}

impl EgressRule {
    /// Port ranges per prefix.
    pub const MAX_PORTS: usize = 8;
}

/// Counters kept by the programs, one slot each in the per-CPU counters map.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Events written to the ring buffer.
    EventsSubmitted = 0,
    /// Events lost because the ring buffer was full.
    RingbufDrops = 1,
    /// Write-opens denied by the LSM program.
    Denied = 2,
    /// Write-opens of protected files allowed (allowlisted writer).
    Allowed = 3,
    /// Write-opens of protected files seen after the fact (detect mode).
    Detected = 4,
    /// Kernel reads (`bpf_probe_read_kernel`) that failed: the event was
    /// still judged, with the unreadable field zeroed.
    ReadErrors = 5,
    /// Pending-open entries that could not be stored (LRU full).
    PendingDrops = 6,
    /// Process-rule violations denied (exec, preload, library, ptrace,
    /// connect).
    ProcessDenied = 7,
    /// Process-rule violations seen after the fact (detect mode).
    ProcessDetected = 8,
    /// Hook calls that found the config map empty (never filled, or
    /// cleared behind the agent's back): the hook could not judge.
    Unconfigured = 9,
}

impl Counter {
    /// Number of counter slots.
    pub const COUNT: u32 = 10;
    /// Every counter, in slot order.
    pub const ALL: [Counter; Self::COUNT as usize] = [
        Counter::EventsSubmitted,
        Counter::RingbufDrops,
        Counter::Denied,
        Counter::Allowed,
        Counter::Detected,
        Counter::ReadErrors,
        Counter::PendingDrops,
        Counter::ProcessDenied,
        Counter::ProcessDetected,
        Counter::Unconfigured,
    ];

    /// Stable snake_case name, used in status output.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::EventsSubmitted => "events_submitted",
            Counter::RingbufDrops => "ringbuf_drops",
            Counter::Denied => "denied",
            Counter::Allowed => "allowed",
            Counter::Detected => "detected",
            Counter::ReadErrors => "kernel_read_errors",
            Counter::PendingDrops => "pending_open_drops",
            Counter::ProcessDenied => "process_denied",
            Counter::ProcessDetected => "process_detected",
            Counter::Unconfigured => "unconfigured_hook_calls",
        }
    }
}

/// What kind of event follows the header.
pub mod kind {
    /// A protected file was opened for writing (or with `O_TRUNC`).
    pub const FILE_WRITE_OPEN: u16 = 1;
    /// A write through a descriptor (opened before guardian started, or
    /// inherited).
    pub const FILE_WRITE: u16 = 2;
    /// Truncation (`truncate`, `ftruncate`).
    pub const FILE_TRUNCATE: u16 = 3;
    /// Rename onto or away from a protected file.
    pub const FILE_RENAME: u16 = 4;
    /// Unlink of a protected file.
    pub const FILE_UNLINK: u16 = 5;
    /// Hard link to a protected file.
    pub const FILE_LINK: u16 = 6;
    /// Attribute change (`chmod`, `chown`, times).
    pub const FILE_SETATTR: u16 = 7;
    /// Shared writable `mmap` of a protected file.
    pub const FILE_MMAP_WRITE: u16 = 8;
    /// Creation of a protected name (e.g. `/etc/ld.so.preload`).
    pub const FILE_CREATE: u16 = 9;
    /// The service executed a file not on its exec allowlist.
    pub const EXEC: u16 = 10;
    /// An exec of, or by, the service with a loader variable set.
    pub const EXEC_PRELOAD: u16 = 11;
    /// The service mapped executable a file not on its allowlist.
    pub const LIBRARY_LOAD: u16 = 12;
    /// ptrace (or `/proc/PID/mem` access) of the service.
    pub const PTRACE: u16 = 13;
    /// The service connected to an address not on the egress allowlist.
    pub const CONNECT: u16 = 14;
    /// A mount on, a move of, or an unmount of a protected path.
    pub const MOUNT: u16 = 15;
    /// Another program reaching for guardian's own BPF maps, programs or
    /// links (`name` is the object's name, `flags` the `bpf(2)` command
    /// or the map's `fmode`).
    pub const BPF_OBJECT: u16 = 16;
    /// `prctl(PR_SET_MM, PR_SET_MM_EXE_FILE | PR_SET_MM_MAP)`: changing
    /// the executable the kernel records for a process (`flags` is the
    /// sub-command).
    pub const PRCTL_EXE: u16 = 17;
    /// A file with the content of a service executable, at another inode,
    /// ran: from now on it is the service (`file` is its inode, `name` the
    /// path it was run by).
    pub const SERVICE_COPY: u16 = 18;
    /// The service opened a file other than the one measured: a protected
    /// name leading to another inode (`aux` = [`Event::OPEN_OTHER_INODE`]),
    /// or a file in a protected tree that the agent has not taken in
    /// (`aux` = [`Event::OPEN_UNKNOWN_IN_TREE`]). `name` is the file's
    /// last path component.
    pub const OPEN_UNMEASURED: u16 = 19;
}

/// Which program produced an event.
pub mod source {
    /// The BPF LSM `file_open` hook (before the open happens).
    pub const LSM_FILE_OPEN: u16 = 1;
    /// The open family on the raw `sys_exit` tracepoint (after the open happened).
    pub const RAW_SYS_OPEN: u16 = 2;
    /// LSM `file_permission`.
    pub const LSM_FILE_PERMISSION: u16 = 3;
    /// LSM `inode_setattr`.
    pub const LSM_INODE_SETATTR: u16 = 4;
    /// LSM `inode_rename`.
    pub const LSM_INODE_RENAME: u16 = 5;
    /// LSM `inode_unlink`.
    pub const LSM_INODE_UNLINK: u16 = 6;
    /// LSM `inode_link`.
    pub const LSM_INODE_LINK: u16 = 7;
    /// LSM `inode_create`.
    pub const LSM_INODE_CREATE: u16 = 8;
    /// LSM `mmap_file`.
    pub const LSM_MMAP_FILE: u16 = 9;
    /// LSM `bprm_check_security`.
    pub const LSM_BPRM_CHECK: u16 = 10;
    /// LSM `ptrace_access_check`.
    pub const LSM_PTRACE: u16 = 11;
    /// LSM `socket_connect`.
    pub const LSM_SOCKET_CONNECT: u16 = 12;
    /// The write family on the raw `sys_exit` tracepoint.
    pub const RAW_SYS_WRITE: u16 = 13;
    /// `ftruncate` on the raw `sys_exit` tracepoint.
    pub const RAW_SYS_FTRUNCATE: u16 = 14;
    /// `mmap` on the raw `sys_exit` tracepoint.
    pub const RAW_SYS_MMAP: u16 = 15;
    /// `connect` on the raw `sys_exit` tracepoint.
    pub const RAW_SYS_CONNECT: u16 = 16;
    /// Tracepoint `sched/sched_process_exec`.
    pub const TP_PROCESS_EXEC: u16 = 17;
    /// cgroup `connect4`.
    pub const CGROUP_CONNECT4: u16 = 18;
    /// cgroup `connect6`.
    pub const CGROUP_CONNECT6: u16 = 19;
    /// cgroup `sendmsg4`.
    pub const CGROUP_SENDMSG4: u16 = 20;
    /// cgroup `sendmsg6`.
    pub const CGROUP_SENDMSG6: u16 = 21;
    /// LSM `inode_rmdir`.
    pub const LSM_INODE_RMDIR: u16 = 22;
    /// LSM `inode_mkdir`.
    pub const LSM_INODE_MKDIR: u16 = 23;
    /// LSM `inode_symlink`.
    pub const LSM_INODE_SYMLINK: u16 = 24;
    /// LSM `inode_mknod`.
    pub const LSM_INODE_MKNOD: u16 = 25;
    /// LSM `sb_mount`.
    pub const LSM_SB_MOUNT: u16 = 26;
    /// LSM `move_mount`.
    pub const LSM_MOVE_MOUNT: u16 = 27;
    /// LSM `sb_umount`.
    pub const LSM_SB_UMOUNT: u16 = 28;
    /// LSM `bpf` (the `bpf(2)` command).
    pub const LSM_BPF: u16 = 29;
    /// LSM `bpf_map` (a descriptor for a map).
    pub const LSM_BPF_MAP: u16 = 30;
    /// LSM `bpf_prog` (a descriptor for a program).
    pub const LSM_BPF_PROG: u16 = 31;
    /// LSM `task_prctl`.
    pub const LSM_TASK_PRCTL: u16 = 32;
    /// LSM `ptrace_traceme`.
    pub const LSM_PTRACE_TRACEME: u16 = 33;
    /// LSM `bprm_creds_from_file`.
    pub const LSM_BPRM_CREDS_FROM_FILE: u16 = 34;
    /// LSM `sb_pivotroot`.
    pub const LSM_SB_PIVOTROOT: u16 = 35;
}

/// Loader variables looked for in an exec's environment (value of
/// [`Event::aux`] for [`kind::EXEC_PRELOAD`]).
pub mod preload {
    /// `LD_PRELOAD=`.
    pub const LD_PRELOAD: u32 = 1;
    /// `LD_LIBRARY_PATH=`.
    pub const LD_LIBRARY_PATH: u32 = 2;
    /// `LD_AUDIT=`.
    pub const LD_AUDIT: u32 = 3;
    /// The environment could not be read to its end (more entries than
    /// the programs look at, or an entry in memory they could not read):
    /// a loader variable may be hiding there, so it counts as one.
    pub const UNREAD: u32 = 4;

    /// The variable's name.
    pub const fn name(v: u32) -> &'static str {
        match v {
            LD_PRELOAD => "LD_PRELOAD",
            LD_LIBRARY_PATH => "LD_LIBRARY_PATH",
            LD_AUDIT => "LD_AUDIT",
            UNREAD => "environment not fully readable",
            _ => "?",
        }
    }
}

/// The kernel's decision, as carried in the event.
pub mod verdict {
    /// Allowed: the writer is on the allowlist.
    pub const ALLOW: u16 = 0;
    /// Denied in the kernel with `-EPERM`.
    pub const DENY: u16 = 1;
    /// Not allowed by policy, but it already happened (detect mode).
    pub const ALERT: u16 = 2;
}

/// Common header of every event on the ring buffer.
///
/// It must stay the first field of every event struct: the agent reads it at
/// offset 0 to learn the event's kind and size before decoding the rest.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// One of [`kind`].
    pub kind: u16,
    /// One of [`source`].
    pub source: u16,
    /// One of [`verdict`].
    pub verdict: u16,
    /// Size of the whole event in bytes.
    pub size: u16,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the event was made.
    pub ktime_ns: u64,
}

/// One event, of any kind. The kind decides which fields mean something;
/// the rest are zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// Must be first; see [`EventHeader`].
    pub header: EventHeader,
    /// The file concerned: the protected file, the executed binary, the
    /// library; for `ptrace`, the traced process's executable.
    pub file: InodeKey,
    /// The executable of the acting process (`current->mm->exe_file`);
    /// zero for kernel threads.
    pub exe: InodeKey,
    /// Thread group id (the userspace PID).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Parent's thread group id (`real_parent->tgid`).
    pub ppid: u32,
    /// Real user id.
    pub uid: u32,
    /// Real group id.
    pub gid: u32,
    /// Kind-specific flags: open flags, `ia_valid`, mmap `prot`, ptrace
    /// mode.
    pub flags: u32,
    /// `file->f_mode` (`FMODE_*`), or mmap `flags`; zero where unknown.
    pub fmode: u32,
    /// Id of the protected file (see [`ProtectedFile::id`]), or `u32::MAX`.
    pub protected_id: u32,
    /// Kind-specific: the traced pid, the destination port, the loader
    /// variable ([`preload`]).
    pub aux: u32,
    /// Address family for `connect` (`AF_INET` 2, `AF_INET6` 10).
    pub family: u32,
    /// `current->comm`, NUL-padded. Informational only: any process can set
    /// it, so no decision is ever based on it.
    pub comm: [u8; 16],
    /// Destination address for `connect` (IPv4 in the first 4 bytes).
    pub addr: [u8; 16],
    /// A name: the new name of a rename or link, the created name.
    pub name: [u8; NameKey::LEN],
}

impl Event {
    /// `protected_id` when the file is not a protected one.
    pub const NOT_PROTECTED: u32 = u32::MAX;
    /// [`kind::OPEN_UNMEASURED`]: a protected name led to another inode.
    pub const OPEN_OTHER_INODE: u32 = 1;
    /// [`kind::OPEN_UNMEASURED`]: a file in a protected tree that the
    /// agent has not taken in.
    pub const OPEN_UNKNOWN_IN_TREE: u32 = 2;
}

/// `FMODE_WRITE` from `include/linux/fs.h`.
pub const FMODE_WRITE: u32 = 0x2;
/// `O_ACCMODE`, `O_WRONLY`, `O_RDWR`, `O_TRUNC`, `O_CREAT` (asm-generic;
/// identical on x86_64 and arm64).
pub mod oflags {
    /// Access mode mask.
    pub const O_ACCMODE: u32 = 0o3;
    /// Write only.
    pub const O_WRONLY: u32 = 0o1;
    /// Read and write.
    pub const O_RDWR: u32 = 0o2;
    /// Create.
    pub const O_CREAT: u32 = 0o100;
    /// Truncate.
    pub const O_TRUNC: u32 = 0o1000;
    /// Append.
    pub const O_APPEND: u32 = 0o2000;

    /// True if these flags can change the file's contents.
    pub const fn is_write(flags: u32) -> bool {
        (flags & O_ACCMODE) != 0 || (flags & O_TRUNC) != 0
    }
}

const _: () = {
    assert!(core::mem::size_of::<InodeKey>() == 16);
    assert!(core::mem::size_of::<ProtectedFile>() == 8);
    assert!(core::mem::size_of::<KernelOffsets>() == 36 * 4);
    assert!(core::mem::size_of::<KernelConfig>() == 36 * 4 + 16 + 16 + 16 + 88);
    assert!(core::mem::size_of::<NameKey>() == 16 + NameKey::LEN);
    assert!(core::mem::size_of::<ServiceDigest>() == 40);
    assert!(core::mem::size_of::<PathKey>() == PathKey::LEN);
    assert!(core::mem::size_of::<MeasuredPath>() == 24);
    assert!(core::mem::size_of::<EgressRule>() == 4 * EgressRule::MAX_PORTS + 4);
    assert!(core::mem::size_of::<EventHeader>() == 16);
    assert!(core::mem::size_of::<Event>() == 16 + 16 + 16 + 10 * 4 + 16 + 16 + NameKey::LEN);
    assert!(core::mem::offset_of!(Event, header) == 0);
    assert!(core::mem::size_of::<Event>() < u16::MAX as usize);
};

#[cfg(feature = "user")]
mod user {
    // SAFETY: all of these are `repr(C)`, `Copy`, with explicit padding
    // fields, so every bit pattern is valid and there are no uninit bytes.
    unsafe impl aya::Pod for super::InodeKey {}
    unsafe impl aya::Pod for super::ProtectedFile {}
    unsafe impl aya::Pod for super::KernelConfig {}
    unsafe impl aya::Pod for super::NameKey {}
    unsafe impl aya::Pod for super::EgressRule {}
    unsafe impl aya::Pod for super::ServiceDigest {}
    unsafe impl aya::Pod for super::PathKey {}
    unsafe impl aya::Pod for super::MeasuredPath {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_encoding_matches_kernel_mkdev() {
        // MKDEV(8, 1) for /dev/sda1 in the kernel's encoding.
        let k = InodeKey::from_major_minor(8, 1, 42);
        assert_eq!(k.dev, (8 << 20) | 1);
        assert_eq!((k.major(), k.minor()), (8, 1));
    }

    #[test]
    fn write_flags() {
        assert!(!oflags::is_write(0));
        assert!(oflags::is_write(oflags::O_WRONLY));
        assert!(oflags::is_write(oflags::O_RDWR | oflags::O_APPEND));
        // O_RDONLY|O_TRUNC still truncates.
        assert!(oflags::is_write(oflags::O_TRUNC));
    }
}
