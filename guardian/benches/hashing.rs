//! Hashing throughput of `guardian::hashing` against `openssl dgst -sha256`
//! and `sha256sum`, on the same files, in the same run.
//!
//! `cargo bench -p guardian --bench hashing` (env `GUARDIAN_BENCH_MIB`, default
//! 1024, sets the size of the single file). Files are written once under
//! `target/bench-data` and read from the page cache, so the figures are CPU
//! throughput, not disk speed; each figure is the best of 3 runs.

// A benchmark reports by printing, and fails loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use guardian::hashing::{hash_file, hash_files};

fn best_of<T>(n: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut best = Duration::MAX;
    let mut last = None;
    for _ in 0..n {
        let t = Instant::now();
        let r = f();
        best = best.min(t.elapsed());
        last = Some(r);
    }
    (best, last.unwrap())
}

fn make(path: &Path, mib: usize) {
    if std::fs::metadata(path).is_ok_and(|m| m.len() == (mib as u64) << 20) {
        return;
    }
    let mut f = std::fs::File::create(path).unwrap();
    // Incompressible-looking bytes from a cheap generator (xorshift).
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ mib as u64;
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..mib {
        for chunk in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&block).unwrap();
    }
}

fn tool(cmd: &str, args: &[&str], file: &Path) -> String {
    let out = Command::new(cmd).args(args).arg(file).output().unwrap();
    assert!(out.status.success(), "{cmd} failed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split_whitespace()
        .find(|w| w.len() == 64 && w.bytes().all(|b| b.is_ascii_hexdigit()))
        .unwrap_or_default()
        .to_lowercase()
}

fn mib_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

fn main() {
    let mib: usize = std::env::var("GUARDIAN_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-data");
    std::fs::create_dir_all(&dir).unwrap();
    let big = dir.join(format!("single-{mib}MiB.bin"));
    make(&big, mib);
    let bytes = (mib as u64) << 20;
    // Warm the page cache.
    hash_file(&big).unwrap();

    println!("# hashing benchmark: {mib} MiB file, {cores} core(s), best of 3");
    println!("# sha2 backend: runtime-detected (SHA-NI / ARMv8 SHA2 where present)");
    let (ours, d) = best_of(3, || hash_file(&big).unwrap());
    let (ossl, od) = best_of(3, || tool("openssl", &["dgst", "-sha256", "-r"], &big));
    let (sum, sd) = best_of(3, || tool("sha256sum", &[], &big));
    let ours_hex = hex::encode(d.sha256);
    assert_eq!(ours_hex, od, "openssl disagrees");
    assert_eq!(ours_hex, sd, "sha256sum disagrees");
    let r = |t: Duration| t.as_secs_f64();
    println!(
        "single file      guardian  {:8.1} MiB/s",
        mib_s(bytes, ours)
    );
    println!(
        "single file      openssl   {:8.1} MiB/s",
        mib_s(bytes, ossl)
    );
    println!("single file      sha256sum {:8.1} MiB/s", mib_s(bytes, sum));
    println!(
        "ratio guardian/openssl {:.3}   guardian/sha256sum {:.3}",
        r(ossl) / r(ours),
        r(sum) / r(ours)
    );

    // Several files: one thread against one per core.
    let n_files = cores.max(2) * 2;
    let each = (mib / n_files).max(16);
    let files: Vec<PathBuf> = (0..n_files)
        .map(|i| {
            let p = dir.join(format!("multi-{i}-{each}MiB.bin"));
            make(&p, each);
            p
        })
        .collect();
    let total = (each as u64 * n_files as u64) << 20;
    hash_files(&files, 0);
    let (one, _) = best_of(3, || hash_files(&files, 1));
    let (all, res) = best_of(3, || hash_files(&files, 0));
    assert!(res.iter().all(Result::is_ok));
    println!(
        "{n_files} files x {each} MiB  1 thread  {:8.1} MiB/s",
        mib_s(total, one)
    );
    println!(
        "{n_files} files x {each} MiB  {cores} threads {:8.1} MiB/s",
        mib_s(total, all)
    );
    println!(
        "parallel speed-up {:.2}x on {cores} cores (linear = {cores}.00x)",
        r(one) / r(all)
    );
}
