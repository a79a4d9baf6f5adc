//! Which cgroup hierarchy the host has, and the resource use of one cgroup (a job's).
//!
//! [`CgroupLayout::detect`] reads `<root>/proc/self/mountinfo`: cgroup v1 hierarchies (one mount
//! per controller or per controller group, e.g. `cpu,cpuacct`), the cgroup v2 unified mount, or
//! both ("hybrid": v1 controllers plus a v2 mount that usually has few or no controllers, like
//! this project's CI machine, whose `/sys/fs/cgroup/unified` offers only `hugetlb`). Production
//! hosts are usually pure v2.
//!
//! [`read_stats`] reads one cgroup given as the OCI `linux.cgroupsPath` a job runs under with
//! runc's cgroupfs driver (`/fog-agent/job-abc`): v1 reads `<controller mount>/fog-agent/job-abc`
//! for each controller, v2 reads `<unified mount>/fog-agent/job-abc`. On a hybrid host a
//! controller that v1 does not mount but the unified hierarchy offers (its root's
//! `cgroup.controllers`) is read the v2 way. A file that is missing or does not parse leaves
//! its fields `None` (never a made-up 0) and adds a line to `notes`.
//!
//! Parsing ([`parse`]) takes strings; every read goes through an injected [`FsRoot`], so
//! fixture trees (`agent/tests/fixtures/cgroup-v1`, `cgroup-v2`) test both layouts.

pub mod parse;

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde::Serialize;

use crate::fsroot::{FsError, FsRoot};

/// The mountinfo file that tells the layout.
pub const MOUNTINFO: &str = "/proc/self/mountinfo";

/// The v1 controllers the agent knows (others in mount options, like `name=systemd`, are not
/// controllers).
pub(crate) const V1_CONTROLLERS: &[&str] = &[
    "blkio",
    "cpu",
    "cpuacct",
    "cpuset",
    "devices",
    "freezer",
    "hugetlb",
    "memory",
    "misc",
    "net_cls",
    "net_prio",
    "perf_event",
    "pids",
    "rdma",
];

/// Why the cgroup layout or a cgroup's processes could not be found. Every message names the
/// file or path at fault and carries its cause in the text (no `source()`), so a log line that
/// prints only the error shows everything once.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A file (the mountinfo, a `cgroup.procs`) could not be read.
    #[error("cannot read {}: {}", .0.path, .0.source)]
    Read(FsError),
    /// No cgroup filesystem is mounted.
    #[error("/proc/self/mountinfo lists no cgroup or cgroup2 mount")]
    NotMounted,
    /// The OCI `cgroupsPath` has `..` or a non-UTF-8 component.
    #[error("cgroups path {0:?} is not a plain path")]
    NotAPlainPath(String),
    /// A v1 host mounts none of the controllers whose `cgroup.procs` lists the processes.
    #[error("no pids, cpu or memory controller mounted")]
    NoProcsController,
    /// A line of `cgroup.procs` is not a pid.
    #[error("{path}: {line:?} is not a pid")]
    NotAPid {
        /// The `cgroup.procs` file.
        path: String,
        /// The line.
        line: String,
    },
}

impl From<FsError> for CgroupError {
    fn from(err: FsError) -> Self {
        Self::Read(err)
    }
}

/// Which cgroup hierarchy the host has, found from `<root>/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "version", rename_all = "lowercase")]
pub enum CgroupLayout {
    /// Pure cgroup v2: one unified hierarchy.
    V2 {
        /// Its mount point (as the host sees it, e.g. `/sys/fs/cgroup`).
        root: PathBuf,
    },
    /// cgroup v1 (hybrid when `unified` is set).
    V1 {
        /// Controller name -> mount point (`cpu` -> `/sys/fs/cgroup/cpu`; co-mounted
        /// controllers share one).
        controllers: BTreeMap<String, PathBuf>,
        /// The cgroup2 mount of a hybrid host (`/sys/fs/cgroup/unified`).
        unified: Option<PathBuf>,
    },
}

