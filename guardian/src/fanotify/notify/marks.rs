//! The notification rung's group and its marks: `fanotify_init` with
//! the flags the rung needs (and why a kernel refuses them), one inode mark
//! per protected file through an `O_PATH` descriptor kept open, and the
//! marking of a whole target set that a refresh reuses. Kept apart from
//! the reader ([`super::reader`]), which only looks marks up.

use std::{
    collections::HashMap,
    fs::File,
    io,
    os::{
        fd::{AsRawFd as _, OwnedFd},
        unix::fs::OpenOptionsExt as _,
    },
    path::{Path, PathBuf},
};

use guardian_common::InodeKey;

use super::{FileState, WatchError};
use crate::fanotify::{
    fid::{fsid_of, handle_of},
    os_err, owned,
};
use crate::targets::{Targets, inode_key};

/// One protected inode and what the reader knows about it.
pub(super) struct Watched {
    /// Index in `Targets::files`.
    pub(super) id: usize,
    pub(super) path: PathBuf,
    pub(super) key: InodeKey,
    pub(super) fsid: [u8; 8],
    /// An `O_PATH` descriptor to the inode, held for the watcher's
    /// lifetime: `fstat` through it says what a `FAN_ATTRIB` changed, and
    /// `/proc/self/fd/N` where a `FAN_MOVE_SELF` took it.
    pub(super) file: File,
    pub(super) state: FileState,
    /// Its file handle: type and bytes, as FID records carry it.
    pub(super) handle: (i32, Vec<u8>),
}

/// `fanotify_init` with the flags the rung needs, with a reason when the
/// kernel or the caller cannot.
pub(super) fn init_group() -> Result<OwnedFd, WatchError> {
    // FAN_REPORT_FID: without it, FAN_ATTRIB, FAN_MOVE_SELF and
    // FAN_DELETE_SELF cannot be asked for (they have no open file to hand
    // over). No FAN_UNLIMITED_QUEUE: an overflow costs events, not the
    // machine's memory, and is counted.
    let flags = libc::FAN_CLASS_NOTIF
        | libc::FAN_CLOEXEC
        | libc::FAN_NONBLOCK
        | libc::FAN_REPORT_FID
        | libc::FAN_UNLIMITED_MARKS;
    let event_flags = (libc::O_RDONLY | libc::O_CLOEXEC) as libc::c_uint;
    // SAFETY: plain system call, no pointers.
    let fd = unsafe { libc::fanotify_init(flags, event_flags) };
    owned(fd).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOSYS) => {
            WatchError::Unavailable(format!("kernel built without CONFIG_FANOTIFY ({e})"))
        }
        Some(libc::EPERM) => WatchError::Unavailable(format!(
            "fanotify_init needs CAP_SYS_ADMIN; run as root ({e})"
        )),
        Some(libc::EINVAL) => {
            // Tell a kernel without FAN_REPORT_FID from one refusing even
            // the plainest group.
            let plain = libc::FAN_CLASS_NOTIF | libc::FAN_CLOEXEC;
            // SAFETY: as above.
            let probe = owned(unsafe { libc::fanotify_init(plain, event_flags) });
            WatchError::Unavailable(if probe.is_ok() {
                format!("kernel older than 5.1: no FAN_REPORT_FID ({e})")
            } else {
                format!("fanotify_init refuses a notification group ({e})")
            })
        }
        _ => WatchError::Init(e),
    })
}

