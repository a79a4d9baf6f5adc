//! OpenCL kernels, per device: fp32 / fp64 FMA throughput, global-memory bandwidth, host <-> device
//! transfer and kernel launch latency.
//!
//! The FMA kernel runs 8 independent chains of `float16` (`double16`) per work-item: on a CPU
//! device a single dependent chain (clpeak's kernel) stalls on FMA latency and reports a fraction
//! of what the device can do; on GPUs the extra chains cost nothing. The program is compiled once
//! per device ([`ClBench::open`]) and reused by every kernel. Kernel times come from OpenCL event
//! profiling (command start to end); transfer and launch are wall times of blocking calls, as an
//! application sees them.

use std::ptr;
use std::time::Instant;

use opencl3::command_queue::{CommandQueue, CL_QUEUE_PROFILING_ENABLE};
use opencl3::context::Context;
use opencl3::device::{get_all_devices, Device, CL_DEVICE_TYPE_ALL, CL_DEVICE_TYPE_CPU};
use opencl3::kernel::Kernel;
use opencl3::memory::{Buffer, ClMem, CL_MEM_READ_WRITE};
use opencl3::program::Program;
use opencl3::types::{cl_double, cl_float, cl_int, cl_kernel, CL_BLOCKING};
use serde::{Deserialize, Serialize};

use crate::stats::{self, Protocol};
use crate::{BenchError, KernelResult, XorShift};

/// Version of the OpenCL kernels.
pub const OPENCL_KERNEL_VERSION: u32 = 2;
const CHAINS: u32 = 8;
/// Vector width of the FMA kernels on GPUs and accelerators.
const GPU_LANES: u32 = 16;
const FMA_A: f32 = 0.999_9;
const FMA_B: f32 = 0.000_1;

const SOURCE: &str = r#"
#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
#define VF CAT(float, LANES_F)
#define CHAIN(T, k) T x##k = (T)(1.0 + k / 64.0);
#define STEP(k) x##k = fma(x##k, va, vb);

__kernel void fma_f32(__global float *out, float a, float b, int iters) {
    VF va = (VF)(a), vb = (VF)(b);
    CHAIN(VF, 0) CHAIN(VF, 1) CHAIN(VF, 2) CHAIN(VF, 3)
    CHAIN(VF, 4) CHAIN(VF, 5) CHAIN(VF, 6) CHAIN(VF, 7)
    for (int i = 0; i < iters; i++) {
        STEP(0) STEP(1) STEP(2) STEP(3) STEP(4) STEP(5) STEP(6) STEP(7)
    }
    VF s = ((x0 + x1) + (x2 + x3)) + ((x4 + x5) + (x6 + x7));
    float sum = 0.0f;
    for (int i = 0; i < LANES_F; i++) sum += ((float *)&s)[i];
    out[get_global_id(0)] = sum;
}

__kernel void copy_f4(__global const float4 *src, __global float4 *dst) {
    size_t i = get_global_id(0);
    dst[i] = src[i];
}

__kernel void bump(__global int *p) {
    p[get_global_id(0)] += 1;
}

#ifdef cl_khr_fp64
#pragma OPENCL EXTENSION cl_khr_fp64 : enable
#define VD CAT(double, LANES_D)
__kernel void fma_f64(__global double *out, double a, double b, int iters) {
    VD va = (VD)(a), vb = (VD)(b);
    CHAIN(VD, 0) CHAIN(VD, 1) CHAIN(VD, 2) CHAIN(VD, 3)
    CHAIN(VD, 4) CHAIN(VD, 5) CHAIN(VD, 6) CHAIN(VD, 7)
    for (int i = 0; i < iters; i++) {
        STEP(0) STEP(1) STEP(2) STEP(3) STEP(4) STEP(5) STEP(6) STEP(7)
    }
    VD s = ((x0 + x1) + (x2 + x3)) + ((x4 + x5) + (x6 + x7));
    double sum = 0.0;
    for (int i = 0; i < LANES_D; i++) sum += ((double *)&s)[i];
    out[get_global_id(0)] = sum;
}
#endif
"#;

