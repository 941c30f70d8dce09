"""The X-Pool's row-wise work compiled with numba: the attention pooling of a few videos over
a chunk of tracks in one pass over the snippet states, and the head's LayerNorms (one with
the final cosine) in one pass over each row.

For one video (or a handful) the pooling is memory-bound: every track's snippet states are
needed for the attention logits and again for the weighted sum. numpy can only run those as
separate calls (a GEMV over a block of tracks, a softmax, then one small matrix product per
track), which costs about twice the states' streaming time at 2,000 tracks. Here the states
(stored back to back, no padding) are read from memory once, in blocks of eight rows: each
block's logits, then at once its share of the weighted sum while it is in the L1 cache, the
softmax kept online (the sums scaled to the largest logit so far). Measured at 2,000 tracks
on one thread: 8.8-9.3 ms for one video against 10.7-11.1 for two passes over each track
(logits, softmax, sums), with 8.1 ms to stream the states. While a block is computed the
next one is asked for (:data:`_PREFETCH_ROWS`), so a few videos' arithmetic overlaps the
stream. Larger batches are compute-bound, and numpy's GEMM path in
:mod:`mgsv_sk.export._xpool` serves them. The states may be float16 (a compact catalogue's
scan copy): read as stored, half the bytes, and widened to float32 as each value is used
(numba has no float16 type; :func:`_half` is the one instruction), the arithmetic as for
float32. Measured at 2,000 tracks on one thread: one video 3.8-4.0 ms against 7.2-8.1 from
float32 states called back to back (5.6-5.8 from float16 with the caches flushed first);
from four videos on, the arithmetic dominates and both take as long.

A LayerNorm in numpy is five or six passes over its rows (mean, centre, variance, scale,
weight, bias); here it is two reads (the mean, then the variance: the row stays in the L1
cache) and one written pass per row, and the last one ends in the cosine with the video,
never written out. The head's GEMMs stay in BLAS.

Compiled on first use and cached on disk by numba (beside this file, or in the user's cache
folder where that is read-only); :func:`warm_up` compiles it ahead of the first request.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import llvmlite.binding
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

__all__ = ["compiled", "layer_norm_rows", "norm_cosine", "pool_tracks", "warm_up"]

# reassociation lets the dot products and sums use SIMD lanes (what BLAS does too); no
# assumption about infinities or NaNs, which pass through as numpy's softmax passes them
_FAST = {"reassoc", "contract"}
#: Rows ahead of the block being pooled whose cache lines the pooling asks the memory for
#: (the next block of eight), spread over three points of each video's work on a block
#: (before its logits, its softmax and its sums), not asked for at once: at once, the hints
#: beyond the core's few outstanding misses were lost, and the stream stopped while the
#: arithmetic ran, so a batch took the states' streaming time plus its arithmetic.
#: Measured at 2,000 tracks on one thread (Intel), against all of a block 16 rows ahead
#: at once: one video 11.1 against 11.9-12.2 ms, 2 videos 12.2-12.8 against 14.9-15.2,
#: 4 videos 16.4 against 20.9-21.0, 8 videos 26.7-27.1 against 31.9-32.4 (16 or 32 rows
#: ahead: slower; two points a video: between the two).
_PREFETCH_ROWS = 8
# the intrinsic's name carries its pointer type: opaque pointers from LLVM 15 on
_PREFETCH_NAME = ("llvm.prefetch.p0" if llvmlite.binding.llvm_version_info >= (15,)
                  else "llvm.prefetch.p0i8")


@intrinsic
def _prefetch(typingctx: Any, array: Any, index: Any) -> Any:  # pragma: no cover - compiled
    """Ask for the cache line holding ``array[index]`` (1-D) without waiting for it: a read,
    kept in every cache level. A hint only; the program's results never depend on it."""
    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        byte = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        function = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [byte, i32, i32, i32]),
            _PREFETCH_NAME)
        address = builder.bitcast(builder.gep(data, [args[1]]), byte)
        builder.call(function, [address, ir.Constant(i32, 0), ir.Constant(i32, 3),
                                ir.Constant(i32, 1)])
        return context.get_dummy_value()
    return types.void(array, index), codegen


def compiled(function: Callable[..., Any]) -> Any:
    """``function`` compiled by numba (GIL released, SIMD sums), its machine code cached on
    disk; where no cache folder is writable (a read-only install and home), compiled on
    each start instead of failing the import."""
    def jit(cache: bool) -> Any:
        return njit(function, cache=cache, nogil=True, fastmath=_FAST, error_model="numpy")

    try:
        return jit(cache=True)
    except RuntimeError:  # numba: "cannot cache function ...: no locator available"
        return jit(cache=False)


@intrinsic
def _half(typingctx: Any, array: Any, row: Any, col: Any) -> Any:  # pragma: no cover - compiled
    """``array[row, col]`` of a 2-D uint16 array holding IEEE half floats, as float32 (numba
    has no float16 type; LLVM turns the conversion into the CPU's vector instruction)."""
    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        index = [context.cast(builder, a, t, types.intp)
                 for a, t in zip(args[1:], signature.args[1:])]
        pointer = cgutils.get_item_pointer(context, builder, aryty, ary, index,
                                           wraparound=False)
        return builder.fpext(builder.bitcast(builder.load(pointer), ir.HalfType()),
                             ir.FloatType())
    return types.float32(array, row, col), codegen


