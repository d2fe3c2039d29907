//! The kernel's ladder: [`Guard::start`] loads (or adopts) the object and,
//! hook by hook, attaches the strongest kernel mechanism this kernel
//! allows (see the steps in the module docs). It records what it got as a
//! [`KernelHook`] per hook; which userspace rung takes what the kernel
//! could not is [`crate::enforce`]'s to decide, not this file's.

use aya::{EbpfLoader, programs::links::FdLink};
use guardian_common::{
    KernelConfig, Syscalls, forms, maps as map_names, mode as kmode, programs as prog_names,
};

use super::{
    Gap, Guard, GuardError, KernelHook, StartOptions,
    attach::{
        attach_cgroup, attach_fentry_execve, attach_lsm, attach_raw_syscalls, attach_tracepoints,
        lsm_unavailable,
    },
    load_error,
    maps::{fill_tables, set_config, write_auth},
    object_id,
    pins::{is_bpffs, remove_pins, same_config},
    table::{CGROUP_PROGS, DEFS, MAP_NAMES, present, syscall_names, syscall_table},
};
use crate::{
    btf::{Btf, BtfError},
    config::ModeRequest,
    hooks::{Hook, Mechanism, Mode},
    targets::Targets,
};

impl Guard {
    /// Start the guard, or adopt the pinned one (see the module docs).
    pub fn start(opts: &StartOptions<'_>, targets: &Targets) -> Result<Self, GuardError> {
        if opts.object.is_empty() {
            return Err(GuardError::NoObject);
        }
        // The syscall tracepoints are part of what is pinned: a config that
        // asks otherwise must not adopt them.
        let id = format!(
            "{}{}",
            object_id(opts.object),
            if opts.syscall_detect { "-sys" } else { "" }
        );
        if let Some(dir) = opts.pin_dir {
            // A guard loaded with another configuration is neither taken
            // over nor replaced: that would change what it enforces.
            if let Ok(entries) = std::fs::read_dir(dir) {
                for e in entries.flatten() {
                    same_config(&e.path(), opts.auth)?;
                }
            }
            let mine = dir.join(&id);
            if mine.join("links").is_dir() {
                match Self::adopt(&mine, targets) {
                    Ok(g) => return Ok(g),
                    Err(e) => {
                        log::warn!(
                            "the pinned guard in {} could not be adopted ({e}); loading afresh",
                            mine.display()
                        );
                        let _ = remove_pins(&mine);
                    }
                }
            }
        }
        // The kernel's BTF is parsed twice here (for the offsets below, and
        // by aya for its relocations), each time into many small blocks
        // that are all freed soon after: parsed apart from the main heap
        // (`memory::apart` says why).
        let offsets =
            crate::memory::apart(|| Btf::from_file(opts.btf_path).and_then(|b| b.kernel_offsets()))
                .unwrap_or(Err(BtfError::Malformed("the parsing thread failed")))
                .map_err(GuardError::Btf)?;

        let mut loader = crate::memory::apart(EbpfLoader::new).unwrap_or_default();
        let mut ebpf = loader
            .map_max_entries(map_names::EVENTS, opts.ring_buffer_bytes)
            // A constant the verifier must see (file_open.rs says why).
            .override_global("GUARDIAN_FILE_F_PATH", &offsets.file_f_path, true)
            .load(opts.object)
            .map_err(load_error)?;
        let mut maps = std::collections::HashMap::new();
        for name in MAP_NAMES {
            if let Some(m) = ebpf.take_map(name) {
                maps.insert(name, m);
            }
        }
        let written = fill_tables(&mut maps, targets, &[], &[], false)?;
        if let Some(auth) = opts.auth {
            write_auth(&mut maps, auth)?;
        }

        let mut config = KernelConfig {
            offsets,
            mode: kmode::DETECT,
            ready: 1,
            rules: targets.rules,
            forms: 0,
            self_exe: targets.self_exe,
            root: targets.root,
            // The register layout is read by the fentry programs too;
            // which syscalls the raw tracepoint handles is decided below.
            syscalls: syscall_table(),
        };
        let service = !targets.service.is_empty();
        let try_lsm = opts.request != ModeRequest::Detect;
        let lsm_blocker = if try_lsm {
            lsm_unavailable(opts.features)
        } else {
            Some("detect mode requested in the config".to_owned())
        };
        // The LSM programs read the mode: set it before any can run.
        if lsm_blocker.is_none() {
            config.mode = kmode::ENFORCE;
        }
        set_config(&mut maps, config)?;

        let btf = if lsm_blocker.is_none() {
            Some(aya::Btf::from_sys_fs().map_err(|e| GuardError::EnforceUnavailable(e.to_string())))
        } else {
            None
        };
        let mut hooks = Vec::new();
        let mut links: Vec<(String, FdLink)> = Vec::new();
        let mut any_lsm = false;
        let syscall_table = syscall_table();
        let mut raw_watch = 0;
        for def in &DEFS {
            if def.service && !service {
                hooks.push(KernelHook {
                    hook: def.hook,
                    mechanism: Mechanism::Off,
                    attached: vec![],
                    why: "no [service] exe configured".into(),
                    gap: Gap::Off,
                });
                continue;
            }
            let mut attached = Vec::new();
            let mut why_not = lsm_blocker.clone();
            if why_not.is_none()
                && def.hook == Hook::FileSetattr
                && offsets.setattr_dentry_arg == u32::MAX
            {
                why_not =
                    Some("the kernel's BTF does not describe inode_setattr's arguments".into());
            }
            // inode_setattr lost its first argument before Linux 6.3: a
            // program per layout.
            let lsm: Vec<(&'static str, &'static str)> = def
                .lsm
                .iter()
                .map(|&(prog, hook)| {
                    if prog == prog_names::LSM_INODE_SETATTR && offsets.setattr_dentry_arg == 0 {
                        (prog_names::LSM_INODE_SETATTR_OLD, hook)
                    } else {
                        (prog, hook)
                    }
                })
                .collect();
            if why_not.is_none()
                && !lsm.is_empty()
                && let Some(Ok(btf)) = btf.as_ref()
            {
                // All of a hook's programs or none: a hook half attached
                // would be reported as enforcing what it does not.
                let mut got = Vec::new();
                for (prog, hook) in &lsm {
                    match attach_lsm(&mut ebpf, prog, hook, btf) {
                        Ok(link) => got.push((*hook, link)),
                        Err(e) => {
                            why_not = Some(e);
                            break;
                        }
                    }
                }
                if why_not.is_none() {
                    any_lsm = true;
                    // What feeds the LSM program: fentry where it loads
                    // (no syscall tracepoint), else the tracepoints.
                    let fed = !def.always.is_empty()
                        && match attach_fentry_execve(&mut ebpf, btf, def.hook.as_str(), &mut links)
                        {
                            Ok(at) => {
                                attached.extend(at);
                                true
                            }
                            Err(e) => {
                                log::warn!(
                                    "hook {}: fentry on the execve syscalls did not attach ({e}); the sys_enter_execve tracepoints read the environment instead, at a cost on every system call",
                                    def.hook
                                );
                                false
                            }
                        };
                    if !fed {
                        attach_tracepoints(
                            &mut ebpf,
                            def.always,
                            def.hook.as_str(),
                            &mut attached,
                            &mut links,
                        )?;
                    }
                    for (hook, link) in got {
                        attached.push(format!("lsm/{hook}"));
                        links.push((format!("{}-lsm-{hook}", def.hook), link));
                    }
                    hooks.push(KernelHook {
                        hook: def.hook,
                        mechanism: Mechanism::Lsm,
                        attached,
                        why: String::new(),
                        gap: Gap::Lsm,
                    });
                    continue;
                }
            } else if let Some(Err(e)) = btf.as_ref()
                && why_not.is_none()
            {
                why_not = Some(format!("kernel BTF unreadable for LSM attachment: {e}"));
            }
            let mut why_not = why_not.unwrap_or_else(|| "no LSM form".into());
            if def.cgroup {
                match attach_cgroup(&mut ebpf, &mut config, &mut maps, opts.request, &mut links) {
                    Ok((root, deny)) => {
                        if !deny && opts.require.iter().any(|r| r == def.hook.as_str()) {
                            return Err(GuardError::Required {
                                hook: def.hook.as_str(),
                                why: "detect mode requested".into(),
                            });
                        }
                        attached.extend(CGROUP_PROGS.iter().map(|(_, at)| format!("cgroup/{at}")));
                        hooks.push(KernelHook {
                            hook: def.hook,
                            mechanism: Mechanism::Cgroup,
                            attached,
                            why: why_not,
                            gap: Gap::Cgroup { root, deny },
                        });
                        continue;
                    }
                    Err(e) => why_not = format!("{why_not}; no cgroup programs: {e}"),
                }
            }
            if opts.require.iter().any(|r| r == def.hook.as_str()) {
                return Err(GuardError::Required {
                    hook: def.hook.as_str(),
                    why: why_not,
                });
            }
            let before = attached.len();
            let watched = if opts.syscall_detect {
                attach_tracepoints(
                    &mut ebpf,
                    def.always,
                    def.hook.as_str(),
                    &mut attached,
                    &mut links,
                )?;
                def.syscalls & present(&syscall_table)
            } else {
                0
            };
            if !def.always.is_empty() && !attached.iter().any(|a| a.contains("sys_enter_execve")) {
                // No entry tracepoint feeds it: sched_process_exec reads the
                // environment itself. Set before it is attached.
                config.forms |= forms::ENV_AT_EXEC;
                set_config(&mut maps, config)?;
            }
            if watched != 0 {
                raw_watch |= watched;
                attached.push(format!(
                    "raw_tracepoint/sys_exit ({})",
                    syscall_names(watched)
                ));
            }
            attach_tracepoints(
                &mut ebpf,
                def.detect,
                def.hook.as_str(),
                &mut attached,
                &mut links,
            )?;
            let detect = attached.len() > before;
            let skipped = !opts.syscall_detect && def.syscalls != 0;
            hooks.push(KernelHook {
                hook: def.hook,
                mechanism: if detect {
                    Mechanism::Tracepoint
                } else {
                    Mechanism::None
                },
                attached,
                why: why_not,
                gap: if detect {
                    Gap::Reported
                } else if skipped
                    && (def.hook == Hook::FileWriteOpen
                        || crate::hooks::NOTIFY.iter().any(|(h, _)| *h == def.hook))
                {
                    Gap::SyscallDetectOffUserspace
                } else if skipped {
                    Gap::SyscallDetectOff
                } else {
                    Gap::NoTracepoint
                },
            });
        }
        if raw_watch != 0 {
            // The programs read which syscalls to handle from the config:
            // fill it before they can run.
            config.syscalls = Syscalls {
                enabled: raw_watch,
                ..syscall_table
            };
            set_config(&mut maps, config)?;
            attach_raw_syscalls(&mut ebpf, &mut links)?;
        }
        if opts.request == ModeRequest::Enforce && !any_lsm {
            return Err(GuardError::EnforceUnavailable(
                lsm_blocker.unwrap_or_else(|| "no LSM hook attached".into()),
            ));
        }
        if !any_lsm {
            // No LSM program runs: the mode they read says detect (the
            // cgroup programs read their own bit, `forms::CGROUP_DENY`).
            config.mode = kmode::DETECT;
            set_config(&mut maps, config)?;
        }
        let cgroup_deny = config.forms & forms::CGROUP_DENY != 0;
        let degraded: Vec<_> = hooks
            .iter()
            .filter(|h| {
                h.mechanism != Mechanism::Lsm
                    && h.mechanism != Mechanism::Off
                    && !(h.mechanism == Mechanism::Cgroup && cgroup_deny)
            })
            .map(|h| h.hook.as_str())
            .collect();
        let (mode, reason) = if any_lsm {
            let r = if degraded.is_empty() {
                "BPF LSM attached for every hook: the kernel denies".to_owned()
            } else {
                format!(
                    "BPF LSM attached; NOT denied in the kernel: {} (see hooks)",
                    degraded.join(", ")
                )
            };
            (Mode::Enforce, r)
        } else {
            (
                Mode::Detect,
                format!(
                    "{}; operations are reported after the fact, not denied{}",
                    lsm_blocker.unwrap_or_else(|| {
                        "BPF LSM is active but no LSM program could attach (see hooks)".into()
                    }),
                    if cgroup_deny {
                        " (but egress of the service is denied in the kernel by cgroup socket programs)"
                    } else {
                        ""
                    }
                ),
            )
        };

        let mut guard = Self {
            _ebpf: Some(ebpf),
            maps,
            _links: Vec::new(),
            unpinned: Vec::new(),
            mode,
            reason,
            hooks,
            pins: None,
            adopted: false,
            written,
            config,
        };
        match opts.pin_dir {
            Some(dir) if is_bpffs(dir.parent().unwrap_or(dir)) => {
                if let Err(e) = guard.pin(dir, &id, links, targets) {
                    let _ = remove_pins(&dir.join(&id));
                    return Err(e);
                }
            }
            Some(dir) => {
                // Still running, just not surviving the agent: say so.
                log::warn!(
                    "{} is not on a BPF filesystem (mount -t bpf bpf {}): nothing is pinned, enforcement stops when the agent stops",
                    dir.display(),
                    dir.parent().unwrap_or(dir).display()
                );
                guard.unpinned = links.into_iter().map(|(_, l)| l).collect();
            }
            None => guard.unpinned = links.into_iter().map(|(_, l)| l).collect(),
        }
        Ok(guard)
    }
}
