#!/usr/bin/env bash
# Quick start (1): set up a fresh Debian 12 machine, build fog-agent and run the agent daemon on
# embedded defaults: a software TPM (swtpm with its own local CA, under the state dir) when the
# host has no /dev/tpmrm0, PoCL for OpenCL, SQLite state in ./target/fog-state, gRPC with mutual
# TLS on 127.0.0.1 with development certificates, and the admin socket in the state dir.
# It prints how to query it with `fog-agent client`; Ctrl-C stops it.
#
#   packaging/run.sh [extra arguments for `fog-agent serve`]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash packaging/setup-debian.sh
echo "run: building fog-agent (release)"
cargo build --release --locked -p fog-agent --quiet
state="$root/target/fog-state"
if [ ! -e /dev/tpmrm0 ]; then
  sh packaging/dev-swtpm.sh "$state"
fi
echo "run: hardware inventory of this machine"
./target/release/fog-agent inventory
exec ./target/release/fog-agent serve --dev --state-dir "$state" "$@"
