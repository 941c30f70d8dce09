"""The X-Pool score in numpy and compiled loops: the runtime's fast path for the catalogue
scan (float32).

The bundle's ``score_tracks`` graph computes the same score (``mgsv_sk.nn.xpool``), and
for a batch of videos onnxruntime runs it well. One video against a catalogue is a
different shape of work: two passes over every snippet state (attention logits, then the
pooling) with one small vector, memory-bound, and the graph makes each pass separately
over 128-track chunks of several MB (measured: 50 ms at 2,000 tracks on one thread, the
states read twice from memory). Here a few videos are pooled by a compiled kernel that
reads each track's states once (:mod:`._pool_kernel`); a larger batch as GEMMs over blocks
of about 1 MB, so the pooling re-reads the block from the core's cache. The projections of
the head (out, proj) run once over every pooled state as [U, D] x [D, D] products, each
followed by a one-pass LayerNorm (the last one ending in the cosine). The parameters are
the bundle's ``graphs/xpool_weights.npz`` (written by the exporter beside the graphs; an
older bundle without it is served by the graphs), and ``tests/test_export.py`` holds the
two equal.

Exact rewrites used (see ``mgsv_sk.nn.xpool``): the key projection moves to the query
side, q' = W_k^T q; the value and output projections fold into one [D, D] map applied
after pooling, W_o W_v and W_o b_v + b_o; the residual x + W_p x is one product with
(I + W_p), and the attention LayerNorm's weight and bias fold into it.

The full scan goes one step further: each chunk of the catalogue keeps its states mapped
through the value/output projection, u_s = W_o W_v n_s + W_o b_v + b_o (once, in place of
the states: :meth:`mgsv_sk.search.parts.Chunk.mapped`), so the pooled u is the attention
output itself and a query costs one [N, D] x [D, D] product, not two. The logits read u
through the inverse map, q' . n_s = ((W_o W_v)^-T q') . u_s + a constant per track that the
softmax drops; that is exact up to float32 rounding scaled by the map's condition number,
so a model whose map is poorly conditioned (above :data:`_MAX_CONDITION`) scans the states.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from mgsv_sk.export._pool_kernel import layer_norm_rows, norm_cosine, pool_tracks, warm_up
from mgsv_sk.search.ragged import pad_flat

__all__ = ["XPOOL_WEIGHTS", "NumpyXPool", "xpool_arrays"]

#: The bundle file holding the X-Pool parameters (float32 arrays, no pickle).
XPOOL_WEIGHTS = "graphs/xpool_weights.npz"
#: Bytes of snippet states a block holds: the pooling re-reads them from the L2 cache.
_BLOCK_BYTES = 1 << 20
#: Up to this many videos the pooling reads the states once in the compiled kernel (memory-
#: bound); a larger batch is compute-bound and runs as GEMMs. Measured at 2,000 tracks on
#: one thread (Intel): the kernel 41.7-41.9 against 54.8-57.0 ms at 12 videos, 52.2-54.7
#: against 59.0-60.8 at 16, 78.7-79.7 against 70.5-72.4 at 24; ``tests/test_export.py``
#: holds both equal to the graphs.
_KERNEL_VIDEOS = 16
#: The largest condition number of W_o W_v for which the scan reads value-space states
#: (rounding of the logits grows with it; trained models measured here: below 3).
_MAX_CONDITION = 100.0
#: Rows mapped per product when a chunk's states are mapped (bounds the temporaries).
_MAP_ROWS = 1 << 15
_NAMES = ("norm_in.weight", "norm_in.bias", "q.weight", "q.bias", "k.weight", "v.weight",
          "v.bias", "out.weight", "out.bias", "norm_attn.weight", "norm_attn.bias",
          "proj.weight", "proj.bias", "norm_out.weight", "norm_out.bias")


def _into(flat: np.ndarray, part: np.ndarray,
          transform: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``transform(flat)`` written into ``part`` (a slice of the scan's one array) and
    returned as it; a map that answers another type (float16's range passed: float32)
    keeps its own array."""
    mapped = transform(flat)
    if mapped.dtype != part.dtype or mapped.shape != part.shape:
        return mapped
    part[...] = mapped
    return part


def _float16_copy(flat: np.ndarray) -> np.ndarray:
    """States [R, D] -> float16 (the scan's copy of a compact catalogue's states), or
    float32 where a value lies past float16's range (a value-space map can scale them up):
    the scan then reads the float32 copy rather than infinities."""
    with np.errstate(over="ignore"):  # checked just below
        half = flat.astype(np.float16)
    return half if np.isfinite(half).all() else np.asarray(flat, np.float32)


