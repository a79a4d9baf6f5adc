//! `fog-agent inventory [--json]`: the human summary and the JSON document.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use super::render::{bytes, duration_secs, indent, or_dash, table};
use crate::fsroot::FsRoot;
use crate::inventory::{self, Inventory, Probed};

/// Arguments of `fog-agent inventory`.
#[derive(Debug, Args)]
pub struct InventoryArgs {
    /// Print the machine format (JSON, documented in agent/INVENTORY.md).
    #[arg(long)]
    pub json: bool,

    /// Enumerate OpenCL afresh instead of using this boot's cached enumeration (the cache is
    /// keyed by boot id, ICD files and driver libraries, so it is refreshed on any change).
    #[arg(long)]
    pub no_cache: bool,

    /// Read /proc, /sys and /etc below this directory instead of `/` (for fixture trees; the
    /// probes that need the live machine, such as CPUID, NVML and OpenCL, are then skipped).
    #[arg(long, value_name = "DIR", hide = true)]
    pub root: Option<PathBuf>,
}

/// Runs `fog-agent inventory`.
pub fn run(args: &InventoryArgs) -> anyhow::Result<ExitCode> {
    let fs = match &args.root {
        Some(dir) if !dir.is_dir() => {
            return Err(super::CliError::Usage(format!(
                "--root {}: not a directory",
                dir.display()
            ))
            .into())
        }
        Some(dir) => FsRoot::new(dir),
        None => FsRoot::host(),
    };
    let inventory = if args.no_cache {
        inventory::collect_fresh(fs)
    } else {
        inventory::collect_from(fs)
    };
    let text = if args.json {
        let mut json =
            serde_json::to_string_pretty(&inventory).context("cannot serialize the inventory")?;
        json.push('\n');
        json
    } else {
        human(&inventory)
    };
    std::io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .context("cannot write the inventory to stdout")?;
    Ok(ExitCode::SUCCESS)
}

/// Width of the section label column.
const LABEL: usize = 10;

/// The human summary: one section per probe, aligned, sizes in binary units.
pub fn human(inv: &Inventory) -> String {
    let mut out = String::new();
    section(&mut out, "Host", &inv.host, host_lines);
    section(&mut out, "CPU", &inv.cpu, cpu_lines);
    section(&mut out, "Memory", &inv.memory, memory_lines);
    section(&mut out, "GPUs", &inv.gpus, gpu_lines);
    section(&mut out, "Storage", &inv.storage, storage_lines);
    section(&mut out, "Network", &inv.network, network_lines);
    let _ = writeln!(
        out,
        "{:<LABEL$}{}:{}\n{:<LABEL$}{} ms ({})",
        "Identity",
        inv.fingerprint.algorithm,
        inv.fingerprint.value,
        "Collected",
        inv.collection_ms,
        inv.collected_at
    );
    out
}

/// Writes one section: its lines, or `unavailable: reason`; then any notes.
fn section<T>(out: &mut String, label: &str, probed: &Probed<T>, lines: fn(&T) -> Vec<String>) {
    let body = match probed.get() {
        Some(data) => lines(data),
        None => vec![format!(
            "unavailable: {}",
            probed.reason.as_deref().unwrap_or("no reason given")
        )],
    };
    for (i, line) in body.iter().enumerate() {
        let head = if i == 0 { label } else { "" };
        if line.contains('\n') {
            let _ = writeln!(out, "{head}\n{line}");
        } else {
            let _ = writeln!(out, "{head:<LABEL$}{line}");
        }
    }
    for note in &probed.notes {
        let _ = writeln!(out, "{:<LABEL$}note: {note}", "");
    }
    out.push('\n');
}

fn host_lines(h: &inventory::host::HostInfo) -> Vec<String> {
    let os = h
        .os_pretty_name
        .clone()
        .or_else(|| h.os_name.clone())
        .unwrap_or_else(|| "unknown OS".into());
    let virt = &h.virtualization;
    let kind = match virt.kind {
        inventory::host::VirtualizationKind::Vm => "virtual machine",
        inventory::host::VirtualizationKind::BareMetal => "bare metal",
        inventory::host::VirtualizationKind::Unknown => "unknown",
    };
    let mut lines = vec![
        format!("{} ({os}, {})", h.hostname, h.architecture),
        format!("kernel {}", or_dash(h.kernel_release.as_deref())),
        match &virt.hypervisor {
            Some(hv) => format!("{kind} ({hv})"),
            None => kind.to_owned(),
        },
    ];
    if let Some(up) = h.uptime_seconds {
        lines.push(format!("up {}", duration_secs(up)));
    }
    lines.push(format!(
        "machine-id {}  boot-id {}",
        or_dash(h.machine_id.as_deref()),
        or_dash(h.boot_id.as_deref())
    ));
    lines
}

