"""The X-Pool scan's compiled loops (mgsv_sk/export/_pool_kernel.py) against plain numpy:
the attention pooling over tracks of any length (none, fewer than the four-row step, many)
for any small batch, the one-pass LayerNorms, and the compile fallback."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mgsv_sk.export._pool_kernel import compiled, layer_norm_rows, norm_cosine, pool_tracks


def _pooled(flat: np.ndarray, offsets: np.ndarray, query: np.ndarray) -> np.ndarray:
    out = np.full((len(offsets) - 1, len(query), flat.shape[1]), np.nan, np.float32)
    for t in range(len(offsets) - 1):
        x = flat[offsets[t]: offsets[t + 1]].astype(np.float64)
        if len(x):
            logits = x @ query.T.astype(np.float64)  # [n, B]
            weights = np.exp(logits - logits.max(axis=0))
            out[t] = (weights / weights.sum(axis=0)).T @ x
    return out


@settings(max_examples=40, deadline=None)
@given(lengths=st.lists(st.integers(0, 11), min_size=1, max_size=9),
       videos=st.integers(0, 5), width=st.integers(1, 20), seed=st.integers(0, 2**16))
def test_pooling_equals_the_softmax_average(lengths, videos, width, seed):
    rng = np.random.default_rng(seed)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    flat = rng.standard_normal((offsets[-1], width)).astype(np.float32)
    query = rng.standard_normal((videos, width)).astype(np.float32)
    got = pool_tracks(flat, offsets, query)
    assert got.shape == (len(lengths), videos, width) and got.dtype == np.float32
    np.testing.assert_allclose(got, _pooled(flat, offsets, query), rtol=1e-5, atol=1e-5)
    # a track without snippets has nothing to attend to: NaN, as the graph gives
    empty = np.asarray(lengths) == 0
    assert np.isnan(got[empty]).all() and np.isfinite(got[~empty]).all()


def test_pooling_writes_into_the_given_array_or_says_what_it_needs():
    flat = np.ones((5, 4), np.float32)
    offsets, query = np.array([0, 2, 5]), np.ones((1, 4), np.float32)
    out = np.zeros((2, 1, 4), np.float32)
    assert pool_tracks(flat, offsets, query, out=out) is out
    np.testing.assert_allclose(out, 1.0)
    with pytest.raises(ValueError, match=r"C-contiguous float32 array of shape \(2, 1, 4\)"):
        pool_tracks(flat, offsets, query, out=np.zeros((2, 4), np.float32))


def test_layer_norms_equal_numpy():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 16)).astype(np.float32) * 3 + 1
    bias, weight, shift = (rng.standard_normal(16).astype(np.float32) for _ in range(3))
    y = x + bias
    expected = (y - y.mean(1, keepdims=True)) / np.sqrt(y.var(1, keepdims=True) + 1e-5)
    expected = expected * weight + shift
    np.testing.assert_allclose(layer_norm_rows(x.copy(), bias, weight, shift, 1e-5), expected,
                               rtol=1e-5, atol=1e-5)
    video = rng.standard_normal((3, 16)).astype(np.float32)
    video /= np.linalg.norm(video, axis=1, keepdims=True)
    cosine = (expected * video[np.arange(7) % 3]).sum(1) / np.linalg.norm(expected, axis=1)
    before = x.copy()
    np.testing.assert_allclose(norm_cosine(x, bias, weight, shift, 1e-5, video), cosine,
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(x, before)  # the rows are read, not normalised in place


def test_a_function_numba_cannot_cache_is_still_compiled():
    # code with no source file (as in a read-only install with no cache folder): numba
    # refuses to cache it; the kernel is compiled without the cache instead
    namespace: dict = {}
    exec("def twice(x):\n    return 2 * x\n", namespace)
    assert compiled(namespace["twice"])(21) == 42


def test_a_chunk_holds_one_layout_of_its_states():
    from mgsv_sk.search.parts import Chunk

    flat = np.arange(12, dtype=np.float32).reshape(6, 2)
    chunk = Chunk(np.arange(3), np.zeros((3, 2), np.float32), flat, np.array([1, 3, 2]))
    assert chunk.flat is flat and chunk.offsets.tolist() == [0, 1, 4, 6]
    states, mask = chunk.states, chunk.mask  # the padded view, for the graphs and torch
    assert mask.tolist() == [[True, False, False], [True, True, True], [True, True, False]]
    np.testing.assert_array_equal(states[mask], flat)
    assert list(chunk._layout) == ["padded"]  # the back-to-back copy is let go
    np.testing.assert_array_equal(chunk.flat, flat)  # and rebuilt when read again
    assert list(chunk._layout) == ["flat"]
