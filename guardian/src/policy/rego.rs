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

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{Arc, atomic::Ordering},
    time::{Duration, UNIX_EPOCH},
};

use guardian_policy_abi::{
    Actions, Decision, Detail, Event, IpAddr, KernelVerdict, Mode, OwnedStaticRules, Verdict,
};
use serde_json::Value;
use wasmi::{
    AsContextMut, Caller, Engine, Extern, ExternType, Func, Instance, Memory, MemoryType, Module,
    Store, StoreLimits, StoreLimitsBuilder, TrapCode, TypedFunc, Val, ValType,
};

use super::{
    host::{HostCounters, LOG_MAX_BYTES, LOG_PER_CALL},
    module::{CallError, Limits, ModuleInfo, PolicyKind},
};

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

/// A builtin guardian implements on the host side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Builtin {
    StartsWith,
    EndsWith,
    Count,
}

impl Builtin {
    fn named(name: &str) -> Option<Self> {
        match name {
            "startswith" => Some(Self::StartsWith),
            "endswith" => Some(Self::EndsWith),
            "count" => Some(Self::Count),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::StartsWith => "startswith",
            Self::EndsWith => "endswith",
            Self::Count => "count",
        }
    }

    fn arity(self) -> usize {
        match self {
            Self::StartsWith | Self::EndsWith => 2,
            Self::Count => 1,
        }
    }

    /// OPA's semantics; a type error is an error (the evaluation traps and
    /// gets the fail mode).
    fn call(self, args: &[Value]) -> Result<Value, String> {
        let text = |i: usize| match args.get(i) {
            Some(Value::String(s)) => Ok(s.as_str()),
            other => Err(format!(
                "operand {} must be a string, not {}",
                i + 1,
                other.map_or("nothing".into(), |v| v.to_string())
            )),
        };
        match self {
            Self::StartsWith => Ok(Value::Bool(text(0)?.starts_with(text(1)?))),
            Self::EndsWith => Ok(Value::Bool(text(0)?.ends_with(text(1)?))),
            Self::Count => match args.first() {
                Some(Value::String(s)) => Ok(s.chars().count().into()),
                Some(Value::Array(a)) => Ok(a.len().into()),
                Some(Value::Object(o)) => Ok(o.len().into()),
                other => Err(format!(
                    "operand 1 must be a string, array, set or object, not {}",
                    other.map_or("nothing".into(), |v| v.to_string())
                )),
            },
        }
    }
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

/// The bytes of a custom section, read from the module's binary (wasmi
/// keeps custom sections; this works on the bytes so that tools can read
/// it without compiling).
pub fn custom_section<'a>(wasm: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let mut rest = wasm.get(8..)?;
    while let Some((&id, after)) = rest.split_first() {
        let (size, after) = leb_u32(after)?;
        let (body, next) = after.split_at_checked(size as usize)?;
        if id == 0 {
            let (n, b) = leb_u32(body)?;
            let (section_name, data) = b.split_at_checked(n as usize)?;
            if section_name == name.as_bytes() {
                return Some(data);
            }
        }
        rest = next;
    }
    None
}

fn leb_u32(b: &[u8]) -> Option<(u32, &[u8])> {
    let mut v: u32 = 0;
    for (i, byte) in b.iter().enumerate().take(5) {
        v |= u32::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, b.get(i + 1..)?));
        }
    }
    None
}

