#!/usr/bin/env python
"""Concurrency of the embedded ClickHouse server: N clients x M short queries, p50/p95 latency and throughput.

Starts `python -m harness.services.clickhouse_server` from --repo (default: this checkout) on a free
port and a fresh data directory, then runs N threads, each with its own unmodified clickhouse-connect
sync client, each sending M short queries (a point read on a small MergeTree table with a bound
parameter, as the reference platform's analytics reads are). A benchmark, not a test.

usage: .venv/bin/python scripts/bench_clickhouse.py [--clients 8] [--queries 50] [--sessions] [--repo DIR]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import clickhouse_connect

HERE = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(repo: Path, data: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(repo))
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "harness.services.clickhouse_server",
                "--path",
                str(data),
                "--port",
                str(port),
            ],
            cwd=repo,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}; log: {log}\n{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=1) as r:
                if r.read() == b"Ok.\n":
                    return proc
        except OSError:
            time.sleep(0.05)  # a benchmark's readiness poll, bounded by the deadline
    proc.kill()
    raise SystemExit(f"server not ready in 60 s; log: {log}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--queries", type=int, default=50, help="queries per client")
    parser.add_argument("--sessions", action="store_true", help="each client in its own session_id")
    parser.add_argument("--repo", type=Path, default=HERE, help="checkout whose server to run")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-ch-") as tmp:
        port = _free_port()
        log = Path(tmp) / "server.log"
        proc = _start(args.repo.resolve(), Path(tmp) / "data", port, log)
        try:
            setup = clickhouse_connect.get_client(host="127.0.0.1", port=port, autogenerate_session_id=False)
            setup.command(
                "CREATE TABLE IF NOT EXISTS bench_kv (k String, v UInt64) ENGINE = MergeTree ORDER BY k"
            )
            setup.command("INSERT INTO bench_kv SELECT toString(number % 100), number FROM numbers(10000)")
            setup.close()

            latencies: list[float] = []
            errors: list[BaseException] = []
            lock = threading.Lock()
            ready = threading.Barrier(args.clients + 1)

            def worker(i: int) -> None:
                client = clickhouse_connect.get_client(
                    host="127.0.0.1", port=port, autogenerate_session_id=args.sessions
                )
                mine: list[float] = []
                try:
                    ready.wait()
                    for j in range(args.queries):
                        t0 = time.perf_counter()
                        client.query(
                            "SELECT count(), sum(v) FROM bench_kv WHERE k = {k:String}",
                            parameters={"k": str((i * 7 + j) % 100)},
                        )
                        mine.append(time.perf_counter() - t0)
                except BaseException as ex:  # noqa: BLE001 - reported below
                    errors.append(ex)
                finally:
                    client.close()
                    with lock:
                        latencies.extend(mine)

            threads = [threading.Thread(target=worker, args=(i,)) for i in range(args.clients)]
            for t in threads:
                t.start()
            ready.wait()
            t0 = time.perf_counter()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0
        finally:
            proc.terminate()
            proc.wait(timeout=30)

    if errors:
        print(f"{len(errors)} client(s) failed, first: {errors[0]!r}", file=sys.stderr)
        return 1
    latencies.sort()
    p50 = statistics.median(latencies) * 1000
    p95 = latencies[max(0, int(len(latencies) * 0.95) - 1)] * 1000
    mode = "sessions" if args.sessions else "sessionless"
    print(
        f"{args.clients} clients x {args.queries} queries ({mode}, {args.repo.resolve()}): "
        f"p50 {p50:.1f} ms  p95 {p95:.1f} ms  {len(latencies) / wall:.0f} q/s  ({len(latencies)} in {wall:.2f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
