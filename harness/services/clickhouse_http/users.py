"""Users and passwords, checked the way the ClickHouse HTTP interface takes credentials.

Credentials come, in ClickHouse's order of precedence, from the ``X-ClickHouse-User`` /
``X-ClickHouse-Key`` headers, HTTP Basic authentication, or the ``user`` / ``password`` URL
parameters; no user means ``default``, no password means the empty one.  A wrong password or an
unknown user is refused with code 516 (AUTHENTICATION_FAILED, HTTP 403) and the same text
ClickHouse uses, which does not say which of the two was wrong.

Configured with ``--user NAME:PASSWORD`` (repeatable) and/or ``--users FILE`` (one ``name:password``
a line, ``#`` comments; or a JSON object ``{"name": "password"}``).  With neither, the only user is
``default`` with an empty password, which is what ClickHouse ships with and what the harness uses.
Users have no grants here: every user may do everything (ClickHouse's access control is not
emulated).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from harness.services.clickhouse_http.errors import AUTHENTICATION_FAILED, ClickHouseError


class Users:
    """Name -> password."""

    def __init__(self, passwords: Mapping[str, str] | None = None):
        self.passwords = dict(passwords) if passwords is not None else {"default": ""}

    @classmethod
    def from_options(cls, user_options: Iterable[str], users_file: str | None) -> Users:
        passwords: dict[str, str] = {}
        if users_file:
            text = Path(users_file).read_text()
            if text.lstrip().startswith("{"):
                loaded = json.loads(text)
                if not isinstance(loaded, dict):
                    raise ValueError(f"{users_file}: expected a JSON object of name -> password")
                passwords.update({str(k): str(v) for k, v in loaded.items()})
            else:
                for number, line in enumerate(text.splitlines(), 1):
                    line = line.strip()
                    if not line or line.startswith("#"):
                        continue
                    if ":" not in line:
                        raise ValueError(f"{users_file}:{number}: expected name:password")
                    name, password = line.split(":", 1)
                    passwords[name.strip()] = password
        for option in user_options:
            if ":" not in option:
                raise ValueError(f"--user {option!r}: expected NAME:PASSWORD")
            name, password = option.split(":", 1)
            passwords[name] = password
        return cls(passwords or None)

    def authenticate(self, headers: Any, params: Mapping[str, str]) -> str:
        """The user name these credentials prove, or AUTHENTICATION_FAILED (headers: anything with .get)."""
        user = headers.get("X-ClickHouse-User")
        password = headers.get("X-ClickHouse-Key")
        if user is None and password is None:
            auth = headers.get("Authorization") or ""
            if auth[:6].lower() == "basic ":
                try:
                    user, _, password = base64.b64decode(auth[6:].strip()).decode().partition(":")
                except (binascii.Error, UnicodeDecodeError):
                    user, password = "", None
        if user is None and password is None:
            user, password = params.get("user"), params.get("password")
        user = user or "default"
        password = password or ""
        expected = self.passwords.get(user)
        if expected is None or not hmac.compare_digest(expected.encode(), password.encode()):
            raise ClickHouseError.make(
                AUTHENTICATION_FAILED,
                "AUTHENTICATION_FAILED",
                f"{user}: Authentication failed: password is incorrect, or there is no user with such name",
            )
        return user
