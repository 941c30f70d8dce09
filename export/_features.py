"""Feature readers of the torch-free runtime: the packed store and dicts of arrays.

The runtime imports neither mgsv_sk nor torch, so it reads mgsv_sk's packed store format
(``mgsv_sk.packed/1``: ``meta.json``, ``{video,music}_features.f32`` raw little-endian
float32 rows, ``{video,music}_offsets.npy``) itself, memory-mapped read-only. The MGSV-EC
release tree of ``.pt`` files needs torch to read: pack it first with
``mgsv_sk.pack_features(tree, "packed/")`` and serve from the packed folder.

Any object with ``video(id)`` and ``music(id)`` methods returning ``[T, D]`` arrays also
works (an mgsv_sk ``FeatureSource`` included).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

__all__ = ["DictFeatures", "FeatureError", "FeatureReader", "PackedFeatureStore",
           "as_features", "read_items"]

PACKED_FORMAT = "mgsv_sk.packed/1"


class FeatureError(ValueError):
    """Features are missing, malformed or non-finite; the message names the ids."""


class FeatureReader(Protocol):
    def video(self, video_id: str) -> np.ndarray: ...

    def music(self, music_id: str) -> np.ndarray: ...


def _read_meta(folder: Path) -> dict[str, Any]:
    """``meta.json`` of a packed store as a dict of our format: mgsv_sk's (torch-free)
    reader, raising this module's FeatureError."""
    from mgsv_sk.features import _read_meta as read

    return read(folder, FeatureError)


def _check_table(folder: Path, name: str, meta: Mapping[str, Any]
                 ) -> tuple[list[str], int, int, np.ndarray, Path]:
    """Validate one table of a packed store before use: mgsv_sk's (torch-free) check,
    raising this module's FeatureError."""
    from mgsv_sk.features import _check_table as check

    return check(folder, name, dict(meta), FeatureError)


class _Table:
    """One modality of a packed store: a read-only memmap of rows plus offsets."""

    def __init__(self, folder: Path, name: str, meta: Mapping[str, Any]) -> None:
        ids, rows, dim, self.offsets, path = _check_table(folder, name, meta)
        self.index = {k: i for i, k in enumerate(ids)}
        self.data = (np.memmap(path, dtype="<f4", mode="r", shape=(rows, dim)) if rows
                     else np.zeros((0, dim), np.float32))

    def get(self, key: str) -> np.ndarray:
        i = self.index[str(key)]  # KeyError: reported by read_items
        return np.asarray(self.data[self.offsets[i]: self.offsets[i + 1]])


