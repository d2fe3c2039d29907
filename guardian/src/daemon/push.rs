//! Pushed policy sets in the daemon: at start, the floor (the higher of
//! the floor file and the TPM NV index) and the pushed set in force if it
//! still verifies and is at the floor; then each set the fleet link
//! receives, on a blocking thread, in this order:
//!
//! 1. parsed, verified with the trusted policy keys, admitted against the
//!    floor (`policy_set::admit`); the floor's own set is taken again
//!    while the image's directory is in force (the pushed one was refused
//!    at start), so a device heals at its next read of the group's key;
//! 2. written to a fresh directory of its own (`pushed::write_set`);
//! 3. loaded through the engine's reload, which verifies each module's
//!    signature, compiles, instantiates, measures each load and swaps
//!    with no gap (the daemon then puts its static rules in every rung);
//! 4. only once it is in force: the pointer to it replaced, the floor
//!    raised (file, then NV index), a `policy_set` record appended.
//!
//! A failure before step 4 leaves the set in force as it was; the refusal
//! is logged, counted in the status and sent to the fleet as an alert. A
//! failure in step 4 does not take the set out of force (it is in force);
//! it is counted and logged, and a restart checks the stores again.
//!
//! Owns the daemon's [`Push`] state. May not touch the TPM or the log
//! (the attestor does, asked through its [`SetKeeper`]).

use std::{path::PathBuf, sync::Arc};

use guardian_report::ReceivedSet;

use crate::{
    config::PolicyConfig,
    continuous::{SetKeeper, SetRequest},
    evidence::event::PolicySetEvent,
    policy::{self, PolicyEngine, ReloadReport},
    policy_set::{self, Admission, Floor, VerifiedSet},
    pushed::{self, PushError, PushStatus, Received, SetInForce, floor},
    signing::TrustedKey,
};

/// What the daemon keeps of pushed sets between them.
pub(super) struct Push {
    cfg: PolicyConfig,
    trusted_keys: Vec<PathBuf>,
    keeper: SetKeeper,
    /// The floor's NV index, while it works (`None`: the file only).
    nv: Option<u32>,
    floor: Option<Floor>,
    pub(super) status: PushStatus,
    /// The newest set received while another job ran; it runs next.
    pub(super) pending: Option<Arc<ReceivedSet>>,
}

/// A set received, to be put in force on a blocking thread.
pub(super) struct Job {
    cfg: PolicyConfig,
    trusted_keys: Vec<PathBuf>,
    keeper: SetKeeper,
    nv: Option<u32>,
    floor: Option<Floor>,
    /// The digest of the pushed set in force (`None`: the image's
    /// directory is).
    in_force: Option<String>,
    engine: Arc<PolicyEngine>,
    received: Arc<ReceivedSet>,
}

/// What became of a received set.
pub(super) struct Outcome {
    received: Arc<ReceivedSet>,
    /// What could be read of it (version, digest), refused or not.
    seen: Option<(u64, String)>,
    result: Result<Applied, PushError>,
}

enum Applied {
    /// The set in force already (a reconnect's direct get, say).
    AlreadyInForce,
    /// Put in force now.
    New {
        set: Box<VerifiedSet>,
        report: ReloadReport,
        /// What lags behind (the pointer, a store of the floor, the
        /// record), in words.
        lagging: Vec<String>,
    },
}

fn floor_store(nv: Option<u32>) -> &'static str {
    if nv.is_some() { "tpm-nv+file" } else { "file" }
}

impl Job {
    /// Put the set in force, or say why not (see the module's steps).
    pub(super) fn run(self) -> Outcome {
        let mut seen = None;
        let result = self.steps(&mut seen);
        Outcome {
            received: self.received,
            seen,
            result,
        }
    }

