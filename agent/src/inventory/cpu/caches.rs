//! Caches: grouped by level, type and size from sysfs `cpu*/cache/index*`, or from CPUID when
//! sysfs has none.

use std::collections::{BTreeMap, BTreeSet};

use super::CpuCache;
use crate::fsroot::{parse_cpu_list, FsRoot};
use crate::inventory::ProbeError;

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
pub(super) fn read_caches(fs: &FsRoot, online: &[u32]) -> Result<Vec<CpuCache>, ProbeError> {
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
pub(super) fn cpuid_caches(fs: &FsRoot, logical_cpus: usize) -> Vec<CpuCache> {
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
pub(super) fn cpuid_caches(_fs: &FsRoot, _logical_cpus: usize) -> Vec<CpuCache> {
    Vec::new()
}
