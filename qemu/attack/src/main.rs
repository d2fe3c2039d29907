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
  sleep SECONDS            sleep (a process to attack)
  mount-tmpfs DIR          mount(2) a tmpfs on DIR
  bind FROM TO             mount(2) FROM on TO with MS_BIND
  move-mount FROM TO       mount(2) with MS_MOVE (the old API)
  tree-move FROM TO        open_tree(2) a clone of FROM, move_mount(2) it onto TO
  umount DIR [lazy]        umount2(2) DIR (MNT_DETACH with lazy)
  ns-mount-tmpfs DIR       unshare(2) a mount namespace, then mount a tmpfs on DIR
  ns-self-bind DIR         unshare(2) a mount namespace, then bind DIR onto itself
  ns-ms-move-over DIR      unshare(2) a mount namespace, mount a tmpfs on /tmp/ms-move,
                           then mount(2) it onto DIR with MS_MOVE
  pivot-root NEWROOT       unshare(2) a mount namespace, mount a tmpfs on NEWROOT with a
                           forged opt/models/model.onnx in it, pivot_root(2) into it
  ns-pivot-self DIR        unshare(2) a mount namespace, bind / onto DIR (MS_REC), then
                           pivot_root(\".\", \".\") there: systemd's sandboxing
  bpf-obj-get PIN          BPF_OBJ_GET on a pinned map or program
  bpf-maps-by-id           BPF_MAP_GET_FD_BY_ID on every map: fails if any refused
  bpf-progs-by-id          BPF_PROG_GET_FD_BY_ID on every program: fails if any refused
  bpf-link-detach PIN      BPF_OBJ_GET on a pinned link, then BPF_LINK_DETACH
  prctl-exe PATH           prctl(PR_SET_MM, PR_SET_MM_EXE_FILE) to PATH
  traceme                  ptrace(PTRACE_TRACEME)
  traceme-exec PATH [ARGS] ptrace(PTRACE_TRACEME), then execv(2)
  mmap-hold PATH SECONDS   map PATH shared and writable, then sleep (writes nothing)"
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

/// execv(2) PATH with PATH and ARGS as its argv; returns only on failure.
fn execv(path: &str, args: &[&str]) -> ExitCode {
    let argv: Vec<CString> = std::iter::once(path)
        .chain(args.iter().copied())
        .map(c)
        .collect();
    let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|s| s.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    // SAFETY: NUL-terminated strings and a NULL-terminated array that
    // outlive the call.
    unsafe { libc::execv(c(path).as_ptr(), ptrs.as_ptr()) };
    report(-1)
}

/// `bpf(2)` with an attribute buffer.
fn bpf(cmd: i64, attr: &mut [u64; 16]) -> i64 {
    // SAFETY: attr is a zeroed 128-byte `union bpf_attr` that outlives
    // the call; the size passed is its size.
    unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), 128usize) }
}

const BPF_OBJ_GET: i64 = 7;
const BPF_MAP_GET_NEXT_ID: i64 = 12;
const BPF_MAP_GET_FD_BY_ID: i64 = 14;
const BPF_PROG_GET_NEXT_ID: i64 = 11;
const BPF_PROG_GET_FD_BY_ID: i64 = 13;
const BPF_LINK_DETACH: i64 = 34;

fn obj_get(pin: &str) -> i64 {
    let path = c(pin);
    let mut attr = [0u64; 16];
    attr[0] = path.as_ptr() as u64;
    bpf(BPF_OBJ_GET, &mut attr)
}

/// A descriptor for every BPF object of one kind, by id (`next`: the
/// GET_NEXT_ID command, `get`: GET_FD_BY_ID): any refused is a refusal.
fn by_id(next: i64, get: i64, what: &str) -> ExitCode {
    let (mut id, mut refused, mut reached) = (0u64, 0, 0);
    loop {
        let mut attr = [0u64; 16];
        attr[0] = id;
        if bpf(next, &mut attr) < 0 {
            break;
        }
        id = attr[0] >> 32;
        let mut attr = [0u64; 16];
        attr[0] = id;
        let fd = bpf(get, &mut attr);
        if fd < 0 {
            refused += 1;
        } else {
            reached += 1;
            // SAFETY: a descriptor this process just got.
            unsafe { libc::close(fd as i32) };
        }
    }
    if refused > 0 {
        println!(
            "error: {} ({refused} {what}(s) refused, {reached} reached)",
            std::io::Error::from_raw_os_error(libc::EPERM)
        );
        ExitCode::FAILURE
    } else {
        println!("ok ({reached} {what}(s) reached)");
        ExitCode::SUCCESS
    }
}

