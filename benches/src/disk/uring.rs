//! The io_uring engine: one thread keeps `depth` O_DIRECT requests in flight, as fio's `libaio`
//! / `io_uring` engines do, so the queue depth costs no thread per slot (on a 2-core host, 32
//! blocking threads spend a measurable share of the CPU on context switches).
//!
//! Crate: `io-uring` (tokio-rs), the maintained low-level binding; no async runtime is needed for
//! a closed loop of reads and writes.
//!
//! The slots' buffers are registered with the ring for the duration of a run (`READ_FIXED` /
//! `WRITE_FIXED`): the kernel pins them once instead of on every request (256 pages per 1 MiB
//! request). Where registration is refused (memlock limit), plain `READ` / `WRITE` are used.
//!
//! Each slot has two buffers and alternates between them: a completed request's replacement is
//! submitted (into the other buffer) before the completed one is checked, so verifying a 1 MiB
//! block (~0.1 ms) never holds back the queue, and fio, which checks nothing, is not handed a
//! deeper queue than ours. All buffers are one allocation ([`AlignedBuf`]: in transparent huge
//! pages where its size allows, so a slot's two 1 MiB buffers are one 2 MiB page).
//!
//! A run is timed as fio times a job: from its first submission to its last completion. The
//! buffers' allocation and registration come before and are not timed (for 16 slots of 1 MiB
//! in 4 KiB pages ~25 ms on the CI VM, mostly faulting in and zeroing 32 MiB).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use io_uring::{opcode, types, IoUring};

use super::AlignedBuf;
use crate::BenchError;

/// Read or write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Op {
    Read,
    Write,
}

/// One request a slot issues: where and what; `len` bytes of the slot's buffer.
#[derive(Debug, Clone, Copy)]
pub(super) struct Request {
    pub offset: u64,
    pub len: usize,
    pub op: Op,
}

/// A ring of `depth` entries, or why the kernel refused one (old kernel, seccomp, sysctl
/// `kernel.io_uring_disabled`).
pub(super) fn ring(depth: usize) -> Result<IoUring, std::io::Error> {
    let entries = u32::try_from(depth.next_power_of_two()).unwrap_or(u32::MAX);
    IoUring::new(entries)
}

/// A slot's state; its buffers are in [`Slots`].
struct Slot {
    /// Which of its two buffers the request in flight (or the next one) uses.
    current: usize,
    request: Option<Request>,
    started: Instant,
}

/// The slots and their buffers, one allocation: slot i's two are at 2i and 2i + 1, also their
/// indexes when registered.
struct Slots {
    state: Vec<Slot>,
    arena: AlignedBuf,
    buf_len: usize,
}

impl Slots {
    fn new(depth: usize, buf_len: usize) -> Result<Self, BenchError> {
        let state = (0..depth)
            .map(|_| Slot {
                current: 0,
                request: None,
                started: Instant::now(),
            })
            .collect();
        Ok(Self {
            state,
            arena: AlignedBuf::new(2 * depth * buf_len)?,
            buf_len,
        })
    }

    /// Buffer `index` (= 2 x slot + which).
    fn buffer(&mut self, index: usize) -> &mut [u8] {
        &mut self.arena[index * self.buf_len..][..self.buf_len]
    }

    fn iovecs(&mut self) -> Vec<libc::iovec> {
        self.arena
            .chunks_mut(self.buf_len)
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            })
            .collect()
    }
}

