#!/usr/bin/env bash
# Footprint benchmark (not a test): fog-agent against prometheus-node-exporter, side by side in
# one run. Both run at the same time on loopback; every second both /metrics endpoints are
# scraped and both processes' RSS is read; fog-agent also serves one WatchHostTelemetry stream
# at 1 s (a `fog-agent client ... telemetry --watch` subscriber) and its sampler runs at 1 s
# ([metrics] sample_interval_millis = 1000), so both collect host metrics once per second.
# Reports each one's RSS (peak and mean over the samples) and CPU seconds (user + system,
# children included) over the measured window, and the ratios. Latest results: benches/RESULTS.md.
#
#   benches/footprint.sh [--seconds 300] [--agent target/release/fog-agent]
#                        [--exporter /usr/bin/prometheus-node-exporter]
#
# node_exporter runs with its upstream default collectors (no arguments but the address).
# fog-agent runs with its shipped defaults except: loopback ports, a temporary state dir,
# [bench] run_on_start = false (no benchmark run during the measurement) and the 1 s sampler.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
seconds=300
agent="$root/target/release/fog-agent"
exporter=/usr/bin/prometheus-node-exporter
build=1
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds="$2"; shift 2 ;;
    --agent) agent="$2"; build=0; shift 2 ;;
    --exporter) exporter="$2"; shift 2 ;;
    *) echo "footprint.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
done
[ -x "$exporter" ] || { echo "footprint: $exporter missing (apt-get install prometheus-node-exporter)" >&2; exit 1; }
if [ "$build" -eq 1 ]; then
  (cd "$root" && cargo build --release -p fog-agent --bin fog-agent --locked)
fi

dir="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
grpc_port="$(free_port)"; metrics_port="$(free_port)"; exporter_port="$(free_port)"
"$agent" dev-certs --out "$dir/certs" >/dev/null
cat > "$dir/agent.toml" <<EOF
[api]
listen = ["127.0.0.1:$grpc_port"]
unix_socket = "$dir/agent.sock"
tls_cert = "$dir/certs/server.pem"
tls_key = "$dir/certs/server.key"
client_ca = "$dir/certs/ca.pem"
[state]
dir = "$dir/state"
[bench]
run_on_start = false
[tpm]
tcti = "swtpm:host=127.0.0.1,port=1"
[metrics]
listen = "127.0.0.1:$metrics_port"
sample_interval_millis = 1000
EOF

"$exporter" --web.listen-address="127.0.0.1:$exporter_port" >"$dir/exporter.log" 2>&1 &
exporter_pid=$!; pids+=("$exporter_pid")
"$agent" --log warn serve --config "$dir/agent.toml" >"$dir/agent.log" 2>&1 &
agent_pid=$!; pids+=("$agent_pid")
for _ in $(seq 1 100); do
  [ -S "$dir/agent.sock" ] && break
  sleep 0.1
done
"$agent" client --addr "unix:$dir/agent.sock" telemetry --watch --interval-millis 1000 >/dev/null 2>"$dir/client.log" &
pids+=("$!")

echo "footprint: node_exporter pid $exporter_pid (:$exporter_port), fog-agent pid $agent_pid (:$metrics_port), $seconds s"
echo "footprint: load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$exporter_pid" "$exporter_port" "$agent_pid" "$metrics_port" "$seconds" <<'PY'
import os, sys, time, urllib.request

exp_pid, exp_port, agent_pid, agent_port, seconds = (int(a) for a in sys.argv[1:])
ticks = os.sysconf("SC_CLK_TCK")

def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime, stime, cutime, cstime are fields 14-17 (index 11-14 after the command name)
    return sum(int(v) for v in fields[11:15]) / ticks

def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")

def scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read()

procs = {"node_exporter": (exp_pid, exp_port), "fog-agent": (agent_pid, agent_port)}
# Both must answer (fog-agent: with host metrics) before measuring; then 5 s of warm-up.
deadline = time.time() + 30
while True:
    try:
        if b"node_memory_MemTotal_bytes " in scrape(agent_port) and scrape(exp_port):
            break
    except OSError:
        pass
    if time.time() > deadline:
        sys.exit("footprint: endpoints did not come up")
    time.sleep(0.2)
for _ in range(5):
    for _, port in procs.values():
        scrape(port)
    time.sleep(1)

start_cpu = {n: cpu_seconds(p) for n, (p, _) in procs.items()}
rss = {n: [] for n in procs}
size = {n: 0 for n in procs}
series = {n: 0 for n in procs}
failures = {n: 0 for n in procs}
t0 = time.monotonic()
for i in range(seconds):
    for name, (pid, port) in procs.items():
        try:
            body = scrape(port)
            size[name] = len(body)
            series[name] = sum(1 for l in body.splitlines() if l and not l.startswith(b"#"))
        except OSError:
            failures[name] += 1
        rss[name].append(rss_bytes(pid))
    next_tick = t0 + i + 1
    time.sleep(max(0.0, next_tick - time.monotonic()))
elapsed = time.monotonic() - t0
cpu = {n: cpu_seconds(p) - start_cpu[n] for n, (p, _) in procs.items()}

mib = 1024 * 1024
print(f"\nmeasured {elapsed:.0f} s, {seconds} scrapes each, load average at end: "
      + " ".join(open('/proc/loadavg').read().split()[:3]))
print("\n| process | RSS peak | RSS mean | CPU seconds | CPU share of one core | series per scrape | scrape bytes | failed scrapes |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
for name in procs:
    peak, mean = max(rss[name]) / mib, sum(rss[name]) / len(rss[name]) / mib
    print(f"| {name} | {peak:.1f} MiB | {mean:.1f} MiB | {cpu[name]:.2f} s | "
          f"{100 * cpu[name] / elapsed:.2f}% | {series[name]} | {size[name]} | {failures[name]} |")
a, e = "fog-agent", "node_exporter"
ratio = lambda x, y: x / y if y else float("inf")
print(f"| **fog-agent / node_exporter** | {ratio(max(rss[a]), max(rss[e])):.2f}x | "
      f"{ratio(sum(rss[a]) / len(rss[a]), sum(rss[e]) / len(rss[e])):.2f}x | "
      f"{ratio(cpu[a], cpu[e]):.2f}x | | | | |")
PY
