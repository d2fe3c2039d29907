//! LSM `task_prctl`: nobody changes the executable the kernel records for
//! a process.
//!
//! guardian tells the service, the allowed writers and itself apart by the
//! inode of `current->mm->exe_file`. `prctl(PR_SET_MM, PR_SET_MM_EXE_FILE)`
//! (and `PR_SET_MM_MAP`, which carries an `exe_fd`) lets a process with
//! `CAP_SYS_RESOURCE` point that at another file, and so take on an
//! allowed writer's identity without running its code. Both are refused
//! for every process while the guard is up; they exist for checkpoint and
//! restore (CRIU), which a guarded board does not do.
//!
//! Kernel prototype: `LSM_HOOK(int, -ENOSYS, task_prctl, int option,
//! unsigned long arg2, unsigned long arg3, unsigned long arg4, unsigned
//! long arg5)`. Its default is `-ENOSYS` ("no LSM handled this option"):
//! returning 0 leaves the hook's default in place (BPF LSM programs are
//! `fmod_ret` programs on the default stub), where returning 0 from the
//! hook itself would make every other `prctl` a no-op.

use aya_ebpf::{macros::lsm, programs::LsmContext};
use guardian_common::{kind, source};

use crate::{kernel, report};

/// `PR_SET_MM`, `PR_SET_MM_EXE_FILE`, `PR_SET_MM_MAP`
/// (`include/uapi/linux/prctl.h`).
const PR_SET_MM: i32 = 35;
const PR_SET_MM_EXE_FILE: u64 = 13;
const PR_SET_MM_MAP: u64 = 14;

#[lsm(hook = "task_prctl")]
pub fn guardian_task_prctl(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(5);
    if previous != 0 {
        return previous;
    }
    let option: i32 = ctx.arg(0);
    let sub: u64 = ctx.arg(1);
    if option != PR_SET_MM || (sub != PR_SET_MM_EXE_FILE && sub != PR_SET_MM_MAP) {
        return 0;
    }
    let Some(cfg) = kernel::config() else {
        return 0;
    };
    report::finish((|| {
        let off = &cfg.offsets;
        let task = kernel::current_task();
        let exe = kernel::exe_key(off, task)?;
        let (v, ret) = report::judge_process(cfg);
        report::emit(
            off,
            task,
            kind::PRCTL_EXE,
            source::LSM_TASK_PRCTL,
            v,
            |ev| {
                ev.exe = exe;
                ev.file = exe;
                ev.flags = sub as u32;
            },
        );
        Ok(ret)
    })())
}
