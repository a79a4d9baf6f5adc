#!/bin/sh
# Job start latency and telemetry cost (not a test; root, runc and busybox-static needed):
# StartJob-to-running p50/p95 over 50 jobs against `runc run -d` of a copy of the same bundle,
# as a ratio (target <= 1.2x), then the agent's CPU with the 50 jobs running at 1 s job
# telemetry (target < 10% of one core). Arguments are passed on (e.g. --jobs 20 --seconds 10).
# Method: benches/README.md; latest results: benches/RESULTS.md.
set -eu
cd "$(dirname "$0")/.."
cargo build --release -p fog-agent --bin fog-agent --example jobs_latency
exec target/release/examples/jobs_latency --agent target/release/fog-agent \
    --starts 50 --jobs 50 --seconds 30 "$@"
