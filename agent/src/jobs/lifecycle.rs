//! A job's life: start, stop and end (`impl JobManager`). Everything here blocks (files, the
//! runtime, the shim): the API calls it on the blocking pool, the sampler on its own thread.
//!
//! - **Start** ([`JobManager::start`]): validate; under the admission lock, answer an existing
//!   id (idempotency: waits, woken by the records, until it is past `creating`), refuse a new
//!   one while the state filesystem is below `[state] min_free_bytes`, check the
//!   request against the free capacity (RESOURCE_EXHAUSTED naming the resource; a GPU is never
//!   given twice, nor a host port) and add it in memory with its reservation published; then
//!   commit the record (`creating`), attach its network, write the bundle, start the shim and
//!   wait until the runtime says `running`; record `running` (or `failed`) before answering.
//! - **The wait for `running`** ([`JobManager::wait_started`]) sleeps on events
//!   ([`super::wait`]): inotify on the job dir (`exit.json`, `container.pid`) and on the
//!   runtime's state dir (runc's `exec.fifo` removed once the container runs), and the shim's
//!   pidfd. Only a runtime without state files ([`super::JobRuntime::state_dir`] `None`) or
//!   one whose files do not answer is polled (1 ms, backing off to 20 ms after 2 s).
//! - **Stop** ([`JobManager::stop`]): `stopping` is recorded, SIGTERM, SIGKILL after the
//!   grace; the waits for `exit.json` are inotify and pidfd events. No record write can hold a
//!   stop back: a commit that fails on a full disk keeps the change in memory (`records`),
//!   and the signals are sent whatever the record did. A stopped job whose shim could not write
//!   `exit.json` (a full disk again) is recorded stopped with its cause, without exit code.
//! - **End** ([`JobManager::finish`]): from the shim's `exit.json` (or why there is none); the
//!   record gets its final state, exit code and termination reason (OOM kill when the cgroup
//!   counted one), its network is detached (its last traffic counted first), and the
//!   reservation is released. Found by stop, by the shim's reaper the
//!   moment the shim this agent started exits, or by the sampler's tick. Recording an end is
//!   idempotent: the first one wins.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::bundle::{self, DeviceNode};
use super::gpus::GpuSetup;
use super::manager::{JobManager, DEFAULT_STOP_GRACE, KILL_WAIT, START_TIMEOUT};
use super::model::{JobRecord, JobState, JobView, Termination, Usage};
use super::records::lock;
use super::scratch::{self, ScratchError};
use super::shim::{self, ExitRecord, ShimArgs};
use super::spec::{self, JobSpec, ValidJob};
use super::wait::Waiter;
use super::JobError;

