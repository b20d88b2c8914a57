#!/usr/bin/env python
"""Wall time of the journeys: serial vs `-n 2` vs shards, side by side in one sitting.

A benchmark, not a test. Each run is a fresh `throughline run` process (stack start, browser
launch, every journey, teardown), cold stack included. A run that fails is reported and counted.

    .venv/bin/python scripts/bench_journeys.py                      # serial, -n 2, shards 1/2 + 2/2
    .venv/bin/python scripts/bench_journeys.py --modes n2 --runs 10 # the 10-in-a-row check of -n 2
    .venv/bin/python scripts/bench_journeys.py --modes serial --runs 3 -- -k billing

Modes: serial, n2 (two workers), shards (1/2 then 2/2, one after the other, then merged). The
runs of each round go serial, n2, shards, so a machine that gets busier hurts each mode alike.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODES = ("serial", "n2", "shards")


def run(args: list[str], out_dir: Path) -> tuple[float, bool, str]:
    t0 = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "harness.cli", "run", "--reports", str(out_dir), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    wall = time.monotonic() - t0
    last = (result.stdout.strip().splitlines() or ["<no output>"])[-1]
    if result.returncode != 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "output.txt").write_text(result.stdout + result.stderr)
        for line in result.stdout.splitlines():
            if re.match(r"^(FAILED|ERROR) ", line):
                print(f"    {line}", flush=True)
        print(f"    full output: {out_dir / 'output.txt'}", flush=True)
    return wall, result.returncode == 0, last


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=1, help="rounds (each round runs every mode once)")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma list of {', '.join(MODES)}")
    parser.add_argument("--target", default=None)
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"] + (["--target", args.target] if args.target else [])
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        parser.error(f"unknown mode(s) {', '.join(unknown)}; known: {', '.join(MODES)}")
    base = Path(
        tempfile.mkdtemp(
            prefix="bench-journeys-", dir=ROOT / "reports" if (ROOT / "reports").is_dir() else None
        )
    )
    walls: dict[str, list[float]] = {m: [] for m in modes}
    shard_walls: list[tuple[float, float]] = []
    failures = 0
    for i in range(args.runs):
        for mode in modes:
            out = base / f"{mode}-{i + 1}"
            if mode == "serial":
                wall, ok, last = run(extra, out)
            elif mode == "n2":
                wall, ok, last = run(["-n", "2", *extra], out)
            else:
                w1, ok1, last1 = run(["--shard", "1/2", *extra], out / "1")
                w2, ok2, last2 = run(["--shard", "2/2", *extra], out / "2")
                merged = subprocess.run(
                    [sys.executable, "-m", "harness.cli", "report", "merge", str(out / "1" / "latest"),
                     str(out / "2" / "latest"), "--out", str(out / "merged")],
                    cwd=ROOT, capture_output=True, text=True,
                )  # fmt: skip
                shard_walls.append((w1, w2))
                wall, ok = w1 + w2, ok1 and ok2 and merged.returncode == 0
                last = f"1/2: {last1} | 2/2: {last2} | merge: {merged.stdout.strip().splitlines()[0:1]}"
            walls[mode].append(wall)
            failures += not ok
            print(
                f"round {i + 1}/{args.runs} {mode:<7} {wall:6.1f} s  {'ok  ' if ok else 'FAIL'}  {last}",
                flush=True,
            )
    print(f"\njourneys, cold stack included, {args.runs} round(s), runs under {base}:")
    serial = statistics.median(walls["serial"]) if walls.get("serial") else None
    for mode in modes:
        median = statistics.median(walls[mode])
        line = f"  {mode:<7} median {median:6.1f} s  (min {min(walls[mode]):.1f}, max {max(walls[mode]):.1f})"
        if mode == "n2" and serial:
            line += f"  speed-up vs serial {serial / median:.2f}x"
        if mode == "shards":
            worst = statistics.median(max(a, b) for a, b in shard_walls)
            line += f"  (sum of both; the slower shard median {worst:.1f} s"
            line += f" = {100 * worst / serial:.0f}% of serial)" if serial else ")"
        print(line)
    print(
        f"{sum(len(w) for w in walls.values()) - failures}/{sum(len(w) for w in walls.values())} runs green"
    )
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
