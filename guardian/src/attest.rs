//! Remote attestation: the evidence bundle a device produces for a
//! verifier's nonce (`guardian quote`), and the offline verifier
//! (`guardian verify`).
//!
//! The bundle is one JSON document. Its quote and signature are the TPM's
//! own bytes (`TPMS_ATTEST`, `TPMT_SIGNATURE`), so `tpm2_checkquote` can
//! check them with the exported AK public key; the verifier here checks the
//! same things and more:
//!
//! 1. the signature over the attestation, by the AK the verifier trusts
//!    (not the one the bundle claims);
//! 2. the attestation is a quote and carries the verifier's nonce;
//! 3. the quote's PCR digest equals the digest of the PCR values in the
//!    bundle;
//! 4. the measurement log in the bundle replays to those PCR values;
//! 5. the manifest and every model the log measured match the golden
//!    manifest the verifier holds.
//!
//! Every failed check is a reason in the verdict; none stops the others.
//!
//! The AK is trusted by enrolment: the verifier records the AK public key
//! (`guardian quote --ak-out`) when the device is provisioned, over a
//! trusted channel. (With a TPM that carries an EK certificate, the AK can
//! instead be certified through TPM2_MakeCredential/ActivateCredential;
//! that is future work.)

use std::{collections::BTreeMap, path::Path};

use base64::Engine as _;
use p256::ecdsa::signature::Verifier as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::{
    manifest::Manifest,
    mlog::{self, Kind, Record},
};

/// Evidence bundle format version.
pub const BUNDLE_VERSION: u32 = 1;
/// `TPM_GENERATED_VALUE`: the first field of every TPMS_ATTEST the TPM makes.
pub const TPM_GENERATED: u32 = 0xff54_4347;
/// `TPM_ST_ATTEST_QUOTE`.
pub const ST_ATTEST_QUOTE: u16 = 0x8018;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// What a device sends a verifier.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Evidence {
    /// Format version.
    pub version: u32,
    /// guardian's version on the device.
    pub guardian_version: String,
    /// Device identity (hostname, machine id).
    pub device: Device,
    /// The verifier's nonce, hex.
    pub nonce: String,
    /// `TPMS_ATTEST`, base64.
    pub quote: String,
    /// `TPMT_SIGNATURE`, base64.
    pub signature: String,
    /// Quoted PCR values, SHA-256 bank: index -> hex.
    pub pcrs: BTreeMap<u32, String>,
    /// AK public key, PEM (informational: the verifier uses its own copy).
    pub ak_public_pem: String,
    /// AK public area, `TPM2B_PUBLIC`, base64.
    pub ak_public_tpm2b: String,
    /// This boot's measurement log records.
    pub measurement_log: Vec<Record>,
}

/// Who the device says it is.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Device {
    /// Host name.
    pub hostname: String,
    /// `/etc/machine-id`, if any.
    pub machine_id: Option<String>,
    /// Kernel boot id.
    pub boot_id: String,
}

impl Device {
    /// This machine.
    pub fn this() -> Self {
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
        };
        Self {
            hostname: read("/proc/sys/kernel/hostname").unwrap_or_default(),
            machine_id: read("/etc/machine-id"),
            boot_id: mlog::boot_id(),
        }
    }
}

/// The AK public key as PEM, from its SEC1 point.
pub fn ak_pem(sec1: &[u8]) -> Result<String, String> {
    use p256::pkcs8::EncodePublicKey as _;
    let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(sec1)
        .map_err(|e| format!("AK point is not on P-256: {e}"))?;
    key.to_public_key_pem(p256::pkcs8::LineEnding::LF)
        .map_err(|e| format!("encoding the AK public key: {e}"))
}

/// A parsed `TPMS_ATTEST` of type quote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuoteInfo {
    /// `extraData`: the nonce.
    pub extra_data: Vec<u8>,
    /// TPM clock, milliseconds.
    pub clock: u64,
    /// TPM reset count (boots).
    pub reset_count: u32,
    /// Selected PCRs: (hash algorithm, PCR indices).
    pub selection: Vec<(u16, Vec<u32>)>,
    /// `pcrDigest`.
    pub pcr_digest: Vec<u8>,
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let s = self
            .b
            .get(self.at..self.at + n)
            .ok_or_else(|| format!("truncated at byte {}", self.at))?;
        self.at += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        let s = self.take(2)?;
        Ok(u16::from_be_bytes([s[0], s[1]]))
    }
    fn u32(&mut self) -> Result<u32, String> {
        let s = self.take(4)?;
        Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok((u64::from(self.u32()?) << 32) | u64::from(self.u32()?))
    }
    fn sized(&mut self) -> Result<&'a [u8], String> {
        let n = self.u16()? as usize;
        self.take(n)
    }
}

