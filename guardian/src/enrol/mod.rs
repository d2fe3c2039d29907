//! Enrolment: an attestation key the verifier trusts because the TPM's
//! manufacturer vouches for the TPM it lives in, as Keylime's registrar
//! does it (TPM2_MakeCredential / TPM2_ActivateCredential).
//!
//! # The threat
//!
//! A verifier that trusts the AK a device shows it on first use trusts
//! whatever key the device chooses: a software key whose "quotes" are
//! made up, or a key in another, healthy TPM that quotes clean PCRs for a
//! compromised board. Enrolment closes that: the AK is accepted only once
//! a TPM that holds an endorsement key certified by a configured
//! manufacturer CA has shown that the AK is resident in it.
//!
//! # The protocol
//!
//! 1. Device ([`request`]): reads its EK certificate from the TCG NV index,
//!    recreates the EK from the default template, reads the AK's public
//!    area, and sends all three ([`Request`]).
//! 2. Verifier ([`challenge`], no TPM): checks the certificate chain
//!    against the manufacturer CAs ([`ekcert`]), that the EK public area is
//!    the certified key, and that the AK is a restricted, fixedTPM,
//!    TPM-generated P-256 signing key ([`tpmt`]); computes the AK's name
//!    and makes a credential holding a fresh 32-byte secret, encrypted to
//!    the EK and bound to that name ([`credential`]). It keeps the secret
//!    ([`PendingSecret`]) and sends the [`Challenge`].
//! 3. Device ([`activate`]): TPM2_ActivateCredential with the AK and the
//!    EK; the TPM releases the secret only if it holds the EK's private
//!    key and an object with the AK's name, whose attributes the name
//!    commits to ([`Response`]).
//! 4. Verifier ([`finish`]): compares the secret in constant time and only
//!    then writes the [`Enrolled`] record.
//!
//! [`tofu`] skips 2-4 and says so in the record (`insecure_tofu`).
//!
//! [`files`] runs each step on files, as `guardian enrol` does, and gives
//! a verifier the AK to trust for a device ([`files::trusted_ak`]).
//!
//! The verifier's half (steps 2 and 4, the certificate chain, the TPM
//! structures, the credential, the messages, and the verifier's steps on
//! files) is `guardian-attest`'s, which the fleet service shares; it is
//! re-exported here under the agent's paths. The device's half
//! ([`device`], and its steps on files in [`files`]) lives in this folder.
//!
//! `docs/enrolment.md` has what each check stops and how to run it with
//! swtpm.

pub use guardian_attest::enrol::{credential, ekcert, load_ca_certs, protocol, tpmt};

pub mod device;
pub mod files;

pub use device::{DeviceError, activate, request, request_with_ek};
pub use ekcert::{CaCerts, EkCertError, load_pem_file};
pub use protocol::{
    Challenge, EkKind, EnrolError, Enrolled, PendingSecret, Request, Response, challenge, finish,
    tofu,
};
