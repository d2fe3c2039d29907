//! `guardian status`: what the running agent publishes about itself (mode
//! in force and why, kernel features, hooks, counters, warnings), written
//! atomically to a JSON file that the `status` command reads.

use std::{
    collections::BTreeMap,
    io::Write as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{
    hooks::{HookState, Mode},
    kernel::KernelFeatures,
};

/// What this boot's measurement log says (from `guardian measure`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct MeasuredBoot {
    /// The log file.
    pub log: String,
    /// Records written this boot (extends and notes).
    pub records: usize,
    /// Model measurements extended this boot.
    pub models_extended: usize,
    /// Models that did not match their golden digest.
    pub mismatches: Vec<String>,
    /// The manifest was accepted without a valid signature.
    pub unsigned: bool,
    /// Measurements were logged without a TPM (`--no-tpm`).
    pub without_tpm: bool,
    /// The measurements went into a software TPM.
    #[serde(default)]
    pub software_tpm: bool,
    /// Tamper attempts recorded (and extended) this boot.
    #[serde(default)]
    pub tamper_records: usize,
    /// The log could not be read.
    pub error: Option<String>,
}

impl MeasuredBoot {
    /// Summarise this boot's part of a measurement log (read whole; the
    /// daemon keeps a [`MeasuredBootWatch`] instead).
    pub fn from_log(path: &Path) -> Self {
        MeasuredBootWatch::new(path).refresh().clone()
    }

    /// Summarise this boot's records in `contents`.
    pub fn add(&mut self, contents: &crate::evidence::Contents, boot: &str) {
        let mut golden = Golden::default();
        for r in contents.this_boot(boot) {
            self.add_record(&mut golden, r);
        }
    }

    /// Count one record of this boot; `golden` is the manifest in force,
    /// as the records before it left it.
    fn add_record(&mut self, golden: &mut Golden, r: &crate::evidence::Record) {
        use crate::evidence::Event;
        self.records += 1;
        match &r.event {
            Event::Manifest(m) => {
                self.unsigned = m.signature.is_empty();
                self.mismatches.clear();
                self.without_tpm = !r.extended;
                *golden = golden_of(m);
            }
            Event::Model(m) => {
                if r.extended {
                    self.models_extended += 1;
                }
                let ok = golden
                    .get(&m.file)
                    .is_some_and(|(d, size)| *d == m.sha256 && size.is_none_or(|s| s == m.size));
                self.mismatches.retain(|f| *f != m.file);
                if !ok {
                    self.mismatches.push(m.file.clone());
                }
            }
            Event::Tamper(_) => self.tamper_records += 1,
            Event::Note(n) => {
                self.software_tpm |= n.text.contains("software TPM");
            }
            // Policy loads are listed by the policy engine's own status;
            // the guard's by the guard's.
            Event::Guard(_) | Event::Policy(_) | Event::PolicySet(_) => {}
        }
    }

    /// Conditions to warn about.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if let Some(e) = &self.error {
            w.push(format!("measured boot: {e}"));
        } else if self.records == 0 {
            w.push(format!(
                "measured boot: no measurements this boot in {} (guardian measure did not run)",
                self.log
            ));
        }
        if self.unsigned {
            w.push("measured boot: the manifest was accepted UNSIGNED".to_owned());
        }
        if self.software_tpm {
            w.push("measured boot: the TPM is a software TPM, not rooted in hardware".to_owned());
        }
        if self.without_tpm {
            w.push("measured boot: measured with --no-tpm, nothing is in a TPM".to_owned());
        }
        for m in &self.mismatches {
            w.push(format!("measured boot: {m} does not match the manifest"));
        }
        w
    }
}

/// The golden digest and size of each model of the manifest in force (no
/// size for a model signature, which signs none).
type Golden = std::collections::HashMap<String, (String, Option<u64>)>;

/// The golden reference a manifest record puts in force, as the device
/// recorded it (the status shows the device's own view; the verifier
/// checks signatures). A model signature's statement is read without its
/// signature, which the boot step checked.
fn golden_of(m: &crate::evidence::event::ManifestEvent) -> Golden {
    use guardian_attest::model_sig;
    if let Some(dir) = &m.model_dir {
        return model_sig::parse_bundle(m.text.as_bytes())
            .and_then(|b| model_sig::parse_statement(&b.payload))
            .map(|st| {
                st.resources
                    .into_iter()
                    .map(|r| {
                        let file = std::path::Path::new(dir).join(&r.name);
                        (file.display().to_string(), (r.sha256, None))
                    })
                    .collect()
            })
            .unwrap_or_default();
    }
    crate::manifest::Manifest::parse(&m.text)
        .map(|mf| {
            mf.models
                .into_iter()
                .map(|e| (e.path.display().to_string(), (e.sha256, Some(e.size))))
                .collect()
        })
        .unwrap_or_default()
}

