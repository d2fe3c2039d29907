//! The names of the hooks and of the userspace rungs' forms, as `guardian
//! status`, security events and `[guard] require` spell them. A leaf: it
//! uses nothing of the agent, so the config, the guard and the rungs can
//! all name hooks without depending on each other.

/// The hooks, by the names `status`, events and `[guard] require` use.
pub const HOOKS: [&str; 14] = [
    "file_write_open",
    "file_write",
    "file_setattr",
    "file_rename",
    "file_unlink",
    "file_link",
    "file_create",
    "file_mmap",
    "mount",
    "exec",
    "ptrace",
    "prctl",
    "connect",
    "bpf_objects",
];

/// The fanotify permission rung's form, as `guardian status` and events
/// name it (`crate::fanotify`).
pub const FANOTIFY_PERM: &str = "fanotify/open_perm";

/// The hooks the fanotify notification rung (`crate::watch`) can stand in
/// for, and the fanotify events each needs.
pub const NOTIFY: [(&str, u64); 5] = [
    ("file_write", libc::FAN_MODIFY),
    // truncate(2) is a FAN_MODIFY; chmod, chown a FAN_ATTRIB.
    ("file_setattr", libc::FAN_MODIFY | libc::FAN_ATTRIB),
    // Moved away: FAN_MOVE_SELF; replaced: the link count (FAN_ATTRIB).
    ("file_rename", libc::FAN_MOVE_SELF | libc::FAN_ATTRIB),
    ("file_unlink", libc::FAN_ATTRIB | libc::FAN_DELETE_SELF),
    ("file_link", libc::FAN_ATTRIB),
];
