//! One scrape's [`Snapshot`] as metric families (the names are documented in the README's
//! metrics table; keep the two in step).
//!
//! Rules: a figure that is not known is left out, never written as 0; a family with no series
//! is left out; counters are cumulative values read from the kernel or our own counters (the
//! encoder appends `_total`); ratios are 0 to 1.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

use super::Snapshot;
use crate::bench::BenchmarkState;
use crate::capacity::{GpuAssignment, ResourceAmount};
use crate::gpu::GpuStatus;
use crate::telemetry::{CpuTimes, HostSample, Pressure};

/// Labels of one series.
type Labels = Vec<(&'static str, String)>;

/// Series of one family.
#[derive(Default)]
struct Series(Vec<(Labels, f64)>);

impl Series {
    fn push(&mut self, labels: Labels, value: f64) {
        self.0.push((labels, value));
    }

    fn push_opt(&mut self, labels: Labels, value: Option<f64>) {
        if let Some(value) = value {
            self.0.push((labels, value));
        }
    }
}

/// Writes families; skips empty ones.
struct Writer<'a> {
    encoder: DescriptorEncoder<'a>,
}

impl Writer<'_> {
    fn family(&mut self, kind: MetricType, name: &str, help: &str, series: Series) -> fmt::Result {
        if series.0.is_empty() {
            return Ok(());
        }
        // The encoder ends the help text with a period itself.
        let help = help.strip_suffix('.').unwrap_or(help);
        let mut metric = self.encoder.encode_descriptor(name, help, None, kind)?;
        for (labels, value) in &series.0 {
            let mut family = metric.encode_family(labels)?;
            match kind {
                MetricType::Counter => {
                    family.encode_counter::<NoLabelSet, f64, f64>(value, None)?
                }
                _ => family.encode_gauge(value)?,
            }
        }
        Ok(())
    }

    /// A counter; `name` without `_total` (the encoder adds it).
    fn counter(&mut self, name: &str, help: &str, series: Series) -> fmt::Result {
        self.family(MetricType::Counter, name, help, series)
    }

    fn gauge(&mut self, name: &str, help: &str, series: Series) -> fmt::Result {
        self.family(MetricType::Gauge, name, help, series)
    }

    fn gauge1(&mut self, name: &str, help: &str, value: Option<f64>) -> fmt::Result {
        let mut series = Series::default();
        series.push_opt(Vec::new(), value);
        self.gauge(name, help, series)
    }

    fn counter1(&mut self, name: &str, help: &str, value: Option<f64>) -> fmt::Result {
        let mut series = Series::default();
        series.push_opt(Vec::new(), value);
        self.counter(name, help, series)
    }
}

fn epoch_seconds(at: SystemTime) -> f64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn l1(key: &'static str, value: impl Into<String>) -> Labels {
    vec![(key, value.into())]
}

/// The collector of one scrape.
#[derive(Debug)]
pub struct SnapshotCollector(pub Snapshot);

impl Collector for SnapshotCollector {
    fn encode(&self, encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let mut w = Writer { encoder };
        let s = &self.0;
        if let Some(host) = &s.host {
            host_families(&mut w, host)?;
            gpu_families(&mut w, host)?;
        }
        gpu_job_families(&mut w, s)?;
        job_families(&mut w, s)?;
        capacity_families(&mut w, s)?;
        benchmark_families(&mut w, s)?;
        attestation_families(&mut w, s)?;
        agent_families(&mut w, s)
    }
}

/// Reads one mode's time from [`CpuTimes`].
type CpuField = fn(&CpuTimes) -> u64;

const CPU_MODES: [(&str, CpuField); 8] = [
    ("user", |t| t.user_millis),
    ("nice", |t| t.nice_millis),
    ("system", |t| t.system_millis),
    ("idle", |t| t.idle_millis),
    ("iowait", |t| t.iowait_millis),
    ("irq", |t| t.irq_millis),
    ("softirq", |t| t.softirq_millis),
    ("steal", |t| t.steal_millis),
];

