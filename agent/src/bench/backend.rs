//! Benchmarks as the daemon serves them: the [`BenchmarkBackend`] seam with its domain types, and
//! [`SuiteBackend`], the real one over the benchmark suite ([`crate::bench`]): cached results
//! come from the state store keyed by the hardware fingerprint, runs go through
//! [`crate::bench::run_suite`] (crash-isolated children), and [`on_fingerprint`] starts a
//! background run on a thread when nothing is cached for a new fingerprint. At most one run
//! happens at a time; a second request while one runs is `Unavailable`.
//!
//! [`on_fingerprint`]: BenchmarkBackend::on_fingerprint

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use std::time::SystemTime;

use crate::bench::{self, BenchRecord, Mode, Status, SuiteConfig};
use crate::inventory::cache::InventorySource;

/// Why a benchmark request could not be answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BenchmarkError {
    /// One run at a time: another is in progress.
    #[error("a benchmark run is already in progress; try again when it has finished")]
    RunInProgress,
    /// A requested benchmark id does not exist.
    #[error("benchmark_ids: unknown benchmark id {0:?}")]
    UnknownId(String),
    /// The run or the cache failed (the message says which and why).
    #[error("{0}")]
    Failed(String),
}

/// The benchmark runner's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchmarkState {
    /// Nothing measured yet, nothing running.
    Pending,
    /// Running now.
    Running,
    /// Results cached for the current fingerprint.
    Done,
    /// The last run failed.
    Failed,
}

/// One benchmark figure.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchmarkResult {
    /// Stable id, e.g. `cpu.fma.f32`.
    pub benchmark_id: String,
    /// Device measured (`cpu`, a GPU's PCI bus id, ...).
    pub device: String,
    /// Figure name, e.g. `gflops`.
    pub metric: String,
    /// Median value.
    pub value: f64,
    /// Unit of `value`.
    pub unit: String,
    /// Repetitions.
    pub samples: u32,
    /// Coefficient of variation.
    pub relative_spread: f64,
    /// Wall time in milliseconds.
    pub duration_millis: u64,
    /// Full result as JSON.
    pub detail_json: Vec<u8>,
}

/// The cached results and the runner's state.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchmarkReport {
    /// Runner state.
    pub state: BenchmarkState,
    /// Why the last run failed.
    pub error: Option<String>,
    /// Fingerprint the results belong to.
    pub fingerprint: String,
    /// When measured.
    pub measured_at: Option<SystemTime>,
    /// The figures.
    pub results: Vec<BenchmarkResult>,
}

/// What happened to one benchmark during a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchmarkPhase {
    /// Started.
    Started,
    /// Finished.
    Finished,
    /// Failed.
    Failed,
    /// Skipped.
    Skipped,
}

/// A progress event of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchmarkProgress {
    /// The benchmark.
    pub benchmark_id: String,
    /// What happened.
    pub phase: BenchmarkPhase,
    /// Fraction of the whole run done, 0 to 1.
    pub fraction_done: f64,
    /// Detail or error message.
    pub message: String,
}

/// Benchmarks as the daemon serves them: the cache and the runner (blocking: callers run it
/// on the blocking pool).
pub trait BenchmarkBackend: Send + Sync + 'static {
    /// The cached results and the runner's state.
    fn cached(&self) -> Result<BenchmarkReport, BenchmarkError>;

    /// Runs the benchmarks `ids` (all when empty), reporting progress; returns the results.
    /// `progress` returns false when nobody listens any more (the run may then stop early).
    fn run(
        &self,
        ids: &[String],
        progress: &mut dyn FnMut(BenchmarkProgress) -> bool,
    ) -> Result<BenchmarkReport, BenchmarkError>;

    /// The daemon's start-up hook: called once the first inventory is collected and again
    /// whenever the hardware fingerprint changes, so the backend can run missing benchmarks in
    /// the background. Must return at once.
    fn on_fingerprint(&self, fingerprint: &str) {
        let _ = fingerprint;
    }
}

/// What the runner is doing, shared with the background thread.
#[derive(Debug, Default)]
struct RunnerState {
    /// A run is in progress.
    running: bool,
    /// The error of the last run, cleared by a successful one.
    last_error: Option<String>,
    /// The fingerprint the daemon last reported (saves an inventory collection per request).
    fingerprint: Option<String>,
}

/// Benchmarks from the suite and the state store.
pub struct SuiteBackend {
    state_dir: PathBuf,
    exe: PathBuf,
    inventory: InventorySource,
    run_on_start: bool,
    state: Arc<Mutex<RunnerState>>,
}

impl std::fmt::Debug for SuiteBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SuiteBackend")
            .field("state_dir", &self.state_dir)
            .field("exe", &self.exe)
            .field("run_on_start", &self.run_on_start)
            .finish_non_exhaustive()
    }
}

