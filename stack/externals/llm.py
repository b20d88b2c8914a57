"""OpenAI-compatible LLM provider stand-in (deterministic), over real HTTP + SSE on loopback.

Run: ``python -m stack.externals.llm --port P`` (``create_app()`` for the ASGI app).
Behaviour is fixed by docs/wiring.md, section "The LLM stand-in":

- ``POST /v1/chat/completions`` (``stream`` true or false), ``GET /v1/models``; both need
  ``Authorization: Bearer $TL_LLM_API_KEY`` (default ``sk-standin``), else 401 in OpenAI's
  error format.
- Reply ``Stand-in reply to: <last user content>``; after a ``tool`` message
  ``Stand-in reply to: <last user content> | <tool name> returned: <tool content>``; with
  ``tools`` and no ``tool`` message yet, one call of ``tools[0]`` with arguments ``{}``.
- prompt_tokens = whitespace-separated words over all message contents; completion_tokens =
  words of the reply (1 for a tool call). Streaming: one ``delta.content`` chunk per word,
  a ``finish_reason`` chunk, a usage chunk (``choices: []``, always sent), ``data: [DONE]``.
- ``POST /control`` {fail_next, status (500|429), retry_after, hang_next, hang_seconds,
  drop_next, latency_ms}; ``POST /control/reset``; ``GET /control``; ``GET|DELETE /requests``.

This is a third party's stand-in: it imports nothing from the rest of the stack.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import os
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from stack.externals._common import AccessLog, log_line

SERVICE = "llm"
HANG_MAX_SECONDS = 60.0
DROP_AFTER_CHUNKS = 2
MAX_LOGGED_REQUESTS = 1000

log = logging.getLogger("stack.externals.llm")


# --------------------------------------------------------------------------- logging


def _log_line(line: str) -> None:
    log_line(SERVICE, line)


def _describe_error(exc: BaseException) -> str:
    if isinstance(exc, _DropConnection):
        return " (connection dropped by control)"
    return f" (error {type(exc).__name__})"


class _DropConnection(Exception):
    """Raised mid-stream so the server closes the socket without finishing the response."""


class _QuietDrop(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, _DropConnection)


# --------------------------------------------------------------------------- helpers


def _error(
    status: int, message: str, type_: str, code: str | None = None, headers: dict | None = None
) -> JSONResponse:
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def _text_of(content: Any) -> str:
    """A message's content as text: a string, or the text parts of a content-part list."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, str):
                parts.append(part)
        return " ".join(parts)
    return str(content)


def count_words(text: str) -> int:
    return len(text.split())


def prompt_tokens(messages: list[dict]) -> int:
    return sum(count_words(_text_of(m.get("content"))) for m in messages)


def _tool_name_for(messages: list[dict], tool_msg: dict) -> str:
    call_id = tool_msg.get("tool_call_id")
    for m in messages:
        for call in m.get("tool_calls") or []:
            if call_id and call.get("id") == call_id:
                return str((call.get("function") or {}).get("name") or "tool")
    return str(tool_msg.get("name") or "tool")


def plan_reply(body: dict) -> dict:
    """What the stand-in answers: {"kind": "text", "text"} or {"kind": "tool_call", "name", "id"}."""
    messages: list[dict] = body["messages"]
    tools = body.get("tools") or []
    has_tool_message = any(m.get("role") == "tool" for m in messages)
    last_user = ""
    for m in reversed(messages):
        if m.get("role") == "user":
            last_user = _text_of(m.get("content"))
            break
    if tools and not has_tool_message:
        name = str((tools[0].get("function") or {}).get("name") or tools[0].get("name") or "tool")
        digest = hashlib.sha256(json.dumps(messages, sort_keys=True, default=str).encode()).hexdigest()
        return {"kind": "tool_call", "name": name, "id": f"call_{digest[:24]}"}
    text = f"Stand-in reply to: {last_user}"
    if messages and messages[-1].get("role") == "tool":
        tool_msg = messages[-1]
        text += f" | {_tool_name_for(messages, tool_msg)} returned: {_text_of(tool_msg.get('content'))}"
    return {"kind": "text", "text": text}


def split_words(text: str) -> list[str]:
    """Words keeping their trailing whitespace; ''.join(result) == text (text starts non-blank)."""
    lead = re.match(r"\s*", text).group(0)  # type: ignore[union-attr]
    words = re.findall(r"\S+\s*", text)
    if words and lead:
        words[0] = lead + words[0]
    return words


# --------------------------------------------------------------------------- state


