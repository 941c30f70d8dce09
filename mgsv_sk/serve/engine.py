"""The served model: one OnnxGrounder (its onnxruntime sessions shared by every request
thread), the catalogue it searches, and where each track's audio is.

Stateless per request: a call reads the grounder's catalogue snapshot and its own inputs
only, so two users at once get their own results. Torch-free (numpy, pandas,
onnxruntime, PyAV and soundfile for media).
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mgsv_sk.data.spans import MAX_MUSIC_SECONDS, SNIPPET_HOP_SECONDS
from mgsv_sk.files import sha256_file
from mgsv_sk.grounding import TopTracks

from ..extract.pipeline import AUDIO_EXTENSIONS
from ..extract.video import SERVE_LIMITS, VideoLimitError
from .audio import audio_seconds
from .batching import Abandoned, Coalescer
from .cores import usable_cores
from .statistics import InferStatistics

__all__ = ["Moment", "ServedModel", "TrackResult", "video_seconds"]

logger = logging.getLogger("mgsv_sk.serve")

MODEL_NAME = "mgsv"
_QUERY_ID = "query"


@dataclass(frozen=True)
class Moment:
    start: float
    end: float
    score: float


@dataclass(frozen=True)
class TrackResult:
    """One ranked track: retrieval ``score`` and its moments, best first."""

    rank: int
    music_id: str
    score: float
    moments: list[Moment]


@dataclass(frozen=True)
class _Request:
    frames: np.ndarray
    music_id: str | None
    k: int
    moments: int
    seconds: float


@dataclass
class Recommendation:
    """What ``recommend`` found for one video, with the seconds of each stage."""

    tracks: list[TrackResult]
    video_seconds: float
    frames: int
    timings: dict[str, float] = field(default_factory=dict)


def video_seconds(path: str | os.PathLike[str]) -> float:
    """A video's duration from its container, without decoding it.

    Raises
    ------
    ValueError
        Not a video PyAV (FFmpeg) can open, no video stream, or no duration.
    """
    from ..extract.video import _duration, open_video

    try:
        with open_video(path) as container:
            if not container.streams.video:
                raise ValueError("the file has no video stream")
            seconds = _duration(container, container.streams.video[0])
    except ValueError:
        raise
    except Exception as exc:  # FFmpeg's errors: invalid data, unknown format...
        raise ValueError(f"{type(exc).__name__}: {exc}") from exc
    if seconds is None or not math.isfinite(seconds) or seconds <= 0:
        raise ValueError("the video declares no duration")
    return seconds


def _track_result(rank: Any, music_id: Any, score: Any, found: Any) -> TrackResult:
    """One track's answer; ``found``: its ``[start, end, moment score]`` triples, best
    first, of which the non-finite ones (moments a track does not hold) are dropped."""
    moments = [Moment(float(s), float(e), float(p)) for s, e, p in found
               if all(math.isfinite(v) for v in (s, e, p))]
    return TrackResult(int(rank), str(music_id), float(score), moments)


def _top_results(top: TopTracks, lo: int, hi: int) -> list[TrackResult]:
    """Rows ``lo:hi`` of :meth:`rank_frames`' answer as TrackResults."""
    return [_track_result(top.ranks[i], top.music_ids[i], top.score[i],
                          np.column_stack([top.start[i], top.end[i], top.moment[i]]).tolist())
            for i in range(lo, hi)]


def _results(table: pd.DataFrame) -> list[TrackResult]:
    """Rows of ``predict`` (with ``windows`` when several moments were asked) as
    TrackResults, ranked 1, 2, ... in order."""
    columns = table.to_dict("list")  # one pass, no namedtuple class built per call
    windows = columns.get("windows", [None] * len(table))
    return [_track_result(i + 1, columns["music_id"][i], columns["score"][i],
                          windows[i] if isinstance(windows[i], list) else
                          [[columns["start"][i], columns["end"][i], columns["moment_score"][i]]])
            for i in range(len(table))]


