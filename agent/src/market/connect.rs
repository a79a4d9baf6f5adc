//! One connection to a market endpoint: TCP with keepalive probes and a user timeout (so a
//! dead peer is found within `[market] dead_after_millis` without HTTP/2 pings a default gRPC
//! server would punish), mutual TLS against `[market] ca` with the endpoint's host name, and
//! the market's role read from its server certificate (market or auditor; admin is refused).
//! Tonic's transport runs HTTP/2 over it; the TLS is ours because tonic's own connector can
//! neither apply these socket options nor show the server's certificate.

use std::future::Future;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::TlsConnector;

use crate::api::auth::{self, Role};
use crate::api::TunnelCaller;
use crate::config::MarketEndpoint;

/// Why a connection to a market failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The host name did not resolve.
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        /// The host.
        host: String,
        /// What the resolver said.
        source: std::io::Error,
    },
    /// TCP connect failed or timed out.
    #[error("cannot connect to {addr}: {source}")]
    Tcp {
        /// The address.
        addr: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The TLS handshake failed (certificate not from the CA, wrong host name, ...).
    #[error("TLS handshake with {host} failed: {source}")]
    Tls {
        /// The host.
        host: String,
        /// rustls's reason.
        source: std::io::Error,
    },
    /// The market's certificate names no usable role.
    #[error("the market's certificate is refused: {0}")]
    Role(String),
}

/// Ends a connection from outside: once killed, its reads and writes fail, hyper drops the
/// connection, and the market sees the tunnel's call reset (dropping tonic's handles does not
/// reset a call whose request stream hyper still polls).
#[derive(Debug, Default)]
pub struct KillSwitch {
    killed: std::sync::atomic::AtomicBool,
    waker: futures_util::task::AtomicWaker,
}

impl KillSwitch {
    /// Kills the connection.
    pub fn kill(&self) {
        self.killed.store(true, std::sync::atomic::Ordering::SeqCst);
        self.waker.wake();
    }

    fn check(&self, cx: &Context<'_>) -> Result<(), std::io::Error> {
        self.waker.register(cx.waker());
        if self.killed.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "the tunnel ended",
            ));
        }
        Ok(())
    }
}

/// An IO that fails once its [`KillSwitch`] is killed.
#[derive(Debug)]
pub struct Killable<T> {
    io: T,
    switch: Arc<KillSwitch>,
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Killable<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.switch.check(cx)?;
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Killable<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.switch.check(cx)?;
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.switch.check(cx)?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

type Io = TokioIo<Killable<tokio_rustls::client::TlsStream<TcpStream>>>;

/// What a connection is made with.
#[derive(Clone)]
pub struct Connector {
    endpoint: MarketEndpoint,
    tls: TlsConnector,
    dead_after: Duration,
    /// The identity the last handshake established.
    caller: Arc<Mutex<Option<TunnelCaller>>>,
    /// Kills the connections made.
    switch: Arc<KillSwitch>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("endpoint", &self.endpoint.url)
            .finish_non_exhaustive()
    }
}

impl Connector {
    /// A connector to `endpoint` with this TLS configuration (its caller bounds the time a
    /// connection may take).
    pub fn new(
        endpoint: MarketEndpoint,
        tls: Arc<rustls::ClientConfig>,
        dead_after: Duration,
    ) -> Self {
        Self {
            endpoint,
            tls: TlsConnector::from(tls),
            dead_after,
            caller: Arc::new(Mutex::new(None)),
            switch: Arc::new(KillSwitch::default()),
        }
    }

    /// The switch that kills the connections this connector made.
    pub fn kill_switch(&self) -> Arc<KillSwitch> {
        self.switch.clone()
    }

