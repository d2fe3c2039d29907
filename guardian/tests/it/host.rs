//! Host integration tests: the real `guardian` binary, real eBPF programs
//! on this machine's kernel (syscall tracepoints; BPF LSM is tested in the
//! aarch64 guest, see `qemu/`), real files.
//!
//! They need root (loading eBPF). They refuse to pass without it: a guard
//! test that silently skips would hide exactly the failures it exists for.
//! The tests share the kernel, so they take a lock and run one at a time.

// Tests panic on purpose: the failing line is the report.
use std::{
    io::Write as _,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::common;
use crate::nats_support;
use common::KillOnDrop;
use nats_support::nats_server;

static KERNEL: Mutex<()> = Mutex::new(());

pub(crate) fn exclusive() -> MutexGuard<'static, ()> {
    assert!(
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() } == 0,
        "the host integration tests load eBPF programs and must run as root (./test.sh does)"
    );
    KERNEL.lock().unwrap_or_else(|e| e.into_inner())
}

fn guardian() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_guardian"));
    c.env_remove("GUARDIAN_MODE")
        .env_remove("GUARDIAN_CONFIG")
        .env_remove("GUARDIAN_KERNEL_BTF")
        .env("GUARDIAN_LOG", "info");
    c
}

/// A scratch directory with a protected model, an unprotected file, and a
/// config; readable by everyone (one test runs the agent as nobody).
struct Scene {
    dir: tempfile::TempDir,
}

impl Scene {
    fn new(mode: &str, writers: &[&Path]) -> Self {
        Self::with(mode, writers, "")
    }

