//! [`ImageStore`]: the store's directory, its records (`<hex>/image.json`) and names
//! (`refs.json`); import, look-up, listing and removal; the store lock and an import's temp dir.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::layout::{check_platform, is_sha256_hex, runtime_config, sha256_hex, Layout};
use super::limits::{free_bytes, Budget};
use super::{unpack, ImageError, ImportCancel, ImportLimits};

/// One image in the store, as jobs use it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ImageRecord {
    /// The reference name, e.g. `busybox:latest`.
    pub reference: String,
    /// `sha256:<hex>` of the manifest.
    pub manifest_digest: String,
    /// The unpacked rootfs (absolute); jobs use it read-only.
    pub rootfs: PathBuf,
    /// From the image config blob.
    pub config: ImageRuntimeConfig,
    /// Unpacked size: the sum of regular file sizes, hard links counted once.
    pub size_bytes: u64,
    /// When the rootfs was imported (seconds since the Unix epoch).
    pub imported_at_unix: u64,
}

/// The runtime defaults of an image (its config's `config` object).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ImageRuntimeConfig {
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `Env` (`KEY=value`).
    pub env: Vec<String>,
    /// `WorkingDir`, when set and not empty.
    pub working_dir: Option<String>,
    /// `User`, when set and not empty.
    pub user: Option<String>,
}

/// The OCI image store under `<state dir>/images`.
#[derive(Debug, Clone)]
pub struct ImageStore {
    dir: PathBuf,
    limits: ImportLimits,
}

/// What [`ImageStore::remove`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct RemovedImage {
    /// The image as it was (`reference`: the name it was asked by).
    pub record: ImageRecord,
    /// The references that pointed at it and are gone.
    pub references: Vec<String>,
    /// Where its rootfs went when no reference points at it any more: a `.tmp-*` dir for the
    /// caller to delete (slow for a big image, so outside its own locks); a crash before that
    /// leaves it for the next import's clean-up.
    pub trash: Option<PathBuf>,
}

impl RemovedImage {
    /// Deletes [`Self::trash`], if any (logged when it cannot: the next import retries).
    pub fn delete_trash(&self) {
        if let Some(trash) = &self.trash {
            if let Err(err) = fs::remove_dir_all(trash) {
                tracing::warn!(path = %trash.display(), error = %err, "cannot delete a removed image's rootfs; the next import retries");
            }
        }
    }
}

/// The name -> manifest digest map, `refs.json`.
type Refs = BTreeMap<String, String>;

impl ImageStore {
    /// Opens (creating when missing) the store under `<state_dir>/images`, with the default
    /// [`ImportLimits`].
    pub fn open(state_dir: &Path) -> Result<ImageStore, ImageError> {
        let state_dir = std::path::absolute(state_dir).map_err(|e| ImageError::io(state_dir, e))?;
        let dir = state_dir.join("images");
        fs::create_dir_all(&dir).map_err(|e| ImageError::io(&dir, e))?;
        Ok(ImageStore {
            dir,
            limits: ImportLimits::default(),
        })
    }

    /// This store with other limits for its imports (`[images]`).
    pub fn with_limits(self, limits: ImportLimits) -> ImageStore {
        ImageStore { limits, ..self }
    }

    /// The limits of this store's imports.
    pub fn limits(&self) -> &ImportLimits {
        &self.limits
    }

    /// The store's directory (`<state dir>/images`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Imports an OCI image layout directory (what `skopeo copy ... oci:DIR[:TAG]` writes):
    /// verifies every blob's digest and size, unpacks the layers in order into a rootfs
    /// (whiteouts `.wh.NAME` and opaque `.wh..wh..opq` honored; no path escapes the rootfs:
    /// `..`, absolute symlink targets resolved inside), records it. `reference` overrides the
    /// name taken from the index annotation `org.opencontainers.image.ref.name`.
    ///
    /// Within the store's [`ImportLimits`]: refused before anything is unpacked when the layer
    /// blobs alone would not fit above `min_free_bytes`, stopped as soon as it reads more than
    /// `max_unpacked_bytes`, applies more than `max_entries` or the free space falls below
    /// `min_free_bytes` ([`ImageError::OverLimit`], [`ImageError::NoSpace`]); a stopped import
    /// leaves nothing behind.
    pub fn import(
        &self,
        layout_dir: &Path,
        reference: Option<&str>,
    ) -> Result<ImageRecord, ImageError> {
        self.import_cancellable(layout_dir, reference, &ImportCancel::new())
    }

