"""Journey fixtures: `app`, the target under test in the product's language.

Every journey makes its own users (unique emails) through the platform's real API and never
depends on another journey's data. The helpers `app` hands out (users, records, turns,
sockets, pages, the stand-ins' controls) live in harness/app.py and the target's adapter
(targets/<name>/app.py), not here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from harness.app import App
from harness.stack import Stack
from harness.target import Target


@pytest.fixture
async def app(
    target: Target, stack: Stack, probe_recorder: Callable[[Any], None], new_context: Any
) -> AsyncIterator[App]:
    """The platform under test in the product's language (targets/<name>/app.py), made per test."""
    async with httpx.AsyncClient(timeout=10) as client:
        instance = target.app_class()(target, stack, client, probe_recorder, new_context)
        await instance.setup()
        try:
            yield instance
        finally:
            await instance.aclose()
