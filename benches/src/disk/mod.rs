//! Storage kernels: O_DIRECT sequential write / read with 1 MiB blocks and random 4 KiB reads.
//!
//! Queue depth comes from io_uring (the private `uring` module): one thread keeps `inflight`
//! requests in flight, as fio's `libaio` engine (the reference) does. Where the kernel refuses
//! io_uring (seccomp, `kernel.io_uring_disabled`), `inflight` threads each issue blocking
//! `pwrite`/`pread` at queue depth 1 instead (fio's `psync` with `numjobs`); the result's
//! `engine` says which ran. Buffers are 4 KiB aligned, the file is opened with `O_DIRECT` (no
//! page cache) and filled with random, incompressible data in which every 1 MiB block carries
//! its own index, so reads verify both contents and position. The file lives in the directory
//! the caller gives (the agent's state dir) and is removed when [`TestFile`] drops, also on error
//! or panic.
//!
//! The file is laid out as fio lays out its own: written once sequentially through the page
//! cache and synced before any measured request, so measured writes overwrite allocated blocks
//! and reads see the file system's ordinary contiguous extents. (A file grown by concurrent
//! O_DIRECT appends measured ~30% fewer random-read IOPS with fio itself on this VM.)
//!
//! Buffers come from one [`AlignedBuf`] per run, in transparent huge pages where the kernel grants
//! them. A 1 MiB request from scattered 4 KiB pages is 256 segments; a virtio disk without
//! indirect descriptors (Firecracker's) takes at most 254 per request and 256 descriptors in all,
//! so the request is split in two and fills the whole virtqueue, and throughput then depends on
//! how contiguous the pages happen to be (on the CI VM's disk 0.9-1.1 GB/s of reads with 4 KiB
//! pages, 2.4-2.9 GB/s with huge pages). The result's `transparent_huge_pages` is the kernel's
//! setting (`never`: 4 KiB pages).
//!
//! Every sample is time-based, as a fio job with `time_based` and `runtime`: requests are issued
//! for the sample's duration (sequential ones wrap around the file without draining the queue)
//! and the sample is timed from its first request to its last completion. Buffer allocation
//! before the first request is not timed. Writes are timed to their last completion, as fio's
//! default (no `end_fsync`) is; the `fdatasync` after each sample is not timed.

use std::alloc::Layout;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::stats::{self, Protocol};
use crate::{BenchError, KernelResult, XorShift};

mod uring;

/// Version of the disk kernels.
pub const DISK_KERNEL_VERSION: u32 = 6;
/// Sequential block size.
pub const SEQ_BLOCK: usize = 1 << 20;
/// Random read size.
pub const RAND_BLOCK: usize = 4096;
const ALIGN: usize = 4096;
/// The size of a transparent huge page (x86-64, and arm64 with 4 KiB pages).
const HUGE_PAGE: usize = 2 << 20;
const POOL: usize = 8;

/// A heap buffer aligned for O_DIRECT.
#[derive(Debug)]
pub struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: the buffer is exclusively owned plain bytes.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes aligned to 4 KiB. One whose length is a multiple of 2 MiB
    /// is aligned to 2 MiB and asks for transparent huge pages (`MADV_HUGEPAGE`) before it is
    /// first touched, so that where the kernel grants them every 2 MiB of it is one physically
    /// contiguous page (see the module doc); elsewhere its pages stay 4 KiB.
    pub fn new(len: usize) -> Result<Self, BenchError> {
        let layout = Self::layout(len)?;
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { std::alloc::alloc(layout) };
        let ptr = std::ptr::NonNull::new(raw)
            .ok_or_else(|| BenchError::InvalidParameter(format!("cannot allocate {len} bytes")))?;
        if layout.align() == HUGE_PAGE {
            // Advice only: refused (THP off), the pages are 4 KiB.
            // SAFETY: the range is this allocation, not yet touched.
            unsafe { libc::madvise(raw.cast(), layout.size(), libc::MADV_HUGEPAGE) };
        }
        // SAFETY: raw is valid for layout.size() bytes.
        unsafe { raw.write_bytes(0, layout.size()) };
        Ok(Self { ptr, len })
    }

    fn layout(len: usize) -> Result<Layout, BenchError> {
        let align = if len > 0 && len.is_multiple_of(HUGE_PAGE) {
            HUGE_PAGE
        } else {
            ALIGN
        };
        Layout::from_size_align(len.max(ALIGN), align)
            .map_err(|e| BenchError::InvalidParameter(format!("buffer of {len} bytes: {e}")))
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr is valid for len initialized bytes while self lives.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self guarantees exclusivity.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if let Ok(layout) = Self::layout(self.len) {
            // SAFETY: allocated in `new` with this same layout.
            unsafe { std::alloc::dealloc(self.ptr.as_ptr(), layout) };
        }
    }
}

