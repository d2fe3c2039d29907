//! Per-event policy evaluation: wasmi (configured as guardian configures
//! it: fuel metering, eager compilation, fuel set before every call)
//! against the same policy compiled natively and against wasmtime
//! (Cranelift, fuel metering on). Every path includes encoding the event on
//! the host (guardian's encoder, which gives the version 2 header) and
//! reading it in the policy, as in the agent.
//!
//! Usage: policy-bench WASM_DIR NO_PTRACE.wat [--quick]

use std::{
    hint::black_box,
    path::Path,
    time::{Duration, Instant},
};

use guardian_policy_abi::{
    Detail, Dev, Event, HEADER_SIZE, IpAddr, KernelVerdict, Kind, Mode, Verdict, wire::Header,
};
use guardian_policy_sdk::{Policy, evaluate_input};

const FUEL: u64 = 100_000;
const BATCH: usize = 64;

fn event(
    kind: Kind,
    detail: Detail<'static>,
    exe: &'static [u8],
    service: bool,
    pid: u32,
) -> Event<'static> {
    Event {
        kind,
        kernel: KernelVerdict::Allow,
        mode: Mode::Enforce,
        time_ns: 1_700_000_000_000_000_000,
        hook: b"lsm/file_open",
        pid,
        tid: pid,
        ppid: 1,
        uid: 0,
        gid: 0,
        exe: Some(exe),
        exe_dev: Dev { major: 8, minor: 1 },
        exe_ino: 1234,
        comm: b"python3",
        service,
        detail,
    }
}

fn file(path: &'static [u8], exe: &'static [u8]) -> Event<'static> {
    event(
        Kind::FileWriteOpen,
        Detail::File {
            path,
            dev: Dev { major: 8, minor: 1 },
            ino: 42,
            flags: 0x241,
            flags_text: b"O_WRONLY|O_CREAT|O_TRUNC",
        },
        exe,
        false,
        4242,
    )
}

/// The events each policy is measured on: the common, allowed case.
fn workload(name: &str) -> Event<'static> {
    match name {
        "model_writer" => file(b"/opt/models/resnet50.onnx", b"/usr/sbin/model-updater"),
        "service_exec" => event(
            Kind::Exec,
            Detail::Exec {
                path: b"/usr/bin/python3",
                env: None,
            },
            b"/usr/bin/python3",
            true,
            4242,
        ),
        "egress" => event(
            Kind::Connect,
            Detail::Connect {
                addr: IpAddr::V4([10, 1, 2, 3]),
                port: 443,
            },
            b"/usr/bin/python3",
            true,
            4242,
        ),
        "rate_anomaly" => file(b"/opt/models/resnet50.onnx", b"/usr/sbin/model-updater"),
        _ => event(
            Kind::Exec,
            Detail::Exec {
                path: b"/bin/true",
                env: None,
            },
            b"/bin/sh",
            false,
            7,
        ),
    }
}

trait Runner {
    fn eval(&mut self, prepared: &[u8]) -> Verdict;
}

/// What guardian does once per event for the whole policy set
/// (`PolicySet::evaluate`): encode the event after room for the version 2
/// header, and write the header the encoder gives in front.
fn prepare<'b>(ev: &Event<'_>, buf: &'b mut [u8]) -> &'b [u8] {
    let (head, body) = buf.split_at_mut(HEADER_SIZE);
    let (len, header) = ev.encode(body).unwrap();
    head.copy_from_slice(&header.to_bytes());
    &buf[..HEADER_SIZE + len]
}

/// What the host writes into a module's buffer (`LoadedModule::call`):
/// header and event for ABI 2, the event alone for ABI 1.
fn input<'b>(abi: i32, prepared: &[u8], out: &'b mut [u8]) -> &'b [u8] {
    let from = if abi >= 2 {
        &prepared[..]
    } else {
        &prepared[HEADER_SIZE..]
    };
    out[..from.len()].copy_from_slice(from);
    &out[..from.len()]
}

struct Native<P: Policy>(P, Vec<u8>);
impl<P: Policy> Runner for Native<P> {
    fn eval(&mut self, prepared: &[u8]) -> Verdict {
        let input = input(2, prepared, &mut self.1);
        Verdict::unpack(evaluate_input(&mut self.0, input)).unwrap_or(Verdict::deny(u32::MAX))
    }
}

