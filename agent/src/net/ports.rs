//! Host ports for published job ports, from `[jobs.network] port_range`: never one another
//! job holds, never one a host process is bound to (tried with a bind, wildcard IPv4 and
//! IPv6, of the port's protocol), and round-robin from after the last one given, so a port a
//! job just released is not handed to the next job at once.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::sync::{Mutex, PoisonError};

use super::{NetError, Protocol};
use crate::config::PortRange;

/// The host ports jobs hold.
#[derive(Debug)]
pub struct PortAllocator {
    range: PortRange,
    state: Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
    ports: BTreeSet<(u16, Protocol)>,
    /// Where the next search starts.
    next: u16,
}

impl PortAllocator {
    /// An allocator over `range`, holding nothing.
    pub fn new(range: PortRange) -> Self {
        Self {
            range,
            state: Mutex::new(Held {
                ports: BTreeSet::new(),
                next: range.first,
            }),
        }
    }

    /// Marks ports as held (jobs found again after a restart).
    pub fn hold(&self, ports: impl IntoIterator<Item = (u16, Protocol)>) {
        self.lock().ports.extend(ports);
    }

    /// Gives a free host port for each `(container port, protocol)`, all or none.
    pub fn allocate(&self, wanted: &[(u16, Protocol)]) -> Result<Vec<u16>, NetError> {
        let mut held = self.lock();
        let mut given = Vec::with_capacity(wanted.len());
        for &(container_port, protocol) in wanted {
            match self.find_free(&held, protocol) {
                Some(port) => {
                    held.ports.insert((port, protocol));
                    held.next = if port == self.range.last {
                        self.range.first
                    } else {
                        port + 1
                    };
                    given.push(port);
                }
                None => {
                    for (port, (_, protocol)) in given.iter().zip(wanted) {
                        held.ports.remove(&(*port, *protocol));
                    }
                    return Err(NetError::NoFreePort {
                        range: self.range.to_string(),
                        container_port,
                        protocol,
                    });
                }
            }
        }
        Ok(given)
    }

    /// Releases ports.
    pub fn release(&self, ports: impl IntoIterator<Item = (u16, Protocol)>) {
        let mut held = self.lock();
        for port in ports {
            held.ports.remove(&port);
        }
    }

    fn find_free(&self, held: &Held, protocol: Protocol) -> Option<u16> {
        let from_next = held.next..=self.range.last;
        let wrapped = self.range.first..held.next;
        from_next
            .chain(wrapped)
            .find(|&port| !held.ports.contains(&(port, protocol)) && bindable(port, protocol))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Whether no host socket holds `port` (a wildcard bind of both families succeeds).
fn bindable(port: u16, protocol: Protocol) -> bool {
    let addrs = [
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
        SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)),
    ];
    addrs.iter().all(|addr| {
        let bound = match protocol {
            Protocol::Udp => UdpSocket::bind(addr).map(drop),
            _ => TcpListener::bind(addr).map(drop),
        };
        // A host without IPv6 cannot have an IPv6 socket on it either.
        match bound {
            Ok(()) => true,
            Err(e) => addr.is_ipv6() && e.raw_os_error() == Some(libc::EAFNOSUPPORT),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A range of `len` ports no socket holds now, below the kernel's ephemeral range (from
    /// 32768 by default), so no outgoing connection of another process takes one of them during
    /// the test. Each call of this process gets another range (tests run in parallel).
    fn free_range(len: u16) -> PortRange {
        use std::sync::atomic::{AtomicU16, Ordering};
        static NEXT: AtomicU16 = AtomicU16::new(0);
        let spread = u16::try_from(std::process::id() % 1000).unwrap_or(0) * 16;
        for _ in 0..1000 {
            let step = NEXT.fetch_add(len + 1, Ordering::Relaxed);
            let first = 10_000 + (spread + step) % 20_000;
            let range = PortRange {
                first,
                last: first + len - 1,
            };
            let free = (range.first..=range.last)
                .all(|p| bindable(p, Protocol::Tcp) && bindable(p, Protocol::Udp));
            if free {
                return range;
            }
        }
        panic!("no {len} free ports in a row in 10000-29999");
    }

    #[test]
    fn ports_are_never_given_twice_and_come_back_when_released() {
        let range = free_range(3);
        let ports = PortAllocator::new(range);
        let a = ports
            .allocate(&[(80, Protocol::Tcp), (53, Protocol::Udp)])
            .unwrap();
        assert_eq!(a.len(), 2);
        let b = ports.allocate(&[(80, Protocol::Tcp)]).unwrap();
        assert_ne!(a[0], b[0]);
        ports.release([(a[0], Protocol::Tcp)]);
        let c = ports.allocate(&[(80, Protocol::Tcp)]).unwrap();
        assert!(![b[0]].contains(&c[0]));
    }

    #[test]
    fn a_port_a_host_process_holds_is_skipped() {
        let range = free_range(2);
        let _busy = match TcpListener::bind(("0.0.0.0", range.first)) {
            Ok(listener) => listener,
            Err(e) => {
                eprintln!("skipped: port {} is in use already ({e})", range.first);
                return;
            }
        };
        let ports = PortAllocator::new(range);
        assert_eq!(
            ports.allocate(&[(80, Protocol::Tcp)]).unwrap(),
            [range.last]
        );
    }

    #[test]
    fn a_full_range_gives_nothing_and_keeps_nothing() {
        let range = free_range(1);
        let ports = PortAllocator::new(range);
        let err = ports
            .allocate(&[(80, Protocol::Tcp), (81, Protocol::Tcp)])
            .unwrap_err();
        assert!(err.to_string().starts_with("no free host port in"), "{err}");
        // The first one given was taken back.
        assert_eq!(
            ports.allocate(&[(80, Protocol::Tcp)]).unwrap(),
            [range.first]
        );
    }
}
