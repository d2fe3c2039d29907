//! guardian-fleet: the central half of guardian. Every device's reports
//! arrive on a NATS JetStream cluster; this service stores each record
//! exactly once and keeps each device's state, so a security team sees the
//! whole fleet in one place.
//!
//! | module | what it owns |
//! |---|---|
//! | [`sim`] | the device simulator: many devices in one process, each running guardian's real reporter (spool, link), for scale and fault tests |
//! | [`store`] | the exactly-once rule: per-device summaries, what is new in a batch |
//! | [`service`] | the JetStream objects, the shared durable consumer, checking batches, storing them, device state in key-value |
//! | [`lab`] | a lab in one command: a single nats-server with JetStream and MQTT, and the service; the per-device authorization block of a production cluster |
//! | [`query`] | reading the fleet back: device states, a device's events |
//! | [`alerts`] | alerts from what is stored (tamper attempts, the guard, drops) and from silence; the webhook |
//! | [`attest`] | attestation over the link: rounds on a schedule, claims shared by the instances, the verdict and the verifier's state per device in key-value |
//! | [`enrol`] | enrolment over the link: the EK chain, approval (an operator's, or a rule's by issuer or serial), credential activation, the pending bucket |
//! | [`policy`] | policy sets for device groups: publishing a signed set into the bucket devices read, the sets published, drift from quoted evidence |
//! | [`metrics`] | `/metrics` in Prometheus' text format |
//! | [`web`] | the HTTP listener: the operator's read-only page (the fleet, one device), `/metrics`, `/healthz` |
//!
//! No TPM, no eBPF: it runs anywhere a NATS client can. The device side of
//! the link (spool, wire format, NATS link) is the `guardian-report` crate,
//! which this crate reads the wire format from and whose reporter the
//! device simulator runs.

pub mod alerts;
pub mod attest;
pub mod enrol;
pub mod lab;
pub mod metrics;
pub mod policy;
pub mod query;
pub mod service;
pub mod sim;
pub mod store;
pub mod web;
