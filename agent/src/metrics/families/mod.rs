//! One scrape's [`Snapshot`] as metric families (the names are documented in the README's
//! metrics table; keep the two in step).
//!
//! Rules: a figure that is not known is left out, never written as 0; a family with no series
//! is left out; counters are cumulative values read from the kernel or our own counters (the
//! encoder appends `_total`); ratios are 0 to 1.
//!
//! This module owns the writer the families share and the collector that writes them in a
//! fixed order; each submodule writes one group:
//! - `host`: node_exporter's `node_*` families and the telemetry collectors' own figures;
//! - `gpu`: `fog_gpu_*` from GPU telemetry and the GPU->job mapping;
//! - `jobs`: `fog_job_*`, `fog_state_*` (the state filesystem's headroom);
//! - `capacity`: `fog_capacity_*` and the cached `fog_benchmark_*` results;
//! - `agent`: attestation outcomes, the API listeners' connections, the agent's build,
//!   telemetry hub and process.

mod agent;
mod capacity;
mod gpu;
mod host;
mod jobs;
#[cfg(test)]
mod tests;

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

use super::Snapshot;

/// Labels of one series.
type Labels = Vec<(&'static str, String)>;

/// Series of one family.
#[derive(Default)]
struct Series(Vec<(Labels, f64)>);

impl Series {
    fn push(&mut self, labels: Labels, value: f64) {
        self.0.push((labels, value));
    }

    fn push_opt(&mut self, labels: Labels, value: Option<f64>) {
        if let Some(value) = value {
            self.0.push((labels, value));
        }
    }
}

/// Writes families; skips empty ones.
struct Writer<'a> {
    encoder: DescriptorEncoder<'a>,
}

impl Writer<'_> {
    fn family(&mut self, kind: MetricType, name: &str, help: &str, series: Series) -> fmt::Result {
        if series.0.is_empty() {
            return Ok(());
        }
        // The encoder ends the help text with a period itself.
        let help = help.strip_suffix('.').unwrap_or(help);
        let mut metric = self.encoder.encode_descriptor(name, help, None, kind)?;
        for (labels, value) in &series.0 {
            let mut family = metric.encode_family(labels)?;
            match kind {
                MetricType::Counter => {
                    family.encode_counter::<NoLabelSet, f64, f64>(value, None)?
                }
                _ => family.encode_gauge(value)?,
            }
        }
        Ok(())
    }

    /// A counter; `name` without `_total` (the encoder adds it).
    fn counter(&mut self, name: &str, help: &str, series: Series) -> fmt::Result {
        self.family(MetricType::Counter, name, help, series)
    }

    fn gauge(&mut self, name: &str, help: &str, series: Series) -> fmt::Result {
        self.family(MetricType::Gauge, name, help, series)
    }

    fn gauge1(&mut self, name: &str, help: &str, value: Option<f64>) -> fmt::Result {
        let mut series = Series::default();
        series.push_opt(Vec::new(), value);
        self.gauge(name, help, series)
    }

    fn counter1(&mut self, name: &str, help: &str, value: Option<f64>) -> fmt::Result {
        let mut series = Series::default();
        series.push_opt(Vec::new(), value);
        self.counter(name, help, series)
    }
}

fn epoch_seconds(at: SystemTime) -> f64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn l1(key: &'static str, value: impl Into<String>) -> Labels {
    vec![(key, value.into())]
}

/// The collector of one scrape.
#[derive(Debug)]
pub struct SnapshotCollector(pub Snapshot);

impl Collector for SnapshotCollector {
    fn encode(&self, encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let mut w = Writer { encoder };
        let s = &self.0;
        if let Some(host) = &s.host {
            host::host_families(&mut w, host)?;
            gpu::gpu_families(&mut w, host)?;
        }
        gpu::gpu_job_families(&mut w, s)?;
        jobs::job_families(&mut w, s)?;
        jobs::state_disk_families(&mut w, s)?;
        capacity::capacity_families(&mut w, s)?;
        capacity::benchmark_families(&mut w, s)?;
        agent::attestation_families(&mut w, s)?;
        agent::receipt_families(&mut w, s)?;
        agent::api_families(&mut w, s)?;
        agent::market_families(&mut w, s)?;
        agent::agent_families(&mut w, s)
    }
}
