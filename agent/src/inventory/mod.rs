//! The hardware inventory: what a buyer or a market needs to know about this machine.
//!
//! Each section (host, CPU, memory, GPUs, storage, network) is collected by an independent probe.
//! A probe that fails or has nothing to find yields [`ProbeStatus::Unavailable`] with a reason;
//! the others still report. Probes run concurrently, and the slow ones (OpenCL loads a whole
//! compiler, NVML loads the driver library) overlap the sysfs readers.
//!
//! The JSON form of [`Inventory`] is a documented contract (`agent/INVENTORY.md`): snake_case
//! field names with units in the name (`memory_total_bytes`, `max_clock_mhz`). The daemon keeps
//! one collected inventory in [`cache`].

pub mod cache;
pub mod cpu;
pub mod fingerprint;
pub mod gpu;
pub mod host;
pub mod memory;
pub mod network;
pub mod storage;

use std::time::{Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::fsroot::{FsError, FsRoot};

pub use fingerprint::Fingerprint;

/// The name and version of the inventory's JSON format.
pub const INVENTORY_FORMAT: &str = "fog-inventory-v1";

/// The whole inventory of one machine.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Inventory {
    /// Always [`INVENTORY_FORMAT`].
    pub format: String,
    /// Version of the fog-agent that collected it.
    pub agent_version: String,
    /// When collection started (RFC 3339, UTC).
    pub collected_at: String,
    /// Wall time of the whole collection, probes overlapping.
    pub collection_ms: f64,
    /// Stable hash of the hardware identity.
    pub fingerprint: Fingerprint,
    /// Host identity, OS and virtualization.
    pub host: Probed<host::HostInfo>,
    /// CPU identity, topology, caches, ISA.
    pub cpu: Probed<cpu::CpuInfo>,
    /// RAM, swap, hugepages and DIMMs.
    pub memory: Probed<memory::MemoryInfo>,
    /// GPUs merged by PCI address, plus every OpenCL device.
    pub gpus: Probed<gpu::GpuInventory>,
    /// Block devices and mounted filesystems.
    pub storage: Probed<storage::StorageInfo>,
    /// Network interfaces and addresses.
    pub network: Probed<network::NetworkInfo>,
}

/// Whether a probe produced its section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeStatus {
    /// The section is present in `data`.
    Ok,
    /// The probe failed or found nothing; `reason` says why.
    Unavailable,
}

/// The result of one probe: its data, or why there is none, and how long it took.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(bound(deserialize = "T: Deserialize<'de>"))]
pub struct Probed<T> {
    /// `ok` or `unavailable`.
    pub status: ProbeStatus,
    /// Why the probe is unavailable (only then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Parts of an `ok` section that could not be read, each with its reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Time this probe took.
    pub collection_ms: f64,
    /// The section (only when `ok`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<T>,
}

impl<T> Probed<T> {
    /// Runs `probe`, timing it and turning its error into an `unavailable` section.
    pub fn run(probe: impl FnOnce(&mut Notes) -> Result<T, ProbeError>) -> Self {
        let start = Instant::now();
        let mut notes = Notes::default();
        let result = probe(&mut notes);
        let collection_ms = elapsed_ms(start);
        match result {
            Ok(data) => Self {
                status: ProbeStatus::Ok,
                reason: None,
                notes: notes.0,
                collection_ms,
                data: Some(data),
            },
            Err(err) => Self {
                status: ProbeStatus::Unavailable,
                reason: Some(err.reason()),
                notes: notes.0,
                collection_ms,
                data: None,
            },
        }
    }

    /// The data when the probe succeeded.
    pub fn get(&self) -> Option<&T> {
        self.data.as_ref()
    }
}

/// Notes on parts of a section that could not be read (the section itself is still `ok`).
#[derive(Debug, Default)]
pub struct Notes(Vec<String>);

impl Notes {
    /// Records that `what` could not be read, and why.
    pub fn add(&mut self, what: &str, why: impl std::fmt::Display) {
        self.0.push(format!("{what}: {why}"));
    }

    /// Records the error of an optional read and returns its value, if any.
    pub fn ok<T, E: std::error::Error>(&mut self, what: &str, result: Result<T, E>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(err) => {
                self.add(what, error_chain(&err));
                None
            }
        }
    }

    /// The notes recorded so far.
    pub fn as_slice(&self) -> &[String] {
        &self.0
    }
}

/// Why a probe could not produce its section.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// A file the probe needs could not be read.
    #[error(transparent)]
    Read(#[from] FsError),
    /// A file was read but its content was not understood.
    #[error("cannot parse {what}: {detail}")]
    Parse {
        /// What was being parsed (usually a path).
        what: String,
        /// What was wrong with it.
        detail: String,
    },
    /// There is nothing to find here, or the facility is missing (no driver, no library,
    /// not readable on this kind of machine).
    #[error("{0}")]
    Unavailable(String),
}

impl ProbeError {
    /// The one-line reason shown to users: the error and its causes.
    pub fn reason(&self) -> String {
        error_chain(self)
    }

    /// Shorthand for a parse error.
    pub fn parse(what: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::Parse {
            what: what.into(),
            detail: detail.into(),
        }
    }
}

/// Formats an error and its `source()` chain as `outer: inner: innermost`.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

/// Where the inventory reads from.
#[derive(Debug)]
pub struct Sources<'a> {
    /// Root of `/proc`, `/sys`, `/etc`, `/run` and DMI.
    pub fs: FsRoot,
    /// NVIDIA's management library (real NVML, or a fake in tests).
    pub nvml: &'a dyn gpu::nvml::NvmlSource,
    /// OpenCL platforms and devices (a crash-isolated child process in production).
    pub opencl: &'a dyn gpu::opencl::OpenClSource,
}

