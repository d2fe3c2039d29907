//! Egress of the inference service: LSM `socket_connect` (deny); cgroup
//! `connect4`/`connect6` and `sendmsg4`/`sendmsg6` on the root cgroup
//! (deny, where BPF LSM cannot attach: these need only `CONFIG_CGROUP_BPF`,
//! Linux >= 4.17, so Jetson's 5.10/5.15 kernels have them); and `connect`
//! on the raw syscall tracepoint (detect, through `syscalls.rs`, only when
//! the config asks for syscall tracepoints).
//!
//! The service may connect only to the prefixes and ports of the egress
//! allowlist (two LPM tries, IPv4 and IPv6). An IPv4-mapped IPv6 address
//! (`::ffff:a.b.c.d`) is judged as the IPv4 address it is. Other families
//! (Unix sockets, netlink) are not egress and pass. The cgroup `sendmsg`
//! programs also judge unconnected UDP datagrams (`sendto` with an
//! address), which `socket_connect` never sees.
//!
//! Kernel prototype: `LSM_HOOK(int, 0, socket_connect, struct socket
//! *sock, struct sockaddr *address, int addrlen)`; `address` has already
//! been copied into kernel memory.

use aya_ebpf::{
    helpers::bpf_probe_read_user,
    macros::{cgroup_sock_addr, lsm},
    maps::lpm_trie::Key,
    programs::{LsmContext, SockAddrContext},
};
use guardian_common::{Counter, EgressRule, KernelConfig, forms, kind, rules, source, verdict};

use crate::{
    kernel,
    maps::{EGRESS4, EGRESS6},
    report,
};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// The parts of a `sockaddr_in`/`sockaddr_in6` the rule needs: family,
/// port (host order) and address (IPv4 in the first 4 bytes).
struct Dest {
    family: u16,
    port: u16,
    addr: [u8; 16],
}

/// `sockaddr_in`: family at 0, port (big endian) at 2, address at 4.
/// `sockaddr_in6`: family at 0, port at 2, flowinfo at 4, address at 8.
#[inline(always)]
fn parse(raw: &[u8; 24]) -> Option<Dest> {
    let family = u16::from_ne_bytes([raw[0], raw[1]]);
    let port = u16::from_be_bytes([raw[2], raw[3]]);
    let mut addr = [0u8; 16];
    match family {
        AF_INET => {
            addr[..4].copy_from_slice(&raw[4..8]);
            Some(Dest { family, port, addr })
        }
        AF_INET6 => {
            addr.copy_from_slice(&raw[8..24]);
            let mapped = addr[..10].iter().all(|&b| b == 0) && addr[10] == 0xff && addr[11] == 0xff;
            if mapped {
                let v4 = [addr[12], addr[13], addr[14], addr[15]];
                let mut a = [0u8; 16];
                a[..4].copy_from_slice(&v4);
                Some(Dest {
                    family: AF_INET,
                    port,
                    addr: a,
                })
            } else {
                Some(Dest { family, port, addr })
            }
        }
        _ => None,
    }
}

#[inline(always)]
fn port_allowed(rule: &EgressRule, port: u16) -> bool {
    let mut i = 0;
    while i < EgressRule::MAX_PORTS {
        if (i as u32) < rule.count && rule.ports[i][0] <= port && port <= rule.ports[i][1] {
            return true;
        }
        i += 1;
    }
    false
}

#[inline(always)]
fn allowed(d: &Dest) -> bool {
    let rule = if d.family == AF_INET {
        let key = Key::new(32, [d.addr[0], d.addr[1], d.addr[2], d.addr[3]]);
        EGRESS4.get(&key)
    } else {
        EGRESS6.get(Key::new(128, d.addr))
    };
    rule.is_some_and(|r| port_allowed(r, d.port))
}

/// Which program judges, and so how a violation ends.
#[derive(Clone, Copy)]
enum Form {
    /// LSM `socket_connect`: denied in enforce mode.
    Lsm,
    /// The raw syscall tracepoint: after the fact, reported.
    Syscall,
    /// A cgroup program (its `source`): denied when the agent said so
    /// ([`forms::CGROUP_DENY`]).
    Cgroup(u16),
}

/// Judge a connect (or send) by the current task. `Ok(true)`: a
/// violation that is to be denied.
#[inline(always)]
fn judge(cfg: &KernelConfig, raw: &[u8; 24], form: Form) -> Result<bool, i64> {
    let Some(dest) = parse(raw) else {
        return Ok(false);
    };
    let off = &cfg.offsets;
    let task = kernel::current_task();
    let exe = kernel::exe_key(off, task)?;
    if !report::is_service(&exe) || allowed(&dest) {
        return Ok(false);
    }
    let (v, deny, src) = match form {
        Form::Lsm => {
            let (v, ret) = report::judge_process(cfg);
            (v, ret != 0, source::LSM_SOCKET_CONNECT)
        }
        Form::Syscall => (report::process_seen(), false, source::RAW_SYS_CONNECT),
        Form::Cgroup(src) if cfg.forms & forms::CGROUP_DENY != 0 => {
            report::count(Counter::ProcessDenied);
            (verdict::DENY, true, src)
        }
        Form::Cgroup(src) => (report::process_seen(), false, src),
    };
    report::emit(off, task, kind::CONNECT, src, v, |ev| {
        ev.exe = exe;
        ev.family = u32::from(dest.family);
        ev.aux = u32::from(dest.port);
        ev.addr = dest.addr;
    });
    Ok(deny)
}

