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
//! | write or `O_TRUNC` | no, and not in a protected tree | any | 0, no event |
//! | write or `O_TRUNC` | yes | yes | 0, event `allow` |
//! | write or `O_TRUNC` | yes | no | `-EPERM`, event `deny` (enforce) / 0, event `alert` (mode detect) |
//!
//! A file not in the table yet but in a protected tree (created there by
//! an allowed writer since the agent last filled the table) counts as
//! protected, by its directory's entry.
//!
//! The writer is identified by the inode of its executable
//! (`current->mm->exe_file`), never by `comm`, which any process can set.
//! A kernel read that fails allows the open (and is counted): guessing
//! "deny" on a garbled pointer would make the machine unusable.

use aya_ebpf::{macros::lsm, programs::LsmContext};
use guardian_common::{FMODE_WRITE, kind, oflags, source};

use crate::{kernel, report};

#[lsm(hook = "file_open")]
pub fn guardian_file_open(ctx: LsmContext) -> i32 {
    report::finish(try_file_open(&ctx))
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
    let mut key = kernel::file_key(off, file)?;
    let protected = match report::protected(&key) {
        Some(p) => p,
        // A file the table does not know yet, in a protected tree (made
        // since the agent last filled it): the tree's rule applies.
        None => {
            let g = report::governing(off, kernel::file_dentry(off, file)?)?;
            if !g.found {
                return Ok(0);
            }
            key = g.key;
            g.entry
        }
    };
    let task = kernel::current_task();
    let exe = kernel::exe_key(off, task)?;
    if report::own_write(cfg, &exe, &protected) {
        return Ok(0);
    }
    let (v, ret) = report::judge_file(cfg, report::may_write(cfg, &exe, &protected));
    report::emit(
        off,
        task,
        kind::FILE_WRITE_OPEN,
        source::LSM_FILE_OPEN,
        v,
        |ev| {
            ev.file = key;
            ev.exe = exe;
            ev.flags = flags;
            ev.fmode = fmode;
            ev.protected_id = protected.id;
        },
    );
    Ok(ret)
}
