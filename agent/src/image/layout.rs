//! Reading an OCI image layout directory: `oci-layout`, `index.json`, the manifest to import,
//! its config and layer blobs, each checked against its descriptor (size, then sha256); and
//! what the store takes from the image config (the platform check, the runtime defaults).

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use oci_spec::image::{
    Descriptor, DigestAlgorithm, ImageConfiguration, ImageIndex, ImageManifest, MediaType, Os,
    ANNOTATION_REF_NAME,
};
use sha2::{Digest as _, Sha256};

use super::{host_goarch, ImageError, ImageRuntimeConfig};

/// Largest `index.json`, manifest or config blob read into memory.
const MAX_JSON_BYTES: u64 = 8 << 20;

/// Docker's gzip layer media type, accepted as gzip.
const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Docker's manifest media type (same shape as the OCI one).
pub(super) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker's config media type (same shape as the OCI one).
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    None,
    Gzip,
    Zstd,
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
pub(super) struct Layout {
    dir: PathBuf,
    index: ImageIndex,
}

impl Layout {
    pub(super) fn open(dir: &Path) -> Result<Layout, ImageError> {
        let not_layout = |reason: String| ImageError::NotALayout {
            dir: dir.to_owned(),
            reason,
        };
        let marker = dir.join("oci-layout");
        let text = match read_bounded_io(&marker) {
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
    pub(super) fn choose_manifest(
        &self,
        reference: Option<&str>,
    ) -> Result<(Descriptor, String), ImageError> {
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
        let file = match open_regular(&path) {
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

    pub(super) fn read_manifest(&self, desc: &Descriptor) -> Result<ImageManifest, ImageError> {
        parse_manifest(&self.read_verified(desc)?, desc)
    }

    pub(super) fn read_config(&self, desc: &Descriptor) -> Result<ImageConfiguration, ImageError> {
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
    pub(super) fn layer(&self, desc: &Descriptor, diff_id: &str) -> Result<LayerBlob, ImageError> {
        let digest = desc.digest().to_string();
        let compression = layer_compression(desc)?;
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

/// How a layer descriptor's blob is compressed, from its media type; any type but an OCI or
/// Docker layer (tar, tar+gzip, tar+zstd) is refused.
pub(super) fn layer_compression(desc: &Descriptor) -> Result<Compression, ImageError> {
    match desc.media_type() {
        MediaType::ImageLayer | MediaType::ImageLayerNonDistributable => Ok(Compression::None),
        MediaType::ImageLayerGzip | MediaType::ImageLayerNonDistributableGzip => {
            Ok(Compression::Gzip)
        }
        MediaType::Other(m) if m == DOCKER_LAYER_GZIP => Ok(Compression::Gzip),
        MediaType::ImageLayerZstd | MediaType::ImageLayerNonDistributableZstd => {
            Ok(Compression::Zstd)
        }
        other => Err(ImageError::UnsupportedMediaType {
            digest: desc.digest().to_string(),
            media_type: other.to_string(),
            hint: ": expected an OCI layer (tar, tar+gzip or tar+zstd)".to_owned(),
        }),
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
    let bytes = read_bounded_io(path).map_err(|e| ImageError::io(path, e))?;
    if bytes.len() as u64 > MAX_JSON_BYTES {
        return Err(ImageError::BadDocument {
            what: path.display().to_string(),
            reason: format!("larger than the {MAX_JSON_BYTES}-byte limit"),
        });
    }
    Ok(bytes)
}

/// At most [`MAX_JSON_BYTES`] + 1 bytes of a regular file.
fn read_bounded_io(path: &Path) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    open_regular(path)?
        .take(MAX_JSON_BYTES + 1)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Opens a file of the layout for reading, refusing anything but a regular file. The open
/// itself never blocks: a FIFO planted in the layout is opened non-blocking and refused, where
/// a plain open would wait for a writer forever.
pub(super) fn open_regular(path: &Path) -> io::Result<File> {
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok(file)
}

pub(super) fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The hex part of a sha256 descriptor digest (validated: it becomes a file name).
pub(super) fn sha256_hex(desc: &Descriptor) -> Result<&str, ImageError> {
    match desc.digest().algorithm() {
        DigestAlgorithm::Sha256 if is_sha256_hex(desc.digest().digest()) => {
            Ok(desc.digest().digest())
        }
        _ => Err(ImageError::UnsupportedDigest {
            digest: desc.digest().to_string(),
        }),
    }
}

pub(super) fn check_platform(config: &ImageConfiguration) -> Result<(), ImageError> {
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

pub(super) fn runtime_config(config: &ImageConfiguration) -> ImageRuntimeConfig {
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

/// An image manifest's bytes (already verified against `desc`) as a schema 2 OCI or Docker
/// image manifest; anything else is `BadDocument`.
pub(super) fn parse_manifest(bytes: &[u8], desc: &Descriptor) -> Result<ImageManifest, ImageError> {
    let what = format!("manifest {}", desc.digest());
    let manifest = ImageManifest::from_reader(bytes).map_err(|e| ImageError::BadDocument {
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
        None | Some(MediaType::ImageManifest) => Ok(manifest),
        Some(MediaType::Other(m)) if m == DOCKER_MANIFEST => Ok(manifest),
        Some(other) => Err(ImageError::BadDocument {
            what,
            reason: format!("mediaType {other} is not an image manifest"),
        }),
    }
}
