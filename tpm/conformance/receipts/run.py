#!/usr/bin/env python3
"""Runs a fog-receipts-v1 verifier against the conformance vectors in this directory.

    python3 run.py [--only ID ...] -- VERIFIER [ARGS...]

VERIFIER is called once per case, as `fog-agent verify receipts` is (see README.md):

    VERIFIER [ARGS...] BUNDLE --trust-anchors PEM [--allow-software-tpm] --at UNIX_SECS
             --state-dir DIR --json

with DIR a fresh copy of the case's verifier state (`DIR/verifier-state.json`). A case passes
when the exit status is 0 exactly when the expected verdict is passed, and the ids of the
failed checks in the printed JSON verdict are exactly the expected ones, in order. Exits 0 when
every case passes. Python 3 standard library only.
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


def run_case(case, verifier):
    """Returns None when the verifier agrees with the case, else what differs."""
    with tempfile.TemporaryDirectory(prefix="fog-receipts-conformance-") as state_dir:
        shutil.copyfile(
            os.path.join(HERE, case["verifier_state"]),
            os.path.join(state_dir, "verifier-state.json"),
        )
        os.chmod(state_dir, 0o700)
        command = verifier + [
            os.path.join(HERE, case["bundle"]),
            "--trust-anchors", os.path.join(HERE, case["trust_anchors"]),
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
    if (done.returncode == 0) != expect["passed"]:
        problems.append(
            f"exit {done.returncode}, expected {'0' if expect['passed'] else 'non-zero'}"
        )
    if failed != expect["failed"]:
        problems.append(f"failed {failed}, expected {expect['failed']}")
    return "; ".join(problems) or None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", help="run only this case (repeatable)")
    parser.add_argument("verifier", nargs="+", help="the verifier command, after --")
    args = parser.parse_args()
    with open(os.path.join(HERE, "manifest.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    cases = [c for c in manifest["cases"] if not args.only or c["id"] in args.only]
    if not cases:
        print("no case selected", file=sys.stderr)
        return 2
    disagreements = 0
    for case in cases:
        problem = run_case(case, args.verifier)
        if problem:
            disagreements += 1
            print(f"FAIL  {case['id']}: {problem}")
        else:
            print(f"ok    {case['id']}")
    print(f"{len(cases) - disagreements}/{len(cases)} cases agree")
    return 1 if disagreements else 0


if __name__ == "__main__":
    sys.exit(main())
