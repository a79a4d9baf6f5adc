//! The tunnel's inbound state machine: every frame the market sends, checked against the
//! protocol and turned into one [`Event`] for the stream it names. Pure (no I/O, no tasks), so
//! it is unit-tested and fuzzed on its own.
//!
//! What it enforces: strictly increasing stream ids (a duplicate or lower id in `NewStream`, or
//! a frame for an id never created, is a [`ProtocolError`] that ends the tunnel; frames for
//! closed ids are ignored); the stream cap; revisions 0 and 1 only; message envelopes (a
//! message's declared size is checked against the limit before anything is buffered, chunks
//! must add up to it); each stream's receive credit (revision 1: the flow-control window;
//! revision 0: a buffer cap); one request message for methods that take one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fog_proto::grpctunnel::v1::{client_to_server::Frame, ClientToServer, NewStream};
use tonic::Code;

use crate::flow::Credit;
use crate::methods::{MethodKind, MethodTable};

/// The receive window each stream starts with (revision 1), the one the agent advertises.
pub const INITIAL_WINDOW: u32 = 65_536;

/// The largest chunk of message data in one frame.
pub const CHUNK_MAX: usize = 16_384;

/// The limits the demultiplexer enforces.
#[derive(Debug, Clone)]
pub struct DemuxLimits {
    /// Concurrent streams.
    pub max_streams: usize,
    /// Largest request message.
    pub max_message_bytes: u32,
}

/// A frame that breaks the protocol for the whole tunnel: the tunnel ends.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tunnel protocol error: {0}")]
pub struct ProtocolError(pub String);

/// A stream-level failure: the stream is closed with this code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamFailure {
    /// The gRPC code.
    pub code: Code,
    /// What was wrong.
    pub message: String,
}

impl StreamFailure {
    fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// The protocol revision a stream uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revision {
    /// No flow control.
    Zero,
    /// Per-stream flow control.
    One,
}

/// A stream the market opened.
#[derive(Debug, Clone)]
pub struct OpenStream {
    /// Its id.
    pub id: i64,
    /// `package.Service/Method` (no leading `/`).
    pub method: String,
    /// The method's shape.
    pub kind: MethodKind,
    /// Request metadata, as sent.
    pub headers: Option<fog_proto::grpctunnel::v1::Metadata>,
    /// The revision.
    pub revision: Revision,
    /// The market's receive window for this stream (revision 1).
    pub send_window: u32,
    /// What the stream may still receive: given back as its handler consumes data.
    pub credit: Arc<Credit>,
}

/// What one inbound frame means.
#[derive(Debug)]
pub enum Event {
    /// A new stream: start its handler.
    Open(OpenStream),
    /// A new stream refused at once (cap reached, revision unknown, draining): answer it with
    /// headers and this status.
    Refuse {
        /// The stream.
        id: i64,
        /// Why.
        failure: StreamFailure,
    },
    /// Request data for a stream; `size` is set on a message's first chunk.
    Data {
        /// The stream.
        id: i64,
        /// The message's full size, on its first chunk.
        size: Option<u32>,
        /// The chunk.
        data: Bytes,
    },
    /// The market sent its last request message; `empty_message` asks for a default (empty)
    /// message first (a method that takes one request got none: grpctunnel-py never sends
    /// empty messages).
    HalfClose {
        /// The stream.
        id: i64,
        /// Deliver an empty request message before the end.
        empty_message: bool,
    },
    /// The market cancelled the stream.
    Cancel {
        /// The stream.
        id: i64,
    },
    /// The market consumed response data: its window grows.
    WindowUpdate {
        /// The stream.
        id: i64,
        /// Bytes.
        bytes: u32,
    },
    /// The stream broke the protocol or a limit: close it with this status (the tunnel lives
    /// on). Its further request data is discarded, and in revision 1 granted back, so that a
    /// market blocked sending the rest of a message (grpctunnel-py waits for window even after
    /// the stream is closed) gets to read the status.
    Fail {
        /// The stream.
        id: i64,
        /// Why.
        failure: StreamFailure,
        /// Bytes of the failing frame to grant back now (revision 1), else 0.
        window_update: u32,
    },
    /// Request data for a failed stream, discarded; grant `window_update` back (0: none).
    Discard {
        /// The stream.
        id: i64,
        /// Bytes to grant back (revision 1), else 0.
        window_update: u32,
    },
    /// Nothing to do (a late frame for a closed stream).
    Ignored,
}

#[derive(Debug)]
struct Slot {
    kind: MethodKind,
    revision: Revision,
    /// Failed: its handler is gone, its request data is discarded until it half-closes.
    discarding: bool,
    credit: Arc<Credit>,
    /// Bytes still expected of the message being received.
    pending: Option<u32>,
    messages: u64,
    half_closed: bool,
    last_frame: Instant,
}

/// The inbound side of one tunnel.
#[derive(Debug)]
pub struct Demux {
    limits: DemuxLimits,
    methods: Arc<MethodTable>,
    streams: HashMap<i64, Slot>,
    last_id: i64,
    draining: bool,
}

