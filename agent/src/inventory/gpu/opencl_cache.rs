//! A per-boot cache of the OpenCL enumeration.
//!
//! Enumerating OpenCL is the slowest part of the inventory: loading a platform maps its whole
//! compiler (PoCL dynamically links LLVM: ~30-40 ms here, the floor `clinfo -l` has too), while
//! every other probe together takes a few milliseconds. What OpenCL reports cannot change unless
//! the machine reboots or an OpenCL driver is installed, upgraded or removed, so the report of
//! the first enumeration is kept in a root-only runtime directory (`/run/fog-agent`, a tmpfs
//! emptied at boot) under a key made of:
//!
//! - the boot id (`/proc/sys/kernel/random/boot_id`),
//! - every ICD file in `/etc/OpenCL/vendors` (name and contents) and the identity (size,
//!   modification time, inode) of the library each one names and of the ICD loader itself,
//! - the `OCL_ICD_VENDORS` / `OCL_ICD_FILENAMES` overrides of the loader,
//! - the agent binary's own identity (a new agent may enumerate differently).
//!
//! Any difference re-enumerates. Only successful enumerations are cached; a failing or timed-out
//! child is asked again next time. A report served from the cache carries a note saying so. The
//! cache is skipped (never trusted) when its directory is not owned by this user or is writable
//! by others.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::opencl::{OpenClReport, OpenClSource, OpenClSourceError};
use crate::fsroot::FsRoot;

/// File name of the cache inside its directory.
pub const CACHE_FILE: &str = "opencl-devices.json";

/// Directories the dynamic loader searches for a bare library name on Debian.
fn library_dirs() -> Vec<String> {
    let multiarch = format!("/usr/lib/{}-linux-gnu", std::env::consts::ARCH);
    let lib_multiarch = format!("/lib/{}-linux-gnu", std::env::consts::ARCH);
    vec![
        "/usr/local/lib".to_owned(),
        multiarch,
        lib_multiarch,
        "/usr/lib64".to_owned(),
        "/usr/lib".to_owned(),
        "/lib".to_owned(),
    ]
}

/// The default cache directory: `/run/fog-agent` for root, `$XDG_RUNTIME_DIR/fog-agent`
/// otherwise, `None` when neither applies.
pub fn default_dir() -> Option<PathBuf> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return Some(PathBuf::from("/run/fog-agent"));
    }
    std::env::var_os("XDG_RUNTIME_DIR").map(|d| PathBuf::from(d).join("fog-agent"))
}

/// The cache key of the machine below `fs` (see the module doc).
pub fn key(fs: &FsRoot) -> String {
    let mut h = Sha256::new();
    let mut put = |label: &str, value: &[u8]| {
        h.update(label.as_bytes());
        h.update((value.len() as u64).to_le_bytes());
        h.update(value);
    };
    put("agent", env!("CARGO_PKG_VERSION").as_bytes());
    if let Ok(exe) = std::env::current_exe() {
        put("exe", identity(&exe).as_bytes());
    }
    put(
        "boot_id",
        fs.read_trimmed("/proc/sys/kernel/random/boot_id")
            .unwrap_or_default()
            .as_bytes(),
    );
    for var in ["OCL_ICD_VENDORS", "OCL_ICD_FILENAMES"] {
        let value = std::env::var_os(var).unwrap_or_default();
        put(var, value.as_encoded_bytes());
    }
    put("loader", resolve(fs, "libOpenCL.so.1").as_bytes());
    let mut icds = fs.list_dir("/etc/OpenCL/vendors").unwrap_or_default();
    icds.sort();
    for name in icds {
        let contents = fs
            .read_string(&format!("/etc/OpenCL/vendors/{name}"))
            .unwrap_or_default();
        put("icd", name.as_bytes());
        put("icd_contents", contents.as_bytes());
        put("icd_library", resolve(fs, contents.trim()).as_bytes());
    }
    hex::encode(h.finalize())
}

/// `size:mtime_ns:inode` of the first file named `library` in the loader's search path (or at
/// its absolute path), or `missing`.
fn resolve(fs: &FsRoot, library: &str) -> String {
    let candidates: Vec<String> = if library.starts_with('/') {
        vec![library.to_owned()]
    } else {
        library_dirs()
            .into_iter()
            .map(|d| format!("{d}/{library}"))
            .collect()
    };
    candidates
        .iter()
        .map(|c| fs.path(c))
        .find(|p| p.exists())
        .map(|p| format!("{}={}", p.display(), identity(&p)))
        .unwrap_or_else(|| "missing".to_owned())
}

