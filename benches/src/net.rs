//! Network kernels: the TCP peer (`fog-agent bench-peer`) and the client measuring throughput in
//! each direction and round-trip time.
//!
//! Wire protocol (one TCP connection per stream): the client sends one mode byte.
//! - `D` (download): the peer sends a fixed pseudo-random 128 KiB pattern over and over until the
//!   client closes. The client verifies the first pattern it receives.
//! - `U` (upload): the peer reads until end of stream, then answers the byte count it received as
//!   a little-endian u64; the client checks it against what it sent.
//! - `R` (RTT): the peer echoes 64-byte messages until the client closes; each echo is compared.
//!
//! Throughput methodology (as iperf3 `-P N -O omit -t T`): N parallel streams run for an omit
//! window, then for consecutive 1-second-or-shorter intervals whose byte counts are the samples;
//! bytes are counted where the application sees them (received bytes for download, written bytes
//! for upload, like iperf3's sender side), in Gbit/s (1e9 bits).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::stats::{self, Protocol};
use crate::{BenchError, KernelResult, XorShift};

/// Version of the network kernels.
pub const NET_KERNEL_VERSION: u32 = 1;
const PATTERN: usize = 128 * 1024;
const PROBE: usize = 64;

fn pattern() -> Vec<u8> {
    let mut p = vec![0u8; PATTERN];
    XorShift::new(0x4E7).fill(&mut p);
    p
}

fn io(what: &str) -> impl FnOnce(std::io::Error) -> BenchError + '_ {
    move |e| BenchError::io(what, e)
}

/// Serves benchmark clients on `listener` until `stop` is set (checked between accepts, so set
/// it and connect once to wake the loop). One thread per connection.
pub fn serve(listener: &TcpListener, stop: &AtomicBool) -> Result<(), BenchError> {
    let pattern = Arc::new(pattern());
    for conn in listener.incoming() {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let Ok(stream) = conn else { continue };
        let pattern = Arc::clone(&pattern);
        std::thread::spawn(move || {
            // A failing client only ends its own connection.
            let _ = handle(stream, &pattern);
        });
    }
    Ok(())
}

fn handle(mut s: TcpStream, pattern: &[u8]) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    let mut mode = [0u8; 1];
    s.read_exact(&mut mode)?;
    match mode[0] {
        b'D' => loop {
            s.write_all(pattern)?;
        },
        b'U' => {
            let mut buf = vec![0u8; PATTERN];
            let mut total = 0u64;
            loop {
                match s.read(&mut buf)? {
                    0 => break,
                    n => total += n as u64,
                }
            }
            s.write_all(&total.to_le_bytes())
        }
        b'R' => {
            let mut buf = [0u8; PROBE];
            loop {
                if let Err(e) = s.read_exact(&mut buf) {
                    return if e.kind() == std::io::ErrorKind::UnexpectedEof {
                        Ok(())
                    } else {
                        Err(e)
                    };
                }
                s.write_all(&buf)?;
            }
        }
        _ => Ok(()),
    }
}

/// Direction of a throughput test, seen from the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client sends to the peer.
    Up,
    /// Peer sends to the client.
    Down,
}

/// Parameters of the network benchmarks.
#[derive(Debug, Clone)]
pub struct NetParams {
    /// The peer's address.
    pub peer: SocketAddr,
    /// Parallel TCP streams.
    pub streams: usize,
    /// Warm-up time not counted (slow start, buffer fill).
    pub omit: Duration,
    /// Length of one sample interval.
    pub interval: Duration,
    /// Probes per RTT sample.
    pub rtt_probes: usize,
}

fn connect(peer: SocketAddr, mode: u8) -> Result<TcpStream, BenchError> {
    let mut s = TcpStream::connect_timeout(&peer, Duration::from_secs(5))
        .map_err(io(&format!("connect to {peer}")))?;
    s.set_nodelay(true).map_err(io("set TCP_NODELAY"))?;
    s.write_all(&[mode]).map_err(io("send mode"))?;
    Ok(s)
}

