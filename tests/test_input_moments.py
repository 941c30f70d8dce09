"""The encoders standardise their input with the training features' centre and spread: a
fit learns the same model whatever offset and overall scale the features it is given have."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import TINY

from mgsv_sk import MGSVGrounder
from mgsv_sk.data.features import InMemoryFeatures
from mgsv_sk.train import _moments
from mgsv_sk.train._moments import TARGET_STD, feature_moments


def test_moments_are_those_of_every_row_read_in_parts(monkeypatch):
    rng = np.random.default_rng(0)
    # a mean far larger than the spread: a naive sum of squares would lose the variance
    videos = {f"v{i}": (1e4 + rng.standard_normal((int(rng.integers(1, 9)), 512)))
              .astype(np.float32) for i in range(11)}
    monkeypatch.setattr(_moments, "_READ", 3)  # four parts
    mean, scale = feature_moments(InMemoryFeatures(videos, {}), list(videos), "video", seed=0)
    rows = np.concatenate(list(videos.values())).astype(np.float64)
    assert mean.dtype == scale.dtype == np.float32
    np.testing.assert_allclose(mean, rows.mean(axis=0), rtol=1e-6)
    # one factor for every dimension: the median dimension's spread becomes TARGET_STD
    np.testing.assert_allclose(scale, np.median(rows.std(axis=0)) / TARGET_STD, rtol=1e-3)


def test_the_scale_keeps_the_features_geometry_and_a_constant_is_not_divided():
    rng = np.random.default_rng(1)
    music = {}
    for i in range(4):
        rows = rng.standard_normal((5, 768)).astype(np.float32)
        rows[:, :8] *= 10.0  # a few large dimensions stay larger than the others
        rows[:, 9] = 3.0  # constant
        music[f"m{i}"] = rows
    mean, scale = feature_moments(InMemoryFeatures({}, music), list(music), "music", seed=0)
    assert np.ptp(scale) == 0 and 0.3 < scale[0] < 0.7 and mean[9] == pytest.approx(3.0)
    constant = {"m": np.full((4, 768), -2.5, np.float32)}
    mean, scale = feature_moments(InMemoryFeatures({}, constant), ["m"], "music", seed=0)
    assert (scale == 1.0).all() and (mean == -2.5).all()


def test_many_items_are_sampled_with_the_seed(monkeypatch):
    rng = np.random.default_rng(2)
    videos = {f"v{i}": rng.standard_normal((2, 512)).astype(np.float32) + i
              for i in range(40)}
    monkeypatch.setattr(_moments, "MOMENT_ITEMS", 6)
    source = InMemoryFeatures(videos, {})
    read = []
    original = source.videos
    monkeypatch.setattr(source, "videos", lambda ids: read.extend(ids) or original(ids))
    first = feature_moments(source, list(videos) * 2, "video", seed=5)  # duplicates once
    assert len(read) == len(set(read)) == 6
    again = feature_moments(source, list(videos), "video", seed=5)
    np.testing.assert_array_equal(first[0], again[0])


def test_a_fit_standardises_with_its_training_features(small_train):
    est = MGSVGrounder(features=small_train.features, **{**TINY, "max_epochs": 1},
                       validation_fraction=0).fit(small_train.frame)
    frames = np.concatenate(small_train.features.videos(
        list(dict.fromkeys(small_train.frame["video_id"])))).astype(np.float64)
    snippets = np.concatenate(small_train.features.musics(
        list(dict.fromkeys(small_train.frame["music_id"])))).astype(np.float64)
    for encoder, rows in ((est.model_.video_encoder, frames),
                          (est.model_.music_encoder, snippets)):
        np.testing.assert_allclose(encoder.input_mean.numpy(), rows.mean(axis=0), atol=1e-5)
        np.testing.assert_allclose(encoder.input_scale.numpy(),
                                   np.median(rows.std(axis=0)) / TARGET_STD, rtol=1e-4)


def _affine(features, frame, video_map, music_map):
    videos = {v: features.video(v) * video_map[0] + video_map[1]
              for v in dict.fromkeys(frame["video_id"])}
    music = {m: features.music(m) * music_map[0] + music_map[1]
             for m in dict.fromkeys(frame["music_id"])}
    return InMemoryFeatures(videos, music)


def test_the_scale_and_offset_of_the_features_do_not_change_the_model(small_train, small_test):
    # another overall scale and an offset per dimension (CLIP embeddings have norm ~10 and
    # a mean direction every frame shares): the same fit, the same answers
    rng = np.random.default_rng(3)
    video_map = (np.float32(7.0), rng.uniform(-5, 5, 512).astype(np.float32))
    music_map = (np.float32(0.05), rng.uniform(-2, 2, 768).astype(np.float32))
    train, test = small_train.frame, small_test.frame
    params = {**TINY, "max_epochs": 2}
    results = []
    for maps in (((1.0, 0.0), (1.0, 0.0)), (video_map, music_map)):
        fit_features = _affine(small_train.features, train, *maps)
        est = MGSVGrounder(features=fit_features, **params).fit(train)
        test_features = _affine(small_test.features, test, *maps)
        est.set_catalogue(test["music_id"].unique(), features=test_features)
        results.append(est.rank(test.drop(columns="music_id"), k=3, features=test_features))
    plain, mapped = results
    assert (plain["music_id"].to_numpy() == mapped["music_id"].to_numpy()).mean() >= 0.95
    np.testing.assert_allclose(plain["score"], mapped["score"], atol=2e-3)


def test_a_model_saved_before_input_moments_loads_as_it_was(small_train, tmp_path):
    from mgsv_sk.estimators._persistence import sha256_file

    est = MGSVGrounder(features=small_train.features, **{**TINY, "max_epochs": 1}).fit(
        small_train.frame)
    with torch.no_grad():  # as a model trained before standardisation: the identity
        for encoder in (est.model_.video_encoder, est.model_.music_encoder):
            encoder.input_mean.zero_()
            encoder.input_scale.fill_(1.0)
    est.save(tmp_path / "model")
    old = tmp_path / "old"
    shutil.copytree(tmp_path / "model", old)
    with np.load(old / "weights.npz") as stored:
        kept = {k: stored[k] for k in stored.files if ".input_" not in k}
    assert len(kept) == len(stored.files) - 4
    np.savez(old / "weights.npz", **kept)
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["files"]["weights.npz"] = {"bytes": (old / "weights.npz").stat().st_size,
                                        "sha256": sha256_file(old / "weights.npz")}
    (old / "manifest.json").write_text(json.dumps(manifest))
    loaded = MGSVGrounder.load(old, features=small_train.features)
    X = small_train.frame.iloc[:6]
    np.testing.assert_allclose(loaded.predict(X)["moment_score"], est.predict(X)["moment_score"],
                               atol=1e-6)
