//! CPU identity, topology (sockets, cores, threads from sysfs `topology/`, never guessed), clocks,
//! caches, ISA features with the x86-64 microarchitecture level, and NUMA nodes.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{error_chain, Notes, ProbeError};
use crate::fsroot::{format_cpu_list, parse_cpu_list, FsRoot};

/// The machine's CPUs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuInfo {
    /// `x86_64`, `aarch64`, ...
    pub architecture: String,
    /// CPU vendor id, e.g. `GenuineIntel`, `AuthenticAMD`.
    pub vendor: String,
    /// Marketing name from `/proc/cpuinfo` `model name`.
    pub model_name: String,
    /// CPU family (decimal, as in `/proc/cpuinfo`).
    pub family: Option<u32>,
    /// CPU model number.
    pub model: Option<u32>,
    /// CPU stepping.
    pub stepping: Option<u32>,
    /// Microcode revision as reported, e.g. `0x2b000571`.
    pub microcode: Option<String>,
    /// Physical packages (distinct `physical_package_id`).
    pub sockets: u32,
    /// Physical cores (distinct package + die + core ids).
    pub physical_cores: u32,
    /// Online logical CPUs.
    pub logical_cpus: u32,
    /// Logical CPUs per physical core (1 without SMT).
    pub threads_per_core: u32,
    /// Whether simultaneous multithreading is active (`/sys/devices/system/cpu/smt/active`, or
    /// more than one thread on a core).
    pub smt_active: bool,
    /// Online CPUs as a Linux CPU list, e.g. `0-63`.
    pub online_cpus: String,
    /// Per-package breakdown.
    pub packages: Vec<CpuPackage>,
    /// Base (nominal) clock, from cpufreq `base_frequency` or the model name.
    pub base_clock_mhz: Option<u32>,
    /// Highest clock, from cpufreq `cpuinfo_max_freq`.
    pub max_clock_mhz: Option<u32>,
    /// Lowest clock, from cpufreq `cpuinfo_min_freq`.
    pub min_clock_mhz: Option<u32>,
    /// cpufreq scaling driver, e.g. `intel_pstate`.
    pub scaling_driver: Option<String>,
    /// cpufreq governor of CPU 0, e.g. `performance`.
    pub scaling_governor: Option<String>,
    /// Caches, one entry per level and type (L1d, L1i, L2, L3).
    pub caches: Vec<CpuCache>,
    /// ISA features that matter to buyers, in a fixed order (`sse4_2`, `avx`, `avx2`, `fma`,
    /// `avx512f`, ..., `amx_tile`, `aes`, `sha_ni`), present ones only.
    pub features: Vec<String>,
    /// x86-64 microarchitecture level (1 to 4) the flags satisfy; `None` off x86-64.
    pub x86_64_level: Option<u8>,
    /// Every flag of the `flags` line, as the kernel spells them.
    pub flags: Vec<String>,
    /// NUMA nodes with their CPUs.
    pub numa_nodes: Vec<NumaNode>,
}

/// One physical package (socket).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuPackage {
    /// `physical_package_id`.
    pub id: u32,
    /// Physical cores in this package.
    pub physical_cores: u32,
    /// Logical CPUs in this package, as a Linux CPU list.
    pub cpus: String,
}

/// One cache level and type, e.g. all L2 caches.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuCache {
    /// 1, 2, 3 (4 on some parts).
    pub level: u8,
    /// `data`, `instruction` or `unified`.
    pub kind: String,
    /// Size of one instance.
    pub size_bytes: u64,
    /// How many logical CPUs share one instance.
    pub shared_by_cpus: u32,
    /// How many instances the machine has.
    pub instances: u32,
    /// Size of all instances together.
    pub total_bytes: u64,
    /// Cache line size.
    pub line_size_bytes: Option<u32>,
    /// Associativity.
    pub ways: Option<u32>,
    /// Where the figure came from: `sysfs` or `cpuid`.
    pub source: String,
}

/// One NUMA node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NumaNode {
    /// Node number.
    pub id: u32,
    /// Its CPUs, as a Linux CPU list.
    pub cpus: String,
    /// Memory attached to it (`node*/meminfo` `MemTotal`).
    pub memory_total_bytes: Option<u64>,
}

