//! What an open is for, learnt from the opener while it waits: the
//! permission rung's way to tell a write-open from a read (see the module
//! docs of `perm.rs`). Pure parsing and tables, plus reading the blocked
//! thread's `/proc/TID/syscall` and memory; no fanotify, no decisions.

use std::{
    ffi::c_void,
    io,
    os::unix::fs::FileExt as _,
    time::{Duration, Instant},
};

use guardian_common::oflags;

use super::os_err;

/// The state of a thread as `/proc/TID/syscall` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyscallState {
    /// The thread is running (its registers cannot be read).
    Running,
    /// Blocked, but not in a system call.
    NotInSyscall,
    /// In system call `nr` with these arguments.
    In {
        /// The number, as the thread's ABI numbers it.
        nr: i64,
        /// The six argument registers.
        args: [u64; 6],
    },
}

fn hex(s: &str) -> Option<u64> {
    u64::from_str_radix(s.strip_prefix("0x")?, 16).ok()
}

/// Parse `/proc/TID/syscall`: `running`, `-1 SP PC`, or
/// `NR ARG0 .. ARG5 SP PC` (number in decimal, the rest `0x` hex).
pub fn parse_syscall(text: &str) -> Option<SyscallState> {
    let text = text.trim();
    if text == "running" {
        return Some(SyscallState::Running);
    }
    let mut words = text.split_ascii_whitespace();
    let nr: i64 = words.next()?.parse().ok()?;
    let rest: Vec<u64> = words.map(hex).collect::<Option<_>>()?;
    if nr < 0 {
        return (rest.len() == 2).then_some(SyscallState::NotInSyscall);
    }
    if rest.len() != 8 {
        return None;
    }
    let mut args = [0; 6];
    args.copy_from_slice(&rest[..6]);
    Some(SyscallState::In { nr, args })
}

/// Where a system call that opens keeps its flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flags {
    /// In this argument.
    Arg(usize),
    /// Always `O_CREAT|O_WRONLY|O_TRUNC` (`creat`).
    Creat,
    /// In the first `u64` of a `struct open_how` at the address in this
    /// argument (`openat2`).
    OpenHow(usize),
    /// Opens for reading (`execve`, `execveat`).
    Exec,
}

/// The system calls of one ABI that open files.
#[derive(Clone, Copy, Debug)]
pub struct Abi {
    /// Name, for messages.
    pub name: &'static str,
    /// Number and where the flags are.
    pub calls: &'static [(i64, Flags)],
    /// A bit set in the number by a sub-ABI sharing the table (x32), or 0.
    pub strip: i64,
}

/// x86_64 (`arch/x86/entry/syscalls/syscall_64.tbl`), with x32's numbers
/// (the same with bit 30 set; x32 has its own `execve`/`execveat`, 520 and
/// 545, which are not valid 64-bit numbers).
pub const X86_64: Abi = Abi {
    name: "x86_64",
    calls: &[
        (2, Flags::Arg(1)),       // open
        (85, Flags::Creat),       // creat
        (257, Flags::Arg(2)),     // openat
        (304, Flags::Arg(2)),     // open_by_handle_at
        (437, Flags::OpenHow(2)), // openat2
        (59, Flags::Exec),        // execve
        (322, Flags::Exec),       // execveat
        (520, Flags::Exec),       // x32 execve
        (545, Flags::Exec),       // x32 execveat
    ],
    strip: 0x4000_0000,
};

/// i386, as 32-bit processes on an x86_64 kernel use it
/// (`arch/x86/entry/syscalls/syscall_32.tbl`).
pub const I386: Abi = Abi {
    name: "i386",
    calls: &[
        (5, Flags::Arg(1)),
        (8, Flags::Creat),
        (295, Flags::Arg(2)),
        (342, Flags::Arg(2)),
        (437, Flags::OpenHow(2)),
        (11, Flags::Exec),
        (358, Flags::Exec),
    ],
    strip: 0,
};

/// aarch64 (`include/uapi/asm-generic/unistd.h`: no `open`, no `creat`).
pub const AARCH64: Abi = Abi {
    name: "aarch64",
    calls: &[
        (56, Flags::Arg(2)),
        (265, Flags::Arg(2)),
        (437, Flags::OpenHow(2)),
        (221, Flags::Exec),
        (281, Flags::Exec),
    ],
    strip: 0,
};

