//! Policy sets pushed to a group of devices: the signed document, its
//! checks, and the floor a device keeps so that no older set is ever put
//! back in force.
//!
//! An operator packs a directory of signed policies (`NAME.wasm` and its
//! detached `NAME.wasm.sig`) into one document for one device group with a
//! version, and signs the document with a policy signing key
//! (`guardian policy pack`). The fleet publishes it (`guardian-fleet policy
//! publish`) into a replicated key-value bucket, one key per group; a
//! device reads its group's key when it connects and watches it after, so a
//! device that was offline gets the current set when it returns.
//!
//! What the device believes, in this order ([`SignedSet::verify`], then
//! [`admit`]):
//! 1. the signature over the document's exact bytes, by a trusted policy
//!    key (the keys the device already trusts for policies; never a key
//!    named in the document);
//! 2. the document's format, group name, version and every policy's name
//!    and SHA-256 against its bytes; no set without a policy (an empty
//!    set would quietly remove every rule), no name twice;
//! 3. the group is the device's own (a set signed for another group is not
//!    replayed onto this one);
//! 4. the version is above the device's floor: the version of the last set
//!    put in force, kept on the device (a TPM NV index where there is one,
//!    and a protected file) and recorded in the evidence. The same version
//!    again is a no-op when its digest is the one in force, and refused
//!    when it differs: two documents signed with one version are a signing
//!    mistake or an attack, and neither is put in force silently.
//!
//! Each policy keeps its own detached signature inside the set, and the
//! device's policy loader verifies it again when it loads the directory the
//! set is written to, exactly as for a local policy directory.
//!
//! The wire form ([`SignedSet::to_bytes`]) is a small JSON object with the
//! document and its signature in base64, so the signed bytes travel
//! unchanged whatever re-encodes the JSON around them.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::signing::{SigningKey, TrustedKey};

/// The document format's name and version.
pub const FORMAT: &str = "guardian-policy-set/1";

/// The largest signed set accepted, in bytes (the wire form). The NATS
/// server's `max_payload` must be at least this for sets this large; the
/// lab's server is configured so.
pub const MAX_SET_BYTES: usize = 8 << 20;

/// The largest step a set's version may take above the device's floor
/// (above 0 when there is none). A signed set numbered near `u64::MAX`,
/// by mistake or with a stolen key, would otherwise raise the floor where
/// no later set can pass it, on the device (file and NV index) and in the
/// verifier's memory alike; with steps bounded, reaching the top takes
/// some 2^32 sets put in force one after another. Date-like versions
/// (`20261205`) fit in one step.
pub const MAX_STEP: u64 = 1 << 32;

/// Why a set is refused. Each says what was wrong; the caller names where
/// the set came from.
#[derive(Debug, thiserror::Error)]
pub enum SetError {
    /// Not the wire form, or not the document format.
    #[error("malformed policy set: {0}")]
    Malformed(String),
    /// Over [`MAX_SET_BYTES`].
    #[error("policy set of {0} bytes is over the limit of {MAX_SET_BYTES}")]
    TooLarge(usize),
    /// The document's signature does not verify with any trusted key.
    #[error("policy set signature does not verify with any of {0} trusted policy key(s)")]
    Untrusted(usize),
    /// No trusted key to verify with.
    #[error("no trusted policy keys, so no policy set can be verified")]
    NoTrustedKeys,
    /// A policy's bytes do not match the digest the signed document gives.
    #[error("policy {0}: its SHA-256 is not the one the set lists")]
    Digest(String),
    /// A set with no policy.
    #[error(
        "the set has no policy (an empty set would remove every rule; it is never put in force)"
    )]
    Empty,
    /// A name that cannot be a file name here, or a name twice.
    #[error("policy name {0:?}: {1}")]
    Name(String, &'static str),
    /// Not a group name.
    #[error("group name {0:?}: 1-64 of A-Z a-z 0-9 _ -")]
    Group(String),
    /// Signed for another group.
    #[error("the set is for group {set:?}, this device is in {device:?}")]
    WrongGroup {
        /// The set's group.
        set: String,
        /// The device's.
        device: String,
    },
    /// Not above the floor.
    #[error(
        "set version {version} is older than version {floor} already in force (rollback refused)"
    )]
    Older {
        /// The set's version.
        version: u64,
        /// The device's floor.
        floor: u64,
    },
    /// Too far above the floor ([`MAX_STEP`]).
    #[error(
        "set version {version} is more than {MAX_STEP} above the floor {floor} (a version that high would leave no room for later sets)"
    )]
    TooFar {
        /// The set's version.
        version: u64,
        /// The device's floor (0: none).
        floor: u64,
    },
    /// The floor's version with other content.
    #[error(
        "set version {version} differs from the version {version} in force (digest {digest}, in force {floor_digest}); a new set needs a new version"
    )]
    SameVersion {
        /// The version.
        version: u64,
        /// This set's digest.
        digest: String,
        /// The digest in force.
        floor_digest: String,
    },
    /// Reading or writing a file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The wire form: the document's exact bytes and the detached signature
