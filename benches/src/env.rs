//! The environment snapshot taken before and after every benchmark: CPU governor and boost,
//! SMT, steal time, load average, pressure stall information (PSI). A benchmark whose
//! environment changed for the worse (steal time, throttling) can be told apart from a slow host.
//!
//! Reading is split from parsing: `parse_*` take file contents and are unit-tested; [`snapshot`]
//! reads below a root directory (`/` on a live host, a fixture tree in tests).

use std::path::Path;

use serde::{Deserialize, Serialize};

/// The environment at one instant.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EnvSnapshot {
    /// cpufreq governor of CPU 0 (`None` without cpufreq, as in most VMs).
    pub governor: Option<String>,
    /// Whether turbo/boost is enabled (`cpufreq/boost` or `intel_pstate/no_turbo`).
    pub boost: Option<bool>,
    /// Whether SMT is active.
    pub smt_active: Option<bool>,
    /// 1-minute load average.
    pub load1: Option<f64>,
    /// Cumulative steal time over all CPUs, in USER_HZ ticks (compare before and after).
    pub steal_ticks: Option<u64>,
    /// Cumulative total CPU time over all CPUs, in ticks (to turn a steal delta into a share).
    pub total_ticks: Option<u64>,
    /// CPU pressure, `some avg10` (percent).
    pub psi_cpu_some_avg10: Option<f64>,
    /// Memory pressure, `some avg10` (percent).
    pub psi_memory_some_avg10: Option<f64>,
    /// I/O pressure, `some avg10` (percent).
    pub psi_io_some_avg10: Option<f64>,
}

impl EnvSnapshot {
    /// Share of CPU time stolen by the hypervisor between `self` (before) and `after`, 0..1.
    pub fn steal_share_until(&self, after: &Self) -> Option<f64> {
        let steal = after.steal_ticks?.checked_sub(self.steal_ticks?)?;
        let total = after.total_ticks?.checked_sub(self.total_ticks?)?;
        (total > 0).then(|| steal as f64 / total as f64)
    }
}

/// Reads the snapshot below `root` (`/` on the live host). Missing files give `None` fields.
pub fn snapshot(root: &Path) -> EnvSnapshot {
    let read = |rel: &str| std::fs::read_to_string(root.join(rel)).ok();
    let (steal_ticks, total_ticks) = read("proc/stat")
        .and_then(|s| parse_proc_stat_cpu(&s))
        .map_or((None, None), |(s, t)| (Some(s), Some(t)));
    let boost = read("sys/devices/system/cpu/cpufreq/boost")
        .and_then(|s| parse_flag(&s))
        .or_else(|| {
            read("sys/devices/system/cpu/intel_pstate/no_turbo")
                .and_then(|s| parse_flag(&s))
                .map(|no_turbo| !no_turbo)
        });
    EnvSnapshot {
        governor: read("sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty()),
        boost,
        smt_active: read("sys/devices/system/cpu/smt/active").and_then(|s| parse_flag(&s)),
        load1: read("proc/loadavg").and_then(|s| parse_loadavg(&s)),
        steal_ticks,
        total_ticks,
        psi_cpu_some_avg10: read("proc/pressure/cpu").and_then(|s| parse_psi_some_avg10(&s)),
        psi_memory_some_avg10: read("proc/pressure/memory").and_then(|s| parse_psi_some_avg10(&s)),
        psi_io_some_avg10: read("proc/pressure/io").and_then(|s| parse_psi_some_avg10(&s)),
    }
}

/// Parses a sysfs `0`/`1` flag.
pub fn parse_flag(text: &str) -> Option<bool> {
    match text.trim() {
        "0" => Some(false),
        "1" => Some(true),
        _ => None,
    }
}

/// Parses the 1-minute load average from `/proc/loadavg`.
pub fn parse_loadavg(text: &str) -> Option<f64> {
    text.split_whitespace().next()?.parse().ok()
}

/// Parses the aggregate `cpu` line of `/proc/stat` into (steal, total) ticks.
pub fn parse_proc_stat_cpu(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice] (guest is inside user).
    let steal = *fields.get(7)?;
    let total = fields.iter().take(8).sum();
    Some((steal, total))
}

/// Parses `some avg10=` from a `/proc/pressure/*` file.
pub fn parse_psi_some_avg10(text: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.starts_with("some "))?;
    line.split_whitespace()
        .find_map(|f| f.strip_prefix("avg10="))?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat() {
        let text = "cpu  100 5 50 1000 10 1 2 7 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n";
        assert_eq!(parse_proc_stat_cpu(text), Some((7, 1175)));
        assert_eq!(parse_proc_stat_cpu("cpu 1 2 x"), None);
        assert_eq!(parse_proc_stat_cpu("cpu 1 2 3"), None);
        assert_eq!(parse_proc_stat_cpu(""), None);
    }

    #[test]
    fn parses_psi_loadavg_flags() {
        let psi = "some avg10=1.50 avg60=0.20 avg300=0.00 total=123\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";
        assert_eq!(parse_psi_some_avg10(psi), Some(1.5));
        assert_eq!(parse_psi_some_avg10("full avg10=1"), None);
        assert_eq!(parse_psi_some_avg10("some avg10=x"), None);
        assert_eq!(parse_loadavg("0.52 0.40 0.30 1/200 999\n"), Some(0.52));
        assert_eq!(parse_loadavg(""), None);
        assert_eq!(parse_flag("1\n"), Some(true));
        assert_eq!(parse_flag("0"), Some(false));
        assert_eq!(parse_flag("yes"), None);
    }

    #[test]
    fn snapshot_reads_a_fixture_tree_and_computes_steal_share() {
        let dir = tempfile::tempdir().unwrap();
        let w = |rel: &str, text: &str| {
            let p = dir.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        w("proc/stat", "cpu  10 0 0 80 0 0 0 10 0 0\n");
        w("proc/loadavg", "1.25 1 1 1/1 1\n");
        w("sys/devices/system/cpu/intel_pstate/no_turbo", "1\n");
        w(
            "sys/devices/system/cpu/cpu0/cpufreq/scaling_governor",
            "performance\n",
        );
        let before = snapshot(dir.path());
        assert_eq!(before.governor.as_deref(), Some("performance"));
        assert_eq!(before.boost, Some(false));
        assert_eq!(before.load1, Some(1.25));
        assert_eq!(before.psi_cpu_some_avg10, None);
        w("proc/stat", "cpu  20 0 0 150 0 0 0 30 0 0\n");
        let after = snapshot(dir.path());
        let share = before.steal_share_until(&after).unwrap();
        assert!((share - 0.2).abs() < 1e-12, "{share}");
    }
}
