//! Host identity: hostname, OS, kernel, architecture, machine and boot ids, uptime and
//! virtualization (from CPUID on the live host, DMI and `/sys/hypervisor`).

use serde::{Deserialize, Serialize};

use super::{Notes, ProbeError};
use crate::fsroot::FsRoot;

/// Identity and software of the host.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostInfo {
    /// `/proc/sys/kernel/hostname`.
    pub hostname: String,
    /// `NAME` from os-release, e.g. `Debian GNU/Linux`.
    pub os_name: Option<String>,
    /// `ID` from os-release, e.g. `debian`.
    pub os_id: Option<String>,
    /// `VERSION_ID` from os-release, e.g. `12`.
    pub os_version: Option<String>,
    /// `PRETTY_NAME` from os-release.
    pub os_pretty_name: Option<String>,
    /// Kernel release (`uname -r`).
    pub kernel_release: Option<String>,
    /// Kernel build string (`uname -v`).
    pub kernel_version: Option<String>,
    /// Machine architecture (`uname -m`), e.g. `x86_64`.
    pub architecture: String,
    /// `/etc/machine-id`.
    pub machine_id: Option<String>,
    /// `/proc/sys/kernel/random/boot_id`.
    pub boot_id: Option<String>,
    /// Seconds since boot (`/proc/uptime`).
    pub uptime_seconds: Option<f64>,
    /// Virtualization, with the evidence it was decided on.
    pub virtualization: Virtualization,
}

/// Whether the host is a virtual machine, and which hypervisor.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Virtualization {
    /// `vm`, `bare_metal` or `unknown`.
    pub kind: VirtualizationKind,
    /// The hypervisor when known: `kvm`, `qemu`, `microsoft`, `vmware`, `xen`, `virtualbox`,
    /// `parallels`, `bhyve`, `acrn`, `firecracker`, ...
    pub hypervisor: Option<String>,
    /// What the verdict rests on, e.g. `cpuid hypervisor vendor "KVMKVMKVM"`.
    pub evidence: Vec<String>,
}

/// Virtual machine or bare metal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VirtualizationKind {
    /// A virtual machine.
    Vm,
    /// No sign of a hypervisor in CPUID, DMI or sysfs.
    BareMetal,
    /// Not enough evidence either way.
    #[default]
    Unknown,
}

/// Collects the host section.
pub fn collect(fs: &FsRoot, notes: &mut Notes) -> Result<HostInfo, ProbeError> {
    let _ = (fs, notes);
    Err(ProbeError::Unavailable("host probe not built yet".into()))
}
