//! Who may switch the guard off: unload tokens, and what the running guard
//! was loaded with.
//!
//! Removing the pins detaches every program, so `guardian stop --unload` is
//! the one command that ends enforcement. A root shell must not be enough
//! for it: it needs a token signed by an operator key named in `[guard]
//! unload_keys`, for this boot of this device, valid for a short time:
//!
//! ```text
//! unload.json      {"format":"guardian-unload/2","boot_id":"…","guard":"…","issued":…,
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
//!
//! **One token, one unload.** Every freshly loaded guard draws a random
//! id ([`Auth::guard`], 16 bytes from the OS's generator) and keeps it in
//! the same pinned record; `guardian status` shows it, and a token names
//! the one guard it may unload (`guard`). The unload removes that record
//! with the pins, and the next load draws another id, so a token that was
//! used (or one made for a guard since unloaded) names a guard that no
//! longer exists and is refused ([`UnloadError::OtherGuard`]), however
//! long it is still valid. An adopted guard keeps its id: a restarted
//! agent is the same guard, and `guardian stop` without `--unload` leaves
//! the token good. Nothing has to remember used tokens, so there is no
//! list for root to edit while the guard is down.

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
pub const FORMAT: &str = "guardian-unload/2";
/// Bytes of a guard's id ([`Auth::guard`]).
pub const GUARD_ID_LEN: usize = 16;
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
    /// The id of the loaded guard the token may unload (hex,
    /// [`Auth::guard`]). Empty in tokens of the older format, which are
    /// refused for their format.
    #[serde(default)]
    pub guard: String,
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
    /// This load of the guard: random, drawn when it is loaded, so that a
    /// token made for it unloads it once (all zero for a guard loaded by
    /// an agent older than the id).
    pub guard: [u8; GUARD_ID_LEN],
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
    /// The token names another load of the guard: it was used already
    /// (the guard it unloaded is gone), or made for a guard since unloaded.
    #[error(
        "{path}: the token is for guard {token}, but the running guard is {running}: a token unloads the one guard it names, once (it was used, or that guard was unloaded since); `guardian status` shows the running guard's id"
    )]
    OtherGuard {
        /// The file.
        path: PathBuf,
        /// The guard id the token names.
        token: String,
        /// The running guard's.
        running: String,
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
    /// `--guard` is not a guard id.
    #[error(
        "guard id {given:?} is not {GUARD_ID_LEN} bytes in hex (`guardian status` on the device shows it)"
    )]
    GuardId {
        /// What was given.
        given: String,
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
        guard: new_guard_id(),
    })
}

/// A fresh guard id: 16 bytes from the OS's generator (`getrandom(2)`).
/// Should the generator fail (it does not, once the kernel's pool is
/// ready), the time and pid stand in, hashed: unique enough to tell one
/// load from the next on this boot, which is all the id has to do.
fn new_guard_id() -> [u8; GUARD_ID_LEN] {
    use rand_core::RngCore as _;
    let mut id = [0u8; GUARD_ID_LEN];
    if rand_core::OsRng.try_fill_bytes(&mut id).is_err() {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let h = Sha256::digest(format!("{nanos}/{}", std::process::id()));
        id.copy_from_slice(&h[..GUARD_ID_LEN]);
    }
    id
}

impl Auth {
    /// The map's entries, in order.
    pub fn entries(&self) -> Vec<[u8; 32]> {
        let mut flags = [0u8; 32];
        flags[0] = u8::from(self.without_token);
        // A marker, so that an all-zero (never written) map reads as such.
        flags[1] = 1;
        flags[2..2 + GUARD_ID_LEN].copy_from_slice(&self.guard);
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
        let mut guard = [0u8; GUARD_ID_LEN];
        guard.copy_from_slice(&flags[2..2 + GUARD_ID_LEN]);
        Some(Self {
            config: *config,
            without_token: flags[0] == 1,
            keys: e[2..].iter().filter(|k| **k != [0; 32]).copied().collect(),
            guard,
        })
    }
}

