"""Where extracted features go: the release's ``.pt`` tree, or a packed store.

Every item is written atomically (a temporary file beside it, then renamed; the mask
before the feature, which marks the item done), so an interrupted extraction never
leaves a half-written file that reads as a feature, and a rerun skips what is done.

- :class:`TreeWriter`: ``features/Kuai_feature/vit_feature1/{vit_feature,vit_mask}/<id>.pt``
  and ``ast_feature2p5/{ast_feature,ast_mask}/<id>.pt``, padded to 50 / 96 rows with a 0/1
  mask, exactly as the release (:class:`mgsv_sk.data.features.FeatureTree` reads it).
- :class:`PackedWriter`: valid rows per item as ``.npy`` under ``<store>.parts/`` while
  extracting (numpy only), packed into ``<store>`` (the :func:`mgsv_sk.pack_features`
  format) by :meth:`PackedWriter.finish`, merged with what the store already held.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mgsv_sk.data._sources import FeatureSource, MissingFeatureError, _check_id
from mgsv_sk.data._tree import _KUAI, _MUSIC_FEAT, _MUSIC_MASK, _VIDEO_FEAT, _VIDEO_MASK
from mgsv_sk.data.features import pack_features
from mgsv_sk.data.packed import PackedFeatures
from mgsv_sk.errors import InvalidInputError
from mgsv_sk.files._atomic import PACKED_STORE, check_destination, writer_lock
from mgsv_sk.files._paths import inside_root

__all__ = ["FeatureWriter", "NpyFolder", "PackedWriter", "TreeWriter", "open_writer"]

_KINDS = ("video", "music")


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` then rename ``tmp`` to ``path``; the temporary file never survives."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def nonfinite_problem(rows: np.ndarray) -> str | None:
    """Why ``rows`` cannot be stored (NaN or inf values), or None."""
    bad = ~np.isfinite(np.asarray(rows, np.float32))
    if bad.any():
        return (f"holds {int(bad.sum())} NaN or infinite value(s) (in {int(bad.any(axis=-1).sum())}"
                " row(s))" if bad.ndim > 1 else f"holds {int(bad.sum())} NaN or infinite value(s)")
    return None


def _refuse_nonfinite(kind: str, key: str, rows: np.ndarray) -> None:
    why = nonfinite_problem(rows)
    if why is not None:
        raise InvalidInputError(f"{kind} features of {key!r} {why}; nothing was written (a "
                         "non-finite feature would poison every search of the catalogue)")


class FeatureWriter:
    """Base of the writers: ``done(kind, id)`` and ``write(kind, id, rows, mask)`` where
    ``rows`` is (T, D) float32 padded to the release's length and ``mask`` (T,) 0/1."""

    def done(self, kind: str, key: str) -> bool:
        raise NotImplementedError

    def write(self, kind: str, key: str, rows: np.ndarray, mask: np.ndarray) -> None:
        raise NotImplementedError

    def finish(self) -> Any:
        """Complete the output (the packed writer packs here); returns what was written."""
        return None

    def note_sources(self, kind: str, items: dict[str, Path]) -> None:
        """The media file of each item (``id -> path``); the packed writer keeps those of
        the tracks so a server can play them. Others ignore it."""


class TreeWriter(FeatureWriter):
    """The release layout under ``root`` (``.pt`` files; needs torch)."""

    _DIRS = {"video": (_VIDEO_FEAT, _VIDEO_MASK), "music": (_MUSIC_FEAT, _MUSIC_MASK)}

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.base = self.root / _KUAI

    def _paths(self, kind: str, key: str) -> tuple[Path, Path]:
        feat, mask = self._DIRS[kind]
        _check_id(key, f"{kind}_id")
        return (inside_root(self.base / feat, f"{key}.pt", f"{kind}_id"),
                inside_root(self.base / mask, f"{key}.pt", f"{kind}_id"))

    def done(self, kind: str, key: str) -> bool:
        return all(p.is_file() for p in self._paths(kind, key))

    def write(self, kind: str, key: str, rows: np.ndarray, mask: np.ndarray) -> None:
        import torch

        _refuse_nonfinite(kind, key, rows)
        feat_path, mask_path = self._paths(kind, key)
        feat_path.unlink(missing_ok=True)  # a re-extraction: not done until both are back
        _atomic_write(mask_path, lambda p: torch.save(torch.from_numpy(
            np.ascontiguousarray(mask, np.float32)), p))
        _atomic_write(feat_path, lambda p: torch.save(torch.from_numpy(
            np.ascontiguousarray(rows, np.float32)), p))

    def finish(self) -> Path:
        return self.root