def _value(x, row, col):  # untyped: numba matches the overload's names and annotations
    """``x[row, col]`` as float32, for float32 states and for float16 ones held as uint16."""
    return x[row, col]


@overload(_value)
def _value_of(x, row, col):  # pragma: no cover - compiled
    if x.dtype == types.uint16:
        return lambda x, row, col: _half(x, row, col)  # type: ignore[call-arg]
    return lambda x, row, col: x[row, col]


@compiled
def _ask_ahead(stream: np.ndarray, at: int, stop: int, step: int,
               line_size: int) -> int:  # pragma: no cover - compiled
    """Ask for the cache lines of ``stream[at: min(at + step, stop)]`` (``line_size``
    elements each); returns where the next ask starts."""
    for line in range(at, min(at + step, stop), line_size):
        _prefetch(stream, line)  # type: ignore[call-arg]  # one 64-byte line
    return at + step


@compiled
def _pool(flat: np.ndarray, offsets: np.ndarray, query: np.ndarray,
          pooled: np.ndarray) -> None:  # pragma: no cover - compiled
    d, n_videos = flat.shape[1], query.shape[0]
    stream = flat.reshape(-1)  # for the prefetch: the states as one run of values
    line_size = 64 // stream.itemsize  # values in a 64-byte cache line
    top = np.empty(n_videos, np.float32)  # each video's largest logit so far in the track
    total = np.empty(n_videos, np.float32)  # and its softmax denominator, scaled to it
    e = np.empty(8, np.float32)  # a block's logits, then their exponentials
    # floats of the block ahead asked for at each of a video's three points (whole lines)
    step = -(-(8 * d // line_size) // (3 * max(n_videos, 1))) * line_size
    for t in range(len(offsets) - 1):
        x = flat[offsets[t]: offsets[t + 1]]  # the track's states: read from memory once
        n = len(x)
        if n == 0:  # a track without snippets: nothing to attend to (as the graph: NaN)
            pooled[t] = np.nan
            continue
        pooled[t] = 0.0
        top[:] = -np.inf
        total[:] = 0.0
        for r in range(0, n, 8):  # blocks of eight rows, each used twice while in L1
            rows = min(8, n - r)
            ahead = (offsets[t] + r + _PREFETCH_ROWS) * d  # the block ahead, its first float
            stop = min(ahead + 8 * d, stream.size)
            for j in range(n_videos):
                q, out = query[j], pooled[t, j]
                ahead = _ask_ahead(stream, ahead, stop, step, line_size)
                if rows == 8:  # eight independent sums keep the vector units busy
                    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = np.float32(0.0)
                    for k in range(d):
                        qk = q[k]
                        a0 += _value(x, r, k) * qk
                        a1 += _value(x, r + 1, k) * qk
                        a2 += _value(x, r + 2, k) * qk
                        a3 += _value(x, r + 3, k) * qk
                        a4 += _value(x, r + 4, k) * qk
                        a5 += _value(x, r + 5, k) * qk
                        a6 += _value(x, r + 6, k) * qk
                        a7 += _value(x, r + 7, k) * qk
                    e[0], e[1], e[2], e[3], e[4], e[5], e[6], e[7] = a0, a1, a2, a3, a4, a5, a6, a7
                else:  # the track's last rows, one at a time
                    for i in range(rows):
                        a0 = np.float32(0.0)
                        for k in range(d):
                            a0 += _value(x, r + i, k) * q[k]
                        e[i] = a0
                ahead = _ask_ahead(stream, ahead, stop, step, line_size)
                # online softmax: the sums so far are scaled to the largest logit so far
                # and rescaled when a block raises it (a few times per track)
                block = e[0]
                for i in range(1, rows):
                    block = max(block, e[i])
                if block > top[j]:
                    if total[j] > 0.0:
                        c = np.exp(top[j] - block)
                        total[j] *= c
                        for k in range(d):
                            out[k] *= c
                    top[j] = block
                for i in range(rows):
                    e[i] = np.exp(e[i] - top[j])
                    total[j] += e[i]
                ahead = _ask_ahead(stream, ahead, stop, step, line_size)
                if rows == 8:
                    w0, w1, w2, w3, w4, w5, w6, w7 = e[0], e[1], e[2], e[3], e[4], e[5], e[6], e[7]
                    for k in range(d):
                        out[k] += (w0 * _value(x, r, k) + w1 * _value(x, r + 1, k)
                                   + w2 * _value(x, r + 2, k) + w3 * _value(x, r + 3, k)
                                   + w4 * _value(x, r + 4, k) + w5 * _value(x, r + 5, k)
                                   + w6 * _value(x, r + 6, k) + w7 * _value(x, r + 7, k))
                else:
                    for i in range(rows):
                        w0 = e[i]
                        for k in range(d):
                            out[k] += w0 * _value(x, r + i, k)
        for j in range(n_videos):
            inv = np.float32(1.0) / total[j]
            out = pooled[t, j]
            for k in range(d):
                out[k] *= inv


@compiled
def _moments(row: np.ndarray, bias: np.ndarray,
             eps: float) -> tuple[np.float32, np.float32]:  # pragma: no cover - compiled
    """The mean of row + bias and 1 / sqrt(its variance + eps), in float32 (a float64 mean
    would widen every element and stop the SIMD lanes), in two passes that only read: the
    callers' one written pass then runs in SIMD lanes whether or not it writes in place
    (measured over 2,000 rows of 256: 0.14 ms, against 0.41 for passes writing the centred
    row through a helper)."""
    size = np.float32(row.shape[0])
    total = np.float32(0.0)
    for k in range(row.shape[0]):
        total += row[k] + bias[k]
    mean = total / size
    square = np.float32(0.0)
    for k in range(row.shape[0]):
        centred = row[k] + bias[k] - mean
        square += centred * centred
    return mean, np.float32(1.0) / np.sqrt(square / size + np.float32(eps))


@compiled
def _layer_norm_rows(x: np.ndarray, bias: np.ndarray, weight: np.ndarray, shift: np.ndarray,
                     eps: float) -> None:  # pragma: no cover - compiled
    for i in range(x.shape[0]):
        row = x[i]
        mean, inv = _moments(row, bias, eps)
        for k in range(row.shape[0]):
            row[k] = (row[k] + bias[k] - mean) * inv * weight[k] + shift[k]


@compiled
def _norm_cosine(y: np.ndarray, bias: np.ndarray, weight: np.ndarray, shift: np.ndarray,
                 eps: float, video: np.ndarray, out: np.ndarray
                 ) -> None:  # pragma: no cover - compiled
    n_videos, d = video.shape
    for i in range(y.shape[0]):
        row = y[i]
        mean, inv = _moments(row, bias, eps)
        v = video[i % n_videos]
        dot = np.float32(0.0)
        square = np.float32(0.0)
        for k in range(d):  # the normalised row, never written out
            h = (row[k] + bias[k] - mean) * inv * weight[k] + shift[k]
            dot += h * v[k]
            square += h * h
        out[i] = dot / max(np.float32(np.sqrt(square)), np.float32(1e-6))


def layer_norm_rows(x: np.ndarray, bias: np.ndarray, weight: np.ndarray, shift: np.ndarray,
                    eps: float) -> np.ndarray:
    """LayerNorm(x + bias) * weight + shift over the last axis of a C-contiguous float32
    ``x`` [N, D], in place (``x`` is a temporary of the caller's); returns ``x``."""
    _layer_norm_rows(x, bias, weight, shift, float(eps))
    return x


def norm_cosine(y: np.ndarray, bias: np.ndarray, weight: np.ndarray, shift: np.ndarray,
                eps: float, video: np.ndarray) -> np.ndarray:
    """cos(LayerNorm(y[i] + bias) * weight + shift, video[i % B]) of rows y [N, D] against
    unit-norm videos [B, D] (row i pairs with video i mod B), [N] float32; ``y`` unchanged."""
    out = np.empty(len(y), np.float32)
    _norm_cosine(y, bias, weight, shift, float(eps), np.ascontiguousarray(video, np.float32),
                 out)
    return out


def pool_tracks(flat: np.ndarray, offsets: np.ndarray, query: np.ndarray,
                out: np.ndarray | None = None) -> np.ndarray:
    """Attention-pooled states [U, B, D] of U tracks' snippet states stored back to back
    (``flat`` [sum S, D] float32 or float16, track u's rows ``offsets[u]:offsets[u + 1]``)
    for queries [B, D] (W_k^T q, scaled), written to ``out`` (C-contiguous float32) if
    given. float16 states are read as they are (half the bytes to stream) and computed on
    in float32: the same result as pooling them converted to float32 first."""
    shape = (len(offsets) - 1, query.shape[0], flat.shape[1])
    pooled = np.empty(shape, np.float32) if out is None else out
    if pooled.shape != shape or pooled.dtype != np.float32 or not pooled.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous float32 array of shape {shape}")
    states = (np.ascontiguousarray(flat).view(np.uint16) if flat.dtype == np.float16
              else np.ascontiguousarray(flat, np.float32))
    _pool(states, np.ascontiguousarray(offsets, np.int64),
          np.ascontiguousarray(query, np.float32), pooled)
    return pooled


def warm_up() -> None:
    """Compile (or load the cached compilation of) the kernels now, not on a first request."""
    for dtype in (np.float32, np.float16):
        pool_tracks(np.zeros((2, 4), dtype), np.array([0, 2]), np.zeros((1, 4), np.float32))
    row, ones = np.zeros((1, 4), np.float32), np.ones(4, np.float32)
    layer_norm_rows(row, ones, ones, ones, 1e-5)
    norm_cosine(row, ones, ones, ones, 1e-5, row)
