#!/usr/bin/env python
"""One chat turn's latency (user_message -> agent_completed) over loopback, zero LLM latency.

A benchmark, not a test: starts the whole stack, makes users through the real auth API,
and drives real WebSocket turns. Prints p50/p95 for one user in series and for N
concurrent users.

usage: .venv/bin/python scripts/bench_chat.py [--turns 30] [--users 20] [--turns-per-user 3]
       .venv/bin/python scripts/bench_chat.py --soak 120 [--soak-users 50] [--max-turns 200]

--soak SECONDS: a soak test, bounded in time (SECONDS) and count (--max-turns per user), on
loopback only: --soak-users users chat concurrently through the real socket at the product's
own rate limit. It prints p50/p95 turn latency, errors (other than a deliberate 429 /
rate_limited, counted apart), and lost messages: messages acknowledged vs user rows in
PostgreSQL vs usage rows in ClickHouse (the outbox drain is waited for, with a deadline).
Exit 1 when an error or a lost message is seen.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from db_probes import ClickHouseProbe, PostgresProbe  # noqa: E402
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


@dataclass
class SoakUser:
    """One soak user's counts: turns acknowledged, refused on purpose, and failures."""

    latencies: list[float] = field(default_factory=list)
    completed: list[str] = field(default_factory=list)  # request ids answered with agent_completed
    rate_limited: int = 0
    errors: list[str] = field(default_factory=list)


async def soak_user(ws_url: str, token: str, deadline: float, max_turns: int) -> SoakUser:
    """Chat until the deadline or max_turns; a rate_limited frame is the product's answer, not an error."""
    user = SoakUser()
    try:
        async with websockets.connect(ws_url, subprotocols=[f"jwt.{token}"]) as ws:  # type: ignore[list-item]
            while json.loads(await ws.recv())["type"] != "connection_established":
                pass
            thread_id = None
            for i in range(max_turns):
                if time.monotonic() >= deadline:
                    break
                request_id = uuid.uuid4().hex
                payload: dict[str, object] = {"content": f"soak message number {i}"}
                if thread_id:
                    payload["thread_id"] = thread_id
                t0 = time.perf_counter()
                await ws.send(
                    json.dumps({"type": "user_message", "payload": payload, "request_id": request_id})
                )
                while True:
                    frame = json.loads(await asyncio.wait_for(ws.recv(), timeout=30))
                    kind = frame["type"]
                    if kind == "agent_completed":
                        thread_id = frame["payload"]["thread_id"]
                        user.completed.append(request_id)
                        user.latencies.append(time.perf_counter() - t0)
                        break
                    if kind == "rate_limited" or (
                        kind == "error"
                        and frame.get("payload", {}).get("code")
                        in (
                            "rate_limited",
                            429,
                        )
                    ):
                        user.rate_limited += 1
                        retry = float(frame.get("payload", {}).get("retry_after", 1) or 1)
                        # The product asked us to wait: honour it, bounded by the soak's deadline.
                        await asyncio.sleep(min(retry, max(0.0, deadline - time.monotonic())))
                        break
                    if kind == "error":
                        user.errors.append(json.dumps(frame)[:200])
                        break
    except (OSError, websockets.WebSocketException, TimeoutError) as exc:
        user.errors.append(f"{type(exc).__name__}: {exc}"[:200])
    return user


async def soak(args: argparse.Namespace, stack: Stack, http: httpx.AsyncClient) -> int:
    """The soak: N users for SECONDS; p50/p95, errors, and sent vs PostgreSQL vs ClickHouse."""
    urls = stack.urls
    tokens = await asyncio.gather(*(make_user(http, urls) for _ in range(args.soak_users)))
    deadline = time.monotonic() + args.soak
    t1 = time.perf_counter()
    users = await asyncio.gather(*(soak_user(urls["ws_url"], t, deadline, args.max_turns) for t in tokens))
    wall = time.perf_counter() - t1
    latencies = [x for u in users for x in u.latencies]
    sent = [r for u in users for r in u.completed]
    errors = [e for u in users for e in u.errors]
    limited = sum(u.rate_limited for u in users)
    print(
        summary(f"soak: {args.soak_users} users, {wall:.0f} s", latencies) if latencies else "soak: no turn"
    )
    print(f"{'':<34} {len(sent)} turns = {len(sent) / wall:.1f} turns/s; {limited} rate_limited (deliberate)")
    pg = PostgresProbe(urls["backend_dsn"])
    ch = ClickHouseProbe(urls["clickhouse_url"])
    try:
        rows = await pg.value(
            "SELECT count(*) FROM messages WHERE role = 'user' AND request_id = ANY($1::text[])", sent
        )
        usage_deadline = time.monotonic() + 30
        while True:  # the usage outbox drains to ClickHouse in the background: wait for it, bounded
            # A fresh stack: every usage row is the soak's; matched to the acknowledged turns here.
            found = [r["request_id"] for r in await ch.rows("SELECT request_id FROM analytics.usage_events")]
            wanted = set(sent)
            ours = [r for r in found if r in wanted]
            usage, unique = len(ours), len(set(ours))
            if usage >= len(sent) or time.monotonic() > usage_deadline:
                break
            await asyncio.sleep(0.5)  # poll of a background drain, bounded by usage_deadline
    finally:
        await pg.close()
        await ch.close()
    lost = len(sent) - int(rows)
    print(
        f"{'':<34} messages acknowledged {len(sent)}, PostgreSQL user rows {rows}, ClickHouse usage rows "
        f"{usage} ({unique} distinct) -> lost {lost}, usage {'exact' if usage == unique == len(sent) else 'INEXACT'}"
    )
    print(f"{'':<34} errors (other than rate_limited): {len(errors)}")
    for line in sorted(set(errors))[:10]:
        print(f"{'':<36}{line}")
    return 0 if not errors and lost == 0 and usage == unique == len(sent) else 1


def summary(label: str, values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[max(0, int(round(0.95 * len(ordered))) - 1)]
    return (
        f"{label:<34} n={len(values):<4} p50 {statistics.median(values) * 1000:7.1f} ms   "
        f"p95 {p95 * 1000:7.1f} ms   max {ordered[-1] * 1000:7.1f} ms"
    )


async def run(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    # Raise the per-user WS limit for the serial run: the benchmark measures latency, not the limiter.
    # The soak keeps the product's own limit: a rate_limited answer is counted, not hidden.
    if not args.soak:
        os.environ.setdefault("THROUGHLINE_STACK_RATE_WS_LIMIT", "1000")
    stack = Stack().start()
    print(f"stack cold start: {time.monotonic() - t0:.2f} s")
    try:
        urls = stack.urls
        async with httpx.AsyncClient(timeout=30) as http:
            if args.soak:
                return await soak(args, stack, http)
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
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--turns", type=int, default=30)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--turns-per-user", type=int, default=3)
    parser.add_argument("--soak", type=float, default=0, help="soak for SECONDS (at most 600)")
    parser.add_argument("--soak-users", type=int, default=50)
    parser.add_argument("--max-turns", type=int, default=200, help="per soak user, a bound on the count")
    args = parser.parse_args()
    if not 0 <= args.soak <= 600 or not 1 <= args.soak_users <= 200 or not 1 <= args.max_turns <= 10_000:
        print("bench_chat: --soak 0..600 s, --soak-users 1..200, --max-turns 1..10000", file=sys.stderr)
        return 2
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
