//! `[images]`: limits of an image import.

use serde::Deserialize;

use super::ByteSize;

/// `[images]`: what one import may take (see [`crate::image::ImportLimits`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImagesConfig {
    /// Most uncompressed layer bytes (tar streams, all layers of the image together) an import
    /// reads; past it the import stops (a decompression bomb).
    pub max_unpacked_bytes: ByteSize,
    /// Most tar entries (all layers together) an import applies.
    pub max_entries: u64,
    /// Free space an import leaves on the state dir's filesystem: refused when the layer blobs
    /// alone would not fit above it, stopped when the free space falls below it.
    pub min_free_bytes: ByteSize,
}

impl Default for ImagesConfig {
    fn default() -> Self {
        Self {
            max_unpacked_bytes: ByteSize(32 << 30),
            max_entries: 1_000_000,
            min_free_bytes: ByteSize(1 << 30),
        }
    }
}
