//! Properties of the parsers an attacker feeds (the fuzz targets in
//! `fuzz/` explore the same code by coverage; these run in `cargo test`):
//!
//! - arbitrary bytes give a clean error, never a panic: the TPM's quote
//!   structures, the measurement log, the manifest, the evidence bundle,
//!   the JSON security events, the policy wire format and static rules;
//! - what a writer writes reads back the same: the measurement log through
//!   the real appender (`Log::append`), the manifest through its TOML, the
//!   quote structures through an encoder written here from the TPM 2.0
//!   layout, policy events through guardian's encoder and postcard, static
//!   rules through postcard;
//! - the policy decoders agree: the hand-written wire decoder a module
//!   runs, postcard's, the header and the in-place view.

// Tests panic on purpose: the failing line is the report.
use std::collections::BTreeSet;

use guardian::{
    attest::{
        parse_evidence,
        quote::{
            ALG_ECDSA, ALG_SHA256, QuoteInfo, ST_ATTEST_QUOTE, TPM_GENERATED, parse_quote,
            parse_signature,
        },
    },
    evidence::{
        Event as Ev, Record,
        event::{GuardEvent, ManifestEvent, ModelEvent, NoteEvent, PolicyEvent, TamperEvent},
        log,
    },
    manifest::{Entry, Manifest},
    policy::{JsonEvent, module::decode_static_rules},
};
use guardian_policy_abi::{
    Detail, Dev, Egress, Event, IpAddr, KernelVerdict, Kind, Mode, OwnedStaticRules,
    wire::{EventView, Header},
};
use proptest::prelude::*;

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

/// Any text, control characters and all.
fn text(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), 0..max).prop_map(String::from_iter)
}

fn hex32() -> impl Strategy<Value = String> {
    any::<[u8; 32]>().prop_map(hex::encode)
}

// ---------------------------------------------------------------------
// The quote structures.
// ---------------------------------------------------------------------

/// `TPMS_ATTEST` of a quote, from the TPM 2.0 layout (Part 2, 10.12.12),
/// with the shortest PCR bitmaps.
fn encode_quote(q: &QuoteInfo) -> Vec<u8> {
    let mut b = Vec::new();
    let sized = |b: &mut Vec<u8>, v: &[u8]| {
        b.extend_from_slice(&u16::try_from(v.len()).unwrap().to_be_bytes());
        b.extend_from_slice(v);
    };
    b.extend_from_slice(&TPM_GENERATED.to_be_bytes());
    b.extend_from_slice(&ST_ATTEST_QUOTE.to_be_bytes());
    sized(&mut b, &q.signer);
    sized(&mut b, &q.extra_data);
    b.extend_from_slice(&q.clock.to_be_bytes());
    b.extend_from_slice(&q.reset_count.to_be_bytes());
    b.extend_from_slice(&q.restart_count.to_be_bytes());
    b.push(u8::from(q.safe));
    b.extend_from_slice(&q.firmware.to_be_bytes());
    b.extend_from_slice(&(q.selection.len() as u32).to_be_bytes());
    for (alg, pcrs) in &q.selection {
        b.extend_from_slice(&alg.to_be_bytes());
        let n = pcrs.iter().map(|p| p / 8 + 1).max().unwrap_or(0) as usize;
        let mut bits = vec![0u8; n];
        for p in pcrs {
            bits[(p / 8) as usize] |= 1 << (p % 8);
        }
        b.push(n as u8);
        b.extend_from_slice(&bits);
    }
    sized(&mut b, &q.pcr_digest);
    b
}

