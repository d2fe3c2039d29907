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
    /// The device group whose pushed policy sets this device follows (the
    /// fleet publishes one signed set per group). Empty: no pushed sets;
    /// `dir` alone is in force.
    #[serde(default)]
    pub group: String,
    /// The TPM NV index that keeps the floor (the version of the last set
    /// put in force) beside the floor file, hex or decimal. `"0"` or
    /// empty: the file only.
    #[serde(default = "default_floor_nv_index")]
    pub floor_nv_index: String,
    /// Where pushed sets and the floor file are kept (guarded as one of
    /// guardian's own trees while `group` is set).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
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
            group: String::new(),
            floor_nv_index: default_floor_nv_index(),
            state_dir: default_state_dir(),
        }
    }
}

fn default_dir() -> PathBuf {
    PathBuf::from("/etc/guardian/policies")
}

fn default_floor_nv_index() -> String {
    "0x01500147".to_owned()
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/guardian/policy")
}

/// The owner's range of NV indices (TPM 2.0 Part 2, `TPM_HT_NV_INDEX`
/// with the owner's allocation; 0x01C0_0000 and up are the platform's and
/// the TCG's, such as the EK certificates).
const NV_OWNER: std::ops::RangeInclusive<u32> = 0x0100_0000..=0x01BF_FFFF;

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
        if !self.group.is_empty() {
            crate::policy_set::check_group(&self.group)
                .map_err(|e| format!("[policy] group: {e}"))?;
        }
        self.floor_nv()?;
        Ok(())
    }

    /// The floor file: the version and digest of the last pushed set put
    /// in force (`guardian_attest::policy_set::Floor`, JSON).
    pub fn floor_file(&self) -> PathBuf {
        self.state_dir.join("floor.json")
    }

    /// Where pushed sets are written, one directory per version.
    pub fn sets_dir(&self) -> PathBuf {
        self.state_dir.join("sets")
    }

    /// The pointer to the pushed set in force: a symbolic link in
    /// [`Self::sets_dir`] to its version's directory.
    pub fn current_set(&self) -> PathBuf {
        self.sets_dir().join("current")
    }

    /// Whether this device follows a group's pushed policy sets.
    pub fn follows_group(&self) -> bool {
        !self.group.is_empty()
    }

    /// `floor_nv_index` as a number; `None` for the file only.
    pub fn floor_nv(&self) -> Result<Option<u32>, String> {
        let t = self.floor_nv_index.trim();
        if t.is_empty() || t == "0" {
            return Ok(None);
        }
        let n = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
            Some(h) => u32::from_str_radix(h, 16),
            None => t.parse(),
        }
        .map_err(|_| format!("[policy] floor_nv_index = {t:?}: not a number"))?;
        if !NV_OWNER.contains(&n) {
            return Err(format!(
                "[policy] floor_nv_index = {t:?}: an owner NV index is 0x01000000 to 0x01BFFFFF (\"0\": the file only)"
            ));
        }
        Ok(Some(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_group_and_the_floor_index_are_checked() {
        let ok = PolicyConfig {
            group: "cameras".into(),
            ..PolicyConfig::default()
        };
        assert_eq!(ok.validate(), Ok(()));
        assert_eq!(ok.floor_nv(), Ok(Some(0x0150_0147)));
        assert!(ok.follows_group());
        assert!(!PolicyConfig::default().follows_group());
        let bad_group = PolicyConfig {
            group: "cam eras".into(),
            ..PolicyConfig::default()
        };
        assert!(bad_group.validate().unwrap_err().contains("[policy] group"));
        for (text, want) in [
            ("0", Ok(None)),
            ("", Ok(None)),
            ("0x01000000", Ok(Some(0x0100_0000))),
            ("16777217", Ok(Some(0x0100_0001))),
        ] {
            let c = PolicyConfig {
                floor_nv_index: text.into(),
                ..PolicyConfig::default()
            };
            assert_eq!(c.floor_nv(), want, "{text:?}");
        }
        // The platform's range (EK certificates live there), a PCR's, junk.
        for text in ["0x01C00002", "0x00000010", "0x81010001", "nv"] {
            let c = PolicyConfig {
                floor_nv_index: text.into(),
                ..PolicyConfig::default()
            };
            assert!(c.validate().is_err(), "{text:?}");
        }
    }

    #[test]
    fn the_pushed_sets_live_under_the_state_directory() {
        let c = PolicyConfig {
            state_dir: PathBuf::from("/var/lib/g"),
            ..PolicyConfig::default()
        };
        assert_eq!(c.floor_file(), PathBuf::from("/var/lib/g/floor.json"));
        assert_eq!(c.current_set(), PathBuf::from("/var/lib/g/sets/current"));
    }
}
