//! The TCP listeners' front door: connection and handshake limits, per listener and per peer IP
//! address, a handshake deadline, and the file-descriptor budget they are sized from.
//!
//! Every accepted connection is admitted or closed at once:
//!
//! - a peer at `max_connections_per_peer` connections or `max_pending_handshakes_per_peer`
//!   unfinished handshakes: closed (`peer_limit`);
//! - the listener at `max_pending_handshakes` unfinished handshakes or `max_connections`
//!   connections: the oldest unfinished handshake is closed to make room (`evicted`), so
//!   connections that never finish TLS cannot keep a client out that does; with no unfinished
//!   handshake to close, the new connection is closed (`listener_limit`).
//!
//! A handshake runs at most `handshake_timeout_millis`, in its own task, with the TLS
//! configuration current when it starts ([`super::tls::ServerTls`]). Finished connections go to
//! the gRPC server through a channel; their slot is freed when the server drops them. Limits
//! that bite are counted ([`ListenerStats`], served on `/metrics`) and logged at most every
//! [`LOG_EVERY`] per listener and reason; failed handshakes are audit events
//! ([`super::audit::TARGET`]).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Notify};
use tonic::transport::server::Connected;

/// How often a biting limit is logged per listener and reason (the rest are counted).
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// How long accepting pauses after the process ran out of file descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The limits of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections (handshaking and established).
    pub max_connections: u32,
    /// Connections from one peer IP address.
    pub max_connections_per_peer: u32,
    /// Unfinished handshakes.
    pub max_pending_handshakes: u32,
    /// Unfinished handshakes from one peer IP address.
    pub max_pending_handshakes_per_peer: u32,
    /// Time limit of a handshake.
    pub handshake_timeout: Duration,
}

/// The open-file limit after [`raise_fd_limit`], and what it leaves for connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdBudget {
    /// The soft `RLIMIT_NOFILE` now in force.
    pub limit: u64,
    /// Descriptors for connections, all listeners together.
    pub for_connections: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the budget left for
/// connections after `reserve` descriptors for the agent's own files. If the limit cannot be
/// read, it assumes 1024 (the usual default).
pub fn raise_fd_limit(reserve: u32) -> FdBudget {
    let mut limit = libc::rlimit {
        rlim_cur: 1024,
        rlim_max: 1024,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        tracing::warn!(error = %io::Error::last_os_error(), "cannot read the open-file limit");
    } else if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads the rlimit we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        } else {
            tracing::warn!(error = %io::Error::last_os_error(), "cannot raise the open-file limit");
        }
    }
    let soft = if limit.rlim_cur == libc::RLIM_INFINITY {
        u64::from(u32::MAX)
    } else {
        limit.rlim_cur
    };
    FdBudget {
        limit: soft,
        for_connections: soft.saturating_sub(u64::from(reserve)),
    }
}

impl Limits {
    /// These limits with `max_connections` (and the others with it) capped at `budget`
    /// descriptors; at least 1 each.
    pub fn capped(self, budget: u64) -> Self {
        let cap = |n: u32| u32::try_from(u64::from(n).min(budget)).unwrap_or(n).max(1);
        Self {
            max_connections: cap(self.max_connections),
            max_connections_per_peer: cap(self.max_connections_per_peer),
            max_pending_handshakes: cap(self.max_pending_handshakes),
            max_pending_handshakes_per_peer: cap(self.max_pending_handshakes_per_peer),
            handshake_timeout: self.handshake_timeout,
        }
    }
}

/// Why a connection was closed at the door, or its handshake ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Outcome {
    /// The peer was at its connection or handshake limit: closed on accept.
    PeerLimit,
    /// The listener was full with no unfinished handshake to close: closed on accept.
    ListenerLimit,
    /// An unfinished handshake closed to make room for a newer connection.
    Evicted,
    /// The handshake ran past its deadline.
    HandshakeTimeout,
    /// The handshake failed (bad or revoked certificate, not TLS, closed by the peer).
    HandshakeFailed,
    /// `accept` failed (for example out of file descriptors).
    AcceptError,
}