/// What identifies an OpenCL device in results and cache keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceSummary {
    /// Index in the flattened list of all platforms' devices.
    pub index: usize,
    /// Device name.
    pub name: String,
    /// Device vendor.
    pub vendor: String,
    /// Driver version (part of the cache key).
    pub driver_version: String,
    /// OpenCL version string.
    pub version: String,
    /// Compute units.
    pub compute_units: u32,
    /// Maximum clock in MHz as the driver reports it.
    pub max_clock_mhz: u32,
    /// Whether the device is a CPU.
    pub is_cpu: bool,
    /// Whether fp64 is supported.
    pub fp64: bool,
    /// PCI address where a vendor extension exposes it (NVIDIA, AMD, `cl_khr_pci_bus_info`).
    #[serde(default)]
    pub pci_bus_id: Option<String>,
}

/// `CL_DEVICE_PCI_DOMAIN_ID_NV` (cl_nv_device_attribute_query).
const CL_DEVICE_PCI_DOMAIN_ID_NV: u32 = 0x400A;

/// The PCI address (`dddd:bb:dd.f`, lowercase hex) through whichever vendor extension the
/// device offers (`extensions` = its `CL_DEVICE_EXTENSIONS`); `None` when none does. The
/// inventory and the NVML health records around OpenCL runs both key GPUs by it.
pub fn pci_bus_id(device: &Device, extensions: &str) -> Option<String> {
    let has = |ext: &str| extensions.split_whitespace().any(|e| e == ext);
    if has("cl_khr_pci_bus_info") {
        if let Ok(i) = device.pcibusinfokhr_intel() {
            return Some(bus_id_from_parts(
                i.pci_domain,
                i.pci_bus,
                i.pci_device,
                i.pci_function,
            ));
        }
    }
    if has("cl_nv_device_attribute_query") {
        let bus = device.pci_bus_id_nv().ok()?;
        let slot = device.pci_slot_id_nv().ok()?;
        let domain = device
            .get_data(CL_DEVICE_PCI_DOMAIN_ID_NV)
            .ok()
            .and_then(|b| b.get(..4).and_then(|s| s.try_into().ok()))
            .map(u32::from_ne_bytes)
            .unwrap_or(0);
        return Some(nv_bus_id(domain, bus, slot));
    }
    if has("cl_amd_device_attribute_query") {
        let t = device.topology_amd().ok()?;
        return Some(bus_id_from_parts(
            0,
            t.bus.into(),
            t.device.into(),
            t.function.into(),
        ));
    }
    None
}

/// NVIDIA's slot id packs `device << 3 | function`.
pub fn nv_bus_id(domain: u32, bus: u32, slot: u32) -> String {
    bus_id_from_parts(domain, bus, slot >> 3, slot & 7)
}

/// `dddd:bb:dd.f`, as the inventory writes PCI addresses.
fn bus_id_from_parts(domain: u32, bus: u32, device: u32, function: u32) -> String {
    format!("{domain:04x}:{bus:02x}:{device:02x}.{function:x}")
}

fn cl(what: &str) -> impl FnOnce(opencl3::error_codes::ClError) -> BenchError + '_ {
    move |e| BenchError::OpenCl(format!("{what}: {e}"))
}

fn summarize(index: usize, d: &Device) -> Result<DeviceSummary, BenchError> {
    Ok(DeviceSummary {
        index,
        name: d.name().map_err(cl("device name"))?.trim().to_owned(),
        vendor: d.vendor().map_err(cl("device vendor"))?.trim().to_owned(),
        driver_version: d
            .driver_version()
            .map_err(cl("driver version"))?
            .trim()
            .to_owned(),
        version: d.version().map_err(cl("device version"))?.trim().to_owned(),
        compute_units: d.max_compute_units().map_err(cl("compute units"))?,
        max_clock_mhz: d.max_clock_frequency().map_err(cl("clock"))?,
        is_cpu: d.dev_type().map_err(cl("device type"))? & CL_DEVICE_TYPE_CPU != 0,
        fp64: d.double_fp_config().map(|c| c != 0).unwrap_or(false),
        pci_bus_id: d.extensions().ok().and_then(|ext| pci_bus_id(d, &ext)),
    })
}