/// ISA features that matter to buyers, in the order they are reported (kernel flag spellings).
pub const BUYER_FEATURES: &[&str] = &[
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "bmi2",
    "avx512f",
    "avx512dq",
    "avx512cd",
    "avx512bw",
    "avx512vl",
    "avx512ifma",
    "avx512vbmi",
    "avx512_vbmi2",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "aes",
    "vaes",
    "pclmulqdq",
    "vpclmulqdq",
    "sha_ni",
    "gfni",
    "rdrand",
    "rdseed",
    "sgx",
    "sev",
    "sev_snp",
    "tdx_guest",
    // aarch64 spellings
    "asimd",
    "sve",
    "sve2",
    "sha2",
    "sha3",
];

/// Flags each x86-64 psABI level adds, in kernel spellings (`pni` is SSE3, `abm` is LZCNT).
const X86_64_LEVELS: [(u8, &[&str]); 4] = [
    (1, &["cmov", "cx8", "fpu", "fxsr", "mmx", "sse", "sse2"]),
    (
        2,
        &[
            "cx16", "lahf_lm", "popcnt", "pni", "sse4_1", "sse4_2", "ssse3",
        ],
    ),
    (
        3,
        &[
            "avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave",
        ],
    ),
    (
        4,
        &["avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"],
    ),
];

/// Collects the CPU section.
pub fn collect(fs: &FsRoot, notes: &mut Notes) -> Result<CpuInfo, ProbeError> {
    let cpuinfo = parse_cpuinfo(&fs.read_string("/proc/cpuinfo")?);
    let online_text = fs.read_trimmed("/sys/devices/system/cpu/online")?;
    let online = parse_cpu_list(&online_text)
        .map_err(|e| ProbeError::parse("/sys/devices/system/cpu/online", e.to_string()))?;
    if online.is_empty() {
        return Err(ProbeError::parse(
            "/sys/devices/system/cpu/online",
            "no online CPU",
        ));
    }
    let topology = read_topology(fs, &online)?;
    let smt_active = match fs.read_opt("/sys/devices/system/cpu/smt/active").as_deref() {
        Some("1") => true,
        Some("0") => false,
        _ => topology.threads_per_core > 1,
    };
    let caches = match read_caches(fs, &online) {
        Ok(caches) if !caches.is_empty() => caches,
        result => {
            if let Err(err) = result {
                notes.add("sysfs caches", error_chain(&err));
            }
            cpuid_caches(fs, online.len())
        }
    };
    if caches.is_empty() {
        notes.add(
            "caches",
            "not exposed by sysfs and not readable from CPUID here",
        );
    }
    let clocks = read_clocks(fs);
    if clocks.max_mhz.is_none() && clocks.base_mhz.is_none() {
        notes.add("cpufreq", "not exposed by this kernel (common in VMs)");
    }
    let base_clock_mhz = clocks
        .base_mhz
        .or_else(|| base_clock_from_model_name(&cpuinfo.model_name))
        .or_else(|| cpuid_base_mhz(fs));
    let flag_set: BTreeSet<&str> = cpuinfo.flags.iter().map(String::as_str).collect();
    let features = BUYER_FEATURES
        .iter()
        .filter(|f| flag_set.contains(*f))
        .map(|f| (*f).to_owned())
        .collect();
    let architecture = fs
        .read_opt("/proc/sys/kernel/arch")
        .or_else(|| fs.is_host().then(|| std::env::consts::ARCH.to_owned()))
        .unwrap_or_else(|| guess_architecture(&cpuinfo));
    let x86_64_level = (architecture == "x86_64").then(|| x86_64_level(&flag_set));
    let numa_nodes = match read_numa(fs) {
        Ok(nodes) => nodes,
        Err(err) => {
            notes.add("numa", error_chain(&err));
            Vec::new()
        }
    };
    Ok(CpuInfo {
        architecture,
        vendor: cpuinfo.vendor,
        model_name: cpuinfo.model_name,
        family: cpuinfo.family,
        model: cpuinfo.model,
        stepping: cpuinfo.stepping,
        microcode: cpuinfo.microcode,
        sockets: topology.packages.len() as u32,
        physical_cores: topology.physical_cores,
        logical_cpus: online.len() as u32,
        threads_per_core: topology.threads_per_core,
        smt_active,
        online_cpus: online_text,
        packages: topology.packages,
        base_clock_mhz,
        max_clock_mhz: clocks.max_mhz,
        min_clock_mhz: clocks.min_mhz,
        scaling_driver: clocks.driver,
        scaling_governor: clocks.governor,
        caches,
        features,
        x86_64_level,
        flags: cpuinfo.flags,
        numa_nodes,
    })
}

