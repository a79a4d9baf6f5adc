//! `fog-tunnel` serves a tonic (tower) gRPC service through a **reverse tunnel** in
//! jhump/grpctunnel's protocol: the host opens one outbound call,
//! `grpctunnel.v1.TunnelService/OpenReverseTunnel`, to its peer, and the peer sends RPCs back
//! through it. Peers use the protocol's own libraries (Go: `github.com/jhump/grpctunnel`
//! `NewTunnelServiceHandler`/`KeyAsChannel`; Python: `grpctunnel-py` `TunnelServiceHandler`/
//! `key_as_channel`), with ordinary generated stubs.
//!
//! Why a crate of its own, and not a tonic transport: a tunnelled stream is not an HTTP/2
//! stream, so each one is bridged into the same tower service the TCP listeners serve (an
//! `http::Request` built from the stream's frames, its `http::Response` turned back into
//! frames), and every RPC, limit, interceptor and role check is the one the listeners apply.
//! The crate knows nothing of the agent: the caller hands it the service, the limits, and the
//! request extensions that identify the peer.
//!
//! The protocol as implemented (revisions 0 and 1, the behaviour of jhump/grpctunnel v0.3.0 and
//! grpctunnel-py 0.3.0):
//! - [`demux`]: stream ids strictly increase (a duplicate or lower id, or a frame for an id never
//!   opened, ends the tunnel; late frames for closed ids are ignored); revisions 0 and 1 only
//!   (another is refused UNAVAILABLE); message sizes checked against the limit before
//!   buffering (RESOURCE_EXHAUSTED); a method taking one request that got none (grpctunnel-py
//!   never sends empty messages) gets the default message.
//! - [`flow`]: revision 1's per-stream windows (64 KiB, data bytes only): a window update per
//!   chunk the handler consumes; a chunk beyond the window fails that stream
//!   RESOURCE_EXHAUSTED, the tunnel lives on. The read loop never waits on a handler.
//! - [`bridge`]: headers first (always), messages in chunks of at most 16 KiB and the peer's
//!   window, then `CloseStream` with the `google.rpc.Status` (details kept) and trailers;
//!   `grpc-timeout`, a per-call deadline for unary answers, an idle timeout, and `cancel`.
//! - [`outbound`](mod@outbound): control frames never wait; a tunnel is ended by resetting the call, never
//!   by half-closing it (grpctunnel-py keeps a half-closed tunnel registered).

#![forbid(unsafe_code)]

