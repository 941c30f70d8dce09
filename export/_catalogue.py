"""The runtime's music catalogue: encoded tracks in ragged arrays, served from disk.

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
The track embeddings, read in full by every dual-score pass, stay memory-mapped.
"""

from __future__ import annotations

import json
import os
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np

from mgsv_sk.core.ann import AnnIndex, top_k_rows
from mgsv_sk.core.compact import CompactRows, open_compact

__all__ = ["Catalogue", "Chunk", "NpyRows", "Part", "pad"]


class NpyRows:
    """Row ranges of a 2-D little-endian float32 ``.npy`` file, read on demand.

    ``rows[a:b]`` returns an [b - a, D] array read with ``os.pread`` (no shared file
    position, so threads may read concurrently).
    """

    def __init__(self, path: Path) -> None:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            self._offset = fh.tell()
        if len(shape) != 2 or fortran or dtype != np.dtype("<f4"):
            raise ValueError(f"{path!s}: expected a C-order 2-D float32 array, got shape "
                             f"{shape}, dtype {dtype}, fortran_order {fortran}")
        self.path = path
        self.shape: tuple[int, int] = (int(shape[0]), int(shape[1]))
        self._row_bytes = self.shape[1] * 4
        size = path.stat().st_size
        if size != self._offset + self.shape[0] * self._row_bytes:
            raise ValueError(f"{path!s}: its header declares {self.shape[0]} x {self.shape[1]} "
                             f"float32 ({self.shape[0] * self._row_bytes} bytes of data) but "
                             f"the file holds {size - self._offset}; it is truncated or "
                             "damaged: export the bundle again")
        self._fd = os.open(path, os.O_RDONLY)
        weakref.finalize(self, os.close, self._fd)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: slice) -> np.ndarray:
        start, stop, step = key.indices(self.shape[0])
        if step != 1:
            raise ValueError("NpyRows reads contiguous row ranges only")
        n = max(stop - start, 0)
        want = n * self._row_bytes
        data = os.pread(self._fd, want, self._offset + start * self._row_bytes)
        if len(data) != want:
            raise OSError(f"{self.path!s} is shorter than its header says (truncated?)")
        return np.frombuffer(data, "<f4").reshape(n, self.shape[1])


Rows: TypeAlias = np.ndarray | NpyRows | CompactRows


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
    tokens [R, D] and xpool_states [R, D] (None without X-Pool)."""

    ids: tuple[str, ...]
    emb: np.ndarray
    offsets: np.ndarray
    tokens: Rows
    states: Rows | None

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
        return cls(ids, emb, offsets, rows("tokens"), xpool)


@dataclass(frozen=True)
class Chunk:
    """Catalogue rows of similar length, padded once: what one score_tracks call reads."""

    rows: np.ndarray
    emb: np.ndarray
    states: np.ndarray
    mask: np.ndarray


class Catalogue:
    """Encoded tracks, in catalogue order, from one or more parts; ``ann``: a first-stage
    index over the first part's embeddings (:mod:`mgsv_sk.core.ann`), or None."""

    def __init__(self, parts: Sequence[Part], ann: AnnIndex | None = None) -> None:
        self.parts = tuple(parts)
        self.ann = ann
        self.ids: list[str] = [i for p in self.parts for i in p.ids]
        self.index = {m: i for i, m in enumerate(self.ids)}
        if len(self.index) != len(self.ids):
            raise ValueError("catalogue ids must be unique")
        self._starts = np.cumsum([0] + [len(p.ids) for p in self.parts]).astype(np.int64)
        self.lengths = np.concatenate([np.diff(p.offsets) for p in self.parts]).astype(np.int64)
        self.has_xpool = all(p.states is not None for p in self.parts)
        self._chunks: dict[int, list[Chunk]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.ids)

    def with_part(self, part: Part) -> Catalogue:
        """A new snapshot with ``part``'s tracks appended."""
        return Catalogue(self.parts + (part,), self.ann)

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

    def positions(self, music_ids: Sequence[str]) -> np.ndarray:
        return np.array([self.index[m] for m in music_ids], dtype=np.int64)

    # -- reading rows ---------------------------------------------------------------------
    def _locate(self, row: int) -> tuple[Part, int]:
        p = int(np.searchsorted(self._starts, row, side="right")) - 1
        return self.parts[p], row - int(self._starts[p])

    def emb(self, rows: np.ndarray) -> np.ndarray:
        """Track embeddings of ``rows``, [k, D] float32."""
        if len(self.parts) == 1:
            return np.asarray(self.parts[0].emb[np.asarray(rows)], np.float32)
        out = []
        for r in rows:
            part, i = self._locate(int(r))
            out.append(part.emb[i])
        return np.asarray(out, np.float32).reshape(len(out), -1)

    def _slices(self, field: str, rows: np.ndarray) -> list[np.ndarray]:
        out = []
        for r in rows:
            part, i = self._locate(int(r))
            out.append(getattr(part, field)[part.offsets[i]: part.offsets[i + 1]])
        return out

    def tokens(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Snippet tokens of ``rows``, padded: [k, max S, D] float32 and mask [k, max S]."""
        parts = self._slices("tokens", rows)
        return pad(parts, parts[0].shape[1])

    def xpool_states(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """X-Pool snippet states of ``rows``, padded: [k, max S, D], mask [k, max S]."""
        parts = self._slices("states", rows)
        return pad(parts, parts[0].shape[1])

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
                    states, mask = self.xpool_states(rows)
                    built.append(Chunk(rows, self.emb(rows), states, mask))
                self._chunks[size] = built
            return self._chunks[size]
