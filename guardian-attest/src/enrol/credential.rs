//! TPM2_MakeCredential in software (TPM 2.0 Part 1, 24 "Credential
//! protection" and Annex B/C "secret sharing"; Part 3, 12.6): what a
//! verifier without a TPM does to send a secret only the TPM holding both
//! the EK and the named AK can recover.
//!
//! 1. A seed is shared with the EK: for an RSA EK, random and encrypted with
//!    RSA-OAEP (hash = the EK's nameAlg, label `"IDENTITY\0"`); for an ECC
//!    EK, ECDH with a fresh ephemeral key, then `KDFe(nameAlg, Z,
//!    "IDENTITY", Qe.x, Qek.x)`. The encrypted seed (or the ephemeral point)
//!    is the `TPM2B_ENCRYPTED_SECRET`.
//! 2. `KDFa(nameAlg, seed, "STORAGE", name(AK), "")` keys the EK's symmetric
//!    cipher (AES-CFB, zero IV), which encrypts the credential (the secret
//!    as a `TPM2B_DIGEST`).
//! 3. `KDFa(nameAlg, seed, "INTEGRITY", "", "")` keys an HMAC over the
//!    encrypted credential and the AK's name. The TPM checks this HMAC with
//!    the name of the object it was asked to activate, so the credential
//!    opens only for that AK; it can only derive the seed with the EK's
//!    private key.
//!
//! The name binds everything: it is `nameAlg || H(TPMT_PUBLIC)`, so the
//! attributes the verifier checked are the ones the TPM enforces.

use cfb_mode::cipher::{AsyncStreamCipher as _, KeyIvInit as _};
use hmac::{Mac as _, SimpleHmac};
use p256::elliptic_curve;
use rand_core::{CryptoRng, RngCore};
use sha2::{Sha256, Sha384};

use super::tpmt::{self, Params, TpmtPublic};

/// Why a credential could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// A name algorithm other than SHA-256 or SHA-384.
    #[error("name algorithm {0:#06x} is not supported (SHA-256 and SHA-384 are)")]
    NameAlg(u16),
    /// The EK's symmetric definition is not AES-128/256-CFB.
    #[error(
        "EK symmetric definition (algorithm {algorithm:#06x}, {bits} bits, mode {mode:#06x}) is not AES-CFB 128/256"
    )]
    Symmetric {
        /// Algorithm.
        algorithm: u16,
        /// Key bits.
        bits: u16,
        /// Mode.
        mode: u16,
    },
    /// The EK is not a restricted decryption key.
    #[error("the EK is not a restricted decryption key (attributes {0:#010x})")]
    NotStorageKey(u32),
    /// An ECC EK on a curve other than P-256/P-384, or a point off it.
    #[error("EK ECC key: {0}")]
    EccKey(String),
    /// An RSA EK that is not usable.
    #[error("EK RSA key: {source}")]
    RsaKey {
        /// Why.
        #[source]
        source: rsa::Error,
    },
    /// RSA-OAEP failed.
    #[error("RSA-OAEP encryption of the seed: {source}")]
    Oaep {
        /// Why.
        #[source]
        source: rsa::Error,
    },
    /// The credential is larger than the EK's name digest (the TPM would
    /// refuse it with TPM_RC_SIZE).
    #[error("credential of {len} bytes is larger than the {max}-byte digest")]
    SecretSize {
        /// Its size.
        len: usize,
        /// The maximum.
        max: usize,
    },
}

/// A hash the TPM names objects with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashAlg {
    /// SHA-256 (`TPM_ALG_SHA256`).
    Sha256,
    /// SHA-384 (`TPM_ALG_SHA384`).
    Sha384,
}

impl HashAlg {
    /// From a `TPM_ALG_ID`.
    pub fn from_tpm(alg: u16) -> Result<Self, CredentialError> {
        match alg {
            tpmt::ALG_SHA256 => Ok(Self::Sha256),
            tpmt::ALG_SHA384 => Ok(Self::Sha384),
            other => Err(CredentialError::NameAlg(other)),
        }
    }