fn cpu_lines(c: &inventory::cpu::CpuInfo) -> Vec<String> {
    let mut lines = vec![
        format!(
            "{} ({} family {} model {} stepping {})",
            c.model_name,
            c.vendor,
            or_dash(c.family),
            or_dash(c.model),
            or_dash(c.stepping)
        ),
        format!(
            "{} socket{}, {} physical cores, {} logical CPUs, SMT {}",
            c.sockets,
            plural(c.sockets),
            c.physical_cores,
            c.logical_cpus,
            if c.smt_active { "on" } else { "off" }
        ),
        format!(
            "clock base {} MHz, max {} MHz{}",
            or_dash(c.base_clock_mhz),
            or_dash(c.max_clock_mhz),
            c.scaling_governor
                .as_deref()
                .map(|g| format!(", governor {g}"))
                .unwrap_or_default()
        ),
    ];
    let caches: Vec<String> = c
        .caches
        .iter()
        .map(|cache| {
            let name = match cache.kind.as_str() {
                "data" => format!("L{}d", cache.level),
                "instruction" => format!("L{}i", cache.level),
                _ => format!("L{}", cache.level),
            };
            format!("{name} {}x{}", cache.instances, bytes(cache.size_bytes))
        })
        .collect();
    if !caches.is_empty() {
        lines.push(format!("caches {}", caches.join(", ")));
    }
    let level = c
        .x86_64_level
        .map(|l| format!("x86-64-v{l}: "))
        .unwrap_or_default();
    lines.push(format!("ISA {level}{}", c.features.join(" ")));
    for node in &c.numa_nodes {
        lines.push(format!(
            "NUMA node {}: CPUs {}, {}",
            node.id,
            node.cpus,
            node.memory_total_bytes
                .map_or_else(|| "memory unknown".to_owned(), bytes)
        ));
    }
    lines
}

fn memory_lines(m: &inventory::memory::MemoryInfo) -> Vec<String> {
    let mut lines = vec![format!(
        "{} total, {} available, swap {} ({} free)",
        bytes(m.total_bytes),
        bytes(m.available_bytes),
        bytes(m.swap_total_bytes),
        bytes(m.swap_free_bytes)
    )];
    let pools: Vec<String> = m
        .hugepages
        .iter()
        .map(|p| {
            format!(
                "{} pages: {} ({} free)",
                bytes(p.page_size_bytes),
                p.total_pages,
                p.free_pages
            )
        })
        .collect();
    if !pools.is_empty() {
        lines.push(format!("hugepages {}", pools.join("; ")));
    }
    if let Some(thp) = &m.transparent_hugepages {
        lines.push(format!("transparent hugepages {thp}"));
    }
    match m.dimms.get() {
        Some(dimms) if !dimms.is_empty() => {
            let mut t = table(
                &["slot", "size", "type", "speed", "manufacturer", "part"],
                &[1, 3],
            );
            for d in dimms {
                t.add_row(vec![
                    or_dash(d.locator.as_deref()),
                    bytes(d.size_bytes),
                    format!(
                        "{} {}",
                        or_dash(d.memory_type.as_deref()),
                        or_dash(d.form_factor.as_deref())
                    ),
                    d.configured_speed_mts
                        .or(d.speed_mts)
                        .map_or_else(|| "-".to_owned(), |s| format!("{s} MT/s")),
                    or_dash(d.manufacturer.as_deref()),
                    or_dash(d.part_number.as_deref()),
                ]);
            }
            lines.push(indent(&t, LABEL));
        }
        Some(_) => lines.push("DIMMs: none reported".to_owned()),
        None => lines.push(format!(
            "DIMMs unavailable: {}",
            m.dimms.reason.as_deref().unwrap_or("no reason given")
        )),
    }
    lines
}