fn quote_info() -> impl Strategy<Value = QuoteInfo> {
    let selection = prop::collection::vec(
        (any::<u16>(), prop::collection::btree_set(0u32..32, 0..8)),
        0..=16,
    )
    .prop_map(|v| {
        v.into_iter()
            .map(|(a, s)| (a, s.into_iter().collect::<Vec<u32>>()))
            .collect::<Vec<_>>()
    });
    (
        (
            bytes(70),
            bytes(65),
            any::<u64>(),
            any::<u32>(),
            any::<u32>(),
        ),
        (any::<bool>(), any::<u64>(), selection, bytes(65)),
    )
        .prop_map(
            |(
                (signer, extra_data, clock, reset_count, restart_count),
                (safe, firmware, selection, pcr_digest),
            )| QuoteInfo {
                signer,
                extra_data,
                clock,
                reset_count,
                restart_count,
                safe,
                firmware,
                selection,
                pcr_digest,
            },
        )
}

proptest! {
    #[test]
    fn quote_structures_never_panic(b in bytes(300)) {
        let _ = parse_quote(&b);
        let _ = parse_signature(&b);
    }

    #[test]
    fn quote_reads_what_the_tpm_layout_says(q in quote_info(), extra in 1usize..4) {
        let b = encode_quote(&q);
        prop_assert_eq!(parse_quote(&b), Ok(q));
        // Exactly one structure: one byte less or more is refused.
        for n in [0, b.len() / 2, b.len() - 1] {
            prop_assert!(parse_quote(&b[..n]).is_err());
        }
        let mut longer = b.clone();
        longer.extend(std::iter::repeat_n(0, extra));
        prop_assert!(parse_quote(&longer).unwrap_err().contains("trailing"));
    }

    #[test]
    fn quote_refuses_bad_magic_type_and_flags(q in quote_info(), at in 0usize..6, x in 1u8..) {
        let mut b = encode_quote(&q);
        b[at] ^= x;
        prop_assert!(parse_quote(&b).is_err());
    }

    #[test]
    fn signature_reads_any_ecdsa_signature(seed in any::<[u8; 32]>(), msg in bytes(64)) {
        use p256::ecdsa::{Signature, SigningKey, signature::Signer as _};
        prop_assume!(SigningKey::from_slice(&seed).is_ok());
        let key = SigningKey::from_slice(&seed).unwrap();
        let sig: Signature = key.sign(&msg);
        let (r, s) = sig.split_bytes();
        // The TPM sends each scalar as a TPM2B, leading zeros and all, or
        // without them: both read the same.
        for strip in [false, true] {
            let mut b = Vec::new();
            b.extend_from_slice(&ALG_ECDSA.to_be_bytes());
            b.extend_from_slice(&ALG_SHA256.to_be_bytes());
            for v in [&r[..], &s[..]] {
                let v = if strip {
                    &v[v.iter().position(|x| *x != 0).unwrap_or(v.len())..]
                } else {
                    v
                };
                b.extend_from_slice(&(v.len() as u16).to_be_bytes());
                b.extend_from_slice(v);
            }
            prop_assert_eq!(parse_signature(&b), Ok(sig));
            prop_assert!(parse_signature(&b[..b.len() - 1]).is_err());
            let mut other = b.clone();
            other[1] ^= 1;
            prop_assert!(parse_signature(&other).is_err(), "another algorithm");
        }
    }
}

// ---------------------------------------------------------------------
// The measurement log.
// ---------------------------------------------------------------------