    /// The `TPM_ALG_ID`.
    pub fn tpm(self) -> u16 {
        match self {
            Self::Sha256 => tpmt::ALG_SHA256,
            Self::Sha384 => tpmt::ALG_SHA384,
        }
    }

    /// Digest size in bytes.
    pub fn size(self) -> usize {
        match self {
            Self::Sha256 => 32,
            Self::Sha384 => 48,
        }
    }

    /// Hash of the concatenation of `parts`.
    pub fn digest(self, parts: &[&[u8]]) -> Vec<u8> {
        fn run<D: sha2::Digest>(parts: &[&[u8]]) -> Vec<u8> {
            let mut h = D::new();
            for p in parts {
                h.update(p);
            }
            h.finalize().to_vec()
        }
        match self {
            Self::Sha256 => run::<Sha256>(parts),
            Self::Sha384 => run::<Sha384>(parts),
        }
    }

    /// HMAC of the concatenation of `parts`.
    pub fn hmac(self, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        fn run<D: sha2::Digest + sha2::digest::core_api::BlockSizeUser>(
            key: &[u8],
            parts: &[&[u8]],
        ) -> Vec<u8> {
            // SimpleHmac takes keys of any length (long ones are hashed),
            // so this cannot fail; the fallback keeps clippy's no-panic rule.
            let Ok(mut m) = <SimpleHmac<D> as hmac::Mac>::new_from_slice(key) else {
                return Vec::new();
            };
            for p in parts {
                m.update(p);
            }
            m.finalize().into_bytes().to_vec()
        }
        match self {
            Self::Sha256 => run::<Sha256>(key, parts),
            Self::Sha384 => run::<Sha384>(key, parts),
        }
    }
}

/// An object's name: `nameAlg || H_nameAlg(TPMT_PUBLIC)`.
pub fn name(tpmt_public: &[u8], name_alg: HashAlg) -> Vec<u8> {
    let mut n = name_alg.tpm().to_be_bytes().to_vec();
    n.extend(name_alg.digest(&[tpmt_public]));
    n
}

/// KDFa (Part 1, 11.4.10.2): SP 800-108 counter mode with HMAC. `label` is
/// given without its terminating NUL; the NUL is hashed, as the TPM does.
pub fn kdfa(
    hash: HashAlg,
    key: &[u8],
    label: &str,
    context_u: &[u8],
    context_v: &[u8],
    bits: u32,
) -> Vec<u8> {
    let want = (bits as usize).div_ceil(8);
    let mut out = Vec::with_capacity(want + hash.size());
    let mut counter = 1u32;
    while out.len() < want {
        out.extend(hash.hmac(
            key,
            &[
                &counter.to_be_bytes(),
                label.as_bytes(),
                &[0],
                context_u,
                context_v,
                &bits.to_be_bytes(),
            ],
        ));
        counter += 1;
    }
    out.truncate(want);
    out
}

/// KDFe (Part 1, 11.4.10.3): SP 800-56A concatenation KDF. `label` without
/// its NUL, which is hashed.
pub fn kdfe(
    hash: HashAlg,
    z: &[u8],
    label: &str,
    party_u: &[u8],
    party_v: &[u8],
    bits: u32,
) -> Vec<u8> {
    let want = (bits as usize).div_ceil(8);
    let mut out = Vec::with_capacity(want + hash.size());
    let mut counter = 1u32;
    while out.len() < want {
        out.extend(hash.digest(&[
            &counter.to_be_bytes(),
            z,
            label.as_bytes(),
            &[0],
            party_u,
            party_v,
        ]));
        counter += 1;
    }
    out.truncate(want);
    out
}

