//! The suite: every benchmark id with its kernel version, what it needs (a peer, an OpenCL
//! device), its timeout per mode, and the plan of child-process jobs for one run.

use std::time::Duration;

use fog_bench::opencl::DeviceSummary;

use super::{BenchSuiteError, SuiteConfig};

/// Quick (default, about a minute on 2 cores) or full (onboarding) parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Short samples, small files.
    Quick,
    /// Longer samples, larger files and arrays.
    Full,
}

impl Mode {
    /// `quick` or `full`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Quick => "quick",
            Self::Full => "full",
        }
    }

    /// Parses `quick` / `full`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "quick" => Some(Self::Quick),
            "full" => Some(Self::Full),
            _ => None,
        }
    }
}

/// What a benchmark needs besides the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Nothing.
    Nothing,
    /// A `bench-peer` (`--peer`).
    Peer,
    /// An OpenCL device (run once per device).
    OpenCl,
    /// The state directory's file system.
    Disk,
}

/// One benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    /// Stable id.
    pub id: &'static str,
    /// Kernel version (from fog-bench).
    pub kernel_version: u32,
    /// What it needs.
    pub need: Need,
    /// Timeout in quick mode.
    pub timeout_quick: Duration,
    /// Timeout in full mode.
    pub timeout_full: Duration,
}

impl Spec {
    /// Timeout for `mode`.
    pub fn timeout(&self, mode: Mode) -> Duration {
        match mode {
            Mode::Quick => self.timeout_quick,
            Mode::Full => self.timeout_full,
        }
    }
}

const fn spec(
    id: &'static str,
    kernel_version: u32,
    need: Need,
    quick_s: u64,
    full_s: u64,
) -> Spec {
    Spec {
        id,
        kernel_version,
        need,
        timeout_quick: Duration::from_secs(quick_s),
        timeout_full: Duration::from_secs(full_s),
    }
}

use fog_bench::{cpu, disk, mem, net, opencl};

/// Every benchmark, in run order.
pub const SUITE: &[Spec] = &[
    spec(
        "cpu.int.single",
        cpu::INT_KERNEL_VERSION,
        Need::Nothing,
        20,
        120,
    ),
    spec(
        "cpu.int.multi",
        cpu::INT_KERNEL_VERSION,
        Need::Nothing,
        20,
        120,
    ),
    spec(
        "cpu.fp32.single",
        cpu::FMA_KERNEL_VERSION,
        Need::Nothing,
        20,
        120,
    ),
    spec(
        "cpu.fp32.multi",
        cpu::FMA_KERNEL_VERSION,
        Need::Nothing,
        20,
        120,
    ),
    spec(
        "cpu.sysbench_prime.single",
        cpu::PRIME_KERNEL_VERSION,
        Need::Nothing,
        20,
        180,
    ),
    spec(
        "cpu.sysbench_prime.multi",
        cpu::PRIME_KERNEL_VERSION,
        Need::Nothing,
        20,
        180,
    ),
    spec(
        "mem.bandwidth",
        mem::STREAM_KERNEL_VERSION,
        Need::Nothing,
        30,
        300,
    ),
    spec(
        "mem.latency",
        mem::LATENCY_KERNEL_VERSION,
        Need::Nothing,
        30,
        300,
    ),
    spec(
        "disk.seq.write",
        disk::DISK_KERNEL_VERSION,
        Need::Disk,
        30,
        600,
    ),
    spec(
        "disk.seq.read",
        disk::DISK_KERNEL_VERSION,
        Need::Disk,
        30,
        600,
    ),
    spec(
        "disk.rand.read",
        disk::DISK_KERNEL_VERSION,
        Need::Disk,
        30,
        600,
    ),
    spec(
        "net.throughput.up",
        net::NET_KERNEL_VERSION,
        Need::Peer,
        20,
        120,
    ),
    spec(
        "net.throughput.down",
        net::NET_KERNEL_VERSION,
        Need::Peer,
        20,
        120,
    ),
    spec("net.rtt", net::NET_KERNEL_VERSION, Need::Peer, 20, 120),
    spec(
        "opencl.fp32",
        opencl::OPENCL_KERNEL_VERSION,
        Need::OpenCl,
        60,
        300,
    ),
    spec(
        "opencl.fp64",
        opencl::OPENCL_KERNEL_VERSION,
        Need::OpenCl,
        60,
        300,
    ),
    spec(
        "opencl.membw",
        opencl::OPENCL_KERNEL_VERSION,
        Need::OpenCl,
        60,
        300,
    ),
    spec(
        "opencl.transfer",
        opencl::OPENCL_KERNEL_VERSION,
        Need::OpenCl,
        60,
        300,
    ),
    spec(
        "opencl.launch",
        opencl::OPENCL_KERNEL_VERSION,
        Need::OpenCl,
        60,
        300,
    ),
];

