"""The catalogue sharded across 2 Dask workers answers as the single-machine catalogue."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mgsv_sk.infer.sharded import shard_grounder
from mgsv_sk.search.ann import build_index
from mgsv_sk.search.catalogue import top_k_indices
from mgsv_sk.search.compact import encode_rows
from mgsv_sk.search.sharded import ShardedCatalogue, shard_bounds

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as c:
        yield c


@pytest.fixture(scope="module")
def served(tiny_fitted, small_test):
    """The tiny model serving the 60 test tracks, and 12 test videos' embeddings."""
    import copy

    model = copy.deepcopy(tiny_fitted)
    model.set_catalogue(small_test.frame["music_id"].unique(), features=small_test.features)
    video = torch.from_numpy(model._encode_videos(
        small_test.frame.iloc[:12], model._source(small_test.features)).emb)
    return model, video


def test_shard_bounds_cover_every_row_once():
    bounds = shard_bounds(61, 4)
    assert bounds[0] == 0 and bounds[-1] == 61 and np.diff(bounds).tolist() == [16, 15, 15, 15]
    with pytest.raises(ValueError, match="n_shards must be in"):
        shard_bounds(3, 4)


@pytest.mark.parametrize("top_k, k", [(10, 5), (8, 20)])
def test_two_stage_search_is_the_single_machine_one(client, served, top_k, k):
    model, video = served
    cat = model.catalogue_
    with torch.no_grad():
        table = cat.scores(model.model_, video, xpool_top_k=top_k)
    expected = top_k_indices(table, k)
    sharded, rerank = shard_grounder(client, model)
    assert sharded.bounds.tolist() == [0, 30, 60] and len(set(sharded.workers)) == 2
    scores, rows = sharded.search(video.numpy(), k, xpool_top_k=top_k, rerank=rerank)
    np.testing.assert_array_equal(rows, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(table, expected, axis=1), atol=1e-6)


def test_dual_search_identical_to_the_exact_index(client, served):
    model, video = served
    emb, _, _, offsets = model.catalogue_.arrays()
    sharded = ShardedCatalogue.scatter(client, emb, offsets, n_shards=3)
    got = sharded.search(video.numpy(), 25)
    expected = build_index(emb, "exact").search(video.numpy(), 25)
    np.testing.assert_array_equal(got[1], expected[1])
    # a shard's scan is its own matrix product: the same sums up to float32 rounding
    np.testing.assert_allclose(got[0], expected[0], atol=1e-6)


def test_compact_states_on_the_shards(client, served):
    model, video = served
    cat = model.catalogue_
    emb, _, states, offsets = cat.arrays()
    compact = encode_rows(states, "int8")
    sharded = ShardedCatalogue.scatter(client, emb, offsets, compact.decode())
    _, rerank = shard_grounder(client, model)
    with torch.no_grad():
        table = cat.scores(model.model_, video, xpool_top_k=10)
    scores, rows = sharded.search(video.numpy(), 1, xpool_top_k=10, rerank=rerank)
    best = table.max(axis=1)
    assert np.abs(scores[:, 0] - best).max() <= 1e-2


@pytest.mark.parametrize("states", ["float32", "int8"])
def test_a_bundle_sharded_without_torch_answers_as_its_runtime(client, served, tmp_path,
                                                               small_test, states):
    from export.runtime import OnnxGrounder
    from export.sharded import shard_bundle
    from export.to_onnx import export_onnx

    model, _ = served
    bundle = export_onnx(model, tmp_path / "bundle", states=states, check=False)
    g = OnnxGrounder.load(bundle, 1, features=small_test.features, precision="fp32")
    g.xpool_top_k = 10
    frame = small_test.frame.iloc[:12]
    # the runtime's own two-stage search; the shards answer the retrieval stage, before
    # any re-ranking by the moment score
    table = g.decision_function(frame, moment_weight=0)
    expected = top_k_indices(np.asarray(table), 5)
    video = g._encode_videos(frame, g._source(None)).emb
    sharded, rerank = shard_bundle(client, bundle, precision="fp32")
    assert len(sharded) == len(g.catalogue_ids_) and rerank is not None
    scores, rows = sharded.search(video, 5, xpool_top_k=10, rerank=rerank)
    np.testing.assert_array_equal(rows, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(np.asarray(table), expected, axis=1),
                               atol=1e-5)
