#!/usr/bin/env bash
# The .deb on this machine, as root: build it with cargo-deb (release profile), check its
# metadata (every linked and every run-time-loaded library is in Depends), install it with
# dpkg -i, run the installed binary (--version, check-config on the shipped config, inventory),
# check the unit with `systemd-analyze verify` and record `systemd-analyze security`, then
# `dpkg -r` (only the conffile, the state and TLS dirs may stay) and `dpkg -P` (nothing stays).
# The package is purged on exit whatever happens.
#
#   packaging/test-package.sh [--deb FILE]   # --deb: test a .deb built before (no build)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

deb=""
while [ $# -gt 0 ]; do
  case "$1" in
    --deb) deb="$2"; shift 2 ;;
    *) echo "test-package.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
done

fail() { echo "package test FAILED: $*" >&2; exit 1; }
pass=0
ok() { pass=$((pass + 1)); echo "  ok: $*"; }

[ "$(id -u)" -eq 0 ] || fail "must run as root (it installs and removes the package)"
known() {
  local st
  st="$(dpkg-query -W -f='${Status}' fog-agent 2>/dev/null)" || return 1
  case "$st" in *not-installed) return 1 ;; *) return 0 ;; esac
}
if known; then
  fail "a fog-agent package is already on this machine; it would be purged: remove it first (dpkg -P fog-agent)"
fi
for tool in systemd-analyze dpkg-deb dpkg-shlibdeps; do
  command -v "$tool" >/dev/null || fail "$tool missing (packaging/setup-debian.sh --test)"
done

if [ -z "$deb" ]; then
  command -v cargo-deb >/dev/null || fail "cargo-deb missing (packaging/setup-debian.sh --test)"
  # The packaging is what is checked here, so by default the faster `package-check` profile
  # (release without LTO, see Cargo.toml); FOG_DEB_PROFILE=release checks the shipping build.
  profile="${FOG_DEB_PROFILE:-package-check}"
  echo "==> cargo deb -p fog-agent --profile $profile"
  out="$(cargo deb -p fog-agent --locked --profile "$profile" 2>&1)" || { echo "$out" >&2; fail "cargo deb"; }
  deb="$(echo "$out" | tail -n 1)"
fi
[ -f "$deb" ] || fail "no .deb at $deb"
echo "==> testing $deb"

cleanup() {
  if known; then
    echo "package test: purging fog-agent" >&2
    dpkg -P fog-agent >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

# --- metadata: every library the binary links, and every one it loads at run time, comes from
# a package in Depends.
depends="$(dpkg-deb -f "$deb" Depends)"
echo "  Depends: $depends"
dep_names="$(echo "$depends" | tr ',|' '\n\n' | sed 's/(.*)//; s/^ *//; s/ *$//' | grep -v '^$')"
in_depends() { grep -qx -- "$1" <<< "$dep_names"; }
# Also what those packages themselves depend on (libgcc-s1 comes with libc6, which dpkg-shlibdeps
# therefore leaves out).
indirect="$(for d in $dep_names; do dpkg-query -W -f='${Depends}, ${Pre-Depends}\n' "$d" 2>/dev/null || true; done \
  | tr ',|' '\n\n' | sed 's/(.*)//; s/:any//; s/^ *//; s/ *$//' | grep -v '^$' | sort -u)"
via_depends() { in_depends "$1" || grep -qx -- "$1" <<< "$indirect"; }
# The package owning a library file (dpkg knows either the /lib or the /usr/lib spelling on a
# merged-/usr system).
owner() {
  local real candidates c out
  real="$(readlink -f "$1")"
  candidates=("$1" "$real" "${real#/usr}" "/usr$real")
  for c in "${candidates[@]}"; do
    if out="$(dpkg -S "$c" 2>/dev/null)"; then
      echo "${out%%:*}"
      return 0
    fi
  done
  return 1
}
extract="$(mktemp -d)"
dpkg-deb -x "$deb" "$extract"
linked="$(ldd "$extract/usr/bin/fog-agent" | awk '/=>/ { print $1, $3 }')"
while read -r lib path; do
  [ -n "$path" ] || continue
  pkg="$(owner "$path")" || fail "$lib ($path): no Debian package owns it"
  via_depends "$pkg" || fail "linked $lib comes from $pkg, which is not in Depends (nor a dependency of one)"
  echo "  linked $lib: $pkg"
done <<< "$linked"
ok "every linked library's package is in Depends or comes with one"
# Loaded with dlopen: libtss2-tctildr loads the TCTI named by [tpm] tcti; opencl3 loads the ICD
# loader. (libnvidia-ml.so.1 comes with NVIDIA's driver, only where there is such a GPU.)
for soname in libtss2-tcti-device.so.0 libtss2-tcti-swtpm.so.0 libtss2-tcti-mssim.so.0 libOpenCL.so.1; do
  # awk reads all of ldconfig's output (no early `exit`): under pipefail an early exit can kill
  # ldconfig with SIGPIPE and fail the script with status 141.
  path="$(ldconfig -p | awk -v s="$soname" '$1 == s && path == "" { path = $NF } END { print path }')"
  [ -n "$path" ] || fail "$soname not installed here (packaging/setup-debian.sh)"
  pkg="$(owner "$path")" || fail "$soname ($path): no Debian package owns it"
  in_depends "$pkg" || fail "dlopened $soname comes from $pkg, which is not in Depends"
  echo "  dlopened $soname: $pkg"
done
ok "every dlopened library's package is in Depends"
recommends="$(dpkg-deb -f "$deb" Recommends)"
grep -qw runc <<< "$recommends" || fail "runc not in Recommends: $recommends"
ok "runc recommended ($recommends)"
conffiles="$(dpkg-deb -I "$deb" conffiles)" || fail "no conffiles in the package"
[ "$conffiles" = /etc/fog-agent/agent.toml ] || fail "conffiles: $conffiles"
ok "/etc/fog-agent/agent.toml is a conffile"
cmp -s "$extract/etc/fog-agent/agent.toml" packaging/agent.toml || fail "shipped agent.toml differs from packaging/agent.toml"
files="$(dpkg-deb -c "$deb" | awk '{ print $NF }' | sed 's#^\./#/#')"
rm -rf "$extract"

# --- install and run.
dpkg -i "$deb" >/dev/null || fail "dpkg -i"
ok "dpkg -i"
for module in br_netfilter ifb; do
  grep -qx "$module" /usr/lib/modules-load.d/fog-agent.conf \
    || fail "$module not in /usr/lib/modules-load.d/fog-agent.conf"
done
ok "jobs' network modules loaded at boot (modules-load.d: br_netfilter, ifb)"
version="$(/usr/bin/fog-agent --version)" || fail "fog-agent --version"
case "$version" in "fog-agent "*) ;; *) fail "fog-agent --version: $version" ;; esac
ok "/usr/bin/fog-agent --version: $version"
fog-agent check-config /etc/fog-agent/agent.toml >/dev/null || fail "check-config of the shipped config"
ok "fog-agent check-config /etc/fog-agent/agent.toml"
[ "$(stat -c %a /var/lib/fog-agent)" = 700 ] || fail "/var/lib/fog-agent is not 0700"
[ "$(stat -c %a /etc/fog-agent/tls)" = 700 ] || fail "/etc/fog-agent/tls is not 0700"
ok "state dir and TLS dir exist, 0700"
inventory="$(/usr/bin/fog-agent inventory --json)" || fail "inventory from the installed binary"
case "$inventory" in *'"fog-inventory-v1"'*) ;; *) fail "inventory: no fog-inventory-v1 document" ;; esac
ok "installed binary collects the inventory (OpenCL loader and TCTI libraries present)"
# Without TLS files the shipped config refuses to serve, naming the file.
err="$(timeout 20 /usr/bin/fog-agent serve --config /etc/fog-agent/agent.toml 2>&1 >/dev/null)" \
  && fail "serve started without TLS files"
