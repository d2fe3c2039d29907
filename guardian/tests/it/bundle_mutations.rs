//! Properties of the verifier over one real evidence bundle from swtpm
//! (a measured board with guard, tamper, policy and note records): every
//! change an attacker on the network or root on the device can make to
//! what the TPM vouched for gives a verdict of NOT TRUSTED. One bundle is
//! made; each case mutates a copy and verifies it in the library, so
//! thousands of cases take seconds.
//!
//! The changes: a flipped byte of the quote (its nonce among them) or of
//! the signature; another nonce issued; a changed PCR value; a record
//! edited in any field (with its digest left alone, or recomputed the way
//! an attacker who knows the encoding would), dropped, duplicated, moved,
//! unmarked as extended, voided by an injected note, from another boot; a
//! record injected with a consistent digest; the log truncated; sequence
//! numbers repaired after any of these; the agent saying its attestor
//! stalled or lost records. Alone, each must fail. Several at once may
//! cancel out (a byte flipped twice); then, as in the fuzz target,
//! a trusted verdict must carry exactly the evidence the TPM quoted.

// Tests panic on purpose: the failing line is the report.
use crate::evidence;

use std::{collections::HashSet, sync::LazyLock};

use base64::Engine as _;
use guardian::{
    attest::{AgentState, Evidence, parse_evidence, quote::parse_quote},
    evidence::{Event, Record, event::digest, ledger},
    signing::TrustedKey,
};
use proptest::{prelude::*, sample::Index};
use serde_json::Value;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

struct Fixture {
    evidence: Evidence,
    ak: p256::ecdsa::VerifyingKey,
    keys: Vec<TrustedKey>,
}

/// One bundle for every case; the TPM is not needed once it is made.
static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let q = evidence::Quoted::make();
    let (ak, keys) = q.keys();
    let evidence = parse_evidence(&q.bundle).unwrap();
    let v = evidence::judge(&evidence, &ak, &keys, evidence::NONCE);
    assert!(
        v.trusted,
        "the unmutated bundle must be trusted:\n{}",
        v.render()
    );
    Fixture { evidence, ak, keys }
});

#[derive(Clone, Debug)]
enum Mutation {
    QuoteByte(Index, u8),
    QuoteNonce(Index, u8),
    SignatureByte(Index, u8),
    OtherNonce(Index, u8),
    PcrValue(Index, u8),
    /// Edit one leaf of an extended record (not its time).
    Edit {
        record: Index,
        leaf: Index,
        rebind: bool,
    },
    Drop(Index),
    Duplicate(Index),
    Move(Index, Index),
    Unextend(Index),
    Void(Index),
    OtherBoot(Index),
    Inject {
        at: Index,
        kind: u8,
    },
    Truncate(Index),
    Stalled,
    Lost(u64),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let x = || 1u8..;
    prop_oneof![
        1 => (any::<Index>(), x()).prop_map(|(i, b)| Mutation::QuoteByte(i, b)),
        1 => (any::<Index>(), x()).prop_map(|(i, b)| Mutation::QuoteNonce(i, b)),
        1 => (any::<Index>(), x()).prop_map(|(i, b)| Mutation::SignatureByte(i, b)),
        1 => (any::<Index>(), x()).prop_map(|(i, b)| Mutation::OtherNonce(i, b)),
        1 => (any::<Index>(), x()).prop_map(|(i, b)| Mutation::PcrValue(i, b)),
        4 => (any::<Index>(), any::<Index>(), any::<bool>()).prop_map(|(record, leaf, rebind)| {
            Mutation::Edit {
                record,
                leaf,
                rebind,
            }
        }),
        1 => any::<Index>().prop_map(Mutation::Drop),
        1 => any::<Index>().prop_map(Mutation::Duplicate),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::Move(a, b)),
        1 => any::<Index>().prop_map(Mutation::Unextend),
        1 => any::<Index>().prop_map(Mutation::Void),
        1 => any::<Index>().prop_map(Mutation::OtherBoot),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(at, kind)| Mutation::Inject { at, kind }),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => Just(Mutation::Stalled),
        1 => (1u64..).prop_map(Mutation::Lost),
    ]
}

fn records(ev: &Evidence) -> Vec<Record> {
    ev.measurement_log
        .iter()
        .map(|v| serde_json::from_value(v.clone()).unwrap())
        .collect()
}

/// Indices of the records in the PCR (extended, not notes).
fn extended(ev: &Evidence) -> Vec<usize> {
    records(ev)
        .iter()
        .enumerate()
        .filter(|(_, r)| r.extended && !r.is_note())
        .map(|(i, _)| i)
        .collect()
}

