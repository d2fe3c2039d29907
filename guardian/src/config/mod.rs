//! The agent's configuration: one TOML file (default
//! `/etc/guardian/guardian.toml`; the documented sample is
//! `guardian/guardian.toml.sample`), then `GUARDIAN_*` environment variables,
//! then command-line flags. Unknown keys are errors, not ignored, so a typo
//! cannot silently disable protection.

mod policy;
mod report;
pub use policy::{FailModeSetting, PolicyConfig};
pub use report::ReportConfig;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Default location of the config file.
pub const DEFAULT_PATH: &str = "/etc/guardian/guardian.toml";

/// Which enforcement the agent asks for.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ModeRequest {
    /// Enforce if the kernel can (BPF LSM attaches), otherwise detect, and
    /// say why.
    #[default]
    Auto,
    /// Enforce or refuse to start.
    Enforce,
    /// Report only, even where the kernel could deny.
    Detect,
}

impl std::str::FromStr for ModeRequest {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "enforce" => Ok(Self::Enforce),
            "detect" => Ok(Self::Detect),
            other => Err(format!(
                "unknown mode {other:?} (expected auto, enforce or detect)"
            )),
        }
    }
}

/// `[guard]`: what is protected and who may change it.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GuardConfig {
    /// Enforcement mode.
    #[serde(default)]
    pub mode: ModeRequest,
    /// Files (or directories, whose regular files are protected,
    /// recursively) that nobody but an allowed writer may open for writing.
    /// Required by `guardian run`.
    #[serde(default)]
    pub protected: Vec<PathBuf>,
    /// Executables allowed to write protected files. Identified by the
    /// inode of the binary when the agent starts, so replacing the binary
    /// (new inode) revokes the permission.
    #[serde(default)]
    pub allowed_writers: Vec<PathBuf>,
    /// Paths that must not come into existence: nobody may create them, or
    /// rename or link a file to them. If one exists when the agent starts,
    /// it is protected like a protected file instead.
    #[serde(default = "default_protected_names")]
    pub protected_names: Vec<PathBuf>,
    /// Hooks that must run in their enforcing form; if the kernel cannot
    /// deny one of them, the agent refuses to start instead of degrading
    /// (names as in `guardian status`: `crate::hooks::HOOKS`).
    #[serde(default)]
    pub require: Vec<String>,
    /// Protect guardian's own files (its binary, this config, keys, the
    /// manifest, the eBPF pins) so that only guardian itself may change
    /// them.
    #[serde(default = "default_true")]
    pub protect_self: bool,
    /// What to do when a rule is broken and the kernel could not deny it
    /// (detect mode): `alert` (report only) or `kill` (report, then
    /// SIGKILL the process).
    #[serde(default)]
    pub response: Response,
    /// Where BPF LSM cannot attach, also watch system calls (open, write,
    /// ftruncate, mmap, execve; connect where no cgroup v2 hierarchy is
    /// mounted) with a raw tracepoint, reported
    /// after the fact. It sees what the userspace rungs cannot (writes
    /// through shared mappings, anything done while the agent is down),
    /// but puts every system call of every process on the kernel's slow
    /// path: +19 % to +58 % per call on the reference machine
    /// (`docs/guard-benchmarks.md`). Off by default.
    #[serde(default)]
    pub syscall_detect: bool,
    /// Where the maps and links are pinned, so that enforcement survives
    /// the agent (a bpffs directory).
    #[serde(default = "default_pin_dir")]
    pub pin_dir: PathBuf,
    /// Public keys (PEM) of the operators who may switch the guard off:
    /// `guardian stop --unload` needs a token signed by one of them for
    /// this boot of this device (`guardian unload-token`). Fixed when the
    /// guard is loaded; changing them takes an unload.
    #[serde(default)]
    pub unload_keys: Vec<PathBuf>,
    /// Maintenance mode: anyone with root may unload the guard without a
    /// token. For development images only; said at start, in `guardian
    /// status` and in the evidence.
    #[serde(default)]
    pub unload_without_token: bool,
}

