"""Native output for the ``client_protocol_version`` a client asks for.

The engine writes Native as for protocol revision 0 (what ``clickhouse-local`` does): no BlockInfo,
and a top-level ``DateTime('tz')`` column typed as plain ``DateTime`` (NativeWriter drops the time
zone for revisions below 54337).  ClickHouse's HTTP interface writes Native for the revision in
``client_protocol_version``; clickhouse-connect asks for 54405 (LowCardinality) and uses it only if
the answer to its probe has the BlockInfo bytes, otherwise it silently falls back to revision 0.

:class:`NativeRewriter` turns the engine's revision-0 blocks into blocks of the asked revision:

* revision >= 51903: each block starts with BlockInfo (``is_overflows`` 0, ``bucket_num`` -1);
* revision >= 54337: top-level ``DateTime`` columns get back their time zone, taken from the
  query's result types (the caller supplies them, see ``Engine.result_types``);
* revision < 54405: LowCardinality is removed, by the engine (``low_cardinality_allow_in_native_format=0``).

Finding block and column boundaries needs each column's byte size, so the rewriter walks the
serialization of the common types (numbers, strings, dates, UUID/IP, Decimal, Enum, Nullable,
Array, Tuple, Map, Nested, LowCardinality, geo types).  For a type it cannot walk (Dynamic, Variant,
JSON, AggregateFunction states) it stops rewriting types in that block and relies on the engine
streaming one block per chunk, which chdb does; the BlockInfo is still right, a ``DateTime`` column
after such a column keeps the engine's name.  Revisions above :data:`MAX_REVISION` change the
serialization itself (custom serialization, versioned aggregate states) and are refused.
"""

from __future__ import annotations

import re

MIN_REVISION_WITH_BLOCK_INFO = 51903
MIN_REVISION_WITH_TIME_ZONE_PARAMETER_IN_DATETIME_DATA_TYPE = 54337
MIN_REVISION_WITH_LOW_CARDINALITY_TYPE = 54405
# The next serialization change is DBMS_MIN_REVISION_WITH_AGGREGATE_FUNCTIONS_VERSIONING (54452).
MAX_REVISION = 54451

BLOCK_INFO = b"\x01\x00\x02\xff\xff\xff\xff\x00"  # field 1 is_overflows=0, field 2 bucket_num=-1, end

_FIXED = {
    "UInt8": 1,
    "Int8": 1,
    "Bool": 1,
    "Enum8": 1,
    "Nothing": 1,
    "UInt16": 2,
    "Int16": 2,
    "Date": 2,
    "Enum16": 2,
    "BFloat16": 2,
    "UInt32": 4,
    "Int32": 4,
    "Float32": 4,
    "DateTime": 4,
    "Date32": 4,
    "IPv4": 4,
    "Time": 4,
    "UInt64": 8,
    "Int64": 8,
    "Float64": 8,
    "DateTime64": 8,
    "Time64": 8,
    "UInt128": 16,
    "Int128": 16,
    "UUID": 16,
    "IPv6": 16,
    "UInt256": 32,
    "Int256": 32,
    "Decimal32": 4,
    "Decimal64": 8,
    "Decimal128": 16,
    "Decimal256": 32,
}
_ALIASES = {
    "Point": "Tuple(Float64, Float64)",
    "Ring": "Array(Tuple(Float64, Float64))",
    "LineString": "Array(Tuple(Float64, Float64))",
    "Polygon": "Array(Array(Tuple(Float64, Float64)))",
    "MultiLineString": "Array(Array(Tuple(Float64, Float64)))",
    "MultiPolygon": "Array(Array(Array(Tuple(Float64, Float64))))",
}
_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$|^`[^`]*`$")


class Unsupported(Exception):
    """A type whose serialization this module does not walk."""


class _Type:
    __slots__ = ("name", "args")

    def __init__(self, name: str, args: list[str]):
        self.name = name
        self.args = args


def split_top_level(text: str) -> list[str]:
    """Split on commas outside parentheses and quotes (backslash escapes inside quotes); parts stripped."""
    parts: list[str] = []
    depth = 0
    quote = ""
    start = 0
    i = 0
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in "'`\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
        i += 1
    tail = text[start:].strip()
    if tail:
        parts.append(tail)
    return parts


def _parse(type_name: str) -> _Type:
    type_name = _ALIASES.get(type_name.strip(), type_name.strip())
    paren = type_name.find("(")
    if paren < 0:
        return _Type(type_name, [])
    if not type_name.endswith(")"):
        raise Unsupported(type_name)
    return _Type(type_name[:paren].strip(), split_top_level(type_name[paren + 1 : -1]))


def _element_type(arg: str) -> str:
    """A Tuple / Nested element: ``name Type`` or just ``Type``."""
    head, _, rest = arg.partition(" ")
    if rest and _IDENT_RE.match(head) and "(" not in head:
        return rest.strip()
    return arg


