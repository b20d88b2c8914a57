"""SMTP sink stand-in: captures every message sent to it, and shows them over an HTTP API.

Run: ``python -m stack.externals.smtp_sink --port P --http-port H`` — plain SMTP (no TLS, no
auth) on P and the HTTP API on H, both on one asyncio event loop. ``create_app(store)`` is the
HTTP part; ``start_smtp(store, host, port)`` the SMTP part.

HTTP API:

- ``GET /messages?to=<addr>&wait=<s>`` -> JSON list, oldest first, of
  ``{id, from, to: [envelope recipients], subject, text, html, received_at, links, ...}``;
  ``to`` filters case-insensitively on envelope recipients and To/Cc headers; ``wait`` (max 30 s)
  long-polls until at least one matching message exists (returns ``[]`` at the deadline).
- ``GET /messages/{id}`` (404 when unknown); ``DELETE /messages[?to=<addr>]``; ``GET /health``.

This is a third party's stand-in: it imports nothing from the rest of the stack.
"""

from __future__ import annotations

import argparse
import asyncio
import email
import email.policy
import html
import re
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import getaddresses

from aiosmtpd.smtp import SMTP, Envelope, Session
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from stack.externals._common import AccessLog, log_line

SERVICE = "smtp_sink"
MAX_WAIT_SECONDS = 30.0
MAX_MESSAGES = 5000

_URL_RE = re.compile(r"""https?://[^\s"'<>()\[\]{}]+""", re.IGNORECASE)
_HREF_RE = re.compile(r"""href\s*=\s*(?:"([^"]*)"|'([^']*)')""", re.IGNORECASE)


def _log_line(line: str) -> None:
    log_line(SERVICE, line)


# --------------------------------------------------------------------------- parsing


def extract_links(text: str, html_body: str) -> list[str]:
    """http(s) URLs of the text part and of the HTML part (hrefs and bare URLs), deduplicated in order."""
    found: list[str] = []
    for url in _URL_RE.findall(text or ""):
        found.append(url)
    if html_body:
        for dq, sq in _HREF_RE.findall(html_body):
            found.append(html.unescape(dq or sq))
        for url in _URL_RE.findall(html_body):
            found.append(html.unescape(url))
    out: list[str] = []
    for url in found:
        url = url.strip().rstrip(".,;:!?")
        if url.lower().startswith(("http://", "https://")) and url not in out:
            out.append(url)
    return out


def parse_message(raw: bytes, mail_from: str, rcpt_tos: list[str], msg_id: int) -> dict:
    msg: EmailMessage = email.message_from_bytes(raw, policy=email.policy.default)  # type: ignore[assignment]
    text = html_body = ""
    for part in msg.walk() if msg.is_multipart() else [msg]:
        if part.is_multipart() or part.get_content_disposition() == "attachment":
            continue
        ctype = part.get_content_type()
        try:
            content = part.get_content()
        except (LookupError, ValueError):
            payload = part.get_payload(decode=True) or b""
            content = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else str(payload)
        if ctype == "text/plain" and not text:
            text = content
        elif ctype == "text/html" and not html_body:
            html_body = content
    header_rcpts = [
        a for _, a in getaddresses([str(v) for h in ("to", "cc") for v in msg.get_all(h, [])]) if a
    ]
    return {
        "id": msg_id,
        "from": str(msg.get("from", "")) or mail_from,
        "to": list(rcpt_tos),
        "subject": str(msg.get("subject", "")),
        "text": text,
        "html": html_body,
        "received_at": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "links": extract_links(text, html_body),
        "mail_from": mail_from,
        "header_to": header_rcpts,
        "message_id": str(msg.get("message-id", "")),
        "headers": {k: str(v) for k, v in msg.items()},
        "size": len(raw),
    }


# --------------------------------------------------------------------------- store


