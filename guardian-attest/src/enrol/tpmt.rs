//! A minimal `TPMT_PUBLIC` parser (TPM 2.0 Part 2, 12.2.4), for the
//! verifier, which has no TPM and must not trust the device's own reading
//! of its keys.
//!
//! Only what enrolment needs: RSA and ECC objects, their name algorithm,
//! attributes, symmetric and signing schemes, curve, and the public key
//! (`unique`). Every length is checked against the input before it is
//! used and against the TPM's own maxima, so malformed input is an error,
//! never a panic or a large allocation. Trailing bytes are an error too: the
//! AK's name is the hash of exactly these bytes, so two parses of one key
//! must not disagree about where it ends.

/// `TPM_ALG_RSA`.
pub const ALG_RSA: u16 = 0x0001;
/// `TPM_ALG_SHA256`.
pub const ALG_SHA256: u16 = 0x000b;
/// `TPM_ALG_SHA384`.
pub const ALG_SHA384: u16 = 0x000c;
/// `TPM_ALG_NULL`.
pub const ALG_NULL: u16 = 0x0010;
/// `TPM_ALG_ECDSA`.
pub const ALG_ECDSA: u16 = 0x0018;
/// `TPM_ALG_ECDAA`.
pub const ALG_ECDAA: u16 = 0x001a;
/// `TPM_ALG_ECC`.
pub const ALG_ECC: u16 = 0x0023;
/// `TPM_ALG_AES`.
pub const ALG_AES: u16 = 0x0006;
/// `TPM_ALG_CFB`.
pub const ALG_CFB: u16 = 0x0043;
/// `TPM_ECC_NIST_P256`.
pub const CURVE_P256: u16 = 0x0003;
/// `TPM_ECC_NIST_P384`.
pub const CURVE_P384: u16 = 0x0004;

/// `TPMA_OBJECT` bits (Part 2, 8.3).
pub mod attr {
    /// The object cannot be duplicated: it never leaves this TPM.
    pub const FIXED_TPM: u32 = 1 << 1;
    /// The parent cannot change.
    pub const FIXED_PARENT: u32 = 1 << 4;
    /// The TPM generated the private part (not imported).
    pub const SENSITIVE_DATA_ORIGIN: u32 = 1 << 5;
    /// USER role may authorise with the auth value.
    pub const USER_WITH_AUTH: u32 = 1 << 6;
    /// ADMIN role needs a policy.
    pub const ADMIN_WITH_POLICY: u32 = 1 << 7;
    /// Signs or decrypts only TPM-formatted data.
    pub const RESTRICTED: u32 = 1 << 16;
    /// A decryption key.
    pub const DECRYPT: u32 = 1 << 17;
    /// A signing key.
    pub const SIGN: u32 = 1 << 18;
}

/// The largest `TPMT_PUBLIC` accepted: a TPM's `TPM2B_PUBLIC` buffer is far
/// smaller (the reference implementation's is 0x400 bytes at most for
/// RSA-4096 with a SHA-512 policy); this bounds the work on hostile input.
pub const MAX_PUBLIC: usize = 2048;

/// Why a public area was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TpmtError {
    /// The input ended inside a field.
    #[error("TPMT_PUBLIC truncated reading {field} at offset {offset}")]
    Truncated {
        /// The field being read.
        field: &'static str,
        /// Where.
        offset: usize,
    },
    /// A size field larger than the TPM allows for it.
    #[error("TPMT_PUBLIC field {field} has size {size}, more than the {max} allowed")]
    TooLarge {
        /// The field.
        field: &'static str,
        /// Its declared size.
        size: usize,
        /// The maximum.
        max: usize,
    },
    /// Bytes after the structure.
    #[error("{0} trailing byte(s) after the TPMT_PUBLIC")]
    Trailing(usize),
    /// An object type other than RSA or ECC.
    #[error("object type {0:#06x} is neither RSA nor ECC")]
    UnsupportedType(u16),
    /// A `TPM2B_PUBLIC` whose size prefix disagrees with its length.
    #[error("TPM2B_PUBLIC says {declared} bytes but holds {actual}")]
    Tpm2bSize {
        /// The size prefix.
        declared: usize,
        /// The bytes after it.
        actual: usize,
    },
}

/// A symmetric definition (`TPMT_SYM_DEF_OBJECT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SymDef {
    /// Algorithm (`TPM_ALG_NULL` when none).
    pub algorithm: u16,
    /// Key bits (0 when none).
    pub key_bits: u16,
    /// Mode (0 when none).
    pub mode: u16,
}

/// A scheme with an optional hash (`TPMT_*_SCHEME`, `TPMT_KDF_SCHEME`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scheme {
    /// Scheme algorithm (`TPM_ALG_NULL` when none).
    pub scheme: u16,
    /// Its hash (0 when none).
    pub hash: u16,
}

