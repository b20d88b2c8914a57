"""OpenAI-compatible LLM provider stand-in (deterministic), over real HTTP + SSE on loopback.

Run: ``python -m stack.externals.llm --port P`` (``create_app()`` for the ASGI app).
Behaviour is fixed by docs/wiring.md, section "The LLM stand-in":

- ``POST /v1/chat/completions`` (``stream`` true or false), ``GET /v1/models``; both need
  ``Authorization: Bearer $TL_LLM_API_KEY`` (default ``sk-standin``), else 401 in OpenAI's
  error format. ``/v1/models`` lists ``TL_LLM_MODEL`` (default ``standin-gpt``), or the
  control's ``models``.
- Reply ``Stand-in reply to: <last user content>``; after a ``tool`` message
  ``Stand-in reply to: <last user content> | <tool name> returned: <tool content>``. With
  ``tools`` and no ``tool`` message yet: exactly one tool -> one call of it with arguments
  ``{}``; several -> one call of the tool whose name appears (as a word, any case) in the last
  user message, the earliest named; none named -> the text reply.
- prompt_tokens = whitespace-separated words over all message contents; completion_tokens =
  words of the reply (1 for a tool call). Streaming: one ``delta.content`` chunk per word,
  a ``finish_reason`` chunk, a usage chunk (``choices: []``, always sent), ``data: [DONE]``.
- Script: ``POST /script`` appends entries (one object or a list)
  ``{"match"?: {prompt_contains, stream, has_tools, model}, "reply": {text | tool_call |
  error | hang | drop}, "usage"?: {prompt_tokens, completion_tokens}}``; the first queued
  entry whose match holds answers a request and is consumed, before any fault counter.
  ``GET /script`` lists what is left, ``DELETE /script`` clears it; bad entries -> 400.
- ``POST /control`` {fail_next, status (500|429), retry_after, hang_next, hang_seconds,
  drop_next, latency_ms, fault_scope (any|stream|tools), models}; ``POST /control/reset``
  (also clears the script); ``GET /control``; ``GET|DELETE /requests`` (``?stream=``,
  ``?has_tools=`` filter; each entry has ``prompt``, ``system``, ``matched``).

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
FAULT_SCOPES = ("any", "stream", "tools")
ERROR_STATUSES = (429, 500, 502, 503)
MATCH_KEYS = {"prompt_contains": str, "stream": bool, "has_tools": bool, "model": str}
REPLY_KINDS = ("text", "tool_call", "error", "hang", "drop")

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


def tool_name(tool: dict) -> str:
    return str((tool.get("function") or {}).get("name") or tool.get("name") or "tool")


def last_user_text(messages: list[dict]) -> str:
    """The text of the latest user message ('' if there is none)."""
    for m in reversed(messages):
        if m.get("role") == "user":
            return _text_of(m.get("content"))
    return ""


def system_text(messages: list[dict]) -> str | None:
    """The text of the system (or developer) messages, joined by a blank line; None without one."""
    texts = [_text_of(m.get("content")) for m in messages if m.get("role") in ("system", "developer")]
    return "\n\n".join(texts) if texts else None


def choose_tool(tools: list[dict], prompt: str) -> str | None:
    """The tool to call: the only one, else the one named earliest in `prompt` (None: no call)."""
    names = [tool_name(t) for t in tools]
    if len(names) == 1:
        return names[0]
    best: tuple[int, int, str] | None = None
    for name in names:
        found = re.search(rf"(?<!\w){re.escape(name)}(?!\w)", prompt, re.IGNORECASE)
        if found and (best is None or (found.start(), -len(name)) < best[:2]):
            best = (found.start(), -len(name), name)
    return best[2] if best else None


def call_id(messages: list[dict]) -> str:
    digest = hashlib.sha256(json.dumps(messages, sort_keys=True, default=str).encode()).hexdigest()
    return f"call_{digest[:24]}"


def plan_reply(body: dict) -> dict:
    """What the stand-in answers: {"kind": "text", "text"} or {"kind": "tool_call", "name", "id"}."""
    messages: list[dict] = body["messages"]
    tools = body.get("tools") or []
    has_tool_message = any(m.get("role") == "tool" for m in messages)
    last_user = last_user_text(messages)
    if tools and not has_tool_message:
        name = choose_tool(tools, last_user)
        if name is not None:
            return {"kind": "tool_call", "name": name, "id": call_id(messages), "arguments": "{}"}
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
    elif not words and text:
        words = [text]
    return words


# --------------------------------------------------------------------------- script


class BadInput(ValueError):
    """A control or script input the stand-in refuses (400); the message names the field."""


def _check_keys(obj: dict, allowed: set[str] | dict, where: str) -> None:
    unknown = sorted(set(obj) - set(allowed))
    if unknown:
        raise BadInput(f"{where} has unknown keys {unknown}; known: {sorted(allowed)}")


def _non_negative_int(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BadInput(f"{where} must be a non-negative integer")
    return value


def validate_reply(raw: Any, where: str) -> dict:
    """A script entry's reply, checked: exactly one of text, tool_call, error, hang, drop."""
    if not isinstance(raw, dict):
        raise BadInput(f"{where} must be an object with one of {list(REPLY_KINDS)}")
    _check_keys(raw, set(REPLY_KINDS), where)
    if len(raw) != 1:
        raise BadInput(f"{where} must have exactly one of {list(REPLY_KINDS)}")
    kind, value = next(iter(raw.items()))
    at = f"{where}.{kind}"
    if kind == "text":
        if not isinstance(value, str):
            raise BadInput(f"{at} must be a string")
        return {"text": value}
    if kind == "tool_call":
        if not isinstance(value, dict):
            raise BadInput(f"{at} must be an object {{name, arguments}}")
        _check_keys(value, {"name", "arguments"}, at)
        name = value.get("name")
        if not isinstance(name, str) or not name:
            raise BadInput(f"{at}.name must be a non-empty string")
        arguments = value.get("arguments", {})
        if not isinstance(arguments, dict | str):
            raise BadInput(f"{at}.arguments must be an object (or a JSON string, sent verbatim)")
        return {"tool_call": {"name": name, "arguments": arguments}}
    if kind == "error":
        if not isinstance(value, dict):
            raise BadInput(f"{at} must be an object {{status, message}}")
        _check_keys(value, {"status", "message", "retry_after"}, at)
        status = value.get("status", 500)
        if not isinstance(status, int) or isinstance(status, bool) or status not in ERROR_STATUSES:
            raise BadInput(f"{at}.status must be one of {list(ERROR_STATUSES)}")
        error: dict = {"status": status}
        if "message" in value:
            if not isinstance(value["message"], str):
                raise BadInput(f"{at}.message must be a string")
            error["message"] = value["message"]
        if "retry_after" in value:
            error["retry_after"] = _non_negative_int(value["retry_after"], f"{at}.retry_after")
        return {"error": error}
    if value is not True:  # hang, drop
        raise BadInput(f"{at} must be true")
    return {kind: True}