/// What TPM2_MakeCredential returns, as the bodies of the TPM2Bs (no size
/// prefix), which is what tss-esapi's `IdObject` / `EncryptedSecret` take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// `TPM2B_ID_OBJECT` body: `TPM2B_DIGEST(integrityHMAC) || encIdentity`.
    pub id_object: Vec<u8>,
    /// `TPM2B_ENCRYPTED_SECRET` body: the OAEP ciphertext or the marshalled
    /// ephemeral `TPMS_ECC_POINT`.
    pub encrypted_secret: Vec<u8>,
}

/// TPM2_MakeCredential for `ek`: `secret` will be released only by the TPM
/// that holds the EK's private key, for the object named `object_name`.
pub fn make_credential(
    ek: &TpmtPublic,
    secret: &[u8],
    object_name: &[u8],
    rng: &mut (impl CryptoRng + RngCore),
) -> Result<Credential, CredentialError> {
    use tpmt::attr;
    if !ek.has(attr::RESTRICTED | attr::DECRYPT) || ek.has(attr::SIGN) {
        return Err(CredentialError::NotStorageKey(ek.attributes));
    }
    let hash = HashAlg::from_tpm(ek.name_alg)?;
    if secret.len() > hash.size() {
        return Err(CredentialError::SecretSize {
            len: secret.len(),
            max: hash.size(),
        });
    }
    let sym = ek.symmetric();
    if sym.algorithm != tpmt::ALG_AES
        || sym.mode != tpmt::ALG_CFB
        || !matches!(sym.key_bits, 128 | 256)
    {
        return Err(CredentialError::Symmetric {
            algorithm: sym.algorithm,
            bits: sym.key_bits,
            mode: sym.mode,
        });
    }
    let bits = (hash.size() * 8) as u32;
    let (seed, encrypted_secret) = match &ek.params {
        Params::Rsa {
            modulus, exponent, ..
        } => {
            let mut seed = vec![0u8; hash.size()];
            rng.fill_bytes(&mut seed);
            let e = if *exponent == 0 { 65537 } else { *exponent };
            let key =
                rsa::RsaPublicKey::new(rsa::BigUint::from_bytes_be(modulus), rsa::BigUint::from(e))
                    .map_err(|source| CredentialError::RsaKey { source })?;
            // The label is "IDENTITY" with its NUL (Part 1, B.10.4).
            let padding = match hash {
                HashAlg::Sha256 => rsa::Oaep::new_with_label::<Sha256, _>("IDENTITY\0"),
                HashAlg::Sha384 => rsa::Oaep::new_with_label::<Sha384, _>("IDENTITY\0"),
            };
            let ct = key
                .encrypt(rng, padding, &seed)
                .map_err(|source| CredentialError::Oaep { source })?;
            (seed, ct)
        }
        Params::Ecc { curve, x, y, .. } => {
            let (z, ex, ey) = match *curve {
                tpmt::CURVE_P256 => ecdh::<p256::NistP256>(x, y, rng)?,
                tpmt::CURVE_P384 => ecdh::<p384::NistP384>(x, y, rng)?,
                other => return Err(CredentialError::EccKey(format!("curve {other:#06x}"))),
            };
            let seed = kdfe(hash, &z, "IDENTITY", &ex, x, bits);
            let mut point = Vec::new();
            for c in [&ex, &ey] {
                point.extend((c.len() as u16).to_be_bytes());
                point.extend(c);
            }
            (seed, point)
        }
    };
    Ok(protect(
        hash,
        sym.key_bits,
        &seed,
        secret,
        object_name,
        encrypted_secret,
    ))
}

