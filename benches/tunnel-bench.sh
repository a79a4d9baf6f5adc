#!/bin/sh
# Market link (reverse tunnel) benchmark (not a test): a minimal tonic market with mutual TLS
# (agent/examples/tunnel_bench.rs) against fog-agent processes on loopback. In one run:
# GetCapacity latency through the tunnel vs a direct mTLS connection (alternating blocks),
# WatchHostTelemetry lag through the tunnel vs direct, 1,000 streams on one tunnel (memory per
# stream, CPU, lag; the same direct), memory per idle tunnel, and a reconnect storm of 1,000
# tunnels against a market that restarts. About 4 minutes; arguments are passed on, e.g.
# --phases latency,telemetry --calls 500 --telemetry-seconds 10, or --storm-tunnels 200.
# Method: benches/README.md; latest results: benches/RESULTS.md.
set -eu
cd "$(dirname "$0")/.."
cargo build --release -p fog-agent --bin fog-agent --example tunnel_bench
target="${CARGO_TARGET_DIR:-target}"
# One socket per tunnel on both sides: raise the open-file limit as far as allowed.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec "$target/release/examples/tunnel_bench" --agent "$target/release/fog-agent" "$@"
