//! TEMPORARY minimal cgroup reader for jobs, shaped like the `cgroup` module's interface
//! (`read_stats(fs, layout, cgroups_path) -> CgroupStats`), until that module is merged.
//! Reads only what the job runner needs: CPU usage, memory usage/peak/limit, OOM kills, pids.

use crate::fsroot::FsRoot;

/// Which hierarchy the host has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupLayout {
    /// Pure v2 at `/sys/fs/cgroup`.
    V2,
    /// v1 controllers at `/sys/fs/cgroup/<controller>` (hybrid hosts included).
    V1,
}

impl CgroupLayout {
    /// Detects the layout below `fs`.
    pub fn detect(fs: &FsRoot) -> Result<Self, String> {
        if fs.exists("/sys/fs/cgroup/cgroup.controllers") {
            Ok(Self::V2)
        } else if fs.exists("/sys/fs/cgroup/memory") {
            Ok(Self::V1)
        } else {
            Err("no cgroup hierarchy under /sys/fs/cgroup".to_owned())
        }
    }
}

/// Stats of one cgroup; a missing file is `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CgroupStats {
    /// CPU time in ns.
    pub cpu_usage_nanos: Option<u64>,
    /// User CPU in ns.
    pub cpu_user_nanos: Option<u64>,
    /// System CPU in ns.
    pub cpu_system_nanos: Option<u64>,
    /// CFS periods.
    pub cpu_nr_periods: Option<u64>,
    /// Throttled periods.
    pub cpu_nr_throttled: Option<u64>,
    /// Throttled ns.
    pub cpu_throttled_nanos: Option<u64>,
    /// Memory in use.
    pub memory_usage_bytes: Option<u64>,
    /// Peak.
    pub memory_peak_bytes: Option<u64>,
    /// Limit.
    pub memory_limit_bytes: Option<u64>,
    /// OOM kills.
    pub oom_kills: Option<u64>,
    /// OOM events.
    pub oom_events: Option<u64>,
    /// Pids now.
    pub pids_current: Option<u64>,
    /// Pids limit.
    pub pids_limit: Option<u64>,
    /// Block I/O read bytes.
    pub io_read_bytes: Option<u64>,
    /// Block I/O written bytes.
    pub io_write_bytes: Option<u64>,
    /// Read ops.
    pub io_read_ops: Option<u64>,
    /// Write ops.
    pub io_write_ops: Option<u64>,
    /// What could not be read.
    pub notes: Vec<String>,
}

fn num(fs: &FsRoot, path: &str) -> Option<u64> {
    fs.read_opt(path)?.trim().parse().ok()
}

fn keyed(fs: &FsRoot, path: &str, key: &str) -> Option<u64> {
    fs.read_opt(path)?.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Reads the stats of the cgroup at `cgroups_path` (e.g. `/fog-agent/job-1`).
pub fn read_stats(fs: &FsRoot, layout: &CgroupLayout, cgroups_path: &str) -> CgroupStats {
    let p = cgroups_path.trim_end_matches('/');
    let mut s = CgroupStats::default();
    match layout {
        CgroupLayout::V1 => {
            let cpu = format!("/sys/fs/cgroup/cpuacct{p}");
            s.cpu_usage_nanos = num(fs, &format!("{cpu}/cpuacct.usage"));
            let cpu_stat = format!("/sys/fs/cgroup/cpu{p}/cpu.stat");
            s.cpu_nr_periods = keyed(fs, &cpu_stat, "nr_periods");
            s.cpu_nr_throttled = keyed(fs, &cpu_stat, "nr_throttled");
            s.cpu_throttled_nanos = keyed(fs, &cpu_stat, "throttled_time");
            let mem = format!("/sys/fs/cgroup/memory{p}");
            s.memory_usage_bytes = num(fs, &format!("{mem}/memory.usage_in_bytes"));
            s.memory_peak_bytes = num(fs, &format!("{mem}/memory.max_usage_in_bytes"));
            s.memory_limit_bytes = num(fs, &format!("{mem}/memory.limit_in_bytes"));
            s.oom_kills = keyed(fs, &format!("{mem}/memory.oom_control"), "oom_kill");
            let pids = format!("/sys/fs/cgroup/pids{p}");
            s.pids_current = num(fs, &format!("{pids}/pids.current"));
            s.pids_limit = num(fs, &format!("{pids}/pids.max"));
        }
        CgroupLayout::V2 => {
            let dir = format!("/sys/fs/cgroup{p}");
            let cpu_stat = format!("{dir}/cpu.stat");
            s.cpu_usage_nanos = keyed(fs, &cpu_stat, "usage_usec").map(|u| u * 1000);
            s.cpu_nr_periods = keyed(fs, &cpu_stat, "nr_periods");
            s.cpu_nr_throttled = keyed(fs, &cpu_stat, "nr_throttled");
            s.cpu_throttled_nanos = keyed(fs, &cpu_stat, "throttled_usec").map(|u| u * 1000);
            s.memory_usage_bytes = num(fs, &format!("{dir}/memory.current"));
            s.memory_peak_bytes = num(fs, &format!("{dir}/memory.peak"));
            s.memory_limit_bytes = num(fs, &format!("{dir}/memory.max"));
            s.oom_kills = keyed(fs, &format!("{dir}/memory.events"), "oom_kill");
            s.pids_current = num(fs, &format!("{dir}/pids.current"));
            s.pids_limit = num(fs, &format!("{dir}/pids.max"));
        }
    }
    if s.cpu_usage_nanos.is_none() {
        s.notes.push(format!("cpu usage of {p} unreadable"));
    }
    s
}
