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

/// The agent's config, once it has been filled in. A hook that finds it
/// missing cannot judge anything (it has no struct offsets) and says so in
/// a counter the agent reports; the agent fills the entry before it
/// attaches anything, and under BPF LSM no other program can reach the map
/// (see `bpf.rs`), so outside of tampering on a kernel without BPF LSM
/// this count stays at zero.
#[inline(always)]
pub fn config() -> Option<&'static KernelConfig> {
    match CONFIG.get(0) {
        Some(cfg) if cfg.ready != 0 => Some(cfg),
        _ => {
            crate::report::count(guardian_common::Counter::Unconfigured);
            None
        }
    }
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

/// Two 8-byte words of one struct at offsets `a` and `b`: one helper call
/// when they are 8-aligned and less than 32 bytes apart (each call costs
/// more than the copy; the hot paths read such pairs: `i_ino`/`i_sb`,
/// `max_fds`/`fd`), else two.
#[inline(always)]
fn read_pair(base: u64, a: u32, b: u32) -> Result<(u64, u64), i64> {
    let (lo, hi) = if a < b { (a, b) } else { (b, a) };
    if (a | b) & 7 == 0 && hi - lo < 32 {
        let w: [u64; 4] = read(base, lo)?;
        let at = |x: u32| w[(((x - lo) / 8) & 3) as usize];
        return Ok((at(a), at(b)));
    }
    Ok((read(base, a)?, read(base, b)?))
}

/// `(i_sb->s_dev, i_ino)` of a `struct inode *`.
#[inline(always)]
pub fn inode_key(off: &KernelOffsets, inode: u64) -> Result<InodeKey, i64> {
    let (ino, sb) = read_pair(inode, off.inode_i_ino, off.inode_i_sb)?;
    let dev: u32 = read(sb, off.sb_s_dev)?;
    Ok(InodeKey { ino, dev, _pad: 0 })
}

/// The inode key of a `struct file *`.
#[inline(always)]
pub fn file_key(off: &KernelOffsets, file: u64) -> Result<InodeKey, i64> {
    let inode: u64 = read(file, off.file_f_inode)?;
    inode_key(off, inode)
}

/// The inode key of a `struct dentry *`, or `None` for a negative dentry
/// (a name that does not exist yet).
#[inline(always)]
pub fn dentry_key(off: &KernelOffsets, dentry: u64) -> Result<Option<InodeKey>, i64> {
    let inode: u64 = read(dentry, off.dentry_d_inode)?;
    if inode == 0 {
        return Ok(None);
    }
    inode_key(off, inode).map(Some)
}

/// The inode key of a `struct dentry *`, all zero for a negative dentry.
/// (A plain key rather than [`dentry_key`]'s `Option`, where a caller
/// compares it: moving a `None` may copy its uninitialised payload, which
/// the verifier refuses to read.)
#[inline(always)]
pub fn dentry_key_or_zero(off: &KernelOffsets, dentry: u64) -> Result<InodeKey, i64> {
    let inode: u64 = read(dentry, off.dentry_d_inode)?;
    if inode == 0 {
        return Ok(InodeKey::default());
    }
    inode_key(off, inode)
}

/// The last path component of a `struct dentry *` into `out` (NUL-padded
/// by the caller; at most `out.len() - 1` bytes are copied). Returns the
/// number of bytes written including the NUL, as the helper does.
#[inline(always)]
pub fn dentry_name(off: &KernelOffsets, dentry: u64, out: &mut [u8]) -> Result<usize, i64> {
    let name: u64 = read(dentry, off.dentry_d_name + off.qstr_name)?;
    if name == 0 {
        return Err(-14);
    }
    // SAFETY: the helper copies at most out.len() bytes through the
    // fault-safe path and always NUL-terminates.
    unsafe { aya_ebpf::helpers::bpf_probe_read_kernel_str_bytes(name as *const u8, out) }
        .map(|s| s.len())
        .map_err(|e| e as i64)
}

/// The length of a `struct dentry *`'s last path component
/// (`d_name.len`: `struct qstr` starts with `u32 hash; u32 len;` on
/// little-endian machines, `HASH_LEN_DECLARE` in `include/linux/dcache.h`).
#[inline(always)]
pub fn dentry_name_len(off: &KernelOffsets, dentry: u64) -> Result<u32, i64> {
    read(dentry, off.dentry_d_name + 4)
}