/// Steps 2 and 3: encrypt and MAC the credential under keys from `seed`.
fn protect(
    hash: HashAlg,
    sym_bits: u16,
    seed: &[u8],
    secret: &[u8],
    object_name: &[u8],
    encrypted_secret: Vec<u8>,
) -> Credential {
    let sym_key = kdfa(hash, seed, "STORAGE", object_name, &[], u32::from(sym_bits));
    let mut enc_identity = (secret.len() as u16).to_be_bytes().to_vec();
    enc_identity.extend(secret);
    aes_cfb(&sym_key, &mut enc_identity, true);
    let hmac_key = kdfa(hash, seed, "INTEGRITY", &[], &[], (hash.size() * 8) as u32);
    let integrity = hash.hmac(&hmac_key, &[&enc_identity, object_name]);
    let mut id_object = (integrity.len() as u16).to_be_bytes().to_vec();
    id_object.extend(integrity);
    id_object.extend(enc_identity);
    Credential {
        id_object,
        encrypted_secret,
    }
}

/// AES-CFB with a zero IV, in place; the key length picks AES-128/256
/// (callers derive it from a checked 128 or 256).
fn aes_cfb(key: &[u8], buf: &mut [u8], encrypt: bool) {
    let iv = [0u8; 16];
    match key.len() {
        16 => {
            if encrypt {
                if let Ok(c) = cfb_mode::Encryptor::<aes::Aes128>::new_from_slices(key, &iv) {
                    c.encrypt(buf);
                }
            } else if let Ok(c) = cfb_mode::Decryptor::<aes::Aes128>::new_from_slices(key, &iv) {
                c.decrypt(buf);
            }
        }
        _ => {
            if encrypt {
                if let Ok(c) = cfb_mode::Encryptor::<aes::Aes256>::new_from_slices(key, &iv) {
                    c.encrypt(buf);
                }
            } else if let Ok(c) = cfb_mode::Decryptor::<aes::Aes256>::new_from_slices(key, &iv) {
                c.decrypt(buf);
            }
        }
    }
}

/// The shared secret Z and the ephemeral point (x, y), coordinates at the
/// curve's full width.
type Ecdh = (Vec<u8>, Vec<u8>, Vec<u8>);

