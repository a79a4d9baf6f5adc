//! `fog_job_*` families: each job's state, cgroup figures, GPU use and network traffic;
//! `fog_state_*`: the state filesystem's headroom the job runner keeps.

use std::fmt;

use super::{l1, Labels, Series, Snapshot, Writer};
use crate::net::NetCounters;

/// `fog_state_filesystem_*` and `fog_state_unsaved_job_records` (absent without a job runner).
pub(super) fn state_disk_families(w: &mut Writer<'_>, s: &Snapshot) -> fmt::Result {
    let Some(disk) = &s.state_disk else {
        return Ok(());
    };
    let one = |v: f64| {
        let mut series = Series::default();
        series.push(Vec::new(), v);
        series
    };
    let st = &disk.status;
    w.gauge(
        "fog_state_filesystem_free_bytes",
        "Free bytes on the state dir's filesystem.",
        one(st.free_bytes as f64),
    )?;
    w.gauge(
        "fog_state_filesystem_floor_bytes",
        "[state] min_free_bytes: below it new jobs and image imports are refused.",
        one(st.floor_bytes as f64),
    )?;
    w.gauge(
        "fog_state_filesystem_below_floor",
        "1 while the state filesystem's free space is below [state] min_free_bytes.",
        one(if st.below_floor() { 1.0 } else { 0.0 }),
    )?;
    w.gauge(
        "fog_state_slack_bytes",
        "Space the state database's slack file holds (0 once released for a full disk).",
        one(st.slack_bytes as f64),
    )?;
    w.gauge(
        "fog_state_unsaved_job_records",
        "Job record updates in memory that could not be committed yet (full disk).",
        one(disk.unsaved_records as f64),
    )
}

pub(super) fn job_families(w: &mut Writer<'_>, s: &Snapshot) -> fmt::Result {
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
    let mut network = NetworkSeries::default();
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
        if let Some(counters) = job.network {
            network.push(id(), counters);
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
    )?;
    network.write(w)
}

/// The four `fog_job_network_*` counters, one series per job with a network.
#[derive(Default)]
struct NetworkSeries {
    receive_bytes: Series,
    receive_packets: Series,
    transmit_bytes: Series,
    transmit_packets: Series,
}

impl NetworkSeries {
    fn push(&mut self, labels: Labels, counters: NetCounters) {
        self.receive_bytes
            .push(labels.clone(), counters.in_bytes as f64);
        self.receive_packets
            .push(labels.clone(), counters.in_packets as f64);
        self.transmit_bytes
            .push(labels.clone(), counters.out_bytes as f64);
        self.transmit_packets
            .push(labels, counters.out_packets as f64);
    }

    fn write(self, w: &mut Writer<'_>) -> fmt::Result {
        w.counter(
            "fog_job_network_receive_bytes",
            "Bytes the job received over its network.",
            self.receive_bytes,
        )?;
        w.counter(
            "fog_job_network_transmit_bytes",
            "Bytes the job sent over its network.",
            self.transmit_bytes,
        )?;
        w.counter(
            "fog_job_network_receive_packets",
            "Packets the job received over its network.",
            self.receive_packets,
        )?;
        w.counter(
            "fog_job_network_transmit_packets",
            "Packets the job sent over its network.",
            self.transmit_packets,
        )
    }
}