/// What `/proc/cpuinfo` says about CPU identity (taken from the first processor block).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CpuinfoSummary {
    /// `vendor_id` (x86) or `CPU implementer` (Arm).
    pub vendor: String,
    /// `model name` (x86, most Arm kernels).
    pub model_name: String,
    /// `cpu family`.
    pub family: Option<u32>,
    /// `model`.
    pub model: Option<u32>,
    /// `stepping`.
    pub stepping: Option<u32>,
    /// `microcode`.
    pub microcode: Option<String>,
    /// `flags` (x86) or `Features` (Arm).
    pub flags: Vec<String>,
}

/// Parses the first processor block of `/proc/cpuinfo`.
pub fn parse_cpuinfo(text: &str) -> CpuinfoSummary {
    let mut out = CpuinfoSummary::default();
    let block = text
        .split("\n\n")
        .find(|b| !b.trim().is_empty())
        .unwrap_or("");
    for line in block.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key.trim() {
            "vendor_id" | "CPU implementer" if out.vendor.is_empty() => {
                value.clone_into(&mut out.vendor)
            }
            "model name" | "Processor" if out.model_name.is_empty() => {
                value.clone_into(&mut out.model_name);
            }
            "cpu family" => out.family = value.parse().ok(),
            "model" => out.model = value.parse().ok(),
            "stepping" => out.stepping = value.parse().ok(),
            "microcode" => out.microcode = Some(value.to_owned()),
            "flags" | "Features" => {
                out.flags = value.split_whitespace().map(str::to_owned).collect();
            }
            _ => {}
        }
    }
    out
}

fn guess_architecture(cpuinfo: &CpuinfoSummary) -> String {
    if cpuinfo.flags.iter().any(|f| f == "lm") {
        "x86_64".to_owned()
    } else if cpuinfo.flags.iter().any(|f| f == "asimd") {
        "aarch64".to_owned()
    } else {
        "unknown".to_owned()
    }
}

/// The highest x86-64 psABI level whose flags (and all lower levels' flags) are present.
pub fn x86_64_level(flags: &BTreeSet<&str>) -> u8 {
    let mut level = 0;
    for (candidate, required) in X86_64_LEVELS {
        if required.iter().all(|flag| flags.contains(flag)) {
            level = candidate;
        } else {
            break;
        }
    }
    level.max(1)
}

/// Sockets and cores from sysfs topology.
#[derive(Debug, Default)]
struct Topology {
    packages: Vec<CpuPackage>,
    physical_cores: u32,
    threads_per_core: u32,
}

fn read_topology(fs: &FsRoot, online: &[u32]) -> Result<Topology, ProbeError> {
    // package id -> (distinct core sibling sets, cpus)
    let mut packages: BTreeMap<u32, (BTreeSet<Vec<u32>>, Vec<u32>)> = BTreeMap::new();
    let mut threads_per_core = 1;
    for &cpu in online {
        let base = format!("/sys/devices/system/cpu/cpu{cpu}/topology");
        let package_path = format!("{base}/physical_package_id");
        let package: u32 = fs
            .read_trimmed(&package_path)?
            .parse()
            .map_err(|_| ProbeError::parse(&package_path, "not a number"))?;
        let siblings_path = format!("{base}/core_cpus_list");
        let siblings_text = fs
            .read_trimmed(&siblings_path)
            .or_else(|_| fs.read_trimmed(&format!("{base}/thread_siblings_list")))?;
        let siblings = parse_cpu_list(&siblings_text)
            .map_err(|e| ProbeError::parse(&siblings_path, e.to_string()))?;
        // Only online siblings count: an offlined SMT thread does not run anything.
        let siblings: Vec<u32> = siblings
            .into_iter()
            .filter(|c| online.contains(c))
            .collect();
        threads_per_core = threads_per_core.max(siblings.len() as u32);
        let entry = packages.entry(package).or_default();
        entry.0.insert(siblings);
        entry.1.push(cpu);
    }
    let packages: Vec<CpuPackage> = packages
        .into_iter()
        .map(|(id, (cores, cpus))| CpuPackage {
            id,
            physical_cores: cores.len() as u32,
            cpus: format_cpu_list(&cpus),
        })
        .collect();
    Ok(Topology {
        physical_cores: packages.iter().map(|p| p.physical_cores).sum(),
        packages,
        threads_per_core,
    })
}

