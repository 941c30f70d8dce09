"""Which catalogue answers a call: the backend's catalogue hooks, the feature source of
a call, the sources the served catalogue was encoded from, ``set_catalogue`` and
``shard_catalogue``. :class:`mgsv_sk.grounding.base.BaseGrounder` builds on it. Torch-free.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Generic, TypeVar, cast

from mgsv_sk.data._readers import id_list
from mgsv_sk.data.features import NO_FEATURES, FeatureSource, as_feature_source
from mgsv_sk.grounding.sources import (
    SourceKeys,
    held_tracks,
    lists_music,
    path_key,
    source_identity,
)
from mgsv_sk.search import AnnParams, Catalogue, Scorer, ShardedCatalogue, TrackIndex

__all__ = ["CatalogueHolder", "Tracks"]

#: A backend's catalogue: track ids (TrackIndex) or encoded tracks (a search Catalogue).
Tracks = TypeVar("Tracks", bound=TrackIndex)


class CatalogueHolder(Generic[Tracks]):
    """The catalogue side of a grounder: the hooks a backend implements for it and the
    choice, per call, of the catalogue and feature source."""

    features: Any
    catalogue_ids_: list[str]

    def _served_catalogue(self) -> Tracks:
        raise NotImplementedError

    def _encode_catalogue(self, music_ids: list[str], source: FeatureSource) -> Tracks:
        raise NotImplementedError

    def _serve(self, catalogue: Tracks) -> None:
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
        key = path_key(chosen)
        cached = getattr(self, "_opened_source", None)
        if cached is not None and key is not None and cached[0] == key:
            return cached[1]
        source = as_feature_source(chosen)
        self._opened_source = (key, source)
        return source

    def _remember_source(self, features: Any, *, adding: bool = False) -> None:
        """Record where the served catalogue's encodings came from (``features``, else the
        ``features`` parameter): a call given that source again may use them."""
        key = source_identity(features if features is not None else
                              getattr(self, "features", None))
        keys = getattr(self, "_catalogue_sources", None) if adding else None
        self._catalogue_sources = SourceKeys(keys or ())
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
            held = held_tracks(source, unique, served)
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

    def set_catalogue(self, music_ids: Any, features: Any = None) -> CatalogueHolder[Tracks]:
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
        if self._own_source(features) or not lists_music(source):
            return served  # cheap at any catalogue size: no per-track work
        return self._catalogue_for(list(served.ids), source, features)
