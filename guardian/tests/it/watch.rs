//! The notification rung on this machine's kernel: real fanotify events
//! from real processes changing real files, no mocks.
//!
//! They need root (`fanotify_init` needs CAP_SYS_ADMIN) and refuse to pass
//! without it. Each test watches only files of its own temporary
//! directory, so they run beside each other and beside the other host
//! tests.

// Tests panic on purpose: the failing line is the report.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    time::Duration,
};

use crate::rungs;

use rungs::{Receiver, Scene, channel};

use guardian::{
    events::SecurityEvent,
    fanotify::notify::{HOOK_ATTRIB, HOOK_MODIFY, HOOK_MOVE_SELF, WatchError, Watcher},
    guard::inode_key,
};

fn root() {
    assert!(
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() } == 0,
        "the fanotify watch tests mark files and must run as root (./test.sh does)"
    );
}

fn getpid() -> u32 {
    std::process::id()
}

fn ino(p: impl AsRef<Path>) -> u64 {
    std::fs::metadata(p).unwrap().ino()
}

/// A program by name from the usual directories, so that its inode can be
/// compared with the one an event reports.
fn tool(name: &str) -> PathBuf {
    ["/usr/bin", "/bin", "/usr/sbin", "/sbin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{name} not found"))
}

/// Run `name args`, which must succeed; its pid.
fn run(name: &str, args: &[&Path]) -> (u32, PathBuf) {
    let prog = tool(name);
    let child = Command::new(&prog)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{name} {args:?}: {:?}", out.status);
    (pid, prog)
}

/// A shell that runs `script`, then waits for its stdin to close, so that
/// it is still there (with its `/proc/PID/exe`) when the event is read.
struct Held {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<std::process::ChildStdout>,
}

