//! The TPM's own structures, parsed by hand and bounded: `TPMS_ATTEST` of
//! a quote and `TPMT_SIGNATURE` (ECDSA). Every length is checked before it
//! is used and trailing bytes are refused, so a malformed or hostile
//! structure is an error, never a panic or a misread.

use p256::ecdsa::Signature;

/// `TPM_GENERATED_VALUE`: the first field of every TPMS_ATTEST the TPM makes.
pub const TPM_GENERATED: u32 = 0xff54_4347;
/// `TPM_ST_ATTEST_QUOTE`.
pub const ST_ATTEST_QUOTE: u16 = 0x8018;
/// `TPM_ALG_SHA256`.
pub const ALG_SHA256: u16 = 0x000b;
/// `TPM_ALG_ECDSA`.
pub const ALG_ECDSA: u16 = 0x0018;

/// A parsed `TPMS_ATTEST` of type quote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuoteInfo {
    /// `qualifiedSigner`: the name of the key that signed.
    pub signer: Vec<u8>,
    /// `extraData`: the nonce.
    pub extra_data: Vec<u8>,
    /// `clockInfo.clock`: milliseconds the TPM has been powered, never
    /// going back while `safe`.
    pub clock: u64,
    /// `clockInfo.resetCount`: TPM resets (boots).
    pub reset_count: u32,
    /// `clockInfo.restartCount`: restarts and resumes since the last reset.
    pub restart_count: u32,
    /// `clockInfo.safe`: the clock has not gone back since it was last
    /// written.
    pub safe: bool,
    /// `firmwareVersion`.
    pub firmware: u64,
    /// Selected PCRs: (hash algorithm, PCR indices, ascending).
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
        let end = self.at.checked_add(n).ok_or("length overflow")?;
        let s = self
            .b
            .get(self.at..end)
            .ok_or_else(|| format!("truncated at byte {}", self.at))?;
        self.at = end;
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
    fn done(&self) -> Result<(), String> {
        if self.at == self.b.len() {
            Ok(())
        } else {
            Err(format!("{} trailing byte(s)", self.b.len() - self.at))
        }
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
    let signer = r.sized()?.to_vec();
    let extra_data = r.sized()?.to_vec();
    let clock = r.u64()?;
    let reset_count = r.u32()?;
    let restart_count = r.u32()?;
    let safe = match r.u8()? {
        0 => false,
        1 => true,
        v => return Err(format!("clockInfo.safe is {v}, not a TPMI_YES_NO")),
    };
    let firmware = r.u64()?;
    let count = r.u32()?;
    if count > 16 {
        return Err(format!("{count} PCR banks selected"));
    }
    let mut selection = Vec::new();
    for _ in 0..count {
        let alg = r.u16()?;
        let n = r.u8()? as usize;
        if n > 4 {
            return Err(format!("a PCR select of {n} bytes (at most 4: 32 PCRs)"));
        }
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
    r.done()?;
    Ok(QuoteInfo {
        signer,
        extra_data,
        clock,
        reset_count,
        restart_count,
        safe,
        firmware,
        selection,
        pcr_digest,
    })
}

/// Parse a `TPMT_SIGNATURE` that must be ECDSA with SHA-256.
pub fn parse_signature(b: &[u8]) -> Result<Signature, String> {
    let mut r = Reader { b, at: 0 };
    let alg = r.u16()?;
    if alg != ALG_ECDSA {
        return Err(format!("signature algorithm {alg:#06x} is not ECDSA"));
    }
    let hash = r.u16()?;
    if hash != ALG_SHA256 {
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
    r.done()?;
    Signature::from_scalars(rr, ss).map_err(|e| format!("bad ECDSA signature: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&TPM_GENERATED.to_be_bytes());
        b.extend_from_slice(&ST_ATTEST_QUOTE.to_be_bytes());
        b.extend_from_slice(&2u16.to_be_bytes());
        b.extend_from_slice(&[0xaa, 0xbb]); // signer name
        b.extend_from_slice(&3u16.to_be_bytes());
        b.extend_from_slice(&[1, 2, 3]); // nonce
        b.extend_from_slice(&77u64.to_be_bytes()); // clock
        b.extend_from_slice(&5u32.to_be_bytes()); // resets
        b.extend_from_slice(&6u32.to_be_bytes()); // restarts
        b.push(1);
        b.extend_from_slice(&0u64.to_be_bytes());
        b.extend_from_slice(&1u32.to_be_bytes());
        b.extend_from_slice(&ALG_SHA256.to_be_bytes());
        b.push(3);
        b.extend_from_slice(&[0, 0x40, 0]); // PCR 14
        b.extend_from_slice(&32u16.to_be_bytes());
        b.extend_from_slice(&[9; 32]);
        b
    }

    #[test]
    fn parses_a_quote_layout() {
        let mut b = sample();
        let q = parse_quote(&b).unwrap();
        assert_eq!(q.extra_data, vec![1, 2, 3]);
        assert_eq!(q.clock, 77);
        assert_eq!((q.reset_count, q.restart_count, q.safe), (5, 6, true));
        assert_eq!(q.selection, vec![(ALG_SHA256, vec![14])]);
        assert_eq!(q.pcr_digest, vec![9; 32]);
        for n in 0..b.len() {
            assert!(parse_quote(&b[..n]).is_err(), "truncated to {n}");
        }
        let mut long = b.clone();
        long.push(0);
        assert!(parse_quote(&long).unwrap_err().contains("trailing"));
        b[5] = 0x17;
        assert!(parse_quote(&b).unwrap_err().contains("not a quote"));
    }
}