grep -q "/etc/fog-agent/tls/server.pem" <<< "$err" || fail "serve without TLS files: $err"
ok "serve without TLS files exits naming /etc/fog-agent/tls/server.pem"

unit=/lib/systemd/system/fog-agent.service
systemd-analyze verify "$unit" || fail "systemd-analyze verify $unit"
ok "systemd-analyze verify"
exposure="$(systemd-analyze security --offline=true "$unit" 2>/dev/null | awk '/Overall exposure level/ { print $(NF-2), $(NF-1) }')"
[ -n "$exposure" ] || fail "systemd-analyze security gave no score"
ok "systemd-analyze security --offline=true: exposure $exposure"

# --- remove: program, unit and docs go; the conffile, state and TLS dirs stay.
dpkg -r fog-agent >/dev/null || fail "dpkg -r"
status="$(dpkg-query -W -f='${Status}' fog-agent)"
[ "$status" = "deinstall ok config-files" ] || fail "status after remove: $status"
keep_after_remove="/etc/fog-agent/agent.toml"
while read -r f; do
  [ -z "$f" ] && continue
  case "$f" in */) continue ;; esac
  if [ -e "$f" ] && [ "$f" != "$keep_after_remove" ]; then fail "$f left after dpkg -r"; fi
done <<< "$files"
[ -f /etc/fog-agent/agent.toml ] || fail "conffile removed by dpkg -r (only purge removes it)"
[ -d /var/lib/fog-agent ] || fail "state dir removed by dpkg -r (only purge removes it)"
ok "dpkg -r: only the conffile, /var/lib/fog-agent and /etc/fog-agent/tls stay"

# --- purge: nothing stays.
dpkg -P fog-agent >/dev/null || fail "dpkg -P"
if known; then fail "package still known after purge"; fi
for path in /etc/fog-agent /var/lib/fog-agent /usr/share/doc/fog-agent /usr/bin/fog-agent "$unit"; do
  [ ! -e "$path" ] || fail "$path left after dpkg -P"
done
while read -r f; do
  [ -z "$f" ] && continue
  case "$f" in /|/etc/|/usr/|/usr/bin/|/usr/lib/|/usr/share/|/usr/share/doc/|/lib/|/lib/systemd/|/lib/systemd/system/) continue ;; esac
  # A directory another package also ships (systemd's modules-load.d) stays.
  case "$f" in */) dpkg -S "${f%/}" >/dev/null 2>&1 && continue ;; esac
  [ ! -e "$f" ] || fail "$f left after dpkg -P"
done <<< "$files"
ok "dpkg -P: nothing left"
echo "package: $pass passed, 0 failed"