impl Demux {
    /// A tunnel with no streams yet.
    pub fn new(limits: DemuxLimits, methods: Arc<MethodTable>) -> Self {
        Self {
            limits,
            methods,
            streams: HashMap::new(),
            last_id: -1,
            draining: false,
        }
    }

    /// Streams open now.
    pub fn open_streams(&self) -> usize {
        self.streams.len()
    }

    /// Refuse new streams from now on (UNAVAILABLE); open ones go on.
    pub fn drain(&mut self) {
        self.draining = true;
    }

    /// A stream's handler finished: frames for it are late from now on (a failed stream's
    /// discarding goes on until the market half-closes or cancels it).
    pub fn closed(&mut self, id: i64) {
        if self.streams.get(&id).is_some_and(|slot| !slot.discarding) {
            self.streams.remove(&id);
        }
    }

    /// Forgets a stream whatever its state (its idle timeout passed).
    pub fn forget(&mut self, id: i64) {
        self.streams.remove(&id);
    }

    /// Streams whose request side has been open without a frame since before `cutoff`.
    pub fn idle_since(&self, cutoff: Instant) -> Vec<i64> {
        self.streams
            .iter()
            .filter(|(_, slot)| !slot.half_closed && slot.last_frame < cutoff)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Handles one frame received at `now`.
    pub fn on_frame(
        &mut self,
        frame: ClientToServer,
        now: Instant,
    ) -> Result<Event, ProtocolError> {
        let id = frame.stream_id;
        let Some(frame) = frame.frame else {
            return match self.streams.get(&id) {
                Some(_) => Ok(self.fail_discarding(
                    id,
                    StreamFailure::new(Code::InvalidArgument, "frame with no content"),
                    0,
                )),
                None => self.unknown(id),
            };
        };
        if let Frame::NewStream(open) = frame {
            return self.open(id, open, now);
        }
        let Some(slot) = self.streams.get_mut(&id) else {
            return self.unknown(id);
        };
        slot.last_frame = now;
        if slot.discarding {
            let len = match &frame {
                Frame::RequestMessage(message) => message.data.len(),
                Frame::MoreRequestData(data) => data.len(),
                Frame::HalfClose(()) | Frame::Cancel(()) => {
                    self.streams.remove(&id);
                    return Ok(Event::Ignored);
                }
                Frame::NewStream(_) | Frame::WindowUpdate(_) => return Ok(Event::Ignored),
            };
            let window_update = grant(slot.revision, len);
            return Ok(Event::Discard { id, window_update });
        }
        match frame {
            Frame::NewStream(_) => Ok(Event::Ignored),
            Frame::Cancel(()) => {
                self.streams.remove(&id);
                Ok(Event::Cancel { id })
            }
            Frame::WindowUpdate(bytes) => Ok(Event::WindowUpdate { id, bytes }),
            Frame::HalfClose(()) => {
                let problem = if slot.half_closed {
                    Some("half-closed twice")
                } else if slot.pending.is_some() {
                    Some("half-closed in the middle of a request message")
                } else {
                    None
                };
                if let Some(problem) = problem {
                    // Nothing more comes from the market: no discarding.
                    self.streams.remove(&id);
                    return Ok(Event::Fail {
                        id,
                        failure: StreamFailure::new(Code::InvalidArgument, problem),
                        window_update: 0,
                    });
                }
                slot.half_closed = true;
                let empty_message = !slot.kind.client_streaming && slot.messages == 0;
                Ok(Event::HalfClose { id, empty_message })
            }
            Frame::RequestMessage(message) => {
                let len = message.data.len();
                match accept_message(slot, &message, self.limits.max_message_bytes) {
                    Ok(()) => Ok(Event::Data {
                        id,
                        size: Some(message.size),
                        data: message.data,
                    }),
                    Err(failure) => Ok(self.fail_discarding(id, failure, len)),
                }
            }
            Frame::MoreRequestData(data) => {
                let len = data.len();
                match accept_more(slot, len) {
                    Ok(()) => Ok(Event::Data {
                        id,
                        size: None,
                        data,
                    }),
                    Err(failure) => Ok(self.fail_discarding(id, failure, len)),
                }
            }
        }
    }

    fn open(&mut self, id: i64, open: NewStream, now: Instant) -> Result<Event, ProtocolError> {
        if id <= self.last_id {
            return Err(ProtocolError(format!(
                "stream id {id} is not above the last one ({})",
                self.last_id
            )));
        }
        self.last_id = id;
        let refuse = |code, message: String| {
            Ok(Event::Refuse {
                id,
                failure: StreamFailure::new(code, message),
            })
        };
        let revision = match open.protocol_revision {
            0 => Revision::Zero,
            1 => Revision::One,
            other => {
                return refuse(
                    Code::Unavailable,
                    format!("protocol revision {other} is not supported (0 and 1 are)"),
                )
            }
        };
        if self.draining {
            return refuse(
                Code::Unavailable,
                "the tunnel is closing; retry on a new one".into(),
            );
        }
        if self.streams.len() >= self.limits.max_streams {
            return refuse(
                Code::ResourceExhausted,
                format!(
                    "more than {} concurrent streams on this tunnel",
                    self.limits.max_streams
                ),
            );
        }
        let method = open
            .method_name
            .strip_prefix('/')
            .unwrap_or(&open.method_name);
        if method
            .split_once('/')
            .is_none_or(|(s, m)| s.is_empty() || m.is_empty() || m.contains('/'))
        {
            return refuse(
                Code::InvalidArgument,
                format!(
                    "{:?} is not a method name (package.Service/Method)",
                    open.method_name
                ),
            );
        }
        let kind = self.methods.kind(method);
        let credit = Arc::new(match revision {
            Revision::One => Credit::new(u64::from(INITIAL_WINDOW)),
            // Revision 0 has no window: a buffer cap instead, one largest message plus a chunk.
            Revision::Zero => {
                Credit::new(u64::from(self.limits.max_message_bytes) + CHUNK_MAX as u64)
            }
        });
        self.streams.insert(
            id,
            Slot {
                kind,
                revision,
                discarding: false,
                credit: credit.clone(),
                pending: None,
                messages: 0,
                half_closed: false,
                last_frame: now,
            },
        );
        Ok(Event::Open(OpenStream {
            id,
            method: method.to_owned(),
            kind,
            headers: open.request_headers,
            revision,
            send_window: open.initial_window_size,
            credit,
        }))
    }

    fn unknown(&self, id: i64) -> Result<Event, ProtocolError> {
        if id <= self.last_id {
            Ok(Event::Ignored)
        } else {
            Err(ProtocolError(format!(
                "frame for stream {id}, which was never opened"
            )))
        }
    }

    /// Fails the stream; its request data (`len` bytes of the failing frame first) is
    /// discarded from now on.
    fn fail_discarding(&mut self, id: i64, failure: StreamFailure, len: usize) -> Event {
        let window_update = match self.streams.get_mut(&id) {
            Some(slot) => {
                slot.discarding = true;
                slot.pending = None;
                grant(slot.revision, len)
            }
            None => 0,
        };
        Event::Fail {
            id,
            failure,
            window_update,
        }
    }
}

/// Checks a message's first chunk against the stream's state, the size limit and the
/// stream's credit, and takes the credit.
fn accept_message(
    slot: &mut Slot,
    message: &fog_proto::grpctunnel::v1::MessageData,
    max_message_bytes: u32,
) -> Result<(), StreamFailure> {
    let invalid = |text: &str| Err(StreamFailure::new(Code::InvalidArgument, text));
    if slot.half_closed {
        return invalid("request data after half-close");
    }
    if slot.pending.is_some() {
        return invalid("a request message began before the previous one was complete");
    }
    if !slot.kind.client_streaming && slot.messages >= 1 {
        return invalid("a second request message for a method that takes one");
    }
    if message.size > max_message_bytes {
        return Err(StreamFailure::new(
            Code::ResourceExhausted,
            format!(
                "request message of {} bytes is larger than the limit of {max_message_bytes} bytes",
                message.size
            ),
        ));
    }
    let len = message.data.len();
    if len > message.size as usize {
        return invalid("more request data than the message's declared size");
    }
    if let Some(failure) = take_credit(&slot.credit, len) {
        return Err(failure);
    }
    slot.messages += 1;
    let remaining = message.size - len as u32;
    slot.pending = (remaining > 0).then_some(remaining);
    Ok(())
}

/// Checks a further chunk of the current message and takes the stream's credit for it.
fn accept_more(slot: &mut Slot, len: usize) -> Result<(), StreamFailure> {
    let invalid = |text: &str| Err(StreamFailure::new(Code::InvalidArgument, text));
    let Some(remaining) = slot.pending else {
        return invalid("request data with no message envelope");
    };
    if len > remaining as usize {
        return invalid("more request data than the message's declared size");
    }
    if let Some(failure) = take_credit(&slot.credit, len) {
        return Err(failure);
    }
    let remaining = remaining - len as u32;
    slot.pending = (remaining > 0).then_some(remaining);
    Ok(())
}

/// What a discarded frame of `len` bytes grants back: its bytes in revision 1.
fn grant(revision: Revision, len: usize) -> u32 {
    match revision {
        Revision::One => u32::try_from(len).unwrap_or(u32::MAX),
        Revision::Zero => 0,
    }
}

fn take_credit(credit: &Credit, len: usize) -> Option<StreamFailure> {
    (!credit.take(len as u64)).then(|| {
        StreamFailure::new(
            Code::ResourceExhausted,
            format!("a request chunk of {len} bytes overruns the stream's flow-control window"),
        )
    })
}

/// How long the request side of a stream may stay open without a frame.
pub fn idle_cutoff(now: Instant, idle: Duration) -> Instant {
    now.checked_sub(idle).unwrap_or(now)
}

#[cfg(test)]
mod tests;
