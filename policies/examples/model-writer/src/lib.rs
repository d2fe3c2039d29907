//! Model-writer allowlist: only the model updater may change anything under
//! `/opt/models/`.
//!
//! Static rules: `/opt/models/` protected, `/usr/sbin/model-updater` the
//! only allowed writer, so the kernel denies other writers by itself; the
//! policy sees the events that still reach user space (detect mode, and
//! every operation the kernel reports) and judges them the same way.
//!
//! | rule | verdict |
//! |---|---|
//! | 1 | deny + re-measure: a `file_*` event under `/opt/models/` by any other executable |

#![no_std]

use guardian_policy_sdk::{
    Actions, EventView, Policy, StaticRules, Verdict, bytes_eq, export_policy, has_prefix,
};

/// The protected directory.
pub const MODELS: &str = "/opt/models/";
/// The one executable allowed to write it.
pub const UPDATER: &str = "/usr/sbin/model-updater";

/// The policy (stateless).
pub struct ModelWriter;

impl Policy for ModelWriter {
    const INIT: Self = ModelWriter;

    fn static_rules() -> StaticRules<'static> {
        StaticRules {
            protected: &[MODELS],
            writers: Some(&[UPDATER]),
            ..StaticRules::default()
        }
    }

    fn evaluate(&mut self, event: &EventView<'_>) -> Verdict {
        // Cheapest first: the kind is byte 0, the path one pass away.
        if !event.kind().is_file() {
            return Verdict::ALLOW;
        }
        match event.path() {
            Some(p)
                if has_prefix(p, MODELS.as_bytes())
                    && !event.exe().is_some_and(|e| bytes_eq(e, UPDATER.as_bytes())) =>
            {
                // Re-measure: in detect mode the write may have happened.
                Verdict::deny(1).with(Actions::REMEASURE)
            }
            _ => Verdict::ALLOW,
        }
    }
}

export_policy!(ModelWriter);
