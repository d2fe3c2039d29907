//! The open family (`open`, `openat`, `openat2`, `creat`) seen on syscall
//! entry and exit through the raw syscall tracepoints (`syscalls.rs`):
//! report write-opens of protected files after the fact, on any kernel
//! (the detect-only rung).
//!
//! The enter side sees only a path string, which cannot be trusted to name
//! an inode (symlinks, bind mounts, races), so it remembers just the flags,
//! and only for opens that can write. The exit side resolves the returned
//! descriptor to its `struct file` and decides by inode:
//!
//! | flags write or `O_TRUNC` | open succeeded | inode protected | result |
//! |---|---|---|---|
//! | no | - | - | nothing stored, no event |
//! | yes | no | - | no event |
//! | yes | yes | no | no event |
//! | yes | yes | yes | event `allow` (writer allowlisted) or `alert` |
//!
//! arm64 has no `open` or `creat`: the agent marks them absent.

use guardian_common::{Counter, KernelConfig, kind, oflags, source, sys};

use crate::{kernel, report};

/// A syscall of the open family (`sys` index `which`, arguments `args`)
/// returned `ret`.
#[inline(always)]
pub(crate) fn exit(cfg: &KernelConfig, which: usize, args: &[u64; 6], ret: i64) {
    if ret < 0 {
        return;
    }
    // The flags as passed, a filter only: the saved registers still hold
    // the arguments after the syscall (arm64's x0 is the result, but the
    // flags are never argument 0). openat2's flags are in user memory,
    // which the caller may have changed since: it is not filtered, its
    // file's own flags decide.
    let flags = match which {
        sys::OPENAT => Some(args[2] as u32),
        sys::OPEN => Some(args[1] as u32),
        // `creat(path, mode)` is `open(path, O_CREAT|O_WRONLY|O_TRUNC, mode)`.
        sys::CREAT => Some(oflags::O_CREAT | oflags::O_WRONLY | oflags::O_TRUNC),
        _ => None,
    };
    if flags.is_some_and(|f| !oflags::is_write(f)) {
        return;
    }
    if try_exit_open(cfg, ret, flags).is_err() {
        report::count(Counter::ReadErrors);
    }
}

/// `FMODE_WRITE` from `include/linux/fs.h`.
const FMODE_WRITE: u32 = 0x2;

fn try_exit_open(cfg: &KernelConfig, ret: i64, flags: Option<u32>) -> Result<(), i64> {
    let off = &cfg.offsets;
    let task = kernel::current_task();
    let file = kernel::fd_file(off, task, ret as u32)?;
    let key = kernel::file_key(off, file)?;
    let Some(protected) = report::protected(&key) else {
        return Ok(());
    };
    let (fmode, fflags) = kernel::file_mode_flags(off, file).unwrap_or((0, 0));
    // openat2: the file's mode says whether it was opened for writing (the
    // kernel keeps no O_TRUNC in f_flags, so a read-only truncating openat2
    // is seen by its inode_setattr only).
    let flags = match flags {
        Some(f) => f,
        None if fmode & FMODE_WRITE != 0 => fflags,
        None => return Ok(()),
    };
    let exe = kernel::exe_key(off, task)?;
    if report::own_write(cfg, &exe, &protected) {
        return Ok(());
    }
    let v = report::judge_seen(report::may_write(cfg, &exe, &protected));
    // Later writes through this descriptor are the same story.
    let _ = report::reported_before(file);
    report::emit(
        off,
        task,
        kind::FILE_WRITE_OPEN,
        source::RAW_SYS_OPEN,
        v,
        |ev| {
            ev.file = key;
            ev.exe = exe;
            ev.flags = flags;
            ev.fmode = fmode;
            ev.protected_id = protected.id;
        },
    );
    Ok(())
}
