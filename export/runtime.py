"""OnnxGrounder: serve an exported MGSV bundle with onnxruntime, torch-free.

Imports numpy, pandas, onnxruntime and the standard library only (never torch or mgsv_sk),
and mirrors :class:`mgsv_sk.MGSVGrounder`'s ``predict`` / ``rank`` / ``decision_function``
outputs: same columns, dtypes, index, tie rule and two-stage search.

    >>> g = OnnxGrounder.load("bundle/", intra_op_num_threads=2)     # doctest: +SKIP
    >>> g.predict(frame, features="packed/")                         # doctest: +SKIP

Thread safety: one InferenceSession per graph, shared by every thread (onnxruntime's ``run``
is thread-safe); a call reads one catalogue snapshot and mutates nothing shared, and
``add_tracks`` swaps in a new snapshot under a lock. ``xpool_top_k`` may be set between
calls.
"""

from __future__ import annotations

import difflib
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pandas as pd

from mgsv_sk._schema import video_durations
from mgsv_sk.core.ann import load_index
from mgsv_sk.core.moments import check_moments, select_windows, window_lists

from ._catalogue import Catalogue, Part, pad
from ._features import FeatureError, as_features, read_items
from .manifest import GraphSpec, read_manifest, spec_from_json, verify_files

__all__ = ["FeatureError", "OnnxGrounder", "PREDICTION_COLUMNS", "RANK_COLUMNS",
           "top_k_indices"]

PREDICTION_COLUMNS = ("music_id", "start", "end", "score", "moment_score")
RANK_COLUMNS = ("video_id", "rank", "music_id", "score", "start", "end", "moment_score")
_VIDEO_BATCH, _MUSIC_BATCH, _GROUND_BATCH, _PAIR_BATCH = 256, 128, 128, 256


def top_k_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the ``k`` best scores per row, best first, (n, k); ties keep the
    lower column first (mgsv_sk's rule)."""
    n, g = scores.shape
    k = min(k, g)
    if k < g:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        part = np.tile(np.arange(g), (n, 1))
    part.sort(axis=1)
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def _sorted_batches(lengths: np.ndarray, size: int) -> Iterator[np.ndarray]:
    order = np.argsort(lengths, kind="stable")
    for lo in range(0, len(order), size):
        yield order[lo: lo + size]


def _require_finite(ids: Sequence[str], bad: np.ndarray, kind: str) -> None:
    """Refuse items whose encodings or outputs are not finite (finite but extreme features
    overflow float32), naming them: a NaN never reaches a result or the catalogue."""
    if bad.any():
        names = [ids[int(i)] for i in np.flatnonzero(bad)]
        raise FeatureError(
            f"the features of {len(names)} {kind}(s) {names[:5]} give non-finite model "
            "outputs: they hold values too large for float32 arithmetic; the features are "
            "expected to be embeddings of moderate scale (CLIP / AST outputs): rescale or "
            "re-extract them")


def _video_seconds(X: pd.DataFrame, n_frames: np.ndarray) -> np.ndarray:
    """Each video's length, the moment's: from ``X``'s columns as the estimator reads
    them, else its number of frames (1 frame per second)."""
    try:
        return np.asarray(video_durations(X), dtype=np.float64)
    except (ValueError, TypeError):
        return n_frames.astype(np.float64)


def _as_id(value: Any) -> str:
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))  # integer ids read as floats, as mgsv_sk's schema does
    return str(value)


@dataclass(frozen=True)
class _Videos:
    """Encoded videos: per-video tokens [F_i, D] (valid frames), emb [n, D], lengths [n]."""

    tokens: list[np.ndarray]
    emb: np.ndarray
    lengths: np.ndarray


