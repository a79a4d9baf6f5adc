//! [`Records`]: the jobs in memory and in SQLite, kept apart so that readers never wait for a
//! disk.
//!
//! - The **table** (`table`, a `Mutex` held only for in-memory work: no I/O, no runtime call,
//!   no fsync, ever) is what readers see: GetJob, ListJobs, WatchJob's first view and
//!   `/metrics` answer from it without waiting for anything but another in-memory update.
//! - The **writer** (`writer`, the [`StateStore`] behind its own `Mutex`) serializes changes.
//!   A change reads the job's current record from the table, commits the new one to SQLite
//!   (its fsync waited for only by other writers), and only then publishes it into the table
//!   and to the job's watchers. So the table never shows a state that is not on disk yet, and
//!   a change never makes a reader wait for its commit.
//! - Every published state change notifies `changed` (a `Condvar` on the table), which a
//!   duplicate StartJob or a StopJob of a job still `creating` waits on instead of polling.
//!
//! - A change whose commit fails is **not lost and holds nothing up**: when SQLite says the
//!   filesystem is full, the state database's slack ([`Headroom`]) is released and the commit
//!   retried; if it still fails, the change is published all the same and kept in memory
//!   (`pending`, in order), logged, and written before the next change and at every telemetry
//!   tick until a commit succeeds ([`Records::flush`]). So a stop, a limit or an end is never
//!   held back by a full disk, and the record reaches its final state once space returns. Until
//!   then readers see changes that are not on disk yet ([`Records::unsaved`] counts them).
//!
//! Lock order: `writer`, then `table`. Nothing else is held while `table` is.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::broadcast;

use super::model::{fresh, JobEvent, JobRecord, JobState, JobView, Usage};
use super::shim;
use super::spec::JobSpec;
use super::JobError;
use crate::inventory::error_chain;
use crate::state::headroom::Headroom;
use crate::state::{JobRow, StateError, StateStore};

/// Events buffered per watcher.
const EVENT_QUEUE: usize = 256;
/// State changes buffered per watcher of every job ([`Records::watch_changes`]).
const CHANGE_QUEUE: usize = 1024;

/// A lock that ignores poisoning: a panic mid-update leaves plain data that is still usable.
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One job in memory.
pub(super) struct Entry {
    /// What readers see.
    pub view: JobView,
    /// Its watchers.
    pub events: broadcast::Sender<JobEvent>,
    /// When the previous sample was taken (for integrating memory).
    pub last_sample_at: Option<Instant>,
    /// Its place in creation order in this run of the agent (ListJobs pages by it).
    pub seq: u64,
}

impl Entry {
    fn new(view: JobView, seq: u64) -> Self {
        Self {
            view,
            seq,
            events: broadcast::channel(EVENT_QUEUE).0,
            last_sample_at: None,
        }
    }
}

/// Every job in memory.
#[derive(Default)]
pub(super) struct Table {
    /// By id.
    pub jobs: HashMap<String, Entry>,
    /// Ids in creation order.
    pub order: Vec<String>,
    /// The next entry's [`Entry::seq`].
    next_seq: u64,
}

impl Table {
    /// Jobs in creation order.
    pub fn in_order(&self) -> impl DoubleEndedIterator<Item = &Entry> {
        self.order.iter().filter_map(|id| self.jobs.get(id))
    }

    fn insert(&mut self, id: String, view: JobView) {
        self.next_seq += 1;
        self.order.push(id.clone());
        self.jobs.insert(id, Entry::new(view, self.next_seq));
    }
}

/// The jobs' records: the in-memory table readers use and the SQLite store writers commit to.
pub(super) struct Records {
    /// When this run's table was loaded (unix ms): what [`Entry::seq`] numbers are relative to.
    pub epoch: u64,
    table: Mutex<Table>,
    changed: Condvar,
    /// Every job's published state changes (usage receipts follow them).
    all_changes: broadcast::Sender<Arc<JobView>>,
    writer: Mutex<Writer>,
    headroom: Arc<Headroom>,
    /// Changes published but not committed yet (a copy of `writer.pending.len()` for readers).
    unsaved: AtomicUsize,
    /// Whether the last usage write failed (logged once per failing run).
    usage_failing: AtomicBool,
}

