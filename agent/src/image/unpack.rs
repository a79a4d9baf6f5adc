//! Unpacking one layer tar onto a rootfs, as overlay filesystems see layers.
//!
//! Rules (the OCI image spec's "Applying changesets", and what containerd and umoci do):
//!
//! - Entry paths are relative: an absolute path or a `..` component refuses the layer.
//! - Parent directories are resolved one component at a time inside the rootfs: a symlink in a
//!   parent is followed with the rootfs as `/` (an absolute target `/usr/lib` means
//!   `<rootfs>/usr/lib`); a target that climbs above the rootfs refuses the layer. The entry's
//!   own last component is never followed: a file replaces a symlink, it does not write through
//!   it. Nothing is ever written outside the rootfs.
//! - `.wh.NAME` deletes `NAME` as lower layers left it; `.wh..wh..opq` empties its directory of
//!   everything lower layers put there (entries of the same layer stay, in whatever order the
//!   tar lists them). Other `.wh..wh.*` names (aufs bookkeeping) are skipped.
//! - Device nodes are refused (jobs get devices from the runtime's allowlist, never from an
//!   image). FIFOs, regular files, directories, symlinks and hard links (to a path already in
//!   the rootfs) are created with the entry's mode, owner (when running as root) and mtime.
//! - No entry is ever opened once created except a regular file by the descriptor that writes
//!   it: owner, mode and times are set by path without following a symlink
//!   (`lchown`, `chmod` of a non-symlink, `utimensat(AT_SYMLINK_NOFOLLOW)`), so a FIFO cannot
//!   block the import.
//! - No privilege comes from an image: setuid and setgid bits are dropped from every
//!   non-directory (a directory's setgid only passes its group on, and stays), and extended
//!   attributes (PAX `SCHILY.xattr.*`, among them `security.capability`, file capabilities) are
//!   never written. The rootfs is read by local users too; with either bit a copy of a
//!   root-owned tool would run as root for any of them.
//! - Every byte of the blob goes through sha256 (the descriptor's digest) and every byte of the
//!   uncompressed tar through another (the config's diff id); the caller's temp dir is thrown
//!   away when either does not match.
//! - The import's [`Budget`] is charged on the way: each uncompressed byte read (a
//!   decompression bomb stops at `max_unpacked_bytes`), each entry, and the free space measured
//!   at each entry and each MiB written; its cancel flag is checked on every read. A stop is
//!   turned into its own error ([`ImageError::OverLimit`], [`ImageError::NoSpace`],
//!   [`ImageError::Cancelled`]) whatever error the tar reader wrapped it in.

use std::collections::HashSet;
use std::collections::VecDeque;
use std::ffi::{CString, OsStr, OsString};
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use sha2::{Digest as _, Sha256};
use tar::EntryType;

use super::layout::open_regular;
use super::limits::{Budget, Metered, Stop};
use super::{Compression, ImageError, LayerBlob};

/// Symlinks followed while resolving one path before giving up (Linux's own limit).
const MAX_SYMLINKS: usize = 40;

/// The chunk a file's contents are copied in (the cancel flag is checked between chunks).
const CHUNK: usize = 64 * 1024;