/// TCP throughput in Gbit/s in one direction over `streams` parallel connections.
pub fn throughput(
    p: &NetParams,
    dir: Direction,
    protocol: &Protocol,
) -> Result<KernelResult, BenchError> {
    if p.streams == 0 {
        return Err(BenchError::InvalidParameter("0 streams".into()));
    }
    let mode = if dir == Direction::Up { b'U' } else { b'D' };
    let conns = (0..p.streams)
        .map(|_| connect(p.peer, mode))
        .collect::<Result<Vec<_>, _>>()?;
    let counter = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let expected = pattern();
    let outcome = std::thread::scope(|scope| {
        let workers: Vec<_> = conns
            .into_iter()
            .map(|s| {
                let (counter, stop, expected) = (&counter, &stop, &expected);
                scope.spawn(move || stream_worker(s, dir, counter, stop, expected))
            })
            .collect();
        let measured = measure_intervals(p, protocol, &counter);
        stop.store(true, Ordering::Relaxed);
        let mut first_err = None;
        for w in workers {
            let r = w.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
            if let Err(e) = r {
                first_err.get_or_insert(e);
            }
        }
        match (measured, first_err) {
            (Err(e), _) | (Ok(_), Some(e)) => Err(e),
            (Ok(m), None) => Ok(m),
        }
    })?;
    let name = if dir == Direction::Up { "up" } else { "down" };
    Ok(KernelResult {
        unit: "Gbit/s".into(),
        summary: outcome,
        details: Default::default(),
        verified: if dir == Direction::Up {
            "peer's received byte count equals the bytes sent on every stream".into()
        } else {
            "first 128 KiB of every stream equal to the peer's pattern".into()
        },
        device: p.peer.to_string(),
    }
    .with("direction", name)
    .with("streams", p.streams)
    .with("omit_s", p.omit.as_secs_f64())
    .with("interval_s", p.interval.as_secs_f64()))
}

fn measure_intervals(
    p: &NetParams,
    protocol: &Protocol,
    counter: &AtomicU64,
) -> Result<stats::Summary, BenchError> {
    std::thread::sleep(p.omit);
    let mut last = (Instant::now(), counter.load(Ordering::Relaxed));
    let (summary, _) = stats::run(
        &Protocol {
            warmup: 0,
            ..*protocol
        },
        || -> Result<f64, BenchError> {
            std::thread::sleep(p.interval);
            let now = (Instant::now(), counter.load(Ordering::Relaxed));
            let bits = (now.1 - last.1) as f64 * 8.0;
            let secs = now.0.duration_since(last.0).as_secs_f64();
            last = now;
            Ok(bits / secs / 1e9)
        },
    )?;
    Ok(summary)
}

fn stream_worker(
    mut s: TcpStream,
    dir: Direction,
    counter: &AtomicU64,
    stop: &AtomicBool,
    expected: &[u8],
) -> Result<(), BenchError> {
    match dir {
        Direction::Up => {
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                s.write_all(expected).map_err(io("send"))?;
                sent += expected.len() as u64;
                counter.fetch_add(expected.len() as u64, Ordering::Relaxed);
            }
            s.shutdown(Shutdown::Write).map_err(io("shutdown"))?;
            let mut ack = [0u8; 8];
            s.read_exact(&mut ack)
                .map_err(io("read peer's byte count"))?;
            let got = u64::from_le_bytes(ack);
            if got != sent {
                return Err(BenchError::Verification(format!(
                    "peer received {got} bytes, {sent} were sent"
                )));
            }
            Ok(())
        }
        Direction::Down => {
            let mut buf = vec![0u8; PATTERN];
            s.read_exact(&mut buf).map_err(io("receive"))?;
            if buf != expected {
                return Err(BenchError::Verification(
                    "received data differs from the peer's pattern".into(),
                ));
            }
            counter.fetch_add(PATTERN as u64, Ordering::Relaxed);
            while !stop.load(Ordering::Relaxed) {
                let n = s.read(&mut buf).map_err(io("receive"))?;
                if n == 0 {
                    return Err(BenchError::Verification(
                        "peer closed the stream early".into(),
                    ));
                }
                counter.fetch_add(n as u64, Ordering::Relaxed);
            }
            Ok(())
        }
    }
}

