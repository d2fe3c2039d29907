//! Tracepoints `syscalls/sys_enter_{open,openat,openat2,creat}` and
//! `syscalls/sys_exit_*`: report write-opens of protected files after the
//! fact, on any kernel with syscall tracepoints (the detect-only rung).
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
//! Tracepoint record layouts (`/sys/kernel/tracing/events/syscalls/*/format`):
//! 8 bytes of common fields, `int __syscall_nr` at 8, then the syscall's
//! arguments as 8-byte slots from offset 16; `sys_exit_*` has `long ret` at 16.
//! These are the same on x86_64 and arm64 (arm64 has no `open`/`creat`; the
//! agent attaches only the tracepoints that exist).

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::tracepoint,
    programs::TracePointContext,
};
use guardian_common::{Counter, kind, oflags, source};

use crate::{kernel, maps::PENDING_OPENS, report};

/// Argument slot `n` (0-based) of a `sys_enter_*` record.
const fn arg(n: usize) -> usize {
    16 + 8 * n
}

#[inline(always)]
fn remember(flags: u32) {
    if !oflags::is_write(flags) {
        return;
    }
    if PENDING_OPENS
        .insert(bpf_get_current_pid_tgid(), flags, 0)
        .is_err()
    {
        report::count(Counter::PendingDrops);
    }
}

/// `openat(int dfd, const char *filename, int flags, umode_t mode)`.
#[tracepoint(category = "syscalls", name = "sys_enter_openat")]
pub fn guardian_enter_openat(ctx: TracePointContext) -> u32 {
    // SAFETY: offset inside the record, see the module docs.
    if let Ok(flags) = unsafe { ctx.read_at::<u64>(arg(2)) } {
        remember(flags as u32);
    }
    0
}

/// `open(const char *filename, int flags, umode_t mode)`.
#[tracepoint(category = "syscalls", name = "sys_enter_open")]
pub fn guardian_enter_open(ctx: TracePointContext) -> u32 {
    // SAFETY: offset inside the record, see the module docs.
    if let Ok(flags) = unsafe { ctx.read_at::<u64>(arg(1)) } {
        remember(flags as u32);
    }
    0
}

/// `creat(const char *pathname, umode_t mode)` is
/// `open(pathname, O_CREAT|O_WRONLY|O_TRUNC, mode)`.
#[tracepoint(category = "syscalls", name = "sys_enter_creat")]
pub fn guardian_enter_creat(_ctx: TracePointContext) -> u32 {
    remember(oflags::O_CREAT | oflags::O_WRONLY | oflags::O_TRUNC);
    0
}

/// `openat2(int dfd, const char *filename, struct open_how *how, size_t
/// usize)`; `how->flags` is the first field, a `u64`, in user memory.
#[tracepoint(category = "syscalls", name = "sys_enter_openat2")]
pub fn guardian_enter_openat2(ctx: TracePointContext) -> u32 {
    // SAFETY: offset inside the record; the user pointer is read through
    // the fault-safe helper.
    if let Ok(how) = unsafe { ctx.read_at::<u64>(arg(2)) }
        && let Ok(flags) = unsafe { bpf_probe_read_user(how as *const u64) }
    {
        remember(flags as u32);
    }
    0
}

/// Shared by `sys_exit_{open,openat,openat2,creat}`: `long ret` at 16.
#[tracepoint(category = "syscalls", name = "sys_exit_openat")]
pub fn guardian_exit_open(ctx: TracePointContext) -> u32 {
    if try_exit_open(&ctx).is_err() {
        report::count(Counter::ReadErrors);
    }
    0
}

fn try_exit_open(ctx: &TracePointContext) -> Result<(), i64> {
    let id = bpf_get_current_pid_tgid();
    // SAFETY: the value is copied before the entry is removed.
    let Some(flags) = (unsafe { PENDING_OPENS.get(id) }).copied() else {
        return Ok(());
    };
    let _ = PENDING_OPENS.remove(id);
    // SAFETY: offset inside the record, see the module docs.
    let ret: i64 = unsafe { ctx.read_at::<i64>(16) }.map_err(i64::from)?;
    if ret < 0 {
        return Ok(());
    }
    let Some(cfg) = kernel::config() else {
        return Ok(());
    };
    let off = &cfg.offsets;
    let task = kernel::current_task();
    let file = kernel::fd_file(off, task, ret as u32)?;
    let key = kernel::file_key(off, file)?;
    let Some(protected) = report::protected(&key) else {
        return Ok(());
    };
    let exe = kernel::exe_key(off, task)?;
    if report::own_write(cfg, &exe, &protected) {
        return Ok(());
    }
    let v = report::judge_seen(report::may_write(cfg, &exe, &protected));
    // Later writes through this descriptor are the same story.
    let _ = report::reported_before(file);
    let fmode = kernel::file_mode_flags(off, file)
        .map(|(m, _)| m)
        .unwrap_or(0);
    report::emit(
        off,
        task,
        kind::FILE_WRITE_OPEN,
        source::TP_SYS_EXIT_OPEN,
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
