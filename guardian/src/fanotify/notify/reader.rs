//! The notification rung's reader thread: each record read from the
//! group becomes one event per kind of change it carries, judged by the
//! rule of the other rungs and sent to the daemon's queue. What a change
//! was is learnt here, from an `fstat` through the descriptor the mark
//! kept ([`super::marks`]), compared with what was seen last.

use std::{
    collections::HashMap,
    io,
    os::fd::{AsRawFd as _, OwnedFd},
    sync::{Arc, Mutex, PoisonError, atomic::Ordering},
};

use super::{
    FileState, HOOK_ATTRIB, HOOK_DELETE_SELF, HOOK_MODIFY, HOOK_MOVE_SELF, Shared, Verdict,
    attrib_change, marks::Watched,
};
use crate::fanotify::{
    Actor, EventSender, Grants, Intent, Rules,
    change::verdict,
    fid::{Fid, ParseError, Record, parse_records},
    read_loop, report,
};
use crate::hooks::{self, Mode};

/// The reader thread: the group, its wake-up, and what it knows.
pub(super) struct Reader {
    /// The only strong reference to the group: it closes with the thread.
    pub(super) group: Arc<OwnedFd>,
    pub(super) wake: Arc<OwnedFd>,
    pub(super) state: Arc<Mutex<State>>,
}

/// What the reader knows about the targets.
pub(super) struct State {
    pub(super) shared: Arc<Shared>,
    pub(super) watched: Vec<Watched>,
    /// (handle type, handle) → indexes in `watched` (more than one only
    /// when two filesystems encode the same handle; the fsid decides).
    pub(super) handles: HashMap<(i32, Vec<u8>), Vec<usize>>,
    pub(super) rules: Rules,
    /// The permission rung's allowed write-opens, when it runs.
    pub(super) grants: Option<Arc<Grants>>,
    pub(super) events: EventSender,
}

/// The kinds of change, in the order a record's bits are reported.
const KINDS: [(u64, &str); 4] = [
    (libc::FAN_MODIFY, HOOK_MODIFY),
    (libc::FAN_ATTRIB, HOOK_ATTRIB),
    (libc::FAN_MOVE_SELF, HOOK_MOVE_SELF),
    (libc::FAN_DELETE_SELF, HOOK_DELETE_SELF),
];

impl Reader {
    pub(super) fn run(self) {
        let Self { group, wake, state } = self;
        let lock = || state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(e) = read_loop(&group, &wake, |bytes| lock().handle_all(bytes)) {
            Shared::bump(&lock().shared.errors);
            log::error!(
                "fanotify watch thread stopped: {e}; changes to protected files are no longer reported by fanotify"
            );
        }
        lock().shared.running.store(false, Ordering::Relaxed);
        // Dropping `group` closes the group and removes the marks.
    }
}

