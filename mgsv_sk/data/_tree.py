"""The MGSV-EC release tree of per-sample ``.pt`` files as a :class:`FeatureSource`.

The only part of the data layer that reads torch files: it imports torch lazily, when a file is
read, so importing the data layer never needs torch (a serving machine packs the tree
elsewhere, see :func:`mgsv_sk.pack_features`)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from mgsv_sk.data._sources import (
    MUSIC_DIM,
    VIDEO_DIM,
    FeatureError,
    FeatureSource,
    MissingFeatureError,
    _cap_rows,
    _check_array,
    _check_id,
    _valid_rows,
    _warn_cut,
    reopen_source,
)
from mgsv_sk.data.spans import MAX_MUSIC_SNIPPETS, MAX_VIDEO_FRAMES
from mgsv_sk.errors import ArtifactNotFoundError
from mgsv_sk.files._kinds import other_kind_error
from mgsv_sk.files._paths import exists_as_name, inside_root, regular_file

_KUAI = Path("features") / "Kuai_feature"
_VIDEO_FEAT = Path("vit_feature1") / "vit_feature"
_VIDEO_MASK = Path("vit_feature1") / "vit_mask"
_MUSIC_FEAT = Path("ast_feature2p5") / "ast_feature"
_MUSIC_MASK = Path("ast_feature2p5") / "ast_mask"
#: A .pt feature file declaring more rows than this is refused from its header alone.
_MAX_STORED_ROWS = 100_000



class FeatureTree(FeatureSource):
    """The MGSV-EC release tree of per-sample ``.pt`` files.

    ``root`` is the folder holding ``features/Kuai_feature/...`` (the release root) or the
    ``Kuai_feature`` folder itself. Files are read with ``torch.load(weights_only=True)``,
    so a file holding a pickled program is refused instead of run.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        root = Path(root)
        if (root / _KUAI).is_dir():
            base = root / _KUAI
        elif (root / "vit_feature1").is_dir() or (root / "ast_feature2p5").is_dir():
            base = root
        else:
            other = other_kind_error(root, "an MGSV-EC feature tree", "mgsv_sk.tree",
                                     "point at the release's root (holding features/"
                                     "Kuai_feature), or fetch it with mgsv_sk.fetch_mgsv_ec")
            if other is not None:
                raise other
            raise ArtifactNotFoundError(
                f"no MGSV-EC feature tree under {root!s}: expected {root / _KUAI!s} with "
                "vit_feature1/{vit_feature,vit_mask} and ast_feature2p5/{ast_feature,ast_mask}"
            )
        self.root = root
        self.base = base

    def _load(self, path: Path, what: str, item: str) -> Any:
        """The tensor in ``path``, memory-mapped where the file allows it: nothing is
        copied here, so its declared shape can be checked before any data is read."""
        import torch  # only the .pt tree needs torch

        # Only a name that does not exist is "missing"; a FIFO, folder, dangling link or
        # link loop is an error (never opened: a FIFO would block the read forever).
        try:
            regular_file(path, f"{what} file for {item}", FeatureError)
        except FileNotFoundError:
            raise MissingFeatureError(f"{what} file for {item} not found: {path!s}") from None
        try:
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as exc:
                if "mmap" not in str(exc):
                    raise
                # A legacy (pre-zip) file cannot be mapped; its data is read, but still
                # not copied or converted before the checks below.
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:  # weights_only refused a Python object
            raise FeatureError(
                f"refused to load {what} for {item} from {path!s}: the file holds pickled "
                "Python objects other than tensors, which could run code when loaded; "
                "weights_only=True blocked them and nothing was executed. Re-save the "
                "feature as a plain tensor (torch.save(tensor, path)) from a trusted source"
            ) from exc
        except Exception as exc:  # torch raises many types for truncated/unsafe files
            raise FeatureError(
                f"cannot read {what} for {item} at {path!s}: {type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''} (corrupt, truncated, or "
                "not a tensor file saved with torch.save)"
            ) from exc
        if not isinstance(obj, torch.Tensor):
            raise FeatureError(
                f"{what} for {item} at {path!s} holds a {type(obj).__name__}, expected a tensor"
            )
        if obj.is_complex() or obj.is_quantized or obj.is_sparse or obj.layout != torch.strided:
            raise FeatureError(
                f"{what} for {item} at {path!s} is a {obj.dtype} tensor ({obj.layout}), "
                "expected real numbers (float32); re-save it as a dense real tensor"
            )
        return obj.detach()

    def _path(self, folder: Path, key: str, kind: str) -> Path:
        """``<base>/<folder>/<key>.pt``, for a valid id only: the id is checked (the same
        rule as the annotation validator's) before any file is looked at, so an id such
        as ``../../x`` can neither open nor probe a file outside the tree."""
        _check_id(key, kind)
        return inside_root(self.base / folder, f"{key}.pt", kind, FeatureError)

    def _read(self, key: str, feat_dir: Path, mask_dir: Path, dim: int, what: str) -> np.ndarray:
        import torch

        kind = f"{what.split()[0]}_id"
        item = f"{kind} {key!r}"
        feat_path = self._path(feat_dir, key, kind)
        mask_path = self._path(mask_dir, key, kind)
        where = str(feat_path)
        feat = self._load(feat_path, what, item)
        shape = tuple(feat.shape)
        if len(shape) == 3 and shape[0] == 1:
            feat = feat[0]
        if feat.ndim != 2 or feat.shape[1] != dim:
            raise FeatureError(
                f"{what} at {where} has shape {shape}, expected (T, {dim}) or (1, T, {dim})"
            )
        n_rows = int(feat.shape[0])
        if n_rows > _MAX_STORED_ROWS:  # checked on the header: nothing was read
            raise FeatureError(
                f"{what} at {where} declares {n_rows} rows, more than the {_MAX_STORED_ROWS} "
                "a feature file may hold (the model reads at most "
                f"{MAX_VIDEO_FRAMES} frames / {MAX_MUSIC_SNIPPETS} snippets); the file is "
                "damaged or not a feature file"
            )
        if exists_as_name(mask_path):  # a mask that exists but cannot be read is an error
            mask = self._load(mask_path, f"{what} mask", item)
            if mask.numel() != n_rows:
                raise FeatureError(
                    f"mask of {what} at {where} has shape {tuple(mask.shape)}, expected "
                    f"({n_rows},) to match the feature's rows"
                )
            rows = _valid_rows(mask.numpy() if mask.dtype == torch.bool
                               else mask.to(torch.float64).numpy(), n_rows, what, where)
        else:
            rows = np.arange(n_rows)
        if len(rows) == 0:
            raise FeatureError(f"{what} at {where} has no valid rows; every item needs at "
                               "least one")
        # The length limits are applied to the row count, before any row is copied.
        cut = what.startswith("music") and len(rows) > MAX_MUSIC_SNIPPETS
        if what.startswith("video") and len(rows) > MAX_VIDEO_FRAMES:
            _cap_rows(np.empty((len(rows), 0)), what, where)  # raises the usual error
        rows = rows[:MAX_MUSIC_SNIPPETS] if cut else rows
        picked = feat[torch.from_numpy(rows.astype(np.int64))] if len(rows) != n_rows else feat
        # A copy: the result must not stay backed by the memory-mapped file.
        arr = _check_array(np.array(picked.to(torch.float32).numpy()), dim, what, where)
        if cut:
            _warn_cut([key])
        return arr

    def video(self, video_id: str) -> np.ndarray:
        return self._read(str(video_id), _VIDEO_FEAT, _VIDEO_MASK, VIDEO_DIM, "video features")

    def music(self, music_id: str) -> np.ndarray:
        return self._read(str(music_id), _MUSIC_FEAT, _MUSIC_MASK, MUSIC_DIM, "music features")

    # A name that exists (even a broken link) is "present": reading it then says what is
    # wrong with it instead of reporting the feature as missing.
    def has_video(self, video_id: str) -> bool:
        return exists_as_name(self._path(_VIDEO_FEAT, str(video_id), "video_id"))

    def has_music(self, music_id: str) -> bool:
        return exists_as_name(self._path(_MUSIC_FEAT, str(music_id), "music_id"))

    def video_ids(self) -> list[str]:
        return sorted(p.stem for p in (self.base / _VIDEO_FEAT).glob("*.pt"))

    def music_ids(self) -> list[str]:
        return sorted(p.stem for p in (self.base / _MUSIC_FEAT).glob("*.pt"))

    def __repr__(self) -> str:
        return f"FeatureTree({str(self.root)!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (reopen_source, (type(self), "feature tree", self.root))


