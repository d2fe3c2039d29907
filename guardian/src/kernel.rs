//! What the running kernel offers: BTF, the active LSM list, the syscall
//! tracepoints. Probed once at start; the result decides the enforcement
//! mode and is published in `guardian status`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::btf::VMLINUX_BTF;

/// The active LSMs, in order (`lsm=` on the command line or `CONFIG_LSM`).
pub const LSM_LIST: &str = "/sys/kernel/security/lsm";

/// Where tracefs may be mounted, newest first.
pub const TRACEFS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// Findings about the running kernel.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct KernelFeatures {
    /// `uname -r`.
    pub release: String,
    /// `uname -m`.
    pub machine: String,
    /// `/sys/kernel/btf/vmlinux` exists.
    pub btf: bool,
    /// The active LSMs, or `None` if securityfs is not mounted.
    pub lsm: Option<Vec<String>>,
    /// The tracefs mount found, if any.
    pub tracefs: Option<String>,
}

impl KernelFeatures {
    /// Probe the running kernel.
    pub fn probe() -> Self {
        let (release, machine) = uname();
        let lsm = std::fs::read_to_string(LSM_LIST)
            .ok()
            .map(|s| s.trim().split(',').map(str::to_owned).collect());
        let tracefs = TRACEFS
            .iter()
            .find(|p| Path::new(p).join("events").is_dir())
            .map(|p| (*p).to_owned());
        Self {
            release,
            machine,
            btf: Path::new(VMLINUX_BTF).exists(),
            lsm,
            tracefs,
        }
    }

    /// `bpf` is in the active LSM list.
    pub fn bpf_lsm_active(&self) -> bool {
        self.lsm
            .as_ref()
            .is_some_and(|l| l.iter().any(|m| m == "bpf"))
    }
}

fn uname() -> (String, String) {
    // SAFETY: utsname is plain bytes; uname fills it or fails.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a zeroed utsname.
    if unsafe { libc::uname(&mut u) } != 0 {
        return (String::new(), String::new());
    }
    let field = |f: &[libc::c_char]| {
        let bytes: Vec<u8> = f
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    (field(&u.release), field(&u.machine))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_reads_uname() {
        let f = KernelFeatures::probe();
        assert!(!f.release.is_empty());
        assert_eq!(f.machine, std::env::consts::ARCH);
    }

    #[test]
    fn bpf_lsm_from_list() {
        let mut f = KernelFeatures {
            lsm: Some(vec!["capability".into(), "bpf".into()]),
            ..Default::default()
        };
        assert!(f.bpf_lsm_active());
        f.lsm = Some(vec!["capability".into(), "landlock".into()]);
        assert!(!f.bpf_lsm_active());
        f.lsm = None;
        assert!(!f.bpf_lsm_active());
    }
}