    /// [`Self::import`], stopped with [`ImageError::Cancelled`] (nothing left behind) once
    /// `cancel` is set, also while it waits for another import to release the store.
    pub fn import_cancellable(
        &self,
        layout_dir: &Path,
        reference: Option<&str>,
        cancel: &ImportCancel,
    ) -> Result<ImageRecord, ImageError> {
        if let Some(given) = reference {
            validate_reference(given)?;
        }
        let layout = Layout::open(layout_dir)?;
        let (manifest_desc, reference) = layout.choose_manifest(reference)?;
        validate_reference(&reference)?;
        let manifest_digest = manifest_desc.digest().to_string();
        let manifest_hex = sha256_hex(&manifest_desc)?.to_owned();
        let manifest = layout.read_manifest(&manifest_desc)?;
        let image_config = layout.read_config(manifest.config())?;
        check_platform(&image_config)?;
        let diff_ids = image_config.rootfs().diff_ids();
        if diff_ids.len() != manifest.layers().len() {
            return Err(ImageError::BadDocument {
                what: format!("config {}", manifest.config().digest()),
                reason: format!(
                    "rootfs.diff_ids has {} entries, manifest {manifest_digest} has {} layers",
                    diff_ids.len(),
                    manifest.layers().len()
                ),
            });
        }
        // Check every layer's media type, presence and size before unpacking anything.
        let mut layers = Vec::with_capacity(manifest.layers().len());
        for (desc, diff_id) in manifest.layers().iter().zip(diff_ids) {
            layers.push(layout.layer(desc, diff_id)?);
        }
        let config = runtime_config(&image_config);

        let _lock = StoreLock::acquire(&self.dir, cancel)?;
        // Cancelled before the lock was free: not even a re-pointed reference.
        if cancel.is_cancelled() {
            return Err(ImageError::Cancelled);
        }
        let final_dir = self.dir.join(&manifest_hex);
        let record = if final_dir.join("image.json").exists() {
            tracing::debug!(digest = %manifest_digest, "image already unpacked");
            self.read_image(&manifest_hex)?
        } else {
            self.remove_stale_temp_dirs();
            self.check_free_space(layers.iter().map(|l| l.size).sum())?;
            let temp = TempDir::create(&self.dir, &manifest_hex)?;
            let rootfs = temp.path.join("rootfs");
            fs::create_dir(&rootfs).map_err(|e| ImageError::io(&rootfs, e))?;
            let budget = Budget::new(self.limits, cancel, &self.dir);
            for layer in &layers {
                tracing::debug!(layer = %layer.digest, "unpacking layer");
                unpack::apply_layer(&rootfs, layer, &budget)?;
            }
            let size_bytes = unpack::tree_size(&rootfs)?;
            let record = ImageRecord {
                reference: reference.clone(),
                manifest_digest: manifest_digest.clone(),
                rootfs: final_dir.join("rootfs"),
                config,
                size_bytes,
                imported_at_unix: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
            };
            let json =
                serde_json::to_vec_pretty(&record).map_err(|e| ImageError::CorruptStore {
                    path: temp.path.join("image.json"),
                    reason: e.to_string(),
                })?;
            write_synced(&temp.path.join("image.json"), &json)?;
            temp.persist(&final_dir)?;
            tracing::info!(reference = %reference, digest = %manifest_digest, size_bytes, "imported image");
            record
        };
        let mut refs = self.read_refs()?;
        refs.insert(reference.clone(), manifest_digest);
        self.write_refs(&refs)?;
        Ok(ImageRecord {
            reference,
            ..record
        })
    }

    /// By reference name or by manifest digest (`sha256:...`). Unknown image: `Ok(None)`.
    pub fn get(&self, name: &str) -> Result<Option<ImageRecord>, ImageError> {
        let refs = self.read_refs()?;
        if let Some(hex) = name.strip_prefix("sha256:") {
            if !is_sha256_hex(hex) || !self.dir.join(hex).join("image.json").exists() {
                return Ok(None);
            }
            let mut record = self.read_image(hex)?;
            if let Some((reference, _)) = refs.iter().find(|(_, digest)| digest.as_str() == name) {
                record.reference = reference.clone();
            }
            return Ok(Some(record));
        }
        let Some(digest) = refs.get(name) else {
            return Ok(None);
        };
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        let mut record = self.read_image(hex)?;
        record.reference = name.to_owned();
        Ok(Some(record))
    }

