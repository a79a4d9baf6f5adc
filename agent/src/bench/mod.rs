//! The benchmark suite of the agent: which benchmarks exist ([`suite`]), how each runs in a
//! crash-isolated child process with a timeout ([`runner`], [`child`]), the cache of results in
//! the state store keyed by hardware fingerprint + id + device + kernel version + driver versions
//! ([`run_suite`]), the GPU health recorded around OpenCL runs ([`crate::gpu::health`]), and
//! the daemon's face of it all ([`backend`]: cached results, one run at a time, a background run
//! when the hardware fingerprint changes).
//!
//! The kernels themselves live in the `fog-bench` crate; this module only decides what to run,
//! with which plain parameters, and keeps the results.

pub mod backend;
pub mod child;
pub mod runner;
pub mod suite;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::state::{BenchKey, StateError, StateStore};
pub use backend::{
    BenchmarkBackend, BenchmarkError, BenchmarkPhase, BenchmarkProgress, BenchmarkReport,
    BenchmarkResult, BenchmarkState, SuiteBackend,
};
pub use suite::{Mode, Need, Spec};

/// Name and version of the `--json` document.
pub const BENCH_FORMAT: &str = "fog-bench-v1";

/// Outcome of one benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Measured and verified.
    Ok,
    /// Measured, but the environment made it meaningless (e.g. throttling started).
    Invalid,
    /// Did not produce a result (kernel error, crash, timeout); `reason` says why.
    Failed,
    /// Not run (no peer, no device, no fp64); `reason` says why.
    Skipped,
}

/// One benchmark result as stored, printed and sent to a market.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchRecord {
    /// Benchmark id, e.g. `mem.bandwidth`.
    pub id: String,
    /// Version of the kernel that produced it.
    pub kernel_version: u32,
    /// Outcome.
    pub status: Status,
    /// Why it is not `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Device it ran on.
    pub device: String,
    /// Unit of the figures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// Statistics of the main figure (median is the figure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<fog_bench::Summary>,
    /// Secondary figures.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub details: BTreeMap<String, serde_json::Value>,
    /// What the kernel verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified: Option<String>,
    /// Wall time of the benchmark (seconds).
    pub duration_s: f64,
    /// Driver versions the result depends on (part of the cache key).
    #[serde(default)]
    pub driver_versions: String,
    /// Environment before the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_before: Option<fog_bench::env::EnvSnapshot>,
    /// Environment after the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_after: Option<fog_bench::env::EnvSnapshot>,
    /// GPU health (clocks, temperature, power, throttle reasons) before and after, or why not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_health: Option<serde_json::Value>,
    /// Whether this record came from the cache rather than this run.
    #[serde(default)]
    pub cached: bool,
}

impl BenchRecord {
    /// A record without figures (failed or skipped).
    pub fn without_result(spec: &Spec, device: &str, status: Status, reason: String) -> Self {
        Self {
            id: spec.id.to_owned(),
            kernel_version: spec.kernel_version,
            status,
            reason: Some(reason),
            device: device.to_owned(),
            unit: None,
            summary: None,
            details: BTreeMap::new(),
            verified: None,
            duration_s: 0.0,
            driver_versions: String::new(),
            env_before: None,
            env_after: None,
            gpu_health: None,
            cached: false,
        }
    }
}

