//! What crosses into and out of a Rego evaluation as JSON: the event as
//! Rego's `input`, and the result set made a [`Verdict`].

use std::{
    fmt::Write as _,
    time::{Duration, UNIX_EPOCH},
};

use guardian_policy_abi::{Actions, Decision, Detail, Event, IpAddr, KernelVerdict, Mode, Verdict};
use serde_json::Value;

use super::{ALLOW_ENTRYPOINT, Shape, VERDICT_ENTRYPOINT};
use crate::policy::module::CallError;

/// The result set of an evaluation made a verdict:
///
/// | entrypoint | value | verdict |
/// |---|---|---|
/// | `guardian/verdict` | `"allow"`, `"alert"`, `"deny"` | that decision, rule 0 |
/// | | `{"decision": "deny", "rule": 40, "actions": ["kill"]}` | that (`rule`, `actions` optional) |
/// | | undefined (`[]`) | allow: no rule spoke |
/// | `guardian/allow` | `true` | allow |
/// | | `false`, undefined | deny, rule 0 |
///
/// Anything else is a [`CallError::BadResult`] (the fail mode applies).
pub(super) fn decide(text: &[u8], shape: Shape) -> Result<Verdict, CallError> {
    let bad = |problem: String| {
        let shown = String::from_utf8_lossy(text.get(..200).unwrap_or(text)).into_owned();
        CallError::BadResult(format!("{problem} (result {shown})"))
    };
    let set: Vec<serde_json::Map<String, Value>> =
        serde_json::from_slice(text).map_err(|e| bad(format!("not a result set: {e}")))?;
    let value = match set.as_slice() {
        [] => None,
        [one] => Some(
            one.get("result")
                .ok_or_else(|| bad("no \"result\" binding".into()))?,
        ),
        more => return Err(bad(format!("{} results, at most one expected", more.len()))),
    };
    let decision = |s: &str| match s {
        "allow" => Ok(Decision::Allow),
        "alert" => Ok(Decision::Alert),
        "deny" => Ok(Decision::Deny),
        other => Err(bad(format!(
            "decision {other:?} is not allow, alert or deny"
        ))),
    };
    let verdict = |decision, actions, rule| Verdict {
        decision,
        actions,
        rule,
    };
    match (shape, value) {
        (Shape::Allow, Some(Value::Bool(true))) => Ok(Verdict::ALLOW),
        (Shape::Allow, None | Some(Value::Bool(false))) => Ok(Verdict::deny(0)),
        (Shape::Allow, Some(v)) => Err(bad(format!("{ALLOW_ENTRYPOINT} is {v}, not a boolean"))),
        (Shape::Verdict, None) => Ok(Verdict::ALLOW),
        (Shape::Verdict, Some(Value::String(s))) => Ok(verdict(decision(s)?, Actions::NONE, 0)),
        (Shape::Verdict, Some(Value::Object(o))) => {
            let d = match o.get("decision") {
                Some(Value::String(s)) => decision(s)?,
                _ => return Err(bad("no \"decision\" string".into())),
            };
            let rule = match o.get("rule") {
                None => 0,
                Some(r) => r
                    .as_u64()
                    .and_then(|r| u32::try_from(r).ok())
                    .ok_or_else(|| bad(format!("rule {r} is not a 32-bit unsigned integer")))?,
            };
            let mut actions = Actions::NONE;
            if let Some(a) = o.get("actions") {
                let Value::Array(list) = a else {
                    return Err(bad(format!("actions {a} is not an array")));
                };
                for name in list {
                    actions = actions.union(match name.as_str() {
                        Some("kill") => Actions::KILL,
                        Some("remeasure") => Actions::REMEASURE,
                        Some("quarantine") => Actions::QUARANTINE,
                        _ => {
                            return Err(bad(format!(
                                "action {name} is not kill, remeasure or quarantine"
                            )));
                        }
                    });
                }
            }
            Ok(verdict(d, actions, rule))
        }
        (Shape::Verdict, Some(v)) => Err(bad(format!(
            "{VERDICT_ENTRYPOINT} is {v}, not a decision string or object"
        ))),
    }
}