    /// Removes an image by reference or by digest. A reference: that name goes, and the image
    /// with the last name that points at it. A digest: every name that points at it, and the
    /// image. Before the image itself goes, `check` is asked (the store locked, so no import
    /// re-points a name meanwhile); its error refuses the removal with nothing changed
    /// ([`ImageError::InUse`]). The image dir is renamed away at once (see
    /// [`RemovedImage::trash`]). Unknown image: `Ok(None)`.
    pub fn remove(
        &self,
        name: &str,
        check: impl FnOnce(&ImageRecord) -> Result<(), String>,
    ) -> Result<Option<RemovedImage>, ImageError> {
        let _lock = StoreLock::acquire(&self.dir, &ImportCancel::new())?;
        let Some(record) = self.get(name)? else {
            return Ok(None);
        };
        let mut refs = self.read_refs()?;
        let digest = record.manifest_digest.clone();
        let references: Vec<String> = if name.starts_with("sha256:") {
            refs.iter()
                .filter(|(_, d)| **d == digest)
                .map(|(r, _)| r.clone())
                .collect()
        } else {
            vec![name.to_owned()]
        };
        for reference in &references {
            refs.remove(reference);
        }
        let last = !refs.values().any(|d| *d == digest);
        let mut trash = None;
        if last {
            check(&record).map_err(|reason| ImageError::InUse {
                image: name.to_owned(),
                reason,
            })?;
            let hex = digest.strip_prefix("sha256:").unwrap_or(&digest);
            let dir = self.dir.join(hex);
            let to = self
                .dir
                .join(format!(".tmp-rm-{hex}-{}", std::process::id()));
            fs::rename(&dir, &to).map_err(|e| ImageError::io(&dir, e))?;
            trash = Some(to);
        }
        self.write_refs(&refs)?;
        tracing::info!(image = %name, digest = %digest, rootfs_removed = last, "removed image");
        Ok(Some(RemovedImage {
            record: ImageRecord {
                reference: name.to_owned(),
                ..record
            },
            references,
            trash,
        }))
    }

    /// Bytes the stored images' rootfs trees take (each image once, however many references
    /// name it), for the disk capacity.
    pub fn stored_bytes(&self) -> Result<u64, ImageError> {
        let mut seen = std::collections::BTreeSet::new();
        Ok(self
            .list()?
            .into_iter()
            .filter(|image| seen.insert(image.manifest_digest.clone()))
            .map(|image| image.size_bytes)
            .sum())
    }

    /// Every reference (sorted by name), then images no reference points to any more (their
    /// `reference` is then their digest).
    pub fn list(&self) -> Result<Vec<ImageRecord>, ImageError> {
        let refs = self.read_refs()?;
        let mut out = Vec::new();
        let mut referenced = std::collections::BTreeSet::new();
        for (reference, digest) in &refs {
            let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
            let mut record = self.read_image(hex)?;
            record.reference = reference.clone();
            referenced.insert(hex.to_owned());
            out.push(record);
        }
        let entries = fs::read_dir(&self.dir).map_err(|e| ImageError::io(&self.dir, e))?;
        let mut orphans: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|name| is_sha256_hex(name) && !referenced.contains(name))
            .filter(|name| self.dir.join(name).join("image.json").exists())
            .collect();
        orphans.sort();
        for hex in orphans {
            let mut record = self.read_image(&hex)?;
            record.reference = record.manifest_digest.clone();
            out.push(record);
        }
        Ok(out)
    }

    fn read_image(&self, hex: &str) -> Result<ImageRecord, ImageError> {
        let path = self.dir.join(hex).join("image.json");
        let bytes = fs::read(&path).map_err(|e| ImageError::io(&path, e))?;
        let mut record: ImageRecord =
            serde_json::from_slice(&bytes).map_err(|e| ImageError::CorruptStore {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        // The store may have been moved: the rootfs is where the record is.
        record.rootfs = self.dir.join(hex).join("rootfs");
        Ok(record)
    }

    fn refs_path(&self) -> PathBuf {
        self.dir.join("refs.json")
    }

    fn read_refs(&self) -> Result<Refs, ImageError> {
        let path = self.refs_path();
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| ImageError::CorruptStore {
                path,
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Refs::new()),
            Err(e) => Err(ImageError::io(path, e)),
        }
    }

    fn write_refs(&self, refs: &Refs) -> Result<(), ImageError> {
        let path = self.refs_path();
        let temp = self.dir.join(".refs.json.tmp");
        let json = serde_json::to_vec_pretty(refs).map_err(|e| ImageError::CorruptStore {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        write_synced(&temp, &json)?;
        fs::rename(&temp, &path).map_err(|e| ImageError::io(&path, e))
    }

    /// Refuses an import whose compressed layers (`blob_bytes`, the least it unpacks to) would
    /// not fit above `min_free_bytes`.
    fn check_free_space(&self, blob_bytes: u64) -> Result<(), ImageError> {
        let free = free_bytes(&self.dir).map_err(|e| ImageError::io(&self.dir, e))?;
        let min_free = self.limits.min_free_bytes;
        if free < min_free.saturating_add(blob_bytes) {
            return Err(ImageError::NoSpace {
                path: self.dir.clone(),
                free,
                reason: format!(
                    "the layers take {blob_bytes} bytes compressed and {min_free} must stay free (state.min_free_bytes)"
                ),
            });
        }
        Ok(())
    }

    /// Removes `.tmp-*` dirs left by a crashed import (called with the store lock held).
    fn remove_stale_temp_dirs(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.filter_map(|e| e.ok()) {
            if entry.file_name().to_string_lossy().starts_with(".tmp-") {
                let path = entry.path();
                match fs::remove_dir_all(&path) {
                    Ok(()) => tracing::info!(path = %path.display(), "removed a stale import dir"),
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "cannot remove a stale import dir")
                    }
                }
            }
        }
    }
}