/// JSON values as a security event carries them (integers, strings,
/// nested objects and arrays).
fn json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        text(12).prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map(text(6), inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn event() -> impl Strategy<Value = Ev> {
    prop_oneof![
        (
            text(20),
            hex32(),
            any::<u64>(),
            text(60),
            bytes(64),
            text(8),
            text(8),
            prop::option::of(text(12))
        )
            .prop_map(
                |(file, sha256, serial, text, sig, signer, cause, model_dir)| {
                    Ev::Manifest(ManifestEvent {
                        file,
                        sha256,
                        serial,
                        text,
                        signature: hex::encode(sig),
                        signer,
                        cause,
                        model_dir,
                    })
                }
            ),
        (
            text(20),
            hex32(),
            any::<u64>(),
            hex32(),
            any::<usize>(),
            text(8)
        )
            .prop_map(|(file, sha256, size, manifest, entry, cause)| {
                Ev::Model(ModelEvent {
                    file,
                    sha256,
                    size,
                    manifest,
                    entry,
                    cause,
                })
            }),
        (
            text(8),
            text(20),
            hex32(),
            text(8),
            any::<u32>(),
            any::<u64>()
        )
            .prop_map(|(name, file, sha256, signer, abi, generation)| {
                Ev::Policy(PolicyEvent {
                    name,
                    file,
                    sha256,
                    signer,
                    abi,
                    generation,
                })
            }),
        (text(20), text(8), any::<u64>(), json()).prop_map(|(file, outcome, folded, event)| {
            Ev::Tamper(TamperEvent {
                file,
                outcome,
                folded,
                event,
            })
        }),
        (text(8), text(8), any::<u32>(), text(30)).prop_map(|(action, mode, pid, detail)| {
            Ev::Guard(GuardEvent {
                action,
                mode,
                pid,
                detail,
            })
        }),
        text(30).prop_map(|text| Ev::Note(NoteEvent { text })),
    ]
}

/// Records as the ledger makes them: a PCR, an event, extended or not
/// (never a note).
fn records(max: usize) -> impl Strategy<Value = Vec<Record>> {
    prop::collection::vec((0u32..24, event(), any::<bool>()), 0..max).prop_map(|v| {
        v.into_iter()
            .map(|(pcr, ev, extended)| {
                let mut r = Record::new(pcr, ev);
                r.extended = extended && !r.is_note();
                r
            })
            .collect()
    })
}

/// The log's bytes as the appender writes them.
fn lines(records: &[Record]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        out.extend(serde_json::to_vec(r).unwrap());
        out.push(b'\n');
    }
    out
}

/// Sequence numbers, boot id and time as the log fills them in.
fn numbered(mut records: Vec<Record>, boot: &str) -> Vec<Record> {
    for (i, r) in records.iter_mut().enumerate() {
        r.seq = i as u64;
        r.boot_id = boot.to_owned();
        r.time = "2026-12-04T10:00:00.000000Z".into();
    }
    records
}

proptest! {
    #[test]
    fn log_never_panics(b in bytes(600)) {
        let _ = log::parse(&b);
    }

    #[test]
    fn log_lines_that_look_like_records_never_panic(
        lines in prop::collection::vec(json(), 0..6),
        torn in bytes(8),
    ) {
        let mut b = Vec::new();
        for l in &lines {
            b.extend(serde_json::to_vec(l).unwrap());
            b.push(b'\n');
        }
        b.extend(torn);
        let _ = log::parse(&b);
    }

    #[test]
    fn log_reads_back_what_the_writer_wrote(recs in records(8), boot in text(12)) {
        let recs = numbered(recs, &boot);
        let b = lines(&recs);
        let c = log::parse(&b).unwrap();
        prop_assert_eq!(&c.records, &recs);
        prop_assert_eq!((c.good_len as usize, c.torn_bytes), (b.len(), 0));
        // Replay is the fold of the extended records, per PCR.
        for pcr in 0..24 {
            let want = recs
                .iter()
                .filter(|r| r.extended && r.pcr == pcr)
                .fold([0u8; 32], |v, r| log::extend(&v, &r.digest_bytes()));
            prop_assert_eq!(c.replay(pcr, &boot), want);
        }
    }

    #[test]
    fn log_reports_a_torn_tail_and_keeps_the_rest(recs in records(5), cut in any::<prop::sample::Index>()) {
        let recs = numbered(recs, "b");
        prop_assume!(!recs.is_empty());
        let b = lines(&recs);
        let last = lines(&recs[..recs.len() - 1]).len();
        // Cut inside the last line, before its newline.
        let at = last + cut.index(b.len() - 1 - last);
        let c = log::parse(&b[..at]).unwrap();
        prop_assert_eq!(&c.records[..], &recs[..recs.len() - 1]);
        prop_assert_eq!((c.good_len as usize, c.torn_bytes), (last, at - last));
    }

    #[test]
    fn log_refuses_an_event_that_is_not_its_digests(recs in records(5), pick in any::<prop::sample::Index>(), other in event()) {
        let mut recs = numbered(recs, "b");
        prop_assume!(!recs.is_empty());
        let i = pick.index(recs.len());
        prop_assume!(!recs[i].is_note() && !matches!(other, Ev::Note(_)));
        prop_assume!(log::Record::new(recs[i].pcr, other.clone()).digest != recs[i].digest);
        recs[i].event = other;
        let e = log::parse(&lines(&recs)).unwrap_err();
        prop_assert_eq!(e.0, i + 1);
        prop_assert!(e.1.contains("altered"), "{}", e.1);
    }
}

