//! Exec by and of the inference service: LSM `bprm_check_security` (deny),
//! the `sched_process_exec` tracepoint (detect), and the
//! `sys_enter_execve(at)` tracepoints that read the new environment for
//! the LSM hook. Without BPF LSM the syscall-entry tracepoints are left
//! off (any syscall tracepoint puts every system call of every task on the
//! kernel's slow path), and `sched_process_exec` reads the environment
//! itself, from the new program's stack.
//!
//! Rules (each switched on by the agent, see `guardian_common::rules`):
//! - the service may only execute files on its exec allowlist (by inode);
//! - an exec with a loader variable (`LD_PRELOAD`, `LD_LIBRARY_PATH`,
//!   `LD_AUDIT`) in its environment is refused when the program doing it is
//!   the service, or the program it starts is the service: the classic way
//!   to put foreign code into a process without touching its files.
//!
//! Why a tracepoint reads the environment: by the time the LSM hook runs,
//! the strings have been copied into the new program's memory, which the
//! hook cannot read. `sys_enter_execve` runs in the calling thread before
//! that copy; it records which variable it found, by thread, and the hook
//! (same thread, same syscall) looks the record up. Another thread of the
//! caller could rewrite the environment between the two: that race is
//! documented, and the detect-side `sched_process_exec` reports the exec
//! either way.
//!
//! Kernel prototype: `LSM_HOOK(int, 0, bprm_check_security, struct
//! linux_binprm *bprm)`.

use aya_ebpf::{
    EbpfContext as _,
    helpers::{
        bpf_copy_from_user, bpf_get_current_pid_tgid, bpf_ima_file_hash, bpf_probe_read_kernel,
        bpf_probe_read_user, bpf_probe_read_user_str_bytes,
    },
    macros::{fentry, lsm, tracepoint},
    programs::{FEntryContext, LsmContext, TracePointContext},
};
use guardian_common::{Counter, KernelConfig, ServiceDigest, forms, kind, preload, rules, source};

use crate::{
    kernel,
    maps::{EXEC, PENDING_ENVP, PENDING_PRELOAD, SERVICE, SERVICE_DIGESTS},
    report,
};

/// Environment entries looked at (the verifier needs a bound). An
/// environment longer than this, or one with an entry the program cannot
/// read (a page not yet faulted in: BPF cannot wait for it), counts as a
/// loader variable ([`preload::UNREAD`]): what is not seen is not assumed
/// clean.
const MAX_ENV: u32 = 256;
/// In the pending value: the exec was made by the service.
const BY_SERVICE: u32 = 1 << 8;