    fn steps(&self, seen: &mut Option<(u64, String)>) -> Result<Applied, PushError> {
        let keys = TrustedKey::load_all(&self.trusted_keys).map_err(PushError::Keys)?;
        let set = pushed::verify(&self.received.bytes, &keys)?;
        *seen = Some((set.set.version, set.digest.clone()));
        match policy_set::admit(&set, &self.cfg.group, self.floor.as_ref()) {
            Ok(Admission::InForce) if self.in_force.as_deref() == Some(set.digest.as_str()) => {
                return Ok(Applied::AlreadyInForce);
            }
            // The floor's own set while the image's directory is in force
            // (its directory was refused or did not load at start, or its
            // pointer lagged): put back in force, which is no rollback.
            Ok(_) => {}
            // The same, when only the NV index knew the floor (a version,
            // no digest).
            Err(policy_set::SetError::SameVersion { .. })
                if self.in_force.is_none()
                    && self.floor.as_ref().is_some_and(|f| f.digest.is_empty()) => {}
            Err(e) => return Err(e.into()),
        }
        let version = set.set.version;
        let dir = pushed::write_set(&self.cfg, &set, &self.received.bytes)?;
        let report = match self.engine.reload_checked(&dir, Some(&listed(&set))) {
            Ok(r) => r,
            Err(source) => {
                // Never in force: its directory goes (the next push of the
                // version would replace it anyway).
                let _ = std::fs::remove_dir_all(&dir);
                return Err(PushError::Load { version, source });
            }
        };
        let lagging = raise_floor(
            &self.cfg,
            &self.keeper,
            self.nv,
            &set,
            "push",
            true,
            self.nv.is_some(),
        );
        pushed::prune(&self.cfg, version);
        Ok(Applied::New {
            set: Box::new(set),
            report,
            lagging,
        })
    }
}

/// The steps after a set went in force: its pointer, the floor (file,
/// then NV index, each if asked), its record. Returns what failed, in
/// words; nothing here takes the set out of force.
fn raise_floor(
    cfg: &PolicyConfig,
    keeper: &SetKeeper,
    nv: Option<u32>,
    set: &VerifiedSet,
    cause: &str,
    write_file: bool,
    write_nv: bool,
) -> Vec<String> {
    let version = set.set.version;
    let mut lagging = Vec::new();
    if let Err(e) = pushed::make_current(cfg, version) {
        lagging.push(format!("the pointer to the set in force: {e}"));
    }
    let new_floor = Floor {
        group: cfg.group.clone(),
        version,
        digest: set.digest.clone(),
    };
    if write_file && let Err(e) = floor::write(&cfg.floor_file(), &new_floor) {
        lagging.push(e.to_string());
    }
    if let Some(index) = nv.filter(|_| write_nv)
        && let Err(e) = keeper.ask(SetRequest::WriteFloor(index, version))
    {
        lagging.push(format!("the floor's TPM NV index {index:#010x}: {e}"));
    }
    if let Err(e) = keeper.ask(SetRequest::Record(Box::new(PolicySetEvent {
        group: cfg.group.clone(),
        version,
        sha256: set.digest.clone(),
        signer: set.signer.clone(),
        cause: cause.to_owned(),
        floor: version,
        floor_store: floor_store(nv).to_owned(),
    }))) {
        lagging.push(e);
    }
    for l in &lagging {
        log::error!("policy sets: set version {version} is in force, but {l}");
    }
    lagging
}

fn in_force(set: &VerifiedSet, dir: &std::path::Path) -> SetInForce {
    SetInForce {
        version: set.set.version,
        digest: set.digest.clone(),
        signer: set.signer.clone(),
        policies: set.set.policies.iter().map(|p| p.name.clone()).collect(),
        dir: dir.display().to_string(),
    }
}