proptest! {
    // Each case makes a log file and fsyncs every record.
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn the_appender_writes_what_the_reader_reads(recs in records(6)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ev/measurements.log");
        let mut log = log::Log::open(&path).unwrap();
        let mut written = Vec::new();
        for r in recs {
            written.push(log.append(r).unwrap());
        }
        let back = log::read(&path).unwrap();
        prop_assert_eq!(&back.records, &written);
        prop_assert_eq!(&log.contents().records, &written);
        for (i, r) in written.iter().enumerate() {
            prop_assert_eq!(r.seq, i as u64);
            prop_assert_eq!(r.check(), Ok(()));
        }
    }
}

// ---------------------------------------------------------------------
// The manifest.
// ---------------------------------------------------------------------

fn manifest() -> impl Strategy<Value = Manifest> {
    let entry = (
        prop::collection::vec(text(10), 1..4),
        hex32(),
        any::<u64>(),
        prop::option::of(text(10)),
        prop::option::of(text(10)),
    );
    (8u32..=15, any::<u64>(), prop::collection::vec(entry, 1..5)).prop_map(
        |(pcr, serial, entries)| Manifest {
            version: guardian::manifest::VERSION,
            pcr,
            serial,
            models: entries
                .into_iter()
                .enumerate()
                .map(|(i, (segments, sha256, size, name, version))| Entry {
                    // Unique: the index is part of the path.
                    path: format!("/{i}/{}", segments.join("/")).into(),
                    sha256,
                    size,
                    name,
                    version,
                })
                .collect(),
        },
    )
}

proptest! {
    #[test]
    fn manifest_never_panics(t in text(200)) {
        let _ = Manifest::parse(&t);
    }

    #[test]
    fn manifest_keys_that_look_right_never_panic(
        version in any::<i64>(),
        pcr in any::<i64>(),
        serial in any::<i64>(),
        path in text(12),
        sha in text(70),
        size in any::<i64>(),
    ) {
        let t = format!(
            "version = {version}\npcr = {pcr}\nserial = {serial}\n[[model]]\npath = {path:?}\nsha256 = {sha:?}\nsize = {size}\n"
        );
        let _ = Manifest::parse(&t);
    }

    /// A manifest that passes its rules is one `guardian manifest create`
    /// can write and every reader reads back the same.
    #[test]
    fn manifest_reads_back_its_own_toml(m in manifest()) {
        match m.check() {
            Ok(()) => prop_assert_eq!(Manifest::parse(&m.to_toml()), Ok(m)),
            // Refused before anything is written: never a manifest that
            // reads back as something else.
            Err(e) => prop_assert!(!e.is_empty()),
        }
    }
}

// ---------------------------------------------------------------------
// The evidence bundle and the JSON security events.
// ---------------------------------------------------------------------

proptest! {
    #[test]
    fn bundle_never_panics(b in bytes(400), j in json()) {
        let _ = parse_evidence(&b);
        let _ = parse_evidence(&serde_json::to_vec(&j).unwrap());
    }

    #[test]
    fn json_events_never_panic(t in text(200), j in json()) {
        let _ = JsonEvent::parse(&t).map(|e| e.to_abi().map(|_| ()));
        if let Ok(e) = JsonEvent::parse(&j.to_string()) {
            let _ = e.to_abi();
        }
    }
}

