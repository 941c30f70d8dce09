"""The X-Pool scan's compiled loops (mgsv_sk/export/_pool_kernel.py) against plain numpy:
the attention pooling over tracks of any length (none, fewer than the eight-row block, many),
its online softmax where later rows dominate, NaN kept to its track,
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


# lengths past two blocks of eight rows and their tails
@settings(max_examples=40, deadline=None)
@given(lengths=st.lists(st.integers(0, 19), min_size=1, max_size=9),
       videos=st.integers(0, 5), width=st.integers(1, 40), seed=st.integers(0, 2**16))
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
    # float16 states are read as stored (half the bytes) and widened in the kernel: the
    # same arithmetic, so bit for bit the pooling of the widened states
    half = (flat * 3).astype(np.float16)
    np.testing.assert_array_equal(pool_tracks(half, offsets, query),
                                  pool_tracks(half.astype(np.float32), offsets, query))


@pytest.mark.parametrize("slope", [0.5, 30.0, -30.0])
def test_pooling_rescales_its_running_sums_when_a_later_block_dominates(slope):
    # the softmax runs online over blocks of eight rows: logits that climb block after
    # block rescale the sums at each (by exp(-240): to zero at slope 30), falling ones never
    rng = np.random.default_rng(0)
    n, width = 45, 6
    flat = rng.standard_normal((n, width)).astype(np.float32) * 0.1
    flat[:, 0] = slope * np.arange(n) / 8  # the logit of row r: about slope * r / 8
    offsets, query = np.array([0, n]), np.eye(1, width, dtype=np.float32)
    np.testing.assert_allclose(pool_tracks(flat, offsets, query),
                               _pooled(flat, offsets, query), rtol=1e-5, atol=1e-5)


def test_a_nan_in_a_track_stays_in_that_track():
    flat = np.random.default_rng(1).standard_normal((30, 4)).astype(np.float32)
    flat[12, 2] = np.nan  # the second track's (rows 10-19)
    got = pool_tracks(flat, np.array([0, 10, 20, 30]), np.ones((2, 4), np.float32))
    assert np.isnan(got[1]).all()
    assert np.isfinite(got[[0, 2]]).all()


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


def test_a_chunk_keeps_a_mapped_copy_in_place_of_its_states():
    from mgsv_sk.search.parts import Chunk

    flat = np.arange(12, dtype=np.float32).reshape(6, 2)
    calls = []

    def double(rows: np.ndarray) -> np.ndarray:
        calls.append(len(rows))
        return 2 * rows

    chunk = Chunk(np.arange(3), np.zeros((3, 2), np.float32), flat, np.array([1, 3, 2]),
                  source=flat.copy)
    np.testing.assert_array_equal(chunk.mapped("x2", double), 2 * flat)
    np.testing.assert_array_equal(chunk.mapped("x2", double), 2 * flat)
    assert calls == [6]  # mapped once, then kept
    assert list(chunk._layout) == [("mapped", "x2")]  # one copy: the states were let go
    np.testing.assert_array_equal(chunk.flat, flat)  # read again from the source
    np.testing.assert_array_equal(chunk.states[chunk.mask], flat)
    # without a source to read them again, the states stay beside the mapped copy
    kept = Chunk(np.arange(3), np.zeros((3, 2), np.float32), flat, np.array([1, 3, 2]))
    kept.mapped("x2", double)
    assert kept.flat is flat and ("mapped", "x2") in kept._layout


def _xpool_weights(rng: np.random.Generator, d: int, values_condition: float) -> dict:
    """Random X-Pool parameters near the identity, W_o W_v of the given condition number."""
    def near_identity() -> np.ndarray:
        return (np.eye(d) + 0.1 * rng.standard_normal((d, d))).astype(np.float32)

    u, _, vt = np.linalg.svd(rng.standard_normal((d, d)))
    v_weight = (u * np.geomspace(1.0, 1.0 / values_condition, d)) @ vt
    a = {name: near_identity() for name in ("q.weight", "k.weight", "proj.weight")}
    a.update({"v.weight": v_weight.astype(np.float32), "out.weight": np.eye(d, dtype=np.float32)})
    for name in ("norm_in", "norm_attn", "norm_out"):
        a[f"{name}.weight"] = (1 + 0.1 * rng.standard_normal(d)).astype(np.float32)
        a[f"{name}.bias"] = (0.1 * rng.standard_normal(d)).astype(np.float32)
    for name in ("q.bias", "v.bias", "out.bias", "proj.bias"):
        a[name] = (0.1 * rng.standard_normal(d)).astype(np.float32)
    a["eps"] = np.array([1e-5, 1e-5, 1e-5])
    a["scale"] = np.array(d ** -0.5)
    return a


def _xpool_reference(a: dict, video: np.ndarray, flat: np.ndarray, offsets: np.ndarray
                     ) -> np.ndarray:
    """The X-Pool score written out plainly in float64 (mgsv_sk.nn.xpool's definition),
    states being the layer-normed snippets: [B, N]."""
    a = {k: np.asarray(v, np.float64) for k, v in a.items()}

    def norm(x: np.ndarray, name: str, eps: float) -> np.ndarray:
        centred = x - x.mean(-1, keepdims=True)
        scaled = centred / np.sqrt((centred ** 2).mean(-1, keepdims=True) + eps)
        return scaled * a[f"{name}.weight"] + a[f"{name}.bias"]

    q = (norm(video, "norm_in", 1e-5) @ a["q.weight"].T + a["q.bias"]) * a["scale"]
    out = np.zeros((len(video), len(offsets) - 1))
    for t in range(len(offsets) - 1):
        states = flat[offsets[t]: offsets[t + 1]].astype(np.float64)
        keys = states @ a["k.weight"].T
        values = states @ a["v.weight"].T + a["v.bias"]
        logits = q @ keys.T  # [B, S]
        weights = np.exp(logits - logits.max(1, keepdims=True))
        pooled = (weights / weights.sum(1, keepdims=True)) @ values
        x = norm(pooled @ a["out.weight"].T + a["out.bias"], "norm_attn", 1e-5)
        h = norm(x + x @ a["proj.weight"].T + a["proj.bias"], "norm_out", 1e-5)
        out[:, t] = (h * video).sum(1) / np.linalg.norm(h, axis=1)
    return out


@pytest.mark.parametrize("values_condition", [3.0, 1e4])
def test_the_scan_reads_value_space_states_only_where_that_is_exact(values_condition):
    """A well-conditioned W_o W_v: the scan keeps each chunk's states mapped through it and
    saves a product per query; a poorly conditioned one: it scans the states. Both give
    the plain X-Pool's scores, for one video (the compiled kernel) and for many (GEMMs)."""
    from mgsv_sk.export._xpool import NumpyXPool
    from mgsv_sk.search.catalogue import Catalogue

    rng = np.random.default_rng(7)
    d, lengths = 32, rng.integers(1, 20, size=40)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    flat = rng.standard_normal((offsets[-1], d)).astype(np.float32) * 2
    video = rng.standard_normal((14, d)).astype(np.float32)
    video /= np.linalg.norm(video, axis=1, keepdims=True)
    weights = _xpool_weights(rng, d, values_condition)
    scorer = NumpyXPool(weights, use_dual=False)
    assert scorer.scans_values == (values_condition < 100)
    cat = Catalogue.from_arrays([f"t{i}" for i in range(40)], np.zeros((40, d), np.float32),
                                flat, flat, offsets)
    expected = _xpool_reference(weights, video, flat, offsets)
    for b in (1, 14):
        np.testing.assert_allclose(scorer.scan(video[:b], cat.chunks(16), 40), expected[:b],
                                   atol=2e-5)
    kept = {type(key) for chunk in cat.chunks(16) for key in chunk._layout}
    assert kept == ({tuple} if scorer.scans_values else {str})  # the mapped copy, or states
    if scorer.scans_values:  # the mapped copies are slices of one array
        held = [a for c in cat.chunks(16) for a in c._layout.values()]
        assert held[0].base is not None and len({id(a.base) for a in held}) == 1
    import pickle  # a scorer sent to a catalogue shard's worker scores as here

    again = pickle.loads(pickle.dumps(scorer))
    np.testing.assert_array_equal(again.scan(video[:1], cat.chunks(16), 40),
                                  scorer.scan(video[:1], cat.chunks(16), 40))


@pytest.mark.parametrize("states", ["float16", "int8"])
def test_a_compact_catalogue_is_scanned_from_a_float16_copy(states):
    """A catalogue stored compact keeps its scan copy (in value space) in float16: half the
    memory and the bytes each scan streams, with scores within the compact storage's own
    tolerance of the float32 X-Pool, for one video (the kernel) and many (GEMMs)."""
    from mgsv_sk.export._xpool import NumpyXPool
    from mgsv_sk.search.catalogue import Catalogue
    from mgsv_sk.search.compact import SCORE_TOLERANCE

    rng = np.random.default_rng(3)
    d, lengths = 32, rng.integers(1, 20, size=40)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    flat = rng.standard_normal((offsets[-1], d)).astype(np.float32)
    video = rng.standard_normal((20, d)).astype(np.float32)
    video /= np.linalg.norm(video, axis=1, keepdims=True)
    for condition in (3.0, 1e4):  # scanned in value space, and as the states themselves
        weights = _xpool_weights(rng, d, condition)
        scorer = NumpyXPool(weights, use_dual=False)
        ids = [f"t{i}" for i in range(40)]
        full = Catalogue.from_arrays(ids, np.zeros((40, d), np.float32), flat, flat, offsets)
        cat = full.compacted(states)
        assert cat.compact and not full.compact
        expected = _xpool_reference(weights, video, flat, offsets)
        for b in (1, 20):
            got = scorer.scan(video[:b], cat.chunks(16), 40)
            np.testing.assert_allclose(got, expected[:b], atol=SCORE_TOLERANCE[states])
        held = [a for chunk in cat.chunks(16) for a in chunk._layout.values()]
        assert all(a.dtype == np.float16 for a in held)  # one float16 copy per chunk
        assert sum(a.nbytes for a in held) == flat.nbytes // 2
        assert held[0].base is not None and len({id(a.base) for a in held}) == 1  # one array
        # the float32 catalogue is scanned as before, from float32
        scorer.scan(video[:1], full.chunks(16), 40)
        assert all(a.dtype == np.float32 for c in full.chunks(16) for a in c._layout.values())


def test_a_scan_copy_past_float16_range_stays_float32():
    # int8 states may hold any magnitude; mapped to value space they can pass float16's
    # range, and the scan then keeps float32 rather than streaming infinities
    from mgsv_sk.export._xpool import NumpyXPool
    from mgsv_sk.search.catalogue import Catalogue

    rng = np.random.default_rng(5)
    d, lengths = 16, rng.integers(1, 12, size=20)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    flat = (rng.standard_normal((offsets[-1], d)) * 1e5).astype(np.float32)
    video = rng.standard_normal((1, d)).astype(np.float32)
    video /= np.linalg.norm(video)
    weights = _xpool_weights(rng, d, 3.0)
    weights["scale"] = np.array(1e-5 * d ** -0.5)  # logits of a sane size for these states
    cat = Catalogue.from_arrays([f"t{i}" for i in range(20)], np.zeros((20, d), np.float32),
                                flat, flat, offsets).compacted("int8")
    got = NumpyXPool(weights, use_dual=False).scan(video, cat.chunks(8), 20)
    assert np.isfinite(got).all()
    assert all(a.dtype == np.float32 for c in cat.chunks(8) for a in c._layout.values())
