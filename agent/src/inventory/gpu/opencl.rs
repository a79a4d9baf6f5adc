//! OpenCL platforms and devices through opencl3.
//!
//! Enumeration loads every installed ICD's whole runtime (PoCL maps LLVM; a GPU ICD maps its
//! driver), so the agent does it in a child process — its own binary re-executed as
//! `fog-agent internal opencl-devices` — with a timeout: a driver that crashes or hangs kills the
//! child, never the agent, and the agent's memory never carries a compiler.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One OpenCL device.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OpenClDevice {
    /// Platform name, e.g. `Portable Computing Language`.
    pub platform_name: String,
    /// Platform vendor.
    pub platform_vendor: String,
    /// Platform version, e.g. `OpenCL 3.0 PoCL 3.1`.
    pub platform_version: String,
    /// `cpu`, `gpu`, `accelerator` or `custom`.
    pub device_type: String,
    /// Device name.
    pub name: String,
    /// Device vendor.
    pub vendor: String,
    /// PCI vendor id as OpenCL reports it, e.g. `0x10de`.
    pub vendor_id: Option<String>,
    /// `OpenCL <major>.<minor> ...`.
    pub version: String,
    /// Driver version.
    pub driver_version: String,
    /// OpenCL C version.
    pub opencl_c_version: Option<String>,
    /// Compute units.
    pub compute_units: Option<u32>,
    /// Highest clock.
    pub max_clock_mhz: Option<u32>,
    /// Global memory.
    pub global_memory_bytes: Option<u64>,
    /// Local memory per work-group.
    pub local_memory_bytes: Option<u64>,
    /// Largest single allocation.
    pub max_alloc_bytes: Option<u64>,
    /// Largest work-group.
    pub max_work_group_size: Option<u64>,
    /// Double precision supported.
    pub fp64: bool,
    /// PCI address (`dddd:bb:dd.f`) where the platform exposes it (NVIDIA, AMD and
    /// `cl_khr_pci_bus_info` extensions).
    pub pci_bus_id: Option<String>,
}

/// What enumeration found: devices, and notes on platforms or devices that failed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OpenClReport {
    /// Every device of every platform that answered.
    pub devices: Vec<OpenClDevice>,
    /// Platforms or queries that failed, each `what: why`.
    pub notes: Vec<String>,
}

/// Why OpenCL is unavailable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenClUnavailable {
    /// No ICD loader or no platform.
    #[error("no OpenCL platform ({0})")]
    NoPlatform(String),
    /// The enumeration child failed, crashed or timed out.
    #[error("OpenCL enumeration failed: {0}")]
    Failed(String),
    /// Not asked: the inventory is not of the live host.
    #[error("skipped: not the live host")]
    Skipped,
}

/// Where OpenCL device facts come from.
pub trait OpenClSource: Send + Sync + std::fmt::Debug {
    /// Every device of every platform, or why OpenCL is unavailable.
    fn devices(&self) -> Result<OpenClReport, OpenClUnavailable>;
}

/// Enumerates in this process (what the child runs).
#[derive(Debug, Clone, Copy, Default)]
pub struct InProcessOpenCl;

impl OpenClSource for InProcessOpenCl {
    fn devices(&self) -> Result<OpenClReport, OpenClUnavailable> {
        enumerate()
    }
}

/// Enumerates in a child process with a timeout (production).
#[derive(Debug, Clone)]
pub struct ChildProcessOpenCl {
    /// The fog-agent binary to run as `internal opencl-devices` (`None`: it could not be found).
    pub exe: Option<PathBuf>,
    /// How long the child may take.
    pub timeout: Duration,
}

impl ChildProcessOpenCl {
    /// This very binary, with a 20 s timeout (a cold PoCL start compiles nothing here, but a
    /// first GPU driver load can take seconds).
    pub fn current_exe() -> Self {
        Self {
            exe: std::env::current_exe().ok(),
            timeout: Duration::from_secs(20),
        }
    }
}