/// The type-specific part of the public area.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Params {
    /// `TPMS_RSA_PARMS` and `unique.rsa`.
    Rsa {
        /// Symmetric definition (for storage keys, EKs).
        symmetric: SymDef,
        /// Signing/decryption scheme.
        scheme: Scheme,
        /// Modulus bits.
        key_bits: u16,
        /// Public exponent (0 means 65537).
        exponent: u32,
        /// The modulus, big-endian.
        modulus: Vec<u8>,
    },
    /// `TPMS_ECC_PARMS` and `unique.ecc`.
    Ecc {
        /// Symmetric definition (for storage keys, EKs).
        symmetric: SymDef,
        /// Signing/key-exchange scheme.
        scheme: Scheme,
        /// `TPM_ECC_CURVE`.
        curve: u16,
        /// KDF scheme.
        kdf: Scheme,
        /// X coordinate, big-endian.
        x: Vec<u8>,
        /// Y coordinate, big-endian.
        y: Vec<u8>,
    },
}

/// A parsed `TPMT_PUBLIC`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpmtPublic {
    /// `nameAlg`.
    pub name_alg: u16,
    /// `objectAttributes` (`TPMA_OBJECT`).
    pub attributes: u32,
    /// `authPolicy`.
    pub auth_policy: Vec<u8>,
    /// Type-specific parameters and key.
    pub params: Params,
}

impl TpmtPublic {
    /// Parse a marshalled `TPMT_PUBLIC`, all of it.
    pub fn parse(bytes: &[u8]) -> Result<Self, TpmtError> {
        if bytes.len() > MAX_PUBLIC {
            return Err(TpmtError::TooLarge {
                field: "TPMT_PUBLIC",
                size: bytes.len(),
                max: MAX_PUBLIC,
            });
        }
        let mut r = Reader { bytes, at: 0 };
        let kind = r.u16("type")?;
        let name_alg = r.u16("nameAlg")?;
        let attributes = r.u32("objectAttributes")?;
        // TPM2B_DIGEST: at most a SHA-512 digest.
        let auth_policy = r.tpm2b("authPolicy", 64)?.to_vec();
        let params = match kind {
            ALG_RSA => {
                let symmetric = r.sym_def()?;
                let scheme = r.scheme("RSA scheme", false)?;
                let key_bits = r.u16("keyBits")?;
                let exponent = r.u32("exponent")?;
                // TPM2B_PUBLIC_KEY_RSA: MAX_RSA_KEY_BYTES (512, RSA-4096).
                let modulus = r.tpm2b("unique.rsa", 512)?.to_vec();
                Params::Rsa {
                    symmetric,
                    scheme,
                    key_bits,
                    exponent,
                    modulus,
                }
            }
            ALG_ECC => {
                let symmetric = r.sym_def()?;
                let scheme = r.scheme("ECC scheme", true)?;
                let curve = r.u16("curveID")?;
                let kdf = r.scheme("KDF scheme", false)?;
                // TPM2B_ECC_PARAMETER: MAX_ECC_KEY_BYTES (66, P-521).
                let x = r.tpm2b("unique.ecc.x", 66)?.to_vec();
                let y = r.tpm2b("unique.ecc.y", 66)?.to_vec();
                Params::Ecc {
                    symmetric,
                    scheme,
                    curve,
                    kdf,
                    x,
                    y,
                }
            }
            other => return Err(TpmtError::UnsupportedType(other)),
        };
        if r.at != bytes.len() {
            return Err(TpmtError::Trailing(bytes.len() - r.at));
        }
        Ok(Self {
            name_alg,
            attributes,
            auth_policy,
            params,
        })
    }

    /// Parse a marshalled `TPM2B_PUBLIC` (size prefix, then `TPMT_PUBLIC`);
    /// returns the parsed area and the `TPMT_PUBLIC` bytes (what the name
    /// is computed over).
    pub fn parse_tpm2b(bytes: &[u8]) -> Result<(Self, &[u8]), TpmtError> {
        let (size, rest) = match bytes {
            [a, b, rest @ ..] => (usize::from(u16::from_be_bytes([*a, *b])), rest),
            _ => {
                return Err(TpmtError::Truncated {
                    field: "TPM2B_PUBLIC size",
                    offset: 0,
                });
            }
        };
        if size != rest.len() {
            return Err(TpmtError::Tpm2bSize {
                declared: size,
                actual: rest.len(),
            });
        }
        Ok((Self::parse(rest)?, rest))
    }

    /// True if every bit of `bits` is set.
    pub fn has(&self, bits: u32) -> bool {
        self.attributes & bits == bits
    }

    /// The symmetric definition (RSA or ECC).
    pub fn symmetric(&self) -> SymDef {
        match &self.params {
            Params::Rsa { symmetric, .. } | Params::Ecc { symmetric, .. } => *symmetric,
        }
    }
}

