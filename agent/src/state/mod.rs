//! The agent's state store: one embedded SQLite database (`state.db`) in the state directory,
//! WAL journal, versioned migrations.
//!
//! Schema (version 4; `PRAGMA user_version` holds the version, each migration runs in one
//! transaction and is never edited once released — new versions append to [`MIGRATIONS`]):
//!
//! | table | what | key |
//! | --- | --- | --- |
//! | `bench_results` | cached benchmark results, one JSON document each | (`fingerprint`, `bench_id`, `device`, `kernel_version`, `driver_versions`) |
//! | `jobs` | job records: id, state, spec JSON, the rest of the record as JSON (v2: `record_json`), timestamps | `job_id` |
//! | `job_events` | (v2) every state transition of a job, with its time (Unix ms) and message | `seq` |
//! | `usage_counters` | metered usage per job and counter (CPU-seconds, GPU-seconds, bytes) | (`job_id`, `counter`) |
//! | `receipt_drafts` | (v4) usage receipts decided but not signed yet (the TPM was busy or unreachable): the body as JSON without key, host and `prev` | `id` (issue order); (`job_id`, `seq`) |
//! | `receipts` | (v4) signed usage receipts: body bytes, identity-key signature, digest, the receipt quote covering it (`quote_seq`, null until quoted) | `id` (issue order); (`job_id`, `seq`) |
//! | `receipt_quotes` | (v4) the AK's quotes over receipt digests (`seq`, `prev`, digests as a JSON list, `TPMS_ATTEST`, signature); a quote no receipt refers to any more is deleted, except the newest (the next one's `prev`) | `seq` |
//!
//! Version 1 also created `verifier_nonces`, which nothing used (the nonces of attestation are
//! the auditor's, checked by the verifier); version 3 drops it.
//!
//! The state filesystem's free-space floor and the database's slack file are in [`headroom`].
//!
//! Timestamps are Unix seconds (UTC). JSON documents are stored as text so an operator can read
//! them with `sqlite3`.
//!
//! Durability: `synchronous=FULL`, so every commit is on disk (WAL fsync'd) when it returns,
//! with one exception, [`StateStore::job_insert`]: the `creating` record of a job is committed
//! with `NORMAL`. It is in the WAL at once, so it survives the agent's crash, and it reaches the
//! disk with the next commit, at the latest the job's `running` or failed record, which StartJob
//! waits for before it answers. A power loss in between loses only a start that was never
//! acknowledged and whose container died with the machine. That saves a start one fsync (the
//! insert took a median 1.6 ms with it in a 20-start trace on the CI machine).

pub mod headroom;
mod receipts;

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};

pub use receipts::{ReceiptDraftRow, ReceiptQuoteRow, ReceiptRow};

/// File name of the database inside the state directory.
pub const DB_FILE: &str = "state.db";

