//! Shared by the fanotify rungs' tests (`fanotify.rs`, `watch.rs`): a
//! scratch directory with a model, one of guardian's own files and two
//! private copies of the shell.

#![allow(dead_code)]

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use guardian::guard::{Targets, inode_key};

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