/// Every OpenCL device of every platform (empty when the loader finds no platform).
pub fn list_devices() -> Result<Vec<DeviceSummary>, BenchError> {
    let ids = match get_all_devices(CL_DEVICE_TYPE_ALL) {
        Ok(ids) => ids,
        // -1001 CL_PLATFORM_NOT_FOUND_KHR: an ICD loader without any platform.
        Err(e) if e.0 == -1001 => return Ok(Vec::new()),
        Err(e) => return Err(BenchError::OpenCl(format!("enumerate devices: {e}"))),
    };
    ids.into_iter()
        .enumerate()
        .map(|(i, id)| summarize(i, &Device::new(id)))
        .collect()
}

/// One device with its context, profiling queue and compiled program.
#[derive(Debug)]
pub struct ClBench {
    info: DeviceSummary,
    /// Vector width of the fp32 / fp64 FMA kernels on this device.
    lanes: Lanes,
    context: Context,
    queue: CommandQueue,
    program: Program,
    max_alloc: u64,
}

impl ClBench {
    /// Opens device `index` of [`list_devices`] and compiles the kernels for it (once).
    pub fn open(index: usize) -> Result<Self, BenchError> {
        let ids = get_all_devices(CL_DEVICE_TYPE_ALL).map_err(cl("enumerate devices"))?;
        let id = *ids
            .get(index)
            .ok_or_else(|| BenchError::Unsupported(format!("no OpenCL device {index}")))?;
        let device = Device::new(id);
        let info = summarize(index, &device)?;
        let max_alloc = device.max_mem_alloc_size().map_err(cl("max alloc size"))?;
        let lanes = Lanes::for_device(&device, info.is_cpu);
        let context = Context::from_device(&device).map_err(cl("create context"))?;
        #[allow(deprecated)]
        let queue = CommandQueue::create_default(&context, CL_QUEUE_PROFILING_ENABLE)
            .map_err(cl("create queue"))?;
        let options = format!(
            "-cl-mad-enable -DLANES_F={} -DLANES_D={}",
            lanes.f32, lanes.f64
        );
        let program = Program::create_and_build_from_source(&context, SOURCE, &options)
            .map_err(|log| BenchError::OpenCl(format!("build kernels: {log}")))?;
        Ok(Self {
            info,
            lanes,
            context,
            queue,
            program,
            max_alloc,
        })
    }

    /// The device.
    pub fn info(&self) -> &DeviceSummary {
        &self.info
    }

    fn kernel(&self, name: &str) -> Result<Kernel, BenchError> {
        Kernel::create(&self.program, name).map_err(cl(name))
    }

    fn run(&self, k: &Kernel, global: usize) -> Result<f64, BenchError> {
        let g = [global];
        // SAFETY: the kernel's arguments were all set by the caller; the work size array lives
        // across the call.
        let ev = unsafe {
            self.queue.enqueue_nd_range_kernel(
                k.get() as cl_kernel,
                1,
                ptr::null(),
                g.as_ptr(),
                ptr::null(),
                &[],
            )
        }
        .map_err(cl("enqueue kernel"))?;
        ev.wait().map_err(cl("wait for kernel"))?;
        let start = ev
            .profiling_command_start()
            .map_err(cl("profiling start"))?;
        let end = ev.profiling_command_end().map_err(cl("profiling end"))?;
        Ok(end.saturating_sub(start) as f64 * 1e-9)
    }

