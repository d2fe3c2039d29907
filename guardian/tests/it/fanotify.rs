//! The fanotify rung on this machine's kernel: real permission events, real
//! processes opening real files, no mocks.
//!
//! They need root (`fanotify_init` with `FAN_CLASS_CONTENT` needs
//! CAP_SYS_ADMIN) and refuse to pass without it. Each test marks only files
//! of its own temporary directory, so they run beside each other and beside
//! the eBPF host tests without touching what those watch.

// Tests panic on purpose: the failing line is the report.
use std::{
    ffi::CString,
    os::unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
    path::Path,
    process::{Command, Output},
    sync::mpsc,
    time::{Duration, Instant},
};

use crate::rungs;

use rungs::{Receiver, Scene, channel};

use guardian::{
    events::SecurityEvent,
    fanotify::{FanotifyError, FanotifyGuard, HOOK},
};
use guardian_common::oflags;

fn root() {
    assert!(
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() } == 0,
        "the fanotify tests put permission marks on files and must run as root (./test.sh does)"
    );
}

/// Run `sh -c script`, failing the test if it hangs (an unanswered
/// permission event would hang it forever).
fn sh(shell: &Path, script: &str) -> (u32, Output) {
    let child = Command::new(shell)
        .arg("-c")
        .arg(script)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output().unwrap()));
    let out = rx
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("{} -c {script:?} hung", shell.display()));
    (pid, out)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn next_event(rx: &Receiver<SecurityEvent>) -> SecurityEvent {
    rx.recv_timeout(Duration::from_secs(10))
        .expect("no event from the decision thread within 10 s")
}

fn no_event(rx: &Receiver<SecurityEvent>) {
    if let Ok(ev) = rx.recv_timeout(Duration::from_millis(300)) {
        panic!("unexpected event {ev:?}");
    }
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// `openat2(AT_FDCWD, path, {flags})` from this thread; the result or errno.
fn openat2(path: &Path, flags: u64) -> Result<(), i32> {
    let c = cpath(path);
    // struct open_how: flags, mode, resolve.
    let how: [u64; 3] = [flags, 0, 0];
    // SAFETY: valid path and a 24-byte open_how, as the size says.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            c.as_ptr(),
            how.as_ptr(),
            size_of_val(&how),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap());
    }
    // SAFETY: our descriptor.
    unsafe { libc::close(fd as i32) };
    Ok(())
}

fn gettid() -> u32 {
    // SAFETY: no preconditions.
    unsafe { libc::gettid() as u32 }
}

#[test]
fn denies_write_opens_and_lets_writers_and_readers_through() {
    root();
    let s = Scene::new();
    let targets = s.targets();
    let (tx, rx) = channel();
    let guard = FanotifyGuard::start(&targets, tx).unwrap();
    assert_eq!(guard.marked(), 2);
    let model = s.model().display().to_string();
    let sh_ino = std::fs::metadata("/bin/sh").unwrap().ino();

    // 1. Any shell appending to the model: EPERM, and a deny event naming
    //    the process (dash opens the redirection itself, no fork).
    let (pid, out) = sh(Path::new("/bin/sh"), &format!("echo x >> {model}"));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("Operation not permitted"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read(s.model()).unwrap(), b"weights v1\n");
    let ev = next_event(&rx);
    assert_eq!(ev.event, "file_write_open");
    assert_eq!(ev.verdict, "deny");
    assert_eq!(ev.mode, "enforce");
    assert_eq!(ev.hook, HOOK);
    assert_eq!(ev.pid, pid);
    assert_eq!(ev.tid, pid);
    // SAFETY: no preconditions.
    assert_eq!(ev.ppid, unsafe { libc::getpid() } as u32);
    assert_eq!((ev.uid, ev.gid), (0, 0));
    assert_eq!(ev.exe_ino, sh_ino);
    assert_eq!(ev.file.as_deref(), Some(&*model));
    assert_eq!(ev.ino, Some(std::fs::metadata(s.model()).unwrap().ino()));
    let flags = ev.flags.unwrap();
    assert_eq!(flags & oflags::O_ACCMODE, oflags::O_WRONLY);
    assert_ne!(flags & oflags::O_APPEND, 0);
    assert!(
        ev.flags_text.as_deref().unwrap().contains("O_APPEND"),
        "{ev:?}"
    );
    assert!(!ev.comm.is_empty());

    // 2. The allowlisted copy of the same shell appends; event `allow`.
    let (pid, out) = sh(&s.writer(), &format!("echo y >> {model}"));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(s.model()).unwrap(), b"weights v1\ny\n");
    let ev = next_event(&rx);
    assert_eq!((ev.verdict.as_str(), ev.pid), ("allow", pid));
    assert_eq!(ev.exe.as_deref(), Some(&*s.writer().display().to_string()));

    // 3. Reading is allowed, silently.
    let reads = guard.stats().reads;
    let (_, out) = sh(Path::new("/bin/sh"), &format!("cat {model}"));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(out.stdout, b"weights v1\ny\n");
    no_event(&rx);
    assert!(guard.stats().reads > reads);

    // 4. O_RDONLY|O_TRUNC truncates: denied, the file keeps its bytes.
    let c = cpath(&s.model());
    // SAFETY: valid path.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_TRUNC) };
    assert_eq!(fd, -1, "O_TRUNC open of the model was allowed");
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EPERM)
    );
    assert_eq!(std::fs::read(s.model()).unwrap(), b"weights v1\ny\n");
    let ev = next_event(&rx);
    assert_eq!(ev.verdict, "deny");
    assert_eq!(ev.tid, gettid());
    assert!(
        ev.flags_text.as_deref().unwrap().contains("O_TRUNC"),
        "{ev:?}"
    );

    // 5. openat2 keeps its flags in the opener's memory: read there.
    assert_eq!(
        openat2(&s.model(), u64::from(oflags::O_WRONLY | oflags::O_APPEND)),
        Err(libc::EPERM)
    );
    let ev = next_event(&rx);
    assert_eq!(ev.verdict, "deny");
    // SAFETY: no preconditions.
    assert_eq!(ev.pid, unsafe { libc::getpid() } as u32);
    assert_eq!(ev.tid, gettid());
    assert_eq!(ev.flags, Some(oflags::O_WRONLY | oflags::O_APPEND));
    assert_eq!(openat2(&s.model(), 0), Ok(()));
    no_event(&rx);

    // 6. guardian's own file: the model writer may not touch it; guardian
    //    (its stand-in executable) may, without an event.
    let own = s.own().display().to_string();
    let (pid, out) = sh(&s.writer(), &format!("echo z >> {own}"));
    assert!(
        stderr(&out).contains("Operation not permitted"),
        "{}",
        stderr(&out)
    );
    let ev = next_event(&rx);
    assert_eq!(
        (ev.verdict.as_str(), ev.pid, ev.file.as_deref()),
        ("deny", pid, Some(&*own))
    );
    let (_, out) = sh(&s.guardian(), &format!("echo z >> {own}"));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(s.own()).unwrap(), b"[guard]\nz\n");
    no_event(&rx);

    // 7. An open the kernel makes inside another system call (swapon opens
    //    its file O_RDWR): the flags cannot be learnt, so fail-closed.
    let before = guard.stats();
    let c = cpath(&s.model());
    // SAFETY: valid path.
    let r = unsafe { libc::swapon(c.as_ptr(), 0) };
    let errno = std::io::Error::last_os_error().raw_os_error();
    assert_eq!(
        (r, errno),
        (-1, Some(libc::EPERM)),
        "swapon was not stopped at the open"
    );
    let ev = next_event(&rx);
    assert_eq!(ev.verdict, "deny");
    assert_eq!(ev.flags, None);
    assert!(
        ev.flags_text.as_deref().unwrap().starts_with("unknown"),
        "{ev:?}"
    );
    assert_eq!(guard.stats().undecidable, before.undecidable + 1);

    // 8. Counters, then stop: the kernel lets everything through again.
    let stats = guard.stop();
    assert!(!stats.running);
    assert_eq!(stats.denied, 5, "{stats:?}");
    assert_eq!(stats.allowed, 2, "{stats:?}");
    assert_eq!(stats.undecidable, 1, "{stats:?}");
    assert_eq!(stats.errors, 0, "{stats:?}");
    assert_eq!(stats.unreported, 0, "{stats:?}");
    assert_eq!(
        stats.decisions,
        stats.reads + stats.allowed + stats.denied,
        "{stats:?}"
    );
    let (_, out) = sh(Path::new("/bin/sh"), &format!("echo x >> {model}"));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(s.model()).unwrap(), b"weights v1\ny\nx\n");
    // The decision thread is gone, and with it the sender.
    assert!(rx.recv_timeout(Duration::from_secs(1)).is_err());
}