fn millis(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

fn host_families(w: &mut Writer<'_>, host: &HostSample) -> fmt::Result {
    let mut cpu = Series::default();
    let mut guest = Series::default();
    for (index, times) in &host.per_cpu {
        for (mode, get) in CPU_MODES {
            cpu.push(
                vec![("cpu", index.to_string()), ("mode", mode.into())],
                millis(get(times)),
            );
        }
        guest.push(
            vec![("cpu", index.to_string()), ("mode", "user".into())],
            millis(times.guest_millis),
        );
        guest.push(
            vec![("cpu", index.to_string()), ("mode", "nice".into())],
            millis(times.guest_nice_millis),
        );
    }
    w.counter(
        "node_cpu_seconds",
        "Seconds the CPUs spent in each mode (/proc/stat).",
        cpu,
    )?;
    w.counter(
        "node_cpu_guest_seconds",
        "Seconds the CPUs spent running guests (already counted in user and nice).",
        guest,
    )?;
    let load = host.cpu.and_then(|c| c.load);
    w.gauge1("node_load1", "1m load average.", load.map(|l| l.one))?;
    w.gauge1("node_load5", "5m load average.", load.map(|l| l.five))?;
    w.gauge1("node_load15", "15m load average.", load.map(|l| l.fifteen))?;

    if let Some(m) = host.memory {
        let bytes = |v: u64| Some(v as f64);
        w.gauge1(
            "node_memory_MemTotal_bytes",
            "Memory information field MemTotal_bytes.",
            bytes(m.total_bytes),
        )?;
        w.gauge1(
            "node_memory_MemAvailable_bytes",
            "Memory information field MemAvailable_bytes.",
            bytes(m.available_bytes),
        )?;
        w.gauge1(
            "node_memory_MemFree_bytes",
            "Memory information field MemFree_bytes.",
            bytes(m.free_bytes),
        )?;
        w.gauge1(
            "node_memory_SwapTotal_bytes",
            "Memory information field SwapTotal_bytes.",
            bytes(m.swap_total_bytes),
        )?;
        w.gauge1(
            "node_memory_SwapFree_bytes",
            "Memory information field SwapFree_bytes.",
            bytes(m.swap_total_bytes.saturating_sub(m.swap_used_bytes)),
        )?;
    }

    if let Some(p) = host.pressure {
        let total = |p: Option<Pressure>, full: bool| {
            p.and_then(|p| if full { p.full } else { p.some })
                .map(|line| line.total_micros as f64 / 1e6)
        };
        w.counter1(
            "node_pressure_cpu_waiting_seconds",
            "Total time in seconds that processes have waited for CPU time.",
            total(p.cpu, false),
        )?;
        w.counter1(
            "node_pressure_cpu_stalled_seconds",
            "Total time in seconds no process could make progress due to CPU congestion.",
            total(p.cpu, true),
        )?;
        w.counter1(
            "node_pressure_memory_waiting_seconds",
            "Total time in seconds that processes have waited for memory.",
            total(p.memory, false),
        )?;
        w.counter1(
            "node_pressure_memory_stalled_seconds",
            "Total time in seconds no process could make progress due to memory congestion.",
            total(p.memory, true),
        )?;
        w.counter1(
            "node_pressure_io_waiting_seconds",
            "Total time in seconds that processes have waited due to IO congestion.",
            total(p.io, false),
        )?;
        w.counter1(
            "node_pressure_io_stalled_seconds",
            "Total time in seconds no process could make progress due to IO congestion.",
            total(p.io, true),
        )?;
    }

    type NetField = fn(&crate::telemetry::NetDevSample) -> u64;
    let net: [(&str, &str, NetField); 8] = [
        ("node_network_receive_bytes", "Bytes received.", |n| {
            n.rx_bytes
        }),
        ("node_network_receive_packets", "Packets received.", |n| {
            n.rx_packets
        }),
        ("node_network_receive_errs", "Receive errors.", |n| {
            n.rx_errors
        }),
        (
            "node_network_receive_drop",
            "Received packets dropped.",
            |n| n.rx_dropped,
        ),
        ("node_network_transmit_bytes", "Bytes sent.", |n| n.tx_bytes),
        ("node_network_transmit_packets", "Packets sent.", |n| {
            n.tx_packets
        }),
        ("node_network_transmit_errs", "Transmit errors.", |n| {
            n.tx_errors
        }),
        ("node_network_transmit_drop", "Sent packets dropped.", |n| {
            n.tx_dropped
        }),
    ];
    for (name, help, get) in net {
        let mut series = Series::default();
        for dev in &host.network {
            series.push(l1("device", dev.name.clone()), get(dev) as f64);
        }
        w.counter(name, help, series)?;
    }

    type DiskField = fn(&crate::telemetry::DiskSample) -> f64;
    let disk_counters: [(&str, &str, DiskField); 7] = [
        ("node_disk_reads_completed", "Reads completed.", |d| {
            d.reads_completed as f64
        }),
        ("node_disk_read_bytes", "Bytes read.", |d| {
            d.read_bytes as f64
        }),
        (
            "node_disk_read_time_seconds",
            "Seconds spent reading.",
            |d| millis(d.read_time_millis),
        ),
        ("node_disk_writes_completed", "Writes completed.", |d| {
            d.writes_completed as f64
        }),
        ("node_disk_written_bytes", "Bytes written.", |d| {
            d.written_bytes as f64
        }),
        (
            "node_disk_write_time_seconds",
            "Seconds spent writing.",
            |d| millis(d.write_time_millis),
        ),
        (
            "node_disk_io_time_seconds",
            "Seconds spent doing I/Os.",
            |d| millis(d.io_time_millis),
        ),
    ];
    for (name, help, get) in disk_counters {
        let mut series = Series::default();
        for disk in &host.disks {
            series.push(l1("device", disk.name.clone()), get(disk));
        }
        w.counter(name, help, series)?;
    }
    let mut io_now = Series::default();
    for disk in &host.disks {
        io_now.push(l1("device", disk.name.clone()), disk.ios_in_progress as f64);
    }
    w.gauge("node_disk_io_now", "I/Os currently in progress.", io_now)?;

    let fs_labels = |f: &crate::telemetry::FilesystemSample| -> Labels {
        vec![
            ("device", f.device.clone()),
            ("fstype", f.fs_type.clone()),
            ("mountpoint", f.mount_point.clone()),
        ]
    };
    let mut size = Series::default();
    let mut avail = Series::default();
    for f in &host.filesystems {
        size.push(fs_labels(f), f.total_bytes as f64);
        avail.push(fs_labels(f), f.available_bytes as f64);
    }
    w.gauge(
        "node_filesystem_size_bytes",
        "Filesystem size in bytes.",
        size,
    )?;
    w.gauge(
        "node_filesystem_avail_bytes",
        "Filesystem space available to non-root users in bytes.",
        avail,
    )?;

    let mut duration = Series::default();
    let mut errors = Series::default();
    for c in &host.collectors {
        duration.push(l1("collector", c.name), c.duration.as_secs_f64());
        errors.push(l1("collector", c.name), c.errors_total as f64);
    }
    w.gauge(
        "fog_telemetry_collector_duration_seconds",
        "Time each telemetry collector took in the newest sample.",
        duration,
    )?;
    w.counter(
        "fog_telemetry_collector_errors",
        "Samples in which a telemetry collector failed (gpus: at least one GPU unavailable).",
        errors,
    )?;
    w.gauge1(
        "fog_telemetry_collection_duration_seconds",
        "Time the newest host sample took to collect.",
        Some(host.collection.as_secs_f64()),
    )?;
    w.gauge1(
        "fog_telemetry_last_sample_timestamp_seconds",
        "When the newest host sample was taken (seconds since the epoch).",
        host.taken_at.map(epoch_seconds),
    )
}

fn gpu_families(w: &mut Writer<'_>, host: &HostSample) -> fmt::Result {
    let mut up = Series::default();
    let mut util = Series::default();
    let mut mem_util = Series::default();
    let mut mem_used = Series::default();
    let mut mem_total = Series::default();
    let mut temp = Series::default();
    let mut power = Series::default();
    let mut power_limit = Series::default();
    let mut clock = Series::default();
    let mut throttle = Series::default();
    for gpu in &host.gpus {
        let id = || l1("pci_bus_id", gpu.pci_bus_id.clone());
        let ok = gpu.status == GpuStatus::Ok;
        up.push(id(), if ok { 1.0 } else { 0.0 });
        if !ok {
            // A failed query has no figures: nothing that could look like an idle GPU.
            continue;
        }
        util.push_opt(id(), gpu.utilization_percent.map(|p| f64::from(p) / 100.0));
        mem_util.push_opt(
            id(),
            gpu.memory_utilization_percent.map(|p| f64::from(p) / 100.0),
        );
        mem_used.push_opt(id(), gpu.memory_used_bytes.map(|b| b as f64));
        mem_total.push_opt(id(), gpu.memory_total_bytes.map(|b| b as f64));
        temp.push_opt(id(), gpu.temperature_celsius.map(f64::from));
        power.push_opt(id(), gpu.power_milliwatts.map(|mw| f64::from(mw) / 1000.0));
        power_limit.push_opt(
            id(),
            gpu.power_limit_milliwatts.map(|mw| f64::from(mw) / 1000.0),
        );
        for (kind, mhz) in [
            ("graphics", gpu.graphics_clock_mhz),
            ("memory", gpu.memory_clock_mhz),
            ("sm", gpu.sm_clock_mhz),
        ] {
            clock.push_opt(
                vec![
                    ("pci_bus_id", gpu.pci_bus_id.clone()),
                    ("clock", kind.into()),
                ],
                mhz.map(|m| f64::from(m) * 1e6),
            );
        }
        for reason in &gpu.throttle_reasons {
            throttle.push(
                vec![
                    ("pci_bus_id", gpu.pci_bus_id.clone()),
                    ("reason", reason.clone()),
                ],
                1.0,
            );
        }
    }
    w.gauge(
        "fog_gpu_up",
        "1 when the GPU's telemetry query answered, 0 when it failed (then no other fog_gpu_* series).",
        up,
    )?;
    w.gauge(
        "fog_gpu_utilization_ratio",
        "Compute engine busy, 0 to 1.",
        util,
    )?;
    w.gauge(
        "fog_gpu_memory_utilization_ratio",
        "Memory controller busy, 0 to 1.",
        mem_util,
    )?;
    w.gauge(
        "fog_gpu_memory_used_bytes",
        "Device memory in use.",
        mem_used,
    )?;
    w.gauge("fog_gpu_memory_total_bytes", "Device memory.", mem_total)?;
    w.gauge("fog_gpu_temperature_celsius", "Core temperature.", temp)?;
    w.gauge("fog_gpu_power_watts", "Power draw.", power)?;
    w.gauge("fog_gpu_power_limit_watts", "Power limit.", power_limit)?;
    w.gauge("fog_gpu_clock_hertz", "Clock frequencies.", clock)?;
    w.gauge(
        "fog_gpu_throttle_reason",
        "1 for each active throttle reason.",
        throttle,
    )
}

fn gpu_job_families(w: &mut Writer<'_>, s: &Snapshot) -> fmt::Result {
    let mut info = Series::default();
    for gpu in &s.capacity.capacity.gpus {
        if let GpuAssignment::Allocated(job) = &gpu.assignment {
            info.push(
                vec![
                    ("pci_bus_id", gpu.pci_bus_id.clone()),
                    ("job_id", job.clone()),
                ],
                1.0,
            );
        }
    }
    w.gauge(
        "fog_gpu_job_info",
        "1 for each GPU allocated to a job (join on pci_bus_id with fog_gpu_*).",
        info,
    )
}

fn job_families(w: &mut Writer<'_>, s: &Snapshot) -> fmt::Result {
    let mut info = Series::default();
    let mut cpu = Series::default();
    let mut throttled = Series::default();
    let mut mem = Series::default();
    let mut peak = Series::default();
    let mut limit = Series::default();
    let mut oom = Series::default();
    let mut pids = Series::default();
    let mut read = Series::default();
    let mut written = Series::default();
    let mut gpu_seconds = Series::default();
    let mut gpu_memory = Series::default();
    let mut gpu_sm = Series::default();
    let num = |v: Option<u64>| v.map(|v| v as f64);
    for job in &s.jobs {
        let id = || l1("job_id", job.job_id.clone());
        info.push(
            vec![("job_id", job.job_id.clone()), ("state", job.state.clone())],
            1.0,
        );
        cpu.push_opt(id(), job.cpu_seconds);
        throttled.push_opt(id(), job.cpu_throttled_seconds);
        mem.push_opt(id(), num(job.memory_bytes));
        peak.push_opt(id(), num(job.memory_peak_bytes));
        limit.push_opt(id(), num(job.memory_limit_bytes));
        oom.push_opt(id(), num(job.oom_kills));
        pids.push_opt(id(), num(job.pids));
        read.push_opt(id(), num(job.io_read_bytes));
        written.push_opt(id(), num(job.io_written_bytes));
        for (bus, seconds) in &job.gpu_seconds {
            gpu_seconds.push(
                vec![("job_id", job.job_id.clone()), ("pci_bus_id", bus.clone())],
                *seconds,
            );
        }
        for (bus, memory, sm) in &job.gpu_now {
            let labels = || vec![("job_id", job.job_id.clone()), ("pci_bus_id", bus.clone())];
            gpu_memory.push_opt(labels(), num(*memory));
            gpu_sm.push_opt(labels(), *sm);
        }
    }
    w.gauge("fog_job_info", "1 per job, with its state.", info)?;
    w.counter("fog_job_cpu_seconds", "CPU time used by the job.", cpu)?;
    w.counter(
        "fog_job_cpu_throttled_seconds",
        "Time the job was throttled by its CPU quota.",
        throttled,
    )?;
    w.gauge("fog_job_memory_bytes", "Memory the job uses.", mem)?;
    w.gauge("fog_job_memory_peak_bytes", "The job's peak memory.", peak)?;
    w.gauge(
        "fog_job_memory_limit_bytes",
        "The job's memory limit.",
        limit,
    )?;
    w.counter("fog_job_oom_kills", "OOM kills in the job.", oom)?;
    w.gauge("fog_job_pids", "Processes in the job.", pids)?;
    w.counter(
        "fog_job_io_read_bytes",
        "Bytes the job read from block devices.",
        read,
    )?;
    w.counter(
        "fog_job_io_written_bytes",
        "Bytes the job wrote to block devices.",
        written,
    )?;
    w.counter(
        "fog_job_gpu_seconds",
        "Time the job's processes held a context on the GPU (NVML process accounting).",
        gpu_seconds,
    )?;
    w.gauge(
        "fog_job_gpu_memory_used_bytes",
        "GPU memory the job's processes hold (NVML running compute processes).",
        gpu_memory,
    )?;
    w.gauge(
        "fog_job_gpu_sm_utilization_ratio",
        "Share of the GPU's SMs the job's processes kept busy since the previous sample.",
        gpu_sm,
    )
}

fn capacity_families(w: &mut Writer<'_>, s: &Snapshot) -> fmt::Result {
    let c = &s.capacity.capacity;
    let resource = |w: &mut Writer<'_>, name: &str, help: &str, a: ResourceAmount, scale: f64| {
        let mut series = Series::default();
        for (state, v) in [
            ("total", a.total),
            ("reserved", a.reserved),
            ("allocated", a.allocated),
            ("free", a.free),
        ] {
            series.push(l1("state", state), v as f64 * scale);
        }
        w.gauge(name, help, series)
    };
    resource(
        w,
        "fog_capacity_cpu_cores",
        "CPU offered to the market by state (total = reserved + allocated + free unless over-committed).",
        c.cpu_millicores,
        1e-3,
    )?;
    resource(
        w,
        "fog_capacity_memory_bytes",
        "Memory offered to the market by state.",
        c.memory_bytes,
        1.0,
    )?;
    resource(
        w,
        "fog_capacity_disk_bytes",
        "Disk space of the state dir's filesystem offered to the market by state.",
        c.disk_bytes,
        1.0,
    )?;
    let mut gpus = Series::default();
    for state in ["free", "reserved", "allocated"] {
        let count = c
            .gpus
            .iter()
            .filter(|g| {
                matches!(
                    (&g.assignment, state),
                    (GpuAssignment::Free, "free")
                        | (GpuAssignment::Reserved, "reserved")
                        | (GpuAssignment::Allocated(_), "allocated")
                )
            })
            .count();
        gpus.push(l1("state", state), count as f64);
    }
    w.gauge("fog_capacity_gpus", "GPUs by state.", gpus)?;
    w.gauge1(
        "fog_capacity_sequence",
        "Sequence number of the current capacity state (+1 per change).",
        Some(s.capacity.sequence as f64),
    )
}

