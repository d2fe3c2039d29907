//! The agent's own memory, where the allocator has to be told something.
//!
//! Start-up is the agent's most allocation-hungry moment by far: the
//! kernel's BTF is read and parsed to find struct offsets, the eBPF object
//! is parsed and relocated, `/proc` is searched for writers, policies are
//! compiled. Almost all of it is freed before the first event, but glibc's
//! allocator only gives the top of its heap back to the kernel, so an idle
//! agent kept several MiB of freed start-up memory resident
//! (`docs/footprint.md`). [`release_free_heap`] hands it back once, when
//! start-up is over, and [`release_startup_pages`] lets the kernel take
//! back the pages of code and read-only data that only start-up ran. May
//! not decide anything; a leaf.

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

/// `MADV_PAGEOUT` (Linux 5.4, the same number on every architecture).
#[cfg(target_os = "linux")]
const MADV_PAGEOUT: libc::c_int = 21;

/// What [`release_startup_pages`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Released {
    /// File-backed, read-only mappings it asked the kernel to page out.
    pub mappings: usize,
    /// Of those, the ones the kernel refused (`madvise` failed: a kernel
    /// before 5.4, or a file the agent could not write).
    pub refused: usize,
    /// The resident set before and after, KiB (`VmRSS`; 0 if unreadable).
    pub rss_before_kib: u64,
    /// See `rss_before_kib`.
    pub rss_after_kib: u64,
}

/// Ask the kernel to reclaim now the pages of the agent's read-only file
/// mappings (its binary's code and constants, its libraries'), as it
/// would on its own under memory pressure.
///
/// Start-up runs code that the idle agent never runs again (the config
/// and policy parsers, the eBPF loader and its relocations, the BTF
/// reader, the TPM's session set-up) and reads constants it never reads
/// again (the eBPF object embedded in the binary). The kernel maps file
/// pages 64 KiB around each fault, so by readiness most of the binary is
/// resident: 6.5–7 MiB of the agent's 14 (`docs/footprint.md`). They are
/// clean page-cache pages, so this frees memory rather than hiding it:
/// pages that only this process maps are dropped from the page cache;
/// pages other processes map too (the C library) are left alone by the
/// kernel. What the running agent needs comes back on its next fault,
/// read from the same file: the idle figure is then its working set.
///
/// Writable mappings (relocated data, the heap, stacks) are not touched
/// (their pages are anonymous: without swap there is nowhere to put
/// them), nor is anything that is not a file (the ring buffer, whose
/// pages are the kernel's).
///
/// Not a security boundary either way: the kernel may evict these pages
/// at any moment and read them back from the same inode.
pub fn release_startup_pages() -> Released {
    let mut done = Released {
        rss_before_kib: resident_kib(),
        ..Released::default()
    };
    #[cfg(target_os = "linux")]
    {
        let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
            return done;
        };
        for (start, end) in readonly_file_mappings(&maps) {
            done.mappings += 1;
            // SAFETY: the range is one of this process's own mappings as
            // the kernel listed it; MADV_PAGEOUT changes no content, only
            // whether a clean page is resident (a later access faults it
            // back in from the file). A range unmapped since the listing
            // makes madvise fail with ENOMEM, nothing worse.
            let rc =
                unsafe { libc::madvise(start as *mut libc::c_void, end - start, MADV_PAGEOUT) };
            if rc != 0 {
                done.refused += 1;
            }
        }
    }
    done.rss_after_kib = resident_kib();
    done
}

/// The `[start, end)` ranges of `/proc/self/maps` lines that map a file
/// (a path, an inode) without write permission.
fn readonly_file_mappings(maps: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for line in maps.lines() {
        let mut fields = line.split_ascii_whitespace();
        let (Some(range), Some(perms), Some(_offset), Some(_dev), Some(inode)) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            continue;
        };
        let path = fields.next().unwrap_or("");
        if !path.starts_with('/') || inode == "0" || perms.as_bytes().get(1) != Some(&b'-') {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (
            usize::from_str_radix(start, 16),
            usize::from_str_radix(end, 16),
        ) else {
            continue;
        };
        if end > start {
            out.push((start, end));
        }
    }
    out
}

