//! Test support (not used by the agent itself, and compiled only for tests: `cfg(test)` or the
//! `test-util` feature): writes small OCI image layouts for the image, job and integration tests.
//!
//! [`busybox_layout`] makes a one-layer image from the host's `/bin/busybox` (Debian
//! `busybox-static`); [`push_layer`] appends a layer to a tagged manifest, rewriting the config,
//! manifest and index digests as a real image builder would. Entry paths are written into the
//! tar headers byte for byte (no normalization), so tests can also build hostile layers (`..`,
//! absolute paths, device nodes). Output is deterministic: the same busybox gives the same
//! digests.

use std::collections::HashMap;
use std::fs;
use std::io::{Read as _, Write};
use std::path::{Path, PathBuf};

use oci_spec::image::{
    ConfigBuilder, Descriptor, DescriptorBuilder, ImageConfiguration, ImageConfigurationBuilder,
    ImageIndex, ImageIndexBuilder, ImageManifest, ImageManifestBuilder, MediaType, Os,
    RootFsBuilder, ANNOTATION_REF_NAME,
};
use sha2::{Digest as _, Sha256};
use tar::{EntryType, Header};

use super::ImageError;

/// Holds the lock of the image store in `state_dir` as another importer (the CLI) would, until
/// the returned file is dropped.
pub fn hold_store_lock(state_dir: &Path) -> std::io::Result<fs::File> {
    use std::os::fd::AsRawFd;
    fs::create_dir_all(state_dir.join("images"))?;
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(state_dir.join("images/.lock"))?;
    // SAFETY: flock(2) on a descriptor we own.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(lock)
}

/// Where the test images' shell comes from (Debian `busybox-static`).
pub const BUSYBOX: &str = "/bin/busybox";

/// The mtime written into test layers (fixed, so digests are reproducible).
const MTIME: u64 = 1_700_000_000;

/// The applets linked to busybox in the test image's `/bin`.
pub const APPLETS: &[&str] = &[
    "sh",
    "ash",
    "awk",
    "basename",
    "cat",
    "chmod",
    "cp",
    "cut",
    "date",
    "dd",
    "df",
    "dirname",
    "du",
    "echo",
    "env",
    "false",
    "find",
    "free",
    "grep",
    "head",
    "hostname",
    "id",
    "kill",
    "ln",
    "ls",
    "md5sum",
    "mkdir",
    "mv",
    "nproc",
    "printf",
    "ps",
    "pwd",
    "readlink",
    "rm",
    "rmdir",
    "sed",
    "seq",
    "sha256sum",
    "sleep",
    "sort",
    "stat",
    "tail",
    "test",
    "timeout",
    "top",
    "touch",
    "tr",
    "true",
    "uname",
    "wc",
    "which",
    "xargs",
    "yes",
];

/// One entry of a test layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TestEntry {
    /// A regular file.
    File {
        /// Path in the tar, byte for byte.
        path: String,
        /// Contents.
        contents: Vec<u8>,
        /// Mode bits (e.g. `0o644`, `0o4755`).
        mode: u32,
    },
    /// A directory (mode 0755).
    Dir {
        /// Path in the tar.
        path: String,
    },
    /// A directory with a mode (e.g. `0o1777`).
    DirWithMode {
        /// Path in the tar.
        path: String,
        /// Mode bits.
        mode: u32,
    },
    /// A symbolic link.
    Symlink {
        /// Path in the tar.
        path: String,
        /// Link target, byte for byte.
        target: String,
    },
    /// A whiteout: `PARENT/.wh.NAME` for `path` = `PARENT/NAME`.
    Whiteout {
        /// The path to delete from lower layers.
        path: String,
    },
    /// An opaque directory: the directory entry plus `path/.wh..wh..opq`.
    OpaqueDir {
        /// The directory to empty of lower layers' entries.
        path: String,
    },
    /// A hard link to `target` (a path in the rootfs, as tar stores it).
    Hardlink {
        /// Path in the tar.
        path: String,
        /// Link target, byte for byte.
        target: String,
    },
    /// A named pipe (FIFO), mode 0644.
    Fifo {
        /// Path in the tar.
        path: String,
    },
    /// A regular file preceded by a PAX header setting one extended attribute
    /// (`SCHILY.xattr.<name>`), e.g. `security.capability` (file capabilities).
    FileWithXattr {
        /// Path in the tar.
        path: String,
        /// Contents.
        contents: Vec<u8>,
        /// Mode bits.
        mode: u32,
        /// The attribute's name (`security.capability`).
        name: String,
        /// Its value, byte for byte.
        value: Vec<u8>,
    },
    /// A character device node (images must not have them: the store refuses it).
    CharDevice {
        /// Path in the tar.
        path: String,
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
}

