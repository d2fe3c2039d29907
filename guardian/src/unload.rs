//! Who may switch the guard off: unload tokens, and what the running guard
//! was loaded with.
//!
//! Removing the pins detaches every program, so `guardian stop --unload` is
//! the one command that ends enforcement. A root shell must not be enough
//! for it: it needs a token signed by an operator key named in `[guard]
//! unload_keys`, for this boot of this device, valid for a short time:
//!
//! ```text
//! unload.json      {"format":"guardian-unload/1","boot_id":"…","issued":…,
//!                   "not_after":…,"reason":"…","signer":"-----BEGIN PUBLIC KEY-----…"}
//! unload.json.sig  a detached signature of unload.json's bytes (Ed25519, or
//!                  ECDSA P-256 over SHA-256 in DER, as `openssl dgst -sign`
//!                  makes it)
//! ```
//!
//! The keys a token is checked against are not read from any file given on
//! the command line: they are the ones the guard was **loaded** with,
//! fixed at that moment in the pinned `GUARDIAN_AUTH` map together with a
//! digest of the whole effective config ([`Auth`]). Under BPF LSM only
//! guardian's executable can read or write that map (`bpf.rs` in the eBPF
//! crate), and guardian's code writes it only when it loads a fresh guard.
//! A `guardian run` with another config therefore refuses to take over the
//! running guard instead of quietly reconfiguring it.
//!
//! `boot_id` (`/proc/sys/kernel/random/boot_id`) is random at every boot:
//! a token is good for one boot of one device, and `not_after` at most
//! [`MAX_VALID`] after `issued` bounds it further.

use std::{
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::{
    config::Config,
    signing::{SigningKey, TrustedKey},
};

/// The token format this agent reads and writes.
pub const FORMAT: &str = "guardian-unload/1";
/// The longest a token may be valid for, in seconds.
pub const MAX_VALID: u64 = 24 * 3600;
/// Operator keys the guard can hold.
pub const MAX_KEYS: usize = 8;
/// Entries of the `GUARDIAN_AUTH` map: the config digest, the flags, the
/// key digests.
pub const AUTH_ENTRIES: u32 = 2 + MAX_KEYS as u32;

/// An unload token.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Token {
    /// [`FORMAT`].
    pub format: String,
    /// The device's boot id the token is for.
    pub boot_id: String,
    /// When it was made (seconds since the epoch).
    pub issued: u64,
    /// Until when it is good (seconds since the epoch).
    pub not_after: u64,
    /// Why, in words (goes into the evidence with the unload).
    pub reason: String,
    /// The signer's public key (PEM): its SHA-256 must be one the guard was
    /// loaded with.
    pub signer: String,
}

/// What the guard was loaded with, as kept in the `GUARDIAN_AUTH` map.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Auth {
    /// SHA-256 of the effective config ([`config_digest`]).
    pub config: [u8; 32],
    /// Maintenance mode: unload without a token.
    pub without_token: bool,
    /// SHA-256 of each operator key's SubjectPublicKeyInfo DER.
    pub keys: Vec<[u8; 32]>,
}

