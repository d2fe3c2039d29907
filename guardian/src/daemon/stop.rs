//! `guardian stop`: signal the running agent and wait for it to go; with
//! `--unload`, remove the pinned guard, which takes the authorisation it
//! was loaded with and goes into the evidence before the programs go.
//!
//! May not touch the running agent's state except through its status file
//! (to find it) and SIGTERM (to stop it).

use std::{path::Path, time::Duration};

use crate::{
    config::Config,
    evidence,
    guard::{self, GuardError},
    manifest, signing, status, unload,
};

/// `guardian stop`: SIGTERM the running agent (found through its status
/// file) and wait up to 10 s for it to go; with `unload`, remove the pins,
/// which detaches the kernel programs. Returns what was done, line by line.
pub fn stop(config: &Config, unload: bool, token: Option<&Path>) -> Result<Vec<String>, StopError> {
    let mut done = Vec::new();
    // Unloading ends enforcement: it needs the authorisation the guard was
    // loaded with, checked before anything is touched.
    let mut why = String::new();
    if unload {
        why = authorise_unload(config, token, &mut done)?;
    }
    match status::Status::read(&config.status.path) {
        Ok(st) if st.agent_alive() => {
            let pid = st.pid as libc::pid_t;
            // SAFETY: plain kill(2).
            if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
                return Err(StopError::Signal {
                    pid,
                    source: std::io::Error::last_os_error(),
                });
            }
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while std::path::Path::new(&format!("/proc/{pid}")).exists() {
                if std::time::Instant::now() > deadline {
                    return Err(StopError::Timeout { pid });
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            done.push(format!("stopped guardian (pid {pid})"));
        }
        _ => done.push("no guardian agent was running".to_owned()),
    }
    let dir = &config.guard.pin_dir;
    if unload && dir.is_dir() {
        // The window without enforcement starts now: it goes into the
        // evidence before the programs go.
        match record_unload(config, &why) {
            Ok(()) => done.push("recorded the unload in the measurement log and the TPM".into()),
            Err(e) => {
                log::error!("the unload could not be recorded in the evidence: {e}");
                done.push(format!("the unload is NOT in the evidence: {e}"));
            }
        }
    }
    if unload {
        let mut n = 0;
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                guard::remove_pins(&e.path()).map_err(|source| StopError::Pins {
                    path: e.path(),
                    source,
                })?;
                n += 1;
            }
        }
        let _ = std::fs::remove_dir(dir);
        done.push(if n > 0 {
            format!(
                "removed the pins in {}: the kernel programs are detached, nothing is enforced now",
                dir.display()
            )
        } else {
            format!("no pins in {}", dir.display())
        });
    } else if dir.is_dir() {
        done.push(format!(
            "the kernel programs stay attached (pinned in {}); `guardian stop --unload` removes them",
            dir.display()
        ));
    }
    Ok(done)
}

/// Why `guardian stop` failed. Nothing is touched when an unload is
/// refused.
#[derive(Debug, thiserror::Error)]
pub enum StopError {
    /// The agent could not be signalled.
    #[error("cannot signal guardian (pid {pid})")]
    Signal {
        /// Its pid.
        pid: libc::pid_t,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The agent did not go in time.
    #[error("guardian (pid {pid}) did not stop within 10 s")]
    Timeout {
        /// Its pid.
        pid: libc::pid_t,
    },
    /// A pin directory could not be removed.
    #[error("cannot remove the pins in {path}")]
    Pins {
        /// The object's pin directory.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The record of who may unload a pinned guard could not be read.
    #[error(transparent)]
    Guard(#[from] GuardError),
    /// This boot's id could not be read.
    #[error(transparent)]
    Unload(#[from] unload::UnloadError),
    /// No token was given where one is needed.
    #[error(
        "unloading the guard takes a token signed by an operator key it was loaded with ([guard] unload_keys): `guardian unload-token --key OPERATOR.pem --pub OPERATOR.pub --boot-id {boot_id} --guard GUARD_ID -o unload.json` on the operator's machine, then `guardian stop --unload --token unload.json` (the device's boot id is {boot_id}; `guardian status` shows the guard id)"
    )]
    TokenNeeded {
        /// This boot's id.
        boot_id: String,
    },
    /// The token does not authorise unloading a pinned guard.
    #[error("the unload of the guard pinned in {pins} is refused")]
    Refused {
        /// The guard's pin directory.
        pins: std::path::PathBuf,
        /// Why.
        #[source]
        source: unload::UnloadError,
    },
}

/// May the pinned guard be unloaded? Checks `token` against every pinned
/// guard's record of who may; returns the words for the evidence.
fn authorise_unload(
    config: &Config,
    token: Option<&Path>,
    done: &mut Vec<String>,
) -> Result<String, StopError> {
    let dir = &config.guard.pin_dir;
    let mut auths: Vec<(std::path::PathBuf, unload::Auth)> = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        // A record that is there but cannot be read refuses the unload.
        if let Some(a) = guard::pinned_auth(&e.path())? {
            auths.push((e.path(), a));
        }
    }
    if auths.is_empty() {
        return Ok("no record of who may unload it (an older guard)".to_owned());
    }
    if auths.iter().all(|(_, a)| a.without_token) {
        log::warn!("maintenance mode: unloading without a token");
        done.push("maintenance mode: unloaded without a token".to_owned());
        return Ok("maintenance mode, no token".to_owned());
    }
    let here = unload::boot_id()?;
    let Some(path) = token else {
        return Err(StopError::TokenNeeded { boot_id: here });
    };
    let mut reason = String::new();
    for (pins, auth) in auths.iter().filter(|(_, a)| !a.without_token) {
        let t = unload::check(path, auth, &here, unload::now()).map_err(|source| {
            StopError::Refused {
                pins: pins.clone(),
                source,
            }
        })?;
        let signer = signing::TrustedKey::from_pem(&t.signer, path)
            .map(|k| k.fingerprint)
            .unwrap_or_default();
        reason = format!(
            "token for guard {} signed by key {}…, issued {}, reason: {}",
            t.guard,
            &signer[..signer.len().min(16)],
            t.issued,
            t.reason
        );
    }
    done.push(format!("unload authorised: {reason}"));
    Ok(reason)
}

/// Record `guardian stop --unload` in the ledger.
fn record_unload(config: &Config, why: &str) -> Result<(), evidence::LedgerError> {
    let tpm = evidence::ledger::open_tpm(config.measure.tcti.as_deref())
        .map(|t| t.tpm)
        .map_err(evidence::LedgerError::Tpm)?;
    let mut ledger = evidence::Ledger::open(&config.measure.log, Some(tpm))?;
    let pcr = std::fs::read_to_string(&config.measure.manifest)
        .ok()
        .and_then(|t| manifest::Manifest::parse(&t).ok())
        .map_or(
            config
                .measure
                .model_signature_pcr()
                .unwrap_or(manifest::DEFAULT_PCR),
            |m| m.pcr,
        );
    let who = format!(
        "`guardian stop --unload` by uid {} ({why}): the pinned programs in {} are removed; nothing enforces until the next start",
        // SAFETY: getuid has no preconditions.
        unsafe { libc::getuid() },
        config.guard.pin_dir.display()
    );
    ledger.record(pcr, evidence::ledger::guard_event("unload", "", who))?;
    Ok(())
}
