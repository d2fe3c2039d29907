//! The agent's own memory, where the allocator has to be told something.
//!
//! Start-up is the agent's most allocation-hungry moment by far: the
//! kernel's BTF is read and parsed to find struct offsets, the eBPF object
//! is parsed and relocated, `/proc` is searched for writers, policies are
//! compiled. Almost all of it is freed before the first event, but glibc's
//! allocator only gives the top of its heap back to the kernel, so an idle
//! agent kept several MiB of freed start-up memory resident
//! (`docs/footprint.md`). [`release_free_heap`] hands it back once, when
//! start-up is over. May not allocate or decide anything; a leaf.

/// Return the allocator's free memory to the kernel: whole free pages
/// anywhere in the heap, not only at its top (glibc's `malloc_trim(0)`,
/// which `free` never does by itself). Called once when start-up is done;
/// costs a walk of the free lists, a few milliseconds at most. A no-op
/// where the C library is not glibc (musl returns free pages on its own).
pub fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` takes no pointer and only walks the allocator's
    // own free lists, under its own locks.
    unsafe {
        libc::malloc_trim(0);
    }
}
