//! The JSON security events `guardian run` prints, as the policy host reads
//! them, and their conversion into the ABI's [`Event`].
//!
//! Unknown fields are ignored (newer agents add fields); a field a kind
//! needs but lacks, or one that does not parse, is an error naming it.

use guardian_policy_abi::{Detail, Dev, Event, IpAddr, KernelVerdict, Kind, Mode};
use serde::Deserialize;

/// One JSON event line.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct JsonEvent {
    /// RFC 3339 time.
    pub time: String,
    /// The kind (`file_write_open`, `exec`, …).
    pub event: String,
    /// What the kernel did: `deny`, `allow` or `alert`.
    pub verdict: String,
    /// `enforce` or `detect`.
    pub mode: String,
    /// The kernel hook.
    #[serde(default)]
    pub hook: String,
    /// Process id.
    pub pid: u32,
    /// Thread id.
    #[serde(default)]
    pub tid: u32,
    /// Parent process id.
    #[serde(default)]
    pub ppid: u32,
    /// User id.
    #[serde(default)]
    pub uid: u32,
    /// Group id.
    #[serde(default)]
    pub gid: u32,
    /// Executable, if known.
    #[serde(default)]
    pub exe: Option<String>,
    /// Executable's device, `major:minor`.
    #[serde(default)]
    pub exe_dev: Option<DevField>,
    /// Executable's inode.
    #[serde(default)]
    pub exe_ino: u64,
    /// Command name.
    #[serde(default)]
    pub comm: String,
    /// Whether the process is the inference service.
    #[serde(default)]
    pub service: bool,
    /// File events: the path.
    #[serde(default)]
    pub file: Option<String>,
    /// File events: the device.
    #[serde(default)]
    pub dev: Option<DevField>,
    /// File events: the inode.
    #[serde(default)]
    pub ino: Option<u64>,
    /// File events: flags.
    #[serde(default)]
    pub flags: Option<u32>,
    /// File events: flags in words.
    #[serde(default)]
    pub flags_text: Option<String>,
    /// exec, exec_preload, library_load: the binary or library.
    #[serde(default)]
    pub path: Option<String>,
    /// exec_preload: the variable.
    #[serde(default)]
    pub env: Option<String>,
    /// ptrace: the target.
    #[serde(default)]
    pub target_pid: Option<u32>,
    /// ptrace: the target's executable.
    #[serde(default)]
    pub target_exe: Option<String>,
    /// connect: `ipv4` or `ipv6`.
    #[serde(default)]
    pub family: Option<String>,
    /// connect: the address.
    #[serde(default)]
    pub addr: Option<String>,
    /// connect: the port.
    #[serde(default)]
    pub port: Option<u16>,
}

/// A device number as the events carry it: `"major:minor"`, or the
/// kernel's encoded number.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum DevField {
    /// `"8:1"`.
    Text(String),
    /// A `dev_t` in the kernel's `new_encode_dev` form.
    Number(u64),
}

impl DevField {
    /// The number, borrowed.
    pub fn as_ref(&self) -> DevRef<'_> {
        match self {
            DevField::Text(s) => DevRef::Text(s),
            DevField::Number(n) => DevRef::Number(*n),
        }
    }

    /// The number as the ABI carries it; `field` names it in the error.
    pub fn parse(&self, field: &'static str) -> Result<Dev, EventError> {
        self.as_ref().parse(field)
    }
}

/// A [`DevField`], borrowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DevRef<'a> {
    /// `"8:1"`.
    Text(&'a str),
    /// A `dev_t` in the kernel's `new_encode_dev` form.
    Number(u64),
}

impl DevRef<'_> {
    /// The number as the ABI carries it; `field` names it in the error.
    pub fn parse(self, field: &'static str) -> Result<Dev, EventError> {
        match self {
            DevRef::Text(s) => {
                let bad = || EventError::Field {
                    field,
                    problem: format!("{s:?} is not major:minor"),
                };
                let (a, b) = s.split_once(':').ok_or_else(bad)?;
                Ok(Dev {
                    major: a.parse().map_err(|_| bad())?,
                    minor: b.parse().map_err(|_| bad())?,
                })
            }
            // include/linux/kdev_t.h new_decode_dev.
            DevRef::Number(n) => Ok(Dev {
                major: ((n & 0xfff00) >> 8) as u32,
                minor: ((n & 0xff) | ((n >> 12) & 0xfff00)) as u32,
            }),
        }
    }
}

