//! The agent's configuration file (`/etc/fog-agent/agent.toml`): its typed form, parsing and
//! validation.
//!
//! Parsing is pure ([`Config::parse`] takes the file's text), so valid and invalid fixtures test
//! it without touching the environment. Unknown keys are errors (`deny_unknown_fields`); a file
//! may leave out any key or section, which then takes its default. The defaults are the values
//! in `packaging/agent.toml`, the commented default config shipped with the package (a test
//! checks that the two agree), so `fog-agent serve` runs with no file at all.
//!
//! Errors name the key: a TOML or type error gives the key path and line
//! (`agent.toml:3:1: api.listen: invalid socket address syntax`), every unknown key and every
//! value of the wrong type at once when the document itself is well-formed; semantic validation
//! then reports every bad value, each with its key.
//!
//! Where things are: [`Config`] and its entry points ([`Config::load`], [`Config::parse`]) here;
//! the sections' types in `api` (`[api]`, `[metrics]`), `jobs` (`[jobs]`), `network`
//! (`[jobs] network`), `images`
//! (`[images]`), `market` (`[market]`), `receipts` (`[receipts]`) and `host` (`[state]`, `[tpm]`, `[telemetry]`, `[capacity]`, `[bench]`); sizes and shares in `units`; the semantic
//! checks in `validate`; the error and how a TOML error is traced to its key in `error`. Every
//! public item is re-exported here.

mod api;
mod error;
mod host;
mod images;
mod jobs;
mod market;
mod network;
mod receipts;
#[cfg(test)]
mod tests;
mod units;
mod validate;

use std::path::Path;

use serde::Deserialize;

pub use api::{ApiConfig, MetricsConfig};
pub use error::{ConfigError, Problem};
pub use host::{BenchConfig, CapacityConfig, StateConfig, TelemetryConfig, TpmConfig};
pub use images::ImagesConfig;
pub use jobs::{JobsConfig, ScratchLimit};
pub use market::{parse_endpoint, MarketConfig, MarketEndpoint};
pub use network::{CniNetwork, JobNetwork, PortRange};
pub use receipts::ReceiptsConfig;
pub use units::{parse_amount, parse_size, Amount, ByteSize, SizeError};

/// The default config file path.
pub const DEFAULT_PATH: &str = "/etc/fog-agent/agent.toml";

/// The commented default config shipped in `packaging/agent.toml`.
pub const DEFAULT_TOML: &str = include_str!("../../../packaging/agent.toml");

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[api]`: listeners, TLS and limits.
    pub api: ApiConfig,
    /// `[state]`: where the agent keeps its state.
    pub state: StateConfig,
    /// `[tpm]`: which TPM to use.
    pub tpm: TpmConfig,
    /// `[telemetry]`: the host telemetry sampler.
    pub telemetry: TelemetryConfig,
    /// `[capacity]`: what the host keeps for itself.
    pub capacity: CapacityConfig,
    /// `[bench]`: the daemon's benchmark runs.
    pub bench: BenchConfig,
    /// `[jobs]`: the job runner (OCI runtime, job dirs, limits).
    pub jobs: JobsConfig,
    /// `[images]`: limits of an image import.
    pub images: ImagesConfig,
    /// `[metrics]`: the Prometheus `/metrics` endpoint.
    pub metrics: MetricsConfig,
    /// `[market]`: reverse tunnels to markets.
    pub market: MarketConfig,
    /// `[receipts]`: the jobs' signed usage receipts.
    pub receipts: ReceiptsConfig,
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates config text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|err| {
            // A well-formed document: name every bad key, not only the first.
            match error::key_errors::<Self>(text, origin) {
                mut all if all.len() > 1 => ConfigError::Keys(std::mem::take(&mut all)),
                _ => error::syntax_error(text, origin, &err),
            }
        })?;
        let problems = config.problems();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid {
                origin: origin.to_owned(),
                problems,
            })
        }
    }
}