/// 32-bit arm (EABI), as compat processes on an arm64 kernel use it
/// (`arch/arm/tools/syscall.tbl`).
pub const ARM: Abi = Abi {
    name: "arm",
    calls: &[
        (5, Flags::Arg(1)),
        (8, Flags::Creat),
        (322, Flags::Arg(2)),
        (371, Flags::Arg(2)),
        (437, Flags::OpenHow(2)),
        (11, Flags::Exec),
        (387, Flags::Exec),
    ],
    strip: 0,
};

/// The ABIs a thread on this kernel may have entered with.
#[cfg(target_arch = "x86_64")]
pub const NATIVE: &[Abi] = &[X86_64, I386];
/// The ABIs a thread on this kernel may have entered with.
#[cfg(target_arch = "aarch64")]
pub const NATIVE: &[Abi] = &[AARCH64, ARM];
/// The ABIs a thread on this kernel may have entered with (none known).
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub const NATIVE: &[Abi] = &[];

/// Where system call `nr` keeps its open flags, if it is one that opens.
pub fn open_call(abis: &[Abi], nr: i64) -> Option<Flags> {
    abis.iter().find_map(|abi| {
        let nr = if abi.strip != 0 { nr & !abi.strip } else { nr };
        abi.calls
            .iter()
            .find(|(n, _)| *n == nr)
            .map(|(_, flags)| *flags)
    })
}

/// What an open is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Intent {
    /// Reading only.
    Read,
    /// Writing (or truncating), with these open flags.
    Write(u32),
    /// Cannot tell, and why.
    Unknown(String),
}

fn from_flags(flags: u64) -> Intent {
    // The access mode and O_TRUNC sit in the low 32 bits on every ABI; for
    // an existing file O_CREAT changes nothing, the access mode counts.
    let flags = flags as u32;
    if oflags::is_write(flags) {
        Intent::Write(flags)
    } else {
        Intent::Read
    }
}

/// The intent of system call `nr` with `args`; `read_how` reads the flags
/// of a `struct open_how` at an address in the opener's memory.
pub fn intent(
    abis: &[Abi],
    nr: i64,
    args: &[u64; 6],
    read_how: impl FnOnce(u64) -> io::Result<u64>,
) -> Intent {
    let Some(call) = open_call(abis, nr) else {
        return Intent::Unknown(format!("system call {nr} is not one that opens"));
    };
    let arg = |i: usize| args.get(i).copied().unwrap_or_default();
    match call {
        Flags::Arg(i) => from_flags(arg(i)),
        Flags::Creat => Intent::Write(oflags::O_CREAT | oflags::O_WRONLY | oflags::O_TRUNC),
        Flags::OpenHow(i) => match read_how(arg(i)) {
            Ok(flags) => from_flags(flags),
            Err(e) => Intent::Unknown(format!("cannot read struct open_how at {:#x}: {e}", arg(i))),
        },
        Flags::Exec => Intent::Read,
    }
}

/// Read a `u64` at `addr` in thread `tid`'s memory.
fn read_remote_u64(tid: u32, addr: u64) -> io::Result<u64> {
    let mut buf = [0u8; 8];
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as usize as *mut c_void,
        iov_len: buf.len(),
    };
    // SAFETY: `local` points to our 8-byte buffer; the kernel checks the
    // remote range against the other process's mappings.
    let n = unsafe { libc::process_vm_readv(tid as libc::pid_t, &local, 1, &remote, 1, 0) };
    if n == 8 {
        return Ok(u64::from_ne_bytes(buf));
    }
    let e = if n < 0 {
        os_err()
    } else {
        io::Error::from(io::ErrorKind::UnexpectedEof)
    };
    if e.raw_os_error() != Some(libc::ENOSYS) {
        return Err(e);
    }
    // Kernels without CONFIG_CROSS_MEMORY_ATTACH: /proc/TID/mem.
    let mem = std::fs::File::open(format!("/proc/{tid}/mem"))?;
    mem.read_exact_at(&mut buf, addr)?;
    Ok(u64::from_ne_bytes(buf))
}

