//! One event on its way out: the policies judge it, the agent answers it
//! if it must, and the finished event goes to the outputs.
//!
//! The policies see the event through its fields
//! ([`policy::EventFields`]), borrowed from the event itself: it is never
//! turned into JSON and back to be judged, and written as JSON once, by
//! the event output. A policy that fails on an event is counted and
//! logged by the engine, once.

use super::{counters::AgentCounters, output::Outputs};
use crate::{
    config::Response,
    events::SecurityEvent,
    hooks::Verdict,
    policy::{self, DevRef, EventFields, PolicyEngine},
    rules, targets,
};

/// One decoded event: the policies, the response, the outputs.
pub(super) fn handle(
    mut ev: SecurityEvent,
    engine: &PolicyEngine,
    response: Response,
    out: &mut Outputs,
    counters: &mut AgentCounters,
) {
    // Every event goes through the policies in force.
    let mut policy_kill = false;
    if engine.generation() > 0 {
        match engine.evaluate_fields(&fields(&ev)) {
            Ok(outcome) => {
                policy_kill = outcome.decision != policy::Decision::Allow
                    && outcome.actions.contains(policy::Actions::KILL);
                ev.policy = Some(rules::note(&outcome));
            }
            Err(e) => log::warn!("policies: event not evaluated: {e}"),
        }
    }
    // Nothing to answer when the kernel refused: nothing happened.
    let happened = ev.verdict != Verdict::Deny;
    if happened && ((ev.verdict == Verdict::Alert && response == Response::Kill) || policy_kill) {
        ev.response = Some(respond_kill(&ev, counters));
    }
    out.event(ev, counters);
}

/// The fields the policies read, as the event's JSON line carries them
/// (the same ABI event, and the same errors, as the line parsed back).
fn fields(ev: &SecurityEvent) -> EventFields<'_> {
    EventFields {
        time: &ev.time,
        event: &ev.event,
        verdict: ev.verdict.as_str(),
        mode: ev.mode.as_str(),
        hook: &ev.hook,
        pid: ev.pid,
        tid: ev.tid,
        ppid: ev.ppid,
        uid: ev.uid,
        gid: ev.gid,
        exe: ev.exe.as_deref(),
        exe_dev: Some(DevRef::Text(&ev.exe_dev)),
        exe_ino: ev.exe_ino,
        comm: &ev.comm,
        service: ev.service,
        file: ev.file.as_deref(),
        dev: ev.dev.as_deref().map(DevRef::Text),
        ino: ev.ino,
        flags: ev.flags,
        flags_text: ev.flags_text.as_deref(),
        path: ev.path.as_deref(),
        env: ev.env.as_deref(),
        target_pid: ev.target_pid,
        target_exe: ev.target_exe.as_deref(),
        family: ev.family.as_deref(),
        addr: ev.addr.as_deref(),
        port: ev.port,
    }
}

