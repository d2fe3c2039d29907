//! LSM `inode_link`: a new hard link to a protected file (which would give
//! it a name outside the protected directory, and a path around rules that
//! match on names), or a link that creates a protected name.
//!
//! Kernel prototype: `LSM_HOOK(int, 0, inode_link, struct dentry
//! *old_dentry, struct inode *dir, struct dentry *new_dentry)`.

use aya_ebpf::{macros::lsm, programs::LsmContext};
use guardian_common::{Event, kind, source};

use crate::{kernel, report};

#[lsm(hook = "inode_link")]
pub fn guardian_inode_link(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    report::finish(try_link(ctx.arg(0), ctx.arg(1), ctx.arg(2)))
}

fn try_link(old_dentry: u64, dir: u64, new_dentry: u64) -> Result<i32, i64> {
    let Some(cfg) = kernel::config() else {
        return Ok(0);
    };
    let off = &cfg.offsets;
    let mut key = kernel::dentry_key(off, old_dentry)?.unwrap_or_default();
    let mut protected = report::protected(&key);
    // A new name in a protected tree is the tree's writers' to make.
    if protected.is_none()
        && let Ok(d) = kernel::inode_key(off, dir)
        && let Some(p) = report::tree(&d)
    {
        key = d;
        protected = Some(p);
    }
    let name = if protected.is_none() {
        match report::protected_name(off, dir, new_dentry)? {
            Some(n) => Some(n),
            None => return Ok(0),
        }
    } else {
        None
    };
    let task = kernel::current_task();
    let exe = kernel::exe_key(off, task)?;
    let allowed = match &protected {
        Some(p) => report::may_write(cfg, &exe, p),
        None => false,
    };
    let (v, ret) = report::judge_file(cfg, allowed);
    report::emit(
        off,
        task,
        kind::FILE_LINK,
        source::LSM_INODE_LINK,
        v,
        |ev| {
            ev.file = key;
            ev.exe = exe;
            ev.protected_id = protected.map_or(Event::NOT_PROTECTED, |p| p.id);
            match name {
                Some(n) => {
                    ev.file = n.dir;
                    ev.name = n.name;
                }
                None => {
                    let _ = kernel::dentry_name(off, new_dentry, &mut ev.name);
                }
            }
        },
    );
    Ok(ret)
}
