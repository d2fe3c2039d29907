//! Executable allowlist: the rule of `policies/examples/rego/allowlist.rego`
//! (and its hand-written OPA-ABI stand-in `wat/opa-allowlist.wat`) as an SDK
//! policy, so that the two kinds can be compared on the same rule
//! (`cargo bench -p guardian --bench rego`).
//!
//! | rule | verdict |
//! |---|---|
//! | — | allow: the process's executable is in [`ALLOWED`] |
//! | 7 | deny + kill: it is not, and it lies under `/tmp/` |
//! | 3 | alert: it is not (or is unknown) |

#![no_std]

use guardian_policy_sdk::{Actions, EventView, Policy, Verdict, bytes_eq, export_policy, has_prefix};

/// The executables allowed: `rego/data.json`'s `allowed`.
pub const ALLOWED: &[&str] = &[
    "/usr/bin/python3",
    "/usr/sbin/model-updater",
    "/usr/bin/inference-server",
];

/// The policy (stateless).
pub struct ExeAllowlist;

impl Policy for ExeAllowlist {
    const INIT: Self = ExeAllowlist;

    fn evaluate(&mut self, event: &EventView<'_>) -> Verdict {
        let Some(exe) = event.exe() else {
            return Verdict::alert(3);
        };
        if ALLOWED.iter().any(|a| bytes_eq(a.as_bytes(), exe)) {
            Verdict::ALLOW
        } else if has_prefix(exe, b"/tmp/") {
            Verdict::deny(7).with(Actions::KILL)
        } else {
            Verdict::alert(3)
        }
    }
}

export_policy!(ExeAllowlist);
