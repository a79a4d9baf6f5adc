#!/usr/bin/env python3
"""Times `fog-agent inventory --json` against `lshw -json` and `inxi -Fxxx` on this machine.

All three run interleaved in one session (warm caches for all, same machine state), several
times each; the script prints the median wall time of each tool, the ratios, and a coverage
check: what lshw reports about the CPU, memory, disks and NICs must also be in our inventory,
with the same values.

    benches/compare-inventory.py [--runs 15] [--agent target/release/fog-agent] [--markdown]

Targets: at least 2x faster than lshw and 10x faster than inxi on this VM.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timed(cmd):
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"compare-inventory: {' '.join(cmd)} exited {proc.returncode}")
    return elapsed * 1000.0, proc.stdout


def lshw_nodes(node, cls):
    if node.get("class") == cls:
        yield node
    for child in node.get("children", []):
        yield from lshw_nodes(child, cls)


def coverage(ours, lshw):
    """Rows (what, lshw says, we say, agrees) for lshw's CPU, memory, disk and NIC facts."""
    rows = []
    root = lshw[0] if isinstance(lshw, list) else lshw
    cpu = ours["cpu"].get("data") or {}
    for node in lshw_nodes(root, "processor"):
        product = node.get("product", "")
        rows.append(("cpu model", product, cpu.get("model_name"), product == cpu.get("model_name")))
        cores = node.get("configuration", {}).get("cores")
        if cores:
            rows.append(("cpu cores", cores, cpu.get("physical_cores"), int(cores) == cpu.get("physical_cores")))
    mem = ours["memory"].get("data") or {}
    for node in lshw_nodes(root, "memory"):
        if node.get("id") == "memory" and "size" in node:
            # lshw reports installed memory (DMI, or /proc/kcore rounded); MemTotal is that minus
            # the kernel's reserve, so agree within 5%.
            size, total = node["size"], mem.get("total_bytes", 0)
            rows.append(("memory size", size, total, total and abs(size - total) / size < 0.05))
    disks = {d["name"]: d for d in (ours["storage"].get("data") or {}).get("block_devices", [])}
    for node in lshw_nodes(root, "disk"):
        names = node.get("logicalname")
        names = names if isinstance(names, list) else [names]
        dev = next((n[5:] for n in names if n and n.startswith("/dev/")), None)
        if dev is None:
            continue
        mine = disks.get(dev)
        rows.append((f"disk {dev}", "present", "present" if mine else "missing", mine is not None))
        if mine and "size" in node:
            rows.append((f"disk {dev} size", node["size"], mine["size_bytes"], node["size"] == mine["size_bytes"]))
    nics = {i["name"]: i for i in (ours["network"].get("data") or {}).get("interfaces", [])}
    for node in lshw_nodes(root, "network"):
        name, mac = node.get("logicalname"), node.get("serial")
        if not name:
            continue
        mine = nics.get(name, {})
        rows.append((f"nic {name} mac", mac, mine.get("mac_address"), mac == mine.get("mac_address")))
        driver = node.get("configuration", {}).get("driver")
        if driver:
            rows.append((f"nic {name} driver", driver, mine.get("driver"), driver == mine.get("driver")))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--agent", default=os.path.join(ROOT, "target/release/fog-agent"))
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    args = parser.parse_args()
    if not os.access(args.agent, os.X_OK):
        sys.exit(f"compare-inventory: {args.agent} not found: cargo build --release -p fog-agent")
    tools = {
        "fog-agent inventory --json": [args.agent, "inventory", "--json"],
        "lshw -json": ["lshw", "-json"],
        "inxi -Fxxx": ["inxi", "-Fxxx", "-c", "0"],
    }
    for name, cmd in tools.items():
        if shutil.which(cmd[0]) is None and not os.path.exists(cmd[0]):
            sys.exit(f"compare-inventory: {cmd[0]} not installed (packaging/setup-debian.sh --test)")
    times = {name: [] for name in tools}
    outputs = {}
    for name, cmd in tools.items():  # warm-up: page cache, PoCL's kernel cache
        _, outputs[name] = timed(cmd)
    for _ in range(args.runs):
        for name, cmd in tools.items():
            ms, _ = timed(cmd)
            times[name].append(ms)

    ours = statistics.median(times["fog-agent inventory --json"])
    bar = "|" if args.markdown else " "
    print(f"{bar} tool {bar} median ms {bar} min ms {bar} max ms {bar} fog-agent is faster by {bar}")
    if args.markdown:
        print("|---|---:|---:|---:|---:|")
    for name, samples in times.items():
        med = statistics.median(samples)
        print(f"{bar} {name} {bar} {med:.1f} {bar} {min(samples):.1f} {bar} {max(samples):.1f} "
              f"{bar} {med / ours:.1f}x {bar}")
    lshw_ratio = statistics.median(times["lshw -json"]) / ours
    inxi_ratio = statistics.median(times["inxi -Fxxx"]) / ours
    print(f"\ntargets: >= 2x lshw ({'met' if lshw_ratio >= 2 else 'MISSED'}: {lshw_ratio:.1f}x), "
          f">= 10x inxi ({'met' if inxi_ratio >= 10 else 'MISSED'}: {inxi_ratio:.1f}x); "
          f"{args.runs} interleaved runs each")

    ours_json = json.loads(outputs["fog-agent inventory --json"])
    lshw_json = json.loads(outputs["lshw -json"])
    rows = coverage(ours_json, lshw_json)
    print(f"\n{bar} lshw fact {bar} lshw {bar} fog-agent {bar} agrees {bar}")
    if args.markdown:
        print("|---|---|---|---|")
    for what, theirs, mine, ok in rows:
        print(f"{bar} {what} {bar} {theirs} {bar} {mine} {bar} {'yes' if ok else 'NO'} {bar}")
    return 0 if all(ok for *_, ok in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