impl CgroupLayout {
    /// Finds the layout from `<fs>/proc/self/mountinfo`.
    pub fn detect(fs: &FsRoot) -> Result<CgroupLayout, CgroupError> {
        let text = fs.read_string(MOUNTINFO)?;
        parse::layout_from_mountinfo(&text).ok_or(CgroupError::NotMounted)
    }

    /// `v1`, `v2` or `hybrid`, for logs and the inventory.
    pub fn kind(&self) -> &'static str {
        match self {
            CgroupLayout::V2 { .. } => "v2",
            CgroupLayout::V1 { unified: None, .. } => "v1",
            CgroupLayout::V1 {
                unified: Some(_), ..
            } => "hybrid",
        }
    }

    /// The v1 mount point of a controller.
    pub fn v1_mount(&self, controller: &str) -> Option<&Path> {
        match self {
            CgroupLayout::V1 { controllers, .. } => {
                controllers.get(controller).map(PathBuf::as_path)
            }
            CgroupLayout::V2 { .. } => None,
        }
    }

    /// The unified (v2) mount point, if any.
    pub fn unified(&self) -> Option<&Path> {
        match self {
            CgroupLayout::V2 { root } => Some(root),
            CgroupLayout::V1 { unified, .. } => unified.as_deref(),
        }
    }
}

/// Resource use of one cgroup. Every field is `None` when its file is missing or does not
/// parse (`notes` says which); limits are `None` also when there is no limit (`max`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CgroupStats {
    /// CPU time, user + system (v1 `cpuacct.usage`, v2 `cpu.stat usage_usec`).
    pub cpu_usage_nanos: Option<u64>,
    /// User CPU time (v1 `cpuacct.stat user` in USER_HZ ticks, v2 `user_usec`).
    pub cpu_user_nanos: Option<u64>,
    /// System CPU time (v1 `cpuacct.stat system`, v2 `system_usec`).
    pub cpu_system_nanos: Option<u64>,
    /// CFS enforcement periods that elapsed (`cpu.stat nr_periods`).
    pub cpu_nr_periods: Option<u64>,
    /// Periods in which the quota ran out (`nr_throttled`).
    pub cpu_nr_throttled: Option<u64>,
    /// Time spent throttled (v1 `throttled_time`, v2 `throttled_usec`).
    pub cpu_throttled_nanos: Option<u64>,
    /// Memory charged now (v1 `memory.usage_in_bytes`, v2 `memory.current`).
    pub memory_usage_bytes: Option<u64>,
    /// Highest memory charged (v1 `memory.max_usage_in_bytes`, v2 `memory.peak`, which kernels
    /// before 5.19 lack).
    pub memory_peak_bytes: Option<u64>,
    /// The memory limit (v1 `memory.limit_in_bytes`, v2 `memory.max`); `None` when unlimited.
    pub memory_limit_bytes: Option<u64>,
    /// Processes the OOM killer killed (v1 `memory.oom_control oom_kill`, v2 `memory.events
    /// oom_kill`).
    pub oom_kills: Option<u64>,
    /// Times the cgroup ran out of memory (v2 `memory.events oom`; v1 has no such counter).
    pub oom_events: Option<u64>,
    /// Times usage hit the limit (v1 `memory.failcnt`, v2 `memory.events max`).
    pub memory_limit_hits: Option<u64>,
    /// Tasks now (`pids.current`).
    pub pids_current: Option<u64>,
    /// The pids limit (`pids.max`); `None` when unlimited.
    pub pids_limit: Option<u64>,
    /// Bytes read from block devices, all devices (v1 `blkio.throttle.io_service_bytes`, v2
    /// `io.stat rbytes`).
    pub io_read_bytes: Option<u64>,
    /// Bytes written (v1 `Write`, v2 `wbytes`).
    pub io_write_bytes: Option<u64>,
    /// Read operations (v1 `blkio.throttle.io_serviced`, v2 `rios`).
    pub io_read_ops: Option<u64>,
    /// Write operations (v1 `Write`, v2 `wios`).
    pub io_write_ops: Option<u64>,
    /// What could not be read, one line each.
    pub notes: Vec<String>,
}

