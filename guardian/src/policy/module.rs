//! One policy module in wasmi: compile, check the ABI, instantiate under
//! limits, evaluate with fuel.
//!
//! Everything wasmi-specific lives here and in the host side of the
//! sandbox (`host.rs`: the store's data, the host functions, every call).
//! One [`Runtime`] (one wasmi `Engine`, shared) compiles every module;
//! each module gets its own `Store`, so limits, fuel and the host state
//! are per policy.

use std::{sync::Arc, time::Instant};

use guardian_policy_abi::{
    HEADER_SIZE, MIN_BUFFER_SIZE, OwnedStaticRules, SUPPORTED_ABI_VERSIONS, Verdict, exports,
    wire::Header,
};
use wasmi::{
    CompilationMode, Engine, ExternType, Linker, Memory, Module, Store, StoreLimitsBuilder,
    TypedFunc, ValType,
};

use super::host::{self, Host, call_with_fuel};
// Their paths before host functions and static rules had files of their
// own; the fuzz targets and tests name them so.
pub use super::host::{HostCounters, LOG_MAX_BYTES, LOG_PER_CALL};
use super::rego::{self, RegoError, RegoInfo, RegoModule};
use super::static_rules::read_rules;
pub use super::static_rules::{RULES_MAX_BYTES, decode_static_rules};

/// Resource limits for every module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Fuel per call (roughly one unit per instruction), set before every call.
    pub fuel: u64,
    /// Linear memory, in 64 KiB pages, including what the module declares.
    pub memory_pages: u32,
    /// Size of the `.wasm` file, bytes.
    pub module_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            fuel: 100_000,
            memory_pages: 16,
            module_bytes: 1024 * 1024,
        }
    }
}

/// Why a module was refused at load. Messages name the problem; the caller
/// adds the file.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    /// Larger than [`Limits::module_bytes`].
    #[error("module is {size} bytes, over the limit of {limit} ([policy] max_module_kib)")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Not valid WebAssembly (truncated, corrupt), uses a feature we do not
    /// enable, or has a start function.
    #[error("not a loadable WebAssembly module: {0}")]
    Compile(#[source] wasmi::Error),
    /// Imports something guardian does not provide.
    #[error(
        "imports {module}.{name} ({ty}): a policy may import only guardian.log and guardian.monotonic_ns (no WASI, no memory or table imports)"
    )]
    Import {
        /// Import module.
        module: String,
        /// Import name.
        name: String,
        /// What it is.
        ty: String,
    },
    /// A required export is missing or has the wrong type.
    #[error("export {name}: {problem}")]
    Export {
        /// The export.
        name: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// Instantiation failed (memory over the limit, a data segment out of
    /// bounds, …).
    #[error("instantiation failed: {0}")]
    Instantiate(#[source] wasmi::Error),
    /// An ABI function failed while loading.
    #[error("{call} failed: {source}")]
    Call {
        /// Which export.
        call: &'static str,
        /// Why.
        #[source]
        source: CallError,
    },
    /// `guardian_abi_version` returned a version this guardian does not
    /// speak.
    #[error("ABI version {found}, but this guardian speaks versions {expected:?}")]
    AbiVersion {
        /// What the module said.
        found: i32,
        /// [`SUPPORTED_ABI_VERSIONS`].
        expected: [u32; 2],
    },
    /// The input buffer is unusable.
    #[error(
        "input buffer at {ptr} of {size} bytes is not inside the memory ({memory} bytes) or smaller than {MIN_BUFFER_SIZE}"
    )]
    Buffer {
        /// Address.
        ptr: i32,
        /// Size.
        size: i32,
        /// Memory size.
        memory: usize,
    },
    /// The static rules cannot be read.
    #[error("static rules: {0}")]
    Rules(String),
    /// A Rego (OPA Wasm) module refused.
    #[error("Rego module (OPA Wasm ABI): {0}")]
    Rego(#[from] RegoError),
}