impl Push {
    /// Start-up: the floor, then the set in force (the pushed one if it
    /// still verifies and is at the floor, else the image's directory),
    /// then a `start` record. Returns the state and the load's result
    /// (`None`: nothing to load).
    pub(super) fn start(
        cfg: &PolicyConfig,
        engine: &PolicyEngine,
        keeper: SetKeeper,
    ) -> (Self, Option<Result<ReloadReport, policy::LoadError>>) {
        let trusted_keys = engine.settings().trusted_keys.clone();
        let mut status = PushStatus {
            group: cfg.group.clone(),
            ..PushStatus::default()
        };
        // 1. The floor: the file's and the NV index's word, the higher.
        let file = floor::read(&cfg.floor_file()).unwrap_or_else(|e| {
            log::error!("policy sets: {e}; the floor file counts as absent");
            status.store_errors += 1;
            None
        });
        let mut nv = cfg.floor_nv().ok().flatten();
        let nv_value = nv.and_then(|index| match keeper.ask(SetRequest::ReadFloor(index)) {
            Ok(v) => Some(v),
            Err(e) => {
                log::error!(
                    "policy sets: the floor's TPM NV index {index:#010x} cannot be read, the floor is kept in the file only: {e}"
                );
                status.floor_nv_error = Some(e);
                None
            }
        });
        if nv_value.is_none() {
            nv = None;
        }
        let combined = floor::combine(&cfg.group, file, nv_value);
        if let Some(d) = &combined.disagreement {
            log::error!("policy sets: {d}");
            status.floor_disagreements += 1;
            if let Err(e) = keeper.ask(SetRequest::Note(d.clone())) {
                log::error!("policy sets: the disagreement is not in the measurement log: {e}");
            }
        }
        let mut floor = combined.floor;
        // 2. The pushed set in force, if any, checked again.
        let mut pushed_in_force = None;
        if let Some(dir) = pushed::current(cfg) {
            let checked = TrustedKey::load_all(&trusted_keys)
                .map_err(PushError::Keys)
                .and_then(|k| pushed::check_dir(&dir, &k, &cfg.group))
                .and_then(|set| at_floor(set, floor.as_ref(), &dir));
            match checked {
                Ok(set) => match engine.reload_checked(&dir, Some(&listed(&set))) {
                    Ok(report) => pushed_in_force = Some((set, dir, report)),
                    Err(e) => {
                        let e = PushError::Load {
                            version: set.set.version,
                            source: e,
                        };
                        log::error!(
                            "policy sets: the pushed set in force did not load again: {e}; the image's policy directory {} is in force INSTEAD",
                            cfg.dir.display()
                        );
                        status.refuse(&e);
                    }
                },
                Err(e) => {
                    log::error!(
                        "policy sets: the pushed set in {} is refused: {e}; the image's policy directory {} is in force INSTEAD",
                        dir.display(),
                        cfg.dir.display()
                    );
                    status.refuse(&e);
                }
            }
        }
        // 3. The stores brought up to the floor, and the start record.
        let result = match pushed_in_force {
            Some((set, dir, report)) => {
                let raised = floor
                    .as_ref()
                    .is_none_or(|f| f.version < set.set.version || f.digest != set.digest);
                let lagging = raise_floor(
                    cfg,
                    &keeper,
                    nv,
                    &set,
                    "start",
                    raised || combined.file_behind,
                    raised || combined.nv_behind,
                );
                status.store_errors += lagging.len() as u64;
                floor = Some(Floor {
                    group: cfg.group.clone(),
                    version: set.set.version,
                    digest: set.digest.clone(),
                });
                status.in_force = Some(in_force(&set, &dir));
                log::info!(
                    "policy sets: group {} version {} (sha256 {}) in force from {}",
                    cfg.group,
                    set.set.version,
                    short(&set.digest),
                    dir.display()
                );
                Some(Ok(report))
            }
            None => {
                let f = floor.clone();
                if let Some(f) = &f {
                    if combined.file_behind
                        && let Err(e) = floor::write(&cfg.floor_file(), f)
                    {
                        log::error!("policy sets: {e}");
                        status.store_errors += 1;
                    }
                    if let Some(index) = nv.filter(|_| combined.nv_behind)
                        && let Err(e) = keeper.ask(SetRequest::WriteFloor(index, f.version))
                    {
                        log::error!("policy sets: the floor's TPM NV index: {e}");
                        status.store_errors += 1;
                    }
                }
                if let Err(e) = keeper.ask(SetRequest::Record(Box::new(PolicySetEvent {
                    group: cfg.group.clone(),
                    version: 0,
                    sha256: String::new(),
                    signer: String::new(),
                    cause: "start".to_owned(),
                    floor: f.as_ref().map_or(0, |f| f.version),
                    floor_store: floor_store(nv).to_owned(),
                }))) {
                    log::error!("policy sets: the start record: {e}");
                    status.store_errors += 1;
                }
                log::info!(
                    "policy sets: group {}: no pushed set in force (floor {}); the image's policy directory {} is",
                    cfg.group,
                    f.as_ref().map_or(0, |f| f.version),
                    cfg.dir.display()
                );
                cfg.dir.is_dir().then(|| engine.reload_from(&cfg.dir))
            }
        };
        status.floor = floor.as_ref().map_or(0, |f| f.version);
        status.floor_digest = floor.as_ref().map(|f| f.digest.clone()).unwrap_or_default();
        status.floor_store = floor_store(nv).to_owned();
        status.floor_nv_index = nv.map(|i| format!("{i:#010x}"));
        (
            Self {
                cfg: cfg.clone(),
                trusted_keys,
                keeper,
                nv,
                floor,
                status,
                pending: None,
            },
            result,
        )
    }

