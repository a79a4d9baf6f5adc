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
    /// Most tar entries (all layers together) an import applies. (The free space an import
    /// leaves is `[state] min_free_bytes`, the floor jobs are held to as well.)
    pub max_entries: u64,
}

impl Default for ImagesConfig {
    fn default() -> Self {
        Self {
            max_unpacked_bytes: ByteSize(32 << 30),
            max_entries: 1_000_000,
        }
    }
}
