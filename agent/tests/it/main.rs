//! fog-agent integration tests: the built binary on this real machine, compared with the OS's own
//! view, plus real components (swtpm, PoCL, a simulated NVML library).
//!
//! One test binary for the crate; each area is a module.
mod attest;
