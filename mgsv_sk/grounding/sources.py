"""Where a call's features come from, and whether the served catalogue's encodings may
answer it: a source's identity (a path's current content, else the object), the sources
a catalogue was encoded from, and which tracks a source holds. Torch-free."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mgsv_sk.data.features import FeatureSource
from mgsv_sk.search import TrackIndex

__all__ = ["SourceKeys", "held_tracks", "lists_music", "path_key", "source_identity"]


class SourceKeys(set[Any]):
    """Identities of the sources a served catalogue was encoded from; pickled empty (an
    object's identity means nothing in another process)."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (SourceKeys, ())

    def __deepcopy__(self, memo: dict[int, Any]) -> SourceKeys:
        return SourceKeys(self)  # a copy in this process shares the sources (by identity)


def source_identity(obj: Any) -> Any:
    """What makes two feature arguments the same source: the resolved path of a path, a
    packed store or a release tree; else the object itself (by identity)."""
    if obj is None:
        return None
    path = obj if isinstance(obj, (str, os.PathLike)) else (
        getattr(obj, "path", None) if type(obj).__name__ == "PackedFeatures" else
        getattr(obj, "root", None) if type(obj).__name__ == "FeatureTree" else None)
    if path is not None:  # the same path rewritten since is another source
        return ("path", path_key(path) or os.path.realpath(path))
    return ("object", id(obj))


def lists_music(source: FeatureSource) -> bool:
    """False for a source known to hold no track (a query's videos only)."""
    lister = getattr(source, "music_ids", None)
    return not (callable(lister) and len(lister()) == 0)


def held_tracks(source: FeatureSource, ids: list[str], served: TrackIndex) -> list[str]:
    """The ``ids`` that ``source`` holds (listing the source when it is the smaller)."""
    lister = getattr(source, "music_ids", None)
    if callable(lister):
        listed = lister()
        if len(listed) <= len(ids):
            wanted = set(ids)
            return [m for m in listed if m in wanted]
    return [m for m in ids if source.has_music(m)]


def path_key(path: str | os.PathLike[str]) -> tuple[Any, ...] | None:
    """Identity of a feature path's current content: the resolved path and the inode,
    size and mtime of its marker file (``meta.json`` of a packed store; the folder itself
    for a release tree). None: it cannot be read, so nothing is cached."""
    root = Path(path).resolve()
    marker = root / "meta.json"
    try:
        st = (marker if marker.is_file() else root).stat()
    except OSError:
        return None
    return (str(root), st.st_ino, st.st_size, st.st_mtime_ns)
