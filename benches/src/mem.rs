//! Memory kernels: STREAM copy / scale / add / triad bandwidth and pointer-chase latency.
//!
//! STREAM methodology (McCalpin): three f64 arrays `a`, `b`, `c` of `n` elements, each at least
//! 4x the total last-level cache (the caller passes the size); one pinned thread per physical core
//! works on its own contiguous slice, and **first-touches its own slice** (so pages land on its
//! NUMA node); the kernels run in STREAM's order (`c = a`, `b = s*c`, `c = a + b`,
//! `a = b + s*c`), each timed from a barrier to the next; bytes are counted as STREAM does
//! (copy/scale 16 bytes per element, add/triad 24, write-allocate traffic not counted). After
//! the run every element is checked against the scalar value the recurrence must produce.

use std::sync::Barrier;
use std::time::{Duration, Instant};

use crate::stats::{self, Protocol};
use crate::{pin_current_thread, BenchError, KernelResult, XorShift};

/// Version of the STREAM kernel.
pub const STREAM_KERNEL_VERSION: u32 = 1;
/// Version of the latency kernel.
pub const LATENCY_KERNEL_VERSION: u32 = 1;

const SCALAR: f64 = 3.0;

/// The four STREAM kernels, in STREAM's order.
pub const STREAM_KERNELS: [&str; 4] = ["copy", "scale", "add", "triad"];
const STREAM_BYTES_PER_ELEMENT: [f64; 4] = [16.0, 16.0, 24.0, 24.0];

/// A raw pointer to the arrays that threads share; each thread touches only its own range.
#[derive(Clone, Copy)]
struct Shared(*mut f64);
// SAFETY: threads only access disjoint index ranges, separated by barriers.
unsafe impl Send for Shared {}
// SAFETY: as above.
unsafe impl Sync for Shared {}

/// STREAM bandwidth (GB/s, 1e9) on `cpus` (one thread each) with `elements` f64 per array and
/// `iterations` timed rounds per sample. The main figure is triad; copy/scale/add are details.
pub fn stream(
    cpus: &[usize],
    elements: usize,
    protocol: &Protocol,
) -> Result<KernelResult, BenchError> {
    if cpus.is_empty() || elements < cpus.len() * 64 {
        return Err(BenchError::InvalidParameter(format!(
            "stream needs at least 64 elements per thread ({} threads, {elements} elements)",
            cpus.len()
        )));
    }
    let mut a = Vec::<f64>::with_capacity(elements);
    let mut b = Vec::<f64>::with_capacity(elements);
    let mut c = Vec::<f64>::with_capacity(elements);
    let ptrs = [
        Shared(a.as_mut_ptr()),
        Shared(b.as_mut_ptr()),
        Shared(c.as_mut_ptr()),
    ];
    let rounds = protocol.samples.max(1) as usize * protocol.max_factor.max(1) as usize
        + protocol.warmup as usize;
    let threads = cpus.len();
    let barrier = Barrier::new(threads);
    let per = elements.div_ceil(threads);
    // times[round][kernel]
    let times: Vec<[Duration; 4]> = std::thread::scope(|scope| {
        let handles: Vec<_> = cpus
            .iter()
            .enumerate()
            .map(|(t, &cpu)| {
                let barrier = &barrier;
                scope.spawn(move || {
                    pin_current_thread(cpu);
                    let lo = (t * per).min(elements);
                    let hi = ((t + 1) * per).min(elements);
                    let len = hi - lo;
                    // SAFETY: each thread builds slices over its own disjoint range of the
                    // three allocations (capacity `elements`), and writes every element
                    // (first touch) before any read.
                    let (a, b, c) = unsafe {
                        let mk = |p: Shared| std::slice::from_raw_parts_mut(p.0.add(lo), len);
                        for (p, v) in ptrs.iter().zip([1.0, 2.0, 0.0]) {
                            let s = p.0.add(lo);
                            for i in 0..len {
                                s.add(i).write(v);
                            }
                        }
                        (mk(ptrs[0]), mk(ptrs[1]), mk(ptrs[2]))
                    };
                    let mut out = Vec::with_capacity(rounds);
                    for _ in 0..rounds {
                        let mut round = [Duration::ZERO; 4];
                        for (k, slot) in round.iter_mut().enumerate() {
                            barrier.wait();
                            let start = Instant::now();
                            kernels::run(k, a, b, c);
                            barrier.wait();
                            *slot = start.elapsed();
                        }
                        out.push(round);
                    }
                    out
                })
            })
            .collect();
        // Thread 0's view of each barrier-to-barrier interval is the wall time of the kernel.
        let mut first = Vec::new();
        for (i, h) in handles.into_iter().enumerate() {
            match h.join() {
                Ok(v) if i == 0 => first = v,
                Ok(_) => {}
                Err(p) => std::panic::resume_unwind(p),
            }
        }
        first
    });
    // SAFETY: every element of each array was written by exactly one thread above.
    unsafe {
        a.set_len(elements);
        b.set_len(elements);
        c.set_len(elements);
    }
    verify_stream(&a, &b, &c, rounds)?;

    let bytes = |k: usize| STREAM_BYTES_PER_ELEMENT[k] * elements as f64;
    let timed = &times[protocol.warmup as usize..];
    let rate = |k: usize, round: &[Duration; 4]| bytes(k) / round[k].as_secs_f64() / 1e9;
    // The protocol's adaptive rule applied to triad over the rounds already measured: take the
    // base samples, extend while CV is high.
    let triad: Vec<f64> = timed.iter().map(|r| rate(3, r)).collect();
    let mut it = triad.iter().copied();
    let (summary, used) = stats::run(
        &Protocol {
            warmup: 0,
            ..*protocol
        },
        || -> Result<f64, BenchError> {
            it.next()
                .ok_or_else(|| BenchError::Verification("stream rounds exhausted".into()))
        },
    )?;
    let mut result = KernelResult {
        unit: "GB/s".into(),
        summary,
        details: Default::default(),
        verified: format!(
            "all {elements} elements of a, b, c equal the STREAM recurrence after {rounds} rounds"
        ),
        device: format!("memory via {threads} threads"),
    };
    for (k, name) in STREAM_KERNELS.iter().enumerate() {
        let rates: Vec<f64> = timed[..used.len()].iter().map(|r| rate(k, r)).collect();
        let best = rates.iter().copied().fold(f64::MIN, f64::max);
        let med = stats::percentile(&rates, 50.0);
        result = result
            .with(&format!("{name}_gbps_median"), med)
            .with(&format!("{name}_gbps_best"), best);
    }
    Ok(result
        .with("array_bytes", elements * 8)
        .with("threads", threads)
        .with("simd", kernels::simd_name()))
}

