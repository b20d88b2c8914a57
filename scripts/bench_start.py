#!/usr/bin/env python
"""Cold start of each service and of the whole stack (or of the stores only, --only infra) (median of N runs). A benchmark, not a test.

usage: .venv/bin/python scripts/bench_start.py [--runs 5] [--only infra|all|<names>]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.stack import Stack, parse_only  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--only", default="infra")
    args = parser.parse_args()
    only = parse_only(args.only)
    samples: dict[str, list[float]] = {}
    stops: list[float] = []
    for i in range(args.runs):
        t0 = time.monotonic()
        stack = Stack(only=only).start()
        wall = time.monotonic() - t0
        for name, seconds in stack.timings.items():
            samples.setdefault(name, []).append(seconds)
        samples.setdefault("wall (incl. dirs, ports)", []).append(wall)
        t1 = time.monotonic()
        stack.stop()
        stops.append(time.monotonic() - t1)
        print(f"run {i + 1}/{args.runs}: {wall:.2f} s", file=sys.stderr)
    print(f"cold start, median of {args.runs} runs (seconds until ready):")
    for name, values in samples.items():
        print(
            f"  {name:<26} median {statistics.median(values):6.3f}   min {min(values):6.3f}   max {max(values):6.3f}"
        )
    print(f"  {'stop (all)':<26} median {statistics.median(stops):6.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
