//! `fog_gpu_*` families from GPU telemetry (a failed query is `fog_gpu_up 0` and nothing
//! else) and `fog_gpu_job_info`, which GPU is allocated to which job.

use std::fmt;

use super::{l1, Series, Snapshot, Writer};
use crate::capacity::GpuAssignment;
use crate::gpu::GpuStatus;
use crate::telemetry::HostSample;

pub(super) fn gpu_families(w: &mut Writer<'_>, host: &HostSample) -> fmt::Result {
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

pub(super) fn gpu_job_families(w: &mut Writer<'_>, s: &Snapshot) -> fmt::Result {
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
