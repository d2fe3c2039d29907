//! `mmap` of files: LSM `mmap_file` (deny) and `mmap` on syscall entry
//! (detect, through `syscalls.rs`).
//!
//! Two rules meet here:
//! - a shared writable mapping (`MAP_SHARED` + `PROT_WRITE`) of a protected
//!   file writes to it with plain stores, which no later hook sees; it is
//!   judged like a write-open;
//! - the inference service mapping a file executable (`PROT_EXEC`: the
//!   loader mapping a shared library) that is not on its exec allowlist is
//!   a library injected from somewhere unexpected.
//!
//! Kernel prototype: `LSM_HOOK(int, 0, mmap_file, struct file *file,
//! unsigned long reqprot, unsigned long prot, unsigned long flags)`;
//! `file` is NULL for anonymous memory. `mprotect` of an existing mapping
//! goes through `file_mprotect`, which guardian does not hook yet.

use aya_ebpf::{macros::lsm, programs::LsmContext};
use guardian_common::{Counter, KernelConfig, kind, rules, source};

use crate::{kernel, maps::EXEC, report};

const PROT_WRITE: u64 = 0x2;
const PROT_EXEC: u64 = 0x4;
/// `MAP_TYPE` mask and the two shared types (`MAP_SHARED`,
/// `MAP_SHARED_VALIDATE`).
const MAP_TYPE: u64 = 0x0f;
const MAP_SHARED: u64 = 0x01;
const MAP_SHARED_VALIDATE: u64 = 0x03;

#[inline(always)]
fn shared_write(prot: u64, flags: u64) -> bool {
    prot & PROT_WRITE != 0 && matches!(flags & MAP_TYPE, MAP_SHARED | MAP_SHARED_VALIDATE)
}

#[lsm(hook = "mmap_file")]
pub fn guardian_mmap_file(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(4);
    if previous != 0 {
        return previous;
    }
    let file: u64 = ctx.arg(0);
    if file == 0 {
        return 0;
    }
    let prot: u64 = ctx.arg(2);
    let flags: u64 = ctx.arg(3);
    if !shared_write(prot, flags) && prot & PROT_EXEC == 0 {
        return 0;
    }
    let Some(cfg) = kernel::config() else {
        return 0;
    };
    report::finish(try_mmap(cfg, file, prot, flags, true))
}

#[inline(always)]
fn try_mmap(cfg: &KernelConfig, file: u64, prot: u64, flags: u64, lsm: bool) -> Result<i32, i64> {
    let off = &cfg.offsets;
    let key = kernel::file_key(off, file)?;
    let task = kernel::current_task();
    if shared_write(prot, flags)
        && let Some(protected) = report::protected(&key)
    {
        let exe = kernel::exe_key(off, task)?;
        let allowed = report::may_write(cfg, &exe, &protected);
        let (v, ret, src) = if lsm {
            let (v, ret) = report::judge_file(cfg, allowed);
            (v, ret, source::LSM_MMAP_FILE)
        } else {
            (report::judge_seen(allowed), 0, source::RAW_SYS_MMAP)
        };
        report::emit(off, task, kind::FILE_MMAP_WRITE, src, v, |ev| {
            ev.file = key;
            ev.exe = exe;
            ev.flags = prot as u32;
            ev.fmode = flags as u32;
            ev.protected_id = protected.id;
        });
        return Ok(ret);
    }
    if prot & PROT_EXEC != 0 && cfg.rules & rules::LIBRARY_ALLOWLIST != 0 {
        let exe = kernel::exe_key(off, task)?;
        // SAFETY: presence check only.
        if report::is_service(&exe) && unsafe { EXEC.get(key) }.is_none() {
            let (v, ret, src) = if lsm {
                let (v, ret) = report::judge_process(cfg);
                (v, ret, source::LSM_MMAP_FILE)
            } else {
                (report::process_seen(), 0, source::RAW_SYS_MMAP)
            };
            report::emit(off, task, kind::LIBRARY_LOAD, src, v, |ev| {
                ev.file = key;
                ev.exe = exe;
                ev.flags = prot as u32;
                ev.fmode = flags as u32;
            });
            return Ok(ret);
        }
    }
    Ok(0)
}

/// `mmap(addr, len, prot, flags, fd, off)` returned, seen by the raw
/// syscall tracepoint (`syscalls.rs`).
#[inline(always)]
pub(crate) fn seen(cfg: &KernelConfig, prot: u64, flags: u64, fd: u64) {
    if !shared_write(prot, flags) && prot & PROT_EXEC == 0 {
        return;
    }
    let task = kernel::current_task();
    // Anonymous maps pass fd -1; a closed descriptor is mmap's own error.
    let Ok(file) = kernel::fd_file(&cfg.offsets, task, fd as u32) else {
        return;
    };
    if file == 0 {
        return;
    }
    if try_mmap(cfg, file, prot, flags, false).is_err() {
        report::count(Counter::ReadErrors);
    }
}
