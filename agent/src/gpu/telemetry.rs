//! GPU telemetry: the seam NVML plugs into.
//!
//! [`GpuTelemetrySource`] answers for one GPU at a time; a GPU whose query failed is reported
//! as [`GpuStatus::Unavailable`] with the reason and no metrics, so it never looks idle. The
//! source for hosts without NVML, [`UnavailableGpuTelemetry`], answers that for every GPU; the real
//! one is [`super::NvmlTelemetry`].

use super::GpuError;

/// Whether a GPU's metrics are valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuStatus {
    /// The query answered.
    Ok,
    /// The query failed; see `error`.
    Unavailable,
}

/// One GPU's telemetry. Metrics are `None` when the device does not report them (and always
/// when the status is unavailable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuSample {
    /// PCI address, as in the inventory.
    pub pci_bus_id: String,
    /// Whether the metrics are valid.
    pub status: GpuStatus,
    /// Why not.
    pub error: Option<String>,
    /// Compute engine busy, percent.
    pub utilization_percent: Option<u32>,
    /// Memory controller busy, percent.
    pub memory_utilization_percent: Option<u32>,
    /// Device memory in use.
    pub memory_used_bytes: Option<u64>,
    /// Device memory total.
    pub memory_total_bytes: Option<u64>,
    /// Core temperature.
    pub temperature_celsius: Option<i32>,
    /// Power draw.
    pub power_milliwatts: Option<u32>,
    /// Power limit.
    pub power_limit_milliwatts: Option<u32>,
    /// Graphics clock.
    pub graphics_clock_mhz: Option<u32>,
    /// Memory clock.
    pub memory_clock_mhz: Option<u32>,
    /// SM clock.
    pub sm_clock_mhz: Option<u32>,
    /// Active throttle reasons, NVML's names in snake_case.
    pub throttle_reasons: Vec<String>,
}

impl GpuSample {
    /// A sample saying the query for `pci_bus_id` failed, and why.
    pub fn unavailable(pci_bus_id: &str, error: impl Into<String>) -> Self {
        Self {
            pci_bus_id: pci_bus_id.to_owned(),
            status: GpuStatus::Unavailable,
            error: Some(error.into()),
            utilization_percent: None,
            memory_utilization_percent: None,
            memory_used_bytes: None,
            memory_total_bytes: None,
            temperature_celsius: None,
            power_milliwatts: None,
            power_limit_milliwatts: None,
            graphics_clock_mhz: None,
            memory_clock_mhz: None,
            sm_clock_mhz: None,
            throttle_reasons: Vec::new(),
        }
    }
}

/// Reads one GPU's telemetry (NVML in production). Called from the sampler's blocking thread.
pub trait GpuTelemetrySource: Send + Sync {
    /// The metrics of the GPU at `pci_bus_id`, or why they could not be read (a GPU this source
    /// does not serve, a driver error, a lost GPU).
    fn sample(&self, pci_bus_id: &str) -> Result<GpuSample, GpuError>;
}

/// The source for a host without NVML: every GPU is unavailable, with the reason.
#[derive(Debug, Clone)]
pub struct UnavailableGpuTelemetry {
    reason: String,
}

impl UnavailableGpuTelemetry {
    /// A source whose every answer is `reason`.
    pub fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
        }
    }
}

impl Default for UnavailableGpuTelemetry {
    fn default() -> Self {
        Self::new("nvml unavailable: no GPU telemetry source in this build")
    }
}

impl GpuTelemetrySource for UnavailableGpuTelemetry {
    fn sample(&self, _pci_bus_id: &str) -> Result<GpuSample, GpuError> {
        Err(GpuError::NoTelemetry(self.reason.clone()))
    }
}

/// Samples every GPU; a failed query becomes an unavailable entry, and a source answering for a
/// different GPU than asked is treated as a failure.
pub fn sample_all(source: &dyn GpuTelemetrySource, pci_bus_ids: &[String]) -> Vec<GpuSample> {
    pci_bus_ids
        .iter()
        .map(|id| match source.sample(id) {
            Ok(sample) if sample.pci_bus_id == *id => sample,
            Ok(sample) => GpuSample::unavailable(
                id,
                GpuError::WrongDevice {
                    answered: sample.pci_bus_id,
                }
                .to_string(),
            ),
            Err(err) => GpuSample::unavailable(id, err.to_string()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct OneGood;
    impl GpuTelemetrySource for OneGood {
        fn sample(&self, id: &str) -> Result<GpuSample, GpuError> {
            match id {
                "0000:01:00.0" => Ok(GpuSample {
                    status: GpuStatus::Ok,
                    error: None,
                    utilization_percent: Some(0),
                    ..GpuSample::unavailable(id, "")
                }),
                "0000:02:00.0" => Ok(GpuSample::unavailable("0000:09:00.0", "")),
                _ => Err(GpuError::Query {
                    what: "utilization",
                    detail: "GPU is lost".into(),
                }),
            }
        }
    }

    #[test]
    fn failed_queries_never_look_idle() {
        let ids = ["0000:01:00.0", "0000:02:00.0", "0000:03:00.0"].map(String::from);
        let samples = sample_all(&OneGood, &ids);
        assert_eq!(samples[0].status, GpuStatus::Ok);
        assert_eq!(samples[0].utilization_percent, Some(0));
        assert_eq!(samples[1].status, GpuStatus::Unavailable);
        assert!(samples[1]
            .error
            .as_deref()
            .unwrap()
            .contains("0000:09:00.0"));
        assert_eq!(
            samples[2].error.as_deref(),
            Some("nvml: utilization: GPU is lost")
        );
        assert_eq!(samples[2].utilization_percent, None);
    }

    #[test]
    fn default_source_says_nvml_unavailable() {
        let samples = sample_all(&UnavailableGpuTelemetry::default(), &["a".into()]);
        assert!(samples[0]
            .error
            .as_deref()
            .unwrap()
            .starts_with("nvml unavailable"));
    }
}