    fn result(&self, unit: &str, summary: stats::Summary, verified: String) -> KernelResult {
        KernelResult {
            unit: unit.into(),
            summary,
            details: Default::default(),
            verified,
            device: format!("opencl:{} {}", self.info.index, self.info.name),
        }
        .with("driver_version", self.info.driver_version.clone())
        .with("compute_units", self.info.compute_units)
        .with("max_clock_mhz", self.info.max_clock_mhz)
    }

    /// fp32 FMA throughput in GFLOPS; `peak_gflops` adds `fraction_of_peak`.
    pub fn fp32(
        &self,
        target_seconds: f64,
        peak_gflops: Option<f64>,
        protocol: &Protocol,
    ) -> Result<KernelResult, BenchError> {
        self.fma::<cl_float>(
            "fma_f32",
            self.lanes.f32,
            target_seconds,
            peak_gflops,
            protocol,
        )
    }

    /// fp64 FMA throughput in GFLOPS ([`BenchError::Unsupported`] without fp64).
    pub fn fp64(
        &self,
        target_seconds: f64,
        protocol: &Protocol,
    ) -> Result<KernelResult, BenchError> {
        if !self.info.fp64 {
            return Err(BenchError::Unsupported(format!(
                "{} has no fp64",
                self.info.name
            )));
        }
        self.fma::<cl_double>("fma_f64", self.lanes.f64, target_seconds, None, protocol)
    }

    fn fma<T: FmaScalar>(
        &self,
        name: &str,
        lanes: u32,
        target_seconds: f64,
        peak_gflops: Option<f64>,
        protocol: &Protocol,
    ) -> Result<KernelResult, BenchError> {
        let global = (self.info.compute_units.max(1) as usize) * 256;
        // SAFETY: a device buffer of `global` elements, no host pointer.
        let out = unsafe {
            Buffer::<T>::create(&self.context, CL_MEM_READ_WRITE, global, ptr::null_mut())
        }
        .map_err(cl("create buffer"))?;
        let k = self.kernel(name)?;
        let (a, b) = (T::from_f32(FMA_A), T::from_f32(FMA_B));
        let set = |iters: cl_int| -> Result<(), BenchError> {
            // SAFETY: argument types match the kernel signature (buffer, T, T, int).
            unsafe {
                k.set_arg(0, &out.get()).map_err(cl("arg 0"))?;
                k.set_arg(1, &a).map_err(cl("arg 1"))?;
                k.set_arg(2, &b).map_err(cl("arg 2"))?;
                k.set_arg(3, &iters).map_err(cl("arg 3"))?;
            }
            Ok(())
        };
        // Verify on a short run, then calibrate the iteration count to the target time.
        let check_iters = 1000;
        set(check_iters)?;
        let t = self.run(&k, global)?.max(1e-6);
        let mut host = vec![T::from_f32(0.0); global];
        // SAFETY: blocking read into a host slice of exactly the buffer's length.
        unsafe {
            self.queue
                .enqueue_read_buffer(&out, CL_BLOCKING, 0, &mut host, &[])
        }
        .map_err(cl("read result"))?;
        let expected = T::expected(check_iters as u32, lanes);
        if let Some((i, v)) = host
            .iter()
            .enumerate()
            .find(|(_, v)| !T::close(**v, expected))
        {
            return Err(BenchError::Verification(format!(
                "work-item {i}: {} instead of {}",
                v.to_f64(),
                expected.to_f64()
            )));
        }
        let iters =
            ((f64::from(check_iters) * target_seconds / t) as cl_int).clamp(check_iters, 1 << 24);
        set(iters)?;
        let flops = global as f64 * f64::from(iters) * f64::from(flops_per_item_iter(lanes));
        let (summary, _) = stats::run(protocol, || {
            Ok::<_, BenchError>(flops / self.run(&k, global)? / 1e9)
        })?;
        let mut r = self
            .result("GFLOPS", summary, format!("{check_iters}-iteration run equals the host's fused recurrence on all {global} work-items"))
            .with("precision", T::NAME)
            .with("chains", CHAINS)
            .with("vector_width", lanes)
            .with("work_items", global)
            .with("iterations", iters);
        if let Some(peak) = peak_gflops.filter(|p| *p > 0.0) {
            let frac = r.summary.median / peak;
            r = r.with("peak_gflops", peak).with("fraction_of_peak", frac);
        }
        Ok(r)
    }

