//! Jobs' networks: a network namespace per job, attached to a CNI network
//! (`[jobs.network]`), isolated from the host, other jobs and private ranges, with published
//! ports, rate limits and traffic counters.
//!
//! - [`netns`]: persistent network namespaces (a bind-mounted `nsfs` file per job).
//! - [`cni`]: CNI 1.0 plugin invocation (ADD, DEL) over a network configuration list.
//! - [`conflist`]: the built-in configuration list (bridge, portmap, bandwidth, firewall).
//! - [`firewall`]: the agent's own nftables table that isolates jobs.
//! - [`dns`]: the resolvers a job's `/etc/resolv.conf` names.
//! - [`ports`]: host ports for published job ports.
//! - [`counters`]: a job's traffic, from the host side of its veth.
//! - [`network`]: [`JobNetworks`], the facade the job runner uses: attach, detach, reconcile.
//!
//! The protocol to the plugins is CNI's own (JSON on stdin, environment variables, JSON
//! result on stdout), so operators can bring any CNI 1.0 plugin chain. It is spoken here
//! rather than through a crate: the Rust CNI crates are for writing plugins, not running them,
//! and the runtime side is small (exec, env, a chain of prevResults).

pub mod cni;
pub mod conflist;
pub mod counters;
pub mod dns;
pub mod firewall;
pub mod netns;
pub mod network;
pub mod ports;

use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use counters::NetCounters;
pub use network::JobNetworks;

/// A transport protocol of a published port.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Not given (refused by validation).
    #[default]
    Unspecified,
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// `tcp` or `udp` (as CNI's portmap and `--publish` spell them).
    pub fn name(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

/// A job port published on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedPort {
    /// The port inside the job.
    pub container_port: u16,
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The host port that forwards to it.
    pub host_port: u16,
    /// The host address reported for it (`[jobs.network] publish_address`, else the default
    /// route's); the port is forwarded on every host address.
    pub host_address: Option<IpAddr>,
}

/// What a job's network is (kept in its record, so a restarted agent can detach it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Attachment {
    /// The job's network namespace file.
    pub netns: PathBuf,
    /// The job's addresses (`10.89.0.2/16`...).
    pub addresses: Vec<String>,
    /// The host side of the job's veth (its counters are the job's traffic).
    pub host_interface: String,
    /// The published ports.
    pub ports: Vec<PublishedPort>,
    /// The rate limits given to the bandwidth plugin, bits per second (0 = none).
    pub ingress_bits_per_second: u64,
    /// See `ingress_bits_per_second`.
    pub egress_bits_per_second: u64,
}

/// What a job asks of its network.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkRequest {
    /// Container ports to publish.
    pub ports: Vec<(u16, Protocol)>,
    /// Traffic into the job, bits per second; 0 = not limited.
    pub ingress_bits_per_second: u64,
    /// Traffic out of the job, bits per second; 0 = not limited.
    pub egress_bits_per_second: u64,
}

/// Errors of job networking; each says what failed and why.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A network namespace could not be made or removed.
    #[error("network namespace {}: {error}", path.display())]
    Netns {
        /// Its file.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// A CNI plugin failed (its CNI error, or how it failed to run).
    #[error("CNI {command} of plugin {plugin:?}: {message}")]
    Plugin {
        /// ADD or DEL.
        command: &'static str,
        /// Its type.
        plugin: String,
        /// What went wrong.
        message: String,
    },
    /// The network configuration list is unusable.
    #[error("CNI configuration {source_name}: {message}")]
    Config {
        /// Where it came from.
        source_name: String,
        /// What is wrong.
        message: String,
    },
    /// The isolation rules could not be installed.
    #[error("job isolation rules (nft): {0}")]
    Firewall(String),
    /// No host port was free for a published port.
    #[error("no free host port in {range} for {container_port}/{}", protocol.name())]
    NoFreePort {
        /// `[jobs.network] port_range`.
        range: String,
        /// The port asked for.
        container_port: u16,
        /// Its protocol.
        protocol: Protocol,
    },
    /// A file of the network's state could not be read or written.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
}
