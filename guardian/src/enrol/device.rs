//! The device's side of enrolment: what it reads from its TPM for the
//! request (EK certificate, EK and AK public areas) and the credential
//! activation that answers the verifier's challenge.
//!
//! The EK is recreated from the TCG default template each time
//! (TPM2_CreatePrimary is deterministic for a given seed and template), so
//! nothing needs to be persisted and a persisted EK someone else made is
//! never trusted for its template.

use base64::{Engine as _, engine::general_purpose::STANDARD as B64};
use tss_esapi::{
    abstraction::{AsymmetricAlgorithmSelection, DefaultKey, ek, nv},
    constants::SessionType,
    handles::{KeyHandle, NvIndexTpmHandle, ObjectHandle, SessionHandle, TpmHandle},
    interface_types::{
        algorithm::HashingAlgorithm,
        ecc::EccCurve,
        key_bits::RsaKeyBits,
        resource_handles::NvAuth,
        session_handles::{AuthSession, PolicySession},
    },
    structures::{EncryptedSecret, IdObject, SymmetricDefinition},
    traits::Marshall as _,
};

use super::protocol::{Challenge, EkKind, Request, Response, VERSION};
use crate::tpm::{Tpm, TpmError};

/// The order EK certificates are looked for: the TCG low-range ECC and RSA
/// ones first (what hardware TPMs carry), then P-384, which is the only
/// ECC EK certificate swtpm_setup writes.
pub const EK_PREFERENCE: [EkKind; 3] = [EkKind::EccP256, EkKind::Rsa2048, EkKind::EccP384];

/// Errors on the device side.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// A TPM command failed.
    #[error("TPM: {what}: {source}")]
    Tpm {
        /// What was being done.
        what: &'static str,
        /// Why.
        #[source]
        source: tss_esapi::Error,
    },
    /// The attestation key could not be read or made.
    #[error("the attestation key: {source}")]
    Ak {
        /// Why.
        #[source]
        source: TpmError,
    },
    /// No EK certificate in any of the TCG indices.
    #[error(
        "no EK certificate in the TPM's NV (looked at 0x01c0000a ECC P-256, 0x01c00002 RSA-2048, 0x01c00016 ECC P-384): this TPM cannot prove its AK"
    )]
    NoEkCertificate,
    /// The certificate in NV is not one DER element.
    #[error("NV index {index:#010x} does not hold a DER certificate")]
    EkCertificateFormat {
        /// The index.
        index: u32,
    },
    /// A challenge field that is not base64.
    #[error("challenge field {0} is not valid base64")]
    Encoding(&'static str),
    /// A challenge of another version.
    #[error("the challenge has version {0}, this device speaks {VERSION}")]
    Version(u32),
}

fn selection(kind: EkKind) -> AsymmetricAlgorithmSelection {
    match kind {
        EkKind::Rsa2048 => AsymmetricAlgorithmSelection::Rsa(RsaKeyBits::Rsa2048),
        EkKind::EccP256 => AsymmetricAlgorithmSelection::Ecc(EccCurve::NistP256),
        EkKind::EccP384 => AsymmetricAlgorithmSelection::Ecc(EccCurve::NistP384),
    }
}

fn tpm_err(what: &'static str) -> impl FnOnce(tss_esapi::Error) -> DeviceError {
    move |source| DeviceError::Tpm { what, source }
}

