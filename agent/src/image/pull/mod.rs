//! Pulling an image from an OCI registry into the store: [`pull`] resolves the reference
//! (a tag, or a pinned digest that the manifest must hash to; an image index is resolved to the
//! host's platform), checks the `[images]` policy ([`PullPolicy`]: allowed registries, size
//! caps), downloads the config and layer blobs the blob cache lacks, and imports the image
//! with [`ImageStore::import_cancellable`] from a temporary OCI layout whose `blobs` is the
//! cache, so a pulled image gets every check and protection of an import (digests, diff ids,
//! path escapes, device nodes, whiteouts, the unpack budget, atomic rename).
//!
//! The registry client is `oci-client` (the OCI distribution API with Docker Hub's token auth),
//! built per pull with rustls (`ring`): no OpenSSL. Credentials ([`Credentials`]) live in that
//! client for the one pull and are dropped with it; their `Debug` is redacted and they are
//! never logged or written.
//!
//! # Blob cache
//!
//! `<state>/images/blobs/sha256/<hex>`: the compressed blobs (manifest, config, layers) of
//! pulled images, shared by every image that names them: a second image with common layers
//! downloads only its new ones. A download streams into `blobs/.partial/<hex>`, hashed as it
//! arrives and never past its declared size; verified, it is renamed into place. A download
//! that stops (the registry died, the pull was cancelled) leaves its partial file, and the next
//! pull of that blob resumes it with an HTTP `Range` request (re-hashing what it has; a
//! registry answering with the whole blob restarts it); garbage collection removes partial
//! files untouched for a day. Each download holds an exclusive `flock` on its partial file:
//! two pulls of one blob, in the daemon or across the daemon and the CLI, download it once;
//! the second waits for the first and takes the blob from the cache (it sees no progress
//! while it waits, then gets its own result).
//!
//! # Limits
//!
//! The manifest's declared config + layer sizes must fit `max_compressed_bytes` and the free
//! space above `[state] min_free_bytes`, checked before any blob is downloaded; each blob is
//! then read no further than its declared size. Up to four blobs download at a time.
//! Unpacking is held to the import's limits (`max_unpacked_bytes`, `max_entries`,
//! `min_free_bytes`).

mod blobs;
mod registry;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use oci_spec::image::{Descriptor, DescriptorBuilder, ImageIndexBuilder, ImageManifest, MediaType};

use super::layout::{layer_compression, sha256_hex, DOCKER_MANIFEST};
use super::limits::free_bytes;
use super::{ImageError, ImageRecord, ImageStore, ImportCancel};
use crate::config::Config;

pub use blobs::PARTIAL_MAX_AGE;
pub(super) use blobs::{blob_dir, PullLock};

/// Registry user name and password (or token) for one pull. `Debug` shows the user name only.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password or access token.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// What the `[images]` policy lets a pull do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullPolicy {
    /// `allowed_registries`.
    pub allowed_registries: Vec<String>,
    /// `insecure_registries` (plain HTTP).
    pub insecure_registries: Vec<String>,
    /// `ca_file`, read at each pull.
    pub ca_file: Option<PathBuf>,
    /// `max_compressed_bytes`.
    pub max_compressed_bytes: u64,
    /// `max_bytes`: the store size garbage collection keeps after a pull (0: no limit).
    pub max_store_bytes: u64,
}

impl From<&Config> for PullPolicy {
    fn from(config: &Config) -> Self {
        let images = &config.images;
        Self {
            allowed_registries: images.allowed_registries.clone(),
            insecure_registries: images.insecure_registries.clone(),
            ca_file: images.ca_file().map(Path::to_owned),
            max_compressed_bytes: images.max_compressed_bytes.0,
            max_store_bytes: images.max_bytes.0,
        }
    }
}

/// Where a pull is (sent on a `watch` channel: a reader sees the latest).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PullProgress {
    /// `resolving`, `downloading`, `unpacking`.
    pub phase: &'static str,
    /// Layers of the image.
    pub layers_total: u32,
    /// Layers downloaded or found in the cache.
    pub layers_done: u32,
    /// Declared compressed bytes of the config and layers.
    pub bytes_total: u64,
    /// Bytes downloaded or found in the cache.
    pub bytes_done: u64,
    /// Of `bytes_done`, bytes found in the cache.
    pub bytes_cached: u64,
}

/// Receives a pull's progress.
pub type ProgressSender = tokio::sync::watch::Sender<PullProgress>;

