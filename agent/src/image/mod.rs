//! The OCI image store under `<state dir>/images`: imports OCI image layout directories (what
//! `skopeo copy ... oci:DIR[:TAG]` writes), verifies every blob, unpacks the layers into a
//! rootfs that jobs use read-only, and records what it imported.
//!
//! # Import
//!
//! `index.json` -> manifest -> config + layers, each blob checked against its descriptor (size
//! first, then sha256 while it is read, so the bytes that are unpacked are the bytes that were
//! hashed: the layout may change under us without fooling the check). Layers are also checked
//! against the config's `rootfs.diff_ids` (sha256 of the uncompressed tar). Layer media types:
//! `application/vnd.oci.image.layer.v1.tar`, `...tar+gzip` (and Docker's gzip layer type);
//! zstd layers are refused with an error saying so. Unpacking rules (whiteouts, path escapes,
//! device nodes) are in the `unpack` module (private).
//!
//! An import is atomic: the rootfs and the metadata are written into `images/.tmp-*` and renamed
//! to `images/<manifest digest hex>` at the end; a failed import removes its temp dir, and a
//! crashed one leaves a `.tmp-*` dir that the next import removes. Re-importing an image that
//! is already there (same manifest digest) verifies the manifest and config again, re-points the
//! reference and keeps the existing rootfs. Imports take an exclusive `flock` on
//! `images/.lock`, so two importers (the daemon and the CLI) never race; readers need no lock
//! (every file they read is replaced by rename).
//!
//! # On disk
//!
//! ```text
//! <state>/images/refs.json                      {"busybox:latest": "sha256:<hex>", ...}
//! <state>/images/<hex>/image.json               the ImageRecord as first imported
//! <state>/images/<hex>/rootfs/                  the unpacked layers
//! ```
//!
//! Metadata lives in JSON files next to each rootfs rather than in the SQLite state store: the
//! record and the rootfs then appear (rename) and disappear together, an image dir is
//! self-describing, and the store needs no schema migration that would collide with the job
//! tables added in parallel. Images are few and read rarely, so a file per image is enough.
//!
//! # Removal
//!
//! [`ImageStore::remove`] takes a name (or every name, given a digest) off `refs.json`, and the
//! image dir with the last name, unless its caller's check refuses (the daemon refuses while an
//! active job runs the image). The dir is renamed to `.tmp-rm-*` under the store lock and
//! deleted after it.
//!
//! Not done (yet): pulling from registries, nested (multi-platform) indexes, zstd, xattrs
//! (file capabilities are not restored).

