#!/usr/bin/env bash
# Quick start (2): set up a fresh Debian 12 machine and run every gate and test:
# formatting, clippy (warnings are errors), documentation, and the test suites of all crates
# (unit tests, fixture trees, and integration tests against real components: the built binary on
# this machine, PoCL, swtpm, a simulated NVML library).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash packaging/setup-debian.sh --test

step() { echo; echo "==> $*"; }
step "cargo fmt --check"
cargo fmt --all --check
step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
step "cargo doc (warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet
step "cargo test --workspace"
cargo test --workspace --locked
