"""Where outside data meets the file system: only regular files are opened, and every
path that comes from data stays inside its root.

- :func:`regular_file` / :func:`open_regular`: a name that does not exist is *absent*
  (``FileNotFoundError``); a name that exists but is not a readable regular file (a FIFO,
  a device, a folder, a dangling symbolic link, a link loop) is an error of the caller's
  class naming what it is, never "absent", and never a blocking ``open`` (a FIFO opened
  for reading waits for a writer forever).
- :func:`inside_root`: the one check of a relative path read from data (a hub listing, a
  zip member, a manifest entry, an id used as a file name, a file list): no absolute
  path, drive letter, ``..``, empty or control-character part, and after resolving
  symbolic links the result is still under the root.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import Path, PurePosixPath
from typing import IO

from mgsv_sk.errors import ArtifactNotFoundError, InvalidInputError

__all__ = ["PathOutsideRootError", "check_relative", "exists_as_name", "inside_root",
           "open_regular", "regular_file"]

_DRIVE = re.compile(r"^[A-Za-z]:")


class PathOutsideRootError(InvalidInputError):
    """A path read from data would leave the folder it must stay in."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def exists_as_name(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names anything at all, a dangling symbolic link included: only a
    name for which this is False is *absent*."""
    return os.path.lexists(path)


def regular_file(path: str | os.PathLike[str], what: str,
                 error: type[Exception] = InvalidInputError) -> Path:
    """``path`` as a Path when it is (or links to) a regular file.

    Raises ``FileNotFoundError`` when the name does not exist at all, and ``error`` (the
    caller's class) when it exists but is a FIFO, device, socket, folder, a dangling
    symbolic link or a link loop, naming which. Nothing is opened.
    """
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        if not os.path.lexists(p):
            raise ArtifactNotFoundError(f"{what} not found: {p!s}") from None
        raise error(f"{what} {p!s} is a symbolic link to nothing (its target "
                    f"{os.readlink(p)!r} does not exist); fix or remove the link") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise error(f"{what} {p!s} is a symbolic link loop; fix or remove the "
                        "link") from None
        raise error(f"cannot read {what} {p!s}: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(st.st_mode):
        held = ""
        if stat.S_ISDIR(st.st_mode):  # say which, when it is one of ours (a model, a store)
            from mgsv_sk.files._kinds import artifact_kind

            held = f" (it holds {artifact_kind(p)[1]})"
        raise error(f"{what} {p!s} is {_kind(st.st_mode)}, not a regular file{held}; only "
                    "regular files are read")
    return p


def open_regular(path: str | os.PathLike[str], what: str,
                 error: type[Exception] = InvalidInputError) -> IO[bytes]:
    """Open ``path`` for binary reading, only when it is a regular file (see
    :func:`regular_file`). Opened without blocking and checked on the open descriptor, so
    a FIFO swapped in after the check cannot make the call wait."""
    p = regular_file(path, what, error)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(p, flags)
    except OSError as exc:
        raise error(f"cannot open {what} {p!s}: {exc.strerror or exc}") from exc
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise error(f"{what} {p!s} is {_kind(mode)}, not a regular file; only regular "
                        "files are read")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def inside_root(root: str | os.PathLike[str], relative: str | os.PathLike[str], what: str,
                error: type[Exception] = PathOutsideRootError) -> Path:
    """``root / relative`` for a relative path read from data, refused (``error``, naming
    ``what`` and the path) when it is absolute, carries a drive letter, a backslash, an
    empty, ``.``/``..`` or control-character part, or resolves (through symbolic links
    already on disk) outside ``root``. Nothing is created or opened."""
    text = check_relative(relative, what, error, where=os.fspath(root))
    shown = f"{text[:120]!r}"
    base = Path(root)
    target = base.joinpath(*PurePosixPath(text).parts)
    real_base = os.path.realpath(base)
    real = os.path.realpath(target)
    if os.path.commonpath([real_base, real]) != real_base:
        raise error(f"{what} {shown} leads outside {os.fspath(root)!s} (to {real!s}, "
                    "through a symbolic link); refusing it")
    return target


def check_relative(relative: str | os.PathLike[str], what: str,
                   error: type[Exception] = PathOutsideRootError, *,
                   where: str = "its folder") -> str:
    """The syntactic half of :func:`inside_root` (no file system access): ``relative`` as
    text, or ``error`` when it is absolute, names a drive or holds a backslash, an empty,
    ``.``/``..`` or control-character part."""
    text = os.fspath(relative)
    why = _relative_problem(text)
    if why is not None:
        raise error(f"{what} {text[:120]!r} {why}; refusing it: paths read from data must "
                    f"stay inside {where}")
    return text


def _relative_problem(text: str) -> str | None:
    if not text:
        return "is empty"
    if "\x00" in text or any(ord(c) < 32 for c in text):
        return "holds a NUL or other control character"
    if "\\" in text:
        return "holds a backslash (a Windows path separator)"
    if text.startswith("/") or _DRIVE.match(text):
        return "is an absolute path (or names a drive)"
    parts = text.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return "holds an empty, '.' or '..' part"
    return None
