//! The audit trail: one structured event (target [`TARGET`]) per state-changing RPC
//! ([`Rpc::changes_state`]), per RPC answered `PERMISSION_DENIED` or `UNAUTHENTICATED`, and per
//! failed TLS handshake, with the caller (door, role, certificate subject and serial, peer
//! address; on the unix socket the peer's uid and pid) and the outcome (the gRPC code).
//!
//! [`Audited`] wraps the agent service of each listener as one tower service, so no handler
//! logs for itself: it reads the caller from the connection (the request's extensions) and the
//! outcome from the response (`grpc-status` in the headers of an immediate error, else in the
//! trailers at the end of the body). A call that ends without a status (cancelled by the
//! client, or its deadline passed) is logged as `Cancelled`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::server::NamedService;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo, UdsConnectInfo};
use tonic::Code;

use super::auth::{self, Rpc};
use super::Door;

/// The tracing target of audit events (`FOG_LOG=fog_agent::audit=info` selects them).
pub const TARGET: &str = "fog_agent::audit";

/// The longest status message an audit event repeats.
const MESSAGE_MAX: usize = 256;

/// Who called, as the connection says.
#[derive(Debug, Clone, Default)]
struct Caller {
    door: &'static str,
    role: String,
    subject: String,
    serial: String,
    peer: String,
    uid: Option<u32>,
    pid: Option<i32>,
}

impl Caller {
    fn of(extensions: &http::Extensions, door: Door) -> Self {
        let mut caller = Caller {
            door: match door {
                Door::Mtls => "mtls",
                Door::LocalAdmin => "local",
                Door::Tunnel => "tunnel",
            },
            ..Caller::default()
        };
        if let Some(tunnel) = extensions.get::<super::TunnelCaller>() {
            caller.role = tunnel.role.name().to_owned();
            caller.subject.clone_from(&tunnel.subject);
            caller.serial.clone_from(&tunnel.serial);
            caller.peer.clone_from(&tunnel.endpoint);
        } else if let Some(tls) = extensions.get::<TlsConnectInfo<TcpConnectInfo>>() {
            caller.peer = peer_text(tls.get_ref().remote_addr());
            if let Some(leaf) = tls.peer_certs().as_ref().and_then(|certs| certs.first()) {
                caller.identify(leaf);
            }
        } else if let Some(tcp) = extensions.get::<TcpConnectInfo>() {
            caller.peer = peer_text(tcp.remote_addr());
        } else if let Some(uds) = extensions.get::<UdsConnectInfo>() {
            caller.peer = "unix".to_owned();
            caller.uid = uds.peer_cred.map(|c| c.uid());
            caller.pid = uds.peer_cred.and_then(|c| c.pid());
        }
        if door == Door::LocalAdmin {
            caller.role = auth::Role::Admin.name().to_owned();
        } else if caller.role.is_empty() {
            caller.role = "none".to_owned();
        }
        caller
    }

    /// Role, subject and serial from a DER client certificate.
    fn identify(&mut self, der: &[u8]) {
        self.role = match auth::role_from_certificate(der) {
            Ok(role) => role.name().to_owned(),
            Err(_) => "none".to_owned(),
        };
        if let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) {
            self.subject = cert.subject().to_string();
            self.serial = cert.raw_serial_as_string();
        }
    }
}

fn peer_text(addr: Option<SocketAddr>) -> String {
    addr.map_or_else(|| "unknown".to_owned(), |a| a.to_string())
}

/// One audit event, written when the outcome is known (or when the call is dropped).
#[derive(Debug)]
struct Pending {
    rpc: &'static str,
    caller: Caller,
    /// Whether the event is written whatever the outcome (a state-changing RPC).
    always: bool,
    done: bool,
}