/// `wasm` with `data` (a JSON document) as its [`DATA_SECTION`], replacing
/// any there was: what `guardian policy rego` writes before signing.
pub fn with_data(wasm: &[u8], data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(wasm.len() + data.len() + 32);
    out.extend_from_slice(wasm.get(..8).unwrap_or(wasm));
    let mut rest = wasm.get(8..).unwrap_or(&[]);
    // Copy every section but an old data section.
    while let Some((&id, after)) = rest.split_first() {
        let Some((size, body_start)) = leb_u32(after) else {
            out.extend_from_slice(rest);
            break;
        };
        let Some((body, next)) = body_start.split_at_checked(size as usize) else {
            out.extend_from_slice(rest);
            break;
        };
        let is_data = id == 0
            && leb_u32(body)
                .and_then(|(n, b)| b.get(..n as usize))
                .is_some_and(|n| n == DATA_SECTION.as_bytes());
        if !is_data {
            let header_len = rest.len() - next.len() - body.len();
            out.extend_from_slice(rest.get(..header_len + body.len()).unwrap_or(rest));
        }
        rest = next;
    }
    let mut payload = Vec::with_capacity(data.len() + 16);
    push_leb(&mut payload, DATA_SECTION.len() as u32);
    payload.extend_from_slice(DATA_SECTION.as_bytes());
    payload.extend_from_slice(data);
    out.push(0);
    push_leb(&mut out, payload.len() as u32);
    out.extend_from_slice(&payload);
    out
}

fn push_leb(out: &mut Vec<u8>, mut v: u32) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
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

/// The NUL-terminated text at `addr`.
fn cstr(mem: &[u8], addr: i32) -> Result<&[u8], wasmi::Error> {
    let start = usize::try_from(addr).ok().filter(|s| *s < mem.len());
    let rest = start
        .and_then(|s| mem.get(s..))
        .ok_or_else(|| fail(format!("string at {addr} is outside memory")))?;
    let end = rest
        .iter()
        .take(MAX_TEXT)
        .position(|b| *b == 0)
        .ok_or_else(|| {
            fail(format!(
                "string at {addr} has no NUL within {MAX_TEXT} bytes"
            ))
        })?;
    Ok(rest.get(..end).unwrap_or_default())
}

fn write_at<C: AsContextMut<Data = OpaHost>>(
    ctx: &mut C,
    mem: Memory,
    addr: i32,
    bytes: &[u8],
) -> Result<(), wasmi::Error> {
    let start = usize::try_from(addr).unwrap_or(usize::MAX);
    mem.data_mut(&mut *ctx)
        .get_mut(start..start.saturating_add(bytes.len()))
        .ok_or_else(|| {
            fail(format!(
                "{} bytes at {addr} are outside memory",
                bytes.len()
            ))
        })?
        .copy_from_slice(bytes);
    Ok(())
}

/// A value of the module, as JSON (through `opa_json_dump`).
fn dump<C: AsContextMut<Data = OpaHost>>(
    ctx: &mut C,
    abi: Abi,
    mem: Memory,
    value: i32,
) -> Result<Value, wasmi::Error> {
    let s = abi.json_dump.call(&mut *ctx, value)?;
    let text = cstr(mem.data(&*ctx), s)?;
    serde_json::from_slice(text)
        .map_err(|e| fail(format!("opa_json_dump gave text that is not JSON: {e}")))
}

/// JSON text made a value of the module (`opa_malloc` + `opa_json_parse`).
fn parse<C: AsContextMut<Data = OpaHost>>(
    ctx: &mut C,
    abi: Abi,
    mem: Memory,
    json: &[u8],
) -> Result<i32, wasmi::Error> {
    let len = i32::try_from(json.len()).map_err(|_| fail("JSON text over 2 GiB".into()))?;
    let p = abi.malloc.call(&mut *ctx, len)?;
    write_at(ctx, mem, p, json)?;
    match abi.json_parse.call(&mut *ctx, (p, len))? {
        0 => Err(fail("opa_json_parse refused the text".into())),
        v => Ok(v),
    }
}

/// `opa_builtinN`: the builtin numbered `id` on `args` (value addresses),
/// through JSON both ways as OPA's own SDKs do.
fn builtin(caller: &mut Caller<'_, OpaHost>, id: i32, args: &[i32]) -> Result<i32, wasmi::Error> {
    let host = caller.data();
    let b = usize::try_from(id)
        .ok()
        .and_then(|i| host.builtins.get(i).copied().flatten())
        .ok_or_else(|| fail(format!("builtin id {id} was not declared by builtins()")))?;
    let (Some(abi), Some(mem)) = (host.abi, host.memory) else {
        return Err(fail("builtin called before the module was loaded".into()));
    };
    if b.arity() != args.len() {
        return Err(fail(format!(
            "builtin {} takes {} operands, called through opa_builtin{}",
            b.name(),
            b.arity(),
            args.len()
        )));
    }
    let mut values = Vec::with_capacity(args.len());
    for a in args {
        values.push(dump(caller, abi, mem, *a)?);
    }
    let out = b
        .call(&values)
        .map_err(|p| fail(format!("builtin {}: {p}", b.name())))?;
    parse(caller, abi, mem, out.to_string().as_bytes())
}

