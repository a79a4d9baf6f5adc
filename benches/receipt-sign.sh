#!/usr/bin/env bash
# TPM time per usage receipt on swtpm (agent/examples/receipt_sign_bench.rs): one identity-key
# signature per receipt and one AK quote per batch, through the daemon's own TPM adapter
# (the TPM opened and the key loaded per call, as the issuer does). Release build.
#
#   benches/receipt-sign.sh [--signs 200] [--quotes 50]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -q -p fog-agent --example receipt_sign_bench
exec "${CARGO_TARGET_DIR:-target}/release/examples/receipt_sign_bench" "$@"