class State:
    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.reset()

    def reset(self) -> None:
        self.fail_next = 0
        self.status = 500
        self.retry_after = 1
        self.hang_next = 0
        self.hang_seconds = HANG_MAX_SECONDS
        self.drop_next = 0
        self.latency_ms = 0

    def as_dict(self) -> dict:
        return {
            "fail_next": self.fail_next,
            "status": self.status,
            "retry_after": self.retry_after,
            "hang_next": self.hang_next,
            "hang_seconds": self.hang_seconds,
            "drop_next": self.drop_next,
            "latency_ms": self.latency_ms,
        }

    def take(self) -> str:
        """Consume one pending fault for this request: 'fail', 'hang', 'drop' or 'ok'."""
        if self.fail_next > 0:
            self.fail_next -= 1
            return "fail"
        if self.hang_next > 0:
            self.hang_next -= 1
            return "hang"
        if self.drop_next > 0:
            self.drop_next -= 1
            return "drop"
        return "ok"


# --------------------------------------------------------------------------- responses


def _chunk(cid: str, created: int, model: str, delta: dict | None, finish: str | None = None) -> dict:
    return {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": "fp_standin",
        "choices": [{"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish}],
    }


def _sse(obj: dict | str) -> bytes:
    data = obj if isinstance(obj, str) else json.dumps(obj, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


def stream_events(plan: dict, model: str, usage: dict) -> list[bytes]:
    """The complete SSE byte stream of one completion, one element per event."""
    cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    events: list[bytes] = []
    if plan["kind"] == "tool_call":
        head = {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "index": 0,
                    "id": plan["id"],
                    "type": "function",
                    "function": {"name": plan["name"], "arguments": ""},
                }
            ],
        }
        events.append(_sse(_chunk(cid, created, model, head)))
        args = {"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}
        events.append(_sse(_chunk(cid, created, model, args)))
        finish = "tool_calls"
    else:
        for i, word in enumerate(split_words(plan["text"])):
            delta = {"role": "assistant", "content": word} if i == 0 else {"content": word}
            events.append(_sse(_chunk(cid, created, model, delta)))
        finish = "stop"
    events.append(_sse(_chunk(cid, created, model, {}, finish)))
    events.append(
        _sse(
            {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_standin",
                "choices": [],
                "usage": usage,
            }
        )
    )
    events.append(_sse("[DONE]"))
    return events


def completion_body(plan: dict, model: str, usage: dict) -> dict:
    if plan["kind"] == "tool_call":
        message: dict = {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": plan["id"], "type": "function", "function": {"name": plan["name"], "arguments": "{}"}}
            ],
        }
        finish = "tool_calls"
    else:
        message = {"role": "assistant", "content": plan["text"]}
        finish = "stop"
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_standin",
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": usage,
    }


class _DroppedStream(Response):
    """Sends the SSE headers and the first chunks, then aborts the connection (no [DONE])."""

    def __init__(self, events: list[bytes], latency_ms: int) -> None:
        super().__init__(media_type="text/event-stream")
        self.events = events
        self.latency_ms = latency_ms

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-cache"),
                ],
            }
        )
        for event in self.events[:DROP_AFTER_CHUNKS]:
            if self.latency_ms:
                await asyncio.sleep(self.latency_ms / 1000)
            await send({"type": "http.response.body", "body": event, "more_body": True})
        raise _DropConnection("drop_next: connection closed mid-stream")


# --------------------------------------------------------------------------- app


