#!/bin/sh
# Telemetry fan-out load benchmark (not a test): 1,000 concurrent WatchHostTelemetry
# subscribers at 1 s over loopback mTLS from one client process, for 60 s. Reports the agent's
# CPU use, RSS and p50/p99 delivery lag. Arguments are passed on (e.g. --seconds 10).
# Method: benches/README.md; latest results: benches/RESULTS.md.
set -eu
cd "$(dirname "$0")/.."
cargo build --release -p fog-agent --bin fog-agent --example telemetry_load
exec target/release/examples/telemetry_load --agent target/release/fog-agent \
    --subscribers 1000 --seconds 60 "$@"
