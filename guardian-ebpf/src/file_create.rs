//! LSM `inode_create`: creating a protected name, such as
//! `/etc/ld.so.preload` on a system that has none (every program the
//! loader starts would load the libraries it names).
//!
//! Kernel prototype: `LSM_HOOK(int, 0, inode_create, struct inode *dir,
//! struct dentry *dentry, umode_t mode)`. Nobody is allowed: a board that
//! needs such a file ships it, and then it is protected by inode instead.

use aya_ebpf::{macros::lsm, programs::LsmContext};
use guardian_common::{kind, source};

use crate::{kernel, report};

#[lsm(hook = "inode_create")]
pub fn guardian_inode_create(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    report::finish(try_create(ctx.arg(0), ctx.arg(1)))
}

fn try_create(dir: u64, dentry: u64) -> Result<i32, i64> {
    let Some(cfg) = kernel::config() else {
        return Ok(0);
    };
    let off = &cfg.offsets;
    let Some(name) = report::protected_name(off, dir, dentry)? else {
        return Ok(0);
    };
    let task = kernel::current_task();
    let exe = kernel::exe_key(off, task)?;
    let (v, ret) = report::judge_file(cfg, false);
    report::emit(
        off,
        task,
        kind::FILE_CREATE,
        source::LSM_INODE_CREATE,
        v,
        |ev| {
            ev.file = name.dir;
            ev.exe = exe;
            ev.name = name.name;
        },
    );
    Ok(ret)
}
