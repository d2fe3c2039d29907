//! Where the config and the policies meet: the tables the kernel enforces
//! are the config's `[guard]`/`[service]` plus the static rules of the
//! policy set in force, and every event carries what the policies said.
//!
//! Combination: the policies can only widen what the operator wrote, never
//! silently narrow it, because both are signed or owned by the same party
//! and a typo in either must not unprotect a model:
//!
//! - protected files: config ∪ policies;
//! - allowed writers, the service's exec allowlist and library directories:
//!   config ∪ policies (a policy set that allows the updater makes the
//!   kernel allow it at the next swap);
//! - egress: off unless the config or a policy declares an allowlist; then
//!   the union of both.

use std::path::PathBuf;

use crate::{
    config::{Config, EgressEntry, PortSpec},
    events::PolicyNote,
    policy::{Actions, Outcome, StaticRules},
    targets::{Targets, TargetsError},
};

fn path_of(rule: &str) -> PathBuf {
    // Directory rules end in '/'; the guard walks directories itself.
    let trimmed = rule.trim_end_matches('/');
    PathBuf::from(if trimmed.is_empty() { "/" } else { trimmed })
}

/// The tables for the kernel: the config's, widened by `rules`.
pub fn targets(config: &Config, rules: &StaticRules) -> Result<Targets, TargetsError> {
    let mut guard = config.guard.clone();
    let mut service = config.service.clone();
    guard
        .protected
        .extend(rules.protected.iter().map(|p| path_of(p)));
    guard.protected.sort();
    guard.protected.dedup();
    if let Some(w) = &rules.writers {
        guard.allowed_writers.extend(w.iter().map(|p| path_of(p)));
        guard.allowed_writers.sort();
        guard.allowed_writers.dedup();
    }
    if let Some(x) = &rules.service_exec {
        service.allowed_exec.extend(x.iter().map(|p| path_of(p)));
    }
    if let Some(d) = &rules.library_dirs {
        service.library_dirs.extend(d.iter().map(|p| path_of(p)));
    }
    if let Some(e) = &rules.egress {
        let list = service.egress.get_or_insert_with(Vec::new);
        list.extend(e.iter().map(|r| EgressEntry {
            cidr: format!("{}/{}", r.net, r.prefix),
            ports: if (r.port_min, r.port_max) == (0, u16::MAX) {
                Vec::new()
            } else {
                vec![PortSpec::Range(format!(
                    "{}-{}",
                    r.port_min.max(1),
                    r.port_max
                ))]
            },
        }));
    }
    Targets::resolve(&guard, &service, &config.own_files())
}

/// What the policies said about one event, for the JSON event.
pub fn note(outcome: &Outcome) -> PolicyNote {
    let mut actions = Vec::new();
    for (bit, name) in [
        (Actions::KILL, "kill"),
        (Actions::REMEASURE, "remeasure"),
        (Actions::QUARANTINE, "quarantine"),
    ] {
        if outcome.actions.contains(bit) {
            actions.push(name.to_owned());
        }
    }
    PolicyNote {
        decision: outcome.decision.name().to_owned(),
        by: outcome
            .decided_by
            .as_ref()
            .map(|(policy, rule)| format!("{policy}:{rule}")),
        actions,
        generation: outcome.generation,
        failed: outcome
            .failures()
            .map(|(policy, err)| format!("{policy}: {err}"))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::set::EgressRule;

    #[test]
    fn policies_widen_the_config() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("models")).unwrap();
        std::fs::write(dir.path().join("models/m.onnx"), b"m").unwrap();
        std::fs::write(dir.path().join("extra.bin"), b"x").unwrap();
        let mut config = Config::parse(&format!(
            "[guard]\nprotected = [{:?}]\n",
            dir.path().join("models").display().to_string()
        ))
        .unwrap();
        config.guard.protect_self = false;
        let none = targets(&config, &StaticRules::default()).unwrap();
        assert_eq!(none.files.len(), 1);
        assert!(none.writers.is_empty());
        assert_eq!(none.rules, guardian_common::rules::GUARD_SELF);

        let rules = StaticRules {
            protected: vec![format!("{}", dir.path().join("extra.bin").display())],
            writers: Some(vec!["/bin/sh".into()]),
            egress: Some(vec![EgressRule {
                net: "10.0.0.0".parse().unwrap(),
                prefix: 8,
                port_min: 443,
                port_max: 443,
            }]),
            service_exec: None,
            library_dirs: None,
        };
        let t = targets(&config, &rules).unwrap();
        assert_eq!(t.files.len(), 2);
        assert_eq!(t.writers.len(), 1);
        // Egress needs a service to apply to: none configured, no rules.
        assert!(t.egress4.is_empty());

        // A policy naming a file that does not exist is an error naming it.
        let bad = StaticRules {
            protected: vec!["/nonexistent/model.onnx".into()],
            ..StaticRules::default()
        };
        let e = targets(&config, &bad).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/model.onnx"), "{e}");
    }
}