impl OpenClSource for ChildProcessOpenCl {
    fn devices(&self) -> Result<OpenClReport, OpenClUnavailable> {
        let exe = self.exe.as_ref().ok_or_else(|| {
            OpenClUnavailable::Failed("cannot find the fog-agent binary to run the child".into())
        })?;
        let output = run_with_timeout(
            Command::new(exe).args(["internal", "opencl-devices"]),
            self.timeout,
        )
        .map_err(OpenClUnavailable::Failed)?;
        let ChildOutput {
            status,
            stdout,
            stderr,
        } = output;
        let tail = stderr_tail(&stderr);
        match status.code() {
            Some(0) => serde_json::from_slice::<ChildAnswer>(&stdout)
                .map_err(|err| {
                    OpenClUnavailable::Failed(format!("unreadable child output: {err}"))
                })?
                .into_result(),
            Some(code) => Err(OpenClUnavailable::Failed(format!(
                "child exited with {code}{tail}"
            ))),
            None => {
                use std::os::unix::process::ExitStatusExt;
                Err(OpenClUnavailable::Failed(format!(
                    "child killed by signal {}{tail}",
                    status.signal().unwrap_or(0)
                )))
            }
        }
    }
}

/// What the child prints on stdout.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ChildAnswer {
    Report(OpenClReport),
    NoPlatform(String),
}

impl ChildAnswer {
    fn into_result(self) -> Result<OpenClReport, OpenClUnavailable> {
        match self {
            Self::Report(report) => Ok(report),
            Self::NoPlatform(why) => Err(OpenClUnavailable::NoPlatform(why)),
        }
    }
}

/// Entry point of `fog-agent internal opencl-devices`: enumerates in-process and prints one JSON
/// answer on stdout.
pub fn child_main() -> std::process::ExitCode {
    let answer = match enumerate() {
        Ok(report) => ChildAnswer::Report(report),
        Err(OpenClUnavailable::NoPlatform(why)) => ChildAnswer::NoPlatform(why),
        Err(other) => ChildAnswer::NoPlatform(other.to_string()),
    };
    match serde_json::to_writer(std::io::stdout().lock(), &answer) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("fog-agent: cannot write OpenCL devices: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Output of a finished child.
#[derive(Debug)]
pub struct ChildOutput {
    /// How it ended.
    pub status: std::process::ExitStatus,
    /// Everything it printed on stdout.
    pub stdout: Vec<u8>,
    /// Everything it printed on stderr.
    pub stderr: Vec<u8>,
}

/// Runs `command` to completion, killing it after `timeout`.
pub fn run_with_timeout(command: &mut Command, timeout: Duration) -> Result<ChildOutput, String> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| format!("cannot start child: {err}"))?;
    let (mut out, err) = match (child.stdout.take(), child.stderr.take()) {
        (Some(out), Some(err)) => (out, err),
        _ => return Err("child has no pipes".to_owned()),
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out.read_to_end(&mut buf);
        let _ = tx.send(());
        buf
    });
    let stderr_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err.take(64 * 1024).read_to_end(&mut buf);
        buf
    });
    // stdout closes when the child exits (or closes it): that is our wake-up.
    if rx.recv_timeout(timeout).is_err() {
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!(
            "child did not finish within {} s and was killed",
            timeout.as_secs_f32()
        ));
    }
    let status = child
        .wait()
        .map_err(|err| format!("cannot wait for child: {err}"))?;
    let stdout = stdout_reader.join().unwrap_or_default();
    let stderr = stderr_reader.join().unwrap_or_default();
    Ok(ChildOutput {
        status,
        stdout,
        stderr,
    })
}

/// The last line of a child's stderr, as `: <line>`, or nothing.
fn stderr_tail(stderr: &[u8]) -> String {
    String::from_utf8_lossy(stderr)
        .lines()
        .rev()
        .find(|line| !line.trim().is_empty())
        .map(|line| format!(": {}", line.trim()))
        .unwrap_or_default()
}

