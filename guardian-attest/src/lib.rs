//! guardian-attest: the verifier's library, shared by `guardian verify` (in
//! the agent's binary) and the fleet service (`guardian-fleet`), so that a
//! device attested over the network is judged by the same code as one
//! attested on files.
//!
//! What it owns:
//!
//! | module | what |
//! |---|---|
//! | [`evidence`] | the evidence formats: what a record means and its canonical encoding, the measurement log file (parsing, replay, `extend`, and the append-only writer the agent's ledger uses), TCG and CEL exports |
//! | [`manifest`] | the signed model manifest, and why PCR 14 |
//! | [`signing`] | Ed25519 / ECDSA P-256 / P-384 detached signatures, as openssl makes them |
//! | [`policy_set`] | policy sets pushed to a device group: the signed document, its checks, the floor that refuses an older set |
//! | [`model_sig`] | OpenSSF model signatures (`model_signing`'s Sigstore bundles): verified offline against trusted keys or CA certificates, a model directory checked against them |
//! | [`attest`] | the evidence bundle's format and nonces, the TPM's quote structures, the checks of one bundle, the checks across quotes and the state they keep, the verifier on files |
//! | [`enrol`] | the verifier side of enrolment: the EK certificate chain, the TPM public areas, software TPM2_MakeCredential, the messages, the AK a verifier trusts |
//!
//! What it may not do: touch a TPM (it reads the TPM's structures as
//! bytes; making them is the agent's `tpm` module), load or talk to eBPF,
//! read the agent's configuration, or do I/O beyond the files it is
//! pointed at (a bundle, a key, a manifest, a measurement log, the
//! verifier's state and enrolment files its caller names). Two reads are
//! not of files it is given, and both are said where they happen: the log
//! writer stamps each record with the kernel's boot id
//! ([`evidence::boot_id`]), and a verifier's nonce comes from
//! `/dev/urandom` ([`attest::bundle::fresh_nonce`]). It has no async
//! runtime and no wasm interpreter: the fleet service links it, and must
//! link no TPM library or eBPF loader through it.
//!
//! The device side (quoting with the TPM, the ledger that extends PCRs,
//! the enrolment steps that use the TPM) stays in the agent (`guardian`),
//! which re-exports these modules under its own paths
//! (`guardian::attest`, `guardian::evidence`, `guardian::enrol`,
//! `guardian::manifest`, `guardian::signing`).

#![warn(missing_docs)]

pub mod attest;
pub mod enrol;
pub mod evidence;
pub mod manifest;
pub mod model_sig;
pub mod policy_set;
pub mod signing;
