//! OpenSSF model signing (`model_signing`, PyPI): a model directory's
//! signature as a golden reference.
//!
//! `model_signing sign key DIR` (or `sign certificate DIR`) writes a
//! Sigstore bundle (v0.3 JSON) holding a DSSE envelope around an in-toto
//! Statement v1. The statement's predicate
//! (`https://model_signing/signature/v1.0`) lists every file of the
//! directory with its SHA-256 (`resources`, names relative to the
//! directory, `/`-separated), how the directory was serialised
//! (`serialization`: `method = "files"`, `hash_type = "sha256"`,
//! `allow_symlinks`, `ignore_paths`), and one subject whose SHA-256 is the
//! digest of the resources' raw 32-byte digests concatenated in resource
//! order.
//!
//! What is checked, in order (each failure names the file and the problem):
//!
//! 1. The bundle: at most [`MAX_BUNDLE`] bytes of JSON, a Sigstore bundle
//!    media type, a DSSE envelope with payload type
//!    `application/vnd.in-toto+json` and exactly one signature.
//! 2. The signature: over DSSE's pre-authentication encoding ([`pae`]),
//!    ECDSA (P-256 with SHA-256, P-384 with SHA-384) by one of the
//!    *configured* trusted keys. The bundle's `publicKey.hint` is never
//!    used: it is the signer's word. With the certificate method, the
//!    bundle's leaf certificate must chain to a configured CA certificate
//!    (a [`TrustedKey`] loaded from a `CERTIFICATE` PEM; the bundle's own
//!    intermediates are path elements only, its self-signed certificates
//!    are ignored) and its key verifies the signature.
//! 3. The statement: in-toto Statement v1, the predicate type above,
//!    `hash_type` sha256, `method` files, `allow_symlinks` false, one
//!    subject whose digest is the one computed from the resources, resource
//!    names relative and unique.
//! 4. A directory against it ([`check_tree`], [`check_dir`]): every listed
//!    file present as a regular file (no symlink anywhere, none followed),
//!    no file that is not listed except under the `ignore_paths` the
//!    signer listed (and the bundle itself, when it lies inside the
//!    directory, as `model_signing verify` does), and every file's SHA-256
//!    the listed one.
//!
//! Offline only: there is no transparency-log entry in these bundles and
//! none is looked for, so there is no signing time, revocation or rollback
//! protection here (see docs/attestation.md).

use std::{
    collections::{BTreeSet, HashSet},
    path::{Component, Path, PathBuf},
    time::SystemTime,
};

use base64::Engine as _;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::{
    enrol::ekcert::{self, CaCerts},
    signing::TrustedKey,
};

/// The largest bundle read: a statement lists one file in about 150 bytes,
/// so this is several thousand files, and stays well under what one
/// evidence record may carry ([`crate::evidence::event::MAX_ENCODED`]).
pub const MAX_BUNDLE: usize = 512 * 1024;

/// The most files a statement may list, and a directory may hold.
pub const MAX_FILES: usize = 100_000;

/// The predicate type of a model-signing statement.
pub const PREDICATE_TYPE: &str = "https://model_signing/signature/v1.0";

/// The in-toto statement type.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";

/// The DSSE payload type of an in-toto statement.
pub const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";