class NpyFolder(FeatureSource):
    """Valid rows of each item as ``<root>/<kind>/<id>.npy`` (a packed writer's parts)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        for kind in _KINDS:
            first = next(iter(sorted((self.root / kind).glob("*.npy"))), None)
            if first is not None:
                setattr(self, f"{kind}_dim", int(np.load(first, mmap_mode="r").shape[1]))

    def path(self, kind: str, key: str) -> Path:
        _check_id(key, f"{kind}_id")
        return inside_root(self.root / kind, f"{key}.npy", f"{kind}_id")

    def _get(self, kind: str, key: str) -> np.ndarray:
        path = self.path(kind, str(key))
        if not path.is_file():
            raise MissingFeatureError(f"no {kind} features for id {key!r} in {self.root!s}")
        return np.load(path, allow_pickle=False)

    def video(self, video_id: str) -> np.ndarray:
        return self._get("video", video_id)

    def music(self, music_id: str) -> np.ndarray:
        return self._get("music", music_id)

    def has_video(self, video_id: str) -> bool:
        return self.path("video", str(video_id)).is_file()

    def has_music(self, music_id: str) -> bool:
        return self.path("music", str(music_id)).is_file()

    def video_ids(self) -> list[str]:
        return sorted(p.stem for p in (self.root / "video").glob("*.npy"))

    def music_ids(self) -> list[str]:
        return sorted(p.stem for p in (self.root / "music").glob("*.npy"))


class _Merged(FeatureSource):
    """Items of ``new`` over those of ``old`` (an earlier packed store)."""

    def __init__(self, old: PackedFeatures | None, new: NpyFolder) -> None:
        self.old, self.new = old, new
        for kind in _KINDS:
            dims = [getattr(s, f"{kind}_dim") for s in (new, old) if s is not None and
                    getattr(s, f"{kind}_ids")()]
            if dims:
                setattr(self, f"{kind}_dim", dims[0])

    def video(self, video_id: str) -> np.ndarray:
        if self.new.has_video(video_id) or self.old is None:
            return self.new.video(video_id)
        return self.old.video(video_id)

    def music(self, music_id: str) -> np.ndarray:
        if self.new.has_music(music_id) or self.old is None:
            return self.new.music(music_id)
        return self.old.music(music_id)

    def video_ids(self) -> list[str]:
        old = self.old.video_ids() if self.old is not None else []
        return list(dict.fromkeys([*old, *self.new.video_ids()]))

    def music_ids(self) -> list[str]:
        old = self.old.music_ids() if self.old is not None else []
        return list(dict.fromkeys([*old, *self.new.music_ids()]))


class PackedWriter(FeatureWriter):
    """Parts under ``<store>.parts/``, packed into ``store`` by :meth:`finish`."""

    def __init__(self, store: str | os.PathLike[str]) -> None:
        # Up front, not after hours of extraction: only a store of ours is ever replaced.
        check_destination(store, overwrite=True, replaces=PACKED_STORE)
        self.store = Path(store)
        self.parts = self.store.with_name(self.store.name + ".parts")
        self.old = PackedFeatures(self.store) if (self.store / "meta.json").is_file() else None
        self._old_ids = {"video": set(), "music": set()} if self.old is None else {
            "video": set(self.old.video_ids()), "music": set(self.old.music_ids())}
        self._folder = NpyFolder(self.parts)
        self._sources = {} if self.old is None else self.old.music_sources()

    def note_sources(self, kind: str, items: dict[str, Path]) -> None:
        if kind == "music":  # absolute: the store is read from other working directories
            self._sources.update({k: str(Path(p).resolve()) for k, p in items.items()})

    def done(self, kind: str, key: str) -> bool:
        return key in self._old_ids[kind] or self._folder.path(kind, key).is_file()

    def write(self, kind: str, key: str, rows: np.ndarray, mask: np.ndarray) -> None:
        _refuse_nonfinite(kind, key, rows)
        valid = np.ascontiguousarray(rows[np.asarray(mask) > 0], np.float32)
        _atomic_write(self._folder.path(kind, key), lambda p: _save_npy(p, valid))

    def finish(self) -> PackedFeatures | None:
        """Pack the store as it is now + the parts into the store (atomically), then drop
        the parts it packed. Under the store's writer lock: two extractions into one store
        each add their items, neither loses the other's."""
        with writer_lock(self.store):
            old = (PackedFeatures(self.store) if (self.store / "meta.json").is_file()
                   else None)
            folder = NpyFolder(self.parts)
            packed = [folder.path(kind, key) for kind in _KINDS
                      for key in getattr(folder, f"{kind}_ids")()]
            # the source paths of the store as it is now, and this extraction's on top
            sources = {**({} if old is None else old.music_sources()), **self._sources}
            if not packed and (old is None or old.music_sources() == {
                    k: v for k, v in sources.items() if old.has_music(k)}):
                _remove_empty(self.parts)
                return old
            store = pack_features(_Merged(old, folder), self.store, overwrite=old is not None,
                                  music_sources=sources)
            for part in packed:  # only what was packed: another writer's new parts stay
                part.unlink(missing_ok=True)
            _remove_empty(self.parts)
            return store


def _remove_empty(parts: Path) -> None:
    for folder in (*(parts / kind for kind in _KINDS), parts):
        try:
            folder.rmdir()
        except OSError:  # absent, or holding another writer's parts (or a temporary file)
            pass


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as fh:
        np.save(fh, array, allow_pickle=False)


def open_writer(out: str | os.PathLike[str], layout: str) -> FeatureWriter:
    """The writer of ``layout`` ("tree": the release's ``.pt`` layout under ``out``;
    "packed": a packed store at ``out``)."""
    if layout == "tree":
        return TreeWriter(out)
    if layout == "packed":
        return PackedWriter(out)
    raise InvalidInputError(f"layout must be 'tree' or 'packed', got {layout!r}")