/// Blobs one pull downloads at the same time.
const CONCURRENT_DOWNLOADS: usize = 4;

/// Largest manifest or index accepted from a registry.
const MAX_MANIFEST_BYTES: usize = 8 << 20;

/// Pulls `reference` into `store` within `policy`, reporting to `progress`; stops with
/// [`ImageError::Cancelled`] once `cancel` is set (a partial download stays for the next pull to
/// resume). Returns the image as [`ImageStore::import`] does, recorded under the reference's
/// full form (`docker.io/library/busybox:latest`).
pub async fn pull(
    store: &ImageStore,
    policy: &PullPolicy,
    reference: &str,
    credentials: Option<&Credentials>,
    progress: &ProgressSender,
    cancel: &ImportCancel,
) -> Result<ImageRecord, ImageError> {
    let parsed = registry::parse_reference(reference)?;
    let name = parsed.whole();
    let registry_name = parsed.registry().to_owned();
    if !policy.allowed_registries.contains(&registry_name) {
        return Err(ImageError::RegistryNotAllowed {
            registry: registry_name,
            key: "allowed_registries",
        });
    }
    progress.send_modify(|p| p.phase = "resolving");
    let client = registry::Registry::connect(policy, &parsed, credentials)?;
    let resolved = client.resolve_manifest().await?;
    let manifest = &resolved.manifest;

    let mut blobs_to_fetch: Vec<Descriptor> = vec![manifest.config().clone()];
    for layer in manifest.layers() {
        // Refuse what cannot be unpacked before downloading it.
        layer_compression(layer)?;
        blobs_to_fetch.push(layer.clone());
    }
    let declared: u64 = blobs_to_fetch.iter().map(Descriptor::size).sum();
    if declared > policy.max_compressed_bytes {
        return Err(ImageError::TooLarge {
            what: format!("image {name} compressed"),
            size: declared,
            max: policy.max_compressed_bytes,
            key: "max_compressed_bytes",
        });
    }

    let _pull_lock = PullLock::shared(store.dir(), cancel).await?;
    let cache = blobs::BlobCache::open(store.dir())?;
    let missing: u64 = blobs_to_fetch
        .iter()
        .filter(|d| !cache.has(d))
        .map(Descriptor::size)
        .sum();
    let min_free = store.limits().min_free_bytes;
    let free = free_bytes(store.dir()).map_err(|e| ImageError::io(store.dir(), e))?;
    if free < min_free.saturating_add(missing) {
        return Err(ImageError::NoSpace {
            path: store.dir().to_owned(),
            free,
            reason: format!(
                "the blobs to download take {missing} bytes and {min_free} must stay free (state.min_free_bytes)"
            ),
        });
    }
    progress.send_modify(|p| {
        p.phase = "downloading";
        p.layers_total = u32::try_from(manifest.layers().len()).unwrap_or(u32::MAX);
        p.bytes_total = declared;
    });
    cache.put(&resolved.descriptor, &resolved.bytes)?;
    let client = Arc::new(client);
    let slots = tokio::sync::Semaphore::new(CONCURRENT_DOWNLOADS);
    let fetches = blobs_to_fetch.iter().enumerate().map(|(i, desc)| {
        let client = client.clone();
        let cache = cache.clone();
        let slots = &slots;
        async move {
            let _slot = slots.acquire().await.map_err(|_| ImageError::Cancelled)?;
            cache.fetch(&client, desc, progress, cancel).await?;
            if i > 0 {
                progress.send_modify(|p| p.layers_done += 1);
            }
            Ok::<(), ImageError>(())
        }
    });
    futures_util::future::try_join_all(fetches).await?;
    drop(client);

    progress.send_modify(|p| p.phase = "unpacking");
    let layout = TempLayout::create(store.dir(), &cache, &resolved.descriptor, &name)?;
    let record = {
        let (store, cancel, dir, name) = (
            store.clone(),
            cancel.clone(),
            layout.path.clone(),
            name.clone(),
        );
        tokio::task::spawn_blocking(move || store.import_cancellable(&dir, Some(&name), &cancel))
            .await
            .map_err(|e| ImageError::io(&layout.path, std::io::Error::other(e.to_string())))?
    };
    drop(layout);
    let record = match record {
        Ok(record) => record,
        Err(err @ ImageError::DigestMismatch { .. }) => {
            // A cached blob that no longer hashes right: gone, so a retry downloads it.
            if let ImageError::DigestMismatch { digest, .. } = &err {
                cache.forget(digest);
            }
            return Err(err);
        }
        Err(err) => return Err(err),
    };
    store.mark_used(&record.manifest_digest);
    tracing::info!(reference = %name, digest = %record.manifest_digest, "pulled image");
    Ok(record)
}

