"""Bundles with compact snippet arrays and an ANN first stage, served by the runtime."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mgsv_sk.export.compact_bundle import compact_bundle
from mgsv_sk.export.manifest import BundleError, read_manifest
from mgsv_sk.export.runtime import OnnxGrounder
from mgsv_sk.export.to_onnx import export_onnx
from mgsv_sk.search.compact import SCORE_TOLERANCE

pytest.importorskip("faiss")


@pytest.fixture(scope="module")
def bundle(tiny_fitted, tmp_path_factory):
    return export_onnx(tiny_fitted, tmp_path_factory.mktemp("onnx") / "bundle")


def _load(path, small_train, top_k=10):
    g = OnnxGrounder.load(path, 1, features=small_train.features, precision="fp32")
    g.xpool_top_k = top_k
    return g


def test_exact_float32_copy_serves_identically(bundle, small_train, tmp_path):
    copy = compact_bundle(bundle, tmp_path / "b", states="float32", index="exact")
    assert read_manifest(copy)["catalogue"]["index"]["kind"] == "exact"
    rows = small_train.frame.drop(columns="music_id").iloc[:20]
    pd.testing.assert_frame_equal(_load(copy, small_train).predict(rows),
                                  _load(bundle, small_train).predict(rows))


@pytest.mark.parametrize("states, index", [("int8", "hnsw"), ("float16", "ivf")])
def test_compact_ann_bundle_ranks_as_the_float32_exact_one(bundle, small_train, tmp_path,
                                                           states, index):
    path = compact_bundle(bundle, tmp_path / "b", states=states, index=index)
    info = read_manifest(path)["catalogue"]
    assert info["states"] == states and info["index"]["kind"] == index
    assert info["files"]["xpool_states"].endswith(f".{states}.npy")
    rows = small_train.frame.drop(columns="music_id").iloc[:20]
    exact, compact = _load(bundle, small_train), _load(path, small_train)
    want = exact.rank(rows, k=5)
    got = compact.rank(rows, k=5)
    assert (got["music_id"].to_numpy() == want["music_id"].to_numpy()).mean() >= 0.9
    np.testing.assert_allclose(got["score"], want["score"], atol=SCORE_TOLERANCE[states])
    table = compact.decision_function(rows)  # tracks the index did not return: -inf
    assert (np.isfinite(table).sum(axis=1) == 10).all()


def test_added_tracks_are_searched_beside_the_index(bundle, small_train, small_test,
                                                    tmp_path):
    path = compact_bundle(bundle, tmp_path / "b", states="int8", index="hnsw")
    from mgsv_sk import InMemoryFeatures

    feats = InMemoryFeatures(
        {v: small_test.features.video(v) for v in small_test.features.video_ids()},
        {**{m: small_train.features.music(m) for m in small_train.features.music_ids()},
         **{m: small_test.features.music(m) for m in small_test.features.music_ids()}})
    g = OnnxGrounder.load(path, 1, features=feats, precision="fp32")
    g.add_tracks(small_test.frame["music_id"].unique())
    g.xpool_top_k = 200  # more than the catalogue: the full scan, every track
    rows = small_test.frame.iloc[:10].drop(columns="music_id")
    full = g.predict(rows)
    g.xpool_top_k = 60
    two_stage = g.predict(rows)
    assert (two_stage["music_id"] == full["music_id"]).mean() >= 0.9


def test_tampered_index_is_refused(bundle, small_train, tmp_path):
    path = compact_bundle(bundle, tmp_path / "b", states="int8", index="hnsw")
    with pytest.raises(ValueError, match="already compact"):
        compact_bundle(path, tmp_path / "c")
    index_file = path / "catalogue" / "ann_index.faiss"
    data = bytearray(index_file.read_bytes())
    data[-10] ^= 0xFF
    index_file.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum mismatch"):
        OnnxGrounder.load(path, 1)
    sidecar = path / "catalogue" / "ann_index.json"
    assert json.loads(sidecar.read_text())["kind"] == "hnsw"


def test_export_writes_compact_states_and_an_index_in_one_step(tiny_fitted, bundle, small_train,
                                                                tmp_path):
    import copy

    with pytest.raises(ValueError, match="states must be one of"):
        export_onnx(tiny_fitted, tmp_path / "bad", states="int4")
    assert not (tmp_path / "bad").exists()  # refused before anything was written
    direct = export_onnx(tiny_fitted, tmp_path / "direct", states="int8", index="ivf",
                         check=False)
    info = read_manifest(direct)["catalogue"]
    assert info["states"] == "int8" and info["index"]["kind"] == "ivf"
    copied = compact_bundle(bundle, tmp_path / "copied", states="int8", index="ivf")
    for role in ("tokens", "xpool_states", "tokens_scales"):  # the same compact rows
        assert (direct / info["files"][role]).read_bytes() == (
            copied / read_manifest(copied)["catalogue"]["files"][role]).read_bytes()
    rows = small_train.frame.drop(columns="music_id").iloc[:20]
    pd.testing.assert_frame_equal(_load(direct, small_train).rank(rows, k=5),
                                  _load(copied, small_train).rank(rows, k=5))
    # a catalogue compacted on the estimator is exported as it is stored, by default
    model = copy.deepcopy(tiny_fitted).compact_catalogue(states="float16", index="hnsw")
    kept = read_manifest(export_onnx(model, tmp_path / "kept", check=False))["catalogue"]
    assert kept["states"] == "float16" and kept["index"]["kind"] == "hnsw"
