"""Backend settings, read from the TL_* environment at call time (see docs/wiring.md)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from decimal import Decimal


def _env(name: str, default: str) -> str:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def _int(name: str, default: int) -> int:
    return int(_env(name, str(default)))


def _float(name: str, default: float) -> float:
    return float(_env(name, str(default)))


@dataclass(frozen=True)
class Settings:
    backend_dsn: str
    redis_url: str
    clickhouse_url: str
    auth_url: str
    frontend_url: str
    llm_base_url: str
    llm_api_key: str
    llm_model: str
    llm_timeout: float
    internal_secret: str
    jwt_issuer: str
    jwt_audience: str
    rate_http_limit: int
    rate_http_window: int
    rate_ws_limit: int
    rate_ws_window: int
    rate_agent_concurrency: int
    price_prompt: Decimal
    price_completion: Decimal

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            backend_dsn=_env("TL_BACKEND_DSN", "postgresql://tl@127.0.0.1:5432/backend"),
            redis_url=_env("TL_REDIS_URL", "redis://127.0.0.1:6379/0"),
            clickhouse_url=_env("TL_CLICKHOUSE_URL", "http://127.0.0.1:8123"),
            auth_url=_env("TL_AUTH_URL", "http://127.0.0.1:8001").rstrip("/"),
            frontend_url=_env("TL_FRONTEND_URL", "http://127.0.0.1:3000").rstrip("/"),
            llm_base_url=_env("TL_LLM_BASE_URL", "http://127.0.0.1:8009/v1"),
            llm_api_key=_env("TL_LLM_API_KEY", "sk-standin"),
            llm_model=_env("TL_LLM_MODEL", "standin-gpt"),
            llm_timeout=_float("TL_LLM_TIMEOUT", 5.0),
            internal_secret=_env("TL_INTERNAL_SECRET", ""),
            jwt_issuer=_env("TL_JWT_ISSUER", "throughline-auth"),
            jwt_audience=_env("TL_JWT_AUDIENCE", "throughline-api"),
            rate_http_limit=_int("TL_RATE_HTTP_LIMIT", 100),
            rate_http_window=_int("TL_RATE_HTTP_WINDOW", 10),
            rate_ws_limit=_int("TL_RATE_WS_LIMIT", 8),
            rate_ws_window=_int("TL_RATE_WS_WINDOW", 10),
            rate_agent_concurrency=_int("TL_RATE_AGENT_CONCURRENCY", 2),
            price_prompt=Decimal(_env("TL_PRICE_PROMPT", "0.000002")),
            price_completion=Decimal(_env("TL_PRICE_COMPLETION", "0.000004")),
        )