/// A job update that could not be committed yet.
#[derive(Debug)]
struct Pending {
    id: String,
    state: &'static str,
    record_json: String,
    at_millis: i64,
    message: String,
}

/// The store and the updates waiting for it, behind one lock.
pub(super) struct Writer {
    store: StateStore,
    pending: VecDeque<Pending>,
}

impl Writer {
    /// Commits one update; on a full filesystem, releases the slack and tries once more.
    fn write(&mut self, headroom: &Headroom, p: &Pending) -> Result<(), StateError> {
        write(&mut self.store, headroom, p)
    }

    /// Commits the pending updates in order, up to the first that fails.
    fn flush(&mut self, headroom: &Headroom) -> Result<(), StateError> {
        while let Some(p) = self.pending.front() {
            write(&mut self.store, headroom, p)?;
            self.pending.pop_front();
            if self.pending.is_empty() {
                tracing::info!("job records kept in memory are committed");
            }
        }
        Ok(())
    }
}

fn write(store: &mut StateStore, headroom: &Headroom, p: &Pending) -> Result<(), StateError> {
    let mut once = || store.job_update(&p.id, p.state, &p.record_json, p.at_millis, &p.message);
    match once() {
        Err(err) if err.is_disk_full() && headroom.release() => once(),
        other => other,
    }
}

/// A commit refused for a full filesystem is RESOURCE_EXHAUSTED (a start that cannot be
/// recorded); anything else stays the store's error.
fn full_is_exhausted(err: StateError) -> JobError {
    if err.is_disk_full() {
        JobError::ResourceExhausted {
            resource: "state.min_free_bytes".to_owned(),
            message: format!("the state filesystem is full: {}", error_chain(&err)),
        }
    } else {
        JobError::State(err)
    }
}

fn now_i64() -> i64 {
    i64::try_from(shim::now_millis()).unwrap_or(i64::MAX)
}

impl Records {
    /// Opens the store in the headroom's state dir and loads every job from it.
    pub fn open(headroom: Arc<Headroom>) -> Result<Self, JobError> {
        let store = StateStore::open(headroom.dir())?;
        let mut table = Table::default();
        for row in store.job_list()? {
            let spec: JobSpec = serde_json::from_str(&row.spec_json)?;
            let record: JobRecord = serde_json::from_str(&row.record_json)?;
            let usage = Usage::from_counters(&store.usage_get(&row.job_id)?);
            let view = JobView {
                spec,
                record,
                usage,
                last_sample: None,
            };
            table.insert(row.job_id, view);
        }
        Ok(Self {
            epoch: shim::now_millis(),
            table: Mutex::new(table),
            changed: Condvar::new(),
            all_changes: broadcast::channel(CHANGE_QUEUE).0,
            writer: Mutex::new(Writer {
                store,
                pending: VecDeque::new(),
            }),
            headroom,
            unsaved: AtomicUsize::new(0),
            usage_failing: AtomicBool::new(false),
        })
    }

    /// Job updates published but not committed yet (the filesystem was full).
    pub fn unsaved(&self) -> usize {
        self.unsaved.load(Ordering::Relaxed)
    }

    /// Commits the updates kept in memory, in order (the telemetry tick calls it); logged, not
    /// returned: they stay pending until a commit succeeds.
    pub fn flush(&self) {
        let mut writer = lock(&self.writer);
        if writer.pending.is_empty() {
            return;
        }
        if let Err(err) = writer.flush(&self.headroom) {
            tracing::debug!(pending = writer.pending.len(), error = %error_chain(&err), "job records still cannot be committed");
        }
        self.unsaved.store(writer.pending.len(), Ordering::Relaxed);
    }

    /// Runs `f` on the table (in-memory work only: see the module doc).
    pub fn read<R>(&self, f: impl FnOnce(&Table) -> R) -> R {
        f(&lock(&self.table))
    }

    /// Runs `f` on the table to change what is in memory only (samples, usage, the last
    /// sample time); nothing of it is a state change.
    pub fn touch<R>(&self, f: impl FnOnce(&mut Table) -> R) -> R {
        f(&mut lock(&self.table))
    }

