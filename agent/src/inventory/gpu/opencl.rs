//! OpenCL platforms and devices through opencl3. Enumeration loads every ICD's whole runtime
//! (PoCL maps LLVM), so production runs it in a child process with a timeout
//! ([`ChildProcessOpenCl`]); the child ([`child_main`]) prints [`OpenClReport`] as JSON on stdout.
//!
//! A platform that errors becomes a per-platform note in the report, not a total failure.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use opencl3::device::{
    Device, CL_DEVICE_TYPE_ACCELERATOR, CL_DEVICE_TYPE_ALL, CL_DEVICE_TYPE_CPU,
    CL_DEVICE_TYPE_CUSTOM, CL_DEVICE_TYPE_GPU,
};
use opencl3::platform::Platform;
use serde::{Deserialize, Serialize};

/// One OpenCL device.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OpenClDevice {
    /// Platform name, e.g. `Portable Computing Language`.
    pub platform_name: String,
    /// Platform vendor.
    pub platform_vendor: String,
    /// Platform version string.
    pub platform_version: String,
    /// `cpu`, `gpu`, `accelerator`, `custom` or `unknown`.
    pub device_type: String,
    /// Device name.
    pub name: String,
    /// Device vendor string.
    pub vendor: String,
    /// Vendor id as OpenCL reports it (PCI vendor id for GPUs).
    pub vendor_id: u32,
    /// `OpenCL x.y ...`.
    pub version: String,
    /// Driver version.
    pub driver_version: String,
    /// `OpenCL C x.y ...`.
    pub opencl_c_version: String,
    /// Compute units.
    pub compute_units: u32,
    /// Maximum clock, MHz.
    pub max_clock_mhz: u32,
    /// Global memory.
    pub global_memory_bytes: u64,
    /// Local memory.
    pub local_memory_bytes: u64,
    /// Largest single allocation.
    pub max_alloc_bytes: u64,
    /// Maximum work-group size.
    pub max_work_group_size: u64,
    /// Double precision supported.
    pub fp64: bool,
    /// PCI address (`dddd:bb:dd.f`) when the platform exposes it.
    pub pci_bus_id: Option<String>,
}

/// What the child reports: the devices plus notes on platforms/devices that failed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OpenClReport {
    /// Every device of every platform that answered.
    pub devices: Vec<OpenClDevice>,
    /// One line per platform or device that could not be read.
    pub notes: Vec<String>,
}

/// Why OpenCL as a whole could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenClSourceError {
    /// No ICD loader or no platform.
    #[error("no OpenCL platform ({0})")]
    NoPlatform(String),
    /// The source is deliberately not asked.
    #[error("skipped: {0}")]
    Skipped(String),
    /// The child process failed, timed out, or printed something unreadable.
    #[error("OpenCL child process {0}")]
    Child(String),
}

/// Where OpenCL device facts come from.
pub trait OpenClSource: Send + Sync + std::fmt::Debug {
    /// Every device of every platform, or why OpenCL is unavailable.
    fn devices(&self) -> Result<OpenClReport, OpenClSourceError>;
}

/// Enumerates in this process (used by the child; a crash here takes the process down).
#[derive(Debug, Clone, Default)]
pub struct InProcessOpenCl;

impl OpenClSource for InProcessOpenCl {
    fn devices(&self) -> Result<OpenClReport, OpenClSourceError> {
        let platforms = opencl3::platform::get_platforms()
            .map_err(|e| OpenClSourceError::NoPlatform(e.to_string()))?;
        let mut report = OpenClReport::default();
        for platform in platforms {
            read_platform(&platform, &mut report);
        }
        Ok(report)
    }
}

fn read_platform(platform: &Platform, report: &mut OpenClReport) {
    let name = platform.name().unwrap_or_else(|e| format!("<name: {e}>"));
    let vendor = platform.vendor().unwrap_or_default();
    let version = platform.version().unwrap_or_default();
    let ids = match platform.get_devices(CL_DEVICE_TYPE_ALL) {
        Ok(ids) => ids,
        Err(e) => {
            report.notes.push(format!("platform {name}: devices: {e}"));
            return;
        }
    };
    for id in ids {
        let device = Device::new(id);
        match read_device(&device) {
            Ok(mut d) => {
                d.platform_name.clone_from(&name);
                d.platform_vendor.clone_from(&vendor);
                d.platform_version.clone_from(&version);
                report.devices.push(d);
            }
            Err(e) => report.notes.push(format!("platform {name}: device: {e}")),
        }
    }
}