/// This process's `VmRSS`, KiB; 0 if it cannot be read.
pub fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_readonly_file_mappings_are_chosen() {
        let maps = "\
55d0c0000000-55d0c0100000 r--p 00000000 fe:01 1234 /usr/bin/guardian
55d0c0100000-55d0c0500000 r-xp 00100000 fe:01 1234 /usr/bin/guardian
55d0c0500000-55d0c0600000 rw-p 00500000 fe:01 1234 /usr/bin/guardian
55d0c0600000-55d0c0700000 rw-p 00000000 00:00 0 [heap]
7f0000000000-7f0000201000 r--s 00001000 00:0f 77 anon_inode:bpf-map
7f0000300000-7f0000301000 rw-s 00000000 00:0f 77 anon_inode:bpf-map
7f0000400000-7f0000410000 r-xp 00000000 fe:01 99 /usr/lib/libc.so.6 (deleted)
7f0000500000-7f0000501000 r--p 00000000 00:00 0
7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0 [vdso]
garbage line
";
        assert_eq!(
            readonly_file_mappings(maps),
            vec![
                (0x55d0c0000000, 0x55d0c0100000),
                (0x55d0c0100000, 0x55d0c0500000),
                (0x7f0000400000, 0x7f0000410000),
            ]
        );
    }

    /// The pages of a file mapped read-only and read through leave the
    /// resident set when released, and read back the same afterwards.
    #[test]
    fn released_file_pages_leave_the_resident_set_and_read_back() {
        use std::io::Write;
        // Beside the build, on disk: a tmpfs file's pages are not the page
        // cache's to drop (they would need swap).
        let dir = tempfile::tempdir_in("/var/tmp").expect("temp dir");
        let path = dir.path().join("pages");
        let len = 4 << 20;
        let body: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let mut f = std::fs::File::create(&path).expect("create");
        f.write_all(&body).expect("write");
        f.sync_all().expect("sync");
        let f = std::fs::File::open(&path).expect("open");
        use std::os::fd::AsRawFd;
        // SAFETY: a private read-only mapping of a file this test owns,
        // unmapped below before the file is dropped.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                f.as_raw_fd(),
                0,
            )
        };
        assert_ne!(addr, libc::MAP_FAILED);
        // SAFETY: `addr` maps `len` readable bytes until the munmap below.
        let view = unsafe { std::slice::from_raw_parts(addr as *const u8, len) };
        let sum_before: u64 = view.iter().map(|&b| u64::from(b)).sum();
        let rss_of = || mapping_rss_kib(addr as usize);
        assert!(rss_of() >= 4096, "all 4 MiB read: {} KiB", rss_of());
        let done = release_startup_pages();
        assert!(done.mappings >= 2, "{done:?}");
        let after = rss_of();
        if done.refused == done.mappings {
            panic!("MADV_PAGEOUT refused for every mapping (kernel before 5.4?): {done:?}");
        }
        assert!(
            after < 1024,
            "released mapping still holds {after} KiB: {done:?}"
        );
        let sum_after: u64 = view.iter().map(|&b| u64::from(b)).sum();
        assert_eq!(sum_before, sum_after);
        // SAFETY: unmapping what was mapped above; `view` is not used again.
        unsafe { libc::munmap(addr, len) };
    }

    /// The `Rss:` of the mapping starting at `addr` in /proc/self/smaps.
    fn mapping_rss_kib(addr: usize) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("smaps");
        let head = format!("{addr:x}-");
        let mut inside = false;
        for line in smaps.lines() {
            if line.starts_with(&head) {
                inside = true;
            } else if inside && let Some(v) = line.strip_prefix("Rss:") {
                return v.trim().trim_end_matches("kB").trim().parse().expect("Rss");
            }
        }
        panic!("no mapping at {addr:x}");
    }
}