/// Keeps up to `depth` requests in flight for `time` after the first submission, or until `next`
/// has no more. `next(slot, buffer)` gives the slot's next request (filling the buffer for
/// writes); `done(request, buffer, latency_us)` sees each completed one (verification, latency).
/// Returns the time from the first submission to the last completion. Every submitted request
/// has completed when this returns, also on error, so no buffer is freed while the kernel may
/// still write into it.
pub(super) fn run(
    ring: &mut IoUring,
    file: &File,
    depth: usize,
    buf_len: usize,
    time: Duration,
    next: impl FnMut(usize, &mut [u8]) -> Option<Request>,
    mut done: impl FnMut(&Request, &[u8], f64) -> Result<(), BenchError>,
) -> Result<Duration, BenchError> {
    let fd = types::Fd(file.as_raw_fd());
    // Never more requests in flight than the submission queue holds.
    let depth = depth.clamp(1, ring.params().sq_entries() as usize);
    let mut slots = Slots::new(depth, buf_len)?;
    let iovecs = slots.iovecs();
    // SAFETY: the buffers stay allocated while registered: they are unregistered below before
    // `slots` drops, or leaked with `slots` when the ring fails.
    let fixed = unsafe { ring.submitter().register_buffers(&iovecs) }.is_ok();
    // The clock starts here, with the first submission.
    let mut feed = Feed {
        next,
        started: Instant::now(),
        time,
        exhausted: false,
    };
    let result = run_slots(ring, fd, &mut slots, fixed, &mut feed, &mut done);
    if matches!(result, Err(RunError::Ring(_))) {
        std::mem::forget(slots);
    } else if fixed {
        // Nothing is in flight any more; a failure here only leaves the pages pinned until the
        // ring is dropped.
        let _ = ring.submitter().unregister_buffers();
    }
    result.map_err(|e| match e {
        RunError::Ring(e) | RunError::Request(e) => e,
    })
}

/// How a run failed: the ring itself (requests may still be in the kernel) or a request.
enum RunError {
    Ring(BenchError),
    Request(BenchError),
}

/// Where a run's requests come from: `next` until it has none, `time` has passed since `started`
/// or a request failed.
struct Feed<N> {
    next: N,
    started: Instant,
    time: Duration,
    exhausted: bool,
}

impl<N: FnMut(usize, &mut [u8]) -> Option<Request>> Feed<N> {
    fn next(&mut self, slot: usize, buf: &mut [u8]) -> Option<Request> {
        if !self.exhausted && self.started.elapsed() < self.time {
            let request = (self.next)(slot, buf);
            self.exhausted = request.is_none();
            request
        } else {
            self.exhausted = true;
            None
        }
    }
}

/// The closed loop of [`run`] over the slots; the time from the first submission to the last
/// completion.
fn run_slots(
    ring: &mut IoUring,
    fd: types::Fd,
    slots: &mut Slots,
    fixed: bool,
    feed: &mut Feed<impl FnMut(usize, &mut [u8]) -> Option<Request>>,
    done: &mut impl FnMut(&Request, &[u8], f64) -> Result<(), BenchError>,
) -> Result<Duration, RunError> {
    let mut in_flight = 0usize;
    let mut first_error: Option<BenchError> = None;

    // Queue the first request of every slot.
    for i in 0..slots.state.len() {
        match push(ring, fd, slots, i, fixed, feed) {
            Ok(true) => in_flight += 1,
            Ok(false) => break,
            Err(e) => {
                first_error.get_or_insert(e);
                feed.exhausted = true;
                break;
            }
        }
    }
    // Submitted at once, then each replacement as soon as its predecessor completes (one
    // `io_uring_enter` per request, as fio does). Submitting the whole batch of replacements
    // before waiting instead makes a convoy on a VM: the thread sleeps, the vCPU halts, wakes
    // late to a queue that has drained, and refills all of it at once (fewer requests in
    // flight on average: ~70k vs ~100k IOPS at depth 32 on the CI machine's virtio disk).
    submit(ring)?;
    while in_flight > 0 {
        // The kernel posts completions when this thread enters it, so an empty queue here
        // means "none yet": wait for one (which also submits nothing new: all are submitted).
        if ring.completion().is_empty() {
            if let Err(e) = ring.submit_and_wait(1) {
                if e.raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return Err(ring_failed(e));
            }
        }
        let completed: Vec<(usize, i32)> = ring
            .completion()
            .map(|cqe| (cqe.user_data() as usize, cqe.result()))
            .collect();
        for (i, res) in completed {
            in_flight -= 1;
            let Some(slot) = slots.state.get_mut(i) else {
                continue;
            };
            let Some(req) = slot.request.take() else {
                continue;
            };
            let latency_us = slot.started.elapsed().as_secs_f64() * 1e6;
            let completed_buf = slot.current;
            slot.current = 1 - completed_buf;
            // The replacement first (into the other buffer), then the check of this one.
            match push(ring, fd, slots, i, fixed, feed) {
                Ok(true) => {
                    in_flight += 1;
                    submit(ring)?;
                }
                Ok(false) => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                    feed.exhausted = true;
                }
            }
            let outcome = if res < 0 {
                Err(BenchError::io(
                    format!("io_uring {:?} at offset {}", req.op, req.offset),
                    std::io::Error::from_raw_os_error(-res),
                ))
            } else if res as usize != req.len {
                Err(BenchError::Verification(format!(
                    "short {:?} at offset {}: {res} of {} bytes",
                    req.op, req.offset, req.len
                )))
            } else {
                done(&req, slots.buffer(2 * i + completed_buf), latency_us)
            };
            if let Err(e) = outcome {
                first_error.get_or_insert(e);
                feed.exhausted = true;
            }
        }
    }
    let elapsed = feed.started.elapsed();
    first_error.map_or(Ok(elapsed), |e| Err(RunError::Request(e)))
}

