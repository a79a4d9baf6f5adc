//! GPU health around OpenCL runs: clocks, temperature, power and throttle reasons before and
//! after, and the rule that a run during which throttling started is invalid.
//!
//! The data comes from NVML through [`GpuHealthSource`], keyed by PCI bus id
//! ([`super::NvmlTelemetry`] implements it); for a device NVML cannot answer for, [`NoNvml`]
//! records `nvml: unavailable` with the reason.

use serde::{Deserialize, Serialize};

use super::GpuError;

/// One health sample of one GPU.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GpuHealth {
    /// Graphics/SM clock in MHz.
    pub sm_clock_mhz: Option<u32>,
    /// Memory clock in MHz.
    pub mem_clock_mhz: Option<u32>,
    /// GPU temperature in °C.
    pub temperature_c: Option<u32>,
    /// Power draw in watts.
    pub power_w: Option<f64>,
    /// Active clock throttle reasons in NVML's names (`sw_thermal_slowdown`, `hw_slowdown`,
    /// `sw_power_cap`, `gpu_idle`, ...).
    pub throttle_reasons: Vec<String>,
}

/// Where GPU health comes from (NVML in production, a fake in tests).
pub trait GpuHealthSource {
    /// Samples the GPU at `pci_bus_id` (`0000:65:00.0`).
    fn sample(&self, pci_bus_id: &str) -> Result<GpuHealth, GpuError>;
}

/// No NVML for this device (no NVIDIA driver, or no PCI address): every sample is unavailable.
#[derive(Debug, Clone)]
pub struct NoNvml(pub String);

impl GpuHealthSource for NoNvml {
    fn sample(&self, _: &str) -> Result<GpuHealth, GpuError> {
        Err(GpuError::NoNvml(self.0.clone()))
    }
}

/// Throttle reasons that say nothing about the benchmark's validity.
const BENIGN: &[&str] = &["gpu_idle", "applications_clocks_setting", "none"];

/// The throttle reasons active after a run that were not active before (benign ones ignored),
/// as the reason that makes the run invalid.
pub fn throttle_started(before: &GpuHealth, after: &GpuHealth) -> Option<String> {
    let new: Vec<&str> = after
        .throttle_reasons
        .iter()
        .map(String::as_str)
        .filter(|r| !BENIGN.contains(r) && !before.throttle_reasons.iter().any(|b| b == r))
        .collect();
    (!new.is_empty()).then(|| format!("throttling started during the run: {}", new.join(", ")))
}

/// Runs `f` with health samples before and after; returns the JSON record and, when throttling
/// started, the reason to mark the run invalid.
pub fn around<T>(
    source: &dyn GpuHealthSource,
    pci_bus_id: Option<&str>,
    f: impl FnOnce() -> T,
) -> (T, serde_json::Value, Option<String>) {
    let Some(bus) = pci_bus_id else {
        let out = f();
        return (
            out,
            serde_json::json!({"nvml": "unavailable: not an NVIDIA device"}),
            None,
        );
    };
    let before = source.sample(bus);
    let out = f();
    let after = source.sample(bus);
    match (before, after) {
        (Ok(b), Ok(a)) => {
            let invalid = throttle_started(&b, &a);
            (out, serde_json::json!({"before": b, "after": a}), invalid)
        }
        (Err(e), _) | (_, Err(e)) => (out, serde_json::json!({ "nvml": e.to_string() }), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    struct Fake(Cell<u32>);
    impl GpuHealthSource for Fake {
        fn sample(&self, _: &str) -> Result<GpuHealth, GpuError> {
            let n = self.0.get();
            self.0.set(n + 1);
            Ok(GpuHealth {
                throttle_reasons: if n == 0 {
                    vec!["gpu_idle".into()]
                } else {
                    vec!["sw_thermal_slowdown".into(), "gpu_idle".into()]
                },
                ..GpuHealth::default()
            })
        }
    }

    #[test]
    fn throttling_that_starts_invalidates() {
        let (v, json, invalid) = around(&Fake(Cell::new(0)), Some("0000:01:00.0"), || 7);
        assert_eq!(v, 7);
        assert!(invalid.unwrap().contains("sw_thermal_slowdown"));
        assert!(json["after"]["throttle_reasons"].is_array());
    }

    #[test]
    fn throttling_already_active_or_benign_does_not() {
        let b = GpuHealth {
            throttle_reasons: vec!["sw_power_cap".into()],
            ..Default::default()
        };
        let a = GpuHealth {
            throttle_reasons: vec!["sw_power_cap".into(), "gpu_idle".into()],
            ..Default::default()
        };
        assert_eq!(throttle_started(&b, &a), None);
    }

    #[test]
    fn no_nvml_and_non_nvidia_are_recorded() {
        let (_, json, invalid) = around(&NoNvml("no NVIDIA driver".into()), Some("x"), || ());
        assert_eq!(json["nvml"], "nvml: unavailable (no NVIDIA driver)");
        assert!(invalid.is_none());
        let (_, json, _) = around(&NoNvml(String::new()), None, || ());
        assert!(json["nvml"].as_str().unwrap().contains("not an NVIDIA"));
    }
}