impl Default for GuardConfig {
    fn default() -> Self {
        Self {
            mode: ModeRequest::default(),
            protected: Vec::new(),
            allowed_writers: Vec::new(),
            protected_names: default_protected_names(),
            require: Vec::new(),
            protect_self: true,
            response: Response::default(),
            syscall_detect: false,
            pin_dir: default_pin_dir(),
            unload_keys: Vec::new(),
            unload_without_token: false,
        }
    }
}

/// The answer to a violation the kernel did not deny.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Response {
    /// Report only.
    #[default]
    Alert,
    /// Report, then kill the offending process.
    Kill,
}

fn default_true() -> bool {
    true
}

fn default_protected_names() -> Vec<PathBuf> {
    vec![PathBuf::from("/etc/ld.so.preload")]
}

/// Default pin directory.
pub fn default_pin_dir() -> PathBuf {
    PathBuf::from("/sys/fs/bpf/guardian")
}

/// One egress allowlist entry.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EgressEntry {
    /// Network, `a.b.c.d/len` or `x:y::z/len` (a bare address is `/32` or
    /// `/128`).
    pub cidr: String,
    /// Ports: numbers or `"low-high"` ranges as strings; empty is any
    /// port. At most 8 per entry.
    #[serde(default)]
    pub ports: Vec<PortSpec>,
}

/// A port or a port range in an egress entry.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum PortSpec {
    /// One port.
    Port(i64),
    /// `"low-high"`, or one port as a string.
    Range(String),
}

/// `[service]`: the inference service, and the rules for its process.
/// With no `exe`, the process rules are off.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// The service's executables (by inode at start).
    #[serde(default)]
    pub exe: Vec<PathBuf>,
    /// Besides itself, the files the service may execute. Set
    /// `exec_allowlist = false` to let it execute anything.
    #[serde(default)]
    pub allowed_exec: Vec<PathBuf>,
    /// Turn the exec allowlist on.
    #[serde(default = "default_true")]
    pub exec_allowlist: bool,
    /// Directories whose files (at start) the service may map executable:
    /// its loader and shared libraries. Empty: any library.
    #[serde(default)]
    pub library_dirs: Vec<PathBuf>,
    /// Where the service may connect. Absent: anywhere. Present (even
    /// empty): only there.
    #[serde(default)]
    pub egress: Option<Vec<EgressEntry>>,
    /// Nobody may ptrace the service or write its memory.
    #[serde(default = "default_true")]
    pub deny_ptrace: bool,
    /// Refuse `LD_PRELOAD`, `LD_LIBRARY_PATH` and `LD_AUDIT` on exec of, or
    /// by, the service.
    #[serde(default = "default_true")]
    pub deny_preload: bool,
    /// Measure at use: the service's opens of protected names must reach
    /// the measured inodes (`guardian_common::rules::MEASURED_OPEN`).
    #[serde(default = "default_true")]
    pub measured_open: bool,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            exe: Vec::new(),
            allowed_exec: Vec::new(),
            exec_allowlist: true,
            library_dirs: Vec::new(),
            egress: None,
            deny_ptrace: true,
            deny_preload: true,
            measured_open: true,
        }
    }
}

/// `[events]`: where security events go.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    /// `-` for standard output, or a file that JSON lines are appended to.
    #[serde(default = "default_events_output")]
    pub output: String,
    /// Size of the kernel-to-agent ring buffer in KiB (a power of two,
    /// at least 4). A full buffer drops events; drops are counted and shown.
    #[serde(default = "default_ring_kib")]
    pub ring_buffer_kib: u32,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            output: default_events_output(),
            ring_buffer_kib: default_ring_kib(),
        }
    }
}

fn default_events_output() -> String {
    "-".to_owned()
}

pub(crate) fn default_ring_kib() -> u32 {
    // 2 MiB: about 13,800 events of 152 bytes. The reader copies records
    // out as soon as it runs (events/reader.rs), so the ring only rides
    // out the time the agent is off the CPU: in bursts against the daemon
    // 2 MiB dropped nothing, as 4 MiB did, where 1 MiB dropped in six
    // bursts of eight (docs/footprint.md has the figures). Its pages are
    // mapped once (events/ring.rs), so it counts 2 MiB and two pages in
    // the agent's RSS.
    2048
}

/// `[status]`: where `guardian run` publishes its state for `guardian status`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StatusConfig {
    /// The status file (JSON, rewritten atomically).
    #[serde(default = "default_status_path")]
    pub path: PathBuf,
    /// How often counters are refreshed, in seconds.
    #[serde(default = "default_status_interval")]
    pub interval_secs: u64,
}

