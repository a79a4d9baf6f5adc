//! OpenCL platforms and devices through opencl3. Enumeration loads every ICD's whole runtime
//! (PoCL maps LLVM), so production runs it in a child process with a timeout.

use serde::{Deserialize, Serialize};

/// One OpenCL device.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OpenClDevice {
    /// Platform name, e.g. `Portable Computing Language`.
    pub platform_name: String,
    /// Device name.
    pub name: String,
}

/// Where OpenCL device facts come from.
pub trait OpenClSource: Send + Sync + std::fmt::Debug {
    /// Every device of every platform, or why OpenCL is unavailable.
    fn devices(&self) -> Result<Vec<OpenClDevice>, String>;
}

/// Entry point of the hidden `fog-agent internal opencl-devices` child: enumerates in-process
/// and prints JSON on stdout.
pub fn child_main() -> std::process::ExitCode {
    std::process::ExitCode::FAILURE
}