impl Tpm {
    /// The EK certificate of `kind` from its TCG NV index, DER, or None if
    /// the index is not defined. NV indices are often larger than the
    /// certificate; the padding after the DER element is dropped.
    pub fn ek_certificate(&mut self, kind: EkKind) -> Result<Option<Vec<u8>>, DeviceError> {
        let index = kind.nv_index();
        let nv_index =
            NvIndexTpmHandle::new(index).map_err(tpm_err("naming the EK certificate index"))?;
        let Ok(obj) = self
            .ctx
            .execute_without_session(|ctx| ctx.tr_from_tpm_public(TpmHandle::NvIndex(nv_index)))
        else {
            return Ok(None);
        };
        let read = self.ctx.execute_with_nullauth_session(|ctx| {
            nv::read_full(ctx, NvAuth::NvIndex(obj.into()), nv_index)
        });
        let mut obj = obj;
        let _ = self.ctx.tr_close(&mut obj);
        let mut bytes = read.map_err(tpm_err("reading the EK certificate"))?;
        let len =
            super::ekcert::der_len(&bytes).ok_or(DeviceError::EkCertificateFormat { index })?;
        bytes.truncate(len);
        Ok(Some(bytes))
    }

    /// The `TPM2B_PUBLIC` of the EK of `kind`, made from the TCG default
    /// template.
    pub fn ek_public(&mut self, kind: EkKind) -> Result<Vec<u8>, DeviceError> {
        let ek = ek::create_ek_object_2(&mut self.ctx, selection(kind), DefaultKey)
            .map_err(tpm_err("creating the EK"))?;
        let public = self
            .ctx
            .execute_without_session(|ctx| ctx.read_public(ek))
            .map(|(p, _, _)| p);
        let _ = self.ctx.flush_context(ObjectHandle::from(ek));
        let tpmt = public
            .and_then(|p| p.marshall())
            .map_err(tpm_err("reading the EK public area"))?;
        let mut tpm2b = (tpmt.len() as u16).to_be_bytes().to_vec();
        tpm2b.extend(tpmt);
        Ok(tpm2b)
    }

    /// TPM2_ActivateCredential: the TPM decrypts the seed with the EK of
    /// `kind`, checks the credential's HMAC against `ak`'s name and returns
    /// the secret. It fails (TPM_RC_INTEGRITY, or a decryption error) if
    /// the credential was made for another EK or another AK, or tampered
    /// with.
    pub fn activate_credential(
        &mut self,
        ak: KeyHandle,
        kind: EkKind,
        credential_blob: &[u8],
        encrypted_secret: &[u8],
    ) -> Result<Vec<u8>, DeviceError> {
        let blob = IdObject::try_from(credential_blob.to_vec())
            .map_err(tpm_err("the credential blob is too large"))?;
        let secret = EncryptedSecret::try_from(encrypted_secret.to_vec())
            .map_err(tpm_err("the encrypted secret is too large"))?;
        let ek = ek::create_ek_object_2(&mut self.ctx, selection(kind), DefaultKey)
            .map_err(tpm_err("creating the EK"))?;
        let out = self.activate_with_ek(ak, ek, blob, secret);
        let _ = self.ctx.flush_context(ObjectHandle::from(ek));
        out
    }