/// The event as Rego's `input`: the fields of the JSON line `guardian run`
/// prints for it (`time`, `event`, `verdict`, `mode`, `hook`, `pid`, `tid`,
/// `ppid`, `uid`, `gid`, `exe`, `exe_dev`, `exe_ino`, `comm`, `service`,
/// then the kind's own: `file`, `dev`, `ino`, `flags`, `flags_text`;
/// `path`, `env`; `target_pid`, `target_exe`; `family`, `addr`, `port`),
/// plus `time_ns`. Written into `out` (cleared first).
pub fn input_json(event: &Event<'_>, out: &mut String) {
    out.clear();
    let time = UNIX_EPOCH + Duration::from_nanos(event.time_ns);
    let _ = write!(
        out,
        r#"{{"time":"{}","time_ns":{},"event":"{}","verdict":"{}","mode":"{}","hook":"#,
        humantime::format_rfc3339_nanos(time),
        event.time_ns,
        event.kind.name(),
        match event.kernel {
            KernelVerdict::Allow => "allow",
            KernelVerdict::Alert => "alert",
            KernelVerdict::Deny => "deny",
        },
        match event.mode {
            Mode::Enforce => "enforce",
            Mode::Detect => "detect",
        },
    );
    json_str(out, event.hook);
    let _ = write!(
        out,
        r#","pid":{},"tid":{},"ppid":{},"uid":{},"gid":{},"exe":"#,
        event.pid, event.tid, event.ppid, event.uid, event.gid
    );
    json_opt(out, event.exe);
    let _ = write!(
        out,
        r#","exe_dev":"{}:{}","exe_ino":{},"comm":"#,
        event.exe_dev.major, event.exe_dev.minor, event.exe_ino
    );
    json_str(out, event.comm);
    let _ = write!(out, r#","service":{}"#, event.service);
    match event.detail {
        Detail::None => {}
        Detail::File {
            path,
            dev,
            ino,
            flags,
            flags_text,
        } => {
            out.push_str(r#","file":"#);
            json_str(out, path);
            let _ = write!(
                out,
                r#","dev":"{}:{}","ino":{ino},"flags":{flags},"flags_text":"#,
                dev.major, dev.minor
            );
            json_str(out, flags_text);
        }
        Detail::Exec { path, env } => {
            out.push_str(r#","path":"#);
            json_str(out, path);
            out.push_str(r#","env":"#);
            json_opt(out, env);
        }
        Detail::Library { path } => {
            out.push_str(r#","path":"#);
            json_str(out, path);
        }
        Detail::Ptrace {
            target_pid,
            target_exe,
        } => {
            let _ = write!(out, r#","target_pid":{target_pid},"target_exe":"#);
            json_opt(out, target_exe);
        }
        Detail::Connect { addr, port } => {
            let _ = match addr {
                IpAddr::V4(a) => write!(
                    out,
                    r#","family":"ipv4","addr":"{}""#,
                    std::net::Ipv4Addr::from(a)
                ),
                IpAddr::V6(a) => write!(
                    out,
                    r#","family":"ipv6","addr":"{}""#,
                    std::net::Ipv6Addr::from(a)
                ),
            };
            let _ = write!(out, r#","port":{port}"#);
        }
    }
    out.push('}');
}

fn json_opt(out: &mut String, s: Option<&[u8]>) {
    match s {
        Some(s) => json_str(out, s),
        None => out.push_str("null"),
    }
}

/// A JSON string of the bytes (invalid UTF-8 replaced, as the JSON lines
/// have it).
fn json_str(out: &mut String, s: &[u8]) {
    out.push('"');
    for c in String::from_utf8_lossy(s).chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_map_to_verdicts() {
        let v = |t: &str| decide(t.as_bytes(), Shape::Verdict);
        let a = |t: &str| decide(t.as_bytes(), Shape::Allow);
        assert_eq!(v(r#"[{"result":"deny"}]"#).unwrap(), Verdict::deny(0));
        assert_eq!(v(r#"[{"result":"alert"}]"#).unwrap(), Verdict::alert(0));
        assert_eq!(v("[]").unwrap(), Verdict::ALLOW);
        assert_eq!(
            v(r#"[{"result":{"decision":"deny","rule":40,"actions":["kill"]}}]"#).unwrap(),
            Verdict::deny(40).with(Actions::KILL)
        );
        assert_eq!(a(r#"[{"result":true}]"#).unwrap(), Verdict::ALLOW);
        assert_eq!(a(r#"[{"result":false}]"#).unwrap(), Verdict::deny(0));
        assert_eq!(a("[]").unwrap(), Verdict::deny(0));
        for (bad, why) in [
            (v(r#"[{"result":"maybe"}]"#), "\"maybe\""),
            (v(r#"[{"result":3}]"#), "not a decision"),
            (v(r#"[{"x":1}]"#), "no \"result\""),
            (v(r#"[{"result":"deny"},{"result":"deny"}]"#), "2 results"),
            (v("{not json"), "not a result set"),
            (
                v(r#"[{"result":{"decision":"deny","actions":["explode"]}}]"#),
                "explode",
            ),
            (
                v(r#"[{"result":{"decision":"deny","rule":-1}}]"#),
                "rule -1",
            ),
            (a(r#"[{"result":"yes"}]"#), "not a boolean"),
        ] {
            let e = bad.unwrap_err();
            assert!(
                matches!(&e, CallError::BadResult(m) if m.contains(why)),
                "{e} lacks {why}"
            );
        }
    }

    #[test]
    fn input_is_the_json_line() {
        let e = Event {
            kind: guardian_policy_abi::Kind::Exec,
            kernel: KernelVerdict::Allow,
            mode: Mode::Enforce,
            time_ns: 1_735_787_045_000_006_000,
            hook: b"lsm/bprm_check_security",
            pid: 10,
            tid: 11,
            ppid: 1,
            uid: 0,
            gid: 0,
            exe: Some(b"/usr/bin/py\"thon"),
            exe_dev: guardian_policy_abi::Dev { major: 8, minor: 1 },
            exe_ino: 99,
            comm: b"py\n",
            service: true,
            detail: Detail::Exec {
                path: b"/bin/sh",
                env: None,
            },
        };
        let mut s = String::new();
        input_json(&e, &mut s);
        let v: Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["event"], "exec");
        assert_eq!(v["exe"], "/usr/bin/py\"thon");
        assert_eq!(v["comm"], "py\n");
        assert_eq!(v["path"], "/bin/sh");
        assert_eq!(v["env"], Value::Null);
        assert_eq!(v["service"], true);
        assert_eq!(v["exe_dev"], "8:1");
        assert_eq!(v["time"], "2025-01-02T03:04:05.000006000Z");
        // The agent's own reader takes it back to the same event.
        let j = crate::policy::JsonEvent::parse(&s).unwrap();
        assert_eq!(j.to_abi().unwrap(), e);
    }
}
