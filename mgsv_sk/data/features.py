"""Feature sources: the MGSV-EC ``.pt`` tree, a packed memory-mapped store, in-memory arrays.

All three answer the same questions with the same arrays: ``video(id)`` gives the
valid frames of one video, shape (F, 512), and ``music(id)`` the valid snippets of one
track, shape (S, 768), float32, masks already applied (padding rows removed). A parity
test holds the three to identical output.

The ``.pt`` tree is how the features are released: four tiny files per (video, track)
pair, which is slow to read every epoch. :func:`pack_features` reads each feature once
(each track once, however many videos share it) into two contiguous arrays plus an id
index; training and prediction read from that.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mgsv_sk.data._readers import id_list
from mgsv_sk.data._schema import validate_annotations
from mgsv_sk.data._sources import (
    MUSIC_DIM,
    VIDEO_DIM,
    FeatureError,
    FeatureSource,
    InMemoryFeatures,
    MissingFeatureError,
    ReaderFeatures,
    _check_id,
    _progress,
    require_finite,
)
from mgsv_sk.data._tree import FeatureTree
from mgsv_sk.data.packed import PACK_FORMAT, PackedFeatures, _write_table
from mgsv_sk.errors import InvalidInputError, InvalidTypeError
from mgsv_sk.files._atomic import PACKED_STORE, atomic_directory, check_destination

__all__ = [
    "MUSIC_DIM",
    "PACK_FORMAT",
    "VIDEO_DIM",
    "FeatureError",
    "MissingFeatureError",
    "ReaderFeatures",
    "require_finite",
    "FeatureSource",
    "FeatureTree",
    "InMemoryFeatures",
    "PackedFeatures",
    "as_feature_source",
    "pack_features",
]

logger = logging.getLogger(__name__)


#: The one message for a call without features (every grounder, every backend).
NO_FEATURES = ("no feature source given (no features given: pass features= a packed store "
               "path, an MGSV-EC feature tree path, a (videos, music) pair of dicts of "
               "arrays, a FeatureSource, or an object with video(id) / music(id) methods)")


def as_feature_source(obj: Any) -> FeatureSource:
    """Turn a path (packed store or release tree), a source, ``(videos, music)`` dicts or
    any object with ``video(id)`` / ``music(id)`` methods into a :class:`FeatureSource`."""
    if isinstance(obj, FeatureSource):
        return obj
    if isinstance(obj, (str, os.PathLike)):
        path = Path(obj)
        if (path / "meta.json").is_file():
            return PackedFeatures(path)
        return FeatureTree(path)
    if isinstance(obj, tuple) and len(obj) == 2 and all(isinstance(o, Mapping) for o in obj):
        return InMemoryFeatures(obj[0], obj[1])
    if obj is None:
        raise InvalidInputError(NO_FEATURES)
    if callable(getattr(obj, "video", None)) and callable(getattr(obj, "music", None)):
        return ReaderFeatures(obj)
    raise InvalidTypeError(
        f"features must be a path, a FeatureSource, a (videos, music) pair of dicts or an "
        "object with video()/music() methods, "
        f"got {type(obj).__name__}"
    )




def pack_features(
    source: Any,
    destination: str | os.PathLike[str],
    *,
    video_ids: Iterable[Any] | None = None,
    music_ids: Iterable[Any] | None = None,
    annotations: Any = None,
    overwrite: bool = False,
    verbose: bool = False,
    music_sources: Mapping[str, str] | None = None,
) -> PackedFeatures:
    """Read every needed feature once and write a packed, memory-mappable store.

    Parameters
    ----------
    source : path or FeatureSource
        The release tree (or any source) to read from.
    destination : path
        Folder to create. Written under a temporary name and renamed into place, so a
        crash never leaves a half-written store that loads.
    video_ids, music_ids : iterables of ids, optional
        What to pack. Default: the ids of ``annotations`` if given, else everything the
        source lists. Each track is read once however many videos use it.
    annotations : DataFrame, optional
        An MGSV-EC frame whose ``video_id``/``music_id`` define what to pack.
    overwrite : bool
        Replace an existing store at ``destination``.
    verbose : bool
        Show a progress bar.
    music_sources : mapping music_id -> path, optional
        The audio file each track was extracted from (``mgsv-sk catalogue`` records it),
        kept in ``meta.json`` for the tracks packed, so a server can play their moments
        (:meth:`PackedFeatures.music_sources`).

    Returns
    -------
    PackedFeatures
        The store, opened.
    """
    src = as_feature_source(source)
    # Checked before any reading: only an existing packed store (or an empty folder) is
    # replaced, and only with overwrite=True.
    dst = check_destination(destination, overwrite=overwrite, replaces=PACKED_STORE)
    if annotations is not None:
        frame = validate_annotations(annotations, ("video_id", "music_id"),
                                     source="annotations")
        video_ids = frame["video_id"] if video_ids is None else video_ids
        music_ids = frame["music_id"] if music_ids is None else music_ids
    vids = _unique_ids(video_ids, src, "video_ids")
    mids = _unique_ids(music_ids, src, "music_ids")
    src.check_available(vids, mids)

    with atomic_directory(dst, overwrite=overwrite, replaces=PACKED_STORE) as tmp:
        bar = _progress(len(vids) + len(mids), verbose, f"packing into {dst.name}")
        meta: dict[str, Any] = {"format": PACK_FORMAT}
        meta["video"] = _write_table(tmp, "video", vids, src.video, src.video_dim, bar.update)
        meta["music"] = _write_table(tmp, "music", mids, src.music, src.music_dim, bar.update)
        if music_sources:
            meta["music_sources"] = {m: str(music_sources[m]) for m in mids
                                     if m in music_sources}
        bar.close()
        (tmp / "meta.json").write_text(json.dumps(meta))  # written last: marks completeness
    logger.info("packed %d videos and %d tracks into %s", len(vids), len(mids), dst)
    return PackedFeatures(dst)


def _unique_ids(ids: Iterable[Any] | None, src: FeatureSource, name: str) -> list[str]:
    if ids is None:
        lister = getattr(src, name, None)  # FeatureTree.video_ids(), ...
        if lister is None:
            raise InvalidInputError(f"{src!r} cannot list its ids: pass {name}= or annotations=")
        out = [str(i) for i in lister()]
    else:
        out = id_list(ids, name)
    for key in out:  # the ids name files and are stored: the one id rule, up front
        _check_id(key, name[:-1])
    return out


