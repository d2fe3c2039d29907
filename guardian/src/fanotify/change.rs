//! What a change to a watched file was, and what the rule says about it:
//! the notification rung's judgement, as pure functions of the file's
//! state before and after and of the actor's executable. No fanotify, no
//! threads (`notify/reader.rs` reads the events and calls these).

use std::os::unix::fs::MetadataExt as _;

use guardian_common::InodeKey;

use super::{Intent, Judgement};

/// The attributes a `FAN_ATTRIB` (and a `FAN_MODIFY`, for the size) is
/// judged by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileState {
    /// Hard links.
    pub nlink: u64,
    /// Type and permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes.
    pub size: u64,
}

impl FileState {
    pub(super) fn of(meta: &std::fs::Metadata) -> Self {
        Self {
            nlink: meta.nlink(),
            mode: meta.mode(),
            uid: meta.uid(),
            gid: meta.gid(),
            size: meta.size(),
        }
    }
}

/// What a `FAN_ATTRIB` was, from the state before and after: the event
/// name and the differences, for `flags_text`. A change in the link count
/// names the event; every difference is listed.
pub fn attrib_change(before: &FileState, after: &FileState) -> (&'static str, String) {
    let mut diffs = Vec::new();
    if before.nlink != after.nlink {
        diffs.push(format!("nlink {}→{}", before.nlink, after.nlink));
    }
    let (m0, m1) = (before.mode & 0o7777, after.mode & 0o7777);
    if m0 != m1 {
        diffs.push(format!("mode {m0:04o}→{m1:04o}"));
    }
    if before.uid != after.uid {
        diffs.push(format!("uid {}→{}", before.uid, after.uid));
    }
    if before.gid != after.gid {
        diffs.push(format!("gid {}→{}", before.gid, after.gid));
    }
    let event = match after.nlink.cmp(&before.nlink) {
        std::cmp::Ordering::Greater => "file_link",
        std::cmp::Ordering::Less => "file_unlink",
        std::cmp::Ordering::Equal => "file_setattr",
    };
    let text = if diffs.is_empty() {
        "no change in nlink, mode, uid or gid (times, extended attributes, or a change already undone)"
            .to_owned()
    } else {
        diffs.join(", ")
    };
    (event, text)
}

/// What the rule says about one change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// guardian changing its own file: counted, no event.
    Own,
    /// An allowed writer changing a model: event `allow`.
    Allow,
    /// Anything else: event `alert`.
    Alert,
}

/// The permission rung's rule ([`super::judge`]) for a change that
/// has already happened: may `exe` change the file (guardian's own when
/// `own`)? An unknown executable may not.
pub fn judge(
    own: bool,
    exe: Option<&InodeKey>,
    is_writer: impl Fn(&InodeKey) -> bool,
    self_exe: &InodeKey,
) -> Verdict {
    verdict(super::judge(
        &Intent::Write(0),
        own,
        exe,
        is_writer,
        self_exe,
    ))
}

pub(super) fn verdict(j: Judgement) -> Verdict {
    match j {
        Judgement::OwnWrite => Verdict::Own,
        Judgement::Allow => Verdict::Allow,
        Judgement::Read | Judgement::Deny => Verdict::Alert,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_attribute_changes() {
        let before = FileState {
            nlink: 1,
            mode: 0o100644,
            uid: 0,
            gid: 0,
            size: 11,
        };
        let with = |f: fn(&mut FileState)| {
            let mut s = before;
            f(&mut s);
            attrib_change(&before, &s)
        };
        assert_eq!(with(|s| s.nlink = 2), ("file_link", "nlink 1→2".to_owned()));
        assert_eq!(
            with(|s| s.nlink = 0),
            ("file_unlink", "nlink 1→0".to_owned())
        );
        assert_eq!(
            with(|s| s.mode = 0o100666),
            ("file_setattr", "mode 0644→0666".to_owned())
        );
        assert_eq!(
            with(|s| {
                s.uid = 1000;
                s.gid = 100;
            }),
            ("file_setattr", "uid 0→1000, gid 0→100".to_owned())
        );
        assert_eq!(
            with(|s| {
                s.nlink = 2;
                s.mode = 0o104755;
            }),
            ("file_link", "nlink 1→2, mode 0644→4755".to_owned())
        );
        let (event, text) = with(|_| {});
        assert_eq!(event, "file_setattr");
        assert!(text.starts_with("no change"), "{text}");
    }

    #[test]
    fn judges_like_the_other_rungs() {
        let me = InodeKey::from_major_minor(8, 1, 10);
        let writer = InodeKey::from_major_minor(8, 1, 11);
        let other = InodeKey::from_major_minor(8, 1, 12);
        let j = |own, exe: Option<&InodeKey>| judge(own, exe, |k| *k == writer, &me);
        assert_eq!(j(true, Some(&me)), Verdict::Own);
        assert_eq!(j(true, Some(&writer)), Verdict::Alert);
        assert_eq!(j(true, Some(&other)), Verdict::Alert);
        assert_eq!(j(false, Some(&writer)), Verdict::Allow);
        assert_eq!(j(false, Some(&me)), Verdict::Alert);
        assert_eq!(j(false, Some(&other)), Verdict::Alert);
        assert_eq!(j(false, None), Verdict::Alert);
        assert_eq!(j(true, None), Verdict::Alert);
        assert_eq!(j(false, Some(&InodeKey::default())), Verdict::Alert);
    }
}
