//! The attestor's re-measurement of models: which files the manifest in
//! force names, a new manifest put in force (signed, newer, same PCR) or
//! refused, and one model measured and recorded. Part of the attestor
//! thread (`Worker`); it may not touch the guard or the policies.

use super::*;

impl Worker {
    pub(super) fn model_paths(&self) -> Vec<PathBuf> {
        self.manifest
            .iter()
            .flat_map(|(l, _)| l.manifest.models.iter().map(|e| e.path.clone()))
            .collect()
    }

    /// The manifest file changed (or the timer looks): put a new signed,
    /// newer manifest in force and re-measure every model against it;
    /// refuse anything else and keep the one in force.
    pub(super) fn manifest_changed(&mut self) {
        let loaded = match manifest::load(
            &self.manifest_path,
            &self.signature_path,
            &self.trusted,
            self.allow_unsigned,
        ) {
            Ok(l) => l,
            Err(e) => {
                log::error!("the manifest changed but is refused (the one in force stays): {e}");
                self.bump(|s| s.manifests_refused += 1);
                return;
            }
        };
        let digest = hex::encode(Sha256::digest(&loaded.bytes));
        let current = self.manifest.as_ref();
        if current.is_some_and(|(_, d)| *d == digest) {
            return;
        }
        let (old_serial, old_pcr) = current.map_or((0, loaded.manifest.pcr), |(l, _)| {
            (l.manifest.serial, l.manifest.pcr)
        });
        if current.is_some() && loaded.manifest.serial <= old_serial {
            log::error!(
                "the manifest {} changed but its serial {} is not higher than the one in force ({old_serial}): refused, the one in force stays",
                self.manifest_path.display(),
                loaded.manifest.serial
            );
            self.bump(|s| s.manifests_refused += 1);
            return;
        }
        if loaded.manifest.pcr != old_pcr {
            log::error!(
                "the new manifest {} names PCR {} but the evidence is in PCR {old_pcr}: refused",
                self.manifest_path.display(),
                loaded.manifest.pcr
            );
            self.bump(|s| s.manifests_refused += 1);
            return;
        }
        let (signature, signer) = match (&loaded.authenticity, &loaded.signature) {
            (Authenticity::Signed { fingerprint, .. }, Some(sig)) => {
                (hex::encode(sig), fingerprint.clone())
            }
            _ => (String::new(), "UNSIGNED".to_owned()),
        };
        let ev = Event::Manifest(ManifestEvent {
            file: self.manifest_path.display().to_string(),
            sha256: digest.clone(),
            serial: loaded.manifest.serial,
            text: String::from_utf8_lossy(&loaded.bytes).into_owned(),
            signature,
            signer,
            cause: "update".to_owned(),
            model_dir: None,
        });
        log::info!(
            "a new manifest is in force: serial {} (was {old_serial}); re-measuring every model",
            loaded.manifest.serial
        );
        self.manifest = Some((loaded, digest));
        if self.record(ev) {
            self.bump(|s| s.manifest_updates += 1);
        }
        self.last_digest.clear();
        for p in self.model_paths() {
            self.remeasure(&p, "update");
        }
    }

    pub(super) fn remeasure(&mut self, path: &PathBuf, cause: &str) {
        if *path == self.manifest_path || *path == self.signature_path {
            self.manifest_changed();
            return;
        }
        // A directory on the models' path changed: every model below it.
        let below: Vec<PathBuf> = self
            .model_paths()
            .into_iter()
            .filter(|m| m != path && m.starts_with(path))
            .collect();
        if !below.is_empty() {
            for m in below {
                self.remeasure_one(&m, cause);
            }
            return;
        }
        self.remeasure_one(path, cause);
    }

    pub(super) fn remeasure_one(&mut self, path: &PathBuf, cause: &str) {
        let Some((loaded, manifest_digest)) = &self.manifest else {
            return;
        };
        let Some((i, entry)) = loaded
            .manifest
            .models
            .iter()
            .enumerate()
            .find(|(_, e)| &e.path == path)
        else {
            return; // protected, but not a manifest model
        };
        let (expected, manifest_digest) = (entry.sha256.clone(), manifest_digest.clone());
        let d = match crate::hashing::hash_file(path) {
            Ok(d) => d,
            Err(e) => {
                log::error!("re-measurement: {e}");
                self.bump(|s| s.errors += 1);
                return;
            }
        };
        let digest = hex::encode(d.sha256);
        if self.last_digest.get(path) == Some(&digest) {
            return;
        }
        if digest != expected {
            log::error!(
                "re-measurement: model {} changed to sha256 {digest} (manifest: {expected})",
                path.display()
            );
        }
        let ev = Event::Model(ModelEvent {
            file: path.display().to_string(),
            sha256: digest.clone(),
            size: d.size,
            manifest: manifest_digest,
            entry: i,
            cause: cause.to_owned(),
        });
        if self.record(ev) {
            self.last_digest.insert(path.clone(), digest);
            self.bump(|s| s.remeasured += 1);
        }
    }
}