fn benchmark_families(w: &mut Writer<'_>, s: &Snapshot) -> fmt::Result {
    let Some(Ok(report)) = s.benchmarks.as_deref() else {
        return Ok(());
    };
    let mut state = Series::default();
    for (name, value) in [
        ("pending", BenchmarkState::Pending),
        ("running", BenchmarkState::Running),
        ("done", BenchmarkState::Done),
        ("failed", BenchmarkState::Failed),
    ] {
        state.push(
            l1("state", name),
            if report.state == value { 1.0 } else { 0.0 },
        );
    }
    w.gauge(
        "fog_benchmark_state",
        "1 for the benchmark runner's current state.",
        state,
    )?;
    let mut result = Series::default();
    let mut spread = Series::default();
    for r in &report.results {
        let labels = || {
            vec![
                ("id", r.benchmark_id.clone()),
                ("device", r.device.clone()),
                ("metric", r.metric.clone()),
                ("unit", r.unit.clone()),
            ]
        };
        result.push(labels(), r.value);
        spread.push(labels(), r.relative_spread);
    }
    w.gauge(
        "fog_benchmark_result",
        "Median of the cached benchmark result for this hardware fingerprint, in `unit`.",
        result,
    )?;
    w.gauge(
        "fog_benchmark_relative_spread",
        "Coefficient of variation of the cached benchmark result.",
        spread,
    )
}