/// A cgroup socket program: the destination from `struct bpf_sock_addr`
/// (fields the verifier lets a program load directly, in network byte
/// order), as the `sockaddr` bytes `parse` reads. Returns 1 to let the
/// call go on, 0 to make it fail with `EPERM`.
#[inline(always)]
fn cgroup_judge(ctx: &SockAddrContext, src: u16, v6: bool) -> i32 {
    let Some(cfg) = kernel::config() else {
        return 1;
    };
    if cfg.rules & rules::EGRESS_ALLOWLIST == 0 {
        return 1;
    }
    // SAFETY: the context the kernel passed; each field is read with a
    // load of its own size, as the verifier requires.
    let (port, words) = unsafe {
        let a = &*ctx.sock_addr;
        let words = if v6 {
            [a.user_ip6[0], a.user_ip6[1], a.user_ip6[2], a.user_ip6[3]]
        } else {
            [a.user_ip4, 0, 0, 0]
        };
        (a.user_port, words)
    };
    let mut raw = [0u8; 24];
    let family = if v6 { AF_INET6 } else { AF_INET };
    raw[..2].copy_from_slice(&family.to_ne_bytes());
    // `user_port` holds the port's two network-order bytes first.
    raw[2..4].copy_from_slice(&port.to_ne_bytes()[..2]);
    if v6 {
        let mut i = 0;
        while i < 4 {
            raw[8 + 4 * i..12 + 4 * i].copy_from_slice(&words[i].to_ne_bytes());
            i += 1;
        }
    } else {
        raw[4..8].copy_from_slice(&words[0].to_ne_bytes());
    }
    match judge(cfg, &raw, Form::Cgroup(src)) {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(_) => {
            report::count(Counter::ReadErrors);
            1
        }
    }
}

#[cgroup_sock_addr(connect4)]
pub fn guardian_connect4(ctx: SockAddrContext) -> i32 {
    cgroup_judge(&ctx, source::CGROUP_CONNECT4, false)
}

#[cgroup_sock_addr(connect6)]
pub fn guardian_connect6(ctx: SockAddrContext) -> i32 {
    cgroup_judge(&ctx, source::CGROUP_CONNECT6, true)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn guardian_sendmsg4(ctx: SockAddrContext) -> i32 {
    cgroup_judge(&ctx, source::CGROUP_SENDMSG4, false)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn guardian_sendmsg6(ctx: SockAddrContext) -> i32 {
    cgroup_judge(&ctx, source::CGROUP_SENDMSG6, true)
}

#[lsm(hook = "socket_connect")]
pub fn guardian_socket_connect(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    let Some(cfg) = kernel::config() else {
        return 0;
    };
    if cfg.rules & rules::EGRESS_ALLOWLIST == 0 {
        return 0;
    }
    let address: u64 = ctx.arg(1);
    let Ok(raw) = kernel::read_at::<[u8; 24]>(address) else {
        // A sockaddr_in is 16 bytes and may sit at the end of a buffer:
        // read the IPv4 form alone.
        return match kernel::read_at::<[u8; 16]>(address) {
            Ok(short) => {
                let mut raw = [0u8; 24];
                raw[..16].copy_from_slice(&short);
                lsm_ret(judge(cfg, &raw, Form::Lsm))
            }
            Err(_) => {
                report::count(Counter::ReadErrors);
                0
            }
        };
    };
    lsm_ret(judge(cfg, &raw, Form::Lsm))
}

/// What the LSM hook returns for a judgement.
#[inline(always)]
fn lsm_ret(r: Result<bool, i64>) -> i32 {
    match r {
        Ok(true) => report::EPERM,
        Ok(false) => 0,
        Err(_) => {
            report::count(Counter::ReadErrors);
            0
        }
    }
}

/// `connect(int fd, struct sockaddr *uservaddr, int addrlen)` returned,
/// seen by the raw syscall tracepoint (`syscalls.rs`).
#[inline(always)]
pub(crate) fn seen(cfg: &KernelConfig, uaddr: u64) {
    if cfg.rules & rules::EGRESS_ALLOWLIST == 0 {
        return;
    }
    // SAFETY: user memory through the fault-safe helper.
    let raw = match unsafe { bpf_probe_read_user(uaddr as *const [u8; 24]) } {
        Ok(r) => r,
        Err(_) => match unsafe { bpf_probe_read_user(uaddr as *const [u8; 16]) } {
            Ok(short) => {
                let mut raw = [0u8; 24];
                raw[..16].copy_from_slice(&short);
                raw
            }
            Err(_) => return,
        },
    };
    if judge(cfg, &raw, Form::Syscall).is_err() {
        report::count(Counter::ReadErrors);
    }
}