// Test image builders: for this crate's tests and, through the `test-util` feature, the
// integration tests; not in the shipped binary.
#[cfg(any(test, feature = "test-util"))]
pub mod testing;
mod unpack;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use oci_spec::image::{
    Descriptor, DigestAlgorithm, ImageConfiguration, ImageIndex, ImageManifest, MediaType, Os,
    ANNOTATION_REF_NAME,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// Largest `index.json`, manifest or config blob read into memory.
const MAX_JSON_BYTES: u64 = 8 << 20;

/// Docker's gzip layer media type, accepted as gzip.
const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Docker's manifest media type (same shape as the OCI one).
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker's config media type (same shape as the OCI one).
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// An image store or import failure; each names the blob, path or field at fault.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A file or directory could not be read or written.
    #[error("{}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// The directory is not an OCI image layout.
    #[error("{dir} is not an OCI image layout: {reason}")]
    NotALayout {
        /// The layout directory.
        dir: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A JSON document (index.json, a manifest or a config) does not parse or is not what its
    /// descriptor says.
    #[error("{what}: {reason}")]
    BadDocument {
        /// Which document (`index.json`, `manifest sha256:...`, `config sha256:...`).
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// A blob named by a descriptor is not in `blobs/`.
    #[error("blob {digest} is missing ({path})")]
    MissingBlob {
        /// The descriptor's digest.
        digest: String,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// A blob's sha256 is not its descriptor's digest.
    #[error("blob {digest}: digest mismatch (content hashes to {actual})")]
    DigestMismatch {
        /// The descriptor's digest.
        digest: String,
        /// What the content hashes to.
        actual: String,
    },
    /// A blob's size is not its descriptor's size.
    #[error("blob {digest}: size mismatch (descriptor says {expected} bytes, blob has {actual})")]
    SizeMismatch {
        /// The descriptor's digest.
        digest: String,
        /// The descriptor's size.
        expected: u64,
        /// The blob's size (or the bytes read before giving up).
        actual: u64,
    },
    /// A layer's uncompressed content does not hash to the config's `rootfs.diff_ids` entry.
    #[error("layer {digest}: uncompressed content hashes to {actual}, config rootfs.diff_ids says {expected}")]
    DiffIdMismatch {
        /// The layer's digest.
        digest: String,
        /// The config's diff id.
        expected: String,
        /// What the uncompressed tar hashes to.
        actual: String,
    },
    /// A descriptor uses a digest algorithm other than sha256.
    #[error("blob {digest}: unsupported digest algorithm (only sha256)")]
    UnsupportedDigest {
        /// The descriptor's digest.
        digest: String,
    },
    /// A descriptor has a media type the store cannot handle.
    #[error("blob {digest}: unsupported media type {media_type}{hint}")]
    UnsupportedMediaType {
        /// The descriptor's digest.
        digest: String,
        /// Its media type.
        media_type: String,
        /// Extra advice (empty or starting with `: `).
        hint: String,
    },
    /// The layout's index does not say which manifest to import.
    #[error("index.json: {0}")]
    ManifestChoice(String),
    /// The image reference is missing or malformed.
    #[error("reference {reference:?}: {reason}")]
    BadReference {
        /// The reference as given.
        reference: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The image is for another platform.
    #[error("config {field}: image is for {value:?}, this host runs {expected:?}")]
    Platform {
        /// `os` or `architecture`.
        field: &'static str,
        /// The image's value.
        value: String,
        /// The host's value.
        expected: String,
    },
    /// A layer entry would escape the rootfs or is refused (device node, bad whiteout).
    #[error("layer {layer}: entry {entry:?}: {reason}")]
    UnsafeEntry {
        /// The layer's digest.
        layer: String,
        /// The entry's path as stored in the tar.
        entry: String,
        /// Why it is refused.
        reason: String,
    },
    /// A layer could not be read (bad gzip or tar) or an entry could not be written.
    #[error("layer {layer}: {context}")]
    Layer {
        /// The layer's digest.
        layer: String,
        /// The entry or step.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The image cannot be removed now.
    #[error("image {image}: {reason}")]
    InUse {
        /// The name it was asked by.
        image: String,
        /// Why (the jobs that run it).
        reason: String,
    },
    /// A file of the store itself is damaged.
    #[error("image store {path}: {reason}")]
    CorruptStore {
        /// The damaged file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl ImageError {
    fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

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
    /// Opens (creating when missing) the store under `<state_dir>/images`.
    pub fn open(state_dir: &Path) -> Result<ImageStore, ImageError> {
        let state_dir = std::path::absolute(state_dir).map_err(|e| ImageError::io(state_dir, e))?;
        let dir = state_dir.join("images");
        fs::create_dir_all(&dir).map_err(|e| ImageError::io(&dir, e))?;
        Ok(ImageStore { dir })
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
    pub fn import(
        &self,
        layout_dir: &Path,
        reference: Option<&str>,
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

        let _lock = StoreLock::acquire(&self.dir)?;
        let final_dir = self.dir.join(&manifest_hex);
        let record = if final_dir.join("image.json").exists() {
            tracing::debug!(digest = %manifest_digest, "image already unpacked");
            self.read_image(&manifest_hex)?
        } else {
            self.remove_stale_temp_dirs();
            let temp = TempDir::create(&self.dir, &manifest_hex)?;
            let rootfs = temp.path.join("rootfs");
            fs::create_dir(&rootfs).map_err(|e| ImageError::io(&rootfs, e))?;
            for layer in &layers {
                tracing::debug!(layer = %layer.digest, "unpacking layer");
                unpack::apply_layer(&rootfs, layer)?;
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
        let _lock = StoreLock::acquire(&self.dir)?;
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

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The hex part of a sha256 descriptor digest (validated: it becomes a file name).
fn sha256_hex(desc: &Descriptor) -> Result<&str, ImageError> {
    match desc.digest().algorithm() {
        DigestAlgorithm::Sha256 if is_sha256_hex(desc.digest().digest()) => {
            Ok(desc.digest().digest())
        }
        _ => Err(ImageError::UnsupportedDigest {
            digest: desc.digest().to_string(),
        }),
    }
}

/// The host's GOARCH name (what image configs say).
fn host_goarch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        "arm" => "arm",
        other => other,
    }
}

fn check_platform(config: &ImageConfiguration) -> Result<(), ImageError> {
    if *config.os() != Os::Linux {
        return Err(ImageError::Platform {
            field: "os",
            value: config.os().to_string(),
            expected: "linux".to_owned(),
        });
    }
    let arch = config.architecture().to_string();
    if arch != host_goarch() {
        return Err(ImageError::Platform {
            field: "architecture",
            value: arch,
            expected: host_goarch().to_owned(),
        });
    }
    Ok(())
}

fn runtime_config(config: &ImageConfiguration) -> ImageRuntimeConfig {
    let Some(c) = config.config() else {
        return ImageRuntimeConfig::default();
    };
    let non_empty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
    ImageRuntimeConfig {
        entrypoint: c.entrypoint().clone().unwrap_or_default(),
        cmd: c.cmd().clone().unwrap_or_default(),
        env: c.env().clone().unwrap_or_default(),
        working_dir: non_empty(c.working_dir()),
        user: non_empty(c.user()),
    }
}

/// Writes a file and flushes it to disk.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    let mut file = File::create(path).map_err(|e| ImageError::io(path, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| ImageError::io(path, e))
}

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    None,
    Gzip,
}

/// A verified-to-exist layer blob, ready to unpack.
#[derive(Debug, Clone)]
pub(crate) struct LayerBlob {
    pub(crate) path: PathBuf,
    pub(crate) digest: String,
    pub(crate) hex: String,
    pub(crate) size: u64,
    pub(crate) compression: Compression,
    /// The config's diff id for this layer (`sha256:<hex>` of the uncompressed tar).
    pub(crate) diff_id: String,
}

/// An OCI image layout directory being imported.
#[derive(Debug)]
struct Layout {
    dir: PathBuf,
    index: ImageIndex,
}

impl Layout {
    fn open(dir: &Path) -> Result<Layout, ImageError> {
        let not_layout = |reason: String| ImageError::NotALayout {
            dir: dir.to_owned(),
            reason,
        };
        let marker = dir.join("oci-layout");
        let text = match fs::read(&marker) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(not_layout("no oci-layout file".to_owned()))
            }
            Err(e) => return Err(ImageError::io(marker, e)),
        };
        let marker: serde_json::Value =
            serde_json::from_slice(&text).map_err(|e| not_layout(format!("oci-layout: {e}")))?;
        match marker.get("imageLayoutVersion").and_then(|v| v.as_str()) {
            Some(v) if v.starts_with("1.") => {}
            Some(v) => {
                return Err(not_layout(format!(
                    "oci-layout: imageLayoutVersion {v:?} is not 1.x"
                )))
            }
            None => return Err(not_layout("oci-layout: no imageLayoutVersion".to_owned())),
        }
        let index_path = dir.join("index.json");
        let bytes = read_bounded(&index_path)?;
        let index = ImageIndex::from_reader(&bytes[..]).map_err(|e| ImageError::BadDocument {
            what: "index.json".to_owned(),
            reason: e.to_string(),
        })?;
        if index.schema_version() != 2 {
            return Err(ImageError::BadDocument {
                what: "index.json".to_owned(),
                reason: format!("schemaVersion {} (expected 2)", index.schema_version()),
            });
        }
        Ok(Layout {
            dir: dir.to_owned(),
            index,
        })
    }

    /// The manifest to import and its reference name.
    fn choose_manifest(&self, reference: Option<&str>) -> Result<(Descriptor, String), ImageError> {
        let manifests = self.index.manifests();
        let ref_name = |d: &Descriptor| -> Option<String> {
            d.annotations()
                .as_ref()
                .and_then(|a| a.get(ANNOTATION_REF_NAME))
                .cloned()
        };
        let chosen = match reference {
            Some(wanted) => {
                let tagged: Vec<&Descriptor> = manifests
                    .iter()
                    .filter(|d| ref_name(d).as_deref() == Some(wanted))
                    .collect();
                match (tagged.as_slice(), manifests.as_slice()) {
                    ([one], _) => ((*one).clone(), wanted.to_owned()),
                    ([], [only]) => (only.clone(), wanted.to_owned()),
                    ([], []) => return Err(ImageError::ManifestChoice("no manifests".to_owned())),
                    ([], many) => {
                        return Err(ImageError::ManifestChoice(format!(
                            "{} manifests and none is tagged {wanted:?} ({})",
                            many.len(),
                            tags(manifests)
                        )))
                    }
                    (several, _) => {
                        return Err(ImageError::ManifestChoice(format!(
                            "{} manifests are tagged {wanted:?}",
                            several.len()
                        )))
                    }
                }
            }
            None => match manifests.as_slice() {
                [] => return Err(ImageError::ManifestChoice("no manifests".to_owned())),
                [only] => match ref_name(only) {
                    Some(name) => (only.clone(), name),
                    None => {
                        return Err(ImageError::ManifestChoice(format!(
                            "the manifest has no {ANNOTATION_REF_NAME} annotation; give a reference (--tag NAME)"
                        )))
                    }
                },
                many => {
                    return Err(ImageError::ManifestChoice(format!(
                        "{} manifests ({}); choose one with a reference (--tag NAME)",
                        many.len(),
                        tags(manifests)
                    )))
                }
            },
        };
        let (desc, name) = chosen;
        match desc.media_type() {
            MediaType::ImageManifest => {}
            MediaType::Other(m) if m == DOCKER_MANIFEST => {}
            MediaType::ImageIndex => {
                return Err(ImageError::UnsupportedMediaType {
                    digest: desc.digest().to_string(),
                    media_type: desc.media_type().to_string(),
                    hint: ": nested (multi-platform) indexes are not supported; copy one platform (skopeo copy --override-arch ...)".to_owned(),
                })
            }
            other => {
                return Err(ImageError::UnsupportedMediaType {
                    digest: desc.digest().to_string(),
                    media_type: other.to_string(),
                    hint: ": expected an image manifest".to_owned(),
                })
            }
        }
        Ok((desc, name))
    }

    fn blob_path(&self, desc: &Descriptor) -> Result<PathBuf, ImageError> {
        let hex = sha256_hex(desc)?;
        Ok(self.dir.join("blobs").join("sha256").join(hex))
    }

    /// Reads a small blob whole and checks its size and digest.
    fn read_verified(&self, desc: &Descriptor) -> Result<Vec<u8>, ImageError> {
        let digest = desc.digest().to_string();
        let path = self.blob_path(desc)?;
        if desc.size() > MAX_JSON_BYTES {
            return Err(ImageError::BadDocument {
                what: format!("blob {digest}"),
                reason: format!(
                    "{} bytes is larger than the {MAX_JSON_BYTES}-byte limit",
                    desc.size()
                ),
            });
        }
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ImageError::MissingBlob { digest, path })
            }
            Err(e) => return Err(ImageError::io(path, e)),
        };
        let mut bytes = Vec::new();
        file.take(desc.size() + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| ImageError::io(&path, e))?;
        if bytes.len() as u64 != desc.size() {
            let actual = fs::metadata(&path).map_or(bytes.len() as u64, |m| m.len());
            return Err(ImageError::SizeMismatch {
                digest,
                expected: desc.size(),
                actual,
            });
        }
        let actual = hex::encode(Sha256::digest(&bytes));
        if actual != desc.digest().digest() {
            return Err(ImageError::DigestMismatch {
                digest,
                actual: format!("sha256:{actual}"),
            });
        }
        Ok(bytes)
    }

    fn read_manifest(&self, desc: &Descriptor) -> Result<ImageManifest, ImageError> {
        let what = format!("manifest {}", desc.digest());
        let bytes = self.read_verified(desc)?;
        let manifest =
            ImageManifest::from_reader(&bytes[..]).map_err(|e| ImageError::BadDocument {
                what: what.clone(),
                reason: e.to_string(),
            })?;
        if manifest.schema_version() != 2 {
            return Err(ImageError::BadDocument {
                what,
                reason: format!("schemaVersion {} (expected 2)", manifest.schema_version()),
            });
        }
        match manifest.media_type() {
            None | Some(MediaType::ImageManifest) => {}
            Some(MediaType::Other(m)) if m == DOCKER_MANIFEST => {}
            Some(other) => {
                return Err(ImageError::BadDocument {
                    what,
                    reason: format!("mediaType {other} is not an image manifest"),
                })
            }
        }
        Ok(manifest)
    }

    fn read_config(&self, desc: &Descriptor) -> Result<ImageConfiguration, ImageError> {
        match desc.media_type() {
            MediaType::ImageConfig => {}
            MediaType::Other(m) if m == DOCKER_CONFIG => {}
            other => {
                return Err(ImageError::UnsupportedMediaType {
                    digest: desc.digest().to_string(),
                    media_type: other.to_string(),
                    hint: ": expected an image config".to_owned(),
                })
            }
        }
        let bytes = self.read_verified(desc)?;
        ImageConfiguration::from_reader(&bytes[..]).map_err(|e| ImageError::BadDocument {
            what: format!("config {}", desc.digest()),
            reason: e.to_string(),
        })
    }

    /// Checks a layer descriptor's media type, and that its blob exists with the right size.
    fn layer(&self, desc: &Descriptor, diff_id: &str) -> Result<LayerBlob, ImageError> {
        let digest = desc.digest().to_string();
        let compression = match desc.media_type() {
            MediaType::ImageLayer | MediaType::ImageLayerNonDistributable => Compression::None,
            MediaType::ImageLayerGzip | MediaType::ImageLayerNonDistributableGzip => {
                Compression::Gzip
            }
            MediaType::Other(m) if m == DOCKER_LAYER_GZIP => Compression::Gzip,
            MediaType::ImageLayerZstd | MediaType::ImageLayerNonDistributableZstd => {
                return Err(ImageError::UnsupportedMediaType {
                    digest,
                    media_type: desc.media_type().to_string(),
                    hint: ": zstd layers are not supported; convert with skopeo copy --dest-compress-format gzip".to_owned(),
                })
            }
            other => {
                return Err(ImageError::UnsupportedMediaType {
                    digest,
                    media_type: other.to_string(),
                    hint: ": expected an OCI layer (tar or tar+gzip)".to_owned(),
                })
            }
        };
        let hex = sha256_hex(desc)?.to_owned();
        let path = self.blob_path(desc)?;
        let meta = match fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ImageError::MissingBlob { digest, path })
            }
            Err(e) => return Err(ImageError::io(path, e)),
        };
        if !meta.is_file() {
            return Err(ImageError::MissingBlob { digest, path });
        }
        if meta.len() != desc.size() {
            return Err(ImageError::SizeMismatch {
                digest,
                expected: desc.size(),
                actual: meta.len(),
            });
        }
        if !diff_id.strip_prefix("sha256:").is_some_and(is_sha256_hex) {
            return Err(ImageError::BadDocument {
                what: "config rootfs.diff_ids".to_owned(),
                reason: format!("{diff_id:?} is not a sha256 digest"),
            });
        }
        Ok(LayerBlob {
            path,
            digest,
            hex,
            size: desc.size(),
            compression,
            diff_id: diff_id.to_owned(),
        })
    }
}

