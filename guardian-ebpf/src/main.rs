//! guardian's eBPF programs.
//!
//! One file per hook; each program is a thin entry point that calls a
//! `try_*` function returning `Result`, so the decision logic reads like
//! ordinary Rust and every error path is explicit:
//!
//! | file | program | kind | role |
//! |---|---|---|---|
//! | `file_open.rs` | `guardian_file_open` | LSM `file_open` | deny write-opens of protected files (enforce) |
//! | `syscalls.rs` | `guardian_sys_enter`, `guardian_sys_exit` | raw tracepoints `sys_enter`, `sys_exit` | the detect rung: dispatches the watched syscalls to the files below |
//! | `sys_open.rs` | (called by `syscalls.rs`) | open family, entry and exit | report write-opens after the fact (detect) |
//! | `file_write.rs` | `guardian_file_permission` | LSM `file_permission`; write family and `ftruncate` on syscall entry | writes through descriptors opened earlier |
//! | `file_setattr.rs` | `guardian_inode_setattr` | LSM `inode_setattr` | truncate, chmod, chown of protected files |
//! | `file_rename.rs` | `guardian_inode_rename` | LSM `inode_rename` | rename onto, away from, or into a protected name |
//! | `file_unlink.rs` | `guardian_inode_unlink` | LSM `inode_unlink` | unlink of protected files |
//! | `file_link.rs` | `guardian_inode_link` | LSM `inode_link` | hard links to protected files |
//! | `file_create.rs` | `guardian_inode_create` | LSM `inode_create` | creation of protected names (`/etc/ld.so.preload`) |
//! | `file_mmap.rs` | `guardian_mmap_file` | LSM `mmap_file`; `mmap` on syscall entry | shared writable maps; libraries outside the service's allowlist |
//! | `exec.rs` | `guardian_bprm_check`, `guardian_enter_execve(at)`, `guardian_process_exec` | LSM `bprm_check_security`; tracepoints | unexpected exec by the service; `LD_PRELOAD` and friends |
//! | `ptrace.rs` | `guardian_ptrace` | LSM `ptrace_access_check` | ptrace and `/proc/PID/mem` of the service |
//! | `connect.rs` | `guardian_socket_connect` | LSM `socket_connect`; `connect` on syscall entry | egress of the service outside the allowlist |
//!
//! Shared pieces: `maps.rs` (every map, names from `guardian_common::maps`),
//! `kernel.rs` (reading kernel structs through the offsets the agent found
//! in the running kernel's BTF), `report.rs` (events and counters).
//!
//! Everything is filtered here, in the kernel: only operations on protected
//! inodes and names, and rule violations by or against the inference
//! service, ever reach the ring buffer.
#![no_std]
#![no_main]

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