/// A bounds-checked cursor.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], TpmtError> {
        let out = self
            .at
            .checked_add(n)
            .and_then(|end| self.bytes.get(self.at..end))
            .ok_or(TpmtError::Truncated {
                field,
                offset: self.at,
            })?;
        self.at += n;
        Ok(out)
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, TpmtError> {
        let b = self.take(2, field)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, TpmtError> {
        let b = self.take(4, field)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn tpm2b(&mut self, field: &'static str, max: usize) -> Result<&'a [u8], TpmtError> {
        let size = usize::from(self.u16(field)?);
        if size > max {
            return Err(TpmtError::TooLarge { field, size, max });
        }
        self.take(size, field)
    }

    fn sym_def(&mut self) -> Result<SymDef, TpmtError> {
        let algorithm = self.u16("symmetric.algorithm")?;
        if algorithm == ALG_NULL {
            return Ok(SymDef {
                algorithm,
                key_bits: 0,
                mode: 0,
            });
        }
        Ok(SymDef {
            algorithm,
            key_bits: self.u16("symmetric.keyBits")?,
            mode: self.u16("symmetric.mode")?,
        })
    }

    /// A scheme: algorithm, then (unless NULL) its hash; ECDAA also has a
    /// count (Part 2, 11.2.3.2 `TPMS_SCHEME_ECDAA`).
    fn scheme(&mut self, field: &'static str, ecc: bool) -> Result<Scheme, TpmtError> {
        let scheme = self.u16(field)?;
        if scheme == ALG_NULL {
            return Ok(Scheme { scheme, hash: 0 });
        }
        let hash = self.u16(field)?;
        if ecc && scheme == ALG_ECDAA {
            self.u16(field)?;
        }
        Ok(Scheme { scheme, hash })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A TPMT_PUBLIC of an ECC P-256 AK as tss-esapi's `create_ak` makes it
    /// (attributes 0x00050072), with `x`/`y` as given.
    pub(crate) fn ecc_ak(attributes: u32, x: &[u8; 32], y: &[u8; 32]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend(ALG_ECC.to_be_bytes());
        v.extend(ALG_SHA256.to_be_bytes());
        v.extend(attributes.to_be_bytes());
        v.extend(0u16.to_be_bytes()); // empty authPolicy
        v.extend(ALG_NULL.to_be_bytes()); // symmetric
        v.extend(ALG_ECDSA.to_be_bytes());
        v.extend(ALG_SHA256.to_be_bytes());
        v.extend(CURVE_P256.to_be_bytes());
        v.extend(ALG_NULL.to_be_bytes()); // kdf
        v.extend(32u16.to_be_bytes());
        v.extend(x);
        v.extend(32u16.to_be_bytes());
        v.extend(y);
        v
    }

    #[test]
    fn parses_an_ecc_ak() {
        let t = TpmtPublic::parse(&ecc_ak(0x0005_0072, &[1; 32], &[2; 32])).unwrap();
        assert_eq!(t.name_alg, ALG_SHA256);
        assert!(t.has(attr::RESTRICTED | attr::SIGN | attr::FIXED_TPM));
        match t.params {
            Params::Ecc {
                scheme, curve, x, ..
            } => {
                assert_eq!(scheme.scheme, ALG_ECDSA);
                assert_eq!(scheme.hash, ALG_SHA256);
                assert_eq!(curve, CURVE_P256);
                assert_eq!(x, vec![1; 32]);
            }
            other => panic!("not ECC: {other:?}"),
        }
    }

    #[test]
    fn refuses_trailing_and_bad_tpm2b_size() {
        let mut v = ecc_ak(0x0005_0072, &[1; 32], &[2; 32]);
        v.push(0);
        assert_eq!(TpmtPublic::parse(&v), Err(TpmtError::Trailing(1)));
        v.pop();
        let mut b = ((v.len() + 1) as u16).to_be_bytes().to_vec();
        b.extend(&v);
        assert!(matches!(
            TpmtPublic::parse_tpm2b(&b),
            Err(TpmtError::Tpm2bSize { .. })
        ));
    }

    /// Every truncation and many random mutations of a valid area: the
    /// parser returns (Ok or Err), never panics, never reads past the end.
    /// A small xorshift instead of proptest keeps the dependency tree and
    /// the 2-core build short; the search is deterministic and repeatable.
    #[test]
    fn malformed_input_never_panics() {
        let good = ecc_ak(0x0005_0072, &[7; 32], &[9; 32]);
        for n in 0..good.len() {
            assert!(TpmtPublic::parse(&good[..n]).is_err(), "prefix {n} parsed");
        }
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..200_000 {
            let mut v = good.clone();
            for _ in 0..(next() % 6 + 1) {
                let i = (next() as usize) % v.len();
                v[i] = next() as u8;
            }
            let cut = (next() as usize) % (v.len() + 8);
            v.resize(cut, 0xff);
            let _ = TpmtPublic::parse(&v);
            let _ = TpmtPublic::parse_tpm2b(&v);
        }
        // Sizes at their maxima and beyond.
        let mut huge = vec![0u8; MAX_PUBLIC + 1];
        huge[1] = 0x23;
        assert!(matches!(
            TpmtPublic::parse(&huge),
            Err(TpmtError::TooLarge { .. })
        ));
        let mut v = Vec::new();
        v.extend(ALG_RSA.to_be_bytes());
        v.extend(ALG_SHA256.to_be_bytes());
        v.extend(0u32.to_be_bytes());
        v.extend(0xffffu16.to_be_bytes());
        assert!(matches!(
            TpmtPublic::parse(&v),
            Err(TpmtError::TooLarge {
                field: "authPolicy",
                ..
            })
        ));
    }
}
