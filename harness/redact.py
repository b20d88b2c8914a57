"""Secret redaction for everything the harness shows: frames, steps, report sections, log tails.

One function, `redact(text)`, and `redact_value(obj)` for parsed JSON. They are applied once
where text leaves the run (`redact_outputs`): the terminal, the JUnit XML file, the HTML report
file and results.json; a channel written elsewhere (the job summary, notifications) calls them
on its own text. Covered: JWTs, refresh and access tokens, passwords, API keys, OAuth codes and
states, client secrets, Cookie / Set-Cookie and Authorization headers, under any key spelling
(refresh_token, refreshToken, Refresh-Token, api_key, apikey, X-Api-Key ...), and provider API keys
in free text under no key at all (OpenAI `sk-…`, `sk-proj-…`, Anthropic `sk-ant-…`).
"""

from __future__ import annotations

import html
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

REDACTED = "«redacted»"

# Key names, normalised (lower case, no "-", "_" or spaces), whose values are always secret.
SECRET_KEYS = frozenset(
    {
        "accesstoken",
        "refreshtoken",
        "idtoken",
        "access",
        "refresh",
        "token",
        "password",
        "passwd",
        "newpassword",
        "currentpassword",
        "clientsecret",
        "secret",
        "authorization",
        "apikey",
        "xapikey",
        "cookie",
        "setcookie",
        "sessiontoken",
    }
)
# OAuth `code` and `state`: secret when opaque; an error code such as "rate_limited" stays readable.
OPAQUE_KEYS = frozenset({"code", "state"})


def _sep(word: str) -> str:
    """A key name as it may be spelled: refresh_token, refreshToken, Refresh-Token, refresh token."""
    parts = re.findall(r"[a-z]+", word)
    return r"[-_ ]?".join(parts)


_SPELLED = [
    "x api key",
    "api key",
    "access token",
    "refresh token",
    "id token",
    "session token",
    "new password",
    "current password",
    "client secret",
    "set cookie",
    "access",
    "refresh",
    "token",
    "password",
    "passwd",
    "secret",
    "authorization",
    "cookie",
]
_KEYS = "|".join(_sep(w) for w in _SPELLED)
# Case-sensitive inside (?i) patterns: an all-lower snake_case word ("rate_limited") is readable.
_OPAQUE = r"(?-i:(?![a-z_]+\b))[A-Za-z0-9._~+/=-]{12,}"

# header.payload.signature, base64url; the signature may be empty (alg "none").
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
# Sec-WebSocket-Protocol carrying a token: "jwt.<token>".
_JWT_SUBPROTOCOL = re.compile(r"\bjwt\.(?!«)[A-Za-z0-9._~+/=-]+")
# "access_token": "value" (JSON) and 'access_token': 'value' (Python repr), any spelling.
_JSON_KV = re.compile(rf'(?i)("(?:{_KEYS})"\s*:\s*)"(?!«)(?:[^"\\]|\\.)+"')
_PY_KV = re.compile(rf"(?i)('(?:{_KEYS})'\s*:\s*)'(?!«)(?:[^'\\]|\\.)+'")
_JSON_OPAQUE = re.compile(rf'(?i)("(?:code|state)"\s*:\s*)"{_OPAQUE}"')
_PY_OPAQUE = re.compile(rf"(?i)('(?:code|state)'\s*:\s*)'{_OPAQUE}'")
# access_token=value in query strings, fragments and form bodies; code= and state= when opaque.
_QS_KV = re.compile(rf"(?i)(?<![A-Za-z0-9])((?:{_KEYS})=)(?!«)[^&\s#\"'<>;]+")
_QS_OPAQUE = re.compile(rf"(?i)([?&#](?:code|state)=){_OPAQUE}")
# Cookie / Set-Cookie header lines: the whole value.
_COOKIE_HEADER = re.compile(r"(?im)\b((?:set-)?cookie\s*:\s*+)(?!«)[^\r\n<\"']+")
# X-Api-Key: value, Api-Key: value.
_KEY_HEADER = re.compile(r"(?im)\b((?:x-)?api-?key\s*:\s*+)(?!«)[^\s,;\"'<>]+")
# password: hunter2, refresh_token = xyz (log lines, assertion messages).
_PLAIN_KV = re.compile(
    r"(?i)\b((?:password|passwd|client[-_ ]?secret|api[-_ ]?key|(?:refresh|access|id)[-_ ]?token)\s*[:=]\s*)"
    r"(?![\"'«])[^\s,;\"'<>&]+"
)
# Authorization: Bearer xyz (HTTP header lines, log lines).
_AUTH_HEADER = re.compile(
    r"(?i)\b(authorization\s*:\s*(?:(?:bearer|basic)\s+)?)(?!«)(?!(?:bearer|basic)\s)[^\s,;\"'<>]+"
)
# A bearer token anywhere (e.g. in an exception message).
_BEARER = re.compile(r"(?i)\b(bearer\s+)(?!«)[A-Za-z0-9._~+/=-]{8,}")
# A bare provider key in free text ("openai: 401 for sk-proj-…"): sk-, sk-proj-, sk-ant-api03-…
# all are "sk-" and 20+ key characters. Not inside a word: "task-…", "risk-…" stay, and so does
# "sk-learn" (too short).
_BARE_API_KEY = re.compile(r"(?<![A-Za-z0-9_-])sk-[A-Za-z0-9_-]{20,}")


