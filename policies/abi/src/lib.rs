//! The guardian policy ABI, version [`ABI_VERSION`].
//!
//! A guardian policy is a WebAssembly module. For every security event that
//! passes the kernel's filter, guardian writes the event, encoded with
//! [postcard](https://docs.rs/postcard), into the module's linear memory and
//! calls the module's evaluate function, which answers with a packed
//! [`Verdict`]. When the module is loaded, guardian also reads the module's
//! [`StaticRules`] (what it protects, who may write, where the inference
//! service may connect) and compiles them into the kernel's maps.
//!
//! This crate holds the types both sides agree on; it is `no_std` and
//! allocation-free so that it builds into a policy module as it is. The
//! contract in words, for authors writing in another language, is
//! `policies/ABI.md`; this crate and that document describe the same bytes.
//!
//! # Exports a module provides
//!
//! | name | type | meaning |
//! |---|---|---|
//! | `memory` | memory | linear memory (exactly one, not imported) |
//! | `guardian_abi_version` | `() -> i32` | one of [`SUPPORTED_ABI_VERSIONS`]; decides the input layout |
//! | `guardian_buffer` | `() -> i32` | address of the event input buffer |
//! | `guardian_buffer_size` | `() -> i32` | its size in bytes (≥ [`MIN_BUFFER_SIZE`]) |
//! | `guardian_evaluate` | `(ptr: i32, len: i32) -> i64` | judge the input at `ptr..ptr+len` (version 1: the event; version 2: a [`wire::Header`], then the event); returns [`Verdict::pack`] |
//! | `guardian_static_rules` | `() -> i64` | optional: `(ptr << 32) \| len` of a postcard [`StaticRules`] |
//!
//! # Imports a module may use (module `guardian`)
//!
//! | name | type | meaning |
//! |---|---|---|
//! | `log` | `(level: i32, ptr: i32, len: i32) -> ()` | a UTF-8 message into guardian's log ([`log_level`]) |
//! | `monotonic_ns` | `() -> i64` | nanoseconds on a monotonic clock (arbitrary origin) |
//!
//! Nothing else is importable: no WASI, no other module.

#![no_std]

#[cfg(feature = "alloc")]
extern crate alloc;

use serde::{Deserialize, Serialize};

pub mod wire;

/// The ABI version this crate describes, and the one the SDK's modules
/// declare. guardian loads modules of every version in
/// [`SUPPORTED_ABI_VERSIONS`] and refuses any other.
///
/// Version 2 differs from version 1 only in what `guardian_evaluate`
/// receives: a [`HEADER_SIZE`]-byte header of field offsets
/// ([`wire::Header`]) in front of the same postcard event. A version 1
/// module receives the plain event.
pub const ABI_VERSION: u32 = 2;

/// The versions guardian loads (oldest first).
pub const SUPPORTED_ABI_VERSIONS: [u32; 2] = [1, 2];

/// Size of the version 2 header in front of the event, bytes
/// ([`wire::Header`]).
pub const HEADER_SIZE: usize = 48;

/// The smallest input buffer a module may declare: guardian refuses events
/// larger than the buffer (they are judged by the fail mode), and every
/// event it produces fits in this many bytes (paths are at most 4096 bytes).
pub const MIN_BUFFER_SIZE: u32 = 8192;

/// Names of the exports guardian looks up.
pub mod exports {
    /// The linear memory.
    pub const MEMORY: &str = "memory";
    /// `() -> i32`: the ABI version.
    pub const ABI_VERSION: &str = "guardian_abi_version";
    /// `() -> i32`: address of the input buffer.
    pub const BUFFER: &str = "guardian_buffer";
    /// `() -> i32`: size of the input buffer.
    pub const BUFFER_SIZE: &str = "guardian_buffer_size";
    /// `(i32, i32) -> i64`: evaluate one event.
    pub const EVALUATE: &str = "guardian_evaluate";
    /// `() -> i64`: the static rules (optional export).
    pub const STATIC_RULES: &str = "guardian_static_rules";
}

