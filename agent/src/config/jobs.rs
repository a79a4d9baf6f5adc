//! `[jobs]`: the job runner's runtime, dirs, limits and telemetry.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{ByteSize, JobNetwork};

/// `[jobs]`: how jobs run.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobsConfig {
    /// The OCI runtime binary (runc; crun 1.8 refuses hybrid cgroup hosts).
    pub runtime: PathBuf,
    /// Where job dirs (bundle, logs, scratch, exit status) and the runtime's state live; empty =
    /// `<state dir>/jobs`.
    pub dir: PathBuf,
    /// Size cap of each job's stdout and stderr log file; output past it is dropped (counted).
    pub log_max_bytes: ByteSize,
    /// Time limit of a job whose spec gives none.
    pub default_time_limit_millis: u64,
    /// Largest time limit a spec may ask for.
    pub max_time_limit_millis: u64,
    /// The cgroup (below each controller's root) job cgroups are made under:
    /// `/<cgroup_parent>/<job id>`.
    pub cgroup_parent: String,
    /// Interval of the job telemetry loop (one loop samples every job's cgroup).
    pub telemetry_interval_millis: u64,
    /// How long an ended job is kept (its record, transitions, usage counters, logs and job
    /// dir) before it is forgotten; 0 = no time limit ([`Self::max_retained_jobs`] still
    /// applies).
    pub retention_millis: u64,
    /// Most ended jobs kept at once: past it the oldest ended ones are forgotten first, before
    /// their retention is over.
    pub max_retained_jobs: u64,
    /// Largest job spec: the bytes of all its strings together (id, image, command, args, env,
    /// working dir, GPU names, label keys and values).
    pub max_spec_bytes: ByteSize,
    /// How a job's scratch dir is held to its `resources.scratch_bytes`.
    pub scratch_limit: ScratchLimit,
    /// With [`ScratchLimit::Polled`]: the inodes (files, dirs, links) a job's scratch may
    /// hold before the job is stopped.
    pub scratch_max_inodes: u64,
    /// How jobs reach the world: `"none"` (loopback only) or the `[jobs.network]` CNI network.
    pub network: JobNetwork,
    /// Where CDI specs are read from (in CDI's order: a later dir overrides an earlier one),
    /// absolute paths (read below the agent's root); see `cdi` in the crate.
    pub cdi_spec_dirs: Vec<PathBuf>,
    /// Whether the OCI hooks of CDI specs are added to jobs' bundles (they run as root on the
    /// host while a job's container is created).
    pub cdi_hooks: bool,
}

/// How a job's scratch dir is held to its size (`[jobs] scratch_limit`); see
/// [`crate::jobs::scratch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScratchLimit {
    /// Its own ext4 filesystem of that size, in a sparse image file, loop-mounted: a write past
    /// it fails with `ENOSPC`.
    #[default]
    Filesystem,
    /// A plain dir on the jobs dir's file system: the telemetry loop stops a job whose scratch
    /// dir has grown past its size (measured every 5th tick). For hosts without loop devices.
    Polled,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            runtime: PathBuf::from("/usr/sbin/runc"),
            dir: PathBuf::new(),
            log_max_bytes: ByteSize(16 * 1024 * 1024),
            default_time_limit_millis: 86_400_000,
            max_time_limit_millis: 604_800_000,
            cgroup_parent: "fog-agent".to_owned(),
            telemetry_interval_millis: 1000,
            retention_millis: 604_800_000,
            max_retained_jobs: 2000,
            max_spec_bytes: ByteSize(64 * 1024),
            scratch_limit: ScratchLimit::Filesystem,
            scratch_max_inodes: 65_536,
            network: JobNetwork::default(),
            cdi_spec_dirs: vec![PathBuf::from("/etc/cdi"), PathBuf::from("/var/run/cdi")],
            cdi_hooks: false,
        }
    }
}

impl JobsConfig {
    /// The jobs dir: [`Self::dir`], or `<state dir>/jobs` when empty.
    pub fn dir_under(&self, state_dir: &Path) -> PathBuf {
        if self.dir.as_os_str().is_empty() {
            state_dir.join("jobs")
        } else {
            self.dir.clone()
        }
    }

    /// [`Self::telemetry_interval_millis`] as a duration.
    pub fn telemetry_interval(&self) -> Duration {
        Duration::from_millis(self.telemetry_interval_millis)
    }
}
