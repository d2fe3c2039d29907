//! The inference service guardian protects in its demo and boot tests.
//!
//! A small ONNX classifier (`model/classifier.onnx`, made by
//! `model/make_model.py`) is loaded read-only with tract, a pure-Rust ONNX
//! runtime, so the same binary cross-builds for the aarch64 boards guardian
//! targets with no C++ runtime to ship. Requests arrive one per line on
//! stdin as a JSON array of floats; each gets one JSON line on stdout, a
//! prediction or an error, and a log line on stderr.
//!
//! - [`model`]: loading the model and running one prediction.
//! - [`protocol`]: the line protocol, shared by the service and the bench so
//!   both measure the same path.

pub mod model;
pub mod protocol;

/// Where the service looks for its model unless told otherwise: the
/// directory guardian protects on the boards and in the boot tests.
pub const DEFAULT_MODEL: &str = "/opt/models/classifier.onnx";
