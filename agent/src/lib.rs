//! `fog-agent` is the privileged host agent of a decentralized compute market.
//!
//! This library holds everything the `fog-agent` binary does; the binary itself only parses the
//! command line and maps errors to exit codes. Modules:
//!
//! - [`fsroot`]: reads `/proc`, `/sys` and DMI below an injectable root, so every parser is
//!   tested on fixture trees.
//! - [`inventory`]: the hardware inventory (host, CPU, memory, GPUs, storage, network) and its
//!   stable hardware fingerprint. Every probe is independent and never fatal.
//! - [`bench`](mod@bench): the benchmark suite (kernels from `fog-bench`) in crash-isolated child
//!   processes, cached in the state store.
//! - [`jobs`]: buyers' jobs as OCI containers (runc) under limits: spec validation, bundles,
//!   the per-job shim, capacity reservations, durable records, restart recovery, telemetry,
//!   usage counters and logs.
//! - [`receipts`]: signed, chained usage receipts of every job (TPM identity key, AK quotes).
//! - [`state`]: the SQLite state store (benchmark cache, jobs, usage counters, nonces).
//! - [`image`]: the OCI image store (`<state>/images`): verified import of OCI image layouts,
//!   layers unpacked into read-only rootfs dirs for jobs.
//! - [`metrics`]: the Prometheus `/metrics` endpoint (node_exporter-compatible host metrics,
//!   GPUs, jobs, capacity, benchmarks, attestation, the agent's own health); [`sdnotify`]:
//!   systemd readiness notification.
//! - [`market`]: the market link: reverse tunnels (jhump/grpctunnel's protocol) the agent
//!   opens to markets and serves its whole API through, so hosts behind NAT are reachable.
//! - [`cdi`]: CDI (Container Device Interface) specs: which GPUs have a CDI device, and a
//!   device's container edits applied to a job's runtime spec.
//! - [`cgroup`]: cgroup v1/v2/hybrid detection and per-cgroup stats (CPU, memory, pids, I/O).
//! - [`cli`]: the command line (`fog-agent inventory|...`), human tables and `--json`.

pub mod api;
pub mod attest;
pub mod bench;
pub mod capacity;
pub mod cdi;
pub mod cgroup;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod fsroot;
pub mod gpu;
pub mod image;
pub mod inventory;
pub mod jobs;
pub mod market;
pub mod metrics;
pub mod net;
pub mod receipts;
pub mod sdnotify;
pub mod state;
pub mod telemetry;
