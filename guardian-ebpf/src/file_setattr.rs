//! LSM `inode_setattr`: truncation (`truncate`, `ftruncate`, and the
//! `O_TRUNC` of an allowed open), `chmod`, `chown`, time changes of
//! protected files.
//!
//! Kernel prototype: `LSM_HOOK(int, 0, inode_setattr, struct mnt_idmap
//! *idmap, struct dentry *dentry, struct iattr *attr)` since Linux 6.3;
//! `(struct dentry *dentry, struct iattr *attr)` before. The agent finds
//! the position of `dentry` in the kernel's BTF and passes it in the
//! config (`setattr_dentry_arg`); `ia_valid & ATTR_SIZE` tells a
//! truncation from other changes.

use aya_ebpf::{macros::lsm, programs::LsmContext};
use guardian_common::{kind, source};

use crate::{kernel, report};

/// `ATTR_SIZE` from `include/linux/fs.h`.
const ATTR_SIZE: u32 = 1 << 3;

/// Linux >= 6.3: `(idmap, dentry, attr)`.
#[lsm(hook = "inode_setattr")]
pub fn guardian_inode_setattr(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    report::finish(try_setattr(ctx.arg(1), ctx.arg(2)))
}

/// Linux < 6.3: `(dentry, attr)`. Context reads need constant offsets, so
/// each layout is its own program; the agent loads the one the kernel's
/// BTF describes.
#[lsm(hook = "inode_setattr")]
pub fn guardian_inode_setattr_old(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    report::finish(try_setattr(ctx.arg(0), ctx.arg(1)))
}

#[inline(always)]
fn try_setattr(dentry: u64, attr: u64) -> Result<i32, i64> {
    let Some(cfg) = kernel::config() else {
        return Ok(0);
    };
    let off = &cfg.offsets;
    let g = report::governing(off, dentry)?;
    if !g.found {
        return Ok(0);
    }
    let (key, protected) = (g.key, g.entry);
    let valid = kernel::iattr_valid(off, attr)?;
    let task = kernel::current_task();
    let exe = kernel::exe_key(off, task)?;
    if report::own_write(cfg, &exe, &protected) {
        return Ok(0);
    }
    let (v, ret) = report::judge_file(cfg, report::may_write(cfg, &exe, &protected));
    let k = if valid & ATTR_SIZE != 0 {
        kind::FILE_TRUNCATE
    } else {
        kind::FILE_SETATTR
    };
    report::emit(off, task, k, source::LSM_INODE_SETATTR, v, |ev| {
        ev.file = key;
        ev.exe = exe;
        ev.flags = valid;
        ev.protected_id = protected.id;
    });
    Ok(ret)
}
