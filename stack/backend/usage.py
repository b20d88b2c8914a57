"""Usage: pricing totals read from ClickHouse, and the outbox flusher that copies
PostgreSQL `usage_outbox` rows into `analytics.usage_events` exactly once per event_id."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from .stores import ClickHouse, Postgres, StoreUnavailable

log = logging.getLogger("stack.backend.usage")

ZERO = Decimal("0.000000")


def money(value: Any) -> str:
    """Exact Decimal as a string with 6 places ("0.000120")."""
    return f"{Decimal(value or 0).quantize(Decimal('0.000001')):.6f}"


def _ch_time(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


async def usage_by_agent(
    ch: ClickHouse, user_id: str, start: datetime | None = None, end: datetime | None = None
) -> list[dict]:
    where = ["user_id = toUUID(%(uid)s)"]
    params: dict[str, Any] = {"uid": str(user_id)}
    if start is not None:
        where.append("created_at >= toDateTime64(%(start)s, 3, 'UTC')")
        params["start"] = _ch_time(start)
    if end is not None:
        where.append("created_at < toDateTime64(%(end)s, 3, 'UTC')")
        params["end"] = _ch_time(end)
    rows = await ch.query(
        "SELECT agent, model, count() AS events, sum(prompt_tokens) AS p, sum(completion_tokens) AS c, "
        "sum(cost_usd) AS cost FROM analytics.usage_events WHERE "
        + " AND ".join(where)
        + " GROUP BY agent, model ORDER BY agent, model",
        params,
    )
    return [
        {
            "agent": r[0],
            "model": r[1],
            "events": int(r[2]),
            "prompt_tokens": int(r[3]),
            "completion_tokens": int(r[4]),
            "cost_usd": Decimal(r[5] or 0),
        }
        for r in rows
    ]


def summarize(rows: list[dict]) -> dict:
    """Totals plus a by-agent breakdown, with money as Decimal strings."""
    by_agent: dict[str, dict] = {}
    total = {"events": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": Decimal(0)}
    for row in rows:
        slot = by_agent.setdefault(
            row["agent"],
            {
                "agent": row["agent"],
                "events": 0,
                "prompt_tokens": 0,
                "completion_tokens": 0,
                "cost_usd": Decimal(0),
            },
        )
        for key in ("events", "prompt_tokens", "completion_tokens", "cost_usd"):
            slot[key] += row[key]
            total[key] += row[key]
    agents = [{**v, "cost_usd": money(v["cost_usd"])} for _, v in sorted(by_agent.items())]
    return {
        "events": total["events"],
        "prompt_tokens": total["prompt_tokens"],
        "completion_tokens": total["completion_tokens"],
        "total_tokens": total["prompt_tokens"] + total["completion_tokens"],
        "cost_usd": money(total["cost_usd"]),
        "by_agent": agents,
    }


class OutboxFlusher:
    """Background task: wakes on kick() (after each committed turn) or every second."""

    def __init__(self, pg: Postgres, ch: ClickHouse, batch: int = 500):
        self.pg = pg
        self.ch = ch
        self.batch = batch
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    def kick(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="usage-outbox-flusher")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _loop(self) -> None:
        backoff = 0.2
        failing = False
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=1.0)
            self._wake.clear()
            try:
                while await self.flush_once() >= self.batch:
                    pass
                if failing:
                    log.info("usage outbox flushing again")
                failing, backoff = False, 0.2
            except StoreUnavailable as exc:
                if not failing:
                    log.warning("usage outbox flush deferred: %s", exc)
                failing = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                self._wake.set()  # retry promptly, with backoff
            except Exception:
                log.exception("usage outbox flush failed")
                await asyncio.sleep(1.0)
                self._wake.set()

    async def flush_once(self) -> int:
        async with self.pg.transaction() as conn:
            rows = await conn.fetch(
                "SELECT event_id, request_id, user_id, thread_id, run_id, agent, model, prompt_tokens, "
                "completion_tokens, cost_usd, created_at FROM usage_outbox WHERE flushed_at IS NULL "
                "ORDER BY created_at LIMIT $1 FOR UPDATE SKIP LOCKED",
                self.batch,
            )
            if not rows:
                return 0
            ids = [r["event_id"] for r in rows]
            id_list = ", ".join(f"toUUID('{i}')" for i in ids)  # uuids from our own table: safe to inline
            present = {
                str(r[0])
                for r in await self.ch.query(
                    f"SELECT event_id FROM analytics.usage_events WHERE event_id IN ({id_list})"
                )
            }
            missing = [r for r in rows if str(r["event_id"]) not in present]
            if missing:
                await self.ch.insert_usage(
                    [
                        [
                            uuid.UUID(str(r["event_id"])),
                            r["request_id"] or "",
                            uuid.UUID(str(r["user_id"])),
                            uuid.UUID(str(r["thread_id"])),
                            uuid.UUID(str(r["run_id"])),
                            r["agent"],
                            r["model"],
                            r["prompt_tokens"],
                            r["completion_tokens"],
                            r["cost_usd"],
                            r["created_at"],
                        ]
                        for r in missing
                    ]
                )
            await conn.execute(
                "UPDATE usage_outbox SET flushed_at = now() WHERE event_id = ANY($1::uuid[])", ids
            )
            log.info(
                "flushed %d usage event(s) to ClickHouse (%d already present)",
                len(rows),
                len(rows) - len(missing),
            )
            return len(rows)
