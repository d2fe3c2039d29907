//! What every part of enforcement names: the hooks, the mechanisms that
//! cover them, the mode in force and the verdict on one operation, as
//! typed values that `guardian status`, security events and `[guard]
//! require` spell the way they always have (`serde` and `Display` give the
//! same lowercase words).
//!
//! A leaf: it uses nothing of the agent, so the config, the guard, the
//! rungs, the event decoder and the status can all name these without
//! depending on each other. It may not decide anything (which rung covers
//! which hook is [`crate::enforce`]'s).

use serde::{Deserialize, Serialize};

/// Writes `$name` through [`std::fmt::Formatter::pad`], so that width and
/// alignment (`{:<16}`) apply as they did to the strings these replace,
/// and compares with a plain string the way those did.
macro_rules! words {
    ($t:ty) => {
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.pad(self.as_str())
            }
        }
        impl PartialEq<str> for $t {
            fn eq(&self, other: &str) -> bool {
                self.as_str() == other
            }
        }
        impl PartialEq<&str> for $t {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }
    };
}

/// One hook: an operation guardian judges, whatever covers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Hook {
    /// Opening a protected file for writing (or with `O_TRUNC`).
    FileWriteOpen,
    /// The service opening a file: a protected name must lead to the
    /// measured inode (measure at use).
    OpenMeasured,
    /// Writing through a descriptor.
    FileWrite,
    /// Changing attributes (truncate, chmod, chown).
    FileSetattr,
    /// Renaming a protected file or directory.
    FileRename,
    /// Removing a name of one.
    FileUnlink,
    /// Making a new name for one.
    FileLink,
    /// Creating a protected name.
    FileCreate,
    /// Mapping one writable and shared.
    FileMmap,
    /// Mounting over guarded paths.
    Mount,
    /// The service executing something.
    Exec,
    /// Tracing the service or guardian.
    Ptrace,
    /// `prctl` calls that weaken the service.
    Prctl,
    /// The service's network egress.
    Connect,
    /// Reaching guardian's own eBPF maps and programs.
    BpfObjects,
}

impl Hook {
    /// Every hook, in the order `guardian status` lists them.
    pub const ALL: [Hook; 15] = [
        Hook::FileWriteOpen,
        Hook::OpenMeasured,
        Hook::FileWrite,
        Hook::FileSetattr,
        Hook::FileRename,
        Hook::FileUnlink,
        Hook::FileLink,
        Hook::FileCreate,
        Hook::FileMmap,
        Hook::Mount,
        Hook::Exec,
        Hook::Ptrace,
        Hook::Prctl,
        Hook::Connect,
        Hook::BpfObjects,
    ];

    /// Its name, as status, events and `[guard] require` spell it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Hook::FileWriteOpen => "file_write_open",
            Hook::OpenMeasured => "open_measured",
            Hook::FileWrite => "file_write",
            Hook::FileSetattr => "file_setattr",
            Hook::FileRename => "file_rename",
            Hook::FileUnlink => "file_unlink",
            Hook::FileLink => "file_link",
            Hook::FileCreate => "file_create",
            Hook::FileMmap => "file_mmap",
            Hook::Mount => "mount",
            Hook::Exec => "exec",
            Hook::Ptrace => "ptrace",
            Hook::Prctl => "prctl",
            Hook::Connect => "connect",
            Hook::BpfObjects => "bpf_objects",
        }
    }

    /// The hook named `name`, if there is one.
    pub fn from_name(name: &str) -> Option<Hook> {
        Hook::ALL.into_iter().find(|h| h.as_str() == name)
    }
}

words!(Hook);

/// The hooks, by the names `status`, events and `[guard] require` use.
pub const HOOKS: [&str; 15] = {
    let mut out = [""; 15];
    let mut i = 0;
    while i < Hook::ALL.len() {
        out[i] = Hook::ALL[i].as_str();
        i += 1;
    }
    out
};

