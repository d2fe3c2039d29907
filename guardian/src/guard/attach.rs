//! Loading and attaching the eBPF programs: BPF LSM, tracepoints, the
//! fentry programs of `exec`, the cgroup socket programs, the raw syscall
//! tracepoint. Each returns its links for the caller to keep or pin; none
//! decides which rung a hook gets (`ladder.rs` does).

use std::path::{Path, PathBuf};

use aya::{
    Ebpf,
    maps::Map,
    programs::{
        CgroupAttachMode, CgroupSockAddr, FEntry, Lsm, RawTracePoint, TracePoint, links::FdLink,
    },
};
use guardian_common::{KernelConfig, forms, programs as prog_names};

use super::{
    GuardError, chain,
    maps::set_config,
    table::{CGROUP_PROGS, EXECVE_FENTRY, SYSCALLS_PIN},
};
use crate::{config::ModeRequest, kernel::KernelFeatures};

/// Why BPF LSM cannot be used at all, in words a board integrator can act
/// on; `None` if it may work (each program may still fail to attach).
pub(super) fn lsm_unavailable(features: &KernelFeatures) -> Option<String> {
    match &features.lsm {
        None => Some(
            "BPF LSM unavailable: securityfs is not mounted, cannot read /sys/kernel/security/lsm"
                .to_owned(),
        ),
        Some(list) if !features.bpf_lsm_active() => Some(format!(
            "BPF LSM unavailable: \"bpf\" is not in the active LSM list ({}); boot with lsm=...,bpf",
            list.join(",")
        )),
        Some(_) => None,
    }
}

/// The object's program `name`, as its type `T`.
pub(super) fn program<'a, T>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut T, GuardError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(GuardError::Program {
            name,
            source: aya::programs::ProgramError::NotLoaded,
        })?
        .try_into()
        .map_err(|source| GuardError::Program { name, source })
}

/// Load and attach one LSM program.
pub(super) fn attach_lsm(
    ebpf: &mut Ebpf,
    prog_name: &'static str,
    hook: &str,
    btf: &aya::Btf,
) -> Result<FdLink, String> {
    let prog: &mut Lsm = ebpf
        .program_mut(prog_name)
        .ok_or_else(|| format!("program {prog_name} missing from the object"))?
        .try_into()
        .map_err(|e| format!("program {prog_name}: {e}"))?;
    prog.load(hook, btf).map_err(|e| {
        let text = chain(&e);
        // The verifier's log is long; its last lines say why.
        let (head, log) = text.split_once("Verifier output:").unwrap_or((&text, ""));
        // (Its last lines are statistics; the reason comes before them.)
        let tail: Vec<&str> = log
            .lines()
            .filter(|l| {
                let l = l.trim();
                !l.is_empty()
                    && !l.starts_with("verification time")
                    && !l.starts_with("stack depth")
                    && !l.starts_with("processed ")
            })
            .collect();
        let why = tail[tail.len().saturating_sub(3)..].join(" / ");
        let hint = if text.contains("os error 524") || text.contains("Invalid argument") {
            " (kernels without BPF trampolines refuse LSM programs; arm64 needs Linux >= 6.4)"
        } else {
            ""
        };
        format!(
            "BPF LSM program for {hook} did not load: {}{}{hint}",
            head.trim_end().trim_end_matches(['.', ' ']),
            if why.is_empty() {
                String::new()
            } else {
                format!(" (verifier: {why})")
            }
        )
    })?;
    let id = prog.attach().map_err(|e| {
        format!(
            "BPF LSM program for {hook} did not attach: {} (arm64 needs Linux >= 6.4 for BPF trampolines)",
            chain(&e)
        )
    })?;
    let link = prog
        .take_link(id)
        .map_err(|e| format!("BPF LSM link for {hook}: {e}"))?;
    Ok(link.into())
}

/// Tracepoint programs: program, tracepoint category, tracepoint names.
pub(super) type Tracepoints = [(&'static str, &'static str, &'static [&'static str])];

/// Attach each program to each named tracepoint the kernel has.
pub(super) fn attach_tracepoints(
    ebpf: &mut Ebpf,
    entries: &Tracepoints,
    hook: &str,
    attached: &mut Vec<String>,
    links: &mut Vec<(String, FdLink)>,
) -> Result<(), GuardError> {
    let tracefs = crate::kernel::TRACEFS
        .iter()
        .find(|p| Path::new(p).join("events").is_dir());
    let Some(tracefs) = tracefs else {
        return Ok(());
    };
    for &(prog_name, category, names) in entries {
        for tp in names {
            if !Path::new(tracefs)
                .join("events")
                .join(category)
                .join(tp)
                .is_dir()
            {
                continue;
            }
            let err = |source| GuardError::Program {
                name: prog_name,
                source,
            };
            let prog: &mut TracePoint = program(ebpf, prog_name)?;
            if prog.fd().is_err() {
                prog.load().map_err(err)?;
            }
            let id = prog.attach(category, tp).map_err(err)?;
            attached.push(format!("tracepoint/{category}/{tp}"));
            // A perf-event link (Linux >= 5.15) can be pinned; an older
            // kernel's cannot, and that tracepoint then lives with the agent.
            let link = prog.take_link(id).map_err(err)?;
            match FdLink::try_from(link) {
                Ok(fd) => links.push((format!("{hook}-tp-{category}-{tp}"), fd)),
                Err(e) => log::warn!(
                    "tracepoint {category}/{tp} cannot be pinned ({e}); it stops with the agent"
                ),
            }
        }
    }
    Ok(())
}

