//! The verifier: evidence + what the verifier trusts → a verdict with
//! reasons. It judges the whole boot, not the last measurement: every
//! record since boot must be explained, bound to its content, and fine.
//!
//! The checks, each reported; a failure does not hide the others:
//!
//! | check | fails when |
//! |---|---|
//! | `format` | the quote or signature is not a TPM structure |
//! | `signature` | the quote is not signed by the enrolled AK |
//! | `nonce` | the quote carries another nonce than the verifier's |
//! | `selection` | the quote does not cover exactly the PCRs the verifier judges (SHA-256 bank) |
//! | `pcr_digest` | the PCR values in the bundle are not the ones quoted |
//! | `log` | a record is unreadable, out of sequence, from another boot, altered (its digest is not its event's), on a PCR not judged, or not extended |
//! | `log_replay` | the records do not replay to the quoted values |
//! | `manifest` | no manifest; one not signed by a trusted key, not matching its digest, older than the one before it (in this boot or seen before), or older than the pinned golden one |
//! | `model` | a model record since boot does not match the manifest in force when it was made (an update is forgiven only if the content is the next or previous signed manifest's and the file then converged), or a model was not measured |
//! | `policy_set` | a pushed policy set in force is older than the one before it (in this boot or seen before), the same version with other content, or the device's recorded floor went below a version seen; or policies were loaded with no policy set record on a device seen with one |
//! | `tamper` | a tamper attempt was detected but not prevented |
//! | `guard` | the guard was unloaded or found missing (a window without enforcement), or lost events |
//! | `attestor` | the agent said its attestor was stalled or lost records |
//! | `reboot` | the TPM's reset or restart count or clock went back, or the boot id disagrees with them |
//! | `finding` | a finding from an earlier quote is still open (see [`super::state`]) |

use std::collections::{BTreeMap, HashMap, HashSet};

use base64::Engine as _;
use p256::ecdsa::signature::Verifier as _;
use sha2::{Digest as _, Sha256};

use super::{
    bundle::Evidence,
    continuity::finish,
    quote::{self, ALG_SHA256},
    state::DeviceState,
    verdict::{Failure, PolicySetInForce, Trust, Verdict},
};
use crate::{
    evidence::{Event, Record, log::extend},
    manifest::Manifest,
    signing::TrustedKey,
};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

struct ManifestInForce {
    seq: u64,
    digest: String,
    serial: u64,
    manifest: Manifest,
    measured: HashSet<usize>,
    /// Whether the golden reference signs sizes (a manifest does; a model
    /// signature does not).
    sizes: bool,
}

struct ModelSeen {
    seq: u64,
    manifest: usize,
    sha256: String,
    size: u64,
    exact: bool,
}