impl Default for StatusConfig {
    fn default() -> Self {
        Self {
            path: default_status_path(),
            interval_secs: default_status_interval(),
        }
    }
}

/// Default status file.
pub fn default_status_path() -> PathBuf {
    PathBuf::from("/run/guardian/status.json")
}

fn default_status_interval() -> u64 {
    2
}

/// `[measure]`: the boot-time measurement of models (`guardian measure`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MeasureConfig {
    /// The signed model manifest.
    #[serde(default = "default_manifest")]
    pub manifest: PathBuf,
    /// Its detached signature; `<manifest>.sig` when not set.
    #[serde(default)]
    pub signature: Option<PathBuf>,
    /// Public keys (PEM) allowed to sign manifests and model signatures;
    /// a file of CA certificates (PEM) trusts model signatures made with a
    /// certificate chain leading to them.
    #[serde(default)]
    pub trusted_keys: Vec<PathBuf>,
    /// An OpenSSF model signature (`model_signing sign`'s Sigstore bundle)
    /// used as the golden reference instead of `manifest`.
    #[serde(default)]
    pub model_signature: Option<PathBuf>,
    /// The model directory `model_signature` signs (required with it).
    #[serde(default)]
    pub model_dir: Option<PathBuf>,
    /// The PCR a model signature's measurements go into (a manifest names
    /// its own).
    #[serde(default = "default_model_pcr")]
    pub model_pcr: u32,
    /// Accept a manifest without a valid signature (development only; every
    /// run warns, and the measurement log records it).
    #[serde(default)]
    pub allow_unsigned: bool,
    /// The measurement log.
    #[serde(default = "default_measure_log")]
    pub log: PathBuf,
    /// How to reach the TPM; see `tpm::choose_tcti` for the fallbacks.
    #[serde(default)]
    pub tcti: Option<String>,
    /// Hashing threads; 0 means one per core.
    #[serde(default)]
    pub threads: usize,
}

impl Default for MeasureConfig {
    fn default() -> Self {
        Self {
            manifest: default_manifest(),
            signature: None,
            trusted_keys: Vec::new(),
            model_signature: None,
            model_dir: None,
            model_pcr: default_model_pcr(),
            allow_unsigned: false,
            log: default_measure_log(),
            tcti: None,
            threads: 0,
        }
    }
}

impl MeasureConfig {
    /// The PCR of the golden reference when it is a model signature (a
    /// manifest names its own).
    pub fn model_signature_pcr(&self) -> Option<u32> {
        self.model_signature.as_ref().map(|_| self.model_pcr)
    }

    /// The signature file in effect.
    pub fn signature_path(&self) -> PathBuf {
        self.signature
            .clone()
            .unwrap_or_else(|| crate::manifest::signature_path(&self.manifest))
    }
}

fn default_model_pcr() -> u32 {
    crate::manifest::DEFAULT_PCR
}

fn default_manifest() -> PathBuf {
    PathBuf::from("/etc/guardian/manifest.toml")
}

fn default_measure_log() -> PathBuf {
    PathBuf::from("/run/guardian/measurements.log")
}

/// `[attest]`: TPM quotes for a verifier (`guardian quote`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AttestConfig {
    /// Persistent handle of the attestation key (created there on first use).
    #[serde(default = "default_ak_handle")]
    pub ak_handle: u32,
    /// PCRs (SHA-256 bank) to quote.
    #[serde(default = "default_quote_pcrs")]
    pub pcrs: Vec<u32>,
    /// `guardian run` re-measures every manifest model this often, in
    /// seconds (0: only when a write is seen); a changed digest is extended.
    #[serde(default = "default_remeasure_secs")]
    pub remeasure_secs: u64,
}

impl Default for AttestConfig {
    fn default() -> Self {
        Self {
            ak_handle: default_ak_handle(),
            pcrs: default_quote_pcrs(),
            remeasure_secs: default_remeasure_secs(),
        }
    }
}

fn default_ak_handle() -> u32 {
    // The TCG's provisioning guidance reserves 0x81010000-0x8101FFFF for
    // endorsement-hierarchy keys; 0x81010001 is the EK's customary slot.
    0x8101_0002
}

