//! The host side of OPA's Wasm ABI: the functions a Rego module imports
//! (`opa_abort`, `opa_println`, `opa_builtin0`..`4` and the builtins
//! behind them) and the access to the module's memory they and the
//! evaluation share (NUL-terminated text, JSON through `opa_json_dump` and
//! `opa_json_parse`).
//!
//! May not decide anything: a builtin computes OPA's result or traps.

use std::sync::{Arc, atomic::Ordering};

use serde_json::Value;
use wasmi::{AsContextMut, Caller, Func, Memory, Store};

use super::{Abi, MAX_TEXT, OpaHost, fail};
use crate::policy::host::LOG_MAX_BYTES;

/// A builtin guardian implements on the host side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Builtin {
    StartsWith,
    EndsWith,
    Count,
}

impl Builtin {
    pub(super) fn named(name: &str) -> Option<Self> {
        match name {
            "startswith" => Some(Self::StartsWith),
            "endswith" => Some(Self::EndsWith),
            "count" => Some(Self::Count),
            _ => None,
        }
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Self::StartsWith => "startswith",
            Self::EndsWith => "endswith",
            Self::Count => "count",
        }
    }

    pub(super) fn arity(self) -> usize {
        match self {
            Self::StartsWith | Self::EndsWith => 2,
            Self::Count => 1,
        }
    }

    /// OPA's semantics; a type error is an error (the evaluation traps and
    /// gets the fail mode).
    pub(super) fn call(self, args: &[Value]) -> Result<Value, String> {
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

/// The NUL-terminated text at `addr`.
pub(super) fn cstr(mem: &[u8], addr: i32) -> Result<&[u8], wasmi::Error> {
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

pub(super) fn write_at<C: AsContextMut<Data = OpaHost>>(
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
pub(super) fn dump<C: AsContextMut<Data = OpaHost>>(
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
pub(super) fn parse<C: AsContextMut<Data = OpaHost>>(
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

pub(super) fn host_func(store: &mut Store<OpaHost>, name: &str) -> Option<Func> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::rego::BUILTINS;

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
}
