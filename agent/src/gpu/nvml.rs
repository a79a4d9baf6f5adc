//! NVML telemetry: per-GPU utilization, memory, temperature, power, clocks and throttle reasons,
//! for the host telemetry sampler ([`GpuTelemetrySource`]) and for the health records around
//! OpenCL benchmark runs ([`GpuHealthSource`]).
//!
//! NVML is light enough to stay in-process for the daemon's lifetime, so the
//! library is initialized once, on first use, and kept. A host without an NVIDIA driver answers
//! "no NVIDIA driver (...)" for every GPU; initialization is retried after
//! [`INIT_RETRY`], because the driver may be loaded after the agent started. Devices are found by
//! PCI address from NVML's own PCI info (the same normalization as the inventory), so the
//! sampler and the inventory agree on which card is which.
//!
//! The same source answers per-process accounting for jobs' GPU-seconds ([`GpuAccounting`]):
//! it turns NVML's accounting mode on for a job's GPUs and reads the records of the job's
//! processes.
//!
//! A failed core query (utilization, memory, or a lost GPU) makes the whole sample an error, so a
//! GPU that cannot be read is reported unavailable and never looks idle. Optional figures a
//! device does not support (power on some boards, SM clock) are `None`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use nvml_wrapper::enum_wrappers::device::{Clock, TemperatureSensor};
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::Nvml;

use super::accounting::{self as gpu_usage, GpuAccounting, GpuProcessUse, ProcessSpan};
use super::health::{GpuHealth, GpuHealthSource};
use super::telemetry::{GpuSample, GpuStatus, GpuTelemetrySource};
use super::GpuError;
use crate::inventory::gpu::nvml::{NvmlLibrary, NvmlSourceError};
use crate::inventory::gpu::pci::normalize_bus_id;

/// How long a failed initialization is remembered before NVML is tried again.
pub const INIT_RETRY: Duration = Duration::from_secs(60);

/// The NVML telemetry source. Thread-safe; calls are serialized (NVML calls are microseconds).
#[derive(Debug)]
pub struct NvmlTelemetry {
    library: NvmlLibrary,
    state: Mutex<State>,
}

#[derive(Debug)]
enum State {
    NotTried,
    Ready {
        nvml: Box<Nvml>,
        /// Normalized PCI address -> NVML device index.
        by_bus: BTreeMap<String, u32>,
        /// Devices whose address could not be read, and why.
        unreadable: Vec<String>,
    },
    Failed {
        reason: GpuError,
        at: Instant,
    },
}

impl NvmlTelemetry {
    /// Telemetry through `library` (the system's `libnvidia-ml.so.1`, or a test library).
    pub fn new(library: NvmlLibrary) -> Self {
        Self {
            library,
            state: Mutex::new(State::NotTried),
        }
    }

    /// Telemetry through the system library.
    pub fn system() -> Self {
        Self::new(NvmlLibrary::system())
    }

    /// Runs `f` on the device at `pci_bus_id`, initializing NVML first when needed.
    fn with_device<T>(
        &self,
        pci_bus_id: &str,
        f: impl FnOnce(&mut nvml_wrapper::Device<'_>) -> Result<T, GpuError>,
    ) -> Result<T, GpuError> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let retry = match &*state {
            State::NotTried => true,
            State::Failed { at, .. } => at.elapsed() >= INIT_RETRY,
            State::Ready { .. } => false,
        };
        if retry {
            *state = match open(&self.library) {
                Ok(opened) => State::Ready {
                    nvml: Box::new(opened.nvml),
                    by_bus: opened.by_bus,
                    unreadable: opened.unreadable,
                },
                Err(reason) => State::Failed {
                    reason,
                    at: Instant::now(),
                },
            };
        }
        match &*state {
            State::Ready {
                nvml,
                by_bus,
                unreadable,
            } => {
                let wanted = normalize_bus_id(pci_bus_id).unwrap_or_else(|_| pci_bus_id.to_owned());
                let Some(&index) = by_bus.get(&wanted) else {
                    return Err(GpuError::NoDevice {
                        pci_bus_id: pci_bus_id.to_owned(),
                        unreadable: unreadable.clone(),
                    });
                };
                let mut device = nvml.device_by_index(index).map_err(|e| GpuError::Device {
                    index,
                    pci_bus_id: pci_bus_id.to_owned(),
                    detail: e.to_string(),
                })?;
                f(&mut device)
            }
            State::Failed { reason, .. } => Err(reason.clone()),
            State::NotTried => Err(GpuError::NotInitialized),
        }
    }
}