fn default_remeasure_secs() -> u64 {
    3600
}

fn default_quote_pcrs() -> Vec<u32> {
    vec![crate::manifest::DEFAULT_PCR]
}

/// `[kernel]`: where to find what the kernel does not publish itself.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KernelSettings {
    /// BTF describing the running kernel, for the struct offsets the eBPF
    /// programs need. The kernel's own (`CONFIG_DEBUG_INFO_BTF`) by default;
    /// for a kernel without it, a BTF file generated for exactly that build.
    #[serde(default = "default_btf")]
    pub btf: PathBuf,
}

impl Default for KernelSettings {
    fn default() -> Self {
        Self { btf: default_btf() }
    }
}

fn default_btf() -> PathBuf {
    PathBuf::from(crate::btf::VMLINUX_BTF)
}

/// The whole configuration.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[guard]`.
    #[serde(default)]
    pub guard: GuardConfig,
    /// `[service]`.
    #[serde(default)]
    pub service: ServiceConfig,
    /// `[measure]`.
    #[serde(default)]
    pub measure: MeasureConfig,
    /// `[attest]`.
    #[serde(default)]
    pub attest: AttestConfig,
    /// `[events]`.
    #[serde(default)]
    pub events: EventsConfig,
    /// `[status]`.
    #[serde(default)]
    pub status: StatusConfig,
    /// `[kernel]`.
    #[serde(default)]
    pub kernel: KernelSettings,
    /// `[policy]`.
    #[serde(default)]
    pub policy: PolicyConfig,
    /// `[report]`.
    #[serde(default)]
    pub report: ReportConfig,
    /// The file this was loaded from (not a key of the file).
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// Errors loading the configuration. Each names the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("invalid config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said, with line and column.
        message: String,
    },
    /// A value is out of range.
    #[error("invalid config {path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// An environment override is malformed.
    #[error("invalid environment variable {name}: {message}")]
    Env {
        /// The variable.
        name: &'static str,
        /// What is wrong.
        message: String,
    },
}

impl Config {
    /// guardian's own files, which only guardian may change: its binary,
    /// this config, the manifest, its signature and keys, the measurement
    /// log, the policy signing keys; with reporting on, the spool
    /// directory, and with pushed policy sets their state directory (a directory here
    /// is guarded as a tree: only guardian creates, writes, renames or
    /// removes anything in it).
    pub fn own_files(&self) -> Vec<PathBuf> {
        let mut own: Vec<PathBuf> = std::fs::read_link("/proc/self/exe").into_iter().collect();
        own.extend(self.source.clone());
        let m = &self.measure;
        own.push(m.manifest.clone());
        own.push(m.signature_path());
        own.extend(m.model_signature.iter().cloned());
        own.extend(m.trusted_keys.iter().cloned());
        own.extend(self.guard.unload_keys.iter().cloned());
        own.push(m.log.clone());
        own.extend(self.report.password_file.iter().cloned());
        let r = &self.report;
        own.extend(
            r.tls_ca
                .iter()
                .chain(&r.tls_cert)
                .chain(&r.tls_key)
                .cloned(),
        );
        if r.enabled() {
            own.push(r.spool_dir.clone());
        }
        // The keys that sign policies are keys like the others; with pushed
        // sets, their tree (the sets and the floor file) is guardian's own.
        own.extend(self.policy.trusted_keys.iter().cloned());
        if self.policy.follows_group() {
            // Each directory a tree of its own: the set in force (through
            // its pointer, resolved anew whenever the targets are) as much
            // as the floor file and the pointer beside it.
            let p = &self.policy;
            own.extend([p.state_dir.clone(), p.sets_dir(), p.current_set()]);
        }
        own
    }