/// Check an evidence bundle. `state` (the verifier's memory of this
/// device) is read and, when the quote is authentic, updated; `now` is the
/// verifier's time for the findings it opens.
pub fn verify(evidence: &Evidence, trust: &Trust<'_>, state: Option<&mut DeviceState>) -> Verdict {
    let mut v = Verdict {
        device: Some(evidence.device.clone()),
        ..Verdict::default()
    };
    let fail = |v: &mut Verdict, check: &'static str, reason: String, finding: Option<String>| {
        v.failures.push(Failure {
            check,
            reason,
            finding,
        });
    };
    let boot = evidence.device.boot_id.clone();

    // 1. The TPM's structures.
    let (Ok(quote_bytes), Ok(sig_bytes)) =
        (B64.decode(&evidence.quote), B64.decode(&evidence.signature))
    else {
        fail(
            &mut v,
            "format",
            "quote or signature is not base64".into(),
            None,
        );
        return finish(v, state, None, None, false, trust);
    };
    let info = match quote::parse_quote(&quote_bytes) {
        Ok(i) => i,
        Err(e) => {
            fail(&mut v, "format", format!("quote: {e}"), None);
            return finish(v, state, None, None, false, trust);
        }
    };
    let mut authentic = true;
    // 2. Signature by the enrolled AK (not the one the bundle carries).
    match quote::parse_signature(&sig_bytes) {
        Ok(s) if trust.ak.verify(&quote_bytes, &s).is_ok() => v.passed.push("signature"),
        Ok(_) => {
            authentic = false;
            fail(
                &mut v,
                "signature",
                "the quote is not signed by the enrolled attestation key".into(),
                None,
            );
        }
        Err(e) => {
            authentic = false;
            fail(&mut v, "signature", e, None);
        }
    }
    // 3. Our nonce.
    if info.extra_data == trust.nonce && trust.nonce.len() >= super::bundle::MIN_NONCE {
        v.passed.push("nonce");
    } else {
        authentic = false;
        fail(
            &mut v,
            "nonce",
            format!(
                "the quote carries nonce {} but {} was issued (a replayed or foreign quote)",
                hex::encode(&info.extra_data),
                hex::encode(trust.nonce)
            ),
            None,
        );
    }
    // 4. Exactly the PCRs we judge, SHA-256 bank only.
    let mut wanted: Vec<u32> = trust.pcrs.to_vec();
    wanted.sort_unstable();
    wanted.dedup();
    let banks: Vec<&(u16, Vec<u32>)> = info
        .selection
        .iter()
        .filter(|(_, p)| !p.is_empty())
        .collect();
    let selection_ok = banks.len() == 1 && banks[0].0 == ALG_SHA256 && banks[0].1 == wanted;
    if selection_ok {
        v.passed.push("selection");
    } else {
        authentic = false;
        fail(
            &mut v,
            "selection",
            format!(
                "the quote covers {} but the verifier judges exactly sha256:{:?}; records on PCRs outside a quote are not evidence",
                info.selection
                    .iter()
                    .map(|(a, p)| format!("{a:#06x}:{p:?}"))
                    .collect::<Vec<_>>()
                    .join(" "),
                wanted
            ),
            None,
        );
    }
    // 5. The PCR values in the bundle are the quoted ones.
    let mut pcr_values: BTreeMap<u32, [u8; 32]> = BTreeMap::new();
    let mut digest_input = Vec::new();
    let mut pcrs_ok = true;
    for (alg, pcrs) in &info.selection {
        for p in pcrs {
            let val = evidence
                .pcrs
                .get(p)
                .and_then(|h| hex::decode(h).ok())
                .and_then(|b| <[u8; 32]>::try_from(b).ok());
            match val {
                Some(val) if *alg == ALG_SHA256 => {
                    digest_input.extend_from_slice(&val);
                    pcr_values.insert(*p, val);
                }
                _ => pcrs_ok = false,
            }
        }
    }
    if pcrs_ok && Sha256::digest(&digest_input)[..] == info.pcr_digest[..] {
        v.passed.push("pcr_digest");
    } else {
        authentic = false;
        fail(
            &mut v,
            "pcr_digest",
            "the PCR values in the bundle are not the ones the TPM quoted (or one is missing or malformed)".into(),
            None,
        );
    }

    // 6. The records: readable, in sequence, this boot's, content-bound.
    let mut log_ok = true;
    let mut records: Vec<Record> = Vec::new();
    for (i, value) in evidence.measurement_log.iter().enumerate() {
        let r: Record = match serde_json::from_value(value.clone()) {
            Ok(r) => r,
            Err(e) => {
                log_ok = false;
                fail(
                    &mut v,
                    "log",
                    format!("record #{i} of the bundle: {e}"),
                    None,
                );
                continue;
            }
        };
        let problem = if let Err(p) = r.check() {
            Some(p)
        } else if records.last().is_some_and(|l| r.seq != l.seq + 1) {
            Some("out of sequence (records dropped, reordered or injected)".to_owned())
        } else if r.boot_id != boot {
            Some(format!(
                "is from boot {}, not the device's boot {boot}",
                r.boot_id
            ))
        } else if let Some(x) = r.voids
            && !records.iter().any(|p| p.seq == x && p.extended)
        {
            Some(format!(
                "voids record {x}, which is not an earlier extended record"
            ))
        } else if !r.is_note() && !r.extended {
            Some("was not extended into the TPM (measured without a TPM)".to_owned())
        } else if !r.is_note() && !wanted.contains(&r.pcr) {
            Some(format!(
                "extends PCR {}, which the verifier does not judge",
                r.pcr
            ))
        } else {
            None
        };
        if let Some(p) = problem {
            log_ok = false;
            fail(&mut v, "log", format!("record {}: {p}", r.seq), None);
        }
        records.push(r);
    }
    if log_ok {
        v.passed.push("log");
    }
    let voided: HashSet<u64> = records.iter().filter_map(|r| r.voids).collect();
    let in_pcr: Vec<&Record> = records
        .iter()
        .filter(|r| r.extended && !r.is_note() && !voided.contains(&r.seq))
        .collect();
    // 7. They replay to the quoted values.
    let mut replay_ok = true;
    for (p, value) in &pcr_values {
        let replay = in_pcr
            .iter()
            .filter(|r| r.pcr == *p)
            .fold([0u8; 32], |acc, r| extend(&acc, &r.digest_bytes()));
        if replay != *value {
            replay_ok = false;
            fail(
                &mut v,
                "log_replay",
                format!(
                    "the records replay PCR {p} to {} but the quoted value is {} (records dropped, altered or injected, or something else extends PCR {p})",
                    hex::encode(replay),
                    hex::encode(value)
                ),
                None,
            );
        }
    }
    if replay_ok && !pcr_values.is_empty() {
        v.passed.push("log_replay");
    }
    authentic &= replay_ok && log_ok;

    // 8. What the records say, in order.
    let finding = |r: &Record, check: &str| Some(format!("{}#{}:{check}", r.boot_id, r.seq));
    let mut manifests: Vec<ManifestInForce> = Vec::new();
    let mut models: HashMap<String, Vec<ModelSeen>> = HashMap::new();
    let mut manifest_ok = true;
    let mut model_ok = true;
    let mut guard_ran = false;
    let floor = state.as_ref().map_or(0, |s| s.manifest_serial);
    let set_floor = state.as_ref().map_or(0, |s| s.policy_set_version);
    let set_group = state
        .as_ref()
        .map(|s| s.policy_group.clone())
        .unwrap_or_default();
    let mut set_ok = true;
    let mut policy_loaded: Option<&Record> = None;
    for r in &in_pcr {
        match &r.event {
            Event::Manifest(m) => {
                v.manifests
                    .push(format!("record {}: {}", r.seq, r.event.describe()));
                let problem = judge_manifest(m, r.pcr, trust.manifest_keys);
                let parsed = match problem {
                    Ok(parsed) => parsed,
                    Err(p) => {
                        manifest_ok = false;
                        fail(
                            &mut v,
                            "manifest",
                            format!("record {}: {p}", r.seq),
                            finding(r, "manifest"),
                        );
                        continue;
                    }
                };
                if let Some(cur) = manifests.last()
                    && (parsed.serial < cur.serial
                        || (parsed.serial == cur.serial && m.sha256 != cur.digest))
                {
                    manifest_ok = false;
                    fail(
                        &mut v,
                        "manifest",
                        format!(
                            "record {}: manifest serial {} follows serial {} (record {}): a rollback to an older manifest",
                            r.seq, parsed.serial, cur.serial, cur.seq
                        ),
                        finding(r, "manifest"),
                    );
                }
                if parsed.serial < floor {
                    manifest_ok = false;
                    fail(
                        &mut v,
                        "manifest",
                        format!(
                            "record {}: manifest serial {} is older than serial {floor}, already seen in force on this device",
                            r.seq, parsed.serial
                        ),
                        finding(r, "manifest"),
                    );
                }
                manifests.push(ManifestInForce {
                    seq: r.seq,
                    digest: m.sha256.clone(),
                    serial: parsed.serial,
                    manifest: parsed,
                    measured: HashSet::new(),
                    sizes: m.model_dir.is_none(),
                });
            }
            Event::Model(me) => {
                let k = manifests.len();
                let Some(cur) = manifests.last_mut() else {
                    model_ok = false;
                    fail(
                        &mut v,
                        "model",
                        format!("record {}: {} measured before any manifest", r.seq, me.file),
                        finding(r, "model"),
                    );
                    continue;
                };
                if me.manifest != cur.digest {
                    model_ok = false;
                    fail(
                        &mut v,
                        "model",
                        format!(
                            "record {}: {} claims manifest {} but {} (record {}) was in force",
                            r.seq, me.file, me.manifest, cur.digest, cur.seq
                        ),
                        finding(r, "model"),
                    );
                    continue;
                }
                let Some(entry) = cur
                    .manifest
                    .models
                    .get(me.entry)
                    .filter(|e| e.path.display().to_string() == me.file)
                else {
                    model_ok = false;
                    fail(
                        &mut v,
                        "model",
                        format!(
                            "record {}: {} is not entry {} of the manifest in force",
                            r.seq, me.file, me.entry
                        ),
                        finding(r, "model"),
                    );
                    continue;
                };
                cur.measured.insert(me.entry);
                models.entry(me.file.clone()).or_default().push(ModelSeen {
                    seq: r.seq,
                    manifest: k - 1,
                    sha256: me.sha256.clone(),
                    size: me.size,
                    exact: entry.sha256 == me.sha256 && (!cur.sizes || entry.size == me.size),
                });
            }
            Event::Tamper(t) => {
                v.tamper_attempts
                    .push(format!("record {}: {}", r.seq, r.event.describe()));
                if t.outcome == "detected" {
                    fail(
                        &mut v,
                        "tamper",
                        format!("record {}: {} (not prevented)", r.seq, r.event.describe()),
                        finding(r, "tamper"),
                    );
                }
            }
            Event::Guard(g) => {
                v.guard
                    .push(format!("record {}: {}", r.seq, r.event.describe()));
                match g.action.as_str() {
                    "start" | "adopt" => guard_ran = true,
                    "unload" | "gap" => fail(
                        &mut v,
                        "guard",
                        format!(
                            "record {}: a window without enforcement: {}",
                            r.seq,
                            r.event.describe()
                        ),
                        finding(r, "guard"),
                    ),
                    "drops" | "stalled" | "tables" => fail(
                        &mut v,
                        "guard",
                        format!("record {}: {}", r.seq, r.event.describe()),
                        finding(r, "guard"),
                    ),
                    _ => {}
                }
            }
            Event::Policy(_) => {
                policy_loaded.get_or_insert(r);
                v.policies
                    .push(format!("record {}: {}", r.seq, r.event.describe()))
            }
            Event::PolicySet(p) => {
                v.policy_sets
                    .push(format!("record {}: {}", r.seq, r.event.describe()));
                let mut problems = Vec::new();
                if let Some(cur) = &v.policy_set {
                    if p.group != cur.group {
                        problems.push(format!(
                            "the device's group changed from {} to {} in one boot",
                            cur.group, p.group
                        ));
                    }
                    if p.version < cur.version
                        || (p.version == cur.version && p.sha256 != cur.sha256)
                    {
                        problems.push(format!(
                            "policy set version {} follows version {} in this boot: a rollback",
                            p.version, cur.version
                        ));
                    }
                    if p.floor < cur.floor {
                        problems.push(format!(
                            "the device's policy floor went from {} down to {} in this boot",
                            cur.floor, p.floor
                        ));
                    }
                }
                if !set_group.is_empty() && p.group != set_group {
                    problems.push(format!(
                        "the device follows group {} but was seen following group {set_group} before (a device moved to another group's sets; acknowledge if an operator moved it)",
                        p.group
                    ));
                }
                if p.version < set_floor && p.floor < set_floor {
                    problems.push(format!(
                        "policy set version {} with floor {} is older than version {set_floor}, already seen on this device (its floor was reset)",
                        p.version, p.floor
                    ));
                } else if p.version < set_floor {
                    problems.push(format!(
                        "policy set version {} is older than version {set_floor}, already seen in force on this device",
                        p.version
                    ));
                }
                if p.version < p.floor {
                    problems.push(format!(
                        "policy set version {} is in force below the device's own floor {} (version 0: the image's policies)",
                        p.version, p.floor
                    ));
                } else if p.version > p.floor {
                    v.warnings.push(format!(
                        "record {}: policy set version {} is in force but the device's floor stayed at {} (a rollback to it would not be refused on the device)",
                        r.seq, p.version, p.floor
                    ));
                }
                for why in problems {
                    set_ok = false;
                    fail(
                        &mut v,
                        "policy_set",
                        format!("record {}: {why}", r.seq),
                        finding(r, "policy_set"),
                    );
                }
                v.policy_set = Some(PolicySetInForce {
                    group: p.group.clone(),
                    version: p.version,
                    sha256: p.sha256.clone(),
                    floor: p.floor,
                });
            }
            Event::Note(_) => {}
        }
    }
    // Every model of every manifest was measured while it was in force.
    for m in &manifests {
        for (i, e) in m.manifest.models.iter().enumerate() {
            if !m.measured.contains(&i) {
                model_ok = false;
                fail(
                    &mut v,
                    "model",
                    format!(
                        "{}: not measured while manifest serial {} (record {}) was in force",
                        e.path.display(),
                        m.serial,
                        m.seq
                    ),
                    Some(format!("{boot}#{}:unmeasured:{i}", m.seq)),
                );
            }
        }
    }
    // Every model record matched the manifest in force, or is an update in
    // passing: content signed in the next or previous manifest, with the
    // file later measured exactly.
    let mut files: Vec<&String> = models.keys().collect();
    files.sort();
    for file in files {
        let seen = &models[file];
        for (j, s) in seen.iter().enumerate() {
            if s.exact {
                continue;
            }
            let neighbour = |k: Option<usize>| {
                k.and_then(|k| manifests.get(k)).is_some_and(|m| {
                    m.manifest.models.iter().any(|e| {
                        e.path.display().to_string() == *file
                            && e.sha256 == s.sha256
                            && (!m.sizes || e.size == s.size)
                    })
                })
            };
            let in_passing = (neighbour(s.manifest.checked_sub(1))
                || neighbour(Some(s.manifest + 1)))
                && seen[j + 1..].iter().any(|l| l.exact);
            if in_passing {
                continue;
            }
            model_ok = false;
            let m = &manifests[s.manifest];
            let golden = m
                .manifest
                .models
                .iter()
                .find(|e| e.path.display().to_string() == *file)
                .map(|e| e.sha256.clone())
                .unwrap_or_default();
            fail(
                &mut v,
                "model",
                format!(
                    "{file}: measured sha256 {} (record {}) but manifest serial {} (record {}) says {golden}",
                    s.sha256, s.seq, m.serial, m.seq
                ),
                Some(format!("{boot}#{}:model", s.seq)),
            );
        }
    }
    if manifests.is_empty() {
        manifest_ok = false;
        fail(
            &mut v,
            "manifest",
            "the log has no manifest measurement this boot".into(),
            None,
        );
    } else if let Some(golden) = trust.golden {
        let gd = hex::encode(Sha256::digest(golden));
        let gs = std::str::from_utf8(golden)
            .ok()
            .and_then(|t| Manifest::parse(t).ok())
            .map(|m| m.serial);
        if let (Some(last), Some(gs)) = (manifests.last(), gs)
            && (last.serial < gs || (last.serial == gs && last.digest != gd))
        {
            manifest_ok = false;
            fail(
                &mut v,
                "manifest",
                format!(
                    "the manifest in force is serial {} ({}) but the verifier's golden manifest is serial {gs} ({gd})",
                    last.serial, last.digest
                ),
                None,
            );
        }
    }
    if manifest_ok {
        v.passed.push("manifest");
    }
    // A device seen with a pushed set that loads policies this boot
    // without saying which set is in force stopped following its group
    // (its `[policy] group` emptied): its image's policies run, and
    // without this nothing in the verdict would say so.
    if v.policy_set.is_none()
        && set_floor > 0
        && let Some(r) = policy_loaded
    {
        set_ok = false;
        fail(
            &mut v,
            "policy_set",
            format!(
                "record {}: policies are loaded this boot but no record says which policy set is in force, while version {set_floor} was seen on this device (it no longer follows its group)",
                r.seq
            ),
            finding(r, "policy_set"),
        );
    }
    if set_ok && v.policy_set.is_some() {
        v.passed.push("policy_set");
    }
    if model_ok && !manifests.is_empty() {
        v.passed.push("models");
    }
    if !guard_ran {
        let msg = "no runtime guard started this boot (measured boot only)".to_owned();
        if trust.require_guard {
            fail(&mut v, "guard", msg, None);
        } else {
            v.warnings.push(msg);
        }
    }
    // 9. What the agent said of its attestor.
    if let Some(a) = &evidence.agent {
        if let Some(since) = &a.stalled_since {
            fail(
                &mut v,
                "attestor",
                format!(
                    "the agent's attestor has been stalled since {since} with {} record(s) waiting: the evidence may be incomplete",
                    a.backlog
                ),
                None,
            );
        }
        if a.lost > 0 {
            fail(
                &mut v,
                "attestor",
                format!("the agent's attestor lost {} record(s)", a.lost),
                Some(format!("{boot}:attestor")),
            );
        }
    }
    if !info.safe {
        v.warnings.push(
            "the TPM's clock is not marked safe (it may have gone back since it was last saved)"
                .into(),
        );
    }
    let serial = manifests.last().map(|m| m.serial);
    finish(v, state, Some(&info), serial, authentic, trust)
}

