//! LSM `file_open`: deny write-opens of protected files.
//!
//! Kernel prototype (`include/linux/lsm_hook_defs.h`):
//! `LSM_HOOK(int, 0, file_open, struct file *file)`; BPF LSM programs get
//! one more argument, the return value of the LSM programs before them.
//! The hook runs in `do_dentry_open()` before the filesystem's `open`, so a
//! denial means no byte of the file can change through this open (and
//! `O_TRUNC` has not been applied yet: `handle_truncate()` runs after
//! `vfs_open()` returns successfully).
//!
//! | opened for | file protected | writer exe on allowlist | result |
//! |---|---|---|---|
//! | read only, no `O_TRUNC` | any | any | 0, no event |
//! | write or `O_TRUNC` | no | any | 0, no event |
//! | write or `O_TRUNC` | yes | yes | 0, event `allow` |
//! | write or `O_TRUNC` | yes | no | `-EPERM`, event `deny` (enforce) / 0, event `alert` (mode detect) |
//!
//! The writer is identified by the inode of its executable
//! (`current->mm->exe_file`), never by `comm`, which any process can set.
//! A kernel read that fails allows the open (and is counted): guessing
//! "deny" on a garbled pointer would make the machine unusable.

use aya_ebpf::{macros::lsm, programs::LsmContext};
use guardian_common::{Counter, FMODE_WRITE, mode, oflags, source, verdict};

use crate::{
    kernel,
    maps::{PROTECTED, WRITERS},
    report::{self, WriteOpen},
};

const EPERM: i32 = 1;

#[lsm(hook = "file_open")]
pub fn guardian_file_open(ctx: LsmContext) -> i32 {
    match try_file_open(&ctx) {
        Ok(ret) => ret,
        Err(_) => {
            report::count(Counter::ReadErrors);
            0
        }
    }
}

fn try_file_open(ctx: &LsmContext) -> Result<i32, i64> {
    // An earlier LSM program already refused: keep its answer.
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        return Ok(previous);
    }
    let Some(cfg) = kernel::config() else {
        return Ok(0);
    };
    let off = &cfg.offsets;
    let file: u64 = ctx.arg(0);
    let (fmode, flags) = kernel::file_mode_flags(off, file)?;
    if fmode & FMODE_WRITE == 0 && flags & oflags::O_TRUNC == 0 {
        return Ok(0);
    }
    let key = kernel::file_key(off, file)?;
    // SAFETY: the value is copied out before the map can change under us.
    let Some(protected) = (unsafe { PROTECTED.get(key) }).copied() else {
        return Ok(0);
    };
    let task = kernel::current_task();
    let exe = kernel::exe_key(off, task)?;
    // SAFETY: presence check only.
    let allowed = exe.ino != 0 && unsafe { WRITERS.get(exe) }.is_some();
    let (v, ret) = if allowed {
        report::count(Counter::Allowed);
        (verdict::ALLOW, 0)
    } else if cfg.mode == mode::ENFORCE {
        report::count(Counter::Denied);
        (verdict::DENY, -EPERM)
    } else {
        report::count(Counter::Detected);
        (verdict::ALERT, 0)
    };
    report::file_write_open(
        off,
        task,
        WriteOpen {
            source: source::LSM_FILE_OPEN,
            verdict: v,
            file: key,
            exe,
            flags,
            fmode,
            protected_id: protected.id,
        },
    );
    Ok(ret)
}