/// Kill the process behind an event the kernel could not deny. Only if
/// the pid still runs the executable the kernel reported (a recycled pid
/// is left alone), and never guardian itself or pid 1.
fn respond_kill(ev: &SecurityEvent, counters: &mut AgentCounters) -> String {
    let pid = ev.pid;
    if pid <= 1 || pid == std::process::id() {
        return format!("not killed: pid {pid} is exempt");
    }
    let same = std::fs::metadata(format!("/proc/{pid}/exe"))
        .map(|m| targets::inode_key(&m).ino == ev.exe_ino)
        .unwrap_or(false);
    if !same {
        counters.kill_failures += 1;
        return "not killed: the process is gone or runs another program now".to_owned();
    }
    // SAFETY: plain syscall with a pid and a signal number.
    let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    if rc == 0 {
        counters.killed += 1;
        log::warn!("killed pid {pid} ({}) after {}", ev.comm, ev.event);
        "killed".to_owned()
    } else {
        counters.kill_failures += 1;
        format!("not killed: {}", std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hooks::Mode;

    /// Every kind of event the agent makes, with the fields it fills.
    fn samples() -> Vec<SecurityEvent> {
        let base = SecurityEvent {
            time: "2025-01-02T03:04:05.000006Z".into(),
            event: "file_write_open".into(),
            verdict: Verdict::Deny,
            mode: Mode::Enforce,
            hook: "lsm/file_open".into(),
            pid: 10,
            tid: 11,
            ppid: 1,
            uid: 0,
            gid: 0,
            exe: Some("/usr/bin/dd".into()),
            exe_dev: "8:1".into(),
            exe_ino: 99,
            comm: "dd".into(),
            service: false,
            file: Some("/models/m.onnx".into()),
            dev: Some("8:1".into()),
            ino: Some(1234),
            flags: Some(0o1101),
            flags_text: Some("O_WRONLY|O_CREAT|O_TRUNC".into()),
            ..SecurityEvent::default()
        };
        let file = |event: &str, name: Option<&str>| SecurityEvent {
            event: event.into(),
            name: name.map(Into::into),
            ..base.clone()
        };
        let process = SecurityEvent {
            file: None,
            dev: None,
            ino: None,
            flags: None,
            flags_text: None,
            verdict: Verdict::Alert,
            mode: Mode::Detect,
            service: true,
            ..base.clone()
        };
        vec![
            base.clone(),
            file("file_write", None),
            file("file_rename", Some("m.old")),
            file("file_create", Some("new.onnx")),
            file("file_mmap_write", None),
            SecurityEvent {
                event: "exec".into(),
                path: Some("/bin/sh".into()),
                ..process.clone()
            },
            SecurityEvent {
                event: "exec_preload".into(),
                path: Some("/bin/sh".into()),
                env: Some("LD_PRELOAD".into()),
                ..process.clone()
            },
            SecurityEvent {
                event: "library_load".into(),
                path: Some("/lib/x.so".into()),
                dev: Some("8:2".into()),
                ino: Some(7),
                ..process.clone()
            },
            SecurityEvent {
                event: "ptrace".into(),
                target_pid: Some(42),
                target_exe: Some("/srv/infer".into()),
                ..process.clone()
            },
            SecurityEvent {
                event: "connect".into(),
                family: Some("ipv6".into()),
                addr: Some("2001:db8::1".into()),
                port: Some(443),
                ..process.clone()
            },
            SecurityEvent {
                event: "mount".into(),
                ..process.clone()
            },
            // Events the agent makes itself, without an executable's
            // device (the path check, the search for writers): the
            // policies must refuse them as the JSON route did.
            SecurityEvent {
                event: "path_changed".into(),
                exe: None,
                exe_dev: String::new(),
                ..base.clone()
            },
            // Malformed on purpose: each must fail as the line would.
            SecurityEvent {
                event: "connect".into(),
                family: Some("ipv4".into()),
                addr: Some("2001:db8::1".into()),
                port: Some(443),
                ..process.clone()
            },
            SecurityEvent {
                event: "exec".into(),
                ..process.clone()
            },
            SecurityEvent {
                dev: Some("sda".into()),
                ..base.clone()
            },
            SecurityEvent {
                time: "yesterday".into(),
                ..base
            },
        ]
    }

    #[test]
    fn fields_give_what_the_json_line_gives() {
        for ev in samples() {
            let line = serde_json::to_string(&ev).unwrap();
            let json = policy::JsonEvent::parse(&line).unwrap();
            let direct = fields(&ev);
            assert_eq!(direct.to_abi(), json.to_abi(), "{line}");
        }
    }

    #[test]
    fn some_samples_convert_and_some_do_not() {
        let results: Vec<bool> = samples()
            .iter()
            .map(|e| fields(e).to_abi().is_ok())
            .collect();
        assert!(results[..11].iter().all(|ok| *ok), "{results:?}");
        assert!(results[11..].iter().all(|ok| !*ok), "{results:?}");
    }
}
