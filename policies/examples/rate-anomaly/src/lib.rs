//! Rate anomaly: one process touching many protected files in a short
//! window is worth an alert even when each write is allowed (an updater
//! gone rogue, a wiper). The state lives in the module and survives
//! between events; a reload starts it afresh.
//!
//! A process that touches more than [`THRESHOLD`] distinct files under
//! `/opt/models/` within [`WINDOW_NS`] (by the events' own timestamps, so
//! replays give the same answer) gets:
//!
//! | rule | verdict |
//! |---|---|
//! | 30 | alert + re-measure, for that event and every later one in the window |
//!
//! The state is two fixed-capacity `heapless` collections, and each says
//! what happens when it is full:
//!
//! - **the process table** ([`SLOTS`] windows): a process not in it when
//!   it is full evicts the window that *started* longest ago (that
//!   process's count starts again from zero if it comes back). An attacker
//!   who spreads the writes over more than [`SLOTS`] processes at once can
//!   so stay under the threshold per process; the per-file policies
//!   (`model-writer`) still judge every write.
//! - **a window's files** ([`FILES`] per process): a further distinct file
//!   is counted but not remembered (touching it again counts it again).
//!   Since [`THRESHOLD`] < [`FILES`], a window is already alerting by the
//!   time its list is full, so the over-count changes no verdict.

#![cfg_attr(not(test), no_std)]

use guardian_policy_sdk::{
    Actions, EventView, Policy, Verdict, export_policy, has_prefix, heapless, log, log_level,
};

/// The watched directory.
pub const MODELS: &str = "/opt/models/";
/// Length of the window.
pub const WINDOW_NS: u64 = 1_000_000_000;
/// Distinct files a process may touch per window.
pub const THRESHOLD: usize = 5;
/// Processes tracked at once (the least recently started window is evicted).
pub const SLOTS: usize = 8;
/// Distinct files remembered per process and window.
pub const FILES: usize = 16;

const _: () = assert!(THRESHOLD < FILES, "a full file list must already alert");

/// One process's window.
struct Window {
    pid: u32,
    start: u64,
    /// Hashes of the distinct files touched, up to [`FILES`].
    files: heapless::Vec<u64, FILES>,
    /// Distinct files touched, including those not remembered.
    count: usize,
    alerted: bool,
}

impl Window {
    const fn new(pid: u32, start: u64) -> Self {
        Window {
            pid,
            start,
            files: heapless::Vec::new(),
            count: 0,
            alerted: false,
        }
    }
}

/// The policy and its per-process windows.
pub struct RateAnomaly {
    windows: heapless::Vec<Window, SLOTS>,
}

