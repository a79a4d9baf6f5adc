//! Host telemetry: one sampler collecting CPU, memory, pressure, network, disk, filesystem and
//! GPU figures, fanned out to any number of subscribers.
//!
//! - [`HostSample`] and its parts are the domain types (the gRPC layer converts them once).
//! - [`SystemCollector`] reads one sample: `/proc` files below an [`FsRoot`] (parsers in
//!   [`procfs`]), filesystem usage through sysinfo (live host only), GPUs through a
//!   [`GpuTelemetrySource`] ([`crate::gpu::NvmlTelemetry`] in the daemon).
//! - [`hub::TelemetryHub`] runs the one sampler loop and the per-subscriber bounded queues.

pub mod hub;
pub mod procfs;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use crate::fsroot::{FsError, FsRoot};
use crate::gpu::{self, GpuSample, GpuTelemetrySource};
use crate::inventory::error_chain;

pub use hub::{Delivery, HubError, HubStats, Subscription, TelemetryHub};

/// One sample of the whole host.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostSample {
    /// +1 per sample the sampler takes (set by the hub).
    pub sequence: u64,
    /// When collection ended.
    pub taken_at: Option<SystemTime>,
    /// CPU times, shares and load; `None` when `/proc/stat` was unreadable.
    pub cpu: Option<CpuSample>,
    /// Cumulative times of each logical CPU, `(N of cpuN, times)`; empty when unreadable.
    pub per_cpu: Vec<(u32, CpuTimes)>,
    /// Memory; `None` when `/proc/meminfo` was unreadable.
    pub memory: Option<MemorySample>,
    /// PSI; `None` without `/proc/pressure`.
    pub pressure: Option<PressureSample>,
    /// Per network interface.
    pub network: Vec<NetDevSample>,
    /// Per whole block device.
    pub disks: Vec<DiskSample>,
    /// Per mounted device-backed filesystem.
    pub filesystems: Vec<FilesystemSample>,
    /// Per GPU of the inventory.
    pub gpus: Vec<GpuSample>,
    /// Parts that could not be read, `what: why`.
    pub errors: Vec<String>,
    /// Time spent collecting.
    pub collection: Duration,
    /// Each collector's time in this sample and its error count so far.
    pub collectors: Vec<CollectorStat>,
}

/// One collector's share of a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CollectorStat {
    /// `cpu`, `memory`, `pressure`, `network`, `disks`, `filesystems` or `gpus`.
    pub name: &'static str,
    /// Time it took in this sample.
    pub duration: Duration,
    /// Samples, since the sampler started, in which it reported an error (for `gpus`: at least
    /// one GPU unavailable).
    pub errors_total: u64,
}

/// Cumulative CPU time per mode, all CPUs together, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTimes {
    /// user.
    pub user_millis: u64,
    /// nice.
    pub nice_millis: u64,
    /// system.
    pub system_millis: u64,
    /// idle.
    pub idle_millis: u64,
    /// iowait.
    pub iowait_millis: u64,
    /// irq.
    pub irq_millis: u64,
    /// softirq.
    pub softirq_millis: u64,
    /// steal.
    pub steal_millis: u64,
    /// guest.
    pub guest_millis: u64,
    /// guest_nice.
    pub guest_nice_millis: u64,
}

/// Load averages.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LoadAverage {
    /// 1 minute.
    pub one: f64,
    /// 5 minutes.
    pub five: f64,
    /// 15 minutes.
    pub fifteen: f64,
}

/// CPU part of a sample.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuSample {
    /// Cumulative times.
    pub times: CpuTimes,
    /// Busy share since the previous sample (percent).
    pub utilization_percent: Option<f64>,
    /// Steal share since the previous sample (percent).
    pub steal_percent: Option<f64>,
    /// Load averages (`None` when `/proc/loadavg` was unreadable).
    pub load: Option<LoadAverage>,
    /// Logical CPUs in `/proc/stat`.
    pub logical_cpus: u32,
}