def validate_entry(raw: Any, where: str) -> dict:
    """One script entry, checked and normalised: {"match": {...}, "reply": {...}, "usage"?: {...}}."""
    if not isinstance(raw, dict):
        raise BadInput(f"{where} must be an object {{match?, reply, usage?}}")
    _check_keys(raw, {"match", "reply", "usage"}, where)
    if "reply" not in raw:
        raise BadInput(f"{where}.reply is required")
    match = raw.get("match") or {}
    if not isinstance(match, dict):
        raise BadInput(f"{where}.match must be an object")
    _check_keys(match, MATCH_KEYS, f"{where}.match")
    for key, type_ in MATCH_KEYS.items():
        if key in match and not isinstance(match[key], type_):
            raise BadInput(f"{where}.match.{key} must be a {type_.__name__}")
    entry: dict = {"match": dict(match), "reply": validate_reply(raw["reply"], f"{where}.reply")}
    if raw.get("usage") is not None:
        usage = raw["usage"]
        if not isinstance(usage, dict):
            raise BadInput(f"{where}.usage must be an object {{prompt_tokens, completion_tokens}}")
        _check_keys(usage, {"prompt_tokens", "completion_tokens"}, f"{where}.usage")
        entry["usage"] = {k: _non_negative_int(v, f"{where}.usage.{k}") for k, v in usage.items()}
    return entry


