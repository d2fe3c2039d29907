//! The TPM, through one in-process tss-esapi context: extend and read the
//! SHA-256 bank of a PCR, the attestation key and quotes, and the NV index
//! that keeps the pushed policy sets' floor.
//!
//! The TCTI (how to reach the TPM) comes from, in order: the config
//! (`[measure] tcti`), `TPM2TOOLS_TCTI`, `TCTI` (the variables tpm2-tools
//! reads, so both agree on one machine), then `device:/dev/tpmrm0`, the
//! kernel's resource manager.

use std::str::FromStr as _;

use tss_esapi::{
    Context, TctiNameConf,
    abstraction::{DefaultKey, ak, ek},
    handles::{KeyHandle, ObjectHandle, PcrHandle, PersistentTpmHandle, TpmHandle},
    interface_types::{
        algorithm::{AsymmetricAlgorithm, HashingAlgorithm, SignatureSchemeAlgorithm},
        dynamic_handles::Persistent,
        resource_handles::{NvAuth, Provision},
        session_handles::AuthSession,
    },
    structures::{
        Data, Digest, DigestValues, HashScheme, PcrSelectionListBuilder, PcrSlot, Public,
        SignatureScheme,
    },
    traits::Marshall as _,
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
    /// An attestation-key operation failed.
    #[error("attestation key at handle {handle:#010x}: {what}: {source}")]
    Ak {
        /// The persistent handle.
        handle: u32,
        /// What was being done.
        what: &'static str,
        /// Why.
        #[source]
        source: tss_esapi::Error,
    },
    /// An NV index operation failed.
    #[error("TPM NV index {index:#010x}: {what}")]
    Nv {
        /// The index.
        index: u32,
        /// What was being done.
        what: &'static str,
        /// Why.
        #[source]
        source: tss_esapi::Error,
    },
    /// An NV index that is not the floor's kind (8 bytes, owner read and
    /// write): another user's index, left alone.
    #[error("TPM NV index {index:#010x} exists and is not an 8-byte owner index: {what}")]
    NvKind {
        /// The index.
        index: u32,
        /// What is wrong.
        what: String,
    },
    /// The AK is not of the kind guardian makes (ECC P-256, ECDSA/SHA-256).
    #[error("attestation key at handle {handle:#010x} is not an ECC P-256 signing key")]
    AkKind {
        /// The persistent handle.
        handle: u32,
    },
}

/// What a quote returns, marshalled as the TPM produced it.
#[derive(Clone, Debug)]
pub struct Quote {
    /// `TPMS_ATTEST` (the body of the TPM2B_ATTEST the TPM returned; what
    /// `tpm2_checkquote -m` reads).
    pub attest: Vec<u8>,
    /// `TPMT_SIGNATURE` (what `tpm2_checkquote -s` reads).
    pub signature: Vec<u8>,
    /// The quoted PCRs' SHA-256 values, read around the quote.
    pub pcrs: Vec<(u32, [u8; 32])>,
}

/// The public part of the attestation key.
#[derive(Clone, Debug)]
pub struct AkPublic {
    /// `TPM2B_PUBLIC`, marshalled.
    pub tpm2b_public: Vec<u8>,
    /// Uncompressed SEC1 point (`04 || x || y`).
    pub sec1: Vec<u8>,
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
    /// The tss-esapi context (other TPM users in the crate, such as
    /// enrolment, issue their own commands through it).
    pub(crate) ctx: Context,
    tcti: String,
}

