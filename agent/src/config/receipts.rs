//! `[receipts]`: the jobs' signed usage receipts (see `crate::receipts`): whether they are
//! issued, how often a running job gets a periodic one, and how often the AK quotes the
//! receipts issued since its last quote.

use serde::Deserialize;

/// `[receipts]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReceiptsConfig {
    /// Issue receipts (start, periodic, end) for every job.
    pub enabled: bool,
    /// Run time of a job between two of its periodic receipts, seconds.
    pub interval_secs: u64,
    /// Time between two receipt quotes while receipts are unquoted, seconds.
    pub quote_interval_secs: u64,
}

impl Default for ReceiptsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval_secs: 600,
            quote_interval_secs: 60,
        }
    }
}