/// Memory part of a sample (bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemorySample {
    /// MemTotal.
    pub total_bytes: u64,
    /// MemAvailable.
    pub available_bytes: u64,
    /// total - available.
    pub used_bytes: u64,
    /// MemFree.
    pub free_bytes: u64,
    /// Buffers + Cached.
    pub cached_bytes: u64,
    /// SwapTotal.
    pub swap_total_bytes: u64,
    /// SwapTotal - SwapFree.
    pub swap_used_bytes: u64,
}

/// One PSI line.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PressureLine {
    /// avg10, percent.
    pub avg10_percent: f64,
    /// avg60, percent.
    pub avg60_percent: f64,
    /// avg300, percent.
    pub avg300_percent: f64,
    /// total stall, microseconds.
    pub total_micros: u64,
}

/// One PSI file.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Pressure {
    /// `some` line.
    pub some: Option<PressureLine>,
    /// `full` line.
    pub full: Option<PressureLine>,
}

/// PSI for cpu, memory and io (each `None` when its file was unreadable).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PressureSample {
    /// `/proc/pressure/cpu`.
    pub cpu: Option<Pressure>,
    /// `/proc/pressure/memory`.
    pub memory: Option<Pressure>,
    /// `/proc/pressure/io`.
    pub io: Option<Pressure>,
}

/// Counters of one interface.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetDevSample {
    /// Interface name.
    pub name: String,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Receive errors.
    pub rx_errors: u64,
    /// Receive drops.
    pub rx_dropped: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Send errors.
    pub tx_errors: u64,
    /// Send drops.
    pub tx_dropped: u64,
}

/// I/O counters of one block device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskSample {
    /// Kernel name.
    pub name: String,
    /// Reads completed.
    pub reads_completed: u64,
    /// Bytes read.
    pub read_bytes: u64,
    /// Time reading, ms.
    pub read_time_millis: u64,
    /// Writes completed.
    pub writes_completed: u64,
    /// Bytes written.
    pub written_bytes: u64,
    /// Time writing, ms.
    pub write_time_millis: u64,
    /// I/Os in flight.
    pub ios_in_progress: u64,
    /// Time busy, ms.
    pub io_time_millis: u64,
}

/// Usage of one filesystem.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FilesystemSample {
    /// Mount point.
    pub mount_point: String,
    /// Source device.
    pub device: String,
    /// Filesystem type.
    pub fs_type: String,
    /// Size.
    pub total_bytes: u64,
    /// Available to unprivileged users.
    pub available_bytes: u64,
    /// total - available.
    pub used_bytes: u64,
}

/// Something that takes one host sample (the real [`SystemCollector`], or a fake in tests).
pub trait Collect: Send + 'static {
    /// Takes a sample. Never fails as a whole: unreadable parts are listed in `errors`.
    fn collect(&mut self) -> HostSample;
}

/// The GPUs telemetry reports on (PCI bus ids from the inventory), shared with the daemon,
/// which updates it whenever the inventory is refreshed.
#[derive(Debug, Clone, Default)]
pub struct GpuList(Arc<Mutex<Vec<String>>>);

impl GpuList {
    /// Replaces the list.
    pub fn set(&self, pci_bus_ids: Vec<String>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = pci_bus_ids;
    }

    /// The current list.
    pub fn get(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Reads a host sample from `/proc` below a root, sysinfo and a GPU source.
pub struct SystemCollector {
    fs: FsRoot,
    gpus: GpuList,
    gpu_source: Arc<dyn GpuTelemetrySource>,
    previous_cpu: Option<CpuTimes>,
    disks: Option<sysinfo::Disks>,
    error_totals: [u64; COLLECTORS.len()],
}

/// The collectors of one sample, in collection order.
const COLLECTORS: [&str; 7] = [
    "cpu",
    "memory",
    "pressure",
    "network",
    "disks",
    "filesystems",
    "gpus",
];

impl std::fmt::Debug for SystemCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SystemCollector")
            .field("fs", &self.fs)
            .field("gpus", &self.gpus)
            .finish_non_exhaustive()
    }
}