/// Names of the host functions, all in import module [`imports::MODULE`].
pub mod imports {
    /// The only import module.
    pub const MODULE: &str = "guardian";
    /// `(level: i32, ptr: i32, len: i32) -> ()`.
    pub const LOG: &str = "log";
    /// `() -> i64`.
    pub const MONOTONIC_NS: &str = "monotonic_ns";
}

/// Levels for the `guardian.log` import.
pub mod log_level {
    /// Error.
    pub const ERROR: i32 = 1;
    /// Warning.
    pub const WARN: i32 = 2;
    /// Information.
    pub const INFO: i32 = 3;
    /// Debugging (shown only with guardian's debug logging).
    pub const DEBUG: i32 = 4;
}

/// What happened. Encoded as a postcard varint, and because it is the first
/// field of [`Event`] and every value is below 128, it is always the first
/// byte of an encoded event: a module can dispatch on byte 0 without
/// decoding the rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[repr(u8)]
pub enum Kind {
    /// A protected file opened for writing (`file_write_open`).
    FileWriteOpen = 0,
    /// A write to a protected file (`file_write`).
    FileWrite = 1,
    /// A protected file truncated (`file_truncate`).
    FileTruncate = 2,
    /// A protected file renamed, or something renamed over it (`file_rename`).
    FileRename = 3,
    /// A protected file unlinked (`file_unlink`).
    FileUnlink = 4,
    /// A hard link made to a protected file (`file_link`).
    FileLink = 5,
    /// Attributes (mode, owner, times) of a protected file changed (`file_setattr`).
    FileSetattr = 6,
    /// A protected file mapped shared and writable (`file_mmap_write`).
    FileMmapWrite = 7,
    /// A program executed (`exec`).
    Exec = 8,
    /// A program executed with a preload variable in its environment (`exec_preload`).
    ExecPreload = 9,
    /// A shared library mapped executable (`library_load`).
    LibraryLoad = 10,
    /// A process attached to another with ptrace (`ptrace`).
    Ptrace = 11,
    /// An outbound connect (`connect`).
    Connect = 12,
    /// An event kind this ABI version does not name (newer agent); see
    /// [`Detail::None`].
    Other = 13,
}

impl Kind {
    /// Every kind, in encoding order.
    pub const ALL: [Kind; 14] = [
        Kind::FileWriteOpen,
        Kind::FileWrite,
        Kind::FileTruncate,
        Kind::FileRename,
        Kind::FileUnlink,
        Kind::FileLink,
        Kind::FileSetattr,
        Kind::FileMmapWrite,
        Kind::Exec,
        Kind::ExecPreload,
        Kind::LibraryLoad,
        Kind::Ptrace,
        Kind::Connect,
        Kind::Other,
    ];

    /// The `event` string of guardian's JSON security events.
    pub const fn name(self) -> &'static str {
        match self {
            Kind::FileWriteOpen => "file_write_open",
            Kind::FileWrite => "file_write",
            Kind::FileTruncate => "file_truncate",
            Kind::FileRename => "file_rename",
            Kind::FileUnlink => "file_unlink",
            Kind::FileLink => "file_link",
            Kind::FileSetattr => "file_setattr",
            Kind::FileMmapWrite => "file_mmap_write",
            Kind::Exec => "exec",
            Kind::ExecPreload => "exec_preload",
            Kind::LibraryLoad => "library_load",
            Kind::Ptrace => "ptrace",
            Kind::Connect => "connect",
            Kind::Other => "other",
        }
    }

    /// The kind for a JSON `event` string; unknown names are [`Kind::Other`].
    pub fn from_name(name: &str) -> Kind {
        Kind::ALL
            .iter()
            .copied()
            .find(|k| *k != Kind::Other && k.name() == name)
            .unwrap_or(Kind::Other)
    }

    /// One of the `file_*` kinds: an attempt to change a file.
    pub const fn is_file(self) -> bool {
        (self as u8) <= (Kind::FileMmapWrite as u8)
    }
}