/// Errors of the suite (individual benchmark failures are records, not errors).
#[derive(Debug, thiserror::Error)]
pub enum BenchSuiteError {
    /// `--only` named an id that does not exist.
    #[error("unknown benchmark id {0:?} (see `fog-agent bench --help`)")]
    UnknownId(String),
    /// The state store failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// The agent's own executable could not be found (needed for child processes).
    #[error("cannot find the agent executable")]
    CurrentExe(#[source] std::io::Error),
}

/// What to run and where.
#[derive(Debug, Clone)]
pub struct SuiteConfig {
    /// Quick or full parameters.
    pub mode: Mode,
    /// Ids or id prefixes to run (`None` = all of the mode).
    pub only: Option<Vec<String>>,
    /// Network peer (`fog-agent bench-peer`); network benchmarks are skipped without one.
    pub peer: Option<String>,
    /// Ignore cached results.
    pub force: bool,
    /// State directory (database and disk test file).
    pub state_dir: PathBuf,
    /// Hardware fingerprint the cache is keyed by.
    pub fingerprint: String,
    /// CPU facts passed to the kernels.
    pub cpu: CpuFacts,
    /// The executable to re-run as a child (the agent itself).
    pub exe: PathBuf,
}

/// What the CPU kernels need to know, as plain values (from the inventory when it has them,
/// else from sysfs and measurement).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuFacts {
    /// Online logical CPUs.
    pub cpus: Vec<usize>,
    /// One logical CPU per physical core.
    pub physical_cpus: Vec<usize>,
    /// Total last-level cache in bytes (all instances).
    pub llc_total_bytes: Option<u64>,
    /// L1d / L2 sizes of one instance, for latency sizes.
    pub l1d_bytes: Option<u64>,
    /// L2 size of one instance.
    pub l2_bytes: Option<u64>,
    /// Largest single L3 instance.
    pub l3_bytes: Option<u64>,
    /// Nominal maximum clock (MHz) from the inventory; `None` makes the child measure it.
    pub clock_mhz: Option<f64>,
}

/// Progress events of a suite run (for bars or plain lines).
pub trait Progress {
    /// A benchmark starts.
    fn start(&mut self, id: &str, device: &str, index: usize, total: usize);
    /// A benchmark finished (or came from the cache, or was skipped).
    fn done(&mut self, record: &BenchRecord);
}

/// Progress that reports nothing.
#[derive(Debug, Default)]
pub struct Silent;

impl Progress for Silent {
    fn start(&mut self, _: &str, _: &str, _: usize, _: usize) {}
    fn done(&mut self, _: &BenchRecord) {}
}

/// Runs the suite: selects specs, reuses cached results that are still valid (unless `force`),
/// runs the rest in child processes and stores the successful ones.
pub fn run_suite(
    config: &SuiteConfig,
    progress: &mut dyn Progress,
) -> Result<Vec<BenchRecord>, BenchSuiteError> {
    let specs = suite::select(config.mode, config.only.as_deref())?;
    let store = StateStore::open(&config.state_dir)?;
    let opencl_devices = if specs.iter().any(|s| s.need == Need::OpenCl) {
        Some(runner::list_opencl(&config.exe, Duration::from_secs(120)).map_err(|e| e.to_string()))
    } else {
        None
    };
    let plan = suite::plan(&specs, config, opencl_devices.as_ref());
    let total = plan.iter().map(|j| j.items.len()).sum();
    let mut records = Vec::with_capacity(total);
    let mut index = 0;
    for job in plan {
        let mut to_run = Vec::new();
        for item in job.items {
            index += 1;
            progress.start(item.spec.id, &item.device, index, total);
            if let Some(reason) = item.skip.clone() {
                let r =
                    BenchRecord::without_result(&item.spec, &item.device, Status::Skipped, reason);
                progress.done(&r);
                records.push(r);
                continue;
            }
            let key = item.key(&config.fingerprint);
            if !config.force {
                if let Some(v) = store.bench_get(&key)? {
                    if let Ok(mut r) = serde_json::from_value::<BenchRecord>(v) {
                        r.cached = true;
                        progress.done(&r);
                        records.push(r);
                        continue;
                    }
                }
            }
            to_run.push(item);
        }
        if to_run.is_empty() {
            continue;
        }
        for r in runner::run_job(config, job.device_index, &to_run) {
            if r.status == Status::Ok {
                if let Some(item) = to_run.iter().find(|i| i.spec.id == r.id) {
                    store.bench_put(
                        &item.key(&config.fingerprint),
                        &serde_json::to_value(&r).map_err(StateError::from)?,
                    )?;
                }
            }
            progress.done(&r);
            records.push(r);
        }
    }
    Ok(records)
}

