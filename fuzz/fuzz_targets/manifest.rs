//! The model manifest (`manifest.rs`): TOML from a file the updater (or an
//! attacker) wrote, and the text inside every manifest record a verifier
//! reads. Never a panic; whatever parses is a manifest that follows the
//! rules, and its own TOML (what `guardian manifest create` writes) reads
//! back to the same manifest.

#![no_main]

use guardian_attest::manifest::Manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(m) = Manifest::parse(text) else {
        return;
    };
    assert_eq!(m.check(), Ok(()));
    let written = m.to_toml();
    match Manifest::parse(&written) {
        Ok(back) => assert_eq!(back, m, "{written}"),
        Err(e) => panic!("a parsed manifest's own TOML does not parse: {e}\n{written}"),
    }
});
