"""The packed feature store (``mgsv_sk.packed/1``): reading and checking it, and writing
its tables. One implementation for the torch backend, the onnxruntime backend and
:func:`mgsv_sk.pack_features`."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from mgsv_sk.data._sources import FeatureError, FeatureSource, MissingFeatureError, reopen_source
from mgsv_sk.errors import ArtifactNotFoundError
from mgsv_sk.files._kinds import other_kind_error
from mgsv_sk.files._paths import exists_as_name, open_regular, regular_file

PACK_FORMAT = "mgsv_sk.packed/1"


class _PackedTable:
    """One modality of a packed store: rows of every item back to back, plus offsets.

    Everything ``meta.json`` and the offsets say is checked against the files before the
    store is used (:func:`_check_table`), so a damaged or hand-edited store is a
    :class:`FeatureError` naming the file and the problem.
    """

    def __init__(self, folder: Path, name: str, meta: dict[str, Any]) -> None:
        ids, rows, dim, offsets, data_path = _check_table(folder, name, meta, FeatureError)
        self.ids: list[str] = ids
        self.index = {k: i for i, k in enumerate(self.ids)}
        self.offsets = offsets
        self.dim = dim
        self.data = np.memmap(data_path, dtype="<f4", mode="r", shape=(rows, dim)) if rows else (
            np.zeros((0, dim), np.float32)
        )

    def get(self, key: str, what: str, folder: Path) -> np.ndarray:
        i = self.index.get(str(key))
        if i is None:
            raise MissingFeatureError(f"packed store {folder!s} has no {what} for id {key!r}")
        return np.asarray(self.data[self.offsets[i] : self.offsets[i + 1]])

    def lengths(self, keys: Iterable[str], what: str, folder: Path) -> np.ndarray:
        idx = []
        for k in keys:
            i = self.index.get(str(k))
            if i is None:
                raise MissingFeatureError(f"packed store {folder!s} has no {what} for id {k!r}")
            idx.append(i)
        pos = np.asarray(idx, dtype=np.int64)
        return (self.offsets[pos + 1] - self.offsets[pos]).astype(np.int64)


def _read_meta(folder: Path, error: type[Exception]) -> dict[str, Any]:
    """``meta.json`` of a packed store as a dict of our format, else ``error``."""
    path = folder / "meta.json"
    try:
        with open_regular(path, f"packed store {folder!s}: meta.json", error) as fh:
            meta = json.loads(fh.read().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"packed store {folder!s}: meta.json is corrupt ({exc}); re-run "
                    "pack_features") from exc
    except OSError as exc:
        raise error(f"packed store {folder!s}: cannot read meta.json ({exc})") from exc
    found = meta.get("format") if isinstance(meta, dict) else f"a JSON {type(meta).__name__}"
    if found != PACK_FORMAT:
        raise error(f"{folder!s} is not a packed store of format {PACK_FORMAT!r} (meta.json "
                    f"holds {found!r}); re-run pack_features")
    return meta


def _check_table(folder: Path, name: str, meta: dict[str, Any], error: type[Exception]
                 ) -> tuple[list[str], int, int, np.ndarray, Path]:
    """Validate one table of a packed store (the runtime's reader calls this too): ids,
    rows and dim in meta.json, the offsets file (read from its header first: an offsets
    file declaring more entries than it holds is refused without reading it) and the
    size of the feature file. Returns ids, rows, dim, offsets (int64) and the data path."""
    def bad(what: str) -> Exception:
        return error(f"packed store {folder!s} is damaged: {what}; re-run pack_features")

    info = meta.get(name)
    if not isinstance(info, dict):
        raise bad(f"meta.json has no {name!r} table")
    ids, rows, dim = info.get("ids"), info.get("rows"), info.get("dim")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise bad(f"meta.json's {name} ids are not a list of strings")
    if len(set(ids)) != len(ids):
        raise bad(f"meta.json lists duplicate {name} ids")
    for field, value, low in (("rows", rows, 0), ("dim", dim, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise bad(f"meta.json's {name} {field} is {value!r}, expected an integer >= {low}")
    assert isinstance(rows, int) and isinstance(dim, int)
    offsets_path = folder / f"{name}_offsets.npy"
    try:
        regular_file(offsets_path, f"packed store {folder!s}: {offsets_path.name}", error)
        mapped = np.load(offsets_path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise bad(f"{offsets_path.name} is unreadable ({type(exc).__name__}: {exc})") from exc
    if mapped.shape != (len(ids) + 1,) or mapped.dtype.kind not in "iu":
        raise bad(f"{offsets_path.name} has shape {mapped.shape} of {mapped.dtype}, expected "
                  f"({len(ids) + 1},) integers (one more than the {len(ids)} ids)")
    offsets = np.array(mapped, dtype=np.int64)
    del mapped
    if offsets[0] != 0 or offsets[-1] != rows or (np.diff(offsets) < 1).any():
        raise bad(f"{offsets_path.name} is not increasing from 0 to {rows} (every item has "
                  "at least one row)")
    data_path = folder / f"{name}_features.f32"
    expected = rows * dim * 4
    try:
        actual = regular_file(data_path, f"packed store {folder!s}: {data_path.name}",
                              error).stat().st_size
    except FileNotFoundError:
        actual = -1
    if actual != expected:
        raise bad(f"{data_path.name} has {actual} bytes, expected {expected} for {rows} x {dim} "
                  "float32")
    return ids, rows, dim, offsets, data_path


class PackedFeatures(FeatureSource):
    """A packed feature store written by :func:`pack_features`, memory-mapped read-only.

    Reading an item is a slice of one contiguous array, so an epoch costs a few
    microseconds per sample instead of four file opens. Pickles as its path.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        other = other_kind_error(self.path, "a packed feature store", PACK_FORMAT,
                                 "write one with mgsv_sk.pack_features(source, path)")
        if other is not None:
            raise other
        if not exists_as_name(meta_path):
            raise ArtifactNotFoundError(
                f"no packed feature store at {self.path!s} (meta.json missing); "
                "create one with mgsv_sk.pack_features(source, path)"
            )
        meta = _read_meta(self.path, FeatureError)
        self.meta = meta
        self._video = _PackedTable(self.path, "video", meta)
        self._music = _PackedTable(self.path, "music", meta)
        self.video_dim = self._video.dim
        self.music_dim = self._music.dim

    def video(self, video_id: str) -> np.ndarray:
        return self._video.get(video_id, "video features", self.path)

    def music(self, music_id: str) -> np.ndarray:
        return self._music.get(music_id, "music features", self.path)

    def has_video(self, video_id: str) -> bool:
        return str(video_id) in self._video.index

    def has_music(self, music_id: str) -> bool:
        return str(music_id) in self._music.index

    def video_lengths(self, video_ids: Iterable[str]) -> np.ndarray:
        return self._video.lengths(video_ids, "video features", self.path)

    def music_lengths(self, music_ids: Iterable[str]) -> np.ndarray:
        return self._music.lengths(music_ids, "music features", self.path)

    def video_ids(self) -> list[str]:
        return list(self._video.ids)

    def music_ids(self) -> list[str]:
        return list(self._music.ids)

    def music_sources(self) -> dict[str, str]:
        """``music_id -> path`` of the audio file each track was extracted from, for the
        tracks whose file was recorded (stores written by ``mgsv-sk catalogue``; empty for
        older stores and stores packed from features)."""
        sources = self.meta.get("music_sources")
        if not isinstance(sources, dict):
            return {}
        return {str(k): v for k, v in sources.items()
                if isinstance(v, str) and str(k) in self._music.index}

    def __repr__(self) -> str:
        return f"PackedFeatures({str(self.path)!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (reopen_source, (type(self), "packed feature store", self.path))




def _write_table(
    folder: Path, name: str, ids: list[str], fetch: Any, dim: int, progress: Any
) -> dict[str, Any]:
    offsets = np.zeros(len(ids) + 1, dtype=np.int64)
    rows = 0
    with open(folder / f"{name}_features.f32", "wb") as fh:
        for i, key in enumerate(ids):
            arr = fetch(key)
            if arr.shape[1] != dim:
                raise FeatureError(
                    f"{name} features for id {key!r} have {arr.shape[1]} columns, but earlier "
                    f"items have {dim}; all items of a modality must share one width"
                )
            fh.write(np.ascontiguousarray(arr, dtype="<f4").tobytes())
            rows += arr.shape[0]
            offsets[i + 1] = rows
            progress(1)
    np.save(folder / f"{name}_offsets.npy", offsets)
    return {"ids": ids, "rows": rows, "dim": dim}


