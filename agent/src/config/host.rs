//! The sections about the host itself: `[state]` (the state dir), `[tpm]`, `[telemetry]` (the
//! host telemetry sampler), `[capacity]` (what the host keeps for itself, and its network
//! capacity) and `[bench]`.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{Amount, ByteSize};

/// `[state]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// The agent's state dir (database, TPM blobs, dev certificates).
    pub dir: PathBuf,
    /// Free space the state dir's filesystem must keep: below it, new jobs and image imports
    /// are refused (RESOURCE_EXHAUSTED naming this key).
    pub min_free_bytes: ByteSize,
    /// Space kept for the state database in a preallocated file (`state.slack`), released
    /// when the filesystem is full so a record can still be committed; 0 = none.
    pub slack_bytes: ByteSize,
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("/var/lib/fog-agent"),
            min_free_bytes: ByteSize(256 * 1024 * 1024),
            slack_bytes: ByteSize(32 * 1024 * 1024),
        }
    }
}

/// `[tpm]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TpmConfig {
    /// TCTI string: `device:/dev/tpmrm0`, `swtpm:host=127.0.0.1,port=2321`, `mssim:...` or
    /// `tabrmd`.
    pub tcti: String,
}

impl Default for TpmConfig {
    fn default() -> Self {
        Self {
            tcti: "device:/dev/tpmrm0".to_owned(),
        }
    }
}

/// `[telemetry]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Shortest sample interval a subscriber may ask for.
    pub min_interval_millis: u64,
    /// Samples buffered per subscriber; a slower reader loses the oldest ones.
    pub queue_depth: usize,
    /// Subscribers allowed at once (all connections together).
    pub max_subscribers: usize,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            min_interval_millis: 250,
            queue_depth: 16,
            max_subscribers: 4096,
        }
    }
}

impl TelemetryConfig {
    /// [`Self::min_interval_millis`] as a duration.
    pub fn min_interval(&self) -> Duration {
        Duration::from_millis(self.min_interval_millis)
    }
}

/// Highest `[capacity] network_bits_per_second`: 10 Tbit/s.
pub const MAX_NETWORK_BITS_PER_SECOND: u64 = 10_000_000_000_000;
/// Lowest non-zero `[capacity] network_bits_per_second`: the lowest rate limit a job may ask
/// for (8 kbit/s).
pub const MIN_NETWORK_BITS_PER_SECOND: u64 = 8_000;

/// `[capacity]`: the host's own reserve, subtracted from what is offered, and the network
/// capacity jobs' rate limits are allocated from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CapacityConfig {
    /// CPU kept for the host, in millicores (1000 = one logical CPU).
    pub reserve_cpu_millicores: u64,
    /// Memory kept for the host: a size (`"4 GiB"`) or a share of the total (`"10%"`).
    pub reserve_memory: Amount,
    /// Disk space kept on the state dir's filesystem: a size or a share.
    pub reserve_disk: Amount,
    /// GPUs kept for the host, by PCI bus id (`0000:01:00.0`).
    pub reserve_gpus: Vec<String>,
    /// The host's network capacity in bits per second, the same in each direction (full
    /// duplex); 0 = measured: the link speed of the interface holding the default IPv4 route.
    pub network_bits_per_second: u64,
}

impl Default for CapacityConfig {
    fn default() -> Self {
        Self {
            reserve_cpu_millicores: 1000,
            reserve_memory: Amount::Percent(10),
            reserve_disk: Amount::Percent(10),
            reserve_gpus: Vec::new(),
            network_bits_per_second: 0,
        }
    }
}

/// `[bench]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BenchConfig {
    /// Run the quick suite in the background on start and when the hardware fingerprint
    /// changes, when nothing is cached for the fingerprint.
    pub run_on_start: bool,
}

impl Default for BenchConfig {
    fn default() -> Self {
        Self { run_on_start: true }
    }
}