    /// Load `path`, then apply `GUARDIAN_*` overrides from `env`.
    pub fn load(path: &Path, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Self::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })?;
        config.apply_env(env)?;
        config.source = Some(path.to_owned());
        config.validate().map_err(|message| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        })?;
        // Relative paths are relative to the config file, like systemd
        // units and most daemons do it, not to wherever the agent started.
        let base = path.parent().unwrap_or(Path::new("/"));
        if config.events.output != "-" && Path::new(&config.events.output).is_relative() {
            config.events.output = base.join(&config.events.output).display().to_string();
        }
        let m = &mut config.measure;
        let svc = &mut config.service;
        for p in config
            .guard
            .protected
            .iter_mut()
            .chain(config.guard.allowed_writers.iter_mut())
            .chain(config.guard.protected_names.iter_mut())
            .chain(svc.exe.iter_mut())
            .chain(svc.allowed_exec.iter_mut())
            .chain(svc.library_dirs.iter_mut())
            .chain(m.trusted_keys.iter_mut())
            .chain([&mut m.manifest, &mut m.log, &mut config.status.path])
            .chain(m.signature.iter_mut())
            .chain(m.model_signature.iter_mut())
            .chain(m.model_dir.iter_mut())
            .chain([&mut config.policy.dir, &mut config.policy.state_dir])
            .chain(config.policy.trusted_keys.iter_mut())
            .chain([&mut config.report.spool_dir])
            .chain(config.report.password_file.iter_mut())
            .chain(config.report.tls_ca.iter_mut())
            .chain(config.report.tls_cert.iter_mut())
            .chain(config.report.tls_key.iter_mut())
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(config)
    }

    /// Parse TOML text (no environment, no path resolution).
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().replace('\n', " "))
    }

    fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(v) = env("GUARDIAN_MODE") {
            self.guard.mode = v.parse().map_err(|message| ConfigError::Env {
                name: "GUARDIAN_MODE",
                message,
            })?;
        }
        if let Some(v) = env("GUARDIAN_EVENTS_OUTPUT") {
            self.events.output = v;
        }
        if let Some(v) = env("GUARDIAN_STATUS_PATH") {
            self.status.path = PathBuf::from(v);
        }
        if let Some(v) = env("GUARDIAN_KERNEL_BTF") {
            self.kernel.btf = PathBuf::from(v);
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), String> {
        self.report.validate()?;
        let kib = self.events.ring_buffer_kib;
        if kib < 4 || !kib.is_power_of_two() {
            return Err(format!(
                "[events] ring_buffer_kib = {kib}: must be a power of two, at least 4"
            ));
        }
        if self.status.interval_secs == 0 {
            return Err("[status] interval_secs must be at least 1".to_owned());
        }
        let m = &self.measure;
        if m.model_signature.is_some() != m.model_dir.is_some() {
            return Err(
                "[measure] model_signature and model_dir go together: name both or neither"
                    .to_owned(),
            );
        }
        if m.model_signature.is_some() {
            crate::manifest::check_pcr(m.model_pcr)
                .map_err(|e| format!("[measure] model_pcr: {e}"))?;
        }
        for name in &self.guard.require {
            if !crate::hooks::HOOKS.contains(&name.as_str()) {
                return Err(format!(
                    "[guard] require: unknown hook {name:?} (known: {})",
                    crate::hooks::HOOKS.join(", ")
                ));
            }
        }
        if self
            .guard
            .pin_dir
            .file_name()
            .is_none_or(|n| n.as_encoded_bytes().contains(&b'.'))
        {
            return Err(format!(
                "[guard] pin_dir = {}: needs a final name without dots (a BPF filesystem refuses dots)",
                self.guard.pin_dir.display()
            ));
        }
        for n in &self.guard.protected_names {
            let ok = n
                .file_name()
                .is_some_and(|f| f.len() < guardian_common::NameKey::LEN)
                && n.parent().is_some();
            if !ok {
                return Err(format!(
                    "[guard] protected_names: {}: needs a directory and a file name shorter than {} bytes",
                    n.display(),
                    guardian_common::NameKey::LEN
                ));
            }
        }
        for e in self.service.egress.iter().flatten() {
            parse_egress(e).map_err(|m| format!("[service] egress: {m}"))?;
        }
        self.policy.validate()?;
        Ok(())
    }
}