/// Migrations, in order; migration `i` brings the schema to version `i + 1`.
pub const MIGRATIONS: &[&str] = &[
    // v1
    "CREATE TABLE bench_results (
        fingerprint     TEXT    NOT NULL,
        bench_id        TEXT    NOT NULL,
        device          TEXT    NOT NULL,
        kernel_version  INTEGER NOT NULL,
        driver_versions TEXT    NOT NULL,
        measured_at     INTEGER NOT NULL,
        result_json     TEXT    NOT NULL,
        PRIMARY KEY (fingerprint, bench_id, device, kernel_version, driver_versions)
    );
    CREATE TABLE jobs (
        job_id      TEXT    PRIMARY KEY,
        state       TEXT    NOT NULL,
        spec_json   TEXT    NOT NULL,
        created_at  INTEGER NOT NULL,
        updated_at  INTEGER NOT NULL
    );
    CREATE TABLE usage_counters (
        job_id      TEXT    NOT NULL REFERENCES jobs(job_id) ON DELETE CASCADE,
        counter     TEXT    NOT NULL,
        value       INTEGER NOT NULL,
        updated_at  INTEGER NOT NULL,
        PRIMARY KEY (job_id, counter)
    );
    CREATE TABLE verifier_nonces (
        nonce       BLOB    PRIMARY KEY,
        seen_at     INTEGER NOT NULL,
        expires_at  INTEGER NOT NULL
    );
    CREATE INDEX verifier_nonces_expiry ON verifier_nonces(expires_at);",
    // v2: the job runner's record and transitions.
    "ALTER TABLE jobs ADD COLUMN record_json TEXT NOT NULL DEFAULT '{}';
    CREATE TABLE job_events (
        seq         INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id      TEXT    NOT NULL REFERENCES jobs(job_id) ON DELETE CASCADE,
        at_millis   INTEGER NOT NULL,
        state       TEXT    NOT NULL,
        message     TEXT    NOT NULL
    );
    CREATE INDEX job_events_job ON job_events(job_id, seq);",
    // v3: the unused nonce table goes.
    "DROP INDEX verifier_nonces_expiry;
    DROP TABLE verifier_nonces;",
    // v4: usage receipts (drafts waiting for the TPM, signed receipts) and receipt quotes.
    "CREATE TABLE receipt_drafts (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id      TEXT    NOT NULL REFERENCES jobs(job_id) ON DELETE CASCADE,
        seq         INTEGER NOT NULL,
        draft_json  TEXT    NOT NULL,
        UNIQUE (job_id, seq)
    );
    CREATE TABLE receipts (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id      TEXT    NOT NULL REFERENCES jobs(job_id) ON DELETE CASCADE,
        seq         INTEGER NOT NULL,
        kind        TEXT    NOT NULL,
        body        BLOB    NOT NULL,
        signature   BLOB    NOT NULL,
        digest      TEXT    NOT NULL,
        quote_seq   INTEGER,
        UNIQUE (job_id, seq)
    );
    CREATE INDEX receipts_quote ON receipts(quote_seq);
    CREATE TABLE receipt_quotes (
        seq             INTEGER PRIMARY KEY,
        prev            TEXT    NOT NULL,
        receipts_json   TEXT    NOT NULL,
        attest          BLOB    NOT NULL,
        signature       BLOB    NOT NULL
    );",
];

/// One row of `jobs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRow {
    /// The job id.
    pub job_id: String,
    /// Its state name.
    pub state: String,
    /// The spec as JSON.
    pub spec_json: String,
    /// The rest of the job runner's record as JSON.
    pub record_json: String,
}

/// One row of `job_events`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobEventRow {
    /// Unix milliseconds.
    pub at_millis: i64,
    /// The state entered.
    pub state: String,
    /// Why.
    pub message: String,
}

/// Errors of the state store.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The state directory could not be created.
    #[error("cannot create state directory {path}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// An SQLite operation failed.
    #[error("state database {path}: {what}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// The database is newer than this agent understands.
    #[error("state database {path} has schema version {found}, this agent knows up to {known}")]
    TooNew {
        /// The database file.
        path: PathBuf,
        /// Its version.
        found: i64,
        /// The newest version this build knows.
        known: i64,
    },
    /// A stored JSON document could not be (de)serialized.
    #[error("state database: bad JSON document")]
    Json(#[from] serde_json::Error),
}

impl StateError {
    /// Whether SQLite failed because the filesystem is full (or a write or fsync failed), so
    /// that freeing space may let the same write through.
    pub fn is_disk_full(&self) -> bool {
        use rusqlite::ErrorCode;
        match self {
            Self::Sqlite {
                source: rusqlite::Error::SqliteFailure(err, _),
                ..
            } => matches!(err.code, ErrorCode::DiskFull | ErrorCode::SystemIoFailure),
            _ => false,
        }
    }
}

/// The cache key of one benchmark result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchKey {
    /// Hardware fingerprint.
    pub fingerprint: String,
    /// Benchmark id, e.g. `mem.bandwidth`.
    pub bench_id: String,
    /// Device the result is for (`cpu`, `opencl:0 <name>`, a path, a peer).
    pub device: String,
    /// Kernel version.
    pub kernel_version: u32,
    /// Driver versions that affect the result (OpenCL driver, NVIDIA driver), or empty.
    pub driver_versions: String,
}