impl SystemCollector {
    /// A collector reading below `fs`; filesystem usage is read only when `fs` is the live host.
    pub fn new(fs: FsRoot, gpus: GpuList, gpu_source: Arc<dyn GpuTelemetrySource>) -> Self {
        Self {
            fs,
            gpus,
            gpu_source,
            previous_cpu: None,
            disks: None,
            error_totals: [0; COLLECTORS.len()],
        }
    }

    fn cpu(&mut self, errors: &mut Vec<String>) -> (Option<CpuSample>, Vec<(u32, CpuTimes)>) {
        let parsed = self
            .fs
            .read_string("/proc/stat")
            .map_err(CollectError::from)
            .and_then(|text| {
                let total = procfs::parse_stat(&text)?;
                let per_cpu = procfs::parse_stat_per_cpu(&text)?;
                Ok((total, per_cpu))
            })
            .map_err(|e| errors.push(e.note("cpu")));
        let Ok(((times, logical_cpus), per_cpu)) = parsed else {
            return (None, Vec::new());
        };
        let shares = self
            .previous_cpu
            .replace(times)
            .and_then(|prev| procfs::cpu_shares(&prev, &times));
        let load = read_parsed(&self.fs, "/proc/loadavg", procfs::parse_loadavg)
            .map_err(|e| errors.push(e.note("load")))
            .ok();
        let cpu = CpuSample {
            times,
            utilization_percent: shares.map(|(busy, _)| busy),
            steal_percent: shares.map(|(_, steal)| steal),
            load,
            logical_cpus,
        };
        (Some(cpu), per_cpu)
    }

    fn pressure(&self, errors: &mut Vec<String>) -> Option<PressureSample> {
        if !self.fs.exists("/proc/pressure") {
            errors.push("pressure: /proc/pressure absent (kernel without PSI)".to_owned());
            return None;
        }
        let mut read = |file: &'static str| {
            read_parsed(&self.fs, file, |text| procfs::parse_pressure(text, file))
                .map_err(|e| errors.push(e.note("pressure")))
                .ok()
        };
        Some(PressureSample {
            cpu: read("/proc/pressure/cpu"),
            memory: read("/proc/pressure/memory"),
            io: read("/proc/pressure/io"),
        })
    }

    fn disks(&self, errors: &mut Vec<String>) -> Vec<DiskSample> {
        // Whole disks are the entries of /sys/block, minus loop, ram and zram devices.
        let whole = self.fs.list_dir("/sys/block").ok();
        let keep = |name: &str| {
            let virtual_dev = ["loop", "ram", "zram"].iter().any(|p| name.starts_with(p));
            !virtual_dev && whole.as_ref().is_none_or(|w| w.iter().any(|n| n == name))
        };
        read_parsed(&self.fs, "/proc/diskstats", |text| {
            procfs::parse_diskstats(text, keep)
        })
        .map_err(|e| errors.push(e.note("disks")))
        .unwrap_or_default()
    }

    fn filesystems(&mut self, errors: &mut Vec<String>) -> Vec<FilesystemSample> {
        if !self.fs.is_host() {
            return Vec::new();
        }
        let refresh = sysinfo::DiskRefreshKind::nothing().with_storage();
        let disks = match &mut self.disks {
            Some(disks) => disks,
            None => match sysinfo::Disks::new() {
                Ok(disks) => self.disks.insert(disks),
                Err(err) => {
                    errors.push(format!("filesystems: {err}"));
                    return Vec::new();
                }
            },
        };
        disks.refresh_specifics(true, refresh);
        disks
            .iter()
            .filter(|disk| disk.total_space() > 0)
            .map(|disk| FilesystemSample {
                mount_point: disk.mount_point().to_string_lossy().into_owned(),
                device: disk.name().to_string_lossy().into_owned(),
                fs_type: disk.file_system().to_string_lossy().into_owned(),
                total_bytes: disk.total_space(),
                available_bytes: disk.available_space(),
                used_bytes: disk.total_space().saturating_sub(disk.available_space()),
            })
            .collect()
    }
}

