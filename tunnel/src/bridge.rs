//! One tunnelled stream as an HTTP/2 gRPC call into the served tower service: the request
//! body reassembled from the market's chunks (`RequestBody`), the response's headers,
//! messages and trailers turned back into frames (`StreamOut`), under the stream's deadline,
//! its idle timeout and the market's cancel.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use fog_proto::google::rpc::Status as RpcStatus;
use fog_proto::grpctunnel::v1::{
    server_to_client::Frame, CloseStream, MessageData, Metadata, ServerToClient,
};
use http_body::{Body, Frame as BodyFrame};
use tokio::sync::{mpsc, oneshot};
use tonic::Code;
use tower::{Service, ServiceExt};

use crate::demux::{OpenStream, Revision, StreamFailure, CHUNK_MAX};
use crate::flow::{Credit, SendWindow};
use crate::metadata::{request_headers, rpc_status, simple_status, status_of, to_metadata};
use crate::outbound::{OutboundTx, TunnelGone};
use crate::TunnelStats;

/// The length-prefixed message framing of gRPC over HTTP/2.
const GRPC_PREFIX: usize = 5;

/// A piece of a request message, from the read loop to the stream's body.
#[derive(Debug)]
pub(crate) struct Chunk {
    /// The whole message's size, on its first chunk.
    pub size: Option<u32>,
    /// The data.
    pub data: Bytes,
}

/// The request body of a tunnelled call: whole gRPC-framed messages, built from the chunks the
/// read loop forwards. Each chunk consumed gives its bytes back to the stream's credit and, in
/// revision 1, to the market as a window update. Ends when the market half-closes.
pub(crate) struct RequestBody {
    id: i64,
    chunks: mpsc::UnboundedReceiver<Chunk>,
    message: BytesMut,
    missing: usize,
    credit: Arc<Credit>,
    window_updates: Option<OutboundTx>,
}

