//! The verifier's judgement of pushed policy sets, on real quotes from
//! swtpm: a set older than the one before it in the same boot, a set in
//! force below the device's own floor, and a set older than one the
//! verifier saw earlier (its state) are findings; a floor that was not
//! raised is a warning.

// Tests panic on purpose: the failing line is the report.
use guardian::attest::{DeviceState, Trust, Verdict, parse_evidence, verify};

use crate::evidence::{NONCE, PCR, Quoted, policy_set};

fn judge(q: &Quoted, state: Option<&mut DeviceState>) -> Verdict {
    let (ak, keys) = q.keys();
    let nonce = hex::decode(NONCE).unwrap();
    verify(
        &parse_evidence(&q.bundle).unwrap(),
        &Trust {
            ak: &ak,
            nonce: &nonce,
            pcrs: &[PCR],
            manifest_keys: &keys,
            golden: None,
            require_guard: false,
        },
        state,
    )
}

fn policy_set_failures(v: &Verdict) -> Vec<&str> {
    v.failures
        .iter()
        .filter(|f| f.check == "policy_set")
        .map(|f| f.reason.as_str())
        .collect()
}

#[test]
fn a_set_in_force_is_reported_and_an_older_one_after_it_is_a_rollback() {
    let q = Quoted::make();
    let v = judge(&q, None);
    assert!(v.trusted, "{}", v.render());
    assert!(v.passed.contains(&"policy_set"), "{}", v.render());
    let p = v.policy_set.as_ref().unwrap();
    assert_eq!((p.group.as_str(), p.version, p.floor), ("cameras", 2, 2));

    let q = Quoted::make_with(|l| {
        l.record(PCR, policy_set("push", 3, 3)).unwrap();
        l.record(PCR, policy_set("push", 2, 3)).unwrap();
    });
    let v = judge(&q, None);
    assert!(!v.trusted, "{}", v.render());
    let f = policy_set_failures(&v);
    assert!(f.iter().any(|r| r.contains("rollback")), "{}", v.render());
    assert!(
        f.iter().any(|r| r.contains("below the device's own floor")),
        "{}",
        v.render()
    );
}

#[test]
fn the_image_policies_back_in_force_above_a_floor_are_a_finding() {
    // The pushed directory lost, the image's own policies (version 0) in
    // force while the floor says 4.
    let q = Quoted::make_with(|l| {
        l.record(PCR, policy_set("start", 0, 4)).unwrap();
    });
    let v = judge(&q, None);
    assert!(!v.trusted, "{}", v.render());
    assert!(
        policy_set_failures(&v)
            .iter()
            .any(|r| r.contains("below the device's own floor 4")),
        "{}",
        v.render()
    );
}

#[test]
fn a_floor_not_raised_is_a_warning_not_a_failure() {
    let q = Quoted::make_with(|l| {
        l.record(PCR, policy_set("push", 5, 2)).unwrap();
    });
    let v = judge(&q, None);
    assert!(v.trusted, "{}", v.render());
    assert!(
        v.warnings.iter().any(|w| w.contains("floor stayed at 2")),
        "{}",
        v.render()
    );
}

#[test]
fn the_verifier_remembers_the_highest_version_across_quotes() {
    let q = Quoted::make();
    let (ak, _) = q.keys();
    let mut state = DeviceState::new(ak.to_encoded_point(false).as_bytes());
    let v = judge(&q, Some(&mut state));
    assert!(policy_set_failures(&v).is_empty(), "{}", v.render());
    assert_eq!(
        state.policy_set_version, 2,
        "adopted from an authentic quote"
    );
    // Version 7 was seen on this device before (say, before its storage
    // was re-flashed): version 2 now, with floor 2, is a rollback the
    // device itself could not see.
    state.policy_set_version = 7;
    let v = judge(&q, Some(&mut state));
    assert!(!v.trusted, "{}", v.render());
    assert!(
        policy_set_failures(&v)
            .iter()
            .any(|r| r.contains("older than version 7") && r.contains("floor was reset")),
        "{}",
        v.render()
    );
    assert_eq!(state.policy_set_version, 7, "never lowered");
}

#[test]
fn policies_loaded_without_a_set_record_on_a_device_seen_with_one_are_a_finding() {
    // The log loads a policy and names no policy set: a device whose
    // `[policy] group` was emptied runs its image's policies.
    let q = Quoted::make_with(|_| {});
    let (ak, _) = q.keys();
    // A verifier that never saw a set on the device has nothing to say.
    let v = judge(&q, None);
    assert!(policy_set_failures(&v).is_empty(), "{}", v.render());
    // One that saw version 3 in force there does.
    let mut state = DeviceState::new(ak.to_encoded_point(false).as_bytes());
    state.policy_set_version = 3;
    let v = judge(&q, Some(&mut state));
    assert!(!v.trusted, "{}", v.render());
    assert!(
        policy_set_failures(&v)
            .iter()
            .any(|r| r.contains("no record says which policy set") && r.contains("version 3")),
        "{}",
        v.render()
    );
}

#[test]
fn the_verifier_pins_the_group_and_never_adopts_a_claimed_floor() {
    let q = Quoted::make();
    let (ak, _) = q.keys();
    let mut state = DeviceState::new(ak.to_encoded_point(false).as_bytes());
    judge(&q, Some(&mut state));
    assert_eq!(state.policy_group, "cameras");
    // Seen following another group before: a device moved to a group
    // whose sets it prefers is a finding, whatever its versions.
    state.policy_group = "doors".into();
    let v = judge(&q, Some(&mut state));
    assert!(!v.trusted, "{}", v.render());
    assert!(
        policy_set_failures(&v)
            .iter()
            .any(|r| r.contains("was seen following group doors")),
        "{}",
        v.render()
    );
    // A floor written far above anything in force (root with the TPM's
    // owner auth): that quote fails, and the verifier remembers the version
    // in force, not the claimed floor, so the device can be put right.
    let q = Quoted::make_with(|l| {
        l.record(PCR, policy_set("push", 3, u64::MAX)).unwrap();
    });
    let (ak, _) = q.keys();
    let mut state = DeviceState::new(ak.to_encoded_point(false).as_bytes());
    let v = judge(&q, Some(&mut state));
    assert!(!v.trusted, "{}", v.render());
    assert_eq!(state.policy_set_version, 3);
}
