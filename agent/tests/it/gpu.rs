//! GPU sources end to end: the real nvml-wrapper code path against the simulated NVML library
//! (`tests/nvml-sim/nvml_sim.c`, compiled once per test binary), and the real OpenCL child process
//! against this machine's PoCL.

// Test helpers (not `#[test]` functions themselves) fail the test by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use fog_agent::fsroot::FsRoot;
use fog_agent::inventory::gpu::nvml::{NvmlDevice, NvmlLibrary, NvmlSource, NvmlSourceError};
use fog_agent::inventory::gpu::opencl::{ChildProcessOpenCl, OpenClSource};
use fog_agent::inventory::gpu::{self, nvml};
use fog_agent::inventory::{Notes, ProbeStatus};

/// The simulated library, compiled once into a directory that lives as long as the test binary.
fn sim_library() -> &'static Path {
    static LIB: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, path) = LIB.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("libnvidia-ml.so.1");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/nvml-sim/nvml_sim.c");
        let status = Command::new("gcc")
            .args(["-shared", "-fPIC", "-O1", "-Wall", "-Werror", "-o"])
            .arg(&out)
            .arg(&src)
            .status()
            .expect("gcc runs");
        assert!(status.success(), "gcc failed to build {}", src.display());
        (dir, out)
    });
    path
}

/// A private copy of the sim with its own failure mode (file next to the library), so tests in
/// this process do not share the library's state.
pub(crate) fn sim_with_mode(mode: &str) -> (tempfile::TempDir, NvmlLibrary) {
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join("libnvidia-ml.so.1");
    std::fs::copy(sim_library(), &lib).unwrap();
    std::fs::write(dir.path().join("fog-nvml-sim.conf"), mode).unwrap();
    (dir, NvmlLibrary::at(lib))
}

fn assert_first_a100(d: &NvmlDevice) {
    assert_eq!(d.index, 0);
    assert_eq!(d.name.as_deref(), Some("NVIDIA A100 80GB PCIe"));
    assert_eq!(
        d.uuid.as_deref(),
        Some("GPU-1f0e4a2b-8c3d-4e5f-9a6b-7c8d9e0f1a2b")
    );
    assert_eq!(d.serial.as_deref(), Some("1324021000001"));
    assert_eq!(d.pci_bus_id.as_deref(), Some("0000:17:00.0"));
    assert_eq!(d.memory_total_bytes, Some(80 << 30));
    assert_eq!(d.driver_version.as_deref(), Some("550.54.15"));
    assert_eq!(d.cuda_driver_version.as_deref(), Some("12.4"));
    assert_eq!(d.compute_capability.as_deref(), Some("8.0"));
    assert_eq!(d.pcie_gen_current, Some(4));
    assert_eq!(d.pcie_gen_max, Some(4));
    assert_eq!(d.pcie_width_current, Some(16));
    assert_eq!(d.pcie_width_max, Some(16));
    assert_eq!(d.power_limit_w, Some(300.0));
    assert_eq!(d.power_limit_default_w, Some(300.0));
    assert_eq!(d.power_limit_enforced_w, Some(300.0));
    assert_eq!(d.max_graphics_clock_mhz, Some(1410));
    assert_eq!(d.max_sm_clock_mhz, Some(1410));
    assert_eq!(d.max_memory_clock_mhz, Some(1512));
    assert_eq!(d.ecc_enabled_current, Some(true));
    assert_eq!(d.ecc_enabled_pending, Some(true));
    assert_eq!(d.mig_enabled_current, Some(false));
    assert_eq!(d.mig_enabled_pending, Some(false));
    assert_eq!(d.board_part_number.as_deref(), Some("900-21001-0020-100"));
    assert!(d.errors.is_empty(), "{:?}", d.errors);
}

#[test]
fn nvml_sim_two_gpus_every_field() {
    let (_dir, lib) = sim_with_mode("");
    let devices = lib.devices().unwrap();
    assert_eq!(devices.len(), 2);
    assert_first_a100(&devices[0]);
    let d = &devices[1];
    assert_eq!(d.pci_bus_id.as_deref(), Some("0000:65:00.0"));
    assert_eq!(d.pcie_gen_current, Some(3));
    assert_eq!(d.pcie_width_current, Some(8));
    assert_eq!(d.power_limit_w, Some(250.0));
    assert_eq!(d.ecc_enabled_pending, Some(false));
    assert_eq!(d.mig_enabled_current, Some(true));
    assert!(d.errors.is_empty(), "{:?}", d.errors);
    // Init once, shut down after: a second collection works the same way.
    assert_eq!(lib.devices().unwrap(), devices);
}

