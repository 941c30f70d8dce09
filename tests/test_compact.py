"""Compact snippet states: decoding bounds, files, and the X-Pool score tolerance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mgsv_sk.search.compact import (
    SCORE_TOLERANCE,
    STATE_DTYPES,
    CompactWriter,
    RowFile,
    bytes_per_row,
    encode_rows,
    open_compact,
    read_ranges,
    take_rows,
)


@pytest.fixture(scope="module")
def rows():
    rng = np.random.default_rng(0)
    return (rng.standard_normal((500, 48)) * rng.uniform(0.1, 3, (500, 1))).astype(np.float32)


def test_decoding_bounds(rows):
    np.testing.assert_array_equal(encode_rows(rows, "float32").decode(), rows)
    half = encode_rows(rows, "float16").decode()
    assert np.all(np.abs(half - rows) <= 2.0**-11 * np.abs(rows) + 1e-7)
    int8 = encode_rows(rows, "int8")
    bound = np.abs(rows).max(axis=1, keepdims=True) / 254 * (1 + 1e-5)
    assert np.all(np.abs(int8.decode() - rows) <= bound)
    assert int8.nbytes == len(rows) * bytes_per_row("int8", 48) == len(rows) * (48 + 4)
    zeros = encode_rows(np.zeros((2, 4), np.float32), "int8")  # an all-zero row decodes to 0
    np.testing.assert_array_equal(zeros.decode(), 0)


def test_values_past_float16_range_are_refused_not_stored_as_infinities(rows, tmp_path):
    from mgsv_sk.errors import InvalidInputError

    big = rows.copy()
    big[7, 3] = 7e4  # float16's largest finite value is 65504
    with pytest.raises(InvalidInputError, match=r"7e\+04 exceed float16's range .*int8"):
        encode_rows(big, "float16")
    writer = CompactWriter(tmp_path, "tokens", len(big), big.shape[1], "float16")
    with pytest.raises(InvalidInputError, match="float16's range"):
        writer.write_all([big])
    np.testing.assert_array_equal(encode_rows(big, "int8").decode()[7, 3], np.float32(7e4))


@pytest.mark.parametrize("states", STATE_DTYPES)
def test_written_files_read_back_by_row_range(rows, tmp_path, states):
    files = CompactWriter(tmp_path, "states", len(rows), 48, states).write_all(
        [rows[:123], rows[123:]])
    opened = open_compact(tmp_path, files, states)
    np.testing.assert_array_equal(opened[10:40], encode_rows(rows, states)[10:40])
    assert opened.shape == rows.shape


@pytest.mark.parametrize("states", STATE_DTYPES)
def test_scattered_ranges_and_rows_read_at_once_match_slices(rows, tmp_path, states):
    files = CompactWriter(tmp_path, "states", len(rows), 48, states).write_all([rows])
    opened, memory = open_compact(tmp_path, files, states), encode_rows(rows, states)
    bounds = [(400, 410), (3, 4), (0, 0), (120, 199), (499, 500)]
    for got, (a, b) in zip(opened.ranges(bounds), bounds, strict=True):
        np.testing.assert_array_equal(got, memory[a:b])
    assert [len(x) for x in read_ranges(memory, bounds)] == [b - a for a, b in bounds]
    np.save(tmp_path / "emb.npy", rows)
    emb = RowFile(tmp_path / "emb.npy")
    picked = np.array([7, 499, 0, 7, 250])
    np.testing.assert_array_equal(take_rows(emb, picked), rows[picked])
    np.testing.assert_array_equal(take_rows(rows, picked), rows[picked])
    assert take_rows(emb, np.array([], np.int64)).shape == (0, 48)


def test_a_row_file_copied_to_another_process_reopens_its_file(rows, tmp_path):
    import pickle

    np.save(tmp_path / "a.npy", rows)
    copy = pickle.loads(pickle.dumps(RowFile(tmp_path / "a.npy")))  # as a Dask worker gets it
    np.testing.assert_array_equal(copy[5:9], rows[5:9])


def test_a_loaded_catalogue_reads_scattered_embeddings_without_the_memory_map(rows, tmp_path):
    from mgsv_sk.search import Catalogue, Part

    offsets = np.arange(0, 501, 5, dtype=np.int64)  # 100 tracks of 5 snippets
    emb = rows[:100] / np.linalg.norm(rows[:100], axis=1, keepdims=True)
    for name, arr in (("emb", emb), ("offsets", offsets), ("tokens", rows)):
        np.save(tmp_path / f"{name}.npy", arr)
    (tmp_path / "ids.json").write_text(str([f"m{i}" for i in range(100)]).replace("'", '"'))
    files = {r: f"{r}.npy" for r in ("emb", "offsets", "tokens")} | {"ids": "ids.json"}
    part = Part.load(tmp_path, files)
    assert isinstance(part.emb_file, RowFile)
    cat = Catalogue([part])
    picked = np.array([99, 3, 42])
    np.testing.assert_array_equal(cat.emb(picked), emb[picked])
    tokens, mask = cat.padded_tokens(picked)
    np.testing.assert_array_equal(tokens[1], rows[15:20])
    assert mask.all()


def test_incomplete_or_damaged_files_are_refused(rows, tmp_path):
    writer = CompactWriter(tmp_path, "s", len(rows), 48, "int8")
    writer.write(rows[:10])
    with pytest.raises(ValueError, match="got 10 rows, its header declares 500"):
        writer.close()
    files = CompactWriter(tmp_path, "t", len(rows), 48, "int8").write_all([rows])
    with open(tmp_path / files["data"], "r+b") as fh:
        fh.truncate(1000)
    with pytest.raises(ValueError, match="truncated or damaged"):
        open_compact(tmp_path, files, "int8")
    with pytest.raises(ValueError, match="states must be one of"):
        encode_rows(rows, "bfloat16")


def _xpool_scores(xpool, video, states, lengths, compact):
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    data = compact if compact is not None else states
    parts = [data[offsets[i]: offsets[i + 1]] for i in range(len(lengths))]
    padded = np.zeros((len(parts), max(lengths), states.shape[1]), np.float32)
    mask = np.zeros(padded.shape[:2], bool)
    for i, p in enumerate(parts):
        padded[i, : len(p)], mask[i, : len(p)] = p, True
    with torch.no_grad():
        return xpool.scores_from_states(torch.from_numpy(video), torch.from_numpy(padded),
                                        torch.from_numpy(mask)).numpy()


@pytest.mark.parametrize("d_model", [32, 256])
def test_xpool_scores_within_the_stated_tolerance(d_model):
    """X-Pool of the default width (256) and the tests' (32), weights perturbed from the
    identity initialisation, on layer-normed snippet states as a catalogue caches them."""
    from _configs import made_config

    from mgsv_sk.nn.xpool import XPool

    torch.manual_seed(0)
    xpool = XPool(made_config(d_model=d_model, n_heads=2)).eval()
    with torch.no_grad():
        for p in xpool.parameters():
            p.add_(0.05 * torch.randn_like(p))
    rng = np.random.default_rng(1)
    lengths = rng.integers(5, 96, 64)
    tokens = torch.from_numpy(rng.standard_normal((int(lengths.sum()), d_model)
                                                  ).astype(np.float32) * 2 + 0.3)
    with torch.no_grad():
        states = xpool.snippet_states(tokens).numpy()
    video = rng.standard_normal((16, d_model)).astype(np.float32)
    video /= np.linalg.norm(video, axis=1, keepdims=True)
    exact = _xpool_scores(xpool, video, states, lengths, None)
    for name in ("float16", "int8"):
        got = _xpool_scores(xpool, video, states, lengths, encode_rows(states, name))
        assert np.abs(got - exact).max() <= SCORE_TOLERANCE[name], name


# -- the estimator's catalogue ------------------------------------------------------------------
@pytest.fixture(scope="module")
def served(tiny_fitted, small_test):
    import copy

    model = copy.deepcopy(tiny_fitted)
    model.set_catalogue(small_test.frame["music_id"].unique(), features=small_test.features)
    model.set_params(xpool_top_k=10)
    return model


def test_exact_float32_catalogue_predicts_identically(served, small_test):
    import copy

    import pandas as pd

    X = small_test.frame.iloc[:20].drop(columns="music_id")
    model = copy.deepcopy(served).compact_catalogue("float32", "exact")
    pd.testing.assert_frame_equal(model.predict(X, features=small_test.features),
                                  served.predict(X, features=small_test.features))


@pytest.mark.parametrize("states, index", [("int8", "hnsw"), ("float16", "ivf")])
def test_compact_ann_catalogue_ranks_within_tolerance(served, small_test, tmp_path, states,
                                                      index):
    import copy

    pytest.importorskip("faiss")
    X = small_test.frame.iloc[:20].drop(columns="music_id")
    model = copy.deepcopy(served).compact_catalogue(states, index)
    assert model.catalogue_.ann.kind == index
    want = served.rank(X, k=5, features=small_test.features)
    got = model.rank(X, k=5, features=small_test.features)
    assert (got["music_id"].to_numpy() == want["music_id"].to_numpy()).mean() >= 0.9
    np.testing.assert_allclose(got["score"], want["score"], atol=SCORE_TOLERANCE[states])
    table = model.decision_function(X, features=small_test.features)
    assert (np.isfinite(table).sum(axis=1) == 10).all()  # the index's top-10, others -inf
    model.save(tmp_path / "m")  # saved as float32 arrays
    from mgsv_sk.estimators.made import MGSVGrounder

    loaded = MGSVGrounder.load(tmp_path / "m")
    assert loaded.catalogue_.ann is None
    assert loaded.catalogue_.arrays()[2].dtype == np.float32


@pytest.mark.parametrize("states", STATE_DTYPES)
def test_padded_rows_of_scattered_tracks_match_their_decoded_slices(rows, states):
    from mgsv_sk.search import Catalogue, Part, pad

    lengths = np.random.default_rng(1).integers(1, 9, 60)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    data = rows[: offsets[-1]]
    emb = np.eye(60, 48, dtype=np.float32)
    cat = Catalogue([Part(tuple(f"m{i}" for i in range(60)), emb, offsets, data, data)])
    cat = cat.compacted(states)  # int8 / float16 rows decoded as read
    decoded = encode_rows(data, states).decode()
    picked = np.array([59, 3, 3, 17, 0])
    want = pad([decoded[offsets[r]: offsets[r + 1]] for r in picked], 48)
    for got in (cat.padded_states(picked), cat.padded_tokens(picked)):
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    two_parts = cat.with_part(Part(("extra",), emb[:1], np.array([0, 2]), data[:2], data[:2]))
    got = two_parts.padded_states(np.array([60, 3]))
    np.testing.assert_array_equal(got[0][0, :2], data[:2])
    np.testing.assert_array_equal(got[1].sum(axis=1), [2, lengths[3]])
