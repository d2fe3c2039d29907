//! What is in force, hook by hook: the kernel's half of each hook (from
//! the guard's ladder) with the userspace rungs laid over it, and the words
//! `guardian status`, the log and the evidence use for it. Rendered in one
//! place from typed parts; nothing here starts or stops anything.

use crate::{
    guard::{Gap, KernelHook},
    hooks::{FANOTIFY_PERM, Hook, HookState, Mechanism, Mode, NOTIFY},
};

/// What the userspace rungs add to the kernel's coverage.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rungs {
    /// The permission rung runs, with this many files marked.
    pub perm: Option<usize>,
    /// The notification rung runs, with this many files marked, asking
    /// for these fanotify events.
    pub notify: Option<(usize, u64)>,
    /// Why the notification rung the hooks counted on did not start.
    pub notify_missing: Option<String>,
}

/// Every hook and what is in force for it, the mode, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Coverage {
    /// The mode in force.
    pub mode: Mode,
    /// Why this mode, and what the userspace rungs add.
    pub reason: String,
    /// Every hook.
    pub hooks: Vec<HookState>,
}

impl Coverage {
    /// The coverage of `kernel` (the guard's hooks, its mode and reason)
    /// with `rungs` laid over it.
    pub fn render(kernel: &[KernelHook], mode: Mode, reason: &str, rungs: &Rungs) -> Self {
        let mut reason = reason.to_owned();
        let hooks = kernel
            .iter()
            .map(|k| {
                let base = HookState {
                    hook: k.hook,
                    mechanism: k.mechanism,
                    attached: k.attached.clone(),
                    note: k.note(),
                };
                match (k.hook, rungs.perm, rungs.notify) {
                    (Hook::FileWriteOpen, Some(marked), _) if k.mechanism != Mechanism::Lsm => {
                        perm_state(k, base, marked)
                    }
                    (hook, _, Some((marked, mask)))
                        if k.mechanism == Mechanism::None
                            && NOTIFY
                                .iter()
                                .any(|(h, bits)| *h == hook && mask & bits != 0) =>
                    {
                        notify_state(k, base, marked)
                    }
                    _ => base,
                }
            })
            .collect::<Vec<_>>();
        if rungs.perm.is_some()
            && kernel
                .iter()
                .any(|k| k.hook == Hook::FileWriteOpen && k.mechanism != Mechanism::Lsm)
        {
            reason.push_str(
                "; write-opens of protected files are denied from userspace (fanotify permission events)",
            );
        }
        let covered: Vec<&str> = hooks
            .iter()
            .filter(|h| h.mechanism == Mechanism::Notify)
            .map(|h| h.hook.as_str())
            .collect();
        if !covered.is_empty() {
            reason.push_str(&format!(
                "; {} of protected files reported through fanotify notification events",
                covered.join(", ")
            ));
        }
        if let Some(why) = &rungs.notify_missing {
            reason.push_str(&format!("; {why}"));
        }
        Self {
            mode,
            reason,
            hooks,
        }
    }

    /// The state of `hook`.
    pub fn hook(&self, hook: Hook) -> Option<&HookState> {
        self.hooks.iter().find(|h| h.hook == hook)
    }
}

/// The note of the kernel's form, up to where the kernel's own account of
/// what it does begins: what a userspace rung keeps of it.
fn kernel_why(k: &KernelHook, keep: &[Gap]) -> String {
    if keep.contains(&k.gap) {
        k.why.clone()
    } else {
        k.note().unwrap_or_default()
    }
}

/// `file_write_open` taken by the permission rung.
fn perm_state(k: &KernelHook, mut h: HookState, marked: usize) -> HookState {
    let why = kernel_why(k, &[Gap::Reported, Gap::SyscallDetectOffUserspace]);
    let traced = k.mechanism == Mechanism::Tracepoint;
    h.mechanism = Mechanism::Fanotify;
    h.attached
        .insert(0, format!("{FANOTIFY_PERM} ({marked} file(s))"));
    h.note = Some(format!(
        "{why}; denied from userspace (fanotify) while the agent runs{}",
        if traced {
            ", the raw syscall tracepoint reports when it does not"
        } else {
            "; nothing when it does not"
        }
    ));
    h
}

/// A file hook no kernel program covers, taken by the notification rung.
fn notify_state(k: &KernelHook, mut h: HookState, marked: usize) -> HookState {
    let why = kernel_why(k, &[Gap::SyscallDetectOffUserspace, Gap::NoTracepoint]);
    h.mechanism = Mechanism::Notify;
    h.attached
        .insert(0, format!("fanotify notification ({marked} file(s))"));
    h.note = Some(format!(
        "{why}; reported after the fact by fanotify notification events, while the agent runs"
    ));
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(hook: Hook, mechanism: Mechanism, gap: Gap) -> KernelHook {
        KernelHook {
            hook,
            mechanism,
            attached: vec![],
            why: "BPF LSM unavailable".into(),
            gap,
        }
    }

    #[test]
    fn rungs_take_what_the_kernel_left_and_say_so() {
        let kernel = [
            k(
                Hook::FileWriteOpen,
                Mechanism::None,
                Gap::SyscallDetectOffUserspace,
            ),
            k(
                Hook::FileWrite,
                Mechanism::None,
                Gap::SyscallDetectOffUserspace,
            ),
            k(Hook::FileMmap, Mechanism::None, Gap::SyscallDetectOff),
            k(Hook::FileLink, Mechanism::Tracepoint, Gap::Reported),
        ];
        let none = Coverage::render(&kernel, Mode::Detect, "r", &Rungs::default());
        assert_eq!(none.reason, "r");
        assert_eq!(
            none.hooks[0].note.as_deref(),
            Some(
                "BPF LSM unavailable; syscall_detect is off: NOT COVERED in the kernel (a userspace rung may take it, see below)"
            )
        );
        let rungs = Rungs {
            perm: Some(3),
            notify: Some((3, libc::FAN_MODIFY | libc::FAN_ATTRIB)),
            notify_missing: None,
        };
        let c = Coverage::render(&kernel, Mode::Detect, "r", &rungs);
        let open = c.hook(Hook::FileWriteOpen).unwrap();
        assert_eq!(open.mechanism, Mechanism::Fanotify);
        assert_eq!(open.attached, ["fanotify/open_perm (3 file(s))"]);
        assert_eq!(
            open.note.as_deref(),
            Some(
                "BPF LSM unavailable; denied from userspace (fanotify) while the agent runs; nothing when it does not"
            )
        );
        let write = c.hook(Hook::FileWrite).unwrap();
        assert_eq!(write.mechanism, Mechanism::Notify);
        assert_eq!(
            write.note.as_deref(),
            Some(
                "BPF LSM unavailable; reported after the fact by fanotify notification events, while the agent runs"
            )
        );
        // Not asked for of the notification rung, or covered already.
        assert_eq!(c.hook(Hook::FileMmap).unwrap().mechanism, Mechanism::None);
        assert_eq!(
            c.hook(Hook::FileLink).unwrap().mechanism,
            Mechanism::Tracepoint
        );
        assert_eq!(
            c.reason,
            "r; write-opens of protected files are denied from userspace (fanotify permission events); file_write of protected files reported through fanotify notification events"
        );
    }
}
