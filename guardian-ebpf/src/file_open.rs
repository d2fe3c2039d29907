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
//!
//! A second program on the same hook, `guardian_open_measured`, measures
//! at use: it judges the inference service's opens (of any mode) by name.
//! See [`guardian_open_measured`].

use aya_ebpf::{helpers::bpf_d_path, macros::lsm, programs::LsmContext};
use guardian_common::{Event, FMODE_WRITE, MeasuredPath, PathKey, kind, oflags, rules, source};

use crate::{
    kernel,
    maps::{MEASURED_PATHS, PATH_SCRATCH},
    report,
};

/// `offsetof(struct file, f_path)` on the running kernel, written by the
/// agent into the object's read-only data before it loads the programs.
/// It must be a constant the verifier can see (a frozen read-only map),
/// not a value from the config map: `bpf_d_path` takes only a pointer the
/// verifier knows to be a `struct path`, and it follows `file + offset`
/// into the struct only when the offset is known at load time.
#[unsafe(no_mangle)]
static GUARDIAN_FILE_F_PATH: u32 = 0;

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

/// Measure at use: the service opens a protected name only at the inode
/// measured there, and a file in a protected tree only if the agent knows
/// it. What it checks is the name the service used, as the kernel resolved
/// it for this open: `d_path` of the opened file, relative to the
/// service's own root. So a chroot holding a forged model at the model's
/// path, a mount namespace where that path leads elsewhere, or any other
/// way of making the service's name lead to another file meets the table
/// of measured paths (`GUARDIAN_PATHS`), and is refused.
///
/// | the service opens | result |
/// |---|---|
/// | a protected file (by inode), a guarded directory | 0, no event |
/// | any other file, at a path that is not measured, not in a protected tree | 0, no event |
/// | a file at a measured file's path, another inode | `-EPERM`, event `deny` (aux 1) |
/// | a file in a protected tree's directory (by path), not in the table | `-EPERM`, event `deny` (aux 2) |
/// | a file whose directory has a protected tree's path but is another directory | `-EPERM`, event `deny` (aux 1) |
///
/// (In detect mode the same, allowed, with event `alert`.) Only the
/// service pays for the path: every other task stops after reading its
/// executable's inode. A path longer than [`PathKey::LEN`] is not checked;
/// the agent refuses to protect such a file by path and says so.
///
/// Sleepable, as `bpf_d_path` is offered to LSM programs on hooks that may
/// sleep (`file_open` is one).
#[lsm(hook = "file_open", sleepable)]
pub fn guardian_open_measured(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        return previous;
    }
    report::finish(try_open_measured(&ctx))
}

fn try_open_measured(ctx: &LsmContext) -> Result<i32, i64> {
    let Some(cfg) = kernel::config() else {
        return Ok(0);
    };
    if cfg.rules & rules::MEASURED_OPEN == 0 {
        return Ok(0);
    }
    let off = &cfg.offsets;
    let task = kernel::current_task();
    let exe = kernel::exe_key(off, task)?;
    if !report::is_service(&exe) {
        return Ok(0);
    }
    let file: *const u8 = ctx.arg(0);
    let key = kernel::file_key(off, file as u64)?;
    if report::protected(&key).is_some() {
        return Ok(0);
    }
    let Some(scratch) = PATH_SCRATCH.get_ptr_mut(0) else {
        return Ok(0);
    };
    // SAFETY: this CPU's slot of a per-CPU map, for the length of this
    // program (it does not sleep between here and its last use).
    let scratch = unsafe { &mut *scratch };
    scratch.key = PathKey::default();
    scratch.parent = PathKey::default();
    // SAFETY: a read of our own read-only global; volatile, so the
    // compiler does not fold the zero it was declared with.
    let at = unsafe { core::ptr::read_volatile(&GUARDIAN_FILE_F_PATH) } as usize;
    // `d_path` builds the string backwards from the end of the buffer and
    // the helper then moves it to the front. With a buffer of twice the
    // key's length, a path that fits a key is built entirely in the
    // second half, so the first half ends up as the path and the zeros
    // written above: the key exactly as the agent wrote it, with no loop
    // over bytes the verifier would have to walk.
    // SAFETY: `file` is the hook's argument as the verifier typed it and
    // `at` the offset of its `f_path`; the helper writes at most the
    // buffer's length, `key` and `tail` being one contiguous buffer.
    let n = unsafe {
        bpf_d_path(
            file.wrapping_add(at) as *mut aya_ebpf::bindings::path,
            scratch.key.path.as_mut_ptr().cast(),
            (2 * PathKey::LEN) as u32,
        )
    };
    if n <= 0 || n as usize > PathKey::LEN {
        return Ok(0);
    }
    let n = n as u64;
    // By reference: a `PathKey` by value would be a copy of 256 bytes on
    // a 512-byte stack.
    // SAFETY: the value is copied out before the map can change.
    let lookup = |k: &PathKey| unsafe { MEASURED_PATHS.get(k) }.copied();
    let dentry = kernel::file_dentry(off, file as u64)?;
    let (aux, id) = if let Some(m) = lookup(&scratch.key) {
        // A measured name, and not its inode (that one is in the table).
        (Event::OPEN_OTHER_INODE, m.id)
    } else {
        // The directory's path: all but "/" and the last component, whose
        // length the dentry holds, copied into the zeroed second key.
        let name_len = u64::from(kernel::dentry_name_len(off, dentry)?);
        if n < name_len + 3 {
            return Ok(0);
        }
        let dir_len = ((n - name_len - 2) & 0xff) as u32;
        // SAFETY: at most 255 bytes into a 256-byte key, from the path
        // just written (kernel memory, read through the fault-safe helper).
        let copied = unsafe {
            aya_ebpf::helpers::generated::bpf_probe_read_kernel(
                scratch.parent.path.as_mut_ptr().cast(),
                dir_len,
                scratch.key.path.as_ptr().cast(),
            )
        };
        if copied != 0 {
            return Ok(0);
        }
        let Some(m) = lookup(&scratch.parent) else {
            return Ok(0);
        };
        if m.flags & MeasuredPath::TREE == 0 {
            return Ok(0);
        }
        let dir = kernel::dentry_key_or_zero(off, kernel::dentry_parent(off, dentry)?)?;
        if dir == m.key {
            (Event::OPEN_UNKNOWN_IN_TREE, m.id)
        } else {
            (Event::OPEN_OTHER_INODE, m.id)
        }
    };
    let (v, ret) = report::judge_file(cfg, false);
    let (fmode, flags) = kernel::file_mode_flags(off, file as u64).unwrap_or((0, 0));
    report::emit(
        off,
        task,
        kind::OPEN_UNMEASURED,
        source::LSM_FILE_OPEN,
        v,
        |ev| {
            ev.file = key;
            ev.exe = exe;
            ev.flags = flags;
            ev.fmode = fmode;
            ev.aux = aux;
            ev.protected_id = id;
            let _ = kernel::dentry_name(off, dentry, &mut ev.name);
        },
    );
    Ok(ret)
}
