//! The market link: the agent dials out to each `[market]` endpoint and serves its whole API
//! through a reverse tunnel in jhump/grpctunnel's protocol, so a host behind NAT, CGNAT or a
//! firewall is reachable by a market that uses grpctunnel (Go) or grpctunnel-py (Python).
//!
//! - [`connect`]: one connection: TCP with dead-peer detection, mutual TLS, the market's role
//!   from its certificate.
//! - [`link`]: per endpoint, the loop that opens a tunnel, serves it with
//!   [`fog_tunnel::TunnelServer`] over the same routes as the TCP listeners (with the role in
//!   each request's [`crate::api::TunnelCaller`]), reconnects with [`backoff`], rotates old
//!   tunnels with a drain, and publishes a [`fog_tunnel::LinkStatus`].
//! - [`tpm_key`]: `[market] client_key = "tpm"`, the TLS client key in the TPM.

pub mod backoff;
pub mod connect;
pub mod link;
pub mod tpm_key;

pub use link::{MarketError, MarketLink};
