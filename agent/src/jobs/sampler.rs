//! The telemetry tick (`impl JobManager`; one thread for all jobs, started by
//! [`JobManager::spawn_sampler`]): each running job's cgroup is read, its usage counters
//! advance (monotonic, persisted in one transaction per tick, after the in-memory update),
//! its GPU time is counted from per-process accounting ([`crate::gpu::accounting`]), a sample
//! goes to its watchers, and its time and scratch limits are enforced. The tick also notices
//! ends the reaper did not see (shims of an earlier run) and forgets jobs past their
//! retention (`retention`).
//!
//! A job over a limit gets `stopping` and SIGTERM in the tick; its SIGKILL, after
//! [`super::manager::DEFAULT_STOP_GRACE`], comes from a later tick ([`SamplerState::kill_at`]): no thread per
//! stop, and the tick never waits for a job to end. The thread also wakes for a tick at the
//! earliest time limit or due SIGKILL ([`JobManager::next_deadline`]; a start wakes it to
//! look again), so a limit is enforced when it passes, not at the next regular tick.
//!
//! Usage stops counting at a job's time limit: its duration is never more than the limit, and
//! once it is being stopped for the limit its counters no longer advance (the stop grace is
//! the host's courtesy, not the buyer's to pay).

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use super::manager::JobManager;
use super::model::{JobGpuSample, JobRecord, JobState, Sample, Termination, Usage};
use super::records::lock;
use super::shim;
use crate::cgroup::{self, CgroupStats};
use crate::config::ScratchLimit;
use crate::gpu::accounting as gpu_usage;

/// The scratch dir's size is measured every this many telemetry ticks.
const SCRATCH_EVERY_TICKS: u64 = 5;
/// Least time between two ticks woken by deadlines (a deadline the tick could not clear, say
/// a stop it could not record, must not spin the thread).
const MIN_TICK_GAP: Duration = Duration::from_millis(50);

/// What the tick keeps from one round to the next.
#[derive(Debug, Default)]
pub struct SamplerState {
    ticks: u64,
    /// Every pid seen in each running GPU job's cgroup (see [`gpu_usage`]).
    gpu_pids: HashMap<String, BTreeSet<u32>>,
    /// Jobs sent SIGTERM without a caller waiting: when they get SIGKILL.
    pub(super) kill_at: HashMap<String, Instant>,
}

/// A job's figures of one GPU at one telemetry tick.
struct GpuFigures {
    /// GPU-milliseconds so far, for the usage counters.
    held_millis: Result<u64, String>,
    /// What it uses now, for the sample.
    now: JobGpuSample,
}

/// What a scratch dir tree holds: bytes and inodes (entries below it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TreeUsage {
    /// Every entry (file, dir, symlink, other) by the larger of its length and its allocated
    /// blocks: what it takes from the host's disk, sparse or not.
    pub bytes: u64,
    /// Entries (a hard link counts once per name).
    pub inodes: u64,
}

/// Bytes and inodes in a dir tree (symlinks not followed), the walk stopped as soon as it
/// holds more than `max_bytes` or `max_inodes` (its cost is bounded by the limits, however
/// large the tree).
pub fn tree_usage(path: &Path, max_bytes: u64, max_inodes: u64) -> TreeUsage {
    use std::os::unix::fs::MetadataExt;
    let mut usage = TreeUsage::default();
    let mut stack = vec![path.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            usage.inodes += 1;
            usage.bytes = usage
                .bytes
                .saturating_add(meta.len().max(meta.blocks().saturating_mul(512)));
            if meta.is_dir() {
                stack.push(entry.path());
            }
            if usage.bytes > max_bytes || usage.inodes > max_inodes {
                return usage;
            }
        }
    }
    usage
}

/// Bytes in a dir tree: every entry by the larger of its length and its allocated blocks
/// (symlinks not followed; not bounded).
pub fn dir_size(path: &Path) -> u64 {
    tree_usage(path, u64::MAX, u64::MAX).bytes
}