// ---------------------------------------------------------------------
// The policy wire format.
// ---------------------------------------------------------------------

/// An ABI event's owned parts; [`OwnedEvent::event`] borrows them.
#[derive(Clone, Debug)]
struct OwnedEvent {
    kind: Kind,
    kernel: KernelVerdict,
    mode: Mode,
    time_ns: u64,
    hook: Vec<u8>,
    ids: [u32; 5],
    exe: Option<Vec<u8>>,
    exe_dev: (u32, u32),
    exe_ino: u64,
    comm: Vec<u8>,
    service: bool,
    detail: u8,
    path: Vec<u8>,
    opt: Option<Vec<u8>>,
    nums: (u64, u32, u16),
    v6: Option<[u8; 16]>,
}

impl OwnedEvent {
    fn event(&self) -> Event<'_> {
        let detail = match self.detail % 6 {
            0 => Detail::None,
            1 => Detail::File {
                path: &self.path,
                dev: Dev {
                    major: self.exe_dev.1,
                    minor: self.exe_dev.0,
                },
                ino: self.nums.0,
                flags: self.nums.1,
                flags_text: self.opt.as_deref().unwrap_or(b""),
            },
            2 => Detail::Exec {
                path: &self.path,
                env: self.opt.as_deref(),
            },
            3 => Detail::Library { path: &self.path },
            4 => Detail::Ptrace {
                target_pid: self.nums.1,
                target_exe: self.opt.as_deref(),
            },
            _ => Detail::Connect {
                addr: match self.v6 {
                    Some(a) => IpAddr::V6(a),
                    None => IpAddr::V4(self.nums.1.to_be_bytes()),
                },
                port: self.nums.2,
            },
        };
        Event {
            kind: self.kind,
            kernel: self.kernel,
            mode: self.mode,
            time_ns: self.time_ns,
            hook: &self.hook,
            pid: self.ids[0],
            tid: self.ids[1],
            ppid: self.ids[2],
            uid: self.ids[3],
            gid: self.ids[4],
            exe: self.exe.as_deref(),
            exe_dev: Dev {
                major: self.exe_dev.0,
                minor: self.exe_dev.1,
            },
            exe_ino: self.exe_ino,
            comm: &self.comm,
            service: self.service,
            detail,
        }
    }
}

fn abi_event() -> impl Strategy<Value = OwnedEvent> {
    (
        (
            prop::sample::select(Kind::ALL.to_vec()),
            prop::sample::select(vec![
                KernelVerdict::Allow,
                KernelVerdict::Alert,
                KernelVerdict::Deny,
            ]),
            prop::sample::select(vec![Mode::Enforce, Mode::Detect]),
            any::<u64>(),
            bytes(40),
            any::<[u32; 5]>(),
            prop::option::of(bytes(40)),
        ),
        (
            any::<(u32, u32)>(),
            any::<u64>(),
            bytes(20),
            any::<bool>(),
            any::<u8>(),
            bytes(300),
            prop::option::of(bytes(20)),
            any::<(u64, u32, u16)>(),
            prop::option::of(any::<[u8; 16]>()),
        ),
    )
        .prop_map(
            |(
                (kind, kernel, mode, time_ns, hook, ids, exe),
                (exe_dev, exe_ino, comm, service, detail, path, opt, nums, v6),
            )| OwnedEvent {
                kind,
                kernel,
                mode,
                time_ns,
                hook,
                ids,
                exe,
                exe_dev,
                exe_ino,
                comm,
                service,
                detail,
                path,
                opt,
                nums,
                v6,
            },
        )
}

