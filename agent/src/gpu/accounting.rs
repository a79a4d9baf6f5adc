//! GPU-seconds of a job: how long its processes held a context on each of its GPUs.
//!
//! The figure comes from NVML's per-process accounting ([`GpuAccounting`], implemented by
//! [`crate::gpu::NvmlTelemetry`]): for every process NVML has a record of (running or
//! ended), its start time and, once it ended, how long its context was active. A job's
//! GPU-seconds on a device are the length of the *union* of its processes' spans, so two
//! processes sharing one card for the same minute count one minute, not two.
//!
//! Which processes are the job's: the pids seen in the job's cgroup at each telemetry tick (the
//! manager keeps every pid it has seen). NVML keys its records by pid only, so a span that began
//! before the job started is never counted (a reused pid of an older process). A GPU process
//! that starts and ends between two ticks is not seen; CUDA work is long-lived in practice, and
//! the tick is 1 s by default.
//!
//! The same seam gives each telemetry sample what the job uses of its GPUs at that moment
//! ([`GpuProcessUse`]): the memory its processes' contexts hold (NVML's running compute
//! processes) and their SM utilization since the previous tick (NVML's per-process utilization
//! samples), for the pids in the job's cgroup at that tick.

use std::collections::BTreeSet;

/// Per-process GPU accounting (NVML's accounting mode in production).
pub trait GpuAccounting: Send + Sync + std::fmt::Debug {
    /// Makes the device keep per-process accounting records from now on (NVML's accounting mode
    /// is off after a driver load and records nothing until it is enabled). Called before a job
    /// that holds the device starts.
    fn prepare(&self, pci_bus_id: &str) -> Result<(), String>;

    /// The spans of `pids` on `pci_bus_id` that NVML has records of.
    fn process_spans(
        &self,
        pci_bus_id: &str,
        pids: &BTreeSet<u32>,
    ) -> Result<Vec<ProcessSpan>, String>;

    /// What `pids` use of `pci_bus_id` now: the memory their compute contexts hold, and their
    /// SM utilization in the samples the driver took since `since_unix_micros`.
    fn process_use(
        &self,
        pci_bus_id: &str,
        pids: &BTreeSet<u32>,
        since_unix_micros: u64,
    ) -> Result<GpuProcessUse, String>;
}

/// What a job's processes use of one GPU, at one telemetry tick.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GpuProcessUse {
    /// Bytes of GPU memory their compute contexts hold; `None` when the driver does not say
    /// for one of them (it cannot under some virtualization and MIG setups).
    pub memory_used_bytes: Option<u64>,
    /// Percent of the GPU's streaming multiprocessors they kept busy since the previous tick
    /// ([`sm_utilization`]); `None` when the device keeps no per-process samples.
    pub sm_utilization_percent: Option<u32>,
}

/// The SM utilization of `pids` from per-process samples `(pid, sm percent)`: each process's
/// mean over its samples, summed over the processes (they share the GPU's time), at most 100.
/// No samples is 0: the driver takes none of a process that ran no kernel.
pub fn sm_utilization(samples: impl IntoIterator<Item = (u32, u32)>, pids: &BTreeSet<u32>) -> u32 {
    let mut per_pid: std::collections::BTreeMap<u32, (u64, u64)> = Default::default();
    for (pid, sm) in samples {
        if pids.contains(&pid) {
            let (sum, n) = per_pid.entry(pid).or_default();
            *sum += u64::from(sm.min(100));
            *n += 1;
        }
    }
    let total: u64 = per_pid.values().map(|(sum, n)| sum / n).sum();
    u32::try_from(total.min(100)).unwrap_or(100)
}

/// One process's time on a GPU, as NVML's accounting records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessSpan {
    /// Host pid.
    pub pid: u32,
    /// When the process started, Unix µs.
    pub start_unix_micros: u64,
    /// How long its context was active, once it ended; `None` while it runs.
    pub ended_after_millis: Option<u64>,
}