/// over them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedSet {
    /// The document (JSON, [`PolicySet`]), exactly as signed.
    pub document: Vec<u8>,
    /// The detached signature file's bytes (raw, or a keyed Sigstore
    /// bundle, as [`crate::signing`] reads them).
    pub signature: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    format: String,
    document: String,
    signature: String,
}

/// The document: which group, which version, which policies.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PolicySet {
    /// [`FORMAT`].
    pub format: String,
    /// The device group it is for.
    pub group: String,
    /// Monotonic per group; a device never goes back to a lower one.
    pub version: u64,
    /// When it was packed, RFC 3339 (the packer's word).
    pub created: String,
    /// The policies, in name order.
    pub policies: Vec<SetPolicy>,
}

/// One policy in a set.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SetPolicy {
    /// Its name: the file is `NAME.wasm`.
    pub name: String,
    /// SHA-256 of the module, hex.
    pub sha256: String,
    /// The module, base64.
    pub wasm: String,
    /// Its detached signature file (`NAME.wasm.sig`), base64.
    pub signature: String,
}

/// A set whose signature and contents were checked.
#[derive(Clone, Debug)]
pub struct VerifiedSet {
    /// The document.
    pub set: PolicySet,
    /// SHA-256 of the document's bytes, hex: the set's identity.
    pub digest: String,
    /// Fingerprint of the key that signed it.
    pub signer: String,
}

/// What a device keeps of the last set it put in force (and what it
/// records in its evidence).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Floor {
    /// The group.
    pub group: String,
    /// The version: no lower one is put in force again.
    pub version: u64,
    /// The digest of that version's document.
    pub digest: String,
}

/// What to do with a verified set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Newer than the floor: put it in force.
    New,
    /// The set in force already.
    InForce,
}

impl SignedSet {
    /// Read the wire form.
    pub fn parse(bytes: &[u8]) -> Result<Self, SetError> {
        if bytes.len() > MAX_SET_BYTES {
            return Err(SetError::TooLarge(bytes.len()));
        }
        let wire: Wire = serde_json::from_slice(bytes)
            .map_err(|e| SetError::Malformed(format!("not a signed policy set: {e}")))?;
        if wire.format != FORMAT {
            return Err(SetError::Malformed(format!(
                "format {:?}, expected {FORMAT:?}",
                wire.format
            )));
        }
        let b64 = base64::engine::general_purpose::STANDARD;
        Ok(Self {
            document: b64
                .decode(wire.document.trim())
                .map_err(|e| SetError::Malformed(format!("document: {e}")))?,
            signature: b64
                .decode(wire.signature.trim())
                .map_err(|e| SetError::Malformed(format!("signature: {e}")))?,
        })
    }