/// Enumerates every platform and device in this process.
fn enumerate() -> Result<OpenClReport, OpenClUnavailable> {
    use opencl3::device::{Device, CL_DEVICE_TYPE_ALL};

    let platforms = opencl3::platform::get_platforms()
        .map_err(|err| OpenClUnavailable::NoPlatform(format!("clGetPlatformIDs: {err}")))?;
    if platforms.is_empty() {
        return Err(OpenClUnavailable::NoPlatform("no ICD installed".to_owned()));
    }
    let mut report = OpenClReport::default();
    for platform in platforms {
        let platform_name = platform.name().unwrap_or_default();
        let ids = match platform.get_devices(CL_DEVICE_TYPE_ALL) {
            Ok(ids) => ids,
            Err(err) => {
                report
                    .notes
                    .push(format!("platform {platform_name:?}: {err}"));
                continue;
            }
        };
        let platform_vendor = platform.vendor().unwrap_or_default();
        let platform_version = platform.version().unwrap_or_default();
        for id in ids {
            let device = Device::new(id);
            let extensions = device.extensions().unwrap_or_default();
            report.devices.push(OpenClDevice {
                platform_name: platform_name.clone(),
                platform_vendor: platform_vendor.clone(),
                platform_version: platform_version.clone(),
                device_type: device
                    .dev_type()
                    .map(device_type_name)
                    .unwrap_or("unknown")
                    .to_owned(),
                name: device.name().unwrap_or_default(),
                vendor: device.vendor().unwrap_or_default(),
                vendor_id: device.vendor_id().ok().map(|v| format!("0x{v:04x}")),
                version: device.version().unwrap_or_default(),
                driver_version: device.driver_version().unwrap_or_default(),
                opencl_c_version: device.opencl_c_version().ok(),
                compute_units: device.max_compute_units().ok(),
                max_clock_mhz: device.max_clock_frequency().ok(),
                global_memory_bytes: device.global_mem_size().ok(),
                local_memory_bytes: device.local_mem_size().ok(),
                max_alloc_bytes: device.max_mem_alloc_size().ok(),
                max_work_group_size: device.max_work_group_size().ok().map(|v| v as u64),
                fp64: device.double_fp_config().is_ok_and(|c| c != 0),
                pci_bus_id: pci_bus_id(id, &extensions),
            });
        }
    }
    Ok(report)
}

fn device_type_name(bits: u64) -> &'static str {
    use opencl3::device::{
        CL_DEVICE_TYPE_ACCELERATOR, CL_DEVICE_TYPE_CPU, CL_DEVICE_TYPE_CUSTOM, CL_DEVICE_TYPE_GPU,
    };
    if bits & CL_DEVICE_TYPE_GPU != 0 {
        "gpu"
    } else if bits & CL_DEVICE_TYPE_CPU != 0 {
        "cpu"
    } else if bits & CL_DEVICE_TYPE_ACCELERATOR != 0 {
        "accelerator"
    } else if bits & CL_DEVICE_TYPE_CUSTOM != 0 {
        "custom"
    } else {
        "unknown"
    }
}

/// `cl_nv_device_attribute_query` PCI bus, slot and domain.
const CL_DEVICE_PCI_BUS_ID_NV: u32 = 0x4008;
const CL_DEVICE_PCI_SLOT_ID_NV: u32 = 0x4009;
const CL_DEVICE_PCI_DOMAIN_ID_NV: u32 = 0x400A;
/// `cl_amd_device_attribute_query` topology.
const CL_DEVICE_TOPOLOGY_AMD: u32 = 0x4037;
/// `cl_khr_pci_bus_info`.
const CL_DEVICE_PCI_BUS_INFO_KHR: u32 = 0x410F;

