//! `[api]` (the gRPC listeners, TLS and limits) and `[metrics]` (the Prometheus endpoint).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::ByteSize;

/// `[api]`: the gRPC listeners.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// TCP addresses to serve on (mutual TLS); empty serves no TCP.
    pub listen: Vec<SocketAddr>,
    /// The local admin door (mode 0600); an empty path serves no unix socket.
    pub unix_socket: PathBuf,
    /// The server certificate chain (PEM).
    pub tls_cert: PathBuf,
    /// The server's private key (PEM).
    pub tls_key: PathBuf,
    /// The CA that client certificates must chain to (PEM).
    pub client_ca: PathBuf,
    /// Serve plaintext on loopback addresses (development only; every caller is then admin).
    pub insecure_loopback: bool,
    /// Largest request or response message.
    pub max_message_bytes: ByteSize,
    /// Concurrent streams (RPCs) per connection.
    pub max_concurrent_streams: u32,
    /// Time limit of a unary RPC.
    pub request_timeout_millis: u64,
    /// On SIGTERM/SIGINT: how long open streams may take to end before the agent exits anyway.
    pub shutdown_grace_millis: u64,
    /// Certificate revocation list (PEM) checked on every mutual-TLS handshake; empty = none.
    pub crl_file: PathBuf,
    /// How often the TLS files are checked for changes (and reloaded); 0 = only on SIGHUP.
    pub tls_reload_interval_millis: u64,
    /// Connections per TCP listener (handshaking and established), before the fd budget caps it.
    pub max_connections: u32,
    /// Connections per TCP listener from one peer IP address.
    pub max_connections_per_peer: u32,
    /// Unfinished TLS handshakes per TCP listener; a new connection beyond it closes the oldest.
    pub max_pending_handshakes: u32,
    /// Unfinished TLS handshakes per TCP listener from one peer IP address.
    pub max_pending_handshakes_per_peer: u32,
    /// Time limit of a TLS handshake.
    pub handshake_timeout_millis: u64,
    /// File descriptors kept for the agent's own files; connections share the rest.
    pub fd_reserve: u32,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 7443))],
            unix_socket: PathBuf::from("/run/fog-agent/agent.sock"),
            tls_cert: PathBuf::from("/etc/fog-agent/tls/server.pem"),
            tls_key: PathBuf::from("/etc/fog-agent/tls/server.key"),
            client_ca: PathBuf::from("/etc/fog-agent/tls/ca.pem"),
            insecure_loopback: false,
            max_message_bytes: ByteSize(4 * 1024 * 1024),
            max_concurrent_streams: 256,
            request_timeout_millis: 30_000,
            shutdown_grace_millis: 5_000,
            crl_file: PathBuf::new(),
            tls_reload_interval_millis: 5_000,
            max_connections: 4096,
            max_connections_per_peer: 256,
            max_pending_handshakes: 256,
            max_pending_handshakes_per_peer: 32,
            handshake_timeout_millis: 10_000,
            fd_reserve: 1024,
        }
    }
}

impl ApiConfig {
    /// [`Self::request_timeout_millis`] as a duration.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_millis)
    }

    /// [`Self::shutdown_grace_millis`] as a duration.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_millis)
    }

    /// [`Self::handshake_timeout_millis`] as a duration.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_millis)
    }

    /// [`Self::tls_reload_interval_millis`] as a duration; None = reload only on SIGHUP.
    pub fn tls_reload_interval(&self) -> Option<Duration> {
        (self.tls_reload_interval_millis > 0)
            .then(|| Duration::from_millis(self.tls_reload_interval_millis))
    }

    /// The CRL path, unless disabled with an empty path.
    pub fn crl_file(&self) -> Option<&Path> {
        (!self.crl_file.as_os_str().is_empty()).then_some(self.crl_file.as_path())
    }

    /// The unix socket path, unless disabled with an empty path.
    pub fn unix_socket(&self) -> Option<&Path> {
        (!self.unix_socket.as_os_str().is_empty()).then_some(self.unix_socket.as_path())
    }
}

/// `[metrics]`: the Prometheus `/metrics` endpoint (HTTP, plain or TLS; no authentication, so
/// loopback by default; it exposes no secrets and changes nothing).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve `/metrics`.
    pub enabled: bool,
    /// Address to serve on.
    pub listen: SocketAddr,
    /// How often the host telemetry sampler runs while the endpoint is on; a scrape reads the
    /// newest sample and never collects one itself.
    pub sample_interval_millis: u64,
    /// Server certificate chain (PEM) for HTTPS; with `tls_key`, or both empty for plain HTTP.
    pub tls_cert: PathBuf,
    /// The certificate's private key (PEM).
    pub tls_key: PathBuf,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            sample_interval_millis: 5_000,
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
        }
    }
}

impl MetricsConfig {
    /// [`Self::sample_interval_millis`] as a duration.
    pub fn sample_interval(&self) -> Duration {
        Duration::from_millis(self.sample_interval_millis)
    }

    /// The certificate and key paths when TLS is configured.
    pub fn tls(&self) -> Option<(&Path, &Path)> {
        (!self.tls_cert.as_os_str().is_empty() && !self.tls_key.as_os_str().is_empty())
            .then_some((self.tls_cert.as_path(), self.tls_key.as_path()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;

    #[test]
    fn connection_limits_and_crl_are_checked_by_key() {
        let mut config = Config::default();
        config.api.max_connections = 0;
        config.api.max_pending_handshakes_per_peer = 0;
        config.api.fd_reserve = 10;
        config.api.handshake_timeout_millis = 5;
        config.api.tls_reload_interval_millis = 50;
        config.api.crl_file = "relative/crl.pem".into();
        let keys: Vec<&str> = config.problems().iter().map(|p| p.key).collect();
        for key in [
            "api.max_connections",
            "api.max_pending_handshakes_per_peer",
            "api.fd_reserve",
            "api.handshake_timeout_millis",
            "api.tls_reload_interval_millis",
            "api.crl_file",
        ] {
            assert!(keys.contains(&key), "{key} not in {keys:?}");
        }
        assert!(Config::default().problems().is_empty());
        assert_eq!(Config::default().api.crl_file(), None);
        assert!(Config::default().api.tls_reload_interval().is_some());
    }
}
