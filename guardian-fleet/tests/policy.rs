//! `guardian-fleet policy publish` against a real nats-server: a set is
//! checked as a device would check it before it is stored, a version must
//! go up, and `policy list` shows what each group has.
//!
//! Keys are made with openssl, so the formats are the real ones.
//! nats-server comes from `cross/setup.sh` (or `GUARDIAN_NATS_SERVER`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../guardian-report/tests/support/nats.rs"]
mod support;
use support::{free_port, start_server};

use std::{path::Path, process::Command};

use guardian_attest::{policy_set, signing::SigningKey};

fn openssl(args: &[&str]) {
    let out = Command::new("openssl").args(args).output().unwrap();
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
}

fn key_pair(dir: &Path, name: &str) -> (SigningKey, String) {
    let key = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pem"));
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        key.to_str().unwrap(),
    ]);
    openssl(&[
        "pkey",
        "-in",
        key.to_str().unwrap(),
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);
    (
        SigningKey::load(&key).unwrap(),
        public.to_str().unwrap().to_owned(),
    )
}

/// A signed set for `group` at `version` in `dir/name.set`.
fn set(dir: &Path, key: &SigningKey, group: &str, version: u64, name: &str) -> String {
    let policies = dir.join(format!("{name}-policies"));
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(policies.join("allowlist.wasm"), format!("\0asm v{version}")).unwrap();
    std::fs::write(policies.join("allowlist.wasm.sig"), b"sig").unwrap();
    let signed = policy_set::pack(&policies, group, version, "2026-12-05T10:00:00Z", key).unwrap();
    let file = dir.join(format!("{name}.set"));
    std::fs::write(&file, signed.to_bytes()).unwrap();
    file.to_str().unwrap().to_owned()
}

fn fleet(url: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_guardian-fleet"))
        .args(["--nats", url])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn a_set_is_published_only_when_a_device_would_take_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let port = free_port();
    let conf = dir.join("nats.conf");
    std::fs::write(
        &conf,
        format!(
            "listen: 127.0.0.1:{port}\nmax_payload: {}\njetstream {{ store_dir: {:?} }}\n",
            policy_set::MAX_SET_BYTES,
            dir.join("js")
        ),
    )
    .unwrap();
    let mut server = start_server(&conf, port);
    let url = format!("nats://127.0.0.1:{port}");
    let (key, public) = key_pair(dir, "policy");
    let (other_key, _) = key_pair(dir, "other");

    let (ok, out) = fleet(&url, &["policy", "list"]);
    assert!(ok, "{out}");
    assert!(out.contains("no policy set published"), "{out}");

    let publish = |group: &str, file: &str| {
        fleet(
            &url,
            &[
                "policy",
                "publish",
                "--group",
                group,
                "--policy-key",
                &public,
                file,
            ],
        )
    };
    let v2 = set(dir, &key, "cameras", 2, "v2");
    let (ok, out) = publish("cameras", &v2);
    assert!(ok, "{out}");
    assert!(out.contains("published group cameras version 2"), "{out}");

    // The same version again, an older one, another group's, another
    // key's, not a set at all: each refused, named, nothing changes.
    for (group, file, why) in [
        ("cameras", v2.clone(), "must have a higher version"),
        (
            "cameras",
            set(dir, &key, "cameras", 1, "v1"),
            "group cameras is at version 2",
        ),
        (
            "cameras",
            set(dir, &key, "doors", 3, "doors3"),
            "the set is for group \"doors\", not \"cameras\"",
        ),
        (
            "cameras",
            set(dir, &other_key, "cameras", 3, "other3"),
            "does not verify with any of 1 trusted policy key",
        ),
        ("cameras", public.clone(), "malformed policy set"),
        ("cam eras", v2.clone(), "group name"),
    ] {
        let (ok, out) = publish(group, &file);
        assert!(!ok, "{file} was published: {out}");
        assert!(out.contains(why), "{file}: expected {why:?} in {out}");
    }
    let (ok, out) = fleet(&url, &["policy", "list", "--policy-key", &public]);
    assert!(ok, "{out}");
    assert!(out.contains("group cameras          version 2 "), "{out}");
    assert!(out.contains("signed by "), "{out}");

    // A newer one goes in; list shows it, and its JSON names the policies.
    let v3 = set(dir, &key, "cameras", 3, "v3");
    let (ok, out) = publish("cameras", &v3);
    assert!(ok, "{out}");
    let out = Command::new(env!("CARGO_BIN_EXE_guardian-fleet"))
        .args(["--nats", &url, "policy", "list", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["groups"]["cameras"]["version"], 3, "{v:#}");
    assert_eq!(v["groups"]["cameras"]["policies"][0], "allowlist", "{v:#}");
    assert_eq!(
        v["groups"]["cameras"]["digest"],
        policy_set::SignedSet::parse(&std::fs::read(&v3).unwrap())
            .unwrap()
            .digest()
    );

    // Someone with write access to the broker puts the older set 2 back
    // as the key's value, behind the fleet: the fleet still shows 3 as the
    // group's set, says the bucket was rolled back, and the bar for the
    // next publish stays above 3.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let js = async_nats::jetstream::new(async_nats::connect(url.as_str()).await.unwrap());
        let kv = js.get_key_value("guardian_policy").await.unwrap();
        kv.put("cameras", std::fs::read(&v2).unwrap().into())
            .await
            .unwrap();
    });
    let (ok, out) = fleet(&url, &["policy", "list", "--policy-key", &public]);
    assert!(ok, "{out}");
    assert!(out.contains("group cameras          version 3 "), "{out}");
    assert!(
        out.contains("WARNING: the bucket's current value is version 2")
            && out.contains("rolled back"),
        "{out}"
    );
    let (ok, out) = publish("cameras", &v3);
    assert!(
        !ok && out.contains("group cameras is at version 3"),
        "{out}"
    );
    // A version so far above that devices would refuse it (it would leave
    // no room for later sets).
    // (`pack` refuses to make one; built by hand, validly signed.)
    let far = {
        let base = policy_set::SignedSet::parse(
            &std::fs::read(set(dir, &key, "cameras", 4, "base")).unwrap(),
        )
        .unwrap();
        let mut doc: serde_json::Value = serde_json::from_slice(&base.document).unwrap();
        doc["version"] = serde_json::json!(3u64 + (1u64 << 32) + 1);
        let document = serde_json::to_vec(&doc).unwrap();
        let signed = policy_set::SignedSet {
            signature: key.sign(&document),
            document,
        };
        let file = dir.join("far.set");
        std::fs::write(&file, signed.to_bytes()).unwrap();
        file.to_str().unwrap().to_owned()
    };
    let (ok, out) = publish("cameras", &far);
    assert!(!ok && out.contains("above the floor 3"), "{out}");
    let (ok, out) = publish("cameras", &set(dir, &key, "cameras", 4, "v4"));
    assert!(ok, "{out}");
    let (ok, out) = fleet(&url, &["policy", "list"]);
    assert!(
        ok && out.contains("version 4 ") && !out.contains("WARNING"),
        "{out}"
    );
    let _ = server.kill();
    let _ = server.wait();
}