/// Ephemeral ECDH with the EK's point.
fn ecdh<C>(
    x: &[u8],
    y: &[u8],
    rng: &mut (impl CryptoRng + RngCore),
) -> Result<Ecdh, CredentialError>
where
    C: elliptic_curve::CurveArithmetic,
    elliptic_curve::FieldBytesSize<C>: elliptic_curve::sec1::ModulusSize,
    elliptic_curve::AffinePoint<C>:
        elliptic_curve::sec1::FromEncodedPoint<C> + elliptic_curve::sec1::ToEncodedPoint<C>,
{
    use elliptic_curve::sec1::ToEncodedPoint as _;
    let width = <elliptic_curve::FieldBytesSize<C> as elliptic_curve::generic_array::typenum::Unsigned>::USIZE;
    let pad = |c: &[u8]| -> Result<Vec<u8>, CredentialError> {
        // TPMs may drop leading zeros; the point must still fit the curve.
        let c = &c[c.iter().take_while(|b| **b == 0).count()..];
        if c.len() > width {
            return Err(CredentialError::EccKey(format!(
                "coordinate of {} bytes on a {width}-byte curve",
                c.len()
            )));
        }
        let mut v = vec![0u8; width - c.len()];
        v.extend(c);
        Ok(v)
    };
    let mut sec1 = vec![4u8];
    sec1.extend(pad(x)?);
    sec1.extend(pad(y)?);
    let ek = elliptic_curve::PublicKey::<C>::from_sec1_bytes(&sec1)
        .map_err(|_| CredentialError::EccKey("the EK point is not on the curve".into()))?;
    let eph = elliptic_curve::ecdh::EphemeralSecret::<C>::random(rng);
    let z = eph.diffie_hellman(&ek).raw_secret_bytes().to_vec();
    let q = eph.public_key().to_encoded_point(false);
    let (Some(ex), Some(ey)) = (q.x(), q.y()) else {
        return Err(CredentialError::EccKey(
            "ephemeral point at infinity".into(),
        ));
    };
    Ok((z, ex.to_vec(), ey.to_vec()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::enrol::tpmt::{
        ALG_AES, ALG_CFB, ALG_ECC, ALG_NULL, ALG_RSA, ALG_SHA256, CURVE_P256,
    };
    use rand_core::OsRng;
    use std::process::Command;

    /// The software side of TPM2_ActivateCredential, for tests: given the
    /// EK's shared seed, check the HMAC and decrypt. Returns None when the
    /// integrity check fails, as the TPM does.
    pub(crate) fn open(
        hash: HashAlg,
        sym_bits: u16,
        seed: &[u8],
        id_object: &[u8],
        object_name: &[u8],
    ) -> Option<Vec<u8>> {
        let n = usize::from(u16::from_be_bytes([
            *id_object.first()?,
            *id_object.get(1)?,
        ]));
        let integrity = id_object.get(2..2 + n)?;
        let mut enc = id_object.get(2 + n..)?.to_vec();
        let hmac_key = kdfa(hash, seed, "INTEGRITY", &[], &[], (hash.size() * 8) as u32);
        if hash.hmac(&hmac_key, &[&enc, object_name]) != integrity {
            return None;
        }
        let sym_key = kdfa(hash, seed, "STORAGE", object_name, &[], u32::from(sym_bits));
        aes_cfb(&sym_key, &mut enc, false);
        let len = usize::from(u16::from_be_bytes([*enc.first()?, *enc.get(1)?]));
        enc.get(2..2 + len).map(<[u8]>::to_vec)
    }

    /// EK-template TPMT_PUBLIC bytes (L-1 / L-2 attributes and policy) for
    /// a software key, so tpm2_makecredential can encrypt to a key whose
    /// private part this test holds.
    fn ek_template(ecc: Option<(&[u8], &[u8])>, rsa_modulus: Option<&[u8]>) -> Vec<u8> {
        let policy_a =
            hex::decode("837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa")
                .unwrap();
        let mut v = Vec::new();
        v.extend(if ecc.is_some() { ALG_ECC } else { ALG_RSA }.to_be_bytes());
        v.extend(ALG_SHA256.to_be_bytes());
        v.extend(0x0003_00b2u32.to_be_bytes());
        v.extend((policy_a.len() as u16).to_be_bytes());
        v.extend(&policy_a);
        v.extend(ALG_AES.to_be_bytes());
        v.extend(128u16.to_be_bytes());
        v.extend(ALG_CFB.to_be_bytes());
        v.extend(ALG_NULL.to_be_bytes()); // scheme
        if let Some((x, y)) = ecc {
            v.extend(CURVE_P256.to_be_bytes());
            v.extend(ALG_NULL.to_be_bytes()); // kdf
            for c in [x, y] {
                v.extend((c.len() as u16).to_be_bytes());
                v.extend(c);
            }
        } else if let Some(m) = rsa_modulus {
            v.extend(2048u16.to_be_bytes());
            v.extend(0u32.to_be_bytes());
            v.extend((m.len() as u16).to_be_bytes());
            v.extend(m);
        }
        v
    }

    /// No published KDFa vectors were at hand: this pins the construction
    /// (HMAC over `counter || label || 0 || contextU || contextV || bits`);
    /// the real check is the tpm2-tools cross-check below.
    #[test]
    fn kdfa_matches_hmac_counter_mode() {
        let key = [0x0bu8; 32];
        let out = kdfa(HashAlg::Sha256, &key, "STORAGE", b"abc", b"", 128);
        let mut msg = 1u32.to_be_bytes().to_vec();
        msg.extend(b"STORAGE\0abc");
        msg.extend(128u32.to_be_bytes());
        let mac = HashAlg::Sha256.hmac(&key, &[&msg]);
        assert_eq!(out, mac[..16]);
        // Two blocks: counter 2 continues where 1 stopped.
        let long = kdfa(HashAlg::Sha256, &key, "X", b"", b"", 512);
        assert_eq!(long.len(), 64);
        assert_ne!(long[..32], long[32..]);
    }

    fn tool(name: &str) -> bool {
        let found = Command::new(name).arg("--version").output().is_ok();
        if !found {
            eprintln!("!!! {name} is not installed: the cross-check against tpm2-tools cannot run");
        }
        found
    }

    /// Parse tpm2-tools' credential file: magic 0xBADCC0DE, version 1,
    /// TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET.
    fn parse_tools_credential(b: &[u8]) -> (Vec<u8>, Vec<u8>) {
        assert_eq!(&b[..8], &[0xba, 0xdc, 0xc0, 0xde, 0, 0, 0, 1]);
        let n = usize::from(u16::from_be_bytes([b[8], b[9]]));
        let id = b[10..10 + n].to_vec();
        let m = usize::from(u16::from_be_bytes([b[10 + n], b[11 + n]]));
        let secret = b[12 + n..12 + n + m].to_vec();
        assert_eq!(b.len(), 12 + n + m);
        (id, secret)
    }

    fn tools_make_credential(tpmt: &[u8], secret: &[u8], name: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let mut tpm2b = (tpmt.len() as u16).to_be_bytes().to_vec();
        tpm2b.extend(tpmt);
        std::fs::write(dir.path().join("ek.pub"), tpm2b).unwrap();
        std::fs::write(dir.path().join("secret"), secret).unwrap();
        let out = Command::new("tpm2_makecredential")
            .args(["-T", "none", "-u"])
            .arg(dir.path().join("ek.pub"))
            .arg("-s")
            .arg(dir.path().join("secret"))
            .args(["-n", &hex::encode(name), "-o"])
            .arg(dir.path().join("cred"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tpm2_makecredential: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        parse_tools_credential(&std::fs::read(dir.path().join("cred")).unwrap())
    }

    /// KDFe, KDFa, the AES-CFB and HMAC layout cross-checked against
    /// tpm2-tools (OpenSSL underneath), both directions, for an ECC P-256
    /// EK whose private key the test holds: tpm2_makecredential's output
    /// opens with our KDFe/KDFa, and our output opens the same way.
    #[test]
    fn ecc_credential_interoperates_with_tpm2_tools() {
        if !tool("tpm2_makecredential") {
            panic!("tpm2-tools missing: KDFe/KDFa are not cross-checked");
        }
        let sk = p256::SecretKey::random(&mut OsRng);
        let pt = {
            use p256::elliptic_curve::sec1::ToEncodedPoint as _;
            sk.public_key().to_encoded_point(false)
        };
        let (x, y) = (pt.x().unwrap().to_vec(), pt.y().unwrap().to_vec());
        let tpmt = ek_template(Some((&x, &y)), None);
        let ek = TpmtPublic::parse(&tpmt).unwrap();
        let ak_name = name(b"any public area", HashAlg::Sha256);
        let secret = [0x5au8; 32];
        let seed_for = |point: &[u8]| {
            let n = usize::from(u16::from_be_bytes([point[0], point[1]]));
            let ex = &point[2..2 + n];
            let ey = &point[4 + n..];
            let mut sec1 = vec![4u8];
            sec1.extend(ex);
            sec1.extend(ey);
            let eph = p256::PublicKey::from_sec1_bytes(&sec1).unwrap();
            let z = p256::ecdh::diffie_hellman(sk.to_nonzero_scalar(), eph.as_affine());
            kdfe(
                HashAlg::Sha256,
                z.raw_secret_bytes(),
                "IDENTITY",
                ex,
                &x,
                256,
            )
        };
        let (id, point) = tools_make_credential(&tpmt, &secret, &ak_name);
        assert_eq!(
            open(HashAlg::Sha256, 128, &seed_for(&point), &id, &ak_name).as_deref(),
            Some(&secret[..]),
            "our KDFe/KDFa do not open tpm2-tools' credential"
        );
        let ours = make_credential(&ek, &secret, &ak_name, &mut OsRng).unwrap();
        assert_eq!(ours.id_object.len(), id.len(), "blob layout differs");
        assert_eq!(ours.encrypted_secret.len(), point.len());
        let seed = seed_for(&ours.encrypted_secret);
        assert_eq!(
            open(HashAlg::Sha256, 128, &seed, &ours.id_object, &ak_name).as_deref(),
            Some(&secret[..])
        );
        // Another object's name: the integrity check fails, as in the TPM.
        let other = name(b"another public area", HashAlg::Sha256);
        assert_eq!(
            open(HashAlg::Sha256, 128, &seed, &ours.id_object, &other),
            None
        );
    }

    /// The RSA path against tpm2-tools: OAEP with label "IDENTITY\0" and
    /// the same KDFa layout; the key comes from openssl (RSA key generation
    /// in a debug build is slow).
    #[test]
    fn rsa_credential_interoperates_with_tpm2_tools() {
        use rsa::pkcs1::DecodeRsaPrivateKey as _;
        use rsa::pkcs8::DecodePrivateKey as _;
        use rsa::traits::PublicKeyParts as _;
        if !tool("tpm2_makecredential") {
            panic!("tpm2-tools missing: the RSA credential is not cross-checked");
        }
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.der");
        let out = Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
            ])
            .args(["-outform", "DER", "-out"])
            .arg(&key)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // openssl writes PKCS#8 or PKCS#1 DER depending on its version.
        let der = std::fs::read(&key).unwrap();
        let sk = rsa::RsaPrivateKey::from_pkcs8_der(&der)
            .or_else(|_| rsa::RsaPrivateKey::from_pkcs1_der(&der))
            .unwrap();
        let modulus = sk.n().to_bytes_be();
        let tpmt = ek_template(None, Some(&modulus));
        let ek = TpmtPublic::parse(&tpmt).unwrap();
        let ak_name = name(b"an AK", HashAlg::Sha256);
        let secret = [0xa5u8; 32];
        let seed_for = |ct: &[u8]| {
            sk.decrypt(rsa::Oaep::new_with_label::<Sha256, _>("IDENTITY\0"), ct)
                .unwrap()
        };
        let (id, ct) = tools_make_credential(&tpmt, &secret, &ak_name);
        assert_eq!(
            open(HashAlg::Sha256, 128, &seed_for(&ct), &id, &ak_name).as_deref(),
            Some(&secret[..])
        );
        let ours = make_credential(&ek, &secret, &ak_name, &mut OsRng).unwrap();
        assert_eq!(ours.id_object.len(), id.len());
        assert_eq!(
            open(
                HashAlg::Sha256,
                128,
                &seed_for(&ours.encrypted_secret),
                &ours.id_object,
                &ak_name
            )
            .as_deref(),
            Some(&secret[..])
        );
    }

    #[test]
    fn refuses_a_signing_ek_and_an_oversized_secret() {
        let sk = p256::SecretKey::random(&mut OsRng);
        let pt = {
            use p256::elliptic_curve::sec1::ToEncodedPoint as _;
            sk.public_key().to_encoded_point(false)
        };
        let tpmt = ek_template(Some((pt.x().unwrap(), pt.y().unwrap())), None);
        let mut ek = TpmtPublic::parse(&tpmt).unwrap();
        assert!(matches!(
            make_credential(&ek, &[0; 33], b"n", &mut OsRng),
            Err(CredentialError::SecretSize { len: 33, max: 32 })
        ));
        ek.attributes |= tpmt::attr::SIGN;
        assert!(matches!(
            make_credential(&ek, &[0; 32], b"n", &mut OsRng),
            Err(CredentialError::NotStorageKey(_))
        ));
    }
}
