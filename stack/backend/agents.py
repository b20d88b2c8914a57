"""Supervisor and agents.

Routing is deterministic keyword intent, checked in this order (case-insensitive, whole words):

1. ``optimization``: optimi[sz]e*, reduce*, faster, cheaper, improv*  (e.g. "reduce my token cost")
2. ``data``: usage, token(s), cost(s), spend*/spent, bill*           (e.g. "what is my usage?")
3. ``general``: everything else (triage / default)

Each agent has its own system prompt. The data agent offers the tool ``get_my_usage`` to the LLM;
the first (non-streamed) call returns the tool call, the backend runs the tool (the user's own
all-time usage from ClickHouse) and the second call streams the answer, so a data turn makes two
LLM calls and leaves two usage events. general/optimization make one streamed call.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    import openai

_OPTIMIZATION_RE = re.compile(r"\b(optimi[sz]\w*|reduc\w*|faster|cheaper|improv\w*)\b", re.IGNORECASE)
_DATA_RE = re.compile(r"\b(usage|tokens?|costs?|spend\w*|spent|bill\w*)\b", re.IGNORECASE)

SYSTEM_PROMPTS = {
    "general": "You are Throughline's general assistant. Answer briefly and route nothing.",
    "data": "You are Throughline's data agent. Use get_my_usage to read the user's own usage before answering.",
    "optimization": "You are Throughline's optimization agent. Suggest concrete ways to cut cost and latency.",
}

USAGE_TOOL = {
    "type": "function",
    "function": {
        "name": "get_my_usage",
        "description": "The current user's own LLM usage: tokens, cost in USD and event count.",
        "parameters": {"type": "object", "properties": {}, "additionalProperties": False},
    },
}


def route(content: str) -> str:
    if _OPTIMIZATION_RE.search(content):
        return "optimization"
    if _DATA_RE.search(content):
        return "data"
    return "general"


def _openai():
    import openai

    return openai


class LLMUnavailable(Exception):
    """Provider 5xx/429, timeout, connection failure or a dropped stream."""


@dataclass
class LLMCall:
    model: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: Decimal


@dataclass
class AgentResult:
    content: str
    calls: list[LLMCall] = field(default_factory=list)


class LLM:
    def __init__(
        self, base_url: str, api_key: str, model: str, timeout: float, prices: tuple[Decimal, Decimal]
    ):
        self.model = model
        self.timeout = timeout
        self.price_prompt, self.price_completion = prices
        self._client_args = {"base_url": base_url, "api_key": api_key, "timeout": httpx.Timeout(timeout)}
        self._client: openai.AsyncOpenAI | None = None

    @property
    def client(self) -> openai.AsyncOpenAI:
        # imported on first use (or by the startup warm-up): `openai` alone costs ~0.6 s of start time
        if self._client is None:
            import openai

            # max_retries=0: a failed call is reported, not silently retried
            self._client = openai.AsyncOpenAI(**self._client_args, max_retries=0)
        return self._client

    def _call(self, usage: Any) -> LLMCall:
        if usage is None:
            raise LLMUnavailable("no usage in the response")
        p, c = int(usage.prompt_tokens or 0), int(usage.completion_tokens or 0)
        cost = (Decimal(p) * self.price_prompt + Decimal(c) * self.price_completion).quantize(
            Decimal("0.000001")
        )
        return LLMCall(self.model, p, c, cost)

    async def complete(self, messages: list[dict], tools: list[dict] | None = None) -> tuple[Any, LLMCall]:
        try:
            async with asyncio.timeout(self.timeout * 2):
                resp = await self.client.chat.completions.create(
                    model=self.model, messages=messages, tools=tools or _openai().omit, stream=False
                )
        except (_openai().APIError, httpx.HTTPError, TimeoutError, ValueError) as exc:
            raise LLMUnavailable(type(exc).__name__) from exc
        if not resp.choices:
            raise LLMUnavailable("empty response")
        return resp.choices[0].message, self._call(resp.usage)

    async def stream(
        self, messages: list[dict], on_chunk: Callable[[str], Awaitable[None]]
    ) -> tuple[str, LLMCall]:
        parts: list[str] = []
        finished = False
        usage = None
        try:
            # per-read timeout from the client; this caps a trickling stream as a whole
            async with asyncio.timeout(max(30.0, self.timeout * 6)):
                stream = await self.client.chat.completions.create(
                    model=self.model,
                    messages=messages,
                    stream=True,
                    stream_options={"include_usage": True},
                )
                async for chunk in stream:
                    if chunk.usage is not None:
                        usage = chunk.usage
                    for choice in chunk.choices:
                        text = choice.delta.content if choice.delta else None
                        if text:
                            parts.append(text)
                            await on_chunk(text)
                        if choice.finish_reason:
                            finished = True
        except (_openai().APIError, httpx.HTTPError, TimeoutError, ValueError) as exc:
            raise LLMUnavailable(type(exc).__name__) from exc
        if not finished:
            raise LLMUnavailable("stream ended before finish_reason")
        return "".join(parts), self._call(usage)


ToolRunner = Callable[[], Awaitable[dict]]
Emit = Callable[[str, dict], Awaitable[None]]


async def run_agent(
    agent: str,
    llm: LLM,
    history: list[dict],
    content: str,
    emit: Emit,
    run_id: str,
    get_my_usage: ToolRunner,
) -> AgentResult:
    """Run one agent turn, emitting tool/stream frames; raises LLMUnavailable."""
    messages: list[dict] = [{"role": "system", "content": SYSTEM_PROMPTS[agent]}, *history]
    messages.append({"role": "user", "content": content})
    result = AgentResult(content="")

    async def on_chunk(text: str) -> None:
        await emit("agent_stream", {"chunk": text, "run_id": run_id})

    if agent == "data":
        message, call = await llm.complete(messages, tools=[USAGE_TOOL])
        result.calls.append(call)
        tool_calls = [tc for tc in (message.tool_calls or []) if getattr(tc, "function", None)]
        if not tool_calls:
            # the model answered without the tool: pass its answer on as the stream
            result.content = message.content or ""
            if result.content:
                await on_chunk(result.content)
            return result
        messages.append(
            {
                "role": "assistant",
                "content": message.content,
                "tool_calls": [
                    {
                        "id": tc.id,
                        "type": "function",
                        "function": {"name": tc.function.name, "arguments": tc.function.arguments or "{}"},
                    }
                    for tc in tool_calls
                ],
            }
        )
        for tc in tool_calls:
            name = tc.function.name
            try:
                args = json.loads(tc.function.arguments or "{}")
            except ValueError:
                args = {}
            await emit("tool_executing", {"tool": name, "args": args, "run_id": run_id})
            if name == "get_my_usage":
                tool_result = await get_my_usage()
            else:
                tool_result = {"error": f"unknown tool {name}"}
            await emit("tool_completed", {"tool": name, "result": tool_result, "run_id": run_id})
            messages.append({"role": "tool", "tool_call_id": tc.id, "content": json.dumps(tool_result)})

    text, call = await llm.stream(messages, on_chunk)
    result.calls.append(call)
    result.content = text
    return result