/// An open state store.
#[derive(Debug)]
pub struct StateStore {
    conn: Connection,
    path: PathBuf,
}

/// Maps a SQLite error on the database at `path` during `what` to a [`StateError`] (the path
/// is copied only when there is an error).
fn sqlite_err<'p>(
    path: &'p Path,
    what: &'static str,
) -> impl FnOnce(rusqlite::Error) -> StateError + 'p {
    move |source| StateError::Sqlite {
        path: path.to_owned(),
        what,
        source,
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl StateStore {
    /// Opens (creating if needed) `state.db` in `dir`, enables WAL and runs pending migrations.
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        std::fs::create_dir_all(dir).map_err(|source| StateError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join(DB_FILE);
        let conn = Connection::open(&path).map_err(sqlite_err(&path, "open"))?;
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |_| Ok(()))
            .map_err(sqlite_err(&path, "enable WAL"))?;
        conn.pragma_update(None, "foreign_keys", true)
            .map_err(sqlite_err(&path, "enable foreign keys"))?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(sqlite_err(&path, "set synchronous=FULL"))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sqlite_err(&path, "set busy timeout"))?;
        let mut store = Self { conn, path };
        store.migrate()?;
        Ok(store)
    }

    fn err(&self, what: &'static str) -> impl FnOnce(rusqlite::Error) -> StateError + '_ {
        sqlite_err(&self.path, what)
    }

    /// The current schema version.
    pub fn schema_version(&self) -> Result<i64, StateError> {
        self.conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(self.err("read schema version"))
    }

    fn migrate(&mut self) -> Result<(), StateError> {
        let known = MIGRATIONS.len() as i64;
        let found = self.schema_version()?;
        if found > known {
            return Err(StateError::TooNew {
                path: self.path.clone(),
                found,
                known,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(found.max(0) as usize) {
            let path = self.path.clone();
            let e = |source| StateError::Sqlite {
                path: path.clone(),
                what: "migrate",
                source,
            };
            let tx = self.conn.transaction().map_err(e)?;
            tx.execute_batch(sql).map_err(e)?;
            tx.pragma_update(None, "user_version", i as i64 + 1)
                .map_err(e)?;
            tx.commit().map_err(e)?;
        }
        Ok(())
    }

    /// Inserts a new job with its first transition, in one transaction. Fails (SQLite
    /// constraint) when the id exists. The commit is not fsync'd itself: the next commit makes
    /// it durable (see the module doc), so callers acknowledge a job only after another write.
    pub fn job_insert(&mut self, row: &JobRow, at_millis: i64) -> Result<(), StateError> {
        self.conn
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(self.err("set synchronous=NORMAL"))?;
        let inserted = self.job_insert_tx(row, at_millis);
        let restored = self
            .conn
            .pragma_update(None, "synchronous", "FULL")
            .map_err(self.err("set synchronous=FULL"));
        inserted.and(restored)
    }

    fn job_insert_tx(&mut self, row: &JobRow, at_millis: i64) -> Result<(), StateError> {
        let e = |what| sqlite_err(&self.path, what);
        let tx = self.conn.transaction().map_err(e("begin job insert"))?;
        tx.execute(
            "INSERT INTO jobs (job_id, state, spec_json, record_json, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
            params![row.job_id, row.state, row.spec_json, row.record_json, now()],
        )
        .map_err(e("insert job"))?;
        tx.execute(
            "INSERT INTO job_events (job_id, at_millis, state, message) VALUES (?1, ?2, ?3, '')",
            params![row.job_id, at_millis, row.state],
        )
        .map_err(e("insert job event"))?;
        tx.commit().map_err(e("commit job insert"))
    }

    /// Updates a job's state and record; a changed state also appends a transition with
    /// `message`. One transaction.
    pub fn job_update(
        &mut self,
        job_id: &str,
        state: &str,
        record_json: &str,
        at_millis: i64,
        message: &str,
    ) -> Result<(), StateError> {
        let e = |what| sqlite_err(&self.path, what);
        let tx = self.conn.transaction().map_err(e("begin job update"))?;
        let previous: Option<String> = tx
            .query_row("SELECT state FROM jobs WHERE job_id = ?1", [job_id], |r| {
                r.get(0)
            })
            .optional()
            .map_err(e("read job state"))?;
        tx.execute(
            "UPDATE jobs SET state = ?2, record_json = ?3, updated_at = ?4 WHERE job_id = ?1",
            params![job_id, state, record_json, now()],
        )
        .map_err(e("update job"))?;
        if previous.as_deref() != Some(state) {
            tx.execute(
                "INSERT INTO job_events (job_id, at_millis, state, message) VALUES (?1, ?2, ?3, ?4)",
                params![job_id, at_millis, state, message],
            )
            .map_err(e("insert job event"))?;
        }
        tx.commit().map_err(e("commit job update"))
    }

    /// Deletes jobs, all in one transaction; their transitions, usage counters and receipts
    /// (signed and drafts) go with them (`ON DELETE CASCADE`, with `foreign_keys` on since
    /// [`Self::open`]). Unknown ids are skipped.
    pub fn jobs_delete(&mut self, job_ids: &[&str]) -> Result<(), StateError> {
        let e = |what| sqlite_err(&self.path, what);
        let tx = self.conn.transaction().map_err(e("begin job delete"))?;
        for id in job_ids {
            tx.execute("DELETE FROM jobs WHERE job_id = ?1", [id])
                .map_err(e("delete job"))?;
        }
        tx.commit().map_err(e("commit job delete"))
    }

    /// One job.
    pub fn job_get(&self, job_id: &str) -> Result<Option<JobRow>, StateError> {
        self.conn
            .query_row(
                "SELECT job_id, state, spec_json, record_json FROM jobs WHERE job_id = ?1",
                [job_id],
                |r| {
                    Ok(JobRow {
                        job_id: r.get(0)?,
                        state: r.get(1)?,
                        spec_json: r.get(2)?,
                        record_json: r.get(3)?,
                    })
                },
            )
            .optional()
            .map_err(self.err("read job"))
    }

    /// Every job, in insertion order.
    pub fn job_list(&self) -> Result<Vec<JobRow>, StateError> {
        let mut stmt = self
            .conn
            .prepare("SELECT job_id, state, spec_json, record_json FROM jobs ORDER BY rowid")
            .map_err(self.err("query jobs"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(JobRow {
                    job_id: r.get(0)?,
                    state: r.get(1)?,
                    spec_json: r.get(2)?,
                    record_json: r.get(3)?,
                })
            })
            .map_err(self.err("query jobs"))?;
        rows.collect::<Result<_, _>>()
            .map_err(self.err("read job row"))
    }

    /// A job's transitions, oldest first.
    pub fn job_events(&self, job_id: &str) -> Result<Vec<JobEventRow>, StateError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT at_millis, state, message FROM job_events WHERE job_id = ?1 ORDER BY seq",
            )
            .map_err(self.err("query job events"))?;
        let rows = stmt
            .query_map([job_id], |r| {
                Ok(JobEventRow {
                    at_millis: r.get(0)?,
                    state: r.get(1)?,
                    message: r.get(2)?,
                })
            })
            .map_err(self.err("query job events"))?;
        rows.collect::<Result<_, _>>()
            .map_err(self.err("read job event"))
    }

    /// Stores usage counters `(job id, counter, value)`, all in one transaction; a counter
    /// never goes down (the larger of the stored and the new value is kept).
    pub fn usage_put(&mut self, values: &[(&str, &str, i64)]) -> Result<(), StateError> {
        let e = |what| sqlite_err(&self.path, what);
        let tx = self.conn.transaction().map_err(e("begin usage update"))?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO usage_counters (job_id, counter, value, updated_at)
                     VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (job_id, counter) DO UPDATE
                     SET value = max(value, excluded.value), updated_at = excluded.updated_at",
                )
                .map_err(e("prepare usage update"))?;
            let at = now();
            for (job, counter, value) in values {
                stmt.execute(params![job, counter, value, at])
                    .map_err(e("store usage counter"))?;
            }
        }
        tx.commit().map_err(e("commit usage update"))
    }

    /// A job's usage counters.
    pub fn usage_get(&self, job_id: &str) -> Result<Vec<(String, i64)>, StateError> {
        let mut stmt = self
            .conn
            .prepare("SELECT counter, value FROM usage_counters WHERE job_id = ?1 ORDER BY counter")
            .map_err(self.err("query usage counters"))?;
        let rows = stmt
            .query_map([job_id], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(self.err("query usage counters"))?;
        rows.collect::<Result<_, _>>()
            .map_err(self.err("read usage counter"))
    }

    /// The cached result for `key`, if any.
    pub fn bench_get(&self, key: &BenchKey) -> Result<Option<serde_json::Value>, StateError> {
        let text: Option<String> = self
            .conn
            .query_row(
                "SELECT result_json FROM bench_results WHERE fingerprint = ?1 AND bench_id = ?2
                 AND device = ?3 AND kernel_version = ?4 AND driver_versions = ?5",
                params![
                    key.fingerprint,
                    key.bench_id,
                    key.device,
                    key.kernel_version,
                    key.driver_versions
                ],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.err("read benchmark result"))?;
        Ok(text.map(|t| serde_json::from_str(&t)).transpose()?)
    }

    /// Stores (replacing) the result for `key`.
    pub fn bench_put(&self, key: &BenchKey, result: &serde_json::Value) -> Result<(), StateError> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO bench_results
                 (fingerprint, bench_id, device, kernel_version, driver_versions, measured_at, result_json)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    key.fingerprint,
                    key.bench_id,
                    key.device,
                    key.kernel_version,
                    key.driver_versions,
                    now(),
                    serde_json::to_string(result)?
                ],
            )
            .map_err(self.err("store benchmark result"))?;
        Ok(())
    }

    /// Every cached result for a fingerprint, ordered by id and device.
    pub fn bench_for_fingerprint(
        &self,
        fingerprint: &str,
    ) -> Result<Vec<serde_json::Value>, StateError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT result_json FROM bench_results WHERE fingerprint = ?1
                 ORDER BY bench_id, device",
            )
            .map_err(self.err("query benchmark results"))?;
        let rows = stmt
            .query_map([fingerprint], |r| r.get::<_, String>(0))
            .map_err(self.err("query benchmark results"))?;
        let mut out = Vec::new();
        for row in rows {
            let text = row.map_err(self.err("read benchmark row"))?;
            out.push(serde_json::from_str(&text)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(fp: &str, v: u32) -> BenchKey {
        BenchKey {
            fingerprint: fp.into(),
            bench_id: "cpu.x".into(),
            device: "cpu".into(),
            kernel_version: v,
            driver_versions: String::new(),
        }
    }

    #[test]
    fn migrates_to_latest_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateStore::open(dir.path()).unwrap();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as i64);
        let mode: String = s
            .conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        drop(s);
        let s = StateStore::open(dir.path()).unwrap();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as i64);
        for (table, want) in [
            ("jobs", 1),
            ("job_events", 1),
            ("usage_counters", 1),
            ("bench_results", 1),
            ("verifier_nonces", 0),
        ] {
            let n: i64 = s
                .conn
                .query_row(
                    "SELECT count(*) FROM sqlite_master WHERE type='table' AND name=?1",
                    [table],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(n, want, "{table}");
        }
    }

    #[test]
    fn jobs_transitions_and_monotonic_counters() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = StateStore::open(dir.path()).unwrap();
        let row = JobRow {
            job_id: "j1".into(),
            state: "creating".into(),
            spec_json: "{}".into(),
            record_json: "{}".into(),
        };
        s.job_insert(&row, 1).unwrap();
        assert!(s.job_insert(&row, 2).is_err(), "duplicate id");
        let synchronous: i64 = s
            .conn
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .unwrap();
        assert_eq!(
            synchronous, 2,
            "FULL again after the insert, also a failed one"
        );
        s.job_update("j1", "running", "{\"a\":1}", 3, "started")
            .unwrap();
        s.job_update("j1", "running", "{\"a\":2}", 4, "").unwrap();
        let got = s.job_get("j1").unwrap().unwrap();
        assert_eq!(
            (got.state.as_str(), got.record_json.as_str()),
            ("running", "{\"a\":2}")
        );
        let events = s.job_events("j1").unwrap();
        assert_eq!(events.len(), 2, "same state twice is one transition");
        assert_eq!(events[1].message, "started");
        s.usage_put(&[("j1", "cpu_nanos", 10), ("j1", "duration_millis", 5)])
            .unwrap();
        s.usage_put(&[("j1", "cpu_nanos", 7)]).unwrap();
        assert_eq!(
            s.usage_get("j1").unwrap(),
            [
                ("cpu_nanos".to_owned(), 10),
                ("duration_millis".to_owned(), 5)
            ]
        );
        assert_eq!(s.job_list().unwrap().len(), 1);
        assert!(s.job_get("nope").unwrap().is_none());
    }

    #[test]
    fn deleted_jobs_take_their_transitions_and_counters_along() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = StateStore::open(dir.path()).unwrap();
        for id in ["old", "kept"] {
            let row = JobRow {
                job_id: id.into(),
                state: "creating".into(),
                spec_json: "{}".into(),
                record_json: "{}".into(),
            };
            s.job_insert(&row, 1).unwrap();
            s.job_update(id, "succeeded", "{}", 2, "done").unwrap();
            s.usage_put(&[(id, "cpu_nanos", 10)]).unwrap();
        }
        s.jobs_delete(&["old", "never-was"]).unwrap();
        assert!(s.job_get("old").unwrap().is_none());
        assert!(s.job_events("old").unwrap().is_empty());
        assert!(s.usage_get("old").unwrap().is_empty());
        assert_eq!(s.job_events("kept").unwrap().len(), 2);
        assert_eq!(s.usage_get("kept").unwrap().len(), 1);
        let ids: Vec<String> = s
            .job_list()
            .unwrap()
            .into_iter()
            .map(|r| r.job_id)
            .collect();
        assert_eq!(ids, ["kept"]);
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(StateStore::open(dir.path()).unwrap());
        let c = Connection::open(dir.path().join(DB_FILE)).unwrap();
        c.pragma_update(None, "user_version", 99).unwrap();
        drop(c);
        let err = StateStore::open(dir.path()).unwrap_err();
        assert!(matches!(err, StateError::TooNew { found: 99, .. }), "{err}");
    }

    #[test]
    fn bench_results_are_keyed() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateStore::open(dir.path()).unwrap();
        let v = serde_json::json!({"median": 1.5});
        s.bench_put(&key("fp1", 1), &v).unwrap();
        assert_eq!(s.bench_get(&key("fp1", 1)).unwrap(), Some(v.clone()));
        assert_eq!(s.bench_get(&key("fp2", 1)).unwrap(), None);
        assert_eq!(s.bench_get(&key("fp1", 2)).unwrap(), None);
        s.bench_put(&key("fp1", 1), &serde_json::json!({"median": 2}))
            .unwrap();
        assert_eq!(s.bench_for_fingerprint("fp1").unwrap().len(), 1);
        assert!(s.bench_for_fingerprint("fp2").unwrap().is_empty());
    }

    #[test]
    fn unwritable_dir_is_an_error_naming_it() {
        let err = StateStore::open(Path::new("/proc/nope/state")).unwrap_err();
        assert!(err.to_string().contains("/proc/nope/state"), "{err}");
    }
}
