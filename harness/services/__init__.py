"""Building blocks a target's services.toml can `use` (see blocks.py for what a block is).

Stores (real): postgres, redis, clickhouse. Stand-ins for third parties: llm, oidc, smtp.
The registry is built on first use, so `python -m harness.services.clickhouse_server` does not
import the other blocks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from harness.services.blocks import Block

_REGISTRY: dict[str, Block] = {}


def blocks() -> dict[str, Block]:
    """Every building block by the name `use = "<name>"` gives."""
    if not _REGISTRY:
        from harness.services.clickhouse import ClickHouseBlock
        from harness.services.postgres import PostgresBlock
        from harness.services.redis import RedisBlock
        from harness.services.standins import LlmBlock, OidcBlock, SmtpBlock

        for block in (PostgresBlock(), RedisBlock(), ClickHouseBlock(), LlmBlock(), OidcBlock(), SmtpBlock()):
            _REGISTRY[block.name] = block
    return _REGISTRY


def get_block(name: str) -> Block | None:
    """The block called `name`, or None."""
    return blocks().get(name)
