//! Garbage collection of the store: images' last use (`<hex>/last_used`, its mtime), the
//! store's footprint, removing least-recently-used images beyond `[images] max_bytes` (each
//! through its caller's removal, which refuses images active jobs run), and pruning cached
//! blobs no image references.
//!
//! An image's last use is when a job last resolved it (job start) or it was last pulled; an
//! image never used since its import counts from its import. Blobs are referenced by the
//! manifests of the images in the store (`blobs/sha256/<manifest hex>`, kept for each pulled
//! image); imported (not pulled) images have no blobs. Collection runs only when it gets the
//! pull lock exclusively: while a pull runs, blobs it has downloaded are not referenced yet.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use oci_spec::image::ImageManifest;

use super::layout::is_sha256_hex;
use super::pull::{blob_dir, PullLock, PARTIAL_MAX_AGE};
use super::{ImageError, ImageStore, RemovedImage};

/// What one collection did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Whether it ran (false: a pull was running; the next pull's collection does it).
    pub ran: bool,
    /// Manifest digests of the images removed.
    pub removed: Vec<String>,
    /// Images over the limit that were kept because a job uses them.
    pub kept_in_use: Vec<String>,
    /// Cached blobs deleted.
    pub blobs_deleted: usize,
    /// The store's footprint after it.
    pub bytes_after: u64,
}

impl ImageStore {
    /// Records that `digest`'s image was used now (a job started from it, or it was pulled).
    pub fn mark_used(&self, digest: &str) {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        if !is_sha256_hex(hex) {
            return;
        }
        let path = self.dir().join(hex).join("last_used");
        if !self.dir().join(hex).is_dir() {
            return;
        }
        if let Err(e) = fs::File::create(&path) {
            tracing::debug!(path = %path.display(), error = %e, "cannot record an image's use");
        }
    }

    /// When `hex`'s image was last used (seconds since the epoch).
    fn last_used(&self, hex: &str, imported_at: u64) -> u64 {
        fs::metadata(self.dir().join(hex).join("last_used"))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(imported_at, |d| d.as_secs().max(imported_at))
    }

    /// Bytes the store takes: the images' rootfs trees plus the cached blobs.
    pub fn footprint(&self) -> Result<u64, ImageError> {
        Ok(self.stored_bytes()? + dir_bytes(&blob_dir(self.dir()).join("sha256")))
    }

    /// Removes images, least recently used first (never `keep`), until the footprint is at most
    /// `max_bytes` (0: no limit), each through `remove` (given the manifest digest; an
    /// [`ImageError::InUse`] keeps the image and goes on); then cached blobs no image
    /// references, and partial downloads older than a day. Nothing when a pull runs.
    pub fn collect_garbage(
        &self,
        max_bytes: u64,
        keep: Option<&str>,
        remove: &mut dyn FnMut(&str) -> Result<Option<RemovedImage>, ImageError>,
    ) -> Result<GcReport, ImageError> {
        let Some(_lock) = PullLock::try_exclusive(self.dir())? else {
            return Ok(GcReport::default());
        };
        let mut report = GcReport {
            ran: true,
            ..GcReport::default()
        };
        report.blobs_deleted += self.prune_blobs()?;
        let mut total = self.footprint()?;
        if max_bytes > 0 && total > max_bytes {
            let mut seen = BTreeSet::new();
            let mut images: Vec<(u64, String)> = self
                .list()?
                .into_iter()
                .filter(|r| seen.insert(r.manifest_digest.clone()))
                .filter(|r| Some(r.manifest_digest.as_str()) != keep)
                .map(|r| {
                    let hex = r.manifest_digest.trim_start_matches("sha256:").to_owned();
                    (self.last_used(&hex, r.imported_at_unix), r.manifest_digest)
                })
                .collect();
            images.sort();
            for (_, digest) in images {
                if total <= max_bytes {
                    break;
                }
                match remove(&digest) {
                    Ok(_) => {
                        tracing::info!(digest = %digest, "garbage collection removed an unused image");
                        report.removed.push(digest);
                        report.blobs_deleted += self.prune_blobs()?;
                        total = self.footprint()?;
                    }
                    Err(ImageError::InUse { .. }) => report.kept_in_use.push(digest),
                    Err(e) => return Err(e),
                }
            }
        }
        report.bytes_after = total;
        Ok(report)
    }

    /// Deletes cached blobs no stored image references, stale partial downloads and layout
    /// dirs of pulls that crashed (called with the pull lock held exclusively).
    fn prune_blobs(&self) -> Result<usize, ImageError> {
        let blobs = blob_dir(self.dir()).join("sha256");
        let Ok(entries) = fs::read_dir(&blobs) else {
            return Ok(0);
        };
        let mut referenced = BTreeSet::new();
        for entry in fs::read_dir(self.dir()).map_err(|e| ImageError::io(self.dir(), e))? {
            let Ok(name) = entry.map(|e| e.file_name()) else {
                continue;
            };
            let Some(hex) = name.to_str().filter(|n| is_sha256_hex(n)) else {
                continue;
            };
            if !self.dir().join(hex).join("image.json").exists() {
                continue;
            }
            referenced.insert(hex.to_owned());
            if let Ok(manifest) = ImageManifest::from_file(blobs.join(hex)) {
                for desc in std::iter::once(manifest.config()).chain(manifest.layers()) {
                    referenced.insert(desc.digest().digest().to_owned());
                }
            }
        }
        let mut deleted = 0;
        for entry in entries.filter_map(|e| e.ok()) {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !referenced.contains(&name) && fs::remove_file(entry.path()).is_ok() {
                deleted += 1;
            }
        }
        let stale = |path: &Path| {
            fs::symlink_metadata(path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .is_some_and(|age| age > PARTIAL_MAX_AGE)
        };
        if let Ok(partials) = fs::read_dir(blob_dir(self.dir()).join(".partial")) {
            for entry in partials.filter_map(|e| e.ok()) {
                if stale(&entry.path()) {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        // Layout dirs of pulls: none runs now (the lock), so any left is a crash's.
        if let Ok(entries) = fs::read_dir(self.dir()) {
            for entry in entries.filter_map(|e| e.ok()) {
                if entry.file_name().to_string_lossy().starts_with(".pull-") {
                    let _ = fs::remove_dir_all(entry.path());
                }
            }
        }
        Ok(deleted)
    }
}

/// Bytes of the regular files directly in `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}
