//! The HTTP(S) server of `/metrics`: hyper's HTTP/1.1 server (already in the dependency tree
//! through tonic; axum would add a router we do not need for one path), TLS through
//! tokio-rustls when `[metrics] tls_cert`/`tls_key` are set.
//!
//! `GET` or `HEAD /metrics` answers the snapshot in the negotiated format; any other path is
//! 404 and any other method 405. At most [`MAX_CONNECTIONS`] connections are served at once
//! (more are closed on accept), request headers must arrive within [`HEADER_TIMEOUT`] and a
//! TLS handshake within [`TLS_HANDSHAKE_TIMEOUT`], so a local process cannot tie the agent up.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tokio_rustls::rustls;

use super::{render, Format, Sources};
use crate::config::MetricsConfig;

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Time limit for a request's headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time limit of a TLS handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the metrics endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The address could not be bound.
    #[error("cannot listen on {addr} (metrics.listen)")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A TLS file could not be read.
    #[error("cannot read {path} ({key})")]
    TlsRead {
        /// `metrics.tls_cert` or `metrics.tls_key`.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A TLS file holds no usable PEM certificate or key.
    #[error("{path} ({key}): {detail}")]
    TlsPem {
        /// `metrics.tls_cert` or `metrics.tls_key`.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// rustls refused the certificate and key.
    #[error("metrics.tls_cert / metrics.tls_key: {0}")]
    TlsConfig(String),
}

/// A running metrics endpoint.
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    tls: bool,
    stop: watch::Sender<bool>,
    accept: JoinHandle<()>,
    keepalive: JoinHandle<()>,
}

impl MetricsServer {
    /// The bound address (the real port when the config said 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether it serves HTTPS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Stops accepting and ends the sampler subscription; scrapes in flight finish on their own.
    pub fn stop(self) {
        // Ignored error: the accept loop has already ended.
        let _ = self.stop.send(true);
        self.accept.abort();
        self.keepalive.abort();
    }
}

/// Binds `[metrics] listen` and serves `/metrics` from `sources`.
pub async fn start(
    config: &MetricsConfig,
    sources: Sources,
) -> Result<MetricsServer, MetricsError> {
    let tls = match config.tls() {
        Some((cert, key)) => Some(tokio_rustls::TlsAcceptor::from(Arc::new(tls_config(
            cert, key,
        )?))),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| MetricsError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| MetricsError::Bind {
        addr: config.listen,
        source,
    })?;

    // Keeps the one sampler running at the configured interval; samples are read through
    // `TelemetryHub::latest`, so this subscription only drains its queue.
    let keepalive = match sources.telemetry().subscribe(config.sample_interval()) {
        Ok(subscription) => {
            tokio::spawn(async move { while subscription.recv().await.is_some() {} })
        }
        Err(err) => {
            tracing::warn!(error = %err, "metrics: no telemetry subscription; host metrics may be stale");
            tokio::spawn(async {})
        }
    };

    let (stop, mut stopped) = watch::channel(false);
    let is_tls = tls.is_some();
    let sources = Arc::new(sources);
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let accept = tokio::spawn(async move {
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(err) => {
                        tracing::debug!(error = %err, "metrics: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = stopped.changed() => return,
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                tracing::debug!(%peer, "metrics: too many connections; closing");
                continue;
            };
            let sources = sources.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let _ = stream.set_nodelay(true);
                match tls {
                    Some(acceptor) => {
                        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                            .await
                        {
                            Ok(Ok(stream)) => serve_connection(stream, sources).await,
                            Ok(Err(err)) => {
                                tracing::debug!(%peer, error = %err, "metrics: TLS handshake failed")
                            }
                            Err(_) => tracing::debug!(%peer, "metrics: TLS handshake timed out"),
                        }
                    }
                    None => serve_connection(stream, sources).await,
                }
            });
        }
    });
    tracing::info!(addr = %addr, tls = is_tls, "serving prometheus metrics on /metrics");
    Ok(MetricsServer {
        addr,
        tls: is_tls,
        stop,
        accept,
        keepalive,
    })
}

async fn serve_connection<S>(stream: S, sources: Arc<Sources>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request| {
        let sources = sources.clone();
        async move { Ok::<_, Infallible>(handle(request, &sources).await) }
    });
    let result = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(err) = result {
        tracing::debug!(error = %err, "metrics: connection ended with an error");
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Answers one request.
async fn handle(request: Request<Incoming>, sources: &Sources) -> Response<Full<Bytes>> {
    if request.uri().path() != "/metrics" {
        return plain(
            StatusCode::NOT_FOUND,
            "not found: the only path is /metrics\n",
        );
    }
    let head = match *request.method() {
        Method::GET => false,
        Method::HEAD => true,
        _ => {
            let mut response = plain(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed: use GET\n",
            );
            response.headers_mut().insert(
                hyper::header::ALLOW,
                hyper::header::HeaderValue::from_static("GET, HEAD"),
            );
            return response;
        }
    };
    let format = Format::negotiate(
        request
            .headers()
            .get(hyper::header::ACCEPT)
            .and_then(|v| v.to_str().ok()),
    );
    let body = match render(sources.snapshot().await, format) {
        Ok(body) => body,
        Err(_) => {
            tracing::error!("metrics: encoding failed");
            return plain(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n");
        }
    };
    let mut response = Response::new(Full::new(if head {
        Bytes::new()
    } else {
        Bytes::from(body)
    }));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(format.content_type()),
    );
    response
}

/// The rustls server configuration from PEM files (ring provider, as tonic uses).
fn tls_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, MetricsError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let read = |key_name: &'static str, path: &Path| {
        std::fs::read(path).map_err(|source| MetricsError::TlsRead {
            key: key_name,
            path: path.to_owned(),
            source,
        })
    };
    let cert_pem = read("metrics.tls_cert", cert)?;
    let key_pem = read("metrics.tls_key", key)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| MetricsError::TlsPem {
            key: "metrics.tls_cert",
            path: cert.to_owned(),
            detail: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(MetricsError::TlsPem {
            key: "metrics.tls_cert",
            path: cert.to_owned(),
            detail: "no PEM certificate".into(),
        });
    }
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| MetricsError::TlsPem {
        key: "metrics.tls_key",
        path: key.to_owned(),
        detail: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| MetricsError::TlsConfig(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| MetricsError::TlsConfig(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_files_are_checked_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let cert = dir.path().join("server.pem");
        let key = dir.path().join("server.key");
        std::fs::write(&cert, generated.cert.pem()).unwrap();
        std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
        assert!(tls_config(&cert, &key).is_ok());
        let err = tls_config(&dir.path().join("nope.pem"), &key).unwrap_err();
        assert!(err.to_string().contains("metrics.tls_cert"), "{err}");
        let err = tls_config(&key, &key).unwrap_err();
        assert!(err.to_string().contains("no PEM certificate"), "{err}");
        let err = tls_config(&cert, &cert).unwrap_err();
        assert!(err.to_string().contains("metrics.tls_key"), "{err}");
    }
}