/// Why one call into a module failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CallError {
    /// The fuel ran out (a loop too long, or forever).
    #[error("out of fuel after {fuel} units ([policy] fuel)")]
    OutOfFuel {
        /// The fuel given.
        fuel: u64,
    },
    /// The module trapped.
    #[error("trapped: {0}")]
    Trap(String),
    /// It returned something that is not a verdict.
    #[error("returned {value:#x}, not a verdict: {problem}")]
    BadVerdict {
        /// The value.
        value: i64,
        /// Why.
        problem: String,
    },
    /// A Rego module's result is not a decision (see [`super::rego`]).
    #[error("returned a result that is not a decision: {0}")]
    BadResult(String),
    /// The encoded event does not fit its input buffer.
    #[error("event of {len} bytes does not fit the module's {size}-byte input buffer")]
    TooLarge {
        /// Encoded length.
        len: usize,
        /// Buffer size.
        size: u32,
    },
}

/// Compiles modules; one per agent (cheap to clone).
#[derive(Clone)]
pub struct Runtime {
    engine: Engine,
    linker: Arc<Linker<Host>>,
    limits: Limits,
    epoch: Instant,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("limits", &self.limits)
            .finish()
    }
}

impl Runtime {
    /// A runtime with these limits.
    pub fn new(limits: Limits) -> Self {
        let mut config = wasmi::Config::default();
        config
            .consume_fuel(true)
            // A start function would run code at instantiation, outside
            // any evaluation and before the ABI checks.
            .allow_start_fn(false)
            // Translate every function at load: errors surface at load,
            // not at the first event, and evaluation cost is steady.
            .compilation_mode(CompilationMode::Eager);
        let engine = Engine::new(&config);
        let mut linker = Linker::<Host>::new(&engine);
        if let Err(e) = host::define(&mut linker) {
            // Only possible if the two names collided; every module import
            // is then reported as missing at load, never silently ignored.
            log::error!("policy runtime: defining host functions failed: {e}");
        }
        Self {
            engine,
            linker: Arc::new(linker),
            limits,
            epoch: Instant::now(),
        }
    }

    /// The limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Compile, check and instantiate a module of guardian's own ABI.
    pub fn load(&self, name: &str, wasm: &[u8]) -> Result<LoadedModule, ModuleError> {
        let module = self.compile(wasm)?;
        self.instantiate(name, &module)
    }

    /// Compile, check and instantiate a module of either kind: a Rego
    /// module (OPA's Wasm ABI, told by [`rego::is_opa`]) or one of
    /// guardian's ABI.
    pub fn load_policy(&self, name: &str, wasm: &[u8]) -> Result<PolicyModule, ModuleError> {
        let module = self.compile(wasm)?;
        if rego::is_opa(&module) {
            Ok(PolicyModule::Rego(rego::load(
                &self.engine,
                self.limits,
                name,
                &module,
                wasm,
            )?))
        } else {
            Ok(PolicyModule::Guardian(self.instantiate(name, &module)?))
        }
    }

    fn compile(&self, wasm: &[u8]) -> Result<Module, ModuleError> {
        if wasm.len() > self.limits.module_bytes {
            return Err(ModuleError::TooLarge {
                size: wasm.len(),
                limit: self.limits.module_bytes,
            });
        }
        Module::new(&self.engine, wasm).map_err(ModuleError::Compile)
    }

