//! The Prometheus `/metrics` endpoint: what the daemon knows, in the Prometheus text format
//! (0.0.4) or OpenMetrics 1.0, encoded by the `prometheus-client` crate.
//!
//! - [`families`]: turns one [`Snapshot`] into metric families. Host metrics use
//!   node_exporter's names (`node_cpu_seconds_total{cpu,mode}`, `node_memory_MemTotal_bytes`,
//!   ...) so existing dashboards work; the rest are `fog_*`: GPUs (a failed query is
//!   `fog_gpu_up 0` with no other series, never zeros that look idle), the GPU->job mapping
//!   (`fog_gpu_job_info`, instead of a job label on every GPU sample), jobs, capacity,
//!   benchmark medians, attestation outcomes, the API listeners' connections and limits, and
//!   the agent's own health.
//! - [`process`]: the agent process's own RSS, CPU time and file descriptors.
//! - [`server`]: the HTTP(S) server (hyper, already in the tree through tonic).
//!
//! A scrape never collects host telemetry itself: it reads the newest sample of the one
//! telemetry sampler ([`crate::telemetry::TelemetryHub::latest`]); while the endpoint is on,
//! it holds a subscription at `[metrics] sample_interval_millis` so the sampler keeps running.
//! Benchmark results come from the state store at most every [`BENCHMARK_REFRESH`].
//!
//! Unauthenticated by design (Prometheus scrapers rarely carry client certificates): the
//! endpoint serves only `GET /metrics`, exposes no secrets (no keys, nonces, certificates or
//! job specs), changes nothing, and listens on loopback unless configured otherwise.

pub mod families;
pub mod process;
pub mod server;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::attest::{AttestationStats, Operation, OperationCounts};
use crate::bench::{BenchmarkBackend, BenchmarkError, BenchmarkReport};
use crate::capacity::{CapacityLedger, CapacitySnapshot};
use crate::inventory::cache::InventoryCache;
use crate::jobs::{JobMetrics, JobMetricsSource, StateDiskMetrics};
use crate::telemetry::{HostSample, HubStats, TelemetryHub};

pub use server::{MetricsError, MetricsServer};

/// How long cached benchmark results are reused before the state store is read again.
pub const BENCHMARK_REFRESH: Duration = Duration::from_secs(30);

/// How long a scrape waits for the daemon's first inventory before leaving benchmark results
/// out.
pub const INVENTORY_WAIT: Duration = Duration::from_secs(2);

/// The benchmark backend's answer, shared between scrapes.
pub type CachedBenchmarks = Arc<Result<BenchmarkReport, BenchmarkError>>;

/// The handles a scrape reads from, as the daemon hands them over.
#[derive(Clone)]
pub struct Handles {
    /// The one telemetry sampler's hub.
    pub telemetry: TelemetryHub,
    /// The capacity ledger.
    pub capacity: Arc<CapacityLedger>,
    /// The inventory cache (benchmark results wait for its first collection).
    pub inventory: Arc<InventoryCache>,
    /// The benchmark cache.
    pub benchmarks: Arc<dyn BenchmarkBackend>,
    /// Attestation outcomes.
    pub attestation: Arc<AttestationStats>,
    /// Jobs (None: the job runner is off).
    pub jobs: Option<Arc<dyn JobMetricsSource>>,
    /// The API listeners' connection counters (None: not served).
    pub connections: Option<ConnectionSource>,
    /// The market link's tunnels (None: not running).
    pub market: Option<MarketSource>,
    /// The usage receipts' issuer (None: no receipts).
    pub receipts: Option<Arc<crate::receipts::ReceiptStats>>,
}

/// Reads the market link's tunnels, one per endpoint.
pub type MarketSource = Arc<dyn Fn() -> Vec<fog_tunnel::LinkStatus> + Send + Sync>;

/// Reads the API listeners' connection counters.
pub type ConnectionSource = Arc<dyn Fn() -> ApiConnections + Send + Sync>;

/// The API listeners' connection counters and TLS reloads.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ApiConnections {
    /// One entry per TCP listener.
    pub listeners: Vec<ListenerConnections>,
    /// TLS configurations reloaded since start.
    pub tls_reloads_ok: u64,
    /// TLS reloads that failed (the previous configuration stayed in use).
    pub tls_reloads_failed: u64,
}

/// One TCP listener's connections.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConnections {
    /// The listener's address.
    pub listener: String,
    /// Connections open now (handshaking and established).
    pub open: u64,
    /// Unfinished TLS handshakes now.
    pub pending: u64,
    /// The connection limit in force.
    pub max_connections: u64,
    /// Connections closed by the limits or a failed handshake, by reason, since start.
    pub closed: Vec<(&'static str, u64)>,
}

impl std::fmt::Debug for Handles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handles")
            .field("jobs", &self.jobs.is_some())
            .finish_non_exhaustive()
    }
}

/// Everything a scrape reads from. Cheap to clone.
#[derive(Clone)]
pub struct Sources {
    handles: Handles,
    /// Benchmark results read at most every [`BENCHMARK_REFRESH`].
    benchmark_cache: Arc<Mutex<Option<(Instant, CachedBenchmarks)>>>,
    /// When the process started (seconds since the epoch), read once.
    process_start: Option<f64>,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources").finish_non_exhaustive()
    }
}