/// Why a JSON event cannot become an ABI event.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum EventError {
    /// The line is not a JSON event.
    #[error("not a guardian event: {0}")]
    Json(String),
    /// A field is missing or malformed.
    #[error("field {field}: {problem}")]
    Field {
        /// The field.
        field: &'static str,
        /// What is wrong.
        problem: String,
    },
}

fn need<'a, T: ?Sized>(
    v: Option<&'a T>,
    field: &'static str,
    kind: &str,
) -> Result<&'a T, EventError> {
    v.ok_or_else(|| EventError::Field {
        field,
        problem: format!("missing (required for {kind} events)"),
    })
}

impl JsonEvent {
    /// Parse one line.
    pub fn parse(line: &str) -> Result<Self, EventError> {
        serde_json::from_str(line).map_err(|e| EventError::Json(e.to_string()))
    }

    /// Its fields, borrowed.
    pub fn fields(&self) -> EventFields<'_> {
        EventFields {
            time: &self.time,
            event: &self.event,
            verdict: &self.verdict,
            mode: &self.mode,
            hook: &self.hook,
            pid: self.pid,
            tid: self.tid,
            ppid: self.ppid,
            uid: self.uid,
            gid: self.gid,
            exe: self.exe.as_deref(),
            exe_dev: self.exe_dev.as_ref().map(DevField::as_ref),
            exe_ino: self.exe_ino,
            comm: &self.comm,
            service: self.service,
            file: self.file.as_deref(),
            dev: self.dev.as_ref().map(DevField::as_ref),
            ino: self.ino,
            flags: self.flags,
            flags_text: self.flags_text.as_deref(),
            path: self.path.as_deref(),
            env: self.env.as_deref(),
            target_pid: self.target_pid,
            target_exe: self.target_exe.as_deref(),
            family: self.family.as_deref(),
            addr: self.addr.as_deref(),
            port: self.port,
        }
    }

    /// The ABI event, borrowing the strings.
    pub fn to_abi(&self) -> Result<Event<'_>, EventError> {
        self.fields().to_abi()
    }
}

/// The fields of a JSON event line, borrowed from whatever holds them: a
/// parsed [`JsonEvent`], or the agent's own event before it is ever
/// written as JSON (the daemon judges each event from its fields, without
/// a round trip through JSON). The same fields give the same ABI event
/// and the same errors either way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventFields<'a> {
    /// RFC 3339 time.
    pub time: &'a str,
    /// The kind (`file_write_open`, `exec`, …).
    pub event: &'a str,
    /// What the kernel did: `deny`, `allow` or `alert`.
    pub verdict: &'a str,
    /// `enforce` or `detect`.
    pub mode: &'a str,
    /// The kernel hook.
    pub hook: &'a str,
    /// Process id.
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Parent process id.
    pub ppid: u32,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Executable, if known.
    pub exe: Option<&'a str>,
    /// Executable's device.
    pub exe_dev: Option<DevRef<'a>>,
    /// Executable's inode.
    pub exe_ino: u64,
    /// Command name.
    pub comm: &'a str,
    /// Whether the process is the inference service.
    pub service: bool,
    /// File events: the path.
    pub file: Option<&'a str>,
    /// File events: the device.
    pub dev: Option<DevRef<'a>>,
    /// File events: the inode.
    pub ino: Option<u64>,
    /// File events: flags.
    pub flags: Option<u32>,
    /// File events: flags in words.
    pub flags_text: Option<&'a str>,
    /// exec, exec_preload, library_load: the binary or library.
    pub path: Option<&'a str>,
    /// exec_preload: the variable.
    pub env: Option<&'a str>,
    /// ptrace: the target.
    pub target_pid: Option<u32>,
    /// ptrace: the target's executable.
    pub target_exe: Option<&'a str>,
    /// connect: `ipv4` or `ipv6`.
    pub family: Option<&'a str>,
    /// connect: the address.
    pub addr: Option<&'a str>,
    /// connect: the port.
    pub port: Option<u16>,
}

