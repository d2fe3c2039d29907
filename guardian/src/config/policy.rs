//! The `[policy]` section of the config (the policy engine reads it; the
//! config owns it, so that the config depends on nothing it configures).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The fail mode as configured.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FailModeSetting {
    /// Closed when the guard enforces, open when it only detects.
    #[default]
    Auto,
    /// Always deny on a policy failure.
    Closed,
    /// Always alert on a policy failure.
    Open,
}

/// `[policy]`: signed WebAssembly policies.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Directory of policy bundles: `NAME.wasm` with its detached signature
    /// `NAME.wasm.sig`. Every module there is loaded, in name order.
    #[serde(default = "default_dir")]
    pub dir: PathBuf,
    /// Public keys (PEM) allowed to sign policies. Empty: the `[measure]`
    /// trusted keys.
    #[serde(default)]
    pub trusted_keys: Vec<PathBuf>,
    /// What a policy failure (trap, fuel exhausted, bad verdict) counts as.
    #[serde(default)]
    pub fail_mode: FailModeSetting,
    /// Fuel per evaluation (about one unit per WebAssembly instruction).
    #[serde(default = "default_fuel")]
    pub fuel: u64,
    /// Linear memory per policy, in 64 KiB pages.
    #[serde(default = "default_memory_pages")]
    pub memory_pages: u32,
    /// Largest module accepted, KiB.
    #[serde(default = "default_max_module_kib")]
    pub max_module_kib: u32,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            dir: default_dir(),
            trusted_keys: Vec::new(),
            fail_mode: FailModeSetting::default(),
            fuel: default_fuel(),
            memory_pages: default_memory_pages(),
            max_module_kib: default_max_module_kib(),
        }
    }
}

fn default_dir() -> PathBuf {
    PathBuf::from("/etc/guardian/policies")
}

fn default_fuel() -> u64 {
    100_000
}

fn default_memory_pages() -> u32 {
    16
}

fn default_max_module_kib() -> u32 {
    1024
}

impl PolicyConfig {
    /// Range checks; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.fuel < 1000 {
            return Err(format!(
                "[policy] fuel = {}: at least 1000 (decoding an event alone takes hundreds)",
                self.fuel
            ));
        }
        if self.memory_pages == 0 || self.memory_pages > 65536 {
            return Err(format!(
                "[policy] memory_pages = {}: between 1 and 65536",
                self.memory_pages
            ));
        }
        if self.max_module_kib == 0 {
            return Err("[policy] max_module_kib must be at least 1".to_owned());
        }
        Ok(())
    }
}
