//! Writes through a descriptor that was already open: LSM
//! `file_permission` (deny), and the write family and `ftruncate` on
//! syscall entry (detect, through `syscalls.rs`).
//!
//! A write-open of a protected file is refused by `file_open`, but a
//! descriptor opened before guardian started, or handed over by an allowed
//! writer, never passes through `file_open` again. `file_permission` runs
//! in `rw_verify_area()` before every `read`/`write`/`splice`/
//! `copy_file_range`, so reads return at the first test (the mask), and a
//! write to a protected inode is judged like a write-open. Allowed writes
//! are not reported (one event per `write` call would flood the ring
//! buffer; the allowed writer's open was already reported).
//!
//! Kernel prototype: `LSM_HOOK(int, 0, file_permission, struct file *file,
//! int mask)`.

use aya_ebpf::{macros::lsm, programs::LsmContext};
use guardian_common::{Counter, KernelConfig, kind, source};

use crate::{kernel, report};

/// `MAY_WRITE` and `MAY_APPEND` from `include/linux/fs.h`.
const MAY_WRITE: i32 = 0x2;
const MAY_APPEND: i32 = 0x8;

#[lsm(hook = "file_permission")]
pub fn guardian_file_permission(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    let mask: i32 = ctx.arg(1);
    if mask & (MAY_WRITE | MAY_APPEND) == 0 {
        return 0;
    }
    report::finish(try_file_permission(ctx.arg(0), mask))
}

fn try_file_permission(file: u64, mask: i32) -> Result<i32, i64> {
    let Some(cfg) = kernel::config() else {
        return Ok(0);
    };
    let off = &cfg.offsets;
    let key = kernel::file_key(off, file)?;
    let Some(protected) = report::protected(&key) else {
        return Ok(0);
    };
    let task = kernel::current_task();
    let exe = kernel::exe_key(off, task)?;
    if report::may_write(cfg, &exe, &protected) {
        return Ok(0);
    }
    let (v, ret) = report::judge_file(cfg, false);
    // Every write is refused (and counted); one event per open file.
    if report::reported_before(file) {
        return Ok(ret);
    }
    report::emit(
        off,
        task,
        kind::FILE_WRITE,
        source::LSM_FILE_PERMISSION,
        v,
        |ev| {
            ev.file = key;
            ev.exe = exe;
            ev.flags = mask as u32;
            ev.protected_id = protected.id;
        },
    );
    Ok(ret)
}

/// A write-family syscall on descriptor `fd` of the current task: report it
/// if the descriptor is a protected file and the writer is not allowed.
#[inline(always)]
fn seen_fd(cfg: &KernelConfig, fd: u64, kind: u16, source: u16) -> Result<(), i64> {
    let off = &cfg.offsets;
    let task = kernel::current_task();
    // A descriptor that is not open (or out of range) is the syscall's
    // own error to report, not ours.
    let Ok(file) = kernel::fd_file(off, task, fd as u32) else {
        return Ok(());
    };
    if file == 0 {
        return Ok(());
    }
    let key = kernel::file_key(off, file)?;
    let Some(protected) = report::protected(&key) else {
        return Ok(());
    };
    let exe = kernel::exe_key(off, task)?;
    if report::may_write(cfg, &exe, &protected) {
        return Ok(());
    }
    let v = report::judge_seen(false);
    if kind == guardian_common::kind::FILE_WRITE && report::reported_before(file) {
        return Ok(());
    }
    report::emit(off, task, kind, source, v, |ev| {
        ev.file = key;
        ev.exe = exe;
        ev.protected_id = protected.id;
    });
    Ok(())
}

/// A write-family syscall (`write`, `pwrite64`, `writev`, `pwritev`,
/// `pwritev2`: the descriptor is the first argument of each) or
/// `ftruncate(fd, length)` returned, seen by the raw syscall tracepoint.
#[inline(always)]
pub(crate) fn seen(cfg: &KernelConfig, fd: u64, truncate: bool) {
    let (kind, source) = if truncate {
        (kind::FILE_TRUNCATE, source::RAW_SYS_FTRUNCATE)
    } else {
        (kind::FILE_WRITE, source::RAW_SYS_WRITE)
    };
    if seen_fd(cfg, fd, kind, source).is_err() {
        report::count(Counter::ReadErrors);
    }
}
