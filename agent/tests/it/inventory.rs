//! `fog-agent inventory` on this real machine, compared with the operating system's own view
//! (read here independently and simply), and on the fixture trees through `--root`.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fog-agent"))
}

/// Runs `fog-agent inventory --json [args]` and parses its output.
fn inventory_json(args: &[&str]) -> Value {
    let output = agent()
        .args(["inventory", "--json"])
        .args(args)
        .output()
        .expect("run fog-agent");
    assert!(
        output.status.success(),
        "fog-agent inventory failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("inventory is JSON")
}

/// The live inventory, collected once for all tests in this module.
fn live() -> &'static Value {
    static LIVE: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    LIVE.get_or_init(|| inventory_json(&[]))
}

fn section<'a>(inv: &'a Value, name: &str) -> &'a Value {
    let s = &inv[name];
    assert_eq!(s["status"], "ok", "{name} unavailable: {}", s["reason"]);
    &s["data"]
}

fn cpuinfo_field(key: &str) -> Vec<String> {
    fs::read_to_string("/proc/cpuinfo")
        .unwrap()
        .lines()
        .filter_map(|line| line.split_once(':'))
        .filter(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim().to_owned())
        .collect()
}

fn read(path: impl AsRef<Path>) -> String {
    fs::read_to_string(path).unwrap().trim().to_owned()
}

#[test]
fn every_section_is_reported_with_timing() {
    let inv = live();
    assert_eq!(inv["format"], "fog-inventory-v1");
    for name in ["host", "cpu", "memory", "gpus", "storage", "network"] {
        let s = &inv[name];
        assert!(s["collection_ms"].as_f64().unwrap() >= 0.0, "{name}");
        assert!(
            s["status"] == "ok" || s["status"] == "unavailable",
            "{name}"
        );
        if s["status"] == "unavailable" {
            assert!(
                !s["reason"].as_str().unwrap().is_empty(),
                "{name} without reason"
            );
        }
    }
    assert_eq!(inv["fingerprint"]["algorithm"], "sha256");
    assert_eq!(inv["fingerprint"]["value"].as_str().unwrap().len(), 64);
    assert!(inv["collection_ms"].as_f64().unwrap() > 0.0);
}

#[test]
fn cpu_matches_proc_cpuinfo_and_sysfs_topology() {
    let cpu = section(live(), "cpu");
    let models = cpuinfo_field("model name");
    assert_eq!(cpu["model_name"], models[0].as_str());
    assert_eq!(cpu["logical_cpus"].as_u64().unwrap() as usize, models.len());

    // Physical cores: distinct sibling sets in sysfs topology.
    let mut cores = BTreeSet::new();
    let mut packages = BTreeSet::new();
    for entry in fs::read_dir("/sys/devices/system/cpu").unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let is_cpu = name
            .strip_prefix("cpu")
            .is_some_and(|n| n.parse::<u32>().is_ok());
        if !is_cpu || !path.join("topology").exists() {
            continue;
        }
        cores.insert(read(path.join("topology/thread_siblings_list")));
        packages.insert(read(path.join("topology/physical_package_id")));
    }
    assert_eq!(
        cpu["physical_cores"].as_u64().unwrap() as usize,
        cores.len()
    );
    assert_eq!(cpu["sockets"].as_u64().unwrap() as usize, packages.len());

    // Flags: exactly the kernel's flags line.
    let flags: BTreeSet<String> = cpuinfo_field("flags")[0]
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let ours: BTreeSet<String> = cpu["flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ours, flags);
    for feature in cpu["features"].as_array().unwrap() {
        assert!(
            flags.contains(feature.as_str().unwrap()),
            "{feature} not in flags"
        );
    }
}

#[test]
fn caches_match_sysfs_cache_indexes() {
    let cpu = section(live(), "cpu");
    let base = PathBuf::from("/sys/devices/system/cpu/cpu0/cache");
    let mut checked = 0;
    for entry in fs::read_dir(&base).unwrap() {
        let dir = entry.unwrap().path();
        if !dir
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("index")
        {
            continue;
        }
        let level: u64 = read(dir.join("level")).parse().unwrap();
        if level < 2 {
            continue;
        }
        let size = read(dir.join("size"));
        let kib: u64 = size.trim_end_matches('K').parse().unwrap();
        let ours = cpu["caches"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["level"] == level)
            .unwrap_or_else(|| panic!("no L{level} cache reported"));
        assert_eq!(ours["size_bytes"].as_u64().unwrap(), kib * 1024, "L{level}");
        checked += 1;
    }
    assert!(checked >= 1, "this machine exposes L2/L3 in sysfs");
}

