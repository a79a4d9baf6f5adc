//! node_exporter's host families (`node_cpu_seconds_total`, `node_memory_*`, pressure,
//! network, disks, filesystems) and the telemetry collectors' own timing and errors, from one
//! [`HostSample`].

use std::fmt;

use super::{epoch_seconds, l1, Labels, Series, Writer};
use crate::telemetry::{CpuTimes, HostSample, Pressure};

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

pub(super) fn host_families(w: &mut Writer<'_>, host: &HostSample) -> fmt::Result {
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
