#!/usr/bin/env python
"""One chat turn's latency (user_message -> agent_completed) over loopback, zero LLM latency.

A benchmark, not a test: starts the whole stack, makes users through the real auth API,
and drives real WebSocket turns. Prints p50/p95 for one user in series and for N
concurrent users.

usage: .venv/bin/python scripts/bench_chat.py [--turns 30] [--users 20] [--turns-per-user 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from pathlib import Path

import httpx
import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.stack import Stack  # noqa: E402

PASSWORD = "correct-horse-42"


async def make_user(http: httpx.AsyncClient, urls: dict[str, str]) -> str:
    email = f"bench-{uuid.uuid4().hex[:10]}@example.test"
    r = await http.post(
        f"{urls['auth_url']}/auth/signup",
        json={"email": email, "password": PASSWORD, "full_name": "Bench User"},
    )
    r.raise_for_status()
    mails = (await http.get(f"{urls['smtp_sink_url']}/messages", params={"to": email, "wait": 10})).json()
    link = next(link for m in mails for link in m["links"] if "/auth/verify" in link)
    (await http.get(link, headers={"Accept": "application/json"})).raise_for_status()
    r = await http.post(f"{urls['auth_url']}/auth/login", json={"email": email, "password": PASSWORD})
    r.raise_for_status()
    return str(r.json()["access_token"])


async def turns(ws_url: str, token: str, count: int) -> list[float]:
    latencies: list[float] = []
    async with websockets.connect(ws_url, subprotocols=[f"jwt.{token}"]) as ws:  # type: ignore[list-item]
        while json.loads(await ws.recv())["type"] != "connection_established":
            pass
        thread_id = None
        for i in range(count):
            request_id = uuid.uuid4().hex
            payload: dict[str, object] = {"content": f"benchmark message number {i}"}
            if thread_id:
                payload["thread_id"] = thread_id
            t0 = time.perf_counter()
            await ws.send(json.dumps({"type": "user_message", "payload": payload, "request_id": request_id}))
            while True:
                frame = json.loads(await ws.recv())
                if frame["type"] == "agent_completed":
                    thread_id = frame["payload"]["thread_id"]
                    break
                if frame["type"] in ("error", "rate_limited"):
                    raise RuntimeError(f"turn failed: {frame}")
            latencies.append(time.perf_counter() - t0)
    return latencies


def summary(label: str, values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[max(0, int(round(0.95 * len(ordered))) - 1)]
    return (
        f"{label:<34} n={len(values):<4} p50 {statistics.median(values) * 1000:7.1f} ms   "
        f"p95 {p95 * 1000:7.1f} ms   max {ordered[-1] * 1000:7.1f} ms"
    )


async def run(args: argparse.Namespace) -> None:
    t0 = time.monotonic()
    # Raise the per-user WS limit for the serial run: the benchmark measures latency, not the limiter.
    import os

    os.environ.setdefault("THROUGHLINE_STACK_RATE_WS_LIMIT", "1000")
    stack = Stack().start()
    print(f"stack cold start: {time.monotonic() - t0:.2f} s")
    try:
        urls = stack.urls
        async with httpx.AsyncClient(timeout=30) as http:
            token = await make_user(http, urls)
            await turns(urls["ws_url"], token, 3)  # warm-up: JWKS cache, pools, first thread
            serial = await turns(urls["ws_url"], token, args.turns)
            print(summary("1 user, serial turns", serial))
            tokens = await asyncio.gather(*(make_user(http, urls) for _ in range(args.users)))
            t1 = time.perf_counter()
            results = await asyncio.gather(*(turns(urls["ws_url"], t, args.turns_per_user) for t in tokens))
            wall = time.perf_counter() - t1
            flat = [x for r in results for x in r]
            print(summary(f"{args.users} concurrent users", flat))
            print(f"{'':<34} {len(flat)} turns in {wall:.2f} s = {len(flat) / wall:.1f} turns/s")
    finally:
        stack.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--turns", type=int, default=30)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--turns-per-user", type=int, default=3)
    asyncio.run(run(parser.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