impl Outcome {
    /// Every outcome.
    pub const ALL: [Outcome; 6] = [
        Outcome::PeerLimit,
        Outcome::ListenerLimit,
        Outcome::Evicted,
        Outcome::HandshakeTimeout,
        Outcome::HandshakeFailed,
        Outcome::AcceptError,
    ];

    /// The label value on `/metrics`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::PeerLimit => "peer_limit",
            Outcome::ListenerLimit => "listener_limit",
            Outcome::Evicted => "evicted",
            Outcome::HandshakeTimeout => "handshake_timeout",
            Outcome::HandshakeFailed => "handshake_failed",
            Outcome::AcceptError => "accept_error",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Counters of one listener, read by `/metrics`.
#[derive(Debug)]
pub struct ListenerStats {
    addr: SocketAddr,
    limits: Limits,
    accepted: AtomicU64,
    outcomes: [AtomicU64; 6],
    last_log: Mutex<[Option<Instant>; 6]>,
    suppressed: [AtomicU64; 6],
    state: Mutex<State>,
}

/// A point-in-time view of a listener's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerCounts {
    /// The listener's address.
    pub addr: SocketAddr,
    /// The limits in force.
    pub limits: Limits,
    /// Connections accepted from the socket since start (before admission).
    pub accepted: u64,
    /// Connections open now (handshaking and established).
    pub open: u64,
    /// Unfinished handshakes now.
    pub pending: u64,
    /// Closed connections by reason since start.
    pub outcomes: Vec<(Outcome, u64)>,
}

impl ListenerStats {
    /// A listener's counters and state before its first connection.
    fn new(addr: SocketAddr, limits: Limits) -> Self {
        Self {
            addr,
            limits,
            accepted: AtomicU64::new(0),
            outcomes: Default::default(),
            last_log: Mutex::new([None; 6]),
            suppressed: Default::default(),
            state: Mutex::new(State::default()),
        }
    }

    /// A snapshot of the counters.
    pub fn counts(&self) -> ListenerCounts {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        ListenerCounts {
            addr: self.addr,
            limits: self.limits,
            accepted: self.accepted.load(Ordering::Relaxed),
            open: state.open,
            pending: state.pending.len() as u64,
            outcomes: Outcome::ALL
                .iter()
                .map(|o| (*o, self.outcomes[o.index()].load(Ordering::Relaxed)))
                .collect(),
        }
    }

