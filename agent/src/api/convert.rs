//! Conversions between the agent's domain types and `fog.agent.v1` messages, done once at the
//! service boundary: domain -> proto for responses, proto -> validated domain for requests
//! (a bad field becomes `INVALID_ARGUMENT` naming it).

use std::time::{Duration, SystemTime};

use fog_proto::v1 as pb;

use super::ApiError;
use crate::attest::{ActivationRequest, AttestationReport, Enrollment, PcrBank, PcrSelection};
use crate::bench::{BenchmarkPhase, BenchmarkProgress, BenchmarkReport, BenchmarkState};
use crate::capacity::{Capacity, CapacitySnapshot, GpuAssignment, ResourceAmount};
use crate::gpu::{GpuSample, GpuStatus};
use crate::inventory::{self as inv, Inventory, ProbeStatus, Probed};
use crate::telemetry::{self as tm, HostSample};

/// Longest telemetry interval a subscriber may ask for.
pub const MAX_TELEMETRY_INTERVAL: Duration = Duration::from_secs(3600);
/// Nonce length bounds (bytes) for attestation and enrollment.
pub const NONCE_LEN: std::ops::RangeInclusive<usize> = 16..=64;

fn timestamp(time: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(time)
}

fn micros(ms: f64) -> u64 {
    if ms.is_finite() && ms > 0.0 {
        (ms * 1000.0).round() as u64
    } else {
        0
    }
}

fn text(value: &Option<String>) -> String {
    value.clone().unwrap_or_default()
}

// ---- inventory ----

fn probe<T>(probed: &Probed<T>) -> pb::ProbeResult {
    pb::ProbeResult {
        status: match probed.status {
            ProbeStatus::Ok => pb::ProbeStatus::Ok,
            ProbeStatus::Unavailable => pb::ProbeStatus::Unavailable,
        } as i32,
        reason: text(&probed.reason),
        notes: probed.notes.clone(),
        collection_micros: micros(probed.collection_ms),
    }
}

/// The structured inventory.
pub fn inventory(inventory: &Inventory) -> pb::Inventory {
    pb::Inventory {
        format: inventory.format.clone(),
        agent_version: inventory.agent_version.clone(),
        collected_at: humantime::parse_rfc3339(&inventory.collected_at)
            .ok()
            .map(timestamp),
        collection_micros: micros(inventory.collection_ms),
        fingerprint: Some(pb::Fingerprint {
            algorithm: inventory.fingerprint.algorithm.clone(),
            value: inventory.fingerprint.value.clone(),
            components: inventory.fingerprint.components.clone(),
        }),
        host: Some(pb::HostSection {
            probe: Some(probe(&inventory.host)),
            data: inventory.host.get().map(host),
        }),
        cpu: Some(pb::CpuSection {
            probe: Some(probe(&inventory.cpu)),
            data: inventory.cpu.get().map(cpu),
        }),
        memory: Some(pb::MemorySection {
            probe: Some(probe(&inventory.memory)),
            data: inventory.memory.get().map(memory),
        }),
        gpus: Some(pb::GpuSection {
            probe: Some(probe(&inventory.gpus)),
            gpus: inventory
                .gpus
                .get()
                .map(|g| g.gpus.iter().map(gpu).collect())
                .unwrap_or_default(),
            opencl_device_count: inventory.gpus.get().map_or(0, |g| {
                u32::try_from(g.opencl_devices.len()).unwrap_or(u32::MAX)
            }),
        }),
        storage: Some(pb::StorageSection {
            probe: Some(probe(&inventory.storage)),
            block_devices: inventory
                .storage
                .get()
                .map(|s| s.block_devices.iter().map(block_device).collect())
                .unwrap_or_default(),
            filesystems: inventory
                .storage
                .get()
                .map(|s| s.filesystems.iter().map(filesystem).collect())
                .unwrap_or_default(),
        }),
        network: Some(pb::NetworkSection {
            probe: Some(probe(&inventory.network)),
            interfaces: inventory
                .network
                .get()
                .map(|n| n.interfaces.iter().map(interface).collect())
                .unwrap_or_default(),
        }),
    }
}