class MessageStore:
    def __init__(self) -> None:
        self.messages: list[dict] = []
        self._next_id = 1
        self._changed = asyncio.Event()

    def add(self, raw: bytes, mail_from: str, rcpt_tos: list[str]) -> dict:
        msg = parse_message(raw, mail_from, rcpt_tos, self._next_id)
        self._next_id += 1
        self.messages.append(msg)
        del self.messages[:-MAX_MESSAGES]
        # Wake every long-poller, then arm a fresh event for the next message.
        self._changed.set()
        self._changed = asyncio.Event()
        return msg

    @staticmethod
    def _matches(msg: dict, to: str | None) -> bool:
        if not to:
            return True
        want = to.strip().lower()
        return any(a.lower() == want for a in [*msg["to"], *msg["header_to"]])

    def find(self, to: str | None = None) -> list[dict]:
        return [m for m in self.messages if self._matches(m, to)]

    async def wait_for(self, to: str | None, seconds: float) -> list[dict]:
        """Matching messages, waiting up to ``seconds`` for at least one to arrive."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while True:
            found = self.find(to)
            remaining = deadline - loop.time()
            if found or remaining <= 0:
                return found
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                return self.find(to)

    def get(self, msg_id: int) -> dict | None:
        return next((m for m in self.messages if m["id"] == msg_id), None)

    def delete(self, to: str | None = None) -> int:
        before = len(self.messages)
        self.messages = [m for m in self.messages if not (self._matches(m, to))]
        return before - len(self.messages)


class SinkHandler:
    """aiosmtpd handler: accepts every recipient, stores every message."""

    def __init__(self, store: MessageStore) -> None:
        self.store = store

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content or b""
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        msg = self.store.add(raw, str(envelope.mail_from or ""), [str(r) for r in envelope.rcpt_tos])
        _log_line(
            f"SMTP message id={msg['id']} from={msg['mail_from']} to={','.join(msg['to'])} "
            f"subject={msg['subject']!r} links={len(msg['links'])}"
        )
        return "250 Message accepted for delivery"


async def start_smtp(store: MessageStore, host: str, port: int) -> asyncio.Server:
    """Serve plain SMTP on host:port in the running loop; returns the asyncio server."""
    loop = asyncio.get_running_loop()
    handler = SinkHandler(store)

    def factory() -> SMTP:
        # An explicit hostname: aiosmtpd would otherwise call socket.getfqdn(), slow without DNS.
        return SMTP(
            handler,
            hostname="smtp-sink.throughline.test",
            ident="Throughline SMTP sink",
            enable_SMTPUTF8=True,
        )

    return await loop.create_server(factory, host=host, port=port)


# --------------------------------------------------------------------------- HTTP


def create_app(store: MessageStore | None = None, smtp_port: int | None = None) -> FastAPI:
    store = store or MessageStore()
    app = FastAPI(title="SMTP sink stand-in", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.store = store
    app.add_middleware(AccessLog, service=SERVICE)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "service": SERVICE, "smtp_port": smtp_port, "messages": len(store.messages)}

    @app.get("/messages")
    async def list_messages(request: Request) -> Response:
        to = request.query_params.get("to")
        raw_wait = request.query_params.get("wait", "0")
        try:
            wait = min(max(float(raw_wait), 0.0), MAX_WAIT_SECONDS)
        except ValueError:
            return JSONResponse({"detail": "wait must be a number of seconds"}, status_code=422)
        found = await store.wait_for(to, wait) if wait else store.find(to)
        return JSONResponse(found)

    @app.get("/messages/{msg_id}")
    async def get_message(msg_id: int) -> Response:
        msg = store.get(msg_id)
        if msg is None:
            return JSONResponse({"detail": f"no message {msg_id}"}, status_code=404)
        return JSONResponse(msg)

    @app.delete("/messages")
    async def delete_messages(request: Request) -> dict:
        return {"deleted": store.delete(request.query_params.get("to"))}

    return app


async def serve(host: str, port: int, http_port: int) -> None:
    import uvicorn

    store = MessageStore()
    smtp_server = await start_smtp(store, host, port)
    _log_line(f"SMTP listening on {host}:{port}; HTTP API on http://{host}:{http_port}")
    config = uvicorn.Config(
        create_app(store, smtp_port=port), host=host, port=http_port, log_level="warning", access_log=False
    )
    try:
        await uvicorn.Server(config).serve()
    finally:
        smtp_server.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m stack.externals.smtp_sink", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True, help="SMTP port")
    parser.add_argument("--http-port", type=int, required=True, help="HTTP API port")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.host, args.port, args.http_port))


if __name__ == "__main__":
    main()