/// `opa_abort`: the module's message, as a trap.
fn abort(caller: Caller<'_, OpaHost>, addr: i32) -> Result<(), wasmi::Error> {
    let msg = match caller.data().memory {
        Some(mem) => cstr(mem.data(&caller), addr)
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_else(|e| e.to_string()),
        None => "(no memory)".into(),
    };
    Err(fail(format!("opa_abort: {msg}")))
}

/// `opa_println`: logged under the policy's name, at most
/// [`LOG_PER_CALL`] per evaluation, each cut to [`LOG_MAX_BYTES`].
fn println(mut caller: Caller<'_, OpaHost>, addr: i32) {
    let counters = Arc::clone(&caller.data().counters);
    if caller.data().log_budget == 0 {
        counters.log_suppressed.fetch_add(1, Ordering::Relaxed);
        return;
    }
    caller.data_mut().log_budget -= 1;
    counters.logged.fetch_add(1, Ordering::Relaxed);
    let text = match caller.data().memory {
        Some(mem) => match cstr(mem.data(&caller), addr) {
            Ok(b) => String::from_utf8_lossy(b.get(..LOG_MAX_BYTES).unwrap_or(b)).into_owned(),
            Err(e) => e.to_string(),
        },
        None => "(no memory)".into(),
    };
    log::info!("policy {}: {text}", caller.data().name);
}

fn host_func(store: &mut Store<OpaHost>, name: &str) -> Option<Func> {
    type C<'a> = Caller<'a, OpaHost>;
    Some(match name {
        "opa_abort" => Func::wrap(store, abort),
        "opa_println" => Func::wrap(store, println),
        "opa_builtin0" => Func::wrap(store, |mut c: C<'_>, id: i32, _ctx: i32| {
            builtin(&mut c, id, &[])
        }),
        "opa_builtin1" => Func::wrap(store, |mut c: C<'_>, id: i32, _ctx: i32, a: i32| {
            builtin(&mut c, id, &[a])
        }),
        "opa_builtin2" => Func::wrap(store, |mut c: C<'_>, id: i32, _: i32, a: i32, b: i32| {
            builtin(&mut c, id, &[a, b])
        }),
        "opa_builtin3" => Func::wrap(
            store,
            |mut c: C<'_>, id: i32, _: i32, a: i32, b: i32, d: i32| builtin(&mut c, id, &[a, b, d]),
        ),
        "opa_builtin4" => Func::wrap(
            store,
            |mut c: C<'_>, id: i32, _: i32, a: i32, b: i32, d: i32, e: i32| {
                builtin(&mut c, id, &[a, b, d, e])
            },
        ),
        _ => return None,
    })
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