pub mod bridge;
pub mod demux;
pub mod flow;
pub mod metadata;
pub mod methods;
pub mod outbound;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fog_proto::grpctunnel::v1::{
    server_to_client::Frame, ClientToServer, CloseStream, Metadata, ServerToClient, Settings,
};
use futures_util::{Stream, StreamExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tonic::Code;
use tower::Service;

use bridge::{Chunk, StreamTask};
pub use demux::ProtocolError;
use demux::{Demux, DemuxLimits, Event, StreamFailure, INITIAL_WINDOW};
use flow::SendWindow;
pub use methods::{MethodKind, MethodTable};
pub use outbound::{outbound, OutboundStream, OutboundTx};

/// The request header (and response header) that negotiates revision 1.
pub const NEGOTIATE_HEADER: &str = "grpctunnel-negotiate";

/// Its value.
pub const NEGOTIATE_ON: &str = "on";

/// The limits of one tunnel.
#[derive(Debug, Clone)]
pub struct TunnelConfig {
    /// Concurrent streams; more are refused RESOURCE_EXHAUSTED.
    pub max_streams: usize,
    /// Largest request message.
    pub max_message_bytes: u32,
    /// A stream's request side open without a frame, or its send window empty, this long:
    /// closed DEADLINE_EXCEEDED.
    pub stream_idle_timeout: Duration,
    /// Time limit of calls with a unary answer (None: none); `grpc-timeout` may shorten it.
    pub unary_timeout: Option<Duration>,
}

/// Counters of one tunnel (or of all tunnels to one peer), read by metrics.
#[derive(Debug, Default)]
pub struct TunnelStats {
    streams_open: AtomicU64,
    streams_total: AtomicU64,
    streams_refused: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

impl TunnelStats {
    /// Streams open now.
    pub fn streams_open(&self) -> u64 {
        self.streams_open.load(Ordering::Relaxed)
    }
    /// Streams opened since start.
    pub fn streams_total(&self) -> u64 {
        self.streams_total.load(Ordering::Relaxed)
    }
    /// Streams refused at once (cap, revision, draining) since start.
    pub fn streams_refused(&self) -> u64 {
        self.streams_refused.load(Ordering::Relaxed)
    }
    /// Request message bytes received.
    pub fn bytes_in(&self) -> u64 {
        self.bytes_in.load(Ordering::Relaxed)
    }
    /// Response message bytes sent.
    pub fn bytes_out(&self) -> u64 {
        self.bytes_out.load(Ordering::Relaxed)
    }
    pub(crate) fn add_bytes_out(&self, n: usize) {
        self.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// What an operator sees of the tunnels to one peer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkStatus {
    /// The peer's endpoint.
    pub endpoint: String,
    /// A tunnel is up now.
    pub up: bool,
    /// The role the peer's certificate names (empty before the first handshake).
    pub role: String,
    /// Since when the current tunnel is up.
    pub up_since: Option<std::time::SystemTime>,
    /// Tunnels opened since start.
    pub connects: u64,
    /// Attempts that failed since start.
    pub failures: u64,
    /// Why the last attempt failed or the last tunnel ended (empty: none yet).
    pub last_error: String,
    /// Streams open now.
    pub streams_open: u64,
    /// Streams opened since start.
    pub streams_total: u64,
    /// Streams refused at once since start.
    pub streams_refused: u64,
    /// Request message bytes received since start.
    pub bytes_in: u64,
    /// Response message bytes sent since start.
    pub bytes_out: u64,
}

/// Why a tunnel ended.
#[derive(Debug, thiserror::Error)]
pub enum TunnelEnd {
    /// The peer ended the call.
    #[error("the market ended the tunnel")]
    PeerClosed,
    /// The call failed (connection lost, reset, status from the peer).
    #[error("the tunnel call failed: {0}")]
    Call(tonic::Status),
    /// The peer broke the protocol.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The peer left too many control frames unread.
    #[error("the market stopped reading the tunnel")]
    Stalled,
    /// Draining finished: no stream left.
    #[error("the tunnel drained")]
    Drained,
}

/// What the read loop keeps per open stream.
struct Handle {
    chunks: Option<mpsc::UnboundedSender<Chunk>>,
    abort: Option<oneshot::Sender<StreamFailure>>,
    window: Arc<SendWindow>,
}

impl Handle {
    fn abort(&mut self, failure: StreamFailure) {
        if let Some(abort) = self.abort.take() {
            let _ = abort.send(failure);
        }
    }
}

/// Serves one service through tunnels.
#[derive(Debug, Clone)]
pub struct TunnelServer<S> {
    service: S,
    config: TunnelConfig,
    methods: Arc<MethodTable>,
}

/// What a tunnel serves: a tower service of HTTP/2 gRPC calls, as a tonic router is.
pub trait GrpcService:
    Service<
        http::Request<tonic::body::Body>,
        Response = http::Response<tonic::body::Body>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<S> GrpcService for S where
    S: Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static
{
}

impl<S: GrpcService> TunnelServer<S> {
    /// A server of `service`, whose methods' shapes are in `methods`.
    pub fn new(service: S, config: TunnelConfig, methods: MethodTable) -> Self {
        Self {
            service,
            config,
            methods: Arc::new(methods),
        }
    }

    /// Serves one tunnel until it ends: `inbound` is the call's response stream, `out` feeds
    /// its request stream, `negotiated` says whether the peer answered the negotiate header
    /// (then the settings go first), `extensions` go into every request. When `drain` becomes
    /// true, new streams are refused and the tunnel ends once the open ones finish. Dropping
    /// the future aborts every stream.
    pub async fn serve<I>(
        &self,
        mut inbound: I,
        out: OutboundTx,
        negotiated: bool,
        extensions: http::Extensions,
        mut drain: watch::Receiver<bool>,
        stats: Arc<TunnelStats>,
    ) -> TunnelEnd
    where
        I: Stream<Item = Result<ClientToServer, tonic::Status>> + Unpin,
    {
        if negotiated
            && !out.control(ServerToClient {
                stream_id: -1,
                frame: Some(Frame::Settings(Settings {
                    supported_protocol_revisions: vec![0, 1],
                    initial_window_size: INITIAL_WINDOW,
                })),
            })
        {
            return TunnelEnd::Stalled;
        }
        let limits = DemuxLimits {
            max_streams: self.config.max_streams,
            max_message_bytes: self.config.max_message_bytes,
        };
        let mut session = Session {
            server: self,
            demux: Demux::new(limits, self.methods.clone()),
            out,
            extensions,
            handles: HashMap::new(),
            tasks: JoinSet::new(),
            open: OpenStreams {
                stats,
                tasks: HashMap::new(),
            },
        };
        let idle = self.config.stream_idle_timeout;
        let mut idle_check = tokio::time::interval((idle / 4).max(Duration::from_millis(20)));
        idle_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut draining = *drain.borrow();
        if draining {
            session.demux.drain();
        }
        loop {
            if draining && session.demux.open_streams() == 0 && session.tasks.is_empty() {
                return TunnelEnd::Drained;
            }
            tokio::select! {
                biased;
                Some(joined) = session.tasks.join_next_with_id(), if !session.tasks.is_empty() => {
                    let task = match &joined {
                        Ok((task, ())) => *task,
                        Err(err) => err.id(),
                    };
                    session.ended(task);
                }
                frame = inbound.next() => {
                    let frame = match frame {
                        None => return TunnelEnd::PeerClosed,
                        Some(Err(status)) => return TunnelEnd::Call(status),
                        Some(Ok(frame)) => frame,
                    };
                    let event = match session.demux.on_frame(frame, Instant::now()) {
                        Ok(event) => event,
                        Err(err) => return TunnelEnd::Protocol(err),
                    };
                    if !session.apply(event) {
                        return TunnelEnd::Stalled;
                    }
                }
                changed = drain.changed(), if !draining => {
                    // A dropped sender means the owner is gone: drain too.
                    if changed.is_err() || *drain.borrow() {
                        draining = true;
                        session.demux.drain();
                    }
                }
                _ = idle_check.tick() => session.abort_idle(idle),
            }
        }
    }
}

/// One tunnel being served: its frame state machine, its open streams' handles and tasks.
/// Dropped with the tunnel: its tasks are aborted and no longer counted as open.
struct Session<'s, S> {
    server: &'s TunnelServer<S>,
    demux: Demux,
    out: OutboundTx,
    extensions: http::Extensions,
    handles: HashMap<i64, Handle>,
    tasks: JoinSet<()>,
    open: OpenStreams,
}

impl<S: GrpcService> Session<'_, S> {
    /// A stream's task ended (finished, aborted or panicked).
    fn ended(&mut self, task: tokio::task::Id) {
        if let Some(id) = self.open.tasks.remove(&task) {
            self.demux.closed(id);
            self.handles.remove(&id);
            self.open.stats.streams_open.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Closes the streams whose request side has been open without a frame for `idle`.
    fn abort_idle(&mut self, idle: Duration) {
        let cutoff = demux::idle_cutoff(Instant::now(), idle);
        for id in self.demux.idle_since(cutoff) {
            if let Some(handle) = self.handles.get_mut(&id) {
                handle.abort(StreamFailure {
                    code: Code::DeadlineExceeded,
                    message: format!("no request frame for {} ms", idle.as_millis()),
                });
            }
            self.demux.forget(id);
        }
    }

    /// Acts on one event; false when the peer has stopped reading control frames.
    fn apply(&mut self, event: Event) -> bool {
        let stats = &self.open.stats;
        match event {
            Event::Open(open) => {
                let id = open.id;
                let config = &self.server.config;
                let (chunks_tx, chunks) = mpsc::unbounded_channel();
                let (abort_tx, abort) = oneshot::channel();
                let window = Arc::new(SendWindow::new(open.send_window));
                let deadline = deadline(&open, config);
                let task = StreamTask {
                    service: self.server.service.clone(),
                    open,
                    chunks,
                    abort,
                    window: window.clone(),
                    out: self.out.clone(),
                    extensions: self.extensions.clone(),
                    deadline,
                    idle: config.stream_idle_timeout,
                    stats: stats.clone(),
                };
                let handle = self.tasks.spawn(task.run());
                self.open.tasks.insert(handle.id(), id);
                self.handles.insert(
                    id,
                    Handle {
                        chunks: Some(chunks_tx),
                        abort: Some(abort_tx),
                        window,
                    },
                );
                stats.streams_open.fetch_add(1, Ordering::Relaxed);
                stats.streams_total.fetch_add(1, Ordering::Relaxed);
                true
            }
            Event::Refuse { id, failure } => {
                stats.streams_refused.fetch_add(1, Ordering::Relaxed);
                let frame = |frame| ServerToClient {
                    stream_id: id,
                    frame: Some(frame),
                };
                self.out
                    .control(frame(Frame::ResponseHeaders(Metadata::default())))
                    && self.out.control(frame(Frame::CloseStream(CloseStream {
                        response_trailers: Some(Metadata::default()),
                        status: Some(metadata::simple_status(failure.code, failure.message)),
                    })))
            }
            Event::Data { id, size, data } => {
                stats
                    .bytes_in
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                if let Some(chunks) = self.handles.get(&id).and_then(|h| h.chunks.as_ref()) {
                    let _ = chunks.send(Chunk { size, data });
                }
                true
            }
            Event::HalfClose { id, empty_message } => {
                if let Some(handle) = self.handles.get_mut(&id) {
                    if let (true, Some(chunks)) = (empty_message, &handle.chunks) {
                        let _ = chunks.send(Chunk {
                            size: Some(0),
                            data: bytes::Bytes::new(),
                        });
                    }
                    handle.chunks = None;
                }
                true
            }
            Event::Cancel { id } => {
                if let Some(handle) = self.handles.get_mut(&id) {
                    handle.abort(StreamFailure {
                        code: Code::Cancelled,
                        message: "cancelled by the market".into(),
                    });
                }
                true
            }
            Event::WindowUpdate { id, bytes } => {
                if let Some(handle) = self.handles.get(&id) {
                    handle.window.grow(bytes);
                }
                true
            }
            Event::Fail {
                id,
                failure,
                window_update,
            } => {
                if let Some(handle) = self.handles.get_mut(&id) {
                    handle.abort(failure);
                }
                grant(&self.out, id, window_update)
            }
            Event::Discard { id, window_update } => grant(&self.out, id, window_update),
            Event::Ignored => true,
        }
    }
}

/// The tunnel's running stream tasks (task id to stream id); on drop, they are no longer
/// counted as open.
struct OpenStreams {
    stats: Arc<TunnelStats>,
    tasks: HashMap<tokio::task::Id, i64>,
}

impl Drop for OpenStreams {
    fn drop(&mut self) {
        self.stats
            .streams_open
            .fetch_sub(self.tasks.len() as u64, Ordering::Relaxed);
    }
}

/// Grants discarded request bytes back to the market (nothing for 0); false when the market
/// has stopped reading control frames.
fn grant(out: &OutboundTx, id: i64, bytes: u32) -> bool {
    bytes == 0
        || out.control(ServerToClient {
            stream_id: id,
            frame: Some(Frame::WindowUpdate(bytes)),
        })
}

/// A stream's time limit: `grpc-timeout` if given, capped by the unary limit for calls with a
/// unary answer.
fn deadline(open: &demux::OpenStream, config: &TunnelConfig) -> Option<Duration> {
    let requested = metadata::grpc_timeout(open.headers.as_ref());
    let unary = (!open.kind.server_streaming)
        .then_some(config.unary_timeout)
        .flatten();
    match (requested, unary) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
