//! Every map of the object. The agent finds them by the names in
//! `guardian_common::maps` and fills the first three before attaching.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use guardian_common::{
    Counter, EgressRule, InodeKey, KernelConfig, MeasuredPath, NameKey, PathKey, ProtectedFile,
    ServiceDigest,
};

/// Protected files by inode.
#[map(name = "GUARDIAN_PROTECTED")]
pub static PROTECTED: HashMap<InodeKey, ProtectedFile> = HashMap::with_max_entries(16384, 0);

/// Executables allowed to write protected files, by inode.
#[map(name = "GUARDIAN_WRITERS")]
pub static WRITERS: HashMap<InodeKey, u32> = HashMap::with_max_entries(1024, 0);

/// Struct offsets and mode (index 0).
#[map(name = "GUARDIAN_CONFIG")]
pub static CONFIG: Array<KernelConfig> = Array::with_max_entries(1, 0);

/// Events to the agent. The agent may resize it at load time.
#[map(name = "GUARDIAN_EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Counters, indexed by `guardian_common::Counter`.
#[map(name = "GUARDIAN_COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

/// Executables of the inference service, by inode.
#[map(name = "GUARDIAN_SERVICE")]
pub static SERVICE: HashMap<InodeKey, u32> = HashMap::with_max_entries(64, 0);

/// Files the service may execute or map executable, by inode.
#[map(name = "GUARDIAN_EXEC")]
pub static EXEC: HashMap<InodeKey, u32> = HashMap::with_max_entries(16384, 0);

/// Directory entries nobody may create.
#[map(name = "GUARDIAN_NAMES")]
pub static NAMES: HashMap<NameKey, u32> = HashMap::with_max_entries(256, 0);

/// IPv4 egress allowlist.
#[map(name = "GUARDIAN_EGRESS4")]
pub static EGRESS4: LpmTrie<[u8; 4], EgressRule> = LpmTrie::with_max_entries(1024, 0);

/// IPv6 egress allowlist.
#[map(name = "GUARDIAN_EGRESS6")]
pub static EGRESS6: LpmTrie<[u8; 16], EgressRule> = LpmTrie::with_max_entries(1024, 0);

/// Loader variables seen in an `execve` in flight, by pid_tgid.
#[map(name = "GUARDIAN_PENDING_PRELOAD")]
pub static PENDING_PRELOAD: LruHashMap<u64, u32> = LruHashMap::with_max_entries(4096, 0);

/// `envp` of an `execve` in flight whose environment was not fully
/// readable, by pid_tgid.
#[map(name = "GUARDIAN_PENDING_ENVP")]
pub static PENDING_ENVP: LruHashMap<u64, u64> = LruHashMap::with_max_entries(4096, 0);

/// What the guard was loaded with (see `guardian_common::maps::AUTH`):
/// kept in the kernel, where only guardian's executable can reach it.
#[map(name = "GUARDIAN_AUTH")]
pub static AUTH: Array<[u8; 32]> = Array::with_max_entries(10, 0);

/// The service's executables by content.
#[map(name = "GUARDIAN_SERVICE_DIGESTS")]
pub static SERVICE_DIGESTS: Array<ServiceDigest> = Array::with_max_entries(ServiceDigest::MAX, 0);

/// Open files already reported, by `struct file *` (see
/// `guardian_common::maps::REPORTED_FILES`).
#[map(name = "GUARDIAN_REPORTED")]
pub static REPORTED: LruHashMap<u64, u32> = LruHashMap::with_max_entries(4096, 0);

/// Protected files and tree directories by absolute path (see
/// `guardian_common::maps::MEASURED_PATHS`). Not preallocated: a key is
/// 256 bytes, and most boards protect a handful of files.
#[map(name = "GUARDIAN_PATHS")]
pub static MEASURED_PATHS: HashMap<PathKey, MeasuredPath> =
    HashMap::with_max_entries(MEASURED_PATHS_MAX, BPF_F_NO_PREALLOC);

/// Where `file_open.rs` builds the paths it looks up: the `d_path`
/// buffer (a key and as much again, see there) and the directory's key.
#[repr(C)]
pub struct PathScratch {
    /// The path, then zeros: a key.
    pub key: PathKey,
    /// The rest of the `d_path` buffer.
    pub tail: [u8; PathKey::LEN],
    /// The path of the file's directory, then zeros.
    pub parent: PathKey,
}

/// One [`PathScratch`] per CPU (a program runs on one CPU from start to
/// end; 768 bytes do not fit a 512-byte BPF stack).
#[map(name = "GUARDIAN_PATH_SCRATCH")]
pub static PATH_SCRATCH: PerCpuArray<PathScratch> = PerCpuArray::with_max_entries(1, 0);

/// Entries of [`MEASURED_PATHS`]: the protected files and the directories.
const MEASURED_PATHS_MAX: u32 = 16384 + 4096;
/// `BPF_F_NO_PREALLOC` (`include/uapi/linux/bpf.h`).
const BPF_F_NO_PREALLOC: u32 = 1;

const _: () = {
    // The names above must be the shared ones; attribute arguments cannot
    // take a const, so check them here instead.
    use guardian_common::maps as m;
    assert!(eq(m::PROTECTED_FILES, "GUARDIAN_PROTECTED"));
    assert!(eq(m::ALLOWED_WRITERS, "GUARDIAN_WRITERS"));
    assert!(eq(m::CONFIG, "GUARDIAN_CONFIG"));
    assert!(eq(m::EVENTS, "GUARDIAN_EVENTS"));
    assert!(eq(m::COUNTERS, "GUARDIAN_COUNTERS"));
    assert!(eq(m::SERVICE_EXES, "GUARDIAN_SERVICE"));
    assert!(eq(m::ALLOWED_EXEC, "GUARDIAN_EXEC"));
    assert!(eq(m::PROTECTED_NAMES, "GUARDIAN_NAMES"));
    assert!(eq(m::EGRESS_V4, "GUARDIAN_EGRESS4"));
    assert!(eq(m::EGRESS_V6, "GUARDIAN_EGRESS6"));
    assert!(eq(m::PENDING_PRELOAD, "GUARDIAN_PENDING_PRELOAD"));
    assert!(eq(m::PENDING_ENVP, "GUARDIAN_PENDING_ENVP"));
    assert!(eq(m::AUTH, "GUARDIAN_AUTH"));
    assert!(eq(m::SERVICE_DIGESTS, "GUARDIAN_SERVICE_DIGESTS"));
    assert!(eq(m::REPORTED_FILES, "GUARDIAN_REPORTED"));
    assert!(eq(m::MEASURED_PATHS, "GUARDIAN_PATHS"));
};

const fn eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}