#[inline(always)]
fn starts_with(s: &[u8], prefix: &[u8]) -> bool {
    if s.len() < prefix.len() {
        return false;
    }
    let mut i = 0;
    while i < prefix.len() {
        if s[i] != prefix[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// The first loader variable (a [`preload`] value) in the `envp` array at
/// `envp` in the current task's memory, 0 if the whole array was read and
/// has none, [`preload::UNREAD`] if it could not be read to its end.
#[inline(always)]
fn loader_var(envp: u64) -> u32 {
    let mut buf = [0u8; 17];
    if envp == 0 {
        return 0;
    }
    for i in 0..MAX_ENV {
        // SAFETY: user memory read through the fault-safe helper.
        let Ok(ptr) = (unsafe { bpf_probe_read_user((envp + 8 * i as u64) as *const u64) }) else {
            return preload::UNREAD;
        };
        if ptr == 0 {
            return 0;
        }
        // SAFETY: as above, bounded by buf.
        let Ok(s) = (unsafe { bpf_probe_read_user_str_bytes(ptr as *const u8, &mut buf) }) else {
            return preload::UNREAD;
        };
        if starts_with(s, b"LD_PRELOAD=") {
            return preload::LD_PRELOAD;
        }
        if starts_with(s, b"LD_LIBRARY_PATH=") {
            return preload::LD_LIBRARY_PATH;
        }
        if starts_with(s, b"LD_AUDIT=") {
            return preload::LD_AUDIT;
        }
    }
    preload::UNREAD
}

/// Scan the `envp` array of an exec in flight and record the result.
#[inline(always)]
fn scan_env(envp: u64) {
    let Some(cfg) = kernel::config() else {
        return;
    };
    if cfg.rules & (rules::NO_PRELOAD | rules::EXEC_ALLOWLIST | rules::GUARD_SELF) == 0 {
        return;
    }
    let id = bpf_get_current_pid_tgid();
    let mut found = loader_var(envp);
    let exe = kernel::exe_key(&cfg.offsets, kernel::current_task()).unwrap_or_default();
    if report::is_service(&exe) {
        found |= BY_SERVICE;
    }
    if found & 0xff == preload::UNREAD && PENDING_ENVP.insert(id, envp, 0).is_err() {
        report::count(Counter::PendingDrops);
    }
    if found == 0 {
        let _ = PENDING_PRELOAD.remove(id);
    } else if PENDING_PRELOAD.insert(id, found, 0).is_err() {
        report::count(Counter::PendingDrops);
    }
}

/// Without the syscall-entry tracepoints ([`forms::ENV_AT_EXEC`]): what
/// `scan_env` would have recorded, learnt after the exec. The environment
/// is read from the new program's stack (`envp` follows `argc` and
/// `argv[]`; a 64-bit layout: a 32-bit program's pointers are not read
/// right and its variables are missed). The program that did the exec is
/// gone by now, so the parent stands for it: a service that forks and
/// execs is caught, one that execs in place without forking is not.
#[inline(always)]
fn pending_at_exec(cfg: &KernelConfig, task: u64) -> Result<u32, i64> {
    let off = &cfg.offsets;
    let mut found = 0;
    if cfg.rules & rules::NO_PRELOAD != 0 {
        // An unreadable stack is counted; the allowlist check goes on.
        match kernel::start_stack(off, task)
            // SAFETY: user memory read through the fault-safe helper.
            .and_then(|sp| Ok((sp, unsafe { bpf_probe_read_user(sp as *const u64) }?)))
        {
            Ok((sp, argc)) if argc < 1 << 20 => found = loader_var(sp + 8 * (argc + 2)),
            Ok(_) => {}
            Err(_) => report::count(Counter::ReadErrors),
        }
    }
    let parent = kernel::exe_key(off, kernel::parent(off, task)?).unwrap_or_default();
    if report::is_service(&parent) {
        found |= BY_SERVICE;
    }
    Ok(found)
}

/// `execve(filename, argv, envp)`: `envp` is argument 2.
#[tracepoint(category = "syscalls", name = "sys_enter_execve")]
pub fn guardian_enter_execve(ctx: TracePointContext) -> u32 {
    // SAFETY: offset inside the record (16 + 8 * argument).
    if let Ok(envp) = unsafe { ctx.read_at::<u64>(32) } {
        scan_env(envp);
    }
    0
}

/// `execveat(dfd, filename, argv, envp, flags)`: `envp` is argument 3.
#[tracepoint(category = "syscalls", name = "sys_enter_execveat")]
pub fn guardian_enter_execveat(ctx: TracePointContext) -> u32 {
    // SAFETY: offset inside the record.
    if let Ok(envp) = unsafe { ctx.read_at::<u64>(40) } {
        scan_env(envp);
    }
    0
}

/// `execve`/`execveat` on function entry: fentry on the syscall's wrapper
/// (`__x64_sys_execve`, `__arm64_sys_execve`, ... named by the agent at
/// load time), whose one argument is the caller's saved registers. It
/// does what the `sys_enter_execve(at)` tracepoints do, but runs for
/// these two syscalls only, where any syscall tracepoint puts every system
/// call of every task on the kernel's slow path. fentry needs BPF
/// trampolines, like BPF LSM: the agent uses these wherever the LSM hook
/// attached, and the tracepoints if they do not load. `arg` is the
/// position of `envp` (2 for `execve`, 3 for `execveat`).
#[inline(always)]
fn fentry_env(ctx: &FEntryContext, arg: usize) -> i32 {
    let Some(cfg) = kernel::config() else {
        return 0;
    };
    let s = &cfg.syscalls;
    let regs: u64 = ctx.arg(0);
    let at = regs + u64::from(s.regs_base) + 8 * u64::from(s.regs_arg[arg] & 7);
    // SAFETY: kernel memory (the saved registers) through the fault-safe
    // helper.
    match unsafe { bpf_probe_read_kernel(at as *const u64) } {
        Ok(envp) => scan_env(envp),
        Err(_) => report::count(Counter::ReadErrors),
    }
    0
}

#[fentry]
pub fn guardian_fentry_execve(ctx: FEntryContext) -> i32 {
    fentry_env(&ctx, 2)
}

#[fentry]
pub fn guardian_fentry_execveat(ctx: FEntryContext) -> i32 {
    fentry_env(&ctx, 3)
}

/// Up to 8 bytes as the low bytes of a little-endian word.
#[inline(always)]
const fn word(b: &[u8]) -> u64 {
    let mut w = 0u64;
    let mut i = 0;
    while i < b.len() && i < 8 {
        w |= (b[i] as u64) << (8 * i);
        i += 1;
    }
    w
}

/// The environment at `envp` read again with `bpf_copy_from_user`, which
/// may fault pages in (sleepable programs only): what [`loader_var`] could
/// not read without faulting. Each entry's first 16 bytes are read (enough
/// for the longest prefix looked for); an entry shorter than that at the
/// very end of a mapping cannot be read so, and still counts as unread.
#[inline(always)]
fn loader_var_faulting(envp: u64) -> u32 {
    for i in 0..MAX_ENV {
        let mut ptr = 0u64;
        // SAFETY: copies 8 bytes of user memory into `ptr`, faulting in
        // what is needed; fails cleanly on an unmapped address.
        let rc = unsafe {
            bpf_copy_from_user(
                (&mut ptr as *mut u64).cast(),
                8,
                (envp + 8 * i as u64) as *const core::ffi::c_void,
            )
        };
        if rc != 0 {
            return preload::UNREAD;
        }
        if ptr == 0 {
            return 0;
        }
        // Two little-endian words, compared whole: a handful of
        // instructions per entry, where byte loops would make the verifier
        // walk every branch of every iteration.
        let mut w = [0u64; 2];
        // SAFETY: as above, into `w`.
        let rc = unsafe {
            bpf_copy_from_user(w.as_mut_ptr().cast(), 16, ptr as *const core::ffi::c_void)
        };
        if rc != 0 {
            return preload::UNREAD;
        }
        if w[0] == u64::from_le_bytes(*b"LD_PRELO") && w[1] & 0xff_ffff == word(b"AD=") {
            return preload::LD_PRELOAD;
        }
        if w[0] == u64::from_le_bytes(*b"LD_LIBRA") && w[1] == u64::from_le_bytes(*b"RY_PATH=") {
            return preload::LD_LIBRARY_PATH;
        }
        if w[0] == u64::from_le_bytes(*b"LD_AUDIT") && w[1] & 0xff == word(b"=") {
            return preload::LD_AUDIT;
        }
    }
    preload::UNREAD
}

/// Sleepable: an environment the syscall-entry program could not read
/// without faulting is read again here, where faults are allowed.
#[lsm(hook = "bprm_check_security", sleepable)]
pub fn guardian_bprm_check(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        return previous;
    }
    let Some(cfg) = kernel::config() else {
        return 0;
    };
    report::finish(try_bprm_check(cfg, ctx.arg(0)))
}

fn try_bprm_check(cfg: &KernelConfig, bprm: u64) -> Result<i32, i64> {
    if cfg.rules
        & (rules::NO_PRELOAD | rules::EXEC_ALLOWLIST | rules::NO_PTRACE | rules::GUARD_SELF)
        == 0
    {
        return Ok(0);
    }
    let off = &cfg.offsets;
    let task = kernel::current_task();
    let exe = kernel::exe_key(off, task)?;
    let by_service = report::is_service(&exe);
    let file = kernel::bprm_file(off, bprm)?;
    let target = kernel::file_key(off, file)?;
    let of_service = report::is_service(&target);
    let of_guardian =
        cfg.rules & rules::GUARD_SELF != 0 && target.ino != 0 && target == cfg.self_exe;
    let id = bpf_get_current_pid_tgid();
    // SAFETY: the value is copied out at once.
    let mut var = unsafe { PENDING_PRELOAD.get(id) }.copied().unwrap_or(0) & 0xff;
    if var == preload::UNREAD && (of_service || of_guardian || by_service) {
        // SAFETY: copied out at once.
        if let Some(envp) = unsafe { PENDING_ENVP.get(id) }.copied() {
            var = loader_var_faulting(envp);
        }
        let _ = PENDING_ENVP.remove(id);
    }
    // A process already traced (PTRACE_TRACEME, or attached before the
    // exec) would carry its tracer into the service or guardian.
    let traced_into = (of_guardian || (cfg.rules & rules::NO_PTRACE != 0 && of_service))
        && kernel::ptraced(off, task)?;
    let k = if traced_into {
        kind::PTRACE
    } else if var != 0
        && (of_guardian || (cfg.rules & rules::NO_PRELOAD != 0 && (by_service || of_service)))
    {
        kind::EXEC_PRELOAD
    // SAFETY: presence check only.
    } else if cfg.rules & rules::EXEC_ALLOWLIST != 0
        && by_service
        && unsafe { EXEC.get(target) }.is_none()
    {
        kind::EXEC
    } else {
        return Ok(0);
    };
    let (v, ret) = report::judge_process(cfg);
    report::emit(off, task, k, source::LSM_BPRM_CHECK, v, |ev| {
        ev.file = target;
        ev.exe = exe;
        ev.aux = if k == kind::PTRACE { ev.pid } else { var };
        let _ = kernel::bprm_filename(off, bprm, &mut ev.name);
    });
    Ok(ret)
}

/// `sched_process_exec`: after a successful exec, in the new program.
/// Record: 8 bytes of common fields, `__data_loc char[] filename` at 8
/// (offset in the low 16 bits, length in the high 16), `pid` at 12,
/// `old_pid` at 16 (the thread id before exec; a non-leader thread that
/// execs takes over the thread group id).
#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn guardian_process_exec(ctx: TracePointContext) -> u32 {
    if try_process_exec(&ctx).is_err() {
        report::count(Counter::ReadErrors);
    }
    0
}

fn try_process_exec(ctx: &TracePointContext) -> Result<(), i64> {
    let Some(cfg) = kernel::config() else {
        return Ok(());
    };
    // SAFETY: offsets inside the record, see above.
    let old_pid: u32 = unsafe { ctx.read_at::<u32>(16) }.map_err(i64::from)?;
    let tgid = bpf_get_current_pid_tgid() >> 32;
    let id = (tgid << 32) | u64::from(old_pid);
    let off = &cfg.offsets;
    let task = kernel::current_task();
    let pending = if cfg.forms & forms::ENV_AT_EXEC != 0 {
        if cfg.rules & (rules::NO_PRELOAD | rules::EXEC_ALLOWLIST) == 0 {
            return Ok(());
        }
        pending_at_exec(cfg, task)?
    } else {
        // SAFETY: copied out at once.
        let p = unsafe { PENDING_PRELOAD.get(id) }.copied().unwrap_or(0);
        let _ = PENDING_PRELOAD.remove(id);
        p
    };
    let exe = kernel::exe_key(off, task)?;
    let var = pending & 0xff;
    let by_service = pending & BY_SERVICE != 0;
    let k = if cfg.rules & rules::NO_PRELOAD != 0
        && var != 0
        && (by_service || report::is_service(&exe))
    {
        kind::EXEC_PRELOAD
    // SAFETY: presence check only.
    } else if cfg.rules & rules::EXEC_ALLOWLIST != 0
        && by_service
        && unsafe { EXEC.get(exe) }.is_none()
    {
        kind::EXEC
    } else {
        return Ok(());
    };
    let v = report::process_seen();
    // SAFETY: as above.
    let loc: u32 = unsafe { ctx.read_at::<u32>(8) }.map_err(i64::from)?;
    let name_at = ctx.as_ptr() as u64 + u64::from(loc & 0xffff);
    report::emit(off, task, k, source::TP_PROCESS_EXEC, v, |ev| {
        ev.file = exe;
        ev.exe = exe;
        ev.aux = var;
        // SAFETY: the filename lies inside the record; kernel memory, read
        // through the fault-safe helper.
        let _ = unsafe {
            aya_ebpf::helpers::bpf_probe_read_kernel_str_bytes(name_at as *const u8, &mut ev.name)
        };
    });
    Ok(())
}

/// `HASH_ALGO_SHA256` in `include/uapi/linux/hash_info.h`.
const HASH_ALGO_SHA256: i64 = 4;

/// LSM `bprm_creds_from_file`: the service recognised by content.
///
/// The service is known by the inode of its executable; a byte-identical
/// copy at another path would not be, and would run without the
/// service's rules (egress, libraries, loader variables). Here, once the
/// kernel has opened the file to run and before the exec is past the
/// point of no return, a file of the size of one of the service's
/// executables is hashed by IMA (`bpf_ima_file_hash`, SHA-256 when IMA is
/// built with it; IMA caches the digest per inode version) and, if the
/// digest is a service executable's, its inode joins the service's table:
/// this process and every later run of the file are the service. The
/// exec checks the service gets (no loader variable, no tracer) are then
/// applied to this exec too, since `bprm_check_security` ran before the
/// copy was known.
///
/// Sleepable: `bpf_ima_file_hash` may sleep. Without IMA (or with IMA
/// hashing with another algorithm) the helper fails, which is counted,
/// and identity stays by inode.
///
/// Kernel prototype: `LSM_HOOK(int, 0, bprm_creds_from_file, struct
/// linux_binprm *bprm, const struct file *file)`.
#[lsm(hook = "bprm_creds_from_file", sleepable)]
pub fn guardian_bprm_creds(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    let Some(cfg) = kernel::config() else {
        return 0;
    };
    if cfg.rules & rules::SERVICE_BY_CONTENT == 0 {
        return 0;
    }
    let bprm: u64 = ctx.arg(0);
    let file: *mut aya_ebpf::bindings::file = ctx.arg(1);
    report::finish(try_bprm_creds(cfg, bprm, file))
}

#[inline(always)]
fn try_bprm_creds(
    cfg: &KernelConfig,
    bprm: u64,
    file: *mut aya_ebpf::bindings::file,
) -> Result<i32, i64> {
    let off = &cfg.offsets;
    let key = kernel::file_key(off, file as u64)?;
    if report::is_service(&key) {
        return Ok(0);
    }
    let size = kernel::file_size(off, file as u64)?;
    let mut candidate = false;
    for i in 0..ServiceDigest::MAX {
        if let Some(d) = SERVICE_DIGESTS.get(i)
            && d.size != 0
            && d.size as i64 == size
        {
            candidate = true;
        }
    }
    if !candidate {
        return Ok(0);
    }
    let mut digest = [0u64; 4];
    // SAFETY: `file` is the hook's argument as the verifier typed it; the
    // helper writes at most 32 bytes into `digest`.
    let algo = unsafe { bpf_ima_file_hash(file, digest.as_mut_ptr().cast(), 32) };
    // The helper answers with the algorithm (`enum hash_algo`), not a
    // length: anything but SHA-256 cannot be compared.
    if algo != HASH_ALGO_SHA256 {
        report::count(Counter::ReadErrors);
        return Ok(0);
    }
    let mut id = u32::MAX;
    for i in 0..ServiceDigest::MAX {
        if let Some(d) = SERVICE_DIGESTS.get(i) {
            let w = |j: usize| {
                u64::from_le_bytes([
                    d.sha256[8 * j],
                    d.sha256[8 * j + 1],
                    d.sha256[8 * j + 2],
                    d.sha256[8 * j + 3],
                    d.sha256[8 * j + 4],
                    d.sha256[8 * j + 5],
                    d.sha256[8 * j + 6],
                    d.sha256[8 * j + 7],
                ])
            };
            if d.size as i64 == size
                && w(0) == digest[0]
                && w(1) == digest[1]
                && w(2) == digest[2]
                && w(3) == digest[3]
            {
                id = i;
            }
        }
    }
    if id == u32::MAX {
        return Ok(0);
    }
    // The same content: the service, from this exec on.
    let tag = id | ServiceDigest::KERNEL_ADDED;
    if SERVICE.insert(key, tag, 0).is_err() || EXEC.insert(key, tag, 0).is_err() {
        report::count(Counter::PendingDrops);
    }
    let task = kernel::current_task();
    let exe = kernel::exe_key(off, task)?;
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: copied out at once.
    let mut var = unsafe { PENDING_PRELOAD.get(pid_tgid) }
        .copied()
        .unwrap_or(0)
        & 0xff;
    if var == preload::UNREAD {
        // SAFETY: copied out at once.
        if let Some(envp) = unsafe { PENDING_ENVP.get(pid_tgid) }.copied() {
            var = loader_var_faulting(envp);
        }
    }
    let (k, v, ret) = if cfg.rules & rules::NO_PTRACE != 0 && kernel::ptraced(off, task)? {
        let (v, r) = report::judge_process(cfg);
        (kind::PTRACE, v, r)
    } else if cfg.rules & rules::NO_PRELOAD != 0 && var != 0 {
        let (v, r) = report::judge_process(cfg);
        (kind::EXEC_PRELOAD, v, r)
    } else {
        (kind::SERVICE_COPY, guardian_common::verdict::ALLOW, 0)
    };
    report::emit(off, task, k, source::LSM_BPRM_CREDS_FROM_FILE, v, |ev| {
        ev.file = key;
        ev.exe = exe;
        ev.aux = if k == kind::PTRACE { ev.pid } else { var };
        let _ = kernel::bprm_filename(off, bprm, &mut ev.name);
    });
    Ok(ret)
}