    fn activate_with_ek(
        &mut self,
        ak: KeyHandle,
        ek: KeyHandle,
        blob: IdObject,
        secret: EncryptedSecret,
    ) -> Result<Vec<u8>, DeviceError> {
        let (public, _, _) = self
            .ctx
            .execute_without_session(|ctx| ctx.read_public(ek))
            .map_err(tpm_err("reading the EK public area"))?;
        // The EK is used in the USER role. The low-range templates (RSA-2048,
        // P-256) clear userWithAuth: only their policy, PolicySecret on the
        // endorsement hierarchy, authorises it, so a policy session is
        // needed. The high-range templates (P-384) set userWithAuth, and the
        // empty auth value in a password session suffices (their policy is
        // a PolicyOR that would need the TCG's digests for both branches).
        // The AK is used in the ADMIN role; guardian's AK does not set
        // adminWithPolicy, so its empty auth value does.
        if public.object_attributes().user_with_auth() {
            return self
                .ctx
                .execute_with_sessions(
                    (
                        Some(AuthSession::Password),
                        Some(AuthSession::Password),
                        None,
                    ),
                    |ctx| ctx.activate_credential(ak, ek, blob, secret),
                )
                .map(|d| d.to_vec())
                .map_err(tpm_err("ActivateCredential"));
        }
        let session = self
            .ctx
            .start_auth_session(
                None,
                None,
                None,
                SessionType::Policy,
                SymmetricDefinition::AES_128_CFB,
                HashingAlgorithm::Sha256,
            )
            .map_err(tpm_err("starting the EK policy session"))?
            .ok_or(DeviceError::Tpm {
                what: "starting the EK policy session",
                source: tss_esapi::Error::WrapperError(
                    tss_esapi::WrapperErrorKind::WrongValueFromTpm,
                ),
            })?;
        let out = PolicySession::try_from(session)
            .and_then(|policy| {
                // PolicySecret with the endorsement hierarchy's (empty)
                // auth: proves whoever uses the EK may act for the
                // endorsement hierarchy, which is what the EK policy asks.
                self.ctx.execute_with_nullauth_session(|ctx| {
                    ctx.policy_secret(
                        policy,
                        tss_esapi::handles::AuthHandle::Endorsement,
                        Default::default(),
                        Default::default(),
                        Default::default(),
                        None,
                    )
                })
            })
            .map_err(tpm_err("PolicySecret on the endorsement hierarchy"))
            .and_then(|_| {
                self.ctx
                    .execute_with_sessions(
                        (Some(AuthSession::Password), Some(session), None),
                        |ctx| ctx.activate_credential(ak, ek, blob, secret),
                    )
                    .map(|d| d.to_vec())
                    .map_err(tpm_err("ActivateCredential"))
            });
        let _ = self
            .ctx
            .flush_context(ObjectHandle::from(SessionHandle::from(session)));
        out
    }
}

/// Device, step 1: the enrolment request for the AK at persistent handle
/// `ak_handle` (created if there is none), with the first EK certificate
/// found in [`EK_PREFERENCE`] order.
pub fn request(tpm: &mut Tpm, ak_handle: u32) -> Result<Request, DeviceError> {
    for kind in EK_PREFERENCE {
        if tpm.ek_certificate(kind)?.is_some() {
            return request_with_ek(tpm, ak_handle, kind);
        }
    }
    Err(DeviceError::NoEkCertificate)
}

/// [`request`] with the EK of `kind`.
pub fn request_with_ek(
    tpm: &mut Tpm,
    ak_handle: u32,
    kind: EkKind,
) -> Result<Request, DeviceError> {
    let cert = tpm
        .ek_certificate(kind)?
        .ok_or(DeviceError::NoEkCertificate)?;
    let ek_public = tpm.ek_public(kind)?;
    let (_, ak) = tpm
        .ak(ak_handle)
        .map_err(|source| DeviceError::Ak { source })?;
    Ok(Request {
        version: VERSION,
        device: crate::attest::bundle::this_device(),
        ek_certificate: B64.encode(cert),
        ek_public: B64.encode(ek_public),
        ak_public: B64.encode(ak.tpm2b_public),
    })
}

/// Device, step 3: answer the challenge by activating the credential with
/// the AK at `ak_handle`.
pub fn activate(
    tpm: &mut Tpm,
    ak_handle: u32,
    challenge: &Challenge,
) -> Result<Response, DeviceError> {
    if challenge.version != VERSION {
        return Err(DeviceError::Version(challenge.version));
    }
    let blob = B64
        .decode(&challenge.credential_blob)
        .map_err(|_| DeviceError::Encoding("credential_blob"))?;
    let secret = B64
        .decode(&challenge.encrypted_secret)
        .map_err(|_| DeviceError::Encoding("encrypted_secret"))?;
    let (ak, _) = tpm
        .ak(ak_handle)
        .map_err(|source| DeviceError::Ak { source })?;
    let out = tpm.activate_credential(ak, challenge.ek, &blob, &secret)?;
    Ok(Response {
        version: VERSION,
        challenge_id: challenge.id.clone(),
        secret: B64.encode(out),
    })
}
