//! Runtime guard cost, measured on this machine's kernel with the real eBPF
//! object (BPF LSM cannot load on the host kernel, see
//! `docs/guard-benchmarks.md`), in the default configuration and in detect
//! mode with the syscall tracepoints:
//!
//! 1. **Syscall overhead on unprotected files**: `openat(O_RDONLY)+close`,
//!    `openat(O_WRONLY)+close` and a 1-byte `write`, each timed with no
//!    guard and with the guard attached (protecting another file), in
//!    alternating rounds in this one process so that drift (other jobs on
//!    the machine, CPU frequency) falls on both sides alike. Reported: the
//!    median ns/op of each side and the median of the per-round ratios.
//! 2. **Event throughput**: the guard protects a file; producer threads of
//!    this process (not an allowed writer) open it `O_WRONLY` and close it
//!    in a tight loop; one consumer thread does what the daemon's `drain()`
//!    does: wait for the ring buffer to be readable (`poll`, where the daemon
//!    uses tokio's epoll), then ring buffer → `Decoder::decode` →
//!    `Sink::write` to a JSON-lines file in a temporary directory. Reported:
//!    events the kernel submitted, events consumed, events/s, ring-buffer
//!    drops. If full speed drops events, the highest paced rate without
//!    drops is searched for, and a larger ring buffer is tried.
//! 3. **Where the consumer's time goes**: captured records replayed through
//!    decode, JSON encoding and the sink, timed per stage.
//!
//! Part `r`, **burst loss per ring size**: part 2's full-speed burst (two
//! producers) on rings of 4096, 1024, 512 and 256 KiB, each read both
//! ways: record by record (each released after it is decoded and written,
//! as the daemon read before) and copied out (`RingReader`, each released
//! as soon as it is copied, as the daemon reads now). All eight
//! configurations take turns in each round (`GUARDIAN_BENCH_RING_ROUNDS`,
//! default 3), the order reversed every other round, with the load average
//! beside each round.
//!
//! `sudo -E cargo bench -p guardian --bench guard` (root: it loads eBPF).
//! Environment: `GUARDIAN_BENCH_ITERS` (syscalls per measurement, default
//! 500000), `GUARDIAN_BENCH_ROUNDS` (default 7), `GUARDIAN_BENCH_SECS`
//! (seconds per throughput run, default 5), `GUARDIAN_BENCH_PARTS` (which
//! parts to run, default `d1f23`; `d` for the latency of the default
//! configuration (no syscall tracepoints), `1` for the latency with the
//! raw `sys_exit` program (`syscall_detect = true`), `f` for its floor: the
//! program attached but watching no syscall; `r` for the burst loss per
//! ring size, not in the default), `GUARDIAN_BENCH_WAIT_SECS` (how long
//! to wait for other guards' programs to go before each measurement,
//! default 120; 0 does not wait and says so).

// A benchmark reports by printing, and fails loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    ffi::CString,
    os::{fd::AsRawFd as _, unix::ffi::OsStrExt as _},
    path::Path,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use aya::maps::{Map, MapData, RingBuf};
use guardian::{
    config::{GuardConfig, ModeRequest, ServiceConfig},
    events::{Decoder, EventRing, RingReader, SecurityEvent, Sink},
    guard::{Guard, StartOptions, Targets},
    kernel::KernelFeatures,
};

/// The daemon's default ring buffer (`[events] ring_buffer_kib = 2048`).
const DEFAULT_RING: u32 = 2048 * 1024;
/// The smallest size measured before, still measured for comparison.
const SMALL_RING: u32 = 256 * 1024;
/// The larger ring tried when the default one drops at full speed.
const BIG_RING: u32 = 16 * 1024 * 1024;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

/// Programs named like ours that are loaded in the kernel: another guard
/// (a test, a daemon) would add its tracepoints to the "no guard" side.
fn guardian_programs() -> usize {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| p.name_as_str().is_some_and(|n| n.starts_with("guardian_")))
        .count()
}

/// Ids of the loaded `guardian_*` programs.
fn guardian_program_ids() -> Vec<u32> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| p.name_as_str().is_some_and(|n| n.starts_with("guardian_")))
        .map(|p| p.id())
        .collect()
}

/// Summed run time (ns) and run count of the programs `ids` (kept by the
/// kernel only while run-time statistics are enabled).
fn program_stats(ids: &[u32]) -> (u64, u64) {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| ids.contains(&p.id()))
        .fold((0, 0), |(t, c), p| {
            (t + p.run_time().as_nanos() as u64, c + p.run_count())
        })
}

/// Start the guard and return it with the ids of the programs it loaded.
fn start_guard_ids(protected: &Path, ring_bytes: u32) -> (Guard, Targets, Vec<u32>) {
    let before = guardian_program_ids();
    let (guard, targets) = start_guard(protected, ring_bytes);
    let ids = guardian_program_ids()
        .into_iter()
        .filter(|id| !before.contains(id))
        .collect();
    (guard, targets, ids)
}