/// Errors reading or checking a model signature; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum ModelSigError {
    /// The bundle, or a file of the directory, could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The bundle is larger than [`MAX_BUNDLE`].
    #[error("model signature {path}: {size} bytes is more than the {MAX_BUNDLE} accepted")]
    TooLarge {
        /// The bundle.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// The bundle or its statement is malformed.
    #[error("model signature {path}: {problem}")]
    Malformed {
        /// The bundle.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// No trusted key or CA verifies the signature.
    #[error("model signature {path} is not signed by a trusted key: {problem}")]
    Untrusted {
        /// The bundle.
        path: PathBuf,
        /// What was tried and why it failed.
        problem: String,
    },
    /// A listed file is not in the directory.
    #[error("model directory {dir}: {name} is signed in {bundle} but missing")]
    Missing {
        /// The directory.
        dir: PathBuf,
        /// The file's name in the statement.
        name: String,
        /// The bundle.
        bundle: PathBuf,
    },
    /// A file of the directory is not listed.
    #[error("model directory {dir}: {name} is not signed in {bundle} (an extra file)")]
    Extra {
        /// The directory.
        dir: PathBuf,
        /// The file, relative to the directory.
        name: String,
        /// The bundle.
        bundle: PathBuf,
    },
    /// A symlink, or something that is not a regular file or directory.
    #[error(
        "model directory {dir}: {name} is {what}; model signatures here cover regular files only and follow no symlink"
    )]
    NotRegular {
        /// The directory.
        dir: PathBuf,
        /// The entry, relative to the directory.
        name: String,
        /// What it is.
        what: &'static str,
    },
    /// A file's digest is not the signed one.
    #[error("model file {file}: sha256 {actual} but {bundle} signs {expected}")]
    Mismatch {
        /// The file.
        file: PathBuf,
        /// The signed digest.
        expected: String,
        /// The digest found.
        actual: String,
        /// The bundle.
        bundle: PathBuf,
    },
}

/// Why a bundle's bytes were refused ([`verify_bytes`]; the callers name
/// the file).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BundleProblem {
    /// Not a model signature bundle, or its statement breaks the rules.
    #[error("{0}")]
    Malformed(String),
    /// Well formed, but no trusted key or CA vouches for its signature.
    #[error("{0}")]
    Untrusted(String),
}

/// One signed file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resource {
    /// Relative to the model directory, `/`-separated.
    pub name: String,
    /// SHA-256, 64 lowercase hex digits.
    pub sha256: String,
}

/// A checked model-signing statement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Statement {
    /// The subject's name (the directory's name when signed).
    pub subject: String,
    /// The subject's SHA-256, hex (checked against the resources).
    pub subject_sha256: String,
    /// The files, in the statement's order.
    pub resources: Vec<Resource>,
    /// Paths, relative to the directory, the signer left out.
    pub ignore_paths: Vec<String>,
}

/// The parts of a bundle the checks use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bundle {
    /// The DSSE payload, decoded.
    pub payload: Vec<u8>,
    /// The DSSE payload type.
    pub payload_type: String,
    /// The one signature, decoded (DER ECDSA).
    pub signature: Vec<u8>,
    /// The certificate chain (DER, leaf first) of the certificate method;
    /// empty for the key method.
    pub certificates: Vec<Vec<u8>>,
}

/// How the signer was trusted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SignedBy {
    /// A configured public key.
    Key {
        /// The key file.
        path: PathBuf,
    },
    /// A leaf certificate chaining to a configured CA.
    Certificate {
        /// The leaf's subject.
        subject: String,
        /// The chain above it, up to the configured root.
        chain: Vec<String>,
    },
}