/// Collects the inventory of the machine below `fs` with the real NVML and OpenCL sources (which
/// are skipped when `fs` is not the live host's root). The OpenCL enumeration comes from the
/// per-boot cache when it is valid ([`gpu::opencl_cache`]).
pub fn collect_from(fs: FsRoot) -> Inventory {
    collect_live(fs, true)
}

/// [`collect_from`], enumerating OpenCL afresh (and refreshing the per-boot cache).
pub fn collect_fresh(fs: FsRoot) -> Inventory {
    collect_live(fs, false)
}

fn collect_live(fs: FsRoot, use_cache: bool) -> Inventory {
    const NOT_HOST: &str = "not the live host";
    if !fs.is_host() {
        return collect(&Sources {
            fs,
            nvml: &gpu::nvml::Skipped(NOT_HOST.into()),
            opencl: &gpu::opencl::Skipped(NOT_HOST.into()),
        });
    }
    let nvml = gpu::nvml::NvmlLibrary::system();
    let timeout = std::time::Duration::from_secs(20);
    let child = match gpu::opencl::ChildProcessOpenCl::current_exe(timeout) {
        Ok(child) => child,
        Err(err) => {
            return collect(&Sources {
                fs,
                nvml: &nvml,
                opencl: &gpu::opencl::Skipped(err.to_string()),
            })
        }
    };
    match gpu::opencl_cache::default_dir() {
        Some(dir) => {
            let cached = gpu::opencl_cache::CachedOpenCl::new(&child, &fs, dir);
            let cached = if use_cache { cached } else { cached.fresh() };
            collect(&Sources {
                fs,
                nvml: &nvml,
                opencl: &cached,
            })
        }
        None => collect(&Sources {
            fs,
            nvml: &nvml,
            opencl: &child,
        }),
    }
}

/// Collects the whole inventory, probes running concurrently.
pub fn collect(sources: &Sources<'_>) -> Inventory {
    let started_at = SystemTime::now();
    let start = Instant::now();
    let fs = &sources.fs;
    let (host, cpu, memory, gpus, storage, network) = std::thread::scope(|scope| {
        // The slowest probe first, so it overlaps everything else.
        let gpus = scope
            .spawn(|| Probed::run(|notes| gpu::collect(fs, sources.nvml, sources.opencl, notes)));
        let storage = scope.spawn(|| Probed::run(|notes| storage::collect(fs, notes)));
        let network = scope.spawn(|| Probed::run(|notes| network::collect(fs, notes)));
        let memory = scope.spawn(|| Probed::run(|notes| memory::collect(fs, notes)));
        let host = scope.spawn(|| Probed::run(|notes| host::collect(fs, notes)));
        let cpu = Probed::run(|notes| cpu::collect(fs, notes));
        (
            join_probe(host),
            cpu,
            join_probe(memory),
            join_probe(gpus),
            join_probe(storage),
            join_probe(network),
        )
    });
    let mut inventory = Inventory {
        format: INVENTORY_FORMAT.to_owned(),
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        collected_at: humantime::format_rfc3339_millis(started_at).to_string(),
        collection_ms: 0.0,
        fingerprint: Fingerprint::default(),
        host,
        cpu,
        memory,
        gpus,
        storage,
        network,
    };
    inventory.fingerprint = Fingerprint::of(&inventory);
    inventory.collection_ms = elapsed_ms(start);
    inventory
}

/// Joins a probe thread; a panicking probe becomes an `unavailable` section, never a crash.
fn join_probe<T>(handle: std::thread::ScopedJoinHandle<'_, Probed<T>>) -> Probed<T> {
    handle.join().unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_owned());
        Probed {
            status: ProbeStatus::Unavailable,
            reason: Some(format!("probe panicked: {what}")),
            notes: Vec::new(),
            collection_ms: 0.0,
            data: None,
        }
    })
}

/// Milliseconds since `start`, rounded to microseconds.
pub fn elapsed_ms(start: Instant) -> f64 {
    (start.elapsed().as_secs_f64() * 1e6).round() / 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_probe_is_unavailable_with_reason() {
        let probed: Probed<u32> = Probed::run(|_| Err(ProbeError::Unavailable("no widget".into())));
        assert_eq!(probed.status, ProbeStatus::Unavailable);
        assert_eq!(probed.reason.as_deref(), Some("no widget"));
        assert!(probed.data.is_none());
        let json = serde_json::to_value(&probed).unwrap();
        assert_eq!(json["status"], "unavailable");
        assert!(json.get("data").is_none());
    }

    #[test]
    fn read_error_reason_names_the_path() {
        let root = FsRoot::new("/nonexistent-fixture-root");
        let probed: Probed<String> = Probed::run(|_| Ok(root.read_string("/proc/cpuinfo")?));
        let reason = probed.reason.unwrap();
        assert!(
            reason.starts_with("cannot read /proc/cpuinfo: "),
            "{reason}"
        );
    }

    #[test]
    fn notes_keep_ok_status() {
        let probed: Probed<u32> = Probed::run(|notes| {
            notes.add("cpufreq", "not exposed by this kernel");
            Ok(7)
        });
        assert_eq!(probed.status, ProbeStatus::Ok);
        assert_eq!(probed.notes, vec!["cpufreq: not exposed by this kernel"]);
    }
}
