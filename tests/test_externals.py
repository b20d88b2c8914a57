"""The third-party stand-ins (stack/externals), each over its real protocol on loopback.

The LLM, OIDC and SMTP stand-ins run as real processes (``python -m stack.externals.<name>``)
on free ports; a few OIDC settings variants run in-process through httpx.ASGITransport.
No sleeps: everything waits on a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import secrets
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import openai
import pytest

ROOT = Path(__file__).resolve().parents[1]
LLM_KEY = "sk-test-standin"
CLIENT_ID = "throughline-web"
CLIENT_SECRET = "s3cret-for-tests"
REDIRECT_URI = "http://127.0.0.1:9/auth/oauth/acme/callback"


# --------------------------------------------------------------------------- process helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``check`` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except (httpx.TransportError, OSError) as exc:
            last = exc
        time.sleep(0.02)  # poll interval of a deadline-bounded wait, not a fixed delay
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last!r})")


class Proc:
    def __init__(self, module: str, args: list[str], env: dict[str, str], log: Path, health_url: str) -> None:
        self.log = log
        self.health_url = health_url
        self._log_fh = log.open("wb")
        self.started = time.monotonic()
        self.popen = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=ROOT,
            env=env,
            stdout=self._log_fh,
            stderr=subprocess.STDOUT,
        )

        def healthy() -> bool:
            if self.popen.poll() is not None:
                raise AssertionError(f"{module} exited {self.popen.returncode}:\n{log.read_text()}")
            return httpx.get(health_url, timeout=1).status_code == 200

        wait_until(healthy, 15, f"{module} health")
        self.startup_seconds = time.monotonic() - self.started

    def stop(self) -> None:
        self.popen.terminate()
        try:
            self.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=5)
        self._log_fh.close()


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TL_")}
    env.update(extra)
    return env


# --------------------------------------------------------------------------- LLM


@pytest.fixture(scope="module")
def llm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    port = free_port()
    proc = Proc(
        "stack.externals.llm",
        ["--port", str(port)],
        _env(TL_LLM_API_KEY=LLM_KEY),
        tmp_path_factory.mktemp("llm") / "llm.log",
        f"http://127.0.0.1:{port}/health",
    )
    proc.base = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
    yield proc
    proc.stop()


@pytest.fixture
def llm_base(llm: Proc) -> str:
    base = llm.base  # type: ignore[attr-defined]
    httpx.post(f"{base}/control/reset").raise_for_status()
    httpx.delete(f"{base}/requests").raise_for_status()
    return base


def oai(base: str, key: str = LLM_KEY, **kw: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, **kw)


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_my_usage",
            "description": "Usage of the current user",
            "parameters": {"type": "object", "properties": {}},
        },
    }
]


def test_llm_is_healthy(llm: Proc) -> None:
    # Start time is measured by scripts/bench_start.py, never asserted in a test.
    assert httpx.get(llm.health_url).json()["status"] == "ok"


async def test_llm_stream_is_deterministic_with_usage(llm_base: str) -> None:
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},  # 5 words
        {"role": "user", "content": "What is my usage today?"},  # 5 words
    ]
    expected = "Stand-in reply to: What is my usage today?"
    client = oai(llm_base)
    stream = await client.chat.completions.create(
        model="standin-gpt", messages=messages, stream=True, stream_options={"include_usage": True}
    )
    contents, finishes, usage, chunks = [], [], None, 0
    async for chunk in stream:
        chunks += 1
        assert chunk.object == "chat.completion.chunk"
        if chunk.usage is not None:
            assert chunk.choices == []
            usage = chunk.usage
            continue
        choice = chunk.choices[0]
        if choice.delta.content:
            contents.append(choice.delta.content)
        if choice.finish_reason:
            finishes.append(choice.finish_reason)
    assert "".join(contents) == expected
    assert len(contents) == len(expected.split()) == 8  # one chunk per word, trailing spaces kept
    assert contents[0] == "Stand-in "
    assert finishes == ["stop"]
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (10, 8, 18)

    # Raw wire: usage in the final chunk even without include_usage, then [DONE].
    async with httpx.AsyncClient() as h:
        r = await h.post(
            f"{llm_base}/v1/chat/completions",
            headers={"Authorization": f"Bearer {LLM_KEY}"},
            json={"model": "standin-gpt", "messages": messages, "stream": True},
        )
    assert r.headers["content-type"].startswith("text/event-stream")
    events = [line[len("data: ") :] for line in r.text.split("\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    last = json.loads(events[-2])
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == 8


async def test_llm_non_stream_and_models(llm_base: str) -> None:
    client = oai(llm_base)
    resp = await client.chat.completions.create(
        model="standin-gpt", messages=[{"role": "user", "content": [{"type": "text", "text": "hello there"}]}]
    )
    assert resp.choices[0].message.content == "Stand-in reply to: hello there"
    assert resp.choices[0].finish_reason == "stop"
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (2, 5)
    models = await client.models.list()
    assert [m.id for m in models.data] == ["standin-gpt"]


async def test_llm_tool_call_then_tool_result(llm_base: str) -> None:
    client = oai(llm_base)
    messages: list[dict] = [{"role": "user", "content": "show my token usage"}]
    stream = await client.chat.completions.create(
        model="standin-gpt",
        messages=messages,
        tools=TOOLS,
        stream=True,
        stream_options={"include_usage": True},
    )
    calls: dict[int, dict] = {}
    finish, usage = None, None
    async for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            for tc in choice.delta.tool_calls or []:
                slot = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
                slot["id"] = tc.id or slot["id"]
                if tc.function and tc.function.name:
                    slot["name"] += tc.function.name
                if tc.function and tc.function.arguments:
                    slot["arguments"] += tc.function.arguments
            finish = choice.finish_reason or finish
    assert finish == "tool_calls"
    assert list(calls) == [0]
    call = calls[0]
    assert call["id"].startswith("call_") and call["name"] == "get_my_usage" and call["arguments"] == "{}"
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (4, 1)

    messages += [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": call["id"], "type": "function", "function": {"name": call["name"], "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": call["id"], "content": "1200 tokens this month"},
    ]
    stream = await client.chat.completions.create(
        model="standin-gpt",
        messages=messages,
        tools=TOOLS,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage = "", None
    async for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
    assert text == "Stand-in reply to: show my token usage | get_my_usage returned: 1200 tokens this month"
    assert usage is not None and usage.prompt_tokens == 4 + 4 and usage.completion_tokens == len(text.split())

    # Non-stream tool call body.
    resp = await client.chat.completions.create(model="standin-gpt", messages=messages[:1], tools=TOOLS)
    msg = resp.choices[0].message
    assert resp.choices[0].finish_reason == "tool_calls" and msg.content is None
    assert msg.tool_calls[0].function.name == "get_my_usage" and msg.tool_calls[0].function.arguments == "{}"


async def test_llm_fail_next_500_raises_then_recovers(llm_base: str) -> None:
    async with httpx.AsyncClient() as h:
        (await h.post(f"{llm_base}/control", json={"fail_next": 1, "status": 500})).raise_for_status()
    client = oai(llm_base)
    with pytest.raises(openai.InternalServerError) as info:
        await client.chat.completions.create(
            model="standin-gpt", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    assert info.value.status_code == 500
    resp = await client.chat.completions.create(
        model="standin-gpt", messages=[{"role": "user", "content": "hi"}]
    )
    assert resp.choices[0].message.content == "Stand-in reply to: hi"
    async with httpx.AsyncClient() as h:
        log = (await h.get(f"{llm_base}/requests")).json()
        control = (await h.get(f"{llm_base}/control")).json()
    assert [e["outcome"] for e in log] == ["fail_500", "ok"]
    assert log[0]["stream"] is True and log[1]["stream"] is False and log[0]["messages"] == 1
    assert control["fail_next"] == 0


async def test_llm_log_says_when_each_answer_finished(llm_base: str) -> None:
    """Each logged call keeps when it arrived and when its last byte went out, so a journey can
    prove that turns ran at the same moment; a call that failed never finished an answer."""
    client = oai(llm_base)

    async def streamed(text: str) -> None:
        stream = await client.chat.completions.create(
            model="standin-gpt", messages=[{"role": "user", "content": text}], stream=True
        )
        async for _ in stream:
            pass

    async with httpx.AsyncClient() as h:
        (await h.post(f"{llm_base}/control", json={"latency_ms": 40})).raise_for_status()
        await asyncio.gather(streamed("one two three"), streamed("four five six"))
        (
            await h.post(f"{llm_base}/control", json={"latency_ms": 0, "fail_next": 1, "status": 500})
        ).raise_for_status()
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(
                model="standin-gpt", messages=[{"role": "user", "content": "fails"}]
            )
        log = (await h.get(f"{llm_base}/requests")).json()
    first, second, failed = log
    for done in (first, second):
        assert done["finished_at"] > done["received_at"], done
    # Both streams were in flight together: each arrived before the other finished.
    assert first["received_at"] < second["finished_at"] and second["received_at"] < first["finished_at"]
    assert (failed["outcome"], failed["finished_at"]) == ("fail_500", None)


async def test_llm_fail_next_429_has_retry_after(llm_base: str) -> None:
    async with httpx.AsyncClient() as h:
        await h.post(f"{llm_base}/control", json={"fail_next": 2, "status": 429, "retry_after": 7})
        r = await h.post(
            f"{llm_base}/v1/chat/completions",
            headers={"Authorization": f"Bearer {LLM_KEY}"},
            json={"model": "standin-gpt", "messages": [{"role": "user", "content": "hi"}]},
        )
    assert r.status_code == 429
    assert r.headers["retry-after"] == "7"
    assert r.json()["error"]["code"] == "rate_limit_exceeded"
    with pytest.raises(openai.RateLimitError) as info:
        await oai(llm_base).chat.completions.create(
            model="standin-gpt", messages=[{"role": "user", "content": "hi"}]
        )
    assert info.value.response.headers["retry-after"] == "7"


async def test_llm_drop_next_breaks_the_stream(llm_base: str) -> None:
    async with httpx.AsyncClient() as h:
        await h.post(f"{llm_base}/control", json={"drop_next": 2})
        # Raw: a few chunks arrive, then the connection closes without [DONE].
        received = b""
        with pytest.raises(httpx.RemoteProtocolError):
            async with h.stream(
                "POST",
                f"{llm_base}/v1/chat/completions",
                headers={"Authorization": f"Bearer {LLM_KEY}"},
                json={
                    "model": "standin-gpt",
                    "messages": [{"role": "user", "content": "a b c d e f"}],
                    "stream": True,
                },
            ) as r:
                assert r.status_code == 200
                async for part in r.aiter_bytes():
                    received += part
        assert b"chat.completion.chunk" in received and b"[DONE]" not in received
    client = oai(llm_base)
    got: list[str] = []
    with pytest.raises((openai.APIConnectionError, httpx.TransportError)):
        stream = await client.chat.completions.create(
            model="standin-gpt", messages=[{"role": "user", "content": "a b c d e f"}], stream=True
        )
        async for chunk in stream:
            got += [c.delta.content or "" for c in chunk.choices]
    assert 0 < len(got) < 9
    # The server is still fine afterwards.
    resp = await client.chat.completions.create(
        model="standin-gpt", messages=[{"role": "user", "content": "ok"}]
    )
    assert resp.choices[0].message.content == "Stand-in reply to: ok"


async def test_llm_hang_next_until_client_gives_up(llm_base: str) -> None:
    async with httpx.AsyncClient() as h:
        await h.post(f"{llm_base}/control", json={"hang_next": 1})
    client = oai(llm_base, timeout=0.5)
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        await client.chat.completions.create(
            model="standin-gpt", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    assert time.monotonic() - started >= 0.5
    resp = await client.chat.completions.create(
        model="standin-gpt", messages=[{"role": "user", "content": "hi"}]
    )
    assert resp.choices[0].message.content == "Stand-in reply to: hi"


async def test_llm_latency_per_chunk(llm_base: str) -> None:
    async with httpx.AsyncClient() as h:
        await h.post(f"{llm_base}/control", json={"latency_ms": 30})
    started = time.monotonic()
    stream = await oai(llm_base).chat.completions.create(
        model="standin-gpt", messages=[{"role": "user", "content": "one two"}], stream=True
    )
    n = 0
    async for _ in stream:
        n += 1
    # 5 word chunks + finish + usage (+ [DONE]) each delayed 30 ms.
    assert n == 7 and time.monotonic() - started >= 7 * 0.03


async def test_llm_wrong_key_is_401(llm_base: str) -> None:
    with pytest.raises(openai.AuthenticationError) as info:
        await oai(llm_base, key="sk-wrong").chat.completions.create(
            model="standin-gpt", messages=[{"role": "user", "content": "hi"}]
        )
    assert info.value.status_code == 401
    async with httpx.AsyncClient() as h:
        r = await h.get(f"{llm_base}/v1/models")
        bad = await h.post(f"{llm_base}/control", json={"explode": 1})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert bad.status_code == 400


# --------------------------------------------------------------------------- LLM: script, scope, tools


def named_tools(*names: str) -> list[dict]:
    return [
        {"type": "function", "function": {"name": n, "parameters": {"type": "object", "properties": {}}}}
        for n in names
    ]


async def complete(
    h: httpx.AsyncClient,
    base: str,
    prompt: str,
    *,
    stream: bool = False,
    tools: list[dict] | None = None,
    system: str | None = None,
    model: str = "standin-gpt",
) -> httpx.Response:
    """One raw chat completion (no retries, nothing hidden by an SDK)."""
    messages = [{"role": "system", "content": system}] if system else []
    body: dict[str, Any] = {"model": model, "messages": [*messages, {"role": "user", "content": prompt}]}
    if stream:
        body["stream"] = True
    if tools:
        body["tools"] = tools
    return await h.post(
        f"{base}/v1/chat/completions", headers={"Authorization": f"Bearer {LLM_KEY}"}, json=body
    )


def sse_chunks(r: httpx.Response) -> list[dict]:
    events = [line[len("data: ") :] for line in r.text.split("\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def streamed_text(r: httpx.Response) -> tuple[list[str], str | None]:
    """The content deltas and the finish_reason of a streamed completion."""
    parts, finish = [], None
    for chunk in sse_chunks(r):
        for choice in chunk["choices"]:
            if choice["delta"].get("content"):
                parts.append(choice["delta"]["content"])
            finish = choice["finish_reason"] or finish
    return parts, finish


def answer_of(r: httpx.Response) -> dict:
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]


async def test_llm_script_order_match_and_consumption(llm_base: str) -> None:
    async with httpx.AsyncClient() as h:
        r = await h.post(
            f"{llm_base}/script",
            json=[
                {"match": {"prompt_contains": "Hello"}, "reply": {"text": "Hi from the script"}},
                {"match": {"stream": False}, "reply": {"text": "silent pre-query"}},
                {"match": {"has_tools": True, "model": "other-model"}, "reply": {"text": "tools here"}},
                {"reply": {"tool_call": {"name": "web_search", "arguments": {"query": "cats"}}}},
            ],
        )
        assert r.status_code == 200 and r.json()["queued"] == [0, 1, 2, 3]
        assert [e["index"] for e in r.json()["script"]] == [0, 1, 2, 3]

        # Entry 0 does not accept "Good day"; entry 1 (non-streamed) does.
        assert answer_of(await complete(h, llm_base, "Good day"))["content"] == "silent pre-query"
        # Streamed and saying Hello: entry 0, word by word.
        r = await complete(h, llm_base, "Hello there", stream=True)
        parts, finish = streamed_text(r)
        assert parts == ["Hi ", "from ", "the ", "script"] and finish == "stop"
        assert sse_chunks(r)[-1]["usage"]["completion_tokens"] == 4
        # Entry 2 needs tools and model other-model: a tool-less request skips it to entry 3.
        left = (await h.get(f"{llm_base}/script")).json()
        assert [e["index"] for e in left] == [2, 3]
        msg = answer_of(await complete(h, llm_base, "anything"))
        assert msg["content"] is None and msg["tool_calls"][0]["function"] == {
            "name": "web_search",
            "arguments": '{"query": "cats"}',
        }
        assert msg["tool_calls"][0]["id"].startswith("call_")
        r = await complete(h, llm_base, "x", tools=named_tools("a", "b"), model="other-model", stream=True)
        assert streamed_text(r) == (["tools ", "here"], "stop")
        assert (await h.get(f"{llm_base}/script")).json() == []
        # Nothing queued any more: the default behaviour.
        assert answer_of(await complete(h, llm_base, "Hello"))["content"] == "Stand-in reply to: Hello"
        log = (await h.get(f"{llm_base}/requests")).json()
    assert [e["matched"] for e in log] == [1, 0, 3, 2, None]
    assert [e["outcome"] for e in log] == ["ok"] * 5


async def test_llm_script_usage_errors_hang_and_drop(llm_base: str) -> None:
    async with httpx.AsyncClient(timeout=5) as h:
        r = await h.post(
            f"{llm_base}/script",
            json=[
                {"reply": {"text": "one two"}, "usage": {"prompt_tokens": 100, "completion_tokens": 7}},
                {"reply": {"error": {"status": 429, "retry_after": 3}}},
                {"reply": {"error": {"status": 502, "message": "bad gateway upstream"}}},
                {"reply": {"error": {"status": 503}}},
                {"match": {"stream": True}, "reply": {"drop": True}},
                {"reply": {"drop": True}},
                {"reply": {"hang": True}},
            ],
        )
        assert r.status_code == 200
        body = (await complete(h, llm_base, "hi")).json()
        assert body["usage"] == {"prompt_tokens": 100, "completion_tokens": 7, "total_tokens": 107}
        r = await complete(h, llm_base, "hi")
        assert r.status_code == 429 and r.headers["retry-after"] == "3"
        assert r.json()["error"]["code"] == "rate_limit_exceeded"
        r = await complete(h, llm_base, "hi", stream=True)
        assert r.status_code == 502 and r.json()["error"]["message"] == "bad gateway upstream"
        r = await complete(h, llm_base, "hi")
        assert r.status_code == 503 and r.json()["error"]["type"] == "server_error"
        # Streamed drop: a couple of chunks, then the cut.
        received = b""
        with pytest.raises(httpx.RemoteProtocolError):
            async with h.stream(
                "POST",
                f"{llm_base}/v1/chat/completions",
                headers={"Authorization": f"Bearer {LLM_KEY}"},
                json={"messages": [{"role": "user", "content": "a b c d e f"}], "stream": True},
            ) as resp:
                async for part in resp.aiter_bytes():
                    received += part
        assert b"chat.completion.chunk" in received and b"[DONE]" not in received
        # Non-streamed drop: half a body, then the cut.
        with pytest.raises(httpx.RemoteProtocolError):
            await complete(h, llm_base, "hi")
    with pytest.raises(openai.APITimeoutError):
        await oai(llm_base, timeout=0.5).chat.completions.create(
            model="standin-gpt", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    async with httpx.AsyncClient() as h:
        log = (await h.get(f"{llm_base}/requests")).json()
    assert [e["outcome"] for e in log] == ["ok", "fail_429", "fail_502", "fail_503", "drop", "drop", "hang"]
    assert [e["matched"] for e in log] == list(range(7))


async def test_llm_script_takes_precedence_over_counters(llm_base: str) -> None:
    async with httpx.AsyncClient(timeout=5) as h:
        await h.post(f"{llm_base}/control", json={"fail_next": 1, "drop_next": 1, "status": 500})
        title = {"match": {"prompt_contains": "title"}, "reply": {"text": "A title"}}
        assert (await h.post(f"{llm_base}/script", json=title)).status_code == 200
        assert answer_of(await complete(h, llm_base, "make a title"))["content"] == "A title"
        control = (await h.get(f"{llm_base}/control")).json()
        assert (control["fail_next"], control["drop_next"]) == (1, 1)  # not consumed by the script
        # Requests no entry matches get the counters as before.
        await h.post(
            f"{llm_base}/script", json={"match": {"prompt_contains": "nope"}, "reply": {"text": "x"}}
        )
        assert (await complete(h, llm_base, "another")).status_code == 500
        with pytest.raises(httpx.RemoteProtocolError):
            await complete(h, llm_base, "and another", stream=True)
        assert [e["index"] for e in (await h.get(f"{llm_base}/script")).json()] == [1]
        log = (await h.get(f"{llm_base}/requests")).json()
    assert [(e["matched"], e["outcome"]) for e in log] == [(0, "ok"), (None, "fail_500"), (None, "drop")]


async def test_llm_fault_scope_spares_the_silent_pre_query(llm_base: str) -> None:
    async with httpx.AsyncClient(timeout=5) as h:
        r = await h.post(f"{llm_base}/control", json={"fail_next": 1, "status": 500, "fault_scope": "stream"})
        assert r.json()["fault_scope"] == "stream"
        assert (await complete(h, llm_base, "pre-query")).status_code == 200
        assert (await h.get(f"{llm_base}/control")).json()["fail_next"] == 1
        assert (await complete(h, llm_base, "the reply", stream=True)).status_code == 500
        assert (await complete(h, llm_base, "the reply", stream=True)).status_code == 200

        await h.post(f"{llm_base}/control", json={"drop_next": 1, "fault_scope": "tools"})
        r = await complete(h, llm_base, "title please", stream=True)
        assert streamed_text(r)[1] == "stop"  # no tools: not in scope
        with pytest.raises(httpx.RemoteProtocolError):
            await complete(h, llm_base, "answer", stream=True, tools=named_tools("a", "b"))
        assert (await h.get(f"{llm_base}/control")).json()["drop_next"] == 0

        bad = await h.post(f"{llm_base}/control", json={"fault_scope": "streamed"})
        assert bad.status_code == 400 and "fault_scope" in bad.json()["detail"]
        reset = (await h.post(f"{llm_base}/control/reset")).json()
        log = (await h.get(f"{llm_base}/requests")).json()
    assert reset["fault_scope"] == "any"
    assert [e["outcome"] for e in log] == ["ok", "fail_500", "ok", "ok", "drop"]


async def test_llm_tool_choice_follows_the_request_tools(llm_base: str) -> None:
    async with httpx.AsyncClient() as h:
        # Exactly one tool: called whatever the prompt says (the data agent relies on this).
        msg = answer_of(await complete(h, llm_base, "how much did I use", tools=TOOLS))
        assert msg["tool_calls"][0]["function"] == {"name": "get_my_usage", "arguments": "{}"}
        # Several tools, none named: a text answer, no call.
        several = named_tools("search", "search_web", "get_current_timestamp", "memory_query")
        r = await complete(h, llm_base, "Hello, who are you?", tools=several, stream=True)
        assert streamed_text(r) == (
            ["Stand-in ", "reply ", "to: ", "Hello, ", "who ", "are ", "you?"],
            "stop",
        )
        # Several, one named (as a word, any case): that one; `search` inside search_web does not count.
        msg = answer_of(await complete(h, llm_base, "please use Search_Web for cats", tools=several))
        assert [c["function"]["name"] for c in msg["tool_calls"]] == ["search_web"]
        # Several named: the earliest in the prompt.
        r = await complete(h, llm_base, "call get_current_timestamp, then search", tools=several, stream=True)
        heads = [
            tc for c in sse_chunks(r) for ch in c["choices"] for tc in ch["delta"].get("tool_calls") or []
        ]
        assert heads[0]["function"]["name"] == "get_current_timestamp" and heads[0]["id"].startswith("call_")
        # A scripted tool_call overrides the rule.
        await h.post(f"{llm_base}/script", json={"reply": {"tool_call": {"name": "memory_query"}}})
        msg = answer_of(await complete(h, llm_base, "use search_web", tools=several))
        assert msg["tool_calls"][0]["function"] == {"name": "memory_query", "arguments": "{}"}


async def test_llm_request_log_fields_and_filters(llm_base: str) -> None:
    async with httpx.AsyncClient() as h:
        await h.post(f"{llm_base}/script", json={"match": {"stream": True}, "reply": {"text": "ok"}})
        await complete(h, llm_base, "pre", system="You are a router.")
        await complete(h, llm_base, "the question", stream=True, tools=named_tools("a", "b"), system="Sys")
        await complete(h, llm_base, "title", stream=True)
        messages = [
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "answer"},
            {"role": "user", "content": [{"type": "text", "text": "second part"}]},
        ]
        await h.post(
            f"{llm_base}/v1/chat/completions",
            headers={"Authorization": f"Bearer {LLM_KEY}", "X-Request-Id": "rid-7"},
            json={"messages": messages},
        )
        log = (await h.get(f"{llm_base}/requests")).json()
        streamed = (await h.get(f"{llm_base}/requests", params={"stream": "true"})).json()
        unstreamed = (await h.get(f"{llm_base}/requests", params={"stream": "false"})).json()
        with_tools = (await h.get(f"{llm_base}/requests", params={"has_tools": "true"})).json()
        both = (await h.get(f"{llm_base}/requests", params={"stream": "true", "has_tools": "false"})).json()
        bad = await h.get(f"{llm_base}/requests", params={"stream": "maybe"})
        unknown = await h.get(f"{llm_base}/requests", params={"streamed": "true"})
    assert [e["prompt"] for e in log] == ["pre", "the question", "title", "second part"]
    assert [e["system"] for e in log] == ["You are a router.", "Sys", None, None]
    assert [e["matched"] for e in log] == [None, 0, None, None]
    first = log[0]
    assert {
        "model",
        "messages",
        "stream",
        "tools",
        "tool_names",
        "last_role",
        "request_id",
        "outcome",
    } <= set(first)
    assert log[1]["tool_names"] == ["a", "b"] and log[1]["tools"] is True
    assert log[3]["request_id"] == "rid-7" and log[3]["messages"] == 3
    assert [e["prompt"] for e in streamed] == ["the question", "title"]
    assert [e["prompt"] for e in unstreamed] == ["pre", "second part"]
    assert [e["prompt"] for e in with_tools] == ["the question"]
    assert [e["prompt"] for e in both] == ["title"]
    assert bad.status_code == 400 and "stream" in bad.json()["detail"]
    assert unknown.status_code == 400 and "streamed" in unknown.json()["detail"]


async def test_llm_models_control(llm_base: str) -> None:
    client = oai(llm_base)
    async with httpx.AsyncClient() as h:
        r = await h.post(f"{llm_base}/control", json={"models": ["gpt-4o", "llama3:8b"]})
        assert r.status_code == 200 and r.json()["models"] == ["gpt-4o", "llama3:8b"]
        assert [m.id for m in (await client.models.list()).data] == ["gpt-4o", "llama3:8b"]
        for bad in ("gpt-4o", [""], [1], None):
            refused = await h.post(f"{llm_base}/control", json={"models": bad})
            assert refused.status_code == 400 and "models" in refused.json()["detail"], bad
        assert (await h.post(f"{llm_base}/control/reset")).json()["models"] == ["standin-gpt"]
    assert [m.id for m in (await client.models.list()).data] == ["standin-gpt"]


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        ("text", "script[0]"),
        ({"match": {}}, "script[0].reply"),
        ({"reply": {"txt": "hi"}}, "script[0].reply"),
        ({"reply": {"text": "a", "hang": True}}, "script[0].reply"),
        ({"reply": {"text": 3}}, "script[0].reply.text"),
        ({"reply": {"tool_call": {"arguments": {}}}}, "script[0].reply.tool_call.name"),
        ({"reply": {"tool_call": {"name": "t", "arguments": [1]}}}, "script[0].reply.tool_call.arguments"),
        ({"reply": {"error": {"status": 404}}}, "script[0].reply.error.status"),
        ({"reply": {"error": {"status": 500, "message": 5}}}, "script[0].reply.error.message"),
        ({"reply": {"hang": False}}, "script[0].reply.hang"),
        ({"reply": {"drop": 1}}, "script[0].reply.drop"),
        ({"reply": {"text": "a"}, "match": {"prompt": "x"}}, "script[0].match"),
        ({"reply": {"text": "a"}, "match": {"stream": "yes"}}, "script[0].match.stream"),
        ({"reply": {"text": "a"}, "match": {"has_tools": 1}}, "script[0].match.has_tools"),
        ({"reply": {"text": "a"}, "usage": {"prompt_tokens": -1}}, "script[0].usage.prompt_tokens"),
        ({"reply": {"text": "a"}, "usage": {"total_tokens": 3}}, "script[0].usage"),
        ({"reply": {"text": "a"}, "when": {}}, "script[0]"),
    ],
)
async def test_llm_bad_script_entry_is_400_naming_the_field(llm_base: str, entry: Any, field: str) -> None:
    async with httpx.AsyncClient() as h:
        r = await h.post(f"{llm_base}/script", json=[{"reply": {"text": "fine"}}, entry])
        left = (await h.get(f"{llm_base}/script")).json()
    assert r.status_code == 400
    assert r.json()["detail"].startswith(field.replace("[0]", "[1]") + " ")
    assert left == []  # nothing of a refused POST is queued


async def test_llm_script_clear_and_reset(llm_base: str) -> None:
    async with httpx.AsyncClient() as h:
        assert (await h.post(f"{llm_base}/script", content=b"{not json")).status_code == 400
        await h.post(f"{llm_base}/script", json=[{"reply": {"text": "a"}}, {"reply": {"text": "b"}}])
        assert (await h.delete(f"{llm_base}/script")).json() == {"deleted": 2}
        assert (await h.get(f"{llm_base}/script")).json() == []
        assert (await h.post(f"{llm_base}/script", json={"reply": {"text": "c"}})).json()["queued"] == [0]
        await h.post(f"{llm_base}/control/reset")
        assert (await h.get(f"{llm_base}/script")).json() == []
        assert answer_of(await complete(h, llm_base, "hi"))["content"] == "Stand-in reply to: hi"


async def test_llm_control_helpers_and_reply_builders(llm_base: str) -> None:
    from harness.controls import LLMControl, reply

    assert reply.text("hi", answering="Hello") == {
        "match": {"prompt_contains": "Hello"},
        "reply": {"text": "hi"},
    }
    assert reply.error(500, stream=True) == {"match": {"stream": True}, "reply": {"error": {"status": 500}}}
    assert reply.tool_call("search_web", {"q": "x"})["reply"] == {
        "tool_call": {"name": "search_web", "arguments": {"q": "x"}}
    }
    async with httpx.AsyncClient() as h:
        llm = LLMControl(h, f"{llm_base}/v1")
        indices = await llm.script(
            reply.text("hi", answering="Hello"),
            reply.error(500, stream=True),
            reply.tool_call("search_web", {"q": "x"}, has_tools=True),
            reply.hang(model="never"),
            reply.drop(answering="never"),
        )
        assert indices == [0, 1, 2, 3, 4]
        assert answer_of(await complete(h, llm_base, "Hello you"))["content"] == "hi"
        assert (await complete(h, llm_base, "Hello again", stream=True)).status_code == 500
        msg = answer_of(await complete(h, llm_base, "go", tools=named_tools("a", "search_web")))
        assert msg["tool_calls"][0]["function"]["arguments"] == '{"q": "x"}'
        assert [e["index"] for e in await llm.script_left()] == [3, 4]
        await llm.clear_script()
        assert await llm.script_left() == []
        await llm.set(fault_scope="stream", fail_next=1)
        assert (await complete(h, llm_base, "quiet")).status_code == 200
        assert [e["matched"] for e in await llm.requests()] == [0, 1, 2, None]
        assert [e["prompt"] for e in await llm.requests(stream=True)] == ["Hello again"]
        assert [e["prompt"] for e in await llm.requests(has_tools=True)] == ["go"]
        assert [e["prompt"] for e in await llm.requests(stream=False, has_tools=False)] == [
            "Hello you",
            "quiet",
        ]
        await llm.reset()
        assert (await h.get(f"{llm_base}/control")).json()["fault_scope"] == "any"
        with pytest.raises(AssertionError, match="refused the script"):
            await llm.script({"reply": {"error": {"status": 418}}})


# --------------------------------------------------------------------------- OIDC


@pytest.fixture(scope="module")
def oidc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    proc = Proc(
        "stack.externals.oidc",
        ["--port", str(port)],
        _env(TL_OIDC_CLIENT_ID=CLIENT_ID, TL_OIDC_CLIENT_SECRET=CLIENT_SECRET),
        tmp_path_factory.mktemp("oidc") / "oidc.log",
        f"http://127.0.0.1:{port}/health",
    )
    yield f"http://127.0.0.1:{port}"
    proc.stop()


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def auth_params(challenge: str, **over: str) -> dict[str, str]:
    params = {
        "response_type": "code",
        "client_id": CLIENT_ID,
        "redirect_uri": REDIRECT_URI,
        "scope": "openid email profile",
        "state": secrets.token_urlsafe(8),
        "nonce": secrets.token_urlsafe(8),
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    params.update(over)
    return params


async def consent(h: httpx.AsyncClient, base: str, params: dict[str, str], **form: str) -> httpx.Response:
    """GET the authorize page (checking what a browser would see), then POST the decision."""
    page = await h.get(f"{base}/authorize", params=params)
    assert page.status_code == 200, page.text
    body = page.text
    assert "<h1>Sign in to Acme ID</h1>" in body
    assert re.search(r"<button[^>]*>Allow</button>", body) and re.search(r"<button[^>]*>Deny</button>", body)
    assert 'role="radiogroup"' in body and '<label for="email">Email</label>' in body
    assert "Ada Lovelace (ada@acme.test)" in body and "Grace Hopper (grace@acme.test)" in body
    txn = re.search(r'name="txn" value="([^"]+)"', body).group(1)  # type: ignore[union-attr]
    checked = re.search(r'name="identity" value="([^"]+)" checked', body).group(1)  # type: ignore[union-attr]
    data = {"txn": txn, "identity": checked, "decision": "allow", **form}  # what a browser submits
    return await h.post(f"{base}/authorize/decision", data=data)


def query_of(resp: httpx.Response) -> dict[str, str]:
    assert resp.status_code == 302, resp.text
    loc = resp.headers["location"]
    assert loc.startswith(REDIRECT_URI.split("?")[0])
    return {k: v[0] for k, v in parse_qs(urlsplit(loc).query).items()}


async def token_request(
    h: httpx.AsyncClient, base: str, code: str, verifier: str, **over: str
) -> httpx.Response:
    data = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT_URI,
        "code_verifier": verifier,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
    }
    data.update(over)
    return await h.post(f"{base}/token", data=data)


async def test_oidc_full_code_flow_with_pkce(oidc: str) -> None:
    async with httpx.AsyncClient() as h:
        disco = (await h.get(f"{oidc}/.well-known/openid-configuration")).json()
        assert disco["issuer"] == oidc and disco["authorization_endpoint"] == f"{oidc}/authorize"
        assert disco["code_challenge_methods_supported"] == ["S256"]
        verifier, challenge = pkce_pair()
        params = auth_params(challenge)
        page = await h.get(disco["authorization_endpoint"], params=params)
        ada_sub = re.search(r'value="([^"]+)" checked> Ada Lovelace', page.text).group(1)  # type: ignore[union-attr]
        q = query_of(await consent(h, oidc, params, identity=ada_sub))
        assert q["state"] == params["state"] and q["code"]

        r = await token_request(h, disco["token_endpoint"].removesuffix("/token"), q["code"], verifier)
        assert r.status_code == 200, r.text
        assert r.headers["cache-control"] == "no-store"
        tok = r.json()
        assert tok["token_type"] == "Bearer" and tok["expires_in"] > 0

        jwks = (await h.get(disco["jwks_uri"])).json()
        header = jwt.get_unverified_header(tok["id_token"])
        key = next(k for k in jwks["keys"] if k["kid"] == header["kid"])
        claims = jwt.decode(
            tok["id_token"], jwt.PyJWK(key).key, algorithms=["RS256"], audience=CLIENT_ID, issuer=oidc
        )
        assert claims["sub"] == ada_sub == "acme|" + hashlib.sha256(b"ada@acme.test").hexdigest()[:16]
        assert claims["email"] == "ada@acme.test" and claims["email_verified"] is True
        assert claims["name"] == "Ada Lovelace" and claims["nonce"] == params["nonce"]
        assert claims["exp"] > claims["iat"]

        info = await h.get(
            disco["userinfo_endpoint"], headers={"Authorization": f"Bearer {tok['access_token']}"}
        )
        assert info.status_code == 200
        assert info.json() == {
            "sub": ada_sub,
            "email": "ada@acme.test",
            "email_verified": True,
            "name": "Ada Lovelace",
        }
        bad = await h.get(disco["userinfo_endpoint"], headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401 and "invalid_token" in bad.headers["www-authenticate"]


async def test_oidc_any_identity_via_email_with_basic_auth(oidc: str) -> None:
    async with httpx.AsyncClient() as h:
        verifier, challenge = pkce_pair()
        params = auth_params(challenge)
        q = query_of(await consent(h, oidc, params, email="New.User@example.test", name="New User"))
        r = await h.post(
            f"{oidc}/token",
            data={
                "grant_type": "authorization_code",
                "code": q["code"],
                "redirect_uri": REDIRECT_URI,
                "code_verifier": verifier,
            },
            auth=(CLIENT_ID, CLIENT_SECRET),
        )
        assert r.status_code == 200, r.text
        claims = jwt.decode(r.json()["id_token"], options={"verify_signature": False})
        assert claims["sub"] == "acme|" + hashlib.sha256(b"new.user@example.test").hexdigest()[:16]
        assert claims["email"] == "New.User@example.test" and claims["name"] == "New User"


async def test_oidc_with_authlib_client(oidc: str) -> None:
    from authlib.common.security import generate_token
    from authlib.integrations.httpx_client import AsyncOAuth2Client

    verifier = generate_token(48)
    async with AsyncOAuth2Client(
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        scope="openid email profile",
        redirect_uri=REDIRECT_URI,
        code_challenge_method="S256",
    ) as client:
        url, state = client.create_authorization_url(
            f"{oidc}/authorize", code_verifier=verifier, nonce="n-123"
        )
        async with httpx.AsyncClient() as browser:
            params = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
            resp = await consent(browser, oidc, params)
        location = resp.headers["location"]
        token = await client.fetch_token(
            f"{oidc}/token", authorization_response=location, code_verifier=verifier
        )
        assert token["access_token"] and token["id_token"]
        info = (await client.get(f"{oidc}/userinfo")).json()
        assert info["email"] == "ada@acme.test"
        assert jwt.decode(token["id_token"], options={"verify_signature": False})["nonce"] == "n-123"
        assert parse_qs(urlsplit(location).query)["state"] == [state]


async def test_oidc_wrong_verifier_is_invalid_grant(oidc: str) -> None:
    async with httpx.AsyncClient() as h:
        verifier, challenge = pkce_pair()
        q = query_of(await consent(h, oidc, auth_params(challenge)))
        r = await token_request(h, oidc, q["code"], verifier + "x")
        assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
        missing = await token_request(h, oidc, q["code"], "")
        assert missing.status_code == 400 and missing.json()["error"] == "invalid_grant"


async def test_oidc_reused_code_is_invalid_grant_and_revokes(oidc: str) -> None:
    async with httpx.AsyncClient() as h:
        verifier, challenge = pkce_pair()
        q = query_of(await consent(h, oidc, auth_params(challenge)))
        first = await token_request(h, oidc, q["code"], verifier)
        assert first.status_code == 200
        again = await token_request(h, oidc, q["code"], verifier)
        assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
        info = await h.get(
            f"{oidc}/userinfo", headers={"Authorization": f"Bearer {first.json()['access_token']}"}
        )
        assert info.status_code == 401


async def test_oidc_wrong_redirect_uri(oidc: str) -> None:
    async with httpx.AsyncClient() as h:
        verifier, challenge = pkce_pair()
        q = query_of(await consent(h, oidc, auth_params(challenge)))
        r = await token_request(h, oidc, q["code"], verifier, redirect_uri="http://127.0.0.1:9/elsewhere")
        assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
        # An unregistered redirect URI at /authorize is shown as an error, never redirected to.
        page = await h.get(
            f"{oidc}/authorize", params=auth_params(challenge, redirect_uri="https://evil.test/cb")
        )
        assert page.status_code == 400 and 'role="alert"' in page.text
        wrong_client = await token_request(h, oidc, "whatever", verifier, client_secret="nope")
        assert wrong_client.status_code == 401 and wrong_client.json()["error"] == "invalid_client"


async def test_oidc_deny(oidc: str) -> None:
    async with httpx.AsyncClient() as h:
        _, challenge = pkce_pair()
        params = auth_params(challenge)
        q = query_of(await consent(h, oidc, params, decision="deny"))
        assert q["error"] == "access_denied" and q["state"] == params["state"] and "code" not in q


async def test_oidc_missing_pkce_and_openid_are_redirected_errors(oidc: str) -> None:
    async with httpx.AsyncClient() as h:
        params = auth_params("x")
        del params["code_challenge"]
        r = await h.get(f"{oidc}/authorize", params=params)
        assert query_of(r)["error"] == "invalid_request"
        r = await h.get(f"{oidc}/authorize", params=auth_params("x", scope="email"))
        assert query_of(r)["error"] == "invalid_scope"


def _asgi_client(monkeypatch: pytest.MonkeyPatch, **env: str) -> httpx.AsyncClient:
    from stack.externals import oidc as oidc_mod

    for k in list(os.environ):
        if k.startswith("TL_OIDC_"):
            monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    app = oidc_mod.create_app()
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://oidc.test")


async def test_oidc_expired_code_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    async with _asgi_client(monkeypatch, TL_OIDC_CODE_TTL="0", TL_OIDC_CLIENT_SECRET=CLIENT_SECRET) as h:
        disco = (await h.get("/.well-known/openid-configuration")).json()
        assert disco["issuer"] == "http://oidc.test"  # no TL_OIDC_ISSUER: the URL it is served at
        verifier, challenge = pkce_pair()
        q = query_of(await consent(h, "http://oidc.test", auth_params(challenge)))
        r = await token_request(h, "http://oidc.test", q["code"], verifier)
        assert r.status_code == 400 and r.json() == {
            "error": "invalid_grant",
            "error_description": "authorization code expired",
        }


async def test_oidc_registered_redirect_uris_and_identities(monkeypatch: pytest.MonkeyPatch) -> None:
    registered = "http://127.0.0.1:9/auth/oauth/acme/callback"
    idents = json.dumps([{"sub": "u-1", "email": "zed@acme.test", "name": "Zed"}])
    env = {"TL_OIDC_REDIRECT_URIS": f"{registered}, http://app.test/cb", "TL_OIDC_IDENTITIES": idents}
    async with _asgi_client(monkeypatch, TL_OIDC_ISSUER="http://issuer.test", **env) as h:
        _, challenge = pkce_pair()
        assert (await h.get("/authorize", params=auth_params(challenge))).status_code == 200
        other = await h.get(
            "/authorize", params=auth_params(challenge, redirect_uri="http://127.0.0.1:9/other")
        )
        assert other.status_code == 400
        page = await h.get("/authorize", params=auth_params(challenge))
        assert 'value="u-1" checked> Zed (zed@acme.test)' in page.text
        assert (await h.get("/.well-known/openid-configuration")).json()["issuer"] == "http://issuer.test"


# --------------------------------------------------------------------------- SMTP


@pytest.fixture(scope="module")
def smtp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, str]]:
    port, http_port = free_port(), free_port()
    proc = Proc(
        "stack.externals.smtp_sink",
        ["--port", str(port), "--http-port", str(http_port)],
        _env(),
        tmp_path_factory.mktemp("smtp") / "smtp.log",
        f"http://127.0.0.1:{http_port}/health",
    )
    yield port, f"http://127.0.0.1:{http_port}"
    proc.stop()


def send_verification(port: int, to: str, link: str) -> None:
    msg = EmailMessage()
    msg["From"] = "Throughline <no-reply@throughline.test>"
    msg["To"] = to
    msg["Subject"] = "Verify your email"
    msg.set_content(f"Welcome!\n\nConfirm your address: {link}\n")
    msg.add_alternative(
        f'<p>Welcome!</p><p><a href="{link.replace("&", "&amp;")}">Verify email</a></p>', subtype="html"
    )
    with smtplib.SMTP("127.0.0.1", port, timeout=5) as s:
        s.send_message(msg)


def test_smtp_captures_message_with_link(smtp: tuple[int, str]) -> None:
    port, api = smtp
    httpx.delete(f"{api}/messages").raise_for_status()
    link = "http://127.0.0.1:8001/auth/verify?token=abc_DEF-123&x=1"
    send_verification(port, "Ada@Acme.test", link)
    send_verification(port, "grace@acme.test", "http://127.0.0.1:8001/auth/verify?token=other")
    msgs = httpx.get(f"{api}/messages", params={"to": "ada@acme.test"}).json()
    assert len(msgs) == 1
    m = msgs[0]
    assert m["subject"] == "Verify your email" and m["to"] == ["Ada@Acme.test"]
    assert m["from"] == "Throughline <no-reply@throughline.test>"
    assert link in m["text"] and "Verify email" in m["html"]
    assert m["links"] == [link]
    assert m["received_at"].endswith("Z")
    one = httpx.get(f"{api}/messages/{m['id']}")
    assert one.status_code == 200 and one.json()["id"] == m["id"]
    assert httpx.get(f"{api}/messages/999999").status_code == 404
    assert len(httpx.get(f"{api}/messages").json()) == 2
    assert httpx.delete(f"{api}/messages").json() == {"deleted": 2}
    assert httpx.get(f"{api}/messages").json() == []


async def test_smtp_long_poll_waits_for_the_message(smtp: tuple[int, str]) -> None:
    port, api = smtp
    async with httpx.AsyncClient(timeout=15) as h:
        waiting = asyncio.create_task(h.get(f"{api}/messages", params={"to": "late@acme.test", "wait": "10"}))
        await asyncio.to_thread(
            send_verification, port, "late@acme.test", "http://127.0.0.1:1/auth/verify?token=t1"
        )
        msgs = (await waiting).json()
        assert [m["links"] for m in msgs] == [["http://127.0.0.1:1/auth/verify?token=t1"]]
        empty = await h.get(f"{api}/messages", params={"to": "nobody@acme.test", "wait": "0.2"})
        assert empty.json() == []
