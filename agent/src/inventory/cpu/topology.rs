//! Sockets, cores and SMT threads from sysfs `topology/` (never guessed), and NUMA nodes.

use std::collections::{BTreeMap, BTreeSet};

use super::{CpuPackage, NumaNode};
use crate::fsroot::{format_cpu_list, parse_cpu_list, FsRoot};
use crate::inventory::ProbeError;

/// Sockets and cores from sysfs topology.
#[derive(Debug, Default)]
pub(super) struct Topology {
    pub(super) packages: Vec<CpuPackage>,
    pub(super) physical_cores: u32,
    pub(super) threads_per_core: u32,
}

pub(super) fn read_topology(fs: &FsRoot, online: &[u32]) -> Result<Topology, ProbeError> {
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

/// NUMA nodes from `/sys/devices/system/node/node*`.
pub(super) fn read_numa(fs: &FsRoot) -> Result<Vec<NumaNode>, ProbeError> {
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
