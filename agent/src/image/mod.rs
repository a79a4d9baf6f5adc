//! The OCI image store under `<state dir>/images`: imports OCI image layout directories (what
//! `skopeo copy ... oci:DIR[:TAG]` writes), verifies every blob, unpacks the layers into a
//! rootfs that jobs use read-only, and records what it imported.
//!
//! Parts: `store` ([`ImageStore`]: import, look-up, listing, removal, its records and
//! `refs.json`, the store lock, an import's temp dir); `layout` (reading an OCI image layout and
//! verifying its blobs; what the store takes from an image config); `unpack` (layers into a
//! rootfs); `limits` ([`ImportLimits`], [`ImportCancel`] and the budget an import is charged
//! against); [`pull`] (from an OCI registry, through the blob cache, into an import); `gc`
//! (last use, [`ImageStore::collect_garbage`]); `error` ([`ImageError`]).
//!
//! # Import
//!
//! `index.json` -> manifest -> config + layers, each blob checked against its descriptor (size
//! first, then sha256 while it is read, so the bytes that are unpacked are the bytes that were
//! hashed: the layout may change under us without fooling the check). Layers are also checked
//! against the config's `rootfs.diff_ids` (sha256 of the uncompressed tar). Layer media types:
//! `application/vnd.oci.image.layer.v1.tar`, `...tar+gzip` (and Docker's gzip layer type) and
//! `...tar+zstd` (a streaming zstd decoder; the diff id is checked the same way). Unpacking rules (whiteouts, path escapes,
//! device nodes, FIFOs, setuid/setgid bits and file capabilities, which are dropped) are in the
//! `unpack` module (private).
//!
//! An import is bounded by the store's [`ImportLimits`] (`[images]`: uncompressed bytes, entries,
//! free space kept on the filesystem), counted while it streams, and stops when its caller sets
//! its [`ImportCancel`] (the daemon does when the request is dropped or the agent stops).
//!
//! An import is atomic: the rootfs and the metadata are written into `images/.tmp-*` and renamed
//! to `images/<manifest digest hex>` at the end; a failed import removes its temp dir, and a
//! crashed one leaves a `.tmp-*` dir that the next import removes. Re-importing an image that
//! is already there (same manifest digest) verifies the manifest and config again, re-points the
//! reference and keeps the existing rootfs. Imports take an exclusive `flock` on
//! `images/.lock`, so two importers (the daemon and the CLI) never race (an import waiting for
//! it polls, so its cancel flag ends the wait); readers need no lock (every file they read is
//! replaced by rename).
//!
//! # On disk
//!
//! ```text
//! <state>/images/refs.json                      {"busybox:latest": "sha256:<hex>", ...}
//! <state>/images/<hex>/image.json               the ImageRecord as first imported
//! <state>/images/<hex>/rootfs/                  the unpacked layers
//! <state>/images/<hex>/last_used                 its mtime: the last job start or pull
//! <state>/images/blobs/sha256/<hex>             pulled blobs, shared by images (see `pull`)
//! <state>/images/blobs/.partial/<hex>           a blob download in progress or interrupted
//! <state>/images/.pull.lock                      shared by pulls, exclusive for collection
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
//! # Garbage collection
//!
//! After each of the daemon's pulls, images beyond `[images] max_bytes` are removed least
//! recently used first, never the one just pulled nor one an active job runs, then blobs no
//! image references (`gc`). The CLI's pulls collect nothing (they cannot see the daemon's
//! jobs).
//!
//! Not done: nested (multi-platform) indexes in an imported layout (a pull resolves a
//! registry's index to the host's platform), xattrs (never written, so file capabilities are
//! not restored: on purpose, see `unpack`).

// Test image builders: for this crate's tests and, through the `test-util` feature, the
// integration tests; not in the shipped binary.
#[cfg(any(test, feature = "test-util"))]
pub mod testing;
mod unpack;

mod error;
mod gc;
mod layout;
mod limits;
pub mod pull;
mod store;

pub use error::ImageError;
pub use gc::GcReport;
pub(crate) use layout::{Compression, LayerBlob};
pub use limits::{CancelOnDrop, ImportCancel, ImportLimits};
pub use store::{ImageRecord, ImageRuntimeConfig, ImageStore, RemovedImage};

/// The host's GOARCH name (what image configs say): the platform check and the test layouts
/// both use it.
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

#[cfg(test)]
mod tests;