/// Submits what is queued, without waiting.
fn submit(ring: &mut IoUring) -> Result<(), RunError> {
    loop {
        match ring.submit() {
            Ok(_) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) => return Err(ring_failed(e)),
        }
    }
}

/// Requests already queued may still be in the kernel when the ring fails; it is unusable, so
/// the only safe way out is to leak the buffers rather than free memory being written.
fn ring_failed(e: std::io::Error) -> RunError {
    RunError::Ring(BenchError::io("io_uring submit", e))
}

/// Queues slot `i`'s next request (with its registered buffer when `fixed`); false when there is
/// none.
fn push(
    ring: &mut IoUring,
    fd: types::Fd,
    slots: &mut Slots,
    i: usize,
    fixed: bool,
    feed: &mut Feed<impl FnMut(usize, &mut [u8]) -> Option<Request>>,
) -> Result<bool, BenchError> {
    // Registered at 2i + which (depth <= the ring's size, far below u16::MAX / 2).
    let index = 2 * i + slots.state[i].current;
    let buf = slots.buffer(index);
    let Some(req) = feed.next(i, buf) else {
        return Ok(false);
    };
    let len = u32::try_from(req.len.min(buf.len()))
        .map_err(|_| BenchError::InvalidParameter(format!("request of {} bytes", req.len)))?;
    let ptr = buf.as_mut_ptr();
    let index = u16::try_from(index).unwrap_or(u16::MAX);
    let entry = match (req.op, fixed) {
        (Op::Read, true) => opcode::ReadFixed::new(fd, ptr, len, index)
            .offset(req.offset)
            .build(),
        (Op::Write, true) => opcode::WriteFixed::new(fd, ptr, len, index)
            .offset(req.offset)
            .build(),
        (Op::Read, false) => opcode::Read::new(fd, ptr, len).offset(req.offset).build(),
        (Op::Write, false) => opcode::Write::new(fd, ptr, len).offset(req.offset).build(),
    }
    .user_data(i as u64);
    let slot = &mut slots.state[i];
    slot.request = Some(req);
    slot.started = Instant::now();
    // SAFETY: the buffer lives in `slots`, which `run` keeps (or leaks) until this request has
    // completed; each slot has at most one request in flight, so nothing else touches it.
    let pushed = unsafe { ring.submission().push(&entry) };
    if pushed.is_err() {
        // The ring has `depth` (rounded up) entries and at most `depth` are in flight.
        slot.request = None;
        return Err(BenchError::InvalidParameter(
            "io_uring submission queue full".into(),
        ));
    }
    Ok(true)
}