/// The intent of the open thread `tid` is blocked in.
pub(super) fn opener_intent(tid: u32) -> Intent {
    if tid == 0 {
        return Intent::Unknown("the opener is outside guardian's pid namespace".to_owned());
    }
    let path = format!("/proc/{tid}/syscall");
    // The event is queued before the opener goes to sleep waiting for the
    // answer; until it is off the CPU the kernel shows "running". It will
    // sleep (it cannot get past the open without an answer), so wait for
    // that: a few yields, then short sleeps. A preempted opener on a busy
    // machine can take a while to get there; past the deadline, give up.
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut attempt = 0u32;
    let text = loop {
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => return Intent::Unknown(format!("{path}: {e}")),
        };
        if text.trim() != "running" || Instant::now() > deadline {
            break text;
        }
        attempt += 1;
        if attempt < 20 {
            std::thread::yield_now();
        } else {
            std::thread::sleep(Duration::from_micros(100));
        }
    };
    match parse_syscall(&text) {
        None => Intent::Unknown(format!("{path}: unexpected content {:?}", text.trim())),
        Some(SyscallState::Running) => {
            Intent::Unknown("the opener stayed running instead of waiting for its open".to_owned())
        }
        Some(SyscallState::NotInSyscall) => Intent::Unknown(
            "the opener is not in a system call (an open by the kernel on its behalf)".to_owned(),
        ),
        Some(SyscallState::In { nr, args }) => {
            intent(NATIVE, nr, &args, |addr| read_remote_u64(tid, addr))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_syscall() {
        assert_eq!(parse_syscall("running\n"), Some(SyscallState::Running));
        assert_eq!(
            parse_syscall("-1 0x7ffd5b1c8e58 0x7f3a2b1c4d5e\n"),
            Some(SyscallState::NotInSyscall)
        );
        assert_eq!(
            parse_syscall(
                "257 0xffffff9c 0x55d0c0ffee00 0x441 0x1b6 0x0 0x0 0x7ffd5b1c8e58 0x7f3a2b1c4d5e\n"
            ),
            Some(SyscallState::In {
                nr: 257,
                args: [0xffff_ff9c, 0x55d0_c0ff_ee00, 0x441, 0x1b6, 0, 0],
            })
        );
        for bad in [
            "",
            "257 0x1 0x2",
            "257 1 2 3 4 5 6 7 8",
            "x 0x1 0x2 0x3 0x4 0x5 0x6 0x7 0x8",
            "-1 0x1",
            "257 0x1 0x2 0x3 0x4 0x5 0x6 0x7 0x8 0x9",
        ] {
            assert_eq!(parse_syscall(bad), None, "{bad:?}");
        }
    }

    fn no_how(_: u64) -> io::Result<u64> {
        panic!("no open_how expected")
    }

    #[test]
    fn decodes_flags_per_abi() {
        let o = |flags: u32| u64::from(flags);
        let (wr, rdwr, creat, trunc, append) = (
            oflags::O_WRONLY,
            oflags::O_RDWR,
            oflags::O_CREAT,
            oflags::O_TRUNC,
            oflags::O_APPEND,
        );
        // x86_64 openat: flags in argument 2.
        let args = [0xffff_ff9c, 0x1000, o(wr | creat | append), 0o644, 0, 0];
        assert_eq!(
            intent(&[X86_64], 257, &args, no_how),
            Intent::Write(wr | creat | append)
        );
        // open: argument 1; O_CREAT on a read-only open is a read.
        let args = [0x1000, o(creat), 0o644, 0, 0, 0];
        assert_eq!(intent(&[X86_64], 2, &args, no_how), Intent::Read);
        // O_RDONLY|O_TRUNC truncates.
        let args = [0x1000, o(trunc), 0, 0, 0, 0];
        assert_eq!(intent(&[X86_64], 2, &args, no_how), Intent::Write(trunc));
        // x32 openat.
        let args = [0, 0x1000, o(rdwr), 0, 0, 0];
        assert_eq!(
            intent(&[X86_64], 0x4000_0000 | 257, &args, no_how),
            Intent::Write(rdwr)
        );
        // creat always writes, whatever its arguments.
        assert_eq!(
            intent(&[X86_64], 85, &[0; 6], no_how),
            Intent::Write(creat | wr | trunc)
        );
        assert_eq!(
            intent(&[I386], 8, &[0; 6], no_how),
            Intent::Write(creat | wr | trunc)
        );
        // openat2: the flags come from the opener's memory.
        let args = [0xffff_ff9c, 0x1000, 0x2000, 24, 0, 0];
        assert_eq!(
            intent(&[X86_64], 437, &args, |addr| {
                assert_eq!(addr, 0x2000);
                Ok(o(wr))
            }),
            Intent::Write(wr)
        );
        assert_eq!(intent(&[AARCH64], 437, &args, |_| Ok(0)), Intent::Read);
        assert!(matches!(
            intent(&[AARCH64], 437, &args, |_| Err(io::Error::from_raw_os_error(libc::ESRCH))),
            Intent::Unknown(why) if why.contains("0x2000")
        ));
        // aarch64 openat is 56; its 2 (x86_64 open) is io_cancel.
        let args = [0xffff_ff9c, 0x1000, o(rdwr), 0, 0, 0];
        assert_eq!(intent(&[AARCH64], 56, &args, no_how), Intent::Write(rdwr));
        assert!(matches!(
            intent(&[AARCH64], 2, &args, no_how),
            Intent::Unknown(_)
        ));
        // 32-bit arm openat (322) and open (5).
        assert_eq!(
            intent(&[AARCH64, ARM], 322, &args, no_how),
            Intent::Write(rdwr)
        );
        let args = [0x1000, o(wr), 0, 0, 0, 0];
        assert_eq!(intent(&[AARCH64, ARM], 5, &args, no_how), Intent::Write(wr));
        // exec opens for reading.
        for (abi, nr) in [
            (X86_64, 59),
            (X86_64, 322),
            (I386, 11),
            (AARCH64, 221),
            (ARM, 387),
        ] {
            assert_eq!(
                intent(&[abi], nr, &[0; 6], no_how),
                Intent::Read,
                "{}",
                abi.name
            );
        }
        // A system call that opens on the kernel's behalf: undecidable.
        let swapon = 167;
        assert!(matches!(
            intent(&[X86_64, I386], swapon, &[0; 6], no_how),
            Intent::Unknown(why) if why.contains("167")
        ));
    }

    #[test]
    fn native_and_compat_tables_agree_where_they_overlap() {
        // A thread's ABI is not in /proc/TID/syscall, so a number must mean
        // the same open in both tables of a kernel, or be in only one.
        for (native, compat) in [(X86_64, I386), (AARCH64, ARM)] {
            for (n, f) in native.calls {
                if let Some((_, g)) = compat.calls.iter().find(|(m, _)| m == n) {
                    assert_eq!(f, g, "{} vs {} at {n}", native.name, compat.name);
                }
            }
        }
        assert!(!NATIVE.is_empty(), "no tables for this architecture");
    }

    #[test]
    fn reads_the_real_proc_syscall_of_a_blocked_thread() {
        // A thread blocked in read(2) on a pipe: the format this module
        // parses, from this kernel.
        let mut fds = [0; 2];
        // SAFETY: valid array of two ints.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = fds[0];
        let t = std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            tx.send(unsafe { libc::gettid() }).unwrap();
            let mut b = [0u8; 1];
            // SAFETY: valid descriptor and buffer.
            unsafe { libc::read(reader, b.as_mut_ptr().cast(), 1) };
        });
        let tid = rx.recv().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let state = loop {
            let text = std::fs::read_to_string(format!("/proc/{tid}/syscall")).unwrap();
            match parse_syscall(&text) {
                Some(SyscallState::In { nr, args }) if nr == libc::SYS_read => break args,
                other => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "{other:?} from {text:?}"
                    );
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            }
        };
        assert_eq!(state[0], reader as u64);
        assert_eq!(state[2], 1);
        // SAFETY: valid descriptor and buffer.
        unsafe { libc::write(fds[1], b"x".as_ptr().cast(), 1) };
        t.join().unwrap();
        // SAFETY: our descriptors.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
    }

    #[test]
    fn reads_open_how_flags_from_process_memory() {
        // struct open_how: flags, mode, resolve.
        let how: [u64; 3] = [u64::from(oflags::O_RDWR | oflags::O_APPEND), 0o644, 0];
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() } as u32;
        let got = read_remote_u64(tid, how.as_ptr() as u64).unwrap();
        assert_eq!(got, how[0]);
        assert!(read_remote_u64(tid, 8).is_err(), "page 0 is never mapped");
    }
}
