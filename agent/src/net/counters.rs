//! A job's traffic, read from the host side of its veth: what the host interface receives the
//! job sent (out), what it transmits the job received (in). The host side outlives an agent
//! restart with the job, so the counts never go back while the job runs.

use std::path::Path;

/// Bytes and packets into and out of a job.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetCounters {
    /// Bytes the job received.
    pub in_bytes: u64,
    /// Packets the job received.
    pub in_packets: u64,
    /// Bytes the job sent.
    pub out_bytes: u64,
    /// Packets the job sent.
    pub out_packets: u64,
}

impl NetCounters {
    /// Each counter the larger of the two (counters never go back).
    pub fn max(self, other: Self) -> Self {
        Self {
            in_bytes: self.in_bytes.max(other.in_bytes),
            in_packets: self.in_packets.max(other.in_packets),
            out_bytes: self.out_bytes.max(other.out_bytes),
            out_packets: self.out_packets.max(other.out_packets),
        }
    }

    /// The traffic of the job whose host-side veth is `host_interface`
    /// (`/sys/class/net/<name>/statistics`); `None` when it is gone.
    pub fn of_job(host_interface: &str) -> Option<Self> {
        if host_interface.is_empty()
            || host_interface.contains('/')
            || host_interface.starts_with('.')
        {
            return None;
        }
        let dir = Path::new("/sys/class/net")
            .join(host_interface)
            .join("statistics");
        let read = |name: &str| -> Option<u64> {
            std::fs::read_to_string(dir.join(name))
                .ok()?
                .trim()
                .parse()
                .ok()
        };
        // The host side: what it transmits the job receives.
        Some(Self {
            in_bytes: read("tx_bytes")?,
            in_packets: read("tx_packets")?,
            out_bytes: read("rx_bytes")?,
            out_packets: read("rx_packets")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_counts_and_a_missing_interface_is_none() {
        // `lo` exists in every network namespace; its counters are readable numbers.
        assert!(NetCounters::of_job("lo").is_some());
        assert_eq!(NetCounters::of_job("no-such-if0"), None);
        assert_eq!(NetCounters::of_job("../lo"), None);
    }
}
