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
    /// LRU hash `pid_tgid -> u32` open flags, from `sys_enter_*` to
    /// `sys_exit_*` of the open syscalls (detect mode only).
    pub const PENDING_OPENS: &str = "GUARDIAN_PENDING_OPENS";
}

/// Names of the eBPF programs in the object.
pub mod programs {
    /// LSM `file_open`: denies write-opens of protected files.
    pub const LSM_FILE_OPEN: &str = "guardian_file_open";
    /// Tracepoint on `syscalls/sys_enter_openat`: remembers the open flags.
    pub const TP_ENTER_OPENAT: &str = "guardian_enter_openat";
    /// Tracepoint on `syscalls/sys_enter_open` (not on arm64).
    pub const TP_ENTER_OPEN: &str = "guardian_enter_open";
    /// Tracepoint on `syscalls/sys_enter_creat` (not on arm64).
    pub const TP_ENTER_CREAT: &str = "guardian_enter_creat";
    /// Tracepoint on `syscalls/sys_enter_openat2`: same, flags from `open_how`.
    pub const TP_ENTER_OPENAT2: &str = "guardian_enter_openat2";
    /// Tracepoint on `syscalls/sys_exit_open*`: resolves the new fd to an
    /// inode and reports write-opens of protected files.
    pub const TP_EXIT_OPEN: &str = "guardian_exit_open";
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
    /// Reserved, zero.
    pub flags: u32,
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
}

/// Enforcement mode, as the programs see it.
pub mod mode {
    /// Report only: the kernel lets the operation happen.
    pub const DETECT: u32 = 0;
    /// Deny in the kernel (BPF LSM attached).
    pub const ENFORCE: u32 = 1;
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
}

impl Counter {
    /// Number of counter slots.
    pub const COUNT: u32 = 7;
    /// Every counter, in slot order.
    pub const ALL: [Counter; Self::COUNT as usize] = [
        Counter::EventsSubmitted,
        Counter::RingbufDrops,
        Counter::Denied,
        Counter::Allowed,
        Counter::Detected,
        Counter::ReadErrors,
        Counter::PendingDrops,
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
        }
    }
}

/// What kind of event follows the header.
pub mod kind {
    /// A protected file was opened for writing (or with `O_TRUNC`).
    pub const FILE_WRITE_OPEN: u16 = 1;
}

/// Which program produced an event.
pub mod source {
    /// The BPF LSM `file_open` hook (before the open happens).
    pub const LSM_FILE_OPEN: u16 = 1;
    /// The `sys_exit_open*` tracepoints (after the open happened).
    pub const TP_SYS_EXIT_OPEN: u16 = 2;
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

/// A write-open of a protected file.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileOpenEvent {
    /// Must be first; see [`EventHeader`].
    pub header: EventHeader,
    /// The opened file.
    pub file: InodeKey,
    /// The executable of the opening process (`current->mm->exe_file`);
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
    /// `open(2)` flags as passed (tracepoint) or `file->f_flags` (LSM).
    pub flags: u32,
    /// `file->f_mode` (`FMODE_*`); zero where unknown.
    pub fmode: u32,
    /// Id of the protected file (see [`ProtectedFile::id`]).
    pub protected_id: u32,
    /// `current->comm`, NUL-padded. Informational only: any process can set
    /// it, so no decision is ever based on it.
    pub comm: [u8; 16],
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
    assert!(core::mem::size_of::<KernelOffsets>() == 14 * 4);
    assert!(core::mem::size_of::<KernelConfig>() == 14 * 4 + 8);
    assert!(core::mem::size_of::<EventHeader>() == 16);
    assert!(core::mem::size_of::<FileOpenEvent>() == 16 + 16 + 16 + 8 * 4 + 16);
    assert!(core::mem::offset_of!(FileOpenEvent, header) == 0);
    assert!(core::mem::size_of::<FileOpenEvent>() < u16::MAX as usize);
};

#[cfg(feature = "user")]
mod user {
    // SAFETY: all of these are `repr(C)`, `Copy`, with explicit padding
    // fields, so every bit pattern is valid and there are no uninit bytes.
    unsafe impl aya::Pod for super::InodeKey {}
    unsafe impl aya::Pod for super::ProtectedFile {}
    unsafe impl aya::Pod for super::KernelConfig {}
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