fn tags(manifests: &[Descriptor]) -> String {
    let names: Vec<String> = manifests
        .iter()
        .map(|d| {
            d.annotations()
                .as_ref()
                .and_then(|a| a.get(ANNOTATION_REF_NAME))
                .map_or_else(|| "untagged".to_owned(), |n| format!("{n:?}"))
        })
        .collect();
    format!("tags: {}", names.join(", "))
}

/// Reads a JSON file of the layout, refusing huge ones.
fn read_bounded(path: &Path) -> Result<Vec<u8>, ImageError> {
    let file = File::open(path).map_err(|e| ImageError::io(path, e))?;
    let mut bytes = Vec::new();
    file.take(MAX_JSON_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ImageError::io(path, e))?;
    if bytes.len() as u64 > MAX_JSON_BYTES {
        return Err(ImageError::BadDocument {
            what: path.display().to_string(),
            reason: format!("larger than the {MAX_JSON_BYTES}-byte limit"),
        });
    }
    Ok(bytes)
}

/// An exclusive `flock` on `images/.lock`, released when dropped (the file is closed).
#[derive(Debug)]
struct StoreLock {
    _file: File,
}

impl StoreLock {
    fn acquire(dir: &Path) -> Result<StoreLock, ImageError> {
        let path = dir.join(".lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| ImageError::io(&path, e))?;
        loop {
            // SAFETY: flock on a file descriptor we own; no memory is involved.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                return Ok(StoreLock { _file: file });
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(ImageError::io(path, err));
            }
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

#[cfg(test)]
mod tests;