/// Stats of one cgroup given as the OCI `linux.cgroupsPath` the job runs under with runc's
/// cgroupfs driver (e.g. `/fog-agent/job-abc`: v1 -> `<controller mount>/fog-agent/job-abc`,
/// v2 -> `<unified root>/fog-agent/job-abc`). Every field is `Option`: missing file = `None`,
/// never 0 made up; `notes` says what could not be read.
pub fn read_stats(fs: &FsRoot, layout: &CgroupLayout, cgroups_path: &str) -> CgroupStats {
    let mut reader = Reader {
        fs,
        stats: CgroupStats::default(),
    };
    let Some(rel) = relative_cgroup_path(cgroups_path) else {
        reader.stats.notes.push(format!(
            "cgroups path {cgroups_path:?} is not a plain path (no `..`, no empty name)"
        ));
        return reader.stats;
    };
    let unified_controllers = layout
        .unified()
        .map(|root| unified_controllers(fs, root))
        .unwrap_or_default();
    for group in [Group::Cpu, Group::Memory, Group::Pids, Group::Io] {
        let v1_dirs: Option<Vec<String>> = match layout {
            CgroupLayout::V1 { .. } => group
                .v1_controllers()
                .iter()
                .map(|c| layout.v1_mount(c).map(|m| cgroup_dir(m, &rel)))
                .collect(),
            CgroupLayout::V2 { .. } => None,
        };
        match (v1_dirs, layout) {
            (Some(dirs), _) => reader.v1(group, &dirs),
            (None, CgroupLayout::V2 { root }) => reader.v2(group, &cgroup_dir(root, &rel)),
            (None, CgroupLayout::V1 { unified, .. }) => match unified {
                Some(root)
                    if unified_controllers
                        .iter()
                        .any(|c| c == group.v2_controller()) =>
                {
                    reader.v2(group, &cgroup_dir(root, &rel));
                }
                _ => reader.stats.notes.push(format!(
                    "no {} controller mounted",
                    group.v1_controllers().join("+")
                )),
            },
        }
    }
    reader.stats
}

/// The processes (host pids) in one cgroup, from `cgroup.procs`: on v1 in the first mounted
/// controller of `pids`, `cpu`, `memory` (runc joins every controller), on v2 in the unified
/// hierarchy.
pub fn read_procs(
    fs: &FsRoot,
    layout: &CgroupLayout,
    cgroups_path: &str,
) -> Result<Vec<u32>, CgroupError> {
    let rel = relative_cgroup_path(cgroups_path)
        .ok_or_else(|| CgroupError::NotAPlainPath(cgroups_path.to_owned()))?;
    let dir = match layout {
        CgroupLayout::V2 { root } => cgroup_dir(root, &rel),
        CgroupLayout::V1 { .. } => ["pids", "cpu", "memory"]
            .iter()
            .find_map(|c| layout.v1_mount(c))
            .or_else(|| layout.unified())
            .map(|mount| cgroup_dir(mount, &rel))
            .ok_or(CgroupError::NoProcsController)?,
    };
    let path = format!("{dir}/cgroup.procs");
    let text = fs.read_string(&path)?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.trim().parse::<u32>().map_err(|_| CgroupError::NotAPid {
                path: path.clone(),
                line: l.to_owned(),
            })
        })
        .collect()
}

/// The controllers of a v2 hierarchy's root (`cgroup.controllers`).
fn unified_controllers(fs: &FsRoot, root: &Path) -> Vec<String> {
    fs.read_opt(&format!("{}/cgroup.controllers", root.display()))
        .map(|s| s.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// `/fog-agent/job-abc` -> `fog-agent/job-abc`; `None` for `..` or anything odd.
fn relative_cgroup_path(cgroups_path: &str) -> Option<String> {
    let mut parts = Vec::new();
    for component in Path::new(cgroups_path).components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(p) => parts.push(p.to_str()?.to_owned()),
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(parts.join("/"))
}

fn cgroup_dir(mount: &Path, rel: &str) -> String {
    let mount = mount.display().to_string();
    let mount = mount.trim_end_matches('/');
    if rel.is_empty() {
        mount.to_owned()
    } else {
        format!("{mount}/{rel}")
    }
}

/// The four stat groups, each read from one controller (v1 CPU needs two).
#[derive(Debug, Clone, Copy)]
enum Group {
    Cpu,
    Memory,
    Pids,
    Io,
}

impl Group {
    fn v1_controllers(self) -> &'static [&'static str] {
        match self {
            Group::Cpu => &["cpuacct", "cpu"],
            Group::Memory => &["memory"],
            Group::Pids => &["pids"],
            Group::Io => &["blkio"],
        }
    }

    fn v2_controller(self) -> &'static str {
        match self {
            Group::Cpu => "cpu",
            Group::Memory => "memory",
            Group::Pids => "pids",
            Group::Io => "io",
        }
    }
}

