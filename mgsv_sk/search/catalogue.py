"""The music catalogue both backends serve: encoded tracks in ragged arrays, and the
retrieval search over it (dual score, full X-Pool scan, two-stage search, top-k).

A catalogue keeps, per track, the dual embedding h0(M) [D], the snippet tokens [S, D] the
moment detector reads, and the layer-normed X-Pool snippet states [S, D] (X-Pool depends
on the video only through its query, so the per-track part is computed once). Ragged
per-track arrays are stored back to back with offsets, so a catalogue costs its valid
snippets only. Scoring runs over chunks of tracks and of videos: no [videos x tracks x D]
tensor is ever built in one piece. The network parts of a score (X-Pool) come from the
backend as a :class:`Scorer` (one per backend: ``mgsv_sk.infer.catalogue.TorchXPool``,
``export.runtime``'s onnxruntime one); everything else is here, once. A catalogue may
also hand its search to shards on Dask workers (:meth:`Catalogue.with_shards`,
:mod:`.sharded`); the same scorer then runs on the shards.

A :class:`Catalogue` is an immutable snapshot made of parts (the bundle's arrays, then one
part per ``add_tracks`` call), so appending never copies the bundle's arrays and a request
that started on the old snapshot finishes on it. Its only lazily built state, the padded
chunks for the full X-Pool scan, is made once under a lock.

The per-snippet arrays of the bundle (tokens and X-Pool snippet states: ~11.6 GB for
100,000 tracks) are read row range by row range with ``os.pread`` (:class:`NpyRows`): the data sit
in the OS page cache, shared and evictable, and the process holds only what a request
copies out. A memory map would instead count every page it touched in the process's
resident memory, and with readahead and large page-cache folios one 115 KB track maps
about 2 MB (measured: 20 two-stage queries against 100,000 tracks left 2.8 GB mapped).
The track embeddings, read in full by every dual-score pass, stay memory-mapped for
those scans; the scattered rows a two-stage search re-ranks are read with ``pread``
too (with an ANN first stage at 1M tracks, gathering them from the map left about
1 GB of the 1 GB file resident after 200 queries).

For catalogues of millions of tracks (:meth:`Catalogue.compacted`, or a bundle whose
manifest says so) the per-snippet arrays may be stored float16 / int8 (:mod:`.compact`,
decoded as read) and the dual top-K of the two-stage search may come from an ANN index
(:mod:`.ann`); both backends get them through this module's search.
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, TypeVar

import numpy as np

from mgsv_sk.search.compact import (
    CompactRows,
    RowFile,
    open_compact,
    read_concat,
    read_ranges,
    take_rows,
)
from mgsv_sk.search.topk import top_k_indices, top_k_rows

if TYPE_CHECKING:
    from mgsv_sk.search.ann import AnnIndex, AnnParams

__all__ = ["TWO_STAGE_MARGIN", "Catalogue", "Chunk", "NpyRows", "Part", "Scorer", "Shards",
           "SnippetRows", "TrackIndex", "pad", "pair_scores", "retrieval_scores",
           "sorted_batches", "top_k_indices", "top_k_rows"]

#: Two-stage search: tracks not re-ranked by X-Pool keep their dual score minus this, so
#: every re-ranked pair (dual + X-Pool, at least -2) ranks above them (dual, at most 1).
TWO_STAGE_MARGIN = 4.0
#: Videos per scoring call of a full X-Pool scan.
VIDEO_BATCH = 256


class TrackIndex:
    """Track ids in catalogue order with their rows: what every grounder's catalogue has
    (a backend with encodings uses :class:`Catalogue`)."""

    def __init__(self, ids: Sequence[str]) -> None:
        self.ids: list[str] = [str(i) for i in ids]
        self.index = {m: i for i, m in enumerate(self.ids)}
        if len(self.index) != len(self.ids):
            raise ValueError("catalogue ids must be unique")

    def __len__(self) -> int:
        return len(self.ids)

    def positions(self, music_ids: Sequence[str]) -> np.ndarray:
        """Row of each id; raises a KeyError naming the ids that are not catalogued."""
        missing = [m for m in music_ids if m not in self.index]
        if missing:
            raise KeyError(
                f"{len(missing)} music_id(s) not in the catalogue, e.g. {missing[:5]}; "
                "add them with set_catalogue(...) or pass a feature source that has them"
            )
        return np.array([self.index[m] for m in music_ids], dtype=np.int64)


class NpyRows(RowFile):
    """Row ranges of a 2-D little-endian float32 ``.npy`` file (a bundle's catalogue array),
    read on demand: :class:`mgsv_sk.search.compact.RowFile` with that layout checked.

    ``rows[a:b]`` returns an [b - a, D] float32 array.
    """

    shape: tuple[int, int]

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        if len(self.shape) != 2 or self.dtype != np.dtype("<f4"):
            raise ValueError(f"{path!s}: expected a C-order 2-D float32 array, got shape "
                             f"{self.shape}, dtype {self.dtype}")


Rows: TypeAlias = np.ndarray | NpyRows | CompactRows


def sorted_batches(lengths: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    """Index batches of items sorted by length (least padding), in a stable order.

    >>> [b.tolist() for b in sorted_batches(np.array([5, 1, 3]), 2)]
    [[1, 2], [0]]
    """
    order = np.argsort(lengths, kind="stable")
    for lo in range(0, len(order), batch_size):
        yield order[lo: lo + batch_size]


def pad(arrays: Sequence[np.ndarray], width: int) -> tuple[np.ndarray, np.ndarray]:
    """[T_i, width] arrays -> zero-padded [n, max T_i, width] float32 and bool mask [n, max T_i]."""
    longest = max(len(a) for a in arrays)
    out = np.zeros((len(arrays), longest, width), np.float32)
    mask = np.zeros((len(arrays), longest), bool)
    for i, a in enumerate(arrays):
        out[i, : len(a)] = a
        mask[i, : len(a)] = True
    return out, mask


@dataclass(frozen=True)
class Part:
    """Tracks stored back to back, as mgsv_sk's MusicCatalogue: emb [n, D], offsets [n + 1],
    tokens [R, D] and xpool_states [R, D] (None without X-Pool); ``emb_file``: the same
    embeddings read row by row with ``pread`` (a loaded bundle's), for scattered rows."""

    ids: tuple[str, ...]
    emb: np.ndarray
    offsets: np.ndarray
    tokens: Rows
    states: Rows | None
    emb_file: RowFile | None = None

    @classmethod
    def from_tracks(cls, ids: Sequence[str], emb: np.ndarray, tokens: Sequence[np.ndarray],
                    states: Sequence[np.ndarray] | None) -> Part:
        """From per-track [S_i, D] tokens and X-Pool states (valid snippets only)."""
        lengths = np.array([len(t) for t in tokens], np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        return cls(tuple(ids), np.ascontiguousarray(emb, np.float32), offsets,
                   np.concatenate(tokens).astype(np.float32, copy=False),
                   None if states is None
                   else np.concatenate(states).astype(np.float32, copy=False))

    @classmethod
    def load(cls, folder: Path, files: dict[str, str], states: str = "float32") -> Part:
        """The bundle's catalogue: embeddings memory-mapped, per-snippet arrays read on
        demand (:class:`NpyRows`; compact ``states``, "float16" / "int8": decoded as read)."""
        missing = [r for r in ("ids", "emb", "offsets", "tokens") if r not in files]
        if missing:
            raise ValueError(f"catalogue of {folder!s} lacks {missing}")
        ids = tuple(str(i) for i in json.loads((folder / files["ids"]).read_text()))
        emb: Any = np.load(folder / files["emb"], mmap_mode="r", allow_pickle=False)
        offsets = np.load(folder / files["offsets"], allow_pickle=False).astype(np.int64)

        def rows(role: str) -> Rows:
            if states == "float32":
                return NpyRows(folder / files[role])
            scales = {"scales": files[f"{role}_scales"]} if f"{role}_scales" in files else {}
            return open_compact(folder, {"data": files[role], **scales}, states)

        xpool = rows("xpool_states") if "xpool_states" in files else None
        return cls(ids, emb, offsets, rows("tokens"), xpool, RowFile(folder / files["emb"]))


@dataclass(frozen=True)
class Chunk:
    """Catalogue rows of similar length, padded once: what one score_tracks call reads."""

    rows: np.ndarray
    emb: np.ndarray
    states: np.ndarray
    mask: np.ndarray


CatalogueT = TypeVar("CatalogueT", bound="Catalogue")


class Shards(Protocol):
    """What a catalogue asks of the shards that search it
    (:class:`mgsv_sk.search.sharded.ShardedCatalogue`)."""

    ids: tuple[str, ...]
    exact: bool

    def __len__(self) -> int: ...

    def search(self, video_emb: np.ndarray, k: int, *, xpool_top_k: int | None = None,
               rescore: bool = True) -> tuple[np.ndarray, np.ndarray]: ...


class Catalogue(TrackIndex):
    """Encoded tracks, in catalogue order, from one or more parts; ``ann``: a first-stage
    index over the first part's embeddings (:mod:`mgsv_sk.search.ann`), or None."""

    def __init__(self, parts: Sequence[Part], ann: AnnIndex | None = None) -> None:
        self.parts = tuple(parts)
        self.ann = ann
        super().__init__([i for p in self.parts for i in p.ids])
        self._starts = np.cumsum([0] + [len(p.ids) for p in self.parts]).astype(np.int64)
        self.lengths = np.concatenate([np.diff(p.offsets) for p in self.parts]).astype(np.int64)
        self.has_xpool = all(p.states is not None for p in self.parts)
        #: The shards on Dask workers that search these tracks (:meth:`with_shards`).
        self.shards: Shards | None = None
        self._chunks: dict[int, list[Chunk]] = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        del state["_lock"]  # a lock is not copied; the padded chunks are rebuilt on demand
        state["_chunks"] = {}
        state["shards"] = None  # a Dask cluster's futures do not travel: search here
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @classmethod
    def from_arrays(cls, ids: Sequence[str], emb: np.ndarray, tokens: Rows,
                    xpool_states: Rows | None, offsets: np.ndarray) -> Catalogue:
        """One part from back-to-back arrays (as saved): emb [N, D], tokens and X-Pool
        states [R, D], offsets [N + 1]."""
        return cls([Part(tuple(str(i) for i in ids), emb, np.asarray(offsets, np.int64),
                         tokens, xpool_states)])

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
        """emb [N, D], tokens [R, D], X-Pool states [R, D] (or None) and offsets [N + 1]
        of the whole catalogue, back to back (what a saved model or a bundle stores)."""
        p = self.parts[0]
        if len(self.parts) == 1 and isinstance(p.tokens, np.ndarray) and (
                p.states is None or isinstance(p.states, np.ndarray)):
            return (np.asarray(p.emb, np.float32), np.asarray(p.tokens, np.float32),
                    None if p.states is None else np.asarray(p.states, np.float32),
                    np.asarray(p.offsets, np.int64))
        def whole(rows: Rows) -> np.ndarray:
            return np.asarray(rows[0: len(rows)], np.float32)

        emb = np.concatenate([np.asarray(p.emb, np.float32) for p in self.parts])
        tokens = np.concatenate([whole(p.tokens) for p in self.parts])
        states = (np.concatenate([whole(p.states) for p in self.parts if p.states is not None])
                  if self.has_xpool else None)
        offsets = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)
        return emb, tokens, states, offsets

    def check_finite(self) -> Catalogue:
        """The catalogue itself, after checking every track's arrays are finite (a NaN
        never enters a served catalogue)."""
        from mgsv_sk.data._sources import require_finite

        rows = np.arange(len(self))
        bad = ~np.isfinite(self.emb(rows)).all(axis=1)
        for field in ("tokens", "states") if self.has_xpool else ("tokens",):
            for r, data in enumerate(self._slices(field, rows)):
                bad[r] |= not np.isfinite(data).all()
        require_finite(self.ids, bad, "track")
        return self

    def with_part(self, part: Part) -> Catalogue:
        """A new snapshot with ``part``'s tracks appended (the index still covers the
        first part; :meth:`first_stage` scans the added ones)."""
        return Catalogue(self.parts + (part,), self.ann)

    def compacted(self, states: str = "float32", index: str = "exact",
                  params: AnnParams | None = None) -> Catalogue:
        """A copy (same class) whose snippet tokens and X-Pool states are stored as
        ``states`` ("float32", "float16", "int8"; :mod:`mgsv_sk.search.compact`) and whose
        embeddings are indexed for the first stage (``index``: "auto", "exact", "hnsw",
        "ivf"; :mod:`mgsv_sk.search.ann`); the parts are merged into one first."""
        import copy

        from mgsv_sk.search.ann import build_index
        from mgsv_sk.search.compact import check_state_dtype, encode_rows

        check_state_dtype(states)
        emb, tokens, xpool, offsets = self.arrays()  # float32, decoded

        def store(data: np.ndarray) -> Rows:
            return data if states == "float32" else encode_rows(data, states)

        out = copy.copy(self)  # a fresh lock and no padded chunks (__getstate__)
        out.parts = (Part(tuple(self.ids), emb, offsets, store(tokens),
                          None if xpool is None else store(xpool)),)
        out._starts = np.array([0, len(self)], np.int64)
        out.ann = build_index(emb, index, params)
        return out

    def with_shards(self: CatalogueT, shards: Shards) -> CatalogueT:
        """This catalogue, its retrieval search run by ``shards`` (scattered from it, see
        :meth:`ShardedCatalogue.scatter`): the moment head still reads the tokens here."""
        if tuple(shards.ids) != tuple(self.ids):
            raise ValueError("these shards were scattered from another catalogue (their "
                             f"{len(shards)} tracks are not this catalogue's {len(self)}); "
                             "scatter this grounder's catalogue (shard_catalogue) and pass "
                             "that")
        out = copy.copy(self)
        out.shards = shards
        return out

    @property
    def approximate(self) -> bool:
        """Whether the dual top-k comes from an approximate index (HNSW / IVF)."""
        return self.ann is not None and not self.ann.exact

    def first_stage(self, video_emb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Dual scores and rows of each video's ``k`` best tracks, (B, k) each, best first:
        the index over the first part, merged with an exact scan of any added parts."""
        assert self.ann is not None
        scores, rows = self.ann.search(video_emb, k)
        if len(self.parts) > 1:
            rest = np.concatenate([(np.asarray(p.emb) @ video_emb.T).T for p in self.parts[1:]],
                                  axis=1)  # [B, added tracks]
            cols = np.broadcast_to(np.arange(self._starts[1], len(self)), rest.shape)
            scores, rows = top_k_rows(np.concatenate([scores, rest], axis=1),
                                      np.concatenate([rows, cols], axis=1), k)
        return scores, rows

    # -- reading rows ---------------------------------------------------------------------
    def _locate(self, row: int) -> tuple[Part, int]:
        p = int(np.searchsorted(self._starts, row, side="right")) - 1
        return self.parts[p], row - int(self._starts[p])

    def emb(self, rows: np.ndarray) -> np.ndarray:
        """Track embeddings of ``rows``, [k, D] float32."""
        if len(self.parts) == 1:
            part = self.parts[0]
            return take_rows(part.emb if part.emb_file is None else part.emb_file, rows)
        out = []
        for r in rows:
            part, i = self._locate(int(r))
            out.append(part.emb[i])
        return np.asarray(out, np.float32).reshape(len(out), -1)

    def _slices(self, field: str, rows: np.ndarray) -> list[np.ndarray]:
        if len(self.parts) == 1:  # the common case: no part lookup per row
            part = self.parts[0]
            data, offsets = getattr(part, field), part.offsets.tolist()
            return read_ranges(data, [(offsets[r], offsets[r + 1])
                                      for r in np.asarray(rows).tolist()])
        out = []
        for r in rows:
            part, i = self._locate(int(r))
            out.append(getattr(part, field)[part.offsets[i]: part.offsets[i + 1]])
        return out

    def states(self, rows: np.ndarray) -> np.ndarray:
        """X-Pool snippet states of ``rows``, back to back (their offsets follow
        ``lengths[rows]``): [sum S, D] float32, compact rows decoded."""
        return np.concatenate(self._slices("states", rows)).astype(np.float32, copy=False)

    def padded_tokens(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Snippet tokens of ``rows``, padded: [k, max S, D] float32 and mask [k, max S]."""
        return self._padded("tokens", rows)

    def padded_states(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """X-Pool snippet states of ``rows``, padded: [k, max S, D], mask [k, max S]."""
        return self._padded("states", rows)

    def _padded(self, field: str, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = np.asarray(rows, np.int64).reshape(-1)
        lengths = self.lengths[rows]
        if len(self.parts) == 1:  # every range read at once, decoded in one pass
            part = self.parts[0]
            flat = read_concat(getattr(part, field), list(zip(
                part.offsets[rows].tolist(), part.offsets[rows + 1].tolist())))
        else:
            flat = np.concatenate(self._slices(field, rows)).astype(np.float32, copy=False)
        mask = np.arange(int(lengths.max()))[None, :] < lengths[:, None]  # [k, max S]
        out = np.zeros((len(rows), mask.shape[1], flat.shape[1]), np.float32)
        out[mask] = flat  # row-major order of the mask = the ranges back to back
        return out, mask

    def dual(self, video_emb: np.ndarray) -> np.ndarray:
        """cos(h(v), h0(M)) of unit-norm videos [B, D] against every track, [B, N] float32."""
        # [N, D] @ [D, B] reads the (possibly memory-mapped) rows in order: a fast GEMV.
        return np.ascontiguousarray(
            np.concatenate([(np.asarray(p.emb) @ video_emb.T).T for p in self.parts], axis=1))

    def chunks(self, size: int) -> list[Chunk]:
        """Every track in chunks of ``size`` tracks of similar length (least padding), snippet
        states padded once and kept (the full X-Pool scan reads them every query)."""
        cached = self._chunks.get(size)
        if cached is not None:
            return cached
        with self._lock:
            if size not in self._chunks:
                order = np.argsort(self.lengths, kind="stable")
                built = []
                for lo in range(0, len(order), size):
                    rows = order[lo: lo + size]
                    states, mask = self.padded_states(rows)
                    built.append(Chunk(rows, self.emb(rows), states, mask))
                self._chunks[size] = built
            return self._chunks[size]


class SnippetRows(Protocol):
    """What a scorer reads of the tracks it scores: a :class:`Catalogue`, or one shard of
    it on a Dask worker (:class:`mgsv_sk.search.sharded.Shard`)."""

    def emb(self, rows: np.ndarray) -> np.ndarray:
        """Dual embeddings of ``rows``, [k, D] float32."""

    def padded_states(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """X-Pool snippet states of ``rows``, padded [k, S, D], and their mask [k, S]."""


class Scorer(Protocol):
    """The network part of a retrieval score, one implementation per backend (torch eager,
    onnxruntime). Both methods return the model's whole score: dual + X-Pool (the enabled
    ones). A scorer that travels to Dask workers (shards) must pickle."""

    def tracks(self, video_emb: np.ndarray, chunk: Chunk) -> np.ndarray:
        """Score of unit-norm videos [B, D] against every track of ``chunk``, [B, U]."""

    def pairs(self, video_emb: np.ndarray, rows: np.ndarray, cat: SnippetRows) -> np.ndarray:
        """Score of (video i, row ``rows[i]`` of ``cat``), [B]."""

    # Optional: ``scan(video_emb, chunks, n_tracks)`` -> [B, N], every track at once (the
    # full X-Pool scan uses it when present; it must equal ``tracks`` over the chunks).


def check_positive(value: Any, name: str, *, optional: bool = False) -> int | None:
    """``value`` as an int >= 1 (or None when ``optional``), else a ValueError naming
    ``name``: the one check of a settable count (``xpool_top_k``, ``track_chunk``)."""
    if value is None and optional:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) \
            or value < 1:
        allowed = "a positive integer" + (" or None" if optional else "")
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return int(value)


def retrieval_scores(video_emb: np.ndarray, cat: Catalogue, xpool: Scorer | None, *,
                     use_dual: bool, xpool_top_k: int | None = None,
                     track_chunk: int = 128) -> np.ndarray:
    """Retrieval scores of unit-norm videos [B, D] against every catalogue track, (B, N).

    The dual score covers every track; the X-Pool score (``xpool`` given) every track
    too, or with ``xpool_top_k`` only each video's ``xpool_top_k`` best tracks by dual
    score (two-stage search for large catalogues; the rest keep their dual score minus
    :data:`TWO_STAGE_MARGIN`, so they rank after every re-ranked track). With an
    approximate index (``cat.approximate``) the top-K come from the index and the other
    tracks score -inf, X-Pool or not.
    """
    xpool_top_k = check_positive(xpool_top_k, "xpool_top_k", optional=True)
    track_chunk = int(check_positive(track_chunk, "track_chunk") or 1)
    video_emb = np.ascontiguousarray(video_emb, np.float32)
    if cat.shards is not None:
        # The shards answer each video's best tracks, scored as below would score them;
        # tracks outside that list score -inf (never retrieved), as with an ANN index.
        two_stage = xpool is not None and use_dual and xpool_top_k is not None
        depth = min(xpool_top_k, len(cat)) if xpool_top_k and two_stage else len(cat)
        scores, rows = cat.shards.search(video_emb, len(cat) if cat.shards.exact else depth,
                                         xpool_top_k=depth, rescore=xpool is not None)
        table = np.full((len(video_emb), len(cat)), -np.inf, np.float32)
        np.put_along_axis(table, rows, scores, axis=1)
        return table
    if xpool_top_k is not None and xpool_top_k < len(cat) and use_dual and cat.approximate:
        # ANN first stage: the tracks it does not return score -inf (never retrieved)
        first, cand = cat.first_stage(video_emb, xpool_top_k)  # (B, K) each
        table = np.full((len(video_emb), len(cat)), -np.inf, np.float32)
        videos, cols = np.nonzero(cand >= 0)
        rows = cand[videos, cols]
        table[videos, rows] = (first[videos, cols] if xpool is None
                               else xpool.pairs(video_emb[videos], rows, cat))
        return table
    if xpool is None:
        if not use_dual:
            raise ValueError("a retrieval score needs the dual score or X-Pool")
        return cat.dual(video_emb)
    if xpool_top_k is not None and xpool_top_k < len(cat) and use_dual:
        dual = cat.dual(video_emb)
        cand = top_k_indices(dual, xpool_top_k)  # (B, K)
        out = dual - TWO_STAGE_MARGIN
        videos = np.repeat(np.arange(len(video_emb)), cand.shape[1])
        out[videos, cand.ravel()] = xpool.pairs(video_emb[videos], cand.ravel(), cat)
        return out
    scan = getattr(xpool, "scan", None)
    if scan is not None:  # a scorer that scores a whole catalogue at once (export._xpool)
        return np.asarray(scan(video_emb, cat.chunks(track_chunk), len(cat)), np.float32)
    out = np.empty((len(video_emb), len(cat)), np.float32)
    for chunk in cat.chunks(track_chunk):
        for lo in range(0, len(video_emb), VIDEO_BATCH):
            out[lo: lo + VIDEO_BATCH, chunk.rows] = xpool.tracks(
                video_emb[lo: lo + VIDEO_BATCH], chunk)
    return out


def pair_scores(video_emb: np.ndarray, rows: np.ndarray, cat: Catalogue,
                xpool: Scorer | None) -> np.ndarray:
    """Retrieval score of each (video i, catalogue row ``rows[i]``) pair, (n,) float32."""
    video_emb = np.ascontiguousarray(video_emb, np.float32)
    if xpool is None:
        return (video_emb * cat.emb(rows)).sum(-1).astype(np.float32)
    return np.asarray(xpool.pairs(video_emb, np.asarray(rows), cat), np.float32)