fn attestation_families(w: &mut Writer<'_>, s: &Snapshot) -> fmt::Result {
    let mut requests = Series::default();
    let mut success = Series::default();
    let mut failure = Series::default();
    for (op, counts) in &s.attestation {
        for (result, n) in [
            ("ok", counts.ok),
            ("invalid_argument", counts.invalid),
            ("error", counts.failed),
        ] {
            requests.push(
                vec![("operation", op.as_str().into()), ("result", result.into())],
                n as f64,
            );
        }
        success.push_opt(
            l1("operation", op.as_str()),
            counts.last_success.map(epoch_seconds),
        );
        failure.push_opt(
            l1("operation", op.as_str()),
            counts.last_failure.map(epoch_seconds),
        );
    }
    w.counter(
        "fog_attestation_requests",
        "TPM operations (quote, enrollment, activation) by result since start.",
        requests,
    )?;
    w.gauge(
        "fog_attestation_last_success_timestamp_seconds",
        "When the operation last succeeded.",
        success,
    )?;
    w.gauge(
        "fog_attestation_last_failure_timestamp_seconds",
        "When the operation last failed (TPM unavailable or error).",
        failure,
    )
}

fn agent_families(w: &mut Writer<'_>, s: &Snapshot) -> fmt::Result {
    let mut info = Series::default();
    info.push(l1("version", env!("CARGO_PKG_VERSION")), 1.0);
    w.gauge("fog_agent_build_info", "1, with the agent's version.", info)?;
    w.gauge1(
        "fog_telemetry_subscribers",
        "Telemetry subscribers now (WatchHostTelemetry streams, plus the metrics endpoint's own).",
        Some(s.hub.subscribers as f64),
    )?;
    w.counter1(
        "fog_telemetry_samples",
        "Host samples the telemetry sampler took since start.",
        Some(s.hub.samples as f64),
    )?;
    w.counter1(
        "fog_telemetry_dropped_samples",
        "Samples dropped from full subscriber queues since start (slow readers).",
        Some(s.hub.dropped as f64),
    )?;
    if let Some(p) = s.process {
        w.counter1(
            "process_cpu_seconds",
            "User and system CPU time of the agent process.",
            Some(p.cpu_seconds),
        )?;
        w.gauge1(
            "process_resident_memory_bytes",
            "Resident memory of the agent process.",
            Some(p.resident_bytes as f64),
        )?;
        w.gauge1(
            "process_virtual_memory_bytes",
            "Virtual memory of the agent process.",
            Some(p.virtual_bytes as f64),
        )?;
        w.gauge1(
            "process_threads",
            "Threads of the agent process.",
            Some(p.threads as f64),
        )?;
        w.gauge1(
            "process_open_fds",
            "Open file descriptors of the agent process.",
            p.open_fds.map(|n| n as f64),
        )?;
        w.gauge1(
            "process_max_fds",
            "Open file descriptor limit of the agent process.",
            p.max_fds.map(|n| n as f64),
        )?;
    }
    w.gauge1(
        "process_start_time_seconds",
        "When the agent process started (seconds since the epoch).",
        s.process_start,
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::attest::{Operation, OperationCounts};
    use crate::bench::{BenchmarkError, BenchmarkReport, BenchmarkResult};
    use crate::capacity::{Allocations, CapacityLedger, GpuTotal, Totals};
    use crate::config::CapacityConfig;
    use crate::gpu::GpuSample;
    use crate::jobs::JobMetrics;
    use crate::metrics::{render, Format};
    use crate::telemetry::{CollectorStat, CpuSample, HubStats, LoadAverage, MemorySample};

    fn snapshot() -> Snapshot {
        let times = CpuTimes {
            user_millis: 1500,
            idle_millis: 9000,
            ..CpuTimes::default()
        };
        let mut ok_gpu = GpuSample::unavailable("0000:01:00.0", "");
        ok_gpu.status = GpuStatus::Ok;
        ok_gpu.error = None;
        ok_gpu.utilization_percent = Some(0);
        ok_gpu.power_milliwatts = Some(70_500);
        let host = HostSample {
            sequence: 3,
            cpu: Some(CpuSample {
                times,
                load: Some(LoadAverage {
                    one: 0.5,
                    five: 0.25,
                    fifteen: 0.125,
                }),
                logical_cpus: 2,
                ..CpuSample::default()
            }),
            per_cpu: vec![(0, times), (1, times)],
            memory: Some(MemorySample {
                total_bytes: 1 << 30,
                available_bytes: 1 << 29,
                ..MemorySample::default()
            }),
            gpus: vec![
                ok_gpu,
                GpuSample::unavailable("0000:02:00.0", "GPU is lost"),
            ],
            collectors: vec![CollectorStat {
                name: "cpu",
                duration: Duration::from_micros(250),
                errors_total: 2,
            }],
            ..HostSample::default()
        };
        let ledger = CapacityLedger::new(
            CapacityConfig::default(),
            Totals {
                cpu_millicores: Some(2000),
                memory_bytes: Some(1000),
                disk_bytes: Some(1000),
                gpus: vec![
                    GpuTotal {
                        pci_bus_id: "0000:01:00.0".into(),
                        name: "A".into(),
                        memory_total_bytes: 0,
                    },
                    GpuTotal {
                        pci_bus_id: "0000:02:00.0".into(),
                        name: "B".into(),
                        memory_total_bytes: 0,
                    },
                ],
                notes: Vec::new(),
            },
        );
        ledger.set_allocations(Allocations {
            gpus: BTreeMap::from([("0000:01:00.0".into(), "job-7".into())]),
            ..Allocations::default()
        });
        Snapshot {
            host: Some(Arc::new(host)),
            hub: HubStats {
                subscribers: 2,
                samples: 3,
                dropped: 4,
            },
            capacity: ledger.current(),
            benchmarks: Some(Arc::new(Ok(BenchmarkReport {
                state: BenchmarkState::Done,
                error: None,
                fingerprint: "f".into(),
                measured_at: None,
                results: vec![BenchmarkResult {
                    benchmark_id: "cpu.fma.f32".into(),
                    device: "cpu".into(),
                    metric: "gflops".into(),
                    value: 123.5,
                    unit: "GFLOP/s".into(),
                    samples: 5,
                    relative_spread: 0.01,
                    duration_millis: 1,
                    detail_json: Vec::new(),
                }],
            }))),
            attestation: BTreeMap::from([(
                Operation::Quote,
                OperationCounts {
                    ok: 1,
                    failed: 2,
                    last_failure: Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
                    ..OperationCounts::default()
                },
            )]),
            jobs: vec![JobMetrics {
                job_id: "job-7".into(),
                state: "running".into(),
                cpu_seconds: Some(12.5),
                gpu_seconds: vec![("0000:01:00.0".into(), 30.25)],
                gpu_now: vec![("0000:01:00.0".into(), Some(1 << 30), Some(0.4))],
                ..JobMetrics::default()
            }],
            process: None,
            process_start: None,
        }
    }

    fn lines(text: &str) -> Vec<&str> {
        text.lines().collect()
    }

    #[test]
    fn prometheus_text_has_node_exporter_names_and_values() {
        let text = render(snapshot(), Format::PrometheusText).unwrap();
        let l = lines(&text);
        for want in [
            "# TYPE node_cpu_seconds_total counter",
            "node_cpu_seconds_total{cpu=\"1\",mode=\"user\"} 1.5",
            "node_cpu_seconds_total{cpu=\"0\",mode=\"idle\"} 9.0",
            "node_load1 0.5",
            "node_memory_MemTotal_bytes 1073741824.0",
            "fog_telemetry_collector_errors_total{collector=\"cpu\"} 2.0",
            "fog_gpu_up{pci_bus_id=\"0000:01:00.0\"} 1.0",
            "fog_gpu_up{pci_bus_id=\"0000:02:00.0\"} 0.0",
            "fog_gpu_utilization_ratio{pci_bus_id=\"0000:01:00.0\"} 0.0",
            "fog_gpu_power_watts{pci_bus_id=\"0000:01:00.0\"} 70.5",
            "fog_gpu_job_info{pci_bus_id=\"0000:01:00.0\",job_id=\"job-7\"} 1.0",
            "fog_job_cpu_seconds_total{job_id=\"job-7\"} 12.5",
            "fog_job_gpu_seconds_total{job_id=\"job-7\",pci_bus_id=\"0000:01:00.0\"} 30.25",
            "fog_job_gpu_memory_used_bytes{job_id=\"job-7\",pci_bus_id=\"0000:01:00.0\"} 1073741824.0",
            "fog_job_gpu_sm_utilization_ratio{job_id=\"job-7\",pci_bus_id=\"0000:01:00.0\"} 0.4",
            "fog_capacity_gpus{state=\"allocated\"} 1.0",
            "fog_capacity_cpu_cores{state=\"total\"} 2.0",
            "fog_benchmark_result{id=\"cpu.fma.f32\",device=\"cpu\",metric=\"gflops\",unit=\"GFLOP/s\"} 123.5",
            "fog_benchmark_state{state=\"done\"} 1.0",
            "fog_attestation_requests_total{operation=\"quote\",result=\"error\"} 2.0",
            "fog_attestation_last_failure_timestamp_seconds{operation=\"quote\"} 1700000000.0",
            "fog_telemetry_dropped_samples_total 4.0",
        ] {
            assert!(l.contains(&want), "missing {want:?} in\n{text}");
        }
        // The failed GPU has no figure at all, so it cannot look idle.
        assert!(!text
            .lines()
            .any(|l| l.contains("0000:02:00.0") && !l.starts_with("fog_gpu_up")));
        assert!(!text.contains("# EOF"));
        // No quote ever succeeded: no made-up success time.
        assert!(!text.contains("fog_attestation_last_success_timestamp_seconds{"));
    }

    #[test]
    fn openmetrics_ends_with_eof_and_suffixes_counters() {
        let text = render(snapshot(), Format::OpenMetrics).unwrap();
        assert!(text.ends_with("# EOF\n"));
        assert!(text.contains("# TYPE node_cpu_seconds counter\n"));
        assert!(text.contains("node_cpu_seconds_total{cpu=\"0\",mode=\"user\"} 1.5\n"));
    }

    #[test]
    fn missing_parts_are_left_out_not_zero() {
        let mut s = snapshot();
        s.host = None;
        s.benchmarks = Some(Arc::new(Err(BenchmarkError::Failed("no".into()))));
        s.jobs.clear();
        let text = render(s, Format::PrometheusText).unwrap();
        assert!(!text.contains("node_"));
        assert!(!text.contains("fog_benchmark"));
        assert!(!text.contains("fog_job_cpu"));
        assert!(text.contains("fog_capacity_memory_bytes{state=\"free\"}"));
    }
}
