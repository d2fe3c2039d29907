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
/// which `free` never does by itself). Called when start-up is done, and
/// at the status tick after a burst of events (`daemon/serve.rs`);
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

/// Large allocations (128 KiB and up) get pages of their own, given back
/// to the kernel when freed; what is freed at the top of the heap goes
/// back past 128 KiB. These are glibc's defaults, but glibc raises both
/// for the rest of the process the first time a large block is freed (up
/// to 32 and 64 MiB), and start-up frees several MiB-sized ones (the
/// kernel's BTF, read and parsed): from then on the ring reader's burst
/// buffer (`events/reader.rs`, up to 4 MiB) would come from the heap and
/// stay resident after the burst. Setting them fixes them. Called first
/// thing in `run()`. A no-op where the C library is not glibc.
pub fn fix_allocator_thresholds() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` takes two integers and only sets the allocator's
    // parameters, under its own lock.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 * 1024);
    }
}

/// Run `f` on a thread of its own and return what it returns, or `None` if
/// the thread could not be started or `f` panicked.
///
/// For start-up work that allocates a lot and keeps little (the kernel's
/// BTF, parsed for a few offsets; the search of `/proc`): glibc gives each
/// thread's allocations their own arena, so its hundreds of thousands of
/// small blocks do not fall between the main thread's long-lived ones,
/// where, once freed, they would leave pages that a single live block
/// keeps resident and [`release_free_heap`] cannot hand back. Once the
/// thread is done, its arena is all free and is handed back whole.
pub fn apart<R: Send>(f: impl FnOnce() -> R + Send) -> Option<R> {
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("guardian-startup".to_owned())
            .spawn_scoped(s, f)
            .ok()?
            .join()
            .ok()
    })
}