    fn instantiate(&self, name: &str, module: &Module) -> Result<LoadedModule, ModuleError> {
        let mut imports = Vec::new();
        for i in module.imports() {
            let ok = i.module() == guardian_policy_abi::imports::MODULE
                && matches!(i.ty(), ExternType::Func(_))
                && [
                    guardian_policy_abi::imports::LOG,
                    guardian_policy_abi::imports::MONOTONIC_NS,
                ]
                .contains(&i.name());
            if !ok {
                return Err(ModuleError::Import {
                    module: i.module().to_owned(),
                    name: i.name().to_owned(),
                    ty: describe_type(i.ty()),
                });
            }
            imports.push(format!("{}.{}", i.module(), i.name()));
        }
        let exports: Vec<String> = module
            .exports()
            .map(|e| format!("{} ({})", e.name(), describe_type(e.ty())))
            .collect();
        check_func(module, exports::ABI_VERSION, &[], &[ValType::I32])?;
        check_func(module, exports::BUFFER, &[], &[ValType::I32])?;
        check_func(module, exports::BUFFER_SIZE, &[], &[ValType::I32])?;
        check_func(
            module,
            exports::EVALUATE,
            &[ValType::I32, ValType::I32],
            &[ValType::I64],
        )?;
        let has_rules = module.get_export(exports::STATIC_RULES).is_some();
        if has_rules {
            check_func(module, exports::STATIC_RULES, &[], &[ValType::I64])?;
        }
        match module.get_export(exports::MEMORY) {
            Some(ExternType::Memory(_)) => {}
            _ => {
                return Err(ModuleError::Export {
                    name: exports::MEMORY,
                    problem: "missing (a policy exports its linear memory as \"memory\")".into(),
                });
            }
        }

        let counters = Arc::new(HostCounters::default());
        let name: Arc<str> = Arc::from(name);
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.limits.memory_pages as usize * 65536)
            .memories(1)
            .tables(1)
            .table_elements(4096)
            .instances(1)
            // Growing past the limit traps (and so gets the fail mode)
            // instead of returning -1 to a module that may not check.
            .trap_on_grow_failure(true)
            .build();
        let mut store = Store::new(
            &self.engine,
            Host {
                limits,
                name: Arc::clone(&name),
                log_budget: LOG_PER_CALL,
                counters: Arc::clone(&counters),
                epoch: self.epoch,
            },
        );
        store.limiter(|h| &mut h.limits);
        let instance = self
            .linker
            .instantiate_and_start(&mut store, module)
            .map_err(ModuleError::Instantiate)?;
        let memory = instance
            .get_memory(&store, exports::MEMORY)
            .ok_or(ModuleError::Export {
                name: exports::MEMORY,
                problem: "missing".into(),
            })?;
        let typed = |store: &Store<Host>, n: &'static str| {
            instance
                .get_typed_func::<(), i32>(store, n)
                .map_err(|e| ModuleError::Export {
                    name: n,
                    problem: e.to_string(),
                })
        };
        let abi = typed(&store, exports::ABI_VERSION)?;
        let buffer = typed(&store, exports::BUFFER)?;
        let buffer_size = typed(&store, exports::BUFFER_SIZE)?;
        let evaluate = instance
            .get_typed_func::<(i32, i32), i64>(&store, exports::EVALUATE)
            .map_err(|e| ModuleError::Export {
                name: exports::EVALUATE,
                problem: e.to_string(),
            })?;
        let fuel = self.limits.fuel;
        let call0 = |store: &mut Store<Host>, f: &TypedFunc<(), i32>, n: &'static str| {
            call_with_fuel(store, fuel, |s| f.call(s, ()))
                .map_err(|source| ModuleError::Call { call: n, source })
        };
        let found = call0(&mut store, &abi, exports::ABI_VERSION)?;
        // The version decides what guardian_evaluate receives (the plain
        // event, or a header then the event), so it is read once here.
        let Some(abi_version) = u32::try_from(found)
            .ok()
            .filter(|v| SUPPORTED_ABI_VERSIONS.contains(v))
        else {
            return Err(ModuleError::AbiVersion {
                found,
                expected: SUPPORTED_ABI_VERSIONS,
            });
        };
        let ptr = call0(&mut store, &buffer, exports::BUFFER)?;
        let size = call0(&mut store, &buffer_size, exports::BUFFER_SIZE)?;
        let mem_len = memory.data_size(&store);
        let fits = u32::try_from(ptr)
            .ok()
            .zip(u32::try_from(size).ok())
            .filter(|(p, s)| {
                *s >= MIN_BUFFER_SIZE && (*p as usize).saturating_add(*s as usize) <= mem_len
            });
        let Some((ptr_u, size_u)) = fits else {
            return Err(ModuleError::Buffer {
                ptr,
                size,
                memory: mem_len,
            });
        };
        let rules = if has_rules {
            let f = instance
                .get_typed_func::<(), i64>(&store, exports::STATIC_RULES)
                .map_err(|e| ModuleError::Export {
                    name: exports::STATIC_RULES,
                    problem: e.to_string(),
                })?;
            let packed = call_with_fuel(&mut store, fuel, |s| f.call(s, ())).map_err(|source| {
                ModuleError::Call {
                    call: exports::STATIC_RULES,
                    source,
                }
            })?;
            read_rules(packed, memory.data(&store))?
        } else {
            OwnedStaticRules::default()
        };
        Ok(LoadedModule {
            store,
            memory,
            evaluate,
            buffer: ptr_u,
            buffer_size: size_u,
            header: abi_version >= 2,
            fuel,
            info: ModuleInfo {
                kind: PolicyKind::Guardian,
                abi_version,
                exports,
                imports,
                rules,
                memory_bytes: mem_len,
                rego: None,
            },
            counters,
            name,
            last_fuel: 0,
        })
    }
}

