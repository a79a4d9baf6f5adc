//! [`JobManager`]: every job's life, in one place.
//!
//! - **Start** ([`JobManager::start`]): validate; under the manager's lock, answer an existing
//!   id (idempotency), check the request against the free capacity (RESOURCE_EXHAUSTED naming
//!   the resource; a GPU is never given twice), write the record (state `creating`) to SQLite
//!   and publish the reservation; then, without the lock, write the bundle, start the shim and
//!   wait until the runtime says `running`; record `running` (or `failed`) before answering.
//! - **End**: the shim's `exit.json` is read by [`JobManager::stop`] (which waits for it) or by
//!   the telemetry loop; the record gets its final state, exit code and termination reason
//!   (OOM kill when the cgroup counted one), and the reservation is released.
//! - **Restart** ([`JobManager::open`]): every job not ended in the store is checked: an
//!   `exit.json` finishes it; a live shim keeps it running; otherwise the container is removed
//!   and the job recorded as lost (or start-failed when it never started). Containers under the
//!   runtime root that no active job owns are removed: no untracked container survives.
//! - **Telemetry** ([`JobManager::tick`], driven by one thread for all jobs): reads each running
//!   job's cgroup, advances its usage counters (monotonic, persisted in one transaction per
//!   tick), sends a sample to its watchers, enforces the time and scratch limits.
//! - **Retention** ([`JobManager::forget_expired`], at the end of every tick): a job that ended
//!   `[jobs] retention_millis` ago is forgotten: job dir (logs, bundle), record, transitions
//!   and usage counters. Its id may then be started again.
//!
//! Lock order: `inner`, then `store`. Runtime calls and waits happen without `inner` held.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::bundle::{self, DeviceNode};
use super::launcher::ShimLauncher;
use super::runtime::JobRuntime;
use super::scratch;
use super::shim::{self, ExitRecord, ShimArgs};
use super::spec::{self, GpuIdentity, ImageSource, JobSpec, ValidJob};
use super::JobError;
use crate::capacity::{Allocations, CapacityLedger, GpuAssignment};
use crate::cgroup::{self, CgroupLayout, CgroupStats};
use crate::config::JobsConfig;
use crate::fsroot::FsRoot;
use crate::gpu::accounting::{self as gpu_usage, GpuAccounting, GpuProcessUse};
use crate::image::{ImageError, RemovedImage};
use crate::state::{JobRow, StateStore};

/// Longest wait for a new container to run.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time between SIGTERM and SIGKILL.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(5);
/// How long after SIGKILL the manager waits for the shim's exit record.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// The scratch dir's size is measured every this many telemetry ticks.
const SCRATCH_EVERY_TICKS: u64 = 5;
/// Events buffered per watcher.
const EVENT_QUEUE: usize = 256;

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
    /// When last updated (Unix ms).
    pub updated_at_millis: u64,
}

impl Usage {
    fn counters(&self) -> Vec<(String, i64)> {
        let int = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let mut out = vec![
            ("duration_millis".to_owned(), int(self.duration_millis)),
            ("cpu_nanos".to_owned(), int(self.cpu_nanos)),
            ("memory_mib_millis".to_owned(), int(self.memory_mib_millis)),
        ];
        for (gpu, millis) in &self.gpu_millis {
            out.push((format!("gpu_millis:{gpu}"), int(*millis)));
        }
        out
    }

    fn from_counters(counters: &[(String, i64)]) -> Self {
        let mut usage = Self::default();
        for (name, value) in counters {
            let value = u64::try_from(*value).unwrap_or(0);
            match name.as_str() {
                "duration_millis" => usage.duration_millis = value,
                "cpu_nanos" => usage.cpu_nanos = value,
                "memory_mib_millis" => usage.memory_mib_millis = value,
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
}

/// One of a job's GPUs in a telemetry sample.
#[derive(Debug, Clone, PartialEq)]
pub struct JobGpuSample {
    /// PCI bus id.
    pub pci_bus_id: String,
    /// What the job's processes use of it, or why that cannot be read.
    pub used: Result<GpuProcessUse, String>,
}

/// A job's figures of one GPU at one telemetry tick.
struct GpuFigures {
    /// GPU-milliseconds so far, for the usage counters.
    held_millis: Result<u64, String>,
    /// What it uses now, for the sample.
    now: JobGpuSample,
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

/// What the manager is built from.
#[derive(Clone)]
pub struct JobSetup {
    /// `[jobs]`.
    pub config: JobsConfig,
    /// The agent's state dir (the database lives there).
    pub state_dir: PathBuf,
    /// The executable to run as `<exe> internal job-shim ...` (the agent binary); see
    /// [`ShimLauncher`].
    pub shim_exe: PathBuf,
    /// The OCI runtime.
    pub runtime: Arc<dyn JobRuntime>,
    /// Images.
    pub images: Arc<dyn ImageSource>,
    /// GPU accounting.
    pub gpu_accounting: Arc<dyn GpuAccounting>,
    /// Root below which `/sys`, `/proc` and `/dev` are read.
    pub fs: FsRoot,
}

impl std::fmt::Debug for JobSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobSetup")
            .field("config", &self.config)
            .field("state_dir", &self.state_dir)
            .field("shim_exe", &self.shim_exe)
            .field("runtime", &self.runtime)
            .finish_non_exhaustive()
    }
}

struct Entry {
    view: JobView,
    events: broadcast::Sender<JobEvent>,
    /// When the previous sample was taken (for integrating memory).
    last_sample_at: Option<Instant>,
}

#[derive(Default)]
struct Inner {
    jobs: HashMap<String, Entry>,
    /// Ids in creation order.
    order: Vec<String>,
    ticks: u64,
}

/// The job runner.
pub struct JobManager {
    config: JobsConfig,
    jobs_dir: PathBuf,
    runtime_root: PathBuf,
    shims: Arc<ShimLauncher>,
    runtime: Arc<dyn JobRuntime>,
    images: Arc<dyn ImageSource>,
    gpu_accounting: Arc<dyn GpuAccounting>,
    fs: FsRoot,
    layout: Option<CgroupLayout>,
    capacity: Arc<CapacityLedger>,
    store: Mutex<StateStore>,
    inner: Mutex<Inner>,
    gpus: Mutex<Vec<GpuIdentity>>,
    /// Every pid seen in each running GPU job's cgroup (see [`gpu_usage`]); touched only by the
    /// telemetry loop.
    gpu_pids: Mutex<HashMap<String, BTreeSet<u32>>>,
    stopping: AtomicBool,
}

impl std::fmt::Debug for JobManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobManager")
            .field("jobs_dir", &self.jobs_dir)
            .field("runtime", &self.runtime)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Poisoned = another thread panicked mid-update; the data is plain and still usable.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> JobError + '_ {
    move |source| JobError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The runtime state root below a jobs dir.
pub fn runtime_root(jobs_dir: &Path) -> PathBuf {
    jobs_dir.join(".runc")
}

/// Bytes in a dir tree (files' apparent sizes; symlinks not followed).
pub fn dir_size(path: &Path) -> u64 {
    let mut total = 0u64;
    let mut stack = vec![path.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                total = total.saturating_add(meta.len());
            }
        }
    }
    total
}