class OnnxGrounder:
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
        (:mod:`export.compact`) the top-K come from the index and the other tracks score
        -inf; without ``xpool_top_k`` every track is scanned.
    """

    def __init__(self, folder: Path, manifest: dict[str, Any], sessions: dict[str, Any],
                 catalogue: Catalogue, *, features: Any, precision: str,
                 track_chunk: int) -> None:
        self.folder = folder
        self.manifest = manifest
        self.precision = precision
        self.features = features
        self.track_chunk = track_chunk
        retrieval = manifest["retrieval"]
        self.use_dual, self.use_xpool = bool(retrieval["use_dual"]), bool(retrieval["use_xpool"])
        self.xpool_top_k: int | None = retrieval.get("xpool_top_k")
        self._dims = manifest["dims"]
        self._margin = float(manifest["constants"]["two_stage_margin"])
        self._seconds = float(manifest["constants"]["max_music_seconds"])
        self._specs: dict[str, GraphSpec] = {n: spec_from_json(n, g)
                                             for n, g in manifest["graphs"].items()}
        self._sessions = sessions
        self._catalogue = catalogue
        self._lock = threading.Lock()

    @classmethod
    def load(cls, bundle: str | os.PathLike[str], intra_op_num_threads: int | None = None, *,
             features: Any = None, precision: str | None = None, verify: bool = True,
             allow_spinning: bool = False, track_chunk: int = 128) -> OnnxGrounder:
        """Open a bundle written by :func:`export.to_onnx.export_onnx`.

        Parameters
        ----------
        bundle : path
        intra_op_num_threads : int, optional
            Threads of each graph's session (None: onnxruntime's default, all cores).
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
        if intra_op_num_threads is not None:
            options.intra_op_num_threads = int(intra_op_num_threads)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.add_session_config_entry("session.intra_op.allow_spinning",
                                         "1" if allow_spinning else "0")
        sessions = {}
        for name, graph in manifest["graphs"].items():
            file = graph["files"].get(precision)
            if file is None:
                raise ValueError(f"bundle {folder!s} has no {precision!r} graphs (it has "
                                 f"{sorted(graph['files'])}); export with quantize=True")
            sessions[name] = ort.InferenceSession(str(folder / file), options,
                                                  providers=["CPUExecutionProvider"])
        info = manifest["catalogue"]
        part = Part.load(folder, info["files"], info.get("states", "float32"))
        ann = (load_index(folder, info["index"]["name"], emb=part.emb, n=len(part.ids),
                          verify=verify) if "index" in info else None)
        return cls(folder, manifest, sessions, Catalogue([part], ann), features=features,
                   precision=precision, track_chunk=track_chunk)

    # -- public state ------------------------------------------------------------------------
    @property
    def catalogue_ids_(self) -> list[str]:
        """Tracks served by MsG ``predict`` and ``rank``, in catalogue order."""
        return list(self._catalogue.ids)

    def __repr__(self) -> str:
        return (f"OnnxGrounder({str(self.folder)!r}, {len(self._catalogue)} tracks, "
                f"{self.precision})")

    def __getstate__(self) -> Any:
        raise TypeError("an OnnxGrounder holds onnxruntime sessions, which cannot be "
                        "pickled; load the bundle again in the other process")

    # -- plumbing ----------------------------------------------------------------------------
    def _run(self, graph: str, **arrays: np.ndarray) -> list[np.ndarray]:
        spec = self._specs[graph]
        feed = {name: arrays[name] for name in spec.input_names}
        out: list[np.ndarray] = self._sessions[graph].run(spec.output_names, feed)
        return out

    def _source(self, features: Any) -> Any:
        return as_features(features if features is not None else self.features)

    @staticmethod
    def _frame(X: Any) -> pd.DataFrame:
        if not isinstance(X, pd.DataFrame):
            raise TypeError(f"X must be a pandas DataFrame with a 'video_id' column "
                            f"(and 'music_id' for SmG), got {type(X).__name__}")
        problems = []
        if "video_id" not in X.columns:
            close = difflib.get_close_matches("video_id", [str(c) for c in X.columns
                                                           if c != "music_id"], 1, 0.75)
            problems.append("missing column 'video_id'"
                            + (f" (found {close[0]!r}: misspelt?)" if close else ""))
        if len(X) == 0:
            problems.append("the frame has no rows")
        for name in ("video_id", "music_id"):
            if name in X.columns and X[name].isna().any():
                rows = np.flatnonzero(X[name].isna().to_numpy())[:5].tolist()
                problems.append(f"column {name!r} has empty values (rows {rows})")
        if problems:
            raise ValueError("X failed validation:\n  - " + "\n  - ".join(problems))
        frame = pd.DataFrame({c: [_as_id(v) for v in X[c]] for c in ("video_id", "music_id")
                              if c in X.columns})
        return frame

    def _encode_videos(self, video_ids: Sequence[str], source: Any) -> _Videos:
        feats = read_items(source, video_ids, "video", self._dims["video_dim"],
                           self._dims["max_frames"])
        lengths = np.array([len(f) for f in feats], np.int64)
        emb = np.zeros((len(feats), self._dims["d_model"]), np.float32)
        tokens: list[np.ndarray] = [np.zeros(0)] * len(feats)
        for rows in _sorted_batches(lengths, _VIDEO_BATCH):
            video, mask = pad([feats[r] for r in rows], self._dims["video_dim"])
            tok, e = self._run("video_encoder", video=video, video_mask=mask)
            emb[rows] = e
            for j, r in enumerate(rows):
                tokens[r] = tok[j, : lengths[r]]
        bad = ~np.isfinite(emb).all(axis=1) | np.array([not np.isfinite(t).all() for t in tokens])
        _require_finite(video_ids, bad, "video")
        return _Videos(tokens, emb, lengths)

    def _encode_music(self, music_ids: Sequence[str], source: Any) -> Part:
        feats = read_items(source, music_ids, "music", self._dims["music_dim"],
                           self._dims["max_snippets"])
        lengths = np.array([len(f) for f in feats], np.int64)
        n = len(feats)
        emb = np.zeros((n, self._dims["d_model"]), np.float32)
        tokens: list[np.ndarray] = [np.zeros(0)] * n
        states: list[np.ndarray] = [np.zeros(0)] * n
        for rows in _sorted_batches(lengths, _MUSIC_BATCH):
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
        _require_finite(music_ids, bad, "track")  # never let a NaN into the catalogue
        return Part.from_tracks(music_ids, emb, tokens, states if self.use_xpool else None)

    def _catalogue_for(self, music_ids: Sequence[str], source: Any,
                       cat: Catalogue) -> Catalogue:
        """The served catalogue when it has every id, else these tracks encoded now."""
        unique = list(dict.fromkeys(music_ids))
        if all(m in cat.index for m in unique):
            return cat
        return Catalogue([self._encode_music(unique, source)])

    # -- scores ------------------------------------------------------------------------------
    def _pair_scores(self, video_emb: np.ndarray, rows: np.ndarray,
                     cat: Catalogue) -> np.ndarray:
        """Retrieval score of (video i, catalogue row rows[i]), (n,) float32."""
        if not self.use_xpool:
            return (video_emb * cat.emb(rows)).sum(-1).astype(np.float32)
        out = np.zeros(len(rows), np.float32)
        for lo in range(0, len(rows), _PAIR_BATCH):
            part = rows[lo: lo + _PAIR_BATCH]
            states, mask = cat.xpool_states(part)
            score = self._run("score_pairs", video_emb=video_emb[lo: lo + len(part)],
                              music_emb=cat.emb(part), xpool_states=states, music_mask=mask)[0]
            out[lo: lo + len(part)] = score
        return out

    def _scores(self, video_emb: np.ndarray, cat: Catalogue) -> np.ndarray:
        """Scores of videos [n, D] against every catalogue track, (n, N) float32."""
        top_k = self.xpool_top_k
        if top_k is not None and top_k < len(cat) and self.use_dual and cat.approximate:
            # ANN first stage: the tracks it does not return score -inf (never retrieved)
            first, cand = cat.first_stage(video_emb, top_k)  # (n, K) each
            table = np.full((len(video_emb), len(cat)), -np.inf, np.float32)
            videos, cols = np.nonzero(cand >= 0)
            table[videos, cand[videos, cols]] = (
                self._pair_scores(video_emb[videos], cand[videos, cols], cat)
                if self.use_xpool else first[videos, cols])
            return table
        dual = cat.dual(video_emb) if self.use_dual else None
        if dual is not None and not self.use_xpool:
            return dual
        if top_k is not None and top_k < len(cat) and dual is not None:
            cand = top_k_indices(dual, top_k)  # (n, K)
            out = dual - self._margin
            videos = np.repeat(np.arange(len(video_emb)), cand.shape[1])
            out[videos, cand.ravel()] = self._pair_scores(video_emb[videos], cand.ravel(), cat)
            return out
        out = np.empty((len(video_emb), len(cat)), np.float32)
        for chunk in cat.chunks(self.track_chunk):
            for lo in range(0, len(video_emb), _VIDEO_BATCH):
                score = self._run("score_tracks", video_emb=video_emb[lo: lo + _VIDEO_BATCH],
                                  music_emb=chunk.emb, xpool_states=chunk.states,
                                  music_mask=chunk.mask)[0]
                out[lo: lo + _VIDEO_BATCH, chunk.rows] = score
        return out

    def _ground(self, videos: _Videos, video_rows: np.ndarray, track_rows: np.ndarray,
                cat: Catalogue, seconds: np.ndarray,
                moments: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Up to ``moments`` moments of video video_rows[i] (``seconds[i]`` long) in
        catalogue track track_rows[i], best first: start, end (seconds) and moment score,
        each (n, moments) float64, NaN-padded."""
        out = [np.full((len(video_rows), moments), np.nan) for _ in range(3)]
        for rows in _sorted_batches(videos.lengths[video_rows], _GROUND_BATCH):
            v = video_rows[rows]
            tokens, vmask = pad([videos.tokens[i] for i in v], self._dims["d_model"])
            unique, index = np.unique(track_rows[rows], return_inverse=True)
            music, mmask = cat.tokens(unique)
            starts, ends, logits, _ = self._run(
                "detector", video_tokens=tokens, video_mask=vmask, video_emb=videos.emb[v],
                music_tokens=music, music_mask=mmask,
                music_index=index.astype(np.int64).reshape(-1),
                video_seconds=seconds[rows].astype(np.float32))
            for col, value in zip(out, select_windows(starts, ends, logits, moments)):
                col[rows] = value
        return out[0], out[1], out[2]

    # -- the estimator's API -----------------------------------------------------------------
    def predict(self, X: pd.DataFrame, features: Any = None, *,
                moments_per_track: int = 1) -> pd.DataFrame:
        """Ground each video on its own track (SmG, ``X`` has ``music_id``) or on the best
        catalogue track (MsG). Returns a frame indexed like ``X`` with ``music_id``,
        ``start``, ``end`` (seconds), ``score`` and ``moment_score`` (and ``windows`` with
        ``moments_per_track > 1``, as :meth:`mgsv_sk.MGSVGrounder.predict`)."""
        moments = check_moments(moments_per_track)
        frame = self._frame(X)
        cat = self._catalogue
        source = self._source(features)
        videos = self._encode_videos(frame["video_id"].tolist(), source)
        if "music_id" in frame.columns:
            music_ids = frame["music_id"].tolist()
            cat = self._catalogue_for(music_ids, source, cat)
            rows = cat.positions(music_ids)
            scores = self._pair_scores(videos.emb, rows, cat)
        else:
            table = self._scores(videos.emb, cat)
            rows = np.argmax(table, axis=1)
            music_ids = [cat.ids[i] for i in rows]
            scores = table[np.arange(len(frame)), rows]
        seconds = _video_seconds(X, videos.lengths)
        start, end, moment = self._ground(videos, np.arange(len(frame)), rows, cat, seconds,
                                          moments)
        _require_finite(frame["video_id"].tolist(),
                        ~np.isfinite(np.c_[start[:, 0], end[:, 0], moment[:, 0], scores]
                                     ).all(axis=1), "video")
        out = pd.DataFrame({"music_id": music_ids, "start": start[:, 0], "end": end[:, 0],
                            "score": scores, "moment_score": moment[:, 0]},
                           index=X.index, columns=list(PREDICTION_COLUMNS))
        if moments > 1:
            out["windows"] = window_lists(start, end, moment)
        return out

    def decision_function(self, X: pd.DataFrame, features: Any = None,
                          music_ids: Any = None) -> np.ndarray:
        """Retrieval scores (n_videos, n_tracks); columns follow the catalogue, or
        ``music_ids`` (tracks outside the catalogue are encoded from ``features``)."""
        frame = self._frame(X)
        cat = self._catalogue
        gallery = cat.ids if music_ids is None else [_as_id(m) for m in music_ids]
        source = self._source(features)
        videos = self._encode_videos(frame["video_id"].tolist(), source)
        served = self._catalogue_for(gallery, source, cat)
        table = self._scores(videos.emb, served)
        if served.ids != list(gallery):
            table = table[:, served.positions(gallery)]
        return np.asarray(table)

    def rank(self, X: pd.DataFrame, k: int = 10, features: Any = None, *,
             moments_per_track: int = 1) -> pd.DataFrame:
        """Top-``k`` catalogue tracks per video with the moment on each: columns
        ``video_id, rank, music_id, score, start, end, moment_score`` (and ``windows`` with
        ``moments_per_track > 1``)."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        moments = check_moments(moments_per_track)
        frame = self._frame(X)
        cat = self._catalogue
        videos = self._encode_videos(frame["video_id"].tolist(), self._source(features))
        table = self._scores(videos.emb, cat)
        k = min(int(k), table.shape[1])
        top = top_k_indices(table, k)
        video_rows = np.repeat(np.arange(len(frame)), k)
        seconds = _video_seconds(X, videos.lengths)[video_rows]
        start, end, moment = self._ground(videos, video_rows, top.ravel(), cat, seconds,
                                          moments)
        _require_finite(frame["video_id"].to_numpy(dtype=object)[video_rows].tolist(),
                        ~np.isfinite(np.c_[start[:, 0], end[:, 0], moment[:, 0]]).all(axis=1),
                        "video")
        out = pd.DataFrame({
            "video_id": frame["video_id"].to_numpy(dtype=object)[video_rows],
            "rank": np.tile(np.arange(1, k + 1), len(frame)),
            "music_id": [cat.ids[i] for i in top.ravel()],
            "score": np.take_along_axis(table, top, axis=1).ravel(),
            "start": start[:, 0], "end": end[:, 0], "moment_score": moment[:, 0],
        }, columns=list(RANK_COLUMNS))
        if moments > 1:
            out["windows"] = window_lists(start, end, moment)
        return out

    def add_tracks(self, music_ids: Sequence[Any], features: Any = None) -> OnnxGrounder:
        """Encode tracks with the music encoder graph and append them to the catalogue."""
        ids = list(dict.fromkeys(_as_id(m) for m in music_ids))
        if not ids:
            raise ValueError("add_tracks needs at least one music_id")
        part = self._encode_music(ids, self._source(features))
        with self._lock:
            present = [m for m in ids if m in self._catalogue.index]
            if present:
                raise ValueError(f"{len(present)} music_id(s) are already in the catalogue, "
                                 f"e.g. {present[:5]}; add only new tracks")
            self._catalogue = self._catalogue.with_part(part)
        return self