impl Pending {
    fn finish(&mut self, code: Code, message: &str) {
        if self.done {
            return;
        }
        self.done = true;
        if !(self.always || matches!(code, Code::PermissionDenied | Code::Unauthenticated)) {
            return;
        }
        let c = &self.caller;
        let detail: String = message.chars().take(MESSAGE_MAX).collect();
        let ok = code == Code::Ok;
        let code = format!("{code:?}");
        if ok {
            tracing::info!(
                target: TARGET,
                rpc = self.rpc,
                code = %code,
                door = c.door,
                role = %c.role,
                subject = %c.subject,
                serial = %c.serial,
                peer = %c.peer,
                uid = c.uid,
                pid = c.pid,
                "rpc"
            );
        } else {
            tracing::warn!(
                target: TARGET,
                rpc = self.rpc,
                code = %code,
                detail = %detail,
                door = c.door,
                role = %c.role,
                subject = %c.subject,
                serial = %c.serial,
                peer = %c.peer,
                uid = c.uid,
                pid = c.pid,
                "rpc"
            );
        }
    }

    /// The outcome in `headers`, if they carry one.
    fn finish_from(&mut self, headers: &http::HeaderMap) -> bool {
        // tonic reads the code and percent-decodes the message.
        let Some(status) = tonic::Status::from_header_map(headers) else {
            return false;
        };
        self.finish(status.code(), status.message());
        true
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.finish(Code::Cancelled, "ended without a status");
    }
}

/// Logs a failed TLS handshake on `listener` from `peer` as an audit event.
pub fn handshake_failed(listener: SocketAddr, peer: SocketAddr, error: &str) {
    let error: String = error.chars().take(MESSAGE_MAX).collect();
    tracing::warn!(
        target: TARGET,
        listener = %listener,
        peer = %peer,
        door = "mtls",
        outcome = "handshake_failed",
        error = %error,
        "handshake failed"
    );
}

/// The RPC a request path names (`/fog.agent.v1.Agent/StartJob`).
fn rpc_of(path: &str) -> Option<Rpc> {
    let method = path.rsplit('/').next()?;
    Rpc::ALL.into_iter().find(|rpc| rpc.method() == method)
}

/// The agent service of one listener with its audit trail.
#[derive(Debug, Clone)]
pub struct Audited<S> {
    inner: S,
    door: Door,
}

impl<S> Audited<S> {
    /// Wraps `inner`, served on a listener of kind `door`.
    pub fn new(inner: S, door: Door) -> Self {
        Self { inner, door }
    }
}

impl<S: NamedService> NamedService for Audited<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> tower::Service<http::Request<Body>> for Audited<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let rpc = rpc_of(request.uri().path());
        let mut pending = Pending {
            rpc: rpc.map_or("unknown", Rpc::method),
            caller: Caller::of(request.extensions(), self.door),
            always: rpc.is_some_and(Rpc::changes_state),
            done: false,
        };
        let call = self.inner.call(request);
        Box::pin(async move {
            let response = call.await?;
            if pending.finish_from(response.headers()) || !pending.always {
                // Known now, or only a denial would be logged and that is never in the
                // trailers (dropping `pending` logs nothing then).
                return Ok(response);
            }
            let (parts, body) = response.into_parts();
            let body = Body::new(AuditBody {
                inner: body,
                pending,
            });
            Ok(http::Response::from_parts(parts, body))
        })
    }
}

/// A response body that writes the audit event when its trailers (or its end) pass.
struct AuditBody {
    inner: Body,
    pending: Pending,
}

impl http_body::Body for AuditBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    self.pending.finish_from(trailers);
                }
            }
            Poll::Ready(Some(Err(status))) => {
                let (code, message) = (status.code(), status.message().to_owned());
                self.pending.finish(code, &message);
            }
            Poll::Ready(None) => self
                .pending
                .finish(Code::Unknown, "body ended without trailers"),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_rpcs() {
        assert_eq!(rpc_of("/fog.agent.v1.Agent/StartJob"), Some(Rpc::StartJob));
        assert_eq!(
            rpc_of("/fog.agent.v1.Agent/GetAttestation"),
            Some(Rpc::GetAttestation)
        );
        assert_eq!(rpc_of("/fog.agent.v1.Agent/Nope"), None);
    }
}
