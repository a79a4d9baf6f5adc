//! The child side: `fog-agent internal bench-run --ids ... ` runs the kernels in-process and
//! prints one JSON [`BenchRecord`] line per benchmark on stdout. A kernel error becomes a
//! `failed` record; a crash or hang is seen by the parent ([`super::runner`]).
//!
//! Parameters per mode are here (what `--quick` and `--full` mean), passed to `fog-bench` as
//! plain values.

use std::io::Write;
use std::net::ToSocketAddrs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fog_bench::{cpu, disk, mem, net, opencl, BenchError, KernelResult, Protocol};

use super::suite::{self, Mode, Spec};
use super::{BenchRecord, CpuFacts, Status};
use crate::gpu::health::{self, NoNvml};
use crate::gpu::NvmlTelemetry;

/// What the parent passes to the child.
#[derive(Debug, Clone)]
pub struct ChildArgs {
    /// Benchmark ids to run, in order.
    pub ids: Vec<String>,
    /// Quick or full.
    pub mode: Mode,
    /// State directory (disk test file).
    pub state_dir: PathBuf,
    /// CPU facts.
    pub cpu: CpuFacts,
    /// Network peer.
    pub peer: Option<String>,
    /// OpenCL device index.
    pub device: Option<usize>,
}

/// Prints the OpenCL device list as one JSON line; exit code 1 on error.
pub fn list_opencl_main() -> std::process::ExitCode {
    match opencl::list_devices() {
        Ok(list) => match serde_json::to_string(&list) {
            Ok(s) => {
                println!("{s}");
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("fog-agent: cannot encode device list: {e}");
                std::process::ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("fog-agent: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs the benchmarks and prints one record per line. Returns the process exit code.
pub fn main(args: &ChildArgs) -> std::process::ExitCode {
    let mut out = std::io::stdout().lock();
    let mut cl: Option<Result<opencl::ClBench, BenchError>> = None;
    // Initialized on the first OpenCL run on an NVIDIA device, then kept for the others.
    let mut nvml: Option<NvmlTelemetry> = None;
    for id in &args.ids {
        let Some(spec) = suite::find(id) else {
            eprintln!("fog-agent: unknown benchmark id {id:?}");
            return std::process::ExitCode::FAILURE;
        };
        let record = run_one(&spec, args, &mut cl, &mut nvml);
        match serde_json::to_string(&record) {
            Ok(line) => {
                if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                    return std::process::ExitCode::FAILURE;
                }
            }
            Err(e) => eprintln!("fog-agent: cannot encode record: {e}"),
        }
    }
    std::process::ExitCode::SUCCESS
}

fn protocol(mode: Mode) -> Protocol {
    match mode {
        Mode::Quick => Protocol::default(),
        Mode::Full => Protocol::with_samples(10),
    }
}

fn run_one(
    spec: &Spec,
    args: &ChildArgs,
    cl: &mut Option<Result<opencl::ClBench, BenchError>>,
    nvml: &mut Option<NvmlTelemetry>,
) -> BenchRecord {
    let root = Path::new("/");
    let env_before = fog_bench::env::snapshot(root);
    let start = Instant::now();
    let mut gpu_health = None;
    let mut invalid = None;
    let result = if spec.id.starts_with("opencl.") {
        let bench = cl.get_or_insert_with(|| {
            let index = args.device.unwrap_or(0);
            opencl::ClBench::open(index)
        });
        match bench {
            Ok(b) => {
                // NVML health is recorded for NVIDIA devices, found by their PCI address;
                // other vendors have no NVML.
                let nvidia = b.info().vendor.to_ascii_lowercase().contains("nvidia");
                let bus = nvidia.then(|| b.info().pci_bus_id.clone());
                let (r, h, inv) = match bus {
                    Some(Some(bus)) => {
                        let nvml = nvml.get_or_insert_with(NvmlTelemetry::system);
                        health::around(&*nvml, Some(&bus), || run_opencl(spec, b, args))
                    }
                    Some(None) => {
                        let source = NoNvml("the OpenCL device has no PCI address".into());
                        health::around(&source, Some("unknown"), || run_opencl(spec, b, args))
                    }
                    None => {
                        health::around(&NoNvml(String::new()), None, || run_opencl(spec, b, args))
                    }
                };
                gpu_health = Some(h);
                invalid = inv;
                r
            }
            Err(e) => Err(open_failed(e)),
        }
    } else {
        run_kernel(spec, args)
    };
    let env_after = fog_bench::env::snapshot(root);
    let duration_s = start.elapsed().as_secs_f64();
    let mut record = match result {
        Ok(k) => from_kernel(spec, k, invalid),
        Err(e) => {
            let status = if matches!(e, BenchError::Unsupported(_)) {
                Status::Skipped
            } else {
                Status::Failed
            };
            BenchRecord::without_result(spec, "", status, e.to_string())
        }
    };
    record.duration_s = (duration_s * 1e3).round() / 1e3;
    record.env_before = Some(env_before);
    record.env_after = Some(env_after);
    record.gpu_health = gpu_health;
    record
}

/// The error of the device's one failed open, again for each OpenCL benchmark of the run
/// ([`BenchError`] is not `Clone`): an OpenCL failure as it was, anything else (no such device,
/// an I/O error) as an OpenCL failure whose text is that error's.
fn open_failed(e: &BenchError) -> BenchError {
    match e {
        BenchError::OpenCl(detail) => BenchError::OpenCl(detail.clone()),
        other => BenchError::OpenCl(other.to_string()),
    }
}

fn from_kernel(spec: &Spec, k: KernelResult, invalid: Option<String>) -> BenchRecord {
    BenchRecord {
        id: spec.id.to_owned(),
        kernel_version: spec.kernel_version,
        status: if invalid.is_some() {
            Status::Invalid
        } else {
            Status::Ok
        },
        reason: invalid,
        device: k.device,
        unit: Some(k.unit),
        summary: Some(k.summary),
        details: k.details,
        verified: Some(k.verified),
        duration_s: 0.0,
        driver_versions: String::new(),
        env_before: None,
        env_after: None,
        gpu_health: None,
        cached: false,
    }
}

/// FMA units per core for the f32 peak: Zen 4 (AMD family 0x19) executes 512-bit FMAs as two
/// 256-bit halves (one zmm FMA per cycle); Intel server cores with AVX-512 and every AVX2 core
/// since Haswell / Zen have two FMA pipes.
pub fn fma_units(isa: cpu::FmaIsa) -> u32 {
    let (amd, family) = cpu_vendor_family();
    match isa {
        cpu::FmaIsa::Avx512 if amd && family == 0x19 => 1,
        cpu::FmaIsa::Scalar => 1,
        _ => 2,
    }
}

fn cpu_vendor_family() -> (bool, u32) {
    #[cfg(target_arch = "x86_64")]
    {
        let id = raw_cpuid::CpuId::new();
        let amd = id
            .get_vendor_info()
            .is_some_and(|v| v.as_str() == "AuthenticAMD");
        let family = id
            .get_feature_info()
            .map_or(0, |f| u32::from(f.family_id()));
        (amd, family)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        (false, 0)
    }
}

/// The sustained clock: the inventory's figure, or a measurement on the first CPU.
fn clock(facts: &CpuFacts) -> (Option<f64>, &'static str) {
    match facts.clock_mhz {
        Some(c) => (Some(c), "inventory max clock"),
        None => {
            if let Some(&c) = facts.cpus.first() {
                fog_bench::pin_current_thread(c);
            }
            (
                cpu::measure_clock_mhz(Duration::from_millis(300)),
                "measured: dependent add chain, 1 add/cycle",
            )
        }
    }
}

fn run_kernel(spec: &Spec, args: &ChildArgs) -> Result<KernelResult, BenchError> {
    let quick = args.mode == Mode::Quick;
    let p = protocol(args.mode);
    let facts = &args.cpu;
    let all = &facts.cpus;
    let first = &all[..all.len().min(1)];
    let llc = facts.llc_total_bytes.unwrap_or(32 << 20) as usize;
    match spec.id {
        "cpu.int.single" | "cpu.int.multi" => {
            let cpus = if spec.id.ends_with("single") {
                first
            } else {
                all
            };
            cpu::int_throughput(cpus, if quick { 8 << 20 } else { 64 << 20 }, &p)
        }
        "cpu.fp32.single" | "cpu.fp32.multi" => {
            let cpus = if spec.id.ends_with("single") {
                first
            } else {
                all
            };
            let isa = cpu::FmaIsa::detect();
            let (clock, source) = clock(facts);
            let peak = clock.map(|mhz| {
                cpu::theoretical_peak_gflops(
                    cpus.len() as u32,
                    mhz,
                    isa.lanes_f32(),
                    fma_units(isa),
                )
            });
            let r =
                cpu::fma_throughput(cpus, if quick { 4_000_000 } else { 40_000_000 }, peak, &p)?;
            Ok(r.with(
                "clock_mhz",
                clock.map_or(serde_json::Value::from("unknown"), Into::into),
            )
            .with("clock_source", source)
            .with("fma_units", fma_units(isa))
            .with("lanes_f32", isa.lanes_f32()))
        }
        "cpu.sysbench_prime.single" | "cpu.sysbench_prime.multi" => {
            let cpus = if spec.id.ends_with("single") {
                first
            } else {
                all
            };
            let t = Duration::from_millis(if quick { 300 } else { 2000 });
            cpu::sysbench_prime(cpus, 10_000, t, &p)
        }
        "mem.bandwidth" => {
            let bytes = llc * if quick { 4 } else { 8 };
            let threads = if facts.physical_cpus.is_empty() {
                all
            } else {
                &facts.physical_cpus
            };
            mem::stream(threads, (bytes / 8).max(1 << 20), &p)
        }
        "mem.latency" => {
            let l1 = facts.l1d_bytes.unwrap_or(32 << 10) as usize;
            let l2 = facts.l2_bytes.unwrap_or(1 << 20) as usize;
            let l3 = facts.l3_bytes.unwrap_or(llc as u64) as usize;
            let far = llc * if quick { 4 } else { 16 };
            let loads = if quick { 1_000_000 } else { 10_000_000 };
            mem::latency(
                first.first().copied().unwrap_or(0),
                &[l1 / 2, l2 / 2, l3 / 2, far],
                loads,
                &p,
            )
        }
        "disk.seq.write" | "disk.seq.read" | "disk.rand.read" => {
            let dp = disk::DiskParams {
                dir: args.state_dir.clone(),
                file_mib: if quick { 128 } else { 2048 },
                seq_inflight: 16,
                seq_sample: Duration::from_millis(if quick { 1000 } else { 2000 }),
                rand_depth: 32,
                rand_sample: Duration::from_millis(if quick { 300 } else { 2000 }),
            };
            std::fs::create_dir_all(&dp.dir)
                .map_err(|e| BenchError::io(format!("create {}", dp.dir.display()), e))?;
            // A 1 s sequential sample already averages the device over a second; taking up to
            // 4x of them on a noisy virtual disk would add 15 s per kernel to the quick suite.
            let seq = if quick {
                Protocol { max_factor: 1, ..p }
            } else {
                p
            };
            match spec.id {
                "disk.seq.write" => disk::seq_write(&dp, &seq),
                "disk.seq.read" => disk::seq_read(&dp, &seq),
                _ => disk::rand_read(&dp, &p),
            }
        }
        "net.throughput.up" | "net.throughput.down" | "net.rtt" => {
            let peer = args
                .peer
                .as_deref()
                .ok_or_else(|| BenchError::InvalidParameter("no peer".into()))?;
            let addr = peer
                .to_socket_addrs()
                .map_err(|e| BenchError::io(format!("resolve {peer}"), e))?
                .next()
                .ok_or_else(|| BenchError::InvalidParameter(format!("{peer} has no address")))?;
            let np = net::NetParams {
                peer: addr,
                streams: 4,
                omit: Duration::from_millis(if quick { 500 } else { 1000 }),
                interval: Duration::from_millis(if quick { 400 } else { 1000 }),
                rtt_probes: if quick { 200 } else { 1000 },
            };
            match spec.id {
                "net.throughput.up" => net::throughput(&np, net::Direction::Up, &p),
                "net.throughput.down" => net::throughput(&np, net::Direction::Down, &p),
                _ => net::rtt(&np, &p),
            }
        }
        "test.crash" if suite::test_faults_enabled() => {
            // SAFETY: deliberately crashing the child process (fault injection, see
            // suite::TEST_FAULTS_ENV); nothing else runs in it.
            unsafe { libc::raise(libc::SIGSEGV) };
            Err(BenchError::Verification(
                "SIGSEGV did not end the process".into(),
            ))
        }
        "test.hang" if suite::test_faults_enabled() => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
        other => Err(BenchError::InvalidParameter(format!(
            "no kernel for {other}"
        ))),
    }
}

fn run_opencl(
    spec: &Spec,
    b: &opencl::ClBench,
    args: &ChildArgs,
) -> Result<KernelResult, BenchError> {
    let quick = args.mode == Mode::Quick;
    let p = protocol(args.mode);
    let secs = if quick { 0.1 } else { 0.5 };
    match spec.id {
        "opencl.fp32" => {
            // Theoretical peak: for a CPU device the CPU formula over its compute units; a GPU's
            // would need per-architecture tables the agent does not have: recorded as unknown.
            let peak = if b.info().is_cpu {
                let isa = cpu::FmaIsa::detect();
                clock(&args.cpu).0.map(|mhz| {
                    cpu::theoretical_peak_gflops(
                        b.info().compute_units,
                        mhz,
                        isa.lanes_f32(),
                        fma_units(isa),
                    )
                })
            } else {
                None
            };
            b.fp32(secs, peak, &p)
        }
        "opencl.fp64" => b.fp64(secs, &p),
        "opencl.membw" => b.membw(if quick { 256 << 20 } else { 1 << 30 }, &p),
        "opencl.transfer" => b.transfer(if quick { 64 << 20 } else { 256 << 20 }, &p),
        "opencl.launch" => b.launch(if quick { 100 } else { 1000 }, &p),
        other => Err(BenchError::InvalidParameter(format!(
            "no OpenCL kernel for {other}"
        ))),
    }
}
