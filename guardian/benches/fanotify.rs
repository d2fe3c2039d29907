//! What the fanotify rung costs a reader: open+close of a protected file
//! for reading, without a guard and with `guardian::fanotify` deciding every
//! open, in the same run.
//!
//! `cargo bench -p guardian --bench fanotify` as root (env
//! `GUARDIAN_BENCH_OPENS`, default 10000, sets the opens per run). Each
//! figure is the best of 5 runs. The opener is a thread of this process;
//! the decision thread runs beside it, so on a 2-core machine the figure
//! includes the two context switches of every round trip.

// A benchmark reports by printing, and fails loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    ffi::CString,
    os::unix::ffi::OsStrExt as _,
    path::Path,
    time::{Duration, Instant},
};

use guardian::{
    fanotify::FanotifyGuard,
    guard::{Targets, inode_key},
};

fn opens(path: &Path, n: usize) -> Duration {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    let t = Instant::now();
    for _ in 0..n {
        // SAFETY: valid path; the descriptor is closed at once.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        assert!(fd >= 0, "open: {}", std::io::Error::last_os_error());
        // SAFETY: our descriptor.
        unsafe { libc::close(fd) };
    }
    t.elapsed()
}

fn best(runs: usize, f: impl Fn() -> Duration) -> Duration {
    (0..runs).map(|_| f()).min().unwrap()
}

fn main() {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("the fanotify benchmark needs root (fanotify_init with FAN_CLASS_CONTENT)");
        std::process::exit(1);
    }
    let n: usize = std::env::var("GUARDIAN_BENCH_OPENS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.onnx");
    std::fs::write(&model, vec![0u8; 4096]).unwrap();
    let targets = Targets {
        files: vec![(
            model.clone(),
            inode_key(&std::fs::metadata(&model).unwrap()),
        )],
        own_from: 1,
        ..Targets::default()
    };

    let bare = best(5, || opens(&model, n));
    let (tx, _rx) = tokio::sync::mpsc::channel(guardian::daemon::RUNG_QUEUE);
    let guard = FanotifyGuard::start(&targets, tx).unwrap();
    let guarded = best(5, || opens(&model, n));
    let stats = guard.stop();
    assert_eq!(stats.reads, 5 * n as u64, "{stats:?}");
    assert_eq!(stats.errors, 0, "{stats:?}");

    let per = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
    println!("{n} open+close of a protected file for reading (best of 5):");
    println!(
        "  no guard        {:>10.3?}  {:>7.2} us/open",
        bare,
        per(bare)
    );
    println!(
        "  fanotify guard  {:>10.3?}  {:>7.2} us/open",
        guarded,
        per(guarded)
    );
    println!(
        "  ratio           {:>10.1}x",
        guarded.as_secs_f64() / bare.as_secs_f64()
    );
}