/// This boot's [`MeasuredBoot`] summary, kept current from what the log
/// gains: each [`refresh`](Self::refresh) reads only the records appended
/// since the last one (an [`evidence::tail::Tail`](crate::evidence::tail::Tail)),
/// so publishing the status costs the same on the first day as after a
/// month of tamper records.
#[derive(Debug)]
pub struct MeasuredBootWatch {
    tail: crate::evidence::tail::Tail,
    boot: String,
    summary: MeasuredBoot,
    golden: Golden,
}

impl MeasuredBootWatch {
    /// Follow the log at `path`; nothing is read before the first
    /// [`refresh`](Self::refresh).
    pub fn new(path: &Path) -> Self {
        Self {
            tail: crate::evidence::tail::Tail::new(path),
            boot: crate::evidence::boot_id(),
            summary: Self::empty(path),
            golden: Golden::default(),
        }
    }

    fn empty(path: &Path) -> MeasuredBoot {
        MeasuredBoot {
            log: path.display().to_string(),
            ..MeasuredBoot::default()
        }
    }

    /// Read what was appended and give the summary. A log that cannot be
    /// read gives a summary that only says why (as a whole read would);
    /// the next refresh reads it again from the start.
    pub fn refresh(&mut self) -> &MeasuredBoot {
        if self.summary.error.is_some() {
            self.tail.reset();
            self.summary = Self::empty(self.tail.path());
            self.golden.clear();
        }
        match self.tail.read_new() {
            Ok(new) => {
                if new.restarted {
                    self.summary = Self::empty(self.tail.path());
                    self.golden.clear();
                }
                for r in new.records.iter().filter(|r| r.boot_id == self.boot) {
                    self.summary.add_record(&mut self.golden, r);
                }
            }
            Err(e) => {
                self.summary = Self::empty(self.tail.path());
                self.summary.error = Some(e.to_string());
            }
        }
        &self.summary
    }
}

/// Everything `guardian status` shows.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Status {
    /// guardian's version.
    pub version: String,
    /// The agent's pid.
    pub pid: u32,
    /// When it started (RFC 3339).
    pub started: String,
    /// When this file was last written.
    pub updated: String,
    /// Mode asked for in the config.
    pub requested_mode: String,
    /// Mode in force.
    pub mode: Mode,
    /// Why that mode.
    pub mode_reason: String,
    /// Kernel findings.
    pub kernel: KernelFeatures,
    /// Every hook and what is in force for it.
    pub hooks: Vec<HookState>,
    /// Where the guard is pinned (it survives the agent), if it is.
    #[serde(default)]
    pub pinned: Option<String>,
    /// The agent adopted a guard left pinned by an earlier agent.
    #[serde(default)]
    pub adopted: bool,
    /// Who may unload the guard, in words.
    #[serde(default)]
    pub unload: String,
    /// This boot's id (what an unload token is made for).
    #[serde(default)]
    pub boot_id: String,
    /// The running guard's id (what an unload token names: it unloads
    /// this load of the guard once).
    #[serde(default)]
    pub guard_id: String,
    /// Number of protected files.
    pub protected_files: usize,
    /// Number of allowed writer executables.
    pub allowed_writers: usize,
    /// This boot's measured-boot summary.
    #[serde(default)]
    pub measured_boot: Option<MeasuredBoot>,
    /// The policy engine: the set in force, evaluations, failures, reloads
    /// (`crate::policy::PolicyStats`, kept as JSON so that a newer agent's
    /// fields never stop an older `guardian status` from reading the file).
    #[serde(default)]
    pub policies: Option<serde_json::Value>,
    /// Kernel counters (summed over CPUs) and agent counters.
    pub counters: BTreeMap<String, u64>,
    /// Degraded or insecure conditions, in words.
    pub warnings: Vec<String>,
    /// The attestor (the thread that records evidence): what an evidence
    /// bundle reports of it.
    #[serde(default)]
    pub attestor: Option<AgentState>,
    /// The fleet link: the spool and the broker (`None`: reporting off).
    #[serde(default)]
    pub report: Option<guardian_report::ReportStatus>,
    /// Pushed policy sets (`None`: the device follows no group).
    #[serde(default)]
    pub policy_sets: Option<crate::pushed::PushStatus>,
}