/// A manifest record's content: its digest, text, PCR and signature.
fn judge_manifest(
    m: &crate::evidence::event::ManifestEvent,
    pcr: u32,
    keys: &[TrustedKey],
) -> Result<Manifest, String> {
    let digest = hex::encode(Sha256::digest(m.text.as_bytes()));
    if digest != m.sha256 {
        return Err(format!(
            "the manifest text hashes to {digest}, not to the recorded {}",
            m.sha256
        ));
    }
    if let Some(dir) = &m.model_dir {
        return judge_model_signature(m, dir, pcr, keys);
    }
    let parsed = Manifest::parse(&m.text).map_err(|e| format!("the manifest is invalid: {e}"))?;
    if parsed.pcr != pcr {
        return Err(format!(
            "the manifest names PCR {} but was recorded in PCR {pcr}",
            parsed.pcr
        ));
    }
    let sig = hex::decode(&m.signature).unwrap_or_default();
    if sig.is_empty() {
        return Err(format!("manifest serial {} is UNSIGNED", parsed.serial));
    }
    if !keys
        .iter()
        .any(|k| k.verifies_detached(m.text.as_bytes(), &sig))
    {
        return Err(format!(
            "manifest serial {} is not signed by a key the verifier trusts",
            parsed.serial
        ));
    }
    Ok(parsed)
}