impl State {
    fn handle_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        let (records, err) = parse_records(bytes);
        for r in &records {
            self.handle(r);
        }
        match err {
            None => Ok(()),
            Some(ParseError::Version(v)) => Err(io::Error::other(format!(
                "fanotify metadata version {v} (expected {})",
                libc::FANOTIFY_METADATA_VERSION
            ))),
            Some(ParseError::Malformed(what)) => {
                // Each read returns whole records, so the next one starts
                // clean; only the rest of this one is lost.
                Shared::bump(&self.shared.errors);
                log::error!("fanotify watch: malformed event, rest of the read dropped: {what}");
                Ok(())
            }
        }
    }

    fn find(&self, fid: &Fid) -> Option<usize> {
        let candidates = self.handles.get(&(fid.handle_type, fid.handle.clone()))?;
        candidates
            .iter()
            .copied()
            .find(|&i| self.watched.get(i).is_some_and(|w| w.fsid == fid.fsid))
            // A filesystem without a real fsid (6.8+ allows inode marks on
            // one) may report another one than fstatfs; a single candidate
            // is still unambiguous.
            .or_else(|| (candidates.len() == 1).then(|| candidates[0]))
    }

    fn handle(&mut self, r: &Record) {
        let s = Arc::clone(&self.shared);
        if r.mask & libc::FAN_Q_OVERFLOW != 0 {
            Shared::bump(&s.overflows);
            log::error!(
                "fanotify queue overflow: changes to protected files were dropped unreported"
            );
            return;
        }
        let Some(fid) = &r.fid else {
            Shared::bump(&s.errors);
            log::error!("fanotify event {:#x} without a file handle", r.mask);
            return;
        };
        let Some(i) = self.find(fid) else {
            Shared::bump(&s.unknown);
            log::warn!(
                "fanotify event {:#x} on a file handle that matches no protected file",
                r.mask
            );
            return;
        };
        let pid = u32::try_from(r.pid).unwrap_or(0);
        let mut actor = Actor::of(pid);
        let own = self
            .watched
            .get(i)
            .is_some_and(|w| w.id >= self.rules.own_from);
        // A writer gone before its change was read: the permission rung
        // may have allowed its write-open, naming its executable then.
        if actor.exe.is_none()
            && !own
            && let (Some(g), Some(w)) = (self.grants.as_ref(), self.watched.get(i))
            && let Some(grant) = g.find(pid, &w.key)
        {
            actor.exe = Some(grant.exe);
            actor.exe_link = Some(grant.exe_path);
        }
        let verdict = verdict(self.rules.judge(&Intent::Write(0), own, actor.exe.as_ref()));
        // One fstat for every kind of change the record carries.
        let now = self.watched.get(i).map(|w| w.file.metadata());
        for (bit, hook) in KINDS {
            if r.mask & bit == 0 {
                continue;
            }
            let Some((event, text, name)) = self.change(i, bit, &now) else {
                continue;
            };
            Shared::bump(&s.events);
            match verdict {
                Verdict::Own => {
                    Shared::bump(&s.own);
                    continue;
                }
                Verdict::Allow => Shared::bump(&s.allowed),
                Verdict::Alert => Shared::bump(&s.alerts),
            }
            let Some(w) = self.watched.get(i) else {
                continue;
            };
            let mut ev = self
                .rules
                .event(actor.clone(), pid, Some(&w.path), Some(w.key));
            ev.event = event.to_owned();
            ev.verdict = if verdict == Verdict::Allow {
                hooks::Verdict::Allow
            } else {
                hooks::Verdict::Alert
            };
            ev.mode = Mode::Detect;
            ev.hook = hook.to_owned();
            ev.flags_text = Some(text);
            ev.name = name;
            if !report(&self.events, ev) {
                Shared::bump(&s.unreported);
            }
        }
    }

    /// What change `bit` made to watched file `i`: event name,
    /// `flags_text` and the new name, updating the recorded state. None
    /// (counted as an error) when the index is out of range.
    fn change(
        &mut self,
        i: usize,
        bit: u64,
        stat: &Option<io::Result<std::fs::Metadata>>,
    ) -> Option<(&'static str, String, Option<String>)> {
        let shared = Arc::clone(&self.shared);
        let Some(w) = self.watched.get_mut(i) else {
            Shared::bump(&shared.errors);
            return None;
        };
        let now = match stat {
            Some(Ok(m)) => Some(FileState::of(m)),
            Some(Err(e)) => {
                Shared::bump(&shared.errors);
                log::warn!("cannot fstat protected file {}: {e}", w.path.display());
                None
            }
            None => None,
        };
        Some(match bit {
            libc::FAN_MODIFY => {
                let text = match now {
                    Some(n) => {
                        let before = std::mem::replace(&mut w.state.size, n.size);
                        if before == n.size {
                            format!("size {}", n.size)
                        } else {
                            format!("size {before}→{}", n.size)
                        }
                    }
                    None => "size unknown".to_owned(),
                };
                ("file_write", text, None)
            }
            libc::FAN_ATTRIB => match now {
                Some(n) => {
                    let after = FileState {
                        size: w.state.size,
                        ..n
                    };
                    let (event, text) = attrib_change(&w.state, &after);
                    w.state = after;
                    (event, text, None)
                }
                None => ("file_setattr", "cannot fstat the inode".to_owned(), None),
            },
            libc::FAN_MOVE_SELF => {
                // Where the inode is now (as of reading the event).
                let at = std::fs::read_link(format!("/proc/self/fd/{}", w.file.as_raw_fd()))
                    .ok()
                    .map(|p| p.display().to_string());
                let text = match &at {
                    Some(p) => format!("now at {p}"),
                    None => "new name unknown".to_owned(),
                };
                ("file_rename", text, at)
            }
            _ => ("file_unlink", "inode deleted".to_owned(), None),
        })
    }
}
