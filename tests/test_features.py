"""Feature sources: parity of the three, packing, and errors that name the id and path."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from mgsv_sk import (
    FeatureError,
    FeatureTree,
    InMemoryFeatures,
    PackedFeatures,
    pack_features,
)
from mgsv_sk.data.features import as_feature_source


def _in_memory_from_tree(tree, frame):
    vids = {v: tree.video(v) for v in frame["video_id"]}
    mus = {m: tree.music(m) for m in frame["music_id"].unique()}
    return InMemoryFeatures(vids, mus)


def test_three_sources_return_identical_arrays(release_tree, tmp_path):
    frame = release_tree.frame
    tree = FeatureTree(release_tree.root)
    packed = pack_features(tree, tmp_path / "packed", annotations=frame)
    memory = _in_memory_from_tree(tree, frame)
    for vid in frame["video_id"]:
        a, b, c = tree.video(vid), packed.video(vid), memory.video(vid)
        assert a.dtype == b.dtype == c.dtype == np.float32
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    for mid in frame["music_id"].unique():
        np.testing.assert_array_equal(tree.music(mid), packed.music(mid))
        np.testing.assert_array_equal(tree.music(mid), memory.music(mid))
    np.testing.assert_array_equal(
        packed.video_lengths(frame["video_id"]), tree.video_lengths(frame["video_id"])
    )


def test_tree_matches_generated_arrays_and_masks_are_applied(tmp_path):
    from mgsv_sk.data.synthetic import make_synthetic_mgsv

    mem = make_synthetic_mgsv(6, 3, random_state=5)
    disk = make_synthetic_mgsv(6, 3, random_state=5, path=tmp_path)
    for vid in mem.frame["video_id"]:
        got = disk.features.video(vid)
        np.testing.assert_array_equal(got, mem.features.video(vid))
        assert len(got) < 50  # padding rows removed by the mask


def test_leading_batch_axis_is_accepted(tmp_path):
    base = tmp_path / "features" / "Kuai_feature"
    for sub in ("vit_feature1/vit_feature", "vit_feature1/vit_mask",
                "ast_feature2p5/ast_feature", "ast_feature2p5/ast_mask"):
        (base / sub).mkdir(parents=True)
    feat = torch.randn(1, 50, 512)
    mask = torch.zeros(1, 50)
    mask[0, :7] = 1
    torch.save(feat, base / "vit_feature1/vit_feature/v1.pt")
    torch.save(mask, base / "vit_feature1/vit_mask/v1.pt")
    got = FeatureTree(tmp_path).video("v1")
    np.testing.assert_array_equal(got, feat[0, :7].numpy())


def test_packing_reads_each_track_once(release_tree, tmp_path):
    calls: list[str] = []

    class Counting(InMemoryFeatures):
        def music(self, music_id):
            calls.append(music_id)
            return super().music(music_id)

    tree = FeatureTree(release_tree.root)
    src = Counting({v: tree.video(v) for v in release_tree.frame["video_id"]},
                   {m: tree.music(m) for m in release_tree.frame["music_id"].unique()})
    calls.clear()
    pack_features(src, tmp_path / "p", annotations=release_tree.frame)
    assert sorted(calls) == sorted(release_tree.frame["music_id"].unique())
    assert len(release_tree.frame) > len(calls)  # several videos share a track


def test_packed_store_pickles_as_its_path(release_tree, tmp_path):
    packed = pack_features(release_tree.root, tmp_path / "p", annotations=release_tree.frame)
    blob = pickle.dumps(packed)
    assert len(blob) < 1000
    again = pickle.loads(blob)
    vid = release_tree.frame["video_id"][0]
    np.testing.assert_array_equal(again.video(vid), packed.video(vid))
    assert isinstance(as_feature_source(str(tmp_path / "p")), PackedFeatures)
    assert isinstance(as_feature_source(release_tree.root), FeatureTree)


def test_pack_refuses_to_overwrite_and_replaces_when_asked(release_tree, tmp_path):
    dst = tmp_path / "p"
    pack_features(release_tree.root, dst, annotations=release_tree.frame)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        pack_features(release_tree.root, dst, annotations=release_tree.frame)
    sub = release_tree.frame.iloc[:3]
    store = pack_features(release_tree.root, dst, annotations=sub, overwrite=True)
    assert len(store.video_ids()) == 3
    assert [p.name for p in tmp_path.iterdir()] == ["p"]  # no temp or old folders left


def test_failed_pack_leaves_nothing(release_tree, tmp_path):
    tree = FeatureTree(release_tree.root)

    class Failing(InMemoryFeatures):
        def music(self, music_id):
            raise RuntimeError("disk died")

    src = Failing({v: tree.video(v) for v in release_tree.frame["video_id"]},
                  {m: tree.music(m) for m in release_tree.frame["music_id"].unique()})
    with pytest.raises(RuntimeError, match="disk died"):
        pack_features(src, tmp_path / "p", annotations=release_tree.frame)
    assert list(tmp_path.iterdir()) == []


def test_missing_feature_file_names_id_and_path(release_tree, tmp_path):
    tree = FeatureTree(release_tree.root)
    with pytest.raises(FileNotFoundError, match=r"video_id 'nope'.*nope\.pt"):
        tree.video("nope")
    with pytest.raises(FeatureError, match=r"no features for 1 video\(s\) \['ghost'\]"):
        pack_features(tree, tmp_path / "p", video_ids=["ghost"], music_ids=[])


def test_corrupt_and_non_tensor_files_are_refused(release_tree, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(release_tree.root, root)
    vid = release_tree.frame["video_id"][0]
    path = root / "features/Kuai_feature/vit_feature1/vit_feature" / f"{vid}.pt"
    path.write_bytes(path.read_bytes()[:100])  # truncated
    with pytest.raises(FeatureError, match=rf"video_id '{vid}'.*corrupt, truncated"):
        FeatureTree(root).video(vid)
    torch.save({"not": "a tensor"}, path)
    with pytest.raises(FeatureError, match="holds a dict, expected a tensor"):
        FeatureTree(root).video(vid)


def test_wrong_shapes_and_nan_are_refused():
    with pytest.raises(FeatureError, match=r"shape \(4, 100\), expected \(T, 512\)"):
        InMemoryFeatures({"v": np.zeros((4, 100))}, {})
    bad = np.ones((3, 768))
    bad[1, 2] = np.nan
    with pytest.raises(FeatureError, match="id 'm'.*NaN"):
        InMemoryFeatures({}, {"m": bad})
    with pytest.raises(FeatureError, match="mask .* expected \\(5,\\)"):
        InMemoryFeatures({"v": np.ones((5, 512))}, {}, video_masks={"v": np.ones(4)})
    with pytest.raises(FeatureError, match="no valid rows"):
        InMemoryFeatures({"v": np.ones((5, 512))}, {}, video_masks={"v": np.zeros(5)})


def test_damaged_packed_store_is_refused(release_tree, tmp_path):
    dst = tmp_path / "p"
    pack_features(release_tree.root, dst, annotations=release_tree.frame)
    data = dst / "music_features.f32"
    data.write_bytes(data.read_bytes()[:-4])
    with pytest.raises(FeatureError, match="damaged.*re-run pack_features"):
        PackedFeatures(dst)
    with pytest.raises(FileNotFoundError, match="no packed feature store"):
        PackedFeatures(tmp_path)


def test_no_tree_and_no_source_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no MGSV-EC feature tree"):
        FeatureTree(tmp_path)
    with pytest.raises(ValueError, match="no feature source given"):
        as_feature_source(None)