impl SuiteBackend {
    /// A backend storing results under `state_dir`, running benchmarks as children of `exe`
    /// (the agent binary), reading CPU facts from `inventory`. `run_on_start` enables the
    /// background run of [`BenchmarkBackend::on_fingerprint`] (`[bench] run_on_start`).
    pub fn new(
        state_dir: PathBuf,
        exe: PathBuf,
        inventory: InventorySource,
        run_on_start: bool,
    ) -> Self {
        Self {
            state_dir,
            exe,
            inventory,
            run_on_start,
            state: Arc::new(Mutex::new(RunnerState::default())),
        }
    }

    fn lock(state: &Mutex<RunnerState>) -> std::sync::MutexGuard<'_, RunnerState> {
        state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks a run as started; [`BenchmarkError::RunInProgress`] when one is already running.
    fn begin(state: &Mutex<RunnerState>) -> Result<(), BenchmarkError> {
        let mut s = Self::lock(state);
        if s.running {
            return Err(BenchmarkError::RunInProgress);
        }
        s.running = true;
        Ok(())
    }

    fn finish(state: &Mutex<RunnerState>, error: Option<String>) {
        let mut s = Self::lock(state);
        s.running = false;
        s.last_error = error;
    }

    fn suite_config(&self, only: Option<Vec<String>>, force: bool) -> SuiteConfig {
        let inventory = (self.inventory)();
        SuiteConfig {
            mode: Mode::Quick,
            only,
            peer: None,
            force,
            state_dir: self.state_dir.clone(),
            fingerprint: bench::fingerprint(&inventory),
            cpu: bench::cpu_facts(&inventory),
            exe: self.exe.clone(),
        }
    }

    /// The report for `fingerprint` from the state store, with the runner's state.
    fn report_for(&self, fingerprint: &str) -> Result<BenchmarkReport, BenchmarkError> {
        let cached = bench::cached_results(&self.state_dir, fingerprint)
            .map_err(|e| BenchmarkError::Failed(format!("benchmark cache: {e}")))?;
        let results = records_of(&cached)
            .iter()
            .filter_map(result_of)
            .collect::<Vec<_>>();
        let s = Self::lock(&self.state);
        let state = state_of(s.running, s.last_error.is_some(), !results.is_empty());
        Ok(BenchmarkReport {
            state,
            error: s.last_error.clone(),
            fingerprint: fingerprint.to_owned(),
            measured_at: None,
            results,
        })
    }
}

/// The runner state the API shows: running wins, then a failure, then cached results.
fn state_of(running: bool, failed: bool, has_results: bool) -> BenchmarkState {
    match (running, failed, has_results) {
        (true, _, _) => BenchmarkState::Running,
        (false, true, _) => BenchmarkState::Failed,
        (false, false, true) => BenchmarkState::Done,
        (false, false, false) => BenchmarkState::Pending,
    }
}

/// The records in a [`bench::cached_results`] document (entries that do not parse are left out).
fn records_of(cached: &serde_json::Value) -> Vec<BenchRecord> {
    cached
        .get("results")
        .and_then(serde_json::Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| serde_json::from_value(v.clone()).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// One API figure of a measured record (`None` for records without a result).
fn result_of(record: &BenchRecord) -> Option<BenchmarkResult> {
    let summary = record.summary.as_ref()?;
    if record.status != Status::Ok {
        return None;
    }
    Some(BenchmarkResult {
        benchmark_id: record.id.clone(),
        device: record.device.clone(),
        metric: "median".to_owned(),
        value: summary.median,
        unit: record.unit.clone().unwrap_or_default(),
        samples: u32::try_from(summary.samples).unwrap_or(u32::MAX),
        relative_spread: summary.cv,
        duration_millis: duration_millis(record.duration_s),
        detail_json: serde_json::to_vec(record).unwrap_or_default(),
    })
}

fn duration_millis(seconds: f64) -> u64 {
    if seconds.is_finite() && seconds > 0.0 {
        // Saturating float-to-int conversion.
        (seconds * 1000.0).round() as u64
    } else {
        0
    }
}

/// Adapts the API's progress callback to the suite's [`bench::Progress`].
struct ProgressAdapter<'a> {
    sink: &'a mut dyn FnMut(BenchmarkProgress) -> bool,
    done: usize,
    total: usize,
}

impl bench::Progress for ProgressAdapter<'_> {
    fn start(&mut self, id: &str, device: &str, index: usize, total: usize) {
        self.total = total;
        let _ = (self.sink)(BenchmarkProgress {
            benchmark_id: id.to_owned(),
            phase: BenchmarkPhase::Started,
            fraction_done: fraction(index.saturating_sub(1), total),
            message: format!("on {device}"),
        });
    }

    fn done(&mut self, record: &BenchRecord) {
        self.done += 1;
        let phase = match record.status {
            Status::Ok => BenchmarkPhase::Finished,
            Status::Skipped => BenchmarkPhase::Skipped,
            Status::Failed | Status::Invalid => BenchmarkPhase::Failed,
        };
        let message = match (&record.reason, record.cached) {
            (Some(reason), _) => reason.clone(),
            (None, true) => "cached result".to_owned(),
            (None, false) => String::new(),
        };
        let _ = (self.sink)(BenchmarkProgress {
            benchmark_id: record.id.clone(),
            phase,
            fraction_done: fraction(self.done, self.total),
            message,
        });
    }
}