/// Errors reading or writing the status file.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// Writing failed.
    #[error("cannot write status file {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// No agent has published a status.
    #[error("guardian is not running (no status file at {path}: {source})")]
    NotRunning {
        /// The file.
        path: PathBuf,
        /// Why it could not be read.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a status document.
    #[error("malformed status file {path}: {source}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

impl Status {
    /// Write atomically (temporary file, fsync, rename), so a reader never
    /// sees a torn document.
    pub fn write(&self, path: &Path) -> Result<(), StatusError> {
        let err = |source| StatusError::Write {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let tmp = path.with_extension("json.tmp");
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        let body = serde_json::to_vec_pretty(self).map_err(|e| err(std::io::Error::other(e)))?;
        f.write_all(&body).map_err(err)?;
        f.write_all(b"\n").map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)
    }

    /// Read a status file.
    pub fn read(path: &Path) -> Result<Self, StatusError> {
        let text = std::fs::read(path).map_err(|source| StatusError::NotRunning {
            path: path.to_owned(),
            source,
        })?;
        serde_json::from_slice(&text).map_err(|source| StatusError::Malformed {
            path: path.to_owned(),
            source,
        })
    }

    /// True if the process that wrote this is still alive.
    pub fn agent_alive(&self) -> bool {
        Path::new(&format!("/proc/{}", self.pid)).exists()
    }

    /// What the evidence bundle says of the attestor: as published, and
    /// whether the agent is still alive.
    pub fn attestor_state(&self) -> AgentState {
        let mut a = self.attestor.clone().unwrap_or_default();
        a.running = self.agent_alive();
        a
    }

    /// Human-readable rendering.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let alive = if self.agent_alive() {
            "running"
        } else {
            "NOT RUNNING (stale status)"
        };
        s += &format!("guardian {}  pid {} {alive}\n", self.version, self.pid);
        s += &format!("  started  {}\n  updated  {}\n", self.started, self.updated);
        s += &format!(
            "mode: {} (requested: {})\n  {}\n",
            self.mode.as_str().to_uppercase(),
            self.requested_mode,
            self.mode_reason
        );
        let k = &self.kernel;
        s += &format!(
            "kernel: {} {}\n  BTF: {}\n  LSMs: {}\n  tracefs: {}\n",
            k.release,
            k.machine,
            if k.btf { "yes" } else { "no" },
            k.lsm
                .as_ref()
                .map(|l| l.join(","))
                .unwrap_or_else(|| "unknown (securityfs not mounted)".into()),
            k.tracefs.as_deref().unwrap_or("not mounted"),
        );
        s += "hooks:\n";
        for h in &self.hooks {
            s += &format!(
                "  {:<16} {:<11} {}\n",
                h.hook,
                h.mechanism.as_str().to_uppercase(),
                h.attached.join(" ")
            );
            if let Some(n) = &h.note {
                s += &format!("  {:<16} {:<11} ({n})\n", "", "");
            }
        }
        s += &match &self.pinned {
            Some(p) => format!(
                "pinned: {p}{} (enforcement survives the agent)\n",
                if self.adopted { ", adopted" } else { "" }
            ),
            None => "pinned: NO (enforcement stops with the agent)\n".to_owned(),
        };
        if !self.unload.is_empty() {
            s += &format!(
                "unload: {} (boot id {}, guard id {})\n",
                self.unload,
                self.boot_id,
                if self.guard_id.is_empty() {
                    "none"
                } else {
                    &self.guard_id
                }
            );
        }
        s += &format!(
            "protected files: {}   allowed writers: {}\n",
            self.protected_files, self.allowed_writers
        );
        if let Some(mb) = &self.measured_boot {
            s += &format!(
                "measured boot: {} model measurement(s) this boot, {} mismatch(es), {} tamper record(s){}{} ({})\n",
                mb.models_extended,
                mb.mismatches.len(),
                mb.tamper_records,
                if mb.unsigned {
                    ", UNSIGNED manifest"
                } else {
                    ""
                },
                if mb.without_tpm { ", NO TPM" } else { "" },
                mb.log
            );
        }
        s += "counters:\n";
        for (k, v) in &self.counters {
            s += &format!("  {k:<22} {v}\n");
        }
        match &self.report {
            None => s += "report: off (no [report] servers: events stay on this board)\n",
            Some(r) => {
                let l = &r.link;
                s += &format!(
                    "report: device {} -> {} {:?}{}\n",
                    r.device,
                    l.server.as_deref().unwrap_or("-"),
                    l.state,
                    l.last_error
                        .as_ref()
                        .map(|e| format!(" (last error: {e})"))
                        .unwrap_or_default()
                );
                let sp = &r.spool;
                let dropped: u64 = sp.dropped.iter().sum();
                s += &format!(
                    "  spool    {} record(s) waiting, {} of {} bytes, oldest seq {}, next seq {}, dropped {} (+{} queue), torn {} bytes\n",
                    sp.depth,
                    sp.bytes,
                    sp.max_bytes,
                    sp.oldest_seq
                        .map(|q| q.to_string())
                        .unwrap_or_else(|| "-".into()),
                    sp.next_seq,
                    dropped,
                    l.queue_drops,
                    sp.torn_bytes
                );
                if sp.lost > 0 {
                    s += &format!(
                        "  LOST     {} record(s) {}\n",
                        sp.lost,
                        guardian_report::spool::LOST_ON_DISK
                    );
                }
                s += &format!(
                    "  sent     {} batch(es), {} record(s) acknowledged, {} duplicate batch(es), {} resent late, {} retried after the stream was busy, {} reconnect(s); window {} (cut {} time(s))\n",
                    l.batches_sent,
                    l.records_acked,
                    l.duplicates,
                    l.resent,
                    l.busy,
                    l.reconnects,
                    l.window,
                    l.window_cuts
                );
                s += &format!(
                    "  asked    {} question(s) by the fleet (attestation, enrolment): {} answered, {} refused\n",
                    l.questions, l.answered, l.refused
                );
            }
        }
        if let Some(p) = &self.policy_sets {
            s += &render_push(p);
        }
        if self.warnings.is_empty() {
            s += "warnings: none\n";
        } else {
            s += "warnings:\n";
            for w in &self.warnings {
                s += &format!("  ! {w}\n");
            }
        }
        s
    }
}