/// A manifest from the registry: its bytes (as hashed), its descriptor, parsed.
#[derive(Debug)]
struct ResolvedManifest {
    bytes: Vec<u8>,
    descriptor: Descriptor,
    manifest: ImageManifest,
}

/// `images/.pull-<pid>-<n>`: an OCI layout naming one manifest, whose `blobs` is a symlink to
/// the blob cache; removed when dropped (a crash leaves it for garbage collection).
#[derive(Debug)]
struct TempLayout {
    path: PathBuf,
}

impl TempLayout {
    fn create(
        store: &Path,
        cache: &blobs::BlobCache,
        manifest: &Descriptor,
        name: &str,
    ) -> Result<TempLayout, ImageError> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = store.join(format!(
            ".pull-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path).map_err(|e| ImageError::io(&path, e))?;
        let layout = TempLayout { path };
        let io = |p: &Path| {
            let p = p.to_owned();
            move |e| ImageError::io(p, e)
        };
        let marker = layout.path.join("oci-layout");
        std::fs::write(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(io(&marker))?;
        let mut desc = manifest.clone();
        desc.set_annotations(Some(
            [(
                oci_spec::image::ANNOTATION_REF_NAME.to_owned(),
                name.to_owned(),
            )]
            .into(),
        ));
        let index = ImageIndexBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageIndex)
            .manifests(vec![desc])
            .build()
            .map_err(|e| ImageError::BadDocument {
                what: "index.json".to_owned(),
                reason: e.to_string(),
            })?;
        let index_path = layout.path.join("index.json");
        let json = serde_json::to_vec(&index).map_err(|e| ImageError::BadDocument {
            what: "index.json".to_owned(),
            reason: e.to_string(),
        })?;
        std::fs::write(&index_path, json).map_err(io(&index_path))?;
        let blobs = layout.path.join("blobs");
        std::os::unix::fs::symlink(cache.root(), &blobs).map_err(io(&blobs))?;
        Ok(layout)
    }
}

impl Drop for TempLayout {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove a pull's layout dir");
        }
    }
}

/// The descriptor of manifest `bytes` of media type `media_type` (as the registry said; the
/// OCI type when it said none).
fn manifest_descriptor(bytes: &[u8], media_type: Option<&str>) -> Result<Descriptor, ImageError> {
    use sha2::{Digest as _, Sha256};
    let hex = hex::encode(Sha256::digest(bytes));
    let media_type = match media_type {
        Some(m) if m == DOCKER_MANIFEST => MediaType::Other(m.to_owned()),
        _ => MediaType::ImageManifest,
    };
    let digest: oci_spec::image::Digest =
        format!("sha256:{hex}")
            .parse()
            .map_err(|e: oci_spec::OciSpecError| ImageError::BadDocument {
                what: "manifest".to_owned(),
                reason: e.to_string(),
            })?;
    let desc = DescriptorBuilder::default()
        .media_type(media_type)
        .digest(digest)
        .size(bytes.len() as u64)
        .build()
        .map_err(|e| ImageError::BadDocument {
            what: "manifest".to_owned(),
            reason: e.to_string(),
        })?;
    sha256_hex(&desc)?;
    Ok(desc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_debug_hides_the_password() {
        let credentials = Credentials {
            username: "robot".into(),
            password: "hunter2".into(),
        };
        let text = format!("{credentials:?} {credentials:#?}");
        assert!(
            !text.contains("hunter2") && text.contains("robot"),
            "{text}"
        );
    }

    #[test]
    fn malformed_references_are_refused_naming_them() {
        for bad in ["", "a b", "repo::tag", "repo@sha256:abc", "repo@md5:00"] {
            let err = registry::parse_reference(bad).unwrap_err();
            assert!(
                matches!(err, ImageError::BadReference { .. }),
                "{bad:?}: {err}"
            );
        }
        let ok = registry::parse_reference("busybox").unwrap();
        assert_eq!(ok.whole(), "docker.io/library/busybox:latest");
        assert_eq!(ok.registry(), "docker.io");
    }
}