    /// A scene whose config ends with `extra` (more keys or sections).
    fn with(mode: &str, writers: &[&Path], extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let s = Self { dir };
        std::fs::write(s.model(), b"weights v1\n").unwrap();
        std::fs::write(s.path("other.bin"), b"not protected\n").unwrap();
        let writers: Vec<String> = writers
            .iter()
            .map(|w| format!("{:?}", w.display().to_string()))
            .collect();
        // The operator's key pair, whose tokens may unload this scene's guard.
        common::openssl(&[
            "genpkey",
            "-algorithm",
            "ed25519",
            "-out",
            &s.path("operator.pem").display().to_string(),
        ]);
        common::openssl(&[
            "pkey",
            "-in",
            &s.path("operator.pem").display().to_string(),
            "-pubout",
            "-out",
            &s.path("operator.pub").display().to_string(),
        ]);
        let cfg = format!(
            "[guard]\nmode = \"{mode}\"\nprotected = [{:?}]\nallowed_writers = [{}]\npin_dir = {:?}\nunload_keys = [{:?}]\n\
             [events]\noutput = {:?}\n[status]\npath = {:?}\ninterval_secs = 1\n\
             [measure]\nlog = {:?}\nmanifest = {:?}\n{extra}",
            s.model().display().to_string(),
            writers.join(", "),
            s.pin_dir().display().to_string(),
            s.path("operator.pub").display().to_string(),
            s.path("events.jsonl").display().to_string(),
            s.path("status.json").display().to_string(),
            s.path("measurements.log").display().to_string(),
            s.path("manifest.toml").display().to_string(),
        );
        std::fs::write(s.config(), cfg).unwrap();
        s
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    /// Add `lines` to the `[guard]` section.
    fn guard_keys(self, lines: &str) -> Self {
        let cfg = std::fs::read_to_string(self.config()).unwrap();
        std::fs::write(
            self.config(),
            cfg.replacen("[guard]\n", &format!("[guard]\n{lines}\n"), 1),
        )
        .unwrap();
        self
    }
    /// A pin directory of this scene's own (bpffs), removed on drop.
    fn pin_dir(&self) -> PathBuf {
        // bpffs refuses dots in names.
        let tag = self
            .dir
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .replace('.', "_");
        PathBuf::from(format!("/sys/fs/bpf/guardian-test{tag}"))
    }
    /// Remove the pins (what `guardian stop --unload` does).
    fn unpin(&self) {
        if let Ok(entries) = std::fs::read_dir(self.pin_dir()) {
            for e in entries.flatten() {
                guardian::guard::remove_pins(&e.path()).unwrap();
            }
        }
        let _ = std::fs::remove_dir(self.pin_dir());
    }
    fn model(&self) -> PathBuf {
        self.path("model.onnx")
    }
    /// An unload token for this boot and the guard pinned in the scene's
    /// pin directory, signed by the scene's operator key.
    fn unload_token(&self) -> PathBuf {
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
        let guard = std::fs::read_dir(self.pin_dir())
            .unwrap()
            .flatten()
            .map(|e| guardian::guard::pinned_guard_id(&e.path()))
            .find(|g| !g.is_empty())
            .expect("a pinned guard with an id");
        let out = guardian()
            .arg("unload-token")
            .arg("--key")
            .arg(self.path("operator.pem"))
            .arg("--pub")
            .arg(self.path("operator.pub"))
            .args(["--boot-id", boot.trim(), "--guard", &guard])
            .args(["--reason", "test teardown", "-o"])
            .arg(self.path("unload.json"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.path("unload.json")
    }
    fn config(&self) -> PathBuf {
        self.path("guardian.toml")
    }
    fn events(&self) -> Vec<Value> {
        std::fs::read_to_string(self.path("events.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
    fn status(&self) -> Option<Value> {
        let text = std::fs::read_to_string(self.path("status.json")).ok()?;
        serde_json::from_str(&text).ok()
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        // Pinned programs outlive the agent by design; not the test.
        self.unpin();
    }
}

/// A running agent, stopped (SIGTERM) on drop.
struct Agent {
    child: Child,
    stderr: PathBuf,
}

impl Agent {
    fn start(scene: &Scene) -> Self {
        let stderr = scene.path("agent.stderr");
        let child = guardian()
            .args(["run", "--config"])
            .arg(scene.config())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let mut agent = Self { child, stderr };
        let deadline = Instant::now() + Duration::from_secs(30);
        while scene.status().is_none() {
            if let Some(code) = agent.child.try_wait().unwrap() {
                panic!("guardian exited with {code} before ready:\n{}", agent.log());
            }
            assert!(
                Instant::now() < deadline,
                "guardian not ready in 30 s:\n{}",
                agent.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        agent
    }
    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
    fn stop(mut self) -> String {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        assert!(status.success(), "guardian exit {status}:\n{}", self.log());
        self.log()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The entry for `name` in a status file's `hooks`.
fn hook(status: &Value, name: &str) -> Value {
    status["hooks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["hook"] == name)
        .unwrap_or_else(|| panic!("no hook {name} in {status:#}"))
        .clone()
}

/// A private copy of python3 standing in for the inference service (its
/// own inode), in a directory that lives as long as the returned guard.
fn python_service() -> (tempfile::TempDir, PathBuf) {
    let bin = tempfile::tempdir().unwrap();
    let svc = bin.path().join("inference-service");
    std::fs::copy(std::fs::canonicalize("/usr/bin/python3").unwrap(), &svc).unwrap();
    (bin, svc)
}

/// Wait until `f` returns Some, or fail after `secs`.
fn wait_for<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn counter(scene: &Scene, name: &str) -> u64 {
    scene.status().unwrap()["counters"][name].as_u64().unwrap()
}

/// Ids of guardian's programs loaded in the kernel (names are cut to 15
/// bytes), whoever loaded them.
fn guardian_programs() -> std::collections::BTreeSet<u32> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| p.name_as_str().is_some_and(|n| n.starts_with("guardian_")))
        .map(|p| p.id())
        .collect()
}

/// The programs loaded since `before` was taken: this test's (the tests
/// hold a lock, but another guardian on the machine, e.g. a benchmark, is
/// not ours to count).
fn our_programs(before: &std::collections::BTreeSet<u32>) -> Vec<u32> {
    guardian_programs().difference(before).copied().collect()
}

/// Run a shell as a child that keeps running (so /proc/PID/exe stays
/// valid) until we close its stdin.
fn shell(exe: &Path, script: &str) -> Child {
    Command::new(exe)
        .args(["-c", &format!("{script}; read _done || true")])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(mut child: Child) {
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
}

#[test]
fn tracepoint_reports_write_open_of_protected_file_only() {
    let _k = exclusive();
    let before = guardian_programs();
    let scene = Scene::new("detect", &[]).guard_keys("syscall_detect = true");
    let agent = Agent::start(&scene);
    let st = scene.status().unwrap();
    assert_eq!(st["mode"], "detect");
    assert_eq!(st["hooks"][0]["mechanism"], "tracepoint");

    let sh = PathBuf::from("/bin/sh").canonicalize().unwrap();
    let model = scene.model();
    let other = scene.path("other.bin");
    // A read-only open and a write to an unprotected file first, then the
    // tamper: only the last may produce an event.
    let child = shell(
        &sh,
        &format!(
            "cat {m} >/dev/null && echo x >> {o} && echo tamper >> {m}",
            m = model.display(),
            o = other.display()
        ),
    );
    let pid = child.id();
    let events = wait_for(10, "the write-open event", || {
        let e = scene.events();
        (!e.is_empty()).then_some(e)
    });
    finish(child);

    let meta = std::fs::metadata(&model).unwrap();
    assert_eq!(events.len(), 1, "{events:#?}");
    let ev = &events[0];
    assert_eq!(ev["event"], "file_write_open");
    assert_eq!(ev["verdict"], "alert");
    assert_eq!(ev["mode"], "detect");
    assert_eq!(ev["pid"], pid);
    assert_eq!(ev["ppid"], std::process::id());
    assert_eq!(ev["uid"], 0);
    assert_eq!(ev["exe"], sh.display().to_string());
    assert_eq!(ev["file"], model.display().to_string());
    assert_eq!(ev["ino"], meta.ino());
    let flags = ev["flags_text"].as_str().unwrap();
    assert!(
        flags.starts_with("O_WRONLY") && flags.contains("O_APPEND"),
        "{flags}"
    );
    assert!(ev["time"].as_str().unwrap().ends_with('Z'));

    // In-kernel filtering: the kernel itself submitted exactly one record;
    // the read-only open and the unprotected write never left the kernel.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(counter(&scene, "events_submitted"), 1);
    // Counted twice (the write-open, and the write through it), reported
    // once: the write on a descriptor already reported adds no event.
    assert_eq!(counter(&scene, "detected"), 2);
    assert_eq!(counter(&scene, "ringbuf_drops"), 0);
    assert_eq!(scene.events().len(), 1);
    agent.stop();
    // Pinned: the programs outlive the agent, until `stop --unload`.
    assert!(
        !our_programs(&before).is_empty(),
        "the pinned programs went away with the agent"
    );
    // A root shell alone cannot switch it off: that takes a token.
    let out = guardian()
        .args(["stop", "--unload", "--config"])
        .arg(scene.config())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "unloaded without a token: {err}");
    assert!(err.contains("takes a token"), "{err}");
    assert!(
        !our_programs(&before).is_empty(),
        "the programs went away on a refused unload"
    );
    // A token for another boot is refused too.
    let token = scene.unload_token();
    let text = std::fs::read_to_string(&token).unwrap();
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    std::fs::write(
        scene.path("other.json"),
        text.replace(boot.trim(), "00000000-0000-0000-0000-000000000000"),
    )
    .unwrap();
    std::fs::copy(scene.path("unload.json.sig"), scene.path("other.json.sig")).unwrap();
    let out = guardian()
        .args(["stop", "--unload", "--config"])
        .arg(scene.config())
        .arg("--token")
        .arg(scene.path("other.json"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "unloaded with another boot's token: {err}"
    );
    assert!(err.contains("for boot"), "{err}");
    let out = guardian()
        .args(["stop", "--unload", "--config"])
        .arg(scene.config())
        .arg("--token")
        .arg(&token)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("unload authorised"), "{err}");
    assert!(
        err.contains("no guardian agent was running") && err.contains("detached"),
        "{err}"
    );
    // The kernel frees unreferenced programs asynchronously.
    wait_for(5, "the programs to be freed after stop --unload", || {
        our_programs(&before).is_empty().then_some(())
    });
}

#[test]
fn allowlisted_writer_is_recognised_by_executable_inode() {
    let _k = exclusive();
    // A private copy of the shell is the "updater": same bytes and same
    // comm-able name as /bin/sh, different inode. Only the copy is allowed.
    let bin = tempfile::tempdir().unwrap();
    let updater = bin.path().join("model-updater");
    std::fs::copy("/bin/sh", &updater).unwrap();
    let scene = Scene::new("detect", &[&updater]).guard_keys("syscall_detect = true");
    let agent = Agent::start(&scene);

    let model = scene.model();
    let good = shell(&updater, &format!("echo v2 >> {}", model.display()));
    let good_pid = good.id();
    wait_for(10, "the updater's event", || {
        (scene.events().len() == 1).then_some(())
    });
    finish(good);
    // `exec -a` gives the impostor the updater's name; it must not matter.
    let bad = shell(
        Path::new("/bin/bash"),
        &format!(
            "exec -a model-updater /bin/sh -c 'echo evil >> {}; read _x || true'",
            model.display()
        ),
    );
    let bad_pid = bad.id();
    let events = wait_for(10, "the impostor's event", || {
        let e = scene.events();
        (e.len() == 2).then_some(e)
    });
    finish(bad);
    agent.stop();

    assert_eq!(events[0]["pid"], good_pid);
    assert_eq!(events[0]["verdict"], "allow");
    assert_eq!(events[0]["exe"], updater.display().to_string());
    assert_eq!(events[1]["pid"], bad_pid);
    assert_eq!(events[1]["verdict"], "alert");
    assert_ne!(events[1]["exe_ino"], events[0]["exe_ino"]);
}

#[test]
fn status_command_shows_mode_and_reason() {
    let _k = exclusive();
    let scene = Scene::new("auto", &[]);
    let agent = Agent::start(&scene);
    let out = guardian()
        .args(["status", "--config"])
        .arg(scene.config())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    // This kernel cannot run BPF LSM programs (no trampolines), so auto
    // must fall back and say why, not claim enforcement.
    let st = scene.status().unwrap();
    if st["mode"] == "detect" {
        assert!(text.contains("mode: DETECT"), "{text}");
        assert!(text.contains("BPF LSM"), "{text}");
        assert!(text.contains("! detect-only"), "{text}");
        assert!(agent.log().contains("DETECT-ONLY"), "{}", agent.log());
    } else {
        assert!(text.contains("mode: ENFORCE"), "{text}");
    }
    agent.stop();
    let out = guardian()
        .args(["status", "--config"])
        .arg(scene.config())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "status after stop must say not running"
    );
}

/// Run the agent expecting a start-up failure: non-zero exit, one error
/// line containing `needle`, nothing left in the kernel.
fn expect_failure(cmd: &mut Command, needle: &str) {
    let before = guardian_programs();
    let out = cmd.stdout(Stdio::null()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure, got success:\n{err}"
    );
    let errors: Vec<&str> = err.lines().filter(|l| l.contains("error:")).collect();
    assert_eq!(errors.len(), 1, "want one error line:\n{err}");
    assert!(
        errors[0].contains(needle),
        "{needle:?} not in {:?}",
        errors[0]
    );
    // Nothing left behind (the kernel frees programs asynchronously).
    wait_for(5, "no programs left loaded", || {
        our_programs(&before).is_empty().then_some(())
    });
}

#[test]
fn bad_input_fails_cleanly() {
    let _k = exclusive();
    let scene = Scene::new("auto", &[]);

    // Missing and unreadable configs.
    let missing = scene.path("nope.toml");
    expect_failure(guardian().args(["run", "-c"]).arg(&missing), "nope.toml");
    expect_failure(
        guardian().args(["run", "-c"]).arg(scene.dir.path()),
        "cannot read config",
    );
    let mut f = std::fs::File::create(scene.path("bad.toml")).unwrap();
    writeln!(f, "[guard]\nprotected = 7").unwrap();
    expect_failure(
        guardian().args(["run", "-c"]).arg(scene.path("bad.toml")),
        "bad.toml",
    );

    // A protected path that does not exist.
    let cfg = std::fs::read_to_string(scene.config()).unwrap();
    let gone = scene.path("gone.onnx");
    std::fs::write(
        scene.path("gone.toml"),
        cfg.replace(&*scene.model().to_string_lossy(), &gone.to_string_lossy()),
    )
    .unwrap();
    expect_failure(
        guardian().args(["run", "-c"]).arg(scene.path("gone.toml")),
        "protected path",
    );

    // An invalid CIDR, and a service binary that is not there: named.
    std::fs::write(
        scene.path("cidr.toml"),
        format!("{cfg}[service]\nexe = [\"/bin/sh\"]\negress = [{{ cidr = \"10.0.0.1/8\" }}]\n"),
    )
    .unwrap();
    expect_failure(
        guardian().args(["run", "-c"]).arg(scene.path("cidr.toml")),
        "[service] egress: \"10.0.0.1/8\": address has bits set past the /8 prefix",
    );
    std::fs::write(
        scene.path("svc.toml"),
        format!(
            "{cfg}[service]\nexe = [{:?}]\n",
            scene.path("no-service").display().to_string()
        ),
    )
    .unwrap();
    expect_failure(
        guardian().args(["run", "-c"]).arg(scene.path("svc.toml")),
        "service exe",
    );

    // A hook the kernel cannot deny here is reported by name (status), and
    // fatal only when the config demands it.
    std::fs::write(
        scene.path("require.toml"),
        cfg.replacen("[guard]\n", "[guard]\nrequire = [\"file_rename\"]\n", 1),
    )
    .unwrap();
    expect_failure(
        guardian()
            .args(["run", "-c"])
            .arg(scene.path("require.toml")),
        "[guard] require names file_rename, but the kernel cannot deny it",
    );

    // No BTF.
    expect_failure(
        guardian()
            .args(["run", "-c"])
            .arg(scene.config())
            .env("GUARDIAN_KERNEL_BTF", scene.path("no-such-btf")),
        "no kernel BTF",
    );

    // No permission to use BPF: the same config, as nobody.
    std::fs::set_permissions(
        scene.config(),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let mut as_nobody = Command::new("setpriv");
    as_nobody
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(env!("CARGO_BIN_EXE_guardian"))
        .args(["run", "-c"])
        .arg(scene.config())
        .env("GUARDIAN_STATUS_PATH", scene.path("nobody-status.json"))
        .env("GUARDIAN_EVENTS_OUTPUT", "-");
    expect_failure(&mut as_nobody, "no permission to load eBPF");
    // The unreadable case, as nobody: a root-only config.
    std::fs::set_permissions(
        scene.config(),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    expect_failure(&mut as_nobody, "Permission denied");
    assert!(
        scene.status().is_none(),
        "a failed start must not publish a status"
    );
}

/// Continuous attestation in the daemon, with a real TPM (swtpm) and real
/// tracepoints: a tamper attempt is recorded and extended, the changed
/// model is re-measured, and a quote afterwards shows both to a verifier.
#[test]
fn tamper_is_recorded_and_the_model_remeasured_into_the_quote() {
    let _k = exclusive();
    let tpm = common::Swtpm::start();
    let board = common::Board::new(&tpm.tcti());
    assert!(board.measure().status.success());
    let model = board.p("models/labels.txt");
    let pins = common::Pins(PathBuf::from(format!(
        "/sys/fs/bpf/guardian-test-tamper-{}",
        std::process::id()
    )));
    let cfg = std::fs::read_to_string(board.p("guardian.toml")).unwrap();
    std::fs::write(
        board.p("guardian.toml"),
        format!(
            "[guard]\nmode = \"detect\"\nsyscall_detect = true\nprotected = [{:?}]\npin_dir = {:?}\n\
             [events]\noutput = \"events.jsonl\"\n[status]\npath = \"status.json\"\ninterval_secs = 1\n\
             [attest]\nremeasure_secs = 0\n{cfg}",
            board.s("models"),
            pins.0.display().to_string(),
        ),
    )
    .unwrap();
    let stderr = board.p("agent.stderr");
    let mut agent = KillOnDrop(
        guardian()
            .args(["run", "--config"])
            .arg(board.p("guardian.toml"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap(),
    );
    let status = board.p("status.json");
    wait_for(30, "the agent", || status.exists().then_some(()));

    // The attacker appends to a model (detect mode: it succeeds).
    let sh = shell(
        Path::new("/bin/sh"),
        &format!("echo wolf >> {}", model.display()),
    );
    let read_status =
        || -> Option<Value> { serde_json::from_str(&std::fs::read_to_string(&status).ok()?).ok() };
    wait_for(15, "a tamper record and a re-measurement", || {
        let st = read_status()?;
        (st["counters"]["tamper_records"].as_u64()? >= 1
            && st["counters"]["models_remeasured"].as_u64()? >= 1)
            .then_some(())
    });
    finish(sh);
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(agent.0.id() as i32, libc::SIGTERM) };
    assert!(agent.0.wait().unwrap().success());
    let log = std::fs::read_to_string(board.p("measurements.log")).unwrap();
    assert!(
        log.contains("\"kind\":\"guard\",\"action\":\"start\"")
            && log.contains("\"kind\":\"guard\",\"action\":\"stop\""),
        "guard start and stop recorded: {log}"
    );
    assert!(log.contains("\"kind\":\"tamper\""), "{log}");

    // The log still explains the PCR, and a quote carries all of it.
    let out = common::guardian(&["log", "replay", "-c", &board.s("guardian.toml")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = common::guardian(&[
        "quote",
        "-c",
        &board.s("guardian.toml"),
        "--nonce",
        "77777777777777777777777777777777",
        "-o",
        &board.s("ev.json"),
        "--ak-out",
        &board.s("ak.pem"),
    ]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let out = common::guardian(&[
        "verify",
        "--evidence",
        &board.s("ev.json"),
        "--insecure-tofu",
        "--ak",
        &board.s("ak.pem"),
        "--key",
        &board.s("vendor.pub"),
        "--manifest",
        &board.s("manifest.toml"),
        "--nonce",
        "77777777777777777777777777777777",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(3));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let text = v.to_string();
    assert!(text.contains("log_replay"), "{v:#}");
    let fails: Vec<&str> = v["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["reason"].as_str().unwrap())
        .collect();
    assert!(
        fails.iter().any(|f| f.contains(&*model.to_string_lossy())),
        "the changed model is named: {fails:?}"
    );
    let tampers = v["tamper_attempts"].as_array().unwrap();
    assert_eq!(tampers.len(), 1, "{v:#}");
    assert!(tampers[0].as_str().unwrap().contains("DETECTED"), "{v:#}");
    assert!(
        v["guard"][0]
            .as_str()
            .unwrap()
            .contains("guard start (detect)"),
        "{v:#}"
    );
}

/// The tracepoint forms of the write-path hooks: a descriptor opened before
/// the agent started, `ftruncate` on it, and a shared writable mapping all
/// reach the event stream (the kernel cannot deny them on this host, so
/// they are alerts), each naming its hook.
#[test]
fn writes_through_old_descriptors_are_reported() {
    let _k = exclusive();
    let scene = Scene::new("detect", &[]).guard_keys("syscall_detect = true");
    // Opened before the agent exists: no open hook will ever see it again.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(scene.model())
        .unwrap();
    let agent = Agent::start(&scene);
    let st = scene.status().unwrap();
    let mech = |h: &str| hook(&st, h)["mechanism"].as_str().unwrap().to_owned();
    assert_eq!(mech("file_write"), "tracepoint");
    assert_eq!(mech("file_mmap"), "tracepoint");
    // No tracepoint can see a rename by inode: the notification rung
    // reports it, and says so.
    assert_eq!(mech("file_rename"), "notify");
    assert_eq!(mech("exec"), "off");

    use std::os::fd::AsRawFd as _;
    let fd = file.as_raw_fd();
    // SAFETY: valid descriptor and buffer.
    assert_eq!(unsafe { libc::write(fd, b"X".as_ptr().cast(), 1) }, 1);
    // SAFETY: as above.
    assert_eq!(unsafe { libc::ftruncate(fd, 4) }, 0);
    // SAFETY: a fresh shared mapping of our own descriptor, unmapped below.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            4,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        );
        assert_ne!(p, libc::MAP_FAILED);
        *p.cast::<u8>() = b'Y';
        libc::munmap(p, 4);
    }
    let me = std::process::id();
    let events = wait_for(10, "four events", || {
        let e: Vec<Value> = scene
            .events()
            .into_iter()
            .filter(|e| e["pid"] == me)
            .collect();
        (e.len() >= 4).then_some(e)
    });
    let kinds: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e["event"].as_str().unwrap(), e["hook"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [
            // The descriptor held from before the agent, found at start.
            ("preexisting_writer", "agent/start-scan"),
            ("file_write", "raw_tracepoint/sys_exit (write)"),
            ("file_truncate", "raw_tracepoint/sys_exit (ftruncate)"),
            ("file_mmap_write", "raw_tracepoint/sys_exit (mmap)"),
        ],
        "{events:#?}"
    );
    assert!(
        events[0]["name"]
            .as_str()
            .unwrap()
            .starts_with(&format!("fd {fd} open for writing")),
        "{:#}",
        events[0]
    );
    for e in &events {
        assert_eq!(e["verdict"], "alert");
        assert_eq!(e["file"], scene.model().display().to_string());
    }
    drop(file);
    agent.stop();
}

/// Egress of the inference service (a copy of python3 here) outside its
/// allowlist is reported by the cgroup `connect4` program (detect mode: no
/// denial), and with `response = "kill"` the agent kills it; a connect to
/// an allowed address is not an event. No syscall tracepoint is attached:
/// the loader variable is found by `sched_process_exec` in the new
/// program's own stack.
#[test]
fn service_egress_outside_allowlist_is_reported_and_killed() {
    let _k = exclusive();
    let (_bin, svc) = python_service();
    let scene = Scene::with(
        "detect",
        &[],
        &format!(
            "[service]\nexe = [{:?}]\negress = [{{ cidr = \"127.0.0.2/32\", ports = [8080] }}]\n",
            svc.display().to_string()
        ),
    );
    // Response is a [guard] key: rewrite that section's first line.
    let cfg = std::fs::read_to_string(scene.config()).unwrap();
    std::fs::write(
        scene.config(),
        cfg.replacen("[guard]\n", "[guard]\nresponse = \"kill\"\n", 1),
    )
    .unwrap();
    let agent = Agent::start(&scene);
    let script = "import socket, time\n\
        def go(a, p):\n\
        \x20   s = socket.socket(); s.settimeout(1)\n\
        \x20   try: s.connect((a, p))\n\
        \x20   except OSError: pass\n\
        go('127.0.0.2', 8080)\n\
        go('127.0.0.3', 9)\n\
        time.sleep(30)\n";
    use std::os::unix::process::ExitStatusExt as _;
    // First, the service started with a loader variable (what cargo's own
    // LD_LIBRARY_PATH would be, too): reported at exec, and killed.
    let mut preloaded = KillOnDrop(
        Command::new(&svc)
            .env_remove("LD_LIBRARY_PATH")
            .env("LD_PRELOAD", "/nonexistent/evil.so")
            .args(["-c", "import time; time.sleep(30)"])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = preloaded.0.id();
    let ev = wait_for(10, "the exec_preload event", || {
        scene.events().into_iter().find(|e| e["pid"] == pid)
    });
    assert_eq!(ev["event"], "exec_preload", "{ev:#}");
    assert_eq!(ev["hook"], "tracepoint/sched/sched_process_exec");
    assert_eq!(ev["env"], "LD_PRELOAD");
    assert_eq!(ev["path"], svc.display().to_string());
    assert_eq!(ev["response"], "killed");
    let status = wait_for(10, "the preloaded service to die", || {
        preloaded.0.try_wait().unwrap()
    });
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");

    // Then a clean start, and an exfiltration attempt.
    let mut child = KillOnDrop(
        Command::new(&svc)
            .env_remove("LD_LIBRARY_PATH")
            .env_remove("LD_PRELOAD")
            .args(["-c", script])
            .spawn()
            .unwrap(),
    );
    let pid = child.0.id();
    let ev = wait_for(10, "the connect event", || {
        scene
            .events()
            .into_iter()
            .find(|e| e["pid"] == pid && e["event"] == "connect")
    });
    assert_eq!(ev["verdict"], "alert");
    assert_eq!(ev["hook"], "cgroup/connect4");
    assert_eq!(ev["service"], true);
    assert_eq!(ev["addr"], "127.0.0.3");
    assert_eq!(ev["port"], 9);
    assert_eq!(ev["family"], "ipv4");
    assert_eq!(ev["response"], "killed", "{ev:#}");
    let status = wait_for(10, "the service to die", || child.0.try_wait().unwrap());
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
    // Exactly one connect event: the allowed destination produced none.
    let n = scene
        .events()
        .iter()
        .filter(|e| e["event"] == "connect")
        .count();
    assert_eq!(n, 1);
    wait_for(5, "the kill counter", || {
        (counter(&scene, "responses_killed") == 2).then_some(())
    });
    agent.stop();
}

/// The default configuration on a kernel without BPF LSM: no syscall
/// tracepoint, write-opens denied through fanotify permission events, and
/// every other change to a protected file reported through fanotify
/// notification events: a write through a descriptor opened before the
/// agent, `chmod`, a hard link. The allowed writer's change is `allow`
/// even when it has exited before the event is read.
#[test]
fn default_config_reports_file_changes_through_fanotify() {
    let _k = exclusive();
    let bin = tempfile::tempdir().unwrap();
    let updater = bin.path().join("model-updater");
    std::fs::copy("/bin/sh", &updater).unwrap();
    let scene = Scene::new("auto", &[&updater]);
    let mut old = std::fs::OpenOptions::new()
        .append(true)
        .open(scene.model())
        .unwrap();
    let agent = Agent::start(&scene);
    let st = scene.status().unwrap();
    let mech = |h: &str| hook(&st, h)["mechanism"].as_str().unwrap().to_owned();
    if mech("file_write_open") == "lsm" {
        panic!("BPF LSM took the file hooks on this kernel; this test is for kernels without it");
    }
    assert_eq!(mech("file_write_open"), "fanotify", "{st:#}");
    for hook in [
        "file_write",
        "file_setattr",
        "file_rename",
        "file_unlink",
        "file_link",
    ] {
        assert_eq!(mech(hook), "notify", "{hook}: {st:#}");
    }
    // Shared writable mappings need BPF LSM or the syscall tracepoint.
    assert_eq!(mech("file_mmap"), "none");
    let attached = st["hooks"].to_string();
    assert!(
        !attached.contains("sys_exit") && !attached.contains("syscalls/"),
        "{attached}"
    );

    let me = std::process::id();
    old.write_all(b"tampered through an old descriptor\n")
        .unwrap();
    let ev = wait_for(10, "the write through the old descriptor", || {
        scene
            .events()
            .into_iter()
            .find(|e| e["pid"] == me && e["event"] == "file_write")
    });
    assert_eq!(ev["verdict"], "alert");
    assert_eq!(ev["mode"], "detect");
    assert_eq!(ev["hook"], "fanotify/modify");
    assert_eq!(ev["file"], scene.model().display().to_string());
    assert_eq!(
        ev["exe_ino"],
        std::fs::metadata("/proc/self/exe").unwrap().ino()
    );

    let chmod = Command::new("chmod")
        .arg("600")
        .arg(scene.model())
        .status()
        .unwrap();
    assert!(chmod.success());
    let ev = wait_for(10, "the chmod", || {
        scene
            .events()
            .into_iter()
            .find(|e| e["event"] == "file_setattr")
    });
    assert_eq!(ev["verdict"], "alert");
    assert!(
        ev["flags_text"].as_str().unwrap().contains("0600"),
        "{ev:#}"
    );
    let link = scene.path("model-link");
    std::fs::hard_link(scene.model(), &link).unwrap();
    let ev = wait_for(10, "the hard link", || {
        scene
            .events()
            .into_iter()
            .find(|e| e["event"] == "file_link")
    });
    assert_eq!(ev["pid"], me);
    assert_eq!(ev["verdict"], "alert");
    std::fs::remove_file(&link).unwrap();

    // The allowed updater: its write-open is allowed by the permission
    // rung, and its write reported `allow`, though it is gone by then.
    let good = shell(&updater, &format!("echo v2 >> {}", scene.model().display()));
    let good_pid = good.id();
    finish(good);
    let evs = wait_for(10, "the updater's write", || {
        let e: Vec<Value> = scene
            .events()
            .into_iter()
            .filter(|e| e["pid"] == good_pid)
            .collect();
        e.iter().any(|e| e["event"] == "file_write").then_some(e)
    });
    for e in &evs {
        assert_eq!(e["verdict"], "allow", "{e:#}");
        assert_eq!(e["exe"], updater.display().to_string(), "{e:#}");
    }
    wait_for(5, "the notification counters", || {
        (counter(&scene, "watch_alerts") >= 3 && counter(&scene, "watch_allowed") >= 1)
            .then_some(())
    });
    assert_eq!(counter(&scene, "watch_overflows"), 0);
    drop(old);
    agent.stop();
}

/// `mode = "auto"` on a kernel without BPF LSM: the cgroup socket programs
/// still deny the service's egress in the kernel. A TCP connect (IPv4 and
/// IPv6) or an unconnected UDP datagram outside the allowlist fails with
/// EPERM and is reported `deny`; an allowed destination is reached (here:
/// refused by the closed port, not by guardian); other programs are not
/// judged at all.
#[test]
fn auto_mode_denies_service_egress_with_cgroup_programs() {
    let _k = exclusive();
    let (_bin, svc) = python_service();
    let scene = Scene::with(
        "auto",
        &[],
        &format!(
            "[service]\nexe = [{:?}]\negress = [{{ cidr = \"127.0.0.2/32\", ports = [8080] }}]\n",
            svc.display().to_string()
        ),
    );
    let agent = Agent::start(&scene);
    let st = scene.status().unwrap();
    let connect = hook(&st, "connect");
    if connect["mechanism"] == "lsm" {
        panic!("BPF LSM took connect on this kernel; this test is for kernels without it");
    }
    assert_eq!(connect["mechanism"], "cgroup", "{connect:#}");
    // Each line: what the call ended with.
    let script = "import socket, errno\n\
        def tcp(fam, a, p):\n\
        \x20   s = socket.socket(fam); s.settimeout(1)\n\
        \x20   try: s.connect((a, p)); return 'connected'\n\
        \x20   except OSError as e: return errno.errorcode.get(e.errno, str(e))\n\
        def udp(a, p):\n\
        \x20   s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
        \x20   try: s.sendto(b'x', (a, p)); return 'sent'\n\
        \x20   except OSError as e: return errno.errorcode.get(e.errno, str(e))\n\
        print(tcp(socket.AF_INET, '127.0.0.2', 8080))\n\
        print(tcp(socket.AF_INET, '127.0.0.3', 9))\n\
        print(tcp(socket.AF_INET6, '::1', 9))\n\
        print(udp('127.0.0.4', 53))\n";
    let run = |exe: &Path| {
        let out = Command::new(exe)
            .env_remove("LD_LIBRARY_PATH")
            .env_remove("LD_PRELOAD")
            .args(["-c", script])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let out = run(&svc);
    assert_eq!(out, "ECONNREFUSED\nEPERM\nEPERM\nEPERM\n", "service: {out}");
    // The same script under python3 itself: not the service, not judged.
    let other = run(&std::fs::canonicalize("/usr/bin/python3").unwrap());
    assert_eq!(other, "ECONNREFUSED\nECONNREFUSED\nECONNREFUSED\nsent\n");
    let events = wait_for(10, "three egress denials", || {
        let e: Vec<Value> = scene
            .events()
            .into_iter()
            .filter(|e| e["event"] == "connect")
            .collect();
        (e.len() >= 3).then_some(e)
    });
    let seen: Vec<(&str, &str, &str, u64)> = events
        .iter()
        .map(|e| {
            (
                e["hook"].as_str().unwrap(),
                e["verdict"].as_str().unwrap(),
                e["addr"].as_str().unwrap(),
                e["port"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("cgroup/connect4", "deny", "127.0.0.3", 9),
            ("cgroup/connect6", "deny", "::1", 9),
            ("cgroup/sendmsg4", "deny", "127.0.0.4", 53),
        ],
        "{events:#?}"
    );
    for e in &events {
        assert_eq!(e["service"], true);
        assert_eq!(e["exe"], svc.display().to_string());
    }
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        scene
            .events()
            .iter()
            .filter(|e| e["event"] == "connect")
            .count(),
        3
    );
    agent.stop();
}

/// SIGKILL the agent: its pinned programs keep reporting into the pinned
/// ring buffer; the next agent adopts them (no second copy loaded) and
/// prints what happened while none was running.
#[test]
fn killed_agent_leaves_the_guard_and_a_restart_adopts_it() {
    let _k = exclusive();
    let before = guardian_programs();
    let scene = Scene::new("detect", &[]).guard_keys("syscall_detect = true");
    let mut agent = Agent::start(&scene);
    let loaded = our_programs(&before).len();
    assert!(loaded > 0);
    agent.child.kill().unwrap();
    agent.child.wait().unwrap();
    drop(agent);
    assert_eq!(
        our_programs(&before).len(),
        loaded,
        "programs went away with the agent"
    );

    let sh = PathBuf::from("/bin/sh").canonicalize().unwrap();
    let child = shell(
        &sh,
        &format!("echo while-down >> {}", scene.model().display()),
    );
    let pid = child.id();
    finish(child);

    std::fs::remove_file(scene.path("status.json")).unwrap();
    let agent = Agent::start(&scene);
    let st = scene.status().unwrap();
    assert_eq!(st["adopted"], true, "{st:#}");
    assert!(
        st["pinned"]
            .as_str()
            .unwrap()
            .starts_with(&*scene.pin_dir().to_string_lossy())
    );
    assert_eq!(our_programs(&before).len(), loaded, "loaded twice");
    let ev = wait_for(10, "the event from while no agent ran", || {
        scene.events().into_iter().find(|e| e["pid"] == pid)
    });
    assert_eq!(ev["event"], "file_write_open");
    assert_eq!(ev["verdict"], "alert");
    agent.stop();
    scene.unpin();
    // The kernel frees unreferenced programs asynchronously.
    wait_for(5, "the programs to be freed", || {
        our_programs(&before).is_empty().then_some(())
    });
}

/// `mode = "auto"` on this host: BPF LSM cannot load, so write-opens of
/// protected files fall to the fanotify rung and are denied from userspace
/// (the tracepoints still report the rest); the allowed writer still
/// writes.
#[test]
fn auto_mode_denies_write_opens_through_fanotify() {
    let _k = exclusive();
    let bin = tempfile::tempdir().unwrap();
    let updater = bin.path().join("model-updater");
    std::fs::copy("/bin/sh", &updater).unwrap();
    let scene = Scene::new("auto", &[&updater]);
    let agent = Agent::start(&scene);
    let st = scene.status().unwrap();
    let open = hook(&st, "file_write_open");
    assert_eq!(open["mechanism"], "fanotify", "{open:#}");
    assert!(
        st["mode_reason"].as_str().unwrap().contains("fanotify"),
        "{st:#}"
    );

    let before = std::fs::read(scene.model()).unwrap();
    let out = Command::new("/bin/sh")
        .args(["-c", &format!("echo tamper >> {}", scene.model().display())])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Operation not permitted"), "{err}");
    assert_eq!(std::fs::read(scene.model()).unwrap(), before);
    let ev = wait_for(10, "the fanotify denial", || {
        scene
            .events()
            .into_iter()
            .find(|e| e["hook"] == "fanotify/open_perm")
    });
    assert_eq!(ev["event"], "file_write_open");
    assert_eq!(ev["verdict"], "deny");
    assert_eq!(ev["file"], scene.model().display().to_string());

    let good = shell(&updater, &format!("echo v2 >> {}", scene.model().display()));
    finish(good);
    assert!(
        std::fs::read_to_string(scene.model())
            .unwrap()
            .ends_with("v2\n")
    );
    wait_for(5, "the fanotify counters", || {
        (counter(&scene, "fanotify_denied") == 1).then_some(())
    });
    agent.stop();
    // Without the agent the userspace rung is gone: the write goes through
    // (and the pinned tracepoints still see it).
    let out = Command::new("/bin/sh")
        .args(["-c", &format!("echo after >> {}", scene.model().display())])
        .output()
        .unwrap();
    assert!(out.status.success());
}

/// A root shell that cannot be stopped from reaching guardian's pinned maps
/// (no BPF LSM here: the `bpf_objects` hook does not load) edits them: adds
/// itself as an allowed writer, then clears the config entry so every hook
/// would allow. The agent's table check finds each edit on its timer, puts
/// back what it wrote, counts it and says so.
#[test]
fn edits_to_the_pinned_tables_are_found_and_undone() {
    use aya::maps::{Array, HashMap, Map, MapData};
    use guardian_common::{InodeKey, KernelConfig, maps as names};

    let _k = exclusive();
    let scene = Scene::new("detect", &[]);
    let agent = Agent::start(&scene);
    let pins: Vec<_> = std::fs::read_dir(scene.pin_dir())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(pins.len(), 1, "{pins:?}");
    let maps = pins[0].join("maps");

    // 1. A writer that guardian never wrote.
    let forged = guardian::guard::inode_key(&std::fs::metadata("/bin/sh").unwrap());
    {
        let data = MapData::from_pin(maps.join(names::ALLOWED_WRITERS)).unwrap();
        let mut writers: HashMap<MapData, InodeKey, u32> =
            HashMap::try_from(Map::HashMap(data)).unwrap();
        writers.insert(forged, 7, 0).unwrap();
    }
    wait_for(10, "the forged writer to be found", || {
        (counter(&scene, "tables_tampered") >= 1).then_some(())
    });
    let data = MapData::from_pin(maps.join(names::ALLOWED_WRITERS)).unwrap();
    let writers: HashMap<MapData, InodeKey, u32> = HashMap::try_from(Map::HashMap(data)).unwrap();
    assert!(
        writers.get(&forged, 0).is_err(),
        "the forged writer is still in the table"
    );

    // 1b. A service entry dressed as one the kernel added itself (a copy
    // of the service recognised by content): only trusted where the
    // bpf_objects hook keeps everyone else out of the maps, which it cannot
    // here, so it is found and removed like any other.
    let before = counter(&scene, "tables_tampered");
    {
        let data = MapData::from_pin(maps.join(names::SERVICE_EXES)).unwrap();
        let mut service: HashMap<MapData, InodeKey, u32> =
            HashMap::try_from(Map::HashMap(data)).unwrap();
        service
            .insert(forged, guardian_common::ServiceDigest::KERNEL_ADDED, 0)
            .unwrap();
    }
    wait_for(10, "the forged kernel-added entry to be found", || {
        (counter(&scene, "tables_tampered") > before).then_some(())
    });
    let data = MapData::from_pin(maps.join(names::SERVICE_EXES)).unwrap();
    let service: HashMap<MapData, InodeKey, u32> = HashMap::try_from(Map::HashMap(data)).unwrap();
    assert!(
        service.get(&forged, 0).is_err(),
        "a forged kernel-added entry stayed in the service table"
    );

    // 2. The config entry cleared: every hook would allow.
    let before = counter(&scene, "tables_tampered");
    {
        let data = MapData::from_pin(maps.join(names::CONFIG)).unwrap();
        let mut cfg: Array<MapData, KernelConfig> = Array::try_from(Map::Array(data)).unwrap();
        cfg.set(0, KernelConfig::default(), 0).unwrap();
    }
    wait_for(10, "the cleared config to be found", || {
        (counter(&scene, "tables_tampered") > before).then_some(())
    });
    let data = MapData::from_pin(maps.join(names::CONFIG)).unwrap();
    let cfg: Array<MapData, KernelConfig> = Array::try_from(Map::Array(data)).unwrap();
    let now = cfg.get(&0, 0).unwrap();
    assert_eq!(now.ready, 1, "the config entry was not put back");
    assert_ne!(now.offsets.file_f_inode, 0, "offsets not restored");
    let log = agent.stop();
    assert!(
        log.contains("guard tables changed behind guardian's back"),
        "{log}"
    );
    assert!(log.contains("GUARDIAN_WRITERS"), "{log}");
    assert!(log.contains("the config entry was cleared"), "{log}");
}

/// The model's directory renamed away and replaced by a forged one (no
/// BPF LSM here to refuse it): the path check reports the name leading
/// elsewhere, as an alert naming the directory, and counts it.
#[test]
fn a_replaced_model_directory_is_reported_by_the_path_check() {
    let _k = exclusive();
    let scene = Scene::new("detect", &[]);
    let models = scene.path("models");
    std::fs::create_dir(&models).unwrap();
    std::fs::write(models.join("m.onnx"), b"weights\n").unwrap();
    let cfg = std::fs::read_to_string(scene.config()).unwrap();
    let cfg = cfg.replacen(
        &format!("protected = [{:?}]", scene.model().display().to_string()),
        &format!("protected = [{:?}]", models.display().to_string()),
        1,
    );
    std::fs::write(scene.config(), cfg).unwrap();
    let agent = Agent::start(&scene);
    assert_eq!(counter(&scene, "path_changes"), 0);

    std::fs::rename(&models, scene.path("models.old")).unwrap();
    std::fs::create_dir(&models).unwrap();
    std::fs::write(models.join("m.onnx"), b"forged\n").unwrap();
    let ev = wait_for(10, "the path_changed event", || {
        scene
            .events()
            .into_iter()
            .find(|e| e["event"] == "path_changed" && e["file"] == models.display().to_string())
    });
    assert_eq!(ev["verdict"], "alert", "{ev:#}");
    assert_eq!(ev["hook"], "agent/path-check", "{ev:#}");
    assert!(
        ev["name"].as_str().unwrap().contains("now leads to inode"),
        "{ev:#}"
    );
    wait_for(5, "the counter", || {
        (counter(&scene, "path_changes") >= 1).then_some(())
    });
    agent.stop();
}

/// A root shell runs `guardian run` with another config while a guard is
/// pinned: taking it over would change what it enforces (here: one more
/// allowed writer), so the new agent refuses, and leaves the running guard
/// as it was. With the config the guard was loaded with, it adopts.
#[test]
fn another_config_does_not_take_over_the_running_guard() {
    let _k = exclusive();
    let scene = Scene::new("detect", &[]);
    let mut agent = Agent::start(&scene);
    agent.child.kill().unwrap();
    agent.child.wait().unwrap();
    drop(agent);
    let good = std::fs::read_to_string(scene.config()).unwrap();
    let sh = PathBuf::from("/bin/sh").canonicalize().unwrap();
    std::fs::write(
        scene.config(),
        good.replacen(
            "allowed_writers = []",
            &format!("allowed_writers = [{:?}]", sh.display().to_string()),
            1,
        ),
    )
    .unwrap();
    std::fs::remove_file(scene.path("status.json")).unwrap();
    let out = guardian()
        .args(["run", "--config"])
        .arg(scene.config())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "took over with another config: {err}"
    );
    assert!(err.contains("loaded with another configuration"), "{err}");
    assert!(scene.status().is_none(), "it published a status");

    std::fs::write(scene.config(), good).unwrap();
    let agent = Agent::start(&scene);
    assert_eq!(scene.status().unwrap()["adopted"], true);
    agent.stop();
}

/// Under systemd (`Type=notify`, `WatchdogSec=`): the agent says READY=1
/// once the guard is up, then feeds the watchdog; stopped (`SIGSTOP`, as a
/// debugger would hold it), it stops feeding it, which is what lets
/// systemd kill and restart a hung agent instead of leaving opens of
/// protected files waiting on the fanotify rung.
#[test]
fn the_agent_feeds_the_systemd_watchdog_only_while_it_runs() {
    let _k = exclusive();
    let scene = Scene::new("auto", &[]);
    let sock_path = scene.path("notify");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let child = guardian()
        .args(["run", "--config"])
        .arg(scene.config())
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "600000")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(scene.path("agent.stderr")).unwrap())
        .spawn()
        .unwrap();
    let child = KillOnDrop(child);
    let mut buf = [0u8; 1024];
    let recv = |buf: &mut [u8]| -> String {
        let n = sock.recv(buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let first = recv(&mut buf);
    assert!(first.starts_with("READY=1\n"), "{first}");
    assert!(scene.status().is_some(), "READY before the status file");
    // Pings every 300 ms.
    for _ in 0..3 {
        assert_eq!(recv(&mut buf), "WATCHDOG=1\n");
    }
    let pid = child.0.id() as i32;
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    // Drain what was already queued, then nothing for well over the
    // watchdog timeout.
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    while sock.recv(&mut buf).is_ok() {}
    sock.set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let quiet = sock.recv(&mut buf);
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    assert!(quiet.is_err(), "a stopped agent fed the watchdog");
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(recv(&mut buf), "WATCHDOG=1\n", "no pings after SIGCONT");
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let mut child = child;
    let status = child.0.wait().unwrap();
    assert!(status.success(), "{status}");
    let rest = {
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut all = String::new();
        while let Ok(n) = sock.recv(&mut buf) {
            all.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        all
    };
    assert!(rest.contains("STOPPING=1"), "{rest}");
}

/// A signed WAT policy that allows every event and whose static rules
/// protect `protected` and allow `writers` (`policies/ABI.md` §5: the
/// postcard encoding, written here byte by byte).
fn static_rules_policy(protected: &[&Path], writers: &[&Path]) -> Vec<u8> {
    fn varint(mut n: usize, out: &mut Vec<u8>) {
        while n >= 0x80 {
            out.push((n as u8 & 0x7f) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
    }
    fn strings(list: &[&Path], out: &mut Vec<u8>) {
        varint(list.len(), out);
        for p in list {
            let s = p.display().to_string();
            varint(s.len(), out);
            out.extend_from_slice(s.as_bytes());
        }
    }
    let mut rules = Vec::new();
    strings(protected, &mut rules);
    rules.push(1); // writers: Some
    strings(writers, &mut rules);
    rules.extend_from_slice(&[0, 0, 0]); // egress, service_exec, library_dirs: None
    let data: String = rules.iter().map(|b| format!("\\{b:02x}")).collect();
    let at: u64 = 16384;
    wat::parse_str(format!(
        r#"(module
             (memory (export "memory") 1)
             (data (i32.const {at}) "{data}")
             (func (export "guardian_abi_version") (result i32) (i32.const 1))
             (func (export "guardian_buffer") (result i32) (i32.const 1024))
             (func (export "guardian_buffer_size") (result i32) (i32.const 8192))
             (func (export "guardian_static_rules") (result i64) (i64.const {}))
             (func (export "guardian_evaluate") (param i32 i32) (result i64) (i64.const 0)))"#,
        (at << 32) | rules.len() as u64
    ))
    .unwrap()
}

/// On a kernel without BPF LSM the fanotify rungs are all that deny
/// write-opens and report changes: a policy reload must reach them. A
/// policy whose static rules add an allowed writer and a protected file
/// is put in force with SIGHUP; from then on the permission rung lets that
/// writer write the model (event `allow`), denies a write-open of the new
/// file by anyone else (event `deny`), and the notification rung reports a
/// change to the new file (event `alert`).
#[test]
fn a_policy_reload_reaches_the_fanotify_rungs() {
    let _k = exclusive();
    let bin = tempfile::tempdir().unwrap();
    let updater = bin.path().join("model-updater");
    std::fs::copy("/bin/sh", &updater).unwrap();
    let keys = tempfile::tempdir().unwrap();
    let vendor = keys.path().join("vendor.pem");
    let vendor_pub = keys.path().join("vendor.pub");
    common::openssl(&[
        "genpkey",
        "-algorithm",
        "ed25519",
        "-out",
        &vendor.display().to_string(),
    ]);
    common::openssl(&[
        "pkey",
        "-in",
        &vendor.display().to_string(),
        "-pubout",
        "-out",
        &vendor_pub.display().to_string(),
    ]);
    let policies = tempfile::tempdir().unwrap();
    let scene = Scene::with(
        "auto",
        &[],
        &format!(
            "[policy]\ndir = {:?}\ntrusted_keys = [{:?}]\n",
            policies.path().display().to_string(),
            vendor_pub.display().to_string()
        ),
    );
    let extra = scene.path("extra.bin");
    std::fs::write(&extra, b"extra v1\n").unwrap();
    let agent = Agent::start(&scene);
    let st = scene.status().unwrap();
    if hook(&st, "file_write_open")["mechanism"] == "lsm" {
        panic!("BPF LSM took the file hooks on this kernel; this test is for kernels without it");
    }
    assert_eq!(
        hook(&st, "file_write_open")["mechanism"],
        "fanotify",
        "{st:#}"
    );
    assert_eq!(hook(&st, "file_setattr")["mechanism"], "notify", "{st:#}");
    assert_eq!(st["allowed_writers"], 0, "{st:#}");
    let append = |exe: &Path, file: &Path| {
        Command::new(exe)
            .args(["-c", &format!("echo more >> {}", file.display())])
            .output()
            .unwrap()
    };
    // Before the policy: the updater is nobody, the extra file nothing.
    let out = append(&updater, &scene.model());
    assert!(
        !out.status.success(),
        "the updater wrote before the policy allowed it"
    );
    let out = append(Path::new("/bin/sh"), &extra);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let wasm = static_rules_policy(&[&extra], &[&updater]);
    std::fs::write(policies.path().join("updater.wasm"), &wasm).unwrap();
    let sig = guardian::signing::SigningKey::load(&vendor)
        .unwrap()
        .sign(&wasm);
    std::fs::write(policies.path().join("updater.wasm.sig"), sig).unwrap();
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(agent.child.id() as i32, libc::SIGHUP) };
    wait_for(20, "the policy's static rules in force", || {
        let st = scene.status()?;
        (st["allowed_writers"] == 1 && st["policies"]["generation"].as_u64()? >= 2).then_some(())
    });
    let st = scene.status().unwrap();
    assert!(
        !st["warnings"]
            .to_string()
            .contains("static rules not in the kernel"),
        "{st:#}"
    );

    // The writer the policy added writes the model, through the
    // permission rung.
    let good = shell(&updater, &format!("echo v2 >> {}", scene.model().display()));
    let good_pid = good.id();
    finish(good);
    assert!(
        std::fs::read_to_string(scene.model())
            .unwrap()
            .ends_with("v2\n")
    );
    let ev = wait_for(10, "the updater's allowed write-open", || {
        scene
            .events()
            .into_iter()
            .find(|e| e["pid"] == good_pid && e["hook"] == "fanotify/open_perm")
    });
    assert_eq!(ev["verdict"], "allow", "{ev:#}");
    assert_eq!(ev["exe"], updater.display().to_string(), "{ev:#}");

    // The file the policy added: a write-open by anyone else is denied.
    let before = std::fs::read(&extra).unwrap();
    let out = append(Path::new("/bin/sh"), &extra);
    assert!(!out.status.success(), "the new protected file was written");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Operation not permitted"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(&extra).unwrap(), before);
    let ev = wait_for(10, "the denied write-open of the new file", || {
        scene
            .events()
            .into_iter()
            .find(|e| e["hook"] == "fanotify/open_perm" && e["file"] == extra.display().to_string())
    });
    assert_eq!(ev["verdict"], "deny", "{ev:#}");
    assert_eq!(ev["event"], "file_write_open", "{ev:#}");

    // And a change to it is reported by the notification rung.
    let chmod = Command::new("chmod")
        .arg("600")
        .arg(&extra)
        .status()
        .unwrap();
    assert!(chmod.success());
    let ev = wait_for(10, "the chmod of the new file", || {
        scene
            .events()
            .into_iter()
            .find(|e| e["event"] == "file_setattr" && e["file"] == extra.display().to_string())
    });
    assert_eq!(ev["verdict"], "alert", "{ev:#}");
    assert_eq!(ev["hook"], "fanotify/attrib", "{ev:#}");
    agent.stop();
}

pub(crate) fn start_nats(port: u16, store: &Path) -> KillOnDrop {
    let child = Command::new(nats_server())
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(store)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(10, "nats-server listening", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    KillOnDrop(child)
}

/// The fleet link with the real agent: a denied tamper attempt reaches the
/// fleet's store through a real nats-server and guardian-fleet, with the
/// agent's status summaries; with the broker killed the next attempt waits
/// in the spool (status says disconnected, depth > 0) and arrives when the
/// broker is back.
#[test]
fn the_agent_reports_to_the_fleet_through_an_outage() {
    let _k = exclusive();
    let port = nats_support::free_port();
    let js_dir = tempfile::tempdir().unwrap();
    let mut nats = start_nats(port, js_dir.path());
    let url = format!("nats://127.0.0.1:{port}");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let fleet = rt.spawn(guardian_fleet::service::serve(
        guardian_fleet::service::ServiceConfig::new(vec![url.clone()]),
        "host-test",
        std::sync::Arc::new(guardian_fleet::service::Counters::default()),
        async {
            let _ = stop_rx.await;
        },
    ));
    let spool_probe = tempfile::tempdir().unwrap();
    let spool = spool_probe.path().join("spool");
    let scene = Scene::with(
        "auto",
        &[],
        &format!(
            "\n[report]\nservers = [{url:?}]\ndevice_id = \"host-board\"\nspool_dir = {:?}\nfsync = \"always\"\nstatus_interval_secs = 1\n",
            spool.display().to_string()
        ),
    );
    let agent = Agent::start(&scene);
    let tamper = |text: &str| {
        let out = Command::new("/bin/sh")
            .args(["-c", &format!("echo {text} >> {}", scene.model().display())])
            .output()
            .unwrap();
        assert!(!out.status.success(), "the write went through");
    };
    let stored = |want: &dyn Fn(&[Value]) -> bool| -> Vec<Value> {
        wait_for(30, "records in the fleet's store", || {
            let recs: Vec<Value> = rt.block_on(async {
                let client = guardian_fleet::service::connect(std::slice::from_ref(&url), "probe")
                    .await
                    .ok()?;
                let js = async_nats::jetstream::new(client);
                let since = std::time::SystemTime::now() - Duration::from_secs(600);
                let stored = guardian_fleet::query::events(&js, "host-board", since)
                    .await
                    .ok()?;
                Some(
                    stored
                        .iter()
                        .flat_map(|s| s.records.iter())
                        .map(|r| {
                            serde_json::json!({"seq": r.seq, "class": r.class,
                                "body": serde_json::from_str::<Value>(r.body.get()).unwrap()})
                        })
                        .collect(),
                )
            })?;
            want(&recs).then_some(recs)
        })
    };
    tamper("one");
    let recs = stored(&|r| {
        r.iter()
            .any(|x| x["class"] == "alert" && x["body"]["hook"] == "fanotify/open_perm")
            && r.iter().any(|x| x["class"] == "status")
    });
    let alert = recs.iter().find(|x| x["class"] == "alert").unwrap();
    assert_eq!(alert["body"]["verdict"], "deny");
    assert_eq!(alert["body"]["file"], scene.model().display().to_string());
    let status = recs.iter().find(|x| x["class"] == "status").unwrap();
    assert!(status["body"]["hooks"].is_array(), "{status:#}");
    let st = scene.status().unwrap();
    assert_eq!(st["report"]["device"], "host-board", "{st:#}");

    // The broker dies: the next attempt waits on the board, and status says so.
    drop(nats);
    tamper("two");
    let st = wait_for(
        15,
        "status showing the link down and a record waiting",
        || {
            let st = scene.status()?;
            (st["report"]["link"]["state"] != "connected"
                && st["report"]["spool"]["depth"].as_u64()? > 0)
                .then_some(st)
        },
    );
    let text = guardian()
        .args(["status", "--config"])
        .arg(scene.config())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("report: device host-board"), "{text}");
    assert!(text.contains("record(s) waiting"), "{text}");
    let waiting = st["report"]["spool"]["depth"].as_u64().unwrap();
    assert!(waiting >= 1);
    // Back: the waiting records arrive, none lost (their sequence numbers
    // are contiguous from 1 with everything acknowledged).
    nats = start_nats(port, js_dir.path());
    let recs = stored(&|r| {
        r.iter()
            .filter(|x| x["class"] == "alert" && x["body"]["hook"] == "fanotify/open_perm")
            .count()
            >= 2
    });
    let st = wait_for(20, "the spool drained", || {
        let st = scene.status()?;
        (st["report"]["spool"]["depth"] == 0).then_some(st)
    });
    let next = st["report"]["spool"]["next_seq"].as_u64().unwrap();
    let mut seqs: Vec<u64> = recs.iter().map(|x| x["seq"].as_u64().unwrap()).collect();
    seqs.sort_unstable();
    seqs.dedup();
    // Status summaries may still be on their way; every event is there.
    assert!(
        seqs.len() as u64 >= next - 1 - 2,
        "stored {seqs:?}, given up to {}",
        next - 1
    );

    // kill -9 of the agent, then a restart on the same spool: the spool's
    // sequence continues (nothing reused), and a new denial arrives with
    // no sequence number stored twice.
    let mut agent = agent;
    agent.child.kill().unwrap();
    agent.child.wait().unwrap();
    drop(agent);
    std::fs::remove_file(scene.path("status.json")).unwrap();
    let agent = Agent::start(&scene);
    let restarted = wait_for(10, "the restarted agent's report status", || {
        scene.status()?["report"]["spool"]["next_seq"].as_u64()
    });
    assert!(
        restarted >= next,
        "sequence went back after kill -9: {restarted} < {next}"
    );
    tamper("three");
    let recs = stored(&|r| {
        r.iter()
            .filter(|x| x["class"] == "alert" && x["body"]["hook"] == "fanotify/open_perm")
            .count()
            >= 3
    });
    let mut seqs: Vec<u64> = recs.iter().map(|x| x["seq"].as_u64().unwrap()).collect();
    let n = seqs.len();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), n, "a sequence number stored twice");
    agent.stop();
    let _ = stop_tx.send(());
    let _ = rt.block_on(fleet);
    drop(nats);
}
