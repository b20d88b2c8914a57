"""The JSON bodies the backend answers, as OpenAPI schemas.

The handlers build their bodies by hand (ids and instants already strings, money as 6-place
Decimal strings); these models only declare them, with `responses={status: {"model": ...}}`, so
that a client and the fuzzer can check every answer. They are never a `response_model`: that would
re-serialise the answer (a `+00:00` instant, a Decimal) and the bytes on the wire would change.
Every field is required (nullable where the store can hold NULL) and no other field is allowed.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "AnnouncedProfileOut",
    "HealthOut",
    "InvoiceOut",
    "InvoicesOut",
    "MessageOut",
    "ProfileOut",
    "ReadyOut",
    "ThreadMessagesOut",
    "ThreadOut",
    "ThreadsOut",
    "UsageOut",
    "answer",
]

# money() in usage.py: an exact Decimal with 6 places ("0.000120"), as a string
Money = Annotated[str, Field(pattern=r"^[0-9]+\.[0-9]{6}$", examples=["0.000120"])]
Email = Annotated[str, Field(json_schema_extra={"format": "email"})]
Period = Annotated[str, Field(pattern=r"^[0-9]{4}-[0-9]{2}$", examples=["2026-05"])]
Count = Annotated[int, Field(ge=0)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


def answer(model: type[BaseModel], description: str) -> dict[str, Any]:
    """One `responses=` entry: this status answers `model` as JSON."""
    return {"model": model, "description": description}


class HealthOut(_Body):
    """GET /health: the process answers."""

    status: Literal["ok"]
    service: Literal["backend"]


class ReadyOut(_Body):
    """GET /ready, 200: every store and the auth key set answered."""

    status: Literal["ready"]
    checks: dict[str, Literal["ok"]]


class NotReadyOut(_Body):
    """GET /ready, 503: which checks failed, and each check's "ok" or "error: ..."."""

    status: Literal["unavailable"]
    failing: list[str]
    checks: dict[str, str]


class ProfileOut(_Body):
    """GET /api/me: the profile the auth service announced."""

    user_id: uuid.UUID
    email: Email
    full_name: str
    plan: str
    created_at: datetime


class AnnouncedProfileOut(ProfileOut):
    """POST /internal/users: the profile, and whether this call created it."""

    created: bool


class ThreadOut(_Body):
    id: uuid.UUID
    title: str
    created_at: datetime
    updated_at: datetime


class ThreadsOut(_Body):
    """GET /api/threads: the user's own threads, most recently updated first."""

    threads: list[ThreadOut]


class MessageOut(_Body):
    id: uuid.UUID
    thread_id: uuid.UUID
    role: Literal["user", "assistant"]
    content: str
    agent: str | None
    request_id: str | None
    run_id: uuid.UUID | None
    prompt_tokens: Count | None
    completion_tokens: Count | None
    created_at: datetime


class ThreadMessagesOut(_Body):
    """GET /api/threads/{id}/messages: the thread and its messages, oldest first."""

    thread: ThreadOut
    messages: list[MessageOut]


class AgentUsageOut(_Body):
    agent: str
    events: Count
    prompt_tokens: Count
    completion_tokens: Count
    cost_usd: Money


class UsageOut(_Body):
    """GET /api/usage: totals from ClickHouse over [from, to) (`to` null: up to now)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    user_id: uuid.UUID
    from_: datetime = Field(alias="from")
    to: datetime | None
    events: Count
    prompt_tokens: Count
    completion_tokens: Count
    total_tokens: Count
    cost_usd: Money
    by_agent: list[AgentUsageOut]


class InvoiceLineOut(_Body):
    id: uuid.UUID
    agent: str
    model: str
    prompt_tokens: Count
    completion_tokens: Count
    amount_usd: Money


class InvoiceOut(_Body):
    """POST /api/billing/invoices: one month's invoice, one line per agent and model."""

    id: uuid.UUID
    user_id: uuid.UUID
    period: Period
    total_usd: Money
    prompt_tokens: Count
    completion_tokens: Count
    created_at: datetime
    lines: list[InvoiceLineOut]


class InvoicesOut(_Body):
    """GET /api/billing/invoices: the user's invoices, latest period first."""

    invoices: list[InvoiceOut]