/// The device's PCI address from whichever extension its platform implements.
fn pci_bus_id(id: opencl3::types::cl_device_id, extensions: &str) -> Option<String> {
    let raw = |param| opencl3::device::get_device_data(id, param).ok();
    if extensions.contains("cl_khr_pci_bus_info") {
        if let Some(address) =
            raw(CL_DEVICE_PCI_BUS_INFO_KHR).and_then(|b| parse_khr_pci_bus_info(&b))
        {
            return Some(address);
        }
    }
    if extensions.contains("cl_nv_device_attribute_query") {
        let word = |param| raw(param).and_then(|b| read_u32(&b, 0));
        let (bus, slot) = (
            word(CL_DEVICE_PCI_BUS_ID_NV)?,
            word(CL_DEVICE_PCI_SLOT_ID_NV)?,
        );
        let domain = word(CL_DEVICE_PCI_DOMAIN_ID_NV).unwrap_or(0);
        // The NV slot id packs device << 3 | function.
        return Some(format_pci(domain, bus, slot >> 3, slot & 7));
    }
    if extensions.contains("cl_amd_device_attribute_query") {
        return raw(CL_DEVICE_TOPOLOGY_AMD).and_then(|b| parse_amd_topology(&b));
    }
    None
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at + 4)?;
    Some(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

/// `cl_device_pci_bus_info_khr`: domain, bus, device, function as four `cl_uint`s.
pub fn parse_khr_pci_bus_info(bytes: &[u8]) -> Option<String> {
    if bytes.len() != 16 {
        return None;
    }
    Some(format_pci(
        read_u32(bytes, 0)?,
        read_u32(bytes, 4)?,
        read_u32(bytes, 8)?,
        read_u32(bytes, 12)?,
    ))
}

/// `cl_amd_device_topology` (24 bytes): type 1 (PCIe), then bus, device, function at bytes
/// 21, 22 and 23.
pub fn parse_amd_topology(bytes: &[u8]) -> Option<String> {
    if bytes.len() != 24 || read_u32(bytes, 0)? != 1 {
        return None;
    }
    Some(format_pci(
        0,
        u32::from(bytes[21]),
        u32::from(bytes[22]),
        u32::from(bytes[23]),
    ))
}

fn format_pci(domain: u32, bus: u32, device: u32, function: u32) -> String {
    format!("{domain:04x}:{bus:02x}:{device:02x}.{function:x}")
}

/// A source that is never asked (fixture roots).
#[derive(Debug, Clone, Copy, Default)]
pub struct SkippedOpenCl;

impl OpenClSource for SkippedOpenCl {
    fn devices(&self) -> Result<OpenClReport, OpenClUnavailable> {
        Err(OpenClUnavailable::Skipped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_extensions() {
        let mut khr = Vec::new();
        for v in [0u32, 0x65, 0, 0] {
            khr.extend_from_slice(&v.to_ne_bytes());
        }
        assert_eq!(
            parse_khr_pci_bus_info(&khr).as_deref(),
            Some("0000:65:00.0")
        );
        assert_eq!(parse_khr_pci_bus_info(&khr[..12]), None);
        let mut amd = vec![0u8; 24];
        amd[..4].copy_from_slice(&1u32.to_ne_bytes());
        amd[21] = 0xca;
        assert_eq!(parse_amd_topology(&amd).as_deref(), Some("0000:ca:00.0"));
        amd[..4].copy_from_slice(&2u32.to_ne_bytes());
        assert_eq!(parse_amd_topology(&amd), None);
    }

    #[test]
    fn timeout_kills_a_hanging_child() {
        let start = std::time::Instant::now();
        let err = run_with_timeout(Command::new("sleep").arg("30"), Duration::from_millis(200))
            .unwrap_err();
        assert!(err.contains("killed"), "{err}");
        assert!(start.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn crashing_child_is_reported() {
        let out = run_with_timeout(
            Command::new("sh").args(["-c", "echo boom >&2; kill -SEGV $$"]),
            Duration::from_secs(10),
        )
        .unwrap();
        assert!(out.status.code().is_none());
        assert_eq!(stderr_tail(&out.stderr), ": boom");
    }

    #[test]
    fn in_process_finds_pocl_cpu_device() {
        // PoCL is installed by packaging/setup-debian.sh on every machine that runs the tests.
        let report = InProcessOpenCl.devices().unwrap();
        let pocl = report
            .devices
            .iter()
            .find(|d| d.platform_name == "Portable Computing Language")
            .unwrap();
        assert_eq!(pocl.device_type, "cpu");
        assert!(pocl.compute_units.unwrap() >= 1);
        assert!(pocl.global_memory_bytes.unwrap() > 0);
    }
}