#[allow(clippy::cast_precision_loss)]
fn fraction(done: usize, total: usize) -> f64 {
    if total == 0 {
        1.0
    } else {
        (done as f64 / total as f64).min(1.0)
    }
}

impl BenchmarkBackend for SuiteBackend {
    fn cached(&self) -> Result<BenchmarkReport, BenchmarkError> {
        let known = Self::lock(&self.state).fingerprint.clone();
        let fingerprint = match known {
            Some(fp) => fp,
            None => bench::fingerprint(&(self.inventory)()),
        };
        self.report_for(&fingerprint)
    }

    fn run(
        &self,
        ids: &[String],
        progress: &mut dyn FnMut(BenchmarkProgress) -> bool,
    ) -> Result<BenchmarkReport, BenchmarkError> {
        let only = (!ids.is_empty()).then(|| ids.to_vec());
        Self::begin(&self.state)?;
        let config = self.suite_config(only, true);
        let mut adapter = ProgressAdapter {
            sink: progress,
            done: 0,
            total: 0,
        };
        let outcome = bench::run_suite(&config, &mut adapter);
        match outcome {
            Ok(_) => Self::finish(&self.state, None),
            Err(bench::BenchSuiteError::UnknownId(id)) => {
                Self::finish(&self.state, None);
                return Err(BenchmarkError::UnknownId(id));
            }
            Err(e) => {
                let message = format!("benchmark run failed: {e}");
                Self::finish(&self.state, Some(message.clone()));
                return Err(BenchmarkError::Failed(message));
            }
        }
        self.report_for(&config.fingerprint)
    }

    fn on_fingerprint(&self, fingerprint: &str) {
        if !fingerprint.is_empty() {
            Self::lock(&self.state).fingerprint = Some(fingerprint.to_owned());
        }
        if !self.run_on_start {
            return;
        }
        if Self::begin(&self.state).is_err() {
            return;
        }
        let state = self.state.clone();
        let this = Self {
            state_dir: self.state_dir.clone(),
            exe: self.exe.clone(),
            inventory: self.inventory.clone(),
            run_on_start: self.run_on_start,
            state: self.state.clone(),
        };
        let spawned = std::thread::Builder::new()
            .name("fog-bench-background".into())
            .spawn(move || {
                let config = this.suite_config(None, false);
                let error = match bench::cached_results(&this.state_dir, &config.fingerprint) {
                    Ok(c) if !records_of(&c).is_empty() => None,
                    _ => {
                        tracing::info!(fingerprint = %config.fingerprint, "running benchmarks in the background");
                        bench::run_suite(&config, &mut bench::Silent)
                            .err()
                            .map(|e| format!("background benchmark run failed: {e}"))
                    }
                };
                if let Some(e) = &error {
                    tracing::warn!(error = %e, "background benchmarks");
                }
                Self::finish(&state, error);
            });
        if let Err(e) = spawned {
            Self::finish(
                &self.state,
                Some(format!("cannot start the benchmark thread: {e}")),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_precedence() {
        assert_eq!(state_of(true, true, true), BenchmarkState::Running);
        assert_eq!(state_of(false, true, true), BenchmarkState::Failed);
        assert_eq!(state_of(false, false, true), BenchmarkState::Done);
        assert_eq!(state_of(false, false, false), BenchmarkState::Pending);
    }

    #[test]
    fn records_of_skips_malformed_entries() {
        let doc = serde_json::json!({"results": [{"id": 3}, "x"]});
        assert!(records_of(&doc).is_empty());
        assert!(records_of(&serde_json::json!({})).is_empty());
    }

    #[test]
    fn fractions_and_durations() {
        assert!((fraction(1, 4) - 0.25).abs() < 1e-9);
        assert!((fraction(0, 0) - 1.0).abs() < 1e-9);
        assert_eq!(duration_millis(1.5), 1500);
        assert_eq!(duration_millis(f64::NAN), 0);
        assert_eq!(duration_millis(-1.0), 0);
    }

    #[test]
    fn one_run_at_a_time() {
        let state = Mutex::new(RunnerState::default());
        assert!(SuiteBackend::begin(&state).is_ok());
        assert!(matches!(
            SuiteBackend::begin(&state),
            Err(BenchmarkError::RunInProgress)
        ));
        SuiteBackend::finish(&state, None);
        assert!(SuiteBackend::begin(&state).is_ok());
    }
}