fn read_device(device: &Device) -> Result<OpenClDevice, opencl3::error_codes::ClError> {
    let extensions = device.extensions().unwrap_or_default();
    Ok(OpenClDevice {
        device_type: device_type_name(device.dev_type()?).to_owned(),
        name: device.name()?.trim().to_owned(),
        vendor: device.vendor()?.trim().to_owned(),
        vendor_id: device.vendor_id()?,
        version: device.version()?,
        driver_version: device.driver_version()?,
        opencl_c_version: device.opencl_c_version().unwrap_or_default(),
        compute_units: device.max_compute_units()?,
        max_clock_mhz: device.max_clock_frequency()?,
        global_memory_bytes: device.global_mem_size()?,
        local_memory_bytes: device.local_mem_size()?,
        max_alloc_bytes: device.max_mem_alloc_size()?,
        max_work_group_size: device.max_work_group_size()? as u64,
        fp64: device.double_fp_config().map(|c| c != 0).unwrap_or(false),
        pci_bus_id: fog_bench::opencl::pci_bus_id(device, &extensions),
        ..OpenClDevice::default()
    })
}

/// The name of an OpenCL device type bit set (the first matching bit wins).
pub fn device_type_name(t: u64) -> &'static str {
    if t & CL_DEVICE_TYPE_GPU != 0 {
        "gpu"
    } else if t & CL_DEVICE_TYPE_CPU != 0 {
        "cpu"
    } else if t & CL_DEVICE_TYPE_ACCELERATOR != 0 {
        "accelerator"
    } else if t & CL_DEVICE_TYPE_CUSTOM != 0 {
        "custom"
    } else {
        "unknown"
    }
}

/// Runs `<program> <args>` and parses its stdout as [`OpenClReport`]; kills it after `timeout`.
#[derive(Debug, Clone)]
pub struct ChildProcessOpenCl {
    /// The program (normally `std::env::current_exe()`).
    pub program: PathBuf,
    /// Its arguments (normally `internal opencl-devices`).
    pub args: Vec<String>,
    /// How long to wait.
    pub timeout: Duration,
}

impl ChildProcessOpenCl {
    /// The agent's own binary as `internal opencl-devices`.
    pub fn current_exe(timeout: Duration) -> Result<Self, OpenClSourceError> {
        let program = std::env::current_exe()
            .map_err(|e| OpenClSourceError::Child(format!("cannot find own binary: {e}")))?;
        Ok(Self {
            program,
            args: vec!["internal".into(), "opencl-devices".into()],
            timeout,
        })
    }
}

impl OpenClSource for ChildProcessOpenCl {
    fn devices(&self) -> Result<OpenClReport, OpenClSourceError> {
        let fail = |m: String| OpenClSourceError::Child(m);
        let mut child = Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| fail(format!("cannot start {}: {e}", self.program.display())))?;
        // Drain both pipes on threads so a chatty child cannot block on a full pipe.
        let stdout = child.stdout.take().map(drain);
        let stderr = child.stderr.take().map(drain);
        let start = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if start.elapsed() >= self.timeout => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(1)),
                Err(e) => return Err(fail(format!("wait failed: {e}"))),
            }
        };
        let out = stdout.and_then(|h| h.join().ok()).unwrap_or_default();
        let err = stderr.and_then(|h| h.join().ok()).unwrap_or_default();
        let tail = stderr_tail(&err);
        match status {
            None => Err(fail(format!(
                "timed out after {} ms and was killed{tail}",
                self.timeout.as_millis()
            ))),
            Some(s) if !s.success() => Err(fail(format!("failed ({s}){tail}"))),
            Some(_) => parse_report(&out),
        }
    }
}

fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        buf
    })
}

/// `: <last 300 bytes of stderr>` or nothing.
fn stderr_tail(err: &[u8]) -> String {
    let text = String::from_utf8_lossy(err);
    let text = text.trim();
    if text.is_empty() {
        return String::new();
    }
    let start = text
        .char_indices()
        .rev()
        .nth(299)
        .map(|(i, _)| i)
        .unwrap_or(0);
    format!(": stderr: {}", &text[start..])
}