def redact(text: str) -> str:
    """Return `text` with tokens, passwords, keys, cookies and OAuth codes replaced by «redacted»."""
    if not text:
        return text
    text = _JWT_SUBPROTOCOL.sub("jwt." + REDACTED, text)
    text = _JSON_KV.sub(lambda m: f'{m.group(1)}"{REDACTED}"', text)
    text = _PY_KV.sub(lambda m: f"{m.group(1)}'{REDACTED}'", text)
    text = _JSON_OPAQUE.sub(lambda m: f'{m.group(1)}"{REDACTED}"', text)
    text = _PY_OPAQUE.sub(lambda m: f"{m.group(1)}'{REDACTED}'", text)
    text = _COOKIE_HEADER.sub(lambda m: m.group(1) + REDACTED, text)
    text = _KEY_HEADER.sub(lambda m: m.group(1) + REDACTED, text)
    text = _QS_KV.sub(lambda m: m.group(1) + REDACTED, text)
    text = _PLAIN_KV.sub(lambda m: m.group(1) + REDACTED, text)
    text = _QS_OPAQUE.sub(lambda m: m.group(1) + REDACTED, text)
    text = _AUTH_HEADER.sub(lambda m: m.group(1) + REDACTED, text)
    text = _BEARER.sub(lambda m: m.group(1) + REDACTED, text)
    text = _JWT.sub(REDACTED, text)
    text = _BARE_API_KEY.sub(REDACTED, text)
    return text


def _norm(key: str) -> str:
    return re.sub(r"[^a-z0-9]", "", key.lower())


def _is_secret(key: object, value: object) -> bool:
    if not isinstance(key, str) or not value or value == REDACTED:
        return False
    name = _norm(key)
    if name in SECRET_KEYS:
        return True
    return name in OPAQUE_KEYS and isinstance(value, str) and re.fullmatch(_OPAQUE, value) is not None


def redact_value(value: Any) -> Any:
    """Redact a parsed JSON value: secret keys (any spelling) lose their values, strings are redacted."""
    if isinstance(value, dict):
        return {k: (REDACTED if _is_secret(k, v) else redact_value(v)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact_value(v) for v in value)
    if isinstance(value, str):
        return redact(value)
    return value


# -- the output files ---------------------------------------------------------------------
_JSONBLOB = re.compile(r'(data-jsonblob=")([^"]*)(")')


def _redact_html(document: str) -> str:
    """pytest-html keeps its results as escaped JSON in one attribute: redact it parsed, the rest as text."""

    def blob(m: re.Match[str]) -> str:
        try:
            data = json.loads(html.unescape(m.group(2)))
        except ValueError:
            return m.group(1) + html.escape(redact(html.unescape(m.group(2)))) + m.group(3)
        return m.group(1) + html.escape(json.dumps(redact_value(data))) + m.group(3)

    parts = _JSONBLOB.split(document)
    if len(parts) == 1:
        return redact(document)
    out: list[str] = []
    for i in range(0, len(parts), 4):
        out.append(redact(parts[i]))
        if i + 3 < len(parts):
            out.append(blob(_JSONBLOB.match("".join(parts[i + 1 : i + 4]))))  # type: ignore[arg-type]
    return "".join(out)


def _redact_xml(path: Path) -> None:
    tree = ET.parse(path)
    for element in tree.iter():
        if element.text:
            element.text = redact(element.text)
        if element.tail:
            element.tail = redact(element.tail)
        for name, value in element.attrib.items():
            element.attrib[name] = redact(value)
    tree.write(path, encoding="utf-8", xml_declaration=True)


def redact_file(path: Path) -> None:
    """Redact one output file in place: JUnit XML, an HTML report, JSON, or plain text."""
    if not path.is_file():
        return
    suffix = path.suffix.lower()
    if suffix == ".xml":
        _redact_xml(path)
        return
    text = path.read_text(encoding="utf-8", errors="replace")
    if suffix in (".html", ".htm"):
        cleaned = _redact_html(text)
    elif suffix == ".json":
        try:
            cleaned = json.dumps(redact_value(json.loads(text)), indent=1, default=str)
        except ValueError:
            cleaned = redact(text)
    else:
        cleaned = redact(text)
    if cleaned != text:
        path.write_text(cleaned, encoding="utf-8")
