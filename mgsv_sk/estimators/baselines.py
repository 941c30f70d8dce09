"""Reference grounders every model must beat: the trivial predictor and a ridge baseline.

Both follow the :class:`~mgsv_sk.MGSVGrounder` API (``fit`` / ``predict`` SmG and MsG /
``rank`` / ``decision_function`` / ``score``), so the scorers and benchmarks treat all
grounders alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Real
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from sklearn.linear_model import Ridge
from sklearn.utils.validation import check_is_fitted

from mgsv_sk.data._schema import FIT_COLUMNS
from mgsv_sk.data.features import FeatureSource
from mgsv_sk.data.spans import MAX_MUSIC_SECONDS, SNIPPET_HOP_SECONDS
from mgsv_sk.errors import InvalidInputError
from mgsv_sk.grounding import Videos, new_fit_token
from mgsv_sk.grounding.moments import select_windows
from mgsv_sk.grounding.sklearn_base import GrounderEstimator
from mgsv_sk.grounding.validation import Interval
from mgsv_sk.search import TrackIndex

__all__ = ["RidgeGrounder", "TrivialGrounder"]


class _TrackIds(GrounderEstimator[Videos, TrackIndex]):
    """A baseline's catalogue: the track ids only (tracks are read when scored)."""

    def _served_catalogue(self) -> TrackIndex:
        return TrackIndex(self.catalogue_ids_)

    def _encode_catalogue(self, music_ids: list[str], source: FeatureSource) -> TrackIndex:
        return TrackIndex(music_ids)

    def _serve(self, catalogue: TrackIndex) -> None:
        self.catalogue_ids_ = list(catalogue.ids)


