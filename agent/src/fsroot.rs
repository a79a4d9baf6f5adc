//! Reading `/proc`, `/sys`, `/etc` and DMI below an injectable root directory.
//!
//! Production code uses [`FsRoot::host`] (`/`); tests point it at fixture trees under
//! `agent/tests/fixtures/`. Parsing lives next to each probe and takes strings, so it is tested
//! without any files at all.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// A filesystem root below which absolute paths like `/proc/cpuinfo` are resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsRoot {
    root: PathBuf,
}

/// A read below an [`FsRoot`] failed; names the path as the caller asked for it.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {path}")]
pub struct FsError {
    /// The path as requested (relative to the root, e.g. `/proc/cpuinfo`).
    pub path: String,
    /// What the operating system said.
    #[source]
    pub source: io::Error,
}

impl FsError {
    /// True when the file or directory does not exist (as opposed to a permission or I/O error).
    pub fn is_not_found(&self) -> bool {
        self.source.kind() == io::ErrorKind::NotFound
    }
}

impl FsRoot {
    /// The running machine's own root, `/`.
    pub fn host() -> Self {
        Self::new("/")
    }

    /// A root at `dir`; `/proc/cpuinfo` then means `dir/proc/cpuinfo`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { root: dir.into() }
    }

    /// True when this root is the running machine's own `/`: only then may probes also ask the
    /// kernel or the CPU directly (CPUID, statvfs, getifaddrs, NVML, OpenCL).
    pub fn is_host(&self) -> bool {
        self.root == Path::new("/")
    }

    /// The directory this root stands for.
    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// The real path of `path` (absolute, as seen on the host) below this root.
    pub fn path(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    /// Reads a whole text file.
    pub fn read_string(&self, path: &str) -> Result<String, FsError> {
        fs::read_to_string(self.path(path)).map_err(|source| FsError {
            path: path.to_owned(),
            source,
        })
    }

    /// Reads a text file and trims surrounding whitespace (sysfs attributes end in `\n`).
    pub fn read_trimmed(&self, path: &str) -> Result<String, FsError> {
        self.read_string(path).map(|s| s.trim().to_owned())
    }

    /// Reads a sysfs attribute if it exists and is readable; `None` otherwise.
    pub fn read_opt(&self, path: &str) -> Option<String> {
        self.read_trimmed(path).ok().filter(|s| !s.is_empty())
    }

    /// Reads a whole binary file.
    pub fn read_bytes(&self, path: &str) -> Result<Vec<u8>, FsError> {
        fs::read(self.path(path)).map_err(|source| FsError {
            path: path.to_owned(),
            source,
        })
    }

    /// The entry names of a directory, sorted, so output does not depend on readdir order.
    pub fn list_dir(&self, path: &str) -> Result<Vec<String>, FsError> {
        let entries = fs::read_dir(self.path(path)).map_err(|source| FsError {
            path: path.to_owned(),
            source,
        })?;
        let mut names: Vec<String> = entries
            .filter_map(|entry| entry.ok())
            .filter_map(|entry| entry.file_name().into_string().ok())
            .collect();
        names.sort();
        Ok(names)
    }

    /// The last component of the target of a symbolic link, e.g. the driver name behind
    /// `/sys/bus/pci/devices/X/driver`. `None` when the link does not exist.
    pub fn link_name(&self, path: &str) -> Option<String> {
        fs::read_link(self.path(path))
            .ok()
            .and_then(|target| target.file_name().map(|n| n.to_string_lossy().into_owned()))
    }

    /// The target of a symbolic link as stored (may be relative).
    pub fn link_target(&self, path: &str) -> Option<PathBuf> {
        fs::read_link(self.path(path)).ok()
    }

    /// True when `path` exists below the root.
    pub fn exists(&self, path: &str) -> bool {
        self.path(path).exists()
    }
}

/// Why a CPU list (`0-3,8`) does not parse; names the offending entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CpuListError {
    /// An entry that is not a number or a `lo-hi` pair of numbers.
    #[error("bad cpu list entry {0:?}")]
    BadEntry(String),
    /// A range that runs backwards or spans more than 65536 CPUs.
    #[error("bad cpu list range {0:?}")]
    BadRange(String),
}

/// Parses a Linux CPU list such as `0-3,8,10-11` into CPU numbers, ascending.
pub fn parse_cpu_list(list: &str) -> Result<Vec<u32>, CpuListError> {
    let mut cpus = Vec::new();
    for part in list
        .trim()
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        let (lo, hi) = match part.split_once('-') {
            Some((lo, hi)) => (lo, hi),
            None => (part, part),
        };
        let bad_entry = |_| CpuListError::BadEntry(part.to_owned());
        let lo: u32 = lo.parse().map_err(bad_entry)?;
        let hi: u32 = hi.parse().map_err(bad_entry)?;
        if hi < lo || hi - lo > 1 << 16 {
            return Err(CpuListError::BadRange(part.to_owned()));
        }
        cpus.extend(lo..=hi);
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

/// Formats CPU numbers back into the compact Linux list form (`0-3,8`).
pub fn format_cpu_list(cpus: &[u32]) -> String {
    let mut out = Vec::new();
    let mut iter = cpus.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end += 1;
            iter.next();
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    out.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_list_round_trip() {
        let cpus = parse_cpu_list("0-3,8,10-11\n").unwrap();
        assert_eq!(cpus, vec![0, 1, 2, 3, 8, 10, 11]);
        assert_eq!(format_cpu_list(&cpus), "0-3,8,10-11");
        assert_eq!(parse_cpu_list("").unwrap(), Vec::<u32>::new());
        assert_eq!(format_cpu_list(&[5]), "5");
    }

    #[test]
    fn cpu_list_rejects_garbage() {
        assert_eq!(
            parse_cpu_list("0-x").unwrap_err().to_string(),
            "bad cpu list entry \"0-x\""
        );
        assert_eq!(
            parse_cpu_list("5-2"),
            Err(CpuListError::BadRange("5-2".into()))
        );
        assert!(parse_cpu_list("0-4294967295").is_err());
    }

    #[test]
    fn root_resolves_absolute_paths_below_it() {
        let root = FsRoot::new("/tmp/fixture");
        assert_eq!(
            root.path("/proc/cpuinfo"),
            PathBuf::from("/tmp/fixture/proc/cpuinfo")
        );
        assert!(!root.is_host());
        assert!(FsRoot::host().is_host());
    }
}