/// What the kernel did with the operation before the policies saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KernelVerdict {
    /// Allowed (an allowed writer, or an operation the kernel only reports).
    Allow,
    /// Let through but reported (detect mode: it already happened).
    Alert,
    /// Denied before it happened (enforce mode, BPF LSM).
    Deny,
}

/// The mode the runtime guard is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    /// The kernel denies (BPF LSM).
    Enforce,
    /// The kernel only reports; responses come after the fact.
    Detect,
}

/// A device number, as `major:minor` in the JSON events.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dev {
    /// Major number.
    pub major: u32,
    /// Minor number.
    pub minor: u32,
}

/// An IP address as bytes in network order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IpAddr {
    /// IPv4.
    V4([u8; 4]),
    /// IPv6.
    V6([u8; 16]),
}

/// The kind-specific part of an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Detail<'a> {
    /// No extra fields (kind [`Kind::Other`]).
    None,
    /// The `file_*` kinds.
    File {
        /// The file's path.
        path: &'a [u8],
        /// Its device.
        dev: Dev,
        /// Its inode.
        ino: u64,
        /// Open or operation flags as the kernel gave them.
        flags: u32,
        /// The flags in words (`O_WRONLY|O_TRUNC`, …).
        flags_text: &'a [u8],
    },
    /// [`Kind::Exec`] and [`Kind::ExecPreload`].
    Exec {
        /// The executed binary.
        path: &'a [u8],
        /// For `exec_preload`: the variable seen (`LD_PRELOAD`, …).
        #[serde(borrow)]
        env: Option<&'a [u8]>,
    },
    /// [`Kind::LibraryLoad`].
    Library {
        /// The library's path.
        path: &'a [u8],
    },
    /// [`Kind::Ptrace`].
    Ptrace {
        /// The traced process.
        target_pid: u32,
        /// Its executable, when known.
        #[serde(borrow)]
        target_exe: Option<&'a [u8]>,
    },
    /// [`Kind::Connect`].
    Connect {
        /// Destination address.
        addr: IpAddr,
        /// Destination port.
        port: u16,
    },
}

/// One security event: what the JSON line of `guardian run` says, in a form
/// that costs nothing to decode: text fields are the UTF-8 bytes of the
/// JSON strings, borrowed from the input buffer and not re-validated (on the
/// wire a byte string and a string are the same, a varint length then the
/// bytes; skipping UTF-8 validation is most of the decoding cost inside an
/// interpreter). Compare them with byte strings (`b"/opt/models/"`).
///
/// Field order is the encoding order; do not reorder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event<'a> {
    /// What happened (always the first byte, see [`Kind`]).
    pub kind: Kind,
    /// What the kernel did.
    pub kernel: KernelVerdict,
    /// The guard's mode.
    pub mode: Mode,
    /// When, in nanoseconds since the Unix epoch (the event's `time`). Use
    /// this rather than the clock for windows, so that replaying recorded
    /// events (`guardian policy test`) gives the same verdicts.
    pub time_ns: u64,
    /// The kernel hook that saw it (`lsm/file_open`, …).
    pub hook: &'a [u8],
    /// Process id (thread group).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Parent's process id.
    pub ppid: u32,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// The process's executable, when known.
    #[serde(borrow)]
    pub exe: Option<&'a [u8]>,
    /// Device of the executable.
    pub exe_dev: Dev,
    /// Inode of the executable.
    pub exe_ino: u64,
    /// The task's command name.
    pub comm: &'a [u8],
    /// Whether the process is the inference service.
    pub service: bool,
    /// Kind-specific fields.
    #[serde(borrow)]
    pub detail: Detail<'a>,
}