struct Wasmi {
    store: wasmi::Store<wasmi::StoreLimits>,
    memory: wasmi::Memory,
    f: wasmi::TypedFunc<(i32, i32), i64>,
    buf: i32,
    abi: i32,
}

fn wasmi_engine() -> wasmi::Engine {
    let mut c = wasmi::Config::default();
    c.consume_fuel(true)
        .allow_start_fn(false)
        .compilation_mode(wasmi::CompilationMode::Eager);
    wasmi::Engine::new(&c)
}

fn wasmi_load(engine: &wasmi::Engine, wasm: &[u8]) -> Wasmi {
    let module = wasmi::Module::new(engine, wasm).unwrap();
    let limits = wasmi::StoreLimitsBuilder::new()
        .memory_size(16 * 65536)
        .instances(1)
        .trap_on_grow_failure(true)
        .build();
    let mut store = wasmi::Store::new(engine, limits);
    store.limiter(|l| l);
    let mut linker = wasmi::Linker::new(engine);
    linker
        .func_wrap(
            "guardian",
            "log",
            |_: wasmi::Caller<'_, wasmi::StoreLimits>, _: i32, _: i32, _: i32| {},
        )
        .unwrap();
    linker
        .func_wrap(
            "guardian",
            "monotonic_ns",
            |_: wasmi::Caller<'_, wasmi::StoreLimits>| 0i64,
        )
        .unwrap();
    let inst = linker.instantiate_and_start(&mut store, &module).unwrap();
    store.set_fuel(FUEL).unwrap();
    let buf = inst
        .get_typed_func::<(), i32>(&store, "guardian_buffer")
        .unwrap()
        .call(&mut store, ())
        .unwrap();
    let abi = inst
        .get_typed_func::<(), i32>(&store, "guardian_abi_version")
        .unwrap()
        .call(&mut store, ())
        .unwrap();
    Wasmi {
        memory: inst.get_memory(&store, "memory").unwrap(),
        f: inst.get_typed_func(&store, "guardian_evaluate").unwrap(),
        store,
        buf,
        abi,
    }
}

impl Runner for Wasmi {
    fn eval(&mut self, prepared: &[u8]) -> Verdict {
        let start = self.buf as usize;
        let dst = &mut self.memory.data_mut(&mut self.store)[start..];
        let len = input(self.abi, prepared, dst).len();
        self.store.set_fuel(FUEL).unwrap();
        let v = self
            .f
            .call(&mut self.store, (self.buf, len as i32))
            .unwrap();
        Verdict::unpack(v).unwrap()
    }
}

impl Wasmi {
    /// Fuel one evaluation of `prepared` uses (about one unit per
    /// instruction): what the interpreter executes.
    fn fuel(&mut self, prepared: &[u8]) -> u64 {
        self.eval(prepared);
        FUEL - self.store.get_fuel().unwrap()
    }
}

struct Wasmtime {
    store: wasmtime::Store<()>,
    memory: wasmtime::Memory,
    f: wasmtime::TypedFunc<(i32, i32), i64>,
    buf: i32,
    abi: i32,
}

fn wasmtime_engine() -> wasmtime::Engine {
    let mut c = wasmtime::Config::new();
    c.consume_fuel(true);
    wasmtime::Engine::new(&c).unwrap()
}

fn wasmtime_load(engine: &wasmtime::Engine, wasm: &[u8]) -> Wasmtime {
    let module = wasmtime::Module::new(engine, wasm).unwrap();
    let mut store = wasmtime::Store::new(engine, ());
    let mut linker = wasmtime::Linker::new(engine);
    linker
        .func_wrap("guardian", "log", |_: i32, _: i32, _: i32| {})
        .unwrap();
    linker
        .func_wrap("guardian", "monotonic_ns", || 0i64)
        .unwrap();
    let inst = linker.instantiate(&mut store, &module).unwrap();
    store.set_fuel(FUEL).unwrap();
    let buf = inst
        .get_typed_func::<(), i32>(&mut store, "guardian_buffer")
        .unwrap()
        .call(&mut store, ())
        .unwrap();
    let abi = inst
        .get_typed_func::<(), i32>(&mut store, "guardian_abi_version")
        .unwrap()
        .call(&mut store, ())
        .unwrap();
    Wasmtime {
        abi,
        memory: inst.get_memory(&mut store, "memory").unwrap(),
        f: inst
            .get_typed_func(&mut store, "guardian_evaluate")
            .unwrap(),
        store,
        buf,
    }
}

