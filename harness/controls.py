"""Controls of the third-party stand-ins, over their own control endpoints (never a mock)."""

from __future__ import annotations

from typing import Any

import httpx


class LLMControl:
    """The LLM stand-in's /control: inject 500s, 429s, hangs, dropped streams, latency; read requests."""

    def __init__(self, http: httpx.AsyncClient, llm_url: str) -> None:
        self.http = http
        self.base = llm_url.removesuffix("/v1")

    async def set(self, **control: Any) -> None:
        """Merge `control` into the stand-in's fault settings (e.g. fail_next=1, status=500)."""
        response = await self.http.post(f"{self.base}/control", json=control)
        assert response.status_code == 200, f"LLM stand-in control refused {control}: {response.text}"

    async def reset(self) -> None:
        """No faults, no latency, no recorded requests."""
        await self.http.post(f"{self.base}/control/reset")

    async def requests(self) -> list[dict[str, Any]]:
        """What the platform sent the LLM, oldest first."""
        return list((await self.http.get(f"{self.base}/requests")).json())
