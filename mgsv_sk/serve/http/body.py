"""Reading a request's body: a stage of its own, before any inference slot is taken.

A body is read under three bounds: its size (413 once it passes the cap, whether
``Content-Length`` declared it or it came chunked), the time between two chunks, and the
time for the whole body (408 past either, and the connection is closed). A client that
sends a few bytes and stops therefore holds a connection for a bounded time and never an
inference slot: the slot is taken only once the body is in (see :mod:`.routes`).
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from starlette.requests import Request

from ..errors import CLOSE, ApiError

__all__ = ["BodyLimits", "body_chunks", "bounded_int", "declared_length", "decode_content",
           "disconnected", "read_body"]

#: More digits than any size or offset this server handles (2**63 has 19).
_MAX_DIGITS = 18


@dataclass(frozen=True)
class BodyLimits:
    """``max_bytes`` of body, at most ``idle_s`` between two chunks and ``total_s`` for
    all of it."""

    max_bytes: int
    idle_s: float
    total_s: float


def bounded_int(text: str | None, what: str) -> int | None:
    """A non-negative decimal integer of at most 18 digits (leading zeros aside), None
    when ``text`` is None.

    Raises
    ------
    ApiError
        400 naming ``what``: not digits, or too many (never Python's unbounded ``int``).
    """
    if text is None:
        return None
    text = text.strip()  # leading zeros are digits of no weight (RFC 9110's 1*DIGIT)
    if not text.isascii() or not text.isdigit() or len(text.lstrip("0")) > _MAX_DIGITS:
        raise ApiError(400, f"{what} must be a non-negative integer of at most "
                            f"{_MAX_DIGITS} digits, got {text[:40]!r}", CLOSE)
    return int(text)


def declared_length(request: Request, limit: int, too_large: str) -> int | None:
    """The request's ``Content-Length`` (None when chunked), or 413 with ``too_large``
    when it already says the body is over ``limit``."""
    declared = bounded_int(request.headers.get("content-length"), "Content-Length")
    if declared is not None and declared > limit:
        raise ApiError(413, too_large, CLOSE)
    return declared


async def body_chunks(request: Request, limits: BodyLimits,
                      too_large: str) -> AsyncIterator[bytes]:
    """The body's chunks as they arrive, under ``limits`` (413 with ``too_large``, 408
    when too slow, 400 when the client leaves)."""
    declared_length(request, limits.max_bytes, too_large)
    deadline = time.monotonic() + limits.total_s
    seen = 0
    while True:
        left = deadline - time.monotonic()
        try:
            message = await asyncio.wait_for(request.receive(), min(limits.idle_s, left))
        except asyncio.TimeoutError:
            raise ApiError(408, f"the request body did not arrive in time (at most "
                                f"{limits.idle_s:g} s between two chunks and "
                                f"{limits.total_s:g} s for the whole body); send it "
                                "without pausing", CLOSE) from None
        if message["type"] == "http.disconnect":
            raise ApiError(400, "the client closed the connection before the body ended")
        chunk = message.get("body", b"")
        seen += len(chunk)
        if seen > limits.max_bytes:
            raise ApiError(413, too_large, CLOSE)
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


async def read_body(request: Request, limits: BodyLimits, too_large: str,
                    hold: Callable[[int], None] | None = None) -> bytes:
    """The whole body as bytes, under ``limits``, decompressed when ``Content-Encoding``
    is gzip or deflate (the result under the same cap); ``hold(n)`` is told of each
    chunk's bytes as it arrives (a budget of bodies in memory, which may refuse it)."""
    parts = []
    async for chunk in body_chunks(request, limits, too_large):
        if hold is not None:
            hold(len(chunk))
        parts.append(chunk)
    return decode_content(b"".join(parts), request.headers.get("content-encoding"),
                          limits.max_bytes, too_large)


async def disconnected(request: Request) -> None:
    """Returns when the client closes its connection; call it once the whole body is
    read (the next message the server has for the request is then its end)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


#: Most gzip members one body may hold (each costs a decompressor on the event loop).
MAX_GZIP_MEMBERS = 64
_GZIP_MAGIC = b"\x1f\x8b"


def decode_content(body: bytes, encoding: str | None, limit: int, too_large: str) -> bytes:
    """``body`` as sent under ``Content-Encoding`` ``encoding`` (identity, gzip, deflate),
    at most ``limit`` bytes once decompressed (a small bomb is refused with 413). gzip may
    come as several members, read one after the other (RFC 1952; streaming compressors
    write them), up to :data:`MAX_GZIP_MEMBERS`; bytes after the data are a 400, not
    ignored."""
    kind = (encoding or "identity").strip().lower()
    if kind == "identity":
        return body
    if kind not in ("gzip", "deflate"):
        raise ApiError(415, f"Content-Encoding {kind!r} is not supported; send the body "
                            "uncompressed, gzip or deflate")
    out, rest = bytearray(), body
    for _ in range(MAX_GZIP_MEMBERS):
        inflater = zlib.decompressobj(wbits=31 if kind == "gzip" else 15)
        try:
            out += inflater.decompress(rest, limit + 1 - len(out))
        except zlib.error as exc:
            raise ApiError(400, f"the body is not valid {kind} data ({exc})") from exc
        if len(out) > limit:
            raise ApiError(413, too_large)
        if not inflater.eof:
            raise ApiError(400, f"the {kind} body is truncated")
        rest = inflater.unused_data
        if not rest:
            return bytes(out)
        if kind != "gzip" or not rest.startswith(_GZIP_MAGIC):
            raise ApiError(400, f"{len(rest)} bytes follow the end of the {kind} data; send "
                                "the compressed body alone")
    raise ApiError(400, f"the gzip body has more than {MAX_GZIP_MEMBERS} members; compress "
                        "it as one")