/// Size, modification time and inode of the file `path` points to.
fn identity(path: &Path) -> String {
    match std::fs::metadata(path) {
        Ok(m) => format!("{}:{}.{}:{}", m.size(), m.mtime(), m.mtime_nsec(), m.ino()),
        Err(e) => format!("unreadable ({e})"),
    }
}

/// What the cache file holds.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    key: String,
    report: OpenClReport,
}

/// An [`OpenClSource`] that answers from the per-boot cache when the key matches, and asks
/// `inner` (and refreshes the cache) otherwise.
#[derive(Debug)]
pub struct CachedOpenCl<'a> {
    inner: &'a dyn OpenClSource,
    dir: PathBuf,
    key: String,
    fresh: bool,
}

impl<'a> CachedOpenCl<'a> {
    /// A cache in `dir` for the machine below `fs`.
    pub fn new(inner: &'a dyn OpenClSource, fs: &FsRoot, dir: PathBuf) -> Self {
        Self {
            inner,
            dir,
            key: key(fs),
            fresh: false,
        }
    }

    /// Never answers from the cache, but still refreshes it.
    pub fn fresh(self) -> Self {
        Self {
            fresh: true,
            ..self
        }
    }

    fn file(&self) -> PathBuf {
        self.dir.join(CACHE_FILE)
    }

    /// The directory is ours and private (created 0700 when missing).
    fn dir_is_trusted(&self) -> bool {
        if !self.dir.exists() {
            let created = std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.dir);
            if created.is_err() {
                return false;
            }
        }
        match std::fs::metadata(&self.dir) {
            // SAFETY: geteuid has no preconditions and cannot fail.
            Ok(m) => {
                m.is_dir()
                    && m.uid() == unsafe { libc::geteuid() }
                    && m.permissions().mode() & 0o022 == 0
            }
            Err(_) => false,
        }
    }

    fn load(&self) -> Option<OpenClReport> {
        let text = std::fs::read(self.file()).ok()?;
        let entry: Entry = serde_json::from_slice(&text).ok()?;
        (entry.key == self.key).then_some(entry.report)
    }

    /// Writes the entry atomically (temporary file + rename); failures only cost a cache miss
    /// next time.
    fn store(&self, report: &OpenClReport) {
        let entry = Entry {
            key: self.key.clone(),
            report: report.clone(),
        };
        let Ok(json) = serde_json::to_vec(&entry) else {
            return;
        };
        let tmp = self
            .dir
            .join(format!(".{CACHE_FILE}.{}.tmp", std::process::id()));
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| std::io::Write::write_all(&mut f, &json));
        if written.is_err() || std::fs::rename(&tmp, self.file()).is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }
}