/// Parses a sysfs cache size such as `32K`, `1024K`, `36M`.
pub fn parse_cache_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let (digits, multiplier) = match text.chars().last()? {
        'K' | 'k' => (&text[..text.len() - 1], 1024),
        'M' | 'm' => (&text[..text.len() - 1], 1024 * 1024),
        'G' | 'g' => (&text[..text.len() - 1], 1024 * 1024 * 1024),
        _ => (text, 1),
    };
    digits.parse::<u64>().ok()?.checked_mul(multiplier)
}

/// Caches are grouped by level, type and instance size.
type CacheKey = (u8, String, u64);

/// The instances of one cache group (each a distinct set of sharing CPUs) and its geometry.
struct CacheGroup {
    instances: BTreeSet<Vec<u32>>,
    line_size: Option<u32>,
    ways: Option<u32>,
}

/// Reads `cpu*/cache/index*`. One cache instance is a distinct `shared_cpu_list`; a CPU already
/// covered by a known instance of an index is not read again. Caches of the same level and type
/// but different sizes (P- and E-cores of hybrid parts) are separate entries.
fn read_caches(fs: &FsRoot, online: &[u32]) -> Result<Vec<CpuCache>, ProbeError> {
    let mut found: BTreeMap<CacheKey, CacheGroup> = BTreeMap::new();
    let mut covered: BTreeMap<String, BTreeSet<u32>> = BTreeMap::new();
    for &cpu in online {
        let dir = format!("/sys/devices/system/cpu/cpu{cpu}/cache");
        let indexes = match fs.list_dir(&dir) {
            Ok(names) => names,
            Err(err) if cpu == online[0] => return Err(err.into()),
            Err(_) => continue,
        };
        for index in indexes.iter().filter(|n| n.starts_with("index")) {
            if covered.get(index).is_some_and(|set| set.contains(&cpu)) {
                continue;
            }
            let path = format!("{dir}/{index}");
            let level: u8 = fs
                .read_trimmed(&format!("{path}/level"))?
                .parse()
                .map_err(|_| ProbeError::parse(format!("{path}/level"), "not a number"))?;
            let kind = match fs.read_trimmed(&format!("{path}/type"))?.as_str() {
                "Data" => "data",
                "Instruction" => "instruction",
                "Unified" => "unified",
                other => {
                    return Err(ProbeError::parse(
                        format!("{path}/type"),
                        format!("unknown {other:?}"),
                    ))
                }
            };
            let Some(size) = fs
                .read_opt(&format!("{path}/size"))
                .and_then(|s| parse_cache_size(&s))
            else {
                continue; // some kernels list an index without a size: nothing to report
            };
            let shared = fs
                .read_opt(&format!("{path}/shared_cpu_list"))
                .and_then(|list| parse_cpu_list(&list).ok())
                .filter(|list| !list.is_empty())
                .unwrap_or_else(|| vec![cpu]);
            covered
                .entry(index.clone())
                .or_default()
                .extend(shared.iter().copied());
            let entry = found
                .entry((level, kind.to_owned(), size))
                .or_insert_with(|| {
                    let line = fs
                        .read_opt(&format!("{path}/coherency_line_size"))
                        .and_then(|v| v.parse().ok());
                    let ways = fs
                        .read_opt(&format!("{path}/ways_of_associativity"))
                        .and_then(|v| v.parse().ok())
                        .filter(|w| *w > 0);
                    CacheGroup {
                        instances: BTreeSet::new(),
                        line_size: line,
                        ways,
                    }
                });
            entry.instances.insert(shared);
        }
    }
    Ok(found
        .into_iter()
        .map(|((level, kind, size_bytes), group)| {
            let shared_by_cpus = group.instances.iter().map(Vec::len).max().unwrap_or(1) as u32;
            let instances = group.instances.len() as u32;
            CpuCache {
                level,
                kind,
                size_bytes,
                shared_by_cpus,
                instances,
                total_bytes: size_bytes * u64::from(instances),
                line_size_bytes: group.line_size,
                ways: group.ways,
                source: "sysfs".to_owned(),
            }
        })
        .collect())
}

