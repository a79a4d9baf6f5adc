//! `[market]`: the market link, reverse tunnels the agent opens to market endpoints.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// `[market]`: outbound reverse tunnels to markets (none configured = no tunnel).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MarketConfig {
    /// Market endpoints, `https://host:port`; one tunnel each.
    pub endpoints: Vec<String>,
    /// The CA the markets' server certificates must chain to (PEM).
    pub ca: PathBuf,
    /// The agent's client certificate chain (PEM; URI SAN `fog://agent/<host_id>`).
    pub client_cert: PathBuf,
    /// The client certificate's private key (PEM), or `tpm`: the TPM-resident identity key
    /// signs the handshakes (see tpm/IDENTITY.md).
    pub client_key: PathBuf,
    /// Concurrent streams per tunnel; a stream beyond it is refused RESOURCE_EXHAUSTED.
    pub max_streams: u32,
    /// The first reconnect delay's bound (full-jitter exponential backoff).
    pub reconnect_min_millis: u64,
    /// The largest reconnect delay's bound.
    pub reconnect_max_millis: u64,
    /// After losing a tunnel that was up at least `healthy_after_millis`: a uniform random wait
    /// in [0, this) before the first reconnect, and no later wait's bound below it, so a market
    /// restart is not met by every agent in the same second.
    pub reconnect_spread_millis: u64,
    /// How long a tunnel must stay up before the backoff starts over.
    pub healthy_after_millis: u64,
    /// HTTP/2 keepalive pings on the tunnel's connection. Default gRPC servers (Go, C core)
    /// answer pings more often than every 5 minutes with a `too_many_pings` GOAWAY when they
    /// send no data, so the default is just above that; dead connections are found by
    /// `dead_after_millis`.
    pub keepalive_interval_millis: u64,
    /// A tunnel whose peer stops acknowledging (network gone, host gone) is declared dead after
    /// about this long: TCP keepalive probes and `TCP_USER_TIMEOUT` on the connection.
    pub dead_after_millis: u64,
    /// Time limit of the TCP connect and TLS handshake.
    pub connect_timeout_millis: u64,
    /// A stream whose request side stays open without a frame, or whose market grants no
    /// window, for this long is closed DEADLINE_EXCEEDED.
    pub stream_idle_timeout_millis: u64,
    /// Reopen each tunnel after it has been up this long (0 = never): the old one stops taking
    /// new streams and its open ones get `drain_millis` to finish.
    pub rotate_after_millis: u64,
    /// How long in-flight streams may finish on a tunnel being rotated or shut down.
    pub drain_millis: u64,
}

impl Default for MarketConfig {
    fn default() -> Self {
        Self {
            endpoints: Vec::new(),
            ca: PathBuf::from("/etc/fog-agent/tls/market-ca.pem"),
            client_cert: PathBuf::from("/etc/fog-agent/tls/agent.pem"),
            client_key: PathBuf::from("/etc/fog-agent/tls/agent.key"),
            max_streams: 1024,
            reconnect_min_millis: 1_000,
            reconnect_max_millis: 60_000,
            reconnect_spread_millis: 30_000,
            healthy_after_millis: 30_000,
            keepalive_interval_millis: 310_000,
            dead_after_millis: 40_000,
            connect_timeout_millis: 10_000,
            stream_idle_timeout_millis: 60_000,
            rotate_after_millis: 0,
            drain_millis: 30_000,
        }
    }
}

fn millis(value: u64) -> Duration {
    Duration::from_millis(value)
}

impl MarketConfig {
    /// [`Self::reconnect_min_millis`] as a duration.
    pub fn reconnect_min(&self) -> Duration {
        millis(self.reconnect_min_millis)
    }
    /// [`Self::reconnect_max_millis`] as a duration.
    pub fn reconnect_max(&self) -> Duration {
        millis(self.reconnect_max_millis)
    }
    /// [`Self::reconnect_spread_millis`] as a duration.
    pub fn reconnect_spread(&self) -> Duration {
        millis(self.reconnect_spread_millis)
    }
    /// [`Self::healthy_after_millis`] as a duration.
    pub fn healthy_after(&self) -> Duration {
        millis(self.healthy_after_millis)
    }
    /// [`Self::keepalive_interval_millis`] as a duration.
    pub fn keepalive_interval(&self) -> Duration {
        millis(self.keepalive_interval_millis)
    }
    /// [`Self::dead_after_millis`] as a duration.
    pub fn dead_after(&self) -> Duration {
        millis(self.dead_after_millis)
    }
    /// [`Self::connect_timeout_millis`] as a duration.
    pub fn connect_timeout(&self) -> Duration {
        millis(self.connect_timeout_millis)
    }
    /// [`Self::stream_idle_timeout_millis`] as a duration.
    pub fn stream_idle_timeout(&self) -> Duration {
        millis(self.stream_idle_timeout_millis)
    }
    /// [`Self::rotate_after_millis`] as a duration; None = never.
    pub fn rotate_after(&self) -> Option<Duration> {
        (self.rotate_after_millis > 0).then(|| millis(self.rotate_after_millis))
    }
    /// [`Self::drain_millis`] as a duration.
    pub fn drain(&self) -> Duration {
        millis(self.drain_millis)
    }
}

/// A parsed market endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarketEndpoint {
    /// As configured (`https://host:port`), the name used in logs and metrics.
    pub url: String,
    /// The host name or IP address the server certificate must match.
    pub host: String,
    /// The TCP port.
    pub port: u16,
}

/// Parses `https://host:port` (IPv6 hosts in brackets; no path, query or user info).
pub fn parse_endpoint(url: &str) -> Result<MarketEndpoint, String> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| format!("{url:?} is not an https:// URL"))?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['/', '?', '#', '@']) || rest.is_empty() {
        return Err(format!(
            "{url:?} must be https://host:port with nothing after the port"
        ));
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (host, port) = v6
            .split_once("]:")
            .ok_or_else(|| format!("{url:?}: an IPv6 host needs a port: https://[addr]:port"))?;
        host.parse::<std::net::Ipv6Addr>()
            .map_err(|_| format!("{url:?}: {host:?} is not an IPv6 address"))?;
        (host, port)
    } else {
        rest.rsplit_once(':')
            .ok_or_else(|| format!("{url:?} has no port (https://host:port)"))?
    };
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{url:?}: {port:?} is not a port from 1 to 65535"))?;
    if host.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    Ok(MarketEndpoint {
        url: url.to_owned(),
        host: host.to_owned(),
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_or_name_what_is_wrong() {
        let ep = parse_endpoint("https://market.example:8443").unwrap();
        assert_eq!((ep.host.as_str(), ep.port), ("market.example", 8443));
        let ep = parse_endpoint("https://[2001:db8::1]:443/").unwrap();
        assert_eq!((ep.host.as_str(), ep.port), ("2001:db8::1", 443));
        for (bad, says) in [
            ("http://m:1", "https://"),
            ("https://m", "no port"),
            ("https://m:0", "port from 1"),
            ("https://m:99999", "port from 1"),
            ("https://m:1/path", "nothing after the port"),
            ("https://u@m:1", "nothing after the port"),
            ("https://:1", "no host"),
            ("https://[zz]:1", "not an IPv6"),
        ] {
            let err = parse_endpoint(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }
}