/// `bprm->file`.
#[inline(always)]
pub fn bprm_file(off: &KernelOffsets, bprm: u64) -> Result<u64, i64> {
    read(bprm, off.bprm_file)
}

/// `attr->ia_valid`.
#[inline(always)]
pub fn iattr_valid(off: &KernelOffsets, attr: u64) -> Result<u32, i64> {
    read(attr, off.iattr_ia_valid)
}

/// Read a plain value at a kernel address.
#[inline(always)]
pub fn read_at<T>(addr: u64) -> Result<T, i64> {
    read(addr, 0)
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

/// `task->real_parent`.
#[inline(always)]
pub fn parent(off: &KernelOffsets, task: u64) -> Result<u64, i64> {
    read(task, off.task_real_parent)
}

/// `task->mm->start_stack`: in a program just exec'd, the address of its
/// `argc`, followed by `argv[]`, a null, `envp[]` and a null.
#[inline(always)]
pub fn start_stack(off: &KernelOffsets, task: u64) -> Result<u64, i64> {
    let mm: u64 = read(task, off.task_mm)?;
    if mm == 0 {
        return Err(-14);
    }
    read(mm, off.mm_start_stack)
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
    // `max_fds` is an unsigned int (the low half of its word on these
    // little-endian targets).
    let (max_fds, fds) = read_pair(fdt, off.fdt_max_fds, off.fdt_fd)?;
    if fd >= max_fds as u32 {
        return Err(-9); // -EBADF
    }
    read(fds, fd.wrapping_mul(8))
}

/// `bprm->filename` (the path as passed to exec) into `out`.
#[inline(always)]
pub fn bprm_filename(off: &KernelOffsets, bprm: u64, out: &mut [u8]) -> Result<usize, i64> {
    let name: u64 = read(bprm, off.bprm_filename)?;
    // SAFETY: fault-safe copy, bounded by out.len(), NUL-terminated.
    unsafe { aya_ebpf::helpers::bpf_probe_read_kernel_str_bytes(name as *const u8, out) }
        .map(|s| s.len())
        .map_err(|e| e as i64)
}

/// `dentry->d_parent` (a dentry is its own parent at a filesystem's root).
#[inline(always)]
pub fn dentry_parent(off: &KernelOffsets, dentry: u64) -> Result<u64, i64> {
    read(dentry, off.dentry_d_parent)
}

/// `path->dentry` of a `struct path *`.
#[inline(always)]
pub fn path_dentry(off: &KernelOffsets, path: u64) -> Result<u64, i64> {
    read(path, off.path_dentry)
}

/// `file->f_path.dentry`.
#[inline(always)]
pub fn file_dentry(off: &KernelOffsets, file: u64) -> Result<u64, i64> {
    read(file, off.file_f_path + off.path_dentry)
}

/// `task->fs->root.dentry`: the directory the task's `/` leads to.
#[inline(always)]
pub fn fs_root_dentry(off: &KernelOffsets, task: u64) -> Result<u64, i64> {
    let fs: u64 = read(task, off.task_fs)?;
    read(fs, off.fs_root + off.path_dentry)
}

/// `mnt->mnt_root` of a `struct vfsmount *`.
#[inline(always)]
pub fn mnt_root(off: &KernelOffsets, mnt: u64) -> Result<u64, i64> {
    read(mnt, off.vfsmount_mnt_root)
}

/// Is `task` traced (`task->ptrace & PT_PTRACED`)?
#[inline(always)]
pub fn ptraced(off: &KernelOffsets, task: u64) -> Result<bool, i64> {
    let flags: u32 = read(task, off.task_ptrace)?;
    Ok(flags & 1 != 0)
}

/// The name of a BPF object (`bpf_map.name`, `bpf_prog_aux.name`: a
/// 16-byte array, NUL-padded) at `addr`.
#[inline(always)]
pub fn object_name(addr: u64) -> Result<[u8; 16], i64> {
    read(addr, 0)
}

/// `inode->i_size` of a `struct file *`'s inode.
#[inline(always)]
pub fn file_size(off: &KernelOffsets, file: u64) -> Result<i64, i64> {
    let inode: u64 = read(file, off.file_f_inode)?;
    read(inode, off.inode_i_size)
}