impl Drop for NvmlTelemetry {
    fn drop(&mut self) {
        let state = std::mem::replace(
            self.state.get_mut().unwrap_or_else(PoisonError::into_inner),
            State::NotTried,
        );
        if let State::Ready { nvml, .. } = state {
            // Nothing useful to do with a shutdown error on the way out.
            let _ = nvml.shutdown();
        }
    }
}

/// An initialized library and where its devices are.
struct Opened {
    nvml: Nvml,
    by_bus: BTreeMap<String, u32>,
    unreadable: Vec<String>,
}

/// Initializes NVML and maps every device's PCI address to its index.
fn open(library: &NvmlLibrary) -> Result<Opened, GpuError> {
    let nvml = library.init().map_err(|e| match e {
        NvmlSourceError::NoDriver(why) => GpuError::NoDriver(why),
        other => GpuError::Init(other),
    })?;
    let count = match nvml.device_count() {
        Ok(count) => count,
        Err(e) => {
            let _ = nvml.shutdown();
            return Err(GpuError::DeviceCount(e.to_string()));
        }
    };
    let mut by_bus = BTreeMap::new();
    let mut unreadable = Vec::new();
    for index in 0..count {
        match nvml.device_by_index(index).and_then(|d| d.pci_info()) {
            Ok(pci) => {
                let bus = normalize_bus_id(&pci.bus_id).unwrap_or(pci.bus_id);
                by_bus.insert(bus, index);
            }
            Err(e) => unreadable.push(format!("device {index}: {e}")),
        }
    }
    Ok(Opened {
        nvml,
        by_bus,
        unreadable,
    })
}

/// `Some(value)`, `None` when the device does not support the query, or the error for any other
/// failure (a lost GPU, a driver error).
fn optional<T>(what: &'static str, result: Result<T, NvmlError>) -> Result<Option<T>, GpuError> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(NvmlError::NotSupported) => Ok(None),
        Err(e) => Err(query(what, &e)),
    }
}

/// A failed query, with NVML's words.
fn query(what: &'static str, err: &NvmlError) -> GpuError {
    GpuError::Query {
        what,
        detail: err.to_string(),
    }
}

/// The active throttle reasons in NVML's names, snake_case (`sw_power_cap`, `gpu_idle`, ...).
fn throttle_reasons(device: &nvml_wrapper::Device<'_>) -> Result<Vec<String>, GpuError> {
    Ok(
        optional("throttle reasons", device.current_throttle_reasons())?
            .map(|r| {
                r.iter_names()
                    .map(|(name, _)| name.to_ascii_lowercase())
                    .collect()
            })
            .unwrap_or_default(),
    )
}

/// One telemetry sample of `device`.
fn read_sample(device: &nvml_wrapper::Device<'_>, pci_bus_id: &str) -> Result<GpuSample, GpuError> {
    let utilization = device
        .utilization_rates()
        .map_err(|e| query("utilization", &e))?;
    let memory = device.memory_info().map_err(|e| query("memory info", &e))?;
    Ok(GpuSample {
        pci_bus_id: pci_bus_id.to_owned(),
        status: GpuStatus::Ok,
        error: None,
        utilization_percent: Some(utilization.gpu),
        memory_utilization_percent: Some(utilization.memory),
        memory_used_bytes: Some(memory.used),
        memory_total_bytes: Some(memory.total),
        temperature_celsius: optional("temperature", device.temperature(TemperatureSensor::Gpu))?
            .and_then(|t| i32::try_from(t).ok()),
        power_milliwatts: optional("power usage", device.power_usage())?,
        power_limit_milliwatts: optional("power limit", device.enforced_power_limit())?,
        graphics_clock_mhz: optional("graphics clock", device.clock_info(Clock::Graphics))?,
        memory_clock_mhz: optional("memory clock", device.clock_info(Clock::Memory))?,
        sm_clock_mhz: optional("sm clock", device.clock_info(Clock::SM))?,
        throttle_reasons: throttle_reasons(device)?,
    })
}

impl GpuTelemetrySource for NvmlTelemetry {
    fn sample(&self, pci_bus_id: &str) -> Result<GpuSample, GpuError> {
        self.with_device(pci_bus_id, |device| read_sample(device, pci_bus_id))
    }
}

