"""A grounder whose catalogue is sharded across 2 Dask workers answers as it does alone:
the shards' search is the single-machine one, and predict / rank / decision_function on
the sharded catalogue give the same tracks, scores and moments, in both backends."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pandas as pd
import pytest
import torch

from mgsv_sk.search import top_k_indices
from mgsv_sk.search.ann import build_index
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
    """The tiny model serving the 60 test tracks (their features its own), and 12 test
    videos."""
    model = copy.deepcopy(tiny_fitted)
    model.set_params(features=small_test.features)
    model.set_catalogue(small_test.frame["music_id"].unique())
    return model, small_test.frame.iloc[:12].drop(columns="music_id")


def _same_answers(alone, sharded_grounder, frame) -> None:
    pd.testing.assert_frame_equal(sharded_grounder.rank(frame, 5), alone.rank(frame, 5),
                                  atol=1e-5)
    pd.testing.assert_frame_equal(sharded_grounder.predict(frame), alone.predict(frame),
                                  atol=1e-5)


def test_shard_bounds_cover_every_row_once():
    bounds = shard_bounds(61, 4)
    assert bounds[0] == 0 and bounds[-1] == 61 and np.diff(bounds).tolist() == [16, 15, 15, 15]
    with pytest.raises(ValueError, match="n_shards must be in"):
        shard_bounds(3, 4)


@pytest.mark.parametrize("top_k", [None, 8])
def test_a_sharded_grounder_answers_as_the_single_machine_one(client, served, top_k):
    model, frame = served
    alone = copy.deepcopy(model)
    alone.xpool_top_k = top_k
    sharded = copy.deepcopy(alone)
    shards = sharded.shard_catalogue(client)
    assert shards.bounds.tolist() == [0, 30, 60] and len(set(shards.workers)) == 2
    assert sharded.set_catalogue(shards) is sharded
    assert sharded.catalogue_.shards is shards and sharded.catalogue_ids_ == alone.catalogue_ids_
    _same_answers(alone, sharded, frame)
    np.testing.assert_allclose(sharded.decision_function(frame, moment_weight=0),
                               alone.decision_function(frame, moment_weight=0), atol=1e-5)
    # the shards answer as the catalogue's own search: same rows, same scores
    video = alone._encode_videos(frame, alone._source(None)).emb
    with_xpool = alone.catalogue_.scores(alone.model_, torch.from_numpy(video),
                                         xpool_top_k=top_k)
    scores, rows = shards.search(video, 5, xpool_top_k=top_k or len(shards))  # None: all
    np.testing.assert_array_equal(rows, top_k_indices(with_xpool, 5))
    np.testing.assert_allclose(scores, np.take_along_axis(with_xpool, rows, axis=1), atol=1e-6)


def test_dual_search_identical_to_the_exact_index(client, served):
    model, frame = served
    shards = ShardedCatalogue.scatter(client, model.catalogue_, n_shards=3)
    video = model._encode_videos(frame, model._source(None)).emb
    got = shards.search(video, 25)
    emb = model.catalogue_.emb(np.arange(len(model.catalogue_)))
    expected = build_index(emb, "exact").search(video, 25)
    np.testing.assert_array_equal(got[1], expected[1])
    # a shard's scan is its own matrix product: the same sums up to float32 rounding
    np.testing.assert_allclose(got[0], expected[0], atol=1e-6)


def test_compact_states_on_the_shards(client, served):
    model, frame = served
    alone = copy.deepcopy(model)
    alone.compact_catalogue(states="int8", index="exact")
    sharded = copy.deepcopy(alone)
    sharded.set_catalogue(sharded.shard_catalogue(client))
    _same_answers(alone, sharded, frame)


@pytest.mark.parametrize("states", ["float32", "int8"])
def test_a_bundle_sharded_without_torch_answers_as_its_runtime(client, served, tmp_path,
                                                               small_test, states):
    from export.runtime import OnnxGrounder
    from export.to_onnx import export_onnx

    model, frame = served
    bundle = export_onnx(model, tmp_path / "bundle", states=states, check=False)
    alone = OnnxGrounder.load(bundle, 1, features=small_test.features, precision="fp32")
    alone.xpool_top_k = 10
    sharded = OnnxGrounder.load(bundle, 1, features=small_test.features, precision="fp32")
    sharded.xpool_top_k = 10
    shards = sharded.shard_catalogue(client)
    # the scorer travels as the bundle's path: the workers open the bundle themselves
    assert type(pickle.loads(pickle.dumps(shards.scorer))).__name__ == "_OrtXPool"
    sharded.set_catalogue(shards)
    _same_answers(alone, sharded, frame)


def test_shards_of_another_catalogue_are_refused(client, served, small_test):
    model, _ = served
    other = copy.deepcopy(model)
    other.set_catalogue(small_test.frame["music_id"].unique()[:20], features=small_test.features)
    shards = other.shard_catalogue(client)
    before = list(model.catalogue_ids_)
    with pytest.raises(ValueError, match="scattered from another catalogue"):
        model.set_catalogue(shards)
    assert model.catalogue_ids_ == before and model.catalogue_.shards is None


def test_a_sharded_grounder_saves_and_pickles_without_its_cluster(client, served, tmp_path):
    model, frame = served
    sharded = copy.deepcopy(model)
    sharded.set_catalogue(sharded.shard_catalogue(client))
    copied = pickle.loads(pickle.dumps(sharded))
    assert copied.catalogue_.shards is None
    pd.testing.assert_frame_equal(copied.rank(frame, 3), model.rank(frame, 3), atol=1e-5)


def test_a_baseline_has_no_catalogue_to_shard(client, small_train):
    from mgsv_sk import RidgeGrounder

    ridge = RidgeGrounder(features=small_train.features).fit(small_train.frame)
    with pytest.raises(TypeError, match="no encoded catalogue to shard"):
        ridge.shard_catalogue(client)