fn gpu_lines(g: &inventory::gpu::GpuInventory) -> Vec<String> {
    let mut lines = Vec::new();
    if g.gpus.is_empty() {
        lines.push("no GPU".to_owned());
    } else {
        let mut t = table(
            &["pci", "vendor", "name", "memory", "driver", "seen by"],
            &[3],
        );
        for gpu in &g.gpus {
            t.add_row(vec![
                gpu.pci_bus_id.clone(),
                gpu.vendor.clone(),
                or_dash(gpu.name.as_deref()),
                gpu.memory_total_bytes.map_or_else(|| "-".to_owned(), bytes),
                gpu.driver.clone().unwrap_or_else(|| "(none)".to_owned()),
                gpu.seen_by.join(","),
            ]);
        }
        lines.push(indent(&t, LABEL));
        for gpu in &g.gpus {
            lines.push(cdi_line(gpu));
        }
    }
    for dev in &g.opencl_devices {
        lines.push(format!(
            "OpenCL {} device {} ({}): {} compute units, {}",
            dev.device_type,
            dev.name,
            dev.platform_name,
            dev.compute_units,
            bytes(dev.global_memory_bytes)
        ));
    }
    for (name, source) in [
        ("NVML", &g.sources.nvml),
        ("OpenCL", &g.sources.opencl),
        ("PCI", &g.sources.pci),
    ] {
        if let Some(reason) = &source.reason {
            lines.push(format!("{name} unavailable: {reason}"));
        }
    }
    lines
}

/// How jobs get the GPU: its CDI device, or device-node mode with the command that fixes it.
fn cdi_line(gpu: &inventory::gpu::Gpu) -> String {
    match &gpu.cdi_device {
        Some(device) => format!("{}: CDI device {device}", gpu.pci_bus_id),
        None => format!(
            "{}: no CDI device: device-node mode (generate the spec: {})",
            gpu.pci_bus_id,
            crate::cdi::GENERATE_COMMAND
        ),
    }
}

fn storage_lines(s: &inventory::storage::StorageInfo) -> Vec<String> {
    let mut lines = Vec::new();
    let mut disks = table(
        &["device", "kind", "size", "transport", "model", "serial"],
        &[2],
    );
    for d in &s.block_devices {
        disks.add_row(vec![
            d.name.clone(),
            d.kind.clone(),
            bytes(d.size_bytes),
            or_dash(d.transport.as_deref()),
            or_dash(d.model.as_deref()),
            or_dash(d.serial.as_deref()),
        ]);
    }
    if s.block_devices.is_empty() {
        lines.push("no block devices".to_owned());
    } else {
        lines.push(indent(&disks, LABEL));
    }
    let mut fss = table(&["mount", "type", "size", "free", "device"], &[2, 3]);
    for f in &s.filesystems {
        fss.add_row(vec![
            f.mount_point.clone(),
            f.fs_type.clone(),
            f.size_bytes.map_or_else(|| "-".to_owned(), bytes),
            f.available_bytes.map_or_else(|| "-".to_owned(), bytes),
            f.device.clone(),
        ]);
    }
    if !s.filesystems.is_empty() {
        lines.push(indent(&fss, LABEL));
    }
    lines
}

fn network_lines(n: &inventory::network::NetworkInfo) -> Vec<String> {
    if n.interfaces.is_empty() {
        return vec!["no interfaces".to_owned()];
    }
    let mut t = table(
        &[
            "interface",
            "mac",
            "state",
            "speed",
            "mtu",
            "driver",
            "addresses",
        ],
        &[3, 4],
    );
    for i in &n.interfaces {
        t.add_row(vec![
            i.name.clone(),
            or_dash(i.mac_address.as_deref()),
            or_dash(i.operstate.as_deref()),
            i.speed_mbps
                .map_or_else(|| "-".to_owned(), |s| format!("{s} Mb/s")),
            or_dash(i.mtu),
            or_dash(i.driver.as_deref()),
            i.addresses
                .iter()
                .map(|a| format!("{}/{}", a.address, a.prefix_len))
                .collect::<Vec<_>>()
                .join(" "),
        ]);
    }
    vec![indent(&t, LABEL)]
}

fn plural(n: u32) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}
