//! GPU-seconds of a job: how long its processes held a context on each of its GPUs.
//!
//! The figure comes from NVML's per-process accounting ([`GpuAccounting`], implemented by
//! [`crate::telemetry::nvml::NvmlTelemetry`]): for every process NVML has a record of (running or
//! ended), its start time and, once it ended, how long its context was active. A job's
//! GPU-seconds on a device are the length of the *union* of its processes' spans, so two
//! processes sharing one card for the same minute count one minute, not two.
//!
//! Which processes are the job's: the pids seen in the job's cgroup at each telemetry tick (the
//! manager keeps every pid it has seen). NVML keys its records by pid only, so a span that began
//! before the job started is never counted (a reused pid of an older process). A GPU process
//! that starts and ends between two ticks is not seen; CUDA work is long-lived in practice, and
//! the tick is 1 s by default.

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
    fn contained_and_touching_spans() {
        let spans = [
            span(1, 0, Some(100)),
            span(2, 10, Some(20)),
            span(3, 100, Some(50)),
        ];
        assert_eq!(held_millis(&spans, 0, 1_000_000_000), 150_000);
    }
}