/// Wait until no other guard is loaded, so that the "no guard" side really
/// has none; returns whether that happened. At most
/// `GUARDIAN_BENCH_WAIT_SECS` (default 120) seconds; 0 does not wait, for
/// programs pinned for good on hooks the measurement does not use (the
/// count is printed either way).
fn wait_alone() -> bool {
    let secs = env_num("GUARDIAN_BENCH_WAIT_SECS", 120);
    let n = guardian_programs();
    if n > 0 && secs == 0 {
        eprintln!("  not waiting: {n} guardian programs loaded by someone else");
        return false;
    }
    for i in 0..secs {
        let n = guardian_programs();
        if n == 0 {
            return true;
        }
        if i == 0 {
            eprintln!("  waiting: {n} guardian programs loaded by someone else");
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    false
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn fs_type(p: &Path) -> &'static str {
    let c = cpath(p);
    // SAFETY: zeroed statfs is valid; statfs fills it or fails.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out pointer.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return "unknown";
    }
    match st.f_type as i64 {
        0xef53 => "ext4",
        0x0102_1994 => "tmpfs",
        0x794c_7630 => "overlayfs",
        0x5846_5342 => "xfs",
        0x9123_683e => "btrfs",
        _ => "other",
    }
}

/// What part 1 attaches on the "with" side.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    /// Detect mode with `syscall_detect = true`: the raw `sys_exit`
    /// program watching its syscalls.
    Syscalls,
    /// The same program attached, watching nothing.
    Floor,
    /// The default configuration, as `guardian run` starts it on this
    /// kernel: `mode = "auto"`, a `[service]` with an egress allowlist,
    /// no syscall tracepoints, the fanotify permission and notification
    /// rungs on the protected file: the real agent, in its own process.
    Default,
}

/// What the "with" side holds while it is measured.
enum Attached {
    /// The guard loaded by this process (the syscall sides).
    InProcess(Box<Guard>),
    /// `guardian run` in a process of its own (the default side). Its
    /// fanotify rungs run threads; in this process they would make every
    /// `write` here take the file-position lock that a multi-threaded
    /// process's writes take, a cost no other process pays.
    Agent {
        child: std::process::Child,
        config: std::path::PathBuf,
    },
}