    /// One job, its duration brought up to now.
    pub fn get(&self, id: &str) -> Result<JobView, JobError> {
        self.read(|t| t.jobs.get(id).map(|e| fresh(&e.view)))
            .ok_or_else(|| JobError::NotFound(id.to_owned()))
    }

    /// Jobs, newest first.
    pub fn list(&self, active_only: bool) -> Vec<JobView> {
        self.read(|t| {
            t.in_order()
                .rev()
                .filter(|e| !active_only || e.view.record.state.is_active())
                .map(|e| fresh(&e.view))
                .collect()
        })
    }

    /// One page of jobs, newest first: at most `limit` of those created before the one at
    /// `before` (a [`Entry::seq`]; None = from the newest), each with its seq.
    pub fn list_page(
        &self,
        active_only: bool,
        before: Option<u64>,
        limit: usize,
    ) -> Vec<(u64, JobView)> {
        self.read(|t| {
            t.in_order()
                .rev()
                .filter(|e| before.is_none_or(|b| e.seq < b))
                .filter(|e| !active_only || e.view.record.state.is_active())
                .take(limit)
                .map(|e| (e.seq, fresh(&e.view)))
                .collect()
        })
    }

    /// The job now and a receiver of its later events.
    pub fn subscribe(
        &self,
        id: &str,
    ) -> Result<(JobView, broadcast::Receiver<JobEvent>), JobError> {
        self.read(|t| {
            let entry = t
                .jobs
                .get(id)
                .ok_or_else(|| JobError::NotFound(id.to_owned()))?;
            Ok((fresh(&entry.view), entry.events.subscribe()))
        })
    }

    /// A receiver of every job's published state changes (a lagging receiver loses the oldest
    /// and is told so; it then reads the jobs again).
    pub fn watch_changes(&self) -> broadcast::Receiver<Arc<JobView>> {
        self.all_changes.subscribe()
    }

    /// Adds a new job in memory with `admit` deciding under the table's lock (so two starts
    /// never both fit into the same free capacity); `Err` leaves the table as it was.
    pub fn add(
        &self,
        view: JobView,
        admit: impl FnOnce(&Table) -> Result<(), JobError>,
        publish: impl FnOnce(&Table),
    ) -> Result<(), JobError> {
        let mut table = lock(&self.table);
        admit(&table)?;
        table.insert(view.spec.job_id.clone(), view);
        publish(&table);
        Ok(())
    }

    /// Commits a job that [`Self::add`] put in memory (no fsync: see
    /// [`StateStore::job_insert`]).
    pub fn commit_new(&self, id: &str) -> Result<(), JobError> {
        let mut writer = lock(&self.writer);
        let (spec, record) = self.read(|t| {
            let e = t
                .jobs
                .get(id)
                .ok_or_else(|| JobError::NotFound(id.to_owned()))?;
            Ok::<_, JobError>((e.view.spec.clone(), e.view.record.clone()))
        })?;
        let row = JobRow {
            job_id: id.to_owned(),
            state: record.state.name().to_owned(),
            spec_json: serde_json::to_string(&spec)?,
            record_json: serde_json::to_string(&record)?,
        };
        let at = i64::try_from(record.created_at_millis).unwrap_or(i64::MAX);
        // Updates kept in memory go first (an insert must not overtake them).
        writer.flush(&self.headroom).map_err(full_is_exhausted)?;
        match writer.store.job_insert(&row, at) {
            Err(err) if err.is_disk_full() && self.headroom.release() => {
                writer.store.job_insert(&row, at)
            }
            other => other,
        }
        .map_err(full_is_exhausted)
    }

    /// Drops jobs from memory only (a start whose record could not be written).
    pub fn drop_in_memory(&self, ids: &BTreeSet<&str>, publish: impl FnOnce(&Table)) {
        let mut table = lock(&self.table);
        for id in ids {
            table.jobs.remove(*id);
        }
        table.order.retain(|id| !ids.contains(id.as_str()));
        publish(&table);
    }