    /// Device global-memory copy bandwidth in GB/s (read + write bytes counted).
    pub fn membw(&self, bytes: usize, protocol: &Protocol) -> Result<KernelResult, BenchError> {
        let bytes = bytes.min(self.max_alloc as usize) / 16 * 16;
        let n = bytes / 4;
        if n < 4 {
            return Err(BenchError::InvalidParameter(
                "membw buffer too small".into(),
            ));
        }
        let mut host = vec![0f32; n];
        let mut rng = XorShift::new(77);
        host.iter_mut().for_each(|x| *x = rng.below(1 << 20) as f32);
        // SAFETY: device buffers of n floats, no host pointer.
        let mut src = unsafe {
            Buffer::<cl_float>::create(&self.context, CL_MEM_READ_WRITE, n, ptr::null_mut())
        }
        .map_err(cl("create source buffer"))?;
        // SAFETY: as above.
        let dst = unsafe {
            Buffer::<cl_float>::create(&self.context, CL_MEM_READ_WRITE, n, ptr::null_mut())
        }
        .map_err(cl("create destination buffer"))?;
        // SAFETY: blocking write of exactly n floats.
        unsafe {
            self.queue
                .enqueue_write_buffer(&mut src, CL_BLOCKING, 0, &host, &[])
        }
        .map_err(cl("write source"))?;
        let k = self.kernel("copy_f4")?;
        // SAFETY: two buffer arguments as declared.
        unsafe {
            k.set_arg(0, &src.get()).map_err(cl("arg 0"))?;
            k.set_arg(1, &dst.get()).map_err(cl("arg 1"))?;
        }
        let global = n / 4;
        let (summary, _) = stats::run(protocol, || {
            Ok::<_, BenchError>(2.0 * (global * 16) as f64 / self.run(&k, global)? / 1e9)
        })?;
        let mut back = vec![0f32; n];
        // SAFETY: blocking read of exactly n floats.
        unsafe {
            self.queue
                .enqueue_read_buffer(&dst, CL_BLOCKING, 0, &mut back, &[])
        }
        .map_err(cl("read copy"))?;
        if back != host {
            return Err(BenchError::Verification(
                "device copy differs from its source".into(),
            ));
        }
        Ok(self
            .result("GB/s", summary, "copied buffer equals its source".into())
            .with("buffer_bytes", n * 4))
    }

    /// Host -> device (main figure) and device -> host transfer in GB/s with blocking calls.
    pub fn transfer(&self, bytes: usize, protocol: &Protocol) -> Result<KernelResult, BenchError> {
        let n = (bytes.min(self.max_alloc as usize) / 4).max(1);
        let mut host = vec![0f32; n];
        let mut rng = XorShift::new(78);
        host.iter_mut().for_each(|x| *x = rng.below(1 << 20) as f32);
        // SAFETY: a device buffer of n floats.
        let mut buf = unsafe {
            Buffer::<cl_float>::create(&self.context, CL_MEM_READ_WRITE, n, ptr::null_mut())
        }
        .map_err(cl("create buffer"))?;
        let gb = (n * 4) as f64 / 1e9;
        let (summary, _) = stats::run(protocol, || -> Result<f64, BenchError> {
            let t = Instant::now();
            // SAFETY: blocking write of exactly n floats.
            unsafe {
                self.queue
                    .enqueue_write_buffer(&mut buf, CL_BLOCKING, 0, &host, &[])
            }
            .map_err(cl("write buffer"))?;
            Ok(gb / t.elapsed().as_secs_f64())
        })?;
        let mut back = vec![0f32; n];
        let mut d2h = Vec::new();
        for _ in 0..summary.samples {
            let t = Instant::now();
            // SAFETY: blocking read of exactly n floats.
            unsafe {
                self.queue
                    .enqueue_read_buffer(&buf, CL_BLOCKING, 0, &mut back, &[])
            }
            .map_err(cl("read buffer"))?;
            d2h.push(gb / t.elapsed().as_secs_f64());
        }
        if back != host {
            return Err(BenchError::Verification(
                "transfer round-trip changed the data".into(),
            ));
        }
        Ok(self
            .result(
                "GB/s",
                summary,
                "host -> device -> host round-trip equal".into(),
            )
            .with("direction", "host_to_device")
            .with("device_to_host_gbps_median", stats::percentile(&d2h, 50.0))
            .with("buffer_bytes", n * 4))
    }