/// Checks every element against STREAM's scalar recurrence.
fn verify_stream(a: &[f64], b: &[f64], c: &[f64], rounds: usize) -> Result<(), BenchError> {
    let (mut ea, mut eb, mut ec) = (1.0f64, 2.0f64, 0.0f64);
    for _ in 0..rounds {
        ec = ea;
        eb = SCALAR * ec;
        ec = ea + eb;
        ea = eb + SCALAR * ec;
    }
    for (name, arr, expected) in [("a", a, ea), ("b", b, eb), ("c", c, ec)] {
        if let Some((i, v)) = arr
            .iter()
            .enumerate()
            .find(|(_, v)| ((**v - expected) / expected).abs() > 1e-13)
        {
            return Err(BenchError::Verification(format!(
                "stream {name}[{i}] = {v}, expected {expected}"
            )));
        }
    }
    Ok(())
}

/// The four kernels, compiled for AVX2 when available (runtime dispatch) so the loads and stores
/// are as wide as what the reference tools use; the loops vectorize automatically.
mod kernels {
    use super::SCALAR;

    fn body(k: usize, a: &mut [f64], b: &mut [f64], c: &mut [f64]) {
        match k {
            0 => c.copy_from_slice(a),
            1 => b
                .iter_mut()
                .zip(c.iter())
                .for_each(|(b, c)| *b = SCALAR * c),
            2 => c
                .iter_mut()
                .zip(a.iter().zip(b.iter()))
                .for_each(|(c, (a, b))| *c = a + b),
            _ => a
                .iter_mut()
                .zip(b.iter().zip(c.iter()))
                .for_each(|(a, (b, c))| *a = b + SCALAR * c),
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn body_avx2(k: usize, a: &mut [f64], b: &mut [f64], c: &mut [f64]) {
        body(k, a, b, c);
    }

    pub(super) fn run(k: usize, a: &mut [f64], b: &mut [f64], c: &mut [f64]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: avx2 detected at run time.
            return unsafe { body_avx2(k, a, b, c) };
        }
        body(k, a, b, c);
    }

    pub(super) fn simd_name() -> &'static str {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            return "avx2";
        }
        "baseline"
    }
}