class TrivialGrounder(_TrackIds[int]):
    """Predicts the moment ``[0, video duration]`` for every video.

    It scores SmG mIoU 0.478 on the real MGSV-EC test split. Its retrieval scores are
    seeded random numbers (chance level: R@k about k / gallery size).

    Parameters
    ----------
    features : feature source, optional
        Only read when the frame lacks video durations (then: the number of frames).
    random_state : int
        Seed of the chance-level retrieval scores.
    """

    _parameter_constraints: ClassVar[dict[str, Any]] = {
        "features": "no_validation",
        "random_state": ["random_state"],
    }

    def __init__(self, features: Any = None, random_state: int = 0) -> None:
        self.features = features
        self.random_state = random_state

    def fit(self, X: pd.DataFrame, y: Any = None) -> TrivialGrounder:
        self._check_params()
        frame = self._frame(X, FIT_COLUMNS, keep_duplicates=False)
        self.catalogue_ids_ = list(pd.unique(frame["music_id"]))
        self.fit_token_ = new_fit_token()
        return self

    def _encode_videos(self, frame: pd.DataFrame, source: Any) -> int:
        return len(frame)

    def _scores(self, videos: int, catalogue: TrackIndex) -> np.ndarray:
        rng = np.random.default_rng(self.random_state)
        return rng.random((videos, len(catalogue)))

    def _pair_scores(self, videos: int, rows: np.ndarray, catalogue: TrackIndex) -> np.ndarray:
        return np.full(len(rows), 0.5)

    def _ground(self, videos: int, video_rows: np.ndarray, catalogue: TrackIndex,
                track_rows: np.ndarray, seconds: np.ndarray,
                moments: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = len(video_rows)
        start, end, score = (np.full((n, moments), np.nan) for _ in range(3))
        start[:, 0], end[:, 0], score[:, 0] = 0.0, np.minimum(seconds, MAX_MUSIC_SECONDS), 1.0
        return start, end, score

    def _source(self, features: Any = None) -> Any:
        if features is None and self.features is None:
            return _NoFeatures()
        return super()._source(features)


class _NoFeatures(FeatureSource):
    """No features: the durations must come from the frame."""

    def check_available(self, video_ids: Any, music_ids: Any) -> None:
        pass

    def video(self, video_id: str) -> np.ndarray:
        raise InvalidInputError(
            "TrivialGrounder needs video durations: add 'video_segment_duration' (or "
            "'video_start' and 'video_end') to X, or pass features="
        )

    def music(self, music_id: str) -> np.ndarray:
        return self.video(music_id)


def _window_means(snippets: np.ndarray, length_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean snippet feature of every window of ``length_s`` seconds starting on a snippet
    centre, and the windows' starts in seconds.

    snippets (S, D) -> means (W, D), starts (W,)
    """
    n = len(snippets)
    width = max(1, int(round(length_s / SNIPPET_HOP_SECONDS)) + 1)  # centres inside the window
    width = min(width, n)
    csum = np.vstack([np.zeros((1, snippets.shape[1])), np.cumsum(snippets, axis=0)])
    first = np.arange(0, n - width + 1)
    means = (csum[first + width] - csum[first]) / width
    return means, first * SNIPPET_HOP_SECONDS


class RidgeGrounder(_TrackIds["_RidgeVideos"]):
    """A linear baseline: ridge maps from a video's mean frame feature to its track's mean
    snippet feature (retrieval, by cosine) and to its moment's mean snippet feature
    (grounding, by sliding a window of the video's length over the track).

    Parameters
    ----------
    features : feature source, optional
        Default feature source of ``fit`` / ``predict``.
    alpha : float
        Ridge penalty of both maps.
    """

    _parameter_constraints: ClassVar[dict[str, Any]] = {
        "features": "no_validation",
        "alpha": [Interval(Real, 0, None, closed="left")],
    }

    def __init__(self, features: Any = None, alpha: float = 10.0) -> None:
        self.features = features
        self.alpha = alpha

    def fit(self, X: pd.DataFrame, y: Any = None, features: Any = None) -> RidgeGrounder:
        self._check_params()
        frame = self._frame(X, FIT_COLUMNS, keep_duplicates=False)
        source = self._source(features)
        source.check_available(frame["video_id"], pd.unique(frame["music_id"]))
        video = self._video_means(frame, source)
        track_mean, moment_mean = [], []
        for mid, start, end in zip(frame["music_id"], frame["music_start"], frame["music_end"]):
            snip = source.music(mid)
            centres = np.arange(len(snip)) * SNIPPET_HOP_SECONDS
            inside = (centres >= start) & (centres <= end)
            track_mean.append(snip.mean(axis=0))
            moment_mean.append(snip[inside].mean(axis=0) if inside.any() else snip.mean(axis=0))
        self.video_mean_ = video.mean(axis=0)
        self.music_mean_ = np.mean(track_mean, axis=0)
        self.retrieval_map_ = Ridge(alpha=self.alpha).fit(video - self.video_mean_,
                                                          np.asarray(track_mean) - self.music_mean_)
        self.moment_map_ = Ridge(alpha=self.alpha).fit(video - self.video_mean_,
                                                       np.asarray(moment_mean) - self.music_mean_)
        self.catalogue_ids_ = list(pd.unique(frame["music_id"]))
        self.fit_token_ = new_fit_token()
        return self

    @staticmethod
    def _video_means(frame: pd.DataFrame, source: FeatureSource) -> np.ndarray:
        return np.stack([source.video(v).mean(axis=0) for v in frame["video_id"]])

    def _embed_tracks(self, source: FeatureSource, music_ids: list[str]) -> np.ndarray:
        means = np.stack([source.music(m).mean(axis=0) for m in music_ids]) - self.music_mean_
        return means / np.linalg.norm(means, axis=1, keepdims=True).clip(1e-12)

    def _encode_videos(self, frame: pd.DataFrame, source: FeatureSource) -> _RidgeVideos:
        means = self._video_means(frame, source) - self.video_mean_
        return _RidgeVideos(_unit(self.retrieval_map_.predict(means)),
                            _unit(self.moment_map_.predict(means)), source)

    def _scores(self, videos: _RidgeVideos, catalogue: TrackIndex) -> np.ndarray:
        check_is_fitted(self)
        return np.asarray(videos.retrieval @ self._embed_tracks(videos.source, catalogue.ids).T)

    def _pair_scores(self, videos: _RidgeVideos, rows: np.ndarray,
                     catalogue: TrackIndex) -> np.ndarray:
        tracks = self._embed_tracks(videos.source, [catalogue.ids[r] for r in rows])
        return np.asarray(np.einsum("nd,nd->n", videos.retrieval, tracks))

    def _ground(self, videos: _RidgeVideos, video_rows: np.ndarray, catalogue: TrackIndex,
                track_rows: np.ndarray, seconds: np.ndarray,
                moments: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        out = [np.full((len(video_rows), moments), np.nan) for _ in range(3)]
        for i, (v, t, length) in enumerate(zip(video_rows, track_rows, seconds)):
            means, starts = _window_means(videos.source.music(catalogue.ids[t]), float(length))
            means = means - self.music_mean_
            sims = means @ videos.moment[v] / np.linalg.norm(means, axis=1).clip(1e-12)
            # logit whose sigmoid is (cosine + 1) / 2, the baseline's confidence
            sims = np.clip(sims, -1 + 1e-9, 1 - 1e-9)
            logits = np.log1p(sims) - np.log1p(-sims)
            picked = select_windows(starts[None], starts[None] + length, logits[None], moments)
            for col, value in zip(out, picked):
                col[i] = value[0]
        return out[0], out[1], out[2]


def _unit(x: np.ndarray) -> np.ndarray:
    return np.asarray(x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12))


@dataclass(frozen=True)
class _RidgeVideos:
    """Videos of one call mapped by the two ridge maps (unit norm), and their source."""

    retrieval: np.ndarray
    moment: np.ndarray
    source: FeatureSource
