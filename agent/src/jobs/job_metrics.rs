//! The job runner's figures for the Prometheus endpoint: one [`JobMetrics`] per job, from the
//! runner's newest cgroup sample and the job's usage counters, and the state filesystem's
//! headroom ([`StateDiskMetrics`]).

use crate::net::NetCounters;

/// One job's newest figures, as the job runner sampled them from its cgroup. `None` = not
/// known (the series is left out, never reported as 0).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobMetrics {
    /// The job id.
    pub job_id: String,
    /// Its state (`running`, `exited`, ...).
    pub state: String,
    /// CPU time used.
    pub cpu_seconds: Option<f64>,
    /// Time throttled by its CPU quota.
    pub cpu_throttled_seconds: Option<f64>,
    /// Memory in use.
    pub memory_bytes: Option<u64>,
    /// Peak memory.
    pub memory_peak_bytes: Option<u64>,
    /// Memory limit.
    pub memory_limit_bytes: Option<u64>,
    /// OOM kills.
    pub oom_kills: Option<u64>,
    /// Processes now.
    pub pids: Option<u64>,
    /// Bytes read from block devices.
    pub io_read_bytes: Option<u64>,
    /// Bytes written to block devices.
    pub io_written_bytes: Option<u64>,
    /// GPU-seconds per allocated GPU (PCI bus id) from NVML process accounting; a GPU whose
    /// accounting cannot be read is left out.
    pub gpu_seconds: Vec<(String, f64)>,
    /// Per allocated GPU (PCI bus id) in the newest sample: GPU memory the job's processes
    /// hold, and their SM utilization (0 to 1); a figure the driver did not give is absent.
    pub gpu_now: Vec<(String, Option<u64>, Option<f64>)>,
    /// Bytes and packets the job received and sent so far (its usage counters, which never
    /// decrease); `None` for a job without a network.
    pub network: Option<NetCounters>,
}

/// Where per-job figures come from: [`super::JobManager`] implements it for `/metrics`.
pub trait JobMetricsSource: Send + Sync + 'static {
    /// The newest figures of every job the runner tracks. Must return at once: the runner's
    /// latest sample, never a cgroup read per call (a scrape must not trigger collection).
    fn job_metrics(&self) -> Vec<JobMetrics>;

    /// The state filesystem's headroom (one `statvfs`, no walk), or `None` when it cannot be
    /// read.
    fn state_disk(&self) -> Option<StateDiskMetrics> {
        None
    }
}

/// The state filesystem as `/metrics` shows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateDiskMetrics {
    /// Free bytes, floor and slack now.
    pub status: crate::state::headroom::DiskStatus,
    /// Job record updates published but not committed yet.
    pub unsaved_records: usize,
}