/// How [`push_layer_with`] stores a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerFormat {
    /// `application/vnd.oci.image.layer.v1.tar+gzip`.
    Gzip,
    /// `application/vnd.oci.image.layer.v1.tar`.
    Tar,
    /// `application/vnd.oci.image.layer.v1.tar+zstd`.
    Zstd,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_owned(),
        source,
    }
}

fn spec_err(what: &str) -> impl FnOnce(oci_spec::OciSpecError) -> ImageError + '_ {
    move |e| ImageError::BadDocument {
        what: what.to_owned(),
        reason: e.to_string(),
    }
}

/// Writes an OCI image layout at `dir` holding one gzip layer made from the host's
/// `/bin/busybox` with `/bin/sh` and the usual applets as symlinks to it, tagged `tag`, config
/// with `Cmd ["/bin/sh"]`. A layout already at `dir` keeps its other tags.
pub fn busybox_layout(dir: &Path, tag: &str) -> Result<(), ImageError> {
    let busybox = fs::read(BUSYBOX).map_err(io_err(Path::new(BUSYBOX)))?;
    let mut entries = vec![
        dir_entry("bin/", 0o755),
        dir_entry("dev/", 0o755),
        dir_entry("etc/", 0o755),
        dir_entry("proc/", 0o755),
        dir_entry("root/", 0o700),
        dir_entry("sys/", 0o755),
        dir_entry("tmp/", 0o1777),
        dir_entry("usr/", 0o755),
        dir_entry("usr/bin/", 0o755),
        TestEntry::File {
            path: "bin/busybox".to_owned(),
            contents: busybox,
            mode: 0o755,
        },
        TestEntry::File {
            path: "etc/passwd".to_owned(),
            contents: b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n".to_vec(),
            mode: 0o644,
        },
        TestEntry::File {
            path: "etc/group".to_owned(),
            contents: b"root:x:0:\nnogroup:x:65534:\n".to_vec(),
            mode: 0o644,
        },
    ];
    entries.extend(APPLETS.iter().map(|applet| TestEntry::Symlink {
        path: format!("bin/{applet}"),
        target: "busybox".to_owned(),
    }));
    let (layer, diff_id) = write_layer(dir, &entries, LayerFormat::Gzip)?;
    let config = ImageConfigurationBuilder::default()
        .architecture(super::host_goarch())
        .os(Os::Linux)
        .config(
            ConfigBuilder::default()
                .cmd(vec!["/bin/sh".to_owned()])
                .env(vec![
                    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
                ])
                .build()
                .map_err(spec_err("config"))?,
        )
        .rootfs(
            RootFsBuilder::default()
                .typ("layers")
                .diff_ids(vec![diff_id])
                .build()
                .map_err(spec_err("config rootfs"))?,
        )
        .build()
        .map_err(spec_err("config"))?;
    write_image(dir, tag, &config, vec![layer])
}

fn dir_entry(path: &str, mode: u32) -> TestEntry {
    TestEntry::DirWithMode {
        path: path.to_owned(),
        mode,
    }
}

/// Appends one gzip layer with `entries` to the manifest tagged `tag`.
pub fn push_layer(dir: &Path, tag: &str, entries: &[TestEntry]) -> Result<(), ImageError> {
    push_layer_with(dir, tag, entries, LayerFormat::Gzip)
}

/// Appends one layer with `entries`, stored as `format`, to the manifest tagged `tag`.
pub fn push_layer_with(
    dir: &Path,
    tag: &str,
    entries: &[TestEntry],
    format: LayerFormat,
) -> Result<(), ImageError> {
    let manifest = manifest_of(dir, tag)?;
    let mut config = config_of(dir, &manifest)?;
    let (layer, diff_id) = write_layer(dir, entries, format)?;
    config.rootfs_mut().diff_ids_mut().push(diff_id);
    let mut layers = manifest.layers().clone();
    layers.push(layer);
    write_image(dir, tag, &config, layers)
}

