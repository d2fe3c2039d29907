//! Quote latency and verification time on a software TPM (swtpm).
//!
//! `cargo bench -p guardian --bench attest` (env `GUARDIAN_BENCH_N`, default
//! 50 rounds). Starts its own swtpm on loopback, measures two models, then
//! times, in this process: `TPM2_Quote` including the PCR reads around it
//! (what `guardian quote` does per request), building the evidence bundle,
//! and `attest::verify` (what a verifier does per bundle). swtpm is a
//! software TPM: a discrete TPM on a board is typically 10-100x slower per
//! signature, so read the quote figure as a lower bound.

// A benchmark reports by printing, and fails loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use guardian::{attest, config::MeasureConfig, measure, mlog, tpm::Tpm};

fn stats(name: &str, mut v: Vec<Duration>) {
    v.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let mean = v.iter().sum::<Duration>() / v.len() as u32;
    let p = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "{name:<22} mean {:9.1} us   p50 {:9.1} us   p99 {:9.1} us   (n={})",
        us(mean),
        us(p(0.5)),
        us(p(0.99)),
        v.len()
    );
}

fn main() {
    let n: usize = std::env::var("GUARDIAN_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    // SAFETY: single-threaded here. The TSS libraries log the expected
    // "no AK yet" lookup failure to stderr otherwise.
    unsafe { std::env::set_var("TSS2_LOG", "all+none") };
    let dir = tempfile::tempdir().unwrap();
    let swtpm = common::Swtpm::start();
    let port = swtpm.port;
    let tcti = format!("swtpm:host=127.0.0.1,port={port}");

    // A measured board.
    let models = dir.path().join("models");
    std::fs::create_dir(&models).unwrap();
    std::fs::write(models.join("a.onnx"), vec![1u8; 1 << 20]).unwrap();
    std::fs::write(models.join("b.onnx"), vec![2u8; 1 << 16]).unwrap();
    let mut m = guardian::manifest::Manifest {
        version: 1,
        pcr: 14,
        models: Vec::new(),
    };
    for f in ["a.onnx", "b.onnx"] {
        let p = models.join(f);
        let d = guardian::hashing::hash_file(&p).unwrap();
        m.models.push(guardian::manifest::Entry {
            path: p,
            sha256: hex::encode(d.sha256),
            size: d.size,
            name: None,
            version: None,
        });
    }
    let manifest = dir.path().join("manifest.toml");
    std::fs::write(&manifest, m.to_toml()).unwrap();
    let cfg = MeasureConfig {
        manifest: manifest.clone(),
        allow_unsigned: true,
        log: dir.path().join("m.log"),
        tcti: Some(tcti.clone()),
        ..MeasureConfig::default()
    };
    measure::measure(&cfg, false, &mut std::io::sink()).unwrap();
    let log = mlog::read(&cfg.log).unwrap();

    let mut tpm = Tpm::open(&tcti).unwrap();
    let t = Instant::now();
    let (ak, ak_pub) = tpm.ak(0x8101_0002).unwrap();
    println!("# attestation benchmark on swtpm {port}, {n} rounds");
    println!(
        "AK creation (first use)  {:9.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );

    let golden = std::fs::read(&manifest).unwrap();
    let ak_key = p256::ecdsa::VerifyingKey::from_sec1_bytes(&ak_pub.sec1).unwrap();
    let (mut q, mut b, mut v) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        let nonce = (i as u64).to_be_bytes();
        let t = Instant::now();
        let quote = tpm.quote(ak, &nonce, &[14]).unwrap();
        q.push(t.elapsed());
        let t = Instant::now();
        let ev = attest::evidence(&nonce, &quote, &ak_pub, &log).unwrap();
        let json = serde_json::to_vec(&ev).unwrap();
        b.push(t.elapsed());
        let t = Instant::now();
        let ev: attest::Evidence = serde_json::from_slice(&json).unwrap();
        let verdict = attest::verify(
            &ev,
            &attest::Trust {
                ak: &ak_key,
                manifest_bytes: &golden,
                nonce: &nonce,
            },
        );
        v.push(t.elapsed());
        assert!(verdict.trusted, "{}", verdict.render());
    }
    stats("quote (TPM + PCR reads)", q);
    stats("bundle (build + JSON)", b);
    stats("verify (parse + checks)", v);
    drop(swtpm);
}
