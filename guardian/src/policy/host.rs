//! The host side of a policy module's sandbox: the data its `Store`
//! carries, the host functions it may import (defined here and nowhere
//! else), and the one way into it, [`call_with_fuel`], which gives every
//! call fresh fuel and a fresh log budget. A module reaches the agent only
//! through these functions: it logs (bounded, counted) and reads a
//! monotonic clock.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use guardian_policy_abi::exports;
use wasmi::{Linker, Store, StoreLimits, TrapCode};

use super::module::CallError;

/// Log messages a module may write per call; more are counted, not shown.
pub const LOG_PER_CALL: u32 = 4;
/// Longest log message shown, bytes.
pub const LOG_MAX_BYTES: usize = 512;

/// Counters a module's host functions update.
#[derive(Debug, Default)]
pub struct HostCounters {
    /// Messages logged.
    pub logged: AtomicU64,
    /// Messages dropped by [`LOG_PER_CALL`].
    pub log_suppressed: AtomicU64,
}

/// The store's data.
pub(super) struct Host {
    pub(super) limits: StoreLimits,
    pub(super) name: Arc<str>,
    pub(super) log_budget: u32,
    pub(super) counters: Arc<HostCounters>,
    pub(super) epoch: Instant,
}

/// The whole host interface, in one place: every function a module may
/// import (`load` refuses any other import).
pub(super) fn define(linker: &mut Linker<Host>) -> Result<(), wasmi::Error> {
    linker
        .func_wrap(
            guardian_policy_abi::imports::MODULE,
            guardian_policy_abi::imports::LOG,
            host_log,
        )?
        .func_wrap(
            guardian_policy_abi::imports::MODULE,
            guardian_policy_abi::imports::MONOTONIC_NS,
            |caller: wasmi::Caller<'_, Host>| -> i64 {
                i64::try_from(caller.data().epoch.elapsed().as_nanos()).unwrap_or(i64::MAX)
            },
        )?;
    Ok(())
}

/// Make one call into a module: fresh fuel and log budget first, then
/// running out of fuel told apart from every other trap (it is the limit
/// working, and the fail mode says what it means).
pub(super) fn call_with_fuel<R>(
    store: &mut Store<Host>,
    fuel: u64,
    f: impl FnOnce(&mut Store<Host>) -> Result<R, wasmi::Error>,
) -> Result<R, CallError> {
    // A store starts with no fuel and keeps what the last call left: set
    // it before every call.
    store
        .set_fuel(fuel)
        .map_err(|e| CallError::Trap(format!("setting fuel: {e}")))?;
    store.data_mut().log_budget = LOG_PER_CALL;
    f(store).map_err(|e| match e.as_trap_code() {
        Some(TrapCode::OutOfFuel) => CallError::OutOfFuel { fuel },
        _ => CallError::Trap(e.to_string()),
    })
}

/// `guardian_log`: at most [`LOG_PER_CALL`] messages a call, each cut to
/// [`LOG_MAX_BYTES`], logged under the policy's name; a pointer outside
/// the module's memory is logged as such, never read.
fn host_log(mut caller: wasmi::Caller<'_, Host>, level: i32, ptr: i32, len: i32) {
    let counters = Arc::clone(&caller.data().counters);
    if caller.data().log_budget == 0 {
        counters.log_suppressed.fetch_add(1, Ordering::Relaxed);
        return;
    }
    caller.data_mut().log_budget -= 1;
    counters.logged.fetch_add(1, Ordering::Relaxed);
    let name = Arc::clone(&caller.data().name);
    let text = match caller
        .get_export(exports::MEMORY)
        .and_then(|e| e.into_memory())
    {
        Some(mem) => {
            let data = mem.data(&caller);
            let start = usize::try_from(ptr).unwrap_or(usize::MAX);
            let n = usize::try_from(len).unwrap_or(0).min(LOG_MAX_BYTES);
            match data.get(start..start.saturating_add(n)) {
                Some(b) => String::from_utf8_lossy(b).into_owned(),
                None => format!("(log message at {ptr}+{len} is outside memory)"),
            }
        }
        None => "(no memory export)".to_owned(),
    };
    let level = match level {
        1 => log::Level::Error,
        2 => log::Level::Warn,
        3 => log::Level::Info,
        _ => log::Level::Debug,
    };
    log::log!(level, "policy {name}: {text}");
}
