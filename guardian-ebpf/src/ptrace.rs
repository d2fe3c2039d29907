//! LSM `ptrace_access_check`: nobody attaches to the inference service.
//!
//! The hook guards every path that can read or change another process's
//! memory and registers: `ptrace(PTRACE_ATTACH/SEIZE)`, `/proc/PID/mem`
//! opened for access, `process_vm_readv/writev`. Only attach-level access
//! (`PTRACE_MODE_ATTACH`) is refused: read-level checks are what `ps` and
//! `/proc/PID/exe` use, and refusing them would blind the operator (and
//! guardian itself) without protecting anything. A thread group inspecting
//! itself never reaches the hook.
//!
//! Kernel prototype: `LSM_HOOK(int, 0, ptrace_access_check, struct
//! task_struct *child, unsigned int mode)`.

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
    if cfg.rules & rules::NO_PTRACE == 0 {
        return Ok(0);
    }
    let off = &cfg.offsets;
    let target = kernel::exe_key(off, child)?;
    if !report::is_service(&target) {
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