/// A model-signature record: the bundle it carries verifies with the
/// verifier's own keys or CA certificates (never the device's word), its
/// recorded signature is the bundle's, and its statement becomes the
/// golden list of `<model_dir>/<name>` digests (sizes unsigned).
fn judge_model_signature(
    m: &crate::evidence::event::ManifestEvent,
    dir: &str,
    pcr: u32,
    keys: &[TrustedKey],
) -> Result<Manifest, String> {
    crate::manifest::check_pcr(pcr)?;
    let verified = crate::model_sig::verify_bytes(
        m.text.as_bytes(),
        keys,
        std::time::SystemTime::now(),
    )
    .map_err(|e| match e {
        crate::model_sig::BundleProblem::Untrusted(p) => {
            format!("the model signature for {dir} is not signed by a key the verifier trusts: {p}")
        }
        crate::model_sig::BundleProblem::Malformed(p) => {
            format!("the model signature for {dir} is invalid: {p}")
        }
    })?;
    if hex::encode(&verified.bundle.signature) != m.signature {
        return Err(format!(
            "the model signature for {dir}: the recorded signature is not the bundle's"
        ));
    }
    crate::model_sig::to_manifest(&verified.statement, std::path::Path::new(dir), pcr, None)
        .map_err(|e| format!("the model signature for {dir} is invalid: {e}"))
}