/// Parse a `TPMS_ATTEST` that must be a quote.
pub fn parse_quote(b: &[u8]) -> Result<QuoteInfo, String> {
    let mut r = Reader { b, at: 0 };
    if r.u32()? != TPM_GENERATED {
        return Err("not produced by a TPM (magic is not TPM_GENERATED_VALUE)".into());
    }
    let ty = r.u16()?;
    if ty != ST_ATTEST_QUOTE {
        return Err(format!("attestation type {ty:#06x} is not a quote"));
    }
    let _signer = r.sized()?;
    let extra_data = r.sized()?.to_vec();
    let clock = r.u64()?;
    let reset_count = r.u32()?;
    let _restart = r.u32()?;
    let _safe = r.u8()?;
    let _firmware = r.u64()?;
    let count = r.u32()?;
    if count > 16 {
        return Err(format!("{count} PCR banks selected"));
    }
    let mut selection = Vec::new();
    for _ in 0..count {
        let alg = r.u16()?;
        let n = r.u8()? as usize;
        let bits = r.take(n)?;
        let mut pcrs = Vec::new();
        for (i, byte) in bits.iter().enumerate() {
            for bit in 0..8 {
                if byte & (1 << bit) != 0 {
                    pcrs.push((i * 8 + bit) as u32);
                }
            }
        }
        selection.push((alg, pcrs));
    }
    let pcr_digest = r.sized()?.to_vec();
    Ok(QuoteInfo {
        extra_data,
        clock,
        reset_count,
        selection,
        pcr_digest,
    })
}

/// Parse a `TPMT_SIGNATURE` that must be ECDSA with SHA-256.
pub fn parse_signature(b: &[u8]) -> Result<p256::ecdsa::Signature, String> {
    let mut r = Reader { b, at: 0 };
    let alg = r.u16()?;
    if alg != 0x0018 {
        return Err(format!("signature algorithm {alg:#06x} is not ECDSA"));
    }
    let hash = r.u16()?;
    if hash != 0x000b {
        return Err(format!("signature hash {hash:#06x} is not SHA-256"));
    }
    let pad = |v: &[u8]| -> Result<[u8; 32], String> {
        if v.len() > 32 {
            return Err("ECDSA scalar longer than 32 bytes".into());
        }
        let mut out = [0u8; 32];
        out[32 - v.len()..].copy_from_slice(v);
        Ok(out)
    };
    let rr = pad(r.sized()?)?;
    let ss = pad(r.sized()?)?;
    p256::ecdsa::Signature::from_scalars(rr, ss).map_err(|e| format!("bad ECDSA signature: {e}"))
}

/// One failed check.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Failure {
    /// Which check (`signature`, `nonce`, `pcr_digest`, `log_replay`,
    /// `manifest`, `model`, `format`).
    pub check: &'static str,
    /// Why, in words.
    pub reason: String,
}

/// The verifier's answer.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Verdict {
    /// True when every check passed.
    pub trusted: bool,
    /// The failures (empty when trusted).
    pub failures: Vec<Failure>,
    /// Checks that passed, by name.
    pub passed: Vec<&'static str>,
    /// Device as claimed by the bundle.
    pub device: Option<Device>,
    /// Tamper attempts the device recorded (and extended) this boot. They
    /// do not make the verdict untrusted by themselves (a denied attempt
    /// changed nothing), but a verifier will want to know.
    pub tamper_attempts: Vec<String>,
    /// The runtime guard's state records (mode, hooks, drops), in order.
    pub guard_state: Vec<String>,
    /// The policy modules loaded this boot (name, digest, signer), in
    /// load order; a reload appears as a new run of records.
    pub policies: Vec<String>,
}