/// The cached results for `fingerprint` as one JSON value (`{"format", "fingerprint",
/// "results": [...]}`), for the attestation payload. Empty `results` when nothing is cached.
pub fn cached_results(
    state_dir: &Path,
    fingerprint: &str,
) -> Result<serde_json::Value, StateError> {
    let store = StateStore::open(state_dir)?;
    let results = store.bench_for_fingerprint(fingerprint)?;
    Ok(serde_json::json!({
        "format": BENCH_FORMAT,
        "fingerprint": fingerprint,
        "results": results,
    }))
}

/// CPU facts from sysfs (online CPUs, one CPU per physical core via `thread_siblings_list`,
/// cache sizes from `cache/index*`), used when the inventory has no CPU section.
pub fn cpu_facts_from_sysfs(fs: &crate::fsroot::FsRoot) -> CpuFacts {
    use crate::fsroot::parse_cpu_list;
    let cpus: Vec<usize> = fs
        .read_opt("/sys/devices/system/cpu/online")
        .and_then(|s| parse_cpu_list(s.trim()).ok())
        .map(|v| v.into_iter().map(|c| c as usize).collect())
        .unwrap_or_default();
    let cpus = if cpus.is_empty() {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        (0..n).collect()
    } else {
        cpus
    };
    let mut physical = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for &c in &cpus {
        let siblings = fs
            .read_opt(&format!(
                "/sys/devices/system/cpu/cpu{c}/topology/thread_siblings_list"
            ))
            .unwrap_or_else(|| c.to_string());
        if seen.insert(siblings.trim().to_owned()) {
            physical.push(c);
        }
    }
    let mut facts = CpuFacts {
        cpus,
        physical_cpus: physical,
        ..CpuFacts::default()
    };
    for idx in 0..8 {
        let base = format!("/sys/devices/system/cpu/cpu0/cache/index{idx}");
        let (Some(level), Some(kind), Some(size)) = (
            fs.read_opt(&format!("{base}/level")),
            fs.read_opt(&format!("{base}/type")),
            fs.read_opt(&format!("{base}/size")),
        ) else {
            break;
        };
        let Some(bytes) = parse_cache_size(&size) else {
            continue;
        };
        match (level.trim(), kind.trim()) {
            ("1", "Data") => facts.l1d_bytes = Some(bytes),
            ("2", _) => facts.l2_bytes = Some(bytes),
            ("3", _) => {
                facts.l3_bytes = Some(bytes);
                let shared = fs
                    .read_opt(&format!("{base}/shared_cpu_list"))
                    .and_then(|s| parse_cpu_list(s.trim()).ok())
                    .map_or(1, |v| v.len().max(1));
                let instances = facts.cpus.len().div_ceil(shared) as u64;
                facts.llc_total_bytes = Some(bytes * instances);
            }
            _ => {}
        }
    }
    if facts.llc_total_bytes.is_none() {
        facts.llc_total_bytes = facts
            .l2_bytes
            .map(|l2| l2 * facts.physical_cpus.len() as u64);
    }
    facts
}

/// Parses sysfs cache sizes such as `32K`, `1024K`, `32768K`, `2M`.
pub fn parse_cache_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let (num, mult) = match t.chars().last()? {
        'K' => (&t[..t.len() - 1], 1024),
        'M' => (&t[..t.len() - 1], 1024 * 1024),
        'G' => (&t[..t.len() - 1], 1024 * 1024 * 1024),
        _ => (t, 1),
    };
    num.parse::<u64>().ok().map(|n| n * mult)
}