    /// A job for a received set.
    pub(super) fn job(&self, engine: &Arc<PolicyEngine>, received: Arc<ReceivedSet>) -> Job {
        Job {
            cfg: self.cfg.clone(),
            trusted_keys: self.trusted_keys.clone(),
            keeper: self.keeper.clone(),
            nv: self.nv,
            floor: self.floor.clone(),
            in_force: self.status.in_force.as_ref().map(|s| s.digest.clone()),
            engine: Arc::clone(engine),
            received,
        }
    }

    /// Whether `dir` is a pushed set's directory.
    pub(super) fn is_pushed(&self, dir: &std::path::Path) -> bool {
        dir.starts_with(self.cfg.sets_dir())
    }

    /// Before a reload of the pushed directory in force (a change in it,
    /// SIGHUP): it must still be the set signed for it. The check, to run
    /// on the reload's blocking thread; it gives the set's (name, SHA-256)
    /// list, which the reload then holds what it loads to.
    pub(super) fn recheck_job(
        &self,
        dir: &std::path::Path,
    ) -> impl FnOnce() -> Result<Vec<(String, String)>, PushError> + Send + 'static {
        let (keys, dir, group) = (
            self.trusted_keys.clone(),
            dir.to_owned(),
            self.cfg.group.clone(),
        );
        move || {
            let keys = TrustedKey::load_all(&keys).map_err(PushError::Keys)?;
            pushed::check_dir(&dir, &keys, &group).map(|set| listed(&set))
        }
    }

    /// A job's end: the status, the fleet told, the log. Returns the
    /// reload report to put in force, if the set went in force.
    pub(super) fn finished(
        &mut self,
        o: Outcome,
        out: &super::output::Outputs,
    ) -> Option<ReloadReport> {
        self.status.received += 1;
        let (version, digest) = o.seen.clone().unzip();
        let mut received = Received {
            at: crate::status::now(),
            via: o.received.via.to_owned(),
            version,
            digest,
            ..Received::default()
        };
        let group = self.cfg.group.clone();
        let report = match o.result {
            Ok(Applied::AlreadyInForce) => {
                received.outcome = "already_in_force".into();
                received.detail = "the set in force already".into();
                log::info!(
                    "policy sets: the set received ({}) is the one in force",
                    o.received.via
                );
                None
            }
            Ok(Applied::New {
                set,
                report,
                lagging,
            }) => {
                let dir = self.cfg.sets_dir().join(set.set.version.to_string());
                log::info!(
                    "policy sets: group {group} version {} (sha256 {}, signed by {}) IN FORCE: {}",
                    set.set.version,
                    short(&set.digest),
                    short(&set.signer),
                    report
                        .policies
                        .iter()
                        .map(|p| format!("{} {}", p.name, short(&p.sha256)))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                self.status.put_in_force += 1;
                self.status.store_errors += lagging.len() as u64;
                self.floor = Some(Floor {
                    group: group.clone(),
                    version: set.set.version,
                    digest: set.digest.clone(),
                });
                self.status.floor = set.set.version;
                self.status.floor_digest = set.digest.clone();
                self.status.in_force = Some(in_force(&set, &dir));
                received.outcome = "in_force".into();
                received.detail = if lagging.is_empty() {
                    "put in force; the floor raised".to_owned()
                } else {
                    format!("put in force; but {}", lagging.join("; "))
                };
                out.policy_set(
                    false,
                    &serde_json::json!({
                        "kind": "policy_set", "outcome": "in_force", "group": group,
                        "version": set.set.version, "sha256": set.digest, "signer": set.signer,
                        "policies": report.policies.iter().map(|p| serde_json::json!({"name": p.name, "sha256": p.sha256})).collect::<Vec<_>>(),
                        "floor": set.set.version, "floor_store": floor_store(self.nv),
                        "lagging": lagging,
                    }),
                );
                Some(report)
            }
            Err(e) => {
                self.refused(&e, received.version, out);
                received.outcome = "refused".into();
                received.detail = format!("{}: {e}", e.reason());
                None
            }
        };
        self.status.last_received = Some(received);
        report
    }

    /// A refusal: logged, counted, and an alert for the fleet; the set in
    /// force stays.
    pub(super) fn refused(
        &mut self,
        e: &PushError,
        version: Option<u64>,
        out: &super::output::Outputs,
    ) {
        log::error!(
            "policy sets: REFUSED ({}): {e}; the set in force stays",
            e.reason()
        );
        self.status.refuse(e);
        out.policy_set(
            true,
            &serde_json::json!({
                "kind": "policy_set", "outcome": "refused", "group": self.cfg.group,
                "version": version, "reason": e.reason(), "detail": e.to_string(),
                "in_force": self.status.in_force.as_ref().map(|s| s.version),
                "floor": self.status.floor,
            }),
        );
    }
}

