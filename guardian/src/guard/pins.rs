//! Pins: what makes enforcement outlive the agent. Pinning a fresh
//! guard's maps and links, adopting a pinned guard, removing pins, and the
//! record of who may unload it. No attaching (a pinned guard is taken as it
//! is); the tables are brought in line through [`Guard::refresh`].

use std::{collections::BTreeMap, path::Path};

use aya::{
    maps::{Array, Map, MapData},
    programs::links::{FdLink, PinnedLink},
};
use guardian_common::{KernelConfig, forms, maps as map_names, mode as kmode};

use super::{
    Gap, Guard, GuardError, KernelHook, chain, map_err,
    maps::{Written, set_config},
    missing_map,
    table::{DEFS, MAP_NAMES, SYSCALLS_PIN, syscall_names},
};
use crate::{
    hooks::{Hook, Mechanism, Mode},
    targets::Targets,
};

/// What the pinned guard in `mine` (an object's pin directory) was loaded
/// with: `Ok(None)` when it keeps no such record (an older guard, or no
/// pins), an error when the record is there but cannot be read (under BPF
/// LSM, by any program but guardian's own executable: a copy of guardian
/// is not guardian).
pub fn pinned_auth(mine: &Path) -> Result<Option<crate::unload::Auth>, GuardError> {
    let pin = mine.join("maps").join(map_names::AUTH);
    if !pin.exists() {
        return Ok(None);
    }
    let perr = |message: String| GuardError::Pin {
        path: pin.clone(),
        message,
    };
    let data = MapData::from_pin(&pin).map_err(|e| perr(format!("cannot open: {e}")))?;
    let arr: Array<MapData, [u8; 32]> =
        Array::try_from(Map::Array(data)).map_err(|e| perr(e.to_string()))?;
    let mut entries = Vec::new();
    for i in 0..crate::unload::AUTH_ENTRIES {
        entries.push(arr.get(&i, 0).map_err(|e| perr(e.to_string()))?);
    }
    Ok(crate::unload::Auth::from_entries(&entries))
}

/// Refuse to take over (or replace) the guard pinned in `mine` if it was
/// loaded with another configuration.
pub(super) fn same_config(
    mine: &Path,
    auth: Option<&crate::unload::Auth>,
) -> Result<(), GuardError> {
    let Some(ours) = auth else {
        return Ok(());
    };
    let Some(running) = pinned_auth(mine)? else {
        return Ok(());
    };
    if ours.config == running.config {
        return Ok(());
    }
    Err(GuardError::Reconfigured {
        pins: mine.to_owned(),
        running: hex::encode(&running.config[..6]),
        ours: hex::encode(&ours.config[..6]),
    })
}

/// `BPF_FS_MAGIC` from `include/uapi/linux/magic.h`.
pub(super) const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

pub(super) fn is_bpffs(dir: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: zeroed statfs is valid; statfs fills it or fails.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out pointer.
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC }
}