/// FNV-1a: a cheap, stable hash of the path.
fn fnv(s: &[u8]) -> u64 {
    s.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl RateAnomaly {
    /// The window of `pid`, made (evicting the oldest when the table is
    /// full) if it has none.
    fn window(&mut self, pid: u32, now: u64) -> Option<&mut Window> {
        let i = match self.windows.iter().position(|w| w.pid == pid) {
            Some(i) => i,
            None => {
                if self.windows.is_full()
                    && let Some((oldest, _)) =
                        self.windows.iter().enumerate().min_by_key(|(_, w)| w.start)
                {
                    self.windows.swap_remove(oldest);
                }
                // There is room now; if there were not, the event would
                // be judged without a window (allowed), never a panic.
                self.windows.push(Window::new(pid, now)).ok()?;
                self.windows.len() - 1
            }
        };
        self.windows.get_mut(i)
    }
}

impl Policy for RateAnomaly {
    const INIT: Self = RateAnomaly {
        windows: heapless::Vec::new(),
    };

    fn evaluate(&mut self, event: &EventView<'_>) -> Verdict {
        if !event.kind().is_file() {
            return Verdict::ALLOW;
        }
        let Some(path) = event.path().filter(|p| has_prefix(p, MODELS.as_bytes())) else {
            return Verdict::ALLOW;
        };
        let now = event.time_ns();
        let pid = event.pid();
        let Some(w) = self.window(pid, now) else {
            return Verdict::ALLOW;
        };
        if now.saturating_sub(w.start) > WINDOW_NS {
            *w = Window::new(pid, now);
        }
        let h = fnv(path);
        if !w.files.contains(&h) {
            // Full: counted, not remembered (see the module's doc).
            let _remembered = w.files.push(h).is_ok();
            w.count += 1;
        }
        if w.count > THRESHOLD {
            if !w.alerted {
                w.alerted = true;
                log(
                    log_level::WARN,
                    "one process touched more than 5 protected files within 1 s",
                );
            }
            return Verdict::alert(30).with(Actions::REMEASURE);
        }
        Verdict::ALLOW
    }
}

export_policy!(RateAnomaly);

#[cfg(test)]
mod tests {
    use super::*;
    use guardian_policy_sdk::{Detail, Dev, Event, KernelVerdict, Kind, Mode};

    const ALERT: Verdict = Verdict::alert(30).with(Actions::REMEASURE);

    /// A write by `pid` to `/opt/models/f{file}` at `ms`.
    fn write(p: &mut RateAnomaly, pid: u32, ms: u64, file: u32) -> Verdict {
        let mut path = [0u8; 32];
        let name = b"/opt/models/f";
        path[..name.len()].copy_from_slice(name);
        let mut n = name.len();
        for d in [file / 100, file / 10 % 10, file % 10] {
            path[n] = b'0' + d as u8;
            n += 1;
        }
        let e = Event {
            kind: Kind::FileWrite,
            kernel: KernelVerdict::Allow,
            mode: Mode::Detect,
            time_ns: ms * 1_000_000,
            hook: b"lsm/file_permission",
            pid,
            tid: pid,
            ppid: 1,
            uid: 0,
            gid: 0,
            exe: Some(b"/usr/bin/dd"),
            exe_dev: Dev::default(),
            exe_ino: 1,
            comm: b"dd",
            service: false,
            detail: Detail::File {
                path: &path[..n],
                dev: Dev::default(),
                ino: 2,
                flags: 1,
                flags_text: b"O_WRONLY",
            },
        };
        let mut buf = [0u8; 256];
        let (len, _) = e.encode(&mut buf).unwrap();
        p.evaluate(&EventView::new(&buf[..len]))
    }

    #[test]
    fn more_than_threshold_files_in_a_window_alert() {
        let mut p = RateAnomaly::INIT;
        for f in 0..THRESHOLD as u32 {
            assert_eq!(write(&mut p, 7, 10, f), Verdict::ALLOW);
        }
        // The same file again is not a new one.
        assert_eq!(write(&mut p, 7, 11, 0), Verdict::ALLOW);
        assert_eq!(write(&mut p, 7, 12, 99), ALERT);
        // A new window after WINDOW_NS starts from zero.
        assert_eq!(write(&mut p, 7, 1_100, 98), Verdict::ALLOW);
    }

    #[test]
    fn a_full_process_table_evicts_the_window_started_longest_ago() {
        let mut p = RateAnomaly::INIT;
        // pid 1 is one file short of alerting.
        for f in 0..THRESHOLD as u32 {
            assert_eq!(write(&mut p, 1, 0, f), Verdict::ALLOW);
        }
        // Seven more processes fill the table; the eighth evicts pid 1.
        for pid in 2..=(SLOTS as u32 + 1) {
            assert_eq!(write(&mut p, pid, pid as u64, 0), Verdict::ALLOW);
        }
        assert_eq!(p.windows.len(), SLOTS);
        assert!(!p.windows.iter().any(|w| w.pid == 1));
        // So its sixth file starts a new window instead of alerting …
        assert_eq!(write(&mut p, 1, 20, 50), Verdict::ALLOW);
        // … which evicted pid 2, the next oldest; pid 3 is still there.
        assert!(!p.windows.iter().any(|w| w.pid == 2));
        assert!(p.windows.iter().any(|w| w.pid == 3));
        // Without the crowd, the same sixth file alerts.
        let mut q = RateAnomaly::INIT;
        for f in 0..THRESHOLD as u32 {
            write(&mut q, 1, 0, f);
        }
        assert_eq!(write(&mut q, 1, 20, 50), ALERT);
    }

    #[test]
    fn a_full_file_list_counts_without_remembering() {
        let mut p = RateAnomaly::INIT;
        let mut verdicts = [Verdict::ALLOW; FILES + 4];
        for (f, v) in verdicts.iter_mut().enumerate() {
            *v = write(&mut p, 5, 0, f as u32);
        }
        assert!(verdicts[..THRESHOLD].iter().all(|v| *v == Verdict::ALLOW));
        assert!(verdicts[THRESHOLD..].iter().all(|v| *v == ALERT));
        let w = &p.windows[0];
        assert_eq!((w.files.len(), w.count), (FILES, FILES + 4));
        // A file past the list counts again when touched again; the
        // window was alerting already.
        assert_eq!(write(&mut p, 5, 1, FILES as u32 + 1), ALERT);
        assert_eq!(p.windows[0].count, FILES + 5);
    }
}