/// A reader that hashes and counts what passes through it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// Reads the rest of the stream (tar padding, gzip trailer) so the hash covers it all,
    /// checking the cancel flag between chunks.
    fn drain(&mut self, budget: &Budget<'_>) -> io::Result<()> {
        let mut buf = vec![0; CHUNK];
        loop {
            budget.check_cancel()?;
            match self.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn hex(&self) -> String {
        hex::encode(self.hasher.clone().finalize())
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// Applies one layer blob to `root`, checking its digest, size and diff id, within `budget`.
pub(crate) fn apply_layer(
    root: &Path,
    layer: &LayerBlob,
    budget: &Budget<'_>,
) -> Result<(), ImageError> {
    let file = open_regular(&layer.path).map_err(|e| ImageError::io(&layer.path, e))?;
    // One byte more than the descriptor says, to notice a blob that grew since it was checked.
    let mut raw = HashingReader::new(file.take(layer.size + 1));
    let result = match layer.compression {
        Compression::Gzip => apply_tar(
            root,
            layer,
            flate2::read::MultiGzDecoder::new(&mut raw),
            budget,
        ),
        Compression::Zstd => match zstd::stream::read::Decoder::new(&mut raw) {
            Ok(decoder) => apply_tar(root, layer, decoder, budget),
            Err(e) => Err(ImageError::Layer {
                layer: layer.digest.clone(),
                context: "starting the zstd decoder".to_owned(),
                source: e,
            }),
        },
        Compression::None => apply_tar(root, layer, &mut raw, budget),
    };
    // A stop explains whatever error the tar reader made of it.
    if let Some(stop) = budget.stopped() {
        return Err(stop_error(stop, layer, budget));
    }
    // The blob's own checks come first: a corrupt blob explains any tar or gzip error.
    let drained = raw.drain(budget);
    if let Some(stop) = budget.stopped() {
        return Err(stop_error(stop, layer, budget));
    }
    if raw.count != layer.size {
        return Err(ImageError::SizeMismatch {
            digest: layer.digest.clone(),
            expected: layer.size,
            actual: raw.count,
        });
    }
    if raw.hex() != layer.hex {
        return Err(ImageError::DigestMismatch {
            digest: layer.digest.clone(),
            actual: format!("sha256:{}", raw.hex()),
        });
    }
    drained.map_err(|e| ImageError::io(&layer.path, e))?;
    let diff_hex = result?;
    let diff_id = format!("sha256:{diff_hex}");
    if diff_id != layer.diff_id {
        return Err(ImageError::DiffIdMismatch {
            digest: layer.digest.clone(),
            expected: layer.diff_id.clone(),
            actual: diff_id,
        });
    }
    Ok(())
}

/// The error of a stopped import.
fn stop_error(stop: Stop, layer: &LayerBlob, budget: &Budget<'_>) -> ImageError {
    let limits = budget.limits();
    let over = |what, max, key| ImageError::OverLimit {
        layer: layer.digest.clone(),
        what,
        max,
        key,
    };
    match stop {
        Stop::Cancelled => ImageError::Cancelled,
        Stop::Bytes => over(
            "uncompressed bytes",
            limits.max_unpacked_bytes,
            "max_unpacked_bytes",
        ),
        Stop::Entries => over("entries", limits.max_entries, "max_entries"),
        Stop::NoSpace(free) => ImageError::NoSpace {
            path: budget.store().to_owned(),
            free,
            reason: format!(
                "layer {} stopped before fewer than {} bytes are left (state.min_free_bytes)",
                layer.digest, limits.min_free_bytes
            ),
        },
    }
}

/// Unpacks the tar stream; returns the sha256 hex of the whole uncompressed stream.
fn apply_tar<R: Read>(
    root: &Path,
    layer: &LayerBlob,
    reader: R,
    budget: &Budget<'_>,
) -> Result<String, ImageError> {
    let layer_err = |context: &str, source: io::Error| ImageError::Layer {
        layer: layer.digest.clone(),
        context: context.to_owned(),
        source,
    };
    let mut diff = HashingReader::new(Metered {
        inner: reader,
        budget,
    });
    {
        let mut archive = tar::Archive::new(&mut diff);
        let mut unpacker = Unpacker {
            root,
            layer: &layer.digest,
            this_layer: HashSet::new(),
            chown: is_root(),
            budget,
            buf: vec![0; CHUNK],
        };
        let entries = archive
            .entries()
            .map_err(|e| layer_err("reading the tar", e))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| layer_err("reading the tar", e))?;
            budget
                .charge_entry()
                .map_err(|e| layer_err("reading the tar", e))?;
            unpacker.apply(&mut entry)?;
        }
    }
    diff.drain(budget)
        .map_err(|e| layer_err("reading the end of the tar", e))?;
    Ok(diff.hex())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Applies entries of one layer.
struct Unpacker<'a> {
    root: &'a Path,
    layer: &'a str,
    /// Paths (relative to the root, symlinks resolved) this layer created: whiteouts of the
    /// same layer leave them alone.
    this_layer: HashSet<PathBuf>,
    chown: bool,
    budget: &'a Budget<'a>,
    /// A file's contents pass through here, a chunk at a time.
    buf: Vec<u8>,
}

/// What a normalized entry path is.
type Components = Vec<OsString>;

impl Unpacker<'_> {
    fn unsafe_entry(&self, entry: &str, reason: impl Into<String>) -> ImageError {
        ImageError::UnsafeEntry {
            layer: self.layer.to_owned(),
            entry: entry.to_owned(),
            reason: reason.into(),
        }
    }

    fn io_err(&self, entry: &str, what: &str, source: io::Error) -> ImageError {
        ImageError::Layer {
            layer: self.layer.to_owned(),
            context: format!("entry {entry:?}: {what}"),
            source,
        }
    }

    /// An entry path as components: no root, no `..`, `.` dropped.
    fn normalize(&self, raw: &str, path: &Path) -> Result<Components, ImageError> {
        let mut out = Vec::new();
        for component in path.components() {
            match component {
                Component::Normal(c) => out.push(c.to_owned()),
                Component::CurDir => {}
                Component::RootDir | Component::Prefix(_) => {
                    return Err(self.unsafe_entry(raw, "absolute path"))
                }
                Component::ParentDir => return Err(self.unsafe_entry(raw, "`..` component")),
            }
        }
        Ok(out)
    }

    /// Resolves directory components inside the root, following symlinks with the root as `/`.
    /// Returns the real path relative to the root; `None` when a component is missing and
    /// `create` is false. Missing directories are created (mode 0755) when `create` is true.
    fn resolve_dir(
        &mut self,
        raw: &str,
        components: &[OsString],
        create: bool,
    ) -> Result<Option<PathBuf>, ImageError> {
        let mut resolved: Vec<OsString> = Vec::new();
        let mut queue: VecDeque<OsString> = components.iter().cloned().collect();
        let mut links = 0;
        while let Some(c) = queue.pop_front() {
            if c == "." || c.is_empty() {
                continue;
            }
            if c == ".." {
                if resolved.pop().is_none() {
                    return Err(
                        self.unsafe_entry(raw, "a symlink in its path leads out of the rootfs")
                    );
                }
                continue;
            }
            let rel: PathBuf = resolved.iter().chain(std::iter::once(&c)).collect();
            let abs = self.root.join(&rel);
            match fs::symlink_metadata(&abs) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    links += 1;
                    if links > MAX_SYMLINKS {
                        return Err(
                            self.unsafe_entry(raw, "too many levels of symlinks in its path")
                        );
                    }
                    let target = fs::read_link(&abs)
                        .map_err(|e| self.io_err(raw, "reading a symlink in its path", e))?;
                    if target.is_absolute() {
                        resolved.clear();
                    }
                    for part in target.components().rev() {
                        match part {
                            Component::Normal(p) => queue.push_front(p.to_owned()),
                            Component::ParentDir => queue.push_front(OsString::from("..")),
                            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
                        }
                    }
                }
                Ok(meta) if meta.is_dir() => resolved.push(c),
                Ok(_) => {
                    return Err(self.io_err(
                        raw,
                        "resolving its parent",
                        io::Error::new(
                            io::ErrorKind::NotADirectory,
                            format!("{} is not a directory", rel.display()),
                        ),
                    ))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if !create {
                        return Ok(None);
                    }
                    fs::DirBuilder::new()
                        .mode(0o755)
                        .create(&abs)
                        .map_err(|e| self.io_err(raw, "creating its parent", e))?;
                    self.this_layer.insert(rel);
                    resolved.push(c);
                }
                Err(e) => return Err(self.io_err(raw, "resolving its parent", e)),
            }
        }
        Ok(Some(resolved.iter().collect()))
    }

    fn apply<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), ImageError> {
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let path = PathBuf::from(OsStr::from_bytes(&entry.path_bytes()));
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            EntryType::XGlobalHeader
                | EntryType::XHeader
                | EntryType::GNULongName
                | EntryType::GNULongLink
        ) {
            return Ok(());
        }
        let components = self.normalize(&raw, &path)?;
        let Some((name, parent)) = components.split_last() else {
            // `./` itself: the rootfs root keeps its own mode.
            return Ok(());
        };
        let name_bytes = name.as_bytes();
        if let Some(hidden) = name_bytes.strip_prefix(b".wh.") {
            return self.whiteout(&raw, parent, hidden);
        }
        if matches!(kind, EntryType::Char | EntryType::Block) {
            return Err(self.unsafe_entry(&raw, "device nodes are not allowed in images"));
        }
        let Some(parent_rel) = self.resolve_dir(&raw, parent, true)? else {
            return Err(self.unsafe_entry(&raw, "parent could not be created"));
        };
        let rel = parent_rel.join(name);
        let abs = self.root.join(&rel);
        let header = entry.header();
        let mode = header
            .mode()
            .map_err(|e| self.io_err(&raw, "reading its mode", e))?
            & 0o7777;
        let uid = header.uid().unwrap_or(0);
        let gid = header.gid().unwrap_or(0);
        let mtime = header.mtime().unwrap_or(0);
        let existing = fs::symlink_metadata(&abs).ok();
        match kind {
            EntryType::Directory => {
                match &existing {
                    Some(meta) if meta.is_dir() => {}
                    Some(_) => self.remove(&raw, &abs)?,
                    None => {}
                }
                if !existing.as_ref().is_some_and(fs::Metadata::is_dir) {
                    fs::DirBuilder::new()
                        .mode(0o700)
                        .create(&abs)
                        .map_err(|e| self.io_err(&raw, "creating the directory", e))?;
                }
                self.finish(&raw, &abs, mode, uid, gid, mtime, false)?;
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                if existing.is_some() {
                    self.remove(&raw, &abs)?;
                }
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&abs)
                    .map_err(|e| self.io_err(&raw, "creating the file", e))?;
                self.copy(&raw, entry, &mut file)?;
                drop(file);
                self.finish(&raw, &abs, mode, uid, gid, mtime, false)?;
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|b| OsStr::from_bytes(&b).to_owned())
                    .ok_or_else(|| self.unsafe_entry(&raw, "symlink without a target"))?;
                if existing.is_some() {
                    self.remove(&raw, &abs)?;
                }
                std::os::unix::fs::symlink(&target, &abs)
                    .map_err(|e| self.io_err(&raw, "creating the symlink", e))?;
                self.finish(&raw, &abs, mode, uid, gid, mtime, true)?;
            }
            EntryType::Link => {
                let target_raw = entry
                    .link_name_bytes()
                    .map(|b| OsStr::from_bytes(&b).to_owned())
                    .ok_or_else(|| self.unsafe_entry(&raw, "hard link without a target"))?;
                let target_components = self
                    .normalize(&raw, Path::new(&target_raw))
                    .map_err(|_| self.unsafe_entry(&raw, "hard link target escapes the rootfs"))?;
                let Some((target_name, target_parent)) = target_components.split_last() else {
                    return Err(self.unsafe_entry(&raw, "hard link to the rootfs itself"));
                };
                let target_rel = self
                    .resolve_dir(&raw, target_parent, false)?
                    .map(|p| p.join(target_name));
                let target_abs = target_rel.as_ref().map(|p| self.root.join(p));
                let target_meta = target_abs
                    .as_ref()
                    .and_then(|p| fs::symlink_metadata(p).ok());
                let (Some(target_abs), Some(target_meta)) = (target_abs, target_meta) else {
                    return Err(self.unsafe_entry(
                        &raw,
                        format!("hard link target {:?} is not in the rootfs", target_raw),
                    ));
                };
                if target_meta.is_dir() {
                    return Err(self.unsafe_entry(&raw, "hard link to a directory"));
                }
                if target_abs == abs {
                    return Ok(());
                }
                if existing.is_some() {
                    self.remove(&raw, &abs)?;
                }
                // linkat without AT_SYMLINK_FOLLOW: a link to a symlink links the symlink.
                fs::hard_link(&target_abs, &abs)
                    .map_err(|e| self.io_err(&raw, "creating the hard link", e))?;
            }
            EntryType::Fifo => {
                if existing.is_some() {
                    self.remove(&raw, &abs)?;
                }
                let c_path = CString::new(abs.as_os_str().as_bytes())
                    .map_err(|_| self.unsafe_entry(&raw, "NUL byte in path"))?;
                // SAFETY: a valid NUL-terminated path; mkfifo does not keep the pointer.
                if unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) } != 0 {
                    return Err(self.io_err(&raw, "creating the fifo", io::Error::last_os_error()));
                }
                self.finish(&raw, &abs, mode, uid, gid, mtime, false)?;
            }
            other => {
                return Err(self.unsafe_entry(&raw, format!("unsupported tar entry type {other:?}")))
            }
        }
        self.this_layer.insert(rel);
        Ok(())
    }

    /// Copies a file's contents a chunk at a time, charging the budget for each.
    fn copy<R: Read>(
        &mut self,
        raw: &str,
        from: &mut R,
        to: &mut fs::File,
    ) -> Result<(), ImageError> {
        loop {
            let n = match from.read(&mut self.buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.io_err(raw, "reading the file", e)),
            };
            to.write_all(&self.buf[..n])
                .and_then(|()| self.budget.charge_write(n))
                .map_err(|e| self.io_err(raw, "writing the file", e))?;
        }
    }

    /// Owner, mode and mtime of a new entry (the mode after chown, which clears setuid), all by
    /// path, never opening it: a FIFO opened for reading would block until a writer came.
    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        raw: &str,
        abs: &Path,
        mode: u32,
        uid: u64,
        gid: u64,
        mtime: u64,
        symlink: bool,
    ) -> Result<(), ImageError> {
        if self.chown {
            let uid = u32::try_from(uid).map_err(|_| self.unsafe_entry(raw, "uid out of range"))?;
            let gid = u32::try_from(gid).map_err(|_| self.unsafe_entry(raw, "gid out of range"))?;
            std::os::unix::fs::lchown(abs, Some(uid), Some(gid))
                .map_err(|e| self.io_err(raw, "setting its owner", e))?;
        }
        if !symlink {
            // chmod(2) follows a symlink, but `abs` was just made and is none.
            fs::set_permissions(abs, fs::Permissions::from_mode(unprivileged(mode, abs)))
                .map_err(|e| self.io_err(raw, "setting its mode", e))?;
        }
        set_mtime(abs, mtime).map_err(|e| self.io_err(raw, "setting its mtime", e))
    }

    /// Removes whatever is at `abs` (not following a symlink there).
    fn remove(&self, raw: &str, abs: &Path) -> Result<(), ImageError> {
        let result = match fs::symlink_metadata(abs) {
            Ok(meta) if meta.is_dir() => fs::remove_dir_all(abs),
            Ok(_) => fs::remove_file(abs),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        };
        result.map_err(|e| self.io_err(raw, "removing what a lower layer put there", e))
    }

    fn whiteout(
        &mut self,
        raw: &str,
        parent: &[OsString],
        hidden: &[u8],
    ) -> Result<(), ImageError> {
        if hidden == b".wh..opq" {
            let Some(dir) = self.resolve_dir(raw, parent, true)? else {
                return Ok(());
            };
            return self.opaque(raw, &dir);
        }
        if hidden.starts_with(b".wh.") {
            // aufs bookkeeping (`.wh..wh.plnk`, `.wh..wh.aufs`): not content.
            return Ok(());
        }
        if hidden.is_empty() || hidden == b"." || hidden == b".." || hidden.contains(&b'/') {
            return Err(self.unsafe_entry(raw, "malformed whiteout name"));
        }
        let Some(dir) = self.resolve_dir(raw, parent, false)? else {
            return Ok(()); // nothing below to hide
        };
        let rel = dir.join(OsStr::from_bytes(hidden));
        if self.this_layer.contains(&rel) {
            return Ok(());
        }
        self.remove(raw, &self.root.join(&rel))
    }

    /// Empties `dir` (relative) of everything lower layers put there.
    fn opaque(&self, raw: &str, dir: &Path) -> Result<(), ImageError> {
        let abs = self.root.join(dir);
        let entries =
            fs::read_dir(&abs).map_err(|e| self.io_err(raw, "reading an opaque dir", e))?;
        for child in entries {
            let child = child.map_err(|e| self.io_err(raw, "reading an opaque dir", e))?;
            let rel = dir.join(child.file_name());
            if self.this_layer.contains(&rel) {
                let meta = fs::symlink_metadata(self.root.join(&rel))
                    .map_err(|e| self.io_err(raw, "reading an opaque dir", e))?;
                if meta.is_dir() {
                    self.opaque(raw, &rel)?;
                }
            } else {
                self.remove(raw, &self.root.join(&rel))?;
            }
        }
        Ok(())
    }
}

