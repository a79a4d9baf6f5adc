//! A job's traffic, read from the host side of its veth: what the host interface receives the
//! job sent (out), what it transmits the job received (in). The host side outlives an agent
//! restart with the job, so the counts never go back while the job runs.

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

    /// The traffic of the job whose host-side veth is `host_interface`, from
    /// `/proc/net/dev` (the agent's own network namespace, whatever `/sys` shows); `None`
    /// when it is gone.
    pub fn of_job(host_interface: &str) -> Option<Self> {
        Self::from_proc_net_dev(&read_proc_net_dev()?, host_interface)
    }

    /// As [`Self::of_job`], from a table read once for many jobs ([`read_proc_net_dev`]).
    pub fn of_job_in(table: &str, host_interface: &str) -> Option<Self> {
        Self::from_proc_net_dev(table, host_interface)
    }

    /// An interface's row of a `/proc/net/dev` table, seen from the job's side.
    fn from_proc_net_dev(table: &str, host_interface: &str) -> Option<Self> {
        let row = table.lines().find_map(|line| {
            let (name, figures) = line.split_once(':')?;
            (name.trim() == host_interface).then_some(figures)
        })?;
        let figures: Vec<u64> = row
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        // Receive: bytes packets errs drop fifo frame compressed multicast; then transmit.
        // The host side: what it transmits the job receives.
        Some(Self {
            in_bytes: *figures.get(8)?,
            in_packets: *figures.get(9)?,
            out_bytes: *figures.first()?,
            out_packets: *figures.get(1)?,
        })
    }
}

/// The agent's network namespace's `/proc/net/dev` table (one read serves every job).
pub fn read_proc_net_dev() -> Option<String> {
    std::fs::read_to_string("/proc/net/dev").ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:  123456     789    0    0    0     0          0         0   123456     789    0    0    0     0       0          0
veth1a2b: 5000 40 0 0 0 0 0 0 900000 700 0 0 0 0 0 0
";

    #[test]
    fn a_row_of_proc_net_dev_seen_from_the_job() {
        let job = NetCounters::from_proc_net_dev(TABLE, "veth1a2b").unwrap();
        assert_eq!(
            job,
            NetCounters {
                in_bytes: 900_000,
                in_packets: 700,
                out_bytes: 5000,
                out_packets: 40,
            }
        );
        assert_eq!(NetCounters::from_proc_net_dev(TABLE, "veth"), None);
        // This namespace's own table has loopback.
        assert!(NetCounters::of_job("lo").is_some());
    }
}