impl GpuHealthSource for NvmlTelemetry {
    fn sample(&self, pci_bus_id: &str) -> Result<GpuHealth, GpuError> {
        let s = GpuTelemetrySource::sample(self, pci_bus_id)?;
        Ok(GpuHealth {
            sm_clock_mhz: s.sm_clock_mhz.or(s.graphics_clock_mhz),
            mem_clock_mhz: s.memory_clock_mhz,
            temperature_c: s.temperature_celsius.and_then(|t| u32::try_from(t).ok()),
            power_w: s.power_milliwatts.map(|mw| f64::from(mw) / 1000.0),
            throttle_reasons: s.throttle_reasons,
        })
    }
}

/// The [`GpuAccounting`] seam answers errors as text (its signature is shared with the jobs
/// module); the typed [`GpuError`] is rendered once, here.
impl GpuAccounting for NvmlTelemetry {
    fn prepare(&self, pci_bus_id: &str) -> Result<(), String> {
        self.with_device(pci_bus_id, |device| {
            let enabled = device
                .is_accounting_enabled()
                .map_err(|e| query("accounting mode", &e))?;
            if !enabled {
                device
                    .set_accounting(true)
                    .map_err(|e| GpuError::AccountingLocked(e.to_string()))?;
            }
            Ok(())
        })
        .map_err(|e| e.to_string())
    }

    fn process_spans(
        &self,
        pci_bus_id: &str,
        pids: &BTreeSet<u32>,
    ) -> Result<Vec<ProcessSpan>, String> {
        self.with_device(pci_bus_id, |device| {
            let recorded = device.accounting_pids().map_err(|e| match e {
                NvmlError::NotSupported => GpuError::AccountingOff,
                other => query("accounting pids", &other),
            })?;
            let mut spans = Vec::new();
            for pid in recorded.into_iter().filter(|p| pids.contains(p)) {
                match device.accounting_stats_for(pid) {
                    Ok(stats) => spans.push(ProcessSpan {
                        pid,
                        start_unix_micros: stats.start_time,
                        ended_after_millis: (!stats.is_running).then_some(stats.time),
                    }),
                    // Overwritten in NVML's circular buffer since it was listed.
                    Err(NvmlError::NotFound) => {}
                    Err(e) => {
                        return Err(GpuError::AccountingStats {
                            pid,
                            detail: e.to_string(),
                        })
                    }
                }
            }
            Ok(spans)
        })
        .map_err(|e| e.to_string())
    }

    fn process_use(
        &self,
        pci_bus_id: &str,
        pids: &BTreeSet<u32>,
        since_unix_micros: u64,
    ) -> Result<GpuProcessUse, String> {
        use nvml_wrapper::enums::device::UsedGpuMemory;
        self.with_device(pci_bus_id, |device| {
            let processes = device
                .running_compute_processes()
                .map_err(|e| query("running compute processes", &e))?;
            let mut memory_used_bytes = Some(0u64);
            for process in processes.iter().filter(|p| pids.contains(&p.pid)) {
                memory_used_bytes = match (memory_used_bytes, &process.used_gpu_memory) {
                    (Some(sum), UsedGpuMemory::Used(bytes)) => Some(sum.saturating_add(*bytes)),
                    _ => None,
                };
            }
            let sm_utilization_percent = match device.process_utilization_stats(since_unix_micros) {
                Ok(samples) => Some(gpu_usage::sm_utilization(
                    samples.iter().map(|s| (s.pid, s.sm_util)),
                    pids,
                )),
                // No process ran a kernel since then.
                Err(NvmlError::NotFound) => Some(0),
                Err(NvmlError::NotSupported) => None,
                Err(e) => return Err(query("process utilization", &e)),
            };
            Ok(GpuProcessUse {
                memory_used_bytes,
                sm_utilization_percent,
            })
        })
        .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_library_is_no_driver_for_every_gpu_and_is_remembered() {
        let t = NvmlTelemetry::new(NvmlLibrary::at("/nonexistent/libnvidia-ml.so.1"));
        let err = GpuTelemetrySource::sample(&t, "0000:17:00.0").unwrap_err();
        assert!(matches!(err, GpuError::NoDriver(_)), "{err}");
        assert!(err.to_string().starts_with("no NVIDIA driver ("), "{err}");
        assert!(matches!(*t.state.lock().unwrap(), State::Failed { .. }));
        let again = GpuHealthSource::sample(&t, "0000:65:00.0").unwrap_err();
        assert_eq!(err, again);
    }
}
