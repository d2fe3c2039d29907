//! Events to the ring buffer, counters, and the decision every hook shares.

use aya_ebpf::helpers::{
    bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_ktime_get_ns,
};
use guardian_common::{
    Counter, Event, EventHeader, InodeKey, KernelConfig, KernelOffsets, NameKey, ProtectedFile,
    mode, verdict,
};

use crate::{
    kernel,
    maps::{COUNTERS, EVENTS, NAMES, PROTECTED, REPORTED, SERVICE, WRITERS},
};

/// `-EPERM`, what every LSM program returns to refuse.
pub const EPERM: i32 = -1;

/// An LSM program's answer: its decision, or (a kernel read failed) allow
/// and count it. Guessing "deny" on a garbled pointer would make the
/// machine unusable.
#[inline(always)]
pub fn finish(r: Result<i32, i64>) -> i32 {
    match r {
        Ok(ret) => ret,
        Err(_) => {
            count(Counter::ReadErrors);
            0
        }
    }
}

/// Add one to a counter on this CPU.
#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot; programs on one CPU do not preempt each
        // other mid-update for the program types used here.
        unsafe { *slot += 1 };
    }
}

/// The protected-file entry of an inode, if it is protected.
#[inline(always)]
pub fn protected(key: &InodeKey) -> Option<ProtectedFile> {
    // SAFETY: the value is copied out before the map can change under us.
    unsafe { PROTECTED.get(key) }.copied()
}

/// May the executable `exe` change the protected file `p`? guardian's own
/// files only by guardian; every other protected file by the allowlisted
/// writers; a directory on a protected path by nobody but, on guardian's
/// own paths, guardian (the path is what the service opens, see
/// [`ProtectedFile::PATH`]).
#[inline(always)]
pub fn may_write(cfg: &KernelConfig, exe: &InodeKey, p: &ProtectedFile) -> bool {
    if exe.ino == 0 {
        return false;
    }
    if p.flags & ProtectedFile::PATH != 0 {
        return p.flags & ProtectedFile::SELF != 0 && *exe == cfg.self_exe;
    }
    if p.flags & ProtectedFile::SELF != 0 {
        return *exe == cfg.self_exe;
    }
    // SAFETY: presence check only.
    unsafe { WRITERS.get(exe) }.is_some()
}

/// The entry of a protected tree's directory, by its inode key, if the
/// directory is one ([`ProtectedFile::TREE`]): what governs creating,
/// renaming and removing names in it. The entry returned stands for a
/// file of that tree (guardian's own or a model's), not for the directory
/// itself, so the writers of the tree may change it.
#[inline(always)]
pub fn tree(dir: &InodeKey) -> Option<ProtectedFile> {
    let p = protected(dir)?;
    if p.flags & ProtectedFile::TREE == 0 {
        return None;
    }
    Some(ProtectedFile {
        id: p.id,
        flags: p.flags & ProtectedFile::SELF,
    })
}

/// What governs a change to a name: the key to report and the entry that
/// decides. `found` is false when nothing does. (A plain struct rather than
/// an `Option`: moving a `None` may copy its uninitialised payload, which
/// the verifier refuses to read.)
#[derive(Clone, Copy, Default)]
pub struct Governed {
    /// The inode to report.
    pub key: InodeKey,
    /// The entry that decides.
    pub entry: ProtectedFile,
    /// Whether anything governs the name at all.
    pub found: bool,
}

/// What governs a change to the name `dentry`: its inode's own entry when
/// it is protected (a file, or a directory on a protected path), else the
/// entry of the protected tree its directory belongs to (a file created
/// since the agent last filled the table, or a name not yet taken).
#[inline(always)]
pub fn governing(off: &KernelOffsets, dentry: u64) -> Result<Governed, i64> {
    let mut g = Governed::default();
    let key = kernel::dentry_key(off, dentry)?;
    if let Some(k) = key {
        g.key = k;
        // SAFETY: the value is copied out before the map can change.
        if let Some(p) = unsafe { PROTECTED.get(k) } {
            g.entry = *p;
            g.found = true;
            return Ok(g);
        }
    }
    let parent = kernel::dentry_parent(off, dentry)?;
    let Some(dir) = kernel::dentry_key(off, parent)? else {
        return Ok(g);
    };
    if let Some(t) = tree(&dir) {
        if key.is_none() {
            g.key = dir;
        }
        g.entry = t;
        g.found = true;
    }
    Ok(g)
}

