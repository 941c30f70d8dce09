"""Artefacts opened once per process: a bundle's sessions or a packed store, kept by the
identity of their files, so every Dask task a worker runs (a partition, a shard's
re-ranking) reuses what an earlier task opened. A folder re-written in place gets a new
identity, so a worker never serves a stale copy."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["cached", "clear", "identity"]

T = TypeVar("T")

#: Artefacts kept open per process (oldest dropped first).
CACHE_SIZE = 4
_cache: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
_cache_lock = threading.Lock()


def identity(path: Path, marker: str) -> tuple[Any, ...]:
    """(resolved path, inode, mtime, size) of ``path/marker``."""
    st = os.stat(path / marker)
    return (str(path.resolve()), st.st_ino, st.st_mtime_ns, st.st_size)


def cached(key: tuple[Any, ...], make: Callable[[], T]) -> T:
    """The value kept under ``key``, made by ``make()`` the first time."""
    with _cache_lock:
        value = _cache.get(key)
        if value is None:
            value = make()
            _cache[key] = value
            while len(_cache) > CACHE_SIZE:
                _cache.popitem(last=False)
        else:
            _cache.move_to_end(key)
        return value


def clear() -> None:
    """Forget everything this process opened."""
    with _cache_lock:
        _cache.clear()