impl RequestBody {
    fn consumed(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        self.credit.give(bytes as u64);
        if let Some(out) = &self.window_updates {
            // A market that reads no control frames is found by the read loop.
            let _ = out.control(ServerToClient {
                stream_id: self.id,
                frame: Some(Frame::WindowUpdate(bytes as u32)),
            });
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<BodyFrame<Bytes>, Infallible>>> {
        loop {
            let Some(chunk) = std::task::ready!(self.chunks.poll_recv(cx)) else {
                return Poll::Ready(None);
            };
            let len = chunk.data.len();
            if let Some(size) = chunk.size {
                // The read loop checked the size against the limit before forwarding.
                let size = size as usize;
                let mut message = BytesMut::with_capacity(GRPC_PREFIX + size);
                message.put_u8(0);
                message.put_u32(size as u32);
                self.message = message;
                self.missing = size;
            }
            let body = &mut *self;
            body.message.extend_from_slice(&chunk.data);
            body.missing = body.missing.saturating_sub(len);
            self.consumed(len);
            if self.missing == 0 && !self.message.is_empty() {
                let message = std::mem::take(&mut self.message).freeze();
                return Poll::Ready(Some(Ok(BodyFrame::data(message))));
            }
        }
    }
}

/// How a stream ended, before its last frames are sent.
#[derive(Debug)]
enum Ending {
    /// Send this status (and trailers).
    Close(RpcStatus, Metadata),
    /// The tunnel is gone: nothing more can be sent.
    Gone,
}

impl From<TunnelGone> for Ending {
    fn from(_: TunnelGone) -> Self {
        Ending::Gone
    }
}

fn close(code: Code, message: impl Into<String>) -> Ending {
    Ending::Close(simple_status(code, message), Metadata::default())
}

/// A stream's outbound half: headers once, then messages, then the close.
struct StreamOut {
    id: i64,
    out: OutboundTx,
    headers_sent: bool,
    window: Option<Arc<SendWindow>>,
    idle: Duration,
    stats: Arc<TunnelStats>,
}

impl StreamOut {
    async fn frame(&self, frame: Frame) -> Result<(), TunnelGone> {
        self.out
            .send(ServerToClient {
                stream_id: self.id,
                frame: Some(frame),
            })
            .await
    }

    async fn headers(&mut self, headers: Metadata) -> Result<(), TunnelGone> {
        if self.headers_sent {
            return Ok(());
        }
        self.headers_sent = true;
        self.frame(Frame::ResponseHeaders(headers)).await
    }

    /// One response message in chunks of at most 16 KiB and, in revision 1, at most the
    /// market's window.
    async fn message(&mut self, mut message: Bytes) -> Result<(), Ending> {
        let size = message.len() as u32;
        let mut first = true;
        loop {
            let want = message.len().min(CHUNK_MAX);
            let n = match &self.window {
                Some(window) => window.acquire(want, self.idle).await.map_err(|_| {
                    close(
                        Code::DeadlineExceeded,
                        format!(
                            "the market granted no flow-control window for {} ms",
                            self.idle.as_millis()
                        ),
                    )
                })?,
                None => want,
            };
            let data = message.split_to(n);
            self.stats.add_bytes_out(n);
            let frame = if first {
                Frame::ResponseMessage(MessageData { size, data })
            } else {
                Frame::MoreResponseData(data)
            };
            self.frame(frame).await?;
            first = false;
            if message.is_empty() {
                return Ok(());
            }
        }
    }

    async fn finish(mut self, ending: Ending) {
        let Ending::Close(status, trailers) = ending else {
            return;
        };
        if self.headers(Metadata::default()).await.is_err() {
            return;
        }
        let _ = self
            .frame(Frame::CloseStream(CloseStream {
                response_trailers: Some(trailers),
                status: Some(status),
            }))
            .await;
    }
}

/// What a stream's task is given.
pub(crate) struct StreamTask<S> {
    pub service: S,
    pub open: OpenStream,
    pub chunks: mpsc::UnboundedReceiver<Chunk>,
    pub abort: oneshot::Receiver<StreamFailure>,
    pub window: Arc<SendWindow>,
    pub out: OutboundTx,
    pub extensions: http::Extensions,
    pub deadline: Option<Duration>,
    pub idle: Duration,
    pub stats: Arc<TunnelStats>,
}

impl<S: crate::GrpcService> StreamTask<S> {
    /// Runs the call to its end and sends the stream's last frames.
    pub async fn run(self) {
        let StreamTask {
            service,
            open,
            chunks,
            abort,
            window,
            out,
            extensions,
            deadline,
            idle,
            stats,
        } = self;
        let id = open.id;
        let mut stream_out = StreamOut {
            id,
            out: out.clone(),
            headers_sent: false,
            window: (open.revision == Revision::One).then_some(window),
            idle,
            stats,
        };
        let body = RequestBody {
            id,
            chunks,
            message: BytesMut::new(),
            missing: 0,
            credit: open.credit.clone(),
            window_updates: (open.revision == Revision::One).then_some(out),
        };
        let request = match build_request(&open, body, extensions) {
            Ok(request) => request,
            Err(ending) => return stream_out.finish(ending).await,
        };
        let ending = {
            let call = respond(
                service,
                request,
                open.kind.server_streaming,
                &mut stream_out,
            );
            let expired = async {
                match deadline {
                    Some(limit) => tokio::time::sleep(limit).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                ending = call => ending,
                Ok(failure) = abort => close(failure.code, failure.message),
                () = expired => close(Code::DeadlineExceeded, "the call's deadline passed"),
            }
        };
        stream_out.finish(ending).await;
    }
}

fn build_request(
    open: &OpenStream,
    body: RequestBody,
    extensions: http::Extensions,
) -> Result<http::Request<tonic::body::Body>, Ending> {
    let uri: http::Uri = format!("/{}", open.method).parse().map_err(|_| {
        close(
            Code::InvalidArgument,
            format!("{:?} is not a method name", open.method),
        )
    })?;
    let mut request = http::Request::new(tonic::body::Body::new(body));
    *request.method_mut() = http::Method::POST;
    *request.uri_mut() = uri;
    *request.version_mut() = http::Version::HTTP_2;
    *request.headers_mut() = request_headers(open.headers.as_ref());
    *request.extensions_mut() = extensions;
    Ok(request)
}

/// Calls the service and forwards its response: headers, each message, then the status.
async fn respond<S>(
    service: S,
    request: http::Request<tonic::body::Body>,
    server_streaming: bool,
    out: &mut StreamOut,
) -> Ending
where
    S: Service<
        http::Request<tonic::body::Body>,
        Response = http::Response<tonic::body::Body>,
        Error = Infallible,
    >,
{
    let response = match service.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let (parts, mut body) = response.into_parts();
    if out.headers(to_metadata(&parts.headers)).await.is_err() {
        return Ending::Gone;
    }
    if let Some(status) = status_of(&parts.headers) {
        // A trailers-only response: the status came with the headers.
        return Ending::Close(status, Metadata::default());
    }
    let mut buffer = BytesMut::new();
    let mut messages = 0u64;
    loop {
        let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
        let frame = match frame {
            None => {
                return close(Code::Internal, "the response ended without a status");
            }
            Some(Err(status)) => return Ending::Close(rpc_status(&status), Metadata::default()),
            Some(Ok(frame)) => frame,
        };
        let frame = match frame.into_data() {
            Ok(data) => {
                buffer.extend_from_slice(&data);
                while let Some(message) = next_message(&mut buffer) {
                    let message = match message {
                        Ok(message) => message,
                        Err(ending) => return ending,
                    };
                    messages += 1;
                    if !server_streaming && messages > 1 {
                        return close(
                            Code::Internal,
                            "a unary call answered more than one message",
                        );
                    }
                    if let Err(ending) = out.message(message).await {
                        return ending;
                    }
                }
                continue;
            }
            Err(frame) => frame,
        };
        if let Ok(trailers) = frame.into_trailers() {
            let status = status_of(&trailers)
                .unwrap_or_else(|| simple_status(Code::Internal, "trailers without a status"));
            return Ending::Close(status, to_metadata(&trailers));
        }
    }
}

/// The next whole message in `buffer`, if one is complete.
fn next_message(buffer: &mut BytesMut) -> Option<Result<Bytes, Ending>> {
    if buffer.len() < GRPC_PREFIX {
        return None;
    }
    if buffer[0] != 0 {
        return Some(Err(close(
            Code::Internal,
            "the service sent a compressed message (none was negotiated)",
        )));
    }
    let len = u32::from_be_bytes([buffer[1], buffer[2], buffer[3], buffer[4]]) as usize;
    if buffer.len() < GRPC_PREFIX + len {
        return None;
    }
    buffer.advance(GRPC_PREFIX);
    Some(Ok(buffer.split_to(len).freeze()))
}