/// Make a token for the guard `guard` (its hex id) in boot `boot_id`,
/// good for `valid_secs`, signed with `key` (whose public half is
/// `signer_pem`): the token's bytes and the detached signature's.
pub fn create(
    key: &SigningKey,
    signer_pem: &str,
    boot_id: &str,
    guard: &str,
    valid_secs: u64,
    reason: &str,
) -> (Vec<u8>, Vec<u8>) {
    let issued = now();
    let token = Token {
        format: FORMAT.to_owned(),
        boot_id: boot_id.to_owned(),
        guard: guard.to_ascii_lowercase(),
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

/// `guardian unload-token`: make a token for the guard `guard` in boot
/// `boot_id` (see [`create`]) with the private key at `key`, whose public
/// half is at `public`, and write it to `output` and its signature beside
/// it.
pub fn write_token(
    key: &Path,
    public: &Path,
    boot_id: &str,
    guard: &str,
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
    if !hex::decode(guard).is_ok_and(|g| g.len() == GUARD_ID_LEN) {
        return Err(UnloadError::GuardId {
            given: guard.to_owned(),
        });
    }
    let (bytes, sig) = create(&sk, &pem, boot_id, guard, valid_secs, reason);
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
    let running = hex::encode(auth.guard);
    if !token.guard.eq_ignore_ascii_case(&running) {
        return Err(UnloadError::OtherGuard {
            path: path.to_owned(),
            token: token.guard,
            running,
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
            guard: [0xa5; GUARD_ID_LEN],
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

    /// The guard id of [`auth_with`]'s guard, in hex.
    const GUARD_A: &str = "a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5";

    #[test]
    fn a_token_unloads_the_one_guard_it_names_once() {
        let t = tempfile::tempdir().expect("tempdir");
        let (op, op_pub) = keypair(t.path(), "operator");
        let first = auth_with(&[&op_pub]);
        let (bytes, sig) = create(&op, &op_pub, "boot-a", GUARD_A, 600, "upgrade");
        let (p, s) = (Path::new("unload.json"), Path::new("unload.json.sig"));
        let at = now();
        check_bytes(p, &bytes, s, &sig, &first, "boot-a", at).expect("the guard it names");
        // The same guard loaded again after the unload: same boot, same
        // config, same keys, a new id. The used token is refused.
        let again = Auth {
            guard: new_guard_id(),
            ..first.clone()
        };
        assert_ne!(again.guard, first.guard, "a fresh load draws a fresh id");
        match check_bytes(p, &bytes, s, &sig, &again, "boot-a", at) {
            Err(UnloadError::OtherGuard { token, running, .. }) => {
                assert_eq!(token, GUARD_A);
                assert_eq!(running, hex::encode(again.guard));
            }
            other => panic!("a replayed token must be refused, got {other:?}"),
        }
        // A token of the older format (no guard named) is refused too.
        let mut old: Token = serde_json::from_slice(&bytes).expect("json");
        old.format = "guardian-unload/1".into();
        old.guard.clear();
        let ob = serde_json::to_vec(&old).expect("json");
        let os = op.sign(&ob);
        assert!(matches!(
            check_bytes(p, &ob, s, &os, &first, "boot-a", at),
            Err(UnloadError::Malformed { .. })
        ));
        // The id survives the pinned record (what an adopting agent reads).
        assert_eq!(Auth::from_entries(&again.entries()), Some(again));
    }

    #[test]
    fn a_good_token_and_every_way_it_goes_bad() {
        let t = tempfile::tempdir().expect("tempdir");
        let (op, op_pub) = keypair(t.path(), "operator");
        let (other, other_pub) = keypair(t.path(), "other");
        let auth = auth_with(&[&op_pub]);
        let (bytes, sig) = create(&op, &op_pub, "boot-a", GUARD_A, 600, "upgrade");
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
        let (b2, s2) = create(&other, &other_pub, "boot-a", GUARD_A, 600, "x");
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
            guard: [4; GUARD_ID_LEN],
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
