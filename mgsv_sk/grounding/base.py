"""The grounder every backend shares: ``predict`` (SmG and MsG), ``rank``,
``decision_function``, ``score`` and ``set_catalogue`` exist here once.

A backend (the torch model :class:`mgsv_sk.MGSVGrounder`, the onnxruntime
:class:`export.runtime.OnnxGrounder`, the baselines) implements the hooks below, all on
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
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

import numpy as np
import pandas as pd

from mgsv_sk.data._readers import id_list
from mgsv_sk.data._schema import PREDICT_COLUMNS, validate_annotations, video_durations
from mgsv_sk.data.features import NO_FEATURES, FeatureSource, as_feature_source, require_finite
from mgsv_sk.data.spans import MAX_MUSIC_SECONDS, SNIPPET_HOP_SECONDS
from mgsv_sk.grounding.moments import check_moments, on_tracks, window_lists
from mgsv_sk.search.ann import AnnParams
from mgsv_sk.search.catalogue import Catalogue, Scorer, TrackIndex, top_k_indices
from mgsv_sk.search.rerank import (
    check_rerank,
    combined_scores,
    rerank_count,
    rerank_table,
    reranked,
)
from mgsv_sk.search.sharded import ShardedCatalogue

__all__ = ["BaseGrounder", "PREDICTION_COLUMNS", "RANK_COLUMNS", "top_k_indices"]

#: Columns of :meth:`BaseGrounder.predict`'s output.
PREDICTION_COLUMNS = ("music_id", "start", "end", "score", "moment_score")
#: Columns of :meth:`BaseGrounder.rank`'s output.
RANK_COLUMNS = ("video_id", "rank", "music_id", "score", "start", "end", "moment_score")

Moments = tuple[np.ndarray, np.ndarray, np.ndarray]


#: A backend's encoded videos of one call (what its hooks pass to each other).
Videos = TypeVar("Videos")
#: A backend's catalogue: track ids (TrackIndex) or encoded tracks (a search Catalogue).
Tracks = TypeVar("Tracks", bound=TrackIndex)


class BaseGrounder(Generic[Videos, Tracks]):
    """Shared plumbing; see the module docstring for the hooks a backend provides. A
    backend names its two types: ``BaseGrounder[its encoded videos, its catalogue]``."""

    features: Any
    catalogue_ids_: list[str]
    #: Re-ranking of retrieval candidates by the moment score (:mod:`mgsv_sk.search.rerank`);
    #: a backend with a moment head overrides these (the torch model as parameters, the
    #: bundle from its manifest); 0 keeps the retrieval order.
    moment_weight: float | str = 0.0  # a backend may resolve a name ("auto")
    rerank_depth: int = 10

    # -- hooks ----------------------------------------------------------------------
    def _encode_videos(self, frame: pd.DataFrame, source: FeatureSource) -> Videos:
        raise NotImplementedError

    def _served_catalogue(self) -> Tracks:
        raise NotImplementedError

    def _encode_catalogue(self, music_ids: list[str], source: FeatureSource) -> Tracks:
        raise NotImplementedError

    def _serve(self, catalogue: Tracks) -> None:
        raise NotImplementedError

    def _scores(self, videos: Videos, catalogue: Tracks) -> np.ndarray:
        raise NotImplementedError

    def _pair_scores(self, videos: Videos, rows: np.ndarray, catalogue: Tracks) -> np.ndarray:
        raise NotImplementedError

    def _ground(self, videos: Videos, video_rows: np.ndarray, catalogue: Tracks,
                track_rows: np.ndarray, seconds: np.ndarray, moments: int) -> Moments:
        raise NotImplementedError

    def _scorer(self, catalogue: Catalogue) -> Scorer | None:
        """The backend's score of (video, track) pairs over ``catalogue`` (None: dual
        only); it must pickle, as shards on Dask workers run it."""
        raise NotImplementedError

    def _computing(self) -> contextlib.AbstractContextManager[Any]:
        """Context of one call's computation (the torch backend sets its thread count)."""
        return contextlib.nullcontext()

    def _check_fitted(self) -> None:
        """Raise scikit-learn's NotFittedError before ``fit`` (a backend that is always
        fitted, such as a loaded bundle, overrides this)."""
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(self)

    # -- plumbing -------------------------------------------------------------------
    def _source(self, features: Any = None) -> FeatureSource:
        """The feature source of a call: the argument, else the ``features`` parameter."""
        chosen = features if features is not None else getattr(self, "features", None)
        if chosen is None:
            raise ValueError(f"{type(self).__name__}: {NO_FEATURES}, to the constructor or "
                             "to this call")
        if not isinstance(chosen, (str, os.PathLike)):
            return as_feature_source(chosen)
        # A path is opened once and reused while its marker file is unchanged: opening a
        # packed store reads and checks its ids and offsets (milliseconds per query for a
        # server answering one video at a time); a store written again is reopened.
        key = _path_key(chosen)
        cached = getattr(self, "_opened_source", None)
        if cached is not None and key is not None and cached[0] == key:
            return cached[1]
        source = as_feature_source(chosen)
        self._opened_source = (key, source)
        return source

    @staticmethod
    def _frame(X: Any, required: tuple[str, ...] = PREDICT_COLUMNS, *,
               keep_duplicates: bool = True) -> pd.DataFrame:
        """The validated frame, one row per row of ``X`` (a prediction answers every row,
        repeated ones included; ``fit`` passes ``keep_duplicates=False``)."""
        return validate_annotations(X, required, source="X", keep_duplicates=keep_duplicates)

    def _remember_source(self, features: Any, *, adding: bool = False) -> None:
        """Record where the served catalogue's encodings came from (``features``, else the
        ``features`` parameter): a call given that source again may use them."""
        key = source_identity(features if features is not None else
                              getattr(self, "features", None))
        keys = getattr(self, "_catalogue_sources", None) if adding else None
        self._catalogue_sources = _SourceKeys(keys or ())
        self._catalogue_sources.add(key)

    def _own_source(self, features: Any) -> bool:
        """Whether a call's ``features`` is the source the served catalogue was encoded
        from (None: the ``features`` parameter, always)."""
        if features is None:
            return True
        key = source_identity(features)
        return key == source_identity(getattr(self, "features", None)) or key in getattr(
            self, "_catalogue_sources", ())

    def _catalogue_for(self, music_ids: list[str], source: FeatureSource,
                       features: Any = None) -> Tracks:
        """The served catalogue when it has every id (and the call's source is the one it
        was encoded from, or holds none of these tracks), else these tracks encoded now
        from the call's source: a ``features=`` override that holds a track is never
        answered with the served encoding of that id."""
        served = self._served_catalogue()
        unique = list(dict.fromkeys(music_ids))
        if all(m in served.index for m in unique):
            if self._own_source(features):
                return served
            held = _held(source, unique, served)
            if not held:  # the override gives videos only: the served tracks stand
                return served
            if len(held) < len(unique):
                raise ValueError(
                    f"features= holds {len(held)} of the {len(unique)} track(s) this call "
                    f"reads (e.g. {held[:3]}) but not the others (e.g. "
                    f"{[m for m in unique if m not in set(held)][:3]}): the served catalogue "
                    "was encoded from another source, and mixing the two would answer from "
                    "stale encodings. Pass a source holding all of them or none (videos "
                    "only), or call set_catalogue(music_ids, features=...) first")
        source.check_available([], unique)
        return self._encode_catalogue(unique, source)

    def _rerank(self, moment_weight: Any = None, rerank_depth: Any = None) -> tuple[float, int]:
        """The call's re-ranking: the arguments where given, else the grounder's own."""
        return check_rerank(self.moment_weight if moment_weight is None else moment_weight,
                            self.rerank_depth if rerank_depth is None else rerank_depth)

    def _final_scores(self, videos: Videos, catalogue: Tracks, table: np.ndarray,
                      seconds: np.ndarray, weight: float, depth: int,
                      rows: np.ndarray | None = None) -> np.ndarray:
        """The scores every ranking orders by (:func:`mgsv_sk.search.rerank.reranked`), the
        candidates grounded by this backend. ``rows``: the catalogue row of each column
        of ``table`` (default: column j is row j)."""
        def moment_scores(video_rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
            track_rows = columns if rows is None else np.asarray(rows)[columns]
            _, _, moment = self._ground(videos, video_rows, catalogue, track_rows,
                                        seconds[video_rows], 1)
            return moment[:, 0]

        return reranked(table, weight, depth, moment_scores)

    @contextlib.contextmanager
    def _call(self, X: pd.DataFrame, features: Any
              ) -> Iterator[tuple[pd.DataFrame, Videos, FeatureSource]]:
        """Validate ``X``, resolve the source, encode the videos once: (frame, videos,
        source), inside the backend's computing context."""
        self._check_fitted()
        frame = self._frame(X)
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
                table = self._final_scores(videos, catalogue, self._scores(videos, catalogue),
                                           seconds, weight, depth)
                rows = np.argmax(table, axis=1)
                music_ids = [catalogue.ids[i] for i in rows]
                scores = table[np.arange(len(frame)), rows]
            start, end, moment = self._ground(videos, np.arange(len(frame)), catalogue, rows,
                                              seconds, moments)
            start, end = on_tracks(start, end, track_seconds(catalogue, rows))
            if smg:
                scores = combined_scores(scores, moment[:, 0], weight)
        _check_outputs(frame["video_id"].tolist(), start, end, moment, scores)
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
            table = self._final_scores(videos, catalogue, table, moment_lengths(frame, source),
                                       weight, depth, rows)
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
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        moments = check_moments(moments_per_track)
        weight, depth = self._rerank(moment_weight, rerank_depth)
        with self._call(X, features) as (frame, videos, source):
            catalogue = self._search_catalogue(source, features)
            table = self._scores(videos, catalogue)
            n = len(frame)
            k = min(int(k), table.shape[1])
            d = rerank_count(table.shape[1], weight, depth)
            read = max(k, d)
            top = top_k_indices(table, read)  # (n, read), best retrieval first
            video_rows = np.repeat(np.arange(n), read)
            seconds = moment_lengths(frame, source)[video_rows]
            start, end, moment = self._ground(videos, video_rows, catalogue, top.ravel(),
                                              seconds, moments)
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
        _check_outputs(video_ids.tolist(), start, end, moment)
        out = pd.DataFrame(
            {
                "video_id": video_ids,
                "rank": np.tile(np.arange(1, k + 1), len(frame)),
                "music_id": [catalogue.ids[i] for i in top.ravel()],
                "score": np.asarray(score, np.float32),
                "start": start[:, 0],
                "end": end[:, 0],
                "moment_score": moment[:, 0],
            },
            columns=list(RANK_COLUMNS),
        )
        if moments > 1:
            out["windows"] = window_lists(start, end, moment)
        return out

    def set_catalogue(self, music_ids: Any, features: Any = None) -> BaseGrounder:
        """Serve a different music collection: MsG ``predict`` and ``rank`` search these
        tracks from now on. Features of the tracks are read (and, for the neural model,
        encoded) once here, from ``features`` or the estimator's source.

        ``music_ids`` may instead be the :class:`~mgsv_sk.search.sharded.ShardedCatalogue`
        that :meth:`shard_catalogue` made of the served catalogue: ``predict``, ``rank``
        and ``decision_function`` then retrieve on its Dask workers (the same scores and
        order as here) and ground the retrieved tracks in this process. Setting another
        catalogue, or saving, leaves the shards behind."""
        self._check_fitted()
        if isinstance(music_ids, ShardedCatalogue):
            # with_shards keeps the served catalogue's class: still this backend's Tracks
            self._serve(cast(Tracks, self._encoded_catalogue().with_shards(music_ids)))
            return self
        ids = id_list(music_ids, "music_ids")
        if not ids:
            raise ValueError("set_catalogue needs at least one music_id")
        source = self._source(features)
        source.check_available([], ids)
        with self._computing():
            catalogue = self._encode_catalogue(ids, source)
        self._serve(catalogue)
        self._remember_source(features)
        return self

    def shard_catalogue(self, client: Any, *, n_shards: int | None = None,
                        index: str = "exact", params: AnnParams | None = None
                        ) -> ShardedCatalogue:
        """Scatter the served catalogue's search across the workers of a Dask ``client``:
        its embeddings and X-Pool states in ``n_shards`` shards (default one per worker),
        each with a first-stage ``index`` built on its worker, and this backend's scorer.
        Nothing changes here until :meth:`set_catalogue` gets the result; it answers as
        this grounder's own search does (``xpool_top_k`` included)."""
        self._check_fitted()
        served = self._encoded_catalogue()
        return ShardedCatalogue.scatter(client, served, self._scorer(served),
                                        n_shards=n_shards, index=index, params=params)

    def _encoded_catalogue(self) -> Catalogue:
        """The served catalogue when it holds encoded tracks (what shards are made of)."""
        served = self._served_catalogue()
        if not isinstance(served, Catalogue):
            raise TypeError(f"{type(self).__name__} has no encoded catalogue to shard; "
                            "shard a fitted MGSVGrounder's or an OnnxGrounder's catalogue")
        return served

    def _search_catalogue(self, source: FeatureSource, features: Any) -> Tracks:
        """The catalogue MsG searches in this call: the served one, or (a ``features=``
        override holding its tracks) the same tracks encoded from the override."""
        served = self._served_catalogue()
        if self._own_source(features) or not _lists_music(source):
            return served  # cheap at any catalogue size: no per-track work
        return self._catalogue_for(list(served.ids), source, features)

    def score(self, X: pd.DataFrame, y: Any = None) -> float:
        """SmG mIoU on ``X`` (ground truth read from its columns): the task's headline
        grounding figure. For other metrics use :func:`mgsv_sk.evaluation.scoring.get_scorer`."""
        self._check_fitted()
        from mgsv_sk.evaluation.scoring import get_scorer

        return float(get_scorer("miou")(self, X))


class _SourceKeys(set[Any]):
    """Identities of the sources a served catalogue was encoded from; pickled empty (an
    object's identity means nothing in another process)."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_SourceKeys, ())

    def __deepcopy__(self, memo: dict[int, Any]) -> _SourceKeys:
        return _SourceKeys(self)  # a copy in this process shares the sources (by identity)


def source_identity(obj: Any) -> Any:
    """What makes two feature arguments the same source: the resolved path of a path, a
    packed store or a release tree; else the object itself (by identity)."""
    if obj is None:
        return None
    path = obj if isinstance(obj, (str, os.PathLike)) else (
        getattr(obj, "path", None) if type(obj).__name__ == "PackedFeatures" else
        getattr(obj, "root", None) if type(obj).__name__ == "FeatureTree" else None)
    if path is not None:  # the same path rewritten since is another source
        return ("path", _path_key(path) or os.path.realpath(path))
    return ("object", id(obj))


def _lists_music(source: FeatureSource) -> bool:
    """False for a source known to hold no track (a query's videos only)."""
    lister = getattr(source, "music_ids", None)
    return not (callable(lister) and len(lister()) == 0)


def _held(source: FeatureSource, ids: list[str], served: TrackIndex) -> list[str]:
    """The ``ids`` that ``source`` holds (listing the source when it is the smaller)."""
    lister = getattr(source, "music_ids", None)
    if callable(lister):
        listed = lister()
        if len(listed) <= len(ids):
            wanted = set(ids)
            return [m for m in listed if m in wanted]
    return [m for m in ids if source.has_music(m)]


def track_seconds(catalogue: TrackIndex, rows: np.ndarray) -> np.ndarray | None:
    """Seconds of music the model knows of each track ``rows`` (2.5 s per valid
    snippet, at most 240 s), or None for a catalogue without lengths (a baseline's)."""
    lengths = getattr(catalogue, "lengths", None)
    if lengths is None:
        return None
    return np.minimum(np.asarray(lengths, np.float64)[np.asarray(rows)] * SNIPPET_HOP_SECONDS,
                      MAX_MUSIC_SECONDS)


def _path_key(path: str | os.PathLike[str]) -> tuple[Any, ...] | None:
    """Identity of a feature path's current content: the resolved path and the inode,
    size and mtime of its marker file (``meta.json`` of a packed store; the folder itself
    for a release tree). None: it cannot be read, so nothing is cached."""
    root = Path(path).resolve()
    marker = root / "meta.json"
    try:
        st = (marker if marker.is_file() else root).stat()
    except OSError:
        return None
    return (str(root), st.st_ino, st.st_size, st.st_mtime_ns)


def _check_outputs(video_ids: list[str], start: np.ndarray, end: np.ndarray,
                   moment: np.ndarray, scores: np.ndarray | None = None) -> None:
    """Refuse non-finite results, naming the videos (the best moment is always present)."""
    columns = [start[:, 0], end[:, 0], moment[:, 0]]
    if scores is not None:
        columns.append(np.asarray(scores, np.float64))
    require_finite(video_ids, ~np.isfinite(np.column_stack(columns)).all(axis=1), "video")


def new_fit_token() -> str:
    """A fresh id for a fit: scorers reuse one prediction pass only within one fit."""
    return uuid.uuid4().hex


def moment_lengths(frame: pd.DataFrame, source: FeatureSource) -> np.ndarray:
    """Seconds of each video (the moment's length): from the frame's columns, else the
    number of valid frames (1 fps)."""
    try:
        return video_durations(frame)
    except ValueError:
        return source.video_lengths(frame["video_id"]).astype(np.float64)
