//! Rego policies compiled by `opa build -t wasm`, hosted in wasmi behind
//! the same policy interface as guardian's own ABI.
//!
//! guardian is the host of OPA's Wasm ABI 1.x (OPA's `docs/docs/wasm.md`):
//!
//! - **imports** it provides: `env.memory` (created here at the module's
//!   minimum and held to `[policy] memory_pages` by the store's limiter:
//!   growing past it traps), `env.opa_abort` (traps with the
//!   module's message), `env.opa_println` (logged under the policy's name,
//!   bounded like `guardian.log`), `env.opa_builtin0` … `opa_builtin4`
//!   (the few builtins of [`BUILTINS`]; a module whose `builtins()` names any
//!   other is refused at load);
//! - **load**: `opa_wasm_abi_version` must be 1 (any minor version);
//!   `builtins()` and `entrypoints()` are read through `opa_json_dump`; the
//!   bundle's data (the custom section [`DATA_SECTION`], else `{}`) is
//!   parsed once with `opa_malloc` + `opa_json_parse`; then (ABI 1.3)
//!   `opa_heap_blocks_stash`, and `opa_heap_ptr_get` gives the heap
//!   pointer every evaluation starts from;
//! - **each event**: its JSON ([`input_json`]) is written at that heap
//!   pointer and, from ABI 1.2, evaluated by one call of `opa_eval`
//!   (which resets the heap to just past the input itself); before 1.2,
//!   `opa_heap_ptr_set` then `opa_malloc`, `opa_json_parse`,
//!   `opa_eval_ctx_new`, `_set_input`, `_set_data`, `_set_entrypoint`,
//!   `eval`, `opa_eval_ctx_get_result` and `opa_json_dump`. The whole
//!   evaluation runs on one budget of fuel, `[policy] fuel`; loading on
//!   [`LOAD_FUEL_FACTOR`] times that.
//!
//! The result set (`[{"result": …}]`, or `[]` when undefined) becomes a
//! [`Verdict`] by the entrypoint the module has (see `decide`):
//! `guardian/verdict` (`"allow"`, `"alert"`, `"deny"`, or an object with
//! `decision`, `rule`, `actions`), else `guardian/allow` (a boolean).
//!
//! Here: the module's checks at load, its instance and the calls of one
//! evaluation. `imports` holds the host functions a module imports and the
//! memory access they share; `json` the event as `input` and the result as
//! a verdict; `section` the data section on the binary's bytes.

use std::{collections::BTreeMap, sync::Arc};

use guardian_policy_abi::{OwnedStaticRules, Verdict};
use serde_json::Value;
use wasmi::{
    Engine, Extern, ExternType, Instance, Memory, MemoryType, Module, Store, StoreLimits,
    StoreLimitsBuilder, TrapCode, TypedFunc, Val, ValType,
};

use super::{
    host::{HostCounters, LOG_PER_CALL},
    module::{CallError, Limits, ModuleInfo, PolicyKind},
};

mod imports;
mod json;
mod section;

use imports::{Builtin, cstr, dump, host_func, parse, write_at};
use json::decide;
pub use json::input_json;
pub use section::{custom_section, with_data};

/// The custom section of a Rego policy's `.wasm` that holds its `data`
/// document (JSON). Being inside the module, it is signed and measured
/// with it; absent, the data is `{}`.
pub const DATA_SECTION: &str = "guardian.data";
/// The entrypoint whose value is the verdict (a string or an object).
pub const VERDICT_ENTRYPOINT: &str = "guardian/verdict";
/// The entrypoint used when there is no [`VERDICT_ENTRYPOINT`]: `true`
/// allows, `false` or undefined denies.
pub const ALLOW_ENTRYPOINT: &str = "guardian/allow";
/// The OPA Wasm ABI major version guardian hosts.
pub const OPA_ABI_MAJOR: i32 = 1;
/// The builtins guardian provides to Rego modules, with their arity. OPA
/// compiles most builtins into the module itself; `builtins()` lists only
/// those the host must provide.
pub const BUILTINS: [(&str, usize); 3] = [("startswith", 2), ("endswith", 2), ("count", 1)];
/// Loading (parsing the data document, reading the maps) may take this
/// many times the evaluation fuel.
pub const LOAD_FUEL_FACTOR: u64 = 100;
/// Largest builtin id accepted in a module's `builtins()` map.
const MAX_BUILTIN_ID: usize = 1024;
/// Longest JSON text read from the module (result, maps, builtin args).
const MAX_TEXT: usize = 1 << 20;