/// What covers a hook, from the strongest rung down.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mechanism {
    /// BPF LSM: the kernel denies.
    Lsm,
    /// cgroup socket programs: the kernel denies (or reports, in detect
    /// mode) the service's egress.
    Cgroup,
    /// fanotify permission events: denied from userspace while the agent
    /// runs.
    Fanotify,
    /// fanotify notification events: reported after the fact while the
    /// agent runs.
    Notify,
    /// Tracepoints: reported after the fact by the kernel.
    Tracepoint,
    /// Nothing on this kernel.
    None,
    /// Not asked for (no `[service]`).
    Off,
}

impl Mechanism {
    /// Its name, as status spells it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Mechanism::Lsm => "lsm",
            Mechanism::Cgroup => "cgroup",
            Mechanism::Fanotify => "fanotify",
            Mechanism::Notify => "notify",
            Mechanism::Tracepoint => "tracepoint",
            Mechanism::None => "none",
            Mechanism::Off => "off",
        }
    }
}

words!(Mechanism);

/// The mode in force.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The kernel denies (BPF LSM).
    Enforce,
    /// The kernel reports after the fact (tracepoints).
    #[default]
    Detect,
}

impl Mode {
    /// Lowercase name, as in events and status.
    pub const fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Detect => "detect",
        }
    }
}

words!(Mode);

/// What was decided about one operation, as events say it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Allowed (an allowed writer, a name leading back where it should).
    Allow,
    /// Refused: nothing happened.
    Deny,
    /// Not allowed, but it happened (detect mode, after the fact).
    #[default]
    Alert,
}

impl Verdict {
    /// Lowercase name, as in events.
    pub const fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
            Verdict::Alert => "alert",
        }
    }
}

words!(Verdict);

/// One hook and what is in force for it, for `status`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct HookState {
    /// The hook.
    pub hook: Hook,
    /// How: `lsm` (the kernel denies), `cgroup` (the kernel denies the
    /// service's egress), `fanotify` (denied from userspace), `notify` or
    /// `tracepoint` (reported after the fact), `none` (nothing on this
    /// kernel), `off` (not asked for).
    pub mechanism: Mechanism,
    /// Where it is attached.
    pub attached: Vec<String>,
    /// Why it is not at the top of the ladder, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The fanotify permission rung's form, as `guardian status` and events
/// name it (`crate::fanotify`).
pub const FANOTIFY_PERM: &str = "fanotify/open_perm";

/// The hooks the fanotify notification rung (`crate::fanotify::notify`)
/// can stand in for, and the fanotify events each needs.
pub const NOTIFY: [(Hook, u64); 5] = [
    (Hook::FileWrite, libc::FAN_MODIFY),
    // truncate(2) is a FAN_MODIFY; chmod, chown a FAN_ATTRIB.
    (Hook::FileSetattr, libc::FAN_MODIFY | libc::FAN_ATTRIB),
    // Moved away: FAN_MOVE_SELF; replaced: the link count (FAN_ATTRIB).
    (Hook::FileRename, libc::FAN_MOVE_SELF | libc::FAN_ATTRIB),
    (Hook::FileUnlink, libc::FAN_ATTRIB | libc::FAN_DELETE_SELF),
    (Hook::FileLink, libc::FAN_ATTRIB),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_the_ones_status_and_events_always_used() {
        for h in Hook::ALL {
            let json = serde_json::to_string(&h).unwrap();
            assert_eq!(json, format!("\"{h}\""));
            assert_eq!(Hook::from_name(h.as_str()), Some(h));
        }
        assert_eq!(HOOKS[0], "file_write_open");
        assert_eq!(HOOKS[1], "open_measured");
        assert_eq!(HOOKS[14], "bpf_objects");
        assert_eq!(format!("{:<6}|", Mechanism::Lsm), "lsm   |");
        assert_eq!(serde_json::to_string(&Verdict::Deny).unwrap(), "\"deny\"");
        assert_eq!(
            serde_json::to_string(&Mode::Enforce).unwrap(),
            "\"enforce\""
        );
        assert!(Verdict::Alert == "alert" && Mode::Detect == "detect");
    }
}
