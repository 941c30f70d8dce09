"""Every error the service answers is JSON ``{"error": message}`` with a 4xx or 503 status;
a bug is a JSON 500 without a traceback (logged on the server)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

__all__ = ["CLOSE", "MAX_MESSAGE_CHARS", "ApiError", "error_response", "install_error_handlers",
           "shown", "validation_message"]

logger = logging.getLogger("mgsv_sk.serve")
#: Closes the connection after an answer whose request body was not read to its end.
CLOSE = {"Connection": "close"}
#: The most of a client's own text (a name, an id, a version) an error message repeats.
SHOWN_CHARS = 64
#: The longest error message answered: a client's input never makes an answer large (and
#: gRPC clients drop a status whose message passes their 16 KiB metadata limit).
MAX_MESSAGE_CHARS = 2000


def shown(value: Any) -> str:
    """``value`` quoted for an error message (its ``repr``), cut to :data:`SHOWN_CHARS`
    characters with its length given when longer."""
    text = repr(value)
    if len(text) <= SHOWN_CHARS:
        return text
    size = len(value) if isinstance(value, (str, bytes, list, tuple)) else len(text)
    return f"{text[:SHOWN_CHARS]}... ({size} long)"


class ApiError(Exception):
    """An answer to a request that cannot be served: ``status`` and a message naming the
    problem and the fix; ``headers`` (e.g. ``Retry-After``) go with it."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        if len(message) > MAX_MESSAGE_CHARS:
            message = message[: MAX_MESSAGE_CHARS - 4] + " ..."
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def error_response(status: int, message: str,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _location(loc: Any, prefix: tuple[str, ...]) -> str:
    parts = [*prefix, *(str(p)[:SHOWN_CHARS] for p in loc if p != "body")] if isinstance(
        loc, (list, tuple)) else list(prefix)
    return ".".join(parts) or "request"


def validation_message(errors: Any, prefix: tuple[str, ...] = (),
                       see: str = "see /openapi.json for the schema") -> str:
    """pydantic's errors as one message: ``where: what`` for the first five, then ``see``."""
    problems = [f"{_location(item.get('loc'), prefix)}: {item.get('msg', 'invalid')}"
                for item in errors[:5]]
    more = len(errors) - len(problems)
    return ("invalid request: " + "; ".join(problems) + (f" (and {more} more)" if more > 0
                                                          else "")
            + "; " + see)


#: Triton's HTTP extensions this server does not implement, by their path under /v2, and
#: what to do instead (a client calling one gets 501 saying so, not a bare 404).
_TRITON_EXTENSIONS = {
    "systemsharedmemory": ("system shared memory", "send the tensors in the request body "
                           "(JSON, or the binary tensor extension)"),
    "cudasharedmemory": ("CUDA shared memory", "send the tensors in the request body "
                         "(JSON, or the binary tensor extension)"),
    "repository": ("model repository", "the server serves one model, loaded at start-up"),
    "trace": ("trace", "see /metrics and the stage times in each answer"),
    "logging": ("logging", "start the server with -v (requests logged) or -q"),
}


def _unsupported_extension(path: str) -> str | None:
    parts = path.strip("/").split("/")
    if len(parts) >= 2 and parts[0] == "v2":
        name = parts[1] if parts[1] != "models" else parts[3] if len(parts) > 3 else ""
        if name in _TRITON_EXTENSIONS:
            what, instead = _TRITON_EXTENSIONS[name]
            return f"this server does not implement Triton's {what} extension; {instead}"
    return None


def install_error_handlers(app: FastAPI) -> None:
    """JSON errors for our ApiError, FastAPI's validation (422), Starlette's HTTP errors
    (404 unknown path, 405 wrong method...) and anything unexpected (500, logged)."""

    async def api_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return error_response(exc.status, exc.message, exc.headers)

    async def validation(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(422, validation_message(exc.errors()))

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        headers = dict(exc.headers or {})
        unsupported = _unsupported_extension(request.url.path)
        if exc.status_code in (404, 405) and unsupported:
            return error_response(501, unsupported)
        if exc.status_code == 404 and message == "Not Found":
            message = "no such path; see /openapi.json for the endpoints"
        elif exc.status_code == 405:  # every GET path answers HEAD too (RFC 9110 9.3.2)
            allowed = [m.strip() for m in headers.get("Allow", "").split(",") if m.strip()]
            if "GET" in allowed and "HEAD" not in allowed:
                allowed.append("HEAD")
            headers["Allow"] = ", ".join(allowed)
            message = (f"method {shown(request.method)} is not allowed on this path; use "
                       f"{' or '.join(allowed) or 'another path'}")
        return error_response(exc.status_code, message, headers)

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error on %s %s", request.method, request.url.path,
                         exc_info=exc)
        return error_response(500, f"internal error ({type(exc).__name__}); the server log "
                                   "has the details")

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
