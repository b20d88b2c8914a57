"""HMAC-SHA256 signing of internal service-to-service calls (docs/wiring.md, "Internal call").

The sender signs the exact raw body bytes it sends; the receiver verifies the raw
body bytes it received (read `await request.body()` before parsing JSON)::

    body = json.dumps(payload).encode()
    headers = {SIGNATURE_HEADER: sign_body(body, secret), "Content-Type": "application/json"}

    # receiver (FastAPI)
    raw = await request.body()
    if not verify_signature(raw, request.headers.get(SIGNATURE_HEADER), secret):
        raise HTTPException(401, "bad signature")
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["SIGNATURE_HEADER", "sign_body", "verify_signature"]

SIGNATURE_HEADER = "X-Throughline-Signature"
_PREFIX = "sha256="


def sign_body(body: bytes, secret: str) -> str:
    """The header value: `sha256=<hex HMAC-SHA256 of body keyed with secret>`."""
    return _PREFIX + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_signature(body: bytes, header: str | None, secret: str) -> bool:
    """True when `header` is the signature of `body` (constant-time compare); False for an empty secret."""
    if not secret or not header or not header.startswith(_PREFIX):
        return False
    return hmac.compare_digest(sign_body(body, secret), header.strip())