impl<'a> Event<'a> {
    /// The path the event is about: the file, the executed binary or the
    /// library.
    pub fn path(&self) -> Option<&'a [u8]> {
        match self.detail {
            Detail::File { path, .. } | Detail::Exec { path, .. } | Detail::Library { path } => {
                Some(path)
            }
            _ => None,
        }
    }
}

/// A policy's decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[repr(u8)]
pub enum Decision {
    /// Nothing to say.
    Allow = 0,
    /// Report it.
    Alert = 1,
    /// It must not happen (and if the kernel could not stop it, respond).
    Deny = 2,
}

impl Decision {
    /// Lower case, as in the JSON events.
    pub const fn name(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Alert => "alert",
            Decision::Deny => "deny",
        }
    }
}

/// Responses a verdict asks for, as bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actions(pub u8);

impl Actions {
    /// Nothing.
    pub const NONE: Actions = Actions(0);
    /// Kill the process.
    pub const KILL: Actions = Actions(1);
    /// Re-measure the file into the TPM. Reserved: the agent records it in
    /// the event's `policy.actions` but does not act on it (it re-measures
    /// every measured file an event touches anyway).
    pub const REMEASURE: Actions = Actions(2);
    /// Move the file aside (quarantine). Reserved: the agent records it in
    /// the event's `policy.actions` but does not act on it.
    pub const QUARANTINE: Actions = Actions(4);
    /// Every bit this ABI version defines.
    pub const ALL: Actions = Actions(7);

    /// Both sets.
    pub const fn union(self, other: Actions) -> Actions {
        Actions(self.0 | other.0)
    }

    /// Whether every bit of `other` is set.
    pub const fn contains(self, other: Actions) -> bool {
        self.0 & other.0 == other.0
    }

    /// Names of the set bits, in bit order.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        [(1u8, "kill"), (2, "remeasure"), (4, "quarantine")]
            .into_iter()
            .filter(move |(bit, _)| self.0 & bit != 0)
            .map(|(_, n)| n)
    }
}

/// What `guardian_evaluate` returns, packed into an `i64`:
///
/// | bits | meaning |
/// |---|---|
/// | 0–7 | [`Decision`]: 0 allow, 1 alert, 2 deny |
/// | 8–15 | [`Actions`] bits |
/// | 16–31 | zero |
/// | 32–63 | rule id (the policy's own numbering, reported in alerts) |
///
/// Anything else (an unknown decision, unknown action bits, non-zero
/// reserved bits) is a policy error and gets the fail mode. By convention
/// a module returns [`Verdict::DECODE_ERROR`] when it cannot decode the
/// event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// The decision.
    pub decision: Decision,
    /// Requested responses.
    pub actions: Actions,
    /// Which of the policy's rules decided (0: none in particular).
    pub rule: u32,
}

/// Why a packed verdict was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VerdictError {
    /// The module said it could not decode the event.
    Decode,
    /// The decision byte is not 0, 1 or 2.
    Decision(u8),
    /// Action bits this ABI version does not define.
    Actions(u8),
    /// Bits 16–31 are not zero.
    Reserved(u16),
}

impl core::fmt::Display for VerdictError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            VerdictError::Decode => write!(f, "the module could not decode the event"),
            VerdictError::Decision(d) => {
                write!(f, "unknown decision {d} (0 allow, 1 alert, 2 deny)")
            }
            VerdictError::Actions(a) => write!(f, "unknown action bits {a:#04x}"),
            VerdictError::Reserved(r) => write!(f, "reserved bits 16-31 set ({r:#06x})"),
        }
    }
}

impl Verdict {
    /// Allow, no rule.
    pub const ALLOW: Verdict = Verdict::allow();
    /// The packed value a module returns when the event does not decode.
    pub const DECODE_ERROR: i64 = 0xff;

    /// Allow.
    pub const fn allow() -> Verdict {
        Verdict {
            decision: Decision::Allow,
            actions: Actions::NONE,
            rule: 0,
        }
    }