/// What a timed run moved, and the time from its first request to its last completion.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transfer {
    /// Bytes read or written.
    pub bytes: u64,
    /// From the first request to the last completion (buffer setup before it is not timed).
    pub elapsed: Duration,
}

impl Transfer {
    /// Throughput in MB/s (1e6 bytes).
    pub fn mbps(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64() / 1e6
    }
}

/// The benchmark file: created in a directory, removed on drop.
pub struct TestFile {
    path: PathBuf,
    file: File,
    blocks: usize,
    pool: Vec<Vec<u8>>,
    /// `None` when the kernel refused io_uring (then threads), with the reason.
    ring: std::sync::Mutex<Result<io_uring::IoUring, String>>,
}

/// Which engine [`TestFile`] uses, for the result's details.
pub fn engine_name(ring_ok: bool) -> &'static str {
    if ring_ok {
        "O_DIRECT io_uring, one thread, requests in flight = queue depth (as fio libaio)"
    } else {
        "O_DIRECT pread/pwrite, one thread per request in flight (io_uring refused)"
    }
}

impl std::fmt::Debug for TestFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestFile")
            .field("path", &self.path)
            .field("blocks", &self.blocks)
            .field("io_uring", &self.uses_io_uring())
            .finish_non_exhaustive()
    }
}

