#!/usr/bin/env bash
# Quick start (1): set up a fresh Debian 12 machine, build fog-agent and run its main job on
# embedded defaults. Today that is the hardware inventory; the daemon issue turns it into
# `fog-agent serve` with a software TPM, PoCL, SQLite state and gRPC on loopback.
#
#   packaging/run.sh [extra arguments for `fog-agent inventory`, e.g. --json]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash packaging/setup-debian.sh
echo "run: building fog-agent (release)"
cargo build --release --locked -p fog-agent --quiet
exec ./target/release/fog-agent inventory "$@"