    /// Counts `outcome` and logs it unless it was logged less than [`LOG_EVERY`] ago.
    fn record(&self, outcome: Outcome, peer: SocketAddr) {
        self.outcomes[outcome.index()].fetch_add(1, Ordering::Relaxed);
        if matches!(
            outcome,
            Outcome::HandshakeFailed | Outcome::HandshakeTimeout
        ) {
            // Audit events instead, one per handshake.
            return;
        }
        let now = Instant::now();
        let due = {
            let mut last = self.last_log.lock().unwrap_or_else(PoisonError::into_inner);
            let slot = &mut last[outcome.index()];
            let due = slot.is_none_or(|at| now.duration_since(at) >= LOG_EVERY);
            if due {
                *slot = Some(now);
            }
            due
        };
        if due {
            let suppressed = self.suppressed[outcome.index()].swap(0, Ordering::Relaxed);
            tracing::warn!(
                listener = %self.addr,
                peer = %peer,
                reason = outcome.as_str(),
                suppressed,
                max_connections = self.limits.max_connections,
                max_connections_per_peer = self.limits.max_connections_per_peer,
                max_pending_handshakes = self.limits.max_pending_handshakes,
                max_pending_handshakes_per_peer = self.limits.max_pending_handshakes_per_peer,
                "connection limit reached; closing a connection"
            );
        } else {
            self.suppressed[outcome.index()].fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct PeerCount {
    open: u32,
    pending: u32,
}

#[derive(Debug)]
struct PendingEntry {
    peer: IpAddr,
    evict: Arc<Notify>,
}

#[derive(Debug, Default)]
struct State {
    open: u64,
    next_id: u64,
    pending: BTreeMap<u64, PendingEntry>,
    peers: HashMap<IpAddr, PeerCount>,
}

impl State {
    fn peer_done(&mut self, peer: IpAddr, pending: bool) {
        self.open = self.open.saturating_sub(1);
        if let Some(count) = self.peers.get_mut(&peer) {
            count.open = count.open.saturating_sub(1);
            if pending {
                count.pending = count.pending.saturating_sub(1);
            }
            if count.open == 0 {
                self.peers.remove(&peer);
            }
        }
    }
}

/// A connection's slot; frees it when dropped.
#[derive(Debug)]
struct Slot {
    stats: Arc<ListenerStats>,
    peer: IpAddr,
    /// `Some(id)` while handshaking.
    pending: Option<u64>,
}

impl Slot {
    /// Admits a connection from `peer`, or says why not; may evict the oldest handshake.
    fn admit(stats: &Arc<ListenerStats>, peer: IpAddr) -> Result<(Self, Arc<Notify>), Outcome> {
        let limits = stats.limits;
        let mut evicted = None;
        let mut state = stats.state.lock().unwrap_or_else(PoisonError::into_inner);
        let count = state.peers.get(&peer).copied().unwrap_or_default();
        if count.open >= limits.max_connections_per_peer
            || count.pending >= limits.max_pending_handshakes_per_peer
        {
            return Err(Outcome::PeerLimit);
        }
        let full = state.open >= u64::from(limits.max_connections)
            || state.pending.len() as u64 >= u64::from(limits.max_pending_handshakes);
        if full {
            let Some((_, oldest)) = state.pending.pop_first() else {
                return Err(Outcome::ListenerLimit);
            };
            state.peer_done(oldest.peer, true);
            evicted = Some(oldest.evict);
        }
        let id = state.next_id;
        state.next_id += 1;
        state.open += 1;
        let count = state.peers.entry(peer).or_default();
        count.open += 1;
        count.pending += 1;
        let evict = Arc::new(Notify::new());
        state.pending.insert(
            id,
            PendingEntry {
                peer,
                evict: evict.clone(),
            },
        );
        drop(state);
        if let Some(oldest) = evicted {
            // A stored permit: the handshake ends even if it is not waiting yet.
            oldest.notify_one();
        }
        Ok((
            Self {
                stats: stats.clone(),
                peer,
                pending: Some(id),
            },
            evict,
        ))
    }

    /// The handshake finished: the slot now counts as established. False when it was evicted
    /// meanwhile (its slot is already free).
    fn establish(&mut self) -> bool {
        let Some(id) = self.pending else {
            return true;
        };
        let mut state = self
            .stats
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if state.pending.remove(&id).is_none() {
            return false;
        }
        if let Some(count) = state.peers.get_mut(&self.peer) {
            count.pending = count.pending.saturating_sub(1);
        }
        self.pending = None;
        true
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut state = self
            .stats
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match self.pending {
            // Evicted: the eviction freed the slot already.
            Some(id) if state.pending.remove(&id).is_none() => {}
            Some(_) => state.peer_done(self.peer, true),
            None => state.peer_done(self.peer, false),
        }
    }
}

/// A connection handed to the gRPC server; its slot is freed when the server drops it.
#[derive(Debug)]
pub struct Admitted<Io> {
    io: Io,
    _slot: SlotGuard,
}

/// Keeps a connection's slot (opaque).
#[derive(Debug)]
pub struct SlotGuard(#[allow(dead_code)] Slot);

impl<Io: Connected> Connected for Admitted<Io> {
    type ConnectInfo = Io::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<Io: AsyncRead + Unpin> AsyncRead for Admitted<Io> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<Io: AsyncWrite + Unpin> AsyncWrite for Admitted<Io> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// What turns an admitted TCP connection into the server's connection type: the TLS
/// handshake, or nothing (plaintext loopback in development).
pub trait Handshake: Send + Sync + 'static {
    /// The connection after the handshake.
    type Io: Connected + AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// Runs the handshake.
    fn handshake(
        &self,
        stream: TcpStream,
    ) -> Pin<Box<dyn Future<Output = io::Result<Self::Io>> + Send + 'static>>;
}

/// Mutual TLS with the configuration current when the handshake starts.
#[derive(Debug, Clone)]
pub struct TlsHandshake(pub Arc<super::tls::ServerTls>);

impl Handshake for TlsHandshake {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;

    fn handshake(
        &self,
        stream: TcpStream,
    ) -> Pin<Box<dyn Future<Output = io::Result<Self::Io>> + Send + 'static>> {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.0.current());
        Box::pin(async move { acceptor.accept(stream).await })
    }
}

/// No handshake: plaintext.
#[derive(Debug, Clone, Copy)]
pub struct Plaintext;

impl Handshake for Plaintext {
    type Io = TcpStream;

    fn handshake(
        &self,
        stream: TcpStream,
    ) -> Pin<Box<dyn Future<Output = io::Result<Self::Io>> + Send + 'static>> {
        Box::pin(std::future::ready(Ok(stream)))
    }
}

/// The connections a listener admitted, for `serve_with_incoming`.
pub type Incoming<Io> = tokio_stream::wrappers::ReceiverStream<io::Result<Admitted<Io>>>;

/// Starts accepting on `listener` under `limits` until `shutdown` turns true; returns the
/// finished connections and the listener's counters.
pub fn serve<H: Handshake>(
    listener: TcpListener,
    limits: Limits,
    handshake: H,
    shutdown: watch::Receiver<bool>,
) -> io::Result<(Incoming<H::Io>, Arc<ListenerStats>)> {
    let addr = listener.local_addr()?;
    let stats = Arc::new(ListenerStats::new(addr, limits));
    let capacity = usize::try_from(limits.max_pending_handshakes)
        .unwrap_or(1024)
        .clamp(1, 1024);
    let (tx, rx) = mpsc::channel(capacity);
    let handshake = Arc::new(handshake);
    tokio::spawn(accept_loop(
        listener,
        stats.clone(),
        handshake,
        tx,
        shutdown,
    ));
    Ok((tokio_stream::wrappers::ReceiverStream::new(rx), stats))
}

async fn accept_loop<H: Handshake>(
    listener: TcpListener,
    stats: Arc<ListenerStats>,
    handshake: Arc<H>,
    tx: mpsc::Sender<io::Result<Admitted<H::Io>>>,
    shutdown: watch::Receiver<bool>,
) {
    let stop = super::shutting_down(shutdown);
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            () = &mut stop => return,
            () = tx.closed() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                stats.record(Outcome::AcceptError, stats.addr);
                tracing::debug!(listener = %stats.addr, error = %err, "accept failed");
                if is_resource_error(&err) {
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
                continue;
            }
        };
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        let (slot, evict) = match Slot::admit(&stats, peer.ip()) {
            Ok(admitted) => admitted,
            Err(outcome) => {
                drop(stream);
                stats.record(outcome, peer);
                continue;
            }
        };
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(peer = %peer, error = %err, "cannot set TCP_NODELAY");
        }
        let handshake = handshake.clone();
        let tx = tx.clone();
        let stats = stats.clone();
        tokio::spawn(async move {
            let mut slot = slot;
            let deadline = stats.limits.handshake_timeout;
            let result = tokio::select! {
                () = evict.notified() => {
                    stats.record(Outcome::Evicted, peer);
                    return;
                }
                result = tokio::time::timeout(deadline, handshake.handshake(stream)) => result,
            };
            match result {
                Ok(Ok(io)) => {
                    if !slot.establish() {
                        stats.record(Outcome::Evicted, peer);
                        return;
                    }
                    // An error means the server is gone (shutting down): the connection closes.
                    let _ = tx
                        .send(Ok(Admitted {
                            io,
                            _slot: SlotGuard(slot),
                        }))
                        .await;
                }
                Ok(Err(err)) => {
                    stats.record(Outcome::HandshakeFailed, peer);
                    super::audit::handshake_failed(stats.addr, peer, &err.to_string());
                }
                Err(_) => {
                    stats.record(Outcome::HandshakeTimeout, peer);
                    super::audit::handshake_failed(
                        stats.addr,
                        peer,
                        &format!("no handshake within {} ms", deadline.as_millis()),
                    );
                }
            }
        });
    }
}

