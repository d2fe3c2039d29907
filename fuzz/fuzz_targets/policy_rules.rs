//! A policy module's static rules as the host decodes them from the
//! module's memory (`policy/static_rules.rs`, `decode_static_rules`): bytes a
//! possibly hostile module chose. Never a panic; what is accepted obeys
//! the rules the kernel tables rely on, and re-encodes to bytes that
//! decode to the same rules.

#![no_main]

use guardian::policy::module::decode_static_rules;
use guardian_policy_abi::IpAddr;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(rules) = decode_static_rules(data) else {
        return;
    };
    for p in rules
        .protected
        .iter()
        .chain(rules.writers.iter().flatten())
        .chain(rules.service_exec.iter().flatten())
        .chain(rules.library_dirs.iter().flatten())
    {
        assert!(p.starts_with('/'), "{p:?}");
    }
    for e in rules.egress.iter().flatten() {
        let max = match e.net {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        assert!(e.prefix <= max && e.ports.0 <= e.ports.1, "{e:?}");
    }
    let bytes = postcard::to_allocvec(&rules).unwrap_or_default();
    assert_eq!(decode_static_rules(&bytes).ok().as_ref(), Some(&rules));
});
