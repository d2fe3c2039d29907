//! OpenSSF model signatures (`guardian-attest/src/model_sig.rs`): the
//! Sigstore bundle a model's publisher (or an attacker) wrote, read by
//! `guardian measure`, `guardian manifest import` and the verifier (inside
//! a manifest record). Never a panic; the input is read twice, as a bundle
//! and as the statement inside one. What parses as a statement follows
//! the rules: resources present, unique, plain relative names, SHA-256
//! digests, the subject digest the digest of the resources. And no input
//! verifies against a key nobody signed it with.

#![no_main]

use guardian_attest::{model_sig, signing::TrustedKey};
use libfuzzer_sys::fuzz_target;

/// A P-256 public key whose private key was thrown away: it signed nothing.
const KEY: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEP9ryrWmvI553/NtYYWkAtziMQ3B7
FcPNh+pB+RiP3mhGwls9Fl6PDIAPSKcaBT2q7C6bZnaOmb5Adq4AZholnw==
-----END PUBLIC KEY-----
";

fn check_statement(payload: &[u8]) {
    let Ok(s) = model_sig::parse_statement(payload) else {
        return;
    };
    assert!(!s.resources.is_empty());
    let mut names = std::collections::HashSet::new();
    for r in &s.resources {
        assert!(names.insert(&r.name), "{} twice", r.name);
        assert!(!r.name.starts_with('/') && !r.name.split('/').any(|c| c == ".." || c.is_empty()));
        assert_eq!(r.sha256.len(), 64);
    }
    assert_eq!(s.subject_sha256.len(), 64);
}

fuzz_target!(|data: &[u8]| {
    check_statement(data);
    if let Ok(b) = model_sig::parse_bundle(data) {
        check_statement(&b.payload);
    }
    let trusted: Vec<TrustedKey> = TrustedKey::from_pem(KEY, std::path::Path::new("k"))
        .into_iter()
        .collect();
    assert!(
        model_sig::verify_bytes(data, &trusted, std::time::SystemTime::now()).is_err(),
        "an input verified against a key that signed nothing"
    );
});