#[test]
fn answers_every_open_under_concurrency() {
    root();
    let s = Scene::new();
    let (tx, rx) = channel();
    let guard = FanotifyGuard::start(&s.targets(), tx).unwrap();
    let threads = 4;
    let rounds = 250;
    let started = Instant::now();
    let (done_tx, done_rx) = mpsc::channel();
    for _ in 0..threads {
        let model = s.model();
        let done = done_tx.clone();
        std::thread::spawn(move || {
            let (mut read_ok, mut write_denied) = (0, 0);
            for _ in 0..rounds {
                if std::fs::read(&model).is_ok() {
                    read_ok += 1;
                }
                let w = std::fs::OpenOptions::new().append(true).open(&model);
                if w.is_err_and(|e| e.raw_os_error() == Some(libc::EPERM)) {
                    write_denied += 1;
                }
            }
            done.send((read_ok, write_denied)).unwrap();
        });
    }
    for _ in 0..threads {
        let r = done_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("an opener hung: a permission event went unanswered");
        assert_eq!(r, (rounds, rounds));
    }
    let stats = guard.stop();
    let n = (threads * rounds) as u64;
    let events: Vec<SecurityEvent> = rx.try_iter().collect();
    assert!(
        events.iter().all(|e| e.flags.is_some()),
        "undecidable opens: {:?}",
        events.iter().find(|e| e.flags.is_none())
    );
    assert_eq!((stats.reads, stats.denied), (n, n), "{stats:?}");
    assert_eq!(stats.errors, 0, "{stats:?}");
    assert_eq!(events.len() as u64, n);
    eprintln!("{} opens answered in {:?}", 2 * n, started.elapsed());
}

#[test]
fn a_file_that_cannot_be_marked_is_named() {
    root();
    let s = Scene::new();
    let mut targets = s.targets();
    let gone = s.path("gone.onnx");
    targets.files.push((gone.clone(), targets.files[0].1));
    let (tx, _rx) = channel();
    let Err(e) = FanotifyGuard::start(&targets, tx) else {
        panic!("started with a missing protected file");
    };
    assert!(!e.is_unavailable());
    assert!(matches!(&e, FanotifyError::Mark { path, .. } if *path == gone));
    assert!(e.to_string().contains("gone.onnx"), "{e}");
    // Nothing stays marked: the model is writable.
    let (_, out) = sh(
        Path::new("/bin/sh"),
        &format!("echo x >> {}", s.model().display()),
    );
    assert!(out.status.success(), "{}", stderr(&out));
}
