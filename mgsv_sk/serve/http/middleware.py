"""Pure ASGI middleware (none buffers a body): request metrics with labels from a closed
set, HEAD answered wherever GET is, requests with ambiguous framing or an oversized head
refused, and the request target's absolute and asterisk forms."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qsl

from ..errors import CLOSE, error_response, shown
from ..metrics import Metrics

__all__ = ["AmbiguousFraming", "HeadAsGet", "HeadLimits", "MetricsMiddleware", "RequestTarget"]

#: The longest request target (path and query) served, as common servers bound it (414).
MAX_TARGET_BYTES = 8 << 10
#: The most header fields and header bytes a request may carry (431): the parser's own
#: 16 KiB bound holds only while a head arrives in pieces; one sent in a single segment
#: was parsed whole (5,000 fields, 100 KB targets were served).
MAX_HEADER_FIELDS = 100
MAX_HEADER_BYTES = 16 << 10

#: The method label's values; any other token counts as "other".
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


class MetricsMiddleware:
    """Counts every answer by route template, method and status, and its latency. The
    labels come from closed sets: the app's route templates (else ``unmatched``) and
    :data:`METHODS` (else ``other``), so no client can create new series."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = [500]
        method = scope["method"] if scope["method"] in METHODS else "other"

        async def send_status(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        began = time.perf_counter()
        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.in_flight.dec()
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            if route.startswith("/static"):
                route = "/static"
            self.metrics.requests.labels(route, method, str(status[0])).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - began)


class HeadAsGet:
    """HEAD is answered as GET without the body (RFC 9110 9.3.2): same status and
    headers, ``Content-Length`` included, on every path that answers GET."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def headers_only(message: Any) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return  # the last (empty) part ends the answer
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        scope["method"] = "GET"  # in place: the router records the route in this scope
        await self.app(scope, receive, headers_only)


#: Fields the service reads one value of: given twice with different values, which one
#: counts would be a guess (the framework reads the first, a proxy may read the last).
SINGLE_VALUED = frozenset({b"content-type", b"content-encoding", b"range",
                           b"inference-header-content-length"})


class AmbiguousFraming:
    """A request with both ``Content-Length`` and ``Transfer-Encoding`` (or several
    ``Content-Length``) is answered 400 and its connection closed (RFC 9112 6.1, 6.3):
    whatever follows its body on the connection could be a smuggled request. So is one
    with several ``Host`` fields (RFC 9112 3.2), or with two different values of a field
    that describes the body or what is asked of it (:data:`SINGLE_VALUED`). A query
    parameter given twice with different values (``?k=5&k=6``) is a 400 too, the
    connection kept: the framework reads the last, a proxy or a cache may read the first."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            problem = self._ambiguity(scope["headers"])
            if problem:
                await error_response(400, problem, CLOSE)(scope, receive, send)
                return
            twice = self._twice_in_query(scope.get("query_string", b""))
            if twice:
                await error_response(
                    400, f"the query gives {shown(twice)} twice with different values; give "
                         "each parameter once")(scope, receive, send)
                return
        await self.app(scope, receive, send)

    @staticmethod
    def _twice_in_query(query: bytes) -> str | None:
        """The first query parameter given with two different values (the target is
        bounded by :class:`HeadLimits`, which runs first)."""
        seen: dict[str, str] = {}
        for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
            if seen.setdefault(name, value) != value:
                return name
        return None

    @staticmethod
    def _ambiguity(headers: Any) -> str | None:
        names = [name.lower() for name, _ in headers]
        lengths = names.count(b"content-length")
        if lengths > 1 or (lengths and b"transfer-encoding" in names):
            return ("the request has both Content-Length and Transfer-Encoding (or several "
                    "Content-Length); send one framing")
        if names.count(b"host") > 1:
            return "the request has several Host fields; send one"
        seen: dict[bytes, bytes] = {}
        for name, value in zip(names, (v for _, v in headers)):
            if name in SINGLE_VALUED and seen.setdefault(name, value) != value:
                return (f"the request gives {name.decode()} twice with different values; "
                        "send it once")
        return None


class HeadLimits:
    """A request target over :data:`MAX_TARGET_BYTES` is 414, headers over
    :data:`MAX_HEADER_FIELDS` fields or :data:`MAX_HEADER_BYTES` bytes 431 (RFC 6585 5),
    each closing the connection, however the request's bytes arrived."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            target = len(scope.get("raw_path") or scope["path"].encode()) + len(
                scope.get("query_string", b""))
            headers = scope["headers"]
            size = sum(len(name) + len(value) + 4 for name, value in headers)  # ": ", CRLF
            refusal = None
            if target > MAX_TARGET_BYTES:
                refusal = error_response(
                    414, f"the request target is {target} bytes; this server takes at most "
                         f"{MAX_TARGET_BYTES}: send long inputs in the body",
                    CLOSE)
            elif len(headers) > MAX_HEADER_FIELDS or size > MAX_HEADER_BYTES:
                refusal = error_response(
                    431, f"the request has {len(headers)} header fields of {size} bytes; this "
                         f"server takes at most {MAX_HEADER_FIELDS} fields and "
                         f"{MAX_HEADER_BYTES} bytes", CLOSE)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


class RequestTarget:
    """The request line's other forms. The absolute form (``GET
    http://host/v2/health/live``, RFC 9112 3.2), which a server must accept although
    clients send it only to proxies, is routed by its path and query; its authority is not
    used (no answer is built from a host name). ``OPTIONS *`` asks what the server allows:
    204 with ``Allow``. A version other than HTTP/1.0 or 1.1 (an HTTP/2 client's preface,
    a gRPC client sent to this port) is 505 (RFC 9110 15.6.6), its connection closed."""

    ALLOW = "GET, HEAD, POST"

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            version = scope.get("http_version", "1.1")
            if version not in ("1.0", "1.1"):
                response = error_response(
                    505, f"this port speaks HTTP/1.1, not HTTP/{version[:8]}; send HTTP/1.1 "
                         "(OIP gRPC clients: the server's --grpc-port)", CLOSE)
                await response(scope, receive, send)
                return
            path: str = scope["path"]
            if path == "*" and scope["method"] == "OPTIONS":
                await send({"type": "http.response.start", "status": 204,
                            "headers": [(b"allow", self.ALLOW.encode())]})
                await send({"type": "http.response.body", "body": b""})
                return
            scheme, sep, rest = path.partition("://")
            if sep and scheme.lower() in ("http", "https"):
                at = rest.find("/")
                scope["path"] = rest[at:] if at >= 0 else "/"
                raw = scope.get("raw_path")
                if raw and b"://" in raw:  # the undecoded target, where the server gives it
                    raw_at = raw.find(b"/", raw.find(b"://") + 3)
                    scope["raw_path"] = raw[raw_at:] if raw_at >= 0 else b"/"
        await self.app(scope, receive, send)
