//! Shared by the fanotify rungs' tests (`fanotify.rs`, `watch.rs`): a
//! scratch directory with a model, one of guardian's own files and two
//! private copies of the shell; the rungs' event queue, read from a test
//! thread.

use std::{
    cell::RefCell,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use guardian::{
    events::SecurityEvent,
    fanotify::EventSender,
    guard::{Targets, inode_key},
};

/// A queue for a rung's events, as the daemon makes it (bounded, deep
/// enough for every test here to leave its events unread for a while).
pub fn channel() -> (EventSender, Receiver<SecurityEvent>) {
    let (tx, rx) = tokio::sync::mpsc::channel(guardian::daemon::RUNG_QUEUE);
    (tx, Receiver(RefCell::new(rx)))
}

/// The receiving end, read the way a test thread reads (with a timeout,
/// or whatever is there).
pub struct Receiver<T>(RefCell<tokio::sync::mpsc::Receiver<T>>);

/// Nothing came in time, or nothing will come.
#[derive(Debug)]
pub struct Timeout;

impl<T> Receiver<T> {
    /// The next event, waiting up to `wait`; an error if none came or the
    /// senders are gone.
    pub fn recv_timeout(&self, wait: Duration) -> Result<T, Timeout> {
        let deadline = Instant::now() + wait;
        loop {
            match self.0.borrow_mut().try_recv() {
                Ok(v) => return Ok(v),
                Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => return Err(Timeout),
                Err(tokio::sync::mpsc::error::TryRecvError::Empty) => {}
            }
            if Instant::now() >= deadline {
                return Err(Timeout);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Every event waiting now.
    pub fn try_iter(&self) -> impl Iterator<Item = T> + '_ {
        std::iter::from_fn(|| self.0.borrow_mut().try_recv().ok())
    }
}

/// A model, one of guardian's own files, an unprotected file beside them,
/// and two private copies of the shell: one on the writer allowlist, one
/// standing in for guardian's own executable.
pub struct Scene {
    pub dir: tempfile::TempDir,
}

impl Scene {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let s = Self { dir };
        for (p, text) in [
            (s.model(), &b"weights v1\n"[..]),
            (s.own(), b"[guard]\n"),
            (s.notes(), b"notes\n"),
        ] {
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        for sh in ["writer-sh", "guardian-sh"] {
            // Follows /bin/sh to the real shell; the copy is a new inode.
            std::fs::copy("/bin/sh", s.path(sh)).unwrap();
        }
        s
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    pub fn model(&self) -> PathBuf {
        self.path("model.onnx")
    }
    pub fn own(&self) -> PathBuf {
        self.path("guardian.toml")
    }
    pub fn notes(&self) -> PathBuf {
        self.path("notes.txt")
    }
    pub fn writer(&self) -> PathBuf {
        self.path("writer-sh")
    }
    pub fn guardian(&self) -> PathBuf {
        self.path("guardian-sh")
    }
    pub fn targets(&self) -> Targets {
        let key = |p: &Path| inode_key(&std::fs::metadata(p).unwrap());
        Targets {
            files: vec![
                (self.model(), key(&self.model())),
                (self.own(), key(&self.own())),
            ],
            own_from: 1,
            writers: vec![(self.writer(), key(&self.writer()))],
            self_exe: key(&self.guardian()),
            ..Targets::default()
        }
    }
}