#[test]
fn nvml_sim_driver_not_loaded_is_unavailable() {
    let (_dir, lib) = sim_with_mode("driver_not_loaded");
    let err = lib.devices().unwrap_err();
    assert!(matches!(err, NvmlSourceError::NoDriver(_)), "{err:?}");
    assert!(err.to_string().starts_with("no NVIDIA driver"), "{err}");
}

#[test]
fn nvml_sim_failing_query_is_recorded_and_the_rest_present() {
    let (_dir, lib) = sim_with_mode("fail_query=nvmlDeviceGetSerial");
    let devices = lib.devices().unwrap();
    for d in &devices {
        assert_eq!(d.serial, None);
        let why = d.errors.get("serial").expect("serial error recorded");
        assert!(why.contains("not available"), "{why}");
        assert_eq!(d.errors.len(), 1, "{:?}", d.errors);
        assert!(d.uuid.is_some() && d.memory_total_bytes.is_some());
    }
    let json = serde_json::to_value(&devices[0]).unwrap();
    assert!(json["serial"].is_null());
    assert!(json["errors"]["serial"].is_string());
}

#[test]
fn nvml_sim_gpu_lost() {
    let (_dir, lib) = sim_with_mode("gpu_lost=1");
    let devices = lib.devices().unwrap();
    assert_first_a100(&devices[0]);
    let lost = &devices[1];
    assert_eq!(lost.name, None);
    assert_eq!(lost.memory_total_bytes, None);
    assert_eq!(lost.pci_bus_id, None);
    assert_eq!(lost.errors.len(), 1, "{:?}", lost.errors);
    assert!(
        lost.errors["device"].contains("fell off the bus"),
        "{:?}",
        lost.errors
    );
}

#[test]
fn nvml_nonexistent_library_is_unavailable() {
    let err = NvmlLibrary::at("/nonexistent/libnvidia-ml.so.1")
        .devices()
        .unwrap_err();
    assert!(err.to_string().starts_with("no NVIDIA driver ("), "{err}");
}

fn fixture(name: &str) -> FsRoot {
    FsRoot::new(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name),
    )
}

/// The server fixture with the simulated NVML: two NVIDIA GPUs seen by PCI and NVML, the AMD
/// card without a driver by PCI only.
#[test]
fn server_fixture_with_nvml_sim() {
    let (_dir, lib) = sim_with_mode("");
    let mut notes = Notes::default();
    let inv = gpu::collect(
        &fixture("server-2s-smt"),
        &lib,
        &fog_agent::inventory::gpu::opencl::Skipped("test".into()),
        &mut notes,
    )
    .unwrap();
    assert_eq!(inv.sources.nvml.status, ProbeStatus::Ok);
    assert_eq!(inv.sources.pci.status, ProbeStatus::Ok);
    assert_eq!(inv.sources.opencl.status, ProbeStatus::Unavailable);
    let ids: Vec<_> = inv.gpus.iter().map(|g| g.pci_bus_id.as_str()).collect();
    assert_eq!(ids, ["0000:17:00.0", "0000:65:00.0", "0000:ca:00.0"]);
    assert_eq!(inv.gpus[0].seen_by, ["pci", "nvml"]);
    assert_eq!(inv.gpus[0].name.as_deref(), Some("NVIDIA A100 80GB PCIe"));
    assert_eq!(inv.gpus[2].seen_by, ["pci"]);
    assert_eq!(inv.gpus[2].driver, None);
    assert_eq!(inv.gpus[2].vendor, "AMD");
}

/// The real child process on this machine: PoCL's CPU device is an OpenCL device, not a GPU.
#[test]
fn real_pocl_child_finds_cpu_device_and_no_gpu() {
    let child = ChildProcessOpenCl {
        program: env!("CARGO_BIN_EXE_fog-agent").into(),
        args: vec!["internal".into(), "opencl-devices".into()],
        // Enumeration takes ~0.05 s on an idle machine; the bound is wide because this test runs
        // beside jobs and benchmarks that hold both cores (a CI run once took over 20 s).
        timeout: Duration::from_secs(120),
    };
    let start = Instant::now();
    let report = child.devices().unwrap();
    eprintln!("OpenCL child wall time: {:?}", start.elapsed());
    let cpu = report
        .devices
        .iter()
        .find(|d| d.platform_name == "Portable Computing Language")
        .expect("PoCL platform present");
    assert_eq!(cpu.device_type, "cpu");
    assert!(cpu.compute_units >= 1 && cpu.global_memory_bytes > 0);
    let mut notes = Notes::default();
    let inv = gpu::collect(
        &FsRoot::host(),
        &nvml::Skipped("test".into()),
        &child,
        &mut notes,
    )
    .unwrap();
    assert!(inv.gpus.is_empty(), "{:?}", inv.gpus);
    assert!(inv.opencl_devices.iter().any(|d| d.device_type == "cpu"));
    assert_eq!(inv.sources.opencl.status, ProbeStatus::Ok);
    assert_eq!(inv.sources.pci.status, ProbeStatus::Ok);
}

