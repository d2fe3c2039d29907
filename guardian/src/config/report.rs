//! The `[report]` section of the config (the fleet link reads it; the
//! config owns it, so that the config depends on nothing it configures).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[report]`: the fleet link. Every security event, measurement result
/// and status summary goes through a durable spool to the fleet's NATS
/// JetStream (see `guardian-report` and docs/fleet.md).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ReportConfig {
    /// NATS servers of the fleet (`nats://host:port`). Empty: no reporting
    /// (said at start and in `guardian status`).
    #[serde(default)]
    pub servers: Vec<String>,
    /// This device's id on the fleet (1-64 of A-Z a-z 0-9 _ -). Empty: the
    /// host name.
    #[serde(default)]
    pub device_id: String,
    /// Subject prefix; the device publishes on `<prefix>.<device_id>`.
    #[serde(default = "default_subject_prefix")]
    pub subject_prefix: String,
    /// The spool's directory, on persistent storage.
    #[serde(default = "default_spool_dir")]
    pub spool_dir: PathBuf,
    /// The spool's size bound in MiB; past it the least important records
    /// are dropped first (counted, reported, recorded in the evidence).
    #[serde(default = "default_spool_mib")]
    pub spool_max_mib: u64,
    /// Segment size in KiB.
    #[serde(default = "default_segment_kib")]
    pub segment_kib: u64,
    /// `"always"`: every record synced to disk before it is sent (one
    /// flash write per record); `"interval"`: synced every
    /// `fsync_interval_ms` (a power cut loses at most that, never sent).
    #[serde(default = "default_fsync")]
    pub fsync: String,
    /// See `fsync`.
    #[serde(default = "default_fsync_ms")]
    pub fsync_interval_ms: u64,
    /// The user name this device authenticates as (per-device credentials).
    #[serde(default)]
    pub user: String,
    /// A file holding this device's password (protected like guardian's own
    /// files).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// TLS: the CA that signs the fleet servers' certificates (PEM). Set,
    /// the link requires TLS.
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// TLS: this device's certificate (PEM), for servers that verify
    /// clients (protected like guardian's own files).
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// TLS: this device's private key (PEM; protected).
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// A status summary is reported this often.
    #[serde(default = "default_report_status_secs")]
    pub status_interval_secs: u64,
    /// Answer the fleet's attestation challenges: the fleet asks on
    /// `guardian.ask.<device>` with its nonce, and the attestor quotes
    /// with the TPM and sends the evidence bundle back. Off: the fleet
    /// sees this device as unreachable for attestation.
    #[serde(default = "default_true")]
    pub answer_challenges: bool,
}

impl Default for ReportConfig {
    fn default() -> Self {
        Self {
            servers: Vec::new(),
            device_id: String::new(),
            subject_prefix: default_subject_prefix(),
            spool_dir: default_spool_dir(),
            spool_max_mib: default_spool_mib(),
            segment_kib: default_segment_kib(),
            fsync: default_fsync(),
            fsync_interval_ms: default_fsync_ms(),
            user: String::new(),
            password_file: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            status_interval_secs: default_report_status_secs(),
            answer_challenges: true,
        }
    }
}

fn default_subject_prefix() -> String {
    "guardian.in".to_owned()
}
fn default_spool_dir() -> PathBuf {
    PathBuf::from("/var/lib/guardian/spool")
}
fn default_spool_mib() -> u64 {
    64
}
fn default_segment_kib() -> u64 {
    1024
}
fn default_fsync() -> String {
    "interval".to_owned()
}
fn default_fsync_ms() -> u64 {
    1000
}
fn default_report_status_secs() -> u64 {
    60
}
fn default_true() -> bool {
    true
}

impl ReportConfig {
    /// Whether reporting is configured.
    pub fn enabled(&self) -> bool {
        !self.servers.is_empty()
    }

    pub(super) fn validate(&self) -> Result<(), String> {
        if !self.enabled() {
            return Ok(());
        }
        let id = &self.device_id;
        if !id.is_empty() && !guardian_report::wire::valid_device_id(id) {
            return Err(format!(
                "[report] device_id = {id:?}: 1-64 of A-Z a-z 0-9 _ - (it names a subject)"
            ));
        }
        if self.fsync != "always" && self.fsync != "interval" {
            return Err(format!(
                "[report] fsync = {:?}: \"always\" or \"interval\"",
                self.fsync
            ));
        }
        if self.fsync == "interval" && self.fsync_interval_ms == 0 {
            return Err("[report] fsync_interval_ms must be at least 1".to_owned());
        }
        if self.spool_max_mib == 0
            || self.segment_kib == 0
            || self.segment_kib * 1024 > self.spool_max_mib * 1024 * 1024
        {
            return Err(format!(
                "[report] spool_max_mib = {} and segment_kib = {}: both at least 1, a segment no larger than the spool",
                self.spool_max_mib, self.segment_kib
            ));
        }
        if (self.tls_cert.is_some() || self.tls_key.is_some()) && self.tls_ca.is_none() {
            return Err(
                "[report] tls_cert and tls_key need tls_ca (the CA of the fleet's servers)"
                    .to_owned(),
            );
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err("[report] tls_cert and tls_key go together".to_owned());
        }
        if self.status_interval_secs == 0 {
            return Err("[report] status_interval_secs must be at least 1".to_owned());
        }
        for s in &self.servers {
            let hp = s.strip_prefix("nats://").unwrap_or(s);
            if hp
                .rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
            {
                return Err(format!("[report] servers: {s:?} is not nats://host:port"));
            }
        }
        Ok(())
    }
}
