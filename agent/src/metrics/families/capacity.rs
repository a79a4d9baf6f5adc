//! What the host offers the market: `fog_capacity_*` by state and the cached
//! `fog_benchmark_*` results for this hardware.

use std::fmt;

use super::{l1, Series, Snapshot, Writer};
use crate::bench::BenchmarkState;
use crate::capacity::{GpuAssignment, ResourceAmount};

pub(super) fn capacity_families(w: &mut Writer<'_>, s: &Snapshot) -> fmt::Result {
    let c = &s.capacity.capacity;
    let resource = |w: &mut Writer<'_>, name: &str, help: &str, a: ResourceAmount, scale: f64| {
        let mut series = Series::default();
        for (state, v) in [
            ("total", a.total),
            ("reserved", a.reserved),
            ("allocated", a.allocated),
            ("free", a.free),
            ("stored", a.stored),
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
    // Bytes, Prometheus' base unit, where the API counts bits.
    resource(
        w,
        "fog_capacity_network_ingress_bytes_per_second",
        "Network rate into jobs offered to the market by state (allocated: jobs' ingress limits).",
        c.network_ingress_bits_per_second,
        1.0 / 8.0,
    )?;
    resource(
        w,
        "fog_capacity_network_egress_bytes_per_second",
        "Network rate out of jobs offered to the market by state (allocated: jobs' egress limits).",
        c.network_egress_bits_per_second,
        1.0 / 8.0,
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

pub(super) fn benchmark_families(w: &mut Writer<'_>, s: &Snapshot) -> fmt::Result {
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