impl Collect for SystemCollector {
    fn collect(&mut self) -> HostSample {
        let start = Instant::now();
        let mut errors = Vec::new();
        let mut collectors = Vec::with_capacity(COLLECTORS.len());
        // Times one collector (since the previous one ended) and counts the samples in which
        // it failed.
        let mut mark = Instant::now();
        let mut account = |this: &mut Self, index: usize, failed: bool| {
            let now = Instant::now();
            if failed {
                this.error_totals[index] += 1;
            }
            collectors.push(CollectorStat {
                name: COLLECTORS[index],
                duration: now - mark,
                errors_total: this.error_totals[index],
            });
            mark = now;
        };
        let before = errors.len();
        let (cpu, per_cpu) = self.cpu(&mut errors);
        account(self, 0, errors.len() > before);
        let before = errors.len();
        let memory = read_parsed(&self.fs, "/proc/meminfo", procfs::parse_meminfo)
            .map_err(|e| errors.push(e.note("memory")))
            .ok();
        account(self, 1, errors.len() > before);
        let before = errors.len();
        let pressure = self.pressure(&mut errors);
        account(self, 2, errors.len() > before);
        let before = errors.len();
        let network = read_parsed(&self.fs, "/proc/net/dev", procfs::parse_net_dev)
            .map_err(|e| errors.push(e.note("network")))
            .unwrap_or_default();
        account(self, 3, errors.len() > before);
        let before = errors.len();
        let disks = self.disks(&mut errors);
        account(self, 4, errors.len() > before);
        let before = errors.len();
        let filesystems = self.filesystems(&mut errors);
        account(self, 5, errors.len() > before);
        let gpu_ids = self.gpus.get();
        let gpus = if gpu_ids.is_empty() {
            Vec::new()
        } else {
            gpu::sample_all(self.gpu_source.as_ref(), &gpu_ids)
        };
        let gpu_failed = gpus.iter().any(|g| g.status == gpu::GpuStatus::Unavailable);
        account(self, 6, gpu_failed);
        HostSample {
            sequence: 0,
            taken_at: Some(SystemTime::now()),
            cpu,
            per_cpu,
            memory,
            pressure,
            network,
            disks,
            filesystems,
            gpus,
            errors,
            collection: start.elapsed(),
            collectors,
        }
    }
}

