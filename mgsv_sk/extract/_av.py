"""PyAV's errors at the media boundary: a file PyAV cannot open or decode (not media, a
truncated download, an unknown codec) is the library's
:class:`~mgsv_sk.errors.InvalidInputError` naming the file, never ``av.error``'s own."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from mgsv_sk._extras import require
from mgsv_sk.errors import InvalidInputError

__all__ = ["decoding"]


@contextlib.contextmanager
def decoding(path: str | os.PathLike[str], what: str) -> Iterator[None]:
    av: Any = require("av", f"decoding {what}")
    try:
        yield
    except av.error.FFmpegError as exc:
        raise InvalidInputError(
            f"cannot decode {what} {os.fspath(path)}: {exc.strerror or exc}; is it a "
            f"{what} file? re-encode it, e.g. ffmpeg -i IN OUT"
            + (".mp4" if what == "video" else ".wav")) from None
