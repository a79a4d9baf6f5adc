#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine to build, run and test fog-agent.
# Idempotent: safe to run again; installs only what is missing.
#
#   packaging/setup-debian.sh            # runtime + build packages
#   packaging/setup-debian.sh --test     # also the reference tools and the Python test venv
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
want_test=0
for arg in "$@"; do
  case "$arg" in
    --test) want_test=1 ;;
    *) echo "setup-debian.sh: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# Packages needed to build and run the agent on its embedded defaults.
runtime_pkgs=(
  build-essential pkg-config ca-certificates
  libtss2-dev swtpm swtpm-tools tpm2-tools      # TPM: tss-esapi build + software TPM
  ocl-icd-libopencl1 pocl-opencl-icd clinfo      # OpenCL on the CPU
  runc busybox-static                            # containers
  containernetworking-plugins nftables iptables  # jobs' networks (CNI plugins, isolation rules)
  pciutils                                       # PCI id names for humans (lspci)
)
# Reference tools the tests and comparison scripts compare against.
test_pkgs=(
  lshw inxi hwloc-nox sysbench fio iperf3 likwid clpeak stress-ng
  python3-venv
  prometheus prometheus-node-exporter            # promtool check metrics; footprint peer
  systemd dpkg-dev                               # systemd-analyze verify/security; dpkg-shlibdeps for cargo-deb
  skopeo umoci                                   # image interop tests (layout copy, unpack)
  docker-registry apache2-utils                  # image pull tests: a local TLS registry (the tests run their own; the packaged service is not used), htpasswd
  iproute2                                       # network namespaces and veths (market link faults, job networks)
  dnsmasq-base                                   # the job-network lab's DNS server
)

pkgs=("${runtime_pkgs[@]}")
[ "$want_test" -eq 1 ] && pkgs+=("${test_pkgs[@]}")

missing=()
for p in "${pkgs[@]}"; do
  [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = "install ok installed" ] || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  sudo_if_needed apt-get update -qq
  sudo_if_needed apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "setup: Debian packages already present"
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found; install a Rust toolchain (rustup) first" >&2
  exit 1
fi

if [ "$want_test" -eq 1 ] && ! cargo deb --version >/dev/null 2>&1; then
  # Builds the .deb in packaging/test-package.sh (`cargo deb -p fog-agent`).
  echo "setup: installing cargo-deb"
  cargo install cargo-deb --locked --quiet
fi

if [ "$want_test" -eq 1 ]; then
  venv="$root/target/py-venv"
  if [ ! -x "$venv/bin/python" ]; then
    echo "setup: creating Python venv at $venv"
    python3 -m venv "$venv"
  fi
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$here/test-requirements.txt"
fi
echo "setup: done"