/// The wire decoder's one documented difference from postcard on a
/// 64-bit host: a length varint of six to ten bytes (five or more
/// continuation bytes in a row among what postcard read).
fn overlong_length(b: &[u8]) -> bool {
    postcard::take_from_bytes::<Event<'_>>(b).is_ok_and(|(_, rest)| {
        b[..b.len() - rest.len()]
            .windows(5)
            .any(|w| w.iter().all(|x| *x >= 0x80))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// On any bytes, the module's decoder and postcard agree (but for
    /// the documented over-long length varint), and nothing that reads
    /// events in place panics.
    #[test]
    fn wire_decoders_agree_on_any_bytes(b in bytes(120)) {
        let (wire, serde) = (Event::decode(&b), postcard::from_bytes::<Event<'_>>(&b).ok());
        prop_assert!(wire == serde || (wire.is_none() && overlong_length(&b)), "{wire:?} / {serde:?}");
        for v in [EventView::new(&b), EventView::with_header(&b)] {
            let _ = (v.kind(), v.kernel(), v.mode(), v.time_ns(), v.hook(), v.ids());
            let _ = (v.exe(), v.service(), v.exe_dev_ino_comm(), v.detail());
            let _ = (v.path(), v.connect(), v.decode());
        }
        let _ = Header::of(&b);
    }

    /// Truncated or extended encodings of a real event: the decoders
    /// still agree and never panic.
    #[test]
    fn wire_decoders_agree_on_damaged_events(o in abi_event(), cut in any::<prop::sample::Index>(), flip in any::<(prop::sample::Index, u8)>()) {
        let mut b = postcard::to_allocvec(&o.event()).unwrap();
        let at = flip.0.index(b.len());
        b[at] ^= flip.1;
        let b = &b[..cut.index(b.len() + 1)];
        let (wire, serde) = (Event::decode(b), postcard::from_bytes::<Event<'_>>(b).ok());
        prop_assert!(wire == serde || (wire.is_none() && overlong_length(b)), "{wire:?} / {serde:?}");
        let v = EventView::new(b);
        let _ = (v.hook(), v.exe(), v.exe_dev_ino_comm(), v.path(), v.connect(), v.detail());
    }

    /// guardian's encoder writes postcard's bytes; they decode to the
    /// event; the header points at its fields; the view reads them.
    #[test]
    fn wire_encoding_reads_back(o in abi_event()) {
        let e = o.event();
        let mut buf = vec![0u8; 1024];
        let (n, head) = e.encode(&mut buf).unwrap();
        let enc = &buf[..n];
        prop_assert_eq!(&postcard::to_allocvec(&e).unwrap()[..], enc);
        prop_assert_eq!(Event::decode(enc), Some(e));
        prop_assert_eq!(Header::of(enc), Some(head));
        let mut with = head.to_bytes().to_vec();
        with.extend_from_slice(enc);
        for v in [EventView::new(enc), EventView::with_header(&with)] {
            prop_assert_eq!(v.kind(), e.kind);
            prop_assert_eq!(v.time_ns(), e.time_ns);
            prop_assert_eq!(v.hook(), e.hook);
            prop_assert_eq!(v.ids(), [e.pid, e.tid, e.ppid, e.uid, e.gid]);
            prop_assert_eq!(v.exe(), e.exe);
            prop_assert_eq!(v.service(), e.service);
            prop_assert_eq!(v.exe_dev_ino_comm(), (e.exe_dev, e.exe_ino, e.comm));
            prop_assert_eq!(v.detail(), e.detail);
            prop_assert_eq!(v.path(), e.path());
            prop_assert!(!v.is_malformed());
        }
        // Too small a buffer is refused, never overrun.
        prop_assert!(e.encode(&mut buf[..n - 1]).is_none());
    }
}

fn abs_path() -> impl Strategy<Value = String> {
    text(16).prop_map(|t| format!("/{t}"))
}

fn static_rules() -> impl Strategy<Value = OwnedStaticRules> {
    let paths = || prop::collection::vec(abs_path(), 0..4);
    let egress = (
        any::<bool>(),
        any::<[u8; 16]>(),
        any::<u8>(),
        any::<(u16, u16)>(),
    )
        .prop_map(|(v6, a, prefix, (p, q))| {
            let (net, max) = if v6 {
                (IpAddr::V6(a), 128)
            } else {
                (IpAddr::V4([a[0], a[1], a[2], a[3]]), 32)
            };
            Egress {
                net,
                prefix: prefix % (max + 1),
                ports: (p.min(q), p.max(q)),
            }
        });
    (
        paths(),
        prop::option::of(paths()),
        prop::option::of(prop::collection::vec(egress, 0..4)),
        prop::option::of(paths()),
        prop::option::of(paths()),
    )
        .prop_map(|(protected, writers, egress, service_exec, library_dirs)| {
            OwnedStaticRules {
                protected,
                writers,
                egress,
                service_exec,
                library_dirs,
            }
        })
}

proptest! {
    #[test]
    fn static_rules_never_panic(b in bytes(200)) {
        let _ = decode_static_rules(&b);
    }

    #[test]
    fn static_rules_read_back(r in static_rules(), extra in bytes(3)) {
        let mut b = postcard::to_allocvec(&r).unwrap();
        prop_assert_eq!(decode_static_rules(&b).unwrap(), r);
        // Anything after the rules is refused.
        if !extra.is_empty() {
            b.extend(extra);
            prop_assert!(decode_static_rules(&b).is_err());
        }
    }

    #[test]
    fn static_rules_refuse_a_relative_path(mut r in static_rules(), rel in text(8), slot in 0usize..4) {
        let rel = format!("x{rel}");
        match slot {
            0 => r.protected.push(rel),
            1 => r.writers.get_or_insert_with(Vec::new).push(rel),
            2 => r.service_exec.get_or_insert_with(Vec::new).push(rel),
            _ => r.library_dirs.get_or_insert_with(Vec::new).push(rel),
        }
        let b = postcard::to_allocvec(&r).unwrap();
        prop_assert!(decode_static_rules(&b).is_err());
    }
}

#[test]
fn quote_selection_bitmaps_of_every_width_read_the_same() {
    // Four bytes of select with only PCR 14 set reads as the two-byte form.
    let mut q = QuoteInfo {
        signer: vec![1],
        extra_data: vec![2; 16],
        clock: 1,
        reset_count: 2,
        restart_count: 3,
        safe: true,
        firmware: 4,
        selection: vec![(ALG_SHA256, vec![14])],
        pcr_digest: vec![9; 32],
    };
    let short = encode_quote(&q);
    let long: Vec<u8> = {
        let at = short.len() - 2 - 32 - 2; // the two bitmap bytes
        let mut l = short[..at - 1].to_vec();
        l.push(4);
        l.extend_from_slice(&[0, 0x40, 0, 0]);
        l.extend_from_slice(&short[at + 2..]);
        l
    };
    assert_eq!(parse_quote(&long).unwrap(), parse_quote(&short).unwrap());
    q.selection = vec![(
        ALG_SHA256,
        (0..32).collect::<BTreeSet<u32>>().into_iter().collect(),
    )];
    assert_eq!(parse_quote(&encode_quote(&q)).unwrap(), q);
}

/// The input the fuzz target found: a zero-length hook written as a
/// nine-byte varint. postcard on this 64-bit host reads it; the module's
/// decoder (like postcard on wasm32) refuses it. Guardian's encoder never
/// writes it, and every shorter form reads the same in both.
#[test]
fn an_overlong_length_is_the_only_difference_from_postcard() {
    let mut b = vec![0u8, 0, 0, 0];
    b.extend_from_slice(&[0x80; 8]);
    b.push(0);
    b.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    let serde = postcard::from_bytes::<Event<'_>>(&b).unwrap();
    assert_eq!(serde.hook, b"");
    assert_eq!(Event::decode(&b), None);
    assert!(overlong_length(&b));
    // The same zero in five bytes or fewer: both read it.
    for n in 0..=4 {
        let mut short = vec![0u8, 0, 0, 0];
        short.extend(std::iter::repeat_n(0x80, n));
        short.push(0);
        short.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            Event::decode(&short),
            postcard::from_bytes::<Event<'_>>(&short).ok(),
            "{n}"
        );
        assert!(Event::decode(&short).is_some(), "{n}");
    }
}

// ---------------------------------------------------------------------
// OpenSSF model signatures.
// ---------------------------------------------------------------------

/// A model-signing statement for `files` (name, content digest), as
/// `model_signing` writes it.
fn model_statement(files: &[(String, [u8; 32])]) -> String {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    let resources: Vec<serde_json::Value> = files
        .iter()
        .map(|(name, d)| {
            h.update(d);
            serde_json::json!({"digest": hex::encode(d), "algorithm": "sha256", "name": name})
        })
        .collect();
    serde_json::json!({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": "model", "digest": {"sha256": hex::encode(h.finalize())}}],
        "predicateType": "https://model_signing/signature/v1.0",
        "predicate": {"resources": resources, "serialization": {
            "hash_type": "sha256", "method": "files", "allow_symlinks": false,
            "ignore_paths": [".git", ".github"]}}
    })
    .to_string()
}

fn model_bundle(payload: &[u8], sig: &[u8]) -> Vec<u8> {
    use base64::Engine as _;
    let e = base64::engine::general_purpose::STANDARD;
    serde_json::json!({
        "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
        "verificationMaterial": {"publicKey": {"hint": "ab"}, "tlogEntries": []},
        "dsseEnvelope": {"payload": e.encode(payload), "payloadType": "application/vnd.in-toto+json",
            "signatures": [{"sig": e.encode(sig), "keyid": ""}]}
    })
    .to_string()
    .into_bytes()
}

fn model_files() -> impl Strategy<Value = Vec<(String, [u8; 32])>> {
    prop::collection::vec(
        (
            prop::collection::vec("[a-z0-9._-]{1,8}", 1..3),
            any::<[u8; 32]>(),
        ),
        1..6,
    )
    .prop_map(|v| {
        v.into_iter()
            .enumerate()
            // Unique (the index is a component), and never `.` or `..`.
            .map(|(i, (segs, d))| {
                let segs: Vec<String> = segs.iter().map(|s| format!("{s}x")).collect();
                (format!("{i}/{}", segs.join("/")), d)
            })
            .collect()
    })
}

proptest! {
    #[test]
    fn model_signature_parsers_never_panic(b in bytes(400)) {
        use guardian_attest::model_sig;
        let _ = model_sig::parse_bundle(&b);
        let _ = model_sig::parse_statement(&b);
        let _ = model_sig::verify_bytes(&b, &[], std::time::SystemTime::now());
    }

    /// What `model_signing` writes reads back file for file, in order; a
    /// changed digest, a changed subject or a cut bundle is refused.
    #[test]
    fn model_statement_reads_back(files in model_files(), cut in 1usize..200) {
        use guardian_attest::model_sig;
        let text = model_statement(&files);
        let s = model_sig::parse_statement(text.as_bytes()).unwrap();
        prop_assert_eq!(s.resources.len(), files.len());
        for (r, (name, d)) in s.resources.iter().zip(&files) {
            prop_assert_eq!(&r.name, name);
            prop_assert_eq!(&r.sha256, &hex::encode(d));
        }
        let other = text.replacen(&hex::encode(files[0].1), &"0".repeat(64), 1);
        if files[0].1 != [0; 32] {
            prop_assert!(model_sig::parse_statement(other.as_bytes()).is_err());
        }
        let bundle = model_bundle(text.as_bytes(), b"sig");
        let b = model_sig::parse_bundle(&bundle).unwrap();
        prop_assert_eq!(b.payload, text.as_bytes().to_vec());
        let cut = bundle.len().saturating_sub(cut);
        prop_assert!(model_sig::parse_bundle(&bundle[..cut]).is_err());
    }
}
