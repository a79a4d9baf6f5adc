#!/usr/bin/env bash
# Quick start (2): set up a fresh Debian 12 machine and run every gate and test:
# formatting, clippy (warnings are errors), documentation, and the test suites of all crates
# (unit tests, fixture trees, and integration tests against real components: the built binary on
# this machine, PoCL, swtpm, a simulated NVML library, promtool), then the .deb on this machine
# (packaging/test-package.sh, as root).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# Each step prints how long the one before it took, so a slow CI run shows where the time went.
step_started=$SECONDS
step_name=""
step() {
  [ -z "$step_name" ] || echo "<== $step_name: $((SECONDS - step_started)) s"
  step_name="$*"
  step_started=$SECONDS
  echo
  echo "==> $*"
}
step "setup: packaging/setup-debian.sh --test"
bash packaging/setup-debian.sh --test

step "cargo fmt --check"
cargo fmt --all --check
step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
step "cargo doc (warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet
step "cargo test --workspace"
cargo test --workspace --locked
step "package: cargo deb, dpkg -i, run, systemd-analyze, dpkg -r, dpkg -P"
bash packaging/test-package.sh

# Fuzz the TPM structure parsers, the report JSON and the tunnel's frame state machine briefly (cargo-fuzz needs nightly; the
# stable seeded robustness tests above always run). No AddressSanitizer: fog-tpm forbids unsafe
# code, so ASan would find nothing safe Rust does not already turn into a panic, and the
# instrumented build of every dependency costs minutes; coverage-guided fuzzing with debug
# assertions still finds panics, overflows and hangs.
if grep -q '^nightly' <<< "$(rustup toolchain list 2>/dev/null)"; then
  step "cargo +nightly fuzz (tpm parsers, ${FOG_FUZZ_SECONDS:-10} s per target)"
  command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked --quiet
  (
    cd tpm/fuzz
    for target in tpms_attest tpmt_signature tpm2b_public report_json identity_request; do
      cargo +nightly fuzz run --sanitizer none "$target" -- -max_total_time="${FOG_FUZZ_SECONDS:-10}" 2>&1 | tail -n 2
    done
  )
  step "cargo +nightly fuzz (the market tunnel's frame state machine, ${FOG_FUZZ_SECONDS:-10} s)"
  (
    cd tunnel/fuzz
    cargo +nightly fuzz run --sanitizer none demux -- -max_total_time="${FOG_FUZZ_SECONDS:-10}" -rss_limit_mb=512 2>&1 | tail -n 2
  )
else
  echo "fuzz: skipped, no nightly toolchain (the stable robustness tests ran)"
fi
step "done"