    /// Alert, by `rule`.
    pub const fn alert(rule: u32) -> Verdict {
        Verdict {
            decision: Decision::Alert,
            actions: Actions::NONE,
            rule,
        }
    }

    /// Deny, by `rule`.
    pub const fn deny(rule: u32) -> Verdict {
        Verdict {
            decision: Decision::Deny,
            actions: Actions::NONE,
            rule,
        }
    }

    /// The same verdict also asking for `actions`.
    pub const fn with(self, actions: Actions) -> Verdict {
        Verdict {
            actions: self.actions.union(actions),
            ..self
        }
    }

    /// The `i64` a module returns.
    pub const fn pack(self) -> i64 {
        ((self.rule as u64) << 32 | (self.actions.0 as u64) << 8 | self.decision as u64) as i64
    }

    /// Read what a module returned.
    pub const fn unpack(v: i64) -> Result<Verdict, VerdictError> {
        let v = v as u64;
        let decision = match (v & 0xff) as u8 {
            0 => Decision::Allow,
            1 => Decision::Alert,
            2 => Decision::Deny,
            0xff => return Err(VerdictError::Decode),
            d => return Err(VerdictError::Decision(d)),
        };
        let actions = ((v >> 8) & 0xff) as u8;
        if actions & !Actions::ALL.0 != 0 {
            return Err(VerdictError::Actions(actions));
        }
        let reserved = ((v >> 16) & 0xffff) as u16;
        if reserved != 0 {
            return Err(VerdictError::Reserved(reserved));
        }
        Ok(Verdict {
            decision,
            actions: Actions(actions),
            rule: (v >> 32) as u32,
        })
    }
}

/// An allowed destination: `net/prefix`, ports `ports.0..=ports.1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Egress {
    /// Network address.
    pub net: IpAddr,
    /// Prefix length (0–32 for IPv4, 0–128 for IPv6).
    pub prefix: u8,
    /// First and last allowed port (0, 65535 for any).
    pub ports: (u16, u16),
}

impl Egress {
    /// Whether `addr:port` is inside.
    #[inline(always)]
    pub fn contains(&self, addr: &IpAddr, port: u16) -> bool {
        port >= self.ports.0 && port <= self.ports.1 && prefix_match(&self.net, addr, self.prefix)
    }
}

/// Whether `addr` is in `net/prefix` (different families never match).
#[inline(always)]
pub fn prefix_match(net: &IpAddr, addr: &IpAddr, prefix: u8) -> bool {
    // The addresses as big-endian integers: the bits past the prefix are
    // shifted out, so one comparison decides (a handful of operators in an
    // interpreter, where a byte loop costs dozens per byte).
    match (net, addr) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            prefix <= 32
                && (prefix == 0
                    || (u32::from_be_bytes(*n) ^ u32::from_be_bytes(*a)) >> (32 - prefix) == 0)
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            prefix <= 128
                && (prefix == 0
                    || (u128::from_be_bytes(*n) ^ u128::from_be_bytes(*a)) >> (128 - prefix) == 0)
        }
        _ => false,
    }
}

/// What a module wants the kernel to enforce without asking it, returned by
/// `guardian_static_rules`. `None` means "no opinion"; `Some(&[])` means
/// "nothing is allowed". guardian merges the rules of every loaded policy:
/// protected paths are the union; each allowlist is the intersection of the
/// lists of the policies that have one (deny-overrides, as for verdicts).
///
/// Paths ending in `/` are directories (everything under them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StaticRules<'a> {
    /// Files and directories nobody but an allowed writer may change.
    pub protected: &'a [&'a str],
    /// Executables allowed to write protected files.
    pub writers: Option<&'a [&'a str]>,
    /// Where the inference service may connect.
    pub egress: Option<&'a [Egress]>,
    /// Binaries the inference service may execute.
    pub service_exec: Option<&'a [&'a str]>,
    /// Directories the inference service may load libraries from.
    pub library_dirs: Option<&'a [&'a str]>,
}

