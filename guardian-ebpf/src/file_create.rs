//! LSM `inode_create`, `inode_mkdir`, `inode_symlink`, `inode_mknod`: a new
//! name in a protected tree, or a protected name such as
//! `/etc/ld.so.preload` on a system that has none (every program the
//! loader starts would load the libraries it names).
//!
//! Kernel prototypes: `LSM_HOOK(int, 0, inode_create, struct inode *dir,
//! struct dentry *dentry, umode_t mode)`, `inode_mkdir` (same arguments),
//! `LSM_HOOK(int, 0, inode_symlink, struct inode *dir, struct dentry
//! *dentry, const char *old_name)`, `LSM_HOOK(int, 0, inode_mknod, struct
//! inode *dir, struct dentry *dentry, umode_t mode, dev_t dev)`.
//!
//! | directory | name | creator | result |
//! |---|---|---|---|
//! | any | protected | anyone | `-EPERM`, event `deny` |
//! | in a protected tree | any | a writer of the tree | 0, event `allow` (the agent adds the new file) |
//! | in a protected tree | any | anyone else | `-EPERM`, event `deny` |
//! | elsewhere | not protected | anyone | 0, no event |
//!
//! A board that needs a protected name ships the file, and then it is
//! protected by inode instead.

use aya_ebpf::{macros::lsm, programs::LsmContext};
use guardian_common::{kind, source};

use crate::{kernel, report};

#[lsm(hook = "inode_create")]
pub fn guardian_inode_create(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    report::finish(try_create(ctx.arg(0), ctx.arg(1), source::LSM_INODE_CREATE))
}

#[lsm(hook = "inode_mkdir")]
pub fn guardian_inode_mkdir(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    report::finish(try_create(ctx.arg(0), ctx.arg(1), source::LSM_INODE_MKDIR))
}

#[lsm(hook = "inode_symlink")]
pub fn guardian_inode_symlink(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    report::finish(try_create(
        ctx.arg(0),
        ctx.arg(1),
        source::LSM_INODE_SYMLINK,
    ))
}

#[lsm(hook = "inode_mknod")]
pub fn guardian_inode_mknod(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(4);
    if previous != 0 {
        return previous;
    }
    report::finish(try_create(ctx.arg(0), ctx.arg(1), source::LSM_INODE_MKNOD))
}

#[inline(always)]
fn try_create(dir: u64, dentry: u64, src: u16) -> Result<i32, i64> {
    let Some(cfg) = kernel::config() else {
        return Ok(0);
    };
    let off = &cfg.offsets;
    let dir_key = kernel::inode_key(off, dir)?;
    let tree = report::tree(&dir_key);
    let name = if tree.is_none() {
        match report::protected_name(off, dir, dentry)? {
            Some(n) => Some(n),
            None => return Ok(0),
        }
    } else {
        None
    };
    let task = kernel::current_task();
    let exe = kernel::exe_key(off, task)?;
    let allowed = match (&tree, &name) {
        (Some(p), None) => {
            if report::own_write(cfg, &exe, p) {
                return Ok(0);
            }
            report::may_write(cfg, &exe, p)
        }
        _ => false,
    };
    let (v, ret) = report::judge_file(cfg, allowed);
    report::emit(off, task, kind::FILE_CREATE, src, v, |ev| {
        ev.file = dir_key;
        ev.exe = exe;
        if let Some(p) = &tree {
            ev.protected_id = p.id;
        }
        match &name {
            Some(n) => ev.name = n.name,
            None => {
                let _ = kernel::dentry_name(off, dentry, &mut ev.name);
            }
        }
    });
    Ok(ret)
}