/// Environment switch that adds the fault-injection benchmarks `test.crash` (SIGSEGV) and
/// `test.hang` (sleeps past its 2 s timeout). Only the exact value [`TEST_FAULTS_VALUE`]
/// enables them, so they cannot be selected by accident; they are never part of a default run.
/// They exist only in test builds (unit tests, or the `test-util` feature the integration tests
/// enable): the shipped binary has neither them nor this switch.
#[cfg(any(test, feature = "test-util"))]
pub const TEST_FAULTS_ENV: &str = "FOG_BENCH_TEST_FAULTS";
/// The value [`TEST_FAULTS_ENV`] must have.
#[cfg(any(test, feature = "test-util"))]
pub const TEST_FAULTS_VALUE: &str = "crash-and-hang-on-purpose";

/// The fault-injection specs (see [`TEST_FAULTS_ENV`]).
#[cfg(any(test, feature = "test-util"))]
pub const TEST_FAULTS: &[Spec] = &[
    spec("test.crash", 1, Need::Nothing, 10, 10),
    spec("test.hang", 1, Need::Nothing, 2, 2),
];

/// The fault-injection specs: none outside test builds.
#[cfg(not(any(test, feature = "test-util")))]
pub const TEST_FAULTS: &[Spec] = &[];

/// Whether the fault-injection benchmarks are enabled in this process (test builds with the
/// environment switch set).
#[cfg(any(test, feature = "test-util"))]
pub fn test_faults_enabled() -> bool {
    std::env::var(TEST_FAULTS_ENV).is_ok_and(|v| v == TEST_FAULTS_VALUE)
}

/// Whether the fault-injection benchmarks are enabled in this process: never outside test
/// builds (the child's `test.*` kernels are then dead code the optimizer removes).
#[cfg(not(any(test, feature = "test-util")))]
#[inline(always)]
pub fn test_faults_enabled() -> bool {
    false
}

/// Looks up a spec by id (fault specs only when enabled).
pub fn find(id: &str) -> Option<Spec> {
    SUITE
        .iter()
        .chain(if test_faults_enabled() {
            TEST_FAULTS
        } else {
            &[]
        })
        .find(|s| s.id == id)
        .copied()
}

/// The specs of a run: all of [`SUITE`], or those matching `only` (exact ids or a prefix
/// ending at a dot, e.g. `cpu` or `cpu.sysbench_prime`).
pub fn select(_mode: Mode, only: Option<&[String]>) -> Result<Vec<Spec>, BenchSuiteError> {
    let Some(only) = only else {
        return Ok(SUITE.to_vec());
    };
    let all: Vec<Spec> = SUITE
        .iter()
        .chain(if test_faults_enabled() {
            TEST_FAULTS
        } else {
            &[]
        })
        .copied()
        .collect();
    let mut out: Vec<Spec> = Vec::new();
    for want in only {
        let want = want.trim();
        let matched: Vec<Spec> = all
            .iter()
            .filter(|s| s.id == want || s.id.starts_with(&format!("{want}.")))
            .copied()
            .collect();
        if matched.is_empty() {
            return Err(BenchSuiteError::UnknownId(want.to_owned()));
        }
        for s in matched {
            if !out.contains(&s) {
                out.push(s);
            }
        }
    }
    // Keep suite order regardless of the order on the command line.
    out.sort_by_key(|s| all.iter().position(|a| a.id == s.id));
    Ok(out)
}

/// One benchmark on one device within a job.
#[derive(Debug, Clone)]
pub struct Item {
    /// The benchmark.
    pub spec: Spec,
    /// Its device (cache key part).
    pub device: String,
    /// Driver versions (cache key part).
    pub driver_versions: String,
    /// Why it is skipped, if it is.
    pub skip: Option<String>,
}

/// One child process: one benchmark, or all OpenCL benchmarks of one device (compiled once).
#[derive(Debug, Clone)]
pub struct Job {
    /// OpenCL device index for OpenCL jobs.
    pub device_index: Option<usize>,
    /// Its benchmarks.
    pub items: Vec<Item>,
}

