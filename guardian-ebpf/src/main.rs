//! guardian's eBPF programs.
//!
//! One file per hook; each program is a thin entry point that calls a
//! `try_*` function returning `Result`, so the decision logic reads like
//! ordinary Rust and every error path is explicit:
//!
//! | file | program | kind | role |
//! |---|---|---|---|
//! | `file_open.rs` | `guardian_file_open`, `guardian_open_measured` | LSM `file_open` (the second sleepable) | deny write-opens of protected files (enforce); measure at use: the service's opens by name |
//! | `syscalls.rs` | `guardian_sys_enter`, `guardian_sys_exit` | raw tracepoints `sys_enter`, `sys_exit` | the detect rung: dispatches the watched syscalls to the files below |
//! | `sys_open.rs` | (called by `syscalls.rs`) | open family, entry and exit | report write-opens after the fact (detect) |
//! | `file_write.rs` | `guardian_file_permission` | LSM `file_permission`; write family and `ftruncate` on syscall entry | writes through descriptors opened earlier |
//! | `file_setattr.rs` | `guardian_inode_setattr` | LSM `inode_setattr` | truncate, chmod, chown of protected files |
//! | `file_rename.rs` | `guardian_inode_rename` | LSM `inode_rename` | rename onto, away from, or into a protected name |
//! | `file_unlink.rs` | `guardian_inode_unlink`, `guardian_inode_rmdir` | LSM `inode_unlink`, `inode_rmdir` | removal of protected files, of names in protected trees, of directories on protected paths |
//! | `file_link.rs` | `guardian_inode_link` | LSM `inode_link` | hard links to protected files |
//! | `file_create.rs` | `guardian_inode_create`, `_mkdir`, `_symlink`, `_mknod` | LSM `inode_create`, `inode_mkdir`, `inode_symlink`, `inode_mknod` | new names in protected trees; protected names (`/etc/ld.so.preload`) |
//! | `mount.rs` | `guardian_sb_mount`, `guardian_move_mount`, `guardian_sb_umount` | LSM `sb_mount`, `move_mount`, `sb_umount` | mounts on, moves of and unmounts under protected paths |
//! | `bpf.rs` | `guardian_bpf`, `guardian_bpf_map`, `guardian_bpf_prog` | LSM `bpf`, `bpf_map`, `bpf_prog` | guardian's own maps, programs and links, for guardian only |
//! | `prctl.rs` | `guardian_task_prctl` | LSM `task_prctl` | `PR_SET_MM_EXE_FILE`: borrowing another executable's identity |
//! | `file_mmap.rs` | `guardian_mmap_file` | LSM `mmap_file`; `mmap` on syscall entry | shared writable maps; libraries outside the service's allowlist |
//! | `exec.rs` | `guardian_bprm_check`, `guardian_enter_execve(at)`, `guardian_process_exec` | LSM `bprm_check_security`; tracepoints | unexpected exec by the service; `LD_PRELOAD` and friends |
//! | `ptrace.rs` | `guardian_ptrace`, `guardian_ptrace_traceme` | LSM `ptrace_access_check`, `ptrace_traceme` | ptrace and `/proc/PID/mem` of the service and of guardian |
//! | `connect.rs` | `guardian_socket_connect` | LSM `socket_connect`; `connect` on syscall entry | egress of the service outside the allowlist |
//!
//! Shared pieces: `maps.rs` (every map, names from `guardian_common::maps`),
//! `kernel.rs` (reading kernel structs through the offsets the agent found
//! in the running kernel's BTF), `report.rs` (events and counters).
//!
//! Everything is filtered here, in the kernel: only operations on protected
//! inodes, trees, paths and names, and rule violations by or against the inference
//! service, ever reach the ring buffer.
#![no_std]
#![no_main]

mod bpf;
mod connect;
mod exec;
mod file_create;
mod file_link;
mod file_mmap;
mod file_open;
mod file_rename;
mod file_setattr;
mod file_unlink;
mod file_write;
mod kernel;
mod maps;
mod mount;
mod prctl;
mod ptrace;
mod report;
mod sys_open;
mod syscalls;

/// The kernel lets only GPL-compatible programs use `bpf_probe_read_kernel`.
#[unsafe(no_mangle)]
#[unsafe(link_section = "license")]
pub static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program whose code can reach here, so a
    // panic path that survives optimisation shows up as a load failure.
    unsafe { core::hint::unreachable_unchecked() }
}