/// Why a Rego module was refused at load. Messages name the problem; the
/// caller adds the file.
#[derive(Debug, thiserror::Error)]
pub enum RegoError {
    /// Imports something an OPA host does not provide.
    #[error(
        "imports {module}.{name} ({ty}): an OPA module may import only env.memory, env.opa_abort, env.opa_println and env.opa_builtin0..4"
    )]
    Import {
        /// Import module.
        module: String,
        /// Import name.
        name: String,
        /// What it is.
        ty: String,
    },
    /// Does not import its memory as OPA modules do.
    #[error("does not import env.memory (an OPA module imports its memory)")]
    NoMemoryImport,
    /// Wants more memory at start than the limit.
    #[error(
        "imports a memory of at least {minimum} pages, over the limit of {limit} ([policy] memory_pages)"
    )]
    Memory {
        /// Pages asked for.
        minimum: u64,
        /// The limit.
        limit: u32,
    },
    /// A required export is missing or has the wrong type.
    #[error("export {name}: {problem}")]
    Export {
        /// The export.
        name: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// An OPA ABI version this host does not speak.
    #[error(
        "OPA Wasm ABI version {major}.{minor}, but guardian hosts ABI {OPA_ABI_MAJOR}.x (opa build output of OPA 0.27 or later)"
    )]
    AbiVersion {
        /// `opa_wasm_abi_version`.
        major: i32,
        /// `opa_wasm_abi_minor_version`.
        minor: i32,
    },
    /// Instantiation failed.
    #[error("instantiation failed: {0}")]
    Instantiate(#[source] wasmi::Error),
    /// An ABI call failed while loading.
    #[error("{call} failed: {source}")]
    Call {
        /// Which export.
        call: &'static str,
        /// Why.
        #[source]
        source: CallError,
    },
    /// `builtins()` names a builtin guardian does not provide.
    #[error(
        "needs builtin {name:?}, which guardian does not provide (it provides {provided}); rewrite the rule without it"
    )]
    UnknownBuiltin {
        /// The builtin.
        name: String,
        /// What guardian provides.
        provided: String,
    },
    /// `builtins()` or `entrypoints()` is not a map of names to ids.
    #[error("{what} is not a JSON object of names to small ids: {problem}")]
    Map {
        /// Which map.
        what: &'static str,
        /// Why.
        problem: String,
    },
    /// Neither decision entrypoint.
    #[error(
        "has no entrypoint {VERDICT_ENTRYPOINT} or {ALLOW_ENTRYPOINT} (its entrypoints: {found:?}); build it with `opa build -t wasm -e guardian/verdict`"
    )]
    Entrypoint {
        /// The entrypoints it has.
        found: Vec<String>,
    },
    /// The data section is not JSON, or the module refused it.
    #[error("data (custom section {DATA_SECTION}): {0}")]
    Data(String),
}

/// What a Rego module declares, as `guardian policy inspect` shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RegoInfo {
    /// `opa_wasm_abi_version`.
    pub abi_major: i32,
    /// `opa_wasm_abi_minor_version`.
    pub abi_minor: i32,
    /// Every entrypoint, by name.
    pub entrypoints: Vec<String>,
    /// The one guardian evaluates.
    pub entrypoint: String,
    /// The builtins it asked the host for.
    pub builtins: Vec<String>,
    /// Size of its data document, bytes.
    pub data_bytes: usize,
    /// Whether it is evaluated with the one-call `opa_eval` (ABI 1.2+).
    pub one_call: bool,
}

/// The exports the host calls from inside builtins and at load.
#[derive(Clone, Copy)]
struct Abi {
    malloc: TypedFunc<i32, i32>,
    json_parse: TypedFunc<(i32, i32), i32>,
    json_dump: TypedFunc<i32, i32>,
    heap_ptr_set: TypedFunc<i32, ()>,
}

/// The exports of the evaluation path before ABI 1.2.
#[derive(Clone, Copy)]
struct Classic {
    ctx_new: TypedFunc<(), i32>,
    set_input: TypedFunc<(i32, i32), ()>,
    set_data: TypedFunc<(i32, i32), ()>,
    set_entrypoint: TypedFunc<(i32, i32), ()>,
    eval: TypedFunc<i32, i32>,
    get_result: TypedFunc<i32, i32>,
}

