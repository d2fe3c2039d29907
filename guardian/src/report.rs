//! The agent's side of the fleet link: builds the spool and the link from
//! `[report]`, and turns what the daemon produces (security events, status
//! summaries, measurement results) into spool records of the right class.
//!
//! Owns the mapping from the agent's records to report classes. The spool,
//! the wire format and the link are `guardian-report`'s; this module may not
//! block the caller (a full queue is a counted, reported drop, never a
//! wait) nor decide anything about the guard.
//!
//! The cargo feature `report` (on by default) builds the link in. A board
//! that reports to no fleet can build without it (`--no-default-features`):
//! [`start`] then never starts a reporter, so the NATS client, TLS (rustls
//! on ring) and the spool are not linked into the binary (1.2 MiB of the
//! stripped aarch64 binary, `docs/footprint.md`), and a config that names
//! `[report] servers` is refused at its first step rather than silently
//! not reported.

use std::path::PathBuf;

use guardian_report::{Class, Reporter};
#[cfg(feature = "report")]
use guardian_report::{
    Fsync, LinkConfig, Spool, SpoolConfig, nats::Credentials, spool::SpoolError,
};

use crate::{config::ReportConfig, events::SecurityEvent, hooks::Verdict};

/// Why reporting could not start.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The spool could not be opened.
    #[cfg(feature = "report")]
    #[error("the report spool")]
    Spool(#[source] SpoolError),
    /// The password file could not be read.
    #[cfg(feature = "report")]
    #[error("cannot read [report] password_file {path}")]
    Password {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// No device id configured and no host name to use.
    #[error("[report] device_id is empty and the host name {0:?} is not a valid device id")]
    DeviceId(String),
    /// The TLS files could not be used.
    #[cfg(feature = "report")]
    #[error("[report] TLS")]
    Tls(#[source] guardian_report::nats::TlsError),
    /// The reporter refused its config.
    #[cfg(feature = "report")]
    #[error("the report link")]
    Start(#[source] guardian_report::reporter::StartError),
    /// The spool directory could not be made.
    #[error("cannot create [report] spool_dir {path}")]
    SpoolDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `[report] servers` is set but this binary was built without the
    /// fleet link (the `report` feature): refusing beats a board that
    /// looks configured to report and never does.
    #[cfg(not(feature = "report"))]
    #[error(
        "[report] servers is set, but this guardian was built without the fleet link (cargo feature `report`)"
    )]
    NotBuilt,
}

/// Make the spool directory (owner only) if it is missing, so that the
/// guard can take it among guardian's own trees before the spool opens.
/// Without the fleet link built in, a config that reports is refused
/// here, at the first step of start-up, before the kernel is touched.
pub fn make_spool_dir(cfg: &ReportConfig) -> Result<(), ReportError> {
    use std::os::unix::fs::DirBuilderExt as _;
    // Without the link built in, [report] servers is refused before
    // anything is made on disk (`start` refuses it too, for other callers).
    #[cfg(not(feature = "report"))]
    if cfg.enabled() {
        return Err(ReportError::NotBuilt);
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&cfg.spool_dir)
        .map_err(|source| ReportError::SpoolDir {
            path: cfg.spool_dir.clone(),
            source,
        })
}

/// The device id: `[report] device_id`, or the host name.
pub fn device_id(cfg: &ReportConfig) -> Result<String, ReportError> {
    if !cfg.device_id.is_empty() {
        return Ok(cfg.device_id.clone());
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .to_owned();
    if guardian_report::wire::valid_device_id(&host) {
        Ok(host)
    } else {
        Err(ReportError::DeviceId(host))
    }
}

/// The fleet's questions, for the daemon's loop to answer (attestation
/// challenges: the attestor quotes).
#[cfg(feature = "report")]
pub type Questions = tokio::sync::mpsc::Receiver<guardian_report::Asked>;
/// Without the fleet link there are no questions.
#[cfg(not(feature = "report"))]
pub type Questions = tokio::sync::mpsc::Receiver<std::convert::Infallible>;

/// The pushed policy sets the link receives for the device's group: the
/// newest value, replaced by a newer one if the daemon has not taken it
/// yet.
pub type PolicySets =
    tokio::sync::watch::Receiver<Option<std::sync::Arc<guardian_report::ReceivedSet>>>;

/// A started link: the reporter, the fleet's questions (if it may ask),
/// the group's pushed policy sets (if the device follows a group).
pub struct Started {
    /// The reporter.
    pub reporter: Reporter,
    /// The fleet's questions.
    pub questions: Option<Questions>,
    /// The policy sets pushed to the group.
    pub policy_sets: Option<PolicySets>,
}

/// Without the fleet link built in: `None` when `[report]` names no
/// server, an error when it does.
#[cfg(not(feature = "report"))]
pub fn start(cfg: &ReportConfig, _group: &str) -> Result<Option<Started>, ReportError> {
    if cfg.enabled() {
        return Err(ReportError::NotBuilt);
    }
    Ok(None)
}

/// Open the spool and start the reporter on the current runtime; `None`
/// when `[report]` names no server. With `answer_challenges`, the
/// fleet's questions come out of the returned receiver; with a `group`
/// (`[policy] group`), the sets pushed to it.
#[cfg(feature = "report")]
pub fn start(cfg: &ReportConfig, group: &str) -> Result<Option<Started>, ReportError> {
    if !cfg.enabled() {
        return Ok(None);
    }
    let device = device_id(cfg)?;
    let spool = Spool::open(SpoolConfig {
        dir: cfg.spool_dir.clone(),
        max_bytes: cfg.spool_max_mib * 1024 * 1024,
        segment_bytes: cfg.segment_kib * 1024,
        fsync: if cfg.fsync == "always" {
            Fsync::Always
        } else {
            Fsync::Interval(std::time::Duration::from_millis(cfg.fsync_interval_ms))
        },
    })
    .map_err(ReportError::Spool)?;
    let mut link = LinkConfig::new(&device, cfg.servers.clone());
    link.subject_prefix = cfg.subject_prefix.clone();
    let password = match &cfg.password_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .map_err(|source| ReportError::Password {
                    path: p.clone(),
                    source,
                })?
                .trim_end()
                .to_owned(),
        ),
        None => None,
    };
    if let Some(ca) = &cfg.tls_ca {
        link.tls = Some(
            guardian_report::nats::Tls::load(&guardian_report::nats::TlsFiles {
                ca: ca.clone(),
                cert: cfg.tls_cert.clone(),
                key: cfg.tls_key.clone(),
            })
            .map_err(ReportError::Tls)?,
        );
    }
    link.credentials = Credentials {
        user: (!cfg.user.is_empty()).then(|| cfg.user.clone()),
        password,
    };
    // One question at a time: a quote takes a TPM's while, and a fleet
    // that asks again before the answer is refused ("busy"), not queued.
    let questions = if cfg.answer_challenges {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        link.questions = Some(tx);
        Some(rx)
    } else {
        None
    };
    let policy_sets = (!group.is_empty()).then(|| {
        let (tx, rx) = tokio::sync::watch::channel(None);
        link.policy_sets = Some(guardian_report::PolicySets {
            group: group.to_owned(),
            tx: std::sync::Arc::new(tx),
        });
        rx
    });
    Reporter::start(spool, link)
        .map(|reporter| {
            Some(Started {
                reporter,
                questions,
                policy_sets,
            })
        })
        .map_err(ReportError::Start)
}

