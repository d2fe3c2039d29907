//! The attestor's inbox: security events on their way from the event loop
//! to the attestor thread, coalesced per file and executable (the first
//! attempt in full and a count; one re-measurement per written file), so a
//! burst never fills a queue and loses tamper records (see the parent
//! module's opening). Owns only this bookkeeping; it records nothing and
//! touches no TPM.

use super::*;

/// Security events on their way to the attestor, coalesced (see the
/// module's opening): the event loop adds, the attestor takes the lot.
#[derive(Debug, Default)]
pub(super) struct Inbox {
    /// Tamper attempts per (file, executable inode), in the order of each
    /// pair's first attempt.
    pub(super) attempts: Vec<Attempts>,
    /// Where each pair is in `attempts`.
    pub(super) index: HashMap<(String, u64), usize>,
    /// Files written (by an allowed writer, or in detect mode): each to be
    /// re-measured once writes are quiet.
    pub(super) written: Vec<String>,
    /// The same, to find them.
    pub(super) written_set: HashSet<String>,
}

/// The attempts of one executable on one file since the attestor last
/// looked.
#[derive(Debug)]
pub(super) struct Attempts {
    /// The file (the event's tamper subject).
    pub(super) subject: String,
    /// The first attempt, in full: the one that may make a record.
    pub(super) first: Box<SecurityEvent>,
    /// How many came after it.
    pub(super) more: u64,
}

impl Inbox {
    pub(super) fn is_empty(&self) -> bool {
        self.attempts.is_empty() && self.written.is_empty()
    }

    /// Add one event about `subject`; false if the inbox had no room for
    /// it (counted as a drop by the caller).
    pub(super) fn add(
        &mut self,
        ev: &SecurityEvent,
        subject: String,
        attempt: bool,
        written: bool,
    ) -> bool {
        let mut kept = true;
        if written && !self.written_set.contains(&subject) {
            if self.written.len() < INBOX_KEYS {
                self.written_set.insert(subject.clone());
                self.written.push(subject.clone());
            } else {
                kept = false;
            }
        }
        if attempt {
            let key = (subject, ev.exe_ino);
            if let Some(&i) = self.index.get(&key) {
                if let Some(a) = self.attempts.get_mut(i) {
                    a.more = a.more.saturating_add(1);
                }
            } else if self.attempts.len() < INBOX_KEYS {
                self.attempts.push(Attempts {
                    subject: key.0.clone(),
                    first: Box::new(ev.clone()),
                    more: 0,
                });
                self.index.insert(key, self.attempts.len() - 1);
            } else {
                kept = false;
            }
        }
        kept
    }
}

/// An event is a tamper attempt: denied, or detected and not allowed.
pub(super) fn is_attempt(ev: &SecurityEvent) -> bool {
    ev.verdict == Verdict::Deny || ev.verdict == Verdict::Alert
}

/// An event says a write happened: the model may have changed (or the name
/// the service opens now leads elsewhere).
pub(super) fn is_write(ev: &SecurityEvent) -> bool {
    (ev.is_file() || ev.event == "path_changed" || ev.event == "preexisting_writer")
        && (ev.verdict == Verdict::Allow || ev.verdict == Verdict::Alert)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::SecurityEvent;

    fn attempt(file: &str, exe_ino: u64, verdict: Verdict) -> SecurityEvent {
        SecurityEvent {
            event: "file_write_open".into(),
            verdict,
            exe_ino,
            file: Some(file.into()),
            ..SecurityEvent::default()
        }
    }

    fn add(inbox: &mut Inbox, ev: &SecurityEvent) -> bool {
        let subject = ev.tamper_subject().unwrap();
        inbox.add(ev, subject, is_attempt(ev), is_write(ev))
    }

    #[test]
    fn the_inbox_keeps_one_entry_per_file_and_executable_and_counts_the_rest() {
        let mut inbox = Inbox::default();
        for i in 0..10_000u64 {
            let ev = attempt(
                ["/m/a", "/m/b"][(i % 2) as usize],
                7 + i % 3,
                Verdict::Alert,
            );
            assert!(add(&mut inbox, &ev));
        }
        // Two files by three executables; each detected write also a
        // write to re-measure, once per file.
        assert_eq!(inbox.attempts.len(), 6);
        assert_eq!(
            inbox.attempts.iter().map(|a| a.more + 1).sum::<u64>(),
            10_000
        );
        assert_eq!(inbox.written, ["/m/a", "/m/b"]);
        // The first of each pair is kept in full, in the order they came.
        assert_eq!(inbox.attempts[0].subject, "/m/a");
        assert_eq!(inbox.attempts[0].first.exe_ino, 7);
        assert_eq!(inbox.attempts[1].subject, "/m/b");
        assert_eq!(inbox.attempts[1].first.exe_ino, 8);
        // An allowed write is no attempt.
        let mut allowed = Inbox::default();
        assert!(add(&mut allowed, &attempt("/m/c", 1, Verdict::Allow)));
        assert!(allowed.attempts.is_empty());
        assert_eq!(allowed.written, ["/m/c"]);
    }

    #[test]
    fn past_its_bound_the_inbox_says_what_it_could_not_keep() {
        let mut inbox = Inbox::default();
        for i in 0..INBOX_KEYS as u64 {
            assert!(add(&mut inbox, &attempt("/m/a", i, Verdict::Deny)));
        }
        // A new pair has no room; attempts of a pair already there do.
        assert!(!add(&mut inbox, &attempt("/m/a", u64::MAX, Verdict::Deny)));
        assert!(add(&mut inbox, &attempt("/m/a", 3, Verdict::Deny)));
        assert_eq!(inbox.attempts.len(), INBOX_KEYS);
        assert_eq!(inbox.attempts[3].more, 1);
    }
}
