"""Feature sources: the interface (:class:`FeatureSource`), the per-item checks every
source applies, arrays held in memory, and any object with ``video(id)`` / ``music(id)``
methods adapted to the interface. Torch-free; see :mod:`mgsv_sk.data.features`."""

from __future__ import annotations

import logging
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from mgsv_sk.data._schema import id_problem
from mgsv_sk.data.spans import MAX_MUSIC_SNIPPETS, MAX_VIDEO_FRAMES
from mgsv_sk.errors import InvalidInputError

logger = logging.getLogger(__name__)

VIDEO_DIM = 512
MUSIC_DIM = 768


class FeatureError(InvalidInputError):
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


def require_finite(ids: Sequence[str], bad: np.ndarray, kind: str) -> None:
    """Refuse the items whose encodings (or model outputs) are not finite, naming them:
    finite but extreme features overflow float32, and a NaN never reaches a result or a
    catalogue."""
    if bad.any():
        names = [ids[int(i)] for i in np.flatnonzero(bad)]
        raise FeatureError(
            f"the features of {len(names)} {kind}(s) {names[:5]} give non-finite model "
            "outputs: they hold values too large for float32 arithmetic; the features are "
            "expected to be embeddings of moderate scale (CLIP / AST outputs): rescale or "
            "re-extract them"
        )


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

    # Checked at construction: the lengths need no read.
    def video_lengths(self, video_ids: Iterable[str]) -> np.ndarray:
        return np.array([len(InMemoryFeatures.video(self, v)) for v in video_ids], np.int64)

    def music_lengths(self, music_ids: Iterable[str]) -> np.ndarray:
        return np.array([len(InMemoryFeatures.music(self, m)) for m in music_ids], np.int64)

    def video_ids(self) -> list[str]:
        return list(self._videos)

    def music_ids(self) -> list[str]:
        return list(self._music)

    def __repr__(self) -> str:
        return f"InMemoryFeatures({len(self._videos)} videos, {len(self._music)} tracks)"




class ReaderFeatures(FeatureSource):
    """Any object with ``video(id)`` and ``music(id)`` methods returning ``[T, D]`` arrays,
    as a :class:`FeatureSource`: each item is checked as the built-in sources check theirs
    (shape, dtype, finite values, the 50-frame and 240 s limits)."""

    def __init__(self, reader: Any) -> None:
        self.reader = reader

    def _get(self, fetch: Any, key: str, what: str, dim: int) -> np.ndarray:
        where = f"id {str(key)!r}"
        try:
            raw = fetch(key)
        except (KeyError, LookupError, FileNotFoundError):
            raise MissingFeatureError(f"no {what} for id {key!r} in {self.reader!r}") from None
        arr, cut = _cap_rows(_check_array(np.asarray(raw), dim, what, where), what, where)
        if cut:
            _warn_cut([str(key)])
        return arr

    def video(self, video_id: str) -> np.ndarray:
        return self._get(self.reader.video, video_id, "video features", self.video_dim)

    def music(self, music_id: str) -> np.ndarray:
        return self._get(self.reader.music, music_id, "music features", self.music_dim)

    def __repr__(self) -> str:
        return repr(self.reader)


class UnavailableSource(FeatureSource):
    """A feature source that could not be reopened where it was (a model unpickled after
    its store moved or was deleted). Loading the model succeeds; any read raises a
    ``FileNotFoundError`` saying how to point the model at the new location."""

    def __init__(self, kind: str, path: str, reason: str) -> None:
        self.kind, self.path, self.reason = kind, path, reason

    def _fail(self) -> MissingFeatureError:
        return MissingFeatureError(
            f"the {self.kind} at {self.path} cannot be opened ({self.reason}); if it "
            "moved, point the model at its new location: model.set_params(features=NEW_PATH) "
            "(or pass features= to the call)")

    def video(self, video_id: str) -> np.ndarray:
        raise self._fail()

    def music(self, music_id: str) -> np.ndarray:
        raise self._fail()

    def has_video(self, video_id: str) -> bool:  # never "absent": the source is unusable
        raise self._fail()

    def has_music(self, music_id: str) -> bool:
        raise self._fail()

    def video_lengths(self, video_ids: Iterable[str]) -> np.ndarray:
        raise self._fail()

    def music_lengths(self, music_ids: Iterable[str]) -> np.ndarray:
        raise self._fail()

    def video_ids(self) -> list[str]:
        raise self._fail()

    def music_ids(self) -> list[str]:
        raise self._fail()

    def __repr__(self) -> str:
        return f"UnavailableSource({self.kind} at {self.path!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (reopen_source, (self.kind, self.path))


def reopen_source(cls: Any, kind: str, path: Any) -> FeatureSource:
    """Unpickle a path-backed source: ``cls(path)`` again (the store or tree at ``path``;
    the class comes with the pickle, so this module names none of them), or (it moved, or
    is damaged) an :class:`UnavailableSource` of that ``kind`` saying so, so the object
    holding it still loads and can be pointed elsewhere."""
    try:
        return cls(path)
    except (OSError, ValueError) as exc:
        return UnavailableSource(kind, str(path), f"{type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0][:200] if str(exc) else ''}")


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