def _leb128(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7


def _u64(buf: bytes, pos: int) -> int:
    if pos + 8 > len(buf):
        raise IndexError(pos)
    return int.from_bytes(buf[pos : pos + 8], "little")


def _skip_prefix(t: _Type, buf: bytes, pos: int) -> int:
    """serializeBinaryBulkStatePrefix: only LowCardinality writes one (its key version), nested first."""
    name = t.name
    if name == "LowCardinality":
        return pos + 8
    if name in ("Nullable", "Array", "SimpleAggregateFunction"):
        return _skip_prefix(_parse(t.args[-1]), buf, pos)
    if name in ("Tuple", "Nested"):
        for arg in t.args:
            pos = _skip_prefix(_parse(_element_type(arg)), buf, pos)
        return pos
    if name == "Map":
        for arg in t.args:
            pos = _skip_prefix(_parse(arg), buf, pos)
        return pos
    return pos


def _skip_data(t: _Type, rows: int, buf: bytes, pos: int) -> int:
    name = t.name
    if rows == 0:
        return pos
    width = _FIXED.get(name)
    if width is not None:
        return pos + rows * width
    if name == "String":
        for _ in range(rows):
            size, pos = _leb128(buf, pos)
            pos += size
        return pos
    if name == "FixedString":
        return pos + rows * int(t.args[0])
    if name == "Decimal":
        precision = int(t.args[0])
        return pos + rows * (4 if precision <= 9 else 8 if precision <= 18 else 16 if precision <= 38 else 32)
    if name.startswith("Interval"):
        return pos + rows * 8
    if name == "Nullable":
        return _skip_data(_parse(t.args[0]), rows, buf, pos + rows)
    if name == "SimpleAggregateFunction":
        return _skip_data(_parse(t.args[-1]), rows, buf, pos)
    if name in ("Array", "Map", "Nested"):
        total = _u64(buf, pos + (rows - 1) * 8)
        pos += rows * 8
        if name == "Array":
            return _skip_data(_parse(t.args[0]), total, buf, pos)
        elements = t.args if name == "Map" else [_element_type(a) for a in t.args]
        for element in elements:
            pos = _skip_data(_parse(element), total, buf, pos)
        return pos
    if name == "Tuple":
        for arg in t.args:
            pos = _skip_data(_parse(_element_type(arg)), rows, buf, pos)
        return pos
    if name == "LowCardinality":
        inner = _parse(t.args[0])
        if inner.name == "Nullable":
            inner = _parse(inner.args[0])  # the dictionary holds the nested type; index 0 is NULL
        done = 0
        while done < rows:
            flags = _u64(buf, pos)
            pos += 8
            index_width = 1 << (flags & 0xFF)
            if flags & (1 << 8) and flags & (1 << 10):  # NeedGlobalDictionary + NeedUpdateDictionary
                keys = _u64(buf, pos)
                pos = _skip_data(inner, keys, buf, pos + 8)
            if flags & (1 << 9):  # HasAdditionalKeys
                keys = _u64(buf, pos)
                pos = _skip_data(inner, keys, buf, pos + 8)
            count = _u64(buf, pos)
            pos += 8 + count * index_width
            if count == 0:
                raise Unsupported("LowCardinality granule without rows")
            done += count
        return pos
    raise Unsupported(name)


class NativeRewriter:
    """Rewrites the engine's revision-0 Native chunks into the client's revision."""

    def __init__(self, revision: int, result_types: list[str] | None = None):
        self.revision = revision
        self.block_info = revision >= MIN_REVISION_WITH_BLOCK_INFO
        self.restore_tz = revision >= MIN_REVISION_WITH_TIME_ZONE_PARAMETER_IN_DATETIME_DATA_TYPE
        self.result_types = result_types

    @staticmethod
    def has_plain_datetime(chunk: bytes) -> bool:
        """Whether a top-level ``DateTime`` may have lost its time zone (so result types are needed)."""
        return b"\x08DateTime" in chunk

    def rewrite(self, chunk: bytes) -> bytes:
        if not chunk or (not self.block_info and not self.restore_tz):
            return chunk
        out = bytearray()
        pos = 0
        while pos < len(chunk):
            try:
                block, pos = self._block(chunk, pos)
            except (Unsupported, IndexError, ValueError):
                # Cannot find the end of this block: the engine sends one block per chunk.
                if self.block_info:
                    out += BLOCK_INFO
                out += chunk[pos:]
                return bytes(out)
            out += block
        return bytes(out)

    def _block(self, buf: bytes, start: int) -> tuple[bytes, int]:
        columns, pos = _leb128(buf, start)
        rows, pos = _leb128(buf, pos)
        out = bytearray(BLOCK_INFO if self.block_info else b"")
        out += buf[start:pos]
        for index in range(columns):
            name_len, p = _leb128(buf, pos)
            p += name_len
            type_len, p2 = _leb128(buf, p)
            type_name = buf[p2 : p2 + type_len].decode()
            data_start = p2 + type_len
            out += buf[pos:p]  # name
            real = type_name
            if (
                self.restore_tz
                and type_name == "DateTime"
                and self.result_types
                and index < len(self.result_types)
            ):
                candidate = self.result_types[index]
                if candidate.startswith("DateTime("):
                    real = candidate
            encoded = real.encode()
            out += _leb(len(encoded)) + encoded
            t = _parse(type_name)
            end = _skip_data(t, rows, buf, _skip_prefix(t, buf, data_start))
            if end > len(buf):
                raise IndexError(end)
            out += buf[data_start:end]
            pos = end
        return bytes(out), pos


def _leb(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)
