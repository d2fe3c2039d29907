//! Write guardian policies in Rust.
//!
//! Implement [`Policy`] for a type whose whole state is known at compile
//! time ([`Policy::INIT`]), then export it:
//!
//! ```ignore
//! #![no_std]
//! use guardian_policy_sdk::{EventView, Kind, Policy, Verdict, export_policy};
//!
//! pub struct NoPtrace;
//! impl Policy for NoPtrace {
//!     const INIT: Self = NoPtrace;
//!     fn evaluate(&mut self, event: &EventView<'_>) -> Verdict {
//!         if event.kind() == Kind::Ptrace {
//!             Verdict::deny(1)
//!         } else {
//!             Verdict::ALLOW
//!         }
//!     }
//! }
//! export_policy!(NoPtrace);
//! ```
//!
//! and build with `cargo build --release --target wasm32-unknown-unknown`
//! (crate type `cdylib`). The macro writes the exports the ABI asks for
//! (`guardian_abi_version`, `guardian_buffer`, `guardian_buffer_size`,
//! `guardian_evaluate`, `guardian_static_rules`) and packs the verdict. On
//! other targets it expands to nothing, so the same crate builds natively
//! for unit tests and benchmarks; call [`evaluate_input`] there (header and
//! event, as the module receives them) to include the decoding.
//!
//! # Reading the event: cheap in an interpreter
//!
//! guardian runs the module in wasmi, an interpreter, where every
//! instruction counts: a bare call costs about 85 ns, and decoding the
//! whole postcard event with serde cost 1.5 µs more. So the policy gets an
//! [`EventView`] of the encoded bytes, not a decoded struct: `kind()` is
//! byte 0; `exe()`, `service()`, `path()`, `connect()` and `detail()` go straight to
//! their field, whose place guardian wrote in a header in front of the
//! event (ABI version 2), and decode only that field. Read what the policy needs; call
//! [`EventView::decode`] for the whole [`Event`] when it needs most of it.
//! Compare paths with [`bytes_eq`] and [`has_prefix`] (eight bytes at a
//! time; `==` and `starts_with` on slices compile to a byte loop), and
//! check the cheapest field first (the kind, then `service`) so that most
//! events are answered before any string is looked at.
//!
//! The module needs no allocator and carries no serializer: the view
//! borrows the input buffer and [`StaticRules::encode`] writes the rules
//! by hand. A panic aborts the call (a trap): guardian then applies its
//! fail mode for that event.
//!
//! # State: fixed capacity, and a rule for when it is full
//!
//! A module instance lives until the next reload, so a policy may keep
//! state between events (rate windows, per-process tables). Keep it in
//! fixed-capacity collections of [`heapless`] (re-exported here, so every
//! policy uses the SDK's version): `heapless::Vec<T, N>`,
//! `heapless::index_map::FnvIndexMap<K, V, N>`, … are `const`-constructible
//! for [`Policy::INIT`], need no allocator, and their size is part of the
//! module's memory, which guardian checks at load. Capacity is a decision:
//! say in the policy's documentation what happens when a table is full
//! (the oldest entry evicted, or the event answered `alert`), handle the
//! `Err` of every `push`/`insert`, and test it
//! (`policies/examples/rate-anomaly`).

#![no_std]

pub use guardian_policy_abi as abi;
pub use heapless;
pub use guardian_policy_abi::{
    ABI_VERSION, Actions, Decision, Detail, Dev, Egress, Event, HEADER_SIZE, IpAddr, KernelVerdict,
    Kind, Mode, StaticRules, Verdict, log_level, path_matches, prefix_match,
    wire::{EventView, Header, bytes_eq, has_prefix},
};

/// Size of the input buffer the exported module declares: the largest
/// event guardian sends, plus the version 2 header.
pub const BUFFER_SIZE: usize = abi::MIN_BUFFER_SIZE as usize + HEADER_SIZE;
/// Room for the encoded static rules.
pub const RULES_SIZE: usize = 4096;

/// A policy.
pub trait Policy: Sized {
    /// The state at load (and after every reload: a new instance starts
    /// from here).
    const INIT: Self;

    /// What the kernel should enforce by itself. Default: nothing.
    fn static_rules() -> StaticRules<'static> {
        StaticRules::default()
    }

    /// Judge one event. Read only the fields the decision needs (see the
    /// crate documentation); [`EventView::decode`] gives them all.
    fn evaluate(&mut self, event: &EventView<'_>) -> Verdict;
}

/// Evaluate an encoded event as an ABI version 1 module receives it (the
/// plain event); returns what `guardian_evaluate` returns
/// ([`Verdict::DECODE_ERROR`] when a field the policy read is not
/// well-formed, whatever the policy decided).
#[inline(always)]
pub fn evaluate_bytes<P: Policy>(policy: &mut P, bytes: &[u8]) -> i64 {
    verdict_of(policy, &EventView::new(bytes))
}