    /// Changes a job's record: `change` gets the current record and returns false to leave it
    /// as it is (e.g. it ended meanwhile); otherwise the new record is committed (or, when that
    /// fails, kept in memory: see the module doc), then published to readers and watchers, and
    /// `publish` runs on the table when the job ended with this change. Returns the job as it
    /// is afterwards.
    pub fn update(
        &self,
        id: &str,
        message: &str,
        change: impl FnOnce(&mut JobRecord) -> bool,
        publish: impl FnOnce(&Table),
    ) -> Result<JobView, JobError> {
        let mut writer = lock(&self.writer);
        let current = self.get(id)?;
        let mut record = current.record.clone();
        if !change(&mut record) {
            return Ok(current);
        }
        if !message.is_empty() {
            record.message = message.to_owned();
        }
        let pending = Pending {
            id: id.to_owned(),
            state: record.state.name(),
            record_json: serde_json::to_string(&record)?,
            at_millis: now_i64(),
            message: message.to_owned(),
        };
        let written = writer
            .flush(&self.headroom)
            .and_then(|()| writer.write(&self.headroom, &pending));
        if let Err(err) = written {
            // Published all the same: a full disk never holds a stop or an end back.
            tracing::error!(job = %id, state = pending.state, error = %error_chain(&err), "cannot commit the job's record: kept in memory, written once the state filesystem has room");
            writer.pending.push_back(pending);
        }
        self.unsaved.store(writer.pending.len(), Ordering::Relaxed);
        let state_changed = record.state != current.record.state;
        let ended = current.record.state.is_active() && !record.state.is_active();
        let view = {
            let mut table = lock(&self.table);
            let entry = table
                .jobs
                .get_mut(id)
                .ok_or_else(|| JobError::NotFound(id.to_owned()))?;
            entry.view.record = record;
            let view = entry.view.clone();
            if state_changed {
                let changed = Arc::new(view.clone());
                // No receivers is fine.
                let _ = entry.events.send(JobEvent::Changed(changed.clone()));
                let _ = self.all_changes.send(changed);
            }
            if ended {
                publish(&table);
            }
            view
        };
        drop(writer);
        if state_changed {
            self.changed.notify_all();
        }
        Ok(view)
    }

    /// Stores usage counters (logged, not returned: the next sample stores them again).
    pub fn store_usage(&self, usages: &[(String, Usage)]) {
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
        // While the slack is released, its space is the job records': the counters stay in
        // memory (they only grow) and are written by a later tick.
        if self.headroom.released() && self.headroom.check_floor().is_err() {
            return;
        }
        match lock(&self.writer).store.usage_put(&refs) {
            Ok(()) => self.usage_failing.store(false, Ordering::Relaxed),
            Err(err) => {
                if !self.usage_failing.swap(true, Ordering::Relaxed) {
                    tracing::error!(error = %error_chain(&err), "cannot store usage counters (kept in memory, retried every tick)");
                }
            }
        }
    }

    /// Deletes jobs (records, transitions, counters in one transaction), then forgets them.
    pub fn delete(&self, ids: &[&str]) -> Result<(), JobError> {
        let mut writer = lock(&self.writer);
        writer.store.jobs_delete(ids)?;
        let gone: BTreeSet<&str> = ids.iter().copied().collect();
        // Their rows are gone: updates still kept for them have nothing left to update.
        writer.pending.retain(|p| !gone.contains(p.id.as_str()));
        self.unsaved.store(writer.pending.len(), Ordering::Relaxed);
        self.drop_in_memory(&gone, |_| {});
        drop(writer);
        Ok(())
    }

    /// Holds the writer's lock, as a commit does (tests: readers must not wait for it).
    #[cfg(test)]
    pub fn hold_writer_for_test(&self) -> MutexGuard<'_, Writer> {
        lock(&self.writer)
    }

    /// Waits (at most `timeout`) until job `id` is past `creating`; returns it as it is then.
    /// Woken by every published state change, not by polling.
    pub fn wait_not_creating(&self, id: &str, timeout: Duration) -> Result<JobView, JobError> {
        let deadline = Instant::now() + timeout;
        let mut table = lock(&self.table);
        loop {
            let entry = table
                .jobs
                .get(id)
                .ok_or_else(|| JobError::NotFound(id.to_owned()))?;
            let now = Instant::now();
            if entry.view.record.state != JobState::Creating || now >= deadline {
                return Ok(fresh(&entry.view));
            }
            table = self
                .changed
                .wait_timeout(table, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}