/// The result set of an evaluation made a verdict:
///
/// | entrypoint | value | verdict |
/// |---|---|---|
/// | `guardian/verdict` | `"allow"`, `"alert"`, `"deny"` | that decision, rule 0 |
/// | | `{"decision": "deny", "rule": 40, "actions": ["kill"]}` | that (`rule`, `actions` optional) |
/// | | undefined (`[]`) | allow: no rule spoke |
/// | `guardian/allow` | `true` | allow |
/// | | `false`, undefined | deny, rule 0 |
///
/// Anything else is a [`CallError::BadResult`] (the fail mode applies).
fn decide(text: &[u8], shape: Shape) -> Result<Verdict, CallError> {
    let bad = |problem: String| {
        let shown = String::from_utf8_lossy(text.get(..200).unwrap_or(text)).into_owned();
        CallError::BadResult(format!("{problem} (result {shown})"))
    };
    let set: Vec<serde_json::Map<String, Value>> =
        serde_json::from_slice(text).map_err(|e| bad(format!("not a result set: {e}")))?;
    let value = match set.as_slice() {
        [] => None,
        [one] => Some(
            one.get("result")
                .ok_or_else(|| bad("no \"result\" binding".into()))?,
        ),
        more => return Err(bad(format!("{} results, at most one expected", more.len()))),
    };
    let decision = |s: &str| match s {
        "allow" => Ok(Decision::Allow),
        "alert" => Ok(Decision::Alert),
        "deny" => Ok(Decision::Deny),
        other => Err(bad(format!(
            "decision {other:?} is not allow, alert or deny"
        ))),
    };
    let verdict = |decision, actions, rule| Verdict {
        decision,
        actions,
        rule,
    };
    match (shape, value) {
        (Shape::Allow, Some(Value::Bool(true))) => Ok(Verdict::ALLOW),
        (Shape::Allow, None | Some(Value::Bool(false))) => Ok(Verdict::deny(0)),
        (Shape::Allow, Some(v)) => Err(bad(format!("{ALLOW_ENTRYPOINT} is {v}, not a boolean"))),
        (Shape::Verdict, None) => Ok(Verdict::ALLOW),
        (Shape::Verdict, Some(Value::String(s))) => Ok(verdict(decision(s)?, Actions::NONE, 0)),
        (Shape::Verdict, Some(Value::Object(o))) => {
            let d = match o.get("decision") {
                Some(Value::String(s)) => decision(s)?,
                _ => return Err(bad("no \"decision\" string".into())),
            };
            let rule = match o.get("rule") {
                None => 0,
                Some(r) => r
                    .as_u64()
                    .and_then(|r| u32::try_from(r).ok())
                    .ok_or_else(|| bad(format!("rule {r} is not a 32-bit unsigned integer")))?,
            };
            let mut actions = Actions::NONE;
            if let Some(a) = o.get("actions") {
                let Value::Array(list) = a else {
                    return Err(bad(format!("actions {a} is not an array")));
                };
                for name in list {
                    actions = actions.union(match name.as_str() {
                        Some("kill") => Actions::KILL,
                        Some("remeasure") => Actions::REMEASURE,
                        Some("quarantine") => Actions::QUARANTINE,
                        _ => {
                            return Err(bad(format!(
                                "action {name} is not kill, remeasure or quarantine"
                            )));
                        }
                    });
                }
            }
            Ok(verdict(d, actions, rule))
        }
        (Shape::Verdict, Some(v)) => Err(bad(format!(
            "{VERDICT_ENTRYPOINT} is {v}, not a decision string or object"
        ))),
    }
}