def create_app() -> FastAPI:
    """The stand-in's ASGI app; reads TL_LLM_API_KEY / TL_LLM_MODEL at call time."""
    api_key = os.environ.get("TL_LLM_API_KEY", "").strip() or "sk-standin"
    default_model = os.environ.get("TL_LLM_MODEL", "").strip() or "standin-gpt"
    state = State()
    app = FastAPI(title="LLM stand-in (OpenAI-compatible)", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.llm = state
    app.add_middleware(AccessLog, service=SERVICE, describe_error=_describe_error)

    def _authorized(request: Request) -> bool:
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        return scheme.lower() == "bearer" and token.strip() == api_key

    def _unauthorized() -> JSONResponse:
        return _error(
            401,
            "Incorrect API key provided. You can find your API key in the stand-in's TL_LLM_API_KEY.",
            "invalid_request_error",
            "invalid_api_key",
        )

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "service": SERVICE, "model": default_model}

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        if not _authorized(request):
            return _unauthorized()
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {
                        "id": default_model,
                        "object": "model",
                        "created": 1700000000,
                        "owned_by": "throughline-standin",
                    }
                ],
            }
        )

    @app.get("/v1/models/{model_id}")
    async def model(model_id: str, request: Request) -> Response:
        if not _authorized(request):
            return _unauthorized()
        return JSONResponse(
            {"id": model_id, "object": "model", "created": 1700000000, "owned_by": "throughline-standin"}
        )

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        if not _authorized(request):
            return _unauthorized()
        try:
            body = json.loads(await request.body())
        except ValueError:
            return _error(400, "We could not parse the JSON body of your request.", "invalid_request_error")
        if not isinstance(body, dict):
            return _error(400, "The request body must be a JSON object.", "invalid_request_error")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            return _error(
                400,
                "'messages' must be a non-empty array of objects.",
                "invalid_request_error",
                "invalid_value",
            )
        tools = body.get("tools") or []
        if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
            return _error(
                400, "'tools' must be an array of objects.", "invalid_request_error", "invalid_value"
            )
        model_name = str(body.get("model") or default_model)
        stream = bool(body.get("stream"))
        outcome = state.take()
        entry = {
            "model": model_name,
            "messages": len(messages),
            "stream": stream,
            "tools": bool(tools),
            "tool_names": [str((t.get("function") or {}).get("name")) for t in tools],
            "last_role": messages[-1].get("role"),
            "request_id": request.headers.get("x-request-id"),
            "outcome": outcome if outcome != "fail" else f"fail_{state.status}",
            "received_at": time.time(),
        }
        state.requests.append(entry)
        del state.requests[:-MAX_LOGGED_REQUESTS]

        if outcome == "fail":
            if state.status == 429:
                return _error(
                    429,
                    "Rate limit reached for requests (stand-in fail_next).",
                    "requests",
                    "rate_limit_exceeded",
                    headers={"Retry-After": str(state.retry_after)},
                )
            return _error(
                state.status,
                "The server had an error while processing your request (stand-in fail_next).",
                "server_error",
            )
        if outcome == "hang":
            deadline = min(float(state.hang_seconds), HANG_MAX_SECONDS)
            try:
                async with asyncio.timeout(deadline):
                    while (await request.receive())["type"] != "http.disconnect":
                        pass
                return Response(status_code=499)  # client gone; nobody reads this
            except TimeoutError:
                return _error(
                    504, "The stand-in hung until its bound (hang_next).", "server_error", "timeout"
                )

        plan = plan_reply(body)
        completion = 1 if plan["kind"] == "tool_call" else count_words(plan["text"])
        prompt = prompt_tokens(messages)
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        latency = max(0, int(state.latency_ms))

        if not stream:
            if latency:
                await asyncio.sleep(latency / 1000)
            return JSONResponse(completion_body(plan, model_name, usage))

        events = stream_events(plan, model_name, usage)
        if outcome == "drop":
            return _DroppedStream(events, latency)

        async def gen() -> AsyncIterator[bytes]:
            for event in events:
                if latency:
                    await asyncio.sleep(latency / 1000)
                yield event

        return StreamingResponse(
            gen(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @app.get("/control")
    async def get_control() -> dict:
        return state.as_dict()

    @app.post("/control")
    async def set_control(request: Request) -> Response:
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            return JSONResponse({"detail": "body must be JSON"}, status_code=400)
        if not isinstance(body, dict):
            return JSONResponse({"detail": "body must be a JSON object"}, status_code=400)
        known = set(state.as_dict())
        unknown = sorted(set(body) - known)
        if unknown:
            return JSONResponse(
                {"detail": f"unknown control fields: {unknown}; known: {sorted(known)}"}, status_code=400
            )
        for key, value in body.items():
            if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                return JSONResponse({"detail": f"{key} must be a non-negative number"}, status_code=400)
        if "status" in body and body["status"] not in (429, 500, 502, 503):
            return JSONResponse(
                {"detail": "status must be 500 or 429 (502/503 also accepted)"}, status_code=400
            )
        for key, value in body.items():
            setattr(state, key, float(value) if key == "hang_seconds" else int(value))
        return JSONResponse(state.as_dict())

    @app.post("/control/reset")
    async def reset_control() -> dict:
        state.reset()
        return state.as_dict()

    @app.get("/requests")
    async def list_requests() -> list[dict]:
        return state.requests

    @app.delete("/requests")
    async def clear_requests() -> dict:
        n = len(state.requests)
        state.requests.clear()
        return {"deleted": n}

    return app


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(
        prog="python -m stack.externals.llm", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    config = uvicorn.Config(
        create_app(), host=args.host, port=args.port, log_level="warning", access_log=False
    )
    server = uvicorn.Server(config)
    logging.getLogger("uvicorn.error").addFilter(_QuietDrop())
    _log_line(
        f"listening on http://{args.host}:{args.port} (OpenAI base URL http://{args.host}:{args.port}/v1)"
    )
    server.run()


if __name__ == "__main__":
    main()