#[test]
fn memory_total_matches_proc_meminfo() {
    let memory = section(live(), "memory");
    let meminfo = read("/proc/meminfo");
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .unwrap()
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    assert_eq!(memory["total_bytes"].as_u64().unwrap(), kib * 1024);
    // This VM has no SMBIOS tables: DIMMs are unavailable with a reason, not an error.
    if !Path::new("/sys/firmware/dmi/tables/DMI").exists() {
        assert_eq!(memory["dimms"]["status"], "unavailable");
        assert!(memory["dimms"]["reason"]
            .as_str()
            .unwrap()
            .contains("SMBIOS"));
    }
}

#[test]
fn nic_macs_match_sys_class_net() {
    let network = section(live(), "network");
    let ours: BTreeSet<(String, String)> = network["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| {
            Some((
                i["name"].as_str()?.to_owned(),
                i["mac_address"].as_str()?.to_owned(),
            ))
        })
        .collect();
    let mut expected = BTreeSet::new();
    for entry in fs::read_dir("/sys/class/net").unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if let Ok(mac) = fs::read_to_string(path.join("address")) {
            let mac = mac.trim().to_lowercase();
            if !mac.is_empty() {
                expected.insert((name, mac));
            }
        }
    }
    assert_eq!(ours, expected);
}

#[test]
fn pocl_is_an_opencl_cpu_device_and_not_a_gpu() {
    let gpus = section(live(), "gpus");
    assert_eq!(
        gpus["gpus"].as_array().unwrap().len(),
        0,
        "this VM has no GPU"
    );
    let devices = gpus["opencl_devices"].as_array().unwrap();
    let pocl = devices
        .iter()
        .find(|d| d["platform_name"] == "Portable Computing Language")
        .expect("PoCL is installed by the setup script");
    assert_eq!(pocl["device_type"], "cpu");
    // No NVIDIA driver here: a normal, explained absence.
    assert_eq!(gpus["sources"]["nvml"]["status"], "unavailable");
    assert!(gpus["sources"]["nvml"]["reason"]
        .as_str()
        .unwrap()
        .contains("no NVIDIA driver"));
}

#[test]
fn human_summary_has_every_section() {
    let output = agent().arg("inventory").output().unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    for label in [
        "Host", "CPU", "Memory", "GPUs", "Storage", "Network", "Identity",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(label)),
            "no {label} section in:\n{text}"
        );
    }
    let cpu = section(live(), "cpu");
    assert!(text.contains(cpu["model_name"].as_str().unwrap()));
}

#[test]
fn fingerprint_is_stable_across_runs() {
    let again = inventory_json(&[]);
    assert_eq!(again["fingerprint"], live()["fingerprint"]);
}

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn fixture_roots_skip_live_only_sources() {
    for name in ["vm-2vcpu", "server-2s-smt", "laptop-hybrid"] {
        let inv = inventory_json(&["--root", &fixture(name)]);
        for sec in ["host", "cpu", "memory", "storage", "network"] {
            assert_eq!(
                inv[sec]["status"], "ok",
                "{name}/{sec}: {}",
                inv[sec]["reason"]
            );
        }
        let sources = &inv["gpus"]["data"]["sources"];
        assert_eq!(sources["nvml"]["status"], "unavailable", "{name}");
        assert_eq!(sources["opencl"]["status"], "unavailable", "{name}");
    }
}

#[test]
fn server_fixture_end_to_end() {
    let inv = inventory_json(&["--root", &fixture("server-2s-smt")]);
    let cpu = section(&inv, "cpu");
    assert_eq!(cpu["sockets"], 2);
    assert!(cpu["smt_active"].as_bool().unwrap());
    assert_eq!(
        cpu["logical_cpus"].as_u64().unwrap(),
        2 * cpu["physical_cores"].as_u64().unwrap()
    );
    assert_eq!(cpu["numa_nodes"].as_array().unwrap().len(), 2);
    // Three GPUs on the PCI bus, the AMD one without a driver; no NVML on a fixture root.
    let gpus = section(&inv, "gpus")["gpus"].as_array().unwrap().clone();
    assert_eq!(gpus.len(), 3);
    let vendors: Vec<&str> = gpus.iter().map(|g| g["vendor"].as_str().unwrap()).collect();
    assert_eq!(vendors.iter().filter(|v| **v == "NVIDIA").count(), 2);
    let amd = gpus.iter().find(|g| g["vendor"] == "AMD").unwrap();
    assert!(amd["driver"].is_null());
}

#[test]
fn bad_root_is_a_clear_error() {
    let output = agent()
        .args(["inventory", "--root", "/nonexistent/fixture"])
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(2),
        "a bad --root is a usage error"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/nonexistent/fixture"), "{stderr}");
    assert!(stderr.contains("not a directory"), "{stderr}");
}