fn flip_b64(s: &mut String, at: Index, x: u8, range: Option<std::ops::Range<usize>>) {
    let mut b = B64.decode(&*s).unwrap();
    let r = range.unwrap_or(0..b.len());
    b[r.start + at.index(r.len())] ^= x;
    *s = B64.encode(b);
}

/// Sequence numbers 0, 1, 2, … again (what an attacker repairs).
fn renumber(log: &mut [Value]) {
    for (i, r) in log.iter_mut().enumerate() {
        r["seq"] = Value::from(i as u64);
    }
}

fn rebind(r: &mut Value) {
    if let Ok(rec) = serde_json::from_value::<Record>(r.clone()) {
        r["digest"] = Value::String(hex::encode(digest(rec.pcr, &rec.event)));
    }
}

/// JSON pointers to every leaf of `v`.
fn leaves(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                leaves(c, format!("{at}/{k}"), out);
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                leaves(c, format!("{at}/{i}"), out);
            }
        }
        _ => out.push(at),
    }
}

/// A different value of the same JSON type (or another type for null).
fn change(v: &mut Value) {
    *v = match v.take() {
        Value::String(s) if s.is_empty() => Value::String("x".into()),
        Value::String(mut s) => {
            // Change the last character, keeping hex hex.
            let c = s.pop().unwrap();
            s.push(if c == '0' { '1' } else { '0' });
            Value::String(s)
        }
        Value::Bool(b) => Value::Bool(!b),
        Value::Number(n) => match n.as_u64() {
            Some(u) => Value::from(u ^ 1),
            None => Value::from(n.as_i64().unwrap_or(0) ^ 1),
        },
        Value::Null => Value::from(1),
        other => other,
    };
}

/// Apply `m`; false when it does not apply to this bundle (skipped).
fn apply(ev: &mut Evidence, nonce: &mut [u8], m: &Mutation) -> bool {
    let ext = extended(ev);
    let log = &mut ev.measurement_log;
    match m {
        Mutation::QuoteByte(at, x) => flip_b64(&mut ev.quote, *at, *x, None),
        Mutation::QuoteNonce(at, x) => {
            let q = B64.decode(&ev.quote).unwrap();
            let Ok(info) = parse_quote(&q) else {
                return false;
            };
            // magic, type, signer (TPM2B), then extraData (TPM2B).
            let start = 4 + 2 + 2 + info.signer.len() + 2;
            flip_b64(
                &mut ev.quote,
                *at,
                *x,
                Some(start..start + info.extra_data.len()),
            );
        }
        Mutation::SignatureByte(at, x) => flip_b64(&mut ev.signature, *at, *x, None),
        Mutation::OtherNonce(at, x) => {
            let i = at.index(nonce.len());
            nonce[i] ^= x;
        }
        Mutation::PcrValue(at, x) => {
            let Some(v) = ev.pcrs.values_mut().next() else {
                return false;
            };
            let mut b = hex::decode(&*v).unwrap();
            let i = at.index(b.len());
            b[i] ^= x;
            *v = hex::encode(b);
        }
        Mutation::Edit {
            record,
            leaf,
            rebind: again,
        } => {
            let r = &mut log[ext[record.index(ext.len())]];
            let mut all = Vec::new();
            leaves(r, String::new(), &mut all);
            // The time is not evidence; sequence numbers and digests are
            // covered by the other changes (and a repair or rebind would
            // undo an edit of them).
            all.retain(|p| !matches!(p.as_str(), "/time" | "/seq" | "/digest"));
            let p = &all[leaf.index(all.len())];
            change(r.pointer_mut(p).unwrap());
            if *again {
                rebind(r);
            }
        }
        Mutation::Drop(i) => {
            log.remove(ext[i.index(ext.len())]);
        }
        Mutation::Duplicate(i) => {
            let at = ext[i.index(ext.len())];
            let copy = log[at].clone();
            log.insert(at + 1, copy);
        }
        Mutation::Move(a, b) => {
            let a = ext[a.index(ext.len())];
            let r = log.remove(a);
            let b = b.index(log.len() + 1);
            // Moving it past notes only, or nowhere, changes no extend.
            let recs: Vec<Record> = log
                .iter()
                .map(|v| serde_json::from_value(v.clone()).unwrap())
                .collect();
            let (lo, hi) = (a.min(b), a.max(b));
            let same_order = recs[lo..hi.min(recs.len())]
                .iter()
                .all(|r| !r.extended || r.is_note());
            log.insert(b, r);
            if same_order {
                return false;
            }
        }
        Mutation::Unextend(i) => {
            log[ext[i.index(ext.len())]]["extended"] = Value::Bool(false);
        }
        Mutation::Void(i) => {
            let target = ext[i.index(ext.len())];
            let seq = log[target]["seq"].as_u64().unwrap();
            let mut note = Record::note("extend failed");
            note.voids = Some(seq);
            note.boot_id = ev.device.boot_id.clone();
            note.time = "2026-12-04T10:00:00Z".into();
            log.insert(target + 1, serde_json::to_value(note).unwrap());
        }
        Mutation::OtherBoot(i) => {
            log[ext[i.index(ext.len())]]["boot_id"] = Value::String("another-boot".into());
        }
        Mutation::Inject { at, kind } => {
            let event = match kind % 3 {
                0 => ledger::guard_event("start", "enforce", "all hooks via lsm"),
                1 => {
                    // A model record claiming the golden digest again.
                    let recs = records(ev);
                    let Some(Event::Model(m)) = recs
                        .iter()
                        .map(|r| r.event.clone())
                        .find(|e| matches!(e, Event::Model(_)))
                    else {
                        return false;
                    };
                    Event::Model(guardian::evidence::event::ModelEvent {
                        cause: "timer".into(),
                        ..m
                    })
                }
                _ => ledger::guard_event("stop", "enforce", "programs stay pinned"),
            };
            let mut r = Record::new(evidence::PCR, event);
            r.extended = true;
            r.boot_id = ev.device.boot_id.clone();
            r.time = "2026-12-04T10:00:00Z".into();
            let log = &mut ev.measurement_log;
            log.insert(at.index(log.len() + 1), serde_json::to_value(r).unwrap());
        }
        Mutation::Truncate(keep) => {
            // Keep a prefix that leaves out at least one extended record.
            let last = *ext.last().unwrap();
            log.truncate(keep.index(last + 1));
        }
        Mutation::Stalled => {
            ev.agent = Some(AgentState {
                running: true,
                backlog: 3,
                stalled_since: Some("2026-12-04T10:00:00Z".into()),
                lost: 0,
            });
        }
        Mutation::Lost(n) => {
            ev.agent = Some(AgentState {
                running: true,
                backlog: 0,
                stalled_since: None,
                lost: *n,
            });
        }
    }
    true
}

