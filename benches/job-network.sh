#!/bin/sh
# What jobs' networks cost (not a test; root, runc, the CNI plugins, nftables, iproute2 and
# busybox-static needed): job start latency with a CNI network against without one and
# against the same work done by hand (netns + CNI plugins + `runc run -d`; target <= 1.2x),
# then download throughput from a fake internet into a job against into the host (target
# >= 90%). Everything runs in two network namespaces made here and removed at the end: the
# "host" one (the agent, its jobs' bridge and NAT) whose only uplink is a veth to the
# "internet" one (a byte source on 198.51.100.10:9000); no packet leaves them.
# Arguments are passed on (e.g. --starts 10 --rounds 1). Method: benches/README.md; latest
# results: benches/RESULTS.md.
set -eu
cd "$(dirname "$0")/.."
cargo build --release -p fog-agent --bin fog-agent --example job_network_bench
bytes=$((2 * 1024 * 1024 * 1024))
inet=fogbench-inet host=fogbench-host
cleanup() {
  [ -n "${source_pid:-}" ] && kill "$source_pid" 2>/dev/null || true
  ip netns del "$host" 2>/dev/null || true
  ip netns del "$inet" 2>/dev/null || true
}
trap cleanup EXIT INT TERM
cleanup
ip netns add "$inet"
ip netns add "$host"
ip link add fbench0 netns "$inet" type veth peer name fbench1 netns "$host"
ip -n "$inet" link set lo up
ip -n "$host" link set lo up
ip -n "$inet" addr add 203.0.113.1/24 dev fbench0
ip -n "$inet" link set fbench0 up
ip -n "$inet" addr add 198.51.100.10/32 dev lo
ip -n "$host" addr add 203.0.113.2/24 dev fbench1
ip -n "$host" link set fbench1 up
ip -n "$host" route add default via 203.0.113.1
# The byte source: $bytes zero bytes per connection.
ip netns exec "$inet" python3 -c '
import socket, sys, threading
n = int(sys.argv[1])
chunk = memoryview(bytes(1 << 20))
server = socket.create_server(("198.51.100.10", 9000), backlog=16)
def send(conn):
    left = n
    while left > 0:
        k = min(left, len(chunk))
        conn.sendall(chunk[:k])
        left -= k
    conn.close()
while True:
    conn, _ = server.accept()
    threading.Thread(target=send, args=(conn,), daemon=True).start()
' "$bytes" &
source_pid=$!
sleep 0.5
nsenter --net="/run/netns/$host" -- target/release/examples/job_network_bench \
    --agent target/release/fog-agent --bytes "$bytes" "$@"