impl Verdict {
    /// The verdict when the quote itself cannot be read: nothing else can
    /// be judged.
    fn refused(failures: Vec<Failure>, passed: Vec<&'static str>, evidence: &Evidence) -> Self {
        Self {
            trusted: false,
            failures,
            passed,
            device: Some(evidence.device.clone()),
            tamper_attempts: Vec::new(),
            guard_state: Vec::new(),
            policies: Vec::new(),
        }
    }

    /// Human-readable.
    pub fn render(&self) -> String {
        let mut s = format!(
            "verdict: {}\n",
            if self.trusted {
                "TRUSTED"
            } else {
                "NOT TRUSTED"
            }
        );
        for p in &self.passed {
            s += &format!("  ok    {p}\n");
        }
        for f in &self.failures {
            s += &format!("  FAIL  {}: {}\n", f.check, f.reason);
        }
        for g in &self.guard_state {
            s += &format!("  guard  {g}\n");
        }
        for p in &self.policies {
            s += &format!("  policy {p}\n");
        }
        for t in &self.tamper_attempts {
            s += &format!("  TAMPER {t}\n");
        }
        s
    }
}

/// What the verifier trusts.
pub struct Trust<'a> {
    /// The enrolled AK public key.
    pub ak: &'a p256::ecdsa::VerifyingKey,
    /// The golden manifest's bytes.
    pub manifest_bytes: &'a [u8],
    /// The expected nonce.
    pub nonce: &'a [u8],
}

