//! LSM `ptrace_access_check` and `ptrace_traceme`: nobody attaches to the
//! inference service or to guardian, and the service does not ask to be
//! traced. (A process traced before it execs the service, or guardian, is
//! refused the exec: `exec.rs`.)
//!
//! The hook guards every path that can read or change another process's
//! memory and registers: `ptrace(PTRACE_ATTACH/SEIZE)`, `/proc/PID/mem`
//! opened for access, `process_vm_readv/writev`. Only attach-level access
//! (`PTRACE_MODE_ATTACH`) is refused: read-level checks are what `ps` and
//! `/proc/PID/exe` use, and refusing them would blind the operator (and
//! guardian itself) without protecting anything. A thread group inspecting
//! itself never reaches the hook.
//!
//! guardian's own processes are protected whatever the config says: they
//! hold the only identity that may touch guardian's kernel objects.
//!
//! Kernel prototypes: `LSM_HOOK(int, 0, ptrace_access_check, struct
//! task_struct *child, unsigned int mode)`, `LSM_HOOK(int, 0,
//! ptrace_traceme, struct task_struct *parent)`.

use aya_ebpf::{macros::lsm, programs::LsmContext};
use guardian_common::{kind, rules, source};

use crate::{kernel, report};

/// `PTRACE_MODE_ATTACH` from `include/linux/ptrace.h`.
const PTRACE_MODE_ATTACH: u32 = 0x02;

#[lsm(hook = "ptrace_access_check")]
pub fn guardian_ptrace(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    let mode: u32 = ctx.arg(1);
    if mode & PTRACE_MODE_ATTACH == 0 {
        return 0;
    }
    report::finish(try_ptrace(ctx.arg(0), mode))
}

fn try_ptrace(child: u64, mode: u32) -> Result<i32, i64> {
    let Some(cfg) = kernel::config() else {
        return Ok(0);
    };
    let off = &cfg.offsets;
    let target = kernel::exe_key(off, child)?;
    let guardian = target.ino != 0 && target == cfg.self_exe;
    if !guardian && (cfg.rules & rules::NO_PTRACE == 0 || !report::is_service(&target)) {
        return Ok(0);
    }
    let target_pid: u32 = kernel::read_at(child + u64::from(off.task_tgid))?;
    let task = kernel::current_task();
    let exe = kernel::exe_key(off, task)?;
    let (v, ret) = report::judge_process(cfg);
    report::emit(off, task, kind::PTRACE, source::LSM_PTRACE, v, |ev| {
        ev.file = target;
        ev.exe = exe;
        ev.flags = mode;
        ev.aux = target_pid;
    });
    Ok(ret)
}

#[lsm(hook = "ptrace_traceme")]
pub fn guardian_ptrace_traceme(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        return previous;
    }
    report::finish(try_traceme(ctx.arg(0)))
}

/// `PTRACE_TRACEME` by the service (or guardian): its parent would become
/// its tracer.
fn try_traceme(parent: u64) -> Result<i32, i64> {
    let Some(cfg) = kernel::config() else {
        return Ok(0);
    };
    let off = &cfg.offsets;
    let task = kernel::current_task();
    let exe = kernel::exe_key(off, task)?;
    let guardian = exe.ino != 0 && exe == cfg.self_exe;
    if !guardian && (cfg.rules & rules::NO_PTRACE == 0 || !report::is_service(&exe)) {
        return Ok(0);
    }
    let parent_pid: u32 = kernel::read_at(parent + u64::from(off.task_tgid))?;
    let (v, ret) = report::judge_process(cfg);
    report::emit(
        off,
        task,
        kind::PTRACE,
        source::LSM_PTRACE_TRACEME,
        v,
        |ev| {
            ev.file = exe;
            ev.exe = exe;
            // The process to be traced is the caller; the tracer-to-be, its
            // parent, goes in `flags`.
            ev.aux = ev.pid;
            ev.flags = parent_pid;
        },
    );
    Ok(ret)
}
