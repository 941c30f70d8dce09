"""The stored rows of a catalogue: a :class:`Part` holds tracks back to back (embeddings,
offsets, snippet tokens and X-Pool states), in memory or in a bundle's files read on
demand (:class:`NpyRows`, or compact rows from :mod:`mgsv_sk.search.compact`); a
:class:`Chunk` is a group of rows of similar length for the full X-Pool scan.

The per-snippet arrays of a bundle are read row range by row range with ``os.pread``
rather than memory-mapped: see :mod:`mgsv_sk.search.catalogue` for the measured reason.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np

from mgsv_sk.errors import ArtifactError
from mgsv_sk.search.compact import CompactRows, RowFile, open_compact
from mgsv_sk.search.ragged import pad_flat

__all__ = ["Chunk", "NpyRows", "Part", "Rows"]


class NpyRows(RowFile):
    """Row ranges of a 2-D little-endian float32 ``.npy`` file (a bundle's catalogue array),
    read on demand: :class:`mgsv_sk.search.compact.RowFile` with that layout checked.

    ``rows[a:b]`` returns an [b - a, D] float32 array.
    """

    shape: tuple[int, int]

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        if len(self.shape) != 2 or self.dtype != np.dtype("<f4"):
            raise ArtifactError(f"{path!s}: expected a C-order 2-D float32 array, got shape "
                                f"{self.shape}, dtype {self.dtype}")


Rows: TypeAlias = np.ndarray | NpyRows | CompactRows


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
            raise ArtifactError(f"catalogue of {folder!s} lacks {missing}")
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


class Chunk:
    """Catalogue rows of similar length: what one X-Pool scan step reads.

    The snippet states in one of two layouts, whichever the scorer reads: back to back
    (``flat``: row i's ``lengths[i]`` states after row i - 1's), as the onnxruntime
    backend's scan reads them, or padded (``states`` [U, S, D] with ``mask``), as the score
    graphs and torch read them. A chunk is built back to back; reading the other layout
    converts it and keeps only that one, so a catalogue's scan cache holds one copy of its
    states (a process scans with one backend). A scorer may also keep the states mapped row
    by row (:meth:`mapped`, e.g. through a projection it would otherwise apply to every
    pooled state of every query); that copy replaces the others too where ``source`` can
    read the states again. ``compact``: the catalogue stores its states in fewer bytes than
    float32 (float16 / int8), so a scorer may keep its copy in float16 too (half the memory
    and the bytes each scan streams) without answers the stored states did not already give.
    """

    def __init__(self, rows: np.ndarray, emb: np.ndarray, flat: np.ndarray,
                 lengths: np.ndarray, source: Callable[[], np.ndarray] | None = None,
                 compact: bool = False) -> None:
        self.rows, self.emb = rows, emb
        self.compact = compact
        self.lengths = np.asarray(lengths, np.int64)  # [U]
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)
        self._layout: dict[Any, Any] = {"flat": flat}
        self._source = source  # reads the states back to back again, or None
        self._lock = threading.Lock()

    def _read(self, layout: str) -> Any:
        held = self._layout.get(layout)
        if held is not None:
            return held
        with self._lock:
            if layout not in self._layout:
                if layout == "padded":
                    converted: Any = pad_flat(self._flat_locked(), self.lengths)
                else:
                    converted = self._flat_locked()
                self._layout = {layout: converted}
            return self._layout[layout]

    def _flat_locked(self) -> np.ndarray:
        """The states back to back from whichever layout is held (the lock held)."""
        if "flat" in self._layout:
            return np.asarray(self._layout["flat"])
        if "padded" in self._layout:
            states, mask = self._layout["padded"]
            return np.ascontiguousarray(states[mask])
        assert self._source is not None  # a mapped copy replaces the others only then
        return self._source()

    def mapped(self, key: Hashable, transform: Callable[[np.ndarray], np.ndarray]
               ) -> np.ndarray:
        """``transform`` of the states back to back ([sum S, D] -> [sum S, D'], row by row),
        computed on the first call for ``key`` and kept: in place of the other layouts when
        the chunk can read its states again (one copy in memory), beside them otherwise."""
        held = self._layout.get(("mapped", key))
        if held is not None:
            return np.asarray(held)
        with self._lock:
            name = ("mapped", key)
            if name not in self._layout:
                converted = transform(self._flat_locked())
                if self._source is not None:
                    self._layout = {name: converted}
                else:
                    self._layout[name] = converted
            return np.asarray(self._layout[name])

    def holds(self, key: Hashable) -> bool:
        """Whether the copy mapped for ``key`` is computed (:meth:`mapped`)."""
        return ("mapped", key) in self._layout

    @property
    def flat(self) -> np.ndarray:
        """Snippet states back to back: [sum S, D] float32 (``offsets`` [U + 1] marks rows)."""
        return self._read("flat")

    @property
    def states(self) -> np.ndarray:
        """Snippet states padded: [U, max S, D] float32."""
        return self._read("padded")[0]

    @property
    def mask(self) -> np.ndarray:
        """Valid snippets [U, max S] bool (a prefix of each row)."""
        return self._read("padded")[1]