/// Check an evidence bundle.
pub fn verify(evidence: &Evidence, trust: &Trust<'_>) -> Verdict {
    let mut failures = Vec::new();
    let mut passed = Vec::new();
    let mut fail = |check, reason: String| failures.push(Failure { check, reason });

    let quote = B64.decode(&evidence.quote);
    let sig = B64.decode(&evidence.signature);
    let (Ok(quote), Ok(sig)) = (quote, sig) else {
        fail("format", "quote or signature is not base64".into());
        return Verdict::refused(failures, passed, evidence);
    };

    // 1. Signature by the enrolled AK.
    match parse_signature(&sig) {
        Ok(s) => {
            if trust.ak.verify(&quote, &s).is_ok() {
                passed.push("signature");
            } else {
                fail(
                    "signature",
                    "the quote is not signed by the enrolled attestation key".into(),
                );
            }
        }
        Err(e) => fail("signature", e),
    }
    // 2. A quote, with our nonce.
    let info = match parse_quote(&quote) {
        Ok(i) => i,
        Err(e) => {
            fail("format", format!("quote: {e}"));
            return Verdict::refused(failures, passed, evidence);
        }
    };
    if info.extra_data == trust.nonce {
        passed.push("nonce");
    } else {
        fail(
            "nonce",
            format!(
                "the quote carries nonce {} but {} was expected (a replayed or foreign quote)",
                hex::encode(&info.extra_data),
                hex::encode(trust.nonce)
            ),
        );
    }
    // 3. PCR digest over the claimed values.
    let mut pcr_values: BTreeMap<u32, [u8; 32]> = BTreeMap::new();
    let mut digest_input = Vec::new();
    let mut pcrs_ok = true;
    for (alg, pcrs) in &info.selection {
        if *alg != 0x000b {
            fail(
                "pcr_digest",
                format!("quoted bank {alg:#06x} is not SHA-256"),
            );
            pcrs_ok = false;
            continue;
        }
        for p in pcrs {
            let v = evidence
                .pcrs
                .get(p)
                .and_then(|h| hex::decode(h).ok())
                .and_then(|v| <[u8; 32]>::try_from(v).ok());
            match v {
                Some(v) => {
                    digest_input.extend_from_slice(&v);
                    pcr_values.insert(*p, v);
                }
                None => {
                    fail(
                        "pcr_digest",
                        format!("PCR {p} is quoted but missing or malformed in the bundle"),
                    );
                    pcrs_ok = false;
                }
            }
        }
    }
    if pcrs_ok {
        let digest: [u8; 32] = Sha256::digest(&digest_input).into();
        if digest[..] == info.pcr_digest[..] {
            passed.push("pcr_digest");
        } else {
            fail(
                "pcr_digest",
                "the PCR values in the bundle are not the ones the TPM quoted".into(),
            );
        }
    }
    if let Some(r) = evidence.measurement_log.iter().find(|r| r.alg != "sha256") {
        fail(
            "format",
            format!("log record {}: unknown hash algorithm {:?}", r.seq, r.alg),
        );
    }
    // 4. The log explains the PCRs.
    let voided: std::collections::HashSet<u64> = evidence
        .measurement_log
        .iter()
        .filter_map(|r| r.voids)
        .collect();
    let mut log_ok = true;
    for (p, value) in &pcr_values {
        let mut replay = [0u8; 32];
        for r in evidence
            .measurement_log
            .iter()
            .filter(|r| r.pcr == *p && r.extended && !voided.contains(&r.seq))
        {
            match r.digest_bytes() {
                Ok(d) => replay = mlog::extend(&replay, &d),
                Err(_) => {
                    fail("log_replay", format!("record {}: malformed digest", r.seq));
                    log_ok = false;
                }
            }
        }
        if replay != *value {
            fail(
                "log_replay",
                format!(
                    "the measurement log replays PCR {p} to {} but the quoted value is {} (log modified, truncated or incomplete)",
                    hex::encode(replay),
                    hex::encode(value)
                ),
            );
            log_ok = false;
        }
    }
    if log_ok {
        passed.push("log_replay");
    }
    // 5. Golden manifest and models.
    let golden = std::str::from_utf8(trust.manifest_bytes)
        .map_err(|_| "not UTF-8".to_owned())
        .and_then(Manifest::parse);
    match golden {
        Err(e) => fail("manifest", format!("golden manifest unusable: {e}")),
        Ok(golden) => {
            let manifest_digest = hex::encode(Sha256::digest(trust.manifest_bytes));
            let measured: Vec<&Record> = evidence
                .measurement_log
                .iter()
                .filter(|r| r.extended && !voided.contains(&r.seq) && r.pcr == golden.pcr)
                .collect();
            // The last run: from the last manifest record on.
            let start = measured.iter().rposition(|r| r.kind == Kind::Manifest);
            match start {
                None => fail("manifest", "the log has no manifest measurement".into()),
                Some(i) => {
                    let run = &measured[i..];
                    if run[0].digest == manifest_digest {
                        passed.push("manifest");
                    } else {
                        fail(
                            "manifest",
                            format!(
                                "the device measured manifest {} but the golden manifest is {manifest_digest}",
                                run[0].digest
                            ),
                        );
                    }
                    // Every measurement of a golden model since the last
                    // manifest record (the boot run, and any re-measurement
                    // after a write) must carry the golden digest.
                    let mut models_ok = true;
                    for e in &golden.models {
                        let file = e.path.display().to_string();
                        let recs: Vec<&&Record> = run
                            .iter()
                            .filter(|r| r.kind == Kind::Model && r.file.as_deref() == Some(&*file))
                            .collect();
                        if recs.is_empty() {
                            fail("model", format!("{file}: not measured"));
                            models_ok = false;
                        }
                        for r in recs.iter().filter(|r| r.digest != e.sha256) {
                            fail(
                                "model",
                                format!(
                                    "{file}: measured sha256 {} (record {}) but the golden digest is {}",
                                    r.digest, r.seq, e.sha256
                                ),
                            );
                            models_ok = false;
                        }
                    }
                    if models_ok {
                        passed.push("models");
                    }
                }
            }
        }
    }
    // Only records the quote covers count: extended, not voided.
    let covered = |k: Kind| {
        evidence
            .measurement_log
            .iter()
            .filter(|r| r.kind == k && r.extended && !voided.contains(&r.seq))
            .map(|r| r.description.clone())
            .collect::<Vec<_>>()
    };
    Verdict {
        trusted: failures.is_empty(),
        failures,
        passed,
        device: Some(evidence.device.clone()),
        tamper_attempts: covered(Kind::Tamper),
        guard_state: covered(Kind::State),
        policies: covered(Kind::Policy),
    }
}

/// Errors reading verifier inputs; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum VerifyInputError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The bundle is not an evidence document.
    #[error("malformed evidence bundle {path}: {message}")]
    Bundle {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The AK file is not a P-256 public key.
    #[error("{path}: not an ECC P-256 public key in PEM")]
    Ak {
        /// The file.
        path: std::path::PathBuf,
    },
    /// The nonce is not hex.
    #[error("nonce {0:?} is not hex (2 to 128 hex digits)")]
    Nonce(String),
}

