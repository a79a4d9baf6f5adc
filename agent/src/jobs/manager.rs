//! [`JobManager`]: the job runner's facade. It owns the parts and answers the API; the work is
//! in the modules named here (each an `impl JobManager` block or a helper of its own):
//!
//! - readers ([`JobManager::get`], [`JobManager::list`], [`JobManager::subscribe`],
//!   [`JobManager::job_metrics`](super::JobMetricsSource::job_metrics)) answer from memory
//!   (`records`): they never wait for an fsync or a runtime call, so async handlers
//!   may call them on a tokio worker;
//! - `lifecycle`: start, stop and the end of a job (blocking: the API calls them on
//!   the blocking pool);
//! - `recovery`: what [`JobManager::open`] does with the jobs of an earlier run;
//! - `sampler`: the telemetry tick (usage, GPU time, limits);
//! - `retention`: forgetting ended jobs;
//! - here: construction, capacity admission and publication (CPU, memory, scratch disk,
//!   network rate limits, GPUs), and image removal.
//!
//! Locks: `admission` serializes StartJob's admission with RemoveImage's check (neither holds a
//! lock readers take while it does I/O); a job's lock in `ending` serializes the recording of
//! its end; the records' own locks are described in `records`; `gpus`, `sampler` and
//! `ending` itself are leaves.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast;

use super::records::{lock, Records, Table};
use super::runtime::JobRuntime;
use super::sampler::SamplerState;
use super::spec::{GpuIdentity, ImageSource, Resources, ValidJob};
use super::supervisor::{ShimSupervisor, Supervisor};
use super::JobError;
use super::{scratch, shim};
use crate::capacity::{Allocations, Capacity, CapacityLedger, GpuAssignment};
use crate::cgroup::{CgroupLayout, CgroupStats};
use crate::config::{JobsConfig, ScratchLimit};
use crate::fsroot::FsRoot;
use crate::gpu::accounting::GpuAccounting;
use crate::image::{ImageError, RemovedImage};
use crate::net::JobNetworks;
use crate::state::headroom::{Headroom, HeadroomError};

pub use super::model::{
    JobEvent, JobGpuSample, JobRecord, JobState, JobView, Sample, Termination, Usage,
};
pub use super::sampler::dir_size;

/// Longest wait for a new container to run.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time between SIGTERM and SIGKILL.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(5);
/// How long after SIGKILL the manager waits for the shim's exit record.
pub const KILL_WAIT: Duration = Duration::from_secs(10);

/// What the manager is built from.
#[derive(Clone)]
pub struct JobSetup {
    /// `[jobs]`.
    pub config: JobsConfig,
    /// The agent's state dir (the database lives there).
    pub state_dir: PathBuf,
    /// The state filesystem's floor and the database's slack (of `state_dir`).
    pub headroom: Arc<Headroom>,
    /// The executable to run as `<exe> internal job-shim ...` (the agent binary); see
    /// [`super::launcher::ShimLauncher`].
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

/// The job runner.
pub struct JobManager {
    pub(super) config: JobsConfig,
    pub(super) jobs_dir: PathBuf,
    pub(super) runtime_root: PathBuf,
    pub(super) supervisor: Arc<dyn Supervisor>,
    pub(super) runtime: Arc<dyn JobRuntime>,
    pub(super) images: Arc<dyn ImageSource>,
    pub(super) gpu_accounting: Arc<dyn GpuAccounting>,
    /// Jobs' network; `None` with `[jobs] network = "none"`.
    pub(super) networks: Option<JobNetworks>,
    pub(super) fs: FsRoot,
    pub(super) layout: Option<CgroupLayout>,
    pub(super) capacity: Arc<CapacityLedger>,
    pub(super) records: Records,
    pub(super) headroom: Arc<Headroom>,
    pub(super) admission: Mutex<()>,
    /// Per job, held while its end is recorded (see `lifecycle`'s `finish`).
    pub(super) ending: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    pub(super) gpus: Mutex<Vec<GpuIdentity>>,
    /// What the telemetry tick keeps between ticks; touched only by the tick and recovery.
    pub(super) sampler: Mutex<SamplerState>,
    /// Wakes the telemetry thread to look at the deadlines again; dropped by
    /// [`Self::shutdown`] to end it.
    pub(super) sampler_wake: Mutex<Option<mpsc::Sender<()>>>,
}

impl std::fmt::Debug for JobManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobManager")
            .field("jobs_dir", &self.jobs_dir)
            .field("runtime", &self.runtime)
            .finish_non_exhaustive()
    }
}