def xpool_arrays(xpool: Any) -> dict[str, np.ndarray]:
    """The parameters of a torch ``XPool`` module as float32 arrays (exporter side), with
    the LayerNorms' eps and the attention scale."""
    state = {k: v.detach().cpu().float().numpy() for k, v in xpool.state_dict().items()}
    out = {name: np.ascontiguousarray(state[name], np.float32) for name in _NAMES}
    out["eps"] = np.asarray([xpool.norm_in.eps, xpool.norm_attn.eps, xpool.norm_out.eps],
                            np.float64)
    out["scale"] = np.asarray(xpool.scale, np.float64)
    return out


class NumpyXPool:
    """Dual + X-Pool scores from cached snippet states, as :class:`mgsv_sk.search.catalogue.
    Scorer` (the onnxruntime scorer's twin, for float32 bundles)."""

    def __init__(self, arrays: dict[str, np.ndarray], use_dual: bool) -> None:
        a = {k: np.asarray(v) for k, v in arrays.items()}
        missing = [n for n in (*_NAMES, "eps", "scale") if n not in a]
        if missing:
            raise ValueError(f"the X-Pool weights lack {missing}; re-export the bundle")
        self.use_dual = use_dual
        self._lock = threading.Lock()
        self._eps = [float(e) for e in a["eps"]]
        self._norm_in = a["norm_in.weight"], a["norm_in.bias"]
        self._q = a["q.weight"], a["q.bias"]
        self._scale = float(a["scale"])
        self._k_weight = a["k.weight"]
        out_w = a["out.weight"].astype(np.float64)
        values = out_w @ a["v.weight"]  # W_o W_v [D,D], float64
        self._values_t = np.ascontiguousarray(values.T, np.float32)  # [D,D]
        self._values_b = (out_w @ a["v.bias"] + a["out.bias"]).astype(np.float32)
        # the query's map into value space, W_k (W_o W_v)^-1, or None (poorly conditioned)
        self._k_values: np.ndarray | None = None
        condition = float(np.linalg.cond(values))
        if np.isfinite(condition) and condition <= _MAX_CONDITION:
            self._k_values = (a["k.weight"].astype(np.float64) @ np.linalg.inv(values)
                              ).astype(np.float32)
        self._values_key = ("xpool-values", hashlib.sha256(
            self._values_t.tobytes() + self._values_b.tobytes()).hexdigest())
        # the attention LayerNorm's weight and bias fold into the residual projection that
        # follows it: (I + W_p)(g * x + b) = (I + W_p) diag(g) x + (I + W_p) b
        eye = np.eye(len(a["proj.bias"]), dtype=np.float64)
        proj_t = (a["proj.weight"].astype(np.float64) + eye).T  # [D,D], rows: inputs
        self._proj_t = np.ascontiguousarray(a["norm_attn.weight"][:, None] * proj_t, np.float32)
        self._proj_b = (a["proj.bias"] + a["norm_attn.bias"] @ proj_t).astype(np.float32)
        d = len(eye)
        self._ones, self._zeros = np.ones(d, np.float32), np.zeros(d, np.float32)
        self._norm_out = a["norm_out.weight"], a["norm_out.bias"]
        warm_up()  # compiled (or read from numba's cache) here, not on the first request

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        del state["_lock"]  # sent to a catalogue shard's worker: a fresh lock there
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: Path, use_dual: bool) -> NumpyXPool:
        with np.load(path, allow_pickle=False) as stored:
            return cls({k: stored[k] for k in stored.files}, use_dual)

    # -- pieces -------------------------------------------------------------------------
    def _token_query(self, video_emb: np.ndarray, values: bool = False) -> np.ndarray:
        """h(v) [B, D] -> W_k^T q [B, D], the query in the snippet states' space, or with
        ``values`` in the value space of :meth:`_chunk_states`."""
        normed = layer_norm_rows(np.array(video_emb, np.float32), self._zeros, *self._norm_in,
                                 self._eps[0])
        q = normed @ self._q[0].T + self._q[1]
        key = self._k_values if values and self._k_values is not None else self._k_weight
        return np.ascontiguousarray((q * self._scale) @ key, np.float32)

    def _cosine(self, video_emb: np.ndarray, pooled: np.ndarray, values: bool = False
                ) -> np.ndarray:
        """Pooled states [U, B, D] -> cos(h(v_b), h1[u, b]) [U, B] (video_emb unit-norm):
        the value/output GEMM (unless ``values``: pooled value-space states are its output
        already) and the residual GEMM, each followed by one pass of a LayerNorm."""
        u, b, d = pooled.shape
        flat = pooled.reshape(u * b, d)  # one GEMM per projection, not U small ones
        if values:
            x = layer_norm_rows(flat, self._zeros, self._ones, self._zeros, self._eps[1])
        else:
            x = layer_norm_rows(flat @ self._values_t, self._values_b, self._ones, self._zeros,
                                self._eps[1])
        return norm_cosine(x @ self._proj_t, self._proj_b, *self._norm_out, self._eps[2],
                           video_emb).reshape(u, b)

    @property
    def scans_values(self) -> bool:
        """Whether the scan reads value-space states (the map is well conditioned)."""
        return self._k_values is not None

    def _to_values(self, flat: np.ndarray) -> np.ndarray:
        """Snippet states [R, D] -> W_o W_v n + W_o b_v + b_o [R, D] float32, in blocks."""
        out = np.empty(flat.shape, np.float32)
        for lo in range(0, len(flat), _MAP_ROWS):
            block = out[lo: lo + _MAP_ROWS]
            np.matmul(flat[lo: lo + _MAP_ROWS], self._values_t, out=block)
            block += self._values_b
        return out

    def _scan_copy(self, chunk: Any) -> tuple[Any, Callable[[np.ndarray], np.ndarray],
                                              Any] | None:
        """How the scan keeps ``chunk``'s states: (key, map, dtype) of the copy it maps them
        to, in value space when :attr:`scans_values`, float16 where the catalogue stores
        them compact (the kernel streams half the bytes); None: read as the chunk holds
        them."""
        compact = getattr(chunk, "compact", False)
        if self._k_values is None:
            return ("float16", _float16_copy, np.float16) if compact else None
        if compact:
            return ((*self._values_key, "float16"),
                    lambda flat: _float16_copy(self._to_values(flat)), np.float16)
        return self._values_key, self._to_values, np.float32

    def _chunk_states(self, chunk: Any) -> np.ndarray:
        """The chunk's states back to back as the scan reads them (:meth:`_scan_copy`:
        mapped on the first scan, then kept by the chunk)."""
        copy = self._scan_copy(chunk)
        if copy is None:
            return np.asarray(chunk.flat)
        return np.asarray(chunk.mapped(copy[0], copy[1]))

    def _map_together(self, chunks: Sequence[Any]) -> None:
        """Map the chunks' states into one array on a catalogue's first scan, not one array
        a chunk: numpy asks for huge pages for an array past 4 MiB, and a chunk's copy is
        often smaller (128 tracks: 1-4 MB), so the scan's stream would take a TLB miss
        every 4 KiB. Measured at 2,000 tracks, one MsG request in process (p50, three
        alternations): float16 14.8-15.9 ms against 15.6-16.7 with the copies apart (the
        scan 7.4-8.0 against 8.0-8.5), float32 18.6-18.7 against 18.9-19.5."""
        with self._lock:  # two lanes' first scans: one array, not two half-used ones
            todo = [(c, copy) for c in chunks
                    if (copy := self._scan_copy(c)) is not None and not c.holds(copy[0])]
            if len(todo) < 2:
                return
            sizes = [int(c.offsets[-1]) for c, _ in todo]
            arena = np.empty((sum(sizes), len(self._values_b)), todo[0][1][2])
            at = 0
            for (chunk, (key, transform, _)), n in zip(todo, sizes):
                chunk.mapped(key, partial(_into, part=arena[at: at + n], transform=transform))
                at += n

    # -- the Scorer protocol ------------------------------------------------------------
    def _pool(self, query: np.ndarray, chunk: Any, out: np.ndarray | None = None
              ) -> np.ndarray:
        """Attention-pooled snippet states of every (track of ``chunk``, video), [U, B, D],
        for queries W_k^T q [B, D], written to ``out`` if given. A few videos: the compiled
        one-pass kernel (memory-bound work); more: a block's logits as one GEMM, then its
        pooling, from the cache. Blocks are padded as they are read (about 1 MB each), so
        the runtime never holds a padded copy of the catalogue's states."""
        u, d = len(chunk.lengths), query.shape[1]
        pooled = np.empty((u, len(query), d), np.float32) if out is None else out  # [U,B,D]
        flat = self._chunk_states(chunk)
        if len(query) <= _KERNEL_VIDEOS:
            return pool_tracks(flat, chunk.offsets, query, out=pooled)
        lengths, offsets = chunk.lengths, chunk.offsets
        step = max(1, _BLOCK_BYTES // max(1, int(lengths.max(initial=1)) * d * 4))
        for lo in range(0, u, step):
            hi = min(u, lo + step)
            block, mask = pad_flat(flat[offsets[lo]: offsets[hi]], lengths[lo:hi])  # float32
            n, s = mask.shape  # block [u,S,D], mask [u,S]
            logits = (block.reshape(-1, d) @ query.T).reshape(n, s, -1)  # one GEMM: [u,S,B]
            logits[~mask] = -np.inf
            logits -= logits.max(axis=1, keepdims=True)
            np.exp(logits, out=logits)
            logits /= logits.sum(axis=1, keepdims=True)
            weights = np.ascontiguousarray(logits.transpose(0, 2, 1))  # [u,B,S]
            np.matmul(weights, block, out=pooled[lo: lo + n])  # [u,B,S] @ [u,S,D]
        return pooled

    def tracks(self, video_emb: np.ndarray, chunk: Any) -> np.ndarray:
        """Score of unit-norm videos [B, D] against every track of ``chunk``, [B, U]."""
        video_emb = np.ascontiguousarray(video_emb, np.float32)
        values = self.scans_values
        pooled = self._pool(self._token_query(video_emb, values), chunk)
        score = self._cosine(video_emb, pooled, values).T  # [U,B] -> [B,U]
        if self.use_dual:
            score = score + video_emb @ np.asarray(chunk.emb, np.float32).T
        return np.ascontiguousarray(score, np.float32)

    def scan(self, video_emb: np.ndarray, chunks: Sequence[Any], n_tracks: int) -> np.ndarray:
        """Scores of unit-norm videos [B, D] against every track of ``chunks`` (a whole
        catalogue, rows ``chunk.rows``), [B, N]: :meth:`tracks` over the chunks, with the
        head's projections run once over every pooled state rather than once per chunk
        (videos in groups whose pooled states stay under 64 MB)."""
        video_emb = np.ascontiguousarray(video_emb, np.float32)
        self._map_together(chunks)
        d = video_emb.shape[1]
        out = np.empty((len(video_emb), n_tracks), np.float32)
        group = max(1, (64 << 20) // max(1, n_tracks * d * 4))
        bounds = np.cumsum([0] + [len(c.rows) for c in chunks])  # chunk i: its pooled rows
        rows = np.concatenate([c.rows for c in chunks])
        for lo in range(0, len(video_emb), group):
            videos = video_emb[lo: lo + group]
            query = self._token_query(videos, self.scans_values)
            pooled = np.empty((bounds[-1], len(videos), d), np.float32)  # [N,B,D]
            for c, start, end in zip(chunks, bounds[:-1], bounds[1:]):
                self._pool(query, c, out=pooled[start:end])
            score = self._cosine(videos, pooled, self.scans_values).T  # [B,N]
            if self.use_dual:  # chunk by chunk: no copy of every track's embedding
                for c, start, end in zip(chunks, bounds[:-1], bounds[1:]):
                    score[:, start:end] += videos @ np.asarray(c.emb, np.float32).T
            out[lo: lo + group, rows] = score
        return out

    def pairs(self, video_emb: np.ndarray, rows: np.ndarray, cat: Any) -> np.ndarray:
        """Score of (video i, track ``rows[i]`` of ``cat``), [B]."""
        video_emb = np.ascontiguousarray(video_emb, np.float32)
        states, mask = cat.padded_states(rows)  # [B,S,D], [B,S]
        query = self._token_query(video_emb)  # [B,D]
        logits = np.einsum("bsd,bd->bs", states, query)
        logits[~mask] = -np.inf
        logits -= logits.max(axis=1, keepdims=True)
        np.exp(logits, out=logits)
        logits /= logits.sum(axis=1, keepdims=True)
        pooled = np.einsum("bs,bsd->bd", logits, states)  # [B,D]
        score = self._cosine(video_emb, pooled[None])[0]
        if self.use_dual:
            score = score + (video_emb * cat.emb(rows)).sum(axis=1)
        return np.asarray(score, np.float32)
