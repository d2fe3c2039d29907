//! LSM `inode_unlink` and `inode_rmdir`: removing a protected file's name,
//! a name in a protected tree, or a directory on a protected path.
//!
//! Kernel prototypes: `LSM_HOOK(int, 0, inode_unlink, struct inode *dir,
//! struct dentry *dentry)`, `LSM_HOOK(int, 0, inode_rmdir, struct inode
//! *dir, struct dentry *dentry)`.

use aya_ebpf::{macros::lsm, programs::LsmContext};
use guardian_common::{kind, source};

use crate::{kernel, report};

#[lsm(hook = "inode_unlink")]
pub fn guardian_inode_unlink(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    report::finish(try_unlink(ctx.arg(1), source::LSM_INODE_UNLINK))
}

#[lsm(hook = "inode_rmdir")]
pub fn guardian_inode_rmdir(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    report::finish(try_unlink(ctx.arg(1), source::LSM_INODE_RMDIR))
}

#[inline(always)]
fn try_unlink(dentry: u64, src: u16) -> Result<i32, i64> {
    let Some(cfg) = kernel::config() else {
        return Ok(0);
    };
    let off = &cfg.offsets;
    let g = report::governing(off, dentry)?;
    if !g.found {
        return Ok(0);
    }
    let (key, protected) = (g.key, g.entry);
    let task = kernel::current_task();
    let exe = kernel::exe_key(off, task)?;
    if report::own_write(cfg, &exe, &protected) {
        return Ok(0);
    }
    let (v, ret) = report::judge_file(cfg, report::may_write(cfg, &exe, &protected));
    report::emit(off, task, kind::FILE_UNLINK, src, v, |ev| {
        ev.file = key;
        ev.exe = exe;
        ev.protected_id = protected.id;
        let _ = kernel::dentry_name(off, dentry, &mut ev.name);
    });
    Ok(ret)
}