/// Parse one egress entry: the network (address bits past the prefix must
/// be zero) and its ports.
pub fn parse_egress(
    e: &EgressEntry,
) -> Result<(std::net::IpAddr, u32, guardian_common::EgressRule), String> {
    let (addr, len) = match e.cidr.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (e.cidr.as_str(), None),
    };
    let ip: std::net::IpAddr = addr
        .parse()
        .map_err(|_| format!("{:?}: not an IPv4 or IPv6 address", e.cidr))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(l) => l
            .parse::<u32>()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("{:?}: prefix length must be 0..={max}", e.cidr))?,
    };
    let bits: u128 = match ip {
        std::net::IpAddr::V4(a) => u128::from(u32::from(a)) << 96,
        std::net::IpAddr::V6(a) => u128::from(a),
    };
    let host = if len == 0 { bits } else { bits << len };
    if host != 0 {
        return Err(format!(
            "{:?}: address has bits set past the /{len} prefix",
            e.cidr
        ));
    }
    let mut rule = guardian_common::EgressRule::default();
    if e.ports.is_empty() {
        rule.ports[0] = [0, u16::MAX];
        rule.count = 1;
    }
    if e.ports.len() > guardian_common::EgressRule::MAX_PORTS {
        return Err(format!(
            "{:?}: {} port entries, at most {}",
            e.cidr,
            e.ports.len(),
            guardian_common::EgressRule::MAX_PORTS
        ));
    }
    for p in &e.ports {
        let bad = || {
            format!(
                "{:?}: port {p:?} must be a number 1-65535 or a \"low-high\" string",
                e.cidr
            )
        };
        let range = match p {
            PortSpec::Port(n) => {
                let n = u16::try_from(*n).ok().filter(|n| *n > 0).ok_or_else(bad)?;
                [n, n]
            }
            PortSpec::Range(s) => {
                let (lo, hi) = s.split_once('-').unwrap_or((s, s));
                let lo: u16 = lo.trim().parse().map_err(|_| bad())?;
                let hi: u16 = hi.trim().parse().map_err(|_| bad())?;
                if lo == 0 || lo > hi {
                    return Err(bad());
                }
                [lo, hi]
            }
        };
        rule.ports[rule.count as usize] = range;
        rule.count += 1;
    }
    Ok((ip, len, rule))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "[guard]\nprotected = [\"/opt/models\"]\n";

    #[test]
    fn defaults() {
        let c = Config::parse(MINIMAL).unwrap();
        assert_eq!(c.guard.mode, ModeRequest::Auto);
        assert!(c.guard.allowed_writers.is_empty());
        assert_eq!(c.events.output, "-");
        assert_eq!(c.events.ring_buffer_kib, 2048);
        assert_eq!(c.status.path, default_status_path());
    }

    #[test]
    fn unknown_keys_are_errors() {
        let e = Config::parse("[guard]\nprotected = []\nprotectd = []\n").unwrap_err();
        assert!(e.contains("protectd"), "{e}");
    }

    #[test]
    fn sample_config_parses() {
        let text = include_str!("../../guardian.toml.sample");
        let c = Config::parse(text).unwrap();
        assert!(!c.guard.protected.is_empty());
    }

    #[test]
    fn load_names_the_file_and_resolves_relative_paths() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.toml");
        std::fs::write(&path, "[guard]\nprotected = [\"m.onnx\"]\n").unwrap();
        let c = Config::load(&path, |_| None).unwrap();
        assert_eq!(c.guard.protected, vec![dir.path().join("m.onnx")]);

        std::fs::write(&path, "[guard\n").unwrap();
        let e = Config::load(&path, |_| None).unwrap_err().to_string();
        assert!(e.contains(&*path.to_string_lossy()), "{e}");

        let missing = dir.path().join("nope.toml");
        let e = Config::load(&missing, |_| None).unwrap_err().to_string();
        assert!(e.contains("nope.toml"), "{e}");
    }

    #[test]
    fn env_overrides_and_validation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.toml");
        std::fs::write(&path, MINIMAL).unwrap();
        let c = Config::load(&path, |k| (k == "GUARDIAN_MODE").then(|| "detect".into())).unwrap();
        assert_eq!(c.guard.mode, ModeRequest::Detect);
        let e = Config::load(&path, |k| (k == "GUARDIAN_MODE").then(|| "loud".into()));
        assert!(matches!(e, Err(ConfigError::Env { .. })));

        std::fs::write(&path, format!("{MINIMAL}[events]\nring_buffer_kib = 100\n")).unwrap();
        assert!(matches!(
            Config::load(&path, |_| None),
            Err(ConfigError::Invalid { .. })
        ));
    }
}
