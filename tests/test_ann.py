"""The first-stage catalogue index: exact agreement, ANN recall, saving, tamper refusal."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mgsv_sk.search import top_k_indices, top_k_rows
from mgsv_sk.search.ann import (
    EXACT_MAX_TRACKS,
    AnnIndexError,
    AnnParams,
    build_index,
    load_index,
    resolve_kind,
)

pytest.importorskip("faiss")


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def catalogue():
    """2,000 clustered unit embeddings (D = 32) and 20 queries near them."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((40, 32))
    emb = _unit(centres[rng.integers(0, 40, 2000)] + 0.3 * rng.standard_normal((2000, 32)))
    queries = _unit(centres[rng.integers(0, 40, 20)] + 0.3 * rng.standard_normal((20, 32)))
    return emb, queries


def test_exact_index_is_identical_to_the_full_dual_table(catalogue):
    emb, queries = catalogue
    scores, rows = build_index(emb, "exact").search(queries, 50)
    table = (emb @ queries.T).T  # the runtime catalogue's dual pass ([N,D] @ [D,B])
    np.testing.assert_array_equal(rows, top_k_indices(table, 50))
    np.testing.assert_array_equal(scores, np.take_along_axis(table, rows, axis=1))


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_index_agrees_with_exact(catalogue, kind):
    emb, queries = catalogue
    exact_scores, exact_rows = build_index(emb, "exact").search(queries, 100)
    index = build_index(emb, kind, AnnParams(nlist=32, nprobe=32))
    scores, rows = index.search(queries, 100)
    recall = np.mean([len(set(a) & set(b)) / 100 for a, b in zip(rows, exact_rows)])
    assert recall >= 0.99
    np.testing.assert_array_equal(rows[:, 0], exact_rows[:, 0])
    # the candidates' scores are exact inner products, whatever the index
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ emb.T, rows, axis=1),
                               atol=1e-5)


def test_auto_kind_and_its_override():
    assert resolve_kind("auto", EXACT_MAX_TRACKS) == "exact"
    assert resolve_kind("auto", EXACT_MAX_TRACKS + 1) == "ivf"
    assert resolve_kind("exact", 10**7) == "exact"
    with pytest.raises(ValueError, match="index must be one of"):
        resolve_kind("flat", 10)
    with pytest.raises(ValueError, match="ef_search must be an int >= 1"):
        AnnParams(ef_search=0)


def test_ties_keep_the_lower_row_first():
    scores = np.array([[0.5, 0.9, 0.5, 0.5, 0.1]], np.float32)
    s, r = top_k_rows(scores, np.array([9, 4, 7, 2, 0]), 3)
    assert r.tolist() == [[4, 2, 7]]
    s, r = top_k_rows(np.array([[0.3, -np.inf]], np.float32), np.array([[5, -1]]), 2)
    assert r.tolist() == [[5, -1]]


@pytest.mark.parametrize("kind", ["hnsw", "ivf", "exact"])
def test_save_load_round_trip(catalogue, tmp_path, kind):
    emb, queries = catalogue
    index = build_index(emb, kind, AnnParams(nlist=16))
    info = index.save(tmp_path)
    assert (info["file"] is None) == (kind == "exact")
    loaded = load_index(tmp_path, emb=emb, n=len(emb))
    assert loaded.kind == kind
    for a, b in zip(index.search(queries, 10), loaded.search(queries, 10)):
        np.testing.assert_array_equal(a, b)


def test_tampered_index_is_refused(catalogue, tmp_path):
    emb, _ = catalogue
    build_index(emb, "hnsw").save(tmp_path)
    path = tmp_path / "ann_index.faiss"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(AnnIndexError, match="does not match the sha256"):
        load_index(tmp_path)
    path.unlink()
    with pytest.raises(AnnIndexError, match="is missing"):
        load_index(tmp_path)


def test_index_of_another_catalogue_is_refused(catalogue, tmp_path):
    emb, _ = catalogue
    build_index(emb, "ivf", AnnParams(nlist=8)).save(tmp_path)
    with pytest.raises(AnnIndexError, match="covers 2000 tracks but the catalogue has 10"):
        load_index(tmp_path, n=10)
    (tmp_path / "ann_index.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(AnnIndexError, match="not a catalogue index description"):
        load_index(tmp_path)