    /// Kernel launch latency in µs: wall time of enqueue + wait of a one-work-item kernel, as
    /// the mean over `launches` per sample.
    pub fn launch(&self, launches: u32, protocol: &Protocol) -> Result<KernelResult, BenchError> {
        let launches = launches.max(1);
        // SAFETY: a device buffer of one int.
        let mut buf = unsafe {
            Buffer::<cl_int>::create(&self.context, CL_MEM_READ_WRITE, 1, ptr::null_mut())
        }
        .map_err(cl("create buffer"))?;
        // SAFETY: blocking write of one int.
        unsafe {
            self.queue
                .enqueue_write_buffer(&mut buf, CL_BLOCKING, 0, &[0], &[])
        }
        .map_err(cl("zero counter"))?;
        let k = self.kernel("bump")?;
        // SAFETY: one buffer argument as declared.
        unsafe { k.set_arg(0, &buf.get()) }.map_err(cl("arg 0"))?;
        let mut total: u64 = 0;
        let (summary, _) = stats::run(protocol, || -> Result<f64, BenchError> {
            let t = Instant::now();
            for _ in 0..launches {
                self.run(&k, 1)?;
            }
            total += u64::from(launches);
            Ok(t.elapsed().as_secs_f64() * 1e6 / f64::from(launches))
        })?;
        let mut back = [0 as cl_int];
        // SAFETY: blocking read of one int.
        unsafe {
            self.queue
                .enqueue_read_buffer(&buf, CL_BLOCKING, 0, &mut back, &[])
        }
        .map_err(cl("read counter"))?;
        if u64::try_from(back[0]).ok() != Some(total) {
            return Err(BenchError::Verification(format!(
                "counter is {} after {total} launches",
                back[0]
            )));
        }
        Ok(self
            .result(
                "µs",
                summary,
                format!("counter incremented by each of {total} launches"),
            )
            .with("launches_per_sample", launches))
    }
}

/// The scalar types the FMA kernel runs on.
trait FmaScalar: Copy + PartialEq {
    const NAME: &'static str;
    fn from_f32(v: f32) -> Self;
    fn to_f64(self) -> f64;
    /// The value each work-item must write after `iters` iterations.
    fn expected(iters: u32, lanes: u32) -> Self;
    fn close(a: Self, b: Self) -> bool;
}

impl FmaScalar for cl_float {
    const NAME: &'static str = "fp32";
    fn from_f32(v: f32) -> Self {
        v
    }
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
    fn expected(iters: u32, lanes: u32) -> Self {
        let chain = |k: u32| {
            let mut x = 1.0f32 + k as f32 / 64.0;
            for _ in 0..iters {
                x = x.mul_add(FMA_A, FMA_B);
            }
            x
        };
        (0..CHAINS).map(chain).sum::<f32>() * lanes as f32
    }
    fn close(a: Self, b: Self) -> bool {
        ((a - b) / b).abs() < 1e-5
    }
}