impl OpenClSource for CachedOpenCl<'_> {
    fn devices(&self) -> Result<OpenClReport, OpenClSourceError> {
        let trusted = self.dir_is_trusted();
        if trusted && !self.fresh {
            if let Some(mut report) = self.load() {
                report.notes.push(format!(
                    "from the per-boot OpenCL cache {} (same boot, same ICDs and drivers)",
                    self.file().display()
                ));
                return Ok(report);
            }
        }
        let report = self.inner.devices()?;
        if trusted {
            self.store(&report);
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::inventory::gpu::opencl::OpenClDevice;

    /// Counts enumerations; fails when told to.
    #[derive(Debug, Default)]
    struct Counting {
        calls: AtomicUsize,
        fail: bool,
    }

    impl OpenClSource for Counting {
        fn devices(&self) -> Result<OpenClReport, OpenClSourceError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.fail {
                return Err(OpenClSourceError::Child("timed out".into()));
            }
            Ok(OpenClReport {
                devices: vec![OpenClDevice {
                    name: "cpu-haswell".into(),
                    device_type: "cpu".into(),
                    ..OpenClDevice::default()
                }],
                notes: Vec::new(),
            })
        }
    }

    /// A machine root with a boot id and one ICD naming a library that exists below it.
    fn machine(boot_id: &str) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        let p = root.path();
        std::fs::create_dir_all(p.join("proc/sys/kernel/random")).unwrap();
        std::fs::write(p.join("proc/sys/kernel/random/boot_id"), boot_id).unwrap();
        std::fs::create_dir_all(p.join("etc/OpenCL/vendors")).unwrap();
        std::fs::write(p.join("etc/OpenCL/vendors/pocl.icd"), "libpocl.so.2\n").unwrap();
        std::fs::create_dir_all(p.join("usr/lib")).unwrap();
        std::fs::write(p.join("usr/lib/libpocl.so.2"), b"v1").unwrap();
        root
    }

    #[test]
    fn second_enumeration_comes_from_the_cache_with_a_note() {
        let root = machine("b1");
        let cache = tempfile::tempdir().unwrap();
        let dir = cache.path().join("fog-agent");
        let inner = Counting::default();
        let fs = FsRoot::new(root.path());
        let first = CachedOpenCl::new(&inner, &fs, dir.clone())
            .devices()
            .unwrap();
        assert!(first.notes.is_empty());
        let second = CachedOpenCl::new(&inner, &fs, dir.clone())
            .devices()
            .unwrap();
        assert_eq!(inner.calls.load(Ordering::SeqCst), 1);
        assert_eq!(second.devices, first.devices);
        assert!(second.notes[0].starts_with("from the per-boot OpenCL cache"));
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn reboot_or_driver_change_re_enumerates() {
        let root = machine("b1");
        let cache = tempfile::tempdir().unwrap();
        let dir = cache.path().to_path_buf();
        let inner = Counting::default();
        let fs = FsRoot::new(root.path());
        CachedOpenCl::new(&inner, &fs, dir.clone())
            .devices()
            .unwrap();
        // A driver upgrade replaces the library.
        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::write(root.path().join("usr/lib/libpocl.so.2"), b"v2, larger").unwrap();
        CachedOpenCl::new(&inner, &fs, dir.clone())
            .devices()
            .unwrap();
        assert_eq!(inner.calls.load(Ordering::SeqCst), 2);
        // A new ICD.
        std::fs::write(
            root.path().join("etc/OpenCL/vendors/nvidia.icd"),
            "libnvidia-opencl.so.1",
        )
        .unwrap();
        CachedOpenCl::new(&inner, &fs, dir.clone())
            .devices()
            .unwrap();
        assert_eq!(inner.calls.load(Ordering::SeqCst), 3);
        // A reboot.
        std::fs::write(root.path().join("proc/sys/kernel/random/boot_id"), "b2").unwrap();
        CachedOpenCl::new(&inner, &fs, dir.clone())
            .devices()
            .unwrap();
        assert_eq!(inner.calls.load(Ordering::SeqCst), 4);
        // Unchanged: cached.
        CachedOpenCl::new(&inner, &fs, dir).devices().unwrap();
        assert_eq!(inner.calls.load(Ordering::SeqCst), 4);
        // Asked to enumerate afresh.
        let report = CachedOpenCl::new(&inner, &fs, cache.path().to_path_buf())
            .fresh()
            .devices()
            .unwrap();
        assert!(report.notes.is_empty());
        assert_eq!(inner.calls.load(Ordering::SeqCst), 5);
    }

    #[test]
    fn failures_are_not_cached_and_garbage_is_ignored() {
        let root = machine("b1");
        let cache = tempfile::tempdir().unwrap();
        let dir = cache.path().to_path_buf();
        let fs = FsRoot::new(root.path());
        let failing = Counting {
            fail: true,
            ..Counting::default()
        };
        assert!(CachedOpenCl::new(&failing, &fs, dir.clone())
            .devices()
            .is_err());
        assert!(!dir.join(CACHE_FILE).exists());
        std::fs::write(dir.join(CACHE_FILE), b"{not json").unwrap();
        let inner = Counting::default();
        let report = CachedOpenCl::new(&inner, &fs, dir.clone())
            .devices()
            .unwrap();
        assert!(report.notes.is_empty());
        assert_eq!(inner.calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_directory_others_can_write_is_never_trusted() {
        let root = machine("b1");
        let cache = tempfile::tempdir().unwrap();
        let dir = cache.path().to_path_buf();
        let fs = FsRoot::new(root.path());
        let inner = Counting::default();
        CachedOpenCl::new(&inner, &fs, dir.clone())
            .devices()
            .unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let report = CachedOpenCl::new(&inner, &fs, dir.clone())
            .devices()
            .unwrap();
        assert!(report.notes.is_empty());
        assert_eq!(inner.calls.load(Ordering::SeqCst), 2);
    }
}