impl Attached {
    /// Events the kernel programs submitted while attached.
    fn submitted(&self) -> u64 {
        match self {
            Attached::InProcess(g) => counter(g, "events_submitted"),
            Attached::Agent { config, .. } => {
                let status = config.with_file_name("bench-status.json");
                let text = std::fs::read_to_string(status).unwrap();
                let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                v["counters"]["events_submitted"].as_u64().unwrap_or(0)
            }
        }
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        if let Attached::Agent { child, config } = self {
            // SAFETY: plain kill(2) on our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_guardian"))
                .args(["stop", "--unload", "--config"])
                .arg(&*config)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            // The kernel frees unpinned programs asynchronously: wait, so
            // that the next round does not see them and start over.
            for _ in 0..100 {
                if guardian_programs() == 0 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// The default configuration (see [`Side::Default`]): the real agent,
/// started by `guardian run` with a config that sets nothing but the
/// protected file, a `[service]` with an egress allowlist, and where its
/// files go.
fn start_default(dir: &Path, protected: &Path) -> Attached {
    let svc = dir.join("inference-service");
    if !svc.exists() {
        std::fs::copy("/bin/true", &svc).unwrap();
    }
    let config = dir.join("bench-guardian.toml");
    let status = dir.join("bench-status.json");
    let _ = std::fs::remove_file(&status);
    std::fs::write(
        &config,
        format!(
            "[guard]\nprotected = [{:?}]\npin_dir = \"/sys/fs/bpf/guardian-bench\"\nunload_without_token = true\n\
             [service]\nexe = [{:?}]\negress = [{{ cidr = \"127.0.0.2/32\", ports = [8080] }}]\n\
             [events]\noutput = \"/dev/null\"\n[status]\npath = {:?}\ninterval_secs = 1\n\
             [measure]\nlog = {:?}\nmanifest = {:?}\n[policy]\ndir = {:?}\n",
            protected.display().to_string(),
            svc.display().to_string(),
            status.display().to_string(),
            dir.join("bench-measurements.log").display().to_string(),
            dir.join("bench-manifest.toml").display().to_string(),
            dir.join("bench-policies").display().to_string(),
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_guardian"))
        .args(["run", "--config"])
        .arg(&config)
        .env("GUARDIAN_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("bench-agent.log")).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !status.exists() {
        if let Some(code) = child.try_wait().unwrap() {
            panic!(
                "guardian run exited with {code}:\n{}",
                std::fs::read_to_string(dir.join("bench-agent.log")).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "guardian run not ready in 60 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = std::fs::read_to_string(&status).unwrap();
    assert!(
        !text.contains("sys_exit") && !text.contains("syscalls/sys_enter"),
        "the default configuration attached a syscall tracepoint: {text}"
    );
    Attached::Agent { child, config }
}

/// Start the guard the way `guardian run` does, in detect mode with the
/// syscall tracepoints, without pins (nothing outlives the bench).
fn start_guard(protected: &Path, ring_bytes: u32) -> (Guard, Targets) {
    let cfg = GuardConfig {
        mode: ModeRequest::Detect,
        protected: vec![protected.to_owned()],
        ..GuardConfig::default()
    };
    let targets = Targets::resolve(&cfg, &ServiceConfig::default(), &[]).unwrap();
    let features = KernelFeatures::probe();
    let guard = Guard::start(
        &StartOptions {
            object: guardian::EBPF_OBJECT,
            request: ModeRequest::Detect,
            require: &[],
            features: &features,
            btf_path: Path::new(guardian::btf::VMLINUX_BTF),
            ring_buffer_bytes: ring_bytes,
            pin_dir: None,
            syscall_detect: true,
            auth: None,
        },
        &targets,
    )
    .unwrap_or_else(|e| panic!("the guard did not start: {}", guardian::guard::chain(&e)));
    (guard, targets)
}

fn counter(guard: &Guard, name: &str) -> u64 {
    guard.counters().unwrap().get(name).copied().unwrap_or(0)
}

// ---------------------------------------------------------------------------
// 1. Syscall overhead on unprotected files

#[derive(Clone, Copy)]
enum Op {
    OpenRead,
    OpenWrite,
    Write1,
}

impl Op {
    const ALL: [Op; 3] = [Op::OpenRead, Op::OpenWrite, Op::Write1];
    fn label(self) -> &'static str {
        match self {
            Op::OpenRead => "`openat(O_RDONLY)` + `close`",
            Op::OpenWrite => "`openat(O_WRONLY)` + `close`",
            Op::Write1 => "`write` of 1 byte",
        }
    }
}

/// ns per operation over `n` operations on `file`.
/// One write-open and close of `file`: one `file_write_open` event when
/// the file is protected.
fn open_write_close(file: &CString) {
    // SAFETY: valid C string; the fd is closed at once.
    let fd = unsafe {
        libc::openat(
            libc::AT_FDCWD,
            file.as_ptr(),
            libc::O_WRONLY | libc::O_CLOEXEC,
        )
    };
    assert!(fd >= 0, "open: {}", std::io::Error::last_os_error());
    // SAFETY: our fd.
    unsafe { libc::close(fd) };
}

fn time_op(op: Op, file: &CString, n: u64) -> f64 {
    let open = |flags| {
        // SAFETY: valid C string; the fd is closed by the caller.
        let fd = unsafe { libc::openat(libc::AT_FDCWD, file.as_ptr(), flags | libc::O_CLOEXEC) };
        assert!(fd >= 0, "open: {}", std::io::Error::last_os_error());
        fd
    };
    match op {
        Op::OpenRead | Op::OpenWrite => {
            let flags = if matches!(op, Op::OpenRead) {
                libc::O_RDONLY
            } else {
                libc::O_WRONLY
            };
            let t = Instant::now();
            for _ in 0..n {
                let fd = open(flags);
                // SAFETY: fd was just opened by us.
                unsafe { libc::close(fd) };
            }
            t.elapsed().as_nanos() as f64 / n as f64
        }
        Op::Write1 => {
            let fd = open(libc::O_WRONLY);
            let byte = [b'x'];
            let t = Instant::now();
            for i in 0..n {
                // Keep the file at most one page long, so that both sides
                // write to the same, already allocated page.
                if i & 4095 == 0 {
                    // SAFETY: plain lseek on our fd.
                    unsafe { libc::lseek(fd, 0, libc::SEEK_SET) };
                }
                // SAFETY: one byte from a live buffer to our fd.
                let w = unsafe { libc::write(fd, byte.as_ptr().cast(), 1) };
                assert_eq!(w, 1);
            }
            let ns = t.elapsed().as_nanos() as f64 / n as f64;
            // SAFETY: our fd.
            unsafe { libc::close(fd) };
            ns
        }
    }
}

struct Overhead {
    op: Op,
    without: Vec<f64>,
    with: Vec<f64>,
    ratios: Vec<f64>,
}

fn overhead(dir: &Path, iters: u64, rounds: usize, side: Side) -> Vec<Overhead> {
    let unprotected = dir.join("unprotected.bin");
    let protected = dir.join("protected-model.bin");
    std::fs::write(&unprotected, b"u").unwrap();
    std::fs::write(&protected, b"model").unwrap();
    let file = cpath(&unprotected);
    let mut out: Vec<Overhead> = Op::ALL
        .iter()
        .map(|&op| Overhead {
            op,
            without: Vec::new(),
            with: Vec::new(),
            ratios: Vec::new(),
        })
        .collect();
    // Warm up caches, the dentry, the page.
    for o in &out {
        time_op(o.op, &file, iters / 10);
    }
    let measure_all = |file: &CString| -> Vec<f64> {
        Op::ALL.iter().map(|&op| time_op(op, file, iters)).collect()
    };
    let mut round = 0;
    let mut discarded = 0;
    while round < rounds {
        // A round counts only if no other guard was loaded around it.
        if !wait_alone() {
            panic!("another guard stayed loaded for two minutes: no clean baseline");
        }
        // ABBA: even rounds measure without the guard first, odd rounds
        // with it first.
        let guard_first = (round + discarded) % 2 == 1;
        let start = || match side {
            Side::Default => start_default(dir, &protected),
            Side::Syscalls | Side::Floor => {
                let guard = start_guard(&protected, DEFAULT_RING).0;
                if side == Side::Floor {
                    watch_nothing();
                }
                Attached::InProcess(Box::new(guard))
            }
        };
        let (without, with) = if guard_first {
            let a = start();
            let with = measure_all(&file);
            assert_eq!(a.submitted(), 0);
            drop(a);
            (measure_all(&file), with)
        } else {
            let without = measure_all(&file);
            let a = start();
            let with = measure_all(&file);
            assert_eq!(a.submitted(), 0);
            drop(a);
            (without, with)
        };
        if guardian_programs() != 0 {
            discarded += 1;
            eprintln!("  round discarded: another guard was loaded meanwhile");
            assert!(
                discarded < 3 * rounds,
                "too many rounds disturbed by other guards"
            );
            continue;
        }
        round += 1;
        for (i, o) in out.iter_mut().enumerate() {
            o.without.push(without[i]);
            o.with.push(with[i]);
            o.ratios.push(with[i] / without[i]);
        }
        eprintln!(
            "  round {round}/{rounds}: {}",
            out.iter()
                .map(|o| format!(
                    "{:.0}/{:.0} ns",
                    o.without.last().unwrap(),
                    o.with.last().unwrap()
                ))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    out
}

/// The floor of the raw syscall tracepoint: the loaded guard's program
/// stays attached but its config watches no syscall, so each run ends
/// after one map lookup. What remains is the kernel's price for a program
/// on `sys_exit` at all: the slow syscall path and the call.
fn watch_nothing() {
    use aya::maps::{Array, Map};
    use guardian_common::{KernelConfig, maps as names};
    let id = aya::maps::loaded_maps()
        .filter_map(Result::ok)
        .find(|m| m.name_as_str() == Some(names::CONFIG))
        .expect("the guard's config map")
        .id();
    let map = Map::Array(MapData::from_id(id).unwrap());
    let mut arr: Array<MapData, KernelConfig> = Array::try_from(map).unwrap();
    let mut cfg = arr.get(&0, 0).unwrap();
    cfg.syscalls.enabled = 0;
    arr.set(0, cfg, 0).unwrap();
}

/// Time spent inside the guard's programs per operation, and how many
/// program runs each operation causes (kernel run-time statistics, enabled
/// only for this measurement: they cost two clock reads per run).
fn in_bpf(dir: &Path, iters: u64) -> Vec<(f64, f64)> {
    let unprotected = cpath(&dir.join("unprotected.bin"));
    let (guard, _, ids) = start_guard_ids(&dir.join("protected-model.bin"), DEFAULT_RING);
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).unwrap();
    let out = Op::ALL
        .iter()
        .map(|&op| {
            let (t0, c0) = program_stats(&ids);
            time_op(op, &unprotected, iters);
            let (t1, c1) = program_stats(&ids);
            (
                (t1 - t0) as f64 / iters as f64,
                (c1 - c0) as f64 / iters as f64,
            )
        })
        .collect();
    drop(guard);
    out
}

// ---------------------------------------------------------------------------
// 2. Event throughput

/// How the consumer reads the ring buffer.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Reader {
    /// Each record decoded and written before its slot is released (the
    /// daemon before `RingReader`).
    PerRecord,
    /// Records copied out and released at once, then decoded and written
    /// (`RingReader`, as the daemon reads).
    CopyOut,
}

impl Reader {
    fn label(self) -> &'static str {
        match self {
            Reader::PerRecord => "record by record",
            Reader::CopyOut => "copied out",
        }
    }
}

/// The daemon's bound on copied-out records (`daemon/serve.rs`).
const READER_BYTES: usize = 4 << 20;

struct Run {
    ring_bytes: u32,
    reader: Reader,
    /// The most bytes of records waiting in the reader at once.
    reader_peak: usize,
    producers: usize,
    /// Paced total rate asked for, events/s; `None`: full speed.
    target: Option<f64>,
    opens: u64,
    submitted: u64,
    drops: u64,
    consumed: u64,
    /// Consumed events that were the expected alert with the executable
    /// named.
    as_expected: u64,
    undecodable: u64,
    write_errors: u64,
    secs: f64,
    sink_bytes: u64,
    /// Times the consumer woke from `poll` and found records.
    wakeups: u64,
}

impl Run {
    fn rate(&self) -> f64 {
        self.consumed as f64 / self.secs
    }
}

/// What the daemon's `drain()` does, minus the hand-over to the attestation
/// thread: every waiting record through the decoder into the sink, copied
/// out first as the daemon does.
fn drain_copied(
    ring: &mut EventRing,
    reader: &mut RingReader,
    decoder: &mut Decoder,
    sink: &mut Sink,
    tally: &mut Tally,
    expect_file: &str,
) {
    reader.drain(ring, |record| {
        tally.consumed += 1;
        match decoder.decode(record) {
            Ok(ev) => {
                if expected(&ev, expect_file) {
                    tally.as_expected += 1;
                }
                if sink.write(&ev).is_err() {
                    tally.write_errors += 1;
                }
            }
            Err(_) => tally.undecodable += 1,
        }
    });
    if sink.flush().is_err() {
        tally.write_errors += 1;
    }
}

/// The daemon's `drain()` before `RingReader`: each record decoded and
/// written before its slot is released (through aya's `RingBuf`, as then).
fn drain(
    ring: &mut RingBuf<MapData>,
    decoder: &mut Decoder,
    sink: &mut Sink,
    tally: &mut Tally,
    expect_file: &str,
) {
    while let Some(item) = ring.next() {
        tally.consumed += 1;
        match decoder.decode(&item) {
            Ok(ev) => {
                if expected(&ev, expect_file) {
                    tally.as_expected += 1;
                }
                if sink.write(&ev).is_err() {
                    tally.write_errors += 1;
                }
            }
            Err(_) => tally.undecodable += 1,
        }
    }
    // As the daemon does: the batch goes out in one write.
    if sink.flush().is_err() {
        tally.write_errors += 1;
    }
}

/// The guard's ring buffer as aya's `RingBuf` (mapped its way, the data
/// twice), for the reader the daemon had before `RingReader`.
fn aya_ring(guard: &mut Guard) -> RingBuf<MapData> {
    let ring = guard.take_events().unwrap();
    RingBuf::try_from(Map::RingBuf(ring.into_map())).unwrap()
}

fn expected(ev: &SecurityEvent, file: &str) -> bool {
    ev.event == "file_write_open"
        && ev.verdict == "alert"
        && ev.file.as_deref() == Some(file)
        && ev.exe.is_some()
}

#[derive(Default)]
struct Tally {
    wakeups: u64,
    consumed: u64,
    as_expected: u64,
    undecodable: u64,
    write_errors: u64,
}

fn throughput(
    dir: &Path,
    ring_bytes: u32,
    producers: usize,
    target: Option<f64>,
    secs: f64,
) -> Run {
    wait_alone();
    throughput_with(dir, ring_bytes, Reader::CopyOut, producers, target, secs)
}

fn throughput_with(
    dir: &Path,
    ring_bytes: u32,
    reader: Reader,
    producers: usize,
    target: Option<f64>,
    secs: f64,
) -> Run {
    let protected = dir.join("protected-model.bin");
    std::fs::write(&protected, b"model").unwrap();
    let sink_path = dir.join("events.jsonl");
    let _ = std::fs::remove_file(&sink_path);
    let (mut guard, targets) = start_guard(&protected, ring_bytes);
    let ring = guard.take_events().unwrap();
    let fd = ring.as_raw_fd();
    // The record-by-record reader is the one the daemon had before
    // `RingReader`, on aya's `RingBuf`; the copying one is the daemon's.
    let (mut ours, mut theirs): (Option<EventRing>, _) = match reader {
        Reader::PerRecord => (
            None,
            Some(RingBuf::try_from(Map::RingBuf(ring.into_map())).unwrap()),
        ),
        Reader::CopyOut => (Some(ring), None),
    };
    let mut decoder = Decoder::new(guard.mode(), &targets);
    let mut sink = Sink::open(sink_path.to_str().unwrap()).unwrap();
    let submitted0 = counter(&guard, "events_submitted");
    let drops0 = counter(&guard, "ringbuf_drops");
    let expect_file = protected.display().to_string();
    let file = cpath(&protected);
    let stop = AtomicBool::new(false);
    let opens = AtomicU64::new(0);
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(secs);
    let tally = std::thread::scope(|s| {
        let consumer = s.spawn(|| {
            let mut tally = Tally::default();
            let mut copied = RingReader::new(READER_BYTES);
            loop {
                let mut pfd = libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&mut pfd, 1, 50) };
                // Read the flag before draining: whatever the producers
                // submitted before they stopped is then seen by this drain.
                let last = stop.load(Ordering::Acquire);
                let before = tally.consumed;
                match (&mut ours, &mut theirs) {
                    (_, Some(ring)) => {
                        drain(ring, &mut decoder, &mut sink, &mut tally, &expect_file);
                    }
                    (Some(ring), None) => drain_copied(
                        ring,
                        &mut copied,
                        &mut decoder,
                        &mut sink,
                        &mut tally,
                        &expect_file,
                    ),
                    (None, None) => unreachable!("one of the two readers"),
                }
                if tally.consumed > before {
                    tally.wakeups += 1;
                }
                if last {
                    return (tally, started.elapsed(), copied.peak_bytes());
                }
            }
        });
        let workers: Vec<_> = (0..producers)
            .map(|_| {
                s.spawn(|| {
                    let per = target.map(|t| t / producers as f64);
                    let t0 = Instant::now();
                    let mut n = 0u64;
                    while Instant::now() < deadline {
                        for _ in 0..64 {
                            open_write_close(&file);
                        }
                        n += 64;
                        if let Some(per) = per {
                            let due = t0 + Duration::from_secs_f64(n as f64 / per);
                            let now = Instant::now();
                            if due > now {
                                std::thread::sleep(due - now);
                            }
                        }
                    }
                    opens.fetch_add(n, Ordering::Relaxed);
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        stop.store(true, Ordering::Release);
        consumer.join().unwrap()
    });
    let (tally, elapsed, reader_peak) = tally;
    let run = Run {
        ring_bytes,
        reader,
        reader_peak,
        producers,
        target,
        opens: opens.load(Ordering::Relaxed),
        submitted: counter(&guard, "events_submitted") - submitted0,
        drops: counter(&guard, "ringbuf_drops") - drops0,
        consumed: tally.consumed,
        as_expected: tally.as_expected,
        undecodable: tally.undecodable,
        write_errors: tally.write_errors,
        secs: elapsed.as_secs_f64(),
        sink_bytes: std::fs::metadata(&sink_path).map_or(0, |m| m.len()),
        wakeups: tally.wakeups,
    };
    drop(guard);
    let _ = std::fs::remove_file(&sink_path);
    eprintln!(
        "  ring {} KiB read {}, {} producer(s), {}: opens {}, submitted {}, drops {}, consumed {} ({} as expected), {:.0} events/s, {:.1} events per wake-up, reader peak {} KiB",
        run.ring_bytes / 1024,
        run.reader.label(),
        run.producers,
        run.target
            .map_or("full speed".to_owned(), |t| format!("paced at {t:.0}/s")),
        run.opens,
        run.submitted,
        run.drops,
        run.consumed,
        run.as_expected,
        run.rate(),
        run.consumed as f64 / run.wakeups.max(1) as f64,
        run.reader_peak / 1024
    );
    // Every open of the protected file is either submitted or dropped, and
    // every submitted record is consumed and decodes to the expected alert.
    assert_eq!(run.opens, run.submitted + run.drops, "events unaccounted");
    assert_eq!(run.consumed, run.submitted, "records not consumed");
    assert_eq!(run.as_expected, run.consumed, "unexpected events");
    assert_eq!(run.undecodable + run.write_errors, 0);
    run
}

/// The consumer alone: fill a large ring buffer with nobody reading (two
/// producer threads), then time one consumer draining it through the
/// decoder into the file sink. This is the capacity of ring buffer →
/// decode → sink, without producers competing for the two cores.
struct Drain {
    ring_bytes: u32,
    events: u64,
    drops: u64,
    secs: f64,
}

fn drain_filled(dir: &Path, ring_bytes: u32) -> Drain {
    let protected = dir.join("protected-model.bin");
    std::fs::write(&protected, b"model").unwrap();
    let sink_path = dir.join("drain.jsonl");
    let _ = std::fs::remove_file(&sink_path);
    let (mut guard, targets) = start_guard(&protected, ring_bytes);
    // Read record by record, through aya's `RingBuf` (see `drain`).
    let mut ring = aya_ring(&mut guard);
    let mut decoder = Decoder::new(guard.mode(), &targets);
    let mut sink = Sink::open(sink_path.to_str().unwrap()).unwrap();
    // A record is the event plus the ring's 8-byte header; fill to ~90%.
    let record = (size_of::<guardian_common::Event>() + 8) as u64;
    let want = u64::from(ring_bytes) / record * 9 / 10;
    let file = cpath(&protected);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                for _ in 0..want / 2 {
                    open_write_close(&file);
                }
            });
        }
    });
    let drops = counter(&guard, "ringbuf_drops");
    let expect_file = protected.display().to_string();
    let mut tally = Tally::default();
    let t = Instant::now();
    drain(&mut ring, &mut decoder, &mut sink, &mut tally, &expect_file);
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(tally.consumed, counter(&guard, "events_submitted"));
    assert_eq!(tally.as_expected, tally.consumed);
    drop(guard);
    let _ = std::fs::remove_file(&sink_path);
    let d = Drain {
        ring_bytes,
        events: tally.consumed,
        drops,
        secs,
    };
    eprintln!(
        "  drained {} events from a filled {} MiB ring in {:.2} s: {:.0} events/s (drops while filling: {})",
        d.events,
        ring_bytes >> 20,
        d.secs,
        d.events as f64 / d.secs,
        d.drops
    );
    d
}

// ---------------------------------------------------------------------------
// 3. Where the consumer's time goes

struct Stages {
    records: usize,
    /// Wall ns per `openat(O_WRONLY)+close` of the protected file (one event
    /// each), with nobody draining during the burst.
    produce: f64,
    /// Of which inside the guard's programs.
    produce_bpf: f64,
    decode: f64,
    decode_json: f64,
    decode_sink_file: f64,
    decode_sink_null: f64,
}

/// Capture real records (bursts smaller than the ring, drained in between,
/// so none is dropped), then replay them through each stage.
fn stages(dir: &Path, records: usize) -> Stages {
    let protected = dir.join("protected-model.bin");
    std::fs::write(&protected, b"model").unwrap();
    let (mut guard, targets, ids) = start_guard_ids(&protected, DEFAULT_RING);
    // Read record by record, through aya's `RingBuf` (see `drain`).
    let mut ring = aya_ring(&mut guard);
    let file = cpath(&protected);
    let mut raw: Vec<Vec<u8>> = Vec::with_capacity(records);
    let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).unwrap();
    let mut producing = Duration::ZERO;
    let mut bpf_ns = 0;
    while raw.len() < records {
        let (t0, _) = program_stats(&ids);
        let t = Instant::now();
        for _ in 0..512 {
            open_write_close(&file);
        }
        producing += t.elapsed();
        bpf_ns += program_stats(&ids).0 - t0;
        while let Some(item) = ring.next() {
            raw.push(item.to_vec());
        }
    }
    drop(stats);
    let produce = producing.as_nanos() as f64 / raw.len() as f64;
    let produce_bpf = bpf_ns as f64 / raw.len() as f64;
    assert_eq!(counter(&guard, "ringbuf_drops"), 0);
    let mode = guard.mode();
    drop(guard);
    let per_event = |f: &mut dyn FnMut(&[u8])| {
        let t = Instant::now();
        for r in &raw {
            f(r);
        }
        t.elapsed().as_nanos() as f64 / raw.len() as f64
    };
    // One decoder for all stages: its executable cache is warm after the
    // first event, as in the daemon.
    let mut d = Decoder::new(mode, &targets);
    let decode = per_event(&mut |r| {
        std::hint::black_box(d.decode(r).unwrap());
    });
    let decode_json = per_event(&mut |r| {
        let ev = d.decode(r).unwrap();
        std::hint::black_box(serde_json::to_vec(&ev).unwrap());
    });
    let path = dir.join("stages.jsonl");
    let mut sink = Sink::open(path.to_str().unwrap()).unwrap();
    let decode_sink_file = per_event(&mut |r| {
        sink.write(&d.decode(r).unwrap()).unwrap();
    });
    sink.flush().unwrap();
    let _ = std::fs::remove_file(&path);
    let mut null = Sink::open("/dev/null").unwrap();
    let decode_sink_null = per_event(&mut |r| {
        null.write(&d.decode(r).unwrap()).unwrap();
    });
    null.flush().unwrap();
    Stages {
        records: raw.len(),
        produce,
        produce_bpf,
        decode,
        decode_json,
        decode_sink_file,
        decode_sink_null,
    }
}

// ---------------------------------------------------------------------------

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned())
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    assert!(
        unsafe { libc::geteuid() } == 0,
        "this benchmark loads eBPF programs: run it as root"
    );
    assert!(
        !guardian::EBPF_OBJECT.is_empty(),
        "built without the eBPF object (see guardian/build.rs)"
    );
    let iters = env_num("GUARDIAN_BENCH_ITERS", 500_000);
    let rounds = env_num("GUARDIAN_BENCH_ROUNDS", 7) as usize;
    let secs = env_num("GUARDIAN_BENCH_SECS", 5) as f64;
    let parts = std::env::var("GUARDIAN_BENCH_PARTS").unwrap_or_else(|_| "d1f23".into());
    let dir = tempfile::tempdir().unwrap();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let foreign = guardian_programs();
    let load_start = loadavg();
    eprintln!(
        "# guard benchmark: {} ({cores} cores), kernel {kernel}, temp files on {} ({})",
        cpu_model(),
        fs_type(dir.path()),
        dir.path().display()
    );
    eprintln!("# load average {load_start}; guardian programs already loaded by others: {foreign}");

    let (oh, bpf) = if parts.contains('1') {
        eprintln!("## 1. syscall overhead, {rounds} rounds x {iters} ops per side");
        let oh = overhead(dir.path(), iters, rounds, Side::Syscalls);
        (oh, in_bpf(dir.path(), (iters / 5).max(1000)))
    } else {
        (Vec::new(), Vec::new())
    };
    let foreign_after = guardian_programs();
    if parts.contains('1') {
        print_overhead(
            &oh,
            &bpf,
            (rounds, iters),
            (&load_start, &foreign, foreign_after),
            dir.path(),
        );
    }
    for (part, side, title, column) in [
        (
            'd',
            Side::Default,
            "The default configuration (`mode = \"auto\"`, a `[service]`, no syscall tracepoints, both fanotify rungs on the protected file)",
            "default config ns/op",
        ),
        (
            'f',
            Side::Floor,
            "The floor: the raw `sys_exit` program attached but watching no syscall",
            "attached, watching nothing ns/op",
        ),
    ] {
        if !parts.contains(part) {
            continue;
        }
        eprintln!("## 1{part}. {title}");
        let oh = overhead(dir.path(), iters, rounds, side);
        println!("\n### 1{part}. {title} ({rounds} rounds x {iters} ops per side)\n");
        println!("| operation | no guard ns/op | {column} | added ns | ratio |");
        println!("|---|---:|---:|---:|---:|");
        for o in &oh {
            let (a, b) = (median(&o.without), median(&o.with));
            println!(
                "| {} | {a:.0} | {b:.0} | {:.0} | {:.3} ({:+.1}%) |",
                o.op.label(),
                b - a,
                median(&o.ratios),
                (median(&o.ratios) - 1.0) * 100.0
            );
        }
    }
    if parts.contains('2') {
        part2(dir.path(), secs);
    }
    if parts.contains('3') {
        part3(dir.path());
    }
    if parts.contains('r') {
        part_rings(dir.path(), secs);
    }
}

/// Burst loss per ring size, both readers, all configurations taking turns
/// in each round (see the file's opening, part r).
fn part_rings(dir: &Path, secs: f64) {
    let rounds = env_num("GUARDIAN_BENCH_RING_ROUNDS", 3) as usize;
    let mut configs = Vec::new();
    for kib in [4096u32, 1024, 512, 256] {
        for reader in [Reader::PerRecord, Reader::CopyOut] {
            configs.push((kib * 1024, reader));
        }
    }
    eprintln!(
        "## r. burst loss per ring size, {rounds} rounds x {} configurations, {secs} s each",
        configs.len()
    );
    let mut runs: Vec<(usize, Run)> = Vec::new();
    let mut loads = Vec::new();
    for round in 0..rounds {
        let before = loadavg();
        let order: Vec<_> = if round % 2 == 0 {
            configs.clone()
        } else {
            configs.iter().rev().copied().collect()
        };
        for (ring, reader) in order {
            runs.push((round, throughput_with(dir, ring, reader, 2, None, secs)));
        }
        loads.push((before, loadavg()));
    }
    println!(
        "\n### r. Burst loss per ring size (2 producers, full speed, {secs} s per run, {rounds} rounds)\n"
    );
    println!(
        "| round | load average before → after | ring | reader | opens | ringbuf_drops | drop % | events/s consumed | reader peak KiB |"
    );
    println!("|---:|---|---:|---|---:|---:|---:|---:|---:|");
    for (round, r) in &runs {
        println!(
            "| {} | {} → {} | {} KiB | {} | {} | {} | {:.2} | {:.0} | {} |",
            round + 1,
            loads[*round].0,
            loads[*round].1,
            r.ring_bytes / 1024,
            r.reader.label(),
            r.opens,
            r.drops,
            100.0 * r.drops as f64 / r.opens.max(1) as f64,
            r.rate(),
            r.reader_peak / 1024
        );
    }
    println!("\nSummed over the rounds:\n");
    println!("| ring | reader | opens | ringbuf_drops | drop % | runs with drops |");
    println!("|---:|---|---:|---:|---:|---:|");
    for (ring, reader) in &configs {
        let mine: Vec<&Run> = runs
            .iter()
            .map(|(_, r)| r)
            .filter(|r| r.ring_bytes == *ring && r.reader == *reader)
            .collect();
        let opens: u64 = mine.iter().map(|r| r.opens).sum();
        let drops: u64 = mine.iter().map(|r| r.drops).sum();
        println!(
            "| {} KiB | {} | {opens} | {drops} | {:.2} | {} of {} |",
            ring / 1024,
            reader.label(),
            100.0 * drops as f64 / opens.max(1) as f64,
            mine.iter().filter(|r| r.drops > 0).count(),
            mine.len()
        );
    }
}

#[allow(clippy::type_complexity)]
fn print_overhead(
    oh: &[Overhead],
    bpf: &[(f64, f64)],
    (rounds, iters): (usize, u64),
    (load_start, foreign, foreign_after): (&str, &usize, usize),
    dir: &Path,
) {
    let load_end = loadavg();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    // The report, in markdown.
    println!("### Machine\n");
    println!("| | |\n|---|---|");
    println!("| CPU | {} |", cpu_model());
    println!("| cores | {cores} |");
    println!("| kernel | {kernel} |");
    println!("| temp files on | {} |", fs_type(dir));
    println!("| load average at start / end | {load_start} / {load_end} |");
    println!(
        "| other guardian programs loaded (start / after part 1) | {foreign} / {foreign_after} |"
    );
    println!(
        "\n### 1. Added latency on unprotected files ({rounds} rounds x {iters} ops per side, medians)\n"
    );
    println!(
        "| operation | no guard ns/op | guard attached ns/op | added ns | ratio (median of per-round ratios) | best round ratio | worst round ratio |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for o in oh {
        let (a, b) = (median(&o.without), median(&o.with));
        println!(
            "| {} | {a:.0} | {b:.0} | {:.0} | {:.3} ({:+.1}%) | {:.3} | {:.3} |",
            o.op.label(),
            b - a,
            median(&o.ratios),
            (median(&o.ratios) - 1.0) * 100.0,
            min(&o.ratios),
            o.ratios.iter().copied().fold(0.0, f64::max),
        );
    }
    println!(
        "\nWhere the added time goes (guard's programs' own run time, kernel run-time statistics, {} ops):\n",
        (iters / 5).max(1000)
    );
    println!(
        "| operation | added ns (median) | in the guard's programs ns | program runs per op | rest: syscall tracing machinery ns |"
    );
    println!("|---|---:|---:|---:|---:|");
    for (o, (ns, runs)) in oh.iter().zip(bpf) {
        let added = median(&o.with) - median(&o.without);
        println!(
            "| {} | {added:.0} | {ns:.0} | {runs:.1} | {:.0} |",
            o.op.label(),
            added - ns
        );
    }
}

fn part2(dir: &Path, secs: f64) {
    eprintln!("## 2. event throughput, {secs} s per run");
    let mut runs = vec![
        throughput(dir, DEFAULT_RING, 1, None, secs),
        throughput(dir, DEFAULT_RING, 2, None, secs),
    ];
    let full_drops = runs.iter().any(|r| r.drops > 0);
    // The previous default, for comparison.
    runs.push(throughput(dir, SMALL_RING, 2, None, secs));
    let mut sustainable = None;
    if full_drops {
        eprintln!("## 2b. full speed dropped events: larger ring, then paced rates");
        runs.push(throughput(dir, BIG_RING, 1, None, secs));
        runs.push(throughput(dir, BIG_RING, 2, None, secs));
        // Highest paced rate with no drops on the default ring: bisect
        // between 0 and the best consumed rate seen.
        let mut hi = runs.iter().map(Run::rate).fold(0.0, f64::max);
        let mut lo = 0.0;
        let mut best: Option<Run> = None;
        for _ in 0..6 {
            let mid = (lo + hi) / 2.0;
            let r = throughput(dir, DEFAULT_RING, 2, Some(mid), secs.min(3.0));
            if r.drops == 0 {
                lo = mid;
                best = Some(r);
            } else {
                hi = mid;
            }
        }
        sustainable = best;
    }

    eprintln!("## 2c. draining a filled ring buffer");
    let drains: Vec<Drain> = (0..3).map(|_| drain_filled(dir, 64 << 20)).collect();
    println!("\n### 2. Event throughput: ring buffer → decode → file sink\n");
    let header = "| ring buffer | producers | pace | opens | submitted | consumed | ringbuf_drops | events/s consumed | events per wake-up | sink MiB |";
    let rule = "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|";
    println!("{header}\n{rule}");
    let row = |r: &Run| {
        println!(
            "| {} KiB | {} | {} | {} | {} | {} | {} | {:.0} | {:.1} | {:.0} |",
            r.ring_bytes / 1024,
            r.producers,
            r.target
                .map_or("full speed".to_owned(), |t| format!("{t:.0}/s")),
            r.opens,
            r.submitted,
            r.consumed,
            r.drops,
            r.rate(),
            r.consumed as f64 / r.wakeups.max(1) as f64,
            r.sink_bytes as f64 / (1 << 20) as f64
        );
    };
    for r in &runs {
        row(r);
    }
    if let Some(r) = &sustainable {
        println!("\nHighest paced rate without drops (default ring):\n");
        println!("{header}\n{rule}");
        row(r);
    } else if full_drops {
        println!("\nNo paced rate without drops was found.");
    }
    let best_clean = runs
        .iter()
        .chain(&sustainable)
        .filter(|r| r.drops == 0)
        .map(Run::rate)
        .fold(0.0, f64::max);
    println!(
        "\nBest zero-drop rate with live producers: {best_clean:.0} events/s; target 250000: ratio {:.2}",
        best_clean / 250_000.0
    );
    println!("\nThe consumer alone, draining a filled ring buffer (no producer running):\n");
    println!("| ring buffer | events | drops while filling | seconds | events/s | ratio to 250k |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for d in &drains {
        let rate = d.events as f64 / d.secs;
        println!(
            "| {} MiB | {} | {} | {:.3} | {rate:.0} | {:.2} |",
            d.ring_bytes >> 20,
            d.events,
            d.drops,
            d.secs,
            rate / 250_000.0
        );
    }
}

fn part3(dir: &Path) {
    eprintln!("## 3. consumer stages");
    let st = stages(dir, 200_000);

    println!(
        "\n### 3. Consumer cost per event ({} captured records replayed)\n",
        st.records
    );
    println!("| stage | ns/event | ceiling events/s |");
    println!("|---|---:|---:|");
    println!(
        "| producer: `openat(O_WRONLY)`+`close` of the protected file | {:.0} | {:.0} |",
        st.produce,
        1e9 / st.produce
    );
    println!(
        "| of which in the guard's programs (emit included) | {:.0} | |",
        st.produce_bpf
    );
    for (name, ns) in [
        ("`Decoder::decode`", st.decode),
        ("decode + `serde_json::to_vec`", st.decode_json),
        ("decode + `Sink::write` (file)", st.decode_sink_file),
        ("decode + `Sink::write` (/dev/null)", st.decode_sink_null),
    ] {
        println!("| {name} | {ns:.0} | {:.0} |", 1e9 / ns);
    }
}
