"""HTTP Content-Encoding both ways: request bodies in, whole or streamed responses out."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable
from typing import Any

from harness.services.clickhouse_http.errors import NOT_IMPLEMENTED, UNKNOWN_CODEC, ClickHouseError

try:  # optional codecs; clickhouse-connect itself depends on lz4 and zstd
    import lz4.frame as _lz4_frame
except ImportError:  # pragma: no cover
    _lz4_frame = None  # type: ignore[assignment]

try:  # pragma: no cover - whichever zstd binding is present
    from compression import zstd as _zstd  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover
    try:
        from backports import zstd as _zstd  # type: ignore[no-redef]
    except ImportError:
        _zstd = None

try:  # pragma: no cover
    import zstandard as _zstandard
except ImportError:  # pragma: no cover
    _zstandard = None  # type: ignore[assignment]


def _lz4_decompress(data: bytes) -> bytes:
    if _lz4_frame is None:
        raise ClickHouseError.make(NOT_IMPLEMENTED, "NOT_IMPLEMENTED", "lz4 is not available on this server")
    out = []
    while data:
        dec = _lz4_frame.LZ4FrameDecompressor()
        out.append(dec.decompress(data))
        if not dec.eof:
            raise ClickHouseError.make(UNKNOWN_CODEC, "UNKNOWN_CODEC", "Truncated lz4 frame in request body")
        data = dec.unused_data
    return b"".join(out)


def _zstd_decompress(data: bytes) -> bytes:
    if _zstd is not None:
        return bytes(_zstd.decompress(data))
    if _zstandard is not None:
        reader = _zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=True)
        return bytes(reader.read())
    raise ClickHouseError.make(NOT_IMPLEMENTED, "NOT_IMPLEMENTED", "zstd is not available on this server")


def decompress_body(data: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    if not encoding or encoding == "identity" or not data:
        return data
    try:
        if encoding == "lz4":
            return _lz4_decompress(data)
        if encoding == "zstd":
            return _zstd_decompress(data)
        if encoding in ("gzip", "x-gzip"):
            return gzip.decompress(data)
        if encoding == "deflate":
            return zlib.decompress(data)
    except ClickHouseError:
        raise
    except Exception as ex:
        raise ClickHouseError.make(
            UNKNOWN_CODEC,
            "UNKNOWN_CODEC",
            f"Cannot decompress request body with Content-Encoding {encoding}: {ex}",
        ) from ex
    raise ClickHouseError.make(UNKNOWN_CODEC, "UNKNOWN_CODEC", f"Unsupported Content-Encoding: {encoding}")


class StreamCompressor:
    """Compresses a response one piece at a time; every piece is flushed so the client can decode it now."""

    def __init__(self, encoding: str):
        self.encoding = encoding
        self._compress: Callable[[bytes], bytes]
        self._finish: Callable[[], bytes]
        if encoding == "lz4":
            assert _lz4_frame is not None
            lz4c: Any = _lz4_frame.LZ4FrameCompressor(auto_flush=True)
            started = [False]

            def lz4_compress(data: bytes) -> bytes:
                head = b""
                if not started[0]:
                    started[0] = True
                    head = lz4c.begin()
                return bytes(head + lz4c.compress(data))

            def lz4_finish() -> bytes:
                head = b"" if started[0] else lz4c.begin()
                return bytes(head + lz4c.flush())

            self._compress, self._finish = lz4_compress, lz4_finish
        elif encoding == "zstd":
            if _zstd is not None:
                zc: Any = _zstd.ZstdCompressor()
                self._compress = lambda d: bytes(zc.compress(d) + zc.flush(zc.FLUSH_BLOCK))
                self._finish = lambda: bytes(zc.flush(zc.FLUSH_FRAME))
            else:
                zs: Any = _zstandard.ZstdCompressor().compressobj()
                self._compress = lambda d: bytes(
                    zs.compress(d) + zs.flush(_zstandard.COMPRESSOBJ_FLUSH_BLOCK)
                )
                self._finish = lambda: bytes(zs.flush())
        else:
            wbits = 31 if encoding == "gzip" else 15
            zo = zlib.compressobj(wbits=wbits)
            self._compress = lambda d: zo.compress(d) + zo.flush(zlib.Z_SYNC_FLUSH)
            self._finish = zo.flush

    def compress(self, data: bytes) -> bytes:
        return self._compress(data)

    def finish(self) -> bytes:
        return self._finish()


def _available() -> list[str]:
    names = []
    if _lz4_frame is not None:
        names.append("lz4")
    if _zstd is not None or _zstandard is not None:
        names.append("zstd")
    return [*names, "gzip", "deflate"]


RESPONSE_ENCODINGS = _available()


def choose_encoding(accept: str) -> str | None:
    for item in accept.split(","):
        name = item.split(";")[0].strip().lower()
        if name in RESPONSE_ENCODINGS:
            return name
    return None


def compress_whole(data: bytes, encoding: str) -> bytes:
    stream = StreamCompressor(encoding)
    return stream.compress(data) + stream.finish()