/// Remove a pin directory: links first (the programs detach when the last
/// reference goes), then maps.
pub fn remove_pins(dir: &Path) -> std::io::Result<()> {
    for sub in ["links", "maps"] {
        if let Ok(entries) = std::fs::read_dir(dir.join(sub)) {
            for e in entries.flatten() {
                std::fs::remove_file(e.path())?;
            }
        }
        let _ = std::fs::remove_dir(dir.join(sub));
    }
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

impl Guard {
    /// Pin maps and links under `dir/id`, protect the pins, and remove
    /// the pins of any other object.
    pub(super) fn pin(
        &mut self,
        dir: &Path,
        id: &str,
        links: Vec<(String, FdLink)>,
        targets: &Targets,
    ) -> Result<(), GuardError> {
        let perr = |message: String| GuardError::Pin {
            path: dir.to_owned(),
            message,
        };
        let mine = dir.join(id);
        if mine.exists() {
            remove_pins(&mine)
                .map_err(|e| perr(format!("clearing stale {}: {e}", mine.display())))?;
        }
        for sub in ["maps", "links"] {
            std::fs::create_dir_all(mine.join(sub)).map_err(|e| {
                perr(format!(
                    "cannot create {} (is bpffs mounted at {}?): {e}",
                    mine.join(sub).display(),
                    dir.display()
                ))
            })?;
        }
        for (name, map) in &self.maps {
            map.pin(mine.join("maps").join(name))
                .map_err(|e| perr(format!("map {name}: {e}")))?;
        }
        // (bpffs refuses names with dots: none are used.) Pinning consumes
        // the link, and a failed pin drops it, detaching its program: so a
        // failure here is fatal to the start, never a silent gap.
        for (n, (name, link)) in links.into_iter().enumerate() {
            let p = mine.join("links").join(format!("{n:02}-{name}"));
            let pinned = link
                .pin(&p)
                .map_err(|e| perr(format!("link {name}: {}", chain(&e))))?;
            self._links.push(pinned);
        }
        // Other objects' pins: an older guardian, replaced by this one. The
        // new programs are attached already, so there is no gap.
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_name() != id {
                    log::info!(
                        "removing the pins of a previous object: {}",
                        e.path().display()
                    );
                    if let Err(err) = remove_pins(&e.path()) {
                        log::warn!("cannot remove {}: {err}", e.path().display());
                    }
                }
            }
        }
        self.pins = Some(mine.clone());
        self.refresh(targets)?;
        Ok(())
    }

    /// Take over a pinned guard: its maps and links stay as they are; the
    /// tables are brought up to date with `targets`.
    pub(super) fn adopt(mine: &Path, targets: &Targets) -> Result<Self, GuardError> {
        let perr = |message: String| GuardError::Pin {
            path: mine.to_owned(),
            message,
        };
        let mut maps = std::collections::HashMap::new();
        for name in MAP_NAMES {
            let p = mine.join("maps").join(name);
            let data = MapData::from_pin(&p).map_err(|e| perr(format!("map {name}: {e}")))?;
            maps.insert(name, Map::from_map_data(data).map_err(map_err(name))?);
        }
        let mut links = Vec::new();
        let mut by_hook: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
        let mut entries: Vec<_> = std::fs::read_dir(mine.join("links"))
            .map_err(|e| perr(format!("links: {e}")))?
            .flatten()
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let file = e.file_name().to_string_lossy().into_owned();
            links.push(
                PinnedLink::from_pin(e.path())
                    .map_err(|err| perr(format!("link {file}: {err}")))?,
            );
            // "NN-hook-mechanism-where"
            let mut parts = file.splitn(4, '-');
            let (_, Some(hook), Some(mech), Some(at)) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(perr(format!("unexpected link pin name {file}")));
            };
            let entry = by_hook
                .entry(hook.to_owned())
                .or_insert_with(|| (mech.to_owned(), Vec::new()));
            if mech == "lsm" {
                entry.0 = "lsm".into();
            }
            if mech == "cgroup" {
                entry.0 = "cgroup".into();
            }
            entry.1.push(match mech {
                "lsm" => format!("lsm/{at}"),
                "cgroup" => format!("cgroup/{at}"),
                "fentry" => format!("fentry/{at}"),
                _ => format!("tracepoint/{}", at.replacen('-', "/", 1)),
            });
        }
        let config: KernelConfig = {
            let m = maps
                .get(map_names::CONFIG)
                .ok_or_else(|| missing_map(map_names::CONFIG))?;
            let arr: Array<&MapData, KernelConfig> =
                Array::try_from(m).map_err(map_err(map_names::CONFIG))?;
            arr.get(&0, 0).map_err(map_err(map_names::CONFIG))?
        };
        if config.ready == 0 {
            return Err(perr("the pinned config entry was never filled".into()));
        }
        // The raw syscall tracepoint serves every hook whose syscalls the
        // config says it watches.
        if by_hook.remove(SYSCALLS_PIN).is_some() {
            for def in &DEFS {
                let watched = def.syscalls & config.syscalls.enabled;
                if watched != 0 {
                    by_hook
                        .entry(def.hook.as_str().to_owned())
                        .or_insert_with(|| ("raw".to_owned(), Vec::new()))
                        .1
                        .push(format!(
                            "raw_tracepoint/sys_exit ({})",
                            syscall_names(watched)
                        ));
                }
            }
        }
        let hooks = Hook::ALL
            .iter()
            .map(|h| match by_hook.remove(h.as_str()) {
                Some((mech, attached)) => {
                    let (mechanism, why, gap) = match mech.as_str() {
                        "lsm" => (Mechanism::Lsm, String::new(), Gap::Lsm),
                        "cgroup" if config.forms & forms::CGROUP_DENY != 0 => (
                            Mechanism::Cgroup,
                            "adopted: denied in the kernel by cgroup socket programs".to_owned(),
                            Gap::Adopted,
                        ),
                        "cgroup" => (
                            Mechanism::Cgroup,
                            "adopted: reported after the fact".to_owned(),
                            Gap::Adopted,
                        ),
                        _ => (
                            Mechanism::Tracepoint,
                            "adopted: reported after the fact".to_owned(),
                            Gap::Adopted,
                        ),
                    };
                    KernelHook {
                        hook: *h,
                        mechanism,
                        attached,
                        why,
                        gap,
                    }
                }
                None => KernelHook {
                    hook: *h,
                    mechanism: Mechanism::None,
                    attached: vec![],
                    why: "adopted: nothing attached for this hook".to_owned(),
                    gap: Gap::Adopted,
                },
            })
            .collect::<Vec<_>>();
        let mode = if config.mode == kmode::ENFORCE {
            Mode::Enforce
        } else {
            Mode::Detect
        };
        let mut g = Self {
            _ebpf: None,
            maps,
            _links: links,
            unpinned: Vec::new(),
            mode,
            reason: format!(
                "adopted the pinned guard in {} (it kept running while no agent was)",
                mine.display()
            ),
            hooks,
            pins: Some(mine.to_owned()),
            adopted: true,
            written: Written::default(),
            config,
        };
        // Rules may have changed with the config.
        let mut cfg = config;
        cfg.rules = targets.rules;
        cfg.self_exe = targets.self_exe;
        cfg.root = targets.root;
        set_config(&mut g.maps, cfg)?;
        g.config = cfg;
        g.refresh(targets)?;
        log::info!("adopted the pinned guard in {}", mine.display());
        Ok(g)
    }
}

/// The id of the guard pinned under `pinned` (hex), for `guardian status`
/// and the unload token; empty when no readable record is there.
pub fn pinned_guard_id(pinned: &Path) -> String {
    match pinned_auth(pinned) {
        Ok(Some(a)) => hex::encode(a.guard),
        _ => String::new(),
    }
}
