//! The job model: where a job is ([`JobState`]), why it ended ([`Termination`]), its durable
//! record ([`JobRecord`]), its usage counters ([`Usage`]), telemetry samples ([`Sample`]) and
//! what callers and watchers see ([`JobView`], [`JobEvent`]). Plain data, no I/O.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::shim;
use super::spec::JobSpec;
use crate::cgroup::CgroupStats;
use crate::gpu::accounting::GpuProcessUse;
use crate::net::{Attachment, NetCounters};

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Reserved and recorded; the container is being created.
    #[default]
    Creating,
    /// Running.
    Running,
    /// A stop was asked for.
    Stopping,
    /// Exited 0 on its own.
    Succeeded,
    /// Ended otherwise.
    Failed,
    /// Ended after a stop.
    Stopped,
}

impl JobState {
    /// Not ended yet (holds its reservation).
    pub fn is_active(self) -> bool {
        matches!(self, Self::Creating | Self::Running | Self::Stopping)
    }

    /// The name stored in the `jobs.state` column.
    pub fn name(self) -> &'static str {
        match self {
            Self::Creating => "creating",
            Self::Running => "running",
            Self::Stopping => "stopping",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Stopped => "stopped",
        }
    }
}

/// Why a job ended (or why it is being stopped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Termination {
    /// Exited on its own.
    Exited,
    /// OOM-killed.
    OomKilled,
    /// StopJob.
    StopRequested,
    /// Time limit.
    TimeLimit,
    /// Scratch limit.
    ScratchLimit,
    /// Never started.
    StartFailed,
    /// The supervisor died without a status.
    Lost,
}

/// The durable part of a job besides its spec (`jobs.record_json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct JobRecord {
    /// State.
    pub state: JobState,
    /// Unix ms.
    pub created_at_millis: u64,
    /// Unix ms.
    pub started_at_millis: Option<u64>,
    /// Unix ms.
    pub finished_at_millis: Option<u64>,
    /// Why it ended.
    pub termination: Option<Termination>,
    /// Exit code (128 + signal when killed).
    pub exit_code: Option<i32>,
    /// Explanation of the last transition.
    pub message: String,
    /// GPUs by PCI bus id.
    pub gpus: Vec<String>,
    /// `linux.cgroupsPath`.
    pub cgroups_path: String,
    /// Why a stop was asked for, once it was.
    pub stop_cause: Option<Termination>,
    /// The effective time limit.
    pub time_limit_millis: u64,
    /// Output dropped past the log cap.
    pub log_dropped_bytes: u64,
    /// The manifest digest of the image it runs (empty in records written before images
    /// could be removed: then the job's bundle says).
    pub image_digest: String,
    /// Its network (namespace, addresses, host veth, published ports), once attached; absent
    /// with `[jobs] network = "none"`.
    pub network: Option<Attachment>,
    /// What the agent chose for it that its owner should know (how each GPU is given: CDI
    /// device or device-node mode; see [`super::gpus`]).
    pub notes: Vec<String>,
}

/// Usage counters (monotonic).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// Running time.
    pub duration_millis: u64,
    /// CPU time.
    pub cpu_nanos: u64,
    /// Memory in use x time, MiB x ms.
    pub memory_mib_millis: u64,
    /// GPU time per device (PCI bus id).
    pub gpu_millis: BTreeMap<String, u64>,
    /// Why GPU usage is missing.
    pub gpu_note: String,
    /// Traffic into and out of the job.
    pub network: NetCounters,
    /// When last updated (Unix ms).
    pub updated_at_millis: u64,
}