impl<'a> EventFields<'a> {
    /// The ABI event, borrowing the strings.
    pub fn to_abi(&self) -> Result<Event<'a>, EventError> {
        let kind = Kind::from_name(self.event);
        let kernel = match self.verdict {
            "allow" => KernelVerdict::Allow,
            "alert" => KernelVerdict::Alert,
            "deny" => KernelVerdict::Deny,
            other => {
                return Err(EventError::Field {
                    field: "verdict",
                    problem: format!("{other:?} is not deny, allow or alert"),
                });
            }
        };
        let mode = match self.mode {
            "enforce" => Mode::Enforce,
            "detect" => Mode::Detect,
            other => {
                return Err(EventError::Field {
                    field: "mode",
                    problem: format!("{other:?} is not enforce or detect"),
                });
            }
        };
        let time_ns = humantime::parse_rfc3339_weak(self.time)
            .map_err(|e| EventError::Field {
                field: "time",
                problem: format!("{:?}: {e}", self.time),
            })?
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        let k = self.event;
        let detail = match kind {
            k2 if k2.is_file() => Detail::File {
                path: need(self.file, "file", k)?.as_bytes(),
                dev: match self.dev {
                    Some(d) => d.parse("dev")?,
                    None => Dev::default(),
                },
                ino: self.ino.unwrap_or(0),
                flags: self.flags.unwrap_or(0),
                flags_text: self.flags_text.unwrap_or("").as_bytes(),
            },
            Kind::Exec | Kind::ExecPreload => Detail::Exec {
                path: need(self.path, "path", k)?.as_bytes(),
                env: self.env.map(str::as_bytes),
            },
            Kind::LibraryLoad => Detail::Library {
                path: need(self.path, "path", k)?.as_bytes(),
            },
            Kind::Ptrace => Detail::Ptrace {
                target_pid: *need(self.target_pid.as_ref(), "target_pid", k)?,
                target_exe: self.target_exe.map(str::as_bytes),
            },
            Kind::Connect => {
                let text = need(self.addr, "addr", k)?;
                let ip: std::net::IpAddr = text.parse().map_err(|_| EventError::Field {
                    field: "addr",
                    problem: format!("{text:?} is not an IP address"),
                })?;
                let addr = match ip {
                    std::net::IpAddr::V4(a) => IpAddr::V4(a.octets()),
                    std::net::IpAddr::V6(a) => IpAddr::V6(a.octets()),
                };
                if let Some(f) = self.family {
                    let expected = if ip.is_ipv4() { "ipv4" } else { "ipv6" };
                    if f != expected {
                        return Err(EventError::Field {
                            field: "family",
                            problem: format!("{f:?} but addr {text} is {expected}"),
                        });
                    }
                }
                Detail::Connect {
                    addr,
                    port: *need(self.port.as_ref(), "port", k)?,
                }
            }
            _ => Detail::None,
        };
        Ok(Event {
            kind,
            kernel,
            mode,
            time_ns,
            hook: self.hook.as_bytes(),
            pid: self.pid,
            tid: self.tid,
            ppid: self.ppid,
            uid: self.uid,
            gid: self.gid,
            exe: self.exe.map(str::as_bytes),
            exe_dev: match self.exe_dev {
                Some(d) => d.parse("exe_dev")?,
                None => Dev::default(),
            },
            exe_ino: self.exe_ino,
            comm: self.comm.as_bytes(),
            service: self.service,
            detail,
        })
    }
}

