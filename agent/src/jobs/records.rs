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
//! Lock order: `writer`, then `table`. Nothing else is held while `table` is.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::broadcast;

use super::model::{fresh, JobEvent, JobRecord, JobState, JobView, Usage};
use super::shim;
use super::spec::JobSpec;
use super::JobError;
use crate::state::{JobRow, StateStore};

/// Events buffered per watcher.
const EVENT_QUEUE: usize = 256;

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
    writer: Mutex<StateStore>,
}

fn now_i64() -> i64 {
    i64::try_from(shim::now_millis()).unwrap_or(i64::MAX)
}

impl Records {
    /// Opens the store in `state_dir` and loads every job from it.
    pub fn open(state_dir: &Path) -> Result<Self, JobError> {
        let store = StateStore::open(state_dir)?;
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
            writer: Mutex::new(store),
        })
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
        writer.job_insert(&row, at)?;
        Ok(())
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
    /// as it is (e.g. it ended meanwhile); otherwise the new record is committed, then
    /// published to readers and watchers, and `publish` runs on the table when the job ended
    /// with this change. Returns the job as it is afterwards.
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
        writer.job_update(
            id,
            record.state.name(),
            &serde_json::to_string(&record)?,
            now_i64(),
            message,
        )?;
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
                // No receivers is fine.
                let _ = entry.events.send(JobEvent::Changed(Arc::new(view.clone())));
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
        if let Err(err) = lock(&self.writer).usage_put(&refs) {
            tracing::error!(error = %err, "cannot store usage counters");
        }
    }

    /// Deletes jobs (records, transitions, counters in one transaction), then forgets them.
    pub fn delete(&self, ids: &[&str]) -> Result<(), JobError> {
        let mut writer = lock(&self.writer);
        writer.jobs_delete(ids)?;
        let gone: BTreeSet<&str> = ids.iter().copied().collect();
        self.drop_in_memory(&gone, |_| {});
        drop(writer);
        Ok(())
    }

    /// Holds the writer's lock, as a commit does (tests: readers must not wait for it).
    #[cfg(test)]
    pub fn hold_writer_for_test(&self) -> MutexGuard<'_, StateStore> {
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
