//! guardian-attack: the attacks guardian's boot tests run against a guarded
//! model file and inference process, one per subcommand. Each prints one
//! line, `ok` if the operation succeeded or `error: <errno text>` if the
//! kernel refused it, and exits 0 or 1 accordingly, so a test can assert
//! on both.
//!
//! These are the raw system calls an attacker would use, without the
//! fallbacks shell tools add (`mv` copying, `truncate` opening first), so
//! each one reaches exactly one kernel hook.

use std::{ffi::CString, process::ExitCode};

fn usage() -> ExitCode {
    eprintln!(
        "usage: guardian-attack COMMAND ARGS
  append PATH TEXT         open PATH for appending and write TEXT and a newline
  write-fd FD              write one byte through an already open descriptor
  mmap-write-fd FD         map FD shared and writable, change its first byte
  truncate PATH            truncate(2) PATH to 0 bytes (no open)
  ftruncate-fd FD          ftruncate(2) FD to 0 bytes
  rename FROM TO           rename(2)
  unlink PATH              unlink(2)
  link FROM TO             link(2)
  chmod PATH MODE          chmod(2), MODE in octal
  create PATH              open(2) with O_CREAT|O_WRONLY|O_EXCL
  mmap-exec PATH           map PATH executable (what the loader does to a library)
  exec PATH [ARGS...]      execv(2)
  ptrace PID               ptrace(PTRACE_ATTACH, PID)
  connect ADDR PORT        TCP connect to ADDR:PORT (IPv4 or IPv6)
  sleep SECONDS            sleep (a process to attack)"
    );
    ExitCode::from(2)
}

fn c(s: &str) -> CString {
    CString::new(s).unwrap_or_default()
}

fn fd(s: &str) -> i32 {
    s.parse().unwrap_or(-1)
}

/// Print the outcome of a syscall that returns -1 on error.
fn report(rc: i64) -> ExitCode {
    if rc < 0 {
        println!("error: {}", std::io::Error::last_os_error());
        ExitCode::FAILURE
    } else {
        println!("ok");
        ExitCode::SUCCESS
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    // SAFETY (all blocks below): plain system calls with valid,
    // NUL-terminated paths and buffers that outlive the call.
    match a.as_slice() {
        ["append", p, text] => {
            use std::io::Write as _;
            match std::fs::OpenOptions::new().append(true).open(p) {
                Ok(mut f) => match writeln!(f, "{text}") {
                    Ok(()) => {
                        println!("ok");
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        println!("error: {e}");
                        ExitCode::FAILURE
                    }
                },
                Err(e) => {
                    println!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        ["write-fd", f] => report(unsafe { libc::write(fd(f), b"X".as_ptr().cast(), 1) } as i64),
        ["mmap-write-fd", f] => unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd(f),
                0,
            );
            if p == libc::MAP_FAILED {
                return report(-1);
            }
            let b = p.cast::<u8>();
            *b = (*b).wrapping_add(1);
            libc::msync(p, 4096, libc::MS_SYNC);
            report(0)
        },
        ["truncate", p] => report(unsafe { libc::truncate(c(p).as_ptr(), 0) }.into()),
        ["ftruncate-fd", f] => report(unsafe { libc::ftruncate(fd(f), 0) }.into()),
        ["rename", from, to] => {
            report(unsafe { libc::rename(c(from).as_ptr(), c(to).as_ptr()) }.into())
        }
        ["unlink", p] => report(unsafe { libc::unlink(c(p).as_ptr()) }.into()),
        ["link", from, to] => {
            report(unsafe { libc::link(c(from).as_ptr(), c(to).as_ptr()) }.into())
        }
        ["chmod", p, mode] => {
            let m = u32::from_str_radix(mode, 8).unwrap_or(0o644);
            report(unsafe { libc::chmod(c(p).as_ptr(), m) }.into())
        }
        ["create", p] => report(
            unsafe {
                libc::open(
                    c(p).as_ptr(),
                    libc::O_CREAT | libc::O_WRONLY | libc::O_EXCL,
                    0o644,
                )
            }
            .into(),
        ),
        ["mmap-exec", p] => unsafe {
            let f = libc::open(c(p).as_ptr(), libc::O_RDONLY);
            if f < 0 {
                return report(-1);
            }
            let m = libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_EXEC,
                libc::MAP_PRIVATE,
                f,
                0,
            );
            report(if m == libc::MAP_FAILED { -1 } else { 0 })
        },
        ["exec", path, rest @ ..] => {
            let argv: Vec<CString> = std::iter::once(*path)
                .chain(rest.iter().copied())
                .map(c)
                .collect();
            let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|s| s.as_ptr()).collect();
            ptrs.push(std::ptr::null());
            unsafe { libc::execv(c(path).as_ptr(), ptrs.as_ptr()) };
            report(-1)
        }
        ["ptrace", pid] => {
            let pid: libc::pid_t = pid.parse().unwrap_or(0);
            let rc = unsafe {
                libc::ptrace(
                    libc::PTRACE_ATTACH,
                    pid,
                    std::ptr::null_mut::<libc::c_void>(),
                    std::ptr::null_mut::<libc::c_void>(),
                )
            };
            if rc == 0 {
                unsafe {
                    libc::ptrace(
                        libc::PTRACE_DETACH,
                        pid,
                        std::ptr::null_mut::<libc::c_void>(),
                        std::ptr::null_mut::<libc::c_void>(),
                    )
                };
            }
            report(rc)
        }
        ["connect", addr, port] => {
            let port: u16 = port.parse().unwrap_or(0);
            let Ok(ip) = addr.parse::<std::net::IpAddr>() else {
                return usage();
            };
            match std::net::TcpStream::connect_timeout(
                &std::net::SocketAddr::new(ip, port),
                std::time::Duration::from_secs(2),
            ) {
                Ok(_) => {
                    println!("ok");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    println!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        ["sleep", secs] => {
            std::thread::sleep(std::time::Duration::from_secs(secs.parse().unwrap_or(30)));
            ExitCode::SUCCESS
        }
        _ => usage(),
    }
}
