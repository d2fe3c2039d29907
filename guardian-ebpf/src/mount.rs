//! LSM `sb_mount`, `move_mount`, `sb_umount`, `sb_pivotroot`: nothing is
//! mounted on, moved onto or away from, or unmounted from under a
//! protected path, and the root above them all is not pivoted away.
//!
//! The service opens its model by name, so a filesystem mounted over the
//! model's directory (or over any directory above it, or a file
//! bind-mounted over the model itself) would serve it another file while
//! the protected inode sits untouched underneath. The protected path's
//! directories are in the protected table ([`ProtectedFile::PATH`]), so
//! each hook asks one question: is the dentry concerned protected, or in
//! a protected tree? That holds in every mount namespace, since a
//! namespace shares the inodes: a mount made in a fresh namespace in which
//! the attacker then starts the service is refused like any other.
//!
//! | call | dentry checked | refused when protected |
//! |---|---|---|
//! | `mount(2)`: new filesystem, `MS_BIND`, `MS_MOVE` | the mount point | yes |
//! | `mount(2)`: `MS_BIND` of a directory onto itself | the mount point | no: the same names lead to the same inodes (systemd's `ProtectSystem=` does this to `/usr` and `/etc`) |
//! | `mount(2)`: `MS_REMOUNT`, propagation changes (`MS_SHARED`, `MS_PRIVATE`, `MS_SLAVE`, `MS_UNBINDABLE`) | none | no: nothing changes what a name leads to |
//! | `move_mount(2)` | the mount moved, and where it goes | yes |
//! | `umount(2)`, `umount2(2)` (lazy included) | the mount's root | yes |
//! | `pivot_root(2)` to a bind of the caller's own root (systemd's sandboxing: `MS_BIND\|MS_REC` of `/`, then `pivot_root(".", ".")`) | the new root | no: the new root is the same directory, the same names lead to the same inodes |
//! | `pivot_root(2)` by a caller whose root is the real `/`, to anything else | the new root | yes: every protected path lies below the root it moves away, so in the caller's mount namespace each would lead into the new root |
//! | `pivot_root(2)` by a caller already rooted elsewhere (inside a container) | none | no: no protected path lies below that root |
//!
//! `mount(2)` with `MS_MOVE` names the mount it moves as a string, which
//! the hook cannot resolve: moving a protected mount *away* that way is
//! not refused here (its destination is checked). In Linux 6.12,
//! `path_mount()` calls `security_sb_mount(dev_name, path, ...)` with
//! `dev_name` still the caller's string, and only then
//! `do_move_mount_old()` resolves it (`kern_path(old_name, LOOKUP_FOLLOW,
//! ...)`) and moves the mount with `do_move_mount()`, which calls no
//! further LSM hook (`security_move_mount()` is called by the
//! `move_mount(2)` system call alone), and BPF has no helper or kfunc to
//! resolve a path. The agent's path check sees such a move (see
//! `guardian::pathcheck`) and reports it, in the evidence.
//!
//! Kernel prototypes: `LSM_HOOK(int, 0, sb_mount, const char *dev_name,
//! const struct path *path, const char *type, unsigned long flags, void
//! *data)`, `LSM_HOOK(int, 0, move_mount, const struct path *from_path,
//! const struct path *to_path)`, `LSM_HOOK(int, 0, sb_umount, struct
//! vfsmount *mnt, int flags)`, `LSM_HOOK(int, 0, sb_pivotroot, const
//! struct path *old_path, const struct path *new_path)` (called by
//! `pivot_root(2)` after both paths are resolved, before anything moves).
//!
//! [`ProtectedFile::PATH`]: guardian_common::ProtectedFile::PATH

use aya_ebpf::{
    helpers::{bpf_d_path, bpf_probe_read_kernel_str_bytes},
    macros::lsm,
    programs::LsmContext,
};
use guardian_common::{KernelConfig, kind, source};

use crate::{kernel, report};

/// `MS_REMOUNT`, `MS_BIND` and the propagation flags
/// (`include/uapi/linux/mount.h`).
const MS_REMOUNT: u64 = 32;
const MS_BIND: u64 = 4096;
const MS_PROPAGATION: u64 = (1 << 17) | (1 << 18) | (1 << 19) | (1 << 20);

/// Sleepable: `bpf_d_path`, which tells a bind mount of a directory onto
/// itself, is only offered to sleepable LSM programs.
#[lsm(hook = "sb_mount", sleepable)]
pub fn guardian_sb_mount(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(5);
    if previous != 0 {
        return previous;
    }
    let flags: u64 = ctx.arg(3);
    if flags & (MS_REMOUNT | MS_PROPAGATION) != 0 {
        return 0;
    }
    let Some(cfg) = kernel::config() else {
        return 0;
    };
    let path: u64 = ctx.arg(1);
    if flags & MS_BIND != 0 && self_bind(ctx.arg(0), ctx.arg(1)) {
        return 0;
    }
    report::finish(
        kernel::path_dentry(&cfg.offsets, path)
            .and_then(|d| judge(cfg, d, source::LSM_SB_MOUNT, flags as u32)),
    )
    // (The event names the mount point; `flags` tells a bind or a move.)
}

