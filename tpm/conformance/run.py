#!/usr/bin/env python3
"""Runs a verifier against the conformance vectors: fog-attest-v1 reports (this directory's
manifest, the default) or fog-receipts-v1 bundles (`--suite receipts`: `receipts/manifest.json`).

    python3 run.py [--suite reports|receipts] [--only ID ...] -- VERIFIER [ARGS...]

VERIFIER is called once per case, as `fog-agent verify` (reports, see README.md) or
`fog-agent verify receipts` (bundles, see receipts/README.md) is:

    VERIFIER [ARGS...] REPORT --nonce HEX --pcrs SEL --trust-anchors PEM
             [--allow-software-tpm] --at UNIX_SECS --state-dir DIR --json
    VERIFIER [ARGS...] BUNDLE --trust-anchors PEM
             [--allow-software-tpm] --at UNIX_SECS --state-dir DIR --json

with DIR a fresh copy of the case's verifier state (`DIR/verifier-state.json`). A case passes
when the exit status is 0 exactly when the expected verdict is a pass (`ok` for reports,
`passed` for bundles), and the ids of the failed checks in the printed JSON verdict are exactly
the expected ones, in order. Exits 0 when every case passes. Python 3 standard library only.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
TIMEOUT_SECONDS = 60


# Per suite: the manifest's directory, what the case verifies, and the verdict's pass member.
SUITES = {
    "reports": {"dir": HERE, "pass": "ok"},
    "receipts": {"dir": os.path.join(HERE, "receipts"), "pass": "passed"},
}


def case_arguments(case, base):
    """The case's document and the arguments only its suite has."""
    if "report" in case:
        return [
            os.path.join(base, case["report"]),
            "--nonce", case["nonce"],
            "--pcrs", case["pcrs"],
        ]
    return [os.path.join(base, case["bundle"])]


def run_case(case, verifier, suite):
    """Returns None when the verifier agrees with the case, else what differs."""
    base = suite["dir"]
    with tempfile.TemporaryDirectory(prefix="fog-conformance-") as state_dir:
        shutil.copyfile(
            os.path.join(base, case["verifier_state"]),
            os.path.join(state_dir, "verifier-state.json"),
        )
        os.chmod(state_dir, 0o700)
        command = verifier + case_arguments(case, base) + [
            "--trust-anchors", os.path.join(base, case["trust_anchors"]),
            "--at", str(case["at"]),
            "--state-dir", state_dir,
            "--json",
        ]
        if case["allow_software_tpm"]:
            command.append("--allow-software-tpm")
        try:
            done = subprocess.run(
                command, capture_output=True, timeout=TIMEOUT_SECONDS, check=False
            )
        except subprocess.TimeoutExpired:
            return f"no verdict within {TIMEOUT_SECONDS} s"
    expect = case["expect"]
    try:
        verdict = json.loads(done.stdout)
        failed = [check["id"] for check in verdict["checks"] if not check["passed"]]
    except (ValueError, KeyError, TypeError) as err:
        stderr = done.stderr.decode(errors="replace").strip()
        return f"no JSON verdict ({err}); exit {done.returncode}; stderr: {stderr}"
    problems = []
    passes = expect[suite["pass"]]
    if (done.returncode == 0) != passes:
        problems.append(f"exit {done.returncode}, expected {'0' if passes else 'non-zero'}")
    if failed != expect["failed"]:
        problems.append(f"failed {failed}, expected {expect['failed']}")
    return "; ".join(problems) or None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=sorted(SUITES), default="reports",
                        help="which vectors (default: reports)")
    parser.add_argument("--only", action="append", help="run only this case (repeatable)")
    parser.add_argument("verifier", nargs="+", help="the verifier command, after --")
    args = parser.parse_args()
    suite = SUITES[args.suite]
    with open(os.path.join(suite["dir"], "manifest.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    cases = [c for c in manifest["cases"] if not args.only or c["id"] in args.only]
    if not cases:
        print("no case selected", file=sys.stderr)
        return 2
    disagreements = 0
    for case in cases:
        problem = run_case(case, args.verifier, suite)
        if problem:
            disagreements += 1
            print(f"FAIL  {case['id']}: {problem}")
        else:
            print(f"ok    {case['id']}")
    print(f"{len(cases) - disagreements}/{len(cases)} cases agree")
    return 1 if disagreements else 0


if __name__ == "__main__":
    sys.exit(main())
