"""`eventually(check)`: re-run a check until it passes, or fail with what was expected and last seen."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass
class ProbeRecord:
    """One probe's question and answer: the data trail a journey leaves in its report."""

    label: str
    query: str
    value: Any
    ok: bool = True
    at: float = field(default_factory=time.time)


class EventuallyTimeout(AssertionError):
    """The condition never held within the deadline."""


async def eventually(
    check: Callable[[], Awaitable[T]],
    *,
    timeout: float = 5.0,
    interval: float = 0.05,
    description: str = "",
    query: str = "",
) -> T:
    """Await `check()` until it returns without raising AssertionError, or time out.

    `check` may assert (its AssertionError is the last failure) or return a value; a falsy
    value counts as not yet. The timeout error names the expectation, the query and the last
    value or assertion seen, so a failing journey says what the store actually held.
    """
    __tracebackhide__ = True
    deadline = time.monotonic() + timeout
    attempts = 0
    last: object = "<never evaluated>"
    while True:
        attempts += 1
        try:
            value = await check()
        except AssertionError as exc:
            last = exc
        else:
            if value is None or value is True or (value is not False and bool(value)):
                return value
            last = value
        if time.monotonic() >= deadline:
            what = description or getattr(check, "__name__", "condition")
            detail = [f"{what}: not true after {timeout:.1f} s ({attempts} attempts)"]
            if query:
                detail.append(f"  query: {query}")
            detail.append(
                f"  last seen: {last!r}"
                if not isinstance(last, AssertionError)
                else f"  last failure: {last}"
            )
            raise EventuallyTimeout("\n".join(detail))
        # Poll interval of a bounded wait on a store, not a fixed sleep: the deadline above bounds it.
        await asyncio.sleep(interval)