/// A pushed set found at start must be at the floor: above it (a crash
/// after the pointer and before the floor: it is raised), or at it with
/// the floor's digest (or an unknown digest, when the NV index alone
/// held the floor).
fn at_floor(
    set: VerifiedSet,
    floor: Option<&Floor>,
    dir: &std::path::Path,
) -> Result<VerifiedSet, PushError> {
    let tampered = |what: String| PushError::Tampered {
        dir: dir.to_owned(),
        what,
    };
    // The same bound as for a set received: a directory planted with a
    // set numbered near the top would raise the floor past any later one.
    let base = floor.map_or(0, |f| f.version);
    if set.set.version.saturating_sub(base) > policy_set::MAX_STEP {
        return Err(tampered(format!(
            "version {} is more than {} above the floor, version {base}",
            set.set.version,
            policy_set::MAX_STEP
        )));
    }
    let Some(f) = floor else {
        return Ok(set);
    };
    match set.set.version.cmp(&f.version) {
        std::cmp::Ordering::Greater => Ok(set),
        std::cmp::Ordering::Equal if f.digest.is_empty() || f.digest == set.digest => Ok(set),
        std::cmp::Ordering::Equal => Err(tampered(format!(
            "version {} with digest {}, the floor's is {}",
            f.version,
            short(&set.digest),
            short(&f.digest)
        ))),
        std::cmp::Ordering::Less => Err(tampered(format!(
            "version {} is below the floor, version {}",
            set.set.version, f.version
        ))),
    }
}

fn short(s: &str) -> &str {
    s.get(..16).unwrap_or(s)
}

/// A set's policies as the engine checks what it loaded: (name, SHA-256).
fn listed(set: &policy_set::VerifiedSet) -> Vec<(String, String)> {
    set.set
        .policies
        .iter()
        .map(|p| (p.name.clone(), p.sha256.clone()))
        .collect()
}
