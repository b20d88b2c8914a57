"""Controls of the third-party stand-ins, over their own control endpoints (never a mock)."""

from __future__ import annotations

from typing import Any, Literal, TypedDict

import httpx

ErrorStatus = Literal[429, 500, 502, 503]


class Match(TypedDict, total=False):
    """Which requests a script entry answers; every key given must hold."""

    prompt_contains: str
    stream: bool
    has_tools: bool
    model: str


class Usage(TypedDict, total=False):
    """Token counts a script entry reports instead of the computed ones."""

    prompt_tokens: int
    completion_tokens: int


class ScriptEntry(TypedDict, total=False):
    """One scripted reply of the LLM stand-in (the body of POST /script)."""

    match: Match
    reply: dict[str, Any]
    usage: Usage


class Replies:
    """Builders of script entries, like upstream's `reply.text(...)`; `answering=` matches the prompt."""

    @staticmethod
    def _entry(
        reply: dict[str, Any],
        answering: str | None,
        stream: bool | None,
        has_tools: bool | None,
        model: str | None,
        usage: Usage | None,
    ) -> ScriptEntry:
        match: Match = {}
        if answering is not None:
            match["prompt_contains"] = answering
        if stream is not None:
            match["stream"] = stream
        if has_tools is not None:
            match["has_tools"] = has_tools
        if model is not None:
            match["model"] = model
        entry: ScriptEntry = {"match": match, "reply": reply}
        if usage is not None:
            entry["usage"] = usage
        return entry

    def text(
        self,
        text: str,
        *,
        answering: str | None = None,
        stream: bool | None = None,
        has_tools: bool | None = None,
        model: str | None = None,
        usage: Usage | None = None,
    ) -> ScriptEntry:
        """Answer with `text` (streamed word by word when the request streams)."""
        return self._entry({"text": text}, answering, stream, has_tools, model, usage)

    def tool_call(
        self,
        name: str,
        args: dict[str, Any] | str | None = None,
        *,
        answering: str | None = None,
        stream: bool | None = None,
        has_tools: bool | None = None,
        model: str | None = None,
        usage: Usage | None = None,
    ) -> ScriptEntry:
        """Answer with one call of tool `name` with `args` (a str is sent verbatim)."""
        call = {"name": name, "arguments": {} if args is None else args}
        return self._entry({"tool_call": call}, answering, stream, has_tools, model, usage)

    def error(
        self,
        status: ErrorStatus = 500,
        message: str | None = None,
        *,
        retry_after: int | None = None,
        answering: str | None = None,
        stream: bool | None = None,
        has_tools: bool | None = None,
        model: str | None = None,
    ) -> ScriptEntry:
        """Answer with a provider error (429 carries Retry-After)."""
        error: dict[str, Any] = {"status": status}
        if message is not None:
            error["message"] = message
        if retry_after is not None:
            error["retry_after"] = retry_after
        return self._entry({"error": error}, answering, stream, has_tools, model, None)

    def hang(
        self,
        *,
        answering: str | None = None,
        stream: bool | None = None,
        has_tools: bool | None = None,
        model: str | None = None,
    ) -> ScriptEntry:
        """Hold the request until the client gives up (as hang_next)."""
        return self._entry({"hang": True}, answering, stream, has_tools, model, None)

    def drop(
        self,
        *,
        answering: str | None = None,
        stream: bool | None = None,
        has_tools: bool | None = None,
        model: str | None = None,
    ) -> ScriptEntry:
        """Cut the connection after a couple of chunks (as drop_next)."""
        return self._entry({"drop": True}, answering, stream, has_tools, model, None)


reply = Replies()


class LLMControl:
    """The LLM stand-in's /control: inject 500s, 429s, hangs, dropped streams, latency; read requests."""

    def __init__(self, http: httpx.AsyncClient, llm_url: str) -> None:
        self.http = http
        self.base = llm_url.removesuffix("/v1")

    async def set(self, **control: Any) -> None:
        """Merge `control` into the stand-in's settings (e.g. fail_next=1, status=500, fault_scope="stream")."""
        response = await self.http.post(f"{self.base}/control", json=control)
        assert response.status_code == 200, f"LLM stand-in control refused {control}: {response.text}"

    async def reset(self) -> None:
        """No faults, no latency, no script, default models (the request log is kept)."""
        await self.http.post(f"{self.base}/control/reset")

    async def script(self, *entries: ScriptEntry) -> list[int]:
        """Queue scripted replies (see `reply`); their indices, as `matched` in the request log."""
        response = await self.http.post(f"{self.base}/script", json=list(entries))
        assert response.status_code == 200, f"LLM stand-in refused the script: {response.text}"
        return list(response.json()["queued"])

    async def script_left(self) -> list[dict[str, Any]]:
        """The scripted replies not consumed yet, in queue order."""
        return list((await self.http.get(f"{self.base}/script")).json())

    async def clear_script(self) -> None:
        """Drop every scripted reply not consumed yet."""
        (await self.http.delete(f"{self.base}/script")).raise_for_status()

    async def requests(
        self, *, stream: bool | None = None, has_tools: bool | None = None
    ) -> list[dict[str, Any]]:
        """What the platform sent the LLM, oldest first; optionally only (non-)streamed or tool requests."""
        params = {
            k: str(v).lower() for k, v in (("stream", stream), ("has_tools", has_tools)) if v is not None
        }
        response = await self.http.get(f"{self.base}/requests", params=params)
        response.raise_for_status()
        return list(response.json())