impl Sources {
    /// The sources of one daemon.
    pub fn new(handles: Handles) -> Self {
        Self {
            handles,
            benchmark_cache: Arc::new(Mutex::new(None)),
            process_start: process::start_time_seconds(),
        }
    }

    /// The telemetry hub.
    pub fn telemetry(&self) -> &TelemetryHub {
        &self.handles.telemetry
    }

    /// Gathers one scrape's data. Never collects host telemetry or the inventory; reads the
    /// state store (on the blocking pool) only when the cached benchmark results are older than
    /// [`BENCHMARK_REFRESH`].
    pub async fn snapshot(&self) -> Snapshot {
        let benchmarks = self.benchmarks_cached().await;
        Snapshot {
            host: self.handles.telemetry.latest(),
            hub: self.handles.telemetry.stats(),
            capacity: self.handles.capacity.current(),
            benchmarks,
            attestation: self.handles.attestation.get(),
            jobs: self
                .handles
                .jobs
                .as_ref()
                .map(|jobs| jobs.job_metrics())
                .unwrap_or_default(),
            state_disk: self
                .handles
                .jobs
                .as_ref()
                .and_then(|jobs| jobs.state_disk()),
            process: process::read_self(),
            process_start: self.process_start,
            connections: self
                .handles
                .connections
                .as_ref()
                .map(|read| read())
                .unwrap_or_default(),
            market: self
                .handles
                .market
                .as_ref()
                .map(|read| read())
                .unwrap_or_default(),
            receipts: self.handles.receipts.as_ref().map(|stats| stats.counts()),
        }
    }

    /// The cached benchmark results, read again when stale. The results belong to the hardware
    /// fingerprint, which the daemon learns from its first inventory: until that collection
    /// (started at start-up) is done, waiting at most [`INVENTORY_WAIT`], there are none, so a
    /// scrape never starts an inventory collection of its own.
    async fn benchmarks_cached(&self) -> Option<CachedBenchmarks> {
        {
            let cache = self
                .benchmark_cache
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some((at, report)) = cache.as_ref() {
                if at.elapsed() < BENCHMARK_REFRESH {
                    return Some(report.clone());
                }
            }
        }
        match tokio::time::timeout(INVENTORY_WAIT, self.handles.inventory.get(false)).await {
            Ok(Ok(_)) => {}
            _ => return None,
        }
        let backend = self.handles.benchmarks.clone();
        let report = tokio::task::spawn_blocking(move || backend.cached())
            .await
            .unwrap_or_else(|err| Err(BenchmarkError::Failed(format!("benchmark cache: {err}"))));
        let report = Arc::new(report);
        *self
            .benchmark_cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some((Instant::now(), report.clone()));
        Some(report)
    }
}

/// The data of one scrape.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The newest host sample (`None` before the sampler's first one).
    pub host: Option<Arc<HostSample>>,
    /// Sampler counters.
    pub hub: HubStats,
    /// Capacity.
    pub capacity: Arc<CapacitySnapshot>,
    /// Cached benchmark results or why there are none; `None` before the first inventory.
    pub benchmarks: Option<CachedBenchmarks>,
    /// Attestation outcomes.
    pub attestation: BTreeMap<Operation, OperationCounts>,
    /// Jobs.
    pub jobs: Vec<JobMetrics>,
    /// The state filesystem's headroom (`None`: no job runner, or unreadable).
    pub state_disk: Option<StateDiskMetrics>,
    /// The agent process itself (`None` when `/proc/self` was unreadable).
    pub process: Option<process::ProcessStats>,
    /// Process start time, seconds since the epoch.
    pub process_start: Option<f64>,
    /// The API listeners' connections.
    pub connections: ApiConnections,
    /// The market link's tunnels, one per endpoint.
    pub market: Vec<fog_tunnel::LinkStatus>,
    /// The usage receipts' counters (None: no receipts).
    pub receipts: Option<crate::receipts::stats::ReceiptCounts>,
}

/// The exposition format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text 0.0.4 (what `promtool check metrics` reads).
    PrometheusText,
    /// OpenMetrics 1.0 text.
    OpenMetrics,
}

impl Format {
    /// The format an `Accept` header asks for: OpenMetrics when it names it, else Prometheus
    /// text (the default of every scraper).
    pub fn negotiate(accept: Option<&str>) -> Self {
        match accept {
            Some(accept) if accept.contains("application/openmetrics-text") => Self::OpenMetrics,
            _ => Self::PrometheusText,
        }
    }

    /// The `Content-Type` of the format.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::PrometheusText => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// Encodes a snapshot.
pub fn render(snapshot: Snapshot, format: Format) -> Result<String, std::fmt::Error> {
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(families::SnapshotCollector(snapshot)));
    let mut out = String::with_capacity(16 * 1024);
    match format {
        Format::PrometheusText => {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)?
        }
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, &registry)?,
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_header_negotiation() {
        assert_eq!(Format::negotiate(None), Format::PrometheusText);
        assert_eq!(
            Format::negotiate(Some("text/plain;version=0.0.4;q=0.5,*/*;q=0.1")),
            Format::PrometheusText
        );
        // What Prometheus itself sends.
        assert_eq!(
            Format::negotiate(Some(
                "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
            )),
            Format::OpenMetrics
        );
    }
}
