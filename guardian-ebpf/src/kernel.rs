//! Reading kernel structs.
//!
//! Rust cannot emit CO-RE relocations, so instead of compiling struct
//! layouts in, the programs read fields at byte offsets that the agent took
//! from the running kernel's BTF and stored in the config map. All reads go
//! through `bpf_probe_read_kernel`, which fails cleanly (never faults) on a
//! bad pointer.

use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel};
use guardian_common::{InodeKey, KernelConfig, KernelOffsets};

use crate::maps::CONFIG;

/// The agent's config, once it has been filled in.
#[inline(always)]
pub fn config() -> Option<&'static KernelConfig> {
    let cfg = CONFIG.get(0)?;
    if cfg.ready == 0 { None } else { Some(cfg) }
}

#[inline(always)]
fn read<T>(base: u64, offset: u32) -> Result<T, i64> {
    if base == 0 {
        return Err(-14); // -EFAULT
    }
    // SAFETY: bpf_probe_read_kernel copies through the kernel's fault-safe
    // path; a wrong address gives an error, not a crash.
    unsafe { bpf_probe_read_kernel((base + offset as u64) as *const T) }.map_err(|e| e as i64)
}

/// `(i_sb->s_dev, i_ino)` of a `struct file *`.
#[inline(always)]
pub fn file_key(off: &KernelOffsets, file: u64) -> Result<InodeKey, i64> {
    let inode: u64 = read(file, off.file_f_inode)?;
    let ino: u64 = read(inode, off.inode_i_ino)?;
    let sb: u64 = read(inode, off.inode_i_sb)?;
    let dev: u32 = read(sb, off.sb_s_dev)?;
    Ok(InodeKey { ino, dev, _pad: 0 })
}

/// `file->f_mode` and `file->f_flags`.
#[inline(always)]
pub fn file_mode_flags(off: &KernelOffsets, file: u64) -> Result<(u32, u32), i64> {
    Ok((read(file, off.file_f_mode)?, read(file, off.file_f_flags)?))
}

/// The current task, as a kernel address.
#[inline(always)]
pub fn current_task() -> u64 {
    // SAFETY: a helper call without arguments.
    unsafe { bpf_get_current_task() }
}

/// Inode of the task's executable (`task->mm->exe_file`). Kernel threads
/// have no `mm`: they get the zero key, which is never on an allowlist.
#[inline(always)]
pub fn exe_key(off: &KernelOffsets, task: u64) -> Result<InodeKey, i64> {
    let mm: u64 = read(task, off.task_mm)?;
    if mm == 0 {
        return Ok(InodeKey::default());
    }
    let exe: u64 = read(mm, off.mm_exe_file)?;
    if exe == 0 {
        return Ok(InodeKey::default());
    }
    file_key(off, exe)
}

/// `task->real_parent->tgid`.
#[inline(always)]
pub fn parent_tgid(off: &KernelOffsets, task: u64) -> Result<u32, i64> {
    let parent: u64 = read(task, off.task_real_parent)?;
    read(parent, off.task_tgid)
}

/// The `struct file *` behind descriptor `fd` of `task`
/// (`task->files->fdt->fd[fd]`).
#[inline(always)]
pub fn fd_file(off: &KernelOffsets, task: u64, fd: u32) -> Result<u64, i64> {
    let files: u64 = read(task, off.task_files)?;
    let fdt: u64 = read(files, off.files_fdt)?;
    let max_fds: u32 = read(fdt, off.fdt_max_fds)?;
    if fd >= max_fds {
        return Err(-9); // -EBADF
    }
    let fds: u64 = read(fdt, off.fdt_fd)?;
    read(fds, fd.wrapping_mul(8))
}