/// Open a protected file with `O_PATH`, learn its handle and filesystem
/// id, and put the inode mark on it.
fn mark(group: &OwnedFd, id: usize, path: &Path, mask: u64) -> Result<Watched, WatchError> {
    let err = |what| {
        move |source| WatchError::Mark {
            path: path.to_owned(),
            what,
            source,
        }
    };
    // One descriptor for everything that follows ties the handle, the
    // stat and the mark to the same inode, whatever happens to the path.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(path)
        .map_err(err("cannot open it (O_PATH) to watch it"))?;
    let meta = file.metadata().map_err(err("cannot stat it"))?;
    if !meta.is_file() {
        return Err(err("cannot watch it")(io::Error::other(
            "not a regular file",
        )));
    }
    let handle = handle_of(&file).map_err(err(
        "name_to_handle_at (fanotify FID events need a filesystem that encodes file handles)",
    ))?;
    let fsid = fsid_of(&file).map_err(err("fstatfs"))?;
    // fanotify_mark cannot take an O_PATH descriptor as the object (it
    // wants a file it can fdget()), but the magic link to it resolves to
    // exactly its inode.
    let proc_path = std::ffi::CString::new(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .map_err(|e| err("fanotify_mark")(io::Error::other(e)))?;
    // SAFETY: valid descriptor and C string.
    let r = unsafe {
        libc::fanotify_mark(
            group.as_raw_fd(),
            libc::FAN_MARK_ADD | libc::FAN_MARK_INODE,
            mask,
            libc::AT_FDCWD,
            proc_path.as_ptr(),
        )
    };
    if r != 0 {
        let e = os_err();
        return Err(match e.raw_os_error() {
            Some(libc::EPERM) => WatchError::Unavailable(format!(
                "fanotify mark on {} refused: needs CAP_SYS_ADMIN ({e})",
                path.display()
            )),
            Some(libc::ENODEV) => err(
                "fanotify_mark (the filesystem has no fsid, which FID reporting needs before 6.8)",
            )(e),
            Some(libc::EOPNOTSUPP) | Some(libc::EXDEV) => err(
                "fanotify_mark (FID reporting is not supported on this filesystem or subvolume)",
            )(e),
            _ => err("fanotify_mark FAN_MODIFY|FAN_ATTRIB|FAN_MOVE_SELF|FAN_DELETE_SELF")(e),
        });
    }
    let w = Watched {
        id,
        path: path.to_owned(),
        key: inode_key(&meta),
        fsid,
        file,
        state: FileState::of(&meta),
        handle,
    };
    Ok(w)
}

/// Take the marks of `mask` off a watched inode, through its descriptor.
pub(super) fn unmark(group: &OwnedFd, w: &Watched, mask: u64) -> io::Result<()> {
    let proc_path = std::ffi::CString::new(format!("/proc/self/fd/{}", w.file.as_raw_fd()))
        .map_err(io::Error::other)?;
    // SAFETY: valid descriptor and C string.
    let r = unsafe {
        libc::fanotify_mark(
            group.as_raw_fd(),
            libc::FAN_MARK_REMOVE | libc::FAN_MARK_INODE,
            mask,
            libc::AT_FDCWD,
            proc_path.as_ptr(),
        )
    };
    if r == 0 { Ok(()) } else { Err(os_err()) }
}

/// Index watched inodes by file handle.
pub(super) fn index(watched: &[Watched]) -> HashMap<(i32, Vec<u8>), Vec<usize>> {
    let mut handles: HashMap<(i32, Vec<u8>), Vec<usize>> = HashMap::new();
    for (i, w) in watched.iter().enumerate() {
        handles.entry(w.handle.clone()).or_default().push(i);
    }
    handles
}

/// Mark what `targets` protect: each inode once (a second name is judged
/// as the first entry), reusing the entries of `known` (already marked)
/// and marking the rest. On an error the marks placed here are taken off
/// again.
pub(super) fn mark_all(
    group: &OwnedFd,
    targets: &Targets,
    mask: u64,
    known: &mut HashMap<InodeKey, Watched>,
) -> Result<Vec<Watched>, WatchError> {
    let mut watched: Vec<Watched> = Vec::new();
    let mut fresh = Vec::new();
    for (id, (path, expected)) in targets.files.iter().enumerate() {
        let w = match known.remove(expected) {
            Some(mut w) => {
                w.id = id;
                w.path = path.clone();
                w
            }
            None => match mark(group, id, path, mask) {
                Ok(w) => {
                    fresh.push(w.key);
                    w
                }
                Err(e) => {
                    // Back as they were: the entries reused stay known
                    // (and marked), the marks placed here come off.
                    for w in watched {
                        if fresh.contains(&w.key) {
                            let _ = unmark(group, &w, mask);
                        } else {
                            known.insert(w.key, w);
                        }
                    }
                    return Err(e);
                }
            },
        };
        if w.key != *expected {
            log::warn!(
                "protected file {} was replaced since it was resolved; watching the file there now",
                path.display()
            );
        }
        if let Some(first) = watched.iter().find(|o| o.key == w.key) {
            // The same inode twice (a second name): one mark, judged as
            // the first entry.
            log::debug!(
                "{} is the inode of {}; watched once",
                path.display(),
                first.path.display()
            );
            continue;
        }
        watched.push(w);
    }
    Ok(watched)
}