/// A one-line description of an event for alerts and logs.
pub fn describe(event: &Event<'_>) -> String {
    let t = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let what = match event.detail {
        Detail::File { path, .. } | Detail::Library { path } => t(path),
        Detail::Exec { path, env } => match env {
            Some(e) => format!("{} ({})", t(path), t(e)),
            None => t(path),
        },
        Detail::Ptrace {
            target_pid,
            target_exe,
        } => format!(
            "pid {target_pid} ({})",
            target_exe.map(t).unwrap_or("?".into())
        ),
        Detail::Connect { addr, port } => match addr {
            IpAddr::V4(a) => format!("{}:{port}", std::net::Ipv4Addr::from(a)),
            IpAddr::V6(a) => format!("[{}]:{port}", std::net::Ipv6Addr::from(a)),
        },
        Detail::None => String::new(),
    };
    format!(
        "{} by pid {} ({}) {what}",
        event.kind.name(),
        event.pid,
        t(event.exe.unwrap_or(event.comm))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMON: &str = r#""time":"2025-01-02T03:04:05.000006Z","verdict":"deny","mode":"enforce","hook":"lsm/file_open","pid":10,"tid":11,"ppid":1,"uid":0,"gid":0,"exe":"/usr/bin/dd","exe_dev":"8:1","exe_ino":99,"comm":"dd","service":false"#;

    #[test]
    fn every_kind_converts() {
        let lines = [
            r#""event":"file_write_open","file":"/opt/models/m.onnx","dev":"8:2","ino":5,"flags":577,"flags_text":"O_WRONLY|O_TRUNC","future":1"#,
            r#""event":"exec","path":"/bin/sh""#,
            r#""event":"exec_preload","path":"/bin/sh","env":"LD_PRELOAD""#,
            r#""event":"library_load","path":"/tmp/evil.so""#,
            r#""event":"ptrace","target_pid":7,"target_exe":null"#,
            r#""event":"connect","family":"ipv6","addr":"::1","port":8080"#,
            r#""event":"something_new""#,
        ];
        let mut kinds = Vec::new();
        for l in lines {
            let j = JsonEvent::parse(&format!("{{{COMMON},{l}}}")).unwrap();
            let e = j.to_abi().unwrap();
            assert_eq!(e.time_ns, 1_735_787_045_000_006_000);
            assert_eq!(e.exe_dev, Dev { major: 8, minor: 1 });
            assert_eq!(e.kernel, KernelVerdict::Deny);
            kinds.push(e.kind);
            // It encodes and decodes.
            let bytes = postcard::to_allocvec(&e).unwrap();
            assert_eq!(postcard::from_bytes::<Event<'_>>(&bytes).unwrap(), e);
        }
        assert_eq!(
            kinds,
            [
                Kind::FileWriteOpen,
                Kind::Exec,
                Kind::ExecPreload,
                Kind::LibraryLoad,
                Kind::Ptrace,
                Kind::Connect,
                Kind::Other
            ]
        );
        let j = JsonEvent::parse(&format!("{{{COMMON},{}}}", lines[5])).unwrap();
        assert!(matches!(
            j.to_abi().unwrap().detail,
            Detail::Connect { port: 8080, addr: IpAddr::V6(a) } if a[15] == 1
        ));
    }

    #[test]
    fn errors_name_the_field() {
        let j = JsonEvent::parse(&format!("{{{COMMON},\"event\":\"file_write\"}}")).unwrap();
        let e = j.to_abi().unwrap_err().to_string();
        assert!(e.contains("file") && e.contains("missing"), "{e}");
        let j = JsonEvent::parse(&format!(
            "{{{COMMON},\"event\":\"connect\",\"family\":\"ipv4\",\"addr\":\"10.0.0.300\",\"port\":1}}"
        ))
        .unwrap();
        assert!(j.to_abi().unwrap_err().to_string().contains("addr"));
        let e = JsonEvent::parse("{\"event\":\"exec\"}").unwrap_err();
        assert!(e.to_string().contains("time"), "{e}");
        let bad = COMMON.replace("8:1", "eight");
        let j = JsonEvent::parse(&format!("{{{bad},\"event\":\"exec\",\"path\":\"/x\"}}")).unwrap();
        assert!(j.to_abi().unwrap_err().to_string().contains("exe_dev"));
        assert_eq!(
            DevField::Number((8 << 8) | 1).parse("dev").unwrap(),
            Dev { major: 8, minor: 1 }
        );
    }
}