impl FmaScalar for cl_double {
    const NAME: &'static str = "fp64";
    fn from_f32(v: f32) -> Self {
        f64::from(v)
    }
    fn to_f64(self) -> f64 {
        self
    }
    fn expected(iters: u32, lanes: u32) -> Self {
        let (a, b) = (f64::from(FMA_A), f64::from(FMA_B));
        let chain = |k: u32| {
            let mut x = 1.0f64 + f64::from(k) / 64.0;
            for _ in 0..iters {
                x = x.mul_add(a, b);
            }
            x
        };
        (0..CHAINS).map(chain).sum::<f64>() * f64::from(lanes)
    }
    fn close(a: Self, b: Self) -> bool {
        ((a - b) / b).abs() < 1e-12
    }
}

/// Number of FLOPs per work-item and iteration of the FMA kernel at vector width `lanes`.
pub fn flops_per_item_iter(lanes: u32) -> u32 {
    CHAINS * lanes * 2
}

/// Vector widths of the FMA kernels on one device.
///
/// On a CPU device the vector type matches the device's native SIMD width (PoCL: 8 floats with
/// AVX2, 16 with AVX-512), so the 8 independent chains fill the register file without spilling:
/// `float16` on AVX2 needs 16 ymm accumulators plus operands, more than the 16 registers there
/// are, and measured half of the peak on a Zen 3 core. GPUs keep `float16` / `double16` (their
/// parallelism comes from work-items; the wide type only adds independent work per item).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Lanes {
    f32: u32,
    f64: u32,
}

impl Lanes {
    fn for_device(device: &Device, is_cpu: bool) -> Self {
        if !is_cpu {
            return Self {
                f32: GPU_LANES,
                f64: GPU_LANES,
            };
        }
        let pick = |native: Option<u32>| match native {
            Some(w @ (4 | 8 | 16)) => w,
            Some(w) if w > 16 => 16,
            _ => 4,
        };
        Self {
            f32: pick(device.native_vector_width_float().ok()),
            f64: pick(device.native_vector_width_double().ok()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick() -> Protocol {
        Protocol {
            warmup: 1,
            samples: 2,
            max_factor: 1,
            cv_limit: 1.0,
        }
    }

    /// Runs on PoCL (installed on this machine and in CI); outside CI, skips with a message when
    /// there is no device.
    #[test]
    fn all_kernels_on_every_device() {
        let devices = list_devices().unwrap();
        if devices.is_empty() {
            // CI installs PoCL: there a missing device is a broken setup, not a skip.
            let in_ci =
                std::env::var("CI").is_ok_and(|v| !matches!(v.as_str(), "" | "0" | "false"));
            assert!(!in_ci, "no OpenCL device in CI (PoCL is part of the setup)");
            eprintln!("skipped: all_kernels_on_every_device: no OpenCL device");
            return;
        }
        for d in devices {
            let b = ClBench::open(d.index).unwrap();
            let r = b.fp32(0.02, Some(1e6), &quick()).unwrap();
            assert!(r.summary.median > 0.0);
            assert!(r.details.contains_key("fraction_of_peak"));
            if d.fp64 {
                assert!(b.fp64(0.02, &quick()).unwrap().summary.median > 0.0);
            }
            assert!(b.membw(4 << 20, &quick()).unwrap().summary.median > 0.0);
            assert!(b.transfer(4 << 20, &quick()).unwrap().summary.median > 0.0);
            let l = b.launch(20, &quick()).unwrap();
            assert_eq!(l.unit, "µs");
        }
    }

    #[test]
    fn expected_values_are_finite_and_distinct() {
        let a = <cl_float as FmaScalar>::expected(10, 8);
        let b = <cl_float as FmaScalar>::expected(11, 8);
        assert!(a.is_finite() && a != b);
        assert!(<cl_double as FmaScalar>::close(1.0, 1.0 + 1e-14));
        assert!(!<cl_double as FmaScalar>::close(1.0, 1.001));
        assert_eq!(flops_per_item_iter(16), 256);
        assert_eq!(flops_per_item_iter(8), 128);
    }
}