/// The telemetry entry points later issues will use already answer through nvml-wrapper.
#[test]
fn nvml_sim_telemetry_entry_points() {
    use nvml_wrapper::enum_wrappers::device::{Clock, TemperatureSensor};
    let (dir, _) = sim_with_mode("");
    let nvml = nvml_wrapper::Nvml::builder()
        .lib_path(dir.path().join("libnvidia-ml.so.1").as_os_str())
        .init()
        .unwrap();
    let gpu1 = nvml.device_by_index(1).unwrap();
    assert_eq!(gpu1.utilization_rates().unwrap().gpu, 97);
    assert_eq!(gpu1.temperature(TemperatureSensor::Gpu).unwrap(), 51);
    assert_eq!(gpu1.power_usage().unwrap(), 72_000);
    assert_eq!(gpu1.clock_info(Clock::SM).unwrap(), 1410);
    let procs = gpu1.running_compute_processes().unwrap();
    assert_eq!(procs.len(), 1);
    assert_eq!(procs[0].pid, 4242);
    let gpu0 = nvml.device_by_index(0).unwrap();
    assert!(gpu0.running_compute_processes().unwrap().is_empty());
    nvml.shutdown().unwrap();
}

/// The daemon's GPU telemetry source reads every figure through nvml-wrapper, finds devices by
/// PCI address, and reports a lost GPU or an unknown address as unavailable, never idle.
#[test]
fn nvml_telemetry_source_reads_the_simulated_gpus() {
    use fog_agent::gpu::NvmlTelemetry;
    use fog_agent::gpu::{sample_all, GpuStatus, GpuTelemetrySource};

    let (_dir, lib) = sim_with_mode("");
    let source = NvmlTelemetry::new(lib);
    let idle = source.sample("0000:17:00.0").unwrap();
    assert_eq!(idle.status, GpuStatus::Ok);
    assert_eq!(idle.utilization_percent, Some(3));
    assert_eq!(idle.memory_utilization_percent, Some(1));
    assert_eq!(idle.memory_used_bytes, Some(1 << 30));
    assert_eq!(idle.memory_total_bytes, Some(80 << 30));
    assert_eq!(idle.temperature_celsius, Some(34));
    assert_eq!(idle.power_milliwatts, Some(61_000));
    assert_eq!(idle.power_limit_milliwatts, Some(300_000));
    assert_eq!(idle.graphics_clock_mhz, Some(210));
    assert_eq!(idle.memory_clock_mhz, Some(1512));
    assert_eq!(idle.throttle_reasons, ["gpu_idle"]);
    // The same address written the way NVML writes it (8-digit domain, upper case).
    let busy = source.sample("00000000:65:00.0").unwrap();
    assert_eq!(busy.utilization_percent, Some(97));
    assert_eq!(busy.sm_clock_mhz, Some(1410));
    assert!(busy.throttle_reasons.is_empty());

    let all = sample_all(
        &source,
        &["0000:65:00.0".to_owned(), "0000:b3:00.0".to_owned()],
    );
    assert_eq!(all[0].status, GpuStatus::Ok);
    assert_eq!(all[1].status, GpuStatus::Unavailable);
    assert_eq!(
        all[1].error.as_deref(),
        Some("nvml: no NVIDIA device at 0000:b3:00.0")
    );
    assert_eq!(all[1].utilization_percent, None);

    // The benchmark health records come from the same source.
    let health = fog_agent::gpu::health::GpuHealthSource::sample(&source, "0000:65:00.0").unwrap();
    assert_eq!(health.sm_clock_mhz, Some(1410));
    assert_eq!(health.temperature_c, Some(51));
    assert_eq!(health.power_w, Some(72.0));

    let (_lost_dir, lost_lib) = sim_with_mode("gpu_lost=1");
    let lost = NvmlTelemetry::new(lost_lib);
    assert_eq!(lost.sample("0000:17:00.0").unwrap().status, GpuStatus::Ok);
    let err = lost.sample("0000:65:00.0").unwrap_err().to_string();
    assert!(err.contains("device 1: device fell off the bus"), "{err}");

    let (_nd_dir, nd_lib) = sim_with_mode("driver_not_loaded");
    let err = NvmlTelemetry::new(nd_lib)
        .sample("0000:17:00.0")
        .unwrap_err();
    assert_eq!(err.to_string(), "no NVIDIA driver (driver not loaded)");
}

