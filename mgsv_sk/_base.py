"""What every grounder of the package shares: feature resolution, SmG/MsG prediction,
top-k ranking and the default score.

A grounder implements three hooks, all on validated frames and string ids:

- ``_retrieval_scores(frame, source, music_ids) -> (n, g)``: score each video against
  each track;
- ``_ground(frame, source, music_ids, seconds, moments) -> (start, end, moment_score)``:
  up to ``moments`` non-overlapping moments of each video (``seconds[i]`` long) on the
  track given for it, best first (seconds; each shape (n, moments), NaN-padded);
- ``_pair_scores(frame, source, music_ids) -> (n,)``: the retrieval score of each
  (video, its given track) pair.

and keeps ``catalogue_ids_`` (the music collection MsG and ``rank`` search).
"""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from ._schema import PREDICT_COLUMNS, validate_annotations, video_durations
from .core.moments import check_moments, window_lists
from .features import FeatureSource, as_feature_source

__all__ = ["BaseGrounder", "PREDICTION_COLUMNS", "RANK_COLUMNS"]

#: Columns of :meth:`BaseGrounder.predict`'s output.
PREDICTION_COLUMNS = ("music_id", "start", "end", "score", "moment_score")
#: Columns of :meth:`BaseGrounder.rank`'s output.
RANK_COLUMNS = ("video_id", "rank", "music_id", "score", "start", "end", "moment_score")


