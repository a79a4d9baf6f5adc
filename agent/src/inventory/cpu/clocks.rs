//! Clocks: cpufreq policies (max, min, base, driver, governor), the nominal clock in the model
//! name, and CPUID leaf 0x16.

use crate::fsroot::FsRoot;

/// Base clock from CPUID leaf 0x16 (Intel, live host only).
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
pub(super) fn cpuid_base_mhz(fs: &FsRoot) -> Option<u32> {
    if !fs.is_host() {
        return None;
    }
    raw_cpuid::CpuId::new()
        .get_processor_frequency_info()
        .map(|info| u32::from(info.processor_base_frequency()))
        .filter(|mhz| *mhz > 0)
}

#[cfg(not(any(target_arch = "x86", target_arch = "x86_64")))]
pub(super) fn cpuid_base_mhz(_fs: &FsRoot) -> Option<u32> {
    None
}

/// Parses the nominal clock in a model name such as `Intel(R) Xeon(R) Silver 4314 CPU @ 2.40GHz`.
pub fn base_clock_from_model_name(name: &str) -> Option<u32> {
    let (_, tail) = name.rsplit_once('@')?;
    let tail = tail.trim();
    let (number, scale) = if let Some(ghz) = tail.strip_suffix("GHz") {
        (ghz, 1000.0)
    } else {
        (tail.strip_suffix("MHz")?, 1.0)
    };
    let mhz = number.trim().parse::<f64>().ok()? * scale;
    (mhz.is_finite() && mhz > 0.0).then(|| mhz.round() as u32)
}

#[derive(Debug, Default)]
pub(super) struct Clocks {
    pub(super) base_mhz: Option<u32>,
    pub(super) max_mhz: Option<u32>,
    pub(super) min_mhz: Option<u32>,
    pub(super) driver: Option<String>,
    pub(super) governor: Option<String>,
}

/// cpufreq policies: the highest max (P-cores on hybrid parts), the lowest min, policy0's base.
pub(super) fn read_clocks(fs: &FsRoot) -> Clocks {
    let dir = "/sys/devices/system/cpu/cpufreq";
    let policies: Vec<String> = fs
        .list_dir(dir)
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.starts_with("policy"))
        .collect();
    let khz = |path: String| -> Option<u32> {
        fs.read_opt(&path)
            .and_then(|v| v.parse::<u64>().ok())
            .map(|k| (k / 1000) as u32)
            .filter(|mhz| *mhz > 0)
    };
    let mut clocks = Clocks::default();
    for policy in &policies {
        let p = format!("{dir}/{policy}");
        clocks.max_mhz = clocks.max_mhz.max(khz(format!("{p}/cpuinfo_max_freq")));
        if let Some(min) = khz(format!("{p}/cpuinfo_min_freq")) {
            clocks.min_mhz = Some(clocks.min_mhz.map_or(min, |m: u32| m.min(min)));
        }
    }
    if let Some(first) = policies.first() {
        let p = format!("{dir}/{first}");
        clocks.base_mhz = khz(format!("{p}/base_frequency"));
        clocks.driver = fs.read_opt(&format!("{p}/scaling_driver"));
        clocks.governor = fs.read_opt(&format!("{p}/scaling_governor"));
    }
    clocks
}
