//! `fog-bench`: hardware benchmark kernels and their statistics, usable without the agent.
//!
//! Every kernel takes plain parameters (sizes, thread counts, CPU ids, durations), runs the
//! measurement protocol of [`stats`] (one untimed warm-up, at least five timed samples, extra
//! samples up to 4x while the coefficient of variation is above 3 %, `noisy` if it stays above)
//! and **verifies what it computed** before it returns a [`KernelResult`]: a kernel whose output
//! is wrong returns [`BenchError::Verification`] instead of a figure.
//!
//! Modules:
//! - [`stats`]: the sampling protocol, median / min / max / CV, percentiles.
//! - [`env`](mod@env): the environment snapshot taken before and after a run (governor, boost, steal,
//!   load, PSI), parsed from `/proc` and `/sys` text.
//! - [`cpu`]: integer (SHA-256 + LZ4 compression round-trip over a fixed pseudo-random corpus),
//!   floating point (FMA throughput with runtime ISA dispatch), the sysbench prime loop, the
//!   sustained clock and the theoretical peak.
//! - [`mem`]: STREAM copy / scale / add / triad and pointer-chase latency.
//! - [`disk`]: O_DIRECT sequential and random I/O with latency percentiles.
//! - [`net`]: the TCP peer (`bench-peer`) and the throughput / RTT client.
//! - [`opencl`]: FMA, bandwidth, transfer and launch-latency kernels per OpenCL device.
//!
//! Crate choice for the integer workload: `sha2` (RustCrypto, the most used SHA-2
//! implementation in Rust, already a workspace dependency) and `lz4_flex` (pure Rust, no C
//! build, widely used, fuzzed, stable format). Both stand for what rented compute does a lot:
//! hash and (de)compress data.

pub mod cpu;
pub mod disk;
pub mod env;
pub mod mem;
pub mod net;
pub mod opencl;
pub mod stats;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use stats::{Protocol, Summary};

/// Errors of the benchmark kernels.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The kernel computed a wrong result (the figure would be meaningless).
    #[error("verification failed: {0}")]
    Verification(String),
    /// A parameter is out of range.
    #[error("invalid parameter: {0}")]
    InvalidParameter(String),
    /// An I/O operation failed (the OS error is in the message, not repeated as a source).
    #[error("{what}: {error}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        error: std::io::Error,
    },
    /// The facility is missing here (no OpenCL device, no fp64, ...).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// An OpenCL call failed.
    #[error("opencl: {0}")]
    OpenCl(String),
}

impl BenchError {
    /// Shorthand for an I/O error with context.
    pub fn io(what: impl Into<String>, error: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            error,
        }
    }
}

/// What a kernel measured: the statistics of its main figure plus named secondary figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KernelResult {
    /// Unit of the main figure, e.g. `MB/s`, `GFLOPS`, `events/s`, `GB/s`, `ns`.
    pub unit: String,
    /// Statistics of the main figure over the timed samples.
    pub summary: Summary,
    /// Secondary figures (e.g. STREAM copy/scale/add, p99 latency, fraction of peak), each a
    /// number or a string.
    pub details: BTreeMap<String, serde_json::Value>,
    /// What the verification checked, in words (e.g. `1228 primes below 10000`).
    pub verified: String,
    /// Which device ran it (CPU list, OpenCL device name, file system path, peer address).
    pub device: String,
}

impl KernelResult {
    /// Adds a secondary figure.
    pub fn with(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.details.insert(key.to_owned(), value.into());
        self
    }
}

/// A deterministic, fast pseudo-random generator (xorshift64*), so corpora and access patterns
/// are identical on every host and run: random-looking (incompressible) but reproducible.
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    /// A generator from a seed (0 is replaced by a fixed non-zero constant).
    pub fn new(seed: u64) -> Self {
        Self(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// The next 64-bit value.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value in `0..bound` (`bound` > 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        // Multiply-shift: unbiased enough for access patterns and never divides by zero.
        ((u128::from(self.next_u64()) * u128::from(bound.max(1))) >> 64) as u64
    }

    /// Fills `buf` with pseudo-random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

/// Pins the calling thread to one logical CPU (best effort: returns whether it worked).
pub fn pin_current_thread(cpu: usize) -> bool {
    // SAFETY: cpu_set_t is plain data; CPU_ZERO/CPU_SET write inside it; sched_setaffinity reads
    // it with its exact size for the calling thread (pid 0).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        if cpu >= libc::CPU_SETSIZE as usize {
            return false;
        }
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xorshift_is_deterministic_and_bounded() {
        let mut a = XorShift::new(42);
        let mut b = XorShift::new(42);
        for _ in 0..1000 {
            let v = a.below(10);
            assert_eq!(v, b.below(10));
            assert!(v < 10);
        }
        let mut buf = [0u8; 13];
        XorShift::new(1).fill(&mut buf);
        assert!(buf.iter().any(|&x| x != 0));
    }

    #[test]
    fn pinning_to_cpu0_works_and_absurd_cpu_fails() {
        assert!(pin_current_thread(0));
        assert!(!pin_current_thread(1 << 20));
    }
}