fn host(h: &inv::host::HostInfo) -> pb::HostInfo {
    pb::HostInfo {
        hostname: h.hostname.clone(),
        os_pretty_name: h
            .os_pretty_name
            .clone()
            .or(h.os_name.clone())
            .unwrap_or_default(),
        os_id: text(&h.os_id),
        os_version: text(&h.os_version),
        kernel_release: text(&h.kernel_release),
        architecture: h.architecture.clone(),
        machine_id: text(&h.machine_id),
        boot_id: text(&h.boot_id),
        uptime_seconds: h.uptime_seconds.unwrap_or(0.0),
        virtualization: serde_json::to_value(h.virtualization.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        hypervisor: text(&h.virtualization.hypervisor),
    }
}

fn cpu(c: &inv::cpu::CpuInfo) -> pb::CpuInfo {
    pb::CpuInfo {
        architecture: c.architecture.clone(),
        vendor: c.vendor.clone(),
        model_name: c.model_name.clone(),
        family: c.family,
        model: c.model,
        stepping: c.stepping,
        sockets: c.sockets,
        physical_cores: c.physical_cores,
        logical_cpus: c.logical_cpus,
        threads_per_core: c.threads_per_core,
        smt_active: c.smt_active,
        base_clock_mhz: c.base_clock_mhz,
        max_clock_mhz: c.max_clock_mhz,
        features: c.features.clone(),
        x86_64_level: c.x86_64_level.map(u32::from),
        caches: c
            .caches
            .iter()
            .map(|cache| pb::CpuCache {
                level: u32::from(cache.level),
                kind: cache.kind.clone(),
                size_bytes: cache.size_bytes,
                instances: cache.instances,
                total_bytes: cache.total_bytes,
            })
            .collect(),
        numa_nodes: c
            .numa_nodes
            .iter()
            .map(|node| pb::NumaNode {
                id: node.id,
                cpus: node.cpus.clone(),
                memory_total_bytes: node.memory_total_bytes.unwrap_or(0),
            })
            .collect(),
        flags: c.flags.clone(),
    }
}

fn memory(m: &inv::memory::MemoryInfo) -> pb::MemoryInfo {
    let dimms = m.dimms.get().map(Vec::as_slice).unwrap_or_default();
    let first = dimms.first();
    pb::MemoryInfo {
        total_bytes: m.total_bytes,
        available_bytes: m.available_bytes,
        swap_total_bytes: m.swap_total_bytes,
        dimm_count: u32::try_from(dimms.len()).unwrap_or(u32::MAX),
        dimm_type: first
            .and_then(|d| d.memory_type.clone())
            .unwrap_or_default(),
        dimm_speed_mts: first
            .and_then(|d| d.configured_speed_mts.or(d.speed_mts))
            .unwrap_or(0),
    }
}

fn gpu(g: &inv::gpu::Gpu) -> pb::Gpu {
    pb::Gpu {
        pci_bus_id: g.pci_bus_id.clone(),
        vendor: g.vendor.clone(),
        name: text(&g.name),
        vendor_id: g.vendor_id.clone(),
        device_id: g.device_id.clone(),
        driver: text(&g.driver),
        memory_total_bytes: g.memory_total_bytes.unwrap_or(0),
        seen_by: g.seen_by.clone(),
        numa_node: g.numa_node,
        cdi_device: g.cdi_device.clone().unwrap_or_default(),
    }
}

fn block_device(d: &inv::storage::BlockDevice) -> pb::BlockDevice {
    pb::BlockDevice {
        name: d.name.clone(),
        model: text(&d.model),
        size_bytes: d.size_bytes,
        kind: d.kind.clone(),
        transport: text(&d.transport),
        serial: text(&d.serial),
        removable: d.removable,
    }
}

fn filesystem(f: &inv::storage::Filesystem) -> pb::Filesystem {
    pb::Filesystem {
        device: f.device.clone(),
        mount_point: f.mount_point.clone(),
        fs_type: f.fs_type.clone(),
        size_bytes: f.size_bytes,
        available_bytes: f.available_bytes,
        read_only: f.read_only,
    }
}

fn interface(i: &inv::network::NetInterface) -> pb::NetworkInterface {
    pb::NetworkInterface {
        name: i.name.clone(),
        mac_address: text(&i.mac_address),
        mtu: i.mtu.unwrap_or(0),
        operstate: text(&i.operstate),
        speed_mbps: i.speed_mbps.unwrap_or(0),
        driver: text(&i.driver),
        is_virtual: i.is_virtual,
        addresses: i
            .addresses
            .iter()
            .map(|a| format!("{}/{}", a.address, a.prefix_len))
            .collect(),
    }
}

// ---- capacity ----

fn amount(a: &ResourceAmount) -> pb::ResourceAmount {
    pb::ResourceAmount {
        total: a.total,
        reserved: a.reserved,
        allocated: a.allocated,
        free: a.free,
        stored: a.stored,
    }
}

/// A capacity snapshot.
pub fn capacity(snapshot: &CapacitySnapshot) -> pb::Capacity {
    let c: &Capacity = &snapshot.capacity;
    pb::Capacity {
        sequence: snapshot.sequence,
        updated_at: Some(timestamp(snapshot.updated_at)),
        cpu_millicores: Some(amount(&c.cpu_millicores)),
        memory_bytes: Some(amount(&c.memory_bytes)),
        disk_bytes: Some(amount(&c.disk_bytes)),
        network_ingress_bits_per_second: Some(amount(&c.network_ingress_bits_per_second)),
        network_egress_bits_per_second: Some(amount(&c.network_egress_bits_per_second)),
        gpus: c
            .gpus
            .iter()
            .map(|g| {
                let (assignment, job_id) = match &g.assignment {
                    GpuAssignment::Free => (pb::GpuAssignment::Free, String::new()),
                    GpuAssignment::Reserved => (pb::GpuAssignment::Reserved, String::new()),
                    GpuAssignment::Allocated(job) => (pb::GpuAssignment::Allocated, job.clone()),
                };
                pb::GpuCapacity {
                    pci_bus_id: g.pci_bus_id.clone(),
                    name: g.name.clone(),
                    memory_total_bytes: g.memory_total_bytes,
                    assignment: assignment as i32,
                    job_id,
                }
            })
            .collect(),
        notes: c.notes.clone(),
    }
}

// ---- telemetry ----

fn pressure(p: &Option<tm::Pressure>) -> Option<pb::Pressure> {
    let line = |l: &tm::PressureLine| pb::PressureLine {
        avg10_percent: l.avg10_percent,
        avg60_percent: l.avg60_percent,
        avg300_percent: l.avg300_percent,
        total_micros: l.total_micros,
    };
    p.as_ref().map(|p| pb::Pressure {
        some: p.some.as_ref().map(line),
        full: p.full.as_ref().map(line),
    })
}

/// A host telemetry sample.
pub fn host_sample(s: &HostSample) -> pb::HostSample {
    pb::HostSample {
        sequence: s.sequence,
        taken_at: s.taken_at.map(timestamp),
        cpu: s.cpu.as_ref().map(|c| {
            let t = &c.times;
            let load = c.load.unwrap_or_default();
            pb::CpuSample {
                times: Some(pb::CpuTimes {
                    user_millis: t.user_millis,
                    nice_millis: t.nice_millis,
                    system_millis: t.system_millis,
                    idle_millis: t.idle_millis,
                    iowait_millis: t.iowait_millis,
                    irq_millis: t.irq_millis,
                    softirq_millis: t.softirq_millis,
                    steal_millis: t.steal_millis,
                    guest_millis: t.guest_millis,
                    guest_nice_millis: t.guest_nice_millis,
                }),
                utilization_percent: c.utilization_percent,
                steal_percent: c.steal_percent,
                load_1m: load.one,
                load_5m: load.five,
                load_15m: load.fifteen,
                logical_cpus: c.logical_cpus,
            }
        }),
        memory: s.memory.as_ref().map(|m| pb::MemorySample {
            total_bytes: m.total_bytes,
            available_bytes: m.available_bytes,
            used_bytes: m.used_bytes,
            free_bytes: m.free_bytes,
            cached_bytes: m.cached_bytes,
            swap_total_bytes: m.swap_total_bytes,
            swap_used_bytes: m.swap_used_bytes,
        }),
        pressure: s.pressure.as_ref().map(|p| pb::PressureSample {
            cpu: pressure(&p.cpu),
            memory: pressure(&p.memory),
            io: pressure(&p.io),
        }),
        network: s
            .network
            .iter()
            .map(|n| pb::NetworkInterfaceSample {
                name: n.name.clone(),
                rx_bytes: n.rx_bytes,
                rx_packets: n.rx_packets,
                rx_errors: n.rx_errors,
                rx_dropped: n.rx_dropped,
                tx_bytes: n.tx_bytes,
                tx_packets: n.tx_packets,
                tx_errors: n.tx_errors,
                tx_dropped: n.tx_dropped,
            })
            .collect(),
        disks: s
            .disks
            .iter()
            .map(|d| pb::DiskSample {
                name: d.name.clone(),
                reads_completed: d.reads_completed,
                read_bytes: d.read_bytes,
                read_time_millis: d.read_time_millis,
                writes_completed: d.writes_completed,
                written_bytes: d.written_bytes,
                write_time_millis: d.write_time_millis,
                ios_in_progress: d.ios_in_progress,
                io_time_millis: d.io_time_millis,
            })
            .collect(),
        filesystems: s
            .filesystems
            .iter()
            .map(|f| pb::FilesystemSample {
                mount_point: f.mount_point.clone(),
                device: f.device.clone(),
                fs_type: f.fs_type.clone(),
                total_bytes: f.total_bytes,
                available_bytes: f.available_bytes,
                used_bytes: f.used_bytes,
            })
            .collect(),
        gpus: s.gpus.iter().map(gpu_sample).collect(),
        errors: s.errors.clone(),
        collection_micros: u64::try_from(s.collection.as_micros()).unwrap_or(u64::MAX),
    }
}

fn gpu_sample(g: &GpuSample) -> pb::GpuSample {
    pb::GpuSample {
        pci_bus_id: g.pci_bus_id.clone(),
        status: match g.status {
            GpuStatus::Ok => pb::GpuSampleStatus::Ok,
            GpuStatus::Unavailable => pb::GpuSampleStatus::Unavailable,
        } as i32,
        error: text(&g.error),
        utilization_percent: g.utilization_percent,
        memory_utilization_percent: g.memory_utilization_percent,
        memory_used_bytes: g.memory_used_bytes,
        memory_total_bytes: g.memory_total_bytes,
        temperature_celsius: g.temperature_celsius,
        power_milliwatts: g.power_milliwatts,
        power_limit_milliwatts: g.power_limit_milliwatts,
        graphics_clock_mhz: g.graphics_clock_mhz,
        memory_clock_mhz: g.memory_clock_mhz,
        sm_clock_mhz: g.sm_clock_mhz,
        throttle_reasons: g.throttle_reasons.clone(),
    }
}

// ---- benchmarks and attestation ----

/// A benchmark report.
pub fn benchmark_report(r: &BenchmarkReport) -> pb::BenchmarkReport {
    pb::BenchmarkReport {
        state: match r.state {
            BenchmarkState::Pending => pb::BenchmarkState::Pending,
            BenchmarkState::Running => pb::BenchmarkState::Running,
            BenchmarkState::Done => pb::BenchmarkState::Done,
            BenchmarkState::Failed => pb::BenchmarkState::Failed,
        } as i32,
        error: text(&r.error),
        fingerprint: r.fingerprint.clone(),
        measured_at: r.measured_at.map(timestamp),
        results: r
            .results
            .iter()
            .map(|x| pb::BenchmarkResult {
                benchmark_id: x.benchmark_id.clone(),
                device: x.device.clone(),
                metric: x.metric.clone(),
                value: x.value,
                unit: x.unit.clone(),
                samples: x.samples,
                relative_spread: x.relative_spread,
                duration_millis: x.duration_millis,
                detail_json: x.detail_json.clone(),
            })
            .collect(),
    }
}

/// A benchmark progress event.
pub fn benchmark_progress(p: &BenchmarkProgress) -> pb::BenchmarkProgress {
    pb::BenchmarkProgress {
        benchmark_id: p.benchmark_id.clone(),
        phase: match p.phase {
            BenchmarkPhase::Started => pb::BenchmarkPhase::Started,
            BenchmarkPhase::Finished => pb::BenchmarkPhase::Finished,
            BenchmarkPhase::Failed => pb::BenchmarkPhase::Failed,
            BenchmarkPhase::Skipped => pb::BenchmarkPhase::Skipped,
        } as i32,
        fraction_done: p.fraction_done,
        message: p.message.clone(),
    }
}

/// An attestation report.
pub fn attestation_report(r: &AttestationReport) -> pb::AttestationReport {
    pb::AttestationReport {
        format: "fog-attest-v1".to_owned(),
        report_json: r.report_json.clone(),
        host_id: r.host_id.clone(),
        created_at: Some(timestamp(r.created_at)),
    }
}

/// Enrollment material.
pub fn enrollment(e: &Enrollment) -> pb::Enrollment {
    pb::Enrollment {
        host_id: e.host_id.clone(),
        ek_public: e.ek_public.clone(),
        ek_certificate_der: e.ek_certificate_der.clone().unwrap_or_default(),
        ek_chain_der: e.ek_chain_der.clone(),
        ak_public: e.ak_public.clone(),
        ak_name: e.ak_name.clone(),
    }
}

// ---- requests ----

fn invalid(field: &str, message: impl std::fmt::Display) -> ApiError {
    ApiError::invalid(field, message)
}

/// The telemetry interval: 0 = the minimum; otherwise within [minimum, 1 h].
pub fn telemetry_interval(
    request: &pb::WatchHostTelemetryRequest,
    minimum: Duration,
) -> Result<Duration, ApiError> {
    let asked = Duration::from_millis(request.interval_millis);
    if request.interval_millis == 0 {
        return Ok(minimum);
    }
    if asked < minimum {
        return Err(invalid(
            "interval_millis",
            format!(
                "{} is below this agent's minimum of {}",
                request.interval_millis,
                minimum.as_millis()
            ),
        ));
    }
    if asked > MAX_TELEMETRY_INTERVAL {
        return Err(invalid(
            "interval_millis",
            format!(
                "{} is above the maximum of 3600000",
                request.interval_millis
            ),
        ));
    }
    Ok(asked)
}

/// A nonce: 16 to 64 bytes.
pub fn nonce(field: &'static str, bytes: &[u8]) -> Result<Vec<u8>, ApiError> {
    if !NONCE_LEN.contains(&bytes.len()) {
        return Err(invalid(
            field,
            format!("{} bytes, expected 16 to 64", bytes.len()),
        ));
    }
    Ok(bytes.to_vec())
}

/// A PCR selection; absent or empty means the default sha256:0-7.
pub fn pcr_selection(selection: Option<&pb::PcrSelection>) -> Result<PcrSelection, ApiError> {
    let Some(selection) = selection else {
        return Ok(PcrSelection::default());
    };
    let bank = match pb::PcrBank::try_from(selection.bank) {
        Ok(pb::PcrBank::Unspecified | pb::PcrBank::Sha256) => PcrBank::Sha256,
        Ok(pb::PcrBank::Sha384) => PcrBank::Sha384,
        Err(_) => {
            return Err(invalid(
                "pcr_selection.bank",
                format!("unknown bank {}", selection.bank),
            ))
        }
    };
    if selection.pcrs.is_empty() {
        return Ok(PcrSelection {
            bank,
            ..PcrSelection::default()
        });
    }
    let mut pcrs = Vec::with_capacity(selection.pcrs.len());
    for &pcr in &selection.pcrs {
        let index = u8::try_from(pcr)
            .ok()
            .filter(|i| *i <= 23)
            .ok_or_else(|| invalid("pcr_selection.pcrs", format!("{pcr} is not 0 to 23")))?;
        if pcrs.contains(&index) {
            return Err(invalid(
                "pcr_selection.pcrs",
                format!("{pcr} is listed twice"),
            ));
        }
        pcrs.push(index);
    }
    pcrs.sort_unstable();
    Ok(PcrSelection { bank, pcrs })
}

/// An ActivateCredential request: both TPM blobs non-empty and at most 1 KiB, a valid nonce.
pub fn activation(request: &pb::ActivateCredentialRequest) -> Result<ActivationRequest, ApiError> {
    for (field, blob) in [
        ("credential_blob", &request.credential_blob),
        ("encrypted_secret", &request.encrypted_secret),
    ] {
        if blob.is_empty() || blob.len() > 1024 {
            return Err(invalid(
                field,
                format!("{} bytes, expected 1 to 1024", blob.len()),
            ));
        }
    }
    Ok(ActivationRequest {
        credential_blob: request.credential_blob.clone(),
        encrypted_secret: request.encrypted_secret.clone(),
        enroll_nonce: nonce("enroll_nonce", &request.enroll_nonce)?,
    })
}

/// Benchmark ids: at most 256, each 1 to 128 printable ASCII characters.
pub fn benchmark_ids(ids: &[String]) -> Result<Vec<String>, ApiError> {
    if ids.len() > 256 {
        return Err(invalid("benchmark_ids", "more than 256 ids"));
    }
    for id in ids {
        let ok = !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic());
        if !ok {
            return Err(invalid(
                "benchmark_ids",
                format!("{} is not a benchmark id", crate::jobs::spec::quote(id)),
            ));
        }
    }
    Ok(ids.to_vec())
}