class ServedModel:
    """A loaded bundle ready to answer requests. Build it with :meth:`load`.

    Attributes
    ----------
    grounder : OnnxGrounder
    checksum : str
        sha256 of the bundle's ``manifest.json`` (which lists the sha256 of every other
        file): one digest that names the exact model and catalogue arrays.
    version : str
        The model's version as the API reports it: the checksum's first 12 hex digits.
    """

    def __init__(self, grounder: Any, *, checksum: str, sources: dict[str, str] | None = None,
                 audio_dir: str | os.PathLike[str] | None = None,
                 catalogue: str | None = None, video_encoder: Any = None,
                 lanes: int | None = None) -> None:
        self.grounder = grounder
        self.checksum = checksum
        self.version = checksum[:12]
        self.catalogue = catalogue
        self._sources = dict(sources or {})
        self._audio_dir = None if audio_dir is None else Path(audio_dir)
        self._seconds: dict[str, float] = {}
        self._dims = grounder.manifest["dims"]
        #: What an upload may ask of the decoder (codec, frame size, frames to decode),
        #: checked from its header before any frame is decoded.
        self.video_limits = SERVE_LIMITS
        #: Batches of ``infer`` calls that wait while every lane is busy (:mod:`.batching`):
        #: ``lanes``, default a lane per usable core's worth of the grounder's threads (the
        #: affinity capped by a container's CPU quota, not the host's cores).
        threads = max(1, int(getattr(grounder, "n_threads", None) or 1))
        if lanes is None:
            lanes = max(1, usable_cores() // threads)
        self._batcher = Coalescer(self._infer_batch, lanes=lanes)
        #: Uploads decoded at once: the lanes' cores. The request threads are several per
        #: core (they mostly wait for a lane), and a decoder holds several full-size frames
        #: (4K: about 12 MB each), so their number must not set how many decode.
        self._decoding = threading.BoundedSemaphore(lanes * threads)
        #: Requests and executions since load (the OIP statistics extension).
        self.statistics = InferStatistics()
        #: Frames -> CLIP features for uploads: the bundle's own encoder unless given.
        self.video_encoder = video_encoder if video_encoder is not None else getattr(
            grounder, "video_encoder", None)

    @classmethod
    def load(cls, bundle: str | os.PathLike[str], catalogue: str | os.PathLike[str] | None = None,
             *, audio_dir: str | os.PathLike[str] | None = None,
             n_threads: int | None = 1, lanes: int | None = None) -> ServedModel:
        """Open ``bundle`` (checksums verified) and, if given, serve the tracks of the
        packed store ``catalogue`` (from ``mgsv-sk catalogue``) instead of the bundle's own;
        ``lanes`` batches at once (default: the usable cores over ``n_threads``).

        Raises
        ------
        FileNotFoundError, ValueError
            A missing or damaged bundle or store, or a store of another feature width.
        """
        from mgsv_sk.data.packed import PackedFeatures
        from mgsv_sk.export.manifest import MANIFEST_FILE
        from mgsv_sk.export.runtime import OnnxGrounder

        grounder = OnnxGrounder.load(bundle, n_threads)
        sources: dict[str, str] = {}
        name = None
        if catalogue is not None:
            store = PackedFeatures(catalogue)
            ids = store.music_ids()
            if not ids:
                raise ValueError(f"catalogue {catalogue!s} holds no tracks; build it with "
                                 "`mgsv-sk catalogue MUSIC_DIR OUT`")
            grounder.set_catalogue(ids, features=store)
            # the store's folder name only: answers never show a server path
            sources, name = store.music_sources(), Path(catalogue).resolve().name
        return cls(grounder, checksum=sha256_file(Path(bundle) / MANIFEST_FILE),
                   sources=sources, audio_dir=audio_dir, catalogue=name, lanes=lanes)

    @property
    def batch_delay(self) -> float:
        """Longest wait (s) of a free lane, while another is busy, for concurrent
        :meth:`infer` calls to batch with (:class:`.batching.Coalescer`)."""
        return self._batcher.max_delay

    @batch_delay.setter
    def batch_delay(self, seconds: float) -> None:
        self._batcher.max_delay = seconds  # checked there

    @property
    def lanes(self) -> int:
        """Batches of :meth:`infer` calls that run at once (one per core's worth of the
        grounder's threads)."""
        return self._batcher.lanes

    # -- the catalogue ------------------------------------------------------------------------
    @property
    def track_ids(self) -> Sequence[str]:
        ids: list[str] = self.grounder.catalogue_ids_
        return ids

    def has_track(self, music_id: str) -> bool:
        return music_id in self.grounder._served_catalogue().index

    def audio_path(self, music_id: str) -> Path | None:
        """The track's source audio: recorded by ``mgsv-sk catalogue``, else
        ``audio_dir/<music_id>.<ext>``; None when neither exists."""
        recorded = self._sources.get(music_id)
        if recorded is not None and Path(recorded).is_file():
            return Path(recorded)
        if self._audio_dir is not None:
            for ext in AUDIO_EXTENSIONS:
                candidate = self._audio_dir / f"{music_id}{ext}"
                if candidate.is_file():
                    return candidate
        return None

    def track_seconds(self, music_id: str) -> float:
        """The track's length: its audio file's, else its snippets x 2.5 s (at most the
        240 s the model reads)."""
        known = self._seconds.get(music_id)
        if known is not None:
            return known
        path = self.audio_path(music_id)
        seconds = None
        if path is not None:
            try:
                seconds = audio_seconds(path)
            except Exception:  # an unreadable file: fall back on the features' length
                seconds = None
        if seconds is None:
            cat = self.grounder._served_catalogue()
            snippets = int(cat.lengths[cat.positions([music_id])[0]])
            seconds = min(snippets * SNIPPET_HOP_SECONDS, MAX_MUSIC_SECONDS)
        self._seconds[music_id] = float(seconds)
        return float(seconds)

    # -- requests -----------------------------------------------------------------------------
    @property
    def frame_dim(self) -> int:
        return int(self._dims["video_dim"])

    @property
    def max_frames(self) -> int:
        return int(self._dims["max_frames"])

    def infer(self, frames: np.ndarray, *, music_id: str | None, k: int, moments: int,
              seconds: float, deadline: float | None = None,
              abandoned: threading.Event | None = None) -> list[TrackResult]:
        """Frame features ``(F, video_dim)`` -> the top-``k`` tracks (MsG), or the moment on
        ``music_id`` (SmG). Calls that arrive while every lane is busy are answered
        together, in one ``rank`` / ``predict`` call (:mod:`.batching`); each gets the
        answer it would get alone. A call still waiting for a lane at ``deadline``
        (``time.monotonic()`` seconds) raises :class:`.batching.DeadlineExceeded`
        unanswered, and one whose ``abandoned`` is set (its client left)
        :class:`.batching.Abandoned`."""
        request = _Request(np.ascontiguousarray(frames, np.float32), music_id, int(k),
                           int(moments), float(seconds))
        answer: list[TrackResult] = self._batcher.submit((music_id is None, int(moments)),
                                                         request, deadline, abandoned)
        return answer

    def warm_up(self) -> float:
        """Answer one MsG call on seeded random frames, so the first client's call does not
        pay for what a first call does once (the scan's value-space states, the compiled
        kernels, the sessions' first allocations); returns its seconds. Best effort: a
        model that cannot answer it says so on the clients' calls instead."""
        began = time.perf_counter()
        frames = np.random.default_rng(0).standard_normal(
            (min(8, self.max_frames), self.frame_dim)).astype(np.float32)
        try:
            self.infer(frames, music_id=None, k=1, moments=1, seconds=float(len(frames)))
        except Exception as exc:  # noqa: BLE001 - reported, not fatal
            logger.warning("warm-up call failed (%s: %s)", type(exc).__name__, exc)
        self.statistics = InferStatistics()  # the clients' calls only
        return time.perf_counter() - began

    def _infer_batch(self, requests: Sequence[_Request]) -> list[list[TrackResult]]:
        """One rank (MsG) or predict (SmG) call for requests of the same kind and moments,
        counted as one execution of the model."""
        began = time.perf_counter()
        try:
            return self._execute(requests)
        finally:
            self.statistics.executed(len(requests), time.perf_counter() - began)

    def _execute(self, requests: Sequence[_Request]) -> list[list[TrackResult]]:
        moments = requests[0].moments
        if requests[0].music_id is None:  # arrays, not frames: no pandas work per request
            top = self.grounder.rank_frames([r.frames for r in requests],
                                            [r.seconds for r in requests],
                                            k=max(r.k for r in requests),
                                            moments_per_track=moments)
            per = len(top.ranks) // len(requests)  # the same count per video, in order
            return [_top_results(top, i * per, i * per + min(r.k, per))
                    for i, r in enumerate(requests)]
        ids = [f"{_QUERY_ID}{i}" for i in range(len(requests))]
        features: tuple[dict[str, np.ndarray], dict[str, np.ndarray]] = (
            {v: r.frames for v, r in zip(ids, requests)}, {})
        query = pd.DataFrame({"video_id": ids, "music_id": [r.music_id for r in requests],
                              "video_segment_duration": [r.seconds for r in requests]})
        table = self.grounder.predict(query, features=features, moments_per_track=moments)
        return [_results(table.iloc[[i]]) for i in range(len(requests))]

    def recommend(self, path: Path, *, k: int, moments: int, max_seconds: float,
                  name: str | None = None,
                  abandoned: threading.Event | None = None) -> Recommendation:
        """A video file -> the top-``k`` tracks with their moments, as
        :meth:`mgsv_sk.export.runtime.OnnxGrounder.recommend` computes them (the same calls).

        Raises
        ------
        ValueError
            An unreadable video, one longer than ``max_seconds``, or one over
            :attr:`video_limits` (codec, frame size, frames to decode: checked before any
            frame is decoded); the message names the file as ``name`` (the client's file
            name), never the server's path.
        Abandoned
            ``abandoned`` was set (its client left) before the decoding or the ranking
            began: neither is done for nobody.
        """
        from ..extract.recommend import video_query

        shown = repr(name) if name else "the video"

        def unreadable(exc: ValueError) -> ValueError:
            cause = exc.__cause__ if exc.__cause__ is not None else exc
            why = str(cause).replace(f"'{path}'", shown).replace(str(path), shown)
            # FFmpeg's errors come as "[Errno 1094995529] Invalid data ...": the number is
            # its internal code, of no use to a client
            why = re.sub(r"^\[Errno -?\d+\]\s*", "", why)
            return ValueError(f"cannot read {shown} as a video ({why}); send a video file "
                              "FFmpeg can decode")

        began = time.perf_counter()
        try:
            seconds = video_seconds(path)  # from the header: a long video is not decoded
        except ValueError as exc:
            raise unreadable(exc) from exc
        if seconds > max_seconds:
            raise ValueError(f"{shown} is {seconds:.1f} s long; this server takes videos of "
                             f"at most {max_seconds:g} s: trim it")
        if self.video_encoder is None:
            raise ValueError("this bundle holds no video encoder, so it cannot read videos")

        def still_wanted() -> None:
            if abandoned is not None and abandoned.is_set():
                raise Abandoned

        try:
            with self._decoding:
                still_wanted()  # it may have waited here for the other uploads' decoding
                frame, feats = video_query(path, self.video_encoder, self.video_limits)
        except VideoLimitError as exc:  # readable, but asks too much of the decoder
            raise VideoLimitError(f"{shown}: {exc.__cause__ or exc}") from exc
        except ValueError as exc:
            raise unreadable(exc) from exc
        decoded = time.perf_counter()
        query = frame[["video_id", "video_segment_duration"]]
        still_wanted()
        table = self.grounder.rank(query, k=k, features=(feats, {}), moments_per_track=moments)
        ranked = time.perf_counter()
        return Recommendation(_results(table), float(frame["video_end"].iloc[0]),
                              int(len(next(iter(feats.values())))),
                              {"decode": decoded - began, "rank": ranked - decoded})

    @property
    def can_recommend(self) -> bool:
        return self.video_encoder is not None

    def metadata(self, limits: dict[str, Any]) -> dict[str, Any]:
        """The OIP model metadata, with the catalogue, the checksum and the limits."""
        manifest = self.grounder.manifest
        return {
            "name": MODEL_NAME,
            "versions": [self.version],
            "platform": "onnxruntime",
            "inputs": [
                {"name": "video_frames", "datatype": "FP32", "shape": [-1, self.frame_dim]},
                {"name": "music_id", "datatype": "BYTES", "shape": [1], "optional": True},
            ],
            "outputs": [
                {"name": "music_id", "datatype": "BYTES", "shape": [-1]},
                {"name": "score", "datatype": "FP32", "shape": [-1]},
                {"name": "moments", "datatype": "FP32", "shape": [-1, -1, 3]},
            ],
            "parameters": {
                "catalogue_tracks": len(self.track_ids),
                "catalogue": self.catalogue or "bundle",
                "bundle_sha256": self.checksum,
                "precision": self.grounder.precision,
                "max_frames": self.max_frames,
                "recommend_from_video": self.can_recommend,
                "exporter": manifest.get("exporter"),
                **limits,
            },
        }
