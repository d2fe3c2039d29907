//! LSM `bpf`, `bpf_map`, `bpf_prog`: guardian's own maps, programs and
//! links are guardian's alone.
//!
//! A pinned map can be reached without `open(2)` (`BPF_OBJ_GET` on the
//! pin, `BPF_MAP_GET_FD_BY_ID` on its id), so the protection of the pin
//! files does not keep a root shell from rewriting the tables the other
//! hooks read: adding itself as a writer, or clearing the config so every
//! hook allows. The kernel asks the LSM before it makes any descriptor for
//! a map or a program (`bpf_map_new_fd`, `bpf_prog_new_fd`), and before
//! every `bpf(2)` command; links get no such hook, so the commands that
//! act on a link (`BPF_LINK_DETACH`, `BPF_LINK_UPDATE`) are checked by the
//! program the link runs.
//!
//! | object | recognised by | who may |
//! |---|---|---|
//! | map | name starts with `GUARDIAN_` | guardian's executable only |
//! | program | name starts with `guardian_` | guardian's executable only |
//! | link (detach, update) | its program's name | guardian's executable only |
//!
//! Names are what the object declares and anyone can give their own object
//! the same prefix; that only locks them out of their own object, never
//! anyone into guardian's. guardian's executable is known by inode
//! ([`KernelConfig::self_exe`]); the file is protected, and the process is
//! protected from `ptrace` and from the loader variables (`exec.rs`,
//! `ptrace.rs`), and nobody can make the kernel record it as their
//! executable (`prctl.rs`).
//!
//! Kernel prototypes: `LSM_HOOK(int, 0, bpf, int cmd, union bpf_attr
//! *attr, unsigned int size)`, `LSM_HOOK(int, 0, bpf_map, struct bpf_map
//! *map, fmode_t fmode)`, `LSM_HOOK(int, 0, bpf_prog, struct bpf_prog
//! *prog)`. `attr` is the kernel's copy of the caller's argument.

use aya_ebpf::{macros::lsm, programs::LsmContext};
use guardian_common::{KernelConfig, kind, source};

use crate::{kernel, report};

/// `BPF_LINK_UPDATE` and `BPF_LINK_DETACH` (`enum bpf_cmd`,
/// `include/uapi/linux/bpf.h`).
const BPF_LINK_UPDATE: i32 = 29;
const BPF_LINK_DETACH: i32 = 34;

#[lsm(hook = "bpf_map")]
pub fn guardian_bpf_map(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    let Some(cfg) = kernel::config() else {
        return 0;
    };
    let (map, fmode): (u64, u32) = (ctx.arg(0), ctx.arg(1));
    report::finish(
        kernel::object_name(map + u64::from(cfg.offsets.bpf_map_name))
            .and_then(|name| judge(cfg, name, b"GUARDIAN_", source::LSM_BPF_MAP, fmode)),
    )
}

#[lsm(hook = "bpf_prog")]
pub fn guardian_bpf_prog(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        return previous;
    }
    let Some(cfg) = kernel::config() else {
        return 0;
    };
    let prog: u64 = ctx.arg(0);
    report::finish(
        prog_name(cfg, prog)
            .and_then(|name| judge(cfg, name, b"guardian_", source::LSM_BPF_PROG, 0)),
    )
}

#[lsm(hook = "bpf")]
pub fn guardian_bpf(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    let cmd: i32 = ctx.arg(0);
    if cmd != BPF_LINK_DETACH && cmd != BPF_LINK_UPDATE {
        return 0;
    }
    let Some(cfg) = kernel::config() else {
        return 0;
    };
    let attr: u64 = ctx.arg(1);
    report::finish((|| {
        let off = &cfg.offsets;
        // `link_detach.link_fd` and `link_update.link_fd` are both the
        // first member of their part of the union.
        let fd: u32 = kernel::read_at(attr)?;
        let file = kernel::fd_file(off, kernel::current_task(), fd)?;
        if file == 0 {
            return Ok(0);
        }
        let link: u64 = kernel::read_at(file + u64::from(off.file_private_data))?;
        let prog: u64 = kernel::read_at(link + u64::from(off.bpf_link_prog))?;
        let name = prog_name(cfg, prog)?;
        judge(cfg, name, b"guardian_", source::LSM_BPF, cmd as u32)
    })())
}

#[inline(always)]
fn prog_name(cfg: &KernelConfig, prog: u64) -> Result<[u8; 16], i64> {
    let aux: u64 = kernel::read_at(prog + u64::from(cfg.offsets.bpf_prog_aux))?;
    kernel::object_name(aux + u64::from(cfg.offsets.bpf_prog_aux_name))
}

#[inline(always)]
fn judge(
    cfg: &KernelConfig,
    name: [u8; 16],
    prefix: &[u8; 9],
    src: u16,
    flags: u32,
) -> Result<i32, i64> {
    let mut i = 0;
    while i < prefix.len() {
        if name[i] != prefix[i] {
            return Ok(0);
        }
        i += 1;
    }
    let off = &cfg.offsets;
    let task = kernel::current_task();
    let exe = kernel::exe_key(off, task)?;
    if exe.ino != 0 && exe == cfg.self_exe {
        return Ok(0);
    }
    let (v, ret) = report::judge_file(cfg, false);
    report::emit(off, task, kind::BPF_OBJECT, src, v, |ev| {
        ev.exe = exe;
        ev.flags = flags;
        ev.name[..16].copy_from_slice(&name);
    });
    Ok(ret)
}