type OneCall = TypedFunc<(i32, i32, i32, i32, i32, i32, i32), i32>;

#[derive(Clone, Copy)]
enum Evaluation {
    /// `opa_eval` (ABI 1.2+).
    OneCall(OneCall),
    /// The evaluation context calls.
    Classic(Classic),
}

/// How the entrypoint's value becomes a verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// [`VERDICT_ENTRYPOINT`].
    Verdict,
    /// [`ALLOW_ENTRYPOINT`].
    Allow,
}

/// The store's data of a Rego module.
pub(super) struct OpaHost {
    limits: StoreLimits,
    name: Arc<str>,
    log_budget: u32,
    counters: Arc<HostCounters>,
    memory: Option<Memory>,
    abi: Option<Abi>,
    /// By builtin id, as the module's `builtins()` numbered them.
    builtins: Vec<Option<Builtin>>,
}

/// An instantiated Rego module, ready to evaluate.
pub struct RegoModule {
    store: Store<OpaHost>,
    memory: Memory,
    abi: Abi,
    path: Evaluation,
    entrypoint: i32,
    shape: Shape,
    data: i32,
    /// Where every evaluation starts: past the data.
    heap: i32,
    fuel: u64,
    info: ModuleInfo,
    counters: Arc<HostCounters>,
    name: Arc<str>,
    last_fuel: u64,
}

impl std::fmt::Debug for RegoModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegoModule")
            .field("name", &self.name)
            .field("info", &self.info)
            .finish()
    }
}

/// Whether a compiled module is an OPA one: it imports `env.memory` or
/// exports `opa_eval_ctx_new` (guardian's own ABI has neither).
pub fn is_opa(module: &Module) -> bool {
    module
        .imports()
        .any(|i| i.module() == "env" && i.name() == "memory")
        || module.get_export("opa_eval_ctx_new").is_some()
}

fn describe(t: &ExternType) -> String {
    match t {
        ExternType::Func(f) => format!("func {:?} -> {:?}", f.params(), f.results()),
        ExternType::Memory(m) => format!("memory, {} pages minimum", m.minimum()),
        ExternType::Table(_) => "table".into(),
        ExternType::Global(_) => "global".into(),
    }
}

const I: ValType = ValType::I32;

/// The imports an OPA module may have: name → parameters (each returns
/// nothing, or one address for the builtins).
fn import_params(name: &str) -> Option<(usize, bool)> {
    match name {
        "opa_abort" | "opa_println" => Some((1, false)),
        "opa_builtin0" => Some((2, true)),
        "opa_builtin1" => Some((3, true)),
        "opa_builtin2" => Some((4, true)),
        "opa_builtin3" => Some((5, true)),
        "opa_builtin4" => Some((6, true)),
        _ => None,
    }
}

fn export<P: wasmi::WasmParams, R: wasmi::WasmResults>(
    instance: &Instance,
    store: &Store<OpaHost>,
    name: &'static str,
) -> Result<TypedFunc<P, R>, RegoError> {
    match instance.get_func(store, name) {
        None => Err(RegoError::Export {
            name,
            problem: "missing".into(),
        }),
        Some(f) => f.typed::<P, R>(store).map_err(|e| RegoError::Export {
            name,
            problem: e.to_string(),
        }),
    }
}

fn global_i32(instance: &Instance, store: &Store<OpaHost>, name: &'static str) -> Option<i32> {
    match instance.get_global(store, name)?.get(store) {
        Val::I32(v) => Some(v),
        _ => None,
    }
}

/// Why a call failed: running out of fuel told apart from every other
/// trap, as for guardian's own modules.
fn call_error(e: wasmi::Error, fuel: u64) -> CallError {
    match e.as_trap_code() {
        Some(TrapCode::OutOfFuel) => CallError::OutOfFuel { fuel },
        _ => CallError::Trap(e.to_string()),
    }
}

fn fail(message: String) -> wasmi::Error {
    wasmi::Error::new(message)
}

/// A `{name: id}` map the module returned.
fn read_map(value: Value, what: &'static str) -> Result<BTreeMap<String, usize>, RegoError> {
    let bad = |problem: String| RegoError::Map { what, problem };
    let Value::Object(o) = value else {
        return Err(bad(format!("got {value}")));
    };
    o.into_iter()
        .map(|(k, v)| {
            let id = v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .filter(|n| *n <= MAX_BUILTIN_ID)
                .ok_or_else(|| bad(format!("{k:?} has id {v}")))?;
            Ok((k, id))
        })
        .collect()
}

