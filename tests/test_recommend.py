"""Acceptance: media files -> features -> packed store -> a fitted model -> recommendations
for a new video file, end to end and offline (tiny random encoders)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("av")
pytest.importorskip("soundfile")
pytest.importorskip("transformers")

from _media import tiny_ast, tiny_clip, write_media_set, write_video  # noqa: E402

from mgsv_sk import MGSVGrounder  # noqa: E402
from mgsv_sk.cli import main  # noqa: E402
from mgsv_sk.extract import extract_features  # noqa: E402

TRACKS = {"song_a": 14.0, "song_b": 20.0, "song_c": 9.0}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    rows = write_media_set(root, TRACKS, 9)
    write_video(root / "new_video.mp4", 4.5, seed=99)
    clip, ast = tiny_clip(), tiny_ast()
    report = extract_features(root / "packed", videos=[root / "videos"], music=[root / "music"],
                              video_encoder=clip, music_encoder=ast, layout="packed", batch=8)
    assert not report.failed and len(report.written) == 12
    return {"root": root, "frame": pd.DataFrame(rows), "clip": clip, "ast": ast,
            "store": report.output}


@pytest.fixture(scope="module")
def fitted(world):
    model = MGSVGrounder(features=world["store"], d_model=32, n_heads=2, encoder_layers=1,
                         decoder_layers=1, batch_size=8, max_epochs=1, validation_fraction=0,
                         random_state=0, n_threads=1)
    return model.fit(world["frame"])


def test_recommend_a_new_video_end_to_end(world, fitted):
    assert world["store"].music_dim == 32 and world["store"].video_dim == 512
    out = fitted.recommend(world["root"] / "new_video.mp4", k=2, video_encoder=world["clip"])
    assert list(out.columns) == ["video_id", "video_path", "rank", "music_id", "score", "start",
                                 "end", "moment_score"]
    assert out["video_id"].tolist() == ["new_video"] * 2 and out["rank"].tolist() == [1, 2]
    assert set(out["music_id"]) <= set(TRACKS)
    assert (out["score"].diff().dropna() <= 0).all()
    length = out["end"] - out["start"]
    np.testing.assert_allclose(length, 4.5, atol=0.3)  # the moment is as long as the video
    durations = out["music_id"].map(TRACKS)
    assert ((out["start"] >= 0) & (out["end"] <= durations + 1e-6)).all()
    several = fitted.recommend([world["root"] / "new_video.mp4", world["root"] / "videos"],
                               k=1, video_encoder=world["clip"], moments_per_track=2)
    assert len(several) == 10 and "windows" in several.columns


def test_recommend_refuses_an_unreadable_video(world, fitted, tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="cannot read video .*bad.mp4"):
        fitted.recommend(bad, video_encoder=world["clip"])


def test_cli_catalogue_and_recommend(world, fitted, tmp_path, capsys):
    clip_dir, ast_dir = tmp_path / "clip", tmp_path / "ast"
    world["clip"].model.save_pretrained(clip_dir)  # encoders loaded from local folders
    world["ast"].model.save_pretrained(ast_dir)
    fitted.save(tmp_path / "model")
    assert main(["-q", "catalogue", str(world["root"] / "music"), str(tmp_path / "cat"),
                 "--music-encoder", str(ast_dir)]) == 0
    assert main(["recommend", str(world["root"] / "new_video.mp4"), "--model",
                 str(tmp_path / "model"), "--catalogue", str(tmp_path / "cat"),
                 "--video-encoder", str(clip_dir), "--top-k", "3"]) == 0
    line = json.loads(capsys.readouterr().out.strip())
    assert line["video_id"] == "new_video" and len(line["pred_music_ids"]) == 3
    assert set(line["pred_music_ids"]) == set(TRACKS)
    assert line["video_path"].endswith("new_video.mp4")
    start, end, _ = line["pred_relevant_windows"][0]
    assert end - start == pytest.approx(4.5, abs=0.3)


def test_onnx_bundle_with_encoders_recommends_like_torch(world, fitted, tmp_path, capsys):
    from mgsv_sk.export.runtime import OnnxGrounder
    from mgsv_sk.export.to_onnx import export_onnx

    bundle = export_onnx(fitted, tmp_path / "bundle",
                         encoders={"video": world["clip"], "music": world["ast"]})
    runtime = OnnxGrounder.load(bundle)
    assert runtime.video_encoder is not None and runtime.music_encoder.dim == 32
    video = world["root"] / "new_video.mp4"
    got = runtime.recommend(video, k=3)
    want = fitted.recommend(video, k=3, video_encoder=world["clip"])
    assert got["music_id"].tolist() == want["music_id"].tolist()
    np.testing.assert_allclose(got["score"], want["score"], atol=1e-3)
    np.testing.assert_allclose(got[["start", "end"]], want[["start", "end"]], atol=0.05)
    # the CLI: a catalogue built with the bundle's ONNX music encoder, served by the bundle
    enc = str(bundle / runtime.manifest["encoders"]["music"]["files"]["fp32"])
    assert main(["-q", "catalogue", str(world["root"] / "music"), str(tmp_path / "cat"),
                 "--music-encoder", enc]) == 0
    assert main(["recommend", str(video), "--model", str(bundle), "--catalogue",
                 str(tmp_path / "cat"), "--top-k", "2"]) == 0
    line = json.loads(capsys.readouterr().out.strip())
    assert line["pred_music_ids"] == want["music_id"].tolist()[:2]


def test_bundle_recommends_without_torch(world, fitted, tmp_path):
    """The runtime path, media files included, with torch unimportable."""
    import subprocess
    import sys

    from mgsv_sk.export.to_onnx import export_onnx

    bundle = export_onnx(fitted, tmp_path / "bundle", encoders={"video": world["clip"]},
                         check=False)
    code = f"""
import sys
sys.modules["torch"] = None
from mgsv_sk.export.runtime import OnnxGrounder
g = OnnxGrounder.load({str(bundle)!r})
out = g.recommend({str(world["root"] / "new_video.mp4")!r}, k=2)
assert len(out) == 2 and "torch" not in [m for m in sys.modules if sys.modules[m] is not None]
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok"
