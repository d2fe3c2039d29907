//! A real evidence bundle from swtpm with every kind of record the
//! verifier reads (manifest, models, a guard start and stop, a denied
//! tamper attempt, a policy load, a note), for the fuzz seeds and the
//! mutation properties. Included with `#[path]` next to `mod common;`.

use guardian::{
    attest::{Trust, Verdict, bundle, verify},
    evidence::{
        Event, Ledger,
        event::{PolicyEvent, PolicySetEvent, TamperEvent},
        ledger,
    },
    signing::TrustedKey,
};

use crate::common::{Board, Swtpm, guardian, stderr};

/// The verifier's nonce the bundle answers.
pub const NONCE: &str = "f00df00df00df00df00df00df00df00d";
/// The PCR the board measures into (the manifest's default).
pub const PCR: u32 = 14;

/// A measured board with a quote: the TPM, the board, the bundle's bytes.
pub struct Quoted {
    /// Held, not read: the swtpm stops when this is dropped.
    #[allow(dead_code)]
    pub tpm: Swtpm,
    pub board: Board,
    pub bundle: Vec<u8>,
}

impl Quoted {
    /// Measure a fresh board, add the daemon's kinds of records through
    /// the ledger (as the attestor writes them), and quote.
    pub fn make() -> Self {
        Self::make_with(|l| {
            l.record(PCR, policy_set("start", 0, 0)).unwrap();
            l.record(PCR, policy_set("push", 2, 2)).unwrap();
        })
    }

    /// As [`Quoted::make`], with `more` records written through the ledger
    /// before the quote.
    pub fn make_with(more: impl FnOnce(&mut Ledger)) -> Self {
        let tpm = Swtpm::start();
        let board = Board::new(&tpm.tcti());
        let out = board.measure();
        assert!(out.status.success(), "{}", stderr(&out));
        {
            let t = ledger::open_tpm(Some(&tpm.tcti())).unwrap();
            let mut l = Ledger::open(&board.p("measurements.log"), Some(t.tpm)).unwrap();
            l.record(
                PCR,
                ledger::guard_event("start", "enforce", "file_write_open via lsm"),
            )
            .unwrap();
            l.record(
                PCR,
                Event::Tamper(TamperEvent {
                    file: board.s("models/classifier.onnx"),
                    outcome: "denied".into(),
                    folded: 2,
                    event: serde_json::json!({
                        "event": "file_write_open", "verdict": "deny", "mode": "enforce",
                        "hook": "lsm/file_open", "pid": 4242, "exe": "/usr/bin/dd", "uid": 0
                    }),
                }),
            )
            .unwrap();
            l.record(
                PCR,
                Event::Policy(PolicyEvent {
                    name: "no-writers".into(),
                    file: "/etc/guardian/policies/no-writers.wasm".into(),
                    sha256: "ab".repeat(32),
                    signer: "cd".repeat(32),
                    abi: 2,
                    generation: 1,
                }),
            )
            .unwrap();
            more(&mut l);
            l.note("a note: never extended, not evidence").unwrap();
            l.record(
                PCR,
                ledger::guard_event("stop", "enforce", "programs stay pinned"),
            )
            .unwrap();
        }
        let out = guardian(&[
            "quote",
            "-c",
            &board.s("guardian.toml"),
            "--nonce",
            NONCE,
            "-o",
            &board.s("ev.json"),
            "--ak-out",
            &board.s("ak.pem"),
            "--raw",
            &board.s("ev.json"),
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        let bundle = std::fs::read(board.p("ev.json")).unwrap();
        Self { tpm, board, bundle }
    }

    /// The enrolled AK and the vendor's manifest key, as a verifier holds them.
    pub fn keys(&self) -> (p256::ecdsa::VerifyingKey, Vec<TrustedKey>) {
        keys(&self.board.p("ak.pem"), &self.board.p("vendor.pub"))
    }
}

/// A pushed policy set record for group `cameras`: `version` in force,
/// `floor` kept.
pub fn policy_set(cause: &str, version: u64, floor: u64) -> Event {
    let digest = |v: u64| {
        if v == 0 {
            String::new()
        } else {
            format!("{v:02x}").repeat(32)
        }
    };
    Event::PolicySet(PolicySetEvent {
        group: "cameras".into(),
        version,
        sha256: digest(version),
        signer: if version == 0 {
            String::new()
        } else {
            "cd".repeat(32)
        },
        cause: cause.into(),
        floor,
        floor_store: "file".into(),
    })
}

/// An AK and a manifest key from their PEM files.
pub fn keys(
    ak: &std::path::Path,
    vendor: &std::path::Path,
) -> (p256::ecdsa::VerifyingKey, Vec<TrustedKey>) {
    (
        guardian::attest::read_ak(ak).unwrap(),
        vec![TrustedKey::load(vendor).unwrap()],
    )
}

/// Stateless verification of `evidence` for `nonce` (hex), PCR 14.
pub fn judge(
    evidence: &bundle::Evidence,
    ak: &p256::ecdsa::VerifyingKey,
    keys: &[TrustedKey],
    nonce: &str,
) -> Verdict {
    let nonce = hex::decode(nonce).unwrap();
    verify(
        evidence,
        &Trust {
            ak,
            nonce: &nonce,
            pcrs: &[PCR],
            manifest_keys: keys,
            golden: None,
            require_guard: false,
        },
        None,
    )
}
