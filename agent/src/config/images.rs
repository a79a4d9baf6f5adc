//! `[images]`: limits of an image import, the registry policy of pulls (which registries, which
//! CA, how large) and the store's size kept by garbage collection.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::ByteSize;

/// `[images]`: what one import may take (see [`crate::image::ImportLimits`]) and what a pull may
/// fetch (see `crate::image::pull`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImagesConfig {
    /// Most uncompressed layer bytes (tar streams, all layers of the image together) an import
    /// reads; past it the import stops (a decompression bomb).
    pub max_unpacked_bytes: ByteSize,
    /// Most tar entries (all layers together) an import applies. (The free space an import
    /// leaves is `[state] min_free_bytes`, the floor jobs are held to as well.)
    pub max_entries: u64,
    /// Registries (`host` or `host:port`, as written in a reference; Docker Hub is
    /// `docker.io`) a pull may fetch from; any other is refused. Empty: no pulls at all.
    pub allowed_registries: Vec<String>,
    /// Registries (also in `allowed_registries`) spoken to over plain HTTP. For tests only: no
    /// TLS means anyone on the path can read credentials and swap unverified bytes (digests
    /// are still checked).
    pub insecure_registries: Vec<String>,
    /// PEM file of CA certificates trusted for registries in addition to the system's roots
    /// (a private registry, a test CA). Empty: the system roots only.
    pub ca_file: PathBuf,
    /// Most compressed bytes (manifest-declared config + layer sizes) one pull fetches; a larger
    /// image is refused before any layer is downloaded, and no blob is read past its declared
    /// size.
    pub max_compressed_bytes: ByteSize,
    /// The store's size (unpacked images plus cached compressed blobs) above which images no
    /// active job uses are removed, least recently used first, after each pull. 0: never.
    pub max_bytes: ByteSize,
}

impl ImagesConfig {
    /// The CA file, unless disabled with an empty path.
    pub fn ca_file(&self) -> Option<&Path> {
        (!self.ca_file.as_os_str().is_empty()).then_some(self.ca_file.as_path())
    }
}

impl Default for ImagesConfig {
    fn default() -> Self {
        Self {
            max_unpacked_bytes: ByteSize(32 << 30),
            max_entries: 1_000_000,
            allowed_registries: [
                "docker.io",
                "ghcr.io",
                "quay.io",
                "registry.k8s.io",
                "nvcr.io",
            ]
            .map(str::to_owned)
            .to_vec(),
            insecure_registries: Vec::new(),
            ca_file: PathBuf::new(),
            max_compressed_bytes: ByteSize(16 << 30),
            max_bytes: ByteSize(200 << 30),
        }
    }
}
