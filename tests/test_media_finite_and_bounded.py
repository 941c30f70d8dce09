"""Issue 22, root 4: media cannot poison a catalogue. A non-finite sample or feature is a
failure (never a stored row, never "done"); memory is bounded by the output, not the
frame's shape; frames are chosen by presentation timestamp."""

from __future__ import annotations

import fractions
import sys
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("av")
pytest.importorskip("soundfile")
sys.path.insert(0, str(Path(__file__).parent))
from _media import StubMusicEncoder, write_audio  # noqa: E402

from mgsv_sk.cli import main  # noqa: E402
from mgsv_sk.extract import extract_features, load_clip, load_track  # noqa: E402
from mgsv_sk.extract.recommend import build_catalogue  # noqa: E402
from mgsv_sk.extract.video import clip_pixels  # noqa: E402


def _poisoned_wav(path: Path, value: float) -> Path:
    import soundfile as sf

    data = 0.1 * np.sin(np.arange(16_000 * 3, dtype=np.float32) / 10)
    data[20_000] = value
    sf.write(str(path), data, 16_000, subtype="FLOAT")
    return path


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_samples_are_a_failure_never_a_row(tmp_path, value):
    music = tmp_path / "music"
    music.mkdir()
    _poisoned_wav(music / "bad.wav", value)
    write_audio(music / "good.wav", 3.0)
    with pytest.raises(ValueError, match=r"1 NaN or infinite sample\(s\) \(first at 1.250 s\)"):
        load_track(music / "bad.wav")
    for _ in range(2):  # a rerun tries it again: it was never marked done
        report = build_catalogue([music], tmp_path / "cat", music_encoder=StubMusicEncoder())
        assert "NaN or infinite" in report.failed[str(music / "bad.wav")]
        assert "bad" not in report.skipped
        assert report.output.music_ids() == ["good"]


def test_the_catalogue_command_exits_1_on_poisoned_audio(tmp_path, monkeypatch, capsys):
    import mgsv_sk.cli.media as media

    monkeypatch.setattr(media, "load_encoder", lambda spec, kind: StubMusicEncoder())
    path = _poisoned_wav(tmp_path / "bad.wav", np.nan)
    assert main(["catalogue", str(path), str(tmp_path / "cat")]) == 1
    assert "NaN or infinite" in capsys.readouterr().out
    assert not (tmp_path / "cat" / "meta.json").exists()


class _NanEncoder(StubMusicEncoder):
    def encode(self, inputs: np.ndarray) -> np.ndarray:
        out = super().encode(inputs)
        out[0, 3] = np.nan
        return out


@pytest.mark.parametrize("layout", ["packed", "tree"])
def test_a_non_finite_feature_is_never_stored_nor_done(tmp_path, layout):
    write_audio(tmp_path / "song.wav", 3.0)
    for _ in range(2):
        report = extract_features(tmp_path / "out", music=[tmp_path / "song.wav"],
                                  music_encoder=_NanEncoder(), layout=layout)
        assert report.written == [] and report.skipped == []
        assert "NaN or infinite" in report.failed[str(tmp_path / "song.wav")]
    assert not list((tmp_path).rglob("song.pt")) and not list(tmp_path.rglob("song.npy"))


def test_writers_refuse_non_finite_rows(tmp_path):
    from mgsv_sk.extract.store import PackedWriter, TreeWriter

    rows = np.zeros((96, 768), np.float32)
    rows[2, 5] = np.inf
    for writer in (TreeWriter(tmp_path / "tree"), PackedWriter(tmp_path / "store")):
        with pytest.raises(ValueError, match="nothing was written"):
            writer.write("music", "m", rows, np.ones(96, np.float32))
        assert not writer.done("music", "m")


# -- frames: memory bounded by the output ---------------------------------------------------
@pytest.mark.parametrize("size", [(1, 16_000), (16_000, 1), (16_000, 8), (3, 40_000)])
def test_a_very_wide_or_tall_frame_costs_what_the_output_does(size):
    from PIL import Image

    image = Image.new("RGB", size, (200, 10, 10))
    tracemalloc.start()
    try:
        px = clip_pixels(image)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert px.shape == (3, 224, 224) and np.isfinite(px).all()
    assert peak < 20e6, peak  # the whole-frame resize took GBs


def test_an_extreme_frame_is_resized_as_the_recipe_says():
    from PIL import Image

    y, x = np.mgrid[0:900, 0:40]
    smooth = np.stack([y % 255, (3 * x) % 255, (y // 4 + x) % 255], -1).astype(np.uint8)
    image = Image.fromarray(smooth)  # aspect 22.5: only the kept box is resized
    size = (224, int(224 * 900 / 40))
    top = int(round((size[1] - 224) / 2.0))
    want = np.asarray(image.resize(size, Image.BICUBIC).crop((0, top, 224, top + 224)),
                      np.float32)
    got = clip_pixels(image)
    from mgsv_sk.extract.recipe import CLIP_MEAN, CLIP_STD

    back = (got * np.asarray(CLIP_STD)[:, None, None] + np.asarray(CLIP_MEAN)[:, None, None])
    diff = np.abs(back.transpose(1, 2, 0) * 255 - want)
    assert diff.mean() < 0.5 and diff.max() <= 4.0  # the same mapping, up to rounding


# -- frames: chosen by presentation timestamp -----------------------------------------------
def _write_timed(path: Path, times: list[float], rate: fractions.Fraction | int) -> Path:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=rate)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.time_base = fractions.Fraction(1, 1000)
        for i, t in enumerate(times):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 20 * i, np.uint8), "rgb24")
            frame.pts, frame.time_base = int(round(t * 1000)), fractions.Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _levels(clip) -> list[int]:
    from mgsv_sk.extract.recipe import CLIP_MEAN, CLIP_STD

    red = clip.pixels[:, 0, 112, 112] * CLIP_STD[0] + CLIP_MEAN[0]
    return [int(round(v * 255 / 20)) for v in red]  # the frame index each row shows


def test_below_one_fps_each_second_shows_the_frame_on_screen(tmp_path):
    path = _write_timed(tmp_path / "slow.mp4", [0, 2, 4, 6, 8], fractions.Fraction(1, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # constant rate: no warning
        clip = load_clip(path)
    assert clip.seconds.tolist() == list(range(10))
    assert _levels(clip) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]


def test_a_variable_rate_file_keeps_its_seconds_and_warns(tmp_path):
    times = [0, 0.1, 0.2, 2.0, 4.0, 6.0, 8.0, 9.9]
    path = _write_timed(tmp_path / "vfr.mp4", times, 10)
    with pytest.warns(UserWarning, match="timestamps disagree with the declared rate"):
        clip = load_clip(path)
    assert clip.seconds.tolist() == list(range(10))
    assert _levels(clip) == [0, 2, 3, 3, 4, 4, 5, 5, 6, 6]  # the frame on screen at each second