/// Evaluate what an ABI version 2 module receives (a [`Header`], then the
/// encoded event; what the modules [`export_policy!`] makes are given);
/// as [`evaluate_bytes`], a header that does not fit the event gives
/// [`Verdict::DECODE_ERROR`].
#[inline(always)]
pub fn evaluate_input<P: Policy>(policy: &mut P, input: &[u8]) -> i64 {
    verdict_of(policy, &EventView::with_header(input))
}

#[inline(always)]
fn verdict_of<P: Policy>(policy: &mut P, view: &EventView<'_>) -> i64 {
    let verdict = policy.evaluate(view);
    if view.is_malformed() {
        Verdict::DECODE_ERROR
    } else {
        verdict.pack()
    }
}

/// Encode `rules` into `buf`; returns what `guardian_static_rules` returns:
/// `(address << 32) | length`, or -1 when they do not fit.
pub fn encode_rules(rules: &StaticRules<'_>, buf: &mut [u8]) -> i64 {
    match rules.encode(buf) {
        Some(len) => ((buf.as_ptr() as usize as i64) << 32) | len as i64,
        None => -1,
    }
}

#[cfg(target_arch = "wasm32")]
mod host {
    #[link(wasm_import_module = "guardian")]
    unsafe extern "C" {
        #[link_name = "log"]
        pub fn log(level: i32, ptr: i32, len: i32);
        #[link_name = "monotonic_ns"]
        pub fn monotonic_ns() -> i64;
    }
}

/// Write `message` to guardian's log at `level` ([`log_level`]), prefixed
/// with the policy's name. guardian cuts long messages and rate-limits
/// chatty modules. Does nothing outside wasm32.
pub fn log(level: i32, message: &str) {
    #[cfg(target_arch = "wasm32")]
    // SAFETY: the host reads `len` bytes at `ptr` from this module's memory,
    // where the string lives.
    unsafe {
        host::log(
            level,
            message.as_ptr() as usize as i32,
            message.len() as i32,
        )
    };
    #[cfg(not(target_arch = "wasm32"))]
    let _ = (level, message);
}

/// Nanoseconds on guardian's monotonic clock (0 outside wasm32). For time
/// windows prefer [`Event::time_ns`], which replays deterministically.
pub fn monotonic_ns() -> u64 {
    #[cfg(target_arch = "wasm32")]
    // SAFETY: a host function without arguments.
    return unsafe { host::monotonic_ns() } as u64;
    #[cfg(not(target_arch = "wasm32"))]
    0
}

/// A panic in a policy aborts the call with `unreachable`: guardian sees a
/// trap and applies its fail mode.
#[cfg(all(target_arch = "wasm32", not(test)))]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    core::arch::wasm32::unreachable()
}

/// Export a [`Policy`] type as a guardian policy module (wasm32 only).
#[macro_export]
macro_rules! export_policy {
    ($policy:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            static mut POLICY: $policy = <$policy as $crate::Policy>::INIT;
            static mut BUFFER: [u8; $crate::BUFFER_SIZE] = [0; $crate::BUFFER_SIZE];
            static mut RULES: [u8; $crate::RULES_SIZE] = [0; $crate::RULES_SIZE];

            #[unsafe(no_mangle)]
            extern "C" fn guardian_abi_version() -> i32 {
                $crate::ABI_VERSION as i32
            }

            #[unsafe(no_mangle)]
            extern "C" fn guardian_buffer() -> i32 {
                (&raw mut BUFFER) as usize as i32
            }

            #[unsafe(no_mangle)]
            extern "C" fn guardian_buffer_size() -> i32 {
                $crate::BUFFER_SIZE as i32
            }

            #[unsafe(no_mangle)]
            extern "C" fn guardian_evaluate(ptr: i32, len: i32) -> i64 {
                if ptr as usize != (&raw mut BUFFER) as usize
                    || len < 0
                    || len as usize > $crate::BUFFER_SIZE
                {
                    return $crate::Verdict::DECODE_ERROR;
                }
                // SAFETY: wasm32 is single-threaded and the host calls one
                // export at a time, so these are the only live references;
                // the range was checked to lie in BUFFER.
                let (policy, bytes) = unsafe {
                    (
                        &mut *(&raw mut POLICY),
                        core::slice::from_raw_parts(ptr as usize as *const u8, len as usize),
                    )
                };
                $crate::evaluate_input(policy, bytes)
            }

            #[unsafe(no_mangle)]
            extern "C" fn guardian_static_rules() -> i64 {
                // SAFETY: as above, the only live reference.
                let buf = unsafe { &mut *(&raw mut RULES) };
                $crate::encode_rules(&<$policy as $crate::Policy>::static_rules(), buf)
            }
        };
    };
}