fn nv_handle(index: u32) -> Result<tss_esapi::handles::NvIndexTpmHandle, TpmError> {
    tss_esapi::handles::NvIndexTpmHandle::new(index).map_err(|source| TpmError::Nv {
        index,
        what: "not an NV index",
        source,
    })
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

    /// Manufacturer and vendor string, e.g. `IBM "SW   TPM"` for swtpm.
    pub fn vendor(&mut self) -> String {
        use tss_esapi::constants::PropertyTag as P;
        let text = |v: Option<u32>| {
            v.map(|v| {
                v.to_be_bytes()
                    .iter()
                    .filter(|b| b.is_ascii_graphic() || **b == b' ')
                    .map(|b| *b as char)
                    .collect::<String>()
            })
            .unwrap_or_default()
        };
        let manufacturer = text(self.ctx.get_tpm_property(P::Manufacturer).ok().flatten());
        let vendor: String = [
            P::VendorString1,
            P::VendorString2,
            P::VendorString3,
            P::VendorString4,
        ]
        .into_iter()
        .map(|p| text(self.ctx.get_tpm_property(p).ok().flatten()))
        .collect();
        format!("{} \"{}\"", manufacturer.trim(), vendor.trim())
    }

    /// True for a software TPM (swtpm/libtpms reports manufacturer "IBM"
    /// and vendor "SW TPM"): its keys and PCRs live in a file, so nothing
    /// it attests is rooted in hardware.
    pub fn is_software(&mut self) -> bool {
        let v = self.vendor();
        v.starts_with("IBM") || v.contains("SW")
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

    /// The attestation key persisted at `handle`, created if there is none:
    /// a restricted ECC P-256 signing key (ECDSA, SHA-256) made under the
    /// endorsement hierarchy's ECC EK with the TCG's default templates, then
    /// made persistent, so it survives reboots and its public part can be
    /// enrolled with the verifier once.
    pub fn ak(&mut self, handle: u32) -> Result<(KeyHandle, AkPublic), TpmError> {
        let err = |what| {
            move |source| TpmError::Ak {
                handle,
                what,
                source,
            }
        };
        let persistent = PersistentTpmHandle::new(handle).map_err(err("invalid handle"))?;
        let existing = self.ctx.execute_without_session(|ctx| {
            ctx.tr_from_tpm_public(TpmHandle::Persistent(persistent))
        });
        let key = match existing {
            Ok(obj) => KeyHandle::from(obj),
            Err(_) => {
                log::info!("creating the attestation key at persistent handle {handle:#010x}");
                let ek = ek::create_ek_object(&mut self.ctx, AsymmetricAlgorithm::Ecc, DefaultKey)
                    .map_err(err("creating the EK"))?;
                let created = ak::create_ak(
                    &mut self.ctx,
                    ek,
                    HashingAlgorithm::Sha256,
                    SignatureSchemeAlgorithm::EcDsa,
                    None,
                    DefaultKey,
                )
                .map_err(err("creating the AK"))?;
                let loaded = ak::load_ak(
                    &mut self.ctx,
                    ek,
                    None,
                    created.out_private,
                    created.out_public,
                )
                .map_err(err("loading the AK"))?;
                let obj = self
                    .ctx
                    .execute_with_session(Some(AuthSession::Password), |ctx| {
                        ctx.evict_control(
                            Provision::Owner,
                            ObjectHandle::from(loaded),
                            Persistent::Persistent(persistent),
                        )
                    })
                    .map_err(err("making the AK persistent"))?;
                let _ = self.ctx.flush_context(ObjectHandle::from(loaded));
                let _ = self.ctx.flush_context(ObjectHandle::from(ek));
                KeyHandle::from(obj)
            }
        };
        let (public, _, _) = self
            .ctx
            .execute_without_session(|ctx| ctx.read_public(key))
            .map_err(err("reading the AK public part"))?;
        let sec1 = match &public {
            Public::Ecc { unique, .. } => {
                let (x, y) = (unique.x().value(), unique.y().value());
                if x.len() > 32 || y.len() > 32 {
                    return Err(TpmError::AkKind { handle });
                }
                let mut p = vec![4u8];
                p.extend(std::iter::repeat_n(0, 32 - x.len()));
                p.extend_from_slice(x);
                p.extend(std::iter::repeat_n(0, 32 - y.len()));
                p.extend_from_slice(y);
                p
            }
            _ => return Err(TpmError::AkKind { handle }),
        };
        let tpmt = public
            .marshall()
            .map_err(err("marshalling the AK public part"))?;
        let mut tpm2b = (tpmt.len() as u16).to_be_bytes().to_vec();
        tpm2b.extend_from_slice(&tpmt);
        Ok((
            key,
            AkPublic {
                tpm2b_public: tpm2b,
                sec1,
            },
        ))
    }

    /// TPM2_Quote over the SHA-256 bank of `pcrs` with `nonce` as the
    /// qualifying data, signed by the AK. The PCRs are read before and after
    /// the quote, and the quote retried if something extended one in
    /// between, so the values returned are the ones quoted.
    pub fn quote(&mut self, ak: KeyHandle, nonce: &[u8], pcrs: &[u32]) -> Result<Quote, TpmError> {
        let first = pcrs.first().copied().unwrap_or(0);
        let err = move |source| TpmError::Command {
            command: "Quote",
            pcr: first,
            source,
        };
        let mut slots = Vec::new();
        for &p in pcrs {
            slots.push(PcrSlot::try_from(1u32 << p).map_err(err)?);
        }
        let mut last = None;
        for _ in 0..3 {
            let before = pcrs
                .iter()
                .map(|&p| self.read(p).map(|v| (p, v)))
                .collect::<Result<Vec<_>, _>>()?;
            let sel = PcrSelectionListBuilder::new()
                .with_selection(HashingAlgorithm::Sha256, &slots)
                .build()
                .map_err(err)?;
            let data = Data::try_from(nonce.to_vec()).map_err(err)?;
            let (attest, signature) = self
                .ctx
                .execute_with_session(Some(AuthSession::Password), |ctx| {
                    ctx.quote(
                        ak,
                        data,
                        SignatureScheme::EcDsa {
                            hash_scheme: HashScheme::new(HashingAlgorithm::Sha256),
                        },
                        sel,
                    )
                })
                .map_err(err)?;
            let after = pcrs
                .iter()
                .map(|&p| self.read(p).map(|v| (p, v)))
                .collect::<Result<Vec<_>, _>>()?;
            let q = Quote {
                attest: attest.marshall().map_err(err)?,
                signature: signature.marshall().map_err(err)?,
                pcrs: after.clone(),
            };
            if before == after {
                return Ok(q);
            }
            last = Some(q);
        }
        // PCRs kept moving: return the last attempt; the verifier will say
        // the digest does not match rather than us guessing.
        last.ok_or_else(|| {
            err(tss_esapi::Error::WrapperError(
                tss_esapi::WrapperErrorKind::WrongValueFromTpm,
            ))
        })
    }

    /// The 8-byte big-endian number kept at NV `index` (an owner index);
    /// `None` when the index is not defined.
    pub fn nv_read_u64(&mut self, index: u32) -> Result<Option<u64>, TpmError> {
        let h = nv_handle(index)?;
        if self.nv_public(index, h)?.is_none() {
            return Ok(None);
        }
        let data = self
            .ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                tss_esapi::abstraction::nv::read_full(ctx, NvAuth::Owner, h)
            })
            .map_err(|source| TpmError::Nv {
                index,
                what: "read",
                source,
            })?;
        let bytes: [u8; 8] = data
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| TpmError::NvKind {
                index,
                what: format!("{} bytes read", data.len()),
            })?;
        Ok(Some(u64::from_be_bytes(bytes)))
    }

    /// Write `value` (8 bytes, big-endian) at NV `index`, defining the
    /// index first if it is absent: 8 bytes, read and written with the
    /// owner's authorisation (empty on most boards; the index keeps the
    /// value through a reflash of the disk, not from the owner).
    pub fn nv_write_u64(&mut self, index: u32, value: u64) -> Result<(), TpmError> {
        use tss_esapi::{
            attributes::NvIndexAttributesBuilder, handles::NvIndexHandle,
            structures::NvPublicBuilder,
        };
        let h = nv_handle(index)?;
        let nv = |what| {
            move |source| TpmError::Nv {
                index,
                what,
                source,
            }
        };
        let handle: NvIndexHandle = if self.nv_public(index, h)?.is_some() {
            self.ctx
                .execute_without_session(|ctx| ctx.tr_from_tpm_public(TpmHandle::NvIndex(h)))
                .map_err(nv("open"))?
                .into()
        } else {
            let attributes = NvIndexAttributesBuilder::new()
                .with_owner_write(true)
                .with_owner_read(true)
                .build()
                .map_err(nv("attributes"))?;
            let public = NvPublicBuilder::new()
                .with_nv_index(h)
                .with_index_name_algorithm(HashingAlgorithm::Sha256)
                .with_index_attributes(attributes)
                .with_data_area_size(8)
                .build()
                .map_err(nv("public area"))?;
            self.ctx
                .execute_with_session(Some(AuthSession::Password), |ctx| {
                    ctx.nv_define_space(Provision::Owner, None, public)
                })
                .map_err(nv("define"))?
        };
        let data = tss_esapi::structures::MaxNvBuffer::try_from(value.to_be_bytes().to_vec())
            .map_err(nv("buffer"))?;
        let written = self
            .ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.nv_write(NvAuth::Owner, handle, data, 0)
            })
            .map_err(nv("write"));
        let _ = self.ctx.tr_close(&mut ObjectHandle::from(handle));
        written
    }

    /// The index's public area if it is defined, checked to be the
    /// floor's kind.
    fn nv_public(
        &mut self,
        index: u32,
        h: tss_esapi::handles::NvIndexTpmHandle,
    ) -> Result<Option<()>, TpmError> {
        let defined =
            tss_esapi::abstraction::nv::list(&mut self.ctx).map_err(|source| TpmError::Nv {
                index,
                what: "list the NV indices",
                source,
            })?;
        let Some((public, _)) = defined.iter().find(|(p, _)| p.nv_index() == h) else {
            return Ok(None);
        };
        let a = public.attributes();
        if public.data_size() != 8 || !a.owner_read() || !a.owner_write() {
            return Err(TpmError::NvKind {
                index,
                what: format!(
                    "{} bytes, owner read {}, owner write {}",
                    public.data_size(),
                    a.owner_read(),
                    a.owner_write()
                ),
            });
        }
        Ok(Some(()))
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
