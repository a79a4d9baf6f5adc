//! The gRPC face of the agent: `fog.agent.v1.Agent` and everything it needs to speak proto.
//!
//! - [`service`]: the service, one instance per listener ([`Door`]); [`job_service`]: its job
//!   and image RPCs; [`receipt_service`]: its usage receipt RPCs.
//! - [`convert`], [`job_convert`]: proto <-> domain, once, at this boundary (validation names
//!   the proto field of every bad value).
//! - [`error`]: [`ApiError`], the one error type of the handlers, and its one conversion to a
//!   gRPC status.
//! - [`auth`]: roles, the per-RPC role table, the role from a client certificate.
//! - [`tls`]: development certificates and the server's TLS configuration (reloaded when its
//!   files change).
//! - [`listener`]: the TCP listeners' connection and handshake limits.
//! - [`audit`]: the audit trail of state-changing and denied calls and failed handshakes.
//! - [`routes`]: what a listener serves (the agent service, health checking, reflection).
//!
//! Lower layers never see proto types; the daemon builds a [`Shared`] and serves
//! [`AgentService`]s over it.

pub mod audit;
pub mod auth;
pub mod convert;
pub mod error;
pub mod job_convert;
pub mod job_service;
pub mod listener;
pub mod receipt_service;
pub mod routes;
pub mod service;
pub mod tls;

use std::sync::Arc;

use tokio::sync::watch;

use crate::attest::Attestor;
use crate::bench::BenchmarkBackend;
use crate::capacity::CapacityLedger;
use crate::image::ImageStore;
use crate::inventory::cache::InventoryCache;
use crate::jobs::JobManager;
use crate::receipts::Receipts;
use crate::telemetry::TelemetryHub;

pub use error::ApiError;
pub use service::AgentService;

/// How callers on a listener are identified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    /// Mutual TLS: the role comes from the client certificate.
    Mtls,
    /// The local admin door (unix socket; plaintext loopback in development): every caller is
    /// admin.
    LocalAdmin,
    /// A reverse tunnel the agent opened to a market: the role is the one the market's server
    /// certificate names, carried in each request's [`TunnelCaller`] extension (never admin).
    Tunnel,
}

/// Who calls through a market tunnel, as the tunnel's TLS handshake established it. The market
/// link puts it in every request's extensions; a request without it on [`Door::Tunnel`] is
/// refused. Extensions never come from the wire, so a market cannot forge it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelCaller {
    /// The role from the market's server certificate (market or auditor).
    pub role: auth::Role,
    /// The market endpoint (`https://host:port`).
    pub endpoint: String,
    /// The market certificate's subject.
    pub subject: String,
    /// The market certificate's serial number (hex).
    pub serial: String,
}

/// What every listener's service instance answers from.
pub struct Shared {
    /// The inventory, collected off the runtime and cached.
    pub inventory: Arc<InventoryCache>,
    /// Capacity.
    pub capacity: Arc<CapacityLedger>,
    /// Telemetry fan-out.
    pub telemetry: TelemetryHub,
    /// Benchmarks: the cache and the runner.
    pub benchmarks: Arc<dyn BenchmarkBackend>,
    /// TPM attestation and enrollment.
    pub attestation: Arc<dyn Attestor>,
    /// Becomes true when the daemon shuts down: open streams end.
    pub shutdown: watch::Receiver<bool>,
    /// The job runner (None: jobs not enabled; the job RPCs answer UNIMPLEMENTED).
    pub jobs: Option<Arc<JobManager>>,
    /// The image store (with jobs).
    pub images: Option<Arc<ImageStore>>,
    /// The jobs' usage receipts (None: jobs or `[receipts]` not enabled; the receipt RPCs
    /// answer UNIMPLEMENTED).
    pub receipts: Option<Arc<Receipts>>,
    /// PullImage's `[images]` policy, and the store size garbage collection keeps after a pull.
    pub pull_policy: crate::image::pull::PullPolicy,
    /// `[api] max_message_bytes`: answers made of many items (ListJobs) are cut into pages
    /// below it.
    pub max_message_bytes: usize,
    /// Reads the market link's tunnels (set once the link has started; unset: no link).
    pub market: std::sync::OnceLock<MarketLinks>,
}

/// Reads the market link's tunnels, one per configured endpoint.
pub type MarketLinks = Arc<dyn Fn() -> Vec<fog_tunnel::LinkStatus> + Send + Sync>;

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("jobs", &self.jobs.is_some())
            .field("images", &self.images.is_some())
            .finish_non_exhaustive()
    }
}

/// Resolves when the daemon starts shutting down (or its signal is gone).
pub(crate) async fn shutting_down(mut rx: watch::Receiver<bool>) {
    // An error means the sender is gone: the daemon is stopping too.
    let _ = rx.wait_for(|stop| *stop).await;
}