/// Read a bundle file.
pub fn read_evidence(path: &Path) -> Result<Evidence, VerifyInputError> {
    let text = std::fs::read(path).map_err(|source| VerifyInputError::Read {
        path: path.to_owned(),
        source,
    })?;
    let ev: Evidence = serde_json::from_slice(&text).map_err(|e| VerifyInputError::Bundle {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    if ev.version != BUNDLE_VERSION {
        return Err(VerifyInputError::Bundle {
            path: path.to_owned(),
            message: format!("version {} is not supported", ev.version),
        });
    }
    Ok(ev)
}

/// Read an AK public key (PEM).
pub fn read_ak(path: &Path) -> Result<p256::ecdsa::VerifyingKey, VerifyInputError> {
    use p256::pkcs8::DecodePublicKey as _;
    let pem = std::fs::read_to_string(path).map_err(|source| VerifyInputError::Read {
        path: path.to_owned(),
        source,
    })?;
    p256::ecdsa::VerifyingKey::from_public_key_pem(&pem).map_err(|_| VerifyInputError::Ak {
        path: path.to_owned(),
    })
}

/// Parse a hex nonce (1 to 64 bytes: what fits TPM2B_DATA).
pub fn parse_nonce(s: &str) -> Result<Vec<u8>, VerifyInputError> {
    match hex::decode(s) {
        Ok(v) if !v.is_empty() && v.len() <= 64 => Ok(v),
        _ => Err(VerifyInputError::Nonce(s.to_owned())),
    }
}

/// Build the bundle from a quote.
pub fn evidence(
    nonce: &[u8],
    quote: &crate::tpm::Quote,
    ak: &crate::tpm::AkPublic,
    log: &mlog::Contents,
) -> Result<Evidence, String> {
    let device = Device::this();
    Ok(Evidence {
        version: BUNDLE_VERSION,
        guardian_version: crate::VERSION.to_owned(),
        nonce: hex::encode(nonce),
        quote: B64.encode(&quote.attest),
        signature: B64.encode(&quote.signature),
        pcrs: quote
            .pcrs
            .iter()
            .map(|(p, v)| (*p, hex::encode(v)))
            .collect(),
        ak_public_pem: ak_pem(&ak.sec1)?,
        ak_public_tpm2b: B64.encode(&ak.tpm2b_public),
        measurement_log: log.this_boot(&device.boot_id).cloned().collect(),
        device,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_quote_layout() {
        let mut b = Vec::new();
        b.extend_from_slice(&TPM_GENERATED.to_be_bytes());
        b.extend_from_slice(&ST_ATTEST_QUOTE.to_be_bytes());
        b.extend_from_slice(&2u16.to_be_bytes());
        b.extend_from_slice(&[0xaa, 0xbb]); // signer name
        b.extend_from_slice(&3u16.to_be_bytes());
        b.extend_from_slice(&[1, 2, 3]); // nonce
        b.extend_from_slice(&77u64.to_be_bytes()); // clock
        b.extend_from_slice(&5u32.to_be_bytes()); // resets
        b.extend_from_slice(&0u32.to_be_bytes());
        b.push(1);
        b.extend_from_slice(&0u64.to_be_bytes());
        b.extend_from_slice(&1u32.to_be_bytes());
        b.extend_from_slice(&0x000bu16.to_be_bytes());
        b.push(3);
        b.extend_from_slice(&[0, 0x40, 0]); // PCR 14
        b.extend_from_slice(&32u16.to_be_bytes());
        b.extend_from_slice(&[9; 32]);
        let q = parse_quote(&b).unwrap();
        assert_eq!(q.extra_data, vec![1, 2, 3]);
        assert_eq!(q.clock, 77);
        assert_eq!(q.reset_count, 5);
        assert_eq!(q.selection, vec![(0x000b, vec![14])]);
        assert_eq!(q.pcr_digest, vec![9; 32]);
        assert!(parse_quote(&b[..20]).is_err());
        b[5] = 0x17;
        assert!(parse_quote(&b).unwrap_err().contains("not a quote"));
    }

    #[test]
    fn nonce_parsing() {
        assert_eq!(parse_nonce("0a0b").unwrap(), vec![10, 11]);
        assert!(parse_nonce("").is_err());
        assert!(parse_nonce("zz").is_err());
        assert!(parse_nonce(&"00".repeat(65)).is_err());
    }
}