/// The pushed policy sets' lines of `guardian status`.
fn render_push(p: &crate::pushed::PushStatus) -> String {
    let mut s = format!("policy sets: group {}\n", p.group);
    s += &match &p.in_force {
        Some(f) => format!(
            "  in force  version {} sha256 {} signed by {} ({}) from {}\n",
            f.version,
            f.digest,
            f.signer,
            f.policies.join(", "),
            f.dir
        ),
        None => "  in force  no pushed set: the image's policy directory\n".to_owned(),
    };
    s += &format!(
        "  floor     version {}{} kept in {}{}\n",
        p.floor,
        if p.floor_digest.is_empty() {
            String::new()
        } else {
            format!(" sha256 {}", p.floor_digest)
        },
        p.floor_store,
        p.floor_nv_index
            .as_ref()
            .map(|i| format!(" (NV index {i})"))
            .unwrap_or_default()
    );
    s += &format!(
        "  received  {} set(s): {} put in force, {} refused{}\n",
        p.received,
        p.put_in_force,
        p.refused,
        if p.refused_by_reason.is_empty() {
            String::new()
        } else {
            format!(
                " ({})",
                p.refused_by_reason
                    .iter()
                    .map(|(r, n)| format!("{r} {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    );
    if let Some(r) = &p.last_received {
        s += &format!(
            "  last      {} by {}: version {} -> {} ({})\n",
            r.at,
            r.via,
            r.version.map_or_else(|| "?".to_owned(), |v| v.to_string()),
            r.outcome,
            r.detail
        );
    }
    if let Some(r) = &p.last_refusal {
        s += &format!("  refusal   {r}\n");
    }
    s
}

/// RFC 3339 of now, second precision.
pub fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// The daemon's attestor as `guardian status` sees it; the bundle quotes it
/// too, so its format is the verifier's (`guardian-attest`).
pub use guardian_attest::attest::AgentState;

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Status {
        Status {
            version: "0.1.0".into(),
            pid: std::process::id(),
            started: now(),
            updated: now(),
            requested_mode: "auto".into(),
            mode: Mode::Detect,
            mode_reason: "BPF LSM unavailable".into(),
            kernel: KernelFeatures::default(),
            hooks: vec![],
            pinned: None,
            adopted: false,
            unload: String::new(),
            boot_id: String::new(),
            guard_id: String::new(),
            policies: None,
            protected_files: 2,
            allowed_writers: 1,
            measured_boot: None,
            counters: BTreeMap::from([("ringbuf_drops".into(), 3)]),
            warnings: vec!["detect-only".into()],
            attestor: None,
            report: None,
            policy_sets: None,
        }
    }

    #[test]
    fn roundtrip_and_render() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/status.json");
        let st = sample();
        st.write(&path).unwrap();
        let back = Status::read(&path).unwrap();
        assert_eq!(back, st);
        let text = back.render();
        assert!(text.contains("mode: DETECT"), "{text}");
        assert!(text.contains("ringbuf_drops"), "{text}");
        assert!(text.contains("! detect-only"), "{text}");
        assert!(text.contains("running"), "{text}");
    }

    #[test]
    fn measured_boot_summary_warns_about_what_matters() {
        use crate::evidence::{
            Event, Record,
            event::{ManifestEvent, ModelEvent},
            log::Log,
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.log");
        let none = MeasuredBoot::from_log(&path);
        assert!(none.warnings()[0].contains("did not run"));
        let mut log = Log::open(&path).unwrap();
        let text = "version = 1\npcr = 14\n[[model]]\npath = \"/opt/models/m.onnx\"\nsha256 = \""
            .to_owned()
            + &"ab".repeat(32)
            + "\"\nsize = 1\n";
        let mut r = Record::new(
            14,
            Event::Manifest(ManifestEvent {
                file: "m".into(),
                sha256: "cd".repeat(32),
                serial: 1,
                text,
                signature: String::new(),
                signer: "UNSIGNED".into(),
                cause: "boot".into(),
                model_dir: None,
            }),
        );
        r.extended = true;
        log.append(r).unwrap();
        let mut r = Record::new(
            14,
            Event::Model(ModelEvent {
                file: "/opt/models/m.onnx".into(),
                sha256: "ef".repeat(32),
                size: 1,
                manifest: "cd".repeat(32),
                entry: 0,
                cause: "boot".into(),
            }),
        );
        r.extended = true;
        log.append(r).unwrap();
        let mb = MeasuredBoot::from_log(&path);
        assert_eq!(mb.models_extended, 1);
        let w = mb.warnings().join("\n");
        assert!(
            w.contains("UNSIGNED") && w.contains("/opt/models/m.onnx does not match"),
            "{w}"
        );
    }

    #[test]
    fn the_watch_reads_only_new_records_and_agrees_with_a_whole_read() {
        use crate::evidence::{
            Event, Record,
            event::{NoteEvent, TamperEvent},
            log::Log,
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.log");
        let mut watch = MeasuredBootWatch::new(&path);
        assert_eq!(watch.refresh(), &MeasuredBoot::from_log(&path));
        let mut log = Log::open(&path).unwrap();
        let tamper = || {
            let mut r = Record::new(
                14,
                Event::Tamper(TamperEvent {
                    file: "/opt/models/m.onnx".into(),
                    outcome: "denied".into(),
                    folded: 0,
                    event: serde_json::json!({"kind": "file_write_open"}),
                }),
            );
            r.extended = true;
            r
        };
        for round in 1..=3 {
            log.append(tamper()).unwrap();
            log.append(Record::new(
                0,
                Event::Note(NoteEvent {
                    text: "a software TPM".into(),
                }),
            ))
            .unwrap();
            let now = watch.refresh().clone();
            assert_eq!(now, MeasuredBoot::from_log(&path));
            assert_eq!(now.tamper_records, round);
            assert_eq!(now.records, 2 * round);
            assert!(now.software_tpm);
        }
        // A log cut behind guardian's back is read again from its start.
        drop(log);
        std::fs::write(&path, b"").unwrap();
        assert_eq!(watch.refresh().records, 0);
        // A corrupt one says why, and is read again once it is whole.
        std::fs::write(&path, b"{}\n").unwrap();
        assert!(watch.refresh().error.is_some());
        std::fs::write(&path, b"").unwrap();
        let mut log = Log::open(&path).unwrap();
        log.append(tamper()).unwrap();
        let now = watch.refresh();
        assert_eq!((now.error.as_deref(), now.tamper_records), (None, 1));
    }

    #[test]
    fn missing_and_malformed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        assert!(matches!(
            Status::read(&path),
            Err(StatusError::NotRunning { .. })
        ));
        std::fs::write(&path, b"{").unwrap();
        assert!(matches!(
            Status::read(&path),
            Err(StatusError::Malformed { .. })
        ));
    }
}