/// Jobs' GPU-seconds through the real nvml-wrapper accounting calls: accounting mode turned on
/// by `prepare`, only the job's pids counted, overlapping processes counted once, a running
/// process up to now, a reused pid of a process older than the job left out.
#[test]
fn nvml_accounting_gives_a_jobs_gpu_seconds() {
    use std::collections::BTreeSet;

    use fog_agent::gpu::NvmlTelemetry;
    use fog_agent::gpu::{accounting as gpu_usage, GpuAccounting};

    let now_us = u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros(),
    )
    .unwrap();
    let s = 1_000_000;
    let job_created = now_us - 200 * s;
    let t0 = now_us - 100 * s;
    let records = [
        // GPU 1 (0000:65:00.0): the job's 500 and 501 overlap (t0..t0+60, t0+30..t0+90).
        format!("acct=1:500:{t0}:60000:0"),
        format!("acct=1:501:{}:60000:0", t0 + 30 * s),
        // 502 is still running since 10 s ago (NVML reports time 0 while it runs).
        format!("acct=1:502:{}:0:1", now_us - 10 * s),
        // 600 is a pid the job has now, but this record is of an older process.
        format!("acct=1:600:{}:5000:0", job_created - 50 * s),
        // Another tenant's process on the same card.
        format!("acct=1:999:{t0}:50000:0"),
        // The job's pid 500 on the other card counts there, not on GPU 1.
        format!("acct=0:500:{t0}:7000:0"),
    ];
    let (_dir, lib) = sim_with_mode(&format!("acct_off,{}", records.join(",")));
    let nvml = NvmlTelemetry::new(lib);
    let pids: BTreeSet<u32> = [500, 501, 502, 600].into();

    let off = nvml.process_spans("0000:65:00.0", &pids).unwrap_err();
    assert!(off.contains("accounting is off"), "{off}");
    nvml.prepare("0000:65:00.0").unwrap();
    nvml.prepare("0000:17:00.0").unwrap();

    let spans = nvml.process_spans("0000:65:00.0", &pids).unwrap();
    let mut seen: Vec<u32> = spans.iter().map(|s| s.pid).collect();
    seen.sort_unstable();
    assert_eq!(seen, [500, 501, 502, 600], "only the job's pids");
    let running = spans.iter().find(|s| s.pid == 502).unwrap();
    assert_eq!(running.ended_after_millis, None);
    let held = gpu_usage::held_millis(&spans, job_created, now_us);
    assert_eq!(held, 90_000 + 10_000);

    let other_card = nvml.process_spans("0000:17:00.0", &pids).unwrap();
    assert_eq!(
        gpu_usage::held_millis(&other_card, job_created, now_us),
        7_000
    );

    // What the job's processes use now: only 502 runs (512 MiB, SM 40%); with the static
    // process 4242 (1 GiB, SM 25%) counted as the job's too, both add up.
    let now = nvml.process_use("0000:65:00.0", &pids, 0).unwrap();
    assert_eq!(now.memory_used_bytes, Some(512 << 20));
    assert_eq!(now.sm_utilization_percent, Some(40));
    let both: BTreeSet<u32> = [502, 4242].into();
    let now = nvml.process_use("0000:65:00.0", &both, 0).unwrap();
    assert_eq!(now.memory_used_bytes, Some((512 << 20) + (1 << 30)));
    assert_eq!(now.sm_utilization_percent, Some(65));
    // Nothing of the job's runs on the other card (and nothing at all: NOT_FOUND is 0%).
    let idle = nvml.process_use("0000:17:00.0", &pids, 0).unwrap();
    assert_eq!(idle.memory_used_bytes, Some(0));
    assert_eq!(idle.sm_utilization_percent, Some(0));

    let unknown = nvml.prepare("0000:b3:00.0").unwrap_err();
    assert!(
        unknown.contains("no NVIDIA device at 0000:b3:00.0"),
        "{unknown}"
    );
}

/// Accounting mode that cannot be turned on (no permission) and a host without a driver are
/// reasons, never zero GPU-seconds.
#[test]
fn nvml_accounting_unavailable_says_why() {
    use fog_agent::gpu::GpuAccounting;
    use fog_agent::gpu::NvmlTelemetry;

    let (_dir, lib) = sim_with_mode("acct_off,acct_locked");
    let nvml = NvmlTelemetry::new(lib);
    let err = nvml.prepare("0000:17:00.0").unwrap_err();
    assert!(err.contains("cannot be turned on"), "{err}");
    assert!(nvml
        .process_spans("0000:17:00.0", &[1].into())
        .unwrap_err()
        .contains("accounting is off"));

    let (_dir, lib) = sim_with_mode("driver_not_loaded");
    let err = NvmlTelemetry::new(lib).prepare("0000:17:00.0").unwrap_err();
    assert!(err.starts_with("no NVIDIA driver"), "{err}");
}
