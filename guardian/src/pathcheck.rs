//! The path check: the names the service opens still lead where guardian
//! measured.
//!
//! The kernel hooks guard inodes, and under BPF LSM also the directories
//! and symlinks on a protected path and the mounts on it (see
//! `guardian-ebpf/src/mount.rs`). Where a hook cannot deny (no BPF LSM),
//! or cannot see (a mount moved away with `mount(2)`'s `MS_MOVE`, which
//! names its source only as a string; a `pivot_root`), the change is found
//! here instead, after the fact, on the agent's status timer:
//!
//! | watched | taken at start | a change is |
//! |---|---|---|
//! | each directory and symlink on a protected path, each directory of a protected tree | its inode (not following a final symlink) and its mount id (`statx`, `STATX_MNT_ID`) | another inode or another mount: renamed away and replaced, replaced by a symlink, mounted over, its mount moved or unmounted |
//! | each protected model file | its mount id | a mount over the file (a bind mount of a forged one) |
//!
//! A model file's own inode is not compared: an allowed writer replacing
//! it by rename changes it legitimately, and the file hooks report that
//! change with its writer. Each difference is one `path_changed` event
//! (verdict `alert`), reported once until the path changes again; the
//! daemon records it as tamper evidence and re-measures the models below
//! the path, so the next quote shows what the service would now load.

use std::{
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
    time::SystemTime,
};

use guardian_common::{InodeKey, ProtectedFile};

use crate::{
    events::SecurityEvent,
    hooks::{Mode, Verdict},
    targets::{Targets, inode_key},
};

/// Where a name leads: its inode and the mount it is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place {
    /// The inode (zero when the name does not resolve).
    pub key: InodeKey,
    /// `stx_mnt_id`, or 0 where the kernel does not report it.
    pub mnt_id: u64,
}

/// One watched name.
#[derive(Clone, Debug)]
struct Watched {
    path: PathBuf,
    /// Compare the inode, not only the mount.
    by_inode: bool,
    expected: Place,
    /// What was last reported, so each change is one event.
    last: Place,
}

/// The names to watch and where they led at start.
#[derive(Debug, Default)]
pub struct PathCheck {
    watched: Vec<Watched>,
    /// Events found, in total.
    pub changes: u64,
}

/// Where `path` leads now, without following a final symlink when `link`
/// is true. `None`: the name does not resolve.
pub fn place(path: &Path, link: bool) -> Option<Place> {
    let meta = if link {
        std::fs::symlink_metadata(path)
    } else {
        std::fs::metadata(path)
    }
    .ok()?;
    Some(Place {
        key: inode_key(&meta),
        mnt_id: mount_id(path, link).unwrap_or(0),
    })
}

/// `stx_mnt_id` of `path` (Linux 5.8).
fn mount_id(path: &Path, link: bool) -> Option<u64> {
    let mut c = path.as_os_str().as_bytes().to_vec();
    c.push(0);
    // SAFETY: statx is given a NUL-terminated path and a zeroed output
    // struct of the right type; it writes only into that struct.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    let flags = if link { libc::AT_SYMLINK_NOFOLLOW } else { 0 };
    // SAFETY: as above.
    let rc = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            c.as_ptr().cast(),
            flags,
            libc::STATX_MNT_ID,
            &mut stx,
        )
    };
    (rc == 0 && stx.stx_mask & libc::STATX_MNT_ID != 0).then_some(stx.stx_mnt_id)
}

impl PathCheck {
    /// Take where every guarded name leads now.
    pub fn new(targets: &Targets) -> Self {
        let mut watched = Vec::new();
        for (path, key, flags) in &targets.dirs {
            if flags & (ProtectedFile::PATH | ProtectedFile::TREE) == 0 {
                continue;
            }
            let mnt_id = mount_id(path, true).unwrap_or(0);
            let p = Place { key: *key, mnt_id };
            watched.push(Watched {
                path: path.clone(),
                by_inode: true,
                expected: p,
                last: p,
            });
        }
        for (path, key) in &targets.files[..targets.own_from] {
            let p = Place {
                key: *key,
                mnt_id: mount_id(path, false).unwrap_or(0),
            };
            watched.push(Watched {
                path: path.clone(),
                by_inode: false,
                expected: p,
                last: p,
            });
        }
        Self {
            watched,
            changes: 0,
        }
    }

    /// How many names are watched.
    pub fn len(&self) -> usize {
        self.watched.len()
    }

    /// Nothing to watch.
    pub fn is_empty(&self) -> bool {
        self.watched.is_empty()
    }