impl JobManager {
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
            let mut sampler = lock(&self.sampler);
            let pids = sampler.gpu_pids.entry(id.to_owned()).or_default();
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
    pub fn tick(&self) {
        self.watch_state_disk();
        let now = Instant::now();
        let now_ms = shim::now_millis();
        let jobs: Vec<(String, JobRecord, i64)> = self.records.read(|t| {
            t.jobs
                .values()
                .filter(|e| matches!(e.view.record.state, JobState::Running | JobState::Stopping))
                .map(|e| {
                    (
                        e.view.spec.job_id.clone(),
                        e.view.record.clone(),
                        e.view.spec.resources.scratch_bytes,
                    )
                })
                .collect()
        });
        let (measure_scratch, due_kills) = {
            let mut sampler = lock(&self.sampler);
            sampler.ticks += 1;
            let running = |id: &String| jobs.iter().any(|(job, _, _)| job == id);
            sampler.gpu_pids.retain(|id, _| running(id));
            sampler.kill_at.retain(|id, _| running(id));
            let due: Vec<String> = sampler
                .kill_at
                .iter()
                .filter(|(_, at)| **at <= now)
                .map(|(id, _)| id.clone())
                .collect();
            for id in &due {
                sampler.kill_at.remove(id);
            }
            (sampler.ticks.is_multiple_of(SCRATCH_EVERY_TICKS), due)
        };
        for id in due_kills {
            tracing::info!(job = %id, "job still runs after its stop grace: SIGKILL");
            if let Err(err) = self.runtime.kill(&id, "KILL") {
                tracing::warn!(job = %id, error = %err, "SIGKILL failed");
            }
        }
        let mut ended = Vec::new();
        let mut samples = Vec::new();
        // One read of the interfaces' counters for every networked job of this tick.
        let interfaces = jobs
            .iter()
            .any(|(_, record, _)| record.network.is_some())
            .then(crate::net::counters::read_proc_net_dev)
            .flatten();
        for (id, record, scratch_limit) in jobs {
            let dir = self.job_dir(&id);
            if dir.join(shim::EXIT_FILE).exists() || !self.supervisor.alive(&id, &dir) {
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
            let limit = u64::try_from(scratch_limit).unwrap_or(0);
            // Walked only as far as the limits (plus one entry): a tree of millions of dirs
            // costs no more than one at the limit.
            let scratch_used = measure_scratch.then(|| {
                tree_usage(
                    &dir.join(shim::SCRATCH_DIR),
                    limit,
                    self.config.scratch_max_inodes,
                )
            });
            let scratch_used_bytes = scratch_used.map(|u| u.bytes);
            // The inode limit is the polled mode's: a scratch filesystem has its own.
            let over_inodes = self.config.scratch_limit == ScratchLimit::Polled
                && scratch_used.is_some_and(|u| u.inodes > self.config.scratch_max_inodes);
            let gpu_used = self.gpu_used(&id, &record);
            let sample = Sample {
                taken_at_millis: now_ms,
                stats,
                scratch_used_bytes,
                gpus: gpu_used.iter().map(|f| f.now.clone()).collect(),
                network: super::network::traffic_in(interfaces.as_deref(), &record),
            };
            samples.push((id, record, scratch_limit, sample, gpu_used, over_inodes));
        }
        for id in ended {
            if let Err(err) = self.check_ended(&id) {
                tracing::warn!(job = %id, error = %err, "cannot record the job's end");
            }
        }
        let mut to_store = Vec::new();
        let mut to_stop = Vec::new();
        self.records.touch(|t| {
            for (id, record, scratch_limit, sample, gpu_used, over_inodes) in samples {
                let Some(entry) = t.jobs.get_mut(&id) else {
                    continue;
                };
                let usage = &mut entry.view.usage;
                if let Some(started) = record.started_at_millis {
                    usage.duration_millis = usage
                        .duration_millis
                        .max(billed_millis(&record, now_ms.saturating_sub(started)));
                }
                // Past the time limit: a sample for the watchers, nothing more to pay.
                if record.stop_cause != Some(Termination::TimeLimit) {
                    let held_for = entry.last_sample_at.map(|prev| now.duration_since(prev));
                    advance(usage, &sample, gpu_used, held_for);
                }
                usage.updated_at_millis = now_ms;
                entry.last_sample_at = Some(now);
                let sample = Arc::new(sample);
                entry.view.last_sample = Some(sample.clone());
                // No receivers is fine.
                let _ = entry
                    .events
                    .send(super::JobEvent::Telemetry(sample.clone(), usage.clone()));
                to_store.push((id.clone(), usage.clone()));
                if record.state == JobState::Running {
                    let cause = over_limit(&record, &sample, scratch_limit, now_ms)
                        .or(over_inodes.then_some(Termination::ScratchLimit));
                    if let Some(cause) = cause {
                        to_stop.push((id.clone(), cause));
                    }
                }
            }
        });
        if !to_store.is_empty() {
            self.records.store_usage(&to_store);
        }
        for (id, cause) in to_stop {
            tracing::info!(job = %id, cause = ?cause, "stopping job at its limit");
            match self.mark_stopping(&id, cause) {
                Ok(true) => self.terminate_later(&id),
                Ok(false) => {}
                Err(err) => {
                    tracing::warn!(job = %id, error = %err, "cannot record the stop; stopping anyway");
                    self.terminate_later(&id);
                }
            }
        }
        self.forget_expired(now_ms);
    }

    /// When the next tick is due for a deadline rather than the cadence: the earliest time
    /// limit of a running job or due SIGKILL.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let now = Instant::now();
        let now_ms = shim::now_millis();
        let limit = self.records.read(|t| {
            t.jobs
                .values()
                .filter(|e| e.view.record.state == JobState::Running)
                .filter_map(|e| {
                    let record = &e.view.record;
                    let end = record
                        .started_at_millis?
                        .saturating_add(record.time_limit_millis);
                    Some(now + Duration::from_millis(end.saturating_sub(now_ms)))
                })
                .min()
        });
        let kill = lock(&self.sampler).kill_at.values().min().copied();
        limit.into_iter().chain(kill).min()
    }

