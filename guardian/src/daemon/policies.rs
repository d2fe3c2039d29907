//! The policy set in force between reloads, as the daemon sees it: a
//! reload's result put in force in every rung (the new set's static rules
//! widen the kernel's tables and the fanotify rungs' marks and writers,
//! through the one [`Enforcement`]), and what the policy directory held,
//! to notice a change.

use std::path::Path;

use crate::{
    config::Config, enforce::Enforcement, events::Decoder, policy, rules, targets::Targets,
};

/// The daemon's view of the policy engine between reloads.
#[derive(Default)]
pub(super) struct PolicyState {
    /// Names, sizes and times of the files in the policy directory.
    pub(super) fingerprint: Vec<(String, u64, i64)>,
    /// Why the last set's static rules are not (all) in the kernel.
    pub(super) rules_error: Option<String>,
}

impl PolicyState {
    /// Put a reload's result in force: the new set's static rules into the
    /// kernel's tables (the events already use the new set). A failed
    /// reload changes nothing.
    pub(super) fn apply(
        &mut self,
        result: Result<policy::ReloadReport, policy::LoadError>,
        config: &Config,
        enforcement: &mut Enforcement,
        targets: &mut Targets,
        decoder: &mut Decoder,
    ) {
        let report = match result {
            Ok(r) => r,
            Err(e) => {
                log::error!("policies: reload failed, the previous set stays in force: {e}");
                return;
            }
        };
        log::info!(
            "policies: set {} in force: {}{}",
            report.generation,
            if report.policies.is_empty() {
                "none".to_owned()
            } else {
                report
                    .policies
                    .iter()
                    .map(|p| format!("{} ({}…)", p.name, p.sha256.get(..12).unwrap_or(&p.sha256)))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            if report.not_extended > 0 {
                format!(
                    "; {} load(s) NOT extended into the TPM",
                    report.not_extended
                )
            } else {
                String::new()
            }
        );
        match put_in_force(config, &report.rules, enforcement, targets, decoder) {
            Ok(()) => self.rules_error = None,
            Err(e) => {
                log::error!(
                    "policies: the static rules of set {} are NOT in the kernel (the previous tables stay): {e}",
                    report.generation
                );
                self.rules_error = Some(format!("set {}: {e}", report.generation));
            }
        }
    }
}

/// Resolve the targets again from the config and `rules` and put them in
/// force in every rung; the decoder follows. On failure nothing changes.
/// Shared by a policy reload and by taking in what an allowed writer added
/// to a protected tree.
pub(super) fn put_in_force(
    config: &Config,
    rules: &crate::policy::StaticRules,
    enforcement: &mut Enforcement,
    targets: &mut Targets,
    decoder: &mut Decoder,
) -> Result<(), String> {
    let t = rules::targets(config, rules).map_err(|e| e.to_string())?;
    enforcement.refresh(&t).map_err(|e| e.to_string())?;
    *decoder = Decoder::new(enforcement.mode(), &t);
    *targets = t;
    Ok(())
}

/// What is in the policy directory, to notice a change.
pub(super) fn fingerprint(dir: &Path) -> Vec<(String, u64, i64)> {
    use std::os::unix::fs::MetadataExt as _;
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            Some((
                e.file_name().to_string_lossy().into_owned(),
                m.len(),
                m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            ))
        })
        .collect();
    out.sort();
    out
}