    /// Look at every name again: one event per name whose place changed
    /// since it was last reported.
    pub fn check(&mut self) -> Vec<SecurityEvent> {
        let mut out = Vec::new();
        for w in &mut self.watched {
            let now = place(&w.path, w.by_inode).unwrap_or(Place {
                key: InodeKey::default(),
                mnt_id: 0,
            });
            let differs = |a: &Place, b: &Place| {
                (w.by_inode && a.key != b.key)
                    || (a.mnt_id != b.mnt_id && a.mnt_id != 0 && b.mnt_id != 0)
                    || (a.key.ino == 0) != (b.key.ino == 0)
            };
            if !differs(&now, &w.last) {
                continue;
            }
            w.last = now;
            let what = if now.key.ino == 0 {
                "no longer resolves".to_owned()
            } else if w.by_inode && now.key != w.expected.key {
                format!(
                    "now leads to inode {}:{}:{} (guarded: {}:{}:{})",
                    now.key.major(),
                    now.key.minor(),
                    now.key.ino,
                    w.expected.key.major(),
                    w.expected.key.minor(),
                    w.expected.key.ino
                )
            } else if now.mnt_id != w.expected.mnt_id {
                format!(
                    "is now on mount {} (was {}): something was mounted, moved or unmounted on the path",
                    now.mnt_id, w.expected.mnt_id
                )
            } else {
                "leads where it did at start again".to_owned()
            };
            let back = !differs(&now, &w.expected);
            self.changes += u64::from(!back);
            out.push(SecurityEvent {
                time: humantime::format_rfc3339_micros(SystemTime::now()).to_string(),
                event: "path_changed".to_owned(),
                verdict: if back { Verdict::Allow } else { Verdict::Alert },
                mode: Mode::Detect,
                hook: "agent/path-check".to_owned(),
                file: Some(w.path.display().to_string()),
                dev: Some(format!("{}:{}", now.key.major(), now.key.minor())),
                ino: Some(now.key.ino),
                name: Some(what),
                ..SecurityEvent::default()
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets_for(dir: &Path) -> Targets {
        let cfg = crate::config::GuardConfig {
            protected: vec![dir.join("models")],
            ..Default::default()
        };
        Targets::resolve(&cfg, &Default::default(), &[]).expect("resolve")
    }

    #[test]
    fn a_renamed_and_replaced_directory_is_one_event() {
        let t = tempfile::tempdir().expect("tempdir");
        let models = t.path().join("models");
        std::fs::create_dir(&models).expect("mkdir");
        std::fs::write(models.join("m.onnx"), b"weights").expect("write");
        let targets = targets_for(t.path());
        let mut check = PathCheck::new(&targets);
        assert!(check.len() >= 2, "the tree root and the file at least");
        assert!(check.check().is_empty(), "nothing changed yet");

        std::fs::rename(&models, t.path().join("old")).expect("rename");
        std::fs::create_dir(&models).expect("mkdir");
        std::fs::write(models.join("m.onnx"), b"forged").expect("write");
        let ev = check.check();
        let root: Vec<_> = ev
            .iter()
            .filter(|e| e.file.as_deref() == Some(&*models.display().to_string()))
            .collect();
        assert_eq!(root.len(), 1, "{ev:?}");
        assert_eq!(root[0].event, "path_changed");
        assert_eq!(root[0].verdict, "alert");
        assert!(
            root[0]
                .name
                .as_deref()
                .unwrap_or("")
                .contains("now leads to inode"),
            "{:?}",
            root[0].name
        );
        assert!(check.check().is_empty(), "reported once");
        assert!(check.changes >= 1);
    }

    #[test]
    fn a_symlink_swapped_for_the_directory_is_seen() {
        let t = tempfile::tempdir().expect("tempdir");
        let models = t.path().join("models");
        std::fs::create_dir(&models).expect("mkdir");
        std::fs::write(models.join("m.onnx"), b"weights").expect("write");
        let mut check = PathCheck::new(&targets_for(t.path()));
        let evil = t.path().join("evil");
        std::fs::create_dir(&evil).expect("mkdir");
        std::fs::write(evil.join("m.onnx"), b"forged").expect("write");
        std::fs::rename(&models, t.path().join("old")).expect("rename");
        std::os::unix::fs::symlink(&evil, &models).expect("symlink");
        let ev = check.check();
        assert!(
            ev.iter().any(
                |e| e.file.as_deref() == Some(&*models.display().to_string())
                    && e.verdict == "alert"
            ),
            "{ev:?}"
        );
    }

    #[test]
    fn a_symlink_on_the_configured_path_is_guarded_by_its_own_inode() {
        let t = tempfile::tempdir().expect("tempdir");
        let real = t.path().join("real");
        std::fs::create_dir(&real).expect("mkdir");
        std::fs::write(real.join("m.onnx"), b"weights").expect("write");
        std::os::unix::fs::symlink(&real, t.path().join("models")).expect("symlink");
        let targets = targets_for(t.path());
        let link = t.path().join("models");
        let meta = std::fs::symlink_metadata(&link).expect("lstat");
        let entry = targets
            .dirs
            .iter()
            .find(|(_, k, _)| *k == inode_key(&meta))
            .expect("the symlink is guarded");
        assert_ne!(entry.2 & ProtectedFile::PATH, 0);
        // The real directory is the tree's root; the directories above
        // both are on the path.
        let real_meta = std::fs::metadata(&real).expect("stat");
        let root = targets
            .dirs
            .iter()
            .find(|(_, k, _)| *k == inode_key(&real_meta))
            .expect("the real directory is guarded");
        assert_eq!(root.2 & ProtectedFile::TREE, ProtectedFile::TREE);
        let parent = std::fs::metadata(t.path()).expect("stat");
        assert!(
            targets
                .dirs
                .iter()
                .any(|(_, k, f)| *k == inode_key(&parent) && f & ProtectedFile::PATH != 0),
            "the directory holding both is on the path"
        );
        // Retargeting the link is a change.
        let mut check = PathCheck::new(&targets);
        // (Made beside it and renamed over it: a freed inode number is
        // often handed out again at once.)
        std::os::unix::fs::symlink(t.path(), t.path().join("next")).expect("symlink");
        std::fs::rename(t.path().join("next"), &link).expect("rename");
        assert!(!check.check().is_empty());
    }
}
