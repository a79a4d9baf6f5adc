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
//! - [`state`]: the SQLite state store (benchmark cache, jobs, usage counters, nonces).
//! - [`cli`]: the command line (`fog-agent inventory|...`), human tables and `--json`.

pub mod bench;
pub mod capacity;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod fsroot;
pub mod inventory;
pub mod jobs;
pub mod state;
pub mod telemetry;
