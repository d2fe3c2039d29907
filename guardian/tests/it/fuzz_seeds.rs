//! Seeds for the fuzz targets in `fuzz/`, made from real data: a board
//! measured into swtpm, its log, manifest, quote and evidence bundle,
//! model signatures made by `model_signing`, and policy events encoded from guardian's JSON security events. Each seed
//! is checked to be accepted by the parser it feeds, so a fuzz run starts
//! from inputs that reach deep into the code rather than from noise.
//!
//! `fuzz/seeds.sh` runs this with `GUARDIAN_FUZZ_SEEDS=DIR` to write the
//! seeds into `DIR/<target>/`; `GUARDIAN_FUZZ_FIXTURE=1` also rewrites the
//! verify target's fixture in `fuzz/fixtures/` (a bundle and the keys that
//! make it trusted). Without them the seeds go to a temporary directory:
//! the test then only checks that real data still parses.

// Tests panic on purpose: the failing line is the report.
use crate::evidence;

use std::path::{Path, PathBuf};

use guardian::{
    attest::{parse_evidence, quote},
    evidence::log,
    manifest::Manifest,
    policy::JsonEvent,
};
use guardian_policy_abi::{Egress, IpAddr, OwnedStaticRules};

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/fixtures")
}

fn write(dir: &Path, target: &str, name: &str, bytes: &[u8]) {
    let d = dir.join(target);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join(name), bytes).unwrap();
}

/// guardian's JSON security events of every kind (as `guardian run`
/// prints them), for the policy wire seeds.
const EVENTS: [&str; 7] = [
    r#""event":"file_write_open","file":"/opt/models/m.onnx","dev":"8:2","ino":5,"flags":577,"flags_text":"O_WRONLY|O_TRUNC""#,
    r#""event":"file_rename","file":"/opt/models/m.onnx","dev":"8:2","ino":5"#,
    r#""event":"exec","path":"/bin/sh""#,
    r#""event":"exec_preload","path":"/bin/sh","env":"LD_PRELOAD""#,
    r#""event":"library_load","path":"/tmp/evil.so""#,
    r#""event":"ptrace","target_pid":7,"target_exe":"/usr/bin/inference""#,
    r#""event":"connect","family":"ipv6","addr":"2001:db8::1","port":8080"#,
];
const COMMON: &str = r#""time":"2026-12-04T10:11:12.000013Z","verdict":"deny","mode":"enforce","hook":"lsm/file_open","pid":10,"tid":11,"ppid":1,"uid":0,"gid":0,"exe":"/usr/bin/dd","exe_dev":"8:1","exe_ino":99,"comm":"dd","service":false"#;

