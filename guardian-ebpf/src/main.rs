//! guardian's eBPF programs.
//!
//! One file per hook; each program is a thin entry point that calls a
//! `try_*` function returning `Result`, so the decision logic reads like
//! ordinary Rust and every error path is explicit:
//!
//! | file | program | kind | role |
//! |---|---|---|---|
//! | `file_open.rs` | `guardian_file_open` | LSM `file_open` | deny write-opens of protected files (enforce) |
//! | `sys_open.rs` | `guardian_enter_*`, `guardian_exit_open` | tracepoints `syscalls/sys_{enter,exit}_open*` | report write-opens after the fact (detect) |
//!
//! Shared pieces: `maps.rs` (every map, names from `guardian_common::maps`),
//! `kernel.rs` (reading kernel structs through the offsets the agent found
//! in the running kernel's BTF), `report.rs` (events and counters).
//!
//! Everything is filtered here, in the kernel: only write-opens of protected
//! inodes ever reach the ring buffer.
#![no_std]
#![no_main]

mod file_open;
mod kernel;
mod maps;
mod report;
mod sys_open;

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
