"""A multipart video upload streamed to a temporary file under a size cap.

The body is parsed as it arrives (python-multipart's streaming parser) and the ``video``
part is written straight to disk: an upload never sits in memory, and one over the cap is
refused (413) as soon as it passes it, or before reading when ``Content-Length`` already
says so. The caller passes the body's chunks (:func:`.body.body_chunks`: bounded in time)
and owns the folder, which it deletes after the request.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote_to_bytes

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from ...extract.pipeline import VIDEO_EXTENSIONS
from ..errors import CLOSE, ApiError, shown
from .body import declared_length

__all__ = ["FIELD", "Upload", "no_room", "receive_video", "too_large_message"]

#: The form field that carries the video.
FIELD = "video"
#: Bytes of form fields other than the video (and of multipart headers) accepted.
_OTHER_BYTES = 64 << 10
_KINDS = ", ".join(e.lstrip(".") for e in VIDEO_EXTENSIONS)


def no_room(exc: OSError) -> ApiError:
    """The 503 for an upload the server cannot store (a full disk, no file descriptor).
    Its Retry-After is 5 s, not the configured one: a full disk is not a burst of load
    that the next second clears."""
    return ApiError(503, f"the server cannot store the upload now ({exc.strerror or exc}); "
                         "retry later", {"Retry-After": "5"})


@dataclass(frozen=True)
class Upload:
    """The received video: where it is, its client-side name and type, its size."""

    path: Path
    filename: str
    content_type: str
    size: int


def _is_video(content_type: str, suffix: str, named: bool = True) -> bool:
    """Whether a ``video`` part may be a video: its declared type, else its name's suffix;
    a part with no file name at all (a client that sends the bytes as the field's value)
    and no specific type is left to the decoder, which says clearly when it is not one."""
    if content_type.startswith("video/"):
        return True
    generic = content_type in ("", "application/octet-stream")
    return generic and (suffix in VIDEO_EXTENSIONS or not named)


#: ``filename*=charset'language'percent-encoded`` (RFC 5987/8187), which some clients send
#: for a name outside ASCII and the multipart parser drops.
_EXTENDED_NAME = re.compile(
    r"""(?i)(?:^|;)\s*filename\*\s*=\s*([\w!#$%&+^`{}~-]*)'[^']*'([^;\s]*)""")


def _file_name(plain: bytes | None, disposition: str) -> str | None:
    """The part's file name: the extended ``filename*`` where given (RFC 7578 lets a
    server read either), else ``filename``; None when the part names no file."""
    extended = _EXTENDED_NAME.search(disposition)
    if extended is not None:
        charset = extended.group(1) or "utf-8"
        try:
            return unquote_to_bytes(extended.group(2)).decode(charset, "replace")
        except LookupError:  # an unknown charset: the bytes as UTF-8, which most are
            return unquote_to_bytes(extended.group(2)).decode("utf-8", "replace")
    return None if plain is None else plain.decode("utf-8", "replace")


class _VideoPart:
    """The parser's callbacks: headers of each part, the video part's bytes to ``folder``."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder, self.max_bytes = folder, max_bytes
        self.headers: dict[str, str] = {}
        self._field = self._value = b""
        self.file: IO[bytes] | None = None
        self.writing = False
        self.upload: dict[str, Any] | None = None
        self.size = self.other = 0
        self.problem: ApiError | None = None

    def callbacks(self) -> dict[str, Any]:
        return {"on_part_begin": self.part_begin, "on_header_field": self.header_field,
                "on_header_value": self.header_value, "on_header_end": self.header_end,
                "on_headers_finished": self.headers_finished, "on_part_data": self.data,
                "on_part_end": self.part_end}

    def part_begin(self) -> None:
        self.headers, self.writing = {}, False

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def header_end(self) -> None:
        self.headers[self._field.decode("latin-1").lower()] = self._value.decode("latin-1")
        self.other += len(self._field) + len(self._value)
        self._field = self._value = b""

    def headers_finished(self) -> None:
        disposition = self.headers.get("content-disposition", "")
        _, options = parse_options_header(disposition)
        name = options.get(b"name", b"").decode("latin-1")
        if name != FIELD:
            return
        if self.upload is not None:  # which one to answer for would be a guess
            self.problem = ApiError(400, f"the form has more than one {FIELD!r} file; send "
                                         "one video per request")
            return
        filename = _file_name(options.get(b"filename"), disposition)
        name_text = Path(filename or "").name or "upload"
        content_type = parse_options_header(self.headers.get("content-type", ""))[0].decode(
            "latin-1").lower()
        suffix = Path(name_text).suffix.lower()
        if not _is_video(content_type, suffix, named=filename is not None):
            self.problem = ApiError(415, f"the upload {shown(name_text)} is of type "
                                         f"{shown(content_type or 'unknown')}, not a video; send a "
                                         f"video file ({_KINDS})")
            return
        path = self.folder / f"upload{suffix if suffix in VIDEO_EXTENSIONS else '.mp4'}"
        try:
            self.file = open(path, "wb")  # noqa: SIM115 (closed in part_end / close)
        except OSError as exc:
            self.problem = no_room(exc)
            return
        self.writing = True
        self.upload = {"path": path, "filename": name_text, "content_type": content_type}

    def data(self, data: bytes, start: int, end: int) -> None:
        if self.problem is not None:
            return
        if not self.writing:
            self.other += end - start
            if self.other > _OTHER_BYTES:
                self.problem = ApiError(413, f"the form's other fields exceed {_OTHER_BYTES} "
                                             f"bytes; send only the {FIELD!r} file")
            return
        self.size += end - start
        if self.size > self.max_bytes:
            self.problem = _too_large(self.max_bytes)
            return
        assert self.file is not None
        try:
            self.file.write(data[start:end])
        except OSError as exc:  # a full disk: the server's trouble, not the client's
            self.problem = no_room(exc)

    def part_end(self) -> None:
        if self.writing:
            self.close()
            self.writing = False

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def too_large_message(max_bytes: int) -> str:
    return (f"the upload is larger than this server's limit of {max_bytes / 2**20:.0f} MiB; "
            "send a shorter or smaller video")


def _too_large(max_bytes: int) -> ApiError:
    return ApiError(413, too_large_message(max_bytes), CLOSE)


async def receive_video(request: Request, folder: Path, max_bytes: int,
                        chunks: AsyncIterator[bytes] | None = None) -> Upload:
    """Stream the request's ``video`` file field into ``folder``, from ``chunks`` (default:
    the request's body as it comes).

    Raises
    ------
    ApiError
        415 not a multipart form or not a video; 413 over ``max_bytes``; 400 a malformed
        form or no ``video`` file in it.
    """
    media_type, options = parse_options_header(request.headers.get("content-type", ""))
    if media_type != b"multipart/form-data":
        raise ApiError(415, f"send the video as multipart/form-data with a {FIELD!r} file "
                            f"field (got Content-Type "
                            f"{shown(media_type.decode('latin-1') or 'none')})")
    boundary = options.get(b"boundary")
    if not boundary:
        raise ApiError(400, "the multipart Content-Type has no boundary")
    declared_length(request, max_bytes + _OTHER_BYTES, too_large_message(max_bytes))
    part = _VideoPart(folder, max_bytes)
    try:
        parser = MultipartParser(boundary, part.callbacks())  # type: ignore[arg-type]
    except ValueError as exc:  # e.g. a boundary of thousands of characters
        raise ApiError(400, f"the multipart boundary is not usable ({exc}); send a "
                            "standard form upload") from exc
    try:
        async for chunk in chunks if chunks is not None else request.stream():
            parser.write(chunk)
            if part.problem is not None:
                raise part.problem
        parser.finalize()
    except ClientDisconnect as exc:
        raise ApiError(400, "the client closed the connection before the upload ended") from exc
    except FormParserError as exc:
        raise ApiError(400, f"malformed multipart body ({exc}); send a standard form "
                            f"upload with a {FIELD!r} file field") from exc
    finally:
        part.close()
    if part.problem is not None:
        raise part.problem
    if part.writing:  # no boundary after the file: the form was cut off inside it
        raise ApiError(400, f"the form ends inside its {FIELD!r} file (no closing boundary "
                            "follows it): the upload is incomplete; send the whole form")
    if part.upload is None:
        raise ApiError(400, f"the form has no {FIELD!r} file field; send the video as "
                            f"{FIELD}=@clip.mp4")
    if part.size == 0:
        raise ApiError(422, f"the uploaded video {shown(part.upload['filename'])} is empty")
    return Upload(size=part.size, **part.upload)
