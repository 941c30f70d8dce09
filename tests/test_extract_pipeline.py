"""The extraction pipeline: release layout, packed store, resume, failures, atomicity."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("av")
pytest.importorskip("soundfile")
pytest.importorskip("transformers")

from _media import StubMusicEncoder, tiny_clip, write_audio, write_video  # noqa: E402

from mgsv_sk.data.features import FeatureTree, PackedFeatures  # noqa: E402
from mgsv_sk.extract import extract_features  # noqa: E402


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    (root / "videos").mkdir()
    (root / "music").mkdir()
    write_video(root / "videos" / "v1.mp4", 3.2, seed=1)
    write_video(root / "videos" / "v2.mp4", 6.0, seed=2)
    (root / "videos" / "broken.mp4").write_bytes(b"not a video at all")
    write_audio(root / "music" / "m1.wav", 12.0, freq=330)
    write_audio(root / "music" / "m2.wav", 4.0, freq=880, channels=1)
    return root


@pytest.fixture(scope="module")
def clip_encoder():
    return tiny_clip()


def test_tree_layout_read_by_feature_tree(media, clip_encoder, tmp_path, caplog):
    out = tmp_path / "release"
    report = extract_features(out, videos=[media / "videos"], music=[media / "music"],
                              video_encoder=clip_encoder, music_encoder=StubMusicEncoder(),
                              batch=4)
    assert sorted(report.written) == ["m1", "m2", "v1", "v2"]
    assert list(report.failed) == [str(media / "videos" / "broken.mp4")]
    assert "broken.mp4" in report.summary() and "1 failed" in report.summary()
    assert "broken.mp4" in caplog.text
    tree = FeatureTree(out)
    assert tree.video("v1").shape == (4, 512)  # seconds 0..3
    assert tree.video("v2").shape == (6, 512)  # 0..5: second 6 has no frame
    assert tree.music("m1").shape == (5, 768)  # centres 0, 2.5, ..., 10 <= 12
    assert tree.music("m2").shape == (2, 768)
    import torch

    raw = torch.load(out / "features/Kuai_feature/vit_feature1/vit_feature/v1.pt")
    mask = torch.load(out / "features/Kuai_feature/ast_feature2p5/ast_mask/m1.pt")
    assert raw.shape == (50, 512) and raw.dtype == torch.float32
    assert mask.shape == (96,) and mask.sum() == 5
    # frames of a video are encoded as a batch: the same as one at a time
    from mgsv_sk.extract import encode_video_file

    rows, m = encode_video_file(media / "videos" / "v1.mp4", clip_encoder)
    np.testing.assert_allclose(rows[m > 0], tree.video("v1"), atol=1e-5)
    assert not list(out.rglob("*.tmp"))


def test_resume_skips_done_items(media, clip_encoder, tmp_path):
    out = tmp_path / "release"
    extract_features(out, videos=[media / "videos" / "v1.mp4"], video_encoder=clip_encoder)
    before = (out / "features/Kuai_feature/vit_feature1/vit_feature/v1.pt").stat().st_mtime_ns
    report = extract_features(out, videos=[media / "videos"], video_encoder=clip_encoder)
    assert report.skipped == ["v1"] and sorted(report.written) == ["v2"]
    assert (out / "features/Kuai_feature/vit_feature1/vit_feature/v1.pt").stat(
    ).st_mtime_ns == before


def test_interrupted_write_leaves_no_valid_feature(media, clip_encoder, tmp_path, monkeypatch):
    import torch

    out = tmp_path / "release"
    real = torch.save
    calls = []

    def crash(obj, path, *a, **k):
        calls.append(path)
        if len(calls) == 2:  # the feature file, after its mask
            raise KeyboardInterrupt
        return real(obj, path, *a, **k)

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        extract_features(out, videos=[media / "videos" / "v1.mp4"], video_encoder=clip_encoder)
    monkeypatch.setattr(torch, "save", real)
    tree = FeatureTree(out)
    assert not tree.has_video("v1") and not list(out.rglob("*.tmp"))
    report = extract_features(out, videos=[media / "videos" / "v1.mp4"],
                              video_encoder=clip_encoder)
    assert report.written == ["v1"] and tree.has_video("v1")


def test_packed_store_written_and_merged(media, clip_encoder, tmp_path):
    store = tmp_path / "packed"
    first = extract_features(store, videos=[media / "videos" / "v1.mp4"],
                             music=[media / "music" / "m2.wav"], video_encoder=clip_encoder,
                             music_encoder=StubMusicEncoder(), layout="packed")
    assert isinstance(first.output, PackedFeatures)
    again = extract_features(store, videos=[media / "videos"], music=[media / "music"],
                             video_encoder=clip_encoder, music_encoder=StubMusicEncoder(),
                             layout="packed")
    assert sorted(again.skipped) == ["m2", "v1"] and sorted(again.written) == ["m1", "v2"]
    packed = PackedFeatures(store)
    assert sorted(packed.video_ids()) == ["v1", "v2"] and sorted(packed.music_ids()) == [
        "m1", "m2"]
    assert packed.video("v2").shape == (6, 512) and packed.music("m1").shape == (5, 768)
    assert not (tmp_path / "packed.parts").exists()


def test_bad_arguments_are_refused_up_front(media, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        extract_features(tmp_path / "mine", music=[media / "music"], layout="packed",
                         music_encoder=StubMusicEncoder())
    with pytest.raises(ValueError, match="video_encoder is required"):
        extract_features(tmp_path / "o", videos=[media / "videos"])
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    write_audio(tmp_path / "a" / "x.wav", 1.0)
    write_audio(tmp_path / "b" / "x.wav", 1.0)
    with pytest.raises(ValueError, match="share the id 'x'"):
        extract_features(tmp_path / "o", music=[tmp_path / "a", tmp_path / "b"],
                         music_encoder=StubMusicEncoder())
