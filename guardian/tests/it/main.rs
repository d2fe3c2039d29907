//! guardian's integration tests, in one binary (one link, one run), a
//! module per area:
//!
//! | module | what it drives |
//! |---|---|
//! | `host` | the real agent on this host's kernel: tracepoints, fanotify, pins, the fleet link |
//! | `fanotify`, `watch` | the userspace rungs (permission and notification events) on their own |
//! | `measure` | `guardian measure` against a real swtpm |
//! | `model_signing` | OpenSSF model signatures made by the real `model_signing` CLI (key and certificate), measured, verified, imported |
//! | `records`, `attest` | continuous attestation, quotes and `guardian verify` |
//! | `enrol` | enrolment with an EK certificate and credential activation |
//! | `fleet` | attestation over the link: the fleet's rounds against boards with a real swtpm, the agent answering, impostors and replays |
//! | `policy` | signed wasm policies in wasmi, hot swap, measurement |
//! | `policy_push` | policy sets pushed over the link (a real nats-server's key-value bucket) to the real agent: put in force, refused, the floor in a file and a swtpm's NV index |
//! | `policy_rego` | Rego policies (OPA's Wasm ABI) in wasmi beside guardian's own |
//! | `parsers`, `bundle_mutations`, `fuzz_seeds` | properties of every parser and of the verifier; the fuzz seeds |
//!
//! Shared support: `common` (a swtpm per test, a scratch board), `rungs`
//! (a scene for the fanotify rungs), `evidence` (a real evidence bundle),
//! `nats_support` (nats-server, shared with the fleet crates' tests).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod evidence;
#[path = "../../../guardian-report/tests/support/nats.rs"]
mod nats_support;
mod rungs;

mod attest;
mod bundle_mutations;
mod enrol;
mod fanotify;
mod fleet;
mod fuzz_seeds;
mod host;
mod measure;
mod model_signing;
mod parsers;
mod policy;
mod policy_push;
mod policy_rego;
mod policy_set_verify;
mod records;
mod watch;
