//! The blob cache `images/blobs/sha256/<hex>` and its downloads (`images/blobs/.partial/<hex>`,
//! resumed with a `Range` request, one download per blob under an `flock`), and the pull lock
//! `images/.pull.lock` (shared by pulls, exclusive for garbage collection).

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt as _;
use oci_spec::image::Descriptor;
use sha2::{Digest as _, Sha256};

use super::registry::Registry;
use super::ProgressSender;
use crate::image::layout::sha256_hex;
use crate::image::{ImageError, ImportCancel};

/// Partial downloads untouched for this long are removed by garbage collection.
pub const PARTIAL_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// How long a waiter sleeps between two tries of a lock.
const LOCK_POLL: Duration = Duration::from_millis(50);

/// `images/blobs`.
pub(in crate::image) fn blob_dir(store: &Path) -> PathBuf {
    store.join("blobs")
}

/// The blob cache of a store.
#[derive(Debug, Clone)]
pub(super) struct BlobCache {
    root: PathBuf,
}

impl BlobCache {
    pub(super) fn open(store: &Path) -> Result<BlobCache, ImageError> {
        let root = blob_dir(store);
        for dir in [root.join("sha256"), root.join(".partial")] {
            fs::create_dir_all(&dir).map_err(|e| ImageError::io(&dir, e))?;
        }
        Ok(BlobCache { root })
    }

    /// `images/blobs` (what a pull's layout links as its `blobs`).
    pub(super) fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, hex: &str) -> PathBuf {
        self.root.join("sha256").join(hex)
    }

    fn partial(&self, hex: &str) -> PathBuf {
        self.root.join(".partial").join(hex)
    }

    /// Whether the blob is cached with its declared size (its digest is checked when used).
    pub(super) fn has(&self, desc: &Descriptor) -> bool {
        sha256_hex(desc)
            .ok()
            .and_then(|hex| fs::metadata(self.path(hex)).ok())
            .is_some_and(|m| m.is_file() && m.len() == desc.size())
    }

    /// Stores a small verified blob (a manifest) by temp file and rename.
    pub(super) fn put(&self, desc: &Descriptor, bytes: &[u8]) -> Result<(), ImageError> {
        if self.has(desc) {
            return Ok(());
        }
        let hex = sha256_hex(desc)?;
        let temp = self
            .root
            .join(".partial")
            .join(format!("{hex}.put-{}", std::process::id()));
        let path = self.path(hex);
        fs::write(&temp, bytes)
            .and_then(|()| fs::rename(&temp, &path))
            .map_err(|e| ImageError::io(&path, e))
    }

    /// Drops a cached blob (it failed its digest check).
    pub(super) fn forget(&self, digest: &str) {
        if let Some(hex) = digest.strip_prefix("sha256:") {
            if crate::image::layout::is_sha256_hex(hex) {
                let _ = fs::remove_file(self.path(hex));
            }
        }
    }

    /// Makes sure the blob is in the cache: downloads it (resuming a partial download) unless
    /// it is there, or another download of it (this process or another) finished first.
    pub(super) async fn fetch(
        &self,
        registry: &Registry,
        desc: &Descriptor,
        progress: &ProgressSender,
        cancel: &ImportCancel,
    ) -> Result<(), ImageError> {
        let cached = |progress: &ProgressSender| {
            progress.send_modify(|p| {
                p.bytes_done += desc.size();
                p.bytes_cached += desc.size();
            });
        };
        if self.has(desc) {
            cached(progress);
            return Ok(());
        }
        let hex = sha256_hex(desc)?.to_owned();
        let partial_path = self.partial(&hex);
        let mut partial = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&partial_path)
            .map_err(|e| ImageError::io(&partial_path, e))?;
        lock(&partial, libc::LOCK_EX, &partial_path, cancel).await?;
        if self.has(desc) {
            // Another pull downloaded it while this one waited.
            drop(partial);
            cached(progress);
            return Ok(());
        }
        let size = desc.size();
        let mut have = partial
            .metadata()
            .map_err(|e| ImageError::io(&partial_path, e))?
            .len();
        let mut hasher = Sha256::new();
        if have > size {
            have = 0;
        }
        if have > 0 {
            hash_prefix(&mut partial, have, &mut hasher)
                .map_err(|e| ImageError::io(&partial_path, e))?;
        }
        let (sized, resumed) = registry.blob(desc, have).await?;
        if !resumed {
            have = 0;
            hasher = Sha256::new();
        }
        partial
            .set_len(have)
            .and_then(|()| {
                use std::io::Seek;
                partial.seek(io::SeekFrom::Start(have)).map(|_| ())
            })
            .map_err(|e| ImageError::io(&partial_path, e))?;
        if have > 0 {
            tracing::debug!(blob = %desc.digest(), offset = have, "resuming a blob download");
        }
        progress.send_modify(|p| p.bytes_done += have);
        let mut stream = sized.stream;
        let mut written = have;
        while let Some(chunk) = stream.next().await {
            if cancel.is_cancelled() {
                return Err(ImageError::Cancelled);
            }
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(e) => {
                    return Err(ImageError::RegistryUnavailable {
                        registry: registry_name(registry),
                        message: format!(
                            "blob {}: the download stopped after {written} of {size} bytes (a retry resumes it): {e}",
                            desc.digest()
                        ),
                    })
                }
            };
            let n = chunk.len() as u64;
            if written + n > size {
                drop(partial);
                let _ = fs::remove_file(&partial_path);
                return Err(ImageError::SizeMismatch {
                    digest: desc.digest().to_string(),
                    expected: size,
                    actual: written + n,
                });
            }
            partial
                .write_all(&chunk)
                .map_err(|e| ImageError::io(&partial_path, e))?;
            hasher.update(&chunk);
            written += n;
            progress.send_modify(|p| p.bytes_done += n);
        }
        if written != size {
            return Err(ImageError::RegistryUnavailable {
                registry: registry_name(registry),
                message: format!(
                    "blob {}: the download ended after {written} of {size} bytes (a retry resumes it)",
                    desc.digest()
                ),
            });
        }
        let actual = hex::encode(hasher.finalize());
        if actual != hex {
            drop(partial);
            let _ = fs::remove_file(&partial_path);
            return Err(ImageError::DigestMismatch {
                digest: desc.digest().to_string(),
                actual: format!("sha256:{actual}"),
            });
        }
        let path = self.path(&hex);
        partial
            .sync_all()
            .and_then(|()| fs::rename(&partial_path, &path))
            .map_err(|e| ImageError::io(&path, e))?;
        Ok(())
    }
}