#[lsm(hook = "move_mount")]
pub fn guardian_move_mount(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    let Some(cfg) = kernel::config() else {
        return 0;
    };
    let (from, to): (u64, u64) = (ctx.arg(0), ctx.arg(1));
    let off = &cfg.offsets;
    report::finish((|| {
        let r = judge(
            cfg,
            kernel::path_dentry(off, from)?,
            source::LSM_MOVE_MOUNT,
            0,
        )?;
        if r != 0 {
            return Ok(r);
        }
        judge(
            cfg,
            kernel::path_dentry(off, to)?,
            source::LSM_MOVE_MOUNT,
            0,
        )
    })())
}

#[lsm(hook = "sb_umount")]
pub fn guardian_sb_umount(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    let Some(cfg) = kernel::config() else {
        return 0;
    };
    let (mnt, flags): (u64, i32) = (ctx.arg(0), ctx.arg(1));
    report::finish(
        kernel::mnt_root(&cfg.offsets, mnt)
            .and_then(|d| judge(cfg, d, source::LSM_SB_UMOUNT, flags as u32)),
    )
}

#[lsm(hook = "sb_pivotroot")]
pub fn guardian_sb_pivotroot(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    let Some(cfg) = kernel::config() else {
        return 0;
    };
    report::finish(try_pivotroot(cfg, ctx.arg(1)))
}

/// `new_path` is the new root (`old_path`, `put_old`, is where the
/// current root goes, below it). The root moved away is the caller's own
/// (`current->fs->root`): refused when that is the real `/`, above every
/// protected path, unless the new root is that very directory (a bind of
/// `/`, as systemd's sandboxing makes it), under which the same names
/// lead to the same inodes.
#[inline(always)]
fn try_pivotroot(cfg: &KernelConfig, new_path: u64) -> Result<i32, i64> {
    let off = &cfg.offsets;
    let task = kernel::current_task();
    let new_root = kernel::path_dentry(off, new_path)?;
    let root = kernel::fs_root_dentry(off, task)?;
    if new_root == root {
        return Ok(0);
    }
    match kernel::dentry_key(off, root)? {
        Some(k) if k == cfg.root => {}
        _ => return Ok(0),
    }
    let new_key = kernel::dentry_key(off, new_root)?.unwrap_or_default();
    if new_key == cfg.root {
        // Another dentry of the same directory: still the same names.
        return Ok(0);
    }
    let exe = kernel::exe_key(off, task)?;
    let (v, ret) = report::judge_file(cfg, false);
    report::emit(off, task, kind::MOUNT, source::LSM_SB_PIVOTROOT, v, |ev| {
        ev.file = new_key;
        ev.exe = exe;
        ev.protected_id = guardian_common::Event::NOT_PROTECTED;
        let _ = kernel::dentry_name(off, new_root, &mut ev.name);
    });
    Ok(ret)
}

/// Is this bind mount's source (`dev_name`, the kernel's copy of the path
/// string the caller gave) the very path it is mounted on? Compared as
/// absolute paths, as `bpf_d_path` writes the mount point; any other
/// spelling of the same directory counts as another source, and is
/// refused.
#[inline(always)]
fn self_bind(dev_name: *const u8, path: *mut aya_ebpf::bindings::path) -> bool {
    let mut at = [0u8; 128];
    let mut from = [0u8; 128];
    // SAFETY: `path` is the hook's argument as the verifier typed it;
    // the helper writes at most `at.len()` bytes, NUL-terminated.
    let n = unsafe { bpf_d_path(path, at.as_mut_ptr().cast(), at.len() as u32) };
    if n <= 0 {
        return false;
    }
    // SAFETY: kernel memory through the fault-safe helper, bounded.
    let Ok(src) = (unsafe { bpf_probe_read_kernel_str_bytes(dev_name, &mut from) }) else {
        return false;
    };
    let len = src.len();
    if len + 1 != n as usize || len >= at.len() {
        return false;
    }
    // Only the first `n` bytes: `d_path` builds the string at the end of
    // the buffer and the helper moves it to the front, leaving the tail.
    let mut i = 0;
    while i < at.len() && i < len {
        if at[i] != from[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Refuse (or, in detect mode, report) a mount operation on `dentry` if it
/// is protected. Nobody is allowed, not even the writers: a model update
/// writes files, it does not mount over them.
#[inline(always)]
fn judge(cfg: &KernelConfig, dentry: u64, src: u16, flags: u32) -> Result<i32, i64> {
    let off = &cfg.offsets;
    let g = report::governing(off, dentry)?;
    if !g.found {
        return Ok(0);
    }
    let (key, protected) = (g.key, g.entry);
    let task = kernel::current_task();
    let exe = kernel::exe_key(off, task)?;
    let (v, ret) = report::judge_file(cfg, false);
    report::emit(off, task, kind::MOUNT, src, v, |ev| {
        ev.file = key;
        ev.exe = exe;
        ev.flags = flags;
        ev.protected_id = protected.id;
        let _ = kernel::dentry_name(off, dentry, &mut ev.name);
    });
    Ok(ret)
}