/// Checks a reference name: 1 to 255 printable characters of `[A-Za-z0-9._:/@+-]`, not a
/// digest (names starting with `sha256:` are how [`ImageStore::get`] asks for a digest).
fn validate_reference(reference: &str) -> Result<(), ImageError> {
    let bad = |reason: &str| ImageError::BadReference {
        reference: reference.to_owned(),
        reason: reason.to_owned(),
    };
    if reference.is_empty() {
        return Err(bad("empty"));
    }
    if reference.len() > 255 {
        return Err(bad("longer than 255 bytes"));
    }
    if reference.starts_with("sha256:") {
        return Err(bad("a reference cannot look like a digest"));
    }
    if let Some(c) = reference
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "._:/@+-".contains(*c)))
    {
        return Err(bad(&format!(
            "character {c:?} not allowed (letters, digits and ._:/@+- only)"
        )));
    }
    Ok(())
}

/// Writes a file and flushes it to disk.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    let mut file = File::create(path).map_err(|e| ImageError::io(path, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| ImageError::io(path, e))
}

/// An exclusive `flock` on `images/.lock`, released when dropped (the file is closed).
#[derive(Debug)]
struct StoreLock {
    _file: File,
}

/// How long [`StoreLock::acquire`] sleeps between two tries, at most.
const LOCK_POLL_MAX: std::time::Duration = std::time::Duration::from_millis(100);

impl StoreLock {
    /// Waits for the lock (another import, or the CLI, may hold it for long), polling so that
    /// `cancel` can end the wait.
    fn acquire(dir: &Path, cancel: &ImportCancel) -> Result<StoreLock, ImageError> {
        let path = dir.join(".lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| ImageError::io(&path, e))?;
        let mut pause = std::time::Duration::from_millis(5);
        loop {
            // SAFETY: flock on a file descriptor we own; no memory is involved.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                return Ok(StoreLock { _file: file });
            }
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => {}
                _ => return Err(ImageError::io(path, err)),
            }
            if cancel.is_cancelled() {
                return Err(ImageError::Cancelled);
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(LOCK_POLL_MAX);
        }
    }
}

/// An import's temp dir, removed when dropped unless persisted.
#[derive(Debug)]
struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl TempDir {
    fn create(store: &Path, hex: &str) -> Result<TempDir, ImageError> {
        let path = store.join(format!(".tmp-{hex}-{}", std::process::id()));
        if path.exists() {
            fs::remove_dir_all(&path).map_err(|e| ImageError::io(&path, e))?;
        }
        fs::create_dir(&path).map_err(|e| ImageError::io(&path, e))?;
        Ok(TempDir { path, keep: false })
    }

    fn persist(mut self, to: &Path) -> Result<(), ImageError> {
        if to.exists() {
            // A dir without image.json: the leftover of an import that crashed mid-rename.
            fs::remove_dir_all(to).map_err(|e| ImageError::io(to, e))?;
        }
        fs::rename(&self.path, to).map_err(|e| ImageError::io(to, e))?;
        self.keep = true;
        if let Some(parent) = to.parent() {
            if let Ok(dir) = File::open(parent) {
                let _ = dir.sync_all();
            }
        }
        Ok(())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.keep {
            if let Err(e) = fs::remove_dir_all(&self.path) {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot remove a failed import dir");
            }
        }
    }
}
