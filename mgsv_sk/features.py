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
import pickle
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ._atomic import PACKED_STORE, atomic_directory, check_destination
from ._schema import id_problem, validate_annotations
from .spans import MAX_MUSIC_SNIPPETS, MAX_VIDEO_FRAMES

__all__ = [
    "FeatureError",
    "FeatureSource",
    "FeatureTree",
    "InMemoryFeatures",
    "PackedFeatures",
    "as_feature_source",
    "pack_features",
]

logger = logging.getLogger(__name__)

VIDEO_DIM = 512
MUSIC_DIM = 768
_KUAI = Path("features") / "Kuai_feature"
_VIDEO_FEAT = Path("vit_feature1") / "vit_feature"
_VIDEO_MASK = Path("vit_feature1") / "vit_mask"
_MUSIC_FEAT = Path("ast_feature2p5") / "ast_feature"
_MUSIC_MASK = Path("ast_feature2p5") / "ast_mask"
_PACK_FORMAT = "mgsv_sk.packed/1"
#: A .pt feature file declaring more rows than this is refused from its header alone.
_MAX_STORED_ROWS = 100_000


class FeatureError(ValueError):
    """A feature is missing, unreadable or malformed; the message names the id and path."""


class FeatureSource(ABC):
    """Where per-video frame features and per-track snippet features come from.

    Subclasses implement :meth:`video` and :meth:`music`; both return float32 arrays of
    the valid rows only (at least one row), and raise :class:`FeatureError` (or
    ``FileNotFoundError``/``KeyError`` subclasses of it) naming the id.

    The built-in sources also apply the model's length limits: a video of more than 50
    frames (1 per second) is refused with a :class:`FeatureError`; a track of more than 96
    snippets is cut to its first 240 s with a ``UserWarning``, as the protocol never
    evaluates past 240 s.
    """

    video_dim: int = VIDEO_DIM
    music_dim: int = MUSIC_DIM

    @abstractmethod
    def video(self, video_id: str) -> np.ndarray:
        """Valid frame features of one video, shape (F, video_dim), float32."""

    @abstractmethod
    def music(self, music_id: str) -> np.ndarray:
        """Valid snippet features of one track, shape (S, music_dim), float32."""

    def videos(self, video_ids: Iterable[str]) -> list[np.ndarray]:
        return [self.video(v) for v in video_ids]

    def musics(self, music_ids: Iterable[str]) -> list[np.ndarray]:
        return [self.music(m) for m in music_ids]

    def video_lengths(self, video_ids: Iterable[str]) -> np.ndarray:
        """Number of valid frames per video, shape (n,) int64."""
        return np.array([len(self.video(v)) for v in video_ids], dtype=np.int64)

    def music_lengths(self, music_ids: Iterable[str]) -> np.ndarray:
        """Number of valid snippets per track, shape (n,) int64."""
        return np.array([len(self.music(m)) for m in music_ids], dtype=np.int64)

    def check_available(self, video_ids: Iterable[str], music_ids: Iterable[str]) -> None:
        """Raise one :class:`FeatureError` listing every id this source cannot serve."""
        missing_v = [v for v in video_ids if not self.has_video(v)]
        missing_m = [m for m in music_ids if not self.has_music(m)]
        if missing_v or missing_m:
            parts = []
            if missing_v:
                parts.append(f"{len(missing_v)} video(s) {missing_v[:5]}")
            if missing_m:
                parts.append(f"{len(missing_m)} track(s) {missing_m[:5]}")
            raise FeatureError(
                f"{self!r} has no features for " + " and ".join(parts)
                + "; point the estimator at the feature source that covers this frame"
            )

    # A malformed feature (FeatureError) is not a missing one: it propagates with its
    # own message instead of being reported as absent.
    def has_video(self, video_id: str) -> bool:
        try:
            self.video(video_id)
        except (FileNotFoundError, KeyError):
            return False
        return True

    def has_music(self, music_id: str) -> bool:
        try:
            self.music(music_id)
        except (FileNotFoundError, KeyError):
            return False
        return True

    # Sources are read-only, so clones and deep copies (sklearn.clone) share them.
    def __deepcopy__(self, memo: dict[int, Any]) -> FeatureSource:
        return self