/// Check, instantiate and prepare a Rego module (the data parsed, the
/// heap pointer saved).
pub(super) fn load(
    engine: &Engine,
    limits: Limits,
    name: &str,
    module: &Module,
    wasm: &[u8],
) -> Result<RegoModule, RegoError> {
    // 1. Imports: only what an OPA host provides, with OPA's types.
    let mut memory_ty = None;
    for i in module.imports() {
        let refuse = || RegoError::Import {
            module: i.module().to_owned(),
            name: i.name().to_owned(),
            ty: describe(i.ty()),
        };
        if i.module() != "env" {
            return Err(refuse());
        }
        match (i.name(), i.ty()) {
            ("memory", ExternType::Memory(m)) => memory_ty = Some(*m),
            (n, ExternType::Func(f)) => {
                let (params, returns) = import_params(n).ok_or_else(refuse)?;
                let ok = f.params().len() == params
                    && f.params().iter().all(|p| *p == I)
                    && f.results() == if returns { &[I][..] } else { &[][..] };
                if !ok {
                    return Err(refuse());
                }
            }
            _ => return Err(refuse()),
        }
    }
    let memory_ty = memory_ty.ok_or(RegoError::NoMemoryImport)?;
    if memory_ty.is_64() || memory_ty.minimum() > u64::from(limits.memory_pages) {
        return Err(RegoError::Memory {
            minimum: memory_ty.minimum(),
            limit: limits.memory_pages,
        });
    }
    // The host makes the memory as the module declares it; the store's
    // limiter holds it to the limit, and growth past that traps (a
    // maximum of our own would make memory.grow answer -1 instead, which
    // a module may not check).
    let min = u32::try_from(memory_ty.minimum()).unwrap_or(u32::MAX);
    let max = memory_ty
        .maximum()
        .map(|m| u32::try_from(m).unwrap_or(u32::MAX).max(min));

    // 2. The store, with the same limiter as guardian's own modules.
    let counters = Arc::new(HostCounters::default());
    let name: Arc<str> = Arc::from(name);
    let store_limits = StoreLimitsBuilder::new()
        .memory_size(limits.memory_pages as usize * 65536)
        // wasmi checks the store's memories plus all of the module's,
        // imported ones included: 2 admits the imported memory the host
        // makes and nothing else.
        .memories(2)
        .tables(1)
        .table_elements(65536)
        .instances(1)
        .trap_on_grow_failure(true)
        .build();
    let mut store = Store::new(
        engine,
        OpaHost {
            limits: store_limits,
            name: Arc::clone(&name),
            log_budget: LOG_PER_CALL,
            counters: Arc::clone(&counters),
            memory: None,
            abi: None,
            builtins: Vec::new(),
        },
    );
    store.limiter(|h| &mut h.limits);
    let memory =
        Memory::new(&mut store, MemoryType::new(min, max)).map_err(RegoError::Instantiate)?;
    let mut externs = Vec::new();
    for i in module.imports() {
        externs.push(if i.name() == "memory" {
            Extern::Memory(memory)
        } else {
            host_func(&mut store, i.name())
                .map(Extern::Func)
                .ok_or_else(|| RegoError::Import {
                    module: i.module().to_owned(),
                    name: i.name().to_owned(),
                    ty: describe(i.ty()),
                })?
        });
    }
    let instance = Instance::new(&mut store, module, &externs).map_err(RegoError::Instantiate)?;

    // 3. The ABI version, then the exports it promises.
    let major = global_i32(&instance, &store, "opa_wasm_abi_version");
    let minor = global_i32(&instance, &store, "opa_wasm_abi_minor_version").unwrap_or(0);
    if major != Some(OPA_ABI_MAJOR) {
        return Err(RegoError::AbiVersion {
            major: major.unwrap_or(0),
            minor,
        });
    }
    let abi = Abi {
        malloc: export(&instance, &store, "opa_malloc")?,
        json_parse: export(&instance, &store, "opa_json_parse")?,
        json_dump: export(&instance, &store, "opa_json_dump")?,
        heap_ptr_set: export(&instance, &store, "opa_heap_ptr_set")?,
    };
    let heap_ptr_get: TypedFunc<(), i32> = export(&instance, &store, "opa_heap_ptr_get")?;
    let builtins_fn: TypedFunc<(), i32> = export(&instance, &store, "builtins")?;
    let entrypoints_fn: TypedFunc<(), i32> = export(&instance, &store, "entrypoints")?;
    let one_call = if minor >= 2 {
        instance.get_func(&store, "opa_eval").and_then(|f| {
            f.typed::<(i32, i32, i32, i32, i32, i32, i32), i32>(&store)
                .ok()
        })
    } else {
        None
    };
    let path = match one_call {
        Some(f) => Evaluation::OneCall(f),
        None => Evaluation::Classic(Classic {
            ctx_new: export(&instance, &store, "opa_eval_ctx_new")?,
            set_input: export(&instance, &store, "opa_eval_ctx_set_input")?,
            set_data: export(&instance, &store, "opa_eval_ctx_set_data")?,
            set_entrypoint: export(&instance, &store, "opa_eval_ctx_set_entrypoint")?,
            eval: export(&instance, &store, "eval")?,
            get_result: export(&instance, &store, "opa_eval_ctx_get_result")?,
        }),
    };
    store.data_mut().memory = Some(memory);
    store.data_mut().abi = Some(abi);

    // 4. The maps, the data and the heap pointer, on a larger budget.
    let load_fuel = limits.fuel.saturating_mul(LOAD_FUEL_FACTOR);
    let call = |store: &mut Store<OpaHost>,
                call: &'static str,
                f: &dyn Fn(&mut Store<OpaHost>) -> Result<Value, wasmi::Error>| {
        store.set_fuel(load_fuel).map_err(|e| RegoError::Call {
            call,
            source: CallError::Trap(format!("setting fuel: {e}")),
        })?;
        f(store).map_err(|e| RegoError::Call {
            call,
            source: call_error(e, load_fuel),
        })
    };
    let builtin_map = call(&mut store, "builtins", &|s| {
        let v = builtins_fn.call(&mut *s, ())?;
        dump(s, abi, memory, v)
    })?;
    let builtin_map = read_map(builtin_map, "builtins()")?;
    let mut table = Vec::new();
    for (b, id) in &builtin_map {
        let Some(known) = Builtin::named(b) else {
            return Err(RegoError::UnknownBuiltin {
                name: b.clone(),
                provided: BUILTINS.map(|(n, _)| n).join(", "),
            });
        };
        if table.len() <= *id {
            table.resize(*id + 1, None);
        }
        if let Some(slot) = table.get_mut(*id) {
            *slot = Some(known);
        }
    }
    store.data_mut().builtins = table;
    let entry_map = call(&mut store, "entrypoints", &|s| {
        let v = entrypoints_fn.call(&mut *s, ())?;
        dump(s, abi, memory, v)
    })?;
    let entry_map = read_map(entry_map, "entrypoints()")?;
    let (entrypoint, shape, entry_name) = match (
        entry_map.get(VERDICT_ENTRYPOINT),
        entry_map.get(ALLOW_ENTRYPOINT),
    ) {
        (Some(id), _) => (*id, Shape::Verdict, VERDICT_ENTRYPOINT),
        (None, Some(id)) => (*id, Shape::Allow, ALLOW_ENTRYPOINT),
        (None, None) => {
            return Err(RegoError::Entrypoint {
                found: entry_map.keys().cloned().collect(),
            });
        }
    };
    let data_text = custom_section(wasm, DATA_SECTION).unwrap_or(b"{}");
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(data_text) {
        return Err(RegoError::Data(format!("not JSON: {e}")));
    }
    store
        .set_fuel(load_fuel)
        .map_err(|e| RegoError::Data(format!("setting fuel: {e}")))?;
    let data = parse(&mut store, abi, memory, data_text)
        .map_err(|e| RegoError::Data(call_error(e, load_fuel).to_string()))?;
    // ABI 1.3: keep the free blocks out of reach of evaluations, which
    // reset the heap (OPA's documented calling convention).
    if let Some(stash) = instance
        .get_func(&store, "opa_heap_blocks_stash")
        .and_then(|f| f.typed::<(), ()>(&store).ok())
    {
        call(&mut store, "opa_heap_blocks_stash", &|s| {
            stash.call(s, ()).map(|()| Value::Null)
        })?;
    }
    let heap = call(&mut store, "opa_heap_ptr_get", &|s| {
        heap_ptr_get.call(s, ()).map(Value::from)
    })?
    .as_i64()
    .and_then(|h| i32::try_from(h).ok())
    .unwrap_or(0);

    let entrypoint = i32::try_from(entrypoint).unwrap_or(0);
    let memory_bytes = memory.data_size(&store);
    Ok(RegoModule {
        store,
        memory,
        abi,
        path,
        entrypoint,
        shape,
        data,
        heap,
        fuel: limits.fuel,
        info: ModuleInfo {
            kind: PolicyKind::Rego,
            abi_version: 0,
            exports: module
                .exports()
                .map(|e| format!("{} ({})", e.name(), describe(e.ty())))
                .collect(),
            imports: module
                .imports()
                .map(|i| format!("{}.{}", i.module(), i.name()))
                .collect(),
            rules: OwnedStaticRules::default(),
            memory_bytes,
            rego: Some(RegoInfo {
                abi_major: OPA_ABI_MAJOR,
                abi_minor: minor,
                entrypoints: entry_map.keys().cloned().collect(),
                entrypoint: entry_name.to_owned(),
                builtins: builtin_map.keys().cloned().collect(),
                data_bytes: data_text.len(),
                one_call: matches!(path, Evaluation::OneCall(_)),
            }),
        },
        counters,
        name,
        last_fuel: 0,
    })
}