fn check_func(
    module: &Module,
    name: &'static str,
    params: &[ValType],
    results: &[ValType],
) -> Result<(), ModuleError> {
    match module.get_export(name) {
        Some(ExternType::Func(f)) if f.params() == params && f.results() == results => Ok(()),
        Some(other) => Err(ModuleError::Export {
            name,
            problem: format!(
                "is {} but must be func {params:?} -> {results:?}",
                describe_type(&other)
            ),
        }),
        None => Err(ModuleError::Export {
            name,
            problem: "missing".into(),
        }),
    }
}

fn describe_type(t: &ExternType) -> String {
    match t {
        ExternType::Func(f) => format!("func {:?} -> {:?}", f.params(), f.results()),
        ExternType::Memory(m) => format!("memory, {} pages minimum", m.minimum()),
        ExternType::Table(_) => "table".into(),
        ExternType::Global(_) => "global".into(),
    }
}

/// Which ABI a policy module speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyKind {
    /// guardian's own (`policies/ABI.md`): the SDK's modules, WAT by hand.
    Guardian,
    /// OPA's Wasm ABI: Rego compiled by `opa build -t wasm`.
    Rego,
}

impl PolicyKind {
    /// `guardian` or `rego`.
    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::Guardian => "guardian",
            PolicyKind::Rego => "rego",
        }
    }
}

/// What a loaded module declares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleInfo {
    /// Which ABI it speaks.
    pub kind: PolicyKind,
    /// Its guardian ABI version; 0 for a Rego module (its OPA ABI version
    /// is in [`Self::rego`]).
    pub abi_version: u32,
    /// Its exports, with types.
    pub exports: Vec<String>,
    /// Its imports.
    pub imports: Vec<String>,
    /// Its static rules (empty if it exports none).
    pub rules: OwnedStaticRules,
    /// Its linear memory at load, bytes.
    pub memory_bytes: usize,
    /// A Rego module's entrypoints, builtins and data.
    pub rego: Option<RegoInfo>,
}

/// A loaded module of either kind.
#[derive(Debug)]
pub enum PolicyModule {
    /// guardian's own ABI.
    Guardian(LoadedModule),
    /// OPA's Wasm ABI.
    Rego(RegoModule),
}

impl PolicyModule {
    /// What it declares.
    pub fn info(&self) -> &ModuleInfo {
        match self {
            PolicyModule::Guardian(m) => m.info(),
            PolicyModule::Rego(m) => m.info(),
        }
    }

    /// Its host-function counters.
    pub fn counters(&self) -> &HostCounters {
        match self {
            PolicyModule::Guardian(m) => m.counters(),
            PolicyModule::Rego(m) => m.counters(),
        }
    }

    /// Fuel the last evaluation used.
    pub fn last_fuel(&self) -> u64 {
        match self {
            PolicyModule::Guardian(m) => m.last_fuel(),
            PolicyModule::Rego(m) => m.last_fuel(),
        }
    }
}

/// An instantiated module, ready to evaluate.
pub struct LoadedModule {
    store: Store<Host>,
    memory: Memory,
    evaluate: TypedFunc<(i32, i32), i64>,
    buffer: u32,
    buffer_size: u32,
    /// ABI version 2: a [`Header`] goes in front of the event.
    header: bool,
    fuel: u64,
    info: ModuleInfo,
    counters: Arc<HostCounters>,
    name: Arc<str>,
    last_fuel: u64,
}