/// Why an unload is refused, or a token cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum UnloadError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The token is not a token.
    #[error("{path}: not an unload token: {problem}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The token is for another boot (or device).
    #[error("{path}: the token is for boot {token}, this device is in boot {here}")]
    OtherBoot {
        /// The file.
        path: PathBuf,
        /// The token's boot id.
        token: String,
        /// This boot's.
        here: String,
    },
    /// Expired, not yet valid, or valid for too long.
    #[error("{path}: {problem}")]
    Time {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The signer is not one of the keys the guard was loaded with.
    #[error(
        "{path}: signed by key {fingerprint}, which is not among the {keys} unload key(s) the running guard was loaded with"
    )]
    UnknownSigner {
        /// The file.
        path: PathBuf,
        /// The signer's fingerprint.
        fingerprint: String,
        /// How many keys the guard holds.
        keys: usize,
    },
    /// The signature does not verify.
    #[error("{signature}: the signature does not verify for {path} with its signer's key")]
    BadSignature {
        /// The token.
        path: PathBuf,
        /// The signature file.
        signature: PathBuf,
    },
    /// A key could not be loaded.
    #[error(transparent)]
    Key(#[from] crate::signing::SignError),
    /// The public key given is not the signing key's.
    #[error("{} is not the public half of {}", public.display(), key.display())]
    NotThePair {
        /// The public key file.
        public: PathBuf,
        /// The private key file.
        key: PathBuf,
    },
    /// A key file could not be read.
    #[error("reading {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// An output could not be written.
    #[error("writing {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Too many keys for the map.
    #[error("[guard] unload_keys names {count} keys, at most {MAX_KEYS}")]
    TooManyKeys {
        /// How many.
        count: usize,
    },
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// This boot's id (read once: it does not change until the next boot).
pub fn boot_id() -> Result<String, UnloadError> {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    if let Some(id) = ID.get() {
        return Ok(id.clone());
    }
    let p = Path::new("/proc/sys/kernel/random/boot_id");
    let id = std::fs::read_to_string(p)
        .map(|s| s.trim().to_owned())
        .map_err(|source| UnloadError::Io {
            path: p.to_owned(),
            source,
        })?;
    Ok(ID.get_or_init(|| id).clone())
}

/// SHA-256 of the effective config (file, then environment overrides), as
/// JSON: what a running guard compares a new agent's config with.
pub fn config_digest(config: &Config) -> [u8; 32] {
    // (`source`, where it was read from, is not serialised: not what it
    // says.)
    let json = serde_json::to_vec(config).unwrap_or_default();
    Sha256::digest(json).into()
}

/// What to fix into a freshly loaded guard.
pub fn auth_for(config: &Config) -> Result<Auth, UnloadError> {
    let keys = TrustedKey::load_all(&config.guard.unload_keys)?;
    if keys.len() > MAX_KEYS {
        return Err(UnloadError::TooManyKeys { count: keys.len() });
    }
    Ok(Auth {
        config: config_digest(config),
        without_token: config.guard.unload_without_token,
        keys: keys
            .iter()
            .filter_map(|k| <[u8; 32]>::try_from(hex::decode(&k.fingerprint).ok()?).ok())
            .collect(),
    })
}

impl Auth {
    /// The map's entries, in order.
    pub fn entries(&self) -> Vec<[u8; 32]> {
        let mut flags = [0u8; 32];
        flags[0] = u8::from(self.without_token);
        // A marker, so that an all-zero (never written) map reads as such.
        flags[1] = 1;
        let mut out = vec![self.config, flags];
        for i in 0..MAX_KEYS {
            out.push(self.keys.get(i).copied().unwrap_or([0; 32]));
        }
        out
    }

    /// Read back from the map's entries; `None` if never written.
    pub fn from_entries(e: &[[u8; 32]]) -> Option<Self> {
        let (config, flags) = (e.first()?, e.get(1)?);
        if flags[1] != 1 {
            return None;
        }
        Some(Self {
            config: *config,
            without_token: flags[0] == 1,
            keys: e[2..].iter().filter(|k| **k != [0; 32]).copied().collect(),
        })
    }
}

/// Make a token for `boot_id`, good for `valid_secs`, signed with `key`
/// (whose public half is `signer_pem`): the token's bytes and the detached
/// signature's.
pub fn create(
    key: &SigningKey,
    signer_pem: &str,
    boot_id: &str,
    valid_secs: u64,
    reason: &str,
) -> (Vec<u8>, Vec<u8>) {
    let issued = now();
    let token = Token {
        format: FORMAT.to_owned(),
        boot_id: boot_id.to_owned(),
        issued,
        not_after: issued + valid_secs.min(MAX_VALID),
        reason: reason.to_owned(),
        signer: signer_pem.to_owned(),
    };
    let mut bytes = serde_json::to_vec_pretty(&token).unwrap_or_default();
    bytes.push(b'\n');
    let sig = key.sign(&bytes);
    (bytes, sig)
}

/// A token written by [`write_token`].
#[derive(Debug)]
pub struct Written {
    /// Its signature file.
    pub signature: PathBuf,
    /// How long it is good for, seconds (at most [`MAX_VALID`]).
    pub valid_secs: u64,
    /// The signer's fingerprint.
    pub fingerprint: String,
}

/// `guardian unload-token`: make a token for `boot_id` (see [`create`])
/// with the private key at `key`, whose public half is at `public`, and
/// write it to `output` and its signature beside it.
pub fn write_token(
    key: &Path,
    public: &Path,
    boot_id: &str,
    valid_secs: u64,
    reason: &str,
    output: &Path,
) -> Result<Written, UnloadError> {
    let sk = SigningKey::load(key)?;
    let pem = std::fs::read_to_string(public).map_err(|source| UnloadError::Read {
        path: public.to_owned(),
        source,
    })?;
    let pk = TrustedKey::from_pem(&pem, public)?;
    let (bytes, sig) = create(&sk, &pem, boot_id, valid_secs, reason);
    if !pk.verifies_detached(&bytes, &sig) {
        return Err(UnloadError::NotThePair {
            public: public.to_owned(),
            key: key.to_owned(),
        });
    }
    let write = |path: &Path, bytes: &[u8]| {
        std::fs::write(path, bytes).map_err(|source| UnloadError::Write {
            path: path.to_owned(),
            source,
        })
    };
    write(output, &bytes)?;
    let signature = crate::manifest::signature_path(output);
    write(&signature, &sig)?;
    Ok(Written {
        signature,
        valid_secs: valid_secs.min(MAX_VALID),
        fingerprint: pk.fingerprint,
    })
}

/// Check the token at `path` (signature at `path.sig`) for an unload of a
/// guard loaded with `auth`, on boot `here`, at time `at`.
pub fn check(path: &Path, auth: &Auth, here: &str, at: u64) -> Result<Token, UnloadError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| UnloadError::Io {
            path: p.to_owned(),
            source,
        })
    };
    let bytes = read(path)?;
    let sig_path = crate::manifest::signature_path(path);
    let signature = read(&sig_path)?;
    check_bytes(path, &bytes, &sig_path, &signature, auth, here, at)
}