/// Plans the jobs of a run.
pub fn plan(
    specs: &[Spec],
    config: &SuiteConfig,
    opencl: Option<&Result<Vec<DeviceSummary>, String>>,
) -> Vec<Job> {
    let mut jobs = Vec::new();
    let mut opencl_specs = Vec::new();
    for &spec in specs {
        let (device, skip) = match spec.need {
            Need::Nothing => ("cpu".to_owned(), None),
            Need::Disk => (config.state_dir.display().to_string(), None),
            Need::Peer => match &config.peer {
                Some(p) => (format!("peer {p}"), None),
                None => (
                    "network".to_owned(),
                    Some("no peer: pass --peer ADDR of a `fog-agent bench-peer`".to_owned()),
                ),
            },
            Need::OpenCl => {
                opencl_specs.push(spec);
                continue;
            }
        };
        jobs.push(Job {
            device_index: None,
            items: vec![Item {
                spec,
                device,
                driver_versions: String::new(),
                skip,
            }],
        });
    }
    if opencl_specs.is_empty() {
        return jobs;
    }
    let skipped = |reason: String| Job {
        device_index: None,
        items: opencl_specs
            .iter()
            .map(|&spec| Item {
                spec,
                device: "opencl".into(),
                driver_versions: String::new(),
                skip: Some(reason.clone()),
            })
            .collect(),
    };
    match opencl {
        None => {}
        Some(Err(e)) => jobs.push(skipped(format!("cannot list OpenCL devices: {e}"))),
        Some(Ok(devs)) if devs.is_empty() => jobs.push(skipped("no OpenCL device".into())),
        Some(Ok(devs)) => {
            for d in devs {
                let device = format!("opencl:{} {}", d.index, d.name);
                let items = opencl_specs
                    .iter()
                    .map(|&spec| Item {
                        spec,
                        device: device.clone(),
                        driver_versions: format!("opencl {}", d.driver_version),
                        skip: (spec.id == "opencl.fp64" && !d.fp64)
                            .then(|| format!("{} has no fp64", d.name)),
                    })
                    .collect();
                jobs.push(Job {
                    device_index: Some(d.index),
                    items,
                });
            }
        }
    }
    jobs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn select_by_id_and_prefix_in_suite_order() {
        let s = select(
            Mode::Quick,
            Some(&["mem.latency".into(), "cpu.sysbench_prime".into()]),
        )
        .unwrap();
        let ids: Vec<_> = s.iter().map(|s| s.id).collect();
        assert_eq!(
            ids,
            [
                "cpu.sysbench_prime.single",
                "cpu.sysbench_prime.multi",
                "mem.latency"
            ]
        );
        assert!(matches!(
            select(Mode::Quick, Some(&["cpu.nope".into()])),
            Err(BenchSuiteError::UnknownId(_))
        ));
        // "cpu.s" is not a dot-boundary prefix.
        assert!(select(Mode::Quick, Some(&["cpu.s".into()])).is_err());
        assert_eq!(select(Mode::Full, None).unwrap().len(), SUITE.len());
    }

    #[test]
    fn ids_are_unique() {
        let mut ids: Vec<_> = SUITE.iter().map(|s| s.id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), SUITE.len());
    }

    #[test]
    fn fault_specs_need_the_exact_switch() {
        // The switch is not set in unit tests.
        assert!(!test_faults_enabled());
        assert!(find("test.crash").is_none());
        assert!(select(Mode::Quick, Some(&["test".into()])).is_err());
    }

    fn config(peer: Option<&str>) -> SuiteConfig {
        SuiteConfig {
            mode: Mode::Quick,
            only: None,
            peer: peer.map(Into::into),
            force: false,
            state_dir: "/tmp/x".into(),
            fingerprint: "fp".into(),
            cpu: Default::default(),
            exe: "/bin/false".into(),
        }
    }

    #[test]
    fn plan_skips_network_without_peer_and_groups_opencl_per_device() {
        let specs = select(Mode::Quick, Some(&["net".into(), "opencl".into()])).unwrap();
        let dev = |i, fp64| DeviceSummary {
            index: i,
            name: format!("dev{i}"),
            vendor: "v".into(),
            driver_version: "7".into(),
            version: "OpenCL 3.0".into(),
            compute_units: 2,
            max_clock_mhz: 1000,
            is_cpu: true,
            fp64,
            pci_bus_id: None,
        };
        let jobs = plan(
            &specs,
            &config(None),
            Some(&Ok(vec![dev(0, true), dev(1, false)])),
        );
        assert_eq!(jobs.len(), 3 + 2);
        assert!(jobs[..3].iter().all(|j| j.items[0].skip.is_some()));
        assert_eq!(jobs[3].items.len(), 5);
        assert_eq!(jobs[4].device_index, Some(1));
        let fp64 = jobs[4]
            .items
            .iter()
            .find(|i| i.spec.id == "opencl.fp64")
            .unwrap();
        assert!(fp64.skip.is_some());
        assert_eq!(jobs[3].items[0].driver_versions, "opencl 7");
        let jobs = plan(&specs, &config(Some("127.0.0.1:1")), Some(&Ok(vec![])));
        assert!(jobs[0].items[0].skip.is_none());
        assert_eq!(
            jobs.last().unwrap().items[0].skip.as_deref(),
            Some("no OpenCL device")
        );
    }
}