/// `mode` without setuid, and without setgid unless `path` is a directory (where setgid only
/// passes the directory's group on to new files).
fn unprivileged(mode: u32, path: &Path) -> u32 {
    let is_dir = fs::symlink_metadata(path).is_ok_and(|m| m.is_dir());
    let strip = if is_dir {
        libc::S_ISUID
    } else {
        libc::S_ISUID | libc::S_ISGID
    };
    mode & !strip
}

/// Sets the access and modification times of `path` to `mtime` (seconds since the epoch),
/// not following a symlink and without opening it.
fn set_mtime(path: &Path, mtime: u64) -> io::Result<()> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in path"))?;
    let time = libc::timespec {
        tv_sec: libc::time_t::try_from(mtime).unwrap_or(libc::time_t::MAX),
        tv_nsec: 0,
    };
    let times = [time, time];
    // SAFETY: a valid NUL-terminated path and a two-element timespec array, both alive for the
    // call; utimensat keeps neither.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c_path.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The unpacked size of a tree: regular file sizes, each inode once.
pub(crate) fn tree_size(root: &Path) -> Result<u64, ImageError> {
    let mut seen = HashSet::new();
    let mut total = 0u64;
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let entries = fs::read_dir(&dir).map_err(|e| ImageError::io(&dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| ImageError::io(&dir, e))?;
            let path = entry.path();
            let meta = fs::symlink_metadata(&path).map_err(|e| ImageError::io(&path, e))?;
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() && seen.insert((meta.dev(), meta.ino())) {
                total += meta.len();
            }
        }
    }
    Ok(total)
}
