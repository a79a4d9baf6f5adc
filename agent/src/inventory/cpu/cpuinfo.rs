//! `/proc/cpuinfo`: the CPU's identity and flags, from its first processor block.

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

pub(super) fn guess_architecture(cpuinfo: &CpuinfoSummary) -> String {
    if cpuinfo.flags.iter().any(|f| f == "lm") {
        "x86_64".to_owned()
    } else if cpuinfo.flags.iter().any(|f| f == "asimd") {
        "aarch64".to_owned()
    } else {
        "unknown".to_owned()
    }
}