    /// The wire form.
    pub fn to_bytes(&self) -> Vec<u8> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let wire = Wire {
            format: FORMAT.to_owned(),
            document: b64.encode(&self.document),
            signature: b64.encode(&self.signature),
        };
        // Strings only: serialising cannot fail.
        serde_json::to_vec(&wire).unwrap_or_default()
    }

    /// SHA-256 of the document, hex.
    pub fn digest(&self) -> String {
        hex::encode(Sha256::digest(&self.document))
    }

    /// Check the signature against `trusted` (first), then the document.
    pub fn verify(&self, trusted: &[TrustedKey]) -> Result<VerifiedSet, SetError> {
        if trusted.is_empty() {
            return Err(SetError::NoTrustedKeys);
        }
        let signer = trusted
            .iter()
            .find(|k| k.verifies_detached(&self.document, &self.signature))
            .ok_or(SetError::Untrusted(trusted.len()))?;
        let set = check_document(&self.document)?;
        Ok(VerifiedSet {
            set,
            digest: self.digest(),
            signer: signer.fingerprint.clone(),
        })
    }
}

/// Parse and check a document's contents (not its signature).
fn check_document(document: &[u8]) -> Result<PolicySet, SetError> {
    let set: PolicySet = serde_json::from_slice(document)
        .map_err(|e| SetError::Malformed(format!("document: {e}")))?;
    if set.format != FORMAT {
        return Err(SetError::Malformed(format!(
            "document format {:?}, expected {FORMAT:?}",
            set.format
        )));
    }
    check_group(&set.group)?;
    if set.policies.is_empty() {
        return Err(SetError::Empty);
    }
    let mut names: Vec<&str> = Vec::with_capacity(set.policies.len());
    for p in &set.policies {
        check_name(&p.name)?;
        if names.contains(&p.name.as_str()) {
            return Err(SetError::Name(p.name.clone(), "listed twice"));
        }
        names.push(&p.name);
        let wasm = p.module()?;
        if hex::encode(Sha256::digest(&wasm)) != p.sha256.to_ascii_lowercase() {
            return Err(SetError::Digest(p.name.clone()));
        }
        p.signature_bytes()?;
    }
    Ok(set)
}

impl SetPolicy {
    /// The module's bytes.
    pub fn module(&self) -> Result<Vec<u8>, SetError> {
        base64::engine::general_purpose::STANDARD
            .decode(self.wasm.trim())
            .map_err(|e| SetError::Malformed(format!("policy {}: module: {e}", self.name)))
    }

    /// Its signature file's bytes.
    pub fn signature_bytes(&self) -> Result<Vec<u8>, SetError> {
        base64::engine::general_purpose::STANDARD
            .decode(self.signature.trim())
            .map_err(|e| SetError::Malformed(format!("policy {}: signature: {e}", self.name)))
    }
}

/// Whether `group` is a group name: 1-64 of `A-Z a-z 0-9 _ -` (it is a
/// NATS subject token and a key-value key).
pub fn check_group(group: &str) -> Result<(), SetError> {
    let ok = (1..=64).contains(&group.len())
        && group
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(SetError::Group(group.to_owned()))
    }
}

/// A policy name is a file name (`NAME.wasm`) in one directory: the same
/// characters as a group, and not starting with `-`.
fn check_name(name: &str) -> Result<(), SetError> {
    if !(1..=64).contains(&name.len()) {
        return Err(SetError::Name(name.to_owned(), "1-64 characters"));
    }
    if name.starts_with('-')
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(SetError::Name(
            name.to_owned(),
            "only A-Z a-z 0-9 _ - (not starting with -)",
        ));
    }
    Ok(())
}

