"""ClickHouse errors as the server renders them: code, text, HTTP status, and the in-stream block."""

from __future__ import annotations

import re

_CODE_RE = re.compile(r"Code:\s*(\d+)")
_NAME_RE = re.compile(r"\(([A-Z][A-Z0-9_]+)\)\s*(?:\(version [^)]*\))?\s*$")

# Error codes this server raises itself (names as in ClickHouse's src/Common/ErrorCodes.cpp).
CANNOT_READ_ALL_DATA = 33
BAD_ARGUMENTS = 36
NOT_IMPLEMENTED = 48
SYNTAX_ERROR = 62
UNKNOWN_FORMAT = 73
UNKNOWN_SETTING = 115
NETWORK_ERROR = 210
QUERY_WAS_CANCELLED = 394
SESSION_NOT_FOUND = 372
SESSION_IS_LOCKED = 373
INVALID_SESSION_TIMEOUT = 374
UNKNOWN_CODEC = 432
AUTHENTICATION_FAILED = 516

# exceptionCodeToHTTPStatus() of ClickHouse (src/Server/HTTP/exceptionCodeToHTTPStatus.cpp), by error
# name: the engine's messages end with the name, and the errors made here are given one.
_HTTP_STATUS_BY_NAME = {
    "REQUIRED_PASSWORD": 401,
    **dict.fromkeys(
        ("UNKNOWN_USER", "WRONG_PASSWORD", "AUTHENTICATION_FAILED", "SET_NON_GRANTED_ROLE", "ACCESS_DENIED"),
        403,
    ),
    **dict.fromkeys(
        (
            "BAD_ARGUMENTS",
            "CANNOT_COMPILE_REGEXP",
            "CANNOT_PARSE_TEXT",
            "CANNOT_PARSE_ESCAPE_SEQUENCE",
            "CANNOT_PARSE_QUOTED_STRING",
            "CANNOT_PARSE_DATE",
            "CANNOT_PARSE_DATETIME",
            "CANNOT_PARSE_NUMBER",
            "CANNOT_PARSE_DOMAIN_VALUE_FROM_STRING",
            "CANNOT_PARSE_IPV4",
            "CANNOT_PARSE_IPV6",
            "CANNOT_PARSE_INPUT_ASSERTION_FAILED",
            "CANNOT_PARSE_UUID",
            "DUPLICATE_COLUMN",
            "ILLEGAL_COLUMN",
            "UNKNOWN_ELEMENT_IN_AST",
            "UNKNOWN_TYPE_OF_AST_NODE",
            "THERE_IS_NO_COLUMN",
            "TOO_DEEP_AST",
            "TOO_BIG_AST",
            "UNEXPECTED_AST_STRUCTURE",
            "SYNTAX_ERROR",
            "INCORRECT_DATA",
            "TYPE_MISMATCH",
            "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE",
        ),
        400,
    ),
    **dict.fromkeys(
        (
            "UNKNOWN_TABLE",
            "UNKNOWN_FUNCTION",
            "UNKNOWN_IDENTIFIER",
            "UNKNOWN_TYPE",
            "UNKNOWN_STORAGE",
            "UNKNOWN_DATABASE",
            "UNKNOWN_SETTING",
            "UNKNOWN_DIRECTION_OF_SORTING",
            "UNKNOWN_AGGREGATE_FUNCTION",
            "UNKNOWN_FORMAT",
            "UNKNOWN_DATABASE_ENGINE",
            "UNKNOWN_TYPE_OF_QUERY",
            "UNKNOWN_ROLE",
        ),
        404,
    ),
    "QUERY_IS_TOO_LARGE": 413,
    "NOT_IMPLEMENTED": 501,
    "SOCKET_TIMEOUT": 503,
    "CANNOT_OPEN_FILE": 503,
    "HTTP_LENGTH_REQUIRED": 411,
    "TIMEOUT_EXCEEDED": 408,
    "CANNOT_SCHEDULE_TASK": 503,
    "UNSUPPORTED_MEDIA_TYPE": 415,
}


class ClickHouseError(Exception):
    """An error with a ClickHouse exception code, rendered like the server does."""

    def __init__(self, code: int, message: str, name: str = ""):
        super().__init__(message)
        self.code = code
        self.message = message
        self.name = name

    @classmethod
    def from_engine(cls, ex: BaseException) -> ClickHouseError:
        text = str(ex).strip()
        idx = text.find("Code: ")
        if idx > 0:
            text = text[idx:]
        match = _CODE_RE.search(text)
        code = int(match.group(1)) if match else 1001
        name_match = _NAME_RE.search(text)
        name = name_match.group(1) if name_match else ""
        if not text.startswith("Code: "):
            name = name or "STD_EXCEPTION"
            text = f"Code: {code}. DB::Exception: {text}. ({name})"
        return cls(code, text, name)

    @classmethod
    def make(cls, code: int, name: str, message: str) -> ClickHouseError:
        return cls(code, f"Code: {code}. DB::Exception: {message}. ({name})", name)

    @property
    def http_status(self) -> int:
        return _HTTP_STATUS_BY_NAME.get(self.name, 500)

    def text(self, version: str) -> str:
        """The message with the server's version trailer, as ClickHouse writes it."""
        return self.message if "(version " in self.message else f"{self.message} (version {version})"


def exception_block(message: str, tag: str) -> bytes:
    """An error after the response started, framed as ClickHouse 25.11+ frames it in the body.

    Wire format (WriteBufferFromHTTPServerResponse, also what clickhouse-connect's
    ``extract_exception_with_tag`` parses): ``\\r\\n__exception__\\r\\n<tag>\\r\\n<message>\\n<len>
    <tag>\\r\\n__exception__\\r\\n`` where ``<len>`` is the byte length of ``<message>\\n`` and
    ``<tag>`` is the random ``X-ClickHouse-Exception-Tag`` header of this response.
    """
    text = (message + "\n").encode()
    return (
        b"\r\n__exception__\r\n"
        + tag.encode()
        + b"\r\n"
        + text
        + str(len(text)).encode()
        + b" "
        + tag.encode()
        + b"\r\n__exception__\r\n"
    )