pub(super) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> JobError + '_ {
    move |source| JobError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The runtime state root below a jobs dir.
pub fn runtime_root(jobs_dir: &Path) -> PathBuf {
    jobs_dir.join(".runc")
}

fn make_dir(dir: &Path, mode: u32) -> Result<(), JobError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(io_err(dir))
}

impl JobManager {
    /// Opens the manager with the real shims (`setup.shim_exe`): see [`Self::open_with`].
    pub fn open(setup: JobSetup, capacity: Arc<CapacityLedger>) -> Result<Arc<Self>, JobError> {
        let supervisor = Arc::new(ShimSupervisor::new(setup.shim_exe.clone()));
        Self::open_with(setup, capacity, supervisor)
    }

    /// Opens the manager: creates the jobs dir, loads every job from the store, recovers the
    /// ones that were active (`recovery`) and publishes their reservations. Shims
    /// are started by `supervisor` (the seam the tests' fake runtime implements).
    pub fn open_with(
        setup: JobSetup,
        capacity: Arc<CapacityLedger>,
        supervisor: Arc<dyn Supervisor>,
    ) -> Result<Arc<Self>, JobError> {
        let jobs_dir = setup.config.dir_under(&setup.state_dir);
        make_dir(&jobs_dir, 0o711)?;
        let runtime_root = runtime_root(&jobs_dir);
        // Made here (runc would make it on its first run) so a start can watch it.
        make_dir(&runtime_root, 0o700)?;
        let records = Records::open(setup.headroom.clone())?;
        if let Err(err) = setup.headroom.replenish() {
            tracing::warn!(error = %err, "no slack for the state database");
        }
        let layout = match CgroupLayout::detect(&setup.fs) {
            Ok(layout) => Some(layout),
            Err(err) => {
                tracing::warn!(error = %err, "no cgroup hierarchy: job telemetry unavailable");
                None
            }
        };
        let networks = match setup.config.network.cni() {
            Some(cni) => Some(JobNetworks::open(cni)?),
            None => None,
        };
        let manager = Arc::new(Self {
            runtime_root,
            jobs_dir,
            networks,
            config: setup.config,
            supervisor,
            runtime: setup.runtime,
            images: setup.images,
            gpu_accounting: setup.gpu_accounting,
            fs: setup.fs,
            layout,
            capacity,
            records,
            headroom: setup.headroom,
            admission: Mutex::new(()),
            ending: Mutex::new(HashMap::new()),
            gpus: Mutex::new(Vec::new()),
            sampler: Mutex::new(SamplerState::default()),
            sampler_wake: Mutex::new(None),
        });
        manager.records.read(|t| manager.publish(t));
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

    pub(super) fn cgroups_path(&self, id: &str) -> String {
        format!("/{}/{id}", self.config.cgroup_parent.trim_matches('/'))
    }

    // ---- readers: memory only ----

    /// One job (from memory: never waits for a disk or the runtime).
    pub fn get(&self, id: &str) -> Result<JobView, JobError> {
        self.records.get(id)
    }

    /// Jobs, newest first (from memory).
    pub fn list(&self, active_only: bool) -> Vec<JobView> {
        self.records.list(active_only)
    }

    /// What the positions of [`Self::list_page`] are relative to: a different value means
    /// another run of the agent, whose positions mean nothing here.
    pub fn list_epoch(&self) -> u64 {
        self.records.epoch
    }

    /// One page of jobs, newest first (from memory): at most `limit` jobs created before the
    /// job at `before` (a position this method returned; None = from the newest), each with
    /// its position. A position stays valid while the agent runs, however many jobs start or
    /// are forgotten meanwhile; it means nothing to another run of the agent.
    pub fn list_page(
        &self,
        active_only: bool,
        before: Option<u64>,
        limit: usize,
    ) -> Vec<(u64, JobView)> {
        self.records.list_page(active_only, before, limit)
    }

    /// The job now and a receiver of its later events (from memory).
    pub fn subscribe(
        &self,
        id: &str,
    ) -> Result<(JobView, broadcast::Receiver<JobEvent>), JobError> {
        self.records.subscribe(id)
    }

    /// A receiver of every job's state changes as they are published (from memory; never
    /// waited for by a change: a receiver that lags loses the oldest and reads the jobs again).
    pub fn watch_changes(&self) -> broadcast::Receiver<Arc<JobView>> {
        self.records.watch_changes()
    }

    /// The UUID of the GPU at `pci_bus_id`, when the inventory knows it (NVML).
    pub fn gpu_uuid(&self, pci_bus_id: &str) -> Option<String> {
        lock(&self.gpus)
            .iter()
            .find(|g| g.pci_bus_id.eq_ignore_ascii_case(pci_bus_id))
            .and_then(|g| g.uuid.clone())
    }

    /// Paths of a job's stdout and stderr logs.
    pub fn log_paths(&self, id: &str) -> Result<(PathBuf, PathBuf), JobError> {
        self.get(id)?;
        let dir = self.job_dir(id);
        Ok((dir.join(shim::STDOUT_LOG), dir.join(shim::STDERR_LOG)))
    }

    // ---- capacity ----

    /// Publishes what the active jobs of `table` hold. Called with the table's lock held, so
    /// publications happen in the order of the changes they reflect.
    pub(super) fn publish(&self, table: &Table) {
        let mut allocations = Allocations::default();
        for entry in table.jobs.values() {
            if entry.view.record.state.is_active() {
                add_allocation(&mut allocations, &entry.view, self.config.scratch_limit);
            }
        }
        self.capacity
            .set_allocations_and_disk(allocations, self.disk_available());
    }

    /// Whether `job` fits into the free capacity (RESOURCE_EXHAUSTED naming the resource),
    /// with the state filesystem's available space read now.
    pub(super) fn admit(&self, job: &ValidJob) -> Result<(), JobError> {
        if let Some(available) = self.disk_available() {
            self.capacity.set_disk_available(available, true);
        }
        let r = &job.spec.resources;
        fits(
            r,
            scratch_footprint(r.scratch_bytes, self.config.scratch_limit),
            &job.gpus,
            &self.capacity.current().capacity,
        )
    }

    /// What the state filesystem has available for jobs now: its available space less
    /// `[state] min_free_bytes` (None, logged, when it cannot be read).
    fn disk_available(&self) -> Option<u64> {
        match self.headroom.free_bytes() {
            Ok(free) => Some(free.saturating_sub(self.headroom.floor_bytes())),
            Err(err) => {
                tracing::debug!(error = %err, "state filesystem");
                None
            }
        }
    }

    // ---- the state filesystem ----

    /// RESOURCE_EXHAUSTED (naming `state.min_free_bytes`) while the state filesystem's free
    /// space is below its floor: StartJob and ImportImage ask before they take any.
    pub fn check_state_floor(&self) -> Result<(), JobError> {
        self.headroom.check_floor().map_err(|err| match err {
            HeadroomError::BelowFloor { .. } => JobError::ResourceExhausted {
                resource: "state.min_free_bytes".to_owned(),
                message: err
                    .to_string()
                    .trim_start_matches("state.min_free_bytes: ")
                    .to_owned(),
            },
            other => JobError::Headroom(other),
        })
    }

    /// The telemetry tick's look at the state filesystem: commits the job records kept in
    /// memory, says in capacity whether the free space is below the floor (the headroom logs
    /// each crossing), and makes the database's slack again once there is room.
    pub(super) fn watch_state_disk(&self) {
        self.records.flush();
        match self.headroom.status() {
            Ok(status) => {
                let available = status.free_bytes.saturating_sub(status.floor_bytes);
                self.capacity.set_disk_available(available, false);
                let note = status.below_floor().then(|| {
                    format!(
                        "disk: the state filesystem has less free space than [state] min_free_bytes \
                         ({} bytes): new jobs and image imports are refused",
                        status.floor_bytes
                    )
                });
                self.capacity.set_state_disk_note(note);
            }
            Err(err) => tracing::debug!(error = %err, "state filesystem"),
        }
        if self.headroom.released() {
            if let Err(err) = self.headroom.replenish() {
                tracing::debug!(error = %err, "state database slack");
            }
        }
    }

    // ---- images ----

    /// Removes an image (RemoveImage), refused while an active job runs it: the check and the
    /// rename of its rootfs happen under the admission lock, which StartJob holds while it
    /// checks the rootfs and adds the job (readers do not take it). The rootfs is deleted
    /// after the lock.
    pub fn remove_image(&self, name: &str) -> Result<Option<RemovedImage>, ImageError> {
        let mut held = None;
        let removed = self.images.remove(name, &mut |digest| {
            let admission = lock(&self.admission);
            let active: Vec<(String, String)> = self.records.read(|t| {
                t.in_order()
                    .filter(|e| e.view.record.state.is_active())
                    .map(|e| {
                        (
                            e.view.spec.job_id.clone(),
                            e.view.record.image_digest.clone(),
                        )
                    })
                    .collect()
            });
            let users: Vec<String> = active
                .into_iter()
                .filter(|(id, runs)| self.runs_image(id, runs, digest))
                .map(|(id, _)| id)
                .collect();
            if !users.is_empty() {
                return Err(format!("active jobs run it: {}", users.join(", ")));
            }
            held = Some(admission);
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
    fn runs_image(&self, id: &str, runs: &str, digest: &str) -> bool {
        if !runs.is_empty() {
            return runs == digest;
        }
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        let config = self.job_dir(id).join(shim::BUNDLE_DIR).join("config.json");
        match std::fs::read(&config).map(|b| serde_json::from_slice::<serde_json::Value>(&b)) {
            Ok(Ok(spec)) => spec["root"]["path"].as_str().is_some_and(|root| {
                Path::new(root).parent().and_then(Path::file_name)
                    == Some(std::ffi::OsStr::new(hex))
            }),
            // No bundle to tell: count it as a user rather than pull its rootfs away.
            _ => true,
        }
    }

    /// Stops the telemetry thread (running jobs keep running; a restarted agent finds them).
    pub fn shutdown(&self) {
        // Dropping the sender wakes the thread at once.
        lock(&self.sampler_wake).take();
    }
}

/// What a scratch space of `scratch_bytes` takes on the disk: with
/// [`ScratchLimit::Filesystem`], its filesystem image (see [`scratch::image_bytes`]).
pub(super) fn scratch_footprint(scratch_bytes: i64, mode: ScratchLimit) -> u64 {
    let bytes = u64::try_from(scratch_bytes).unwrap_or(0);
    match mode {
        ScratchLimit::Filesystem if bytes > 0 => scratch::image_bytes(bytes),
        _ => bytes,
    }
}

/// Adds what an active job holds to `allocations`: its CPU, memory, scratch disk (and what of
/// it is not on the disk yet: all of it until the job runs, for a polled scratch all of it
/// always, since what the job writes is measured only now and then), network rate limits (a
/// job without a limit, 0, allocates no network) and GPUs.
fn add_allocation(allocations: &mut Allocations, view: &JobView, mode: ScratchLimit) {
    let amount = |value: i64| u64::try_from(value).unwrap_or(0);
    let r = &view.spec.resources;
    allocations.cpu_millicores += amount(r.cpu_millicores);
    allocations.memory_bytes += amount(r.memory_bytes);
    let disk = scratch_footprint(r.scratch_bytes, mode);
    allocations.disk_bytes += disk;
    if view.record.state == JobState::Creating || mode == ScratchLimit::Polled {
        allocations.disk_unused_bytes += disk;
    }
    allocations.network_ingress_bits_per_second += amount(r.ingress_bits_per_second);
    allocations.network_egress_bits_per_second += amount(r.egress_bits_per_second);
    for gpu in &view.record.gpus {
        allocations
            .gpus
            .insert(gpu.clone(), view.spec.job_id.clone());
    }
}

fn exhausted(resource: &str, message: String) -> JobError {
    JobError::ResourceExhausted {
        resource: resource.to_owned(),
        message,
    }
}

/// Whether `resources` and the GPUs `gpus` (PCI bus ids) fit into the free amounts of
/// `capacity`; RESOURCE_EXHAUSTED names the first that does not. A rate limit of 0 (none)
/// always fits.
fn fits(
    resources: &Resources,
    disk_bytes: u64,
    gpus: &[String],
    capacity: &Capacity,
) -> Result<(), JobError> {
    let r = resources;
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
        capacity.cpu_millicores.free,
        "millicores",
    )?;
    check(
        "resources.memory_bytes",
        r.memory_bytes,
        capacity.memory_bytes.free,
        "bytes",
    )?;
    if disk_bytes > capacity.disk_bytes.free {
        return Err(exhausted(
            "resources.scratch_bytes",
            format!(
                "requested {} bytes ({disk_bytes} bytes of disk with its filesystem), {} free",
                r.scratch_bytes, capacity.disk_bytes.free
            ),
        ));
    }
    check(
        "resources.ingress_bits_per_second",
        r.ingress_bits_per_second,
        capacity.network_ingress_bits_per_second.free,
        "bits per second of network ingress",
    )?;
    check(
        "resources.egress_bits_per_second",
        r.egress_bits_per_second,
        capacity.network_egress_bits_per_second.free,
        "bits per second of network egress",
    )?;
    gpus.iter().try_for_each(|gpu| gpu_is_free(gpu, capacity))
}

/// Whether the GPU `gpu` (PCI bus id) is offered and free.
fn gpu_is_free(gpu: &str, capacity: &Capacity) -> Result<(), JobError> {
    let offered = capacity
        .gpus
        .iter()
        .find(|g| g.pci_bus_id.eq_ignore_ascii_case(gpu));
    match offered.map(|g| &g.assignment) {
        Some(GpuAssignment::Free) => Ok(()),
        Some(GpuAssignment::Reserved) => Err(exhausted(
            "resources.gpus",
            format!("GPU {gpu} is reserved for the host"),
        )),
        Some(GpuAssignment::Allocated(holder)) => Err(exhausted(
            "resources.gpus",
            format!("GPU {gpu} is allocated to job {holder:?}"),
        )),
        None => Err(exhausted(
            "resources.gpus",
            format!("GPU {gpu} is not offered by this host"),
        )),
    }
}

/// `/metrics` per-job series: every active job's newest sample (no cgroup read per scrape).
impl super::JobMetricsSource for JobManager {
    fn state_disk(&self) -> Option<super::StateDiskMetrics> {
        let status = self.headroom.status().ok()?;
        Some(super::StateDiskMetrics {
            status,
            unsaved_records: self.records.unsaved(),
        })
    }

    fn job_metrics(&self) -> Vec<super::JobMetrics> {
        self.records.read(|table| {
            table
                .in_order()
                .filter(|e| e.view.record.state.is_active())
                .map(|e| {
                    let stats = e.view.last_sample.as_ref().map(|s| &s.stats);
                    let get = |f: fn(&CgroupStats) -> Option<u64>| stats.and_then(f);
                    super::JobMetrics {
                        job_id: e.view.spec.job_id.clone(),
                        state: e.view.record.state.name().to_owned(),
                        cpu_seconds: get(|s| s.cpu_usage_nanos).map(|n| n as f64 / 1e9),
                        cpu_throttled_seconds: get(|s| s.cpu_throttled_nanos)
                            .map(|n| n as f64 / 1e9),
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
                        network: e.view.record.network.as_ref().map(|_| e.view.usage.network),
                    }
                })
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capacity::{compute, GpuTotal, Totals};
    use crate::config::CapacityConfig;
    use crate::jobs::spec::JobSpec;

    /// 4 CPUs, 1 GiB, 1 TiB of disk, 1 Gbit/s each way and one GPU; no reserve.
    fn capacity(allocations: &Allocations) -> Capacity {
        let totals = Totals {
            cpu_millicores: Some(4_000),
            memory_bytes: Some(1 << 30),
            disk_bytes: Some(1 << 40),
            network_bits_per_second: Some(1_000_000_000),
            gpus: vec![GpuTotal {
                pci_bus_id: "0000:01:00.0".into(),
                name: "A".into(),
                memory_total_bytes: 0,
            }],
            notes: Vec::new(),
        };
        let no_reserve = CapacityConfig {
            reserve_cpu_millicores: 0,
            reserve_memory: crate::config::Amount::Bytes(0),
            reserve_disk: crate::config::Amount::Bytes(0),
            ..CapacityConfig::default()
        };
        compute(&totals, &no_reserve, allocations)
    }

    fn view(id: &str, resources: Resources, gpus: &[&str]) -> JobView {
        JobView {
            spec: JobSpec {
                job_id: id.to_owned(),
                resources,
                ..JobSpec::default()
            },
            record: JobRecord {
                gpus: gpus.iter().map(|g| (*g).to_owned()).collect(),
                ..JobRecord::default()
            },
            usage: Usage::default(),
            last_sample: None,
        }
    }

    fn rates(ingress: i64, egress: i64) -> Resources {
        Resources {
            cpu_millicores: 500,
            memory_bytes: 1 << 20,
            ingress_bits_per_second: ingress,
            egress_bits_per_second: egress,
            ..Resources::default()
        }
    }

    fn refused_resource(result: Result<(), JobError>) -> String {
        match result {
            Err(JobError::ResourceExhausted { resource, message }) => {
                format!("{resource}: {message}")
            }
            other => panic!("not RESOURCE_EXHAUSTED: {other:?}"),
        }
    }

    #[test]
    fn active_jobs_allocate_their_rate_limits_and_a_job_without_one_nothing() {
        let mut allocations = Allocations::default();
        add_allocation(
            &mut allocations,
            &view("a", rates(600_000_000, 100_000_000), &["0000:01:00.0"]),
            ScratchLimit::Filesystem,
        );
        add_allocation(
            &mut allocations,
            &view("b", rates(0, 0), &[]),
            ScratchLimit::Filesystem,
        );
        add_allocation(
            &mut allocations,
            &view("c", rates(0, 50_000_000), &[]),
            ScratchLimit::Filesystem,
        );
        assert_eq!(allocations.network_ingress_bits_per_second, 600_000_000);
        assert_eq!(allocations.network_egress_bits_per_second, 150_000_000);
        assert_eq!(allocations.cpu_millicores, 1_500);
        assert_eq!(allocations.gpus["0000:01:00.0"], "a");
        let capacity = capacity(&allocations);
        assert_eq!(capacity.network_ingress_bits_per_second.free, 400_000_000);
        assert_eq!(capacity.network_egress_bits_per_second.free, 850_000_000);
    }

    #[test]
    fn a_rate_past_the_free_network_is_refused_naming_its_field() {
        let allocations = Allocations {
            network_ingress_bits_per_second: 600_000_000,
            ..Allocations::default()
        };
        let capacity = capacity(&allocations);
        assert!(fits(&rates(400_000_000, 1_000_000_000), 0, &[], &capacity).is_ok());
        assert!(
            fits(&rates(0, 0), 0, &[], &capacity).is_ok(),
            "no limit always fits"
        );
        assert_eq!(
            refused_resource(fits(&rates(400_000_001, 0), 0, &[], &capacity)),
            "resources.ingress_bits_per_second: requested 400000001 bits per second of network \
             ingress, 400000000 free"
        );
        assert!(
            refused_resource(fits(&rates(0, 1_000_000_001), 0, &[], &capacity))
                .starts_with("resources.egress_bits_per_second: ")
        );
        // A host whose network capacity is unknown (0) admits only jobs without a limit.
        let unknown = compute(
            &Totals::default(),
            &CapacityConfig::default(),
            &Allocations::default(),
        );
        assert!(fits(&Resources::default(), 0, &[], &unknown).is_ok());
        let limited = Resources {
            ingress_bits_per_second: 8_000,
            ..Resources::default()
        };
        assert!(refused_resource(fits(&limited, 0, &[], &unknown))
            .starts_with("resources.ingress_bits_per_second: "));
    }

    #[test]
    fn scratch_allocates_its_filesystem_and_is_unused_until_the_job_runs() {
        let scratch = Resources {
            scratch_bytes: 1 << 30,
            ..rates(0, 0)
        };
        let mut creating = view("a", scratch.clone(), &[]);
        let mut allocations = Allocations::default();
        add_allocation(&mut allocations, &creating, ScratchLimit::Filesystem);
        let image = scratch::image_bytes(1 << 30);
        assert_eq!(
            (allocations.disk_bytes, allocations.disk_unused_bytes),
            (image, image)
        );
        creating.record.state = JobState::Running;
        let mut allocations = Allocations::default();
        add_allocation(&mut allocations, &creating, ScratchLimit::Filesystem);
        assert_eq!(
            (allocations.disk_bytes, allocations.disk_unused_bytes),
            (image, 0),
            "its image is on the disk"
        );
        let mut allocations = Allocations::default();
        add_allocation(&mut allocations, &creating, ScratchLimit::Polled);
        assert_eq!(
            (allocations.disk_bytes, allocations.disk_unused_bytes),
            (1 << 30, 1 << 30)
        );
        // The filesystem's overhead must fit too.
        let mut capacity = capacity(&Allocations::default());
        capacity.disk_bytes.free = image - 1;
        let refused = refused_resource(fits(&scratch, image, &[], &capacity));
        assert!(
            refused.starts_with("resources.scratch_bytes: requested 1073741824 bytes"),
            "{refused}"
        );
        capacity.disk_bytes.free = image;
        assert!(fits(&scratch, image, &[], &capacity).is_ok());
    }

    #[test]
    fn gpus_must_be_offered_and_free() {
        let free = capacity(&Allocations::default());
        let gpu = ["0000:01:00.0".to_owned()];
        assert!(fits(&rates(0, 0), 0, &gpu, &free).is_ok());
        let taken = capacity(&Allocations {
            gpus: std::collections::BTreeMap::from([("0000:01:00.0".into(), "a".into())]),
            ..Allocations::default()
        });
        assert!(refused_resource(fits(&rates(0, 0), 0, &gpu, &taken)).contains("allocated to job"));
        let other = ["0000:09:00.0".to_owned()];
        assert!(refused_resource(fits(&rates(0, 0), 0, &other, &free)).contains("not offered"));
    }
}