/// Whether a verified set may go in force on a device of `group` whose
/// floor is `floor` (none: no set was ever put in force).
pub fn admit(set: &VerifiedSet, group: &str, floor: Option<&Floor>) -> Result<Admission, SetError> {
    if set.set.group != group {
        return Err(SetError::WrongGroup {
            set: set.set.group.clone(),
            device: group.to_owned(),
        });
    }
    let base = floor.map_or(0, |f| f.version);
    if set.set.version.saturating_sub(base) > MAX_STEP {
        return Err(SetError::TooFar {
            version: set.set.version,
            floor: base,
        });
    }
    let Some(floor) = floor else {
        return Ok(Admission::New);
    };
    match set.set.version.cmp(&floor.version) {
        std::cmp::Ordering::Greater => Ok(Admission::New),
        std::cmp::Ordering::Less => Err(SetError::Older {
            version: set.set.version,
            floor: floor.version,
        }),
        std::cmp::Ordering::Equal if set.digest == floor.digest => Ok(Admission::InForce),
        std::cmp::Ordering::Equal => Err(SetError::SameVersion {
            version: set.set.version,
            digest: set.digest.clone(),
            floor_digest: floor.digest.clone(),
        }),
    }
}

/// Pack the signed policies of `dir` (every `NAME.wasm` with its
/// `NAME.wasm.sig`) into a set for `group` at `version`, signed with `key`.
/// A module without its signature stops it, named.
pub fn pack(
    dir: &Path,
    group: &str,
    version: u64,
    created: &str,
    key: &SigningKey,
) -> Result<SignedSet, SetError> {
    check_group(group)?;
    if version > MAX_STEP {
        // A device takes it only once its floor is within a step of it;
        // the packer says so now rather than a fleet of refusals later.
        return Err(SetError::TooFar { version, floor: 0 });
    }
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| SetError::Io { path, source }
    };
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let file = entry.file_name();
        let Some(name) = file.to_str().and_then(|f| f.strip_suffix(".wasm")) else {
            continue;
        };
        names.push(name.to_owned());
    }
    names.sort();
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut policies = Vec::with_capacity(names.len());
    for name in names {
        check_name(&name)?;
        let wasm_path = dir.join(format!("{name}.wasm"));
        let sig_path = dir.join(format!("{name}.wasm.sig"));
        let wasm = std::fs::read(&wasm_path).map_err(io(&wasm_path))?;
        let signature = std::fs::read(&sig_path).map_err(io(&sig_path))?;
        policies.push(SetPolicy {
            name,
            sha256: hex::encode(Sha256::digest(&wasm)),
            wasm: b64.encode(&wasm),
            signature: b64.encode(&signature),
        });
    }
    if policies.is_empty() {
        return Err(SetError::Empty);
    }
    let set = PolicySet {
        format: FORMAT.to_owned(),
        group: group.to_owned(),
        version,
        created: created.to_owned(),
        policies,
    };
    // Strings and numbers only: serialising cannot fail.
    let document = serde_json::to_vec_pretty(&set).unwrap_or_default();
    let signature = key.sign(&document);
    let signed = SignedSet {
        document,
        signature,
    };
    if signed.to_bytes().len() > MAX_SET_BYTES {
        return Err(SetError::TooLarge(signed.to_bytes().len()));
    }
    Ok(signed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A P-256 key pair made with the `p256` crate, as PEM.
    fn keys() -> (SigningKey, TrustedKey) {
        use p256::pkcs8::{EncodePublicKey as _, LineEnding};
        let secret = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap();
        let pem = secret
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        (
            SigningKey::P256(secret),
            TrustedKey::from_pem(&pem, Path::new("test.pem")).unwrap(),
        )
    }

    fn dir_with(policies: &[(&str, &[u8])]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (name, wasm) in policies {
            std::fs::write(d.path().join(format!("{name}.wasm")), wasm).unwrap();
            std::fs::write(d.path().join(format!("{name}.wasm.sig")), b"sig").unwrap();
        }
        d
    }

    fn packed(version: u64) -> SignedSet {
        let (key, _) = keys();
        let d = dir_with(&[("b", b"\0asm two"), ("a", b"\0asm one")]);
        pack(d.path(), "cameras", version, "2026-12-05T00:00:00Z", &key).unwrap()
    }

    #[test]
    fn a_packed_set_verifies_and_round_trips() {
        let (_, trusted) = keys();
        let s = packed(3);
        let again = SignedSet::parse(&s.to_bytes()).unwrap();
        assert_eq!(again, s);
        let v = again.verify(std::slice::from_ref(&trusted)).unwrap();
        assert_eq!(v.set.version, 3);
        assert_eq!(v.set.group, "cameras");
        let names: Vec<_> = v.set.policies.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["a", "b"], "name order");
        assert_eq!(v.set.policies[0].module().unwrap(), b"\0asm one");
        assert_eq!(v.signer, trusted.fingerprint);
        assert_eq!(v.digest, s.digest());
    }

    #[test]
    fn a_changed_document_or_another_key_is_refused() {
        let (_, trusted) = keys();
        let mut s = packed(3);
        let text = String::from_utf8(s.document.clone()).unwrap();
        s.document = text
            .replace("\"version\": 3", "\"version\": 4")
            .into_bytes();
        assert!(matches!(
            s.verify(std::slice::from_ref(&trusted)),
            Err(SetError::Untrusted(1))
        ));
        let other = {
            use p256::pkcs8::{EncodePublicKey as _, LineEnding};
            let k = p256::ecdsa::SigningKey::from_slice(&[9u8; 32]).unwrap();
            TrustedKey::from_pem(
                &k.verifying_key().to_public_key_pem(LineEnding::LF).unwrap(),
                Path::new("other.pem"),
            )
            .unwrap()
        };
        assert!(matches!(
            packed(3).verify(&[other]),
            Err(SetError::Untrusted(1))
        ));
        assert!(matches!(
            packed(3).verify(&[]),
            Err(SetError::NoTrustedKeys)
        ));
    }

    /// A document signed by the right key whose contents are wrong: the
    /// checks after the signature still hold.
    fn signed(set: &PolicySet) -> SignedSet {
        let (key, _) = keys();
        let document = serde_json::to_vec(set).unwrap();
        SignedSet {
            signature: key.sign(&document),
            document,
        }
    }

    #[test]
    fn signed_but_wrong_contents_are_refused() {
        let (_, trusted) = keys();
        let good = packed(1)
            .verify(std::slice::from_ref(&trusted))
            .unwrap()
            .set;
        let mut empty = good.clone();
        empty.policies.clear();
        assert!(matches!(
            signed(&empty).verify(std::slice::from_ref(&trusted)),
            Err(SetError::Empty)
        ));
        let mut digest = good.clone();
        digest.policies[1].sha256 = "00".repeat(32);
        assert!(matches!(
            signed(&digest).verify(std::slice::from_ref(&trusted)),
            Err(SetError::Digest(n)) if n == "b"
        ));
        let mut twice = good.clone();
        twice.policies[1].name = "a".into();
        twice.policies[1].sha256 = twice.policies[0].sha256.clone();
        twice.policies[1].wasm = twice.policies[0].wasm.clone();
        assert!(matches!(
            signed(&twice).verify(std::slice::from_ref(&trusted)),
            Err(SetError::Name(_, "listed twice"))
        ));
        for bad in ["../x", "a/b", "-x", "", "a.wasm"] {
            let mut named = good.clone();
            named.policies[0].name = bad.into();
            assert!(
                matches!(
                    signed(&named).verify(std::slice::from_ref(&trusted)),
                    Err(SetError::Name(..))
                ),
                "{bad:?}"
            );
        }
        let mut group = good.clone();
        group.group = "cam eras".into();
        assert!(matches!(
            signed(&group).verify(std::slice::from_ref(&trusted)),
            Err(SetError::Group(_))
        ));
        let mut format = good;
        format.format = "guardian-policy-set/2".into();
        assert!(matches!(
            signed(&format).verify(std::slice::from_ref(&trusted)),
            Err(SetError::Malformed(_))
        ));
    }

    #[test]
    fn the_floor_refuses_older_sets_and_other_content_at_its_version() {
        let (_, trusted) = keys();
        let v2 = packed(2).verify(std::slice::from_ref(&trusted)).unwrap();
        let v3 = packed(3).verify(std::slice::from_ref(&trusted)).unwrap();
        assert_eq!(admit(&v2, "cameras", None).unwrap(), Admission::New);
        let floor = Floor {
            group: "cameras".into(),
            version: 3,
            digest: v3.digest.clone(),
        };
        assert!(matches!(
            admit(&v2, "cameras", Some(&floor)),
            Err(SetError::Older {
                version: 2,
                floor: 3
            })
        ));
        assert_eq!(
            admit(&v3, "cameras", Some(&floor)).unwrap(),
            Admission::InForce
        );
        let other3 = Floor {
            digest: "ff".repeat(32),
            ..floor.clone()
        };
        assert!(matches!(
            admit(&v3, "cameras", Some(&other3)),
            Err(SetError::SameVersion { version: 3, .. })
        ));
        assert!(matches!(
            admit(&v3, "doors", Some(&floor)),
            Err(SetError::WrongGroup { .. })
        ));
    }

    /// A set numbered near the top of the version space would leave no
    /// room for any later set: it is refused above a step from the floor,
    /// and a step at a time still climbs.
    #[test]
    fn a_version_too_far_above_the_floor_is_refused() {
        let (key, trusted) = keys();
        let at = |version: u64| {
            let mut set = packed(1)
                .verify(std::slice::from_ref(&trusted))
                .unwrap()
                .set;
            set.version = version;
            signed(&set).verify(std::slice::from_ref(&trusted)).unwrap()
        };
        let floor = |version: u64| Floor {
            group: "cameras".into(),
            version,
            digest: "00".repeat(32),
        };
        assert!(matches!(
            admit(&at(u64::MAX), "cameras", None),
            Err(SetError::TooFar {
                version: u64::MAX,
                floor: 0
            })
        ));
        assert!(matches!(
            admit(&at(u64::MAX), "cameras", Some(&floor(7))),
            Err(SetError::TooFar { floor: 7, .. })
        ));
        assert!(matches!(
            admit(&at(7 + MAX_STEP + 1), "cameras", Some(&floor(7))),
            Err(SetError::TooFar { .. })
        ));
        assert_eq!(
            admit(&at(7 + MAX_STEP), "cameras", Some(&floor(7))).unwrap(),
            Admission::New
        );
        assert_eq!(
            admit(&at(20261205), "cameras", None).unwrap(),
            Admission::New,
            "a date-like version fits in one step"
        );
        // Older is still older, however far below.
        assert!(matches!(
            admit(&at(1), "cameras", Some(&floor(u64::MAX))),
            Err(SetError::Older { .. })
        ));
        let d = dir_with(&[("a", b"\0asm one")]);
        assert!(matches!(
            pack(d.path(), "cameras", u64::MAX, "t", &key),
            Err(SetError::TooFar { .. })
        ));
    }

    #[test]
    fn an_unsigned_module_or_an_empty_directory_is_not_packed() {
        let (key, _) = keys();
        let d = dir_with(&[]);
        assert!(matches!(
            pack(d.path(), "g", 1, "t", &key),
            Err(SetError::Empty)
        ));
        std::fs::write(d.path().join("x.wasm"), b"\0asm").unwrap();
        assert!(matches!(
            pack(d.path(), "g", 1, "t", &key),
            Err(SetError::Io { path, .. }) if path.ends_with("x.wasm.sig")
        ));
    }

    #[test]
    fn malformed_wire_forms_are_named_errors() {
        for bad in [
            &b""[..],
            b"{",
            b"[]",
            br#"{"format":"x","document":"","signature":""}"#,
            br#"{"format":"guardian-policy-set/1","document":"!!","signature":""}"#,
            br#"{"format":"guardian-policy-set/1","document":"","signature":"","extra":1}"#,
        ] {
            assert!(
                matches!(SignedSet::parse(bad), Err(SetError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(matches!(
            SignedSet::parse(&vec![b' '; MAX_SET_BYTES + 1]),
            Err(SetError::TooLarge(_))
        ));
    }
}
