//! Shared by the TPM integration tests: a real swtpm per test, and a
//! scratch "board" with models, a vendor key, a signed manifest and a
//! config.

use std::{
    net::TcpStream,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use sha2::{Digest as _, Sha256};

/// `cmd` with none of this process's descriptors but its standard ones.
/// The TSS's swtpm connection is not close-on-exec: a swtpm (or any
/// child) started by one thread while another talks to its own swtpm
/// would keep a copy of that connection open, and swtpm, which serves one
/// connection at a time, would wait on the copy for ever.
pub fn no_inherited_fds(cmd: &mut Command) -> &mut Command {
    // SAFETY: close_range(2) is a single syscall, async-signal-safe; with
    // CLOSE_RANGE_CLOEXEC it closes nothing now, so std's own exec-error
    // pipe still works.
    unsafe {
        cmd.pre_exec(|| {
            libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
            Ok(())
        })
    }
}

pub struct Swtpm {
    child: Child,
    pub port: u16,
    state: tempfile::TempDir,
}

impl Swtpm {
    pub fn start() -> Self {
        Self::start_in(tempfile::tempdir().unwrap())
    }

    /// A swtpm whose state `swtpm_setup` first manufactured with EK
    /// certificates signed by swtpm's local CA (as a TPM vendor would).
    pub fn manufactured() -> Self {
        let state = tempfile::tempdir().unwrap();
        let out = no_inherited_fds(&mut Command::new("swtpm_setup"))
            .args(["--tpm2", "--tpmstate"])
            .arg(state.path())
            .args([
                "--create-ek-cert",
                "--create-platform-cert",
                "--lock-nvram",
                "--overwrite",
            ])
            .output()
            .unwrap_or_else(|e| {
                panic!("!!! swtpm_setup cannot run ({e}): enrolment is NOT tested against a TPM")
            });
        assert!(
            out.status.success(),
            "!!! swtpm_setup failed, enrolment is NOT tested: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Self::start_in(state)
    }

    fn start_in(state: tempfile::TempDir) -> Self {
        // Two consecutive free ports: server and control.
        let port = loop {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let p = l.local_addr().unwrap().port();
            if p < 65000 && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
                break p;
            }
        };
        let child = Self::spawn(state.path(), port);
        Self { child, port, state }
    }

    fn spawn(state: &Path, port: u16) -> Child {
        let child = no_inherited_fds(&mut Command::new("swtpm"))
            .args(["socket", "--tpm2", "--tpmstate"])
            .arg(format!("dir={}", state.display()))
            .arg("--server")
            .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
            .arg("--ctrl")
            .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
            .args(["--flags", "not-need-init,startup-clear"])
            .stdout(Stdio::null())
            .spawn()
            .expect("swtpm (cross/setup.sh installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "swtpm did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        child
    }

    /// Power-cycle the TPM, keeping its state (keys, NV, clock): what a
    /// reboot does to it. PCRs reset, the reset count goes up.
    pub fn reboot(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Self::spawn(self.state.path(), self.port);
    }
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }
    /// PCR value via tpm2-tools, independent of our code.
    pub fn pcrread(&self, pcr: u32) -> String {
        let out = Command::new("tpm2_pcrread")
            .args(["-T", &self.tcti(), &format!("sha256:{pcr}")])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let v = text
            .lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{pcr}:")))
            .unwrap_or_else(|| panic!("no pcr {pcr} in {text}"));
        v.trim().trim_start_matches("0x").to_lowercase()
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Models, keys, a signed manifest and a config in a temp dir.
pub struct Board {
    pub dir: tempfile::TempDir,
}

pub fn openssl(args: &[&str]) {
    let out = no_inherited_fds(&mut Command::new("openssl"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn guardian(args: &[&str]) -> Output {
    no_inherited_fds(&mut Command::new(env!("CARGO_BIN_EXE_guardian")))
        .args(args)
        .env("GUARDIAN_LOG", "info")
        .env_remove("TPM2TOOLS_TCTI")
        .env_remove("TCTI")
        .output()
        .unwrap()
}

impl Board {
    pub fn new(tcti: &str) -> Self {
        let b = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::create_dir(b.p("models")).unwrap();
        std::fs::write(b.p("models/classifier.onnx"), vec![7u8; 300_000]).unwrap();
        std::fs::write(b.p("models/labels.txt"), b"cat\ndog\n").unwrap();
        openssl(&[
            "genpkey",
            "-algorithm",
            "ed25519",
            "-out",
            &b.s("vendor.pem"),
        ]);
        openssl(&[
            "pkey",
            "-in",
            &b.s("vendor.pem"),
            "-pubout",
            "-out",
            &b.s("vendor.pub"),
        ]);
        let out = guardian(&[
            "manifest",
            "create",
            &b.s("models"),
            "--key",
            &b.s("vendor.pem"),
            "-o",
            &b.s("manifest.toml"),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(
            b.p("guardian.toml"),
            format!(
                "[measure]\nmanifest = \"manifest.toml\"\ntrusted_keys = [\"vendor.pub\"]\n\
                 log = \"measurements.log\"\ntcti = \"{tcti}\"\n"
            ),
        )
        .unwrap();
        b
    }
    pub fn p(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    pub fn s(&self, name: &str) -> String {
        self.p(name).display().to_string()
    }
    pub fn measure(&self) -> Output {
        guardian(&["measure", "-c", &self.s("guardian.toml")])
    }
    /// Re-sign the manifest after editing it, with `key`.
    pub fn sign_with(&self, key: &str) {
        openssl(&[
            "pkeyutl",
            "-sign",
            "-inkey",
            &self.s(key),
            "-rawin",
            "-in",
            &self.s("manifest.toml"),
            "-out",
            &self.s("manifest.toml.sig"),
        ]);
    }
    pub fn log_records(&self) -> usize {
        std::fs::read_to_string(self.p("measurements.log"))
            .unwrap_or_default()
            .lines()
            .count()
    }
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The PCR computed here from `log`'s records, after checking, with
/// digests computed here, that they measured exactly `files` in this order
/// (the manifest's text, then each model) and that each record's digest is
/// SHA-256 of its canonical event encoding, rebuilt here from the JSON.
pub fn expected_pcr(log: &Path, files: &[&Path]) -> String {
    let text = std::fs::read_to_string(log).unwrap();
    let mut pcr = [0u8; 32];
    let mut measured = Vec::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if v["event"]["kind"] == "note" || v["extended"] != true {
            continue;
        }
        // The canonical encoding: format, pcr, then the event object with
        // its fields as the log wrote them (declaration order).
        let event_text = line
            .split_once("\"event\":")
            .map(|(_, e)| e.strip_suffix('}').unwrap())
            .unwrap();
        let canonical = format!(
            "{{\"format\":\"guardian-event/1\",\"pcr\":{},\"event\":{event_text}}}",
            v["pcr"]
        );
        let d: [u8; 32] = Sha256::digest(canonical.as_bytes()).into();
        assert_eq!(v["digest"], hex::encode(d), "record digest of {line}");
        measured.push(v["event"]["sha256"].as_str().unwrap().to_owned());
        let mut h = Sha256::new();
        h.update(pcr);
        h.update(d);
        pcr = h.finalize().into();
    }
    let want: Vec<String> = files
        .iter()
        .map(|f| hex::encode(Sha256::digest(std::fs::read(f).unwrap())))
        .collect();
    assert_eq!(measured, want, "the records measured other content");
    hex::encode(pcr)
}

/// swtpm_localca's CA files, from its config (statedir, issuercert): the
/// TPM "manufacturer" that certified the EKs of `Swtpm::manufactured`.
pub fn localca_files() -> (PathBuf, PathBuf) {
    let conf = std::fs::read_to_string("/etc/swtpm-localca.conf")
        .expect("!!! /etc/swtpm-localca.conf is missing: the EK chain cannot be checked");
    let get = |key: &str| {
        conf.lines()
            .filter_map(|l| l.split_once('='))
            .find(|(k, _)| k.trim() == key)
            .map(|(_, v)| PathBuf::from(v.trim()))
            .unwrap_or_else(|| panic!("no {key} in /etc/swtpm-localca.conf"))
    };
    let root = get("statedir").join("swtpm-localca-rootca-cert.pem");
    (root, get("issuercert"))
}

/// swtpm_localca's root and issuer, loaded as the verifier's CAs.
pub fn localca() -> guardian::enrol::CaCerts {
    let (root, issuer) = localca_files();
    let cas = guardian::enrol::load_ca_certs(&[root, issuer]).unwrap();
    assert_eq!(cas.len(), 2);
    cas
}

/// A child process killed (and reaped) when dropped, however the test
/// ends.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A pin directory on bpffs, its pins removed (as `guardian stop --unload`
/// removes them) and the directory with them when dropped: pinned
/// programs outlive the agent by design, not the test.
pub struct Pins(pub PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        if let Ok(entries) = std::fs::read_dir(&self.0) {
            for e in entries.flatten() {
                let _ = guardian::guard::remove_pins(&e.path());
            }
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}
