//! The ledger: the measurement log and the TPM together. Every piece of
//! evidence guardian produces (boot measurements, policy loads, tamper
//! records, the guard's starts and stops) goes through [`Ledger::record`],
//! which is the one place that appends, extends and voids:
//!
//! 1. append the record to the log and `fsync` it;
//! 2. extend its digest into its PCR;
//! 3. if the extend fails, append a note that voids the record (the PCR
//!    does not contain it) and return the error.
//!
//! So the log always explains the PCR: a crash between 1 and 2 leaves a
//! record the PCR lacks, which the replay shows; there is never an extend
//! without its record.

use std::path::Path;

use super::{
    event::{Event, GuardEvent},
    log::{Contents, Log, LogError, Record},
};
use crate::tpm::{self, Tpm, TpmError};

/// Errors recording evidence.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The log could not be written (nothing was extended).
    #[error(transparent)]
    Log(#[from] LogError),
    /// The extend failed; the record was voided in the log.
    #[error("extending PCR {pcr} with record {seq}")]
    Extend {
        /// The PCR.
        pcr: u32,
        /// The voided record.
        seq: u64,
        /// Why.
        #[source]
        source: TpmError,
    },
    /// Reading a PCR failed.
    #[error(transparent)]
    Tpm(#[from] TpmError),
}

/// The TPM guardian measures into, opened once with its warnings.
pub struct OpenedTpm {
    /// The TPM.
    pub tpm: Tpm,
    /// Set when it is a software TPM: its evidence is not rooted in
    /// hardware (logged as a warning when opened).
    pub software: Option<String>,
}

/// Open the TPM the config names (`[measure] tcti`, else the tpm2-tools
/// variables, else the kernel's resource manager), and warn, once, when
/// it is a software TPM.
pub fn open_tpm(configured: Option<&str>) -> Result<OpenedTpm, TpmError> {
    let tcti = tpm::choose_tcti(configured, |k| std::env::var(k).ok());
    let mut t = Tpm::open(&tcti)?;
    let software = t.is_software().then(|| {
        let w = format!(
            "INSECURE: the TPM at {tcti} is a software TPM ({}); its evidence is not rooted in hardware",
            t.vendor()
        );
        log::warn!("{w}");
        w
    });
    Ok(OpenedTpm { tpm: t, software })
}

/// The log and, when there is one, the TPM.
pub struct Ledger {
    log: Log,
    tpm: Option<Tpm>,
    boot: String,
}

impl Ledger {
    /// Open the log at `path`; extend into `tpm` (`None`: records are
    /// logged as not extended, and whoever chose that has warned).
    pub fn open(path: &Path, tpm: Option<Tpm>) -> Result<Self, LogError> {
        Ok(Self {
            log: Log::open(path)?,
            tpm,
            boot: super::log::boot_id(),
        })
    }

    /// Whether records are extended into a TPM.
    pub fn has_tpm(&self) -> bool {
        self.tpm.is_some()
    }

    /// What the log holds.
    pub fn contents(&self) -> &Contents {
        self.log.contents()
    }

    /// This boot's id.
    pub fn boot_id(&self) -> &str {
        &self.boot
    }

    /// Replay this boot's records of `pcr`.
    pub fn replay(&self, pcr: u32) -> [u8; 32] {
        self.log.contents().replay(pcr, &self.boot)
    }

    /// The TPM, for commands that extend nothing (the attestor's quotes for
    /// the fleet): one session for the daemon.
    pub fn tpm_mut(&mut self) -> Option<&mut Tpm> {
        self.tpm.as_mut()
    }

    /// The TPM's value of `pcr` (`None` without a TPM).
    pub fn read_pcr(&mut self, pcr: u32) -> Result<Option<[u8; 32]>, TpmError> {
        self.tpm.as_mut().map(|t| t.read(pcr)).transpose()
    }

    /// Record `event` in `pcr`: append, extend, void on failure (see the
    /// module docs). Returns the record as written.
    pub fn record(&mut self, pcr: u32, event: Event) -> Result<Record, LedgerError> {
        let mut rec = Record::new(pcr, event);
        rec.extended = self.tpm.is_some();
        let rec = self.log.append(rec)?;
        if let Some(t) = self.tpm.as_mut()
            && let Err(source) = t.extend(pcr, &rec.digest_bytes())
        {
            let mut void = Record::note(format!("extend of record {} failed: {source}", rec.seq));
            void.voids = Some(rec.seq);
            // If even this fails the log shows a record the PCR lacks,
            // which a replay reports; the extend error is what matters.
            let _ = self.log.append(void);
            return Err(LedgerError::Extend {
                pcr,
                seq: rec.seq,
                source,
            });
        }
        Ok(rec)
    }

    /// Append a note (never extended).
    pub fn note(&mut self, text: impl Into<String>) -> Result<Record, LogError> {
        self.log.append(Record::note(text))
    }

    /// The last start/stop-type guard record of this boot, if any.
    pub fn last_guard(&self) -> Option<&GuardEvent> {
        last_guard(self.log.contents(), &self.boot)
    }
}

/// The last guard lifecycle record (`start`, `adopt`, `stop`, `unload`,
/// `gap`) of `boot` in `contents`.
pub fn last_guard<'a>(contents: &'a Contents, boot: &'a str) -> Option<&'a GuardEvent> {
    contents
        .extended_this_boot(boot)
        .filter_map(|r| match &r.event {
            Event::Guard(g) if LIFECYCLE.contains(&g.action.as_str()) => Some(g),
            _ => None,
        })
        .last()
}

/// Guard actions that start or end a period of enforcement.
pub const LIFECYCLE: [&str; 5] = ["start", "adopt", "stop", "unload", "gap"];

/// A guard lifecycle event for this process.
pub fn guard_event(action: &str, mode: &str, detail: impl Into<String>) -> Event {
    Event::Guard(GuardEvent {
        action: action.to_owned(),
        mode: mode.to_owned(),
        pid: std::process::id(),
        detail: detail.into(),
    })
}