/// `accept` errors after which retrying at once would spin: out of descriptors or memory.
fn is_resource_error(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(limits: Limits) -> Arc<ListenerStats> {
        Arc::new(ListenerStats::new("127.0.0.1:1".parse().unwrap(), limits))
    }

    const LIMITS: Limits = Limits {
        max_connections: 4,
        max_connections_per_peer: 3,
        max_pending_handshakes: 3,
        max_pending_handshakes_per_peer: 2,
        handshake_timeout: Duration::from_secs(1),
    };

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn peer_limits_refuse_and_listener_limits_evict_the_oldest_handshake() {
        let stats = stats(LIMITS);
        let (a1, e1) = Slot::admit(&stats, ip(1)).unwrap();
        let (_a2, _e2) = Slot::admit(&stats, ip(1)).unwrap();
        // Two pending from one peer: the third is refused.
        assert_eq!(
            Slot::admit(&stats, ip(1)).map(|_| ()),
            Err(Outcome::PeerLimit)
        );
        let (_b1, _) = Slot::admit(&stats, ip(2)).unwrap();
        // Three pending on the listener: a fourth evicts the oldest (a1).
        let (mut c1, _) = Slot::admit(&stats, ip(3)).unwrap();
        assert_eq!(stats.counts().pending, 3);
        assert_eq!(stats.counts().open, 3);
        let mut a1 = a1;
        assert!(!a1.establish(), "the evicted handshake cannot establish");
        drop(a1);
        assert_eq!(stats.counts().open, 3, "an evicted slot is freed once");
        // The eviction was signalled (a stored permit).
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let notified = e1.notified();
        tokio::pin!(notified);
        assert!(notified.as_mut().poll(&mut cx).is_ready());
        assert!(c1.establish());
        assert_eq!(stats.counts().pending, 2);
        drop(c1);
        assert_eq!(stats.counts().open, 2);
    }

    #[test]
    fn a_full_listener_of_established_connections_refuses() {
        let stats = stats(LIMITS);
        let mut held = Vec::new();
        for peer in 1..=4 {
            let (mut slot, _) = Slot::admit(&stats, ip(peer)).unwrap();
            assert!(slot.establish());
            held.push(slot);
        }
        assert_eq!(
            Slot::admit(&stats, ip(9)).map(|_| ()),
            Err(Outcome::ListenerLimit)
        );
        held.clear();
        let counts = stats.counts();
        assert_eq!((counts.open, counts.pending), (0, 0));
        assert!(stats.state.lock().unwrap().peers.is_empty());
    }

    #[test]
    fn limits_are_capped_by_the_fd_budget() {
        let capped = LIMITS.capped(2);
        assert_eq!(capped.max_connections, 2);
        assert_eq!(capped.max_pending_handshakes_per_peer, 2);
        assert_eq!(LIMITS.capped(0).max_connections, 1);
    }
}
