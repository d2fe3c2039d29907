//! Egress of the inference service: LSM `socket_connect` (deny) and
//! `connect` on syscall entry (detect, through `syscalls.rs`).
//!
//! The service may connect only to the prefixes and ports of the egress
//! allowlist (two LPM tries, IPv4 and IPv6). An IPv4-mapped IPv6 address
//! (`::ffff:a.b.c.d`) is judged as the IPv4 address it is. Other families
//! (Unix sockets, netlink) are not egress and pass. Unconnected `sendto`
//! on UDP sockets is not covered yet (that is `socket_sendmsg`).
//!
//! Kernel prototype: `LSM_HOOK(int, 0, socket_connect, struct socket
//! *sock, struct sockaddr *address, int addrlen)`; `address` has already
//! been copied into kernel memory.

use aya_ebpf::{
    helpers::bpf_probe_read_user, macros::lsm, maps::lpm_trie::Key, programs::LsmContext,
};
use guardian_common::{Counter, EgressRule, KernelConfig, kind, rules, source};

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

/// Judge a connect by the current task; `lsm` tells deny from report.
#[inline(always)]
fn judge(cfg: &KernelConfig, raw: &[u8; 24], lsm: bool) -> Result<i32, i64> {
    let Some(dest) = parse(raw) else {
        return Ok(0);
    };
    let off = &cfg.offsets;
    let task = kernel::current_task();
    let exe = kernel::exe_key(off, task)?;
    if !report::is_service(&exe) || allowed(&dest) {
        return Ok(0);
    }
    let (v, ret, src) = if lsm {
        let (v, ret) = report::judge_process(cfg);
        (v, ret, source::LSM_SOCKET_CONNECT)
    } else {
        (report::process_seen(), 0, source::RAW_SYS_CONNECT)
    };
    report::emit(off, task, kind::CONNECT, src, v, |ev| {
        ev.exe = exe;
        ev.family = u32::from(dest.family);
        ev.aux = u32::from(dest.port);
        ev.addr = dest.addr;
    });
    Ok(ret)
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
                judge(cfg, &raw, true).unwrap_or_else(|_| {
                    report::count(Counter::ReadErrors);
                    0
                })
            }
            Err(_) => {
                report::count(Counter::ReadErrors);
                0
            }
        };
    };
    judge(cfg, &raw, true).unwrap_or_else(|_| {
        report::count(Counter::ReadErrors);
        0
    })
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
    if judge(cfg, &raw, false).is_err() {
        report::count(Counter::ReadErrors);
    }
}