/// A `/proc` file of the sample could not be read or was not understood; both name the file.
#[derive(Debug, thiserror::Error)]
enum CollectError {
    /// The file could not be read (the OS error is the `source()`).
    #[error(transparent)]
    Read(#[from] FsError),
    /// Its content was not understood.
    #[error(transparent)]
    Parse(#[from] procfs::ParseError),
}

impl CollectError {
    /// The line for [`HostSample::errors`]: `what: error: cause`.
    fn note(&self, what: &str) -> String {
        format!("{what}: {}", error_chain(self))
    }
}

/// Reads a file below `fs` and parses it; the error names the file.
fn read_parsed<T>(
    fs: &FsRoot,
    path: &str,
    parse: impl FnOnce(&str) -> Result<T, procfs::ParseError>,
) -> Result<T, CollectError> {
    let text = fs.read_string(path)?;
    Ok(parse(&text)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let write = |path: &str, text: &str| {
            let full = dir.path().join(path);
            std::fs::create_dir_all(full.parent().unwrap()).unwrap();
            std::fs::write(full, text).unwrap();
        };
        write(
            "proc/stat",
            "cpu  100 0 100 800 0 0 0 0 0 0\ncpu0 100 0 100 800 0 0 0 0 0 0\n",
        );
        write("proc/loadavg", "1.00 0.50 0.25 1/1 1\n");
        write("proc/meminfo", "MemTotal: 1000 kB\nMemAvailable: 250 kB\n");
        write(
            "proc/pressure/cpu",
            "some avg10=1.00 avg60=0.00 avg300=0.00 total=5\n",
        );
        write("proc/pressure/memory", "garbage\n");
        write(
            "proc/net/dev",
            "h\nh\n eth0: 1 2 3 4 0 0 0 0 5 6 7 8 0 0 0 0\n",
        );
        write(
            "proc/diskstats",
            " 8 0 sda 1 0 2 3 4 0 5 6 0 7 8\n 8 1 sda1 1 0 2 3 4 0 5 6 0 7 8\n 7 0 loop0 0 0 0 0 0 0 0 0 0 0 0\n",
        );
        std::fs::create_dir_all(dir.path().join("sys/block/sda")).unwrap();
        dir
    }

    #[test]
    fn collects_from_a_fixture_root_and_reports_broken_parts() {
        let dir = fixture();
        let gpus = GpuList::default();
        gpus.set(vec!["0000:01:00.0".into()]);
        let mut collector = SystemCollector::new(
            FsRoot::new(dir.path()),
            gpus,
            Arc::new(gpu::UnavailableGpuTelemetry::default()),
        );
        let first = collector.collect();
        let cpu = first.cpu.unwrap();
        assert_eq!(cpu.times.user_millis, 1000);
        assert_eq!(cpu.utilization_percent, None, "no previous reading yet");
        assert_eq!(cpu.load.unwrap().one, 1.0);
        assert_eq!(first.memory.unwrap().used_bytes, 750 * 1024);
        let pressure = first.pressure.unwrap();
        assert!(pressure.cpu.is_some());
        assert!(pressure.memory.is_none());
        assert_eq!(first.network[0].tx_errors, 7);
        assert_eq!(first.disks.len(), 1, "partitions and loop devices skipped");
        assert_eq!(first.disks[0].name, "sda");
        assert!(first.filesystems.is_empty(), "statfs only on the live host");
        assert_eq!(first.gpus.len(), 1);
        assert_eq!(first.gpus[0].status, gpu::GpuStatus::Unavailable);
        let errors = first.errors.join("\n");
        assert!(errors.contains("/proc/pressure/memory"), "{errors}");
        assert!(errors.contains("/proc/pressure/io"), "{errors}");
        assert_eq!(first.per_cpu.len(), 1);
        let stat = |name: &str| *first.collectors.iter().find(|c| c.name == name).unwrap();
        assert_eq!(first.collectors.len(), 7);
        assert_eq!(stat("pressure").errors_total, 1);
        assert_eq!(stat("cpu").errors_total, 0);
        assert_eq!(stat("gpus").errors_total, 1, "an unavailable GPU counts");

        std::fs::write(
            dir.path().join("proc/stat"),
            "cpu  150 0 150 900 0 0 0 0 0 0\n",
        )
        .unwrap();
        let second = collector.collect();
        let busy = second.cpu.unwrap().utilization_percent.unwrap();
        assert!((busy - 50.0).abs() < 1e-9, "{busy}");
    }

    #[test]
    fn empty_root_yields_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let mut collector = SystemCollector::new(
            FsRoot::new(dir.path()),
            GpuList::default(),
            Arc::new(gpu::UnavailableGpuTelemetry::default()),
        );
        let sample = collector.collect();
        assert!(sample.cpu.is_none() && sample.memory.is_none());
        assert!(sample.errors.len() >= 4, "{:?}", sample.errors);
        assert!(sample.errors[0].contains("/proc/stat"));
    }

    #[test]
    fn live_host_sample_has_the_basics() {
        let mut collector = SystemCollector::new(
            FsRoot::host(),
            GpuList::default(),
            Arc::new(gpu::UnavailableGpuTelemetry::default()),
        );
        collector.collect();
        let sample = collector.collect();
        assert!(sample.cpu.unwrap().logical_cpus >= 1);
        assert!(sample.memory.unwrap().total_bytes > 0);
        assert!(sample.network.iter().any(|n| n.name == "lo"));
        assert!(sample.filesystems.iter().any(|f| f.mount_point == "/"));
    }
}
