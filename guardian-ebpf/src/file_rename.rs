//! LSM `inode_rename`: a rename that would move a protected file away (or
//! exchange it), put another file over a protected one, move a directory
//! on a protected path (the model's directory, or any above it), move a
//! name into, out of or within a protected tree, or create a protected
//! name.
//!
//! Kernel prototype: `LSM_HOOK(int, 0, inode_rename, struct inode *old_dir,
//! struct dentry *old_dentry, struct inode *new_dir, struct dentry
//! *new_dentry)`. `new_dentry` is negative when the target name does not
//! exist yet.

use aya_ebpf::{macros::lsm, programs::LsmContext};
use guardian_common::{Event, InodeKey, kind, source};

use crate::{kernel, report};

#[lsm(hook = "inode_rename")]
pub fn guardian_inode_rename(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(4);
    if previous != 0 {
        return previous;
    }
    report::finish(try_rename(ctx.arg(1), ctx.arg(2), ctx.arg(3)))
}

fn try_rename(old_dentry: u64, new_dir: u64, new_dentry: u64) -> Result<i32, i64> {
    let Some(cfg) = kernel::config() else {
        return Ok(0);
    };
    let off = &cfg.offsets;
    // What is concerned: the name moved (a protected file, a directory on
    // a protected path, a name in a protected tree), else the name
    // replaced or created (the same, in the target directory), else a
    // protected name created by the rename.
    let mut g = report::governing(off, old_dentry)?;
    if !g.found {
        g = report::governing(off, new_dentry)?;
    }
    if !g.found
        && let Ok(dir) = kernel::inode_key(off, new_dir)
        && let Some(p) = report::tree(&dir)
    {
        g = report::Governed {
            key: dir,
            entry: p,
            found: true,
        };
    }
    let mut name = None;
    if !g.found {
        name = report::protected_name(off, new_dir, new_dentry)?;
        if name.is_none() {
            return Ok(0);
        }
    }
    let task = kernel::current_task();
    let exe = kernel::exe_key(off, task)?;
    // A protected name may be created by nobody; a protected file changed
    // only by its writers; a directory on a protected path by nobody.
    let allowed = g.found && report::may_write(cfg, &exe, &g.entry);
    if g.found && report::own_write(cfg, &exe, &g.entry) {
        return Ok(0);
    }
    let (v, ret) = report::judge_file(cfg, allowed);
    let (key, id) = if g.found {
        (g.key, g.entry.id)
    } else {
        (InodeKey::default(), Event::NOT_PROTECTED)
    };
    report::emit(
        off,
        task,
        kind::FILE_RENAME,
        source::LSM_INODE_RENAME,
        v,
        |ev| {
            ev.file = key;
            ev.exe = exe;
            ev.protected_id = id;
            if let Some(n) = name {
                ev.file = n.dir;
                ev.name = n.name;
            } else {
                let _ = kernel::dentry_name(off, new_dentry, &mut ev.name);
            }
        },
    );
    Ok(ret)
}