/// Caches from CPUID when sysfs has none (live host only): leaf 4 on Intel, leaf 0x8000001D on
/// AMD — never leaf 0x80000006, which reports the host's L3 inside a VM.
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
fn cpuid_caches(fs: &FsRoot, logical_cpus: usize) -> Vec<CpuCache> {
    if !fs.is_host() {
        return Vec::new();
    }
    let Some(params) = raw_cpuid::CpuId::new().get_cache_parameters() else {
        return Vec::new();
    };
    params
        .filter(|p| p.cache_type() != raw_cpuid::CacheType::Null)
        .map(|p| {
            let size_bytes = (p.associativity()
                * p.physical_line_partitions()
                * p.coherency_line_size()
                * p.sets()) as u64;
            let shared_by_cpus =
                (p.max_cores_for_cache() as u32).clamp(1, logical_cpus.max(1) as u32);
            let instances = (logical_cpus as u32).div_ceil(shared_by_cpus).max(1);
            CpuCache {
                level: p.level(),
                kind: match p.cache_type() {
                    raw_cpuid::CacheType::Data => "data",
                    raw_cpuid::CacheType::Instruction => "instruction",
                    _ => "unified",
                }
                .to_owned(),
                size_bytes,
                shared_by_cpus,
                instances,
                total_bytes: size_bytes * u64::from(instances),
                line_size_bytes: Some(p.coherency_line_size() as u32),
                ways: Some(p.associativity() as u32),
                source: "cpuid".to_owned(),
            }
        })
        .collect()
}

#[cfg(not(any(target_arch = "x86", target_arch = "x86_64")))]
fn cpuid_caches(_fs: &FsRoot, _logical_cpus: usize) -> Vec<CpuCache> {
    Vec::new()
}

/// Base clock from CPUID leaf 0x16 (Intel, live host only).
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
fn cpuid_base_mhz(fs: &FsRoot) -> Option<u32> {
    if !fs.is_host() {
        return None;
    }
    raw_cpuid::CpuId::new()
        .get_processor_frequency_info()
        .map(|info| u32::from(info.processor_base_frequency()))
        .filter(|mhz| *mhz > 0)
}

#[cfg(not(any(target_arch = "x86", target_arch = "x86_64")))]
fn cpuid_base_mhz(_fs: &FsRoot) -> Option<u32> {
    None
}

/// Parses the nominal clock in a model name such as `Intel(R) Xeon(R) Silver 4314 CPU @ 2.40GHz`.
pub fn base_clock_from_model_name(name: &str) -> Option<u32> {
    let (_, tail) = name.rsplit_once('@')?;
    let tail = tail.trim();
    let (number, scale) = if let Some(ghz) = tail.strip_suffix("GHz") {
        (ghz, 1000.0)
    } else {
        (tail.strip_suffix("MHz")?, 1.0)
    };
    let mhz = number.trim().parse::<f64>().ok()? * scale;
    (mhz.is_finite() && mhz > 0.0).then(|| mhz.round() as u32)
}

#[derive(Debug, Default)]
struct Clocks {
    base_mhz: Option<u32>,
    max_mhz: Option<u32>,
    min_mhz: Option<u32>,
    driver: Option<String>,
    governor: Option<String>,
}

/// cpufreq policies: the highest max (P-cores on hybrid parts), the lowest min, policy0's base.
fn read_clocks(fs: &FsRoot) -> Clocks {
    let dir = "/sys/devices/system/cpu/cpufreq";
    let policies: Vec<String> = fs
        .list_dir(dir)
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.starts_with("policy"))
        .collect();
    let khz = |path: String| -> Option<u32> {
        fs.read_opt(&path)
            .and_then(|v| v.parse::<u64>().ok())
            .map(|k| (k / 1000) as u32)
            .filter(|mhz| *mhz > 0)
    };
    let mut clocks = Clocks::default();
    for policy in &policies {
        let p = format!("{dir}/{policy}");
        clocks.max_mhz = clocks.max_mhz.max(khz(format!("{p}/cpuinfo_max_freq")));
        if let Some(min) = khz(format!("{p}/cpuinfo_min_freq")) {
            clocks.min_mhz = Some(clocks.min_mhz.map_or(min, |m: u32| m.min(min)));
        }
    }
    if let Some(first) = policies.first() {
        let p = format!("{dir}/{first}");
        clocks.base_mhz = khz(format!("{p}/base_frequency"));
        clocks.driver = fs.read_opt(&format!("{p}/scaling_driver"));
        clocks.governor = fs.read_opt(&format!("{p}/scaling_governor"));
    }
    clocks
}