    /// Has the telemetry thread look at the deadlines again (a job started).
    pub(super) fn wake_sampler(&self) {
        if let Some(wake) = lock(&self.sampler_wake).as_ref() {
            // A thread that is gone needs no waking.
            let _ = wake.send(());
        }
    }

    /// Starts the telemetry thread: [`Self::tick`] every `[jobs] telemetry_interval_millis`,
    /// and at each deadline (the earliest time limit or due SIGKILL), until [`Self::shutdown`]
    /// (which wakes it at once: it sleeps on a channel, which a job start also wakes it on).
    pub fn spawn_sampler(self: &Arc<Self>) -> std::io::Result<std::thread::JoinHandle<()>> {
        let (wake_tx, wake_rx) = mpsc::channel::<()>();
        *lock(&self.sampler_wake) = Some(wake_tx);
        let manager = Arc::downgrade(self);
        let interval = self.config.telemetry_interval();
        std::thread::Builder::new()
            .name("job-telemetry".into())
            .spawn(move || {
                let mut next = Instant::now() + interval;
                let mut last_tick = Instant::now();
                loop {
                    let Some(deadline) = manager.upgrade().map(|m| m.next_deadline()) else {
                        return;
                    };
                    let wake_at =
                        deadline.map_or(next, |at| at.max(last_tick + MIN_TICK_GAP).min(next));
                    match wake_rx.recv_timeout(wake_at.saturating_duration_since(Instant::now())) {
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        // Woken: the deadlines changed.
                        Ok(()) => continue,
                        // Shut down (the sender dropped).
                        Err(mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                    let now = Instant::now();
                    if now >= next {
                        next += interval;
                        if next < now {
                            next = now + interval;
                        }
                    }
                    let Some(manager) = manager.upgrade() else {
                        return;
                    };
                    manager.tick();
                    last_tick = Instant::now();
                }
            })
    }
}

/// Advances a job's counters by one sample (`held_for`: the time since the previous sample,
/// over which its memory in use counts).
fn advance(
    usage: &mut Usage,
    sample: &Sample,
    gpu_used: Vec<GpuFigures>,
    held_for: Option<Duration>,
) {
    if let Some(cpu) = sample.stats.cpu_usage_nanos {
        usage.cpu_nanos = usage.cpu_nanos.max(cpu);
    }
    if let Some(traffic) = sample.network {
        usage.network = usage.network.max(traffic);
    }
    if let (Some(mem), Some(held_for)) = (sample.stats.memory_usage_bytes, held_for) {
        let add = u128::from(mem) * held_for.as_millis() / (1 << 20);
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
}

/// The running time a job is billed for after `ran_millis`: never past its time limit (none
/// in records older than the field).
pub(super) fn billed_millis(record: &JobRecord, ran_millis: u64) -> u64 {
    match record.time_limit_millis {
        0 => ran_millis,
        limit => ran_millis.min(limit),
    }
}

/// Which limit a running job is over at this sample, if any: time first, then scratch.
fn over_limit(
    record: &JobRecord,
    sample: &Sample,
    scratch_limit: i64,
    now_ms: u64,
) -> Option<Termination> {
    let over_time = record
        .started_at_millis
        .is_some_and(|s| now_ms.saturating_sub(s) >= record.time_limit_millis);
    let over_scratch = sample
        .scratch_used_bytes
        .is_some_and(|used| used > u64::try_from(scratch_limit).unwrap_or(0));
    if over_time {
        Some(Termination::TimeLimit)
    } else if over_scratch {
        Some(Termination::ScratchLimit)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_sizes() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("a")).unwrap();
        std::fs::write(dir.path().join("a/x"), vec![0u8; 1000]).unwrap();
        std::fs::write(dir.path().join("y"), vec![0u8; 24]).unwrap();
        let on_disk = |p: &str| {
            let m = std::fs::symlink_metadata(dir.path().join(p)).unwrap();
            m.len().max(m.blocks() * 512)
        };
        assert_eq!(
            tree_usage(dir.path(), u64::MAX, u64::MAX),
            TreeUsage {
                bytes: on_disk("a") + on_disk("a/x") + on_disk("y"),
                inodes: 3
            }
        );
        assert!(dir_size(dir.path()) >= 1024);
    }

    #[test]
    fn empty_dirs_count_and_the_walk_stops_at_the_limits() {
        // 100,000 mkdirs were once invisible to the size check: files' lengths only.
        let dir = tempfile::tempdir().unwrap();
        for i in 0..200 {
            std::fs::create_dir(dir.path().join(format!("d{i}"))).unwrap();
        }
        let all = tree_usage(dir.path(), u64::MAX, u64::MAX);
        assert_eq!(all.inodes, 200);
        assert!(all.bytes >= 200 * 4096, "{all:?}");
        let cut = tree_usage(dir.path(), u64::MAX, 50);
        assert_eq!(cut.inodes, 51, "stops one past the inode limit");
        let cut = tree_usage(dir.path(), 10_000, u64::MAX);
        assert!(cut.inodes < 10 && cut.bytes > 10_000, "{cut:?}");
    }
}
