"""OnnxGrounder: serve an exported MGSV bundle with onnxruntime, torch-free.

The onnxruntime backend of :class:`mgsv_sk.grounding.base.BaseGrounder`: ``predict``,
``rank``, ``decision_function``, ``score`` and ``set_catalogue`` are the shared grounder's (the same
code as :class:`mgsv_sk.MGSVGrounder`'s, so the same columns, dtypes, index, tie rule,
errors and two-stage search); this module runs the bundle's graphs for the hooks. It
imports numpy, pandas, onnxruntime and mgsv_sk's torch-free layers, never torch.

    >>> g = OnnxGrounder.load("bundle/", n_threads=2)     # doctest: +SKIP
    >>> g.predict(frame, features="packed/")                         # doctest: +SKIP

Thread safety: one InferenceSession per graph, shared by every thread (onnxruntime's ``run``
is thread-safe); a call reads one catalogue snapshot and mutates nothing shared, and
``add_tracks`` / ``set_catalogue`` swap in a new snapshot under a lock. ``xpool_top_k``
may be set between calls.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pandas as pd

from mgsv_sk.data import id_list
from mgsv_sk.data.features import FeatureError, FeatureSource, require_finite
from mgsv_sk.errors import InvalidInputError, InvalidTypeError
from mgsv_sk.extract.onnx_encoders import OrtEncoder
from mgsv_sk.files import inside_root
from mgsv_sk.grounding import PREDICTION_COLUMNS, RANK_COLUMNS, BaseGrounder
from mgsv_sk.grounding.moments import select_windows
from mgsv_sk.search import (
    Catalogue,
    Chunk,
    Part,
    SnippetRows,
    check_positive,
    pad,
    pair_scores,
    retrieval_scores,
    sorted_batches,
    top_k_indices,
)
from mgsv_sk.search.ann import load_index
from mgsv_sk.search.rerank import check_rerank

from . import _cache
from ._xpool import NumpyXPool
from .manifest import (
    MANIFEST_FILE,
    BundleError,
    GraphSpec,
    graph_problems,
    read_manifest,
    spec_from_json,
    verify_files,
)

__all__ = ["FeatureError", "OnnxGrounder", "PREDICTION_COLUMNS", "RANK_COLUMNS",
           "top_k_indices"]

_VIDEO_BATCH, _MUSIC_BATCH, _PAIR_BATCH = 256, 128, 256
#: (video, track) pairs per moment-head call: few enough that its [pairs, heads, frames,
#: snippets] intermediates stay in the core's cache (10 pairs of 50 frames x 96 snippets:
#: about 0.8 MB). Measured on one thread: 0.58 ms a pair at 10, 0.76 at 40, 0.83 at 80; a
#: batch of 8 MsG requests (10 re-ranked pairs each) 23.9 -> 18.6 ms a video against 128.
_GROUND_BATCH = 10


@dataclass(frozen=True)
class _Videos:
    """Encoded videos: per-video tokens [F_i, D] (valid frames), emb [n, D], lengths [n]."""

    tokens: list[np.ndarray]
    emb: np.ndarray
    lengths: np.ndarray


class _OrtXPool:
    """The bundle's score graphs as the catalogue search's :class:`Scorer` (dual + X-Pool).

    An onnxruntime session cannot be pickled: a pickled scorer (sent to the Dask workers
    that hold catalogue shards) carries the bundle's path and reopens it there, once per
    process (:meth:`OnnxGrounder.shared`)."""

    def __init__(self, grounder: OnnxGrounder) -> None:
        self.run = grounder._run
        self._opened = (str(grounder.folder), grounder.n_threads, grounder.precision)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_shared_scorer, self._opened)

    def tracks(self, video_emb: np.ndarray, chunk: Chunk) -> np.ndarray:
        return self.run("score_tracks", video_emb=video_emb, music_emb=chunk.emb,
                        xpool_states=chunk.states, music_mask=chunk.mask)[0]

    def pairs(self, video_emb: np.ndarray, rows: np.ndarray, cat: SnippetRows) -> np.ndarray:
        out = np.zeros(len(rows), np.float32)
        for lo in range(0, len(rows), _PAIR_BATCH):
            part = rows[lo: lo + _PAIR_BATCH]
            states, mask = cat.padded_states(part)
            out[lo: lo + len(part)] = self.run(
                "score_pairs", video_emb=video_emb[lo: lo + len(part)], music_emb=cat.emb(part),
                xpool_states=states, music_mask=mask)[0]
        return out


def _shared_scorer(bundle: str, n_threads: int | None, precision: str) -> _OrtXPool:
    return _OrtXPool(OnnxGrounder.shared(bundle, n_threads, precision))


def _session(folder: Path, file: str, options: Any) -> Any:
    try:
        return ort.InferenceSession(str(folder / file), options,
                                    providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own classes for an invalid graph
        raise BundleError(f"bundle {folder!s}: {file} is not a graph onnxruntime can load "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0][:300]}); "
                          "re-export the bundle") from exc


def _check_graph(folder: Path, file: str, spec: GraphSpec, session: Any) -> None:
    """The graph's inputs and outputs against its manifest entry, at load: a graph swapped
    for another valid one is refused here, not at the first request."""
    problems = graph_problems(spec, session.get_inputs(), session.get_outputs())
    if problems:
        raise BundleError(f"bundle {folder!s}: the {spec.name} graph {file} does not match "
                          "its manifest: " + "; ".join(problems[:4])
                          + "; the graph was replaced or the manifest edited: re-export it")


def _bundle_encoder(folder: Path, role: str, info: dict[str, Any], precision: str,
                    options: Any) -> OrtEncoder:
    """A feature encoder of the bundle, in ``precision`` where it has that graph, else the
    other one it lists; its shapes are checked against the manifest."""
    files = info.get("files") if isinstance(info, dict) else None
    if not isinstance(files, dict) or not files:
        raise BundleError(f"bundle {folder!s}: the manifest's {role} encoder lists no graph "
                          "file; re-export the bundle")
    file = files.get(precision) or next(files[p] for p in ("fp32", "int8", *files) if p in files)
    try:
        encoder = OrtEncoder(folder / file, session_options=options)
    except Exception as exc:
        raise BundleError(f"bundle {folder!s}: the {role} encoder {file} cannot be loaded "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0][:300]}); "
                          "re-export the bundle") from exc
    shape = info.get("input_shape")
    why = encoder.mismatch(None if shape is None else tuple(shape), info.get("dim"))
    if why is not None:
        raise BundleError(f"bundle {folder!s}: the {role} encoder graph {file} {why}; the "
                          "graph was replaced or the manifest edited: re-export the bundle")
    return encoder


class OnnxGrounder(BaseGrounder[_Videos, Catalogue]):
    """An exported MGSVGrounder on onnxruntime. Build it with :meth:`load`.

    Attributes
    ----------
    manifest : dict
        The bundle's manifest (names, dims, versions, checksums).
    precision : str
        "fp32" or "int8" graphs in use.
    xpool_top_k : int or None
        Two-stage search: X-Pool only for each video's top-K tracks by dual score (the
        exported grounder's value unless changed). With an approximate catalogue index
        (:mod:`mgsv_sk.export.compact_bundle`) the top-K come from the index and the other
        tracks score -inf; without ``xpool_top_k`` every track is scanned.
    moment_weight, rerank_depth : float, int
        Re-ranking of each video's best ``rerank_depth`` tracks by ``score +
        moment_weight * logit(moment_score)`` (:mod:`mgsv_sk.search.rerank`): the exported
        grounder's setting (0 for a bundle written before the manifest held it).
    """

    def __init__(self, folder: Path, manifest: dict[str, Any], sessions: dict[str, Any],
                 catalogue: Catalogue, *, features: Any, precision: str,
                 track_chunk: int) -> None:
        self.folder = folder
        self.manifest = manifest
        self.precision = precision
        self.features = features
        self.track_chunk = track_chunk
        #: Threads of each session (None: onnxruntime's default), as given to :meth:`load`.
        self.n_threads: int | None = None
        retrieval = manifest["retrieval"]
        self.use_dual, self.use_xpool = bool(retrieval["use_dual"]), bool(retrieval["use_xpool"])
        self.xpool_top_k = retrieval.get("xpool_top_k")
        self.moment_weight = retrieval.get("moment_weight", 0.0)
        self.rerank_depth = retrieval.get("rerank_depth", 10)
        self._dims = manifest["dims"]
        self._specs: dict[str, GraphSpec] = {n: spec_from_json(n, g)
                                             for n, g in manifest["graphs"].items()}
        self._sessions = sessions
        self._catalogue = catalogue
        #: Tracks served by MsG ``predict`` and ``rank``, in catalogue order.
        self.catalogue_ids_: list[str] = list(catalogue.ids)
        self._lock = threading.Lock()

    @classmethod
    def load(cls, bundle: str | os.PathLike[str], n_threads: int | None = None, *,
             features: Any = None, precision: str | None = None, verify: bool = True,
             allow_spinning: bool = False, track_chunk: int = 128) -> OnnxGrounder:
        """Open a bundle written by :func:`mgsv_sk.export.to_onnx.export_onnx`.

        Parameters
        ----------
        bundle : path
        n_threads : int, optional
            Threads of each graph's session and of numpy's BLAS in this process, which runs
            the X-Pool scan of a float32 bundle (None: the libraries' defaults, all cores).
            Several BLAS threads per request on few cores contend with each other and with
            the other requests: on 2 busy cores, a 1-thread scan took 50 ms, a 2-thread one
            up to 600 ms.
        features : optional
            Default feature source of every call (packed store path, (videos, music) dicts
            of arrays, or an object with video()/music() methods).
        precision : {"fp32", "int8"}, optional
            Graphs to serve; default the bundle's (int8 when exported with quantize=True).
        verify : bool
            Check the sha256 of every file against the manifest (about 1 s per 1.5 GB);
            False checks sizes only.
        allow_spinning : bool
            Let idle session threads spin-wait for work. Off by default: each of the five
            sessions has its own pool, and spinning pools starve each other (and any
            other process) on few cores; measured on a busy 2-core machine, one SmG pair
            took 35 ms with spinning and 7 ms without.
        track_chunk : int
            Tracks per score_tracks call in a full X-Pool scan.
        """
        folder = Path(bundle)
        manifest = read_manifest(folder)
        verify_files(folder, manifest, checksums=verify)
        precision = precision or manifest.get("default_precision", "fp32")
        options = ort.SessionOptions()
        if n_threads is not None:
            options.intra_op_num_threads = int(n_threads)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.add_session_config_entry("session.intra_op.allow_spinning",
                                         "1" if allow_spinning else "0")
        sessions = {}
        for name, graph in manifest["graphs"].items():
            file = graph["files"].get(precision)
            if file is None:
                raise InvalidInputError(f"bundle {folder!s} has no {precision!r} graphs (it has "
                                        f"{sorted(graph['files'])}); export with quantize=True")
            sessions[name] = _session(folder, file, options)
            _check_graph(folder, file, spec_from_json(name, graph), sessions[name])
        info = manifest["catalogue"]
        part = Part.load(folder, info["files"], info.get("states", "float32"))
        ann = None
        if "index" in info:
            inside_root(folder, f"{info['index']['name']}.json", "the catalogue index",
                        BundleError)
            ann = load_index(folder, info["index"]["name"], emb=part.emb, n=len(part.ids),
                             verify=verify)
        grounder = cls(folder, manifest, sessions, Catalogue([part], ann), features=features,
                       precision=precision, track_chunk=track_chunk)
        grounder.n_threads = n_threads
        if n_threads is not None:  # process-wide, as torch's threads are for MGSVGrounder
            from threadpoolctl import threadpool_limits

            threadpool_limits(int(n_threads), user_api="blas")
        weights = manifest.get("xpool_weights")
        if weights and precision == "fp32" and grounder.use_xpool:  # int8: the graphs' own
            inside_root(folder, weights, "the X-Pool weights", BundleError)
            try:
                grounder.numpy_xpool = NumpyXPool.load(folder / weights, grounder.use_dual)
            except (OSError, ValueError, KeyError) as exc:
                raise BundleError(f"bundle {folder!s}: {weights} cannot be read "
                                  f"({type(exc).__name__}: {exc}); re-export the bundle") from exc
        for role, encoder in manifest.get("encoders", {}).items():  # exported with encoders=
            setattr(grounder, f"{role}_encoder",
                    _bundle_encoder(folder, role, encoder, precision, options))
        return grounder

    @classmethod
    def shared(cls, bundle: str | os.PathLike[str], n_threads: int | None = None,
               precision: str | None = None) -> OnnxGrounder:
        """The bundle opened once in this process and reused (a Dask worker's partitions and
        shard re-rankings): keyed by the manifest file's identity, so a bundle re-written in
        place is opened afresh; checksums are verified when it is first opened."""
        folder = Path(bundle)
        read_manifest(folder)  # a clear FileNotFoundError / BundleError here
        key = ("bundle", *_cache.identity(folder, MANIFEST_FILE), n_threads, precision)
        return _cache.cached(key, lambda: cls.load(folder, n_threads, precision=precision))

    @property
    def xpool_top_k(self) -> int | None:
        """Two-stage search depth (None: X-Pool over every track); validated when set."""
        return self._xpool_top_k

    @xpool_top_k.setter
    def xpool_top_k(self, value: int | None) -> None:
        self._xpool_top_k = check_positive(value, "xpool_top_k", optional=True)

    @property
    def moment_weight(self) -> float:
        """Weight of the moment score's logit in the ranking (0: plain retrieval order);
        validated when set."""
        return self._moment_weight

    @moment_weight.setter
    def moment_weight(self, value: float) -> None:
        self._moment_weight = check_rerank(value, 1)[0]

    @property
    def rerank_depth(self) -> int:
        """Retrieval candidates re-ranked by the moment score; validated when set."""
        return self._rerank_depth

    @rerank_depth.setter
    def rerank_depth(self, value: int) -> None:
        self._rerank_depth = check_rerank(0.0, value)[1]

    @property
    def track_chunk(self) -> int:
        """Tracks per score_tracks call of a full X-Pool scan; validated when set."""
        return self._track_chunk

    @track_chunk.setter
    def track_chunk(self, value: int) -> None:
        self._track_chunk = int(check_positive(value, "track_chunk") or 1)

    #: The X-Pool score in numpy (:mod:`export._xpool`) for a float32 bundle that holds its
    #: weights: the scorer of every search (None: the score graphs, e.g. int8 or an older
    #: bundle). Set it to None to score with the graphs.
    numpy_xpool: NumpyXPool | None = None
    #: The bundle's feature encoders (OrtEncoder), when it was exported with them.
    video_encoder: Any = None
    music_encoder: Any = None

    def __repr__(self) -> str:
        return (f"OnnxGrounder({str(self.folder)!r}, {len(self._catalogue)} tracks, "
                f"{self.precision})")

    def __getstate__(self) -> Any:
        raise InvalidTypeError("an OnnxGrounder holds onnxruntime sessions, which cannot be "
                               "pickled; load the bundle again in the other process")

    # -- plumbing ----------------------------------------------------------------------------
    def _run(self, graph: str, **arrays: np.ndarray) -> list[np.ndarray]:
        spec = self._specs[graph]
        feed = {name: arrays[name] for name in spec.input_names}
        out: list[np.ndarray] = self._sessions[graph].run(spec.output_names, feed)
        return out

    def _check_fitted(self) -> None:
        """A bundle is a fitted model."""

    # -- hooks of mgsv_sk.grounding.base.BaseGrounder -------------------------------------------
    def _check_dims(self, source: FeatureSource, kind: str) -> None:
        # only the kind read now: a query of video features alone (recommend) holds no music
        have, want = getattr(source, f"{kind}_dim"), self._dims[f"{kind}_dim"]
        if have != want:
            raise FeatureError(f"{source!r} holds {kind} features of width {have}, but the "
                               f"bundle's model reads {want}; pass the features it was "
                               "trained on")

    def _encode_videos(self, frame: pd.DataFrame, source: FeatureSource) -> _Videos:
        self._check_dims(source, "video")
        video_ids = frame["video_id"].tolist()
        feats = source.videos(video_ids)
        lengths = np.array([len(f) for f in feats], np.int64)
        emb = np.zeros((len(feats), self._dims["d_model"]), np.float32)
        tokens: list[np.ndarray] = [np.zeros(0)] * len(feats)
        for rows in sorted_batches(lengths, _VIDEO_BATCH):
            video, mask = pad([feats[r] for r in rows], self._dims["video_dim"])
            tok, e = self._run("video_encoder", video=video, video_mask=mask)
            emb[rows] = e
            for j, r in enumerate(rows):
                tokens[r] = tok[j, : lengths[r]]
        bad = ~np.isfinite(emb).all(axis=1) | np.array([not np.isfinite(t).all() for t in tokens])
        require_finite(video_ids, bad, "video")
        return _Videos(tokens, emb, lengths)

    def _encode_music(self, music_ids: Sequence[str], source: FeatureSource) -> Part:
        self._check_dims(source, "music")
        feats = source.musics(music_ids)
        lengths = np.array([len(f) for f in feats], np.int64)
        n = len(feats)
        emb = np.zeros((n, self._dims["d_model"]), np.float32)
        tokens: list[np.ndarray] = [np.zeros(0)] * n
        states: list[np.ndarray] = [np.zeros(0)] * n
        for rows in sorted_batches(lengths, _MUSIC_BATCH):
            music, mask = pad([feats[r] for r in rows], self._dims["music_dim"])
            outs = self._run("music_encoder", music=music, music_mask=mask)
            emb[rows] = outs[1]
            for j, r in enumerate(rows):
                tokens[r] = outs[0][j, : lengths[r]]
                if self.use_xpool:
                    states[r] = outs[2][j, : lengths[r]]  # [S,D]
        bad = ~np.isfinite(emb).all(axis=1) | np.array(
            [not (np.isfinite(tokens[r]).all() and np.isfinite(states[r]).all())
             for r in range(n)])
        require_finite(list(music_ids), bad, "track")  # never let a NaN into the catalogue
        return Part.from_tracks(music_ids, emb, tokens, states if self.use_xpool else None)

    def _ground(self, videos: _Videos, video_rows: np.ndarray, catalogue: Catalogue,
                track_rows: np.ndarray, seconds: np.ndarray,
                moments: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        out = [np.full((len(video_rows), moments), np.nan) for _ in range(3)]
        # the window head's graph takes each video once (its projections run once, however
        # many tracks it is paired with); a bundle's DETR graph takes a video per pair
        indexed = "video_index" in self._specs["detector"].input_names
        for rows in sorted_batches(videos.lengths[video_rows], _GROUND_BATCH):
            v, length = video_rows[rows], seconds[rows]
            video_index = np.arange(len(rows))
            if indexed:  # each (video, moment length) once
                keys = np.stack([v, np.asarray(length, np.float64).view(np.int64)])
                _, first, video_index = np.unique(keys, axis=1, return_index=True,
                                                  return_inverse=True)
                v, length = v[first], length[first]
            tokens, vmask = pad([videos.tokens[i] for i in v], self._dims["d_model"])
            unique, index = np.unique(track_rows[rows], return_inverse=True)
            # the catalogue's rows: the window head's track keys (bundles exported before
            # them: the tokens, which their graph projects); the spec names which it takes
            music, mmask = catalogue.padded_tokens(unique)
            starts, ends, logits, _ = self._run(
                "detector", video_tokens=tokens, video_mask=vmask, video_emb=videos.emb[v],
                music_keys=music, music_tokens=music, music_mask=mmask,
                music_index=index.astype(np.int64).reshape(-1),
                video_index=video_index.astype(np.int64).reshape(-1),
                video_seconds=length.astype(np.float32))
            for col, value in zip(out, select_windows(starts, ends, logits, moments)):
                col[rows] = value
        return out[0], out[1], out[2]

    def _served_catalogue(self) -> Catalogue:
        return self._catalogue

    def _encode_catalogue(self, music_ids: list[str], source: FeatureSource) -> Catalogue:
        return Catalogue([self._encode_music(music_ids, source)])

    def _serve(self, catalogue: Any) -> None:
        with self._lock:
            self._catalogue = catalogue
            self.catalogue_ids_ = list(catalogue.ids)

    def _scorer(self, catalogue: Catalogue) -> _OrtXPool | NumpyXPool | None:
        if not self.use_xpool:
            return None
        return self.numpy_xpool if self.numpy_xpool is not None else _OrtXPool(self)

    def _scores(self, videos: _Videos, catalogue: Catalogue) -> np.ndarray:
        """Scores of videos against every catalogue track, (n, N) float32."""
        return retrieval_scores(videos.emb, catalogue, self._scorer(catalogue),
                                use_dual=self.use_dual,
                                xpool_top_k=self.xpool_top_k, track_chunk=self.track_chunk)

    def _pair_scores(self, videos: _Videos, rows: np.ndarray,
                     catalogue: Catalogue) -> np.ndarray:
        return pair_scores(videos.emb, rows, catalogue, self._scorer(catalogue))

    def recommend(self, video_paths: Any, k: int = 10, *, video_encoder: Any = None,
                  moments_per_track: int = 1) -> pd.DataFrame:
        """Top-``k`` catalogue tracks for video files with the moment(s) on each, as
        :meth:`mgsv_sk.MGSVGrounder.recommend`; frames are encoded by ``video_encoder``,
        default the bundle's own (exported with ``encoders=``)."""
        from mgsv_sk.extract.recommend import recommend_videos

        encoder = video_encoder if video_encoder is not None else self.video_encoder
        if encoder is None:
            raise InvalidInputError("this bundle holds no video encoder: export it with "
                                    "export_onnx(..., encoders={'video': ClipImageEncoder(...)}) "
                                    "or pass video_encoder=")
        return recommend_videos(self, video_paths, k, video_encoder=encoder,
                                moments_per_track=moments_per_track)

    def add_tracks(self, music_ids: Sequence[Any], features: Any = None) -> OnnxGrounder:
        """Encode tracks with the music encoder graph and append them to the catalogue."""
        ids = id_list(music_ids, "music_ids")
        if not ids:
            raise InvalidInputError("add_tracks needs at least one music_id")
        source = self._source(features)
        source.check_available([], ids)
        part = self._encode_music(ids, source)
        with self._lock:
            present = [m for m in ids if m in self._catalogue.index]
            if present:
                raise InvalidInputError(f"{len(present)} music_id(s) are already in the catalogue, "
                                        f"e.g. {present[:5]}; add only new tracks")
            self._catalogue = self._catalogue.with_part(part)
            self.catalogue_ids_ = list(self._catalogue.ids)
        self._remember_source(features, adding=True)
        return self