/// Milliseconds during which at least one span was active, counting only time at or after
/// `since_unix_micros` (the job's start) and up to `now_unix_micros` (for running processes).
pub fn held_millis(spans: &[ProcessSpan], since_unix_micros: u64, now_unix_micros: u64) -> u64 {
    let mut intervals: Vec<(u64, u64)> = spans
        .iter()
        .filter(|s| s.start_unix_micros >= since_unix_micros)
        .map(|s| {
            let end = match s.ended_after_millis {
                Some(ms) => s.start_unix_micros.saturating_add(ms.saturating_mul(1000)),
                None => now_unix_micros,
            };
            (s.start_unix_micros, end.max(s.start_unix_micros))
        })
        .collect();
    intervals.sort_unstable();
    let mut total_micros = 0u64;
    let mut current: Option<(u64, u64)> = None;
    for (start, end) in intervals {
        current = match current {
            Some((s, e)) if start <= e => Some((s, e.max(end))),
            Some((s, e)) => {
                total_micros += e - s;
                Some((start, end))
            }
            None => Some((start, end)),
        };
    }
    if let Some((s, e)) = current {
        total_micros += e - s;
    }
    total_micros / 1000
}

/// No GPU accounting available (tests; an agent built without NVML).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoGpuAccounting;

const NO_ACCOUNTING: &str = "per-process GPU accounting (NVML) is not available in this agent";

impl GpuAccounting for NoGpuAccounting {
    fn prepare(&self, _pci_bus_id: &str) -> Result<(), String> {
        Err(NO_ACCOUNTING.to_owned())
    }

    fn process_spans(
        &self,
        _pci_bus_id: &str,
        _pids: &BTreeSet<u32>,
    ) -> Result<Vec<ProcessSpan>, String> {
        Err(NO_ACCOUNTING.to_owned())
    }

    fn process_use(
        &self,
        _pci_bus_id: &str,
        _pids: &BTreeSet<u32>,
        _since_unix_micros: u64,
    ) -> Result<GpuProcessUse, String> {
        Err(NO_ACCOUNTING.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(pid: u32, start_s: u64, ended_after_s: Option<u64>) -> ProcessSpan {
        ProcessSpan {
            pid,
            start_unix_micros: start_s * 1_000_000,
            ended_after_millis: ended_after_s.map(|s| s * 1000),
        }
    }

    #[test]
    fn overlapping_spans_count_once_and_gaps_not_at_all() {
        // 100-160 and 130-190 overlap (90 s together); 300-310 is apart (10 s).
        let spans = [
            span(1, 100, Some(60)),
            span(2, 130, Some(60)),
            span(3, 300, Some(10)),
        ];
        assert_eq!(held_millis(&spans, 0, 1_000 * 1_000_000), 100_000);
    }

    #[test]
    fn a_running_process_counts_up_to_now() {
        let spans = [span(1, 100, None), span(2, 110, Some(5))];
        assert_eq!(held_millis(&spans, 0, 150 * 1_000_000), 50_000);
    }

    #[test]
    fn spans_from_before_the_job_started_are_not_the_jobs() {
        // pid 7 ran before the job (a reused pid); only pid 8 counts.
        let spans = [span(7, 50, Some(100)), span(8, 200, Some(30))];
        assert_eq!(
            held_millis(&spans, 200 * 1_000_000, 10_000 * 1_000_000),
            30_000
        );
    }

    #[test]
    fn nothing_is_zero_and_a_clock_step_back_is_not_negative() {
        assert_eq!(held_millis(&[], 0, 5), 0);
        // The host clock is behind a running process's start: 0, not a wrap-around.
        assert_eq!(held_millis(&[span(1, 100, None)], 0, 10), 0);
    }

    #[test]
    fn utilization_is_each_processs_mean_summed_and_capped() {
        let pids: BTreeSet<u32> = [1, 2, 3].into();
        // pid 1: 40 and 60 -> 50; pid 2: 30; pid 9 is not the job's.
        let samples = [(1, 40), (1, 60), (2, 30), (9, 100)];
        assert_eq!(sm_utilization(samples, &pids), 80);
        assert_eq!(sm_utilization([(1, 90), (2, 90)], &pids), 100);
        assert_eq!(sm_utilization([], &pids), 0);
        assert_eq!(
            sm_utilization([(1, 250)], &pids),
            100,
            "a bad sample is capped"
        );
    }

    #[test]
    fn contained_and_touching_spans() {
        let spans = [
            span(1, 0, Some(100)),
            span(2, 10, Some(20)),
            span(3, 100, Some(50)),
        ];
        assert_eq!(held_millis(&spans, 0, 1_000_000_000), 150_000);
    }
}
