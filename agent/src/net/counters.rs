//! A job's traffic, read from the host side of its veth: what the host interface receives the
//! job sent (out), what it transmits the job received (in). The host side outlives an agent
//! restart with the job, so the counts never go back while the job runs.

use std::collections::HashMap;

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
}

/// The counters of every interface of the agent's network namespace, read once per telemetry
/// tick (sysinfo), looked up per job by its host interface.
#[derive(Debug, Default)]
pub struct InterfaceCounters {
    by_name: HashMap<String, NetCounters>,
}

impl InterfaceCounters {
    /// Reads every interface's counters now.
    pub fn read() -> Self {
        let networks = match sysinfo::Networks::new_with_refreshed_list() {
            Ok(networks) => networks,
            Err(err) => {
                tracing::debug!(error = %err, "cannot read the interfaces' counters");
                return Self::default();
            }
        };
        let by_name = (&networks)
            .into_iter()
            .map(|(name, data)| {
                // The host side: its receive is the job's transmit.
                let counters = NetCounters {
                    in_bytes: data.total_transmitted(),
                    in_packets: data.total_packets_transmitted(),
                    out_bytes: data.total_received(),
                    out_packets: data.total_packets_received(),
                };
                (name.to_string_lossy().into_owned(), counters)
            })
            .collect();
        Self { by_name }
    }

    /// The traffic of the job whose host-side veth is `host_interface`; `None` when it is gone.
    pub fn job(&self, host_interface: &str) -> Option<NetCounters> {
        self.by_name.get(host_interface).copied()
    }
}