class PackedFeatureStore:
    """A packed feature store (written by ``mgsv_sk.pack_features``), memory-mapped."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        if not meta_path.is_file():
            if (self.path / "features").is_dir() or (self.path / "vit_feature1").is_dir():
                raise FeatureError(
                    f"{self.path!s} looks like an MGSV-EC .pt feature tree, which needs torch "
                    "to read; pack it first: mgsv_sk.pack_features(tree, 'packed/'), then "
                    "pass the packed folder")
            raise FileNotFoundError(f"no packed feature store at {self.path!s} (meta.json "
                                    "missing); create one with mgsv_sk.pack_features")
        meta = _read_meta(self.path)
        self._video = _Table(self.path, "video", meta)
        self._music = _Table(self.path, "music", meta)

    def video(self, video_id: str) -> np.ndarray:
        return self._video.get(video_id)

    def music(self, music_id: str) -> np.ndarray:
        return self._music.get(music_id)

    def __repr__(self) -> str:
        return f"PackedFeatureStore({str(self.path)!r})"


class DictFeatures:
    """Features from dicts ``{id: [T, D] array}`` (ids compared as strings)."""

    def __init__(self, videos: Mapping[Any, Any], music: Mapping[Any, Any]) -> None:
        self._videos = {str(k): v for k, v in videos.items()}
        self._music = {str(k): v for k, v in music.items()}

    def video(self, video_id: str) -> np.ndarray:
        return np.asarray(self._videos[str(video_id)])

    def music(self, music_id: str) -> np.ndarray:
        return np.asarray(self._music[str(music_id)])

    def __repr__(self) -> str:
        return f"DictFeatures({len(self._videos)} videos, {len(self._music)} tracks)"


def as_features(obj: Any) -> FeatureReader:
    """A packed store path, a ``(videos, music)`` pair of dicts, or any object with
    ``video(id)`` / ``music(id)`` methods."""
    if obj is None:
        raise ValueError("no features given: pass features= a packed store folder, a "
                         "(videos, music) pair of dicts of arrays, or an object with "
                         "video(id) and music(id) methods")
    if isinstance(obj, (str, os.PathLike)):
        return PackedFeatureStore(obj)
    if (isinstance(obj, tuple) and len(obj) == 2
            and all(isinstance(o, Mapping) for o in obj)):
        return DictFeatures(obj[0], obj[1])
    if callable(getattr(obj, "video", None)) and callable(getattr(obj, "music", None)):
        return obj
    raise TypeError(f"features must be a packed store path, a (videos, music) pair of dicts "
                    f"or an object with video()/music() methods, got {type(obj).__name__}")


def _check(arr: Any, dim: int, max_len: int, cut: bool) -> tuple[np.ndarray | None, str | None]:
    """Validate one item; ``cut``: keep the first ``max_len`` rows of a longer item (music:
    the protocol stops at 240 s) instead of refusing it (video)."""
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]  # [1, T, D] -> [T, D]
    if a.ndim != 2 or a.shape[1] != dim:
        return None, f"shape {tuple(a.shape)}, expected (T, {dim})"
    if cut and a.shape[0] > max_len:
        a = a[:max_len]
    if not 1 <= a.shape[0] <= max_len:
        hint = (f" (a video of more than {max_len} s: trim it or sample {max_len} frames)"
                if a.shape[0] > max_len else "")
        return None, f"{a.shape[0]} rows, expected 1 to {max_len}{hint}"
    if (a.dtype != np.bool_ and not np.issubdtype(a.dtype, np.number)) or np.issubdtype(
            a.dtype, np.complexfloating):
        return None, f"dtype {a.dtype}, expected float32"
    a = np.ascontiguousarray(a, dtype=np.float32)
    if not np.isfinite(a).all():
        return None, "NaN or inf values"
    return a, None


def read_items(reader: FeatureReader, ids: Sequence[str], kind: str, dim: int,
               max_len: int) -> list[np.ndarray]:
    """Features of ``ids`` (``kind`` "video" or "music"), validated: [T, dim] float32 with
    1 <= T <= max_len, finite. Every problem is gathered into one :class:`FeatureError`.
    A track of more than ``max_len`` snippets is cut to its first 240 s with a
    ``UserWarning`` (as ``mgsv_sk``'s feature sources do); a longer video is refused."""
    get = reader.video if kind == "video" else reader.music
    out: list[np.ndarray] = []
    missing: list[str] = []
    bad: list[str] = []
    cut: list[str] = []
    for key in ids:
        try:
            raw = get(key)
        except (KeyError, LookupError, FileNotFoundError):
            missing.append(key)
            continue
        except ValueError as exc:  # a source's own "missing/malformed" error
            bad.append(f"{key!r}: {exc}")
            continue
        arr, problem = _check(raw, dim, max_len, cut=kind == "music")
        if arr is None:
            bad.append(f"{key!r}: {problem}")
        else:
            if kind == "music" and np.shape(raw)[-2] > max_len:
                cut.append(key)
            out.append(arr)
    if cut:
        warnings.warn(f"{len(cut)} track(s) have more than {max_len} snippets (240 s), e.g. "
                      f"{cut[:5]}: their features are cut at 240 s, where the MGSV protocol "
                      "stops", UserWarning, stacklevel=3)
    if missing or bad:
        parts = []
        if missing:
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            parts.append(f"no {kind} features for {len(missing)} {kind}_id(s) "
                         f"{missing[:5]}{more}")
        if bad:
            parts.append(f"malformed {kind} features: " + "; ".join(bad[:5]))
        raise FeatureError(f"{reader!r}: " + "; ".join(parts)
                           + "; pass features that cover these ids with valid arrays")
    return out