impl Usage {
    pub(super) fn counters(&self) -> Vec<(String, i64)> {
        let int = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let mut out = vec![
            ("duration_millis".to_owned(), int(self.duration_millis)),
            ("cpu_nanos".to_owned(), int(self.cpu_nanos)),
            ("memory_mib_millis".to_owned(), int(self.memory_mib_millis)),
            ("net_in_bytes".to_owned(), int(self.network.in_bytes)),
            ("net_in_packets".to_owned(), int(self.network.in_packets)),
            ("net_out_bytes".to_owned(), int(self.network.out_bytes)),
            ("net_out_packets".to_owned(), int(self.network.out_packets)),
        ];
        for (gpu, millis) in &self.gpu_millis {
            out.push((format!("gpu_millis:{gpu}"), int(*millis)));
        }
        out
    }

    pub(super) fn from_counters(counters: &[(String, i64)]) -> Self {
        let mut usage = Self::default();
        for (name, value) in counters {
            let value = u64::try_from(*value).unwrap_or(0);
            match name.as_str() {
                "duration_millis" => usage.duration_millis = value,
                "cpu_nanos" => usage.cpu_nanos = value,
                "memory_mib_millis" => usage.memory_mib_millis = value,
                "net_in_bytes" => usage.network.in_bytes = value,
                "net_in_packets" => usage.network.in_packets = value,
                "net_out_bytes" => usage.network.out_bytes = value,
                "net_out_packets" => usage.network.out_packets = value,
                other => {
                    if let Some(gpu) = other.strip_prefix("gpu_millis:") {
                        usage.gpu_millis.insert(gpu.to_owned(), value);
                    }
                }
            }
        }
        usage
    }
}

/// One telemetry sample of a job.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    /// Unix ms.
    pub taken_at_millis: u64,
    /// The cgroup's stats.
    pub stats: CgroupStats,
    /// Bytes in the scratch dir, when measured this tick.
    pub scratch_used_bytes: Option<u64>,
    /// What the job uses of each of its GPUs at this tick.
    pub gpus: Vec<JobGpuSample>,
    /// Its traffic so far; absent without a network (or when its veth could not be read).
    pub network: Option<NetCounters>,
}

/// One of a job's GPUs in a telemetry sample.
#[derive(Debug, Clone, PartialEq)]
pub struct JobGpuSample {
    /// PCI bus id.
    pub pci_bus_id: String,
    /// What the job's processes use of it, or why that cannot be read.
    pub used: Result<GpuProcessUse, String>,
}

/// A job as callers see it.
#[derive(Debug, Clone)]
pub struct JobView {
    /// The spec.
    pub spec: JobSpec,
    /// The record.
    pub record: JobRecord,
    /// The counters.
    pub usage: Usage,
    /// The newest sample.
    pub last_sample: Option<Arc<Sample>>,
}

/// What a watcher of one job receives.
#[derive(Debug, Clone)]
pub enum JobEvent {
    /// The job after a state transition.
    Changed(Arc<JobView>),
    /// A sample and the counters after it.
    Telemetry(Arc<Sample>, Usage),
}

/// A view with the duration counter brought up to now for a job that runs (the other
/// counters move with the telemetry samples).
pub(super) fn fresh(view: &JobView) -> JobView {
    let mut view = view.clone();
    if matches!(view.record.state, JobState::Running | JobState::Stopping) {
        if let Some(started) = view.record.started_at_millis {
            let now = shim::now_millis();
            view.usage.duration_millis =
                view.usage.duration_millis.max(now.saturating_sub(started));
        }
    }
    view
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_counters_round_trip() {
        let usage = Usage {
            duration_millis: 5,
            cpu_nanos: 7,
            memory_mib_millis: 9,
            gpu_millis: BTreeMap::from([("0000:01:00.0".to_owned(), 3)]),
            ..Usage::default()
        };
        assert_eq!(Usage::from_counters(&usage.counters()), usage);
    }

    #[test]
    fn states() {
        assert!(JobState::Creating.is_active() && JobState::Stopping.is_active());
        assert!(!JobState::Failed.is_active());
        assert_eq!(
            serde_json::to_string(&Termination::OomKilled).unwrap(),
            "\"oom_killed\""
        );
    }
}