/// CPU facts from the inventory's CPU section, completed from sysfs where it has no data.
pub fn cpu_facts(inventory: &crate::inventory::Inventory) -> CpuFacts {
    let mut facts = cpu_facts_from_sysfs(&crate::fsroot::FsRoot::host());
    if let Some(cpu) = inventory.cpu.get() {
        if let Some(l3) = cpu
            .caches
            .iter()
            .filter(|c| c.level >= 3)
            .max_by_key(|c| c.level)
        {
            facts.llc_total_bytes = Some(l3.total_bytes);
            facts.l3_bytes = Some(l3.size_bytes);
        }
        facts.clock_mhz = cpu.max_clock_mhz.or(cpu.base_clock_mhz).map(f64::from);
    }
    facts
}

/// The hardware fingerprint to key the cache by: the inventory's, or, while that is empty (no
/// fingerprint probe), a SHA-256 of `/proc/cpuinfo` model lines, CPU count and `MemTotal`,
/// prefixed `fallback:`.
pub fn fingerprint(inventory: &crate::inventory::Inventory) -> String {
    if !inventory.fingerprint.value.is_empty() {
        return inventory.fingerprint.value.clone();
    }
    use sha2::{Digest, Sha256};
    let fs = crate::fsroot::FsRoot::host();
    let cpuinfo = fs.read_opt("/proc/cpuinfo").unwrap_or_default();
    let mut h = Sha256::new();
    for line in cpuinfo.lines().filter(|l| {
        l.starts_with("model name") || l.starts_with("vendor_id") || l.starts_with("flags")
    }) {
        h.update(line.as_bytes());
    }
    let mem = fs.read_opt("/proc/meminfo").unwrap_or_default();
    if let Some(line) = mem.lines().find(|l| l.starts_with("MemTotal")) {
        h.update(line.as_bytes());
    }
    format!("fallback:{}", hex::encode(h.finalize()))
}

/// Cache key helper for stored records.
impl suite::Item {
    /// The key of this item's result.
    pub fn key(&self, fingerprint: &str) -> BenchKey {
        BenchKey {
            fingerprint: fingerprint.to_owned(),
            bench_id: self.spec.id.to_owned(),
            device: self.device.clone(),
            kernel_version: self.spec.kernel_version,
            driver_versions: self.driver_versions.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_sizes_parse() {
        assert_eq!(parse_cache_size("32K\n"), Some(32 * 1024));
        assert_eq!(parse_cache_size("32M"), Some(32 << 20));
        assert_eq!(parse_cache_size("512"), Some(512));
        assert_eq!(parse_cache_size("xK"), None);
        assert_eq!(parse_cache_size(""), None);
    }

    #[test]
    fn sysfs_facts_from_a_fixture_tree() {
        let dir = tempfile::tempdir().unwrap();
        let w = |rel: &str, text: &str| {
            let p = dir.path().join(rel.trim_start_matches('/'));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        let cpu = "/sys/devices/system/cpu";
        w(&format!("{cpu}/online"), "0-3\n");
        for (c, sib) in [(0, "0,2"), (1, "1,3"), (2, "0,2"), (3, "1,3")] {
            w(&format!("{cpu}/cpu{c}/topology/thread_siblings_list"), sib);
        }
        let idx = |i: u32, level: &str, kind: &str, size: &str, shared: &str| {
            let b = format!("{cpu}/cpu0/cache/index{i}");
            w(&format!("{b}/level"), level);
            w(&format!("{b}/type"), kind);
            w(&format!("{b}/size"), size);
            w(&format!("{b}/shared_cpu_list"), shared);
        };
        idx(0, "1", "Data", "48K", "0,2");
        idx(1, "1", "Instruction", "32K", "0,2");
        idx(2, "2", "Unified", "2048K", "0,2");
        idx(3, "3", "Unified", "16384K", "0-1");
        let f = cpu_facts_from_sysfs(&crate::fsroot::FsRoot::new(dir.path()));
        assert_eq!(f.cpus, vec![0, 1, 2, 3]);
        assert_eq!(f.physical_cpus, vec![0, 1]);
        assert_eq!(f.l1d_bytes, Some(48 * 1024));
        assert_eq!(f.l2_bytes, Some(2 << 20));
        assert_eq!(f.llc_total_bytes, Some(2 * (16 << 20)));
    }
}