impl RegoModule {
    /// What it declares ([`ModuleInfo::rego`] is always there).
    pub fn info(&self) -> &ModuleInfo {
        &self.info
    }

    /// Its host-function counters (`opa_println`).
    pub fn counters(&self) -> &HostCounters {
        &self.counters
    }

    /// Fuel the last evaluation used.
    pub fn last_fuel(&self) -> u64 {
        self.last_fuel
    }

    /// Its linear memory now, bytes.
    pub fn memory_bytes(&self) -> usize {
        self.memory.data_size(&self.store)
    }

    /// Evaluate one event given as its JSON `input` document
    /// ([`input_json`]), on fresh fuel; the heap starts again where the
    /// data ended, so nothing of one evaluation is left for the next.
    pub fn evaluate(&mut self, input: &[u8]) -> Result<Verdict, CallError> {
        self.store
            .set_fuel(self.fuel)
            .map_err(|e| CallError::Trap(format!("setting fuel: {e}")))?;
        self.store.data_mut().log_budget = LOG_PER_CALL;
        let result = self.run(input);
        self.last_fuel = self.fuel.saturating_sub(self.store.get_fuel().unwrap_or(0));
        let addr = result.map_err(|e| call_error(e, self.fuel))?;
        let text = cstr(self.memory.data(&self.store), addr)
            .map_err(|e| CallError::BadResult(e.to_string()))?;
        decide(text, self.shape)
    }

