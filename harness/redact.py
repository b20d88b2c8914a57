"""Secret redaction for everything the harness shows: frames, steps, report sections, log tails.

One function, `redact(text)`, used by the WebSocket recorder's repr and tables and by the
report on every text it attaches; `redact_value(obj)` does the same on parsed JSON.
"""

from __future__ import annotations

import re
from typing import Any

REDACTED = "«redacted»"

SECRET_KEYS = (
    "access_token",
    "refresh_token",
    "id_token",
    "password",
    "client_secret",
    "authorization",
)
_KEYS = "|".join(SECRET_KEYS)

# header.payload.signature, base64url; the signature may be empty (alg "none").
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
# Sec-WebSocket-Protocol carrying a token: "jwt.<token>".
_JWT_SUBPROTOCOL = re.compile(r"\bjwt\.(?!«)[A-Za-z0-9._~+/=-]+")
# "access_token": "value" (JSON) and 'access_token': 'value' (Python repr).
_JSON_KV = re.compile(rf'(?i)("(?:{_KEYS})"\s*:\s*)"(?:[^"\\]|\\.)*"')
_PY_KV = re.compile(rf"(?i)('(?:{_KEYS})'\s*:\s*)'(?:[^'\\]|\\.)*'")
# access_token=value in query strings, fragments and form bodies.
_QS_KV = re.compile(rf"(?i)\b((?:{_KEYS})=)(?!«)[^&\s#\"'<>]+")
# Authorization: Bearer xyz (HTTP header lines, log lines).
_AUTH_HEADER = re.compile(
    r"(?i)\b(authorization\s*:\s*(?:(?:bearer|basic)\s+)?)(?!«)(?!(?:bearer|basic)\s)[^\s,;\"'<>]+"
)
# A bearer token anywhere (e.g. in an exception message).
_BEARER = re.compile(r"(?i)\b(bearer\s+)(?!«)[A-Za-z0-9._~+/=-]{8,}")


def redact(text: str) -> str:
    """Return `text` with tokens, passwords and Authorization values replaced by «redacted»."""
    if not text:
        return text
    text = _JWT_SUBPROTOCOL.sub("jwt." + REDACTED, text)
    text = _JSON_KV.sub(lambda m: f'{m.group(1)}"{REDACTED}"', text)
    text = _PY_KV.sub(lambda m: f"{m.group(1)}'{REDACTED}'", text)
    text = _QS_KV.sub(lambda m: m.group(1) + REDACTED, text)
    text = _AUTH_HEADER.sub(lambda m: m.group(1) + REDACTED, text)
    text = _BEARER.sub(lambda m: m.group(1) + REDACTED, text)
    text = _JWT.sub(REDACTED, text)
    return text


def redact_value(value: Any) -> Any:
    """Redact a parsed JSON value: secret keys lose their values, strings are redacted."""
    if isinstance(value, dict):
        return {
            k: (REDACTED if isinstance(k, str) and k.lower() in SECRET_KEYS and v else redact_value(v))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(redact_value(v) for v in value)
    if isinstance(value, str):
        return redact(value)
    return value