def match_accepts(match: dict, facts: dict) -> bool:
    """Whether every key of a script entry's match holds for the request `facts`."""
    if "prompt_contains" in match and match["prompt_contains"] not in facts["prompt"]:
        return False
    return all(match[key] == facts[key] for key in ("stream", "has_tools", "model") if key in match)


# --------------------------------------------------------------------------- state


class State:
    def __init__(self, default_model: str = "standin-gpt") -> None:
        self.default_model = default_model
        self.requests: list[dict] = []
        self.script: list[dict] = []
        self.script_seq = 0
        self.reset()

    def reset(self) -> None:
        self.fail_next = 0
        self.status = 500
        self.retry_after = 1
        self.hang_next = 0
        self.hang_seconds = HANG_MAX_SECONDS
        self.drop_next = 0
        self.latency_ms = 0
        self.fault_scope = "any"
        self.models = [self.default_model]
        self.clear_script()

    def clear_script(self) -> int:
        n = len(self.script)
        self.script = []
        self.script_seq = 0
        return n

    def as_dict(self) -> dict:
        return {
            "fail_next": self.fail_next,
            "status": self.status,
            "retry_after": self.retry_after,
            "hang_next": self.hang_next,
            "hang_seconds": self.hang_seconds,
            "drop_next": self.drop_next,
            "latency_ms": self.latency_ms,
            "fault_scope": self.fault_scope,
            "models": list(self.models),
        }

    def queue(self, entries: list[dict]) -> list[int]:
        """Append validated entries to the script; their indices (counted since the last clear)."""
        indices = []
        for entry in entries:
            self.script.append({"index": self.script_seq, **entry})
            indices.append(self.script_seq)
            self.script_seq += 1
        return indices

    def take_scripted(self, facts: dict) -> dict | None:
        """Consume and return the first queued entry whose match accepts the request, if any."""
        for i, entry in enumerate(self.script):
            if match_accepts(entry["match"], facts):
                return self.script.pop(i)
        return None

    def in_fault_scope(self, facts: dict) -> bool:
        if self.fault_scope == "stream":
            return bool(facts["stream"])
        if self.fault_scope == "tools":
            return bool(facts["has_tools"])
        return True

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

    def set_control(self, body: dict) -> None:
        """Validate then apply a POST /control body; raises BadInput naming the field."""
        known = set(self.as_dict())
        unknown = sorted(set(body) - known)
        if unknown:
            raise BadInput(f"unknown control fields: {unknown}; known: {sorted(known)}")
        for key, value in body.items():
            if key == "fault_scope":
                if value not in FAULT_SCOPES:
                    raise BadInput(f"fault_scope must be one of {list(FAULT_SCOPES)}")
            elif key == "models":
                if not isinstance(value, list) or not all(isinstance(m, str) and m for m in value):
                    raise BadInput("models must be a list of non-empty model ids")
            elif not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                raise BadInput(f"{key} must be a non-negative number")
        if "status" in body and body["status"] not in ERROR_STATUSES:
            raise BadInput("status must be 500 or 429 (502/503 also accepted)")
        for key, value in body.items():
            if key in ("fault_scope", "models"):
                setattr(self, key, list(value) if key == "models" else value)
            else:
                setattr(self, key, float(value) if key == "hang_seconds" else int(value))


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
        args = {"tool_calls": [{"index": 0, "function": {"arguments": plan.get("arguments", "{}")}}]}
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
                {
                    "id": plan["id"],
                    "type": "function",
                    "function": {"name": plan["name"], "arguments": plan.get("arguments", "{}")},
                }
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
    """Sends the headers and the first parts of the body, then aborts the connection (no [DONE])."""

    def __init__(
        self, events: list[bytes], latency_ms: int, content_type: bytes = b"text/event-stream; charset=utf-8"
    ) -> None:
        super().__init__(media_type="text/event-stream")
        self.events = events
        self.latency_ms = latency_ms
        self.content_type = content_type

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", self.content_type),
                    (b"cache-control", b"no-cache"),
                ],
            }
        )
        for event in self.events[:DROP_AFTER_CHUNKS]:
            if self.latency_ms:
                await asyncio.sleep(self.latency_ms / 1000)
            await send({"type": "http.response.body", "body": event, "more_body": True})
        raise _DropConnection("drop: connection closed mid-stream")


