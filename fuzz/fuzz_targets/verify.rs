//! The evidence bundle parser and the whole verifier (`attest/bundle.rs`,
//! `attest/verify.rs`), fed arbitrary bytes as the bundle JSON, with a
//! fixed enrolled AK, manifest key and nonce: those of the fixture in
//! `fuzz/fixtures/`, a real bundle from swtpm (`fuzz/seeds.sh --fixture`
//! makes it; `guardian/tests/it/fuzz_seeds.rs` checks it is still trusted).
//!
//! Never a panic, stateless or with a verifier state and the fixture's
//! manifest pinned as golden. And never a trusted
//! verdict for evidence the TPM did not vouch for: when the verdict is
//! trusted, the quote's bytes, the quoted PCR values and every record in
//! the PCR (its PCR, digest and whole event, in order) must be the
//! fixture's. What may differ is only what the verifier does not take as
//! evidence (JSON layout, the device's words, times, notes).
//!
//! As in the log target, each input is judged twice: as it is, and with
//! every record's digest recomputed from its event, so the fuzzer reaches
//! the manifest, model, guard and tamper checks behind the digests.

#![no_main]

use std::{collections::BTreeMap, path::Path, sync::LazyLock};

use base64::Engine as _;
use guardian_attest::{
    attest::{DeviceState, Evidence, Trust, parse_evidence, read_ak, verify},
    evidence::{Event, Record, event::digest},
    signing::TrustedKey,
};
use libfuzzer_sys::fuzz_target;

struct Fixture {
    ak: p256::ecdsa::VerifyingKey,
    ak_sec1: Vec<u8>,
    keys: Vec<TrustedKey>,
    nonce: Vec<u8>,
    golden: Core,
    /// The fixture's manifest, pinned as the verifier's golden one.
    manifest: Vec<u8>,
}

/// What a trusted verdict vouches for.
#[derive(Debug, PartialEq)]
struct Core {
    quote: Vec<u8>,
    pcrs: BTreeMap<u32, String>,
    records: Vec<(u32, String, Event)>,
}

fn core(ev: &Evidence) -> Option<Core> {
    let records: Vec<Record> = ev
        .measurement_log
        .iter()
        .map(|v| serde_json::from_value(v.clone()).ok())
        .collect::<Option<_>>()?;
    let voided: std::collections::HashSet<u64> = records.iter().filter_map(|r| r.voids).collect();
    Some(Core {
        quote: base64::engine::general_purpose::STANDARD
            .decode(&ev.quote)
            .ok()?,
        pcrs: ev.pcrs.clone(),
        records: records
            .into_iter()
            .filter(|r| r.extended && !r.is_note() && !voided.contains(&r.seq))
            .map(|r| (r.pcr, r.digest, r.event))
            .collect(),
    })
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let ak = read_ak(&dir.join("ak.pem")).unwrap_or_else(|e| panic!("fixture AK: {e}"));
    let keys = vec![
        TrustedKey::load(&dir.join("vendor.pub")).unwrap_or_else(|e| panic!("fixture key: {e}")),
    ];
    let nonce = std::fs::read_to_string(dir.join("nonce.hex"))
        .ok()
        .and_then(|n| hex::decode(n.trim()).ok())
        .unwrap_or_else(|| panic!("fixture nonce"));
    let bundle = std::fs::read(dir.join("bundle.json")).unwrap_or_default();
    let golden = parse_evidence(&bundle)
        .ok()
        .and_then(|e| core(&e))
        .unwrap_or_else(|| panic!("the fixture bundle does not parse"));
    let manifest = golden
        .records
        .iter()
        .rev()
        .find_map(|(_, _, e)| match e {
            Event::Manifest(m) => Some(m.text.clone().into_bytes()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("the fixture has no manifest record"));
    let ak_sec1 = ak.to_encoded_point(false).as_bytes().to_vec();
    Fixture {
        ak,
        ak_sec1,
        keys,
        nonce,
        golden,
        manifest,
    }
});

fn judge(ev: &Evidence) {
    let f = &*FIXTURE;
    let trust = Trust {
        ak: &f.ak,
        nonce: &f.nonce,
        pcrs: &[14],
        manifest_keys: &f.keys,
        golden: None,
        require_guard: false,
    };
    let stateless = verify(ev, &trust, None);
    // With a state and the fixture's manifest pinned as golden.
    let pinned = Trust {
        golden: Some(&f.manifest),
        ..trust
    };
    let mut state = DeviceState::new(&f.ak_sec1);
    let stateful = verify(ev, &pinned, Some(&mut state));
    let _ = stateless.render();
    for v in [&stateless, &stateful] {
        assert_eq!(v.trusted, v.failures.is_empty());
        if v.trusted {
            assert_eq!(
                core(ev).as_ref(),
                Some(&f.golden),
                "trusted, but not the evidence the TPM quoted:\n{}",
                v.render()
            );
        }
    }
    // The state moves only on an authentic quote, which is the fixture's.
    if state.quotes > 0 {
        assert_eq!(core(ev).map(|c| c.quote), Some(f.golden.quote.clone()));
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(mut ev) = parse_evidence(data) else {
        return;
    };
    judge(&ev);
    let mut changed = false;
    for v in &mut ev.measurement_log {
        if let Ok(mut r) = serde_json::from_value::<Record>(v.clone())
            && !r.is_note()
        {
            let d = hex::encode(digest(r.pcr, &r.event));
            if d != r.digest {
                r.digest = d;
                if let Ok(nv) = serde_json::to_value(&r) {
                    *v = nv;
                    changed = true;
                }
            }
        }
    }
    if changed {
        judge(&ev);
    }
});
