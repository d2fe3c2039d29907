//! The inference service runs what it was installed with: no `LD_PRELOAD`,
//! no unexpected programs, no libraries from unexpected places, and nobody
//! rewrites `/etc/ld.so.preload`.
//!
//! | rule | verdict |
//! |---|---|
//! | 10 | deny + kill: the service executes with a preload variable |
//! | 11 | deny + kill: the service executes a binary not in [`SERVICE_EXEC`] |
//! | 12 | deny + kill: the service loads a library outside [`LIBRARY_DIRS`] |
//! | 13 | alert: another process executes with a preload variable |
//! | 14 | deny: anyone changes `/etc/ld.so.preload` |

#![no_std]

use guardian_policy_sdk::{
    Actions, EventView, Kind, Policy, StaticRules, Verdict, bytes_eq, export_policy, has_prefix,
};

/// Binaries the service may execute.
pub const SERVICE_EXEC: &[&str] = &["/usr/bin/python3", "/opt/inference/bin/serve"];
/// Where the service may load libraries from.
pub const LIBRARY_DIRS: &[&str] = &["/lib/", "/usr/lib/", "/opt/inference/lib/"];
/// The system-wide preload list.
pub const LD_SO_PRELOAD: &str = "/etc/ld.so.preload";

/// The policy (stateless).
pub struct ServiceExec;

impl Policy for ServiceExec {
    const INIT: Self = ServiceExec;

    fn static_rules() -> StaticRules<'static> {
        StaticRules {
            protected: &[LD_SO_PRELOAD],
            service_exec: Some(SERVICE_EXEC),
            library_dirs: Some(LIBRARY_DIRS),
            ..StaticRules::default()
        }
    }

    fn evaluate(&mut self, event: &EventView<'_>) -> Verdict {
        // The kind (byte 0) settles most events; the path is read once,
        // only by the arms that need it (a closure called inside `any`
        // would be called again for every entry).
        let kind = event.kind();
        let path = || event.path().unwrap_or(b"");
        match kind {
            Kind::ExecPreload if event.service() => Verdict::deny(10).with(Actions::KILL),
            Kind::ExecPreload => Verdict::alert(13),
            Kind::Exec if event.service() => {
                let path = path();
                if SERVICE_EXEC.iter().any(|s| bytes_eq(s.as_bytes(), path)) {
                    Verdict::ALLOW
                } else {
                    Verdict::deny(11).with(Actions::KILL)
                }
            }
            Kind::LibraryLoad if event.service() => {
                let path = path();
                if LIBRARY_DIRS.iter().any(|d| has_prefix(path, d.as_bytes())) {
                    Verdict::ALLOW
                } else {
                    Verdict::deny(12).with(Actions::KILL)
                }
            }
            k if k.is_file() && bytes_eq(path(), LD_SO_PRELOAD.as_bytes()) => Verdict::deny(14),
            _ => Verdict::ALLOW,
        }
    }
}

export_policy!(ServiceExec);