impl std::fmt::Debug for LoadedModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModule")
            .field("name", &self.name)
            .field("info", &self.info)
            .finish()
    }
}

impl LoadedModule {
    /// What it declares.
    pub fn info(&self) -> &ModuleInfo {
        &self.info
    }

    /// Its host-function counters.
    pub fn counters(&self) -> &HostCounters {
        &self.counters
    }

    /// Fuel the last evaluation used.
    pub fn last_fuel(&self) -> u64 {
        self.last_fuel
    }

    /// Evaluate one postcard-encoded event: written into the module's
    /// buffer as it is (ABI version 1), or behind its [`Header`] (version
    /// 2).
    pub fn evaluate(&mut self, encoded: &[u8]) -> Result<Verdict, CallError> {
        let head = if self.header {
            // Bytes that are not one event (never produced by the host's
            // encoder) get a header of absent fields, which the module
            // answers with its decode error.
            Some(
                Header::of(encoded)
                    .map(|h| h.to_bytes())
                    .unwrap_or([0xff; HEADER_SIZE]),
            )
        } else {
            None
        };
        self.call(head.as_ref().map_or(&[], |h| &h[..]), encoded)
    }

    /// Evaluate an event already prepared for every ABI version: its
    /// version 2 header, then its encoding, as [`PolicySet::evaluate`]
    /// makes it once per event for the whole set (the encoder gives the
    /// header for free). A version 1 module gets the encoding only.
    ///
    /// [`PolicySet::evaluate`]: super::PolicySet::evaluate
    pub fn evaluate_prepared(&mut self, prepared: &[u8]) -> Result<Verdict, CallError> {
        let (head, encoded) = prepared.split_at(HEADER_SIZE.min(prepared.len()));
        if self.header {
            self.call(head, encoded)
        } else {
            self.call(&[], encoded)
        }
    }