struct Reader<'a> {
    fs: &'a FsRoot,
    stats: CgroupStats,
}

impl Reader<'_> {
    /// Reads `dir/file`; a failure becomes a note.
    fn read(&mut self, dir: &str, file: &str) -> Option<String> {
        let path = format!("{dir}/{file}");
        match self.fs.read_string(&path) {
            Ok(text) => Some(text),
            Err(e) => {
                self.stats.notes.push(CgroupError::Read(e).to_string());
                None
            }
        }
    }

    /// Reads and parses one file; a parse failure becomes a note.
    fn parse<T>(
        &mut self,
        dir: &str,
        file: &str,
        parse: impl FnOnce(&str) -> Result<T, parse::ParseError>,
    ) -> Option<T> {
        let text = self.read(dir, file)?;
        match parse(&text) {
            Ok(v) => Some(v),
            Err(e) => {
                self.stats.notes.push(format!("{dir}/{file}: {e}"));
                None
            }
        }
    }

    /// True when the cgroup dir exists; otherwise one note instead of one per file.
    fn dir_exists(&mut self, dir: &str) -> bool {
        if self.fs.exists(dir) {
            return true;
        }
        self.stats.notes.push(format!("no cgroup at {dir}"));
        false
    }

    fn v1(&mut self, group: Group, dirs: &[String]) {
        if !dirs.iter().all(|d| self.dir_exists(d)) {
            return;
        }
        match group {
            Group::Cpu => {
                let (acct, cpu) = (&dirs[0], &dirs[1]);
                self.stats.cpu_usage_nanos = self.parse(acct, "cpuacct.usage", parse::single_u64);
                if let Some(t) = self.parse(acct, "cpuacct.stat", |s| {
                    parse::cpuacct_stat(s, clock_ticks_per_sec())
                }) {
                    self.stats.cpu_user_nanos = t.user_nanos;
                    self.stats.cpu_system_nanos = t.system_nanos;
                }
                if let Some(kv) = self.parse(cpu, "cpu.stat", parse::flat_keyed) {
                    self.stats.cpu_nr_periods = kv.get("nr_periods").copied();
                    self.stats.cpu_nr_throttled = kv.get("nr_throttled").copied();
                    self.stats.cpu_throttled_nanos = kv.get("throttled_time").copied();
                }
            }
            Group::Memory => {
                let dir = &dirs[0];
                self.stats.memory_usage_bytes =
                    self.parse(dir, "memory.usage_in_bytes", parse::single_u64);
                self.stats.memory_peak_bytes =
                    self.parse(dir, "memory.max_usage_in_bytes", parse::single_u64);
                self.stats.memory_limit_bytes = self
                    .parse(dir, "memory.limit_in_bytes", parse::single_u64)
                    .and_then(parse::v1_memory_limit);
                if let Some(kv) = self.parse(dir, "memory.oom_control", parse::flat_keyed) {
                    self.stats.oom_kills = kv.get("oom_kill").copied();
                    if self.stats.oom_kills.is_none() {
                        self.stats.notes.push(format!(
                            "{dir}/memory.oom_control has no oom_kill (kernel before 4.13)"
                        ));
                    }
                }
                self.stats.memory_limit_hits = self.parse(dir, "memory.failcnt", parse::single_u64);
            }
            Group::Pids => {
                let dir = &dirs[0];
                self.stats.pids_current = self.parse(dir, "pids.current", parse::single_u64);
                self.stats.pids_limit = self.parse(dir, "pids.max", parse::max_or_u64).flatten();
            }
            Group::Io => {
                let dir = dirs[0].clone();
                let bytes = self
                    .read_first(
                        &dir,
                        &[
                            "blkio.throttle.io_service_bytes_recursive",
                            "blkio.throttle.io_service_bytes",
                        ],
                    )
                    .and_then(|(file, text)| self.parsed(&dir, file, parse::blkio_rw(&text)));
                if let Some(rw) = bytes {
                    self.stats.io_read_bytes = Some(rw.read);
                    self.stats.io_write_bytes = Some(rw.write);
                }
                let ops = self
                    .read_first(
                        &dir,
                        &[
                            "blkio.throttle.io_serviced_recursive",
                            "blkio.throttle.io_serviced",
                        ],
                    )
                    .and_then(|(file, text)| self.parsed(&dir, file, parse::blkio_rw(&text)));
                if let Some(rw) = ops {
                    self.stats.io_read_ops = Some(rw.read);
                    self.stats.io_write_ops = Some(rw.write);
                }
            }
        }
    }

    /// The first of `files` that exists (the `_recursive` variants are missing on old kernels).
    fn read_first(&mut self, dir: &str, files: &[&'static str]) -> Option<(&'static str, String)> {
        for file in files {
            if let Ok(text) = self.fs.read_string(&format!("{dir}/{file}")) {
                return Some((file, text));
            }
        }
        self.stats
            .notes
            .push(format!("cannot read {dir}/{}", files.join(" or ")));
        None
    }

    fn parsed<T>(
        &mut self,
        dir: &str,
        file: &str,
        result: Result<T, parse::ParseError>,
    ) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                self.stats.notes.push(format!("{dir}/{file}: {e}"));
                None
            }
        }
    }

    fn v2(&mut self, group: Group, dir: &str) {
        if !self.dir_exists(dir) {
            return;
        }
        match group {
            Group::Cpu => {
                if let Some(kv) = self.parse(dir, "cpu.stat", parse::flat_keyed) {
                    let nanos = |key: &str| kv.get(key).map(|us| us.saturating_mul(1000));
                    self.stats.cpu_usage_nanos = nanos("usage_usec");
                    self.stats.cpu_user_nanos = nanos("user_usec");
                    self.stats.cpu_system_nanos = nanos("system_usec");
                    // Present only when the cpu controller is enabled for the cgroup.
                    self.stats.cpu_nr_periods = kv.get("nr_periods").copied();
                    self.stats.cpu_nr_throttled = kv.get("nr_throttled").copied();
                    self.stats.cpu_throttled_nanos = nanos("throttled_usec");
                    if self.stats.cpu_nr_periods.is_none() {
                        self.stats.notes.push(format!(
                            "{dir}/cpu.stat has no throttling counters (cpu controller not enabled)"
                        ));
                    }
                }
            }
            Group::Memory => {
                self.stats.memory_usage_bytes =
                    self.parse(dir, "memory.current", parse::single_u64);
                self.stats.memory_peak_bytes = self.parse(dir, "memory.peak", parse::single_u64);
                self.stats.memory_limit_bytes =
                    self.parse(dir, "memory.max", parse::max_or_u64).flatten();
                if let Some(kv) = self.parse(dir, "memory.events", parse::flat_keyed) {
                    self.stats.oom_events = kv.get("oom").copied();
                    self.stats.oom_kills = kv.get("oom_kill").copied();
                    self.stats.memory_limit_hits = kv.get("max").copied();
                }
            }
            Group::Pids => {
                self.stats.pids_current = self.parse(dir, "pids.current", parse::single_u64);
                self.stats.pids_limit = self.parse(dir, "pids.max", parse::max_or_u64).flatten();
            }
            Group::Io => {
                if let Some(io) = self.parse(dir, "io.stat", parse::io_stat) {
                    self.stats.io_read_bytes = Some(io.rbytes);
                    self.stats.io_write_bytes = Some(io.wbytes);
                    self.stats.io_read_ops = Some(io.rios);
                    self.stats.io_write_ops = Some(io.wios);
                }
            }
        }
    }
}

/// USER_HZ, the unit of `cpuacct.stat` (100 on every Linux ABI, asked anyway).
fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|t| *t > 0).unwrap_or(100)
}

#[cfg(test)]
mod tests;
