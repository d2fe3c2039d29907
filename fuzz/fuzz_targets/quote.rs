//! The TPM structures of a quote (`TPMS_ATTEST`, `TPMT_SIGNATURE`), parsed
//! by hand in `attest/quote.rs`: bytes from the network, before any
//! signature is checked. Never a panic; what parses is exactly one
//! structure (any byte more or less is refused) and reads back the same
//! through an encoder written here from the TPM 2.0 spec layout.

#![no_main]

use guardian_attest::attest::quote::{
    ALG_ECDSA, ALG_SHA256, QuoteInfo, ST_ATTEST_QUOTE, TPM_GENERATED, parse_quote, parse_signature,
};
use libfuzzer_sys::fuzz_target;

/// `TPMS_ATTEST` of a quote, with the shortest PCR bitmaps.
fn encode(q: &QuoteInfo) -> Vec<u8> {
    let mut b = Vec::new();
    let sized = |b: &mut Vec<u8>, v: &[u8]| {
        b.extend_from_slice(&(v.len() as u16).to_be_bytes());
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

fuzz_target!(|data: &[u8]| {
    if let Ok(q) = parse_quote(data) {
        assert!(q.selection.len() <= 16);
        for (_, pcrs) in &q.selection {
            assert!(pcrs.iter().all(|p| *p < 32), "{pcrs:?}");
            assert!(pcrs.windows(2).all(|w| w[0] < w[1]), "{pcrs:?}");
        }
        assert_eq!(parse_quote(&encode(&q)).as_ref(), Ok(&q));
        assert!(parse_quote(&data[..data.len() - 1]).is_err());
        let mut longer = data.to_vec();
        longer.push(0);
        assert!(parse_quote(&longer).is_err());
    }
    if let Ok(s) = parse_signature(data) {
        // The same signature with full-width scalars reads the same.
        let (r, s_) = s.split_bytes();
        let mut b = Vec::new();
        b.extend_from_slice(&ALG_ECDSA.to_be_bytes());
        b.extend_from_slice(&ALG_SHA256.to_be_bytes());
        for v in [r, s_] {
            b.extend_from_slice(&32u16.to_be_bytes());
            b.extend_from_slice(&v);
        }
        assert_eq!(parse_signature(&b), Ok(s));
        assert!(parse_signature(&data[..data.len() - 1]).is_err());
    }
});