/// Round-trip time of 64-byte request/response probes, in µs. Each sample is the median of
/// `rtt_probes` probes; details give min / median / p95 over every probe.
pub fn rtt(p: &NetParams, protocol: &Protocol) -> Result<KernelResult, BenchError> {
    if p.rtt_probes == 0 {
        return Err(BenchError::InvalidParameter("0 probes".into()));
    }
    let mut s = connect(p.peer, b'R')?;
    let mut all = Vec::new();
    let mut seq = 0u64;
    let (summary, _) = stats::run(protocol, || -> Result<f64, BenchError> {
        let mut batch = Vec::with_capacity(p.rtt_probes);
        let mut msg = [0u8; PROBE];
        let mut back = [0u8; PROBE];
        for _ in 0..p.rtt_probes {
            seq += 1;
            msg[..8].copy_from_slice(&seq.to_le_bytes());
            let t0 = Instant::now();
            s.write_all(&msg).map_err(io("send probe"))?;
            s.read_exact(&mut back).map_err(io("receive echo"))?;
            batch.push(t0.elapsed().as_secs_f64() * 1e6);
            if back != msg {
                return Err(BenchError::Verification(format!("echo {seq} differs")));
            }
        }
        let med = stats::percentile(&batch, 50.0);
        all.extend(batch);
        Ok(med)
    })?;
    all.sort_by(f64::total_cmp);
    Ok(KernelResult {
        unit: "µs".into(),
        summary,
        details: Default::default(),
        verified: "every echo equal to its probe (sequence-numbered)".into(),
        device: p.peer.to_string(),
    }
    .with("min_us", all.first().copied().unwrap_or(f64::NAN))
    .with("median_us", stats::percentile_sorted(&all, 50.0))
    .with("p95_us", stats::percentile_sorted(&all, 95.0))
    .with("probes", all.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick() -> Protocol {
        Protocol::smoke_test()
    }

    fn peer() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let stop = AtomicBool::new(false);
            serve(&l, &stop).unwrap();
        });
        addr
    }

    fn params(peer: SocketAddr) -> NetParams {
        NetParams {
            peer,
            streams: 2,
            // Long enough for slow start on loopback; see the test for starved intervals.
            omit: Duration::from_millis(300),
            interval: Duration::from_millis(250),
            rtt_probes: 50,
        }
    }

    #[test]
    fn both_directions_and_rtt_over_loopback() {
        let p = params(peer());
        // Bytes must have moved in some interval, and the workers verified them. The median is
        // not asserted: on a loaded 2-core machine every thread of this test can be descheduled
        // for a whole 250 ms interval, which reads, correctly, as 0 Gbit/s for that interval.
        let up = throughput(&p, Direction::Up, &quick()).unwrap();
        assert!(up.summary.max > 0.0, "no bytes sent: {:?}", up.summary);
        let down = throughput(&p, Direction::Down, &quick()).unwrap();
        assert!(
            down.summary.max > 0.0,
            "no bytes received: {:?}",
            down.summary
        );
        let r = rtt(&p, &quick()).unwrap();
        assert!(r.details["p95_us"].as_f64().unwrap() >= r.details["min_us"].as_f64().unwrap());
        assert_eq!(r.details["probes"], 100);
    }

    #[test]
    fn no_peer_is_an_error() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        assert!(rtt(&params(addr), &quick()).is_err());
    }
}
