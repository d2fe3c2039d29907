//! Policies as signed WebAssembly, run in the wasmi interpreter.
//!
//! The ABI (event, verdict and static-rule types, exports, imports) is the
//! `guardian-policy-abi` crate and `policies/ABI.md`; this module is the
//! host side:
//!
//! | file | what |
//! |---|---|
//! | [`module`] | one module in wasmi: limits, ABI checks, instantiation, evaluation |
//! | `host.rs` | the host side of the sandbox: the store's data, the host functions (all defined there), every call with fresh fuel |
//! | [`rego`] | Rego compiled by `opa build -t wasm`: OPA's Wasm ABI hosted in wasmi, the event as `input`, the result as a verdict |
//! | `static_rules.rs` | a module's static rules read from its memory, decoded and checked (untrusted until they pass) |
//! | [`set`] | signed bundles, a set of policies, deny-overrides, merged static rules |
//! | [`engine`] | [`PolicyEngine`]: the set in force, atomic hot swap, counters |
//! | [`measure`] | what a policy load records in the evidence (the daemon's attestor writes it) |
//! | [`event`] | the JSON events of `guardian run` → ABI events (the daemon's own events by their fields, with no JSON between) |
//! | [`config`] | the `[policy]` section |
//! | [`tools`] | what `guardian policy sign/inspect/test` do |
//! | [`set_tools`] | what `guardian policy pack` does, and `inspect` of a pushed policy set |
//!
//! How the daemon uses it:
//!
//! 1. [`PolicySettings::from_config`] with the mode in force (fail-closed
//!    when enforcing, unless configured otherwise);
//! 2. [`PolicyEngine::new`] with a [`Measurer`] (in the daemon, the
//!    attestor, which owns the ledger), then [`PolicyEngine::reload`]; the
//!    report's [`StaticRules`] go into the kernel's maps;
//! 3. every event: [`PolicyEngine::evaluate`] → [`Outcome`] (decision,
//!    actions, which policy and rule, and each policy's failure if any);
//! 4. on SIGHUP or a change of the directory: [`PolicyEngine::reload`]
//!    again. A failed reload leaves the previous set in force and says why.

pub mod engine;
pub mod event;
mod host;
pub mod measure;
pub mod module;
pub mod rego;
pub mod set;
pub mod set_tools;
mod static_rules;
pub mod tools;

pub use crate::config::{FailModeSetting, PolicyConfig};
pub use engine::{PolicyEngine, PolicySettings, PolicyStats, ReloadReport};
pub use event::{DevRef, EventError, EventFields, JsonEvent};
pub use guardian_policy_abi::{Actions, Decision, Event, Verdict};
pub use measure::{MeasureError, Measurer};
pub use module::{CallError, Limits, ModuleError, PolicyKind, PolicyModule, Runtime};
pub use set::{Bundle, LoadError, Outcome, PolicyInfo, PolicySet, StaticRules};

/// What a policy that fails on an event (trap, fuel exhausted, bad
/// verdict) counts as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    /// Deny: an attacker who can crash a policy gains nothing.
    Closed,
    /// Alert: availability first (the failure is still reported).
    Open,
}

impl FailMode {
    /// The decision a failure contributes.
    pub fn decision(self) -> Decision {
        match self {
            FailMode::Closed => Decision::Deny,
            FailMode::Open => Decision::Alert,
        }
    }

    /// `closed` or `open`.
    pub fn name(self) -> &'static str {
        match self {
            FailMode::Closed => "closed",
            FailMode::Open => "open",
        }
    }
}
