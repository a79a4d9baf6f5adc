#!/usr/bin/env bash
# Audits per second against a fleet of agents on this machine, each with its own swtpm
# (agent/examples/fleet_audit_bench.rs): `fog-agent audit --targets` all at once vs one at a
# time, after a first run that enrolls every AK. Release build.
#
#   benches/fleet-audit.sh [--agents 20] [--rounds 3]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -q -p fog-agent --bin fog-agent --example fleet_audit_bench
exec target/release/examples/fleet_audit_bench --agent target/release/fog-agent "$@"