impl Drop for TestFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl TestFile {
    /// Creates `fog-bench-disk-<pid>.tmp` of `blocks` MiB in `dir`, lays it out (see the module
    /// doc) and opens it with O_DIRECT.
    pub fn create(dir: &Path, blocks: usize) -> Result<Self, BenchError> {
        if blocks == 0 {
            return Err(BenchError::InvalidParameter("disk file of 0 blocks".into()));
        }
        let path = dir.join(format!("fog-bench-disk-{}.tmp", std::process::id()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
            .map_err(|e| {
                let what = format!("open {} with O_DIRECT", path.display());
                if e.raw_os_error() == Some(libc::EINVAL) {
                    BenchError::Unsupported(format!("{what}: the file system refuses O_DIRECT"))
                } else {
                    BenchError::io(what, e)
                }
            })?;
        let mut rng = XorShift::new(0xD15C);
        let pool = (0..POOL)
            .map(|_| {
                let mut b = vec![0u8; SEQ_BLOCK];
                rng.fill(&mut b);
                b
            })
            .collect();
        let ring = uring::ring(64).map_err(|e| format!("io_uring refused: {e}"));
        let file = Self {
            path,
            file,
            blocks,
            pool,
            ring: std::sync::Mutex::new(ring),
        };
        file.lay_out()?;
        Ok(file)
    }

    /// Writes every block once, sequentially and buffered, then syncs and drops the cached
    /// pages, as fio's layout does.
    fn lay_out(&self) -> Result<(), BenchError> {
        use std::io::Write;
        let err = |what: &str| {
            let what = format!("{what} {}", self.path.display());
            move |e| BenchError::io(what, e)
        };
        let buffered = OpenOptions::new()
            .write(true)
            .open(&self.path)
            .map_err(err("open (buffered)"))?;
        let mut out = std::io::BufWriter::with_capacity(SEQ_BLOCK, &buffered);
        let mut block = vec![0u8; SEQ_BLOCK];
        for i in 0..self.blocks {
            self.expected_block(i, &mut block);
            out.write_all(&block).map_err(err("write"))?;
        }
        out.flush().map_err(err("write"))?;
        drop(out);
        buffered.sync_all().map_err(err("fsync"))?;
        // Clean pages would only take memory; O_DIRECT requests do not use them.
        // SAFETY: plain syscall on a valid fd.
        let rc = unsafe {
            libc::posix_fadvise(
                std::os::fd::AsRawFd::as_raw_fd(&buffered),
                0,
                0,
                libc::POSIX_FADV_DONTNEED,
            )
        };
        if rc != 0 {
            return Err(BenchError::io(
                format!("posix_fadvise {}", self.path.display()),
                std::io::Error::from_raw_os_error(rc),
            ));
        }
        Ok(())
    }

    /// Whether requests go through io_uring (else threads).
    pub fn uses_io_uring(&self) -> bool {
        self.ring.lock().map(|r| r.is_ok()).unwrap_or(false)
    }

    /// Runs `f` with the ring, or returns `None` when there is none (threads then).
    fn with_ring<T>(&self, f: impl FnOnce(&mut io_uring::IoUring) -> T) -> Option<T> {
        let mut guard = self.ring.lock().ok()?;
        guard.as_mut().ok().map(f)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size in bytes.
    pub fn bytes(&self) -> u64 {
        (self.blocks * SEQ_BLOCK) as u64
    }

    /// Expected content of block `i`: pool block `i % POOL` with `i` in its first 8 bytes.
    fn expected_block(&self, i: usize, out: &mut [u8]) {
        out.copy_from_slice(&self.pool[i % POOL]);
        out[..8].copy_from_slice(&(i as u64).to_le_bytes());
    }

    /// Checks that `got` is block `i` as [`Self::expected_block`] makes it, comparing in place
    /// (no copy of the expected block: the check stays far cheaper than the read it follows).
    fn verify_block(&self, i: usize, got: &[u8]) -> Result<(), BenchError> {
        let (index, rest) = got.split_at(8);
        if index == (i as u64).to_le_bytes() && rest == &self.pool[i % POOL][8..] {
            Ok(())
        } else {
            Err(BenchError::Verification(format!(
                "block {i} read back differs from what was written"
            )))
        }
    }

    /// Writes blocks in order for `time`, wrapping around the file, with `inflight` requests in
    /// flight, then `fdatasync` (not timed, as fio without `end_fsync`).
    pub fn write_for(&self, inflight: usize, time: Duration) -> Result<Transfer, BenchError> {
        let transfer = self.seq(uring::Op::Write, inflight, time, usize::MAX)?;
        self.file
            .sync_data()
            .map_err(|e| BenchError::io(format!("fdatasync {}", self.path.display()), e))?;
        Ok(transfer)
    }

    /// Reads blocks in order for `time`, wrapping around the file, with `inflight` requests in
    /// flight, verifying each.
    pub fn read_for(&self, inflight: usize, time: Duration) -> Result<Transfer, BenchError> {
        self.seq(uring::Op::Read, inflight, time, usize::MAX)
    }

    /// Reads every block once with `inflight` requests in flight, verifying each.
    pub fn read_all(&self, inflight: usize) -> Result<(), BenchError> {
        self.seq(uring::Op::Read, inflight, Duration::MAX, self.blocks)
            .map(drop)
    }

    /// `op` on blocks 0, 1, ... (modulo the file's blocks) for `time` or `requests` requests,
    /// whichever ends first: writes carry [`Self::expected_block`], reads are verified.
    fn seq(
        &self,
        op: uring::Op,
        inflight: usize,
        time: Duration,
        requests: usize,
    ) -> Result<Transfer, BenchError> {
        let (count, elapsed) = match self.seq_ring(op, inflight, time, requests) {
            Some(r) => r?,
            None => self.seq_threads(op, inflight, time, requests)?,
        };
        Ok(Transfer {
            bytes: (count * SEQ_BLOCK) as u64,
            elapsed,
        })
    }

    /// [`Self::seq`] through the ring: (requests completed, time). `None` without a ring.
    fn seq_ring(
        &self,
        op: uring::Op,
        inflight: usize,
        time: Duration,
        requests: usize,
    ) -> Option<Result<(usize, Duration), BenchError>> {
        let mut issued = 0;
        self.with_ring(|ring| {
            let elapsed = uring::run(
                ring,
                &self.file,
                inflight,
                SEQ_BLOCK,
                time,
                |_, buf| {
                    (issued < requests).then(|| {
                        let block = issued % self.blocks;
                        issued += 1;
                        if op == uring::Op::Write {
                            self.expected_block(block, buf);
                        }
                        seq_request(block, op)
                    })
                },
                |req, buf, _| match op {
                    uring::Op::Read => self.verify_block(block_of(req.offset), buf),
                    uring::Op::Write => Ok(()),
                },
            )?;
            // Every issued request completed (run returns an error otherwise).
            Ok((issued, elapsed))
        })
    }

    /// [`Self::seq`] with one thread per request in flight, each at queue depth 1.
    fn seq_threads(
        &self,
        op: uring::Op,
        inflight: usize,
        time: Duration,
        requests: usize,
    ) -> Result<(usize, Duration), BenchError> {
        let next = AtomicUsize::new(0);
        let (counts, elapsed) = self.parallel(inflight, SEQ_BLOCK, time, |_, buf, clock| {
            let mut done = 0;
            while !clock.is_up() {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= requests {
                    break;
                }
                self.blocking_request(op, n % self.blocks, buf)?;
                done += 1;
            }
            Ok(done)
        })?;
        Ok((counts.into_iter().sum(), elapsed))
    }

    /// One blocking request for block `block`: write its content, or read and verify it.
    fn blocking_request(
        &self,
        op: uring::Op,
        block: usize,
        buf: &mut [u8],
    ) -> Result<(), BenchError> {
        let offset = (block * SEQ_BLOCK) as u64;
        let failed = |call: &str, e| BenchError::io(format!("{call} {}", self.path.display()), e);
        match op {
            uring::Op::Write => {
                self.expected_block(block, buf);
                self.file
                    .write_all_at(buf, offset)
                    .map_err(|e| failed("pwrite", e))
            }
            uring::Op::Read => {
                self.file
                    .read_exact_at(buf, offset)
                    .map_err(|e| failed("pread", e))?;
                self.verify_block(block, buf)
            }
        }
    }

    /// Random 4 KiB reads for `time` at queue depth `depth`; returns (ops, time from the first
    /// request to the last completion, every latency in µs). Each read is verified against the
    /// written content.
    pub fn random_reads(
        &self,
        depth: usize,
        time: Duration,
        seed: u64,
    ) -> Result<(u64, Duration, Vec<f64>), BenchError> {
        let slots = (self.bytes() / RAND_BLOCK as u64).max(1);
        let mut rng = XorShift::new(seed);
        let mut lat = Vec::with_capacity(1 << 16);
        let ring = self.with_ring(|ring| {
            uring::run(
                ring,
                &self.file,
                depth,
                RAND_BLOCK,
                time,
                |_, _| {
                    Some(uring::Request {
                        offset: rng.below(slots) * RAND_BLOCK as u64,
                        len: RAND_BLOCK,
                        op: uring::Op::Read,
                    })
                },
                |req, buf, us| {
                    lat.push(us);
                    self.verify_piece(req.offset as usize, &buf[..RAND_BLOCK])
                },
            )
        });
        if let Some(r) = ring {
            let elapsed = r?;
            return Ok((lat.len() as u64, elapsed, lat));
        }
        let (per_thread, elapsed) = self.parallel(depth, RAND_BLOCK, time, |t, buf, clock| {
            let mut rng = XorShift::new(seed ^ (t as u64 + 1).wrapping_mul(0x9E37));
            let mut lat = Vec::with_capacity(1 << 16);
            while !clock.is_up() {
                let off = rng.below(slots) * RAND_BLOCK as u64;
                let t0 = Instant::now();
                self.file
                    .read_exact_at(buf, off)
                    .map_err(|e| BenchError::io(format!("pread {}", self.path.display()), e))?;
                lat.push(t0.elapsed().as_secs_f64() * 1e6);
                self.verify_piece(off as usize, buf)?;
            }
            Ok(lat)
        })?;
        let lat: Vec<f64> = per_thread.into_iter().flatten().collect();
        Ok((lat.len() as u64, elapsed, lat))
    }

    fn verify_piece(&self, off: usize, got: &[u8]) -> Result<(), BenchError> {
        let block = off / SEQ_BLOCK;
        let within = off % SEQ_BLOCK;
        let pool = &self.pool[block % POOL][within..within + got.len()];
        let ok = if within == 0 {
            got[..8] == (block as u64).to_le_bytes() && got[8..] == pool[8..]
        } else {
            got == pool
        };
        if ok {
            Ok(())
        } else {
            Err(BenchError::Verification(format!(
                "random read at offset {off} differs from what was written"
            )))
        }
    }

    /// Runs `work(thread, buffer, clock)` on `threads` threads, each with its own `buf_len` bytes
    /// of one [`AlignedBuf`]; the buffers are allocated before the clock starts. Returns each
    /// thread's result and the time from the start to the last thread's end.
    fn parallel<T: Send>(
        &self,
        threads: usize,
        buf_len: usize,
        time: Duration,
        work: impl Fn(usize, &mut [u8], &Clock) -> Result<T, BenchError> + Sync,
    ) -> Result<(Vec<T>, Duration), BenchError> {
        let mut arena = AlignedBuf::new(threads.max(1) * buf_len)?;
        let clock = Clock {
            started: Instant::now(),
            time,
        };
        let results = std::thread::scope(|scope| {
            let handles: Vec<_> = arena
                .chunks_mut(buf_len)
                .enumerate()
                .map(|(t, buf)| {
                    let (work, clock) = (&work, &clock);
                    scope.spawn(move || work(t, buf, clock))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect::<Result<Vec<_>, _>>()
        })?;
        Ok((results, clock.started.elapsed()))
    }
}

/// The time limit of a threaded run.
struct Clock {
    started: Instant,
    time: Duration,
}

impl Clock {
    fn is_up(&self) -> bool {
        self.started.elapsed() >= self.time
    }
}

/// The 1 MiB block at byte `offset`.
fn block_of(offset: u64) -> usize {
    (offset / SEQ_BLOCK as u64) as usize
}

/// The sequential request for 1 MiB block `block`.
fn seq_request(block: usize, op: uring::Op) -> uring::Request {
    uring::Request {
        offset: (block * SEQ_BLOCK) as u64,
        len: SEQ_BLOCK,
        op,
    }
}

/// Parameters of the disk benchmarks.
#[derive(Debug, Clone)]
pub struct DiskParams {
    /// Directory of the test file (the agent's state dir).
    pub dir: PathBuf,
    /// File size in MiB.
    pub file_mib: usize,
    /// Sequential requests in flight (threads).
    pub seq_inflight: usize,
    /// Duration of one sequential sample.
    pub seq_sample: Duration,
    /// Random-read queue depth (threads).
    pub rand_depth: usize,
    /// Duration of one random-read sample.
    pub rand_sample: Duration,
}

/// Sequential write throughput in MB/s (1e6): each sample overwrites blocks in order for
/// `seq_sample`, wrapping around the file.
pub fn seq_write(p: &DiskParams, protocol: &Protocol) -> Result<KernelResult, BenchError> {
    let file = TestFile::create(&p.dir, p.file_mib)?;
    let (summary, _) = stats::run(protocol, || -> Result<f64, BenchError> {
        Ok(file.write_for(p.seq_inflight, p.seq_sample)?.mbps())
    })?;
    file.read_all(p.seq_inflight)?;
    Ok(seq_result(p, &file, summary, "write"))
}

/// Sequential read throughput in MB/s: each sample reads blocks in order for `seq_sample`,
/// wrapping around the laid-out file.
pub fn seq_read(p: &DiskParams, protocol: &Protocol) -> Result<KernelResult, BenchError> {
    let file = TestFile::create(&p.dir, p.file_mib)?;
    let (summary, _) = stats::run(protocol, || -> Result<f64, BenchError> {
        Ok(file.read_for(p.seq_inflight, p.seq_sample)?.mbps())
    })?;
    Ok(seq_result(p, &file, summary, "read"))
}

fn seq_result(p: &DiskParams, file: &TestFile, summary: stats::Summary, op: &str) -> KernelResult {
    KernelResult {
        unit: "MB/s".into(),
        summary,
        details: Default::default(),
        verified: "every 1 MiB block read back equal to what was written (index + random data)"
            .into(),
        device: p.dir.display().to_string(),
    }
    .with("op", op)
    .with("block_bytes", SEQ_BLOCK)
    .with("inflight", p.seq_inflight)
    .with("sample_s", p.seq_sample.as_secs_f64())
    .with("file_bytes", file.bytes())
    .with("engine", engine_name(file.uses_io_uring()))
    .with("transparent_huge_pages", thp_setting())
}

/// The kernel's transparent huge page setting (`always`, `madvise`, `never`), or `unknown`.
fn thp_setting() -> String {
    std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .ok()
        .and_then(|s| {
            let (_, rest) = s.split_once('[')?;
            Some(rest.split_once(']')?.0.to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Random 4 KiB read IOPS at queue depth `rand_depth`, with p50/p99 latency (µs) over all
/// samples' requests.
pub fn rand_read(p: &DiskParams, protocol: &Protocol) -> Result<KernelResult, BenchError> {
    let file = TestFile::create(&p.dir, p.file_mib)?;
    let mut all = Vec::new();
    let mut seed = 1;
    let (summary, _) = stats::run(protocol, || -> Result<f64, BenchError> {
        seed += 1;
        let (ops, elapsed, lat) = file.random_reads(p.rand_depth, p.rand_sample, seed)?;
        all.extend(lat);
        Ok(ops as f64 / elapsed.as_secs_f64())
    })?;
    all.sort_by(f64::total_cmp);
    Ok(KernelResult {
        unit: "IOPS".into(),
        summary,
        details: Default::default(),
        verified: "every 4 KiB read equal to the written data at its offset".into(),
        device: p.dir.display().to_string(),
    }
    .with("p50_us", stats::percentile_sorted(&all, 50.0))
    .with("p99_us", stats::percentile_sorted(&all, 99.0))
    .with("queue_depth", p.rand_depth)
    .with("sample_s", p.rand_sample.as_secs_f64())
    .with("block_bytes", RAND_BLOCK)
    .with("file_bytes", file.bytes())
    .with("engine", engine_name(file.uses_io_uring())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(dir: &Path) -> DiskParams {
        DiskParams {
            dir: dir.to_owned(),
            file_mib: 8,
            seq_inflight: 4,
            seq_sample: Duration::from_millis(30),
            rand_depth: 4,
            rand_sample: Duration::from_millis(30),
        }
    }

    fn quick() -> Protocol {
        Protocol::smoke_test()
    }

    /// A directory on a disk file system (O_DIRECT is refused on tmpfs).
    fn dir() -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix("fog-bench-disk")
            .tempdir_in(std::env::current_dir().unwrap())
            .unwrap()
    }

    #[test]
    fn seq_write_read_and_random_verify_and_clean_up() {
        let d = dir();
        let p = params(d.path());
        let w = seq_write(&p, &quick()).unwrap();
        assert_eq!(w.unit, "MB/s");
        let r = seq_read(&p, &quick()).unwrap();
        assert!(r.summary.median > 0.0);
        let rr = rand_read(&p, &quick()).unwrap();
        assert!(rr.details["p99_us"].as_f64().unwrap() >= rr.details["p50_us"].as_f64().unwrap());
        assert_eq!(
            std::fs::read_dir(d.path()).unwrap().count(),
            0,
            "file left behind"
        );
    }

    #[test]
    fn corruption_is_detected() {
        let d = dir();
        // 8 blocks through 2 slots: block 5 is read into a slot's second buffer.
        let f = TestFile::create(d.path(), 8).unwrap();
        f.write_for(2, Duration::from_millis(20)).unwrap();
        f.read_all(2).expect("clean file reads back");
        let mut junk = AlignedBuf::new(RAND_BLOCK).unwrap();
        junk.fill(7);
        f.file
            .write_all_at(&junk, 5 * SEQ_BLOCK as u64 + 4096)
            .unwrap();
        match f.read_all(2) {
            Err(BenchError::Verification(m)) => assert!(m.contains("block 5"), "{m}"),
            other => panic!("corruption in block 5 not reported: {other:?}"),
        }
        let path = f.path().to_owned();
        drop(f);
        assert!(!path.exists());
    }

    #[test]
    fn queue_deeper_than_the_ring_is_clamped() {
        let d = dir();
        let f = TestFile::create(d.path(), 2).unwrap();
        f.write_for(100, Duration::from_millis(20)).unwrap();
        f.read_all(100).unwrap();
        let (ops, _, lat) = f.random_reads(100, Duration::from_millis(20), 3).unwrap();
        assert!(ops > 0 && lat.len() as u64 == ops);
    }

    #[test]
    fn timed_samples_wrap_around_the_file_and_count_every_block() {
        let d = dir();
        let f = TestFile::create(d.path(), 2).unwrap();
        let w = f.write_for(2, Duration::from_millis(50)).unwrap();
        let r = f.read_for(2, Duration::from_millis(50)).unwrap();
        for t in [w, r] {
            assert_eq!(t.bytes % SEQ_BLOCK as u64, 0);
            assert!(t.bytes > f.bytes(), "{t:?}: no wrap around a 2-block file");
            assert!(t.elapsed >= Duration::from_millis(50), "{t:?}");
        }
        f.read_all(2).unwrap();
    }

    #[test]
    fn threads_run_the_same_timed_samples_without_a_ring() {
        let d = dir();
        let f = TestFile::create(d.path(), 2).unwrap();
        *f.ring.lock().unwrap() = Err("refused for the test".into());
        assert!(!f.uses_io_uring());
        let w = f.write_for(3, Duration::from_millis(30)).unwrap();
        let r = f.read_for(3, Duration::from_millis(30)).unwrap();
        assert!(w.bytes > f.bytes() && r.bytes > f.bytes(), "{w:?} {r:?}");
        f.read_all(3).unwrap();
        let (ops, _, lat) = f.random_reads(3, Duration::from_millis(20), 9).unwrap();
        assert!(ops > 0 && lat.len() as u64 == ops);
    }

    #[test]
    fn a_created_file_is_laid_out_and_reads_back() {
        let d = dir();
        let f = TestFile::create(d.path(), 3).unwrap();
        assert_eq!(
            std::fs::metadata(f.path()).unwrap().len(),
            3 * SEQ_BLOCK as u64
        );
        f.read_all(2).unwrap();
        let (ops, _, _) = f.random_reads(2, Duration::from_millis(20), 5).unwrap();
        assert!(ops > 0);
    }

    #[test]
    fn buffers_of_whole_huge_pages_are_aligned_to_them_and_zeroed() {
        let huge = AlignedBuf::new(2 * HUGE_PAGE).unwrap();
        assert_eq!(huge.as_ptr() as usize % HUGE_PAGE, 0);
        assert!(huge.iter().all(|&b| b == 0));
        let small = AlignedBuf::new(3 * ALIGN).unwrap();
        assert_eq!(
            (small.as_ptr() as usize % ALIGN, small.len()),
            (0, 3 * ALIGN)
        );
    }

    #[test]
    fn zero_blocks_rejected() {
        assert!(TestFile::create(Path::new("/tmp"), 0).is_err());
    }
}