/// Rewrites the manifest tagged `tag` through `edit` (e.g. a layer's media type), updating the
/// index. The config is rewritten too (and `edit_config` may change it first).
pub fn rewrite_image(
    dir: &Path,
    tag: &str,
    edit_config: impl FnOnce(&mut ImageConfiguration),
    edit_manifest: impl FnOnce(&mut Vec<Descriptor>),
) -> Result<(), ImageError> {
    let manifest = manifest_of(dir, tag)?;
    let mut config = config_of(dir, &manifest)?;
    edit_config(&mut config);
    let mut layers = manifest.layers().clone();
    edit_manifest(&mut layers);
    write_image(dir, tag, &config, layers)
}

/// Appends one gzip layer holding a single file `path` of `size` zero bytes to the manifest
/// tagged `tag`, streamed (never `size` bytes in memory): gzip shrinks it about a
/// thousandfold, a decompression bomb of any size from a small blob.
pub fn push_zeros_layer(dir: &Path, tag: &str, path: &str, size: u64) -> Result<(), ImageError> {
    let manifest = manifest_of(dir, tag)?;
    let mut config = config_of(dir, &manifest)?;
    let blobs = dir.join("blobs").join("sha256");
    fs::create_dir_all(&blobs).map_err(io_err(&blobs))?;
    let tmp = blobs.join(".zeros.tmp");
    let file = fs::File::create(&tmp).map_err(io_err(&tmp))?;
    let gz = flate2::write::GzEncoder::new(
        HashingWriter::new(std::io::BufWriter::new(file)),
        flate2::Compression::fast(),
    );
    let mut builder = tar::Builder::new(HashingWriter::new(gz));
    let h = header(path, EntryType::Regular, 0o644, size)?;
    builder
        .append(&h, std::io::repeat(0).take(size))
        .map_err(io_err(&tmp))?;
    let tar = builder.into_inner().map_err(io_err(&tmp))?;
    let diff_id = format!("sha256:{}", hex::encode(tar.hasher.finalize()));
    let blob = tar.inner.finish().map_err(io_err(&tmp))?;
    let size = blob.count;
    let digest_hex = hex::encode(blob.hasher.finalize());
    blob.inner
        .into_inner()
        .map_err(|e| e.into_error())
        .and_then(|f| f.sync_all())
        .map_err(io_err(&tmp))?;
    let path = blobs.join(&digest_hex);
    fs::rename(&tmp, &path).map_err(io_err(&path))?;
    let layer = descriptor(
        MediaType::ImageLayerGzip,
        &format!("sha256:{digest_hex}"),
        usize::try_from(size).unwrap_or(usize::MAX),
    )?;
    config.rootfs_mut().diff_ids_mut().push(diff_id);
    let mut layers = manifest.layers().clone();
    layers.push(layer);
    write_image(dir, tag, &config, layers)
}

/// A writer that hashes and counts what passes through it.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W> HashingWriter<W> {
    fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The path of a blob in a layout.
pub fn blob_path(dir: &Path, desc: &Descriptor) -> PathBuf {
    dir.join("blobs")
        .join(desc.digest().algorithm().to_string())
        .join(desc.digest().digest())
}

/// The manifest tagged `tag` in the layout at `dir`.
pub fn manifest_of(dir: &Path, tag: &str) -> Result<ImageManifest, ImageError> {
    let desc = manifest_descriptor(dir, tag)?;
    let path = blob_path(dir, &desc);
    ImageManifest::from_file(&path).map_err(spec_err("manifest"))
}

/// The index descriptor of the manifest tagged `tag`.
pub fn manifest_descriptor(dir: &Path, tag: &str) -> Result<Descriptor, ImageError> {
    let index = ImageIndex::from_file(dir.join("index.json")).map_err(spec_err("index.json"))?;
    index
        .manifests()
        .iter()
        .find(|d| {
            d.annotations()
                .as_ref()
                .and_then(|a| a.get(ANNOTATION_REF_NAME))
                .is_some_and(|n| n == tag)
        })
        .cloned()
        .ok_or_else(|| ImageError::ManifestChoice(format!("no manifest tagged {tag:?}")))
}

