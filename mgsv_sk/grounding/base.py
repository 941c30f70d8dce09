"""The grounder every backend shares: ``predict`` (SmG and MsG), ``rank``,
``decision_function``, ``score`` and ``set_catalogue`` exist here once.

A backend (the torch model :class:`mgsv_sk.MGSVGrounder`, the onnxruntime
:class:`mgsv_sk.export.runtime.OnnxGrounder`, the baselines) implements the hooks below, all on
validated frames and string ids; the orchestration, the output columns, the tie rule and
the finiteness checks are this module's. A backend names the two types its hooks pass
around, ``BaseGrounder[Videos, Tracks]`` (its encoded videos; its catalogue, a
:class:`TrackIndex` or a search ``Catalogue``), so the contract below is type-checked:

- ``_encode_videos(frame, source) -> videos``: whatever the backend needs of the videos
  of one call (opaque here; encoded once per call, read by the other hooks);
- ``_served_catalogue() -> TrackIndex``: the tracks MsG ``predict`` and ``rank`` search;
- ``_encode_catalogue(music_ids, source) -> TrackIndex``: tracks encoded now (tracks
  outside the served catalogue, or a new catalogue for ``set_catalogue``);
- ``_serve(catalogue)``: make ``catalogue`` the served one;
- ``_scorer(catalogue) -> Scorer | None``: the pair score a catalogue's shards run
  (backends with an encoded catalogue only);
- ``_scores(videos, catalogue) -> (n, N)``: every video against every track;
- ``_pair_scores(videos, rows, catalogue) -> (n,)``: video i against track ``rows[i]``;
- ``_ground(videos, video_rows, catalogue, track_rows, seconds, moments)``: up to
  ``moments`` non-overlapping moments of video ``video_rows[i]`` (``seconds[i]`` long) on
  track ``track_rows[i]``, best first: start, end (seconds) and moment score, each
  (n, moments), NaN-padded.

Torch-free (numpy and pandas). scikit-learn is imported only by :class:`GrounderEstimator`
(the base of the trainable grounders) and by the fitted check of those, so the
onnxruntime backend imports without it.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator, Sequence
from typing import Any, Generic, TypeVar

import numpy as np
import pandas as pd

from mgsv_sk.data import PREDICT_COLUMNS, id_list, validate_annotations
from mgsv_sk.data.features import FeatureSource
from mgsv_sk.errors import InvalidInputError
from mgsv_sk.grounding.catalogues import CatalogueHolder, Tracks
from mgsv_sk.grounding.moments import check_moments, on_tracks, window_lists
from mgsv_sk.grounding.outputs import (
    PREDICTION_COLUMNS,
    RANK_COLUMNS,
    Moments,
    TopTracks,
    check_outputs,
    moment_lengths,
    track_seconds,
)
from mgsv_sk.search import (
    check_rerank,
    combined_scores,
    rerank_count,
    rerank_table,
    reranked,
    top_k_indices,
)

__all__ = ["BaseGrounder", "Tracks", "Videos", "new_fit_token"]

#: A backend's encoded videos of one call (what its hooks pass to each other).
Videos = TypeVar("Videos")
#: The ids :meth:`BaseGrounder.rank_frames` gives its videos (the answer's ``video_ids``).
_FRAME_VIDEO = "frames"


class BaseGrounder(CatalogueHolder[Tracks], Generic[Videos, Tracks]):
    """Shared plumbing; see the module docstring for the hooks a backend provides. A
    backend names its two types: ``BaseGrounder[its encoded videos, its catalogue]``."""

    #: Re-ranking of retrieval candidates by the moment score (:mod:`mgsv_sk.search.rerank`);
    #: a backend with a moment head overrides these (the torch model as parameters, the
    #: bundle from its manifest); 0 keeps the retrieval order.
    moment_weight: float | str = 0.0  # a backend may resolve a name ("auto")
    rerank_depth: int = 10

    # -- hooks ----------------------------------------------------------------------
    def _encode_videos(self, frame: pd.DataFrame, source: FeatureSource) -> Videos:
        raise NotImplementedError


    def _scores(self, videos: Videos, catalogue: Tracks) -> np.ndarray:
        raise NotImplementedError

    def _pair_scores(self, videos: Videos, rows: np.ndarray, catalogue: Tracks) -> np.ndarray:
        raise NotImplementedError

    def _ground(self, videos: Videos, video_rows: np.ndarray, catalogue: Tracks,
                track_rows: np.ndarray, seconds: np.ndarray, moments: int) -> Moments:
        raise NotImplementedError



    # -- plumbing -------------------------------------------------------------------
    @staticmethod
    def _frame(X: Any, required: tuple[str, ...] = PREDICT_COLUMNS, *,
               keep_duplicates: bool = True) -> pd.DataFrame:
        """The validated frame, one row per row of ``X`` (a prediction answers every row,
        repeated ones included; ``fit`` passes ``keep_duplicates=False``)."""
        return validate_annotations(X, required, source="X", keep_duplicates=keep_duplicates)

    def reranking(self) -> tuple[float, int]:
        """The re-ranking this grounder applies by default, resolved: ``(moment_weight,
        rerank_depth)`` (what an exported bundle records)."""
        return self._rerank()

    def _rerank(self, moment_weight: Any = None, rerank_depth: Any = None) -> tuple[float, int]:
        """The call's re-ranking: the arguments where given, else the grounder's own."""
        return check_rerank(self.moment_weight if moment_weight is None else moment_weight,
                            self.rerank_depth if rerank_depth is None else rerank_depth)

    def _final_scores(self, videos: Videos, frame: pd.DataFrame, catalogue: Tracks,
                      table: np.ndarray, seconds: np.ndarray, weight: float, depth: int,
                      rows: np.ndarray | None = None) -> np.ndarray:
        """The scores every ranking orders by (:func:`mgsv_sk.search.rerank.reranked`), the
        candidates grounded by this backend. ``rows``: the catalogue row of each column
        of ``table`` (default: column j is row j)."""
        def moment_scores(video_rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
            track_rows = columns if rows is None else np.asarray(rows)[columns]
            _, _, moment = self._ground_distinct(videos, frame, video_rows, catalogue,
                                                 track_rows, seconds[video_rows], 1)
            return moment[:, 0]

        return reranked(table, weight, depth, moment_scores)

    def _ground_distinct(self, videos: Videos, frame: pd.DataFrame, video_rows: np.ndarray,
                         catalogue: Tracks, track_rows: np.ndarray, seconds: np.ndarray,
                         moments: int) -> Moments:
        """:meth:`_ground` once per distinct (video id, track, length) of the pairs: a pair
        that repeats (the same video asked in several rows) is computed once, so repeated
        rows get the same answer to the bit, whatever batch or position a backend's
        kernels give each copy."""
        video_rows = np.asarray(video_rows, np.int64)
        track_rows = np.asarray(track_rows, np.int64)
        seconds = np.ascontiguousarray(seconds, np.float64)
        one_video = len(video_rows) < 2 or bool((video_rows == video_rows[0]).all())
        if one_video and len(np.unique(track_rows)) == len(track_rows):
            # one video's pairs (a ranking's candidates) repeat only where a track does
            return self._ground(videos, video_rows, catalogue, track_rows, seconds, moments)
        video_keys = pd.factorize(frame["video_id"], use_na_sentinel=False)[0]
        pairs = np.stack([video_keys[video_rows], track_rows, seconds.view(np.int64)])
        _, first, inverse = np.unique(pairs, axis=1, return_index=True, return_inverse=True)
        if len(first) == len(video_rows):  # nothing repeats
            return self._ground(videos, video_rows, catalogue, track_rows, seconds, moments)
        order = np.argsort(first)  # the distinct pairs in the order they first appear
        place = np.empty_like(order)
        place[order] = np.arange(len(order))
        take = first[order]
        start, end, moment = self._ground(videos, video_rows[take], catalogue,
                                          track_rows[take], seconds[take], moments)
        at = place[np.asarray(inverse).reshape(-1)]
        return start[at], end[at], moment[at]

    @contextlib.contextmanager
    def _call(self, X: pd.DataFrame, features: Any, *, validated: bool = False
              ) -> Iterator[tuple[pd.DataFrame, Videos, FeatureSource]]:
        """Validate ``X`` (unless the caller built it, ``validated``), resolve the source,
        encode the videos once: (frame, videos, source), inside the backend's computing
        context."""
        self._check_fitted()
        frame = X if validated else self._frame(X)
        source = self._source(features)
        with self._computing():
            source.check_available(frame["video_id"].tolist(), [])
            yield frame, self._encode_videos(frame, source), source

    def predict(self, X: pd.DataFrame, features: Any = None, *,
                moments_per_track: int = 1, moment_weight: float | None = None,
                rerank_depth: int | None = None) -> pd.DataFrame:
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
        moment_weight, rerank_depth : optional
            Override the grounder's re-ranking for this call (see :meth:`rank`).

        Returns
        -------
        DataFrame
            Indexed like ``X``; columns ``music_id``, ``start``, ``end`` (seconds, the best
            moment), ``score`` (the pair's final score: retrieval score plus
            ``moment_weight * logit(moment_score)``, see :meth:`rank`) and ``moment_score`` (the
            moment head's probability that the track holds a fitting moment, at the best
            moment). With ``moments_per_track > 1`` also ``windows``: per row a list of
            ``[start, end, moment_score]``, best first, at most ``moments_per_track`` long.
        """
        self._check_fitted()
        moments = check_moments(moments_per_track)
        weight, depth = self._rerank(moment_weight, rerank_depth)
        with self._call(X, features) as (frame, videos, source):
            seconds = moment_lengths(frame, source)
            smg = "music_id" in frame.columns
            if smg:
                music_ids = frame["music_id"].tolist()
                catalogue = self._catalogue_for(music_ids, source, features)
                rows = catalogue.positions(music_ids)
                scores = self._pair_scores(videos, rows, catalogue)
            else:
                catalogue = self._search_catalogue(source, features)
                table = self._final_scores(videos, frame, catalogue,
                                           self._scores(videos, catalogue),
                                           seconds, weight, depth)
                rows = np.argmax(table, axis=1)
                music_ids = [catalogue.ids[i] for i in rows]
                scores = table[np.arange(len(frame)), rows]
            start, end, moment = self._ground_distinct(videos, frame, np.arange(len(frame)),
                                                       catalogue, rows, seconds, moments)
            start, end = on_tracks(start, end, track_seconds(catalogue, rows))
            if smg:
                scores = combined_scores(scores, moment[:, 0], weight)
        check_outputs(frame["video_id"].tolist(), start, end, moment, scores)
        out = pd.DataFrame(
            {"music_id": music_ids, "start": start[:, 0], "end": end[:, 0],
             "score": np.asarray(scores, np.float32),  # the column's dtype in every mode
             "moment_score": moment[:, 0]},
            index=X.index,
            columns=list(PREDICTION_COLUMNS),
        )
        if moments > 1:
            out["windows"] = window_lists(start, end, moment)
        return out

    def decision_function(
        self, X: pd.DataFrame, features: Any = None, music_ids: Any = None, *,
        moment_weight: float | None = None, rerank_depth: int | None = None,
    ) -> np.ndarray:
        """The scores :meth:`rank` orders by, of every video against every track, shape
        (n_videos, n_tracks).

        Columns follow ``catalogue_ids_``, or ``music_ids`` when given (any tracks the
        feature source holds: the protocol scores a split against its own tracks). With
        re-ranking (``moment_weight > 0``, the default of a fitted MGSVGrounder) each
        video's best ``rerank_depth`` tracks hold their combined score and the others
        their retrieval score shifted below them (:mod:`mgsv_sk.search.rerank`), so the
        order of a row is the order of :meth:`rank` on that gallery.
        """
        self._check_fitted()
        weight, depth = self._rerank(moment_weight, rerank_depth)
        with self._call(X, features) as (frame, videos, source):
            gallery = (list(self._served_catalogue().ids) if music_ids is None
                       else id_list(music_ids, "music_ids"))
            catalogue = self._catalogue_for(gallery, source, features)
            table = self._scores(videos, catalogue)
            rows = None
            if catalogue.ids != gallery:
                rows = catalogue.positions(gallery)
                table = table[:, rows]
            table = self._final_scores(videos, frame, catalogue, table,
                                       moment_lengths(frame, source), weight, depth, rows)
        return np.asarray(table)

    def rank(self, X: pd.DataFrame, k: int = 10, features: Any = None, *,
             moments_per_track: int = 1, moment_weight: float | None = None,
             rerank_depth: int | None = None) -> pd.DataFrame:
        """Top-``k`` catalogue tracks per video with their scores and the moment on each.

        Parameters
        ----------
        moment_weight : float, optional
            Each video's best ``rerank_depth`` tracks by retrieval score are grounded and
            re-ordered by ``score + moment_weight * logit(moment_score)``: the moment
            head compares the video's frames with every window of the track, evidence
            that holds up on tracks never seen in training better than the whole-track
            embeddings do. None: the grounder's own setting (a fitted MGSVGrounder's
            ``moment_weight`` parameter, a bundle's manifest); 0 keeps the plain retrieval
            order. ``decision_function``, MsG ``predict`` and the R@k scorers use the same
            rule, so they agree with this ranking.
        rerank_depth : int, optional
            How many retrieval candidates are re-ranked (None: the grounder's own).

        Returns
        -------
        DataFrame
            ``k`` rows per video (fewer if the catalogue is smaller), sorted by video then
            rank (1 = best): ``video_id``, ``rank``, ``music_id``, ``score`` (the score it
            is ranked by), ``start``, ``end``, ``moment_score`` (the best moment on that
            track). With ``moments_per_track > 1`` also ``windows``: per row up to that
            many non-overlapping ``[start, end, moment_score]`` on the track, best first.
        """
        self._check_fitted()
        top = self._top_tracks(X, k, features, moments_per_track, moment_weight, rerank_depth)
        out = pd.DataFrame(
            {
                "video_id": top.video_ids,
                "rank": top.ranks,
                "music_id": top.music_ids,
                "score": top.score,
                "start": top.start[:, 0],
                "end": top.end[:, 0],
                "moment_score": top.moment[:, 0],
            },
            columns=list(RANK_COLUMNS),
        )
        if top.start.shape[1] > 1:
            out["windows"] = window_lists(top.start, top.end, top.moment)
        return out

    def rank_frames(self, frames: Sequence[np.ndarray], seconds: Sequence[float],
                    k: int = 10, *, moments_per_track: int = 1) -> TopTracks:
        """:meth:`rank` for videos held in memory as frame features, answered as arrays:
        what a server calls per request, without building or validating DataFrames (a
        millisecond or more of pandas work a call). ``frames``: one (F_i, video_dim)
        array per video; ``seconds``: each video's length (the moments' length, finite
        and positive). The same rows, in the same order, as ``rank`` on those videos."""
        self._check_fitted()
        if not len(frames):
            raise InvalidInputError("frames holds no video; pass one (F, video_dim) array "
                                    "per video")
        try:
            lengths = np.asarray(seconds, np.float64)
        except (TypeError, ValueError):
            lengths = np.empty(0)
        if lengths.shape != (len(frames),) or not (np.isfinite(lengths).all()
                                                  and (lengths > 0).all()):
            shown = repr(seconds) if len(repr(seconds)) < 200 else f"{repr(seconds)[:200]}..."
            raise InvalidInputError(
                f"seconds must hold one finite, positive length per video ({len(frames)}), "
                f"got {shown}")
        ids = [f"{_FRAME_VIDEO}{i}" for i in range(len(frames))]
        query = pd.DataFrame({"video_id": ids, "video_segment_duration": lengths})
        return self._top_tracks(query, k, (dict(zip(ids, frames)), {}), moments_per_track,
                                None, None, validated=True)

    def _top_tracks(self, X: pd.DataFrame, k: Any, features: Any, moments_per_track: Any,
                    moment_weight: Any, rerank_depth: Any, *, validated: bool = False
                    ) -> TopTracks:
        """The rows of :meth:`rank`, as arrays."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise InvalidInputError(f"k must be a positive integer, got {k!r}")
        moments = check_moments(moments_per_track)
        weight, depth = self._rerank(moment_weight, rerank_depth)
        with self._call(X, features, validated=validated) as (frame, videos, source):
            catalogue = self._search_catalogue(source, features)
            table = self._scores(videos, catalogue)
            n = len(frame)
            k = min(int(k), table.shape[1])
            d = rerank_count(table.shape[1], weight, depth)
            read = max(k, d)
            top = top_k_indices(table, read)  # (n, read), best retrieval first
            video_rows = np.repeat(np.arange(n), read)
            seconds = moment_lengths(frame, source)[video_rows]
            start, end, moment = self._ground_distinct(videos, frame, video_rows, catalogue,
                                                       top.ravel(), seconds, moments)
            start, end = on_tracks(start, end, track_seconds(catalogue, top.ravel()))
            final = rerank_table(table, top[:, :d], moment[:, 0].reshape(n, read)[:, :d],
                                 weight)
            ranked = np.take_along_axis(final, top, axis=1)  # (n, read)
            order = np.argsort(-ranked, axis=1, kind="stable")[:, :k]  # (n, k)
            keep = (order + read * np.arange(n)[:, None]).ravel()
            top = np.take_along_axis(top, order, axis=1)
            video_rows, start, end, moment = (video_rows[keep], start[keep], end[keep],
                                              moment[keep])
            score = np.take_along_axis(ranked, order, axis=1).ravel()
        video_ids = frame["video_id"].to_numpy(dtype=object)[video_rows]
        check_outputs(video_ids.tolist(), start, end, moment)
        return TopTracks(video_ids=video_ids, ranks=np.tile(np.arange(1, k + 1), n),
                         music_ids=[catalogue.ids[i] for i in top.ravel()],
                         score=np.asarray(score, np.float32), start=start, end=end,
                         moment=moment)

    def score(self, X: pd.DataFrame, y: Any = None) -> float:
        """SmG mIoU on ``X`` (ground truth read from its columns): the task's headline
        grounding figure. For other metrics use :func:`mgsv_sk.evaluation.scoring.get_scorer`."""
        self._check_fitted()
        from mgsv_sk.evaluation.scoring import get_scorer

        return float(get_scorer("miou")(self, X))


def new_fit_token() -> str:
    """A fresh id for a fit: scorers reuse one prediction pass only within one fit."""
    return uuid.uuid4().hex
