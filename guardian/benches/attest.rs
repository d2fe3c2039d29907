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

// The integration tests' support; this benchmark uses a part of it.
#[allow(dead_code)]
#[path = "../tests/it/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use guardian::{attest, evidence, signing::TrustedKey, tpm::Tpm};

fn stats(name: &str, mut v: Vec<Duration>) {
    v.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let mean = v.iter().sum::<Duration>() / v.len() as u32;
    let p = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "{name:<24} mean {:9.1} us   p50 {:9.1} us   p99 {:9.1} us   (n={})",
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
    let swtpm = common::Swtpm::start();
    let port = swtpm.port;
    let tcti = swtpm.tcti();

    // A measured board: two models, a signed manifest, the boot step.
    let board = common::Board::new(&tcti);
    let out = board.measure();
    assert!(out.status.success(), "{}", common::stderr(&out));
    let log = evidence::log::read(&board.p("measurements.log")).unwrap();

    let mut tpm = Tpm::open(&tcti).unwrap();
    let t = Instant::now();
    let (ak, ak_pub) = tpm.ak(0x8101_0002).unwrap();
    println!("# attestation benchmark on swtpm {port}, {n} rounds");
    println!(
        "AK creation (first use)   {:9.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );

    let keys = vec![TrustedKey::load(&board.p("vendor.pub")).unwrap()];
    let ak_key = p256::ecdsa::VerifyingKey::from_sec1_bytes(&ak_pub.sec1).unwrap();
    let (mut q, mut b, mut v) = (Vec::new(), Vec::new(), Vec::new());
    let mut last = None;
    for _ in 0..n {
        let nonce = attest::bundle::fresh_nonce().unwrap();
        let t = Instant::now();
        let quote = tpm.quote(ak, &nonce, &[14]).unwrap();
        q.push(t.elapsed());
        let t = Instant::now();
        let ev = attest::bundle::build(&nonce, &quote, &ak_pub, &log, None).unwrap();
        let json = serde_json::to_vec(&ev).unwrap();
        b.push(t.elapsed());
        let t = Instant::now();
        let ev: attest::Evidence = serde_json::from_slice(&json).unwrap();
        let trust = attest::Trust {
            ak: &ak_key,
            nonce: &nonce,
            pcrs: &[14],
            manifest_keys: &keys,
            golden: None,
            require_guard: false,
        };
        let verdict = attest::verify(&ev, &trust, None);
        v.push(t.elapsed());
        assert!(verdict.trusted, "{}", verdict.render());
        last = Some((json, nonce));
    }
    stats("quote (TPM + PCR reads)", q);
    stats("bundle (build + JSON)", b);
    stats("verify (parse + checks)", v);

    // Throughput of the verifier on one core: a typical bundle (a boot's
    // manifest and models, state kept), parsed and judged in a loop.
    let (json, nonce) = last.unwrap();
    let rounds = (n * 40).max(2000);
    let mut state = attest::DeviceState::new(&ak_pub.sec1);
    let t = Instant::now();
    for _ in 0..rounds {
        let ev: attest::Evidence = serde_json::from_slice(&json).unwrap();
        let trust = attest::Trust {
            ak: &ak_key,
            nonce: &nonce,
            pcrs: &[14],
            manifest_keys: &keys,
            golden: None,
            require_guard: false,
        };
        let verdict = attest::verify(&ev, &trust, Some(&mut state));
        assert!(verdict.trusted, "{}", verdict.render());
    }
    let per_s = rounds as f64 / t.elapsed().as_secs_f64();
    println!(
        "verifications per second, one core: {per_s:.0} ({rounds} bundles of {} bytes, {} records; target >= 1000)",
        json.len(),
        log.records.len()
    );
    drop(swtpm);
}
