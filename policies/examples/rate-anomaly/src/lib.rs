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

#![no_std]

use guardian_policy_sdk::{
    Actions, EventView, Policy, Verdict, export_policy, has_prefix, log, log_level,
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

#[derive(Clone, Copy)]
struct Slot {
    pid: u32,
    start: u64,
    files: [u64; FILES],
    count: usize,
    alerted: bool,
}

const EMPTY: Slot = Slot {
    pid: 0,
    start: 0,
    files: [0; FILES],
    count: 0,
    alerted: false,
};

/// The policy and its per-process windows.
pub struct RateAnomaly {
    slots: [Slot; SLOTS],
}

/// FNV-1a: a cheap, stable hash of the path.
fn fnv(s: &[u8]) -> u64 {
    s.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl Policy for RateAnomaly {
    const INIT: Self = RateAnomaly {
        slots: [EMPTY; SLOTS],
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
        let i = match self.slots.iter().position(|s| s.pid == pid && s.pid != 0) {
            Some(i) => i,
            None => {
                let (i, _) = self
                    .slots
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, s)| (s.pid != 0, s.start))
                    .unwrap_or((0, &EMPTY));
                self.slots[i] = Slot {
                    pid,
                    start: now,
                    ..EMPTY
                };
                i
            }
        };
        let slot = &mut self.slots[i];
        if now.saturating_sub(slot.start) > WINDOW_NS {
            *slot = Slot {
                pid,
                start: now,
                ..EMPTY
            };
        }
        let h = fnv(path);
        if !slot.files[..slot.count.min(FILES)].contains(&h) {
            if slot.count < FILES {
                slot.files[slot.count] = h;
            }
            slot.count += 1;
        }
        if slot.count > THRESHOLD {
            if !slot.alerted {
                slot.alerted = true;
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
