//! The hook table: which programs each hook can attach to, at each rung
//! of the kernel's ladder, and the syscall table the raw tracepoint reads.
//! Data only: attaching is `attach.rs`'s, deciding is `ladder.rs`'s.

use guardian_common::{Syscalls, maps as map_names, programs as prog_names, sys};

use crate::hooks::Hook;

/// What a hook can attach to.
pub(super) struct HookDef {
    pub(super) hook: Hook,
    /// LSM programs and their hooks (all or none attach).
    pub(super) lsm: &'static [(&'static str, &'static str)],
    /// Detect form: the syscalls (bits of `guardian_common::sys`) the raw
    /// `sys_exit` program watches for this hook.
    pub(super) syscalls: u32,
    /// Detect form: program, tracepoint category, tracepoint names (those
    /// the kernel lacks are skipped).
    pub(super) detect: &'static [(&'static str, &'static str, &'static [&'static str])],
    /// Tracepoints attached whatever the form (they feed the LSM program).
    pub(super) always: &'static [(&'static str, &'static str, &'static [&'static str])],
    /// Only meaningful with a `[service]`.
    pub(super) service: bool,
    /// Has the cgroup socket programs as its rung below LSM.
    pub(super) cgroup: bool,
}

impl HookDef {
    /// A hook with LSM programs only (and, for the detect rung, the
    /// syscalls the raw `sys_exit` program watches for it): no tracepoint
    /// of its own, not tied to the service, no cgroup form.
    const fn plain(
        hook: Hook,
        lsm: &'static [(&'static str, &'static str)],
        syscalls: u32,
    ) -> Self {
        Self {
            hook,
            lsm,
            syscalls,
            detect: &[],
            always: &[],
            service: false,
            cgroup: false,
        }
    }
}

pub(super) const EXECVE: &[(&str, &str, &[&str])] = &[
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

pub(super) const DEFS: [HookDef; 15] = [
    HookDef::plain(
        Hook::FileWriteOpen,
        &[(prog_names::LSM_FILE_OPEN, "file_open")],
        sys::OPENS,
    ),
    // Measure at use: the service's opens, judged by the name it used.
    // Only with a [service]; nothing below BPF LSM can refuse an open by
    // name (the path check and the pre-scan are the detection there).
    HookDef {
        hook: Hook::OpenMeasured,
        lsm: &[(prog_names::LSM_OPEN_MEASURED, "file_open")],
        syscalls: 0,
        detect: &[],
        always: &[],
        service: true,
        cgroup: false,
    },
    HookDef::plain(
        Hook::FileWrite,
        &[(prog_names::LSM_FILE_PERMISSION, "file_permission")],
        sys::WRITES,
    ),
    HookDef::plain(
        Hook::FileSetattr,
        &[(prog_names::LSM_INODE_SETATTR, "inode_setattr")],
        1 << sys::FTRUNCATE,
    ),
    HookDef::plain(
        Hook::FileRename,
        &[(prog_names::LSM_INODE_RENAME, "inode_rename")],
        0,
    ),
    HookDef::plain(
        Hook::FileUnlink,
        &[
            (prog_names::LSM_INODE_UNLINK, "inode_unlink"),
            (prog_names::LSM_INODE_RMDIR, "inode_rmdir"),
        ],
        0,
    ),
    HookDef::plain(
        Hook::FileLink,
        &[(prog_names::LSM_INODE_LINK, "inode_link")],
        0,
    ),
    HookDef::plain(
        Hook::FileCreate,
        &[
            (prog_names::LSM_INODE_CREATE, "inode_create"),
            (prog_names::LSM_INODE_MKDIR, "inode_mkdir"),
            (prog_names::LSM_INODE_SYMLINK, "inode_symlink"),
            (prog_names::LSM_INODE_MKNOD, "inode_mknod"),
        ],
        0,
    ),
    HookDef::plain(
        Hook::FileMmap,
        &[(prog_names::LSM_MMAP_FILE, "mmap_file")],
        1 << sys::MMAP,
    ),
    HookDef::plain(
        Hook::Mount,
        &[
            (prog_names::LSM_SB_MOUNT, "sb_mount"),
            (prog_names::LSM_MOVE_MOUNT, "move_mount"),
            (prog_names::LSM_SB_UMOUNT, "sb_umount"),
            (prog_names::LSM_SB_PIVOTROOT, "sb_pivotroot"),
        ],
        0,
    ),
    HookDef {
        hook: Hook::Exec,
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
        Hook::Ptrace,
        &[
            (prog_names::LSM_PTRACE, "ptrace_access_check"),
            (prog_names::LSM_PTRACE_TRACEME, "ptrace_traceme"),
        ],
        0,
    ),
    HookDef::plain(
        Hook::Prctl,
        &[(prog_names::LSM_TASK_PRCTL, "task_prctl")],
        0,
    ),
    HookDef {
        hook: Hook::Connect,
        lsm: &[(prog_names::LSM_SOCKET_CONNECT, "socket_connect")],
        syscalls: 1 << sys::CONNECT,
        detect: &[],
        always: &[],
        service: true,
        cgroup: true,
    },
    HookDef::plain(
        Hook::BpfObjects,
        &[
            (prog_names::LSM_BPF_MAP, "bpf_map"),
            (prog_names::LSM_BPF_PROG, "bpf_prog"),
            (prog_names::LSM_BPF, "bpf"),
        ],
        0,
    ),
];

/// Every map the agent reads or writes, by name.
pub(super) const MAP_NAMES: [&str; 16] = [
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
    map_names::MEASURED_PATHS,
];

/// The cgroup socket programs and where they attach.
pub(super) const CGROUP_PROGS: [(&str, &str); 4] = [
    (prog_names::CGROUP_CONNECT4, "connect4"),
    (prog_names::CGROUP_CONNECT6, "connect6"),
    (prog_names::CGROUP_SENDMSG4, "sendmsg4"),
    (prog_names::CGROUP_SENDMSG6, "sendmsg6"),
];

/// The `execve` and `execveat` syscall wrappers of this architecture, with
/// the fentry program for each.
pub(super) const EXECVE_FENTRY: [(&str, &str); 2] = [
    #[cfg(target_arch = "x86_64")]
    (prog_names::FENTRY_EXECVE, "__x64_sys_execve"),
    #[cfg(target_arch = "x86_64")]
    (prog_names::FENTRY_EXECVEAT, "__x64_sys_execveat"),
    #[cfg(target_arch = "aarch64")]
    (prog_names::FENTRY_EXECVE, "__arm64_sys_execve"),
    #[cfg(target_arch = "aarch64")]
    (prog_names::FENTRY_EXECVEAT, "__arm64_sys_execveat"),
];

/// The pin name prefix of the raw syscall tracepoints' links (shared by
/// every hook whose detect form is a syscall).
pub(super) const SYSCALLS_PIN: &str = "syscalls";

/// The watched syscalls of this architecture: their numbers and where
/// `struct pt_regs` keeps the arguments and the syscall number. The agent
/// runs on the architecture it was built for, and so do the programs it
/// loads.
pub(super) fn syscall_table() -> Syscalls {
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
pub(super) fn present(s: &Syscalls) -> u32 {
    (0..sys::COUNT)
        .filter(|&i| s.nr[i] != u32::MAX)
        .fold(0, |m, i| m | 1 << i)
}

/// `write, pwrite64, ...` for a set of `sys` bits.
pub(super) fn syscall_names(bits: u32) -> String {
    (0..sys::COUNT)
        .filter(|&i| bits & (1 << i) != 0)
        .map(|i| sys::NAMES[i])
        .collect::<Vec<_>>()
        .join(", ")
}
