//! systemd integration: readiness and the watchdog, by the `sd_notify`
//! protocol (a datagram to `$NOTIFY_SOCKET`; no library).
//!
//! `guardian.service` is `Type=notify` with `WatchdogSec=` and
//! `Restart=always`: systemd starts the inference service only once the
//! guard is up (`READY=1`), and restarts the agent however it ended. The
//! watchdog matters on kernels without BPF LSM, where the fanotify
//! permission rung makes every open of a protected file wait for the
//! agent's answer: an agent that is stopped (`SIGSTOP`), held by a
//! debugger or hung stops pinging, systemd kills it after `WatchdogSec`,
//! the kernel then lets the waiting opens through (the fanotify group is
//! gone) and systemd starts a new agent, which finds the missing clean
//! stop and records a `guard gap` in the evidence. So the window is
//! bounded by `WatchdogSec` and is on the record. The agent pings only
//! while its event loop runs and its fanotify decision thread (if any) is
//! alive.

use std::{os::unix::net::UnixDatagram, time::Duration};

/// Where to notify systemd, if it asked.
pub struct Notifier {
    socket: Option<(UnixDatagram, std::os::unix::net::SocketAddr)>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET` and `$WATCHDOG_USEC` (and `$WATCHDOG_PID`,
    /// which must be this process if set).
    pub fn from_env() -> Self {
        Self::new(
            std::env::var("NOTIFY_SOCKET").ok().as_deref(),
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
        )
    }

    fn new(socket: Option<&str>, usec: Option<&str>, pid: Option<&str>) -> Self {
        let socket = socket.and_then(|path| {
            let addr = if let Some(name) = path.strip_prefix('@') {
                use std::os::linux::net::SocketAddrExt as _;
                std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).ok()?
            } else {
                std::os::unix::net::SocketAddr::from_pathname(path).ok()?
            };
            let sock = UnixDatagram::unbound().ok()?;
            Some((sock, addr))
        });
        let for_us = pid.is_none_or(|p| p.parse::<u32>().ok() == Some(std::process::id()));
        let watchdog = usec
            .and_then(|u| u.parse::<u64>().ok())
            .filter(|u| *u > 0 && for_us)
            .map(Duration::from_micros);
        Self { socket, watchdog }
    }

    /// How often to ping: half the watchdog timeout, if there is one.
    pub fn ping_every(&self) -> Option<Duration> {
        self.watchdog.map(|w| w / 2)
    }

    fn send(&self, text: &str) {
        if let Some((sock, addr)) = &self.socket
            && let Err(e) = sock.send_to_addr(text.as_bytes(), addr)
        {
            log::warn!("cannot notify systemd ({text}): {e}");
        }
    }

    /// The guard is up.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}\n"));
    }

    /// Still alive.
    pub fn ping(&self) {
        self.send("WATCHDOG=1\n");
    }

    /// Going down.
    pub fn stopping(&self) {
        self.send("STOPPING=1\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifies_a_path_socket_and_reads_the_watchdog() {
        let t = tempfile::tempdir().expect("tempdir");
        let path = t.path().join("notify");
        let rx = UnixDatagram::bind(&path).expect("bind");
        let n = Notifier::new(path.to_str(), Some("4000000"), None);
        assert_eq!(n.ping_every(), Some(Duration::from_secs(2)));
        n.ready("up");
        n.ping();
        let mut buf = [0u8; 256];
        let len = rx.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=up\n");
        let len = rx.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..len], b"WATCHDOG=1\n");
    }

    #[test]
    fn the_watchdog_of_another_process_is_not_ours() {
        let n = Notifier::new(None, Some("4000000"), Some("1"));
        assert_eq!(n.ping_every(), None);
        let n = Notifier::new(None, Some("0"), None);
        assert_eq!(n.ping_every(), None);
        // No socket: sending is a no-op, not an error.
        Notifier::new(None, None, None).ready("x");
    }
}
