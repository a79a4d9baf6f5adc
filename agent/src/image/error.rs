//! [`ImageError`]: why an image store operation or an import failed.

use std::io;
use std::path::PathBuf;

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
    /// An import went past one of its `[images]` limits.
    #[error("layer {layer}: more than {max} {what} (images.{key})")]
    OverLimit {
        /// The layer being unpacked.
        layer: String,
        /// What was counted (`uncompressed bytes`, `entries`).
        what: &'static str,
        /// The limit.
        max: u64,
        /// The config key of the limit, in `[images]`.
        key: &'static str,
    },
    /// The store's filesystem has too little free space for an import.
    #[error("{}: {free} bytes free: {reason}", path.display())]
    NoSpace {
        /// Where the space was measured.
        path: PathBuf,
        /// Bytes free there.
        free: u64,
        /// What the import needed.
        reason: String,
    },
    /// The import's caller cancelled it (its request went away, or the agent is stopping).
    #[error("import cancelled")]
    Cancelled,
    /// A pull's registry is outside the `[images]` policy.
    #[error("registry {registry:?} is not in images.{key}")]
    RegistryNotAllowed {
        /// The registry (`host[:port]`).
        registry: String,
        /// The `[images]` key that would allow it.
        key: &'static str,
    },
    /// The registry refused the pull's credentials (or wants some).
    #[error("registry {registry} refused the credentials: {message}")]
    RegistryAuth {
        /// The registry.
        registry: String,
        /// What it said.
        message: String,
    },
    /// The registry has no such repository, tag or manifest.
    #[error("{reference}: not in the registry: {message}")]
    NotInRegistry {
        /// The reference pulled.
        reference: String,
        /// What the registry said.
        message: String,
    },
    /// The registry could not be reached, failed, or the connection ended mid-blob.
    #[error("registry {registry}: {message}")]
    RegistryUnavailable {
        /// The registry.
        registry: String,
        /// What went wrong.
        message: String,
    },
    /// A pull larger than an `[images]` cap.
    #[error("{what}: {size} bytes is more than images.{key} ({max} bytes)")]
    TooLarge {
        /// What was measured (`image docker.io/library/busybox:latest compressed`).
        what: String,
        /// Its size.
        size: u64,
        /// The cap.
        max: u64,
        /// The `[images]` key of the cap.
        key: &'static str,
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
    pub(super) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