    /// Who the last successful handshake says the market is.
    pub fn caller(&self) -> Option<TunnelCaller> {
        self.caller
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    async fn connect(self) -> Result<Io, ConnectError> {
        let MarketEndpoint { host, port, url } = &self.endpoint;
        let addrs: Vec<_> = tokio::net::lookup_host((host.as_str(), *port))
            .await
            .map_err(|source| ConnectError::Resolve {
                host: host.clone(),
                source,
            })?
            .collect();
        let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
        let mut tcp = None;
        for addr in &addrs {
            match TcpStream::connect(addr).await {
                Ok(stream) => {
                    tcp = Some(stream);
                    break;
                }
                Err(err) => last = err,
            }
        }
        let tcp = tcp.ok_or_else(|| ConnectError::Tcp {
            addr: format!("{host}:{port}"),
            source: last,
        })?;
        let _ = tcp.set_nodelay(true);
        if let Err(err) = set_dead_peer_detection(&tcp, self.dead_after) {
            tracing::warn!(endpoint = %url, error = %err, "cannot set TCP keepalive options");
        }
        let name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| {
            ConnectError::Tls {
                host: host.clone(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
            }
        })?;
        let tls = self
            .tls
            .connect(name, tcp)
            .await
            .map_err(|source| ConnectError::Tls {
                host: host.clone(),
                source,
            })?;
        let leaf = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|certs| certs.first())
            .ok_or_else(|| ConnectError::Role("no server certificate".into()))?;
        let caller = caller_of(url, leaf.as_ref())?;
        *self.caller.lock().unwrap_or_else(PoisonError::into_inner) = Some(caller);
        Ok(TokioIo::new(Killable {
            io: tls,
            switch: self.switch.clone(),
        }))
    }
}

/// The identity of a market from its server certificate: its role (market or auditor).
pub fn caller_of(endpoint: &str, der: &[u8]) -> Result<TunnelCaller, ConnectError> {
    let role = auth::role_from_certificate(der).map_err(|e| ConnectError::Role(e.to_string()))?;
    if role == Role::Admin {
        return Err(ConnectError::Role(
            "it names the admin role, which is never reachable through a tunnel".into(),
        ));
    }
    let (subject, serial) = match x509_parser::parse_x509_certificate(der) {
        Ok((_, cert)) => (cert.subject().to_string(), cert.raw_serial_as_string()),
        Err(_) => (String::new(), String::new()),
    };
    Ok(TunnelCaller {
        role,
        endpoint: endpoint.to_owned(),
        subject,
        serial,
    })
}

/// TCP keepalive probes and a user timeout adding up to about `dead_after`: idle a quarter of
/// it, then six probes an eighth apart; unacknowledged data also gives up after `dead_after`.
fn set_dead_peer_detection(tcp: &TcpStream, dead_after: Duration) -> std::io::Result<()> {
    let fd = tcp.as_raw_fd();
    let secs = |d: Duration| libc::c_int::try_from(d.as_secs().max(1)).unwrap_or(libc::c_int::MAX);
    let user_timeout = libc::c_int::try_from(dead_after.as_millis()).unwrap_or(libc::c_int::MAX);
    let options = [
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1),
        (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, secs(dead_after / 4)),
        (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, secs(dead_after / 8)),
        (libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 6),
        (libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, user_timeout),
    ];
    for (level, name, value) in options {
        // SAFETY: `fd` is an open socket owned by `tcp` for the duration of the call, and the
        // option value is a live c_int whose size is passed.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                std::ptr::from_ref(&value).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

impl tower::Service<http::Uri> for Connector {
    type Response = Io;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        Box::pin(self.clone().connect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_cert(uris: &[&str]) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        for uri in uris {
            params.subject_alt_names.push(rcgen::SanType::URI(
                rcgen::string::Ia5String::try_from(*uri).unwrap(),
            ));
        }
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn a_market_is_its_certificates_role_and_never_admin() {
        let caller = caller_of("https://m:1", &server_cert(&["fog://role/market"])).unwrap();
        assert_eq!(caller.role, Role::Market);
        assert_eq!(caller.endpoint, "https://m:1");
        assert!(!caller.serial.is_empty());
        let caller = caller_of("https://m:1", &server_cert(&["fog://role/auditor"])).unwrap();
        assert_eq!(caller.role, Role::Auditor);
        for (uris, says) in [
            (&["fog://role/admin"][..], "admin role"),
            (&[][..], "no fog://role/"),
            (
                &["fog://role/market", "fog://role/admin"][..],
                "more than one role",
            ),
            (&["fog://role/root"][..], "unknown role"),
        ] {
            let err = caller_of("https://m:1", &server_cert(uris))
                .unwrap_err()
                .to_string();
            assert!(err.contains(says), "{uris:?}: {err}");
        }
    }
}
