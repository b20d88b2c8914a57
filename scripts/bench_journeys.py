#!/usr/bin/env python
"""Wall time of the journeys, serial, cold stack included (median of N runs); also the 20-in-a-row check.

A benchmark, not a test. Each run is a fresh `pytest journeys` process (stack start,
browser launch, every journey, teardown). A run that fails is reported and counted.

usage: .venv/bin/python scripts/bench_journeys.py [--runs 3] [-- extra pytest args]
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    walls: list[float] = []
    failures = 0
    for i in range(args.runs):
        t0 = time.monotonic()
        out_dir = ROOT / "reports" / "bench" / f"run-{i + 1}"
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "journeys",
                "-q",
                "-p",
                "no:cacheprovider",
                "--output",
                str(out_dir),
                *extra,
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        wall = time.monotonic() - t0
        walls.append(wall)
        last = (result.stdout.strip().splitlines() or ["<no output>"])[-1]
        ok = result.returncode == 0
        failures += not ok
        print(f"run {i + 1}/{args.runs}: {wall:6.1f} s  {'ok  ' if ok else 'FAIL'}  {last}", flush=True)
        if not ok:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / "pytest-output.txt").write_text(result.stdout + result.stderr)
            print(f"    full output and artifacts: {out_dir}", flush=True)
            for line in result.stdout.splitlines():
                if re.match(r"^(FAILED|ERROR) ", line):
                    print(f"    {line}", flush=True)
    print(
        f"journeys, serial, cold stack included: median {statistics.median(walls):.1f} s, "
        f"min {min(walls):.1f} s, max {max(walls):.1f} s; {args.runs - failures}/{args.runs} runs green"
    )
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