/// [`StaticRules`] as the host decodes them (same bytes).
#[cfg(feature = "alloc")]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnedStaticRules {
    /// See [`StaticRules::protected`].
    pub protected: alloc::vec::Vec<alloc::string::String>,
    /// See [`StaticRules::writers`].
    pub writers: Option<alloc::vec::Vec<alloc::string::String>>,
    /// See [`StaticRules::egress`].
    pub egress: Option<alloc::vec::Vec<Egress>>,
    /// See [`StaticRules::service_exec`].
    pub service_exec: Option<alloc::vec::Vec<alloc::string::String>>,
    /// See [`StaticRules::library_dirs`].
    pub library_dirs: Option<alloc::vec::Vec<alloc::string::String>>,
}

/// Whether `path` is `rule` or, when `rule` ends in `/`, under it.
pub fn path_matches(rule: &str, path: &[u8]) -> bool {
    if rule.ends_with('/') {
        path.starts_with(rule.as_bytes())
    } else {
        path == rule.as_bytes()
    }
}

#[cfg(test)]
mod tests {
    extern crate alloc;
    use super::*;

    fn event() -> Event<'static> {
        Event {
            kind: Kind::Connect,
            kernel: KernelVerdict::Alert,
            mode: Mode::Detect,
            time_ns: 1_700_000_000_000_000_000,
            hook: b"tp/connect",
            pid: 42,
            tid: 43,
            ppid: 1,
            uid: 0,
            gid: 0,
            exe: Some(b"/usr/bin/curl"),
            exe_dev: Dev { major: 8, minor: 1 },
            exe_ino: 1234,
            comm: b"curl",
            service: true,
            detail: Detail::Connect {
                addr: IpAddr::V4([10, 1, 2, 3]),
                port: 443,
            },
        }
    }

    #[test]
    fn event_round_trips_and_kind_is_byte_zero() {
        for k in Kind::ALL {
            let ev = Event { kind: k, ..event() };
            let bytes = postcard::to_allocvec(&ev).unwrap();
            assert_eq!(bytes[0], k as u8, "{k:?}");
            let back: Event<'_> = postcard::from_bytes(&bytes).unwrap();
            assert_eq!(back, ev);
            assert_eq!(Kind::from_name(k.name()), k);
        }
        assert_eq!(Kind::from_name("future_thing"), Kind::Other);
        assert!(Kind::FileMmapWrite.is_file() && !Kind::Exec.is_file());
    }

    #[test]
    fn bytes_and_strings_share_the_wire_format() {
        let as_str = postcard::to_allocvec(&("/opt/models/x", Some("LD_PRELOAD"))).unwrap();
        let as_bytes =
            postcard::to_allocvec(&(&b"/opt/models/x"[..], Some(&b"LD_PRELOAD"[..]))).unwrap();
        assert_eq!(as_str, as_bytes);
        let (p, e): (&[u8], Option<&[u8]>) = postcard::from_bytes(&as_str).unwrap();
        assert_eq!((p, e), (&b"/opt/models/x"[..], Some(&b"LD_PRELOAD"[..])));
    }

    #[test]
    fn verdict_packing() {
        let v = Verdict::deny(7).with(Actions::KILL.union(Actions::REMEASURE));
        assert_eq!(v.pack(), (7 << 32) | (3 << 8) | 2);
        assert_eq!(Verdict::unpack(v.pack()), Ok(v));
        assert_eq!(Verdict::unpack(0), Ok(Verdict::ALLOW));
        assert_eq!(Verdict::unpack(3), Err(VerdictError::Decision(3)));
        assert_eq!(Verdict::unpack(0x800), Err(VerdictError::Actions(8)));
        assert_eq!(Verdict::unpack(1 << 20), Err(VerdictError::Reserved(16)));
        assert_eq!(
            Verdict::unpack(Verdict::DECODE_ERROR),
            Err(VerdictError::Decode)
        );
        let names: alloc::vec::Vec<_> = v.actions.names().collect();
        assert_eq!(names, ["kill", "remeasure"]);
    }

    #[test]
    fn egress_prefixes() {
        let e = Egress {
            net: IpAddr::V4([10, 0, 0, 0]),
            prefix: 8,
            ports: (443, 443),
        };
        assert!(e.contains(&IpAddr::V4([10, 200, 1, 1]), 443));
        assert!(!e.contains(&IpAddr::V4([11, 0, 0, 1]), 443));
        assert!(!e.contains(&IpAddr::V4([10, 0, 0, 1]), 80));
        assert!(!e.contains(&IpAddr::V6([0; 16]), 443));
        let n = IpAddr::V4([192, 168, 16, 0]);
        assert!(prefix_match(&n, &IpAddr::V4([192, 168, 31, 9]), 20));
        assert!(!prefix_match(&n, &IpAddr::V4([192, 168, 32, 9]), 20));
        assert!(prefix_match(&n, &IpAddr::V4([1, 2, 3, 4]), 0));
        assert!(!prefix_match(&n, &IpAddr::V4([1, 2, 3, 4]), 33));
        assert!(prefix_match(&n, &IpAddr::V4([192, 168, 16, 0]), 32));
        assert!(!prefix_match(&n, &IpAddr::V4([192, 168, 16, 1]), 32));
        assert!(prefix_match(&n, &IpAddr::V4([128, 0, 0, 0]), 1));
        assert!(!prefix_match(&n, &IpAddr::V4([127, 255, 255, 255]), 1));
        assert!(!prefix_match(&n, &IpAddr::V6([0; 16]), 0));
        let mut v6 = [0u8; 16];
        v6[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        let n6 = IpAddr::V6(v6);
        let mut a6 = v6;
        a6[15] = 1;
        assert!(prefix_match(&n6, &IpAddr::V6(a6), 32));
        assert!(prefix_match(&n6, &IpAddr::V6(a6), 127));
        assert!(!prefix_match(&n6, &IpAddr::V6(a6), 128));
        assert!(prefix_match(&n6, &IpAddr::V6(v6), 128));
        a6[4] = 0x80;
        assert!(!prefix_match(&n6, &IpAddr::V6(a6), 33));
        assert!(prefix_match(&n6, &IpAddr::V6(a6), 32));
        assert!(!prefix_match(&n6, &IpAddr::V6(a6), 129));
        assert!(!prefix_match(&n6, &IpAddr::V4([0x20, 1, 0x0d, 0xb8]), 16));
        assert!(path_matches("/opt/models/", b"/opt/models/a.onnx"));
        assert!(!path_matches("/opt/models/", b"/opt/models2/a"));
        assert!(path_matches("/etc/x", b"/etc/x") && !path_matches("/etc/x", b"/etc/xy"));
    }

    #[cfg(feature = "alloc")]
    #[test]
    fn static_rules_borrowed_and_owned_share_bytes() {
        use alloc::{string::ToString, vec};
        let egress = [Egress {
            net: IpAddr::V6([0; 16]),
            prefix: 128,
            ports: (0, 65535),
        }];
        let r = StaticRules {
            protected: &["/opt/models/"],
            writers: Some(&["/usr/bin/updater"]),
            egress: Some(&egress),
            service_exec: None,
            library_dirs: Some(&[]),
        };
        let bytes = postcard::to_allocvec(&r).unwrap();
        let owned: OwnedStaticRules = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(owned.protected, vec!["/opt/models/".to_string()]);
        assert_eq!(owned.egress.as_deref(), Some(&egress[..]));
        assert_eq!(owned.service_exec, None);
        assert_eq!(owned.library_dirs, Some(vec![]));
        assert_eq!(postcard::to_allocvec(&owned).unwrap(), bytes);
    }
}