/// What a trusted verdict vouches for: the quote's bytes, the PCR values,
/// and the records in the PCR (PCR, digest, event), in order.
type Core = (Vec<u8>, Vec<(u32, String)>, Vec<(u32, String, Event)>);

fn core(ev: &Evidence) -> Option<Core> {
    let recs: Vec<Record> = ev
        .measurement_log
        .iter()
        .map(|v| serde_json::from_value(v.clone()).ok())
        .collect::<Option<_>>()?;
    let voided: HashSet<u64> = recs.iter().filter_map(|r| r.voids).collect();
    Some((
        B64.decode(&ev.quote).ok()?,
        ev.pcrs.iter().map(|(p, v)| (*p, v.clone())).collect(),
        recs.into_iter()
            .filter(|r| r.extended && !r.is_note() && !voided.contains(&r.seq))
            .map(|r| (r.pcr, r.digest, r.event))
            .collect(),
    ))
}

fn quiet_agent(ev: &Evidence) -> bool {
    ev.agent
        .as_ref()
        .is_none_or(|a| a.stalled_since.is_none() && a.lost == 0)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn one_change_is_never_trusted(m in mutation(), repair in any::<bool>()) {
        let f = &*FIXTURE;
        let mut ev = f.evidence.clone();
        let mut nonce = hex::decode(evidence::NONCE).unwrap();
        prop_assume!(apply(&mut ev, &mut nonce, &m));
        if repair {
            renumber(&mut ev.measurement_log);
        }
        let v = evidence::judge(&ev, &f.ak, &f.keys, &hex::encode(&nonce));
        prop_assert!(!v.trusted, "{m:?} (sequence repaired: {repair}) is trusted:\n{}", v.render());
        prop_assert!(!v.failures.is_empty());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn several_changes_are_trusted_only_if_they_cancel_out(
        ms in prop::collection::vec(mutation(), 2..5),
        repair in any::<bool>(),
    ) {
        let f = &*FIXTURE;
        let mut ev = f.evidence.clone();
        let mut nonce = hex::decode(evidence::NONCE).unwrap();
        for m in &ms {
            if records_parse(&ev) && !extended(&ev).is_empty() {
                apply(&mut ev, &mut nonce, m);
            }
        }
        if repair {
            renumber(&mut ev.measurement_log);
        }
        let v = evidence::judge(&ev, &f.ak, &f.keys, &hex::encode(&nonce));
        if v.trusted {
            prop_assert_eq!(hex::encode(&nonce), evidence::NONCE);
            prop_assert!(quiet_agent(&ev));
            prop_assert_eq!(core(&ev), core(&f.evidence), "{:?} trusted:\n{}", ms, v.render());
        }
    }
}

fn records_parse(ev: &Evidence) -> bool {
    ev.measurement_log
        .iter()
        .all(|v| serde_json::from_value::<Record>(v.clone()).is_ok())
}