/// Parses and validates the child's stdout.
pub fn parse_report(stdout: &[u8]) -> Result<OpenClReport, OpenClSourceError> {
    let report: ChildOutput = serde_json::from_slice(stdout)
        .map_err(|e| OpenClSourceError::Child(format!("printed invalid JSON: {e}")))?;
    match report {
        ChildOutput::Ok { report } => Ok(report),
        ChildOutput::Unavailable { reason } => Err(OpenClSourceError::NoPlatform(reason)),
    }
}

/// The child's stdout document.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case", deny_unknown_fields)]
enum ChildOutput {
    Ok { report: OpenClReport },
    Unavailable { reason: String },
}

/// Entry point of the hidden `fog-agent internal opencl-devices` child: enumerates in-process
/// and prints JSON on stdout.
pub fn child_main() -> ExitCode {
    let output = match InProcessOpenCl.devices() {
        Ok(report) => ChildOutput::Ok { report },
        Err(OpenClSourceError::NoPlatform(reason)) => ChildOutput::Unavailable { reason },
        Err(other) => ChildOutput::Unavailable {
            reason: other.to_string(),
        },
    };
    match serde_json::to_string(&output) {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cannot serialize OpenCL report: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A source that is deliberately not asked, e.g. when reading a fixture root.
#[derive(Debug, Clone)]
pub struct Skipped(pub String);

impl OpenClSource for Skipped {
    fn devices(&self) -> Result<OpenClReport, OpenClSourceError> {
        Err(OpenClSourceError::Skipped(self.0.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_types() {
        assert_eq!(device_type_name(CL_DEVICE_TYPE_CPU), "cpu");
        assert_eq!(device_type_name(CL_DEVICE_TYPE_GPU), "gpu");
        assert_eq!(device_type_name(CL_DEVICE_TYPE_ACCELERATOR), "accelerator");
        assert_eq!(device_type_name(0), "unknown");
    }

    #[test]
    fn nv_slot_unpacks_device_and_function() {
        assert_eq!(fog_bench::opencl::nv_bus_id(0, 0x65, 0), "0000:65:00.0");
        assert_eq!(
            fog_bench::opencl::nv_bus_id(1, 0x17, (3 << 3) | 1),
            "0001:17:03.1"
        );
    }

    #[test]
    fn report_parsing_rejects_garbage() {
        assert!(parse_report(b"").is_err());
        assert!(parse_report(b"not json").is_err());
        assert!(parse_report(br#"{"status":"ok"}"#).is_err());
        let err = parse_report(br#"{"status":"unavailable","reason":"no ICD"}"#).unwrap_err();
        assert_eq!(err, OpenClSourceError::NoPlatform("no ICD".into()));
        let ok = parse_report(br#"{"status":"ok","report":{"devices":[],"notes":["x"]}}"#).unwrap();
        assert_eq!(ok.notes, vec!["x"]);
    }

    #[test]
    fn stderr_tail_is_bounded() {
        assert_eq!(stderr_tail(b"  \n"), "");
        let long = "é".repeat(1000);
        let tail = stderr_tail(long.as_bytes());
        assert_eq!(tail.chars().count(), ": stderr: ".len() + 300);
    }

    #[test]
    fn child_timeout_kills_and_reports() {
        let source = ChildProcessOpenCl {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), "echo starting >&2; exec sleep 5".into()],
            timeout: Duration::from_millis(100),
        };
        let err = source.devices().unwrap_err().to_string();
        assert!(err.contains("timed out after 100 ms"), "{err}");
        assert!(err.contains("starting"), "{err}");
    }

    #[test]
    fn child_crash_and_garbage_are_errors() {
        let run = |script: &str| {
            ChildProcessOpenCl {
                program: "/bin/sh".into(),
                args: vec!["-c".into(), script.into()],
                timeout: Duration::from_secs(5),
            }
            .devices()
        };
        let err = run("echo boom >&2; exit 3").unwrap_err().to_string();
        assert!(err.contains("failed") && err.contains("boom"), "{err}");
        let err = run("echo garbage").unwrap_err().to_string();
        assert!(err.contains("invalid JSON"), "{err}");
    }
}