def _fault_error(status: int, retry_after: int, message: str | None, source: str) -> JSONResponse:
    """The provider's error answer for a failed request (fail_next or a scripted error)."""
    if status == 429:
        return _error(
            429,
            message or f"Rate limit reached for requests (stand-in {source}).",
            "requests",
            "rate_limit_exceeded",
            headers={"Retry-After": str(retry_after)},
        )
    return _error(
        status,
        message or f"The server had an error while processing your request (stand-in {source}).",
        "server_error",
    )


async def _hang(request: Request, seconds: float) -> Response:
    """Hold the request until the client gives up, or answer 504 at the bound."""
    deadline = min(float(seconds), HANG_MAX_SECONDS)
    try:
        async with asyncio.timeout(deadline):
            while (await request.receive())["type"] != "http.disconnect":
                pass
        return Response(status_code=499)  # client gone; nobody reads this
    except TimeoutError:
        return _error(504, "The stand-in hung until its bound (hang_next).", "server_error", "timeout")


def _bool_param(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("true", "1"):
        return True
    if value in ("false", "0"):
        return False
    raise BadInput(f"query parameter {name} must be true or false, not {raw!r}")


# --------------------------------------------------------------------------- app


def create_app() -> FastAPI:
    """The stand-in's ASGI app; reads TL_LLM_API_KEY / TL_LLM_MODEL at call time."""
    api_key = os.environ.get("TL_LLM_API_KEY", "").strip() or "sk-standin"
    default_model = os.environ.get("TL_LLM_MODEL", "").strip() or "standin-gpt"
    state = State(default_model)
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
                        "id": model_id,
                        "object": "model",
                        "created": 1700000000,
                        "owned_by": "throughline-standin",
                    }
                    for model_id in state.models
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
        facts = {
            "prompt": last_user_text(messages),
            "stream": stream,
            "has_tools": bool(tools),
            "model": model_name,
        }
        scripted = state.take_scripted(facts)
        reply: dict = scripted["reply"] if scripted else {}
        status = state.status
        if scripted is None:
            outcome = state.take() if state.in_fault_scope(facts) else "ok"
        elif "error" in reply:
            outcome, status = "fail", reply["error"]["status"]
        elif "hang" in reply or "drop" in reply:
            outcome = "hang" if "hang" in reply else "drop"
        else:
            outcome = "ok"
        entry = {
            "model": model_name,
            "messages": len(messages),
            "stream": stream,
            "tools": bool(tools),
            "tool_names": [str((t.get("function") or {}).get("name")) for t in tools],
            "last_role": messages[-1].get("role"),
            "prompt": facts["prompt"],
            "system": system_text(messages),
            "matched": scripted["index"] if scripted else None,
            "request_id": request.headers.get("x-request-id"),
            "outcome": outcome if outcome != "fail" else f"fail_{status}",
            "received_at": time.time(),
            "finished_at": None,  # set when the whole answer has been sent (never for a fault or hang)
        }
        state.requests.append(entry)
        del state.requests[:-MAX_LOGGED_REQUESTS]

        if outcome == "fail":
            if scripted:
                error = reply["error"]
                retry_after = error.get("retry_after", state.retry_after)
                return _fault_error(status, retry_after, error.get("message"), "script")
            return _fault_error(status, state.retry_after, None, "fail_next")
        if outcome == "hang":
            return await _hang(request, state.hang_seconds)

        if "text" in reply:
            plan: dict = {"kind": "text", "text": reply["text"]}
        elif "tool_call" in reply:
            arguments = reply["tool_call"]["arguments"]
            plan = {
                "kind": "tool_call",
                "name": reply["tool_call"]["name"],
                "id": call_id(messages),
                "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments),
            }
        else:
            plan = plan_reply(body)
        completion = 1 if plan["kind"] == "tool_call" else count_words(plan["text"])
        prompt = prompt_tokens(messages)
        if scripted and "usage" in scripted:
            prompt = scripted["usage"].get("prompt_tokens", prompt)
            completion = scripted["usage"].get("completion_tokens", completion)
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        latency = max(0, int(state.latency_ms))

        if not stream:
            if scripted and outcome == "drop":  # a scripted drop also cuts a non-streamed body
                raw = json.dumps(completion_body(plan, model_name, usage)).encode()
                return _DroppedStream([raw[: len(raw) // 2]], latency, b"application/json")
            if latency:
                await asyncio.sleep(latency / 1000)
            entry["finished_at"] = time.time()
            return JSONResponse(completion_body(plan, model_name, usage))

        events = stream_events(plan, model_name, usage)
        if outcome == "drop":
            return _DroppedStream(events, latency)

        async def gen() -> AsyncIterator[bytes]:
            for event in events:
                if latency:
                    await asyncio.sleep(latency / 1000)
                yield event
            entry["finished_at"] = time.time()  # the last byte of the answer went out

        return StreamingResponse(
            gen(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @app.get("/control")
    async def get_control() -> dict:
        return state.as_dict()

    async def _json_body(request: Request) -> Any:
        try:
            return json.loads(await request.body() or b"{}")
        except ValueError as exc:
            raise BadInput("body must be JSON") from exc

    def _bad(exc: BadInput) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.post("/control")
    async def set_control(request: Request) -> Response:
        try:
            body = await _json_body(request)
            if not isinstance(body, dict):
                raise BadInput("body must be a JSON object")
            state.set_control(body)
        except BadInput as exc:
            return _bad(exc)
        return JSONResponse(state.as_dict())

    @app.post("/control/reset")
    async def reset_control() -> dict:
        state.reset()
        return state.as_dict()

    @app.get("/script")
    async def get_script() -> list[dict]:
        return state.script

    @app.post("/script")
    async def post_script(request: Request) -> Response:
        try:
            body = await _json_body(request)
            raw = body if isinstance(body, list) else [body]
            entries = [validate_entry(e, f"script[{i}]") for i, e in enumerate(raw)]
        except BadInput as exc:
            return _bad(exc)
        return JSONResponse({"queued": state.queue(entries), "script": state.script})

    @app.delete("/script")
    async def clear_script() -> dict:
        return {"deleted": state.clear_script()}

    @app.get("/requests")
    async def list_requests(request: Request) -> Response:
        filters: dict[str, bool] = {}
        try:
            for name, raw in request.query_params.items():
                if name not in ("stream", "has_tools"):
                    raise BadInput(f"unknown query parameter {name}; known: ['has_tools', 'stream']")
                filters["tools" if name == "has_tools" else name] = _bool_param(name, raw)
        except BadInput as exc:
            return _bad(exc)
        return JSONResponse([e for e in state.requests if all(e[k] is v for k, v in filters.items())])

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
