"""Fixtures of the framework's own tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from harness.stack import INFRA, Stack


@pytest.fixture(scope="module")
def infra() -> Iterator[Stack]:
    """PostgreSQL, Redis and ClickHouse only, started for one test module."""
    with Stack(only=INFRA) as world:
        yield world
