#!/usr/bin/env bash
# Image pull benchmark (not a test): `fog-agent image pull` of a multi-layer image from a local
# registry against what it replaces, `skopeo copy docker://... oci:DIR` followed by
# `fog-agent image import DIR`, each into a fresh state dir, in alternating rounds; then a second
# image sharing all but one layer with the first, pulled into the same store, and the blob GETs
# the registry answered for it. Latest results: benches/RESULTS.md.
#
#   benches/image-pull.sh [--rounds 5] [--layers 4] [--layer-mib 32] [--agent target/release/fog-agent]
#
# The registry is Debian's docker-registry (distribution 2.8) on 127.0.0.1 with TLS (a CA made
# here with openssl) and htpasswd auth, as the tests run it. Layers are random bytes (gzip
# cannot shrink them: the download is the work, not the decompression) plus busybox.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
rounds=5
layers=4
layer_mib=32
agent="${CARGO_TARGET_DIR:-$root/target}/release/fog-agent"
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds="$2"; shift 2 ;;
    --layers) layers="$2"; shift 2 ;;
    --layer-mib) layer_mib="$2"; shift 2 ;;
    --agent) agent="$2"; shift 2 ;;
    *) echo "image-pull.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
done
for tool in docker-registry htpasswd skopeo umoci openssl; do
  command -v "$tool" >/dev/null || { echo "image-pull: $tool missing (packaging/setup-debian.sh --test)" >&2; exit 1; }
done
[ -x "$agent" ] || { echo "image-pull: $agent missing (cargo build --release -p fog-agent)" >&2; exit 1; }

work="$(mktemp -d)"
reg_pid=""
cleanup() { [ -n "$reg_pid" ] && kill "$reg_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

# TLS and auth.
cd "$work"
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 1 -subj /CN=bench-ca 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=127.0.0.1 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\n' > ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 1 -extfile ext 2>/dev/null
mkdir certs.d && cp ca.pem certs.d/ca.crt
htpasswd -Bbn bench benchpass > htpasswd
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
cat > registry.yml <<EOF
version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: $work/data
http:
  addr: 127.0.0.1:$port
  tls:
    certificate: $work/server.pem
    key: $work/server.key
auth:
  htpasswd:
    realm: bench
    path: $work/htpasswd
EOF
docker-registry serve registry.yml > registry.log 2>&1 &
reg_pid=$!
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
host="127.0.0.1:$port"

# The image: busybox, then $layers layers of random bytes; v2 adds one small layer.
umoci init --layout src >/dev/null
umoci new --image src:v1 >/dev/null
umoci unpack --image src:v1 b >/dev/null
cp /bin/busybox b/rootfs/busybox
umoci repack --image src:v1 b >/dev/null
for i in $(seq "$layers"); do
  head -c "$((layer_mib << 20))" /dev/urandom > "b/rootfs/noise$i"
  umoci repack --image src:v1 b >/dev/null
done
umoci tag --image src:v1 v2 >/dev/null
echo "v2" > b/rootfs/v2
umoci repack --image src:v2 b >/dev/null
push() { skopeo copy -q --dest-cert-dir certs.d --dest-creds bench:benchpass "oci:src:$1" "docker://$host/bench/app:$1"; }
push v1; push v2
compressed="$(du -sb data | cut -f1)"

cat > agent.toml <<EOF
[images]
allowed_registries = ["$host"]
ca_file = "$work/ca.pem"
EOF

now() { date +%s.%N; }
pull_once() { # state dir, tag
  echo benchpass | "$agent" image pull "$host/bench/app:$2" --username bench --password-stdin \
    --config agent.toml --state-dir "$1" --json >/dev/null 2>pull.err || { cat pull.err >&2; exit 1; }
}
skopeo_import_once() { # state dir
  rm -rf layout
  skopeo copy -q --src-cert-dir certs.d --src-creds bench:benchpass "docker://$host/bench/app:v1" oci:layout:v1
  "$agent" image import layout --tag bench/app:v1 --state-dir "$1" --json >/dev/null
}

echo "image: busybox + $layers x $layer_mib MiB random layers; registry holds $((compressed >> 20)) MiB; $rounds rounds"
ours=(); theirs=()
for r in $(seq "$rounds"); do
  sync; rm -rf s1 s2
  if [ $((r % 2)) -eq 1 ]; then
    t0=$(now); pull_once s1 v1; t1=$(now)
    sync; t2=$(now); skopeo_import_once s2; t3=$(now)
  else
    t2=$(now); skopeo_import_once s2; t3=$(now)
    sync; t0=$(now); pull_once s1 v1; t1=$(now)
  fi
  a=$(echo "$t1 - $t0" | bc); b=$(echo "$t3 - $t2" | bc)
  ours+=("$a"); theirs+=("$b")
  printf 'round %d: pull %.3f s, skopeo copy + import %.3f s, ratio %.2f\n' "$r" "$a" "$b" "$(echo "$a / $b" | bc -l)"
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
ma=$(median "${ours[@]}"); mb=$(median "${theirs[@]}")
printf 'median: pull %.3f s, skopeo copy + import %.3f s, ratio %.2f\n' "$ma" "$mb" "$(echo "$ma / $mb" | bc -l)"

# Shared layers: v2 after v1 in the same store.
gets() { grep -c '"GET /v2/bench/app/blobs/' registry.log || true; }
before=$(gets)
t0=$(now); pull_once s1 v2; t1=$(now)
after=$(gets)
printf 'second image (v2 = v1 + one small layer) into the same store: %d blob GETs (config + new layer expected: 2), %.3f s\n' \
  "$((after - before))" "$(echo "$t1 - $t0" | bc)"