/// Pointer-chase latency in ns per load at each working-set size in `sizes` (bytes): a random
/// cyclic permutation (Sattolo) of 64-byte lines, so every load depends on the previous one and
/// the prefetchers cannot guess the next line. The main figure is the largest size; each size is
/// a detail `latency_ns_<size>`.
pub fn latency(
    cpu: usize,
    sizes: &[usize],
    loads: u64,
    protocol: &Protocol,
) -> Result<KernelResult, BenchError> {
    const LINE: usize = 64;
    const STRIDE: usize = LINE / std::mem::size_of::<usize>();
    if sizes.is_empty() || sizes.iter().any(|&s| s < LINE * 2) || loads == 0 {
        return Err(BenchError::InvalidParameter(
            "latency needs sizes of at least two cache lines and loads > 0".into(),
        ));
    }
    pin_current_thread(cpu);
    let mut result = None;
    let mut details = Vec::new();
    for &size in sizes {
        let lines = size / LINE;
        let chain = sattolo_chain(lines, STRIDE);
        let (summary, _) = stats::run(protocol, || -> Result<f64, BenchError> {
            let start = Instant::now();
            let end = chase(&chain, loads);
            let ns = start.elapsed().as_secs_f64() * 1e9 / loads as f64;
            // Verification: following the cycle `loads` times from 0 lands on a known slot.
            if !end.is_multiple_of(STRIDE) || end >= chain.len() {
                return Err(BenchError::Verification(
                    "pointer chase left the chain".into(),
                ));
            }
            Ok(ns)
        })?;
        // The permutation is one cycle through all lines: check by walking it once.
        let mut p = 0;
        for _ in 0..lines {
            p = chain[p];
        }
        if p != 0 {
            return Err(BenchError::Verification(format!(
                "chain of {lines} lines is not a single cycle"
            )));
        }
        details.push((format!("latency_ns_{size}"), summary.median));
        result = Some(summary);
    }
    let summary = result.ok_or_else(|| BenchError::InvalidParameter("no sizes".into()))?;
    let mut r = KernelResult {
        unit: "ns".into(),
        summary,
        details: Default::default(),
        verified: "each chain is a single cycle through all lines".into(),
        device: format!("memory from cpu {cpu}"),
    };
    for (k, v) in details {
        r = r.with(&k, v);
    }
    Ok(r.with("loads_per_sample", loads))
}

/// Builds the chase array: `lines` slots of `stride` words; slot `i`'s first word holds the index
/// of the next slot's first word, along one random cycle through all slots.
fn sattolo_chain(lines: usize, stride: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..lines).collect();
    let mut rng = XorShift::new(0x1A7E_11C7);
    for i in (1..lines).rev() {
        let j = rng.below(i as u64) as usize; // j < i: Sattolo, one single cycle
        order.swap(i, j);
    }
    let mut chain = vec![0usize; lines * stride];
    for i in 0..lines {
        chain[i * stride] = order[i] * stride;
    }
    chain
}

#[inline(never)]
fn chase(chain: &[usize], loads: u64) -> usize {
    let mut p = 0usize;
    for _ in 0..loads {
        // Bounds-checked index: the check is predicted and off the dependency chain.
        p = chain[std::hint::black_box(p)];
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick() -> Protocol {
        Protocol {
            warmup: 1,
            samples: 3,
            max_factor: 1,
            cv_limit: 1.0,
        }
    }

    #[test]
    fn stream_small_arrays_verify() {
        let r = stream(&[0, 1], 100_000, &quick()).unwrap();
        assert_eq!(r.unit, "GB/s");
        assert!(r.summary.median > 0.0);
        for k in STREAM_KERNELS {
            assert!(r.details[&format!("{k}_gbps_best")].as_f64().unwrap() > 0.0);
        }
        assert_eq!(r.summary.samples, 3);
    }

    #[test]
    fn stream_verification_catches_wrong_values() {
        let a = vec![1.0; 10];
        let b = vec![2.0; 10];
        let c = vec![0.0; 10];
        assert!(verify_stream(&a, &b, &c, 0).is_ok());
        assert!(verify_stream(&a, &b, &c, 1).is_err());
    }

    #[test]
    fn stream_rejects_tiny_arrays() {
        assert!(stream(&[0], 10, &quick()).is_err());
        assert!(stream(&[], 1000, &quick()).is_err());
    }

    #[test]
    fn sattolo_is_one_cycle() {
        let chain = sattolo_chain(1000, 8);
        let mut seen = vec![false; 1000];
        let mut p = 0;
        for _ in 0..1000 {
            assert!(!seen[p / 8]);
            seen[p / 8] = true;
            p = chain[p];
        }
        assert_eq!(p, 0);
    }

    #[test]
    fn latency_small_sizes() {
        let r = latency(0, &[16 * 1024, 1024 * 1024], 100_000, &quick()).unwrap();
        assert_eq!(r.unit, "ns");
        assert!(r.details.contains_key("latency_ns_16384"));
        assert!(latency(0, &[8], 10, &quick()).is_err());
    }
}
