//! The detect rung's view of syscalls: one program on the raw `sys_exit`
//! tracepoint, dispatching the few syscalls the guard watches to the hook
//! files (`sys_open.rs`, `file_write.rs`, `file_mmap.rs`, `connect.rs`).
//!
//! Why raw tracepoints and not `syscalls/sys_enter_<name>`: a program on a
//! per-syscall tracepoint runs behind the perf-event layer, which builds a
//! record of the syscall's arguments for every hit before the program
//! runs (measured at about 300 ns per hit on the project's benchmark
//! machine, more than the programs themselves). A raw tracepoint calls
//! the program directly with the saved registers and the syscall number.
//! The price is that it runs for every syscall, so the first thing it
//! does is compare the number against the handful in [`Syscalls`], from
//! the config map the agent filled for its architecture.
//!
//! Why only on exit: each attached program is one more indirect call per
//! syscall of every task, so one program does it all. On exit the
//! arguments are still in the saved registers, the open family's new
//! descriptor is known (no entry-to-exit map needed), and a detect-mode
//! report is after the fact either way: a program on entry cannot stop
//! the syscall, and the response (a kill) comes from userspace later. The
//! user memory a syscall read (`connect`'s address) is read again on
//! exit, which a racing thread could have changed in between; the same
//! race exists on entry, where the kernel copies after the program.
//!
//! Either kind of syscall tracepoint makes the kernel take its slower
//! syscall entry and exit path for every task while attached; that part
//! of the cost is the kernel's and stays (`docs/guard-benchmarks.md`).
//!
//! Kernel prototype: `TRACE_EVENT_FN(sys_exit, TP_PROTO(struct pt_regs
//! *regs, long ret))`.

use aya_ebpf::{
    helpers::bpf_probe_read_kernel, macros::raw_tracepoint, programs::RawTracePointContext,
};
use guardian_common::{Counter, Syscalls, sys};

use crate::{connect, file_mmap, file_write, kernel, report, sys_open};

/// The [`sys`] index of syscall number `nr` among those enabled.
#[inline(always)]
fn which(s: &Syscalls, nr: u32) -> Option<usize> {
    let mut i = 0;
    while i < sys::COUNT {
        if s.nr[i] == nr && s.enabled & (1 << i) != 0 {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// The six syscall arguments from the saved user registers, as they are
/// after the syscall (the kernel changes only the result register): one
/// read of the eight registers from `regs_base` (a helper call costs more
/// than the copy), each argument picked by its index; on arm64 argument 0
/// is where the kernel saved it (`orig_x0`), because `x0` now holds the
/// result.
#[inline(always)]
fn args(s: &Syscalls, regs: u64) -> Result<[u64; 6], i64> {
    // SAFETY: kernel memory through the fault-safe helper.
    let block: [u64; 8] =
        unsafe { bpf_probe_read_kernel((regs + u64::from(s.regs_base)) as *const [u64; 8]) }
            .map_err(|e| e as i64)?;
    let mut out = [0u64; 6];
    let mut i = 0;
    while i < 6 {
        out[i] = block[(s.regs_arg[i] & 7) as usize];
        i += 1;
    }
    if s.regs_arg0 != u32::MAX {
        // SAFETY: as above.
        out[0] = unsafe { bpf_probe_read_kernel((regs + u64::from(s.regs_arg0)) as *const u64) }
            .map_err(|e| e as i64)?;
    }
    Ok(out)
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn guardian_sys_exit(ctx: RawTracePointContext) -> i32 {
    let Some(cfg) = kernel::config() else {
        return 0;
    };
    let s = &cfg.syscalls;
    if s.enabled == 0 {
        return 0;
    }
    let regs: u64 = ctx.arg(0);
    // SAFETY: kernel memory through the fault-safe helper.
    let Ok(nr) = (unsafe { bpf_probe_read_kernel((regs + u64::from(s.regs_nr)) as *const u32) })
    else {
        return 0;
    };
    let Some(i) = which(s, nr) else {
        return 0;
    };
    let Ok(a) = args(s, regs) else {
        report::count(Counter::ReadErrors);
        return 0;
    };
    let ret: i64 = ctx.arg(1);
    if (1 << i) & sys::OPENS != 0 {
        sys_open::exit(cfg, i, &a, ret);
    } else if (1 << i) & sys::WRITES != 0 {
        file_write::seen(cfg, a[0], false);
    } else if i == sys::FTRUNCATE {
        file_write::seen(cfg, a[0], true);
    } else if i == sys::MMAP {
        file_mmap::seen(cfg, a[2], a[3], a[4]);
    } else if i == sys::CONNECT {
        connect::seen(cfg, a[1]);
    }
    0
}
