//! The agent's state store: one embedded SQLite database (`state.db`) in the state directory,
//! WAL journal, versioned migrations.
//!
//! Schema (version 1; `PRAGMA user_version` holds the version, each migration runs in one
//! transaction and is never edited once released — new versions append to [`MIGRATIONS`]):
//!
//! | table | what | key |
//! | --- | --- | --- |
//! | `bench_results` | cached benchmark results, one JSON document each | (`fingerprint`, `bench_id`, `device`, `kernel_version`, `driver_versions`) |
//! | `jobs` | job records (later issue): id, state, spec JSON, timestamps | `job_id` |
//! | `usage_counters` | metered usage per job and counter (CPU-seconds, GPU-seconds, bytes) | (`job_id`, `counter`) |
//! | `verifier_nonces` | attestation nonces already answered, for replay protection | `nonce` |
//!
//! Timestamps are Unix seconds (UTC). JSON documents are stored as text so an operator can read
//! them with `sqlite3`.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};

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
];

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
        let err = |what: &'static str, p: &Path| {
            let p = p.to_owned();
            move |source| StateError::Sqlite {
                path: p,
                what,
                source,
            }
        };
        let conn = Connection::open(&path).map_err(err("open", &path))?;
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |_| Ok(()))
            .map_err(err("enable WAL", &path))?;
        conn.pragma_update(None, "foreign_keys", true)
            .map_err(err("enable foreign keys", &path))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(err("set busy timeout", &path))?;
        let mut store = Self { conn, path };
        store.migrate()?;
        Ok(store)
    }

    fn err(&self, what: &'static str) -> impl FnOnce(rusqlite::Error) -> StateError + '_ {
        move |source| StateError::Sqlite {
            path: self.path.clone(),
            what,
            source,
        }
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
        for table in ["jobs", "usage_counters", "verifier_nonces", "bench_results"] {
            let n: i64 = s
                .conn
                .query_row(
                    "SELECT count(*) FROM sqlite_master WHERE type='table' AND name=?1",
                    [table],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(n, 1, "{table}");
        }
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