/// A bundle whose signature verified, with its statement.
#[derive(Clone, Debug)]
pub struct Verified {
    /// The bundle's bytes, exactly as read.
    pub bytes: Vec<u8>,
    /// The statement.
    pub statement: Statement,
    /// The bundle's parts.
    pub bundle: Bundle,
    /// SHA-256 of the bundle's bytes, hex.
    pub sha256: String,
    /// SHA-256 of the signer key's SubjectPublicKeyInfo DER, hex (for the
    /// key method, the trusted key's fingerprint).
    pub signer: String,
    /// How the signer was trusted.
    pub signed_by: SignedBy,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawBundle {
    media_type: String,
    verification_material: Option<RawMaterial>,
    dsse_envelope: Option<RawEnvelope>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMaterial {
    x509_certificate_chain: Option<RawChain>,
    certificate: Option<RawCert>,
}

#[derive(Deserialize)]
struct RawChain {
    certificates: Vec<RawCert>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawCert {
    raw_bytes: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawEnvelope {
    payload: String,
    payload_type: String,
    signatures: Vec<RawSig>,
}

#[derive(Deserialize)]
struct RawSig {
    sig: String,
}

#[derive(Deserialize)]
struct RawStatement {
    #[serde(rename = "_type")]
    kind: String,
    subject: Vec<RawSubject>,
    #[serde(rename = "predicateType")]
    predicate_type: String,
    predicate: RawPredicate,
}

#[derive(Deserialize)]
struct RawSubject {
    name: String,
    digest: RawDigest,
}

#[derive(Deserialize)]
struct RawDigest {
    sha256: String,
}

#[derive(Deserialize)]
struct RawPredicate {
    resources: Vec<RawResource>,
    serialization: RawSerialization,
}

#[derive(Deserialize)]
struct RawResource {
    algorithm: String,
    name: String,
    digest: String,
}

#[derive(Deserialize)]
struct RawSerialization {
    hash_type: String,
    method: String,
    allow_symlinks: bool,
    #[serde(default)]
    ignore_paths: Vec<String>,
}

fn b64(what: &str, s: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .map_err(|e| format!("{what} is not base64: {e}"))
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Parse a bundle's bytes (no signature check). Bounded: more than
/// [`MAX_BUNDLE`] bytes is refused before parsing.
pub fn parse_bundle(bytes: &[u8]) -> Result<Bundle, String> {
    if bytes.len() > MAX_BUNDLE {
        return Err(format!(
            "{} bytes is more than the {MAX_BUNDLE} accepted",
            bytes.len()
        ));
    }
    let raw: RawBundle =
        serde_json::from_slice(bytes).map_err(|e| format!("not a Sigstore bundle (JSON): {e}"))?;
    if !raw
        .media_type
        .starts_with("application/vnd.dev.sigstore.bundle")
    {
        return Err(format!(
            "media type {:?} is not a Sigstore bundle",
            raw.media_type
        ));
    }
    let env = raw
        .dsse_envelope
        .ok_or("no dsseEnvelope (a model signature is a DSSE envelope)")?;
    if env.payload_type != PAYLOAD_TYPE {
        return Err(format!(
            "payload type {:?} is not {PAYLOAD_TYPE}",
            env.payload_type
        ));
    }
    let [sig] = env.signatures.as_slice() else {
        return Err(format!(
            "{} signatures in the envelope; exactly one is accepted",
            env.signatures.len()
        ));
    };
    let mut certificates = Vec::new();
    if let Some(m) = raw.verification_material {
        if let Some(chain) = m.x509_certificate_chain {
            for (i, c) in chain.certificates.iter().enumerate() {
                certificates.push(b64(&format!("certificate {i}"), &c.raw_bytes)?);
            }
        }
        if let Some(c) = m.certificate {
            if !certificates.is_empty() {
                return Err("both a certificate and a certificate chain".into());
            }
            certificates.push(b64("the certificate", &c.raw_bytes)?);
        }
    }
    Ok(Bundle {
        payload: b64("the payload", &env.payload)?,
        payload_type: env.payload_type,
        signature: b64("the signature", &sig.sig)?,
        certificates,
    })
}

/// Whether `name` is a plain relative path: no root, no `.` or `..`, no
/// empty component, no NUL.
fn plain_relative(name: &str) -> bool {
    !name.is_empty()
        && !name.contains('\0')
        && !name.starts_with('/')
        && name
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

/// Parse and check a statement (the DSSE payload).
pub fn parse_statement(payload: &[u8]) -> Result<Statement, String> {
    let raw: RawStatement = serde_json::from_slice(payload)
        .map_err(|e| format!("the statement is not an in-toto statement: {e}"))?;
    if raw.kind != STATEMENT_TYPE {
        return Err(format!(
            "statement type {:?} is not {STATEMENT_TYPE}",
            raw.kind
        ));
    }
    if raw.predicate_type != PREDICATE_TYPE {
        return Err(format!(
            "predicate type {:?} is not {PREDICATE_TYPE}",
            raw.predicate_type
        ));
    }
    let s = &raw.predicate.serialization;
    if s.method != "files" {
        return Err(format!(
            "serialization method {:?} is not supported (only \"files\": one digest per file)",
            s.method
        ));
    }
    if s.hash_type != "sha256" {
        return Err(format!(
            "hash type {:?} is not supported (only sha256)",
            s.hash_type
        ));
    }
    if s.allow_symlinks {
        return Err("signed with allow_symlinks: guardian follows no symlink".into());
    }
    let [subject] = raw.subject.as_slice() else {
        return Err(format!(
            "{} subjects; exactly one is expected",
            raw.subject.len()
        ));
    };
    if raw.predicate.resources.is_empty() {
        return Err("no resources: the statement signs no file".into());
    }
    if raw.predicate.resources.len() > MAX_FILES {
        return Err(format!("more than {MAX_FILES} resources"));
    }
    let mut seen = HashSet::new();
    let mut resources = Vec::with_capacity(raw.predicate.resources.len());
    let mut subject_hash = Sha256::new();
    for (i, r) in raw.predicate.resources.iter().enumerate() {
        if r.algorithm != "sha256" {
            return Err(format!(
                "resource {i} ({:?}): algorithm {:?} is not sha256",
                r.name, r.algorithm
            ));
        }
        if !plain_relative(&r.name) {
            return Err(format!(
                "resource {i}: name {:?} is not a plain relative path",
                r.name
            ));
        }
        if !seen.insert(r.name.as_str()) {
            return Err(format!("resource {i}: {:?} is listed twice", r.name));
        }
        if !is_hex64(&r.digest) {
            return Err(format!(
                "resource {i} ({:?}): digest {:?} is not 64 lowercase hex digits",
                r.name, r.digest
            ));
        }
        let raw_digest = hex::decode(&r.digest).map_err(|e| e.to_string())?;
        subject_hash.update(&raw_digest);
        resources.push(Resource {
            name: r.name.clone(),
            sha256: r.digest.clone(),
        });
    }
    let computed = hex::encode(subject_hash.finalize());
    if subject.digest.sha256 != computed {
        return Err(format!(
            "the subject's sha256 {:?} is not the digest of the resources ({computed})",
            subject.digest.sha256
        ));
    }
    for p in &s.ignore_paths {
        if !plain_relative(p.trim_end_matches('/')) {
            return Err(format!("ignore path {p:?} is not a plain relative path"));
        }
    }
    Ok(Statement {
        subject: subject.name.clone(),
        subject_sha256: computed,
        resources,
        ignore_paths: s
            .ignore_paths
            .iter()
            .map(|p| p.trim_end_matches('/').to_owned())
            .collect(),
    })
}

/// DSSE's pre-authentication encoding: what the signature is over.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut m = format!(
        "DSSEv1 {} {payload_type} {} ",
        payload_type.len(),
        payload.len()
    )
    .into_bytes();
    m.extend_from_slice(payload);
    m
}

/// The key of a certificate's SubjectPublicKeyInfo, as a [`TrustedKey`]
/// (P-256 or P-384).
fn leaf_key(cert: &x509_cert::Certificate) -> Result<TrustedKey, String> {
    use der::Encode as _;
    let der = cert
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|e| format!("re-encoding the leaf's key: {e}"))?;
    TrustedKey::from_spki_der(&der, Path::new("the bundle's leaf certificate"))
        .ok_or_else(|| "the leaf certificate's key is not ECDSA P-256 or P-384".to_owned())
}

/// Verify a bundle's bytes against `trusted` (public keys, and CA
/// certificates for the certificate method) at time `now`, and parse its
/// statement. The error says what failed, without the file's name (the
/// callers add it), and whether the bundle is malformed or untrusted.
pub fn verify_bytes(
    bytes: &[u8],
    trusted: &[TrustedKey],
    now: SystemTime,
) -> Result<Verified, BundleProblem> {
    let bundle = parse_bundle(bytes).map_err(BundleProblem::Malformed)?;
    let message = pae(&bundle.payload_type, &bundle.payload);
    let (signer, signed_by) = if bundle.certificates.is_empty() {
        let key = trusted
            .iter()
            .find(|k| k.verifies_detached(&message, &bundle.signature))
            .ok_or_else(|| {
                BundleProblem::Untrusted(format!(
                    "no configured key verifies its signature ({} key(s) and CA file(s) tried; the bundle's key hint is not trusted)",
                    trusted.len()
                ))
            })?;
        (
            key.fingerprint.clone(),
            SignedBy::Key {
                path: key.path.clone(),
            },
        )
    } else {
        verify_chain(&bundle, &message, trusted, now).map_err(BundleProblem::Untrusted)?
    };
    let statement = parse_statement(&bundle.payload).map_err(BundleProblem::Malformed)?;
    Ok(Verified {
        bytes: bytes.to_vec(),
        statement,
        bundle,
        sha256: hex::encode(Sha256::digest(bytes)),
        signer,
        signed_by,
    })
}

/// The certificate method: the leaf chains to a configured CA, and its key
/// made the signature.
fn verify_chain(
    bundle: &Bundle,
    message: &[u8],
    trusted: &[TrustedKey],
    now: SystemTime,
) -> Result<(String, SignedBy), String> {
    use der::Decode as _;
    let anchors: Vec<x509_cert::Certificate> = trusted
        .iter()
        .flat_map(|k| k.ca_certificates().iter().cloned())
        .collect();
    if anchors.is_empty() {
        return Err("it is signed with a certificate, and no CA certificate is configured".into());
    }
    let leaf_der = bundle.certificates.first().ok_or("no leaf certificate")?;
    let leaf = x509_cert::Certificate::from_der(leaf_der)
        .map_err(|e| format!("the leaf certificate is not DER X.509: {e}"))?;
    // The bundle's other certificates may only be path elements between the
    // leaf and a configured root: a self-signed one there is the signer's
    // own root and is dropped.
    let mut pool = anchors;
    for (i, der) in bundle.certificates.iter().enumerate().skip(1) {
        let c = x509_cert::Certificate::from_der(der)
            .map_err(|e| format!("certificate {i} of the chain is not DER X.509: {e}"))?;
        if c.tbs_certificate.subject.to_string() != c.tbs_certificate.issuer.to_string() {
            pool.push(c);
        }
    }
    let checked = ekcert::check_chain(leaf_der, &CaCerts::new(pool), now)
        .map_err(|e| format!("its certificate chain is not trusted: {e}"))?;
    let key = leaf_key(&leaf)?;
    if !key.verifies_detached(message, &bundle.signature) {
        return Err(format!(
            "the signature does not verify with the key of its certificate {:?}",
            checked.subject
        ));
    }
    Ok((
        key.fingerprint,
        SignedBy::Certificate {
            subject: checked.subject,
            chain: checked.chain,
        },
    ))
}

/// Read and verify the bundle at `path` (see [`verify_bytes`]).
pub fn load(path: &Path, trusted: &[TrustedKey]) -> Result<Verified, ModelSigError> {
    let bytes = read_bounded(path)?;
    verify_bytes(&bytes, trusted, SystemTime::now()).map_err(|e| match e {
        BundleProblem::Untrusted(problem) => ModelSigError::Untrusted {
            path: path.to_owned(),
            problem,
        },
        BundleProblem::Malformed(problem) => ModelSigError::Malformed {
            path: path.to_owned(),
            problem,
        },
    })
}

/// The bundle's bytes, refusing more than [`MAX_BUNDLE`] before reading.
pub fn read_bounded(path: &Path) -> Result<Vec<u8>, ModelSigError> {
    use std::io::Read as _;
    let read_err = |source| ModelSigError::Read {
        path: path.to_owned(),
        source,
    };
    let f = std::fs::File::open(path).map_err(read_err)?;
    let mut bytes = Vec::new();
    let limit = u64::try_from(MAX_BUNDLE).unwrap_or(u64::MAX) + 1;
    f.take(limit).read_to_end(&mut bytes).map_err(read_err)?;
    if bytes.len() > MAX_BUNDLE {
        let size = std::fs::metadata(path).map_or(limit, |m| m.len());
        return Err(ModelSigError::TooLarge {
            path: path.to_owned(),
            size,
        });
    }
    Ok(bytes)
}

/// Whether `rel` is, or lies under, one of `ignore`.
fn ignored(rel: &str, ignore: &[String]) -> bool {
    ignore.iter().any(|p| {
        rel == p
            || rel
                .strip_prefix(p.as_str())
                .is_some_and(|r| r.starts_with('/'))
    })
}

/// Check the shape of `dir` against `statement`: every listed file present
/// as a regular file, nothing else (but what the signer ignored, and
/// `bundle` itself when it lies inside `dir`), no symlink anywhere. Returns
/// the listed files' paths in the statement's order, for hashing.
pub fn check_tree(
    dir: &Path,
    statement: &Statement,
    bundle: &Path,
) -> Result<Vec<PathBuf>, ModelSigError> {
    let not_regular = |name: String, what| ModelSigError::NotRegular {
        dir: dir.to_owned(),
        name,
        what,
    };
    let read_err = |path: &Path| {
        let path = path.to_owned();
        move |source| ModelSigError::Read { path, source }
    };
    let top = std::fs::symlink_metadata(dir).map_err(read_err(dir))?;
    if top.file_type().is_symlink() {
        return Err(not_regular(".".into(), "a symlink"));
    }
    if !top.is_dir() {
        return Err(not_regular(".".into(), "not a directory"));
    }
    // The bundle, when it is in the directory, as `model_signing verify`
    // leaves it out.
    let own = bundle
        .strip_prefix(dir)
        .ok()
        .filter(|r| r.components().all(|c| matches!(c, Component::Normal(_))))
        .map(|r| r.to_string_lossy().into_owned());
    let listed: HashSet<&str> = statement
        .resources
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    let mut found = BTreeSet::new();
    let mut stack = vec![(dir.to_owned(), String::new())];
    while let Some((path, rel)) = stack.pop() {
        let entries = std::fs::read_dir(&path).map_err(read_err(&path))?;
        for e in entries {
            let e = e.map_err(read_err(&path))?;
            let name = e.file_name().to_string_lossy().into_owned();
            let child_rel = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            if ignored(&child_rel, &statement.ignore_paths) || own.as_deref() == Some(&child_rel) {
                continue;
            }
            let ft = e.file_type().map_err(read_err(&e.path()))?;
            if ft.is_symlink() {
                return Err(not_regular(child_rel, "a symlink"));
            } else if ft.is_dir() {
                stack.push((e.path(), child_rel));
            } else if ft.is_file() {
                if !listed.contains(child_rel.as_str()) {
                    return Err(ModelSigError::Extra {
                        dir: dir.to_owned(),
                        name: child_rel,
                        bundle: bundle.to_owned(),
                    });
                }
                found.insert(child_rel);
                if found.len() > MAX_FILES {
                    return Err(ModelSigError::Malformed {
                        path: bundle.to_owned(),
                        problem: format!("{} holds more than {MAX_FILES} files", dir.display()),
                    });
                }
            } else {
                return Err(not_regular(child_rel, "not a regular file"));
            }
        }
    }
    statement
        .resources
        .iter()
        .map(|r| {
            if found.contains(&r.name) {
                Ok(dir.join(&r.name))
            } else {
                Err(ModelSigError::Missing {
                    dir: dir.to_owned(),
                    name: r.name.clone(),
                    bundle: bundle.to_owned(),
                })
            }
        })
        .collect()
}

/// One file of a checked directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileDigest {
    /// Its path.
    pub path: PathBuf,
    /// Its SHA-256, hex.
    pub sha256: String,
    /// Its size.
    pub size: u64,
}

/// Check `dir` entirely against a verified signature: its shape
/// ([`check_tree`]), then every file's SHA-256 (hashed here, one after the
/// other; the agent's boot step hashes in parallel itself). The first
/// mismatch is the error.
pub fn check_dir(
    dir: &Path,
    verified: &Verified,
    bundle: &Path,
) -> Result<Vec<FileDigest>, ModelSigError> {
    let paths = check_tree(dir, &verified.statement, bundle)?;
    let mut out = Vec::with_capacity(paths.len());
    for (path, r) in paths.into_iter().zip(&verified.statement.resources) {
        let (sha256, size) = hash_file(&path)?;
        if sha256 != r.sha256 {
            return Err(ModelSigError::Mismatch {
                file: path,
                expected: r.sha256.clone(),
                actual: sha256,
                bundle: bundle.to_owned(),
            });
        }
        out.push(FileDigest { path, sha256, size });
    }
    Ok(out)
}

/// The statement as a guardian manifest for the files under `dir` (an
/// absolute path), in statement order, serial 0. `sizes` (from
/// [`check_dir`]) fills each entry's size; without them (a verifier, which
/// has no files) the sizes are 0 and must not be compared.
pub fn to_manifest(
    statement: &Statement,
    dir: &Path,
    pcr: u32,
    sizes: Option<&[u64]>,
) -> Result<crate::manifest::Manifest, String> {
    if !dir.is_absolute() {
        return Err(format!("model directory {} is not absolute", dir.display()));
    }
    let m = crate::manifest::Manifest {
        version: crate::manifest::VERSION,
        pcr,
        serial: 0,
        models: statement
            .resources
            .iter()
            .enumerate()
            .map(|(i, r)| crate::manifest::Entry {
                path: dir.join(&r.name),
                sha256: r.sha256.clone(),
                size: sizes.and_then(|s| s.get(i).copied()).unwrap_or(0),
                name: Some(r.name.clone()),
                version: None,
            })
            .collect(),
    };
    m.check()?;
    Ok(m)
}

fn hash_file(path: &Path) -> Result<(String, u64), ModelSigError> {
    let mut f = std::fs::File::open(path).map_err(|source| ModelSigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut h = Sha256::new();
    let size = std::io::copy(&mut f, &mut h).map_err(|source| ModelSigError::Read {
        path: path.to_owned(),
        source,
    })?;
    Ok((hex::encode(h.finalize()), size))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statement_json(resources: &[(&str, [u8; 32])]) -> String {
        let mut h = Sha256::new();
        let rs: Vec<serde_json::Value> = resources
            .iter()
            .map(|(n, d)| {
                h.update(d);
                serde_json::json!({"algorithm":"sha256","name":n,"digest":hex::encode(d)})
            })
            .collect();
        serde_json::json!({
            "_type": STATEMENT_TYPE,
            "subject": [{"name":"model","digest":{"sha256":hex::encode(h.finalize())}}],
            "predicateType": PREDICATE_TYPE,
            "predicate": {"resources": rs, "serialization": {
                "hash_type":"sha256","method":"files","allow_symlinks":false,
                "ignore_paths":[".git"]}}
        })
        .to_string()
    }

    fn bundle_json(payload: &[u8], sig: &[u8]) -> Vec<u8> {
        let e = base64::engine::general_purpose::STANDARD;
        serde_json::json!({
            "mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json",
            "verificationMaterial":{"publicKey":{"hint":"00"},"tlogEntries":[]},
            "dsseEnvelope":{"payload":e.encode(payload),"payloadType":PAYLOAD_TYPE,
                "signatures":[{"sig":e.encode(sig),"keyid":""}]}
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn pae_is_dsse_v1() {
        assert_eq!(
            pae("application/example", b"hello"),
            b"DSSEv1 19 application/example 5 hello".to_vec()
        );
    }

    #[test]
    fn statement_rules() {
        let d = Sha256::digest(b"x").into();
        let ok = statement_json(&[("a.bin", d), ("sub/b.bin", d)]);
        let s = parse_statement(ok.as_bytes()).unwrap();
        assert_eq!(s.resources.len(), 2);
        assert_eq!(s.ignore_paths, vec![".git".to_owned()]);
        for (name, why) in [
            ("../a", "plain relative"),
            ("/etc/passwd", "plain relative"),
            ("a//b", "plain relative"),
        ] {
            let bad = statement_json(&[(name, d)]);
            assert!(parse_statement(bad.as_bytes()).unwrap_err().contains(why));
        }
        let twice = statement_json(&[("a", d), ("a", d)]);
        assert!(
            parse_statement(twice.as_bytes())
                .unwrap_err()
                .contains("twice")
        );
        let other = ok.replace(&hex::encode(d), &"00".repeat(32));
        assert!(
            parse_statement(other.as_bytes())
                .unwrap_err()
                .contains("subject")
        );
        let sym = ok.replace("\"allow_symlinks\":false", "\"allow_symlinks\":true");
        assert!(
            parse_statement(sym.as_bytes())
                .unwrap_err()
                .contains("symlink")
        );
        let shard = ok.replace("\"method\":\"files\"", "\"method\":\"shards\"");
        assert!(
            parse_statement(shard.as_bytes())
                .unwrap_err()
                .contains("method")
        );
    }

    #[test]
    fn bundle_signed_by_a_trusted_key_only() {
        use p256::ecdsa::signature::Signer as _;
        use p256::pkcs8::{EncodePublicKey as _, LineEnding};
        let dir = tempfile::tempdir().unwrap();
        let key = p256::ecdsa::SigningKey::from_slice(&[7; 32]).unwrap();
        let other = p256::ecdsa::SigningKey::from_slice(&[9; 32]).unwrap();
        let pem = |k: &p256::ecdsa::SigningKey| {
            k.verifying_key().to_public_key_pem(LineEnding::LF).unwrap()
        };
        let trusted = vec![TrustedKey::from_pem(&pem(&key), Path::new("k.pub")).unwrap()];
        std::fs::create_dir(dir.path().join("m")).unwrap();
        std::fs::write(dir.path().join("m/a.bin"), b"model").unwrap();
        let payload = statement_json(&[("a.bin", Sha256::digest(b"model").into())]);
        let msg = pae(PAYLOAD_TYPE, payload.as_bytes());
        let sig: p256::ecdsa::Signature = key.sign(&msg);
        let bytes = bundle_json(payload.as_bytes(), sig.to_der().as_bytes());
        let v = verify_bytes(&bytes, &trusted, SystemTime::now()).unwrap();
        assert_eq!(v.signer, trusted[0].fingerprint);
        let b = dir.path().join("m.sig");
        check_dir(&dir.path().join("m"), &v, &b).unwrap();

        let sig: p256::ecdsa::Signature = other.sign(&msg);
        let bytes = bundle_json(payload.as_bytes(), sig.to_der().as_bytes());
        let e = verify_bytes(&bytes, &trusted, SystemTime::now()).unwrap_err();
        assert!(
            matches!(&e, BundleProblem::Untrusted(p) if p.contains("no configured key")),
            "{e}"
        );
        assert!(parse_bundle(&bytes[..bytes.len() / 2]).is_err());
        assert!(
            parse_bundle(&vec![b' '; MAX_BUNDLE + 1])
                .unwrap_err()
                .contains("more than")
        );
    }

    #[test]
    fn ignore_paths_are_whole_components() {
        let ig = vec![".git".to_owned()];
        assert!(ignored(".git", &ig));
        assert!(ignored(".git/config", &ig));
        assert!(!ignored(".gitx", &ig));
        assert!(!ignored("a/.git", &ig));
    }
}