/// NUMA nodes from `/sys/devices/system/node/node*`.
fn read_numa(fs: &FsRoot) -> Result<Vec<NumaNode>, ProbeError> {
    let dir = "/sys/devices/system/node";
    let mut nodes = Vec::new();
    for name in fs.list_dir(dir)? {
        let Some(id) = name
            .strip_prefix("node")
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let cpus = fs.read_trimmed(&format!("{dir}/{name}/cpulist"))?;
        let memory_total_bytes = fs
            .read_string(&format!("{dir}/{name}/meminfo"))
            .ok()
            .and_then(|text| parse_node_memtotal(&text));
        nodes.push(NumaNode {
            id,
            cpus,
            memory_total_bytes,
        });
    }
    nodes.sort_by_key(|n| n.id);
    Ok(nodes)
}

/// `Node 0 MemTotal:       24576000 kB` -> bytes.
pub fn parse_node_memtotal(text: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (_, rest) = line.split_once("MemTotal:")?;
        let kib: u64 = rest.trim().strip_suffix("kB")?.trim().parse().ok()?;
        kib.checked_mul(1024)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> FsRoot {
        FsRoot::new(format!(
            "{}/tests/fixtures/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
    }

    #[test]
    fn cpuinfo_first_block() {
        let text = "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 106\nmodel name\t: Intel(R) Xeon(R) Silver 4314 CPU @ 2.40GHz\nstepping\t: 6\nmicrocode\t: 0xd0003a5\nflags\t\t: fpu sse2 avx2\n\nprocessor\t: 1\nvendor_id\t: Other\n";
        let info = parse_cpuinfo(text);
        assert_eq!(info.vendor, "GenuineIntel");
        assert_eq!(info.family, Some(6));
        assert_eq!(info.model, Some(106));
        assert_eq!(info.stepping, Some(6));
        assert_eq!(info.flags, vec!["fpu", "sse2", "avx2"]);
        assert_eq!(base_clock_from_model_name(&info.model_name), Some(2400));
    }

    #[test]
    fn cpuinfo_garbage_does_not_panic() {
        let info = parse_cpuinfo("\u{0}:::\nmodel : x\ncpu family: -1\n");
        assert_eq!(info.model, None);
        assert_eq!(info.family, None);
        assert_eq!(parse_cpuinfo(""), CpuinfoSummary::default());
    }

    #[test]
    fn cache_sizes() {
        assert_eq!(parse_cache_size("32K"), Some(32 * 1024));
        assert_eq!(parse_cache_size("36M\n"), Some(36 << 20));
        assert_eq!(parse_cache_size("512"), Some(512));
        assert_eq!(parse_cache_size("K"), None);
        assert_eq!(parse_cache_size("99999999999999999999G"), None);
    }

    #[test]
    fn model_name_clocks() {
        assert_eq!(base_clock_from_model_name("AMD EPYC 7B13"), None);
        assert_eq!(base_clock_from_model_name("Foo @ 800MHz"), Some(800));
        assert_eq!(base_clock_from_model_name("Foo @ fastGHz"), None);
    }

    #[test]
    fn microarchitecture_levels() {
        let v1: BTreeSet<&str> = ["cmov", "cx8", "fpu", "fxsr", "mmx", "sse", "sse2"].into();
        assert_eq!(x86_64_level(&v1), 1);
        let mut v3 = v1.clone();
        v3.extend(X86_64_LEVELS[1].1);
        v3.extend(X86_64_LEVELS[2].1);
        assert_eq!(x86_64_level(&v3), 3);
        // v4 flags without v3 do not make v4.
        let mut odd = v1.clone();
        odd.extend(X86_64_LEVELS[3].1);
        assert_eq!(x86_64_level(&odd), 1);
    }

    #[test]
    fn node_meminfo() {
        assert_eq!(
            parse_node_memtotal("Node 0 MemTotal:       1024 kB\nNode 0 MemFree: 1 kB\n"),
            Some(1 << 20)
        );
        assert_eq!(parse_node_memtotal("Node 0 MemTotal: lots"), None);
    }

    #[test]
    fn live_host_matches_proc_cpuinfo() {
        let info = collect(&FsRoot::host(), &mut Notes::default()).unwrap();
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
        let processors = cpuinfo
            .lines()
            .filter(|l| l.starts_with("processor"))
            .count();
        assert_eq!(info.logical_cpus as usize, processors);
        assert!(info.physical_cores >= 1 && info.physical_cores <= info.logical_cpus);
        assert!(info.sockets >= 1);
        assert!(!info.caches.is_empty());
    }

    #[test]
    fn server_fixture_two_sockets_with_smt() {
        let info = collect(&fixture("server-2s-smt"), &mut Notes::default()).unwrap();
        assert_eq!(
            info.model_name,
            "Intel(R) Xeon(R) Silver 4110 CPU @ 2.10GHz"
        );
        assert_eq!(
            (info.family, info.model, info.stepping),
            (Some(6), Some(85), Some(4))
        );
        assert_eq!(
            (info.sockets, info.physical_cores, info.logical_cpus),
            (2, 16, 32)
        );
        assert!(info.smt_active);
        assert_eq!(info.threads_per_core, 2);
        assert_eq!(info.packages[1].cpus, "8-15,24-31");
        assert_eq!(
            (info.base_clock_mhz, info.max_clock_mhz, info.min_clock_mhz),
            (Some(2100), Some(3000), Some(800))
        );
        assert_eq!(info.scaling_driver.as_deref(), Some("intel_pstate"));
        let l3 = info.caches.iter().find(|c| c.level == 3).unwrap();
        assert_eq!(
            (l3.size_bytes, l3.instances, l3.shared_by_cpus),
            (11264 * 1024, 2, 16)
        );
        let l2 = info.caches.iter().find(|c| c.level == 2).unwrap();
        assert_eq!((l2.instances, l2.shared_by_cpus), (16, 2));
        assert_eq!(info.x86_64_level, Some(4));
        assert!(info.features.contains(&"avx512f".to_owned()));
        assert!(!info.features.contains(&"sha_ni".to_owned()));
        assert_eq!(info.numa_nodes.len(), 2);
        assert_eq!(info.numa_nodes[1].cpus, "8-15,24-31");
        assert_eq!(
            info.numa_nodes[1].memory_total_bytes,
            Some(98_304_000 * 1024)
        );
    }

    #[test]
    fn laptop_fixture_hybrid_cores() {
        let info = collect(&fixture("laptop-hybrid"), &mut Notes::default()).unwrap();
        // 6 P-cores with two threads, 8 E-cores with one.
        assert_eq!(
            (info.sockets, info.physical_cores, info.logical_cpus),
            (1, 14, 20)
        );
        assert!(info.smt_active);
        // The highest max clock is the P-cores'; the base is policy0's (a P-core).
        assert_eq!(
            (info.base_clock_mhz, info.max_clock_mhz),
            (Some(2300), Some(4700))
        );
        // P- and E-core caches of one level are separate entries.
        let l2: Vec<(u64, u32, u32)> = info
            .caches
            .iter()
            .filter(|c| c.level == 2)
            .map(|c| (c.size_bytes, c.instances, c.shared_by_cpus))
            .collect();
        assert_eq!(l2, vec![(1280 * 1024, 6, 2), (2048 * 1024, 2, 4)]);
        assert_eq!(info.x86_64_level, Some(3), "Alder Lake has no AVX-512");
        assert!(info.features.contains(&"avx_vnni".to_owned()));
    }

    #[test]
    fn vm_fixture_without_cpufreq() {
        let mut notes = Notes::default();
        let info = collect(&fixture("vm-2vcpu"), &mut notes).unwrap();
        assert_eq!(info.logical_cpus, 2);
        assert_eq!(info.max_clock_mhz, None);
        assert!(notes.as_slice().iter().any(|n| n.starts_with("cpufreq")));
    }
}
