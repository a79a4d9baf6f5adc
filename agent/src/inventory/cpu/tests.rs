//! CPU parsing and collection on the fixture trees (server, laptop, VM) and the live host.

use super::features::X86_64_LEVELS;
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
