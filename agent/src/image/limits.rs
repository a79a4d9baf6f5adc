//! What bounds an import: [`ImportLimits`] (the `[images]` config keys: uncompressed bytes,
//! entries; and `[state] min_free_bytes`, the free space kept on the store's filesystem) and [`ImportCancel`] (the caller's
//! stop flag), and the per-import [`Budget`] the unpacker charges while it streams.

use std::cell::Cell;
use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::config::Config;

/// The limits of one import (`[images]`, and `[state] min_free_bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportLimits {
    /// Most uncompressed layer bytes (tar streams, all layers together) an import reads.
    pub max_unpacked_bytes: u64,
    /// Most tar entries (all layers together) an import applies.
    pub max_entries: u64,
    /// Free space an import leaves on the store's filesystem: it is refused when the layer
    /// blobs alone would not fit above it, and stops when the free space falls below it.
    pub min_free_bytes: u64,
}

impl Default for ImportLimits {
    fn default() -> Self {
        Self::from(&Config::default())
    }
}

impl From<&Config> for ImportLimits {
    fn from(config: &Config) -> Self {
        Self {
            max_unpacked_bytes: config.images.max_unpacked_bytes.0,
            max_entries: config.images.max_entries,
            min_free_bytes: config.state.min_free_bytes.0,
        }
    }
}

/// A caller's stop flag for an import; clones share it. The import checks it between entries,
/// between chunks of a file, while waiting for the store lock and while reading, and then stops
/// with [`super::ImageError::Cancelled`], removing what it had unpacked.
#[derive(Debug, Clone, Default)]
pub struct ImportCancel {
    flag: Arc<AtomicBool>,
}

impl ImportCancel {
    /// A flag nobody has set yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the import to stop.
    pub fn cancel(&self) {
        self.flag.store(true, Ordering::Relaxed);
    }

    /// Whether [`Self::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }

    /// A guard that cancels when dropped, e.g. with the future of the request that started the
    /// import (dropped when the client goes away or the request's deadline passes).
    pub fn cancel_on_drop(&self) -> CancelOnDrop {
        CancelOnDrop(self.clone())
    }
}

/// Cancels its [`ImportCancel`] when dropped (see [`ImportCancel::cancel_on_drop`]).
#[derive(Debug)]
pub struct CancelOnDrop(ImportCancel);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// Why the unpacker stopped an import early (turned into an error naming the layer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stop {
    Cancelled,
    Bytes,
    Entries,
    /// The store's filesystem had this many bytes free.
    NoSpace(u64),
}

/// Free space is measured again after this many bytes written.
const SPACE_CHECK_BYTES: u64 = 1 << 20;

/// One import's limits, counters and stop reason: shared by the reader between the
/// decompressor and the tar parser (bytes) and the unpacker (entries, space).
pub(super) struct Budget<'a> {
    limits: ImportLimits,
    cancel: &'a ImportCancel,
    /// Measured for free space: the store's filesystem.
    store: &'a Path,
    read: Cell<u64>,
    entries: Cell<u64>,
    written_since_check: Cell<u64>,
    stop: Cell<Option<Stop>>,
}

impl<'a> Budget<'a> {
    pub(super) fn new(limits: ImportLimits, cancel: &'a ImportCancel, store: &'a Path) -> Self {
        Self {
            limits,
            cancel,
            store,
            read: Cell::new(0),
            entries: Cell::new(0),
            written_since_check: Cell::new(0),
            stop: Cell::new(None),
        }
    }

    pub(super) fn limits(&self) -> &ImportLimits {
        &self.limits
    }

    /// Where free space is measured.
    pub(super) fn store(&self) -> &Path {
        self.store
    }

    /// Why the import stopped, if it did.
    pub(super) fn stopped(&self) -> Option<Stop> {
        self.stop.get()
    }

    fn halt(&self, why: Stop) -> io::Error {
        if self.stop.get().is_none() {
            self.stop.set(Some(why));
        }
        io::Error::other("import stopped")
    }

    /// The cancel flag: an error once it is set.
    pub(super) fn check_cancel(&self) -> io::Result<()> {
        if self.cancel.is_cancelled() {
            return Err(self.halt(Stop::Cancelled));
        }
        Ok(())
    }

    /// Counts `n` uncompressed bytes read.
    fn charge_read(&self, n: usize) -> io::Result<()> {
        let total = self.read.get().saturating_add(n as u64);
        self.read.set(total);
        if total > self.limits.max_unpacked_bytes {
            return Err(self.halt(Stop::Bytes));
        }
        Ok(())
    }

    /// Counts one tar entry and measures the free space.
    pub(super) fn charge_entry(&self) -> io::Result<()> {
        self.check_cancel()?;
        let entries = self.entries.get() + 1;
        self.entries.set(entries);
        if entries > self.limits.max_entries {
            return Err(self.halt(Stop::Entries));
        }
        self.check_space()
    }

    /// Counts `n` bytes written, measuring the free space every [`SPACE_CHECK_BYTES`].
    pub(super) fn charge_write(&self, n: usize) -> io::Result<()> {
        self.check_cancel()?;
        let since = self.written_since_check.get() + n as u64;
        if since >= SPACE_CHECK_BYTES {
            self.written_since_check.set(0);
            return self.check_space();
        }
        self.written_since_check.set(since);
        Ok(())
    }

    fn check_space(&self) -> io::Result<()> {
        let free = free_bytes(self.store)?;
        if free < self.limits.min_free_bytes {
            return Err(self.halt(Stop::NoSpace(free)));
        }
        Ok(())
    }
}

/// A reader that charges every byte to a [`Budget`] and checks its cancel flag.
pub(super) struct Metered<'b, 'a, R> {
    pub(super) inner: R,
    pub(super) budget: &'b Budget<'a>,
}

impl<R: io::Read> io::Read for Metered<'_, '_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.budget.check_cancel()?;
        let n = self.inner.read(buf)?;
        self.budget.charge_read(n)?;
        Ok(n)
    }
}

/// Bytes available to an unprivileged writer on the filesystem holding `path` (root may use
/// the reserved blocks too, but the agent keeps them for the rest of the host).
pub(super) fn free_bytes(path: &Path) -> io::Result<u64> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in path"))?;
    // SAFETY: statvfs only writes into the struct we pass; an all-zero statvfs is valid.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and a pointer to a live statvfs.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // Both are u64 on 64-bit Linux, narrower elsewhere.
    #[allow(clippy::useless_conversion)]
    let (blocks, block_size) = (u64::from(stat.f_bavail), u64::from(stat.f_frsize));
    Ok(blocks.saturating_mul(block_size))
}