class BaseGrounder(BaseEstimator):
    """Shared plumbing; see the module docstring for the hooks a subclass provides."""

    features: Any
    catalogue_ids_: list[str]

    # -- hooks ----------------------------------------------------------------------
    def _retrieval_scores(
        self, frame: pd.DataFrame, source: FeatureSource, music_ids: list[str]
    ) -> np.ndarray:
        raise NotImplementedError

    def _ground(
        self, frame: pd.DataFrame, source: FeatureSource, music_ids: list[str],
        seconds: np.ndarray, moments: int,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _pair_scores(
        self, frame: pd.DataFrame, source: FeatureSource, music_ids: list[str]
    ) -> np.ndarray:
        raise NotImplementedError

    # -- plumbing -------------------------------------------------------------------
    def _source(self, features: Any = None) -> FeatureSource:
        """The feature source of a call: the argument, else the ``features`` parameter."""
        chosen = features if features is not None else getattr(self, "features", None)
        if chosen is None:
            raise ValueError(
                f"{type(self).__name__} has no feature source: pass features= to the "
                "constructor or to this call (a packed store path, an MGSV-EC feature tree "
                "path, or a FeatureSource)"
            )
        return as_feature_source(chosen)

    @staticmethod
    def _frame(X: Any, required: tuple[str, ...] = PREDICT_COLUMNS, *,
               keep_duplicates: bool = True) -> pd.DataFrame:
        """The validated frame, one row per row of ``X`` (a prediction answers every row,
        repeated ones included; ``fit`` passes ``keep_duplicates=False``)."""
        return validate_annotations(X, required, source="X", keep_duplicates=keep_duplicates)

    def predict(self, X: pd.DataFrame, features: Any = None, *,
                moments_per_track: int = 1) -> pd.DataFrame:
        """Ground each video: on its own track (SmG) or on the best catalogue track (MsG).

        Parameters
        ----------
        X : DataFrame
            MGSV-EC rows. With a ``music_id`` column each video is grounded on that track
            (single-music grounding); without it the best track of the catalogue is
            retrieved first and the moment is computed on **that** track (music-set
            grounding).
        features : feature source, optional
            Overrides the estimator's ``features`` for this call.
        moments_per_track : int
            Up to this many non-overlapping moments per video, best first (default 1).

        Returns
        -------
        DataFrame
            Indexed like ``X``; columns ``music_id``, ``start``, ``end`` (seconds, the best
            moment), ``score`` (retrieval score of the pair) and ``moment_score`` (the
            moment head's probability that the track holds a fitting moment, at the best
            moment). With ``moments_per_track > 1`` also ``windows``: per row a list of
            ``[start, end, moment_score]``, best first, at most ``moments_per_track`` long.
        """
        check_is_fitted(self)
        moments = check_moments(moments_per_track)
        frame = self._frame(X)
        source = self._source(features)
        if "music_id" in frame.columns:
            music_ids = frame["music_id"].tolist()
            scores = self._pair_scores(frame, source, music_ids)
        else:
            table = self._retrieval_scores(frame, source, self.catalogue_ids_)
            best = np.argmax(table, axis=1)
            music_ids = [self.catalogue_ids_[i] for i in best]
            scores = table[np.arange(len(frame)), best]
        start, end, moment = self._ground(frame, source, music_ids,
                                          moment_lengths(frame, source), moments)
        out = pd.DataFrame(
            {"music_id": music_ids, "start": start[:, 0], "end": end[:, 0], "score": scores,
             "moment_score": moment[:, 0]},
            index=X.index,
            columns=list(PREDICTION_COLUMNS),
        )
        if moments > 1:
            out["windows"] = window_lists(start, end, moment)
        return out

    def decision_function(
        self, X: pd.DataFrame, features: Any = None, music_ids: Any = None
    ) -> np.ndarray:
        """Retrieval scores of every video against every track, shape (n_videos, n_tracks).

        Columns follow ``catalogue_ids_``, or ``music_ids`` when given (any tracks the
        feature source holds: the protocol scores a split against its own tracks).
        """
        check_is_fitted(self)
        frame = self._frame(X)
        gallery = self.catalogue_ids_ if music_ids is None else [str(m) for m in music_ids]
        return self._retrieval_scores(frame, self._source(features), gallery)

    def rank(self, X: pd.DataFrame, k: int = 10, features: Any = None, *,
             moments_per_track: int = 1) -> pd.DataFrame:
        """Top-``k`` catalogue tracks per video with their scores and the moment on each.

        Returns
        -------
        DataFrame
            ``k`` rows per video (fewer if the catalogue is smaller), sorted by video then
            rank (1 = best): ``video_id``, ``rank``, ``music_id``, ``score``, ``start``,
            ``end``, ``moment_score`` (the best moment on that track). With
            ``moments_per_track > 1`` also ``windows``: per row up to that many
            non-overlapping ``[start, end, moment_score]`` on the track, best first.
        """
        check_is_fitted(self)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        moments = check_moments(moments_per_track)
        frame = self._frame(X)
        source = self._source(features)
        table = self._retrieval_scores(frame, source, self.catalogue_ids_)
        k = min(int(k), table.shape[1])
        top = top_k_indices(table, k)  # (n, k), best first
        rows = np.repeat(np.arange(len(frame)), k)
        expanded = frame.iloc[rows].reset_index(drop=True).drop(columns="music_id",
                                                                errors="ignore")
        music_ids = [self.catalogue_ids_[i] for i in top.ravel()]
        seconds = moment_lengths(frame, source)[rows]
        start, end, moment = self._ground(expanded, source, music_ids, seconds, moments)
        out = pd.DataFrame(
            {
                "video_id": expanded["video_id"].to_numpy(),
                "rank": np.tile(np.arange(1, k + 1), len(frame)),
                "music_id": music_ids,
                "score": np.take_along_axis(table, top, axis=1).ravel(),
                "start": start[:, 0],
                "end": end[:, 0],
                "moment_score": moment[:, 0],
            },
            columns=list(RANK_COLUMNS),
        )
        if moments > 1:
            out["windows"] = window_lists(start, end, moment)
        return out

    def _index_catalogue(self, music_ids: list[str], source: FeatureSource) -> None:
        """Hook: precompute whatever serving a catalogue needs (default: nothing)."""

    def set_catalogue(self, music_ids: Any, features: Any = None) -> BaseGrounder:
        """Serve a different music collection: MsG ``predict`` and ``rank`` search these
        tracks from now on. Features of the tracks are read (and, for the neural model,
        encoded) once here, from ``features`` or the estimator's source."""
        check_is_fitted(self)
        ids = list(dict.fromkeys(str(m) for m in music_ids))
        if not ids:
            raise ValueError("set_catalogue needs at least one music_id")
        source = self._source(features)
        source.check_available([], ids)
        self._index_catalogue(ids, source)
        self.catalogue_ids_ = ids
        return self

    def score(self, X: pd.DataFrame, y: Any = None) -> float:
        """SmG mIoU on ``X`` (ground truth read from its columns): the task's headline
        grounding figure. For other metrics use :func:`mgsv_sk.scoring.get_scorer`."""
        check_is_fitted(self)
        from .scoring import get_scorer

        return float(get_scorer("miou")(self, X))


def new_fit_token() -> str:
    """A fresh id for a fit: scorers reuse one prediction pass only within one fit."""
    return uuid.uuid4().hex


def top_k_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the ``k`` best scores per row, best first, shape (n, k).

    Ties keep the lower column first (a stable order), so results are reproducible.
    """
    n, g = scores.shape
    k = min(k, g)
    if k < g:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        part = np.tile(np.arange(g), (n, 1))
    part.sort(axis=1)  # stable tie order by column before the score sort
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def moment_lengths(frame: pd.DataFrame, source: FeatureSource) -> np.ndarray:
    """Seconds of each video (the moment's length): from the frame's columns, else the
    number of valid frames (1 fps)."""
    try:
        return video_durations(frame)
    except ValueError:
        return source.video_lengths(frame["video_id"]).astype(np.float64)