    /// The calls of one evaluation; the address of the result set's JSON.
    fn run(&mut self, input: &[u8]) -> Result<i32, wasmi::Error> {
        let len = i32::try_from(input.len()).map_err(|_| fail("input over 2 GiB".into()))?;
        match self.path {
            Evaluation::OneCall(opa_eval) => {
                // The input goes where the heap starts; opa_eval puts its
                // heap just past it.
                let end = i64::from(self.heap) + i64::from(len);
                let have = self.memory.data_size(&self.store) as i64;
                if end > have {
                    let pages = (end - have + 65535) / 65536;
                    self.memory
                        .grow(&mut self.store, pages as u64)
                        .map_err(|e| fail(format!("input of {len} bytes does not fit: {e}")))?;
                }
                write_at(&mut self.store, self.memory, self.heap, input)?;
                opa_eval.call(
                    &mut self.store,
                    (
                        0,
                        self.entrypoint,
                        self.data,
                        self.heap,
                        len,
                        self.heap + len,
                        0,
                    ),
                )
            }
            Evaluation::Classic(c) => {
                let (abi, mem, store) = (self.abi, self.memory, &mut self.store);
                abi.heap_ptr_set.call(&mut *store, self.heap)?;
                let value = parse(store, abi, mem, input)?;
                let ctx = c.ctx_new.call(&mut *store, ())?;
                c.set_input.call(&mut *store, (ctx, value))?;
                c.set_data.call(&mut *store, (ctx, self.data))?;
                c.set_entrypoint.call(&mut *store, (ctx, self.entrypoint))?;
                c.eval.call(&mut *store, ctx)?;
                let result = c.get_result.call(&mut *store, ctx)?;
                abi.json_dump.call(&mut *store, result)
            }
        }
    }
}
