//! Events to the ring buffer, and counters.

use aya_ebpf::helpers::{
    bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_ktime_get_ns,
};
use guardian_common::{Counter, EventHeader, FileOpenEvent, InodeKey, KernelOffsets, kind};

use crate::{
    kernel,
    maps::{COUNTERS, EVENTS},
};

/// Add one to a counter on this CPU.
#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot; programs on one CPU do not preempt each
        // other mid-update for the program types used here.
        unsafe { *slot += 1 };
    }
}

/// What the hook decided about a write-open of a protected file.
pub struct WriteOpen {
    pub source: u16,
    pub verdict: u16,
    pub file: InodeKey,
    pub exe: InodeKey,
    pub flags: u32,
    pub fmode: u32,
    pub protected_id: u32,
}

/// Send one event; a full ring buffer is counted, never silent.
#[inline(always)]
pub fn file_write_open(off: &KernelOffsets, task: u64, w: WriteOpen) {
    let Some(mut entry) = EVENTS.reserve::<FileOpenEvent>(0) else {
        count(Counter::RingbufDrops);
        return;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    let ppid = match kernel::parent_tgid(off, task) {
        Ok(p) => p,
        Err(_) => {
            count(Counter::ReadErrors);
            0
        }
    };
    let comm = bpf_get_current_comm().unwrap_or([0; 16]);
    entry.write(FileOpenEvent {
        header: EventHeader {
            kind: kind::FILE_WRITE_OPEN,
            source: w.source,
            verdict: w.verdict,
            size: core::mem::size_of::<FileOpenEvent>() as u16,
            // SAFETY: helper without arguments.
            ktime_ns: unsafe { bpf_ktime_get_ns() },
        },
        file: w.file,
        exe: w.exe,
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        ppid,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        flags: w.flags,
        fmode: w.fmode,
        protected_id: w.protected_id,
        comm,
    });
    entry.submit(0);
    count(Counter::EventsSubmitted);
}