/// A pushed policy set's fate for the fleet: refused (an alert, with the
/// reason) or put in force (a measurement-class record).
pub fn policy_set(reporter: &Reporter, refused: bool, body: &serde_json::Value) {
    let class = if refused {
        Class::Alert
    } else {
        Class::Measurement
    };
    match serde_json::to_vec(body) {
        Ok(b) => {
            reporter.submit(class, b);
        }
        Err(e) => log::error!("report: cannot encode a policy set record: {e}"),
    }
}

/// Answer one of the fleet's questions: an attestation challenge or an
/// enrolment step goes to the attestor (which owns the TPM), and its
/// answer back to the link, from a task of its own so the loop never
/// waits.
#[cfg(feature = "report")]
pub fn answer(asked: guardian_report::Asked, attestor: &crate::continuous::Attestor) {
    use guardian_report::wire::Question;
    let rx = match asked.question {
        Question::Attest { nonce } => match hex::decode(&nonce) {
            Ok(n) => attestor.quote(n),
            Err(e) => {
                let _ = asked.answer.send(Err(format!("nonce is not hex: {e}")));
                return;
            }
        },
        Question::EnrolRequest => attestor.enrol(crate::continuous::EnrolStep::Request),
        Question::Activate { challenge } => match serde_json::from_value(challenge) {
            Ok(c) => attestor.enrol(crate::continuous::EnrolStep::Activate(Box::new(c))),
            Err(e) => {
                let _ = asked
                    .answer
                    .send(Err(format!("not an enrolment challenge: {e}")));
                return;
            }
        },
    };
    tokio::spawn(async move {
        let answer = rx
            .await
            .unwrap_or_else(|_| Err("the attestor stopped".to_owned()));
        let _ = asked.answer.send(answer);
    });
}

/// Without the fleet link there is nothing to answer.
#[cfg(not(feature = "report"))]
pub fn answer(asked: std::convert::Infallible, _attestor: &crate::continuous::Attestor) {
    match asked {}
}

/// The report class of a security event: refused or alerted attempts are
/// alerts; what was allowed is an event.
pub fn class_of(ev: &SecurityEvent) -> Class {
    match ev.verdict {
        Verdict::Deny | Verdict::Alert => Class::Alert,
        Verdict::Allow => Class::Event,
    }
}

/// Hand a security event to the reporter (never waits).
pub fn event(reporter: &Reporter, ev: &SecurityEvent) {
    match serde_json::to_vec(ev) {
        Ok(body) => {
            reporter.submit(class_of(ev), body);
        }
        Err(e) => log::error!("report: cannot encode a security event: {e}"),
    }
}

/// A change of the guard's state, as the evidence records it (`action`:
/// `start`, `adopt`, `stop`, `unload`, `gap`, `tables`, `drops`, ...).
/// A window without enforcement (the programs unloaded), tables changed
/// behind guardian's back, or lost events are an alert for the fleet; the
/// rest (a start, an adoption, the agent stopping with its programs still
/// attached) a measurement-class record.
pub fn guard(reporter: &Reporter, action: &str, mode: &str, detail: &str) {
    let class = match action {
        "unload" | "gap" | "tables" | "drops" | "stalled" => Class::Alert,
        _ => Class::Measurement,
    };
    let body = serde_json::json!({
        "kind": "guard",
        "action": action,
        "mode": mode,
        "detail": detail,
    });
    match serde_json::to_vec(&body) {
        Ok(b) => {
            reporter.submit(class, b);
        }
        Err(e) => log::error!("report: cannot encode a guard record: {e}"),
    }
}

/// Hand a status summary (any JSON-serialisable status) to the reporter.
pub fn status(reporter: &Reporter, status: &impl serde::Serialize) {
    match serde_json::to_vec(status) {
        Ok(body) => {
            reporter.submit(Class::Status, body);
        }
        Err(e) => log::error!("report: cannot encode the status: {e}"),
    }
}