/// The event as Rego's `input`: the fields of the JSON line `guardian run`
/// prints for it (`time`, `event`, `verdict`, `mode`, `hook`, `pid`, `tid`,
/// `ppid`, `uid`, `gid`, `exe`, `exe_dev`, `exe_ino`, `comm`, `service`,
/// then the kind's own: `file`, `dev`, `ino`, `flags`, `flags_text`;
/// `path`, `env`; `target_pid`, `target_exe`; `family`, `addr`, `port`),
/// plus `time_ns`. Written into `out` (cleared first).
pub fn input_json(event: &Event<'_>, out: &mut String) {
    out.clear();
    let time = UNIX_EPOCH + Duration::from_nanos(event.time_ns);
    let _ = write!(
        out,
        r#"{{"time":"{}","time_ns":{},"event":"{}","verdict":"{}","mode":"{}","hook":"#,
        humantime::format_rfc3339_nanos(time),
        event.time_ns,
        event.kind.name(),
        match event.kernel {
            KernelVerdict::Allow => "allow",
            KernelVerdict::Alert => "alert",
            KernelVerdict::Deny => "deny",
        },
        match event.mode {
            Mode::Enforce => "enforce",
            Mode::Detect => "detect",
        },
    );
    json_str(out, event.hook);
    let _ = write!(
        out,
        r#","pid":{},"tid":{},"ppid":{},"uid":{},"gid":{},"exe":"#,
        event.pid, event.tid, event.ppid, event.uid, event.gid
    );
    json_opt(out, event.exe);
    let _ = write!(
        out,
        r#","exe_dev":"{}:{}","exe_ino":{},"comm":"#,
        event.exe_dev.major, event.exe_dev.minor, event.exe_ino
    );
    json_str(out, event.comm);
    let _ = write!(out, r#","service":{}"#, event.service);
    match event.detail {
        Detail::None => {}
        Detail::File {
            path,
            dev,
            ino,
            flags,
            flags_text,
        } => {
            out.push_str(r#","file":"#);
            json_str(out, path);
            let _ = write!(
                out,
                r#","dev":"{}:{}","ino":{ino},"flags":{flags},"flags_text":"#,
                dev.major, dev.minor
            );
            json_str(out, flags_text);
        }
        Detail::Exec { path, env } => {
            out.push_str(r#","path":"#);
            json_str(out, path);
            out.push_str(r#","env":"#);
            json_opt(out, env);
        }
        Detail::Library { path } => {
            out.push_str(r#","path":"#);
            json_str(out, path);
        }
        Detail::Ptrace {
            target_pid,
            target_exe,
        } => {
            let _ = write!(out, r#","target_pid":{target_pid},"target_exe":"#);
            json_opt(out, target_exe);
        }
        Detail::Connect { addr, port } => {
            let _ = match addr {
                IpAddr::V4(a) => write!(
                    out,
                    r#","family":"ipv4","addr":"{}""#,
                    std::net::Ipv4Addr::from(a)
                ),
                IpAddr::V6(a) => write!(
                    out,
                    r#","family":"ipv6","addr":"{}""#,
                    std::net::Ipv6Addr::from(a)
                ),
            };
            let _ = write!(out, r#","port":{port}"#);
        }
    }
    out.push('}');
}

fn json_opt(out: &mut String, s: Option<&[u8]>) {
    match s {
        Some(s) => json_str(out, s),
        None => out.push_str("null"),
    }
}

/// A JSON string of the bytes (invalid UTF-8 replaced, as the JSON lines
/// have it).
fn json_str(out: &mut String, s: &[u8]) {
    out.push('"');
    for c in String::from_utf8_lossy(s).chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_map_to_verdicts() {
        let v = |t: &str| decide(t.as_bytes(), Shape::Verdict);
        let a = |t: &str| decide(t.as_bytes(), Shape::Allow);
        assert_eq!(v(r#"[{"result":"deny"}]"#).unwrap(), Verdict::deny(0));
        assert_eq!(v(r#"[{"result":"alert"}]"#).unwrap(), Verdict::alert(0));
        assert_eq!(v("[]").unwrap(), Verdict::ALLOW);
        assert_eq!(
            v(r#"[{"result":{"decision":"deny","rule":40,"actions":["kill"]}}]"#).unwrap(),
            Verdict::deny(40).with(Actions::KILL)
        );
        assert_eq!(a(r#"[{"result":true}]"#).unwrap(), Verdict::ALLOW);
        assert_eq!(a(r#"[{"result":false}]"#).unwrap(), Verdict::deny(0));
        assert_eq!(a("[]").unwrap(), Verdict::deny(0));
        for (bad, why) in [
            (v(r#"[{"result":"maybe"}]"#), "\"maybe\""),
            (v(r#"[{"result":3}]"#), "not a decision"),
            (v(r#"[{"x":1}]"#), "no \"result\""),
            (v(r#"[{"result":"deny"},{"result":"deny"}]"#), "2 results"),
            (v("{not json"), "not a result set"),
            (
                v(r#"[{"result":{"decision":"deny","actions":["explode"]}}]"#),
                "explode",
            ),
            (
                v(r#"[{"result":{"decision":"deny","rule":-1}}]"#),
                "rule -1",
            ),
            (a(r#"[{"result":"yes"}]"#), "not a boolean"),
        ] {
            let e = bad.unwrap_err();
            assert!(
                matches!(&e, CallError::BadResult(m) if m.contains(why)),
                "{e} lacks {why}"
            );
        }
    }

    #[test]
    fn builtins_follow_opa() {
        let j = |t: &str| -> Value { serde_json::from_str(t).unwrap() };
        let call = |b: &str, args: &[&str]| {
            let args: Vec<Value> = args.iter().map(|a| j(a)).collect();
            Builtin::named(b).unwrap().call(&args)
        };
        assert_eq!(
            call("startswith", &[r#""/tmp/x""#, r#""/tmp/""#]),
            Ok(j("true"))
        );
        assert_eq!(
            call("startswith", &[r#""/usr/x""#, r#""/tmp/""#]),
            Ok(j("false"))
        );
        assert_eq!(call("endswith", &[r#""a.so""#, r#"".so""#]), Ok(j("true")));
        assert_eq!(call("count", &[r#""héllo""#]), Ok(j("5")));
        assert_eq!(call("count", &["[1,2,3]"]), Ok(j("3")));
        assert_eq!(call("count", &[r#"{"a":1}"#]), Ok(j("1")));
        let e = call("startswith", &["1", r#""x""#]).unwrap_err();
        assert!(e.contains("operand 1 must be a string, not 1"), "{e}");
        let e = call("count", &["true"]).unwrap_err();
        assert!(
            e.contains("operand 1 must be a string, array, set or object"),
            "{e}"
        );
        assert_eq!(Builtin::named("http.send"), None);
        for (name, arity) in BUILTINS {
            let b = Builtin::named(name).unwrap();
            assert_eq!((b.name(), b.arity()), (name, arity));
        }
    }

    #[test]
    fn data_section_round_trips() {
        let wasm = wat::parse_str("(module (memory 1))").unwrap();
        assert_eq!(custom_section(&wasm, DATA_SECTION), None);
        let with = with_data(&wasm, br#"{"a":1}"#);
        assert_eq!(
            custom_section(&with, DATA_SECTION),
            Some(&br#"{"a":1}"#[..])
        );
        // Replaced, not added twice.
        let again = with_data(&with, b"[]");
        assert_eq!(custom_section(&again, DATA_SECTION), Some(&b"[]"[..]));
        assert_eq!(again.len(), with.len() - 5);
        // Still a module wasmi loads.
        let engine = Engine::default();
        assert!(Module::new(&engine, &again).is_ok());
    }

    #[test]
    fn input_is_the_json_line() {
        let e = Event {
            kind: guardian_policy_abi::Kind::Exec,
            kernel: KernelVerdict::Allow,
            mode: Mode::Enforce,
            time_ns: 1_735_787_045_000_006_000,
            hook: b"lsm/bprm_check_security",
            pid: 10,
            tid: 11,
            ppid: 1,
            uid: 0,
            gid: 0,
            exe: Some(b"/usr/bin/py\"thon"),
            exe_dev: guardian_policy_abi::Dev { major: 8, minor: 1 },
            exe_ino: 99,
            comm: b"py\n",
            service: true,
            detail: Detail::Exec {
                path: b"/bin/sh",
                env: None,
            },
        };
        let mut s = String::new();
        input_json(&e, &mut s);
        let v: Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["event"], "exec");
        assert_eq!(v["exe"], "/usr/bin/py\"thon");
        assert_eq!(v["comm"], "py\n");
        assert_eq!(v["path"], "/bin/sh");
        assert_eq!(v["env"], Value::Null);
        assert_eq!(v["service"], true);
        assert_eq!(v["exe_dev"], "8:1");
        assert_eq!(v["time"], "2025-01-02T03:04:05.000006000Z");
        // The agent's own reader takes it back to the same event.
        let j = super::super::JsonEvent::parse(&s).unwrap();
        assert_eq!(j.to_abi().unwrap(), e);
    }
}