/// mount(2); `src`/`fstype` may be empty.
fn mount(src: &str, dst: &str, fstype: &str, flags: u64) -> i64 {
    let (s, d, t) = (c(src), c(dst), c(fstype));
    // SAFETY: NUL-terminated strings that outlive the call.
    unsafe {
        libc::mount(
            if src.is_empty() {
                std::ptr::null()
            } else {
                s.as_ptr()
            },
            d.as_ptr(),
            if fstype.is_empty() {
                std::ptr::null()
            } else {
                t.as_ptr()
            },
            flags,
            std::ptr::null(),
        )
    }
    .into()
}

/// A private mount namespace (its mounts do not propagate back).
/// pivot_root(2) (no libc wrapper).
fn pivot_root(new_root: &str, put_old: &str) -> ExitCode {
    let (n, o) = (c(new_root), c(put_old));
    // SAFETY: NUL-terminated paths that outlive the call.
    report(unsafe { libc::syscall(libc::SYS_pivot_root, n.as_ptr(), o.as_ptr()) })
}

fn private_ns() -> bool {
    // SAFETY: a plain system call.
    let unshared = unsafe { libc::unshare(libc::CLONE_NEWNS) } == 0;
    unshared && mount("", "/", "", libc::MS_REC | libc::MS_PRIVATE) == 0
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
        ["exec", path, rest @ ..] => execv(path, rest),
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
        // open-loop PATH N: N read-only opens and closes of PATH, timed;
        // prints `open-loop N NS_PER_OPEN` (the guest overhead bench).
        ["open-loop", p, n] => {
            let n: u64 = n.parse().unwrap_or(10_000);
            let path = c(p);
            let start = std::time::Instant::now();
            for _ in 0..n {
                let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY) };
                if fd < 0 {
                    println!("error: {}", std::io::Error::last_os_error());
                    return ExitCode::FAILURE;
                }
                unsafe { libc::close(fd) };
            }
            let ns = start.elapsed().as_nanos() as u64 / n.max(1);
            println!("open-loop {n} {ns}");
            ExitCode::SUCCESS
        }
        ["sleep", secs] => {
            std::thread::sleep(std::time::Duration::from_secs(secs.parse().unwrap_or(30)));
            ExitCode::SUCCESS
        }
        ["mount-tmpfs", dir] => report(mount("tmpfs", dir, "tmpfs", 0)),
        ["bind", from, to] => report(mount(from, to, "", libc::MS_BIND)),
        ["move-mount", from, to] => report(mount(from, to, "", libc::MS_MOVE)),
        ["tree-move", from, to] => {
            // open_tree(2) and move_mount(2): 428 and 429 on every
            // architecture (the unified syscall table).
            let f = c(from);
            // SAFETY: NUL-terminated path; flags OPEN_TREE_CLONE (1) | O_CLOEXEC.
            let fd = unsafe { libc::syscall(428, libc::AT_FDCWD, f.as_ptr(), 1 | libc::O_CLOEXEC) };
            if fd < 0 {
                return report(-1);
            }
            let (empty, t) = (c(""), c(to));
            // SAFETY: as above; MOVE_MOUNT_F_EMPTY_PATH (4).
            report(unsafe { libc::syscall(429, fd, empty.as_ptr(), libc::AT_FDCWD, t.as_ptr(), 4) })
        }
        ["umount", dir, rest @ ..] => {
            let flags = if rest.first() == Some(&"lazy") {
                libc::MNT_DETACH
            } else {
                0
            };
            report(unsafe { libc::umount2(c(dir).as_ptr(), flags) }.into())
        }
        ["ns-mount-tmpfs", dir] => {
            if !private_ns() {
                return report(-1);
            }
            report(mount("tmpfs", dir, "tmpfs", 0))
        }
        ["ns-self-bind", dir] => {
            if !private_ns() {
                return report(-1);
            }
            report(mount(dir, dir, "", libc::MS_BIND | libc::MS_REC))
        }
        ["ns-ms-move-over", dir] => {
            let scratch = "/tmp/ms-move";
            let _ = std::fs::create_dir_all(scratch);
            if !private_ns() || mount("tmpfs", scratch, "tmpfs", 0) != 0 {
                return report(-1);
            }
            report(mount(scratch, dir, "", libc::MS_MOVE))
        }
        ["pivot-root", new_root] => {
            let _ = std::fs::create_dir_all(new_root);
            if !private_ns() || mount("tmpfs", new_root, "tmpfs", 0) != 0 {
                return report(-1);
            }
            let models = format!("{new_root}/opt/models");
            let put_old = format!("{new_root}/old");
            let forged = std::fs::create_dir_all(&models)
                .and_then(|()| std::fs::write(format!("{models}/model.onnx"), "forged weights\n"))
                .and_then(|()| std::fs::create_dir_all(&put_old));
            if forged.is_err() {
                return report(-1);
            }
            pivot_root(new_root, &put_old)
        }
        ["ns-pivot-self", dir] => {
            let _ = std::fs::create_dir_all(dir);
            if !private_ns() || mount("/", dir, "", libc::MS_BIND | libc::MS_REC) != 0 {
                return report(-1);
            }
            if std::env::set_current_dir(dir).is_err() {
                return report(-1);
            }
            pivot_root(".", ".")
        }
        ["bpf-obj-get", pin] => report(obj_get(pin)),
        ["bpf-maps-by-id"] => by_id(BPF_MAP_GET_NEXT_ID, BPF_MAP_GET_FD_BY_ID, "map"),
        ["bpf-progs-by-id"] => by_id(BPF_PROG_GET_NEXT_ID, BPF_PROG_GET_FD_BY_ID, "program"),
        ["bpf-link-detach", pin] => {
            let fd = obj_get(pin);
            if fd < 0 {
                return report(-1);
            }
            let mut attr = [0u64; 16];
            attr[0] = fd as u64;
            report(bpf(BPF_LINK_DETACH, &mut attr))
        }
        ["prctl-exe", p] => {
            let f = unsafe { libc::open(c(p).as_ptr(), libc::O_RDONLY) };
            if f < 0 {
                return report(-1);
            }
            report(
                unsafe {
                    libc::prctl(
                        libc::PR_SET_MM,
                        libc::PR_SET_MM_EXE_FILE as libc::c_ulong,
                        f as libc::c_ulong,
                        0 as libc::c_ulong,
                        0 as libc::c_ulong,
                    )
                }
                .into(),
            )
        }
        ["mmap-hold", p, secs] => unsafe {
            let f = libc::open(c(p).as_ptr(), libc::O_RDWR);
            if f < 0 {
                return report(-1);
            }
            let m = libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f,
                0,
            );
            if m == libc::MAP_FAILED {
                return report(-1);
            }
            println!("ok");
            std::thread::sleep(std::time::Duration::from_secs(secs.parse().unwrap_or(60)));
            ExitCode::SUCCESS
        },
        ["traceme"] => report(unsafe {
            libc::ptrace(
                libc::PTRACE_TRACEME,
                0,
                std::ptr::null_mut::<libc::c_void>(),
                std::ptr::null_mut::<libc::c_void>(),
            )
        }),
        ["traceme-exec", path, rest @ ..] => {
            let rc = unsafe {
                libc::ptrace(
                    libc::PTRACE_TRACEME,
                    0,
                    std::ptr::null_mut::<libc::c_void>(),
                    std::ptr::null_mut::<libc::c_void>(),
                )
            };
            if rc < 0 {
                return report(-1);
            }
            execv(path, rest)
        }
        _ => usage(),
    }
}