fn config_of(dir: &Path, manifest: &ImageManifest) -> Result<ImageConfiguration, ImageError> {
    ImageConfiguration::from_file(blob_path(dir, manifest.config())).map_err(spec_err("config"))
}

/// Writes `bytes` as a blob; returns its digest (`sha256:<hex>`).
pub fn write_blob(dir: &Path, bytes: &[u8]) -> Result<String, ImageError> {
    let hex = hex::encode(Sha256::digest(bytes));
    let blobs = dir.join("blobs").join("sha256");
    fs::create_dir_all(&blobs).map_err(io_err(&blobs))?;
    let path = blobs.join(&hex);
    fs::write(&path, bytes).map_err(io_err(&path))?;
    Ok(format!("sha256:{hex}"))
}

fn descriptor(media_type: MediaType, digest: &str, size: usize) -> Result<Descriptor, ImageError> {
    DescriptorBuilder::default()
        .media_type(media_type)
        .digest(oci_spec::image::Digest::try_from(digest.to_owned()).map_err(spec_err("digest"))?)
        .size(size as u64)
        .build()
        .map_err(spec_err("descriptor"))
}

/// Writes the config, the manifest and the index entry for `tag` (replacing an older one).
fn write_image(
    dir: &Path,
    tag: &str,
    config: &ImageConfiguration,
    layers: Vec<Descriptor>,
) -> Result<(), ImageError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let config_json = config.to_string().map_err(spec_err("config"))?;
    let config_digest = write_blob(dir, config_json.as_bytes())?;
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(descriptor(
            MediaType::ImageConfig,
            &config_digest,
            config_json.len(),
        )?)
        .layers(layers)
        .build()
        .map_err(spec_err("manifest"))?;
    let manifest_json = manifest.to_string().map_err(spec_err("manifest"))?;
    let manifest_digest = write_blob(dir, manifest_json.as_bytes())?;
    let mut manifest_desc = descriptor(
        MediaType::ImageManifest,
        &manifest_digest,
        manifest_json.len(),
    )?;
    manifest_desc.set_annotations(Some(HashMap::from([(
        ANNOTATION_REF_NAME.to_owned(),
        tag.to_owned(),
    )])));
    let index_path = dir.join("index.json");
    let mut manifests = if index_path.exists() {
        ImageIndex::from_file(&index_path)
            .map_err(spec_err("index.json"))?
            .manifests()
            .clone()
    } else {
        Vec::new()
    };
    let is_tag = |d: &Descriptor| {
        d.annotations()
            .as_ref()
            .and_then(|a| a.get(ANNOTATION_REF_NAME))
            .is_some_and(|n| n == tag)
    };
    match manifests.iter_mut().find(|d| is_tag(d)) {
        Some(slot) => *slot = manifest_desc,
        None => manifests.push(manifest_desc),
    }
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(manifests)
        .build()
        .map_err(spec_err("index.json"))?;
    index.to_file(&index_path).map_err(spec_err("index.json"))?;
    let marker = dir.join("oci-layout");
    fs::write(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(io_err(&marker))
}

/// Builds the tar of `entries`, writes it as a blob; returns its descriptor and diff id.
fn write_layer(
    dir: &Path,
    entries: &[TestEntry],
    format: LayerFormat,
) -> Result<(Descriptor, String), ImageError> {
    let tar = layer_tar(entries)?;
    let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(&tar)));
    let (bytes, media_type) = match format {
        LayerFormat::Tar => (tar, MediaType::ImageLayer),
        LayerFormat::Gzip => {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&tar)
                .and_then(|()| gz.flush())
                .map_err(io_err(dir))?;
            (gz.finish().map_err(io_err(dir))?, MediaType::ImageLayerGzip)
        }
        LayerFormat::Zstd => (
            zstd::encode_all(&tar[..], 3).map_err(io_err(dir))?,
            MediaType::ImageLayerZstd,
        ),
    };
    let digest = write_blob(dir, &bytes)?;
    Ok((descriptor(media_type, &digest, bytes.len())?, diff_id))
}

