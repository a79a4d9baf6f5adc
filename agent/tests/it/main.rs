//! fog-agent integration tests: the built binary on this real machine, compared with the OS's own
//! view, plus real components (swtpm, PoCL, a simulated NVML library).
//!
//! One test binary for the crate; each area is a module.

// A panic in a test is a failed test: unwrapping is the point here.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod architecture;
mod attest;
mod audit;
mod bench;
mod bounds;
mod cdi;
mod certs;
mod config_docs;
mod daemon;
mod disk_full;
mod exit_codes;
mod gpu;
mod identity;
mod image;
mod image_hostile;
mod image_pull;
mod inventory;
mod job_filesystem;
mod job_network;
mod jobs;
mod market;
mod market_faults;
mod metrics;
mod netlab;
mod receipts;
mod security;
mod shims;
mod support;