impl JobManager {
    /// Opens the manager: creates the jobs dir, loads every job from the store, recovers the
    /// ones that were active (see the module doc) and publishes their reservations.
    pub fn open(setup: JobSetup, capacity: Arc<CapacityLedger>) -> Result<Arc<Self>, JobError> {
        let jobs_dir = setup.config.dir_under(&setup.state_dir);
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o711)
                .create(&jobs_dir)
                .map_err(io_err(&jobs_dir))?;
        }
        let store = StateStore::open(&setup.state_dir)?;
        let layout = match CgroupLayout::detect(&setup.fs) {
            Ok(layout) => Some(layout),
            Err(err) => {
                tracing::warn!(error = %err, "no cgroup hierarchy: job telemetry unavailable");
                None
            }
        };
        let manager = Arc::new(Self {
            runtime_root: runtime_root(&jobs_dir),
            jobs_dir,
            config: setup.config,
            shims: ShimLauncher::new(setup.shim_exe),
            runtime: setup.runtime,
            images: setup.images,
            gpu_accounting: setup.gpu_accounting,
            fs: setup.fs,
            layout,
            capacity,
            store: Mutex::new(store),
            inner: Mutex::new(Inner::default()),
            gpus: Mutex::new(Vec::new()),
            gpu_pids: Mutex::new(HashMap::new()),
            stopping: AtomicBool::new(false),
        });
        manager.recover()?;
        Ok(manager)
    }

    /// The dir of job `id`.
    pub fn job_dir(&self, id: &str) -> PathBuf {
        self.jobs_dir.join(id)
    }

    /// The runtime's state root (tests clean up through it).
    pub fn runtime_root(&self) -> &Path {
        &self.runtime_root
    }

    /// The `[jobs]` config.
    pub fn config(&self) -> &JobsConfig {
        &self.config
    }

    /// Replaces the GPUs jobs may name (from the inventory).
    pub fn set_gpus(&self, gpus: Vec<GpuIdentity>) {
        *lock(&self.gpus) = gpus;
    }

    fn cgroups_path(&self, id: &str) -> String {
        format!("/{}/{id}", self.config.cgroup_parent.trim_matches('/'))
    }

    // ---- recovery ----

    fn recover(self: &Arc<Self>) -> Result<(), JobError> {
        let rows = lock(&self.store).job_list()?;
        let mut to_finish: Vec<(String, Option<ExitRecord>, Termination, String)> = Vec::new();
        let mut to_restop: Vec<String> = Vec::new();
        let mut to_settle: Vec<String> = Vec::new();
        {
            let mut inner = lock(&self.inner);
            for row in rows {
                let spec: JobSpec = serde_json::from_str(&row.spec_json)?;
                let record: JobRecord = serde_json::from_str(&row.record_json)?;
                let usage = Usage::from_counters(&lock(&self.store).usage_get(&row.job_id)?);
                let id = row.job_id.clone();
                if record.state.is_active() {
                    let dir = self.job_dir(&id);
                    if let Some(exit) = shim::read_exit(&dir) {
                        to_finish.push((
                            id.clone(),
                            Some(exit),
                            Termination::Exited,
                            String::new(),
                        ));
                    } else if self.shim_alive(&id) {
                        match record.state {
                            JobState::Creating => to_settle.push(id.clone()),
                            JobState::Stopping => to_restop.push(id.clone()),
                            _ => {}
                        }
                        tracing::info!(job = %id, state = record.state.name(), "job found again after restart");
                    } else {
                        let (why, message) = if record.state == JobState::Creating {
                            (
                                Termination::StartFailed,
                                "the agent stopped before the container started",
                            )
                        } else {
                            (
                                Termination::Lost,
                                "the job's supervisor ended without recording an exit status",
                            )
                        };
                        to_finish.push((id.clone(), None, why, message.to_owned()));
                    }
                }
                let (events, _) = broadcast::channel(EVENT_QUEUE);
                inner.order.push(id.clone());
                inner.jobs.insert(
                    id,
                    Entry {
                        view: JobView {
                            spec,
                            record,
                            usage,
                            last_sample: None,
                        },
                        events,
                        last_sample_at: None,
                    },
                );
            }
            self.publish(&inner);
        }
        for (id, exit, why, message) in to_finish {
            if exit.is_none() {
                self.remove_container(&id);
            }
            self.finish(&id, exit, why, &message)?;
        }
        for id in to_settle {
            self.settle_creating(&id)?;
        }
        // Containers no active job owns: never leave one untracked.
        match self.runtime.list() {
            Ok(ids) => {
                let inner = lock(&self.inner);
                let orphans: Vec<String> = ids
                    .into_iter()
                    .filter(|id| {
                        !inner
                            .jobs
                            .get(id)
                            .is_some_and(|e| e.view.record.state.is_active())
                    })
                    .collect();
                drop(inner);
                for id in orphans {
                    tracing::warn!(container = %id, "removing a container no active job owns");
                    self.remove_container(&id);
                }
            }
            Err(err) => tracing::warn!(error = %err, "cannot list the runtime's containers"),
        }
        for id in to_restop {
            let manager = self.clone();
            std::thread::spawn(move || {
                if let Err(err) = manager.stop(&id, DEFAULT_STOP_GRACE) {
                    tracing::warn!(job = %id, error = %err, "stop after restart failed");
                }
            });
        }
        Ok(())
    }

    /// A job found in `creating` with a live shim after a restart: waits (bounded) for the
    /// shim's outcome and records it; on timeout the shim and container are removed.
    fn settle_creating(&self, id: &str) -> Result<(), JobError> {
        let dir = self.job_dir(id);
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(exit) = shim::read_exit(&dir) {
                self.finish(id, Some(exit), Termination::Exited, "")?;
                return Ok(());
            }
            if dir.join(shim::CONTAINER_PID_FILE).exists()
                && matches!(self.runtime.state(id), Ok(Some(s)) if s.status == "running")
            {
                self.update(
                    id,
                    "container running (found after an agent restart)",
                    |r| {
                        r.state = JobState::Running;
                        r.started_at_millis = Some(shim::now_millis());
                    },
                )?;
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill_shim(id);
        self.remove_container(id);
        self.finish(
            id,
            None,
            Termination::StartFailed,
            "the container did not start after an agent restart",
        )?;
        Ok(())
    }

    /// SIGKILLs the job's shim if it is alive.
    fn kill_shim(&self, id: &str) {
        if let Some(pid) = shim::read_pid(&self.job_dir(id).join(shim::SHIM_PID_FILE)) {
            if shim::shim_alive(pid, id, &self.job_dir(id)) {
                // SAFETY: kill(2); the pid was checked to be this job's shim just now. The shim
                // leads its own session and process group (setsid), so -pid also reaches the
                // runtime process it started.
                unsafe {
                    libc::kill(-pid, libc::SIGKILL);
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }

    fn shim_alive(&self, id: &str) -> bool {
        shim::read_pid(&self.job_dir(id).join(shim::SHIM_PID_FILE))
            .is_some_and(|pid| shim::shim_alive(pid, id, &self.job_dir(id)))
    }

    /// Kills and deletes a container (errors logged: the container may be gone already).
    fn remove_container(&self, id: &str) {
        if let Err(err) = self.runtime.kill(id, "KILL") {
            tracing::debug!(container = %id, error = %err, "kill failed");
        }
        if let Err(err) = self.runtime.delete(id, true) {
            tracing::warn!(container = %id, error = %err, "cannot delete container");
        }
    }

    // ---- capacity ----

    fn publish(&self, inner: &Inner) {
        let mut allocations = Allocations::default();
        for entry in inner.jobs.values() {
            if !entry.view.record.state.is_active() {
                continue;
            }
            let r = &entry.view.spec.resources;
            allocations.cpu_millicores += u64::try_from(r.cpu_millicores).unwrap_or(0);
            allocations.memory_bytes += u64::try_from(r.memory_bytes).unwrap_or(0);
            allocations.disk_bytes += u64::try_from(r.scratch_bytes).unwrap_or(0);
            for gpu in &entry.view.record.gpus {
                allocations
                    .gpus
                    .insert(gpu.clone(), entry.view.spec.job_id.clone());
            }
        }
        self.capacity.set_allocations(allocations);
    }

    fn admit(&self, job: &ValidJob) -> Result<(), JobError> {
        let snapshot = self.capacity.current();
        let cap = &snapshot.capacity;
        let r = &job.spec.resources;
        let exhausted = |resource: &str, message: String| JobError::ResourceExhausted {
            resource: resource.to_owned(),
            message,
        };
        let check = |resource: &str, want: i64, free: u64, unit: &str| {
            if u64::try_from(want).unwrap_or(u64::MAX) > free {
                Err(exhausted(
                    resource,
                    format!("requested {want} {unit}, {free} free"),
                ))
            } else {
                Ok(())
            }
        };
        check(
            "resources.cpu_millicores",
            r.cpu_millicores,
            cap.cpu_millicores.free,
            "millicores",
        )?;
        check(
            "resources.memory_bytes",
            r.memory_bytes,
            cap.memory_bytes.free,
            "bytes",
        )?;
        check(
            "resources.scratch_bytes",
            r.scratch_bytes,
            cap.disk_bytes.free,
            "bytes of disk",
        )?;
        for gpu in &job.gpus {
            match cap
                .gpus
                .iter()
                .find(|g| g.pci_bus_id.eq_ignore_ascii_case(gpu))
            {
                Some(g) => match &g.assignment {
                    GpuAssignment::Free => {}
                    GpuAssignment::Reserved => {
                        return Err(exhausted(
                            "resources.gpus",
                            format!("GPU {gpu} is reserved for the host"),
                        ))
                    }
                    GpuAssignment::Allocated(holder) => {
                        return Err(exhausted(
                            "resources.gpus",
                            format!("GPU {gpu} is allocated to job {holder:?}"),
                        ))
                    }
                },
                None => {
                    return Err(exhausted(
                        "resources.gpus",
                        format!("GPU {gpu} is not offered by this host"),
                    ))
                }
            }
        }
        Ok(())
    }

    // ---- start ----

    /// Starts a job (see the module doc); returns it and whether it was created now.
    pub fn start(self: &Arc<Self>, spec: &JobSpec) -> Result<(JobView, bool), JobError> {
        let gpus = lock(&self.gpus).clone();
        let valid = spec::validate(spec, self.images.as_ref(), &gpus, &self.config)?;
        let id = valid.spec.job_id.clone();
        let (row, created_at_millis) = {
            let mut inner = lock(&self.inner);
            if let Some(entry) = inner.jobs.get(&id) {
                if entry.view.spec != *spec {
                    return Err(JobError::AlreadyExists(id));
                }
                drop(inner);
                return Ok((self.wait_not_creating(&id)?, false));
            }
            // Under this lock, so an image removal (which renames the rootfs under it too)
            // either sees this job or happened before it.
            if !valid.image.rootfs.is_dir() {
                return Err(JobError::InvalidArgument {
                    field: "image".to_owned(),
                    message: format!("{:?} was removed", spec.image),
                });
            }
            self.admit(&valid)?;
            let record = JobRecord {
                state: JobState::Creating,
                image_digest: valid.image.manifest_digest.clone(),
                created_at_millis: shim::now_millis(),
                gpus: valid.gpus.clone(),
                cgroups_path: self.cgroups_path(&id),
                time_limit_millis: u64::try_from(valid.time_limit.as_millis()).unwrap_or(u64::MAX),
                ..JobRecord::default()
            };
            let row = JobRow {
                job_id: id.clone(),
                state: record.state.name().to_owned(),
                spec_json: serde_json::to_string(spec)?,
                record_json: serde_json::to_string(&record)?,
            };
            let created_at_millis = i64::try_from(record.created_at_millis).unwrap_or(i64::MAX);
            let (events, _) = broadcast::channel(EVENT_QUEUE);
            inner.order.push(id.clone());
            inner.jobs.insert(
                id.clone(),
                Entry {
                    view: JobView {
                        spec: spec.clone(),
                        record,
                        usage: Usage::default(),
                        last_sample: None,
                    },
                    events,
                    last_sample_at: None,
                },
            );
            self.publish(&inner);
            (row, created_at_millis)
        };
        tracing::info!(job = %id, image = %spec.image, "starting job");
        // The record first (its commit needs no fsync: see `StateStore::job_insert`), then the
        // job dir and bundle, on this thread: a thread to overlap them cost more than it saved
        // (it was scheduled ~0.45 ms after its spawn, once this thread blocked in the join).
        // An agent that dies in between leaves a `creating` record with no shim, which the
        // restart records as start-failed.
        if let Err(err) = lock(&self.store).job_insert(&row, created_at_millis) {
            self.forget_unrecorded(&id);
            return Err(err.into());
        }
        let prepared = self.prepare(&valid);
        let launched = prepared.and_then(|shim_args| self.launch(&id, &shim_args));
        let outcome = self.record_launch(id, launched);
        // After the record, so the next standby's exec (~6 ms of CPU) does not compete with
        // this start.
        self.shims.replenish_in_background();
        outcome
    }

    /// Records how a launch went: running, already ended, or failed to start.
    fn record_launch(
        &self,
        id: String,
        launched: Result<Option<ExitRecord>, String>,
    ) -> Result<(JobView, bool), JobError> {
        match launched {
            Ok(None) => {
                let view = self.update(&id, "container running", |record| {
                    record.state = JobState::Running;
                    record.started_at_millis = Some(shim::now_millis());
                })?;
                Ok((view, true))
            }
            Ok(Some(exit)) => {
                // Ended before we saw it running (a very short job, or a runtime error).
                let started = exit.started;
                let message = exit.error.clone().unwrap_or_default();
                let view = self.finish(&id, Some(exit), Termination::Exited, "")?;
                if started {
                    Ok((view, true))
                } else {
                    Err(JobError::StartFailed { id, message })
                }
            }
            Err(message) => {
                tracing::warn!(job = %id, error = %message, "job start failed");
                self.kill_shim(&id);
                self.remove_container(&id);
                self.finish(&id, None, Termination::StartFailed, &message)?;
                Err(JobError::StartFailed { id, message })
            }
        }
    }

    /// Removes an image (RemoveImage), refused while an active job runs it: the check and the
    /// rename of its rootfs happen under the manager's lock, which StartJob holds while it
    /// checks the rootfs and records the job. The rootfs is deleted after both locks.
    pub fn remove_image(&self, name: &str) -> Result<Option<RemovedImage>, ImageError> {
        let mut held = None;
        let removed = self.images.remove(name, &mut |digest| {
            let inner = lock(&self.inner);
            let users: Vec<&str> = inner
                .order
                .iter()
                .filter_map(|id| inner.jobs.get(id))
                .filter(|e| e.view.record.state.is_active() && self.runs_image(e, digest))
                .map(|e| e.view.spec.job_id.as_str())
                .collect();
            if !users.is_empty() {
                return Err(format!("active jobs run it: {}", users.join(", ")));
            }
            held = Some(inner);
            Ok(())
        });
        drop(held);
        let removed = removed?;
        if let Some(removed) = &removed {
            removed.delete_trash();
        }
        Ok(removed)
    }

    /// Whether a job runs the image with manifest `digest`: its record says, or for a record
    /// without the digest, its bundle's `root.path` is under that image's dir.
    fn runs_image(&self, entry: &Entry, digest: &str) -> bool {
        let record = &entry.view.record;
        if !record.image_digest.is_empty() {
            return record.image_digest == digest;
        }
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        let config = self
            .job_dir(&entry.view.spec.job_id)
            .join(shim::BUNDLE_DIR)
            .join("config.json");
        match std::fs::read(&config).map(|b| serde_json::from_slice::<serde_json::Value>(&b)) {
            Ok(Ok(spec)) => spec["root"]["path"].as_str().is_some_and(|root| {
                Path::new(root).parent().and_then(Path::file_name)
                    == Some(std::ffi::OsStr::new(hex))
            }),
            // No bundle to tell: count it as a user rather than pull its rootfs away.
            _ => true,
        }
    }

    /// Waits (bounded) until a job is past `creating`, for a duplicate StartJob.
    fn wait_not_creating(&self, id: &str) -> Result<JobView, JobError> {
        let deadline = Instant::now() + START_TIMEOUT + Duration::from_secs(5);
        loop {
            let view = self.get(id)?;
            if view.record.state != JobState::Creating || Instant::now() > deadline {
                return Ok(view);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Drops a job whose record could not be written: nothing of it was made or started, so
    /// it goes from memory, its reservation with it.
    fn forget_unrecorded(&self, id: &str) {
        let mut inner = lock(&self.inner);
        inner.jobs.remove(id);
        inner.order.retain(|j| j != id);
        self.publish(&inner);
    }

    /// Makes the job dir (replacing one that no record owns, which never had a shim: left by an
    /// older agent that wrote the dir before the record, or by a forgotten job whose dir could
    /// not be removed), its scratch dir and bundle; returns the shim's arguments.
    fn prepare(&self, job: &ValidJob) -> Result<ShimArgs, String> {
        use std::os::unix::fs::DirBuilderExt;
        let id = &job.spec.job_id;
        let dir = self.job_dir(id);
        if std::fs::symlink_metadata(&dir).is_ok() {
            tracing::warn!(job = %id, "replacing a job dir that no record owned");
            scratch::remove(&dir)?;
            std::fs::remove_dir_all(&dir)
                .map_err(|e| format!("cannot remove the stale {}: {e}", dir.display()))?;
        }
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let scratch_bytes = u64::try_from(job.spec.resources.scratch_bytes).unwrap_or(0);
        let scratch = scratch::make(&dir, scratch_bytes, job.user, self.config.scratch_limit)?;
        let gpu_nodes: Vec<DeviceNode> =
            bundle::gpu_device_nodes(&self.fs, &job.gpus).map_err(|e| e.to_string())?;
        for gpu in &job.gpus {
            // Not fatal: the job runs, and its usage says why GPU-seconds are missing.
            if let Err(err) = self.gpu_accounting.prepare(gpu) {
                tracing::warn!(job = %id, gpu = %gpu, error = %err, "GPU accounting unavailable");
            }
        }
        let spec = bundle::runtime_spec(job, &scratch, &self.cgroups_path(id), &gpu_nodes)
            .map_err(|e| e.to_string())?;
        bundle::write_bundle(&dir.join(shim::BUNDLE_DIR), &spec).map_err(|e| e.to_string())?;
        Ok(ShimArgs {
            job_dir: dir,
            id: id.clone(),
            runtime: self.config.runtime.clone(),
            runtime_root: self.runtime_root.clone(),
            cgroups_path: self.cgroups_path(id),
            log_max_bytes: self.config.log_max_bytes.0,
        })
    }

    /// Starts the shim of a prepared job and waits until the container runs. `Ok(None)` =
    /// running; `Ok(Some(exit))` = it already ended; `Err` = it could not be started.
    fn launch(&self, id: &str, shim_args: &ShimArgs) -> Result<Option<ExitRecord>, String> {
        let dir = &shim_args.job_dir;
        let shim_log = std::fs::File::create(dir.join(shim::SHIM_LOG))
            .map_err(|e| format!("cannot create shim.log: {e}"))?;
        let mut child = self
            .shims
            .launch(shim_args, shim_log)
            .map_err(|e| format!("cannot start the job shim: {e}"))?;
        let pid = child.id();
        shim::write_pid_file(&dir.join(shim::SHIM_PID_FILE), pid)
            .map_err(|e| format!("cannot write shim.pid: {e}"))?;
        // Reap the shim when it ends (while this agent lives; after a restart init does).
        let shim_ended = Arc::new(AtomicBool::new(false));
        let reaper = std::thread::Builder::new()
            .name("job-shim-reaper".into())
            .stack_size(32 * 1024)
            .spawn({
                let shim_ended = Arc::clone(&shim_ended);
                move || {
                    // Ignored: the shim's own status is not the job's (that is in exit.json).
                    let _ = child.wait();
                    shim_ended.store(true, Ordering::Release);
                }
            });
        if let Err(err) = reaper {
            tracing::warn!(error = %err, "cannot start a reaper thread; the shim stays a zombie until the agent exits");
        }

        self.wait_started(id, dir, &shim_ended)
    }

    /// Waits until the shim's container runs (`Ok(None)`) or has ended (`Ok(Some(exit))`).
    ///
    /// The checks are file reads (`exit.json`, the init pid from `container.pid` or, before the
    /// runtime has written that, [`JobRuntime::init_pid`], then [`JobRuntime::started`]), a few
    /// microseconds each, so they run every millisecond: the wait adds ~0.5 ms to a start, not
    /// the ~10 ms of a backoff to 20 ms. Only a runtime call ([`JobRuntime::state`], an exec of
    /// the runtime) or a start slower than [`FAST_POLL`] backs off. A shim that ends (its reaper
    /// sets `shim_ended`) without an exit record ends the wait at once.
    fn wait_started(
        &self,
        id: &str,
        dir: &Path,
        shim_ended: &AtomicBool,
    ) -> Result<Option<ExitRecord>, String> {
        /// How long the file checks run every millisecond.
        const FAST_POLL: Duration = Duration::from_secs(2);
        let pid_file = dir.join(shim::CONTAINER_PID_FILE);
        let started_at = Instant::now();
        let mut slow_pause = Duration::from_millis(1);
        loop {
            if let Some(exit) = shim::read_exit(dir) {
                return Ok(Some(exit));
            }
            let mut asked_runtime = false;
            // The runtime's own state names the init before the pid file exists.
            let pid = shim::read_pid(&pid_file).or_else(|| self.runtime.init_pid(id));
            if let Some(pid) = pid {
                match self.runtime.started(id, pid) {
                    Some(true) => return Ok(None),
                    Some(false) => {}
                    None => {
                        asked_runtime = true;
                        match self.runtime.state(id) {
                            Ok(Some(state)) if state.status == "running" => return Ok(None),
                            Ok(_) => {}
                            Err(err) => tracing::debug!(job = %id, error = %err, "runtime state"),
                        }
                    }
                }
            }
            let waited = started_at.elapsed();
            if shim_ended.load(Ordering::Acquire) {
                // It may have written its record just before ending.
                return shim::read_exit(dir).map(Some).ok_or_else(|| {
                    format!(
                        "the job shim ended without recording an exit: {}",
                        shim::stderr_tail(&dir.join(shim::SHIM_LOG))
                    )
                });
            }
            if waited > START_TIMEOUT {
                return Err(format!(
                    "the container was not running after {} s: {}",
                    START_TIMEOUT.as_secs(),
                    shim::stderr_tail(&dir.join(shim::STDERR_LOG))
                ));
            }
            if asked_runtime || waited > FAST_POLL {
                std::thread::sleep(slow_pause);
                slow_pause = (slow_pause * 2).min(Duration::from_millis(20));
            } else {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    /// Applies `change` to a job's record, persists it, and tells watchers.
    fn update(
        &self,
        id: &str,
        message: &str,
        change: impl FnOnce(&mut JobRecord),
    ) -> Result<JobView, JobError> {
        let mut inner = lock(&self.inner);
        let entry = inner
            .jobs
            .get_mut(id)
            .ok_or_else(|| JobError::NotFound(id.to_owned()))?;
        let mut record = entry.view.record.clone();
        change(&mut record);
        if !message.is_empty() {
            record.message = message.to_owned();
        }
        let was_active = entry.view.record.state.is_active();
        lock(&self.store).job_update(
            id,
            record.state.name(),
            &serde_json::to_string(&record)?,
            i64::try_from(shim::now_millis()).unwrap_or(i64::MAX),
            message,
        )?;
        let state_changed = record.state != entry.view.record.state;
        entry.view.record = record;
        let view = entry.view.clone();
        if state_changed {
            // No receivers is fine.
            let _ = entry.events.send(JobEvent::Changed(Arc::new(view.clone())));
        }
        if was_active && !view.record.state.is_active() {
            self.publish(&inner);
        }
        Ok(view)
    }

    /// Records the end of a job: from its exit record, or with `why` when there is none.
    fn finish(
        &self,
        id: &str,
        exit: Option<ExitRecord>,
        why: Termination,
        message: &str,
    ) -> Result<JobView, JobError> {
        let now = shim::now_millis();
        let (stop_cause, started_at, prior_usage) = {
            let inner = lock(&self.inner);
            let entry = inner
                .jobs
                .get(id)
                .ok_or_else(|| JobError::NotFound(id.to_owned()))?;
            if !entry.view.record.state.is_active() {
                return Ok(entry.view.clone());
            }
            (
                entry.view.record.stop_cause,
                entry.view.record.started_at_millis,
                entry.view.usage.clone(),
            )
        };
        let finished_at = exit.as_ref().map_or(now, |e| e.finished_at_millis);
        // A job that ended before it was seen running: its start is when the runtime wrote
        // the container's pid.
        let started_at = started_at.or_else(|| {
            exit.as_ref().filter(|e| e.started)?;
            let meta = std::fs::metadata(self.job_dir(id).join(shim::CONTAINER_PID_FILE)).ok()?;
            let since = meta
                .modified()
                .ok()?
                .duration_since(std::time::UNIX_EPOCH)
                .ok()?;
            u64::try_from(since.as_millis()).ok()
        });
        let (state, termination, exit_code, text) = match &exit {
            Some(e) if !e.started => (
                JobState::Failed,
                Termination::StartFailed,
                None,
                e.error.clone().unwrap_or_default(),
            ),
            Some(e) if e.oom_kills.unwrap_or(0) > 0 => (
                JobState::Failed,
                Termination::OomKilled,
                e.exit_code,
                format!(
                    "killed by the kernel's OOM killer ({} kill(s)) at the memory limit",
                    e.oom_kills.unwrap_or(0)
                ),
            ),
            Some(e) => match stop_cause {
                Some(cause) => (JobState::Stopped, cause, e.exit_code, String::new()),
                None if e.exit_code == Some(0) => (
                    JobState::Succeeded,
                    Termination::Exited,
                    e.exit_code,
                    String::new(),
                ),
                None => (
                    JobState::Failed,
                    Termination::Exited,
                    e.exit_code,
                    e.error.clone().unwrap_or_default(),
                ),
            },
            None => (JobState::Failed, why, None, message.to_owned()),
        };
        let mut usage = prior_usage;
        if let Some(started) = started_at {
            usage.duration_millis = usage
                .duration_millis
                .max(finished_at.saturating_sub(started));
        }
        if let Some(cpu) = exit.as_ref().and_then(|e| e.cpu_usage_nanos) {
            usage.cpu_nanos = usage.cpu_nanos.max(cpu);
        }
        usage.updated_at_millis = now;
        self.store_usage(&[(id.to_owned(), usage.clone())]);
        {
            let mut inner = lock(&self.inner);
            if let Some(entry) = inner.jobs.get_mut(id) {
                entry.view.usage = usage;
            }
        }
        // The shim deletes the container before it records the exit; make sure anyway (a
        // delete that failed under load must not leave an untracked container).
        if let Err(err) = self.runtime.delete(id, true) {
            tracing::warn!(job = %id, error = %err, "cannot delete the ended container");
        }
        let dropped = exit.as_ref().map_or(0, |e| e.log_dropped_bytes);
        let view = self.update(id, &text, |record| {
            record.state = state;
            record.termination = Some(termination);
            record.exit_code = exit_code;
            record.finished_at_millis = Some(finished_at);
            record.started_at_millis = record.started_at_millis.or(started_at);
            record.log_dropped_bytes = dropped;
        })?;
        tracing::info!(job = %id, state = state.name(), termination = ?termination, exit_code = ?exit_code, "job ended");
        if let Err(err) = scratch::remove(&self.job_dir(id)) {
            tracing::warn!(job = %id, error = %err, "cannot remove the scratch space");
        }
        Ok(view)
    }

    fn store_usage(&self, usages: &[(String, Usage)]) {
        let counters: Vec<(String, String, i64)> = usages
            .iter()
            .flat_map(|(id, usage)| {
                usage
                    .counters()
                    .into_iter()
                    .map(move |(name, value)| (id.clone(), name, value))
            })
            .collect();
        let refs: Vec<(&str, &str, i64)> = counters
            .iter()
            .map(|(id, name, value)| (id.as_str(), name.as_str(), *value))
            .collect();
        if let Err(err) = lock(&self.store).usage_put(&refs) {
            tracing::error!(error = %err, "cannot store usage counters");
        }
    }

    // ---- stop ----

    /// Stops a job: SIGTERM, SIGKILL after `grace`; returns it once ended (or, if the runtime
    /// does not confirm within the kill wait, as `stopping`; the telemetry loop finishes it).
    pub fn stop(&self, id: &str, grace: Duration) -> Result<JobView, JobError> {
        self.stop_for(id, grace, Termination::StopRequested)
    }

    fn stop_for(&self, id: &str, grace: Duration, cause: Termination) -> Result<JobView, JobError> {
        let view = self.wait_not_creating(id)?;
        if !view.record.state.is_active() {
            return Ok(view);
        }
        self.mark_stopping(id, cause)?;
        self.terminate(id, grace)
    }

    /// Records that a stop was asked for (state `stopping`, the cause kept); false when the
    /// job is not active (nothing to stop).
    fn mark_stopping(&self, id: &str, cause: Termination) -> Result<bool, JobError> {
        let mut inner = lock(&self.inner);
        let entry = inner
            .jobs
            .get_mut(id)
            .ok_or_else(|| JobError::NotFound(id.to_owned()))?;
        if !entry.view.record.state.is_active() {
            return Ok(false);
        }
        if entry.view.record.state == JobState::Stopping {
            return Ok(true);
        }
        let mut record = entry.view.record.clone();
        record.state = JobState::Stopping;
        record.stop_cause.get_or_insert(cause);
        record.message = format!("stop requested ({cause:?})");
        lock(&self.store).job_update(
            id,
            record.state.name(),
            &serde_json::to_string(&record)?,
            i64::try_from(shim::now_millis()).unwrap_or(i64::MAX),
            &record.message,
        )?;
        entry.view.record = record;
        // No receivers is fine.
        let _ = entry
            .events
            .send(JobEvent::Changed(Arc::new(entry.view.clone())));
        Ok(true)
    }

    /// SIGTERM, SIGKILL after `grace`, then records the end once the shim has.
    fn terminate(&self, id: &str, grace: Duration) -> Result<JobView, JobError> {
        let dir = self.job_dir(id);
        if let Err(err) = self.runtime.kill(id, "TERM") {
            tracing::warn!(job = %id, error = %err, "SIGTERM failed");
        }
        if !wait_for_exit(&dir, grace) {
            if let Err(err) = self.runtime.kill(id, "KILL") {
                tracing::warn!(job = %id, error = %err, "SIGKILL failed");
            }
            wait_for_exit(&dir, KILL_WAIT);
        }
        self.check_ended(id)
    }

    /// Finishes the job if its shim has recorded the exit (or died without); returns it.
    fn check_ended(&self, id: &str) -> Result<JobView, JobError> {
        let dir = self.job_dir(id);
        if let Some(exit) = shim::read_exit(&dir) {
            return self.finish(id, Some(exit), Termination::Exited, "");
        }
        let view = self.get(id)?;
        if view.record.state != JobState::Creating && !self.shim_alive(id) {
            // The shim may have written exit.json between the two checks.
            if let Some(exit) = shim::read_exit(&dir) {
                return self.finish(id, Some(exit), Termination::Exited, "");
            }
            self.remove_container(id);
            return self.finish(
                id,
                None,
                Termination::Lost,
                "the job's supervisor ended without recording an exit status",
            );
        }
        Ok(view)
    }

    // ---- queries ----

    /// One job.
    pub fn get(&self, id: &str) -> Result<JobView, JobError> {
        lock(&self.inner)
            .jobs
            .get(id)
            .map(|e| fresh(&e.view))
            .ok_or_else(|| JobError::NotFound(id.to_owned()))
    }

    /// Jobs, newest first.
    pub fn list(&self, active_only: bool) -> Vec<JobView> {
        let inner = lock(&self.inner);
        inner
            .order
            .iter()
            .rev()
            .filter_map(|id| inner.jobs.get(id))
            .filter(|e| !active_only || e.view.record.state.is_active())
            .map(|e| fresh(&e.view))
            .collect()
    }

    /// The job now and a receiver of its later events.
    pub fn subscribe(
        &self,
        id: &str,
    ) -> Result<(JobView, broadcast::Receiver<JobEvent>), JobError> {
        let inner = lock(&self.inner);
        let entry = inner
            .jobs
            .get(id)
            .ok_or_else(|| JobError::NotFound(id.to_owned()))?;
        Ok((fresh(&entry.view), entry.events.subscribe()))
    }

    /// Paths of a job's stdout and stderr logs.
    pub fn log_paths(&self, id: &str) -> Result<(PathBuf, PathBuf), JobError> {
        self.get(id)?;
        let dir = self.job_dir(id);
        Ok((dir.join(shim::STDOUT_LOG), dir.join(shim::STDERR_LOG)))
    }

    // ---- telemetry ----

    /// A running job's GPU figures at this tick (see [`gpu_usage`]), per GPU: its
    /// GPU-milliseconds so far, and what it uses now, or why each cannot be read. Empty for a
    /// job without GPUs.
    fn gpu_used(&self, id: &str, record: &JobRecord) -> Vec<GpuFigures> {
        if record.gpus.is_empty() {
            return Vec::new();
        }
        let mut current = BTreeSet::new();
        if let Some(layout) = &self.layout {
            match cgroup::read_procs(&self.fs, layout, &record.cgroups_path) {
                Ok(now) => current.extend(now),
                Err(err) => {
                    tracing::debug!(job = %id, error = %err, "cannot list the job's pids")
                }
            }
        }
        let pids = {
            let mut seen = lock(&self.gpu_pids);
            let pids = seen.entry(id.to_owned()).or_default();
            pids.extend(current.iter().copied());
            pids.clone()
        };
        // Created, not started: the container's first processes start before `running` is
        // recorded.
        let since_micros = record.created_at_millis.saturating_mul(1000);
        let now_micros = shim::now_millis().saturating_mul(1000);
        // Utilization over the last interval.
        let interval_micros = self.config.telemetry_interval_millis.saturating_mul(1000);
        let use_since = now_micros.saturating_sub(interval_micros);
        record
            .gpus
            .iter()
            .map(|gpu| GpuFigures {
                held_millis: self
                    .gpu_accounting
                    .process_spans(gpu, &pids)
                    .map(|spans| gpu_usage::held_millis(&spans, since_micros, now_micros)),
                now: JobGpuSample {
                    pci_bus_id: gpu.clone(),
                    used: self.gpu_accounting.process_use(gpu, &current, use_since),
                },
            })
            .collect()
    }

    /// One telemetry round over every running job (see the module doc).
    pub fn tick(self: &Arc<Self>) {
        let now = Instant::now();
        let now_ms = shim::now_millis();
        let (jobs, measure_scratch) = {
            let mut inner = lock(&self.inner);
            inner.ticks += 1;
            let jobs: Vec<(String, JobRecord, i64)> = inner
                .jobs
                .values()
                .filter(|e| matches!(e.view.record.state, JobState::Running | JobState::Stopping))
                .map(|e| {
                    (
                        e.view.spec.job_id.clone(),
                        e.view.record.clone(),
                        e.view.spec.resources.scratch_bytes,
                    )
                })
                .collect();
            (jobs, inner.ticks % SCRATCH_EVERY_TICKS == 0)
        };
        lock(&self.gpu_pids).retain(|id, _| jobs.iter().any(|(job, _, _)| job == id));
        let mut ended = Vec::new();
        let mut samples = Vec::new();
        for (id, record, scratch_limit) in jobs {
            let dir = self.job_dir(&id);
            if dir.join(shim::EXIT_FILE).exists() || !self.shim_alive(&id) {
                ended.push(id);
                continue;
            }
            let stats = match &self.layout {
                Some(layout) => cgroup::read_stats(&self.fs, layout, &record.cgroups_path),
                None => CgroupStats {
                    notes: vec!["no cgroup hierarchy found".to_owned()],
                    ..CgroupStats::default()
                },
            };
            let scratch_used_bytes =
                measure_scratch.then(|| dir_size(&dir.join(shim::SCRATCH_DIR)));
            let gpu_used = self.gpu_used(&id, &record);
            let sample = Sample {
                taken_at_millis: now_ms,
                stats,
                scratch_used_bytes,
                gpus: gpu_used.iter().map(|f| f.now.clone()).collect(),
            };
            samples.push((id, record, scratch_limit, sample, gpu_used));
        }
        for id in ended {
            if let Err(err) = self.check_ended(&id) {
                tracing::warn!(job = %id, error = %err, "cannot record the job's end");
            }
        }
        let mut to_store = Vec::new();
        let mut to_stop = Vec::new();
        {
            let mut inner = lock(&self.inner);
            for (id, record, scratch_limit, sample, gpu_used) in samples {
                let Some(entry) = inner.jobs.get_mut(&id) else {
                    continue;
                };
                let usage = &mut entry.view.usage;
                if let Some(started) = record.started_at_millis {
                    usage.duration_millis =
                        usage.duration_millis.max(now_ms.saturating_sub(started));
                }
                if let Some(cpu) = sample.stats.cpu_usage_nanos {
                    usage.cpu_nanos = usage.cpu_nanos.max(cpu);
                }
                if let (Some(mem), Some(prev)) =
                    (sample.stats.memory_usage_bytes, entry.last_sample_at)
                {
                    let dt_ms = now.duration_since(prev).as_millis();
                    let add = u128::from(mem) * dt_ms / (1 << 20);
                    usage.memory_mib_millis = usage
                        .memory_mib_millis
                        .saturating_add(u64::try_from(add).unwrap_or(u64::MAX));
                }
                if !gpu_used.is_empty() {
                    let mut notes = Vec::new();
                    for figures in gpu_used {
                        let gpu = figures.now.pci_bus_id;
                        match figures.held_millis {
                            Ok(ms) => {
                                let slot = usage.gpu_millis.entry(gpu).or_insert(0);
                                *slot = (*slot).max(ms);
                            }
                            Err(note) => notes.push(format!("{gpu}: {note}")),
                        }
                    }
                    usage.gpu_note = notes.join("; ");
                }
                usage.updated_at_millis = now_ms;
                entry.last_sample_at = Some(now);
                let sample = Arc::new(sample);
                entry.view.last_sample = Some(sample.clone());
                // No receivers is fine.
                let _ = entry
                    .events
                    .send(JobEvent::Telemetry(sample.clone(), usage.clone()));
                to_store.push((id.clone(), usage.clone()));
                if record.state == JobState::Running {
                    let over_time = record
                        .started_at_millis
                        .is_some_and(|s| now_ms.saturating_sub(s) > record.time_limit_millis);
                    let over_scratch = sample
                        .scratch_used_bytes
                        .is_some_and(|used| used > u64::try_from(scratch_limit).unwrap_or(0));
                    if over_time {
                        to_stop.push((id.clone(), Termination::TimeLimit));
                    } else if over_scratch {
                        to_stop.push((id.clone(), Termination::ScratchLimit));
                    }
                }
            }
        }
        if !to_store.is_empty() {
            self.store_usage(&to_store);
        }
        for (id, cause) in to_stop {
            tracing::info!(job = %id, cause = ?cause, "stopping job at its limit");
            match self.mark_stopping(&id, cause) {
                Ok(true) => {
                    let manager = self.clone();
                    std::thread::spawn(move || {
                        if let Err(err) = manager.terminate(&id, DEFAULT_STOP_GRACE) {
                            tracing::warn!(job = %id, error = %err, "stop at limit failed");
                        }
                    });
                }
                Ok(false) => {}
                Err(err) => tracing::warn!(job = %id, error = %err, "cannot record the stop"),
            }
        }
        self.forget_expired(now_ms);
    }

    /// Forgets every job that ended at least `[jobs] retention_millis` before `now_ms` (0 =
    /// never): its job dir first, then its record, transitions and usage counters (one
    /// transaction), then the job itself. Until then GetJob, JobLogs and StartJob's idempotency
    /// still know it; afterwards its id may be started again. A record that cannot be deleted
    /// is kept, and tried again at the next tick.
    pub fn forget_expired(&self, now_ms: u64) {
        let retention = self.config.retention_millis;
        if retention == 0 {
            return;
        }
        let expired: Vec<String> = lock(&self.inner)
            .jobs
            .values()
            .filter(|e| {
                !e.view.record.state.is_active()
                    && e.view
                        .record
                        .finished_at_millis
                        .is_some_and(|at| now_ms.saturating_sub(at) >= retention)
            })
            .map(|e| e.view.spec.job_id.clone())
            .collect();
        if expired.is_empty() {
            return;
        }
        for id in &expired {
            let dir = self.job_dir(id);
            // Gone when the job ended, unless its unmount failed then.
            if let Err(err) = scratch::remove(&dir) {
                tracing::warn!(job = %id, error = %err, "cannot remove the scratch space");
            }
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                // The record goes anyway: a dir left behind is replaced if the id comes back.
                Err(err) => {
                    tracing::warn!(job = %id, error = %err, "cannot remove {}", dir.display())
                }
            }
        }
        let ids: Vec<&str> = expired.iter().map(String::as_str).collect();
        if let Err(err) = lock(&self.store).jobs_delete(&ids) {
            tracing::warn!(error = %err, jobs = expired.len(), "cannot delete ended jobs past their retention; next tick tries again");
            return;
        }
        let gone: BTreeSet<&str> = ids.into_iter().collect();
        let mut inner = lock(&self.inner);
        for id in &gone {
            inner.jobs.remove(*id);
        }
        inner.order.retain(|id| !gone.contains(id.as_str()));
        drop(inner);
        tracing::info!(
            jobs = gone.len(),
            retention_millis = retention,
            "forgot ended jobs past their retention"
        );
    }

    /// Starts the telemetry thread: [`Self::tick`] every `[jobs] telemetry_interval_millis`
    /// until [`Self::shutdown`].
    pub fn spawn_sampler(self: &Arc<Self>) -> std::io::Result<std::thread::JoinHandle<()>> {
        let manager = self.clone();
        std::thread::Builder::new()
            .name("job-telemetry".into())
            .spawn(move || {
                let interval = manager.config.telemetry_interval();
                let mut next = Instant::now() + interval;
                while !manager.stopping.load(Ordering::Relaxed) {
                    let now = Instant::now();
                    if now < next {
                        std::thread::sleep((next - now).min(Duration::from_millis(100)));
                        continue;
                    }
                    next += interval;
                    if next < now {
                        next = now + interval;
                    }
                    manager.tick();
                }
            })
    }

    /// Stops the telemetry thread (running jobs keep running; a restarted agent finds them).
    pub fn shutdown(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }
}

/// `/metrics` per-job series: every active job's newest sample (no cgroup read per scrape).
impl super::JobMetricsSource for JobManager {
    fn job_metrics(&self) -> Vec<super::JobMetrics> {
        let inner = lock(&self.inner);
        inner
            .order
            .iter()
            .filter_map(|id| inner.jobs.get(id))
            .filter(|e| e.view.record.state.is_active())
            .map(|e| {
                let stats = e.view.last_sample.as_ref().map(|s| &s.stats);
                let get = |f: fn(&CgroupStats) -> Option<u64>| stats.and_then(f);
                super::JobMetrics {
                    job_id: e.view.spec.job_id.clone(),
                    state: e.view.record.state.name().to_owned(),
                    cpu_seconds: get(|s| s.cpu_usage_nanos).map(|n| n as f64 / 1e9),
                    cpu_throttled_seconds: get(|s| s.cpu_throttled_nanos).map(|n| n as f64 / 1e9),
                    memory_bytes: get(|s| s.memory_usage_bytes),
                    memory_peak_bytes: get(|s| s.memory_peak_bytes),
                    memory_limit_bytes: get(|s| s.memory_limit_bytes),
                    oom_kills: get(|s| s.oom_kills),
                    pids: get(|s| s.pids_current),
                    io_read_bytes: get(|s| s.io_read_bytes),
                    io_written_bytes: get(|s| s.io_write_bytes),
                    gpu_seconds: e
                        .view
                        .usage
                        .gpu_millis
                        .iter()
                        .map(|(bus, ms)| (bus.clone(), *ms as f64 / 1000.0))
                        .collect(),
                    gpu_now: e
                        .view
                        .last_sample
                        .iter()
                        .flat_map(|s| &s.gpus)
                        .filter_map(|g| {
                            let used = g.used.as_ref().ok()?;
                            let sm = used.sm_utilization_percent.map(|p| f64::from(p) / 100.0);
                            Some((g.pci_bus_id.clone(), used.memory_used_bytes, sm))
                        })
                        .collect(),
                }
            })
            .collect()
    }
}

/// A view with the duration counter brought up to now for a job that runs (the other
/// counters move with the telemetry samples).
fn fresh(view: &JobView) -> JobView {
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

/// Polls for a job dir's `exit.json` until `timeout`; true when it appeared.
fn wait_for_exit(dir: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if dir.join(shim::EXIT_FILE).exists() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
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

    #[test]
    fn dir_sizes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("a")).unwrap();
        std::fs::write(dir.path().join("a/x"), vec![0u8; 1000]).unwrap();
        std::fs::write(dir.path().join("y"), vec![0u8; 24]).unwrap();
        assert_eq!(dir_size(dir.path()), 1024);
    }
}