/// Why a container could not be started (the job is recorded as start-failed with this
/// message; each variant prints its cause once, in its message).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A job dir no record owned could not be replaced.
    #[error("cannot remove the stale {}: {error}", dir.display())]
    StaleDir {
        /// The dir.
        dir: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// The job dir could not be made.
    #[error("cannot create {}: {error}", dir.display())]
    JobDir {
        /// The dir.
        dir: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// The scratch dir could not be made (or a stale one removed).
    #[error("{0}")]
    Scratch(ScratchError),
    /// The bundle (device nodes, runtime spec) could not be made or written.
    #[error("{0}")]
    Bundle(Box<JobError>),
    /// The job's network could not be attached.
    #[error("{0}")]
    Network(Box<JobError>),
    /// The shim could not be started.
    #[error("cannot start the job shim: {0}")]
    Shim(std::io::Error),
    /// The shim ended without an exit record (the tail of its log).
    #[error("the job shim ended without recording an exit: {0}")]
    ShimEnded(String),
    /// The container did not run in time (the tail of its stderr).
    #[error("the container was not running after {} s: {stderr}", after.as_secs())]
    Timeout {
        /// How long it was waited for.
        after: Duration,
        /// The tail of its stderr.
        stderr: String,
    },
}

/// The longest sleep of a start wait that has its events: a safety net, never the pace.
const EVENT_SAFETY_NET: Duration = Duration::from_millis(100);
/// How long a start without events polls every millisecond before it backs off.
const FAST_POLL: Duration = Duration::from_secs(2);

impl JobManager {
    /// Starts a job (see the module doc); returns it and whether it was created now.
    pub fn start(self: &Arc<Self>, spec: &JobSpec) -> Result<(JobView, bool), JobError> {
        let gpus = lock(&self.gpus).clone();
        let pid_max = spec::pid_max(&self.fs);
        let valid = spec::validate(spec, self.images.as_ref(), &gpus, pid_max, &self.config)?;
        let gpu_setup = GpuSetup::select(&self.fs, &self.config, &valid.gpus, &gpus);
        let id = valid.spec.job_id.clone();
        let host_ports = {
            let admission = lock(&self.admission);
            let existing = self
                .records
                .read(|t| t.jobs.get(&id).map(|e| e.view.spec == *spec));
            match existing {
                Some(false) => return Err(JobError::AlreadyExists(id)),
                Some(true) => {
                    drop(admission);
                    let view = self
                        .records
                        .wait_not_creating(&id, START_TIMEOUT + Duration::from_secs(5))?;
                    return Ok((view, false));
                }
                None => self.check_state_floor()?,
            }
            // Under the admission lock, so an image removal (which renames the rootfs under it
            // too) either sees this job or happened before it.
            if !valid.image.rootfs.is_dir() {
                return Err(JobError::InvalidArgument {
                    field: "image".to_owned(),
                    message: format!("{} was removed", spec::quote(&spec.image)),
                });
            }
            let host_ports = self.allocate_ports(&valid)?;
            let record = JobRecord {
                state: JobState::Creating,
                image_digest: valid.image.manifest_digest.clone(),
                created_at_millis: shim::now_millis(),
                gpus: valid.gpus.clone(),
                cgroups_path: self.cgroups_path(&id),
                time_limit_millis: u64::try_from(valid.time_limit.as_millis()).unwrap_or(u64::MAX),
                notes: gpu_setup.notes.clone(),
                ..JobRecord::default()
            };
            let view = JobView {
                spec: spec.clone(),
                record,
                usage: Usage::default(),
                last_sample: None,
            };
            if let Err(err) = self
                .records
                .add(view, |_| self.admit(&valid), |t| self.publish(t))
            {
                self.release_ports(&valid, &host_ports);
                return Err(err);
            }
            host_ports
        };
        tracing::info!(job = %id, image = %spec.image, "starting job");
        // The record first (its commit needs no fsync: see `StateStore::job_insert`), then the
        // job dir and bundle, on this thread: a thread to overlap them cost more than it saved.
        // An agent that dies in between leaves a `creating` record with no shim, which the
        // restart records as start-failed.
        if let Err(err) = self.records.commit_new(&id) {
            // Nothing of it was made or started: it goes from memory, its reservation too.
            self.records
                .drop_in_memory(&[id.as_str()].into(), |t| self.publish(t));
            self.release_ports(&valid, &host_ports);
            return Err(err);
        }
        let launched = self
            .prepare(&valid, &host_ports, &gpu_setup)
            .and_then(|shim_args| self.launch(&shim_args));
        let outcome = self.record_launch(id, launched);
        // After the record, so the next standby's exec (~6 ms of CPU) does not compete with
        // this start.
        self.supervisor.after_start();
        outcome
    }

    /// Records how a launch went: running, already ended, or failed to start.
    fn record_launch(
        &self,
        id: String,
        launched: Result<Option<ExitRecord>, StartError>,
    ) -> Result<(JobView, bool), JobError> {
        match launched {
            Ok(None) => {
                let view = self.mark_running(&id, "container running")?;
                // Its time limit is a new deadline for the telemetry thread.
                self.wake_sampler();
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
            Err(err) => {
                // With its causes: a state-store error's own text does not say what SQLite said.
                let message = crate::inventory::error_chain(&err);
                tracing::warn!(job = %id, error = %message, "job start failed");
                self.supervisor.kill(&id, &self.job_dir(&id));
                self.remove_container(&id);
                self.finish(&id, None, Termination::StartFailed, &message)?;
                Err(JobError::StartFailed { id, message })
            }
        }
    }

    /// `creating` -> `running` (a job that ended meanwhile stays ended).
    pub(super) fn mark_running(&self, id: &str, message: &str) -> Result<JobView, JobError> {
        self.records.update(
            id,
            message,
            |record| {
                if record.state != JobState::Creating {
                    return false;
                }
                record.state = JobState::Running;
                record.started_at_millis = Some(shim::now_millis());
                true
            },
            |t| self.publish(t),
        )
    }

    /// Makes the job dir (replacing one that no record owns, which never had a shim: left by an
    /// older agent that wrote the dir before the record, or by a forgotten job whose dir could
    /// not be removed), its scratch dir and bundle; returns the shim's arguments.
    fn prepare(
        &self,
        job: &ValidJob,
        host_ports: &[u16],
        gpu_setup: &GpuSetup,
    ) -> Result<ShimArgs, StartError> {
        use std::os::unix::fs::DirBuilderExt;
        let id = &job.spec.job_id;
        let dir = self.job_dir(id);
        if std::fs::symlink_metadata(&dir).is_ok() {
            tracing::warn!(job = %id, "replacing a job dir that no record owned");
            scratch::remove(&dir).map_err(StartError::Scratch)?;
            std::fs::remove_dir_all(&dir).map_err(|error| StartError::StaleDir {
                dir: dir.clone(),
                error,
            })?;
        }
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|error| StartError::JobDir {
                dir: dir.clone(),
                error,
            })?;
        let scratch_bytes = u64::try_from(job.spec.resources.scratch_bytes).unwrap_or(0);
        let scratch = scratch::make(&dir, scratch_bytes, job.user, self.config.scratch_limit)
            .map_err(StartError::Scratch)?;
        let bundle_err = |e: JobError| StartError::Bundle(Box::new(e));
        let gpu_nodes: Vec<DeviceNode> = gpu_setup.device_nodes(&self.fs).map_err(bundle_err)?;
        for gpu in &job.gpus {
            // Not fatal: the job runs, and its usage says why GPU-seconds are missing.
            if let Err(err) = self.gpu_accounting.prepare(gpu) {
                tracing::warn!(job = %id, gpu = %gpu, error = %err, "GPU accounting unavailable");
            }
        }
        let network = self
            .attach_network(job, host_ports, &dir)
            .map_err(|e| StartError::Network(Box::new(e)))?;
        let mut spec = bundle::runtime_spec(
            job,
            scratch.as_deref(),
            &self.cgroups_path(id),
            &gpu_nodes,
            network.as_ref().map(|n| n.bundle()),
        )
        .map_err(bundle_err)?;
        gpu_setup.apply(&mut spec, &self.fs).map_err(bundle_err)?;
        bundle::write_bundle(&dir.join(shim::BUNDLE_DIR), &spec).map_err(bundle_err)?;
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
    fn launch(self: &Arc<Self>, shim_args: &ShimArgs) -> Result<Option<ExitRecord>, StartError> {
        let id = shim_args.id.clone();
        // Watching before the shim starts: nothing it writes can be missed.
        let mut waiter = Waiter::new();
        waiter.watch_dir(&shim_args.job_dir);
        let manager = Arc::downgrade(self);
        let on_exit = Box::new(move || {
            // The shim ended: record the job's end now rather than at the next tick.
            if let Some(manager) = manager.upgrade() {
                if let Err(err) = manager.check_ended(&id) {
                    tracing::warn!(job = %id, error = %err, "cannot record the job's end");
                }
            }
        });
        let launched = self
            .supervisor
            .launch(shim_args, on_exit)
            .map_err(StartError::Shim)?;
        if let Some(pidfd) = launched.pidfd {
            waiter.watch_pidfd(pidfd);
        }
        self.wait_started(&shim_args.id, &shim_args.job_dir, waiter)
    }

    /// Waits until the shim's container runs (`Ok(None)`) or has ended (`Ok(Some(exit))`); see
    /// the module doc. The checks are file reads (`exit.json`, the init pid from
    /// `container.pid` or [`super::JobRuntime::init_pid`], then
    /// [`super::JobRuntime::started`]), a few microseconds each, made after every event. A
    /// shim that ends without an exit record ends the wait at once.
    pub(super) fn wait_started(
        &self,
        id: &str,
        dir: &Path,
        mut waiter: Waiter,
    ) -> Result<Option<ExitRecord>, StartError> {
        let pid_file = dir.join(shim::CONTAINER_PID_FILE);
        let state_dir = self.runtime.state_dir(id);
        let mut events = waiter.watch_dir(dir)
            && state_dir
                .as_deref()
                .and_then(Path::parent)
                .is_some_and(|root| waiter.watch_dir(root));
        let shim_pid_watched = waiter.has_pid() || self.watch_shim(id, dir, &mut waiter);
        let started_at = Instant::now();
        let mut slow_pause = Duration::from_millis(1);
        loop {
            if let Some(state_dir) = &state_dir {
                // Once the runtime has made it; its changes then wake this wait.
                events &= waiter.watch_dir(state_dir) || !state_dir.exists();
            }
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
            let shim_ended = if shim_pid_watched {
                waiter.exited()
            } else {
                !self.supervisor.alive(id, dir)
            };
            if shim_ended {
                // It may have written its record just before ending.
                return shim::read_exit(dir).map(Some).ok_or_else(|| {
                    StartError::ShimEnded(shim::stderr_tail(&dir.join(shim::SHIM_LOG)))
                });
            }
            let waited = started_at.elapsed();
            if waited > START_TIMEOUT {
                return Err(StartError::Timeout {
                    after: START_TIMEOUT,
                    stderr: shim::stderr_tail(&dir.join(shim::STDERR_LOG)),
                });
            }
            let pause = if asked_runtime || (!events && waited > FAST_POLL) {
                slow_pause = (slow_pause * 2).min(Duration::from_millis(20));
                slow_pause
            } else if events {
                EVENT_SAFETY_NET
            } else {
                Duration::from_millis(1)
            };
            waiter.wait(pause.min(START_TIMEOUT.saturating_sub(waited)));
        }
    }

    /// Watches job `id`'s live shim's exit; false when there is none or no pidfd.
    fn watch_shim(&self, id: &str, dir: &Path, waiter: &mut Waiter) -> bool {
        let Some(pid) = self.supervisor.pid(id, dir) else {
            return false;
        };
        // Checked again after the pidfd pins the process: the pid may have been reused.
        waiter.watch_pid(pid) && self.supervisor.pid(id, dir) == Some(pid)
    }

    /// Kills and deletes a container (errors logged: the container may be gone already).
    pub(super) fn remove_container(&self, id: &str) {
        if let Err(err) = self.runtime.kill(id, "KILL") {
            tracing::debug!(container = %id, error = %err, "kill failed");
        }
        if let Err(err) = self.runtime.delete(id, true) {
            tracing::warn!(container = %id, error = %err, "cannot delete container");
        }
    }

    /// Records the end of a job: from its exit record, or with `why` when there is none. A job
    /// that ended already stays as it was recorded. One end at a time per job (a stop, the
    /// shim's reaper and the sampler may find the same end): the container is deleted and the
    /// network detached once, and a second caller returns only after the first is done.
    pub(super) fn finish(
        &self,
        id: &str,
        exit: Option<ExitRecord>,
        why: Termination,
        message: &str,
    ) -> Result<JobView, JobError> {
        let ending = self.end_lock(id);
        let _ending = lock(&ending);
        let finished = self.finish_once(id, exit, why, message);
        lock(&self.ending).remove(id);
        finished
    }

    /// The lock of job `id`'s end.
    fn end_lock(&self, id: &str) -> Arc<std::sync::Mutex<()>> {
        lock(&self.ending).entry(id.to_owned()).or_default().clone()
    }

    fn finish_once(
        &self,
        id: &str,
        exit: Option<ExitRecord>,
        why: Termination,
        message: &str,
    ) -> Result<JobView, JobError> {
        let now = shim::now_millis();
        // As recorded (not brought up to now as readers see it: the end is `finished_at`).
        let current = self
            .records
            .read(|t| t.jobs.get(id).map(|e| e.view.clone()))
            .ok_or_else(|| JobError::NotFound(id.to_owned()))?;
        if !current.record.state.is_active() {
            return Ok(current);
        }
        let finished_at = exit.as_ref().map_or(now, |e| e.finished_at_millis);
        // A job that ended before it was seen running: its start is when the runtime wrote
        // the container's pid.
        let started_at = current.record.started_at_millis.or_else(|| {
            exit.as_ref().filter(|e| e.started)?;
            let meta = std::fs::metadata(self.job_dir(id).join(shim::CONTAINER_PID_FILE)).ok()?;
            let since = meta
                .modified()
                .ok()?
                .duration_since(std::time::UNIX_EPOCH)
                .ok()?;
            u64::try_from(since.as_millis()).ok()
        });
        let (state, termination, exit_code, text) =
            outcome(exit.as_ref(), current.record.stop_cause, why, message);
        let mut usage = current.usage;
        if let Some(started) = started_at {
            let ran = finished_at.saturating_sub(started);
            usage.duration_millis = usage
                .duration_millis
                .max(super::sampler::billed_millis(&current.record, ran));
        }
        // Stopped at its time limit: the counters stay as the limit's tick left them.
        if current.record.stop_cause != Some(Termination::TimeLimit) {
            if let Some(cpu) = exit.as_ref().and_then(|e| e.cpu_usage_nanos) {
                usage.cpu_nanos = usage.cpu_nanos.max(cpu);
            }
            // The last traffic counts, read before the detach removes the interface.
            if let Some(traffic) = super::network::traffic(&current.record) {
                usage.network = usage.network.max(traffic);
            }
        }
        usage.updated_at_millis = now;
        self.records.store_usage(&[(id.to_owned(), usage.clone())]);
        self.records.touch(|t| {
            if let Some(entry) = t.jobs.get_mut(id) {
                entry.view.usage = usage;
            }
        });
        // The shim deletes the container before it records the exit; make sure anyway (a
        // delete that failed under load must not leave an untracked container).
        if let Err(err) = self.runtime.delete(id, true) {
            tracing::warn!(job = %id, error = %err, "cannot delete the ended container");
        }
        self.detach_network(id, &current.record);
        let dropped = exit.as_ref().map_or(0, |e| e.log_dropped_bytes);
        let view = self.records.update(
            id,
            &text,
            |record| {
                if !record.state.is_active() {
                    return false;
                }
                record.state = state;
                record.termination = Some(termination);
                record.exit_code = exit_code;
                record.finished_at_millis = Some(finished_at);
                record.started_at_millis = record.started_at_millis.or(started_at);
                record.log_dropped_bytes = dropped;
                true
            },
            |t| self.publish(t),
        )?;
        tracing::info!(job = %id, state = view.record.state.name(), termination = ?view.record.termination, exit_code = ?view.record.exit_code, "job ended");
        if let Err(err) = scratch::remove(&self.job_dir(id)) {
            tracing::warn!(job = %id, error = %err, "cannot remove the scratch space");
        }
        Ok(view)
    }

    /// Stops a job: SIGTERM, SIGKILL after `grace`; returns it once ended (or, if the runtime
    /// does not confirm within the kill wait, as `stopping`; the sampler finishes it).
    pub fn stop(&self, id: &str, grace: Duration) -> Result<JobView, JobError> {
        let view = self
            .records
            .wait_not_creating(id, START_TIMEOUT + Duration::from_secs(5))?;
        if !view.record.state.is_active() {
            return Ok(view);
        }
        // The stop happens whatever the record does (a full disk keeps the change in memory;
        // see `records`).
        if let Err(err) = self.mark_stopping(id, Termination::StopRequested) {
            tracing::error!(job = %id, error = %err, "cannot record the stop request; stopping anyway");
        }
        self.terminate(id, grace)
    }

    /// Records that a stop was asked for (state `stopping`, the first cause kept); false when
    /// the job is not active (nothing to stop).
    pub(super) fn mark_stopping(&self, id: &str, cause: Termination) -> Result<bool, JobError> {
        let view = self.records.update(
            id,
            &format!("stop requested ({cause:?})"),
            |record| {
                if record.state == JobState::Stopping || !record.state.is_active() {
                    return false;
                }
                record.state = JobState::Stopping;
                record.stop_cause.get_or_insert(cause);
                true
            },
            |t| self.publish(t),
        )?;
        Ok(view.record.state.is_active())
    }

    /// SIGTERM, SIGKILL after `grace`, then records the end once the shim has.
    fn terminate(&self, id: &str, grace: Duration) -> Result<JobView, JobError> {
        if let Err(err) = self.runtime.kill(id, "TERM") {
            tracing::warn!(job = %id, error = %err, "SIGTERM failed");
        }
        if !self.wait_for_exit(id, grace) {
            if let Err(err) = self.runtime.kill(id, "KILL") {
                tracing::warn!(job = %id, error = %err, "SIGKILL failed");
            }
            self.wait_for_exit(id, KILL_WAIT);
        }
        self.check_ended(id)
    }

    /// Waits (at most `timeout`) for the shim's `exit.json` (inotify) or its exit (pidfd);
    /// true when the record is there.
    fn wait_for_exit(&self, id: &str, timeout: Duration) -> bool {
        let dir = self.job_dir(id);
        let exit_file = dir.join(shim::EXIT_FILE);
        let deadline = Instant::now() + timeout;
        let mut waiter = Waiter::new();
        waiter.watch_dir(&dir);
        let shim_watched = self.watch_shim(id, &dir, &mut waiter);
        loop {
            if exit_file.exists() {
                return true;
            }
            if shim_watched && waiter.exited() {
                // Its record, if any, was written before it exited.
                return exit_file.exists();
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            waiter.wait(deadline - now);
        }
    }

    /// Finishes the job if its shim has recorded the exit (or died without); returns it.
    pub(super) fn check_ended(&self, id: &str) -> Result<JobView, JobError> {
        let dir = self.job_dir(id);
        if let Some(exit) = shim::read_exit(&dir) {
            return self.finish(id, Some(exit), Termination::Exited, "");
        }
        let view = self.get(id)?;
        if view.record.state.is_active()
            && view.record.state != JobState::Creating
            && !self.supervisor.alive(id, &dir)
        {
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

    /// Sends SIGTERM to a job being stopped without a caller waiting (a limit, or a stop found
    /// after a restart); the sampler sends SIGKILL after [`DEFAULT_STOP_GRACE`].
    pub(super) fn terminate_later(&self, id: &str) {
        if let Err(err) = self.runtime.kill(id, "TERM") {
            tracing::warn!(job = %id, error = %err, "SIGTERM failed");
        }
        lock(&self.sampler)
            .kill_at
            .insert(id.to_owned(), Instant::now() + DEFAULT_STOP_GRACE);
    }
}

/// How a process ended, for a job's message: `exit code 3`, `exit code 137 (signal 9)`.
fn exit_text(code: Option<i32>) -> String {
    match code {
        Some(code @ 129..=192) => format!("exit code {code} (signal {})", code - 128),
        Some(code) => format!("exit code {code}"),
        None => "no exit code recorded".to_owned(),
    }
}

/// Why a stop was asked for, for a job's message.
fn stop_text(cause: Termination) -> &'static str {
    match cause {
        Termination::StopRequested => "stopped on request (StopJob)",
        Termination::TimeLimit => "stopped at its time limit",
        Termination::ScratchLimit => "stopped: its scratch space grew past resources.scratch_bytes",
        Termination::Exited
        | Termination::OomKilled
        | Termination::StartFailed
        | Termination::Lost => "stopped",
    }
}

/// The final state, termination, exit code and message of a job, from its exit record (or
/// `why` and `message` when there is none) and the cause of a stop, if one was asked for. The
/// message always explains this last transition.
fn outcome(
    exit: Option<&ExitRecord>,
    stop_cause: Option<Termination>,
    why: Termination,
    message: &str,
) -> (JobState, Termination, Option<i32>, String) {
    match exit {
        Some(e) if !e.started => (
            JobState::Failed,
            Termination::StartFailed,
            None,
            e.error
                .clone()
                .filter(|error| !error.is_empty())
                .unwrap_or_else(|| "the container could not be started".to_owned()),
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
            Some(cause) => (
                JobState::Stopped,
                cause,
                e.exit_code,
                format!("{}; {}", stop_text(cause), exit_text(e.exit_code)),
            ),
            None if e.exit_code == Some(0) => (
                JobState::Succeeded,
                Termination::Exited,
                e.exit_code,
                "exited on its own with exit code 0".to_owned(),
            ),
            None => (
                JobState::Failed,
                Termination::Exited,
                e.exit_code,
                match e.error.as_deref().filter(|error| !error.is_empty()) {
                    Some(error) => error.to_owned(),
                    None => format!("exited on its own with {}", exit_text(e.exit_code)),
                },
            ),
        },
        // Stopped as asked, but the shim could not record the exit (e.g. on a full disk).
        None if why == Termination::Lost && stop_cause.is_some() => (
            JobState::Stopped,
            stop_cause.unwrap_or(why),
            None,
            message.to_owned(),
        ),
        None => (JobState::Failed, why, None, message.to_owned()),
    }
}