/// If the name `dentry` would get in directory `dir` (a `struct inode *`)
/// is a protected name, that name.
#[inline(always)]
pub fn protected_name(off: &KernelOffsets, dir: u64, dentry: u64) -> Result<Option<NameKey>, i64> {
    let Some(dir) = kernel::inode_key(off, dir).ok() else {
        return Err(-14);
    };
    let mut key = NameKey {
        dir,
        name: [0; NameKey::LEN],
    };
    kernel::dentry_name(off, dentry, &mut key.name)?;
    // SAFETY: presence check only.
    Ok(unsafe { NAMES.get(key) }.is_some().then_some(key))
}

/// Remember that the open file `file` (a `struct file *`) was reported;
/// returns whether it already was.
#[inline(always)]
pub fn reported_before(file: u64) -> bool {
    // SAFETY: presence check only.
    if unsafe { REPORTED.get(file) }.is_some() {
        return true;
    }
    let _ = REPORTED.insert(file, 1, 0);
    false
}

/// Is `exe` the inference service?
#[inline(always)]
pub fn is_service(exe: &InodeKey) -> bool {
    // SAFETY: presence check only.
    exe.ino != 0 && unsafe { SERVICE.get(exe) }.is_some()
}

/// guardian writing its own files (its log, say): not an event.
#[inline(always)]
pub fn own_write(cfg: &KernelConfig, exe: &InodeKey, p: &ProtectedFile) -> bool {
    p.flags & ProtectedFile::SELF != 0 && exe.ino != 0 && *exe == cfg.self_exe
}

/// The outcome of a file rule: the verdict to report, the value for the
/// LSM to return, and the counter bumped.
#[inline(always)]
pub fn judge_file(cfg: &KernelConfig, allowed: bool) -> (u16, i32) {
    if allowed {
        count(Counter::Allowed);
        (verdict::ALLOW, 0)
    } else if cfg.mode == mode::ENFORCE {
        count(Counter::Denied);
        (verdict::DENY, EPERM)
    } else {
        count(Counter::Detected);
        (verdict::ALERT, 0)
    }
}

/// The outcome of a file rule seen by a tracepoint, after the fact: never
/// a denial, whatever the mode of the LSM hooks.
#[inline(always)]
pub fn judge_seen(allowed: bool) -> u16 {
    if allowed {
        count(Counter::Allowed);
        verdict::ALLOW
    } else {
        count(Counter::Detected);
        verdict::ALERT
    }
}

/// A process rule broken, seen by a tracepoint after the fact.
#[inline(always)]
pub fn process_seen() -> u16 {
    count(Counter::ProcessDetected);
    verdict::ALERT
}

/// The outcome of a process rule that was broken.
#[inline(always)]
pub fn judge_process(cfg: &KernelConfig) -> (u16, i32) {
    if cfg.mode == mode::ENFORCE {
        count(Counter::ProcessDenied);
        (verdict::DENY, EPERM)
    } else {
        count(Counter::ProcessDetected);
        (verdict::ALERT, 0)
    }
}

/// Send one event. The common fields (who, when) are filled here; `fill`
/// sets the kind-specific ones on a zeroed event. A full ring buffer is
/// counted, never silent.
#[inline(always)]
pub fn emit(
    off: &KernelOffsets,
    task: u64,
    kind: u16,
    source: u16,
    verdict: u16,
    fill: impl FnOnce(&mut Event),
) {
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        count(Counter::RingbufDrops);
        return;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points at a reserved, exclusively owned slot of
    // size_of::<Event>() bytes; zeroing makes every field initialised
    // (all-zero is a valid Event) before any is read or written.
    let ev = unsafe {
        core::ptr::write_bytes(ev, 0, 1);
        &mut *ev
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    ev.header = EventHeader {
        kind,
        source,
        verdict,
        size: core::mem::size_of::<Event>() as u16,
        // SAFETY: helper without arguments.
        ktime_ns: unsafe { bpf_ktime_get_ns() },
    };
    ev.pid = (pid_tgid >> 32) as u32;
    ev.tid = pid_tgid as u32;
    ev.uid = uid_gid as u32;
    ev.gid = (uid_gid >> 32) as u32;
    ev.protected_id = Event::NOT_PROTECTED;
    ev.ppid = match kernel::parent_tgid(off, task) {
        Ok(p) => p,
        Err(_) => {
            count(Counter::ReadErrors);
            0
        }
    };
    ev.comm = bpf_get_current_comm().unwrap_or([0; 16]);
    fill(ev);
    entry.submit(0);
    count(Counter::EventsSubmitted);
}