fn registry_name(registry: &Registry) -> String {
    registry.registry().to_owned()
}

/// Hashes the first `len` bytes of `file`.
fn hash_prefix(file: &mut File, len: u64, hasher: &mut Sha256) -> io::Result<()> {
    use std::io::Seek;
    file.seek(io::SeekFrom::Start(0))?;
    let mut reader = file.take(len);
    let mut buf = vec![0; 256 * 1024];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        hasher.update(&buf[..n]);
    }
}

/// Takes `flock(op)` on `file`, polling (so `cancel` ends the wait) without blocking the
/// runtime.
async fn lock(file: &File, op: i32, path: &Path, cancel: &ImportCancel) -> Result<(), ImageError> {
    loop {
        match try_flock(file, op) {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => return Err(ImageError::io(path, e)),
        }
        if cancel.is_cancelled() {
            return Err(ImageError::Cancelled);
        }
        tokio::time::sleep(LOCK_POLL).await;
    }
}

/// `flock(op | LOCK_NB)`: whether it was taken.
fn try_flock(file: &File, op: i32) -> io::Result<bool> {
    loop {
        // SAFETY: flock on a descriptor we own; no memory is involved.
        if unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) } == 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Ok(false),
            _ => return Err(err),
        }
    }
}

/// `images/.pull.lock`: held shared by every pull while it runs, exclusively by garbage
/// collection (which then knows no pull is between downloading a blob and importing it).
#[derive(Debug)]
pub(in crate::image) struct PullLock {
    _file: File,
}

impl PullLock {
    fn open(store: &Path) -> Result<(File, PathBuf), ImageError> {
        let path = store.join(".pull.lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| ImageError::io(&path, e))?;
        Ok((file, path))
    }

    /// A pull's share (waits while garbage collection runs).
    pub(in crate::image) async fn shared(
        store: &Path,
        cancel: &ImportCancel,
    ) -> Result<PullLock, ImageError> {
        let (file, path) = Self::open(store)?;
        lock(&file, libc::LOCK_SH, &path, cancel).await?;
        Ok(PullLock { _file: file })
    }

    /// The exclusive lock, if no pull runs now.
    pub(in crate::image) fn try_exclusive(store: &Path) -> Result<Option<PullLock>, ImageError> {
        let (file, path) = Self::open(store)?;
        match try_flock(&file, libc::LOCK_EX) {
            Ok(true) => Ok(Some(PullLock { _file: file })),
            Ok(false) => Ok(None),
            Err(e) => Err(ImageError::io(path, e)),
        }
    }
}
