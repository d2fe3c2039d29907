//! guardian: an integrity guardian for AI inference on edge boards.
//!
//! It keeps model files and the inference process honest: eBPF programs in
//! the kernel deny (BPF LSM) or report (tracepoints) any attempt to modify a
//! protected model or tamper with the inference process, every decision is
//! a JSON security event judged again by signed policies, and what is in
//! force for each hook is always visible. This crate is the agent and does
//! every subcommand's work; the binary (`main.rs` and its `cli/` modules)
//! only parses the command line, calls into it and prints what it returns.
//!
//! Where things are:
//!
//! | module | what |
//! |---|---|
//! | [`config`] | the TOML config, environment overrides, validation |
//! | [`kernel`] | probing the running kernel (BTF, LSM list, tracepoints) |
//! | [`btf`] | reading struct offsets from the kernel's BTF for the eBPF programs |
//! | [`hooks`] | hooks, mechanisms, modes and verdicts as types (a leaf everyone may use) |
//! | [`targets`] | what is protected, allowed and recognised, resolved from the config to inodes and prefixes |
//! | [`enforce`] | one owner for every rung: starts, refreshes and stops them, and says what is in force |
//! | [`guard`] | loading (or adopting) the pinned eBPF object, filling its maps, the kernel's ladder |
//! | [`events`] | decoding kernel records into JSON-line security events |
//! | [`fanotify`] | the userspace rungs: permission events deny write-opens, notification events report changes, where BPF LSM cannot attach |
//! | [`prescan`] | writers that were there before the guard: writable descriptors and shared writable mappings of protected files, found in `/proc` at start |
//! | [`pathcheck`] | the names the service opens still lead to the guarded inodes and mounts (after the fact, on the status timer) |
//! | [`systemd`] | readiness and the watchdog for `guardian.service` (`sd_notify`) |
//! | [`status`] | the state `guardian status` shows |
//! | [`measure`] | the boot step: measure the manifest's models into a TPM PCR |
//! | [`manifest`] | (`guardian-attest`) the signed model manifest, and why PCR 14 |
//! | [`signing`] | (`guardian-attest`) Ed25519 / ECDSA P-256 detached signatures, as openssl makes them |
//! | [`policy_set`] | (`guardian-attest`) the signed policy set a fleet pushes to a device group, its checks, the floor |
//! | [`hashing`] | streaming, parallel SHA-256 of model files |
//! | [`memory`] | the free start-up heap handed back to the kernel once start-up is done |
//! | [`evidence`] | the ledger (log + TPM: append, extend, void) and the log's follower; what is measured, the measurement log and the TCG and CEL exports are `guardian-attest`'s |
//! | [`tpm`] | the TPM through tss-esapi: PCR extend and read, attestation key, quote, the floor's NV index |
//! | [`attest`] | evidence bundles for a verifier's nonce; the offline verifier is `guardian-attest`'s |
//! | [`enrol`] | AK enrolment: the device's steps (ActivateCredential); the verifier's (EK certificate chain, software MakeCredential) are `guardian-attest`'s |
//! | [`unload`] | who may switch the guard off: operator-signed unload tokens for one boot, and what the running guard was loaded with |
//! | [`continuous`] | in the daemon: tamper records, re-measurement, guard state into the TPM |
//! | [`daemon`] | `guardian run` and `guardian stop`: the start-up steps, the event loop, each event's way out, the status snapshot |
//! | [`policy`] | signed WebAssembly policies in wasmi: load, measure, evaluate, hot swap, static rules |
//! | [`report`] | the fleet link from `[report]`: the spool and the link (`guardian-report`), and which class each record of the agent is |
//! | [`pushed`] | pushed policy sets on the device: their directories under `[policy] state_dir`, the pointer to the set in force, the floor file, their status |
//! | [`rules`] | the kernel's tables: the config widened by the policies' static rules |
//!
//! The verifier's library is a crate of its own, `guardian-attest`, so the
//! fleet service runs the same verifier without a TPM library or eBPF; the
//! modules marked (`guardian-attest`) above are its, re-exported whole,
//! and `evidence`, `attest` and `enrol` re-export its half beside the
//! agent's.
//!
//! The kernel side lives in `guardian-ebpf` (one file per hook) and the
//! types both sides share in `guardian-common`. The eBPF object is built by
//! `build.rs` and embedded in this crate as [`EBPF_OBJECT`].
//!
//! [`run`] is the daemon (`guardian run`, in [`daemon`]): it takes its
//! shutdown signal as a future so tests can stop it.

#![warn(missing_docs)]

pub mod attest;
pub mod btf;
pub mod config;
pub mod continuous;
pub mod daemon;
pub mod enforce;
pub mod enrol;
pub mod events;
pub mod evidence;
pub mod fanotify;
pub mod guard;
pub mod hashing;
pub mod hooks;
pub mod kernel;
pub mod measure;
pub mod memory;
pub mod pathcheck;
pub mod policy;
pub mod prescan;
pub mod pushed;
pub mod report;
pub mod rules;
pub mod status;
pub mod systemd;
pub mod targets;
pub mod tpm;
pub mod unload;

// The verifier's library: the agent names these as its own modules.
pub use guardian_attest::{manifest, policy_set, signing};

/// The eBPF object, built by `build.rs` (empty if this binary was built
/// without the eBPF toolchain; [`run`] then refuses to start and says so).
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/guardian-ebpf"));

/// guardian's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub use daemon::{RunError, StopError, run, stop};

#[cfg(test)]
mod tests {
    /// The section names of a 64-bit little-endian ELF object, from its
    /// section header table (as `build.rs` reads them).
    fn section_names(elf: &[u8]) -> Vec<String> {
        let at = |o: usize, n: usize| {
            let mut b = [0u8; 8];
            b[..n].copy_from_slice(&elf[o..o + n]);
            u64::from_le_bytes(b) as usize
        };
        let (shoff, size, count, strndx) = (at(0x28, 8), at(0x3a, 2), at(0x3c, 2), at(0x3e, 2));
        let strtab = at(shoff + strndx * size + 0x18, 8);
        (0..count)
            .map(|i| {
                let name = &elf[strtab + at(shoff + i * size, 4)..];
                let end = name.iter().position(|&b| b == 0).unwrap();
                String::from_utf8_lossy(&name[..end]).into_owned()
            })
            .collect()
    }

    /// `build.rs` slims the object before it is embedded: no DWARF, no
    /// `.rel.BTF.ext`, and its BTF kept (the loader and the verifier read
    /// it).
    #[test]
    fn the_embedded_ebpf_object_is_slim_and_keeps_its_btf() {
        let obj = super::EBPF_OBJECT;
        if obj.is_empty() {
            eprintln!(
                "SKIPPED: this build has no eBPF object (built without the eBPF toolchain): nothing to check"
            );
            return;
        }
        let names = section_names(obj);
        let has = |n: &str| names.iter().any(|s| s == n);
        assert!(
            has(".BTF") && has(".BTF.ext"),
            "the object lost its BTF: {names:?}"
        );
        assert!(
            !names.iter().any(|s| s.starts_with(".debug_")),
            "the object kept its DWARF (did build.rs find no objcopy? see its warning): {names:?}"
        );
        assert!(!has(".rel.BTF.ext"), "the object kept .rel.BTF.ext");
    }
}