impl Held {
    fn spawn(shell: &Path, script: &str) -> Self {
        let mut child = Command::new(shell)
            .arg("-c")
            .arg(format!("{script}\nread _done || :"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Self {
            child,
            stdin,
            stdout,
        }
    }
    fn pid(&self) -> u32 {
        self.child.id()
    }
    fn line(&mut self) -> String {
        let mut l = String::new();
        self.stdout.read_line(&mut l).unwrap();
        l
    }
    fn say(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(text.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }
    fn release(mut self) {
        drop(self.stdin.take());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{status:?}");
    }
}

fn next_event(rx: &Receiver<SecurityEvent>) -> SecurityEvent {
    rx.recv_timeout(Duration::from_secs(10))
        .expect("no event from the watch thread within 10 s")
}

fn no_event(rx: &Receiver<SecurityEvent>) {
    if let Ok(ev) = rx.recv_timeout(Duration::from_millis(500)) {
        panic!("unexpected event {ev:?}");
    }
}

/// The fields every event of a protected file has, whoever changed it.
fn check_common(ev: &SecurityEvent, event: &str, verdict: &str, file: &Path) {
    assert_eq!(ev.event, event, "{ev:?}");
    assert_eq!(ev.verdict, verdict, "{ev:?}");
    assert_eq!(ev.mode, "detect");
    assert_eq!(ev.file.as_deref(), Some(&*file.display().to_string()));
    assert!(ev.response.is_none());
    assert!(ev.time.ends_with('Z'), "{}", ev.time);
}

/// A process that exited before its event was read (a zombie not yet
/// reaped included: its `/proc/PID/exe` is gone, its status is not) is
/// reported without its executable; if it was still there, it must be the
/// right one. On this machine the short-lived tools are always gone.
fn exe_if_known(ev: &SecurityEvent, prog: &Path) {
    if ev.exe_ino != 0 {
        assert_eq!(ev.exe_ino, ino(prog), "{ev:?}");
    } else {
        assert_eq!(ev.exe, None, "{ev:?}");
    }
}

#[test]
fn reports_a_write_through_a_descriptor_opened_before_start() {
    root();
    let s = Scene::new();
    let model = s.model().display().to_string();
    // The shell opens the model for appending before there is a watcher,
    // then writes when told to.
    let mut sh = Held::spawn(
        Path::new("/bin/sh"),
        &format!("exec 3>>{model}; echo ready; read go; echo tamper >&3"),
    );
    assert_eq!(sh.line(), "ready\n");
    let (tx, rx) = channel();
    let w = Watcher::start(&s.targets(), tx).unwrap();
    assert_eq!(w.marked(), 2);
    no_event(&rx);
    sh.say("go\n");
    let ev = next_event(&rx);
    check_common(&ev, "file_write", "alert", &s.model());
    assert_eq!(ev.hook, HOOK_MODIFY);
    assert_eq!((ev.pid, ev.tid), (sh.pid(), sh.pid()));
    assert_eq!(ev.ppid, getpid());
    assert_eq!((ev.uid, ev.gid), (0, 0));
    assert_eq!(ev.exe_ino, ino("/bin/sh"));
    assert!(!ev.comm.is_empty());
    assert_eq!(ev.ino, Some(ino(s.model())));
    assert_eq!(ev.flags_text.as_deref(), Some("size 11→18"));
    sh.release();
    assert_eq!(std::fs::read(s.model()).unwrap(), b"weights v1\ntamper\n");
    no_event(&rx);
    let stats = w.stop();
    assert!(!stats.running);
    assert_eq!((stats.events, stats.alerts), (1, 1), "{stats:?}");
    assert_eq!(
        stats.errors + stats.unknown + stats.overflows,
        0,
        "{stats:?}"
    );
    // The thread is gone, and with it the sender.
    assert!(rx.recv_timeout(Duration::from_secs(1)).is_err());
}

#[test]
fn reports_truncate_attributes_links_and_renames() {
    root();
    let s = Scene::new();
    let (tx, rx) = channel();
    let w = Watcher::start(&s.targets(), tx).unwrap();
    let model = s.model();
    let model_ino = ino(&model);

    // truncate(2) by path: a write.
    let (pid, prog) = run("truncate", &[Path::new("-s"), Path::new("4"), &model]);
    let ev = next_event(&rx);
    check_common(&ev, "file_write", "alert", &model);
    assert_eq!((ev.hook.as_str(), ev.pid), (HOOK_MODIFY, pid));
    assert_eq!(ev.flags_text.as_deref(), Some("size 11→4"));
    exe_if_known(&ev, &prog);

    // ftruncate(2) by the watching process itself: fanotify reports the
    // group owner's own changes like anyone's.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&model)
        .unwrap()
        .set_len(2)
        .unwrap();
    let ev = next_event(&rx);
    check_common(&ev, "file_write", "alert", &model);
    assert_eq!(ev.pid, getpid());
    assert_eq!(ev.exe_ino, ino("/proc/self/exe"));
    assert_eq!(ev.flags_text.as_deref(), Some("size 4→2"));

    // chmod, chown, touch: attribute changes, told apart by fstat.
    let (pid, prog) = run("chmod", &[Path::new("666"), &model]);
    let ev = next_event(&rx);
    check_common(&ev, "file_setattr", "alert", &model);
    assert_eq!((ev.hook.as_str(), ev.pid), (HOOK_ATTRIB, pid));
    assert_eq!(ev.flags_text.as_deref(), Some("mode 0644→0666"));
    exe_if_known(&ev, &prog);

    let (pid, _) = run("chown", &[Path::new("1234:1235"), &model]);
    let ev = next_event(&rx);
    check_common(&ev, "file_setattr", "alert", &model);
    assert_eq!(ev.pid, pid);
    assert_eq!(ev.flags_text.as_deref(), Some("uid 0→1234, gid 0→1235"));

    let (pid, _) = run("touch", &[&model]);
    let ev = next_event(&rx);
    check_common(&ev, "file_setattr", "alert", &model);
    assert_eq!(ev.pid, pid);
    assert!(
        ev.flags_text.as_deref().unwrap().starts_with("no change"),
        "{ev:?}"
    );

    // A second name, then its removal.
    let link = s.path("link.onnx");
    let (pid, prog) = run("ln", &[&model, &link]);
    let ev = next_event(&rx);
    check_common(&ev, "file_link", "alert", &model);
    assert_eq!((ev.hook.as_str(), ev.pid), (HOOK_ATTRIB, pid));
    assert_eq!(ev.flags_text.as_deref(), Some("nlink 1→2"));
    exe_if_known(&ev, &prog);

    let (pid, prog) = run("rm", &[&link]);
    let ev = next_event(&rx);
    check_common(&ev, "file_unlink", "alert", &model);
    assert_eq!(ev.pid, pid);
    assert_eq!(ev.flags_text.as_deref(), Some("nlink 2→1"));
    exe_if_known(&ev, &prog);

    // Renamed away: the mark follows the inode; the event says where to.
    let moved = s.path("moved.onnx");
    let (pid, prog) = run("mv", &[&model, &moved]);
    let ev = next_event(&rx);
    check_common(&ev, "file_rename", "alert", &model);
    assert_eq!((ev.hook.as_str(), ev.pid), (HOOK_MOVE_SELF, pid));
    assert_eq!(ev.name.as_deref(), Some(&*moved.display().to_string()));
    assert_eq!(ev.ino, Some(model_ino));
    exe_if_known(&ev, &prog);

    // Another file renamed over it: the protected inode loses its last
    // name, which fanotify reports as an attribute change.
    let other = s.path("other.onnx");
    std::fs::write(&other, b"evil\n").unwrap();
    let (pid, prog) = run("mv", &[&other, &moved]);
    let ev = next_event(&rx);
    check_common(&ev, "file_unlink", "alert", &model);
    assert_eq!((ev.hook.as_str(), ev.pid), (HOOK_ATTRIB, pid));
    assert_eq!(ev.flags_text.as_deref(), Some("nlink 1→0"));
    assert_eq!(ev.ino, Some(model_ino));
    exe_if_known(&ev, &prog);

    no_event(&rx);
    let stats = w.stop();
    assert_eq!((stats.events, stats.alerts), (9, 9), "{stats:?}");
    assert_eq!(
        stats.errors + stats.unknown + stats.overflows,
        0,
        "{stats:?}"
    );
}

#[test]
fn an_allowed_writer_is_allow_and_guardian_on_its_own_files_is_silent() {
    root();
    let s = Scene::new();
    let (tx, rx) = channel();
    let w = Watcher::start(&s.targets(), tx).unwrap();

    // The allowlisted copy of the shell appends to the model: `allow`.
    let sh = Held::spawn(&s.writer(), &format!("echo y >> {}", s.model().display()));
    let ev = next_event(&rx);
    check_common(&ev, "file_write", "allow", &s.model());
    assert_eq!(ev.pid, sh.pid());
    assert_eq!(ev.exe.as_deref(), Some(&*s.writer().display().to_string()));
    assert_eq!(ev.exe_ino, ino(s.writer()));
    sh.release();

    // A model writer may not touch guardian's own file.
    let sh = Held::spawn(&s.writer(), &format!("echo z >> {}", s.own().display()));
    let ev = next_event(&rx);
    check_common(&ev, "file_write", "alert", &s.own());
    assert_eq!(ev.pid, sh.pid());
    sh.release();

    // guardian (its stand-in executable) may, without an event.
    let sh = Held::spawn(&s.guardian(), &format!("echo z >> {}", s.own().display()));
    no_event(&rx);
    sh.release();
    assert_eq!(std::fs::read(s.own()).unwrap(), b"[guard]\nz\nz\n");

    let stats = w.stop();
    assert_eq!(
        (stats.events, stats.allowed, stats.alerts, stats.own),
        (3, 1, 1, 1),
        "{stats:?}"
    );
    assert_eq!(
        stats.errors + stats.unknown + stats.overflows,
        0,
        "{stats:?}"
    );
}

#[test]
fn reads_and_unprotected_files_are_silent() {
    root();
    let s = Scene::new();
    let (tx, rx) = channel();
    let w = Watcher::start(&s.targets(), tx).unwrap();
    let model = s.model().display().to_string();
    let notes = s.notes().display().to_string();

    // Reads of the model, and an open for writing that writes nothing.
    run("cat", &[&s.model()]);
    assert_eq!(std::fs::read(s.model()).unwrap(), b"weights v1\n");
    drop(
        std::fs::OpenOptions::new()
            .append(true)
            .open(s.model())
            .unwrap(),
    );
    // Everything to the unprotected file beside it.
    let mut sh = Held::spawn(
        Path::new("/bin/sh"),
        &format!(
            "cat {model} > /dev/null; echo x >> {notes}; chmod 600 {notes}; ln {notes} {notes}.2; \
             rm {notes}.2; mv {notes} {notes}.3; : > {notes}.3; echo done"
        ),
    );
    assert_eq!(sh.line(), "done\n");
    no_event(&rx);
    sh.release();
    let stats = w.stop();
    assert_eq!(stats.events, 0, "{stats:?}");
    assert_eq!(
        stats.errors + stats.unknown + stats.overflows,
        0,
        "{stats:?}"
    );
}

#[test]
fn a_protected_file_that_vanished_is_named() {
    root();
    let s = Scene::new();
    let gone = s.path("gone.onnx");
    std::fs::write(&gone, b"old weights\n").unwrap();
    // Resolved while it was there, gone by the time the watcher starts.
    let mut targets = s.targets();
    let key = inode_key(&std::fs::metadata(&gone).unwrap());
    targets.files.insert(1, (gone.clone(), key));
    std::fs::remove_file(&gone).unwrap();
    let (tx, _rx) = channel();
    let Err(e) = Watcher::start(&targets, tx) else {
        panic!("started with a missing protected file");
    };
    assert!(!e.is_unavailable());
    assert!(
        matches!(&e, WatchError::Mark { path, .. } if *path == gone),
        "{e:?}"
    );
    assert!(e.to_string().contains("gone.onnx"), "{e}");
}
