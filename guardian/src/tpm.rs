//! The TPM, through one in-process tss-esapi context: extend and read the
//! SHA-256 bank of a PCR.
//!
//! The TCTI (how to reach the TPM) comes from, in order: the config
//! (`[measure] tcti`), `TPM2TOOLS_TCTI`, `TCTI` (the variables tpm2-tools
//! reads, so both agree on one machine), then `device:/dev/tpmrm0`, the
//! kernel's resource manager.

use std::str::FromStr as _;

use tss_esapi::{
    Context, TctiNameConf,
    handles::PcrHandle,
    interface_types::{algorithm::HashingAlgorithm, session_handles::AuthSession},
    structures::{Digest, DigestValues, PcrSelectionListBuilder, PcrSlot},
};

/// The TCTI used when nothing else is configured.
pub const DEFAULT_TCTI: &str = "device:/dev/tpmrm0";

/// Errors talking to the TPM.
#[derive(Debug, thiserror::Error)]
pub enum TpmError {
    /// The TCTI string is malformed.
    #[error("invalid TCTI {tcti:?}: {source}")]
    Tcti {
        /// The string.
        tcti: String,
        /// Why.
        #[source]
        source: tss_esapi::Error,
    },
    /// No TPM at the configured place.
    #[error(
        "no TPM reachable through {tcti}: {detail} (no TPM on this board? for development only, `guardian measure --no-tpm`)"
    )]
    Absent {
        /// The TCTI.
        tcti: String,
        /// What failed.
        detail: String,
    },
    /// A TPM command failed.
    #[error("TPM {command} on PCR {pcr} failed: {source}")]
    Command {
        /// Which command.
        command: &'static str,
        /// The PCR.
        pcr: u32,
        /// Why.
        #[source]
        source: tss_esapi::Error,
    },
    /// An index that is not a PCR.
    #[error("PCR {0} does not exist")]
    NoSuchPcr(u32),
}

/// Pick the TCTI: config, then `TPM2TOOLS_TCTI`, then `TCTI`, then the
/// default.
pub fn choose_tcti(configured: Option<&str>, env: impl Fn(&str) -> Option<String>) -> String {
    configured
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .or_else(|| env("TPM2TOOLS_TCTI").filter(|s| !s.is_empty()))
        .or_else(|| env("TCTI").filter(|s| !s.is_empty()))
        .unwrap_or_else(|| DEFAULT_TCTI.to_owned())
}

/// An open TPM.
pub struct Tpm {
    ctx: Context,
    tcti: String,
}

fn handle(pcr: u32) -> Result<PcrHandle, TpmError> {
    Ok(match pcr {
        0 => PcrHandle::Pcr0,
        1 => PcrHandle::Pcr1,
        2 => PcrHandle::Pcr2,
        3 => PcrHandle::Pcr3,
        4 => PcrHandle::Pcr4,
        5 => PcrHandle::Pcr5,
        6 => PcrHandle::Pcr6,
        7 => PcrHandle::Pcr7,
        8 => PcrHandle::Pcr8,
        9 => PcrHandle::Pcr9,
        10 => PcrHandle::Pcr10,
        11 => PcrHandle::Pcr11,
        12 => PcrHandle::Pcr12,
        13 => PcrHandle::Pcr13,
        14 => PcrHandle::Pcr14,
        15 => PcrHandle::Pcr15,
        16 => PcrHandle::Pcr16,
        17 => PcrHandle::Pcr17,
        18 => PcrHandle::Pcr18,
        19 => PcrHandle::Pcr19,
        20 => PcrHandle::Pcr20,
        21 => PcrHandle::Pcr21,
        22 => PcrHandle::Pcr22,
        23 => PcrHandle::Pcr23,
        other => return Err(TpmError::NoSuchPcr(other)),
    })
}

impl Tpm {
    /// Open the TPM behind `tcti`.
    pub fn open(tcti: &str) -> Result<Self, TpmError> {
        // A device TCTI whose node is missing: say so plainly instead of
        // the loader's generic failure.
        if let Some(dev) = tcti.strip_prefix("device:")
            && !std::path::Path::new(dev).exists()
        {
            return Err(TpmError::Absent {
                tcti: tcti.to_owned(),
                detail: format!("{dev} does not exist"),
            });
        }
        let conf = TctiNameConf::from_str(tcti).map_err(|source| TpmError::Tcti {
            tcti: tcti.to_owned(),
            source,
        })?;
        let ctx = Context::new(conf).map_err(|e| TpmError::Absent {
            tcti: tcti.to_owned(),
            detail: e.to_string(),
        })?;
        Ok(Self {
            ctx,
            tcti: tcti.to_owned(),
        })
    }

    /// The TCTI in use.
    pub fn tcti(&self) -> &str {
        &self.tcti
    }

    /// Extend the SHA-256 bank of `pcr` with `digest` (other banks are
    /// left alone: a TPM extends only the banks it is given digests for).
    pub fn extend(&mut self, pcr: u32, digest: &[u8; 32]) -> Result<(), TpmError> {
        let h = handle(pcr)?;
        let err = |source| TpmError::Command {
            command: "PCR_Extend",
            pcr,
            source,
        };
        let mut vals = DigestValues::new();
        vals.set(
            HashingAlgorithm::Sha256,
            Digest::try_from(digest.to_vec()).map_err(err)?,
        );
        // PCR 8-15 have an empty authValue: a password session suffices.
        self.ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| ctx.pcr_extend(h, vals))
            .map_err(err)
    }

    /// Read the SHA-256 bank of `pcr`.
    pub fn read(&mut self, pcr: u32) -> Result<[u8; 32], TpmError> {
        let err = |source| TpmError::Command {
            command: "PCR_Read",
            pcr,
            source,
        };
        let slot = PcrSlot::try_from(1u32 << pcr).map_err(err)?;
        let sel = PcrSelectionListBuilder::new()
            .with_selection(HashingAlgorithm::Sha256, &[slot])
            .build()
            .map_err(err)?;
        let (_, _, digests) = self
            .ctx
            .execute_without_session(|ctx| ctx.pcr_read(sel))
            .map_err(err)?;
        let value = digests
            .value()
            .first()
            .map(|d| d.value().to_vec())
            .unwrap_or_default();
        value.try_into().map_err(|_| {
            err(tss_esapi::Error::WrapperError(
                tss_esapi::WrapperErrorKind::WrongValueFromTpm,
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcti_precedence() {
        let env = |k: &str| match k {
            "TPM2TOOLS_TCTI" => Some("swtpm:port=1".to_owned()),
            "TCTI" => Some("mssim:port=2".to_owned()),
            _ => None,
        };
        assert_eq!(
            choose_tcti(Some("device:/dev/tpm0"), env),
            "device:/dev/tpm0"
        );
        assert_eq!(choose_tcti(None, env), "swtpm:port=1");
        assert_eq!(
            choose_tcti(Some(""), |k| (k == "TCTI").then(|| "x".into())),
            "x"
        );
        assert_eq!(choose_tcti(None, |_| None), DEFAULT_TCTI);
    }

    #[test]
    fn missing_device_is_a_clear_error() {
        let Err(e) = Tpm::open("device:/dev/no-such-tpm") else {
            panic!("opened a TPM that does not exist");
        };
        let e = e.to_string();
        assert!(
            e.contains("no TPM reachable") && e.contains("/dev/no-such-tpm"),
            "{e}"
        );
    }
}