/// One market endpoint's tunnel state.
pub fn market_link(link: &fog_tunnel::LinkStatus) -> pb::MarketLink {
    pb::MarketLink {
        endpoint: link.endpoint.clone(),
        up: link.up,
        role: link.role.clone(),
        up_since: link.up_since.filter(|_| link.up).map(timestamp),
        connects: link.connects,
        failures: link.failures,
        last_error: link.last_error.clone(),
        streams_open: link.streams_open,
        streams_total: link.streams_total,
        streams_refused: link.streams_refused,
        bytes_in: link.bytes_in,
        bytes_out: link.bytes_out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(err: ApiError) -> String {
        match err {
            ApiError::InvalidArgument { field, .. } => field,
            other => panic!("not INVALID_ARGUMENT: {other:?}"),
        }
    }

    #[test]
    fn telemetry_interval_bounds() {
        let min = Duration::from_millis(250);
        let req = |ms| pb::WatchHostTelemetryRequest {
            interval_millis: ms,
        };
        assert_eq!(telemetry_interval(&req(0), min).unwrap(), min);
        assert_eq!(
            telemetry_interval(&req(1000), min).unwrap(),
            Duration::from_secs(1)
        );
        assert_eq!(
            field_of(telemetry_interval(&req(100), min).unwrap_err()),
            "interval_millis"
        );
        assert_eq!(
            field_of(telemetry_interval(&req(u64::MAX), min).unwrap_err()),
            "interval_millis"
        );
    }

    #[test]
    fn nonce_and_selection() {
        assert!(nonce("nonce", &[0; 16]).is_ok());
        assert_eq!(field_of(nonce("nonce", &[0; 15]).unwrap_err()), "nonce");
        assert_eq!(field_of(nonce("nonce", &[0; 65]).unwrap_err()), "nonce");
        assert_eq!(pcr_selection(None).unwrap(), PcrSelection::default());
        let sel = |bank, pcrs: Vec<u32>| pb::PcrSelection { bank, pcrs };
        let ok = pcr_selection(Some(&sel(2, vec![7, 0, 23]))).unwrap();
        assert_eq!((ok.bank, ok.pcrs), (PcrBank::Sha384, vec![0, 7, 23]));
        assert_eq!(
            field_of(pcr_selection(Some(&sel(9, vec![]))).unwrap_err()),
            "pcr_selection.bank"
        );
        assert_eq!(
            field_of(pcr_selection(Some(&sel(1, vec![24]))).unwrap_err()),
            "pcr_selection.pcrs"
        );
        assert_eq!(
            field_of(pcr_selection(Some(&sel(1, vec![u32::MAX]))).unwrap_err()),
            "pcr_selection.pcrs"
        );
        assert_eq!(
            field_of(pcr_selection(Some(&sel(1, vec![1, 1]))).unwrap_err()),
            "pcr_selection.pcrs"
        );
    }

    #[test]
    fn activation_and_benchmark_ids() {
        let req = |blob: Vec<u8>, nonce: Vec<u8>| pb::ActivateCredentialRequest {
            credential_blob: blob.clone(),
            encrypted_secret: blob,
            enroll_nonce: nonce,
        };
        assert!(activation(&req(vec![1; 10], vec![0; 32])).is_ok());
        assert_eq!(
            field_of(activation(&req(vec![], vec![0; 32])).unwrap_err()),
            "credential_blob"
        );
        assert_eq!(
            field_of(activation(&req(vec![1], vec![])).unwrap_err()),
            "enroll_nonce"
        );
        assert!(benchmark_ids(&["cpu.fma".into()]).is_ok());
        assert_eq!(
            field_of(benchmark_ids(&["a b".into()]).unwrap_err()),
            "benchmark_ids"
        );
        assert_eq!(
            field_of(benchmark_ids(&[String::new()]).unwrap_err()),
            "benchmark_ids"
        );
    }

    #[test]
    fn inventory_of_this_machine_converts() {
        let inventory = crate::inventory::collect_from(crate::fsroot::FsRoot::host());
        let msg = super::inventory(&inventory);
        assert_eq!(msg.format, "fog-inventory-v1");
        assert_eq!(msg.fingerprint.unwrap().value, inventory.fingerprint.value);
        let cpu = msg.cpu.unwrap();
        let probe = cpu.probe.unwrap();
        match inventory.cpu.get() {
            Some(domain) => {
                assert_eq!(probe.status, pb::ProbeStatus::Ok as i32);
                assert_eq!(cpu.data.unwrap().logical_cpus, domain.logical_cpus);
            }
            None => {
                assert_eq!(probe.status, pb::ProbeStatus::Unavailable as i32);
                assert_eq!(Some(&probe.reason), inventory.cpu.reason.as_ref());
                assert!(cpu.data.is_none());
            }
        }
        assert!(msg.collected_at.is_some());
    }

    #[test]
    fn capacity_converts_the_network_rates() {
        let ledger = crate::capacity::CapacityLedger::new(
            crate::config::CapacityConfig::default(),
            crate::capacity::Totals {
                network_bits_per_second: Some(10_000_000_000),
                ..crate::capacity::Totals::default()
            },
        );
        ledger.set_allocations(crate::capacity::Allocations {
            network_ingress_bits_per_second: 1_000_000,
            network_egress_bits_per_second: 2_000_000,
            ..crate::capacity::Allocations::default()
        });
        let msg = capacity(&ledger.current());
        let ingress = msg.network_ingress_bits_per_second.unwrap();
        assert_eq!(
            (
                ingress.total,
                ingress.reserved,
                ingress.allocated,
                ingress.free
            ),
            (10_000_000_000, 0, 1_000_000, 9_999_000_000)
        );
        let egress = msg.network_egress_bits_per_second.unwrap();
        assert_eq!((egress.allocated, egress.free), (2_000_000, 9_998_000_000));
    }

    #[test]
    fn unavailable_gpu_converts_without_metrics() {
        let sample = HostSample {
            gpus: vec![GpuSample::unavailable("0000:01:00.0", "nvml unavailable")],
            ..HostSample::default()
        };
        let msg = host_sample(&sample);
        let gpu = &msg.gpus[0];
        assert_eq!(gpu.status, pb::GpuSampleStatus::Unavailable as i32);
        assert_eq!(gpu.error, "nvml unavailable");
        assert_eq!(gpu.utilization_percent, None);
    }
}