/// The uncompressed tar of `entries`, paths written as given.
pub fn layer_tar(entries: &[TestEntry]) -> Result<Vec<u8>, ImageError> {
    let mut builder = tar::Builder::new(Vec::new());
    let err = |e: std::io::Error| ImageError::Io {
        path: PathBuf::from("<test layer>"),
        source: e,
    };
    for entry in entries {
        match entry {
            TestEntry::DirWithMode { path, mode } => {
                let h = header(path, EntryType::Directory, *mode, 0)?;
                builder.append(&h, std::io::empty()).map_err(err)?;
            }
            TestEntry::File {
                path,
                contents,
                mode,
            } => {
                let h = header(path, EntryType::Regular, *mode, contents.len() as u64)?;
                builder.append(&h, &contents[..]).map_err(err)?;
            }
            TestEntry::Dir { path } => {
                let h = header(path, EntryType::Directory, 0o755, 0)?;
                builder.append(&h, std::io::empty()).map_err(err)?;
            }
            TestEntry::Symlink { path, target } => {
                let mut h = header(path, EntryType::Symlink, 0o777, 0)?;
                h.set_link_name_literal(target.as_bytes()).map_err(err)?;
                h.set_cksum();
                builder.append(&h, std::io::empty()).map_err(err)?;
            }
            TestEntry::Hardlink { path, target } => {
                let mut h = header(path, EntryType::Link, 0o644, 0)?;
                h.set_link_name_literal(target.as_bytes()).map_err(err)?;
                h.set_cksum();
                builder.append(&h, std::io::empty()).map_err(err)?;
            }
            TestEntry::Whiteout { path } => {
                let (parent, name) = match path.trim_end_matches('/').rsplit_once('/') {
                    Some((parent, name)) => (format!("{parent}/"), name),
                    None => (String::new(), path.trim_end_matches('/')),
                };
                let h = header(&format!("{parent}.wh.{name}"), EntryType::Regular, 0o644, 0)?;
                builder.append(&h, std::io::empty()).map_err(err)?;
            }
            TestEntry::OpaqueDir { path } => {
                let dir = format!("{}/", path.trim_end_matches('/'));
                let h = header(&dir, EntryType::Directory, 0o755, 0)?;
                builder.append(&h, std::io::empty()).map_err(err)?;
                let h = header(&format!("{dir}.wh..wh..opq"), EntryType::Regular, 0o644, 0)?;
                builder.append(&h, std::io::empty()).map_err(err)?;
            }
            TestEntry::Fifo { path } => {
                let h = header(path, EntryType::Fifo, 0o644, 0)?;
                builder.append(&h, std::io::empty()).map_err(err)?;
            }
            TestEntry::FileWithXattr {
                path,
                contents,
                mode,
                name,
                value,
            } => {
                let mut record = format!("SCHILY.xattr.{name}=").into_bytes();
                record.extend_from_slice(value);
                record.push(b'\n');
                // The record starts with its own length in decimal, that length included.
                let mut len = record.len() + 2;
                while format!("{len} ").len() + record.len() != len {
                    len += 1;
                }
                let mut pax = format!("{len} ").into_bytes();
                pax.extend_from_slice(&record);
                let h = header("PaxHeaders/x", EntryType::XHeader, 0o644, pax.len() as u64)?;
                builder.append(&h, &pax[..]).map_err(err)?;
                let h = header(path, EntryType::Regular, *mode, contents.len() as u64)?;
                builder.append(&h, &contents[..]).map_err(err)?;
            }
            TestEntry::CharDevice { path, major, minor } => {
                let mut h = header(path, EntryType::Char, 0o666, 0)?;
                h.set_device_major(*major).map_err(err)?;
                h.set_device_minor(*minor).map_err(err)?;
                h.set_cksum();
                builder.append(&h, std::io::empty()).map_err(err)?;
            }
        }
    }
    builder.into_inner().map_err(err)
}

/// A ustar header with the path copied in byte for byte (at most 100 bytes).
fn header(path: &str, kind: EntryType, mode: u32, size: u64) -> Result<Header, ImageError> {
    let mut h = Header::new_ustar();
    let bytes = path.as_bytes();
    let name = &mut h.as_old_mut().name;
    if bytes.len() > name.len() || bytes.contains(&0) {
        return Err(ImageError::UnsafeEntry {
            layer: "<test layer>".to_owned(),
            entry: path.to_owned(),
            reason: "test entry paths are at most 100 bytes, without NUL".to_owned(),
        });
    }
    name[..bytes.len()].copy_from_slice(bytes);
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(MTIME);
    h.set_uid(0);
    h.set_gid(0);
    h.set_cksum();
    Ok(h)
}