class MissingFeatureError(FeatureError, FileNotFoundError, KeyError):
    """No feature for this id in this source."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def _check_id(key: str, kind: str) -> None:
    """Refuse an id that cannot name a feature file (see ``mgsv_sk._schema.id_problem``)."""
    why = id_problem(key)
    if why is not None:
        shown = f"{key[:60]!r}{'...' if len(key) > 60 else ''}" if isinstance(key, str) else (
            repr(key))
        raise FeatureError(
            f"invalid {kind} {shown}: it {why}; ids are data, not paths: a non-empty string "
            "of at most 200 bytes without '/', '\\', control characters or a leading '..'"
        )


def _check_array(arr: np.ndarray, dim: int, what: str, where: str) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]  # [1, T, D] -> [T, D]
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise FeatureError(
            f"{what} at {where} has shape {tuple(arr.shape)}, expected (T, {dim}) or (1, T, {dim})"
        )
    if arr.shape[0] == 0:
        raise FeatureError(f"{what} at {where} has no valid rows; every item needs at least one")
    if arr.dtype != np.bool_ and (not np.issubdtype(arr.dtype, np.number)
                                  or np.issubdtype(arr.dtype, np.complexfloating)):
        raise FeatureError(
            f"{what} at {where} has dtype {arr.dtype}, expected real numbers (float32); "
            "pass the feature arrays themselves"
        )
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise FeatureError(f"{what} at {where} contains NaN or inf (as float32); re-extract "
                           "this feature")
    return arr


def _cap_rows(arr: np.ndarray, what: str, where: str) -> tuple[np.ndarray, bool]:
    """Apply the model's length limits: a video has at most 50 frames (1 fps), else
    :class:`FeatureError`; a track's snippets past 240 s (96 of 2.5 s) are dropped, as the
    protocol never evaluates past 240 s. Returns the array and whether it was cut."""
    if what.startswith("video") and len(arr) > MAX_VIDEO_FRAMES:
        raise FeatureError(
            f"{what} at {where} has {len(arr)} frames, more than the {MAX_VIDEO_FRAMES} "
            f"(1 per second, {MAX_VIDEO_FRAMES} s) the model reads; trim the video to "
            f"{MAX_VIDEO_FRAMES} s or sample {MAX_VIDEO_FRAMES} frames before extracting features"
        )
    if what.startswith("music") and len(arr) > MAX_MUSIC_SNIPPETS:
        return arr[:MAX_MUSIC_SNIPPETS], True
    return arr, False


def _warn_cut(ids: list[str]) -> None:
    if ids:
        warnings.warn(
            f"{len(ids)} track(s) have more than {MAX_MUSIC_SNIPPETS} snippets (240 s), e.g. "
            f"{ids[:5]}: their features are cut at 240 s, where the MGSV protocol stops",
            UserWarning, stacklevel=3,
        )


def _valid_rows(mask: np.ndarray, n_rows: int, what: str, where: str) -> np.ndarray:
    """Indices of the rows a mask marks valid. A mask has one value per row (shape (T,) or
    (1, T)) and holds only 0 (padding) and 1 (valid); anything else is refused."""
    mask = np.asarray(mask)
    if mask.ndim == 2 and mask.shape[0] == 1:
        mask = mask[0]
    if mask.ndim != 1 or mask.shape[0] != n_rows:
        raise FeatureError(
            f"mask of {what} at {where} has shape {tuple(mask.shape)}, expected ({n_rows},)"
            " to match the feature's rows"
        )
    if mask.dtype != np.bool_ and (not np.issubdtype(mask.dtype, np.number)
                                   or np.issubdtype(mask.dtype, np.complexfloating)):
        raise FeatureError(f"mask of {what} at {where} has dtype {mask.dtype}, expected 0/1 "
                           "(bool, integer or float)")
    if mask.dtype != np.bool_:
        if not np.isfinite(mask).all():
            raise FeatureError(f"mask of {what} at {where} contains NaN or inf")
        other = (mask != 0) & (mask != 1)
        if other.any():
            raise FeatureError(
                f"mask of {what} at {where} holds {np.unique(mask[other])[:5].tolist()}, "
                "not only 0 and 1; a mask marks valid rows with 1 and padding with 0: "
                "re-extract it or pass a 0/1 mask"
            )
    return np.flatnonzero(mask)


def _apply_mask(feat: np.ndarray, mask: np.ndarray | None, what: str, where: str) -> np.ndarray:
    if feat.ndim == 3 and feat.shape[0] == 1:
        feat = feat[0]
    if mask is None:
        return feat
    if feat.ndim != 2:
        raise FeatureError(
            f"{what} at {where} has shape {tuple(feat.shape)}, expected (T, D) or (1, T, D)"
        )
    return feat[_valid_rows(mask, feat.shape[0], what, where)]


class InMemoryFeatures(FeatureSource):
    """Features held in dictionaries of arrays.

    Parameters
    ----------
    videos, music : mapping of id -> array
        ``[F, 512]`` (or ``[1, F, 512]``) frames per video and ``[S, 768]`` snippets per
        track; ids are converted to strings.
    video_masks, music_masks : mapping of id -> array, optional
        1 for valid rows, 0 for padding; rows with mask 0 are dropped.

    Examples
    --------
    >>> src = InMemoryFeatures({"v": np.ones((3, 512))}, {"m": np.ones((4, 768))})
    >>> src.video("v").shape, src.music("m").dtype
    ((3, 512), dtype('float32'))
    """

    def __init__(
        self,
        videos: Mapping[Any, np.ndarray],
        music: Mapping[Any, np.ndarray],
        video_masks: Mapping[Any, np.ndarray] | None = None,
        music_masks: Mapping[Any, np.ndarray] | None = None,
    ) -> None:
        self._videos = self._prepare(videos, video_masks, VIDEO_DIM, "video features")
        self._music = self._prepare(music, music_masks, MUSIC_DIM, "music features")

    @staticmethod
    def _prepare(
        items: Mapping[Any, np.ndarray],
        masks: Mapping[Any, np.ndarray] | None,
        dim: int,
        what: str,
    ) -> dict[str, np.ndarray]:
        out = {}
        cut = []
        for key, value in items.items():
            where = f"id {str(key)!r}"
            arr = np.asarray(value)
            mask = None if masks is None else masks.get(key)
            arr = _apply_mask(arr, mask, what, where)
            out[str(key)], was_cut = _cap_rows(_check_array(arr, dim, what, where), what, where)
            if was_cut:
                cut.append(str(key))
        _warn_cut(cut)
        return out

    def video(self, video_id: str) -> np.ndarray:
        try:
            return self._videos[str(video_id)]
        except KeyError:
            raise MissingFeatureError(f"no video features for video_id {video_id!r}") from None

    def music(self, music_id: str) -> np.ndarray:
        try:
            return self._music[str(music_id)]
        except KeyError:
            raise MissingFeatureError(f"no music features for music_id {music_id!r}") from None

    def has_video(self, video_id: str) -> bool:
        return str(video_id) in self._videos

    def has_music(self, music_id: str) -> bool:
        return str(music_id) in self._music

    def video_ids(self) -> list[str]:
        return list(self._videos)

    def music_ids(self) -> list[str]:
        return list(self._music)

    def __repr__(self) -> str:
        return f"InMemoryFeatures({len(self._videos)} videos, {len(self._music)} tracks)"


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
            raise FileNotFoundError(
                f"no MGSV-EC feature tree under {root!s}: expected {root / _KUAI!s} with "
                "vit_feature1/{vit_feature,vit_mask} and ast_feature2p5/{ast_feature,ast_mask}"
            )
        self.root = root
        self.base = base

    def _load(self, path: Path, what: str, item: str) -> Any:
        """The tensor in ``path``, memory-mapped where the file allows it: nothing is
        copied here, so its declared shape can be checked before any data is read."""
        import torch  # only the .pt tree needs torch

        if not path.is_file():
            raise MissingFeatureError(f"{what} file for {item} not found: {path!s}")
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
        directory = self.base / folder
        path = directory / f"{key}.pt"
        if path.parent != directory:  # cannot happen for a valid id; never open it anyway
            raise FeatureError(f"{kind} {key!r} does not name a file in {directory!s}")
        return path

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
        if mask_path.exists():
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

    def has_video(self, video_id: str) -> bool:
        return self._path(_VIDEO_FEAT, str(video_id), "video_id").is_file()

    def has_music(self, music_id: str) -> bool:
        return self._path(_MUSIC_FEAT, str(music_id), "music_id").is_file()

    def video_ids(self) -> list[str]:
        return sorted(p.stem for p in (self.base / _VIDEO_FEAT).glob("*.pt"))

    def music_ids(self) -> list[str]:
        return sorted(p.stem for p in (self.base / _MUSIC_FEAT).glob("*.pt"))

    def __repr__(self) -> str:
        return f"FeatureTree({str(self.root)!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (FeatureTree, (self.root,))


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
        meta = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"packed store {folder!s}: meta.json is corrupt ({exc}); re-run "
                    "pack_features") from exc
    except OSError as exc:
        raise error(f"packed store {folder!s}: cannot read meta.json ({exc})") from exc
    found = meta.get("format") if isinstance(meta, dict) else f"a JSON {type(meta).__name__}"
    if found != _PACK_FORMAT:
        raise error(f"{folder!s} is not a packed store of format {_PACK_FORMAT!r} (meta.json "
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
    actual = data_path.stat().st_size if data_path.is_file() else -1
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
        if not meta_path.is_file():
            raise FileNotFoundError(
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

    def __repr__(self) -> str:
        return f"PackedFeatures({str(self.path)!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (PackedFeatures, (self.path,))


def as_feature_source(obj: Any) -> FeatureSource:
    """Turn a path (packed store or release tree), a source, or ``(videos, music)`` dicts
    into a :class:`FeatureSource`."""
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
        raise ValueError(
            "no feature source given: pass features= a packed store path, an MGSV-EC "
            "feature tree path, or a FeatureSource (see mgsv_sk.features)"
        )
    raise TypeError(
        f"features must be a path, a FeatureSource or a (videos, music) pair of dicts, "
        f"got {type(obj).__name__}"
    )


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


def pack_features(
    source: Any,
    destination: str | os.PathLike[str],
    *,
    video_ids: Iterable[Any] | None = None,
    music_ids: Iterable[Any] | None = None,
    annotations: Any = None,
    overwrite: bool = False,
    verbose: bool = False,
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
        meta: dict[str, Any] = {"format": _PACK_FORMAT}
        meta["video"] = _write_table(tmp, "video", vids, src.video, src.video_dim, bar.update)
        meta["music"] = _write_table(tmp, "music", mids, src.music, src.music_dim, bar.update)
        bar.close()
        (tmp / "meta.json").write_text(json.dumps(meta))  # written last: marks completeness
    logger.info("packed %d videos and %d tracks into %s", len(vids), len(mids), dst)
    return PackedFeatures(dst)


def _unique_ids(ids: Iterable[Any] | None, src: FeatureSource, name: str) -> list[str]:
    if ids is None:
        lister = getattr(src, name, None)  # FeatureTree.video_ids(), ...
        if lister is None:
            raise ValueError(f"{src!r} cannot list its ids: pass {name}= or annotations=")
        out = [str(i) for i in lister()]
    else:
        out = list(dict.fromkeys(str(i) for i in ids))
    for key in out:  # the ids name files and are stored: the one id rule, up front
        _check_id(key, name[:-1])
    return out


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, verbose: bool, desc: str) -> Any:
    if not verbose:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="item")
