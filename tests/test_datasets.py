"""Synthetic data: real statistics, exact release layout, and a signal a linear model finds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mgsv_sk import RidgeGrounder, TrivialGrounder, evaluate, make_synthetic_mgsv
from mgsv_sk.data._schema import ANNOTATION_COLUMNS, validate_annotations
from mgsv_sk.data.synthetic import WORLDS


def test_statistics_follow_the_real_split():
    data = make_synthetic_mgsv(3000, 600, random_state=0)
    df = data.frame
    validate_annotations(df)  # a valid frame
    length = df["video_segment_duration"]
    assert 5.0 <= length.min() and length.max() <= 50.0
    assert 19 < length.mean() < 27
    assert 30.0 <= df["music_total_duration"].min() and df["music_total_duration"].max() <= 240
    assert 120 < df.drop_duplicates("music_id")["music_total_duration"].mean() < 160
    np.testing.assert_allclose(df["music_end"] - df["music_start"], length, atol=1e-3)
    assert 0.25 < (df["music_start"] == 0).mean() < 0.36
    assert (df["music_end"] <= df["music_total_duration"] + 1e-6).all()
    assert df["video_category"].value_counts(normalize=True).index[0] == "Fashion"
    assert df["music_id"].nunique() == 600


def test_frames_and_snippets_follow_the_release_rules():
    data = make_synthetic_mgsv(40, 10, random_state=2)
    for row in data.frame.itertuples():
        frames = data.features.video(row.video_id)
        assert frames.shape == (min(50, int(np.floor(row.video_end)) + 1), 512)
        snippets = data.features.music(row.music_id)
        assert snippets.shape == (min(96, int(row.music_total_duration // 2.5) + 1), 768)


def test_seeded_and_split_specific():
    a = make_synthetic_mgsv(10, 4, random_state=7)
    b = make_synthetic_mgsv(10, 4, random_state=7)
    c = make_synthetic_mgsv(10, 4, random_state=8)
    assert a.frame.equals(b.frame)
    vid = a.frame["video_id"][0]
    np.testing.assert_array_equal(a.features.video(vid), b.features.video(vid))
    assert not set(a.frame["music_id"]) & set(c.frame["music_id"])
    assert not set(a.frame["video_id"]) & set(c.frame["video_id"])


def test_written_layout_is_the_release_layout(release_tree):
    root = release_tree.root
    assert (root / "dataset/MGSV-EC/train_data.csv").is_file()
    for sub in ("vit_feature1/vit_feature", "vit_feature1/vit_mask",
                "ast_feature2p5/ast_feature", "ast_feature2p5/ast_mask"):
        assert any((root / "features/Kuai_feature" / sub).glob("*.pt"))
    import torch

    vid = release_tree.frame["video_id"][0]
    feat = torch.load(root / f"features/Kuai_feature/vit_feature1/vit_feature/{vid}.pt",
                      weights_only=True)
    assert feat.shape == (50, 512) and feat.dtype == torch.float32
    assert list(release_tree.frame.columns) == list(ANNOTATION_COLUMNS)


@pytest.mark.parametrize("world", WORLDS)
def test_every_world_is_learnable_by_a_linear_model(world):
    train = make_synthetic_mgsv(1500, 150, world=world, random_state=0)
    test = make_synthetic_mgsv(400, 400, world=world, random_state=1, split="test")
    trivial = TrivialGrounder().fit(train.frame)
    ridge = RidgeGrounder(features=train.features).fit(train.frame)
    t = evaluate(trivial, test.frame, features=test.features)
    r = evaluate(ridge, test.frame, features=test.features)
    # The trivial predictor is right only on the moments at 0 s (about 0.5 mIoU, as on
    # the real data); the linear baseline finds much of the planted signal, yet is far
    # from solving the task (room for the real model).
    assert 0.35 < t["mIoU"] < 0.58
    assert r["mIoU"] > t["mIoU"] + 0.08
    assert r["IoU@0.5"] > t["IoU@0.5"] + 0.12
    assert r["R@1"] > 20 / 400  # chance is 1/400
    assert r["mIoU"] < 0.9 and r["R@1"] < 0.9


def test_worlds_differ_where_the_grounding_signal_lives():
    aligned = make_synthetic_mgsv(30, 10, random_state=4)
    hook = make_synthetic_mgsv(30, 10, world="hook", random_state=4)
    signature = make_synthetic_mgsv(30, 10, world="signature", random_state=4)
    # same statistics and layout; the aligned world is the default (and unchanged)
    assert aligned.frame.shape == hook.frame.shape == signature.frame.shape
    pd.testing.assert_frame_equal(aligned.frame, make_synthetic_mgsv(30, 10, random_state=4,
                                                                     world="aligned").frame)
    # hook moments that do not start at 0 s start near a hook, off the grid by up to 1 s
    starts = hook.frame["music_start"][hook.frame["music_start"] > 0]
    assert len(starts) and not np.allclose(starts % 2.5, 0)
    with pytest.raises(ValueError, match="world must be one of"):
        make_synthetic_mgsv(3, 2, world="bogus")


def test_bad_arguments():
    with pytest.raises(ValueError, match="n_videos and n_tracks must be >= 1"):
        make_synthetic_mgsv(0, 3)