impl Runner for Wasmtime {
    fn eval(&mut self, prepared: &[u8]) -> Verdict {
        let start = self.buf as usize;
        let dst = &mut self.memory.data_mut(&mut self.store)[start..];
        let len = input(self.abi, prepared, dst).len();
        self.store.set_fuel(FUEL).unwrap();
        let v = self
            .f
            .call(&mut self.store, (self.buf, len as i32))
            .unwrap();
        Verdict::unpack(v).unwrap()
    }
}

/// The host's part of an evaluation alone: the event prepared with its
/// header (in `measure`) and copied as for a version 2 module, no call.
struct HostOnly(Vec<u8>);
impl Runner for HostOnly {
    fn eval(&mut self, prepared: &[u8]) -> Verdict {
        black_box(input(2, prepared, &mut self.0));
        Verdict::ALLOW
    }
}

/// A version 2 module that allows everything without reading the input.
const NOOP_V2: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "guardian_abi_version") (result i32) (i32.const 2))
  (func (export "guardian_buffer") (result i32) (i32.const 0))
  (func (export "guardian_buffer_size") (result i32) (i32.const 8240))
  (func (export "guardian_evaluate") (param i32 i32) (result i64) (i64.const 0)))"#;

/// p50 and p99 of per-event time (ns), measured over batches of BATCH
/// events (encode + evaluate), so the clock's own cost is spread.
fn measure(r: &mut dyn Runner, ev: &Event<'_>, batches: usize) -> (f64, f64, Verdict) {
    let mut buf = [0u8; 8192];
    let mut last = Verdict::ALLOW;
    for _ in 0..1000 {
        last = r.eval(prepare(ev, &mut buf));
    }
    let mut samples = Vec::with_capacity(batches);
    for _ in 0..batches {
        let t = Instant::now();
        for _ in 0..BATCH {
            last = black_box(r.eval(prepare(black_box(ev), &mut buf)));
        }
        samples.push(t.elapsed().as_nanos() as f64 / BATCH as f64);
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| samples[((samples.len() - 1) as f64 * p) as usize];
    (q(0.5), q(0.99), last)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = Path::new(&args[1]);
    let wat = Path::new(&args[2]);
    let quick = args.iter().any(|a| a == "--quick");
    let batches = if quick { 2_000 } else { 20_000 };
    let names = [
        "model_writer",
        "service_exec",
        "egress",
        "rate_anomaly",
        "no_ptrace",
    ];
    let wi = wasmi_engine();
    let wt = wasmtime_engine();

    println!(
        "| policy | .wasm bytes | native p50 | wasmi p50 | wasmi p99 | wasmi fuel | wasmtime p50 | wasmi load | wasmtime load |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for name in names {
        let wasm = if name == "no_ptrace" {
            wat::parse_file(wat).unwrap()
        } else {
            std::fs::read(dir.join(format!("{name}.wasm"))).unwrap()
        };
        let ev = workload(name);
        let mut native: Option<Box<dyn Runner>> = match name {
            "model_writer" => Some(Box::new(Native(
                model_writer::ModelWriter::INIT,
                vec![0; 8192 + HEADER_SIZE],
            ))),
            "service_exec" => Some(Box::new(Native(
                service_exec::ServiceExec::INIT,
                vec![0; 8192 + HEADER_SIZE],
            ))),
            "egress" => Some(Box::new(Native(
                egress::EgressAllowlist::INIT,
                vec![0; 8192 + HEADER_SIZE],
            ))),
            "rate_anomaly" => Some(Box::new(Native(
                rate_anomaly::RateAnomaly::INIT,
                vec![0; 8192 + HEADER_SIZE],
            ))),
            _ => None,
        };
        let n = native.as_mut().map(|r| measure(&mut **r, &ev, batches));
        let mut a = wasmi_load(&wi, &wasm);
        let (wi50, wi99, v1) = measure(&mut a, &ev, batches);
        let fuel = {
            let mut buf = [0u8; 8192];
            a.fuel(prepare(&ev, &mut buf))
        };
        let mut b = wasmtime_load(&wt, &wasm);
        let (wt50, _, v2) = measure(&mut b, &ev, batches);
        assert_eq!(v1, v2, "{name}: engines disagree");
        if let Some((_, _, v0)) = n {
            assert_eq!(v0, v1, "{name}: native and wasm disagree");
        }
        let loads = if quick { 5 } else { 21 };
        let wi_load = median(
            (0..loads)
                .map(|_| {
                    let t = Instant::now();
                    black_box(wasmi_load(&wi, &wasm));
                    t.elapsed()
                })
                .collect(),
        );
        let wt_load = median(
            (0..loads)
                .map(|_| {
                    let t = Instant::now();
                    black_box(wasmtime_load(&wt, &wasm));
                    t.elapsed()
                })
                .collect(),
        );
        println!(
            "| {name} | {} | {} | {wi50:.0} ns | {wi99:.0} ns | {fuel} | {wt50:.0} ns | {:.0} µs | {:.0} µs |",
            wasm.len(),
            n.map(|(p, _, _)| format!("{p:.0} ns"))
                .unwrap_or_else(|| "(WAT only)".into()),
            wi_load.as_secs_f64() * 1e6,
            wt_load.as_secs_f64() * 1e6,
        );
    }

    // Where the time of an ABI 2 evaluation goes (model_writer's event):
    // the host's part alone (encode, header, copy into memory), then a
    // call into a version 2 module that returns at once, then the policy.
    let ev = workload("model_writer");
    let mut host = HostOnly(vec![0; 8192 + HEADER_SIZE]);
    let (host50, _, _) = measure(&mut host, &ev, batches);
    let noop = wat::parse_str(NOOP_V2).unwrap();
    let mut a = wasmi_load(&wi, &noop);
    let (noop50, _, _) = measure(&mut a, &ev, batches);
    let fuel = {
        let mut buf = [0u8; 8192];
        a.fuel(prepare(&ev, &mut buf))
    };
    // The same event through the serde-derived postcard encoder then a
    // separate pass for the header (what the agent did before it had its
    // own encoder), for comparison.
    let per_event = |f: &mut dyn FnMut()| {
        let mut s: Vec<f64> = (0..batches)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..BATCH {
                    f();
                }
                t.elapsed().as_nanos() as f64 / BATCH as f64
            })
            .collect();
        s.sort_by(|a, b| a.total_cmp(b));
        s[s.len() / 2]
    };
    let mut buf = [0u8; 8192];
    let serde50 = per_event(&mut || {
        let enc = postcard::to_slice(black_box(&ev), &mut buf).unwrap();
        black_box(Header::of(enc).unwrap().to_bytes());
    });
    let own50 = per_event(&mut || {
        black_box(prepare(black_box(&ev), &mut buf).len());
    });
    let (b, f) = (a.buf, a.f);
    let call50 = per_event(&mut || {
        a.store.set_fuel(FUEL).unwrap();
        black_box(f.call(&mut a.store, (b, 100)).unwrap());
    });
    println!();
    println!(
        "breakdown (model_writer event): encoding with the header {own50:.0} ns \
         (postcard's serde encoder + a header pass: {serde50:.0} ns); \
         host part (encode + copy into the module) {host50:.0} ns; \
         set fuel + bare call of a module that returns at once {call50:.0} ns; \
         both together {noop50:.0} ns (fuel {fuel})"
    );

    // Memory: resident growth for 100 live instances of the largest
    // example, per instance, per engine.
    let wasm = std::fs::read(dir.join("rate_anomaly.wasm")).unwrap();
    let before = rss_kib();
    let keep: Vec<Wasmi> = (0..100).map(|_| wasmi_load(&wi, &wasm)).collect();
    let wi_mem = (rss_kib() - before) as f64 / 100.0;
    let before = rss_kib();
    let keep2: Vec<Wasmtime> = (0..100).map(|_| wasmtime_load(&wt, &wasm)).collect();
    let wt_mem = (rss_kib() - before) as f64 / 100.0;
    black_box((keep.len(), keep2.len()));
    println!();
    println!(
        "resident memory per loaded policy instance (rate_anomaly, 100 instances): wasmi {wi_mem:.0} KiB, wasmtime {wt_mem:.0} KiB"
    );
}
