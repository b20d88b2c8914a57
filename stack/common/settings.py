"""Service settings read from the environment (the TL_* variables of docs/wiring.md).

Usage::

    from stack.common.settings import Settings
    settings = Settings.from_env()          # os.environ at call time
    settings = Settings.from_env({...})     # any mapping (tests)

Every field has the default of docs/wiring.md where one makes sense; URLs are kept
without a trailing slash. Services read what they need and ignore the rest.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from decimal import Decimal, InvalidOperation
from typing import TypeVar

__all__ = ["Settings", "env_int", "env_str"]

T = TypeVar("T")


def env_str(env: Mapping[str, str], name: str, default: str = "") -> str:
    """`env[name]` stripped, or `default` when unset or blank."""
    value = env.get(name, "").strip()
    return value if value else default


def _parsed(env: Mapping[str, str], name: str, default: T, convert: Callable[[str], T], kind: str) -> T:
    """`convert(env[name])`, or `default` when unset or blank; a bad value raises ValueError naming it."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return convert(raw)
    except (ValueError, InvalidOperation):
        raise ValueError(f"{name} must be {kind}, got {raw!r}") from None


def env_int(env: Mapping[str, str], name: str, default: int) -> int:
    """`env[name]` as an int, or `default` when unset; a non-integer value raises ValueError naming it."""
    return _parsed(env, name, default, int, "an integer")


def _url(env: Mapping[str, str], name: str, default: str = "") -> str:
    return env_str(env, name, default).rstrip("/")


@dataclass(frozen=True)
class Settings:
    auth_dsn: str = "postgresql://tl@127.0.0.1:5432/auth"
    backend_dsn: str = "postgresql://tl@127.0.0.1:5432/backend"
    redis_url: str = "redis://127.0.0.1:6379/0"
    clickhouse_url: str = "http://127.0.0.1:8123"
    auth_url: str = "http://127.0.0.1:8001"
    backend_url: str = "http://127.0.0.1:8002"
    frontend_url: str = "http://127.0.0.1:8000"
    llm_base_url: str = "http://127.0.0.1:8009/v1"
    llm_api_key: str = "sk-standin"
    llm_model: str = "standin-gpt"
    llm_timeout: float = 5.0
    oidc_issuer: str = ""
    oidc_provider: str = "acme"
    oidc_provider_name: str = "Acme ID"
    oidc_client_id: str = "throughline-web"
    oidc_client_secret: str = ""
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 25
    smtp_sink_url: str = ""
    internal_secret: str = ""
    jwt_private_key_file: str = "jwt.pem"
    jwt_issuer: str = "throughline-auth"
    jwt_audience: str = "throughline-api"
    access_token_ttl: int = 900
    refresh_token_ttl: int = 2592000
    rate_http_limit: int = 100
    rate_http_window: int = 10
    rate_ws_limit: int = 8
    rate_ws_window: int = 10
    rate_agent_concurrency: int = 2
    rate_agent_slot_ttl: int = 300
    login_attempt_limit: int = 5
    login_attempt_window: int = 15
    price_prompt: Decimal = Decimal("0.000002")  # USD per token
    price_completion: Decimal = Decimal("0.000004")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read the TL_* variables (field `foo_bar` <- `TL_FOO_BAR`) from `env` (default os.environ)."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        for f in fields(cls):
            name = "TL_" + f.name.upper()
            default = f.default
            if isinstance(default, float):
                values[f.name] = _parsed(env, name, default, float, "a number")
            elif isinstance(default, Decimal):  # exact: prices never pass through a float
                values[f.name] = _parsed(env, name, default, Decimal, "a decimal number")
            elif isinstance(default, int):
                values[f.name] = env_int(env, name, default)
            elif f.name.endswith("_url") or f.name == "oidc_issuer":
                values[f.name] = _url(env, name, str(default))
            else:
                values[f.name] = env_str(env, name, str(default))
        return cls(**values)  # type: ignore[arg-type]
