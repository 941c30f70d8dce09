"""Atomic folder writes: build under a temporary name, rename into place.

A reader sees either the old folder or the complete new one, never a half-written one;
a crash (or Ctrl-C) while writing leaves only the temporary folder's removal to do, and
that is done here.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_directory"]


@contextmanager
def atomic_directory(
    destination: str | os.PathLike[str], *, overwrite: bool = False
) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``destination``; on success it replaces
    ``destination`` in one rename, on any error (or interrupt) it is deleted.

    Raises ``FileExistsError`` up front when ``destination`` exists and ``overwrite`` is
    false.
    """
    dst = Path(destination)
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst!s} already exists; pass overwrite=True to replace it")
    if dst.exists() and not dst.is_dir():
        raise FileExistsError(f"{dst!s} is a file, not a folder; remove it or choose another "
                              "path (overwrite=True replaces folders only)")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
    try:
        yield tmp
        if dst.exists():
            # A fresh empty name (a stale one left by a killed process would not be empty).
            old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
            os.replace(dst, old)
            try:
                os.replace(tmp, dst)
            except BaseException:
                os.replace(old, dst)  # put the previous folder back
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