    /// Write `head` then `encoded` into the module's buffer and call
    /// `guardian_evaluate` with fresh fuel.
    fn call(&mut self, head: &[u8], encoded: &[u8]) -> Result<Verdict, CallError> {
        let len = head.len() + encoded.len();
        if len > self.buffer_size as usize {
            return Err(CallError::TooLarge {
                len,
                size: self.buffer_size,
            });
        }
        // In bounds: checked against the memory at load, and memories
        // never shrink.
        let start = self.buffer as usize;
        let Some(dst) = self
            .memory
            .data_mut(&mut self.store)
            .get_mut(start..start + len)
        else {
            return Err(CallError::Trap(format!(
                "writing the event: {len} bytes at {start} are outside memory"
            )));
        };
        let (dst_head, dst_event) = dst.split_at_mut(head.len());
        dst_head.copy_from_slice(head);
        dst_event.copy_from_slice(encoded);
        let (f, ptr, len) = (self.evaluate, self.buffer as i32, len as i32);
        let result = call_with_fuel(&mut self.store, self.fuel, |s| f.call(s, (ptr, len)));
        self.last_fuel = self.fuel.saturating_sub(self.store.get_fuel().unwrap_or(0));
        let value = result?;
        Verdict::unpack(value).map_err(|e| CallError::BadVerdict {
            value,
            problem: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal policy in WAT with `body` as its evaluate function.
    pub(crate) fn wat(abi: i32, body: &str, extra: &str) -> Vec<u8> {
        wat::parse_str(format!(
            r#"(module
                 {extra}
                 (memory (export "memory") 1)
                 (func (export "guardian_abi_version") (result i32) (i32.const {abi}))
                 (func (export "guardian_buffer") (result i32) (i32.const 0))
                 (func (export "guardian_buffer_size") (result i32) (i32.const 8192))
                 (func (export "guardian_evaluate") (param i32 i32) (result i64) {body}))"#
        ))
        .unwrap()
    }

    fn rt() -> Runtime {
        Runtime::new(Limits {
            fuel: 10_000,
            ..Limits::default()
        })
    }

    #[test]
    fn evaluates_and_contains_failures() {
        let r = rt();
        let mut m = r
            .load("ok", &wat(1, "(i64.const 0x0000000700000102)", ""))
            .unwrap();
        assert_eq!(
            m.evaluate(b"\x00").unwrap(),
            Verdict::deny(7).with(guardian_policy_abi::Actions::KILL)
        );
        assert!(m.last_fuel() > 0);
        // Fuel is set before every call: a second call works the same.
        assert!(m.evaluate(b"\x00").is_ok());

        let mut m = r
            .load("loop", &wat(1, "(loop $l (br $l)) (i64.const 0)", ""))
            .unwrap();
        assert_eq!(m.evaluate(b"x"), Err(CallError::OutOfFuel { fuel: 10_000 }));
        assert_eq!(m.evaluate(b"x"), Err(CallError::OutOfFuel { fuel: 10_000 }));

        let mut m = r.load("trap", &wat(1, "unreachable", "")).unwrap();
        assert!(matches!(m.evaluate(b"x"), Err(CallError::Trap(t)) if t.contains("unreachable")),);

        let mut m = r
            .load(
                "grow",
                &wat(1, "(drop (memory.grow (i32.const 100))) (i64.const 0)", ""),
            )
            .unwrap();
        let e = m.evaluate(b"x").unwrap_err();
        assert!(matches!(e, CallError::Trap(_)), "{e}");

        let mut m = r.load("bad", &wat(1, "(i64.const 3)", "")).unwrap();
        assert!(matches!(
            m.evaluate(b"x"),
            Err(CallError::BadVerdict { value: 3, .. })
        ));

        let mut m = r.load("big", &wat(1, "(i64.const 0)", "")).unwrap();
        assert!(matches!(
            m.evaluate(&[0u8; 9000]),
            Err(CallError::TooLarge {
                len: 9000,
                size: 8192
            })
        ));
    }

    #[test]
    fn refuses_bad_modules_with_reasons() {
        let r = rt();
        let msg = |wasm: &[u8]| r.load("m", wasm).unwrap_err().to_string();
        let ok = wat(1, "(i64.const 0)", "");
        assert!(msg(&wat(3, "(i64.const 0)", "")).contains("ABI version 3"));
        assert!(msg(&wat(0, "(i64.const 0)", "")).contains("versions [1, 2]"));
        assert!(msg(&ok[..ok.len() - 3]).contains("not a loadable"));
        let wasi = wat(
            1,
            "(i64.const 0)",
            r#"(import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))"#,
        );
        let e = msg(&wasi);
        assert!(
            e.contains("wasi_snapshot_preview1.fd_write") && e.contains("no WASI"),
            "{e}"
        );
        let start = wat(1, "(i64.const 0)", "(func $s) (start $s)");
        assert!(msg(&start).contains("not a loadable"), "{}", msg(&start));
        let e = msg(
            &wat::parse_str(
                r#"(module (memory (export "memory") 100)
                   (func (export "guardian_abi_version") (result i32) (i32.const 1))
                   (func (export "guardian_buffer") (result i32) (i32.const 0))
                   (func (export "guardian_buffer_size") (result i32) (i32.const 8192))
                   (func (export "guardian_evaluate") (param i32 i32) (result i64) (i64.const 0)))"#,
            )
            .unwrap(),
        );
        assert!(e.contains("instantiation failed"), "{e}");
        let e = msg(&wat::parse_str("(module (memory (export \"memory\") 1))").unwrap());
        assert!(
            e.contains("guardian_abi_version") && e.contains("missing"),
            "{e}"
        );
        let small = Runtime::new(Limits {
            module_bytes: 10,
            ..Limits::default()
        });
        assert!(matches!(
            small.load("m", &ok),
            Err(ModuleError::TooLarge { .. })
        ));
        // Static rules outside memory, or not postcard.
        let e = msg(&wat(
            1,
            "(i64.const 0)",
            r#"(func (export "guardian_static_rules") (result i64) (i64.const 0x0010000000000005))"#,
        ));
        assert!(e.contains("outside memory"), "{e}");
        let e = msg(&wat(
            1,
            "(i64.const 0)",
            r#"(data (i32.const 0) "\01") (func (export "guardian_static_rules") (result i64) (i64.const 1))"#,
        ));
        assert!(e.contains("static rules"), "{e}");
    }
}