/// [`check`] on bytes already read (`path` and `sig_path` name them in
/// errors).
pub fn check_bytes(
    path: &Path,
    bytes: &[u8],
    sig_path: &Path,
    signature: &[u8],
    auth: &Auth,
    here: &str,
    at: u64,
) -> Result<Token, UnloadError> {
    let bad = |problem: String| UnloadError::Malformed {
        path: path.to_owned(),
        problem,
    };
    let token: Token = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
    if token.format != FORMAT {
        return Err(bad(format!(
            "format {:?}, this agent reads {FORMAT:?}",
            token.format
        )));
    }
    if token.boot_id != here {
        return Err(UnloadError::OtherBoot {
            path: path.to_owned(),
            token: token.boot_id,
            here: here.to_owned(),
        });
    }
    let time = |problem: String| UnloadError::Time {
        path: path.to_owned(),
        problem,
    };
    if token.not_after < token.issued || token.not_after - token.issued > MAX_VALID {
        return Err(time(format!(
            "valid for {} s, at most {MAX_VALID} s",
            token.not_after.saturating_sub(token.issued)
        )));
    }
    if at > token.not_after {
        return Err(time(format!("expired {} s ago", at - token.not_after)));
    }
    if at + 300 < token.issued {
        return Err(time(format!(
            "issued {} s in the future (clock skew over 5 minutes)",
            token.issued - at
        )));
    }
    let key = TrustedKey::from_pem(&token.signer, path)?;
    let fp: Option<[u8; 32]> = hex::decode(&key.fingerprint)
        .ok()
        .and_then(|d| d.try_into().ok());
    if !fp.is_some_and(|f| auth.keys.contains(&f)) {
        return Err(UnloadError::UnknownSigner {
            path: path.to_owned(),
            fingerprint: key.fingerprint.clone(),
            keys: auth.keys.len(),
        });
    }
    if !key.verifies_detached(bytes, signature) {
        return Err(UnloadError::BadSignature {
            path: path.to_owned(),
            signature: sig_path.to_owned(),
        });
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keypair(dir: &Path, name: &str) -> (SigningKey, String) {
        let sk = ed25519_dalek::SigningKey::from_bytes(&Sha256::digest(name.as_bytes()).into());
        use ed25519_dalek::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _};
        let pem = sk
            .to_pkcs8_pem(Default::default())
            .expect("private pem")
            .to_string();
        let path = dir.join(format!("{name}.pem"));
        std::fs::write(&path, pem).expect("write");
        let public = sk
            .verifying_key()
            .to_public_key_pem(Default::default())
            .expect("public pem");
        (SigningKey::load(&path).expect("load"), public)
    }

    fn auth_with(public: &[&str]) -> Auth {
        Auth {
            config: [7; 32],
            without_token: false,
            keys: public
                .iter()
                .map(|p| {
                    let k = TrustedKey::from_pem(p, Path::new("k")).expect("key");
                    hex::decode(k.fingerprint)
                        .expect("hex")
                        .try_into()
                        .expect("32")
                })
                .collect(),
        }
    }

    #[test]
    fn a_good_token_and_every_way_it_goes_bad() {
        let t = tempfile::tempdir().expect("tempdir");
        let (op, op_pub) = keypair(t.path(), "operator");
        let (other, other_pub) = keypair(t.path(), "other");
        let auth = auth_with(&[&op_pub]);
        let (bytes, sig) = create(&op, &op_pub, "boot-a", 600, "upgrade");
        let p = Path::new("unload.json");
        let s = Path::new("unload.json.sig");
        let at = now();
        let ok = check_bytes(p, &bytes, s, &sig, &auth, "boot-a", at).expect("good token");
        assert_eq!(ok.reason, "upgrade");

        // Another boot (or device).
        assert!(matches!(
            check_bytes(p, &bytes, s, &sig, &auth, "boot-b", at),
            Err(UnloadError::OtherBoot { .. })
        ));
        // Expired.
        assert!(matches!(
            check_bytes(p, &bytes, s, &sig, &auth, "boot-a", at + 601),
            Err(UnloadError::Time { .. })
        ));
        // A key the guard was not loaded with, though the signature is
        // its own and good.
        let (b2, s2) = create(&other, &other_pub, "boot-a", 600, "x");
        assert!(matches!(
            check_bytes(p, &b2, s, &s2, &auth, "boot-a", at),
            Err(UnloadError::UnknownSigner { .. })
        ));
        // The operator's key named as signer, signed by someone else.
        let mut forged: Token = serde_json::from_slice(&b2).expect("json");
        forged.signer = op_pub.clone();
        let fb = serde_json::to_vec(&forged).expect("json");
        let fs = other.sign(&fb);
        assert!(matches!(
            check_bytes(p, &fb, s, &fs, &auth, "boot-a", at),
            Err(UnloadError::BadSignature { .. })
        ));
        // Any byte of the token changed.
        for i in [10, bytes.len() / 2, bytes.len() - 3] {
            let mut m = bytes.clone();
            m[i] ^= 1;
            assert!(
                check_bytes(p, &m, s, &sig, &auth, "boot-a", at).is_err(),
                "byte {i} flipped"
            );
        }
        // Valid for longer than allowed (signed as such).
        let mut long: Token = serde_json::from_slice(&bytes).expect("json");
        long.not_after = long.issued + MAX_VALID + 1;
        let lb = serde_json::to_vec(&long).expect("json");
        let ls = op.sign(&lb);
        assert!(matches!(
            check_bytes(p, &lb, s, &ls, &auth, "boot-a", at),
            Err(UnloadError::Time { .. })
        ));
        // No keys at all: nothing can sign.
        assert!(check_bytes(p, &bytes, s, &sig, &Auth::default(), "boot-a", at).is_err());
        // Garbage.
        assert!(matches!(
            check_bytes(p, b"{", s, &sig, &auth, "boot-a", at),
            Err(UnloadError::Malformed { .. })
        ));
    }

    #[test]
    fn auth_round_trips_through_map_entries() {
        let a = Auth {
            config: [1; 32],
            without_token: true,
            keys: vec![[2; 32], [3; 32]],
        };
        let e = a.entries();
        assert_eq!(e.len(), AUTH_ENTRIES as usize);
        assert_eq!(Auth::from_entries(&e), Some(a));
        assert_eq!(
            Auth::from_entries(&vec![[0; 32]; 10]),
            None,
            "never written"
        );
    }

    #[test]
    fn config_digest_follows_what_the_config_says() {
        let a = Config::parse("").expect("empty config");
        let mut b = a.clone();
        assert_eq!(config_digest(&a), config_digest(&b));
        b.source = Some(PathBuf::from("/elsewhere.toml"));
        assert_eq!(
            config_digest(&a),
            config_digest(&b),
            "where it was read from is not what it says"
        );
        b.guard.protected.push(PathBuf::from("/opt/models"));
        assert_ne!(config_digest(&a), config_digest(&b));
    }
}