#[test]
fn seeds_from_a_real_board_parse() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = std::env::var_os("GUARDIAN_FUZZ_SEEDS")
        .map(PathBuf::from)
        .unwrap_or_else(|| tmp.path().to_owned());
    let q = evidence::Quoted::make();
    let b = &q.board;

    // quote: the TPM's own TPMS_ATTEST and TPMT_SIGNATURE.
    let attest = std::fs::read(b.p("ev.json.msg")).unwrap();
    let sig = std::fs::read(b.p("ev.json.sig")).unwrap();
    let info = quote::parse_quote(&attest).unwrap();
    assert_eq!(hex::encode(&info.extra_data), evidence::NONCE);
    quote::parse_signature(&sig).unwrap();
    write(&dir, "quote", "tpms_attest.bin", &attest);
    write(&dir, "quote", "tpmt_signature.bin", &sig);

    // log: the measurement log as written, with a torn tail too.
    let text = std::fs::read(b.p("measurements.log")).unwrap();
    let contents = log::parse(&text).unwrap();
    assert!(contents.records.len() >= 7, "{}", contents.records.len());
    write(&dir, "log", "measurements.log", &text);
    let mut torn = text.clone();
    torn.extend_from_slice(br#"{"seq":99,"boot_id":"#);
    assert!(log::parse(&torn).unwrap().torn_bytes > 0);
    write(&dir, "log", "torn.log", &torn);

    // manifest: the signed manifest guardian made.
    let manifest = std::fs::read_to_string(b.p("manifest.toml")).unwrap();
    Manifest::parse(&manifest).unwrap();
    write(&dir, "manifest", "manifest.toml", manifest.as_bytes());

    // verify: the bundle, trusted with the board's keys.
    let ev = parse_evidence(&q.bundle).unwrap();
    let (ak, keys) = q.keys();
    let v = evidence::judge(&ev, &ak, &keys, evidence::NONCE);
    assert!(v.trusted, "{}", v.render());
    assert_eq!(v.guard.len(), 2, "{}", v.render());
    assert_eq!(v.tamper_attempts.len(), 1, "{}", v.render());
    assert_eq!(v.policies.len(), 1, "{}", v.render());
    write(&dir, "verify", "bundle.json", &q.bundle);

    // model_sig: bundles the real `model_signing` CLI made (key and
    // certificate methods), each verified first.
    for (name, bundle) in crate::model_signing::seed_bundles() {
        write(&dir, "model_sig", &name, &bundle);
    }

    // policy_event: each kind, encoded as guardian hands it to a module.
    for (i, fields) in EVENTS.iter().enumerate() {
        let json = JsonEvent::parse(&format!("{{{COMMON},{fields}}}")).unwrap();
        let event = json.to_abi().unwrap();
        let bytes = postcard::to_allocvec(&event).unwrap();
        assert_eq!(guardian_policy_abi::Event::decode(&bytes), Some(event));
        write(
            &dir,
            "policy_event",
            &format!("{i}-{}.bin", json.event),
            &bytes,
        );
    }

    // policy_rules: static rules as a module returns them.
    let rules = OwnedStaticRules {
        protected: vec!["/opt/models/".into(), "/etc/guardian/".into()],
        writers: Some(vec!["/usr/bin/model-updater".into()]),
        egress: Some(vec![
            Egress {
                net: IpAddr::V4([10, 0, 0, 0]),
                prefix: 8,
                ports: (443, 443),
            },
            Egress {
                net: IpAddr::V6([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
                prefix: 32,
                ports: (0, 65535),
            },
        ]),
        service_exec: Some(vec!["/usr/bin/inference".into()]),
        library_dirs: None,
    };
    let bytes = postcard::to_allocvec(&rules).unwrap();
    assert_eq!(
        guardian::policy::module::decode_static_rules(&bytes).unwrap(),
        rules
    );
    write(&dir, "policy_rules", "rules.bin", &bytes);

    if std::env::var_os("GUARDIAN_FUZZ_FIXTURE").is_some() {
        let f = fixture_dir();
        std::fs::create_dir_all(&f).unwrap();
        std::fs::write(f.join("bundle.json"), &q.bundle).unwrap();
        std::fs::copy(b.p("ak.pem"), f.join("ak.pem")).unwrap();
        std::fs::copy(b.p("vendor.pub"), f.join("vendor.pub")).unwrap();
        std::fs::write(f.join("nonce.hex"), evidence::NONCE).unwrap();
        eprintln!("rewrote the verify fixture in {}", f.display());
    }
}

/// The verify fuzz target asserts that only its fixture is trusted; a
/// fixture the verifier no longer trusts would make that assertion empty.
#[test]
fn the_fuzz_fixture_is_still_trusted() {
    let f = fixture_dir();
    let bytes = std::fs::read(f.join("bundle.json")).unwrap();
    let ev = parse_evidence(&bytes).unwrap();
    let (ak, keys) = evidence::keys(&f.join("ak.pem"), &f.join("vendor.pub"));
    let nonce = std::fs::read_to_string(f.join("nonce.hex")).unwrap();
    let v = evidence::judge(&ev, &ak, &keys, nonce.trim());
    assert!(
        v.trusted,
        "the committed fuzz fixture is no longer trusted; regenerate it with `fuzz/seeds.sh --fixture`:\n{}",
        v.render()
    );
}