/// Attach the fentry programs that read an exec's environment for the LSM
/// `bprm_check_security` program. Both or neither: on an error the one
/// already attached is dropped (detached) with its link.
pub(super) fn attach_fentry_execve(
    ebpf: &mut Ebpf,
    btf: &aya::Btf,
    hook: &str,
    links: &mut Vec<(String, FdLink)>,
) -> Result<Vec<String>, String> {
    let mut mine = Vec::new();
    let mut attached = Vec::new();
    for (name, function) in EXECVE_FENTRY {
        let prog: &mut FEntry = program(ebpf, name).map_err(|e| chain(&e))?;
        prog.load(function, btf)
            .map_err(|e| format!("{name} on {function} did not load: {}", chain(&e)))?;
        let id = prog
            .attach()
            .map_err(|e| format!("{name} on {function} did not attach: {}", chain(&e)))?;
        let link: FdLink = prog.take_link(id).map_err(|e| chain(&e))?.into();
        mine.push((format!("{hook}-fentry-{function}"), link));
        attached.push(format!("fentry/{function}"));
    }
    links.extend(mine);
    Ok(attached)
}

/// The root of the cgroup v2 hierarchy (from `/proc/self/mountinfo`:
/// `/sys/fs/cgroup` on a unified system, `/sys/fs/cgroup/unified` on a
/// hybrid one).
pub fn cgroup2_root() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        let mut f = left.split_whitespace();
        let root = f.nth(3)?;
        let point = f.next()?;
        (fstype == "cgroup2" && root == "/").then(|| PathBuf::from(point))
    })
}

/// Attach the cgroup socket programs to the root of the cgroup v2
/// hierarchy, so that every socket of every process is judged (the
/// programs pass everything but the service's egress). Deny unless detect
/// mode was asked for. Returns the cgroup and whether it denies.
pub(super) fn attach_cgroup(
    ebpf: &mut Ebpf,
    config: &mut KernelConfig,
    maps: &mut std::collections::HashMap<&'static str, Map>,
    request: ModeRequest,
    links: &mut Vec<(String, FdLink)>,
) -> Result<(String, bool), String> {
    let root = cgroup2_root().ok_or_else(|| {
        "no cgroup v2 hierarchy is mounted (mount -t cgroup2 none /sys/fs/cgroup)".to_owned()
    })?;
    let dir = std::fs::File::open(&root).map_err(|e| format!("{}: {e}", root.display()))?;
    let deny = request != ModeRequest::Detect;
    if deny {
        // Before the first program can run; taken back if one fails.
        config.forms |= forms::CGROUP_DENY;
        set_config(maps, *config).map_err(|e| e.to_string())?;
    }
    match attach_cgroup_progs(ebpf, &dir, &root) {
        Ok(mine) => links.extend(mine),
        Err(e) => {
            // The links made so far are dropped (detached) with `mine`.
            config.forms &= !forms::CGROUP_DENY;
            set_config(maps, *config).map_err(|e| e.to_string())?;
            return Err(e);
        }
    }
    Ok((root.display().to_string(), deny))
}

/// Load and attach the four cgroup programs to `dir`: all, or none.
pub(super) fn attach_cgroup_progs(
    ebpf: &mut Ebpf,
    dir: &std::fs::File,
    root: &Path,
) -> Result<Vec<(String, FdLink)>, String> {
    let mut mine = Vec::new();
    for (name, at) in CGROUP_PROGS {
        let prog: &mut CgroupSockAddr = program(ebpf, name).map_err(|e| chain(&e))?;
        prog.load()
            .map_err(|e| format!("program {name} did not load: {}", chain(&e)))?;
        let id = prog
            // Through a BPF link the kernel refuses attach flags: a link
            // always runs beside the cgroup's other programs, so `Single`
            // (flags 0) is what gives "multiple" here.
            .attach(dir, CgroupAttachMode::Single)
            .map_err(|e| {
                format!(
                    "program {name} did not attach to {}: {}",
                    root.display(),
                    chain(&e)
                )
            })?;
        let link = prog.take_link(id).map_err(|e| chain(&e))?;
        let link = FdLink::try_from(link).map_err(|e| {
            format!("cgroup/{at} is attached without a BPF link (Linux < 5.7?), which cannot be pinned: {e}")
        })?;
        mine.push((format!("connect-cgroup-{at}"), link));
    }
    Ok(mine)
}

/// The raw syscall tracepoint of the detect rung (`syscalls.rs` in the
/// eBPF crate says why one program on `sys_exit`).
pub(super) fn attach_raw_syscalls(
    ebpf: &mut Ebpf,
    links: &mut Vec<(String, FdLink)>,
) -> Result<(), GuardError> {
    let name = prog_names::RAW_SYS_EXIT;
    let err = |source| GuardError::Program { name, source };
    let prog: &mut RawTracePoint = program(ebpf, name)?;
    if prog.fd().is_err() {
        prog.load().map_err(err)?;
    }
    let id = prog.attach("sys_exit").map_err(|e| {
        GuardError::NoTracepoints(format!("raw tracepoint sys_exit: {}", chain(&e)))
    })?;
    let link: FdLink = prog.take_link(id).map_err(err)?.into();
    links.push((format!("{SYSCALLS_PIN}-raw-sys_exit"), link));
    Ok(())
}
