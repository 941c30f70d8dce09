"""Feature extraction numerics: the release recipe, checked against hand-computed values
and against independent computations (transformers' own numpy filterbank, PIL)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("av")
pytest.importorskip("soundfile")
pytest.importorskip("transformers")

from _media import tiny_ast, tiny_clip, write_audio, write_video  # noqa: E402

from mgsv_sk.extract import recipe  # noqa: E402
from mgsv_sk.extract.audio import load_track, resample  # noqa: E402
from mgsv_sk.extract.fbank import ast_inputs, kaldi_fbank  # noqa: E402
from mgsv_sk.extract.video import clip_pixels, load_clip  # noqa: E402


@pytest.fixture(scope="module")
def clip_encoder():
    return tiny_clip()


@pytest.fixture(scope="module")
def ast_encoder():
    return tiny_ast()


# -- recipe ----------------------------------------------------------------------------------
def test_windows_and_masks_hand_computed():
    bounds = recipe.window_bounds()
    assert bounds.shape == (96, 2)
    np.testing.assert_array_equal(recipe.window_centres()[:4], [0, 2.5, 5, 7.5])
    assert bounds[0].tolist() == [0, 5] and bounds[3].tolist() == [2.5, 12.5]
    assert bounds[94].tolist() == [230, 240] and bounds[95].tolist() == [232.5, 240]
    assert recipe.window_mask(30.0).sum() == 13  # centres 0 .. 30 (30 <= 30)
    assert recipe.window_mask(29.9).sum() == 12
    assert recipe.window_mask(1000).sum() == 96


def test_frame_selection_hand_computed():
    assert recipe.frame_seconds(2.6, 7.2).tolist() == [2, 3, 4, 5, 6, 7]
    assert len(recipe.frame_seconds(0, 120)) == 50
    assert recipe.frame_indices(np.arange(3), 29.97).tolist() == [0, 29, 59]
    assert recipe.frame_indices(np.arange(6), 10, n_frames=55).tolist() == [0, 10, 20, 30, 40, 50]


# -- audio -----------------------------------------------------------------------------------
def test_resampler_keeps_a_passband_sine():
    rate, freq = 44_100, 1000.0
    t = np.arange(rate) / rate
    out = resample(np.sin(2 * np.pi * freq * t).astype(np.float32), rate)
    assert out.shape == (16_000,)
    want = np.sin(2 * np.pi * freq * np.arange(16_000) / 16_000)
    assert np.abs(out - want)[200:-200].max() < 2e-3
    np.testing.assert_array_equal(resample(out, 16_000), out)


def test_track_channel0_16k_padded_and_duration(tmp_path):
    path = write_audio(tmp_path / "a.wav", 3.0, rate=22_050, freq=440.0)
    track = load_track(path)
    assert track.wave.shape == (240 * 16_000,) and track.wave.dtype == np.float32
    assert track.duration == pytest.approx(3.0)
    head = track.wave[1000: 40_000]  # channel 0: the sine, not the noise of channel 1
    t = np.arange(1000, 40_000) / 16_000
    np.testing.assert_allclose(head, 0.5 * np.sin(2 * np.pi * 440 * t), atol=5e-3)
    assert not track.wave[48_100:].any()  # zero-padded after 3 s


@pytest.mark.filterwarnings("ignore:At least one mel filter")
def test_fbank_matches_transformers_numpy_kaldi():
    """Independent computation: transformers' ASTFeatureExtractor (numpy Kaldi path, no
    torchaudio here), window by window, against our one-pass track fbank sliced."""
    from transformers import ASTFeatureExtractor
    from transformers.utils import is_speech_available

    assert not is_speech_available()  # the numpy path, not torchaudio
    rng = np.random.default_rng(0)
    wave = np.zeros(240 * 16_000, np.float32)
    wave[: 23 * 16_000] = (0.3 * np.sin(np.arange(23 * 16_000) * 0.05)
                           + rng.normal(0, 0.05, 23 * 16_000))
    windows = np.array([0, 1, 2, 3, 8, 95])
    ours = ast_inputs(wave, windows)
    fe = ASTFeatureExtractor()
    bounds = (recipe.window_bounds()[windows] * 16_000).astype(int)
    for row, (lo, hi) in enumerate(bounds):
        theirs = fe(wave[lo:hi], sampling_rate=16_000, return_tensors="np")["input_values"][0]
        np.testing.assert_allclose(ours[row], theirs, atol=2e-3, rtol=1e-4)
    # hand-computed: valid frames 1 + (samples - 400) // 160, then padding normalised from 0
    for row, n in ((0, 498), (2, 998), (5, 748)):
        pad = ours[row, n:]
        np.testing.assert_allclose(pad, 4.2677393 / (2 * 4.5689974), rtol=1e-6)
        assert np.abs(ours[row, n - 1] - pad[0]).max() > 0.1  # the last real frame


def test_fbank_single_frame_hand_computed():
    """One 25 ms frame of a DC + sine signal, computed step by step by hand."""
    x = (0.2 + np.sin(np.arange(400) * 2 * np.pi * 1000 / 16_000)).astype(np.float64)
    y = x - x.mean()
    y = y - 0.97 * np.concatenate([[y[0]], y[:-1]])
    y = y * np.hanning(400)  # numpy's hanning is the symmetric Hann window
    power = np.abs(np.fft.rfft(y, 512)) ** 2
    ours = kaldi_fbank(x.astype(np.float32))
    assert ours.shape == (1, 128)
    from mgsv_sk.extract.fbank import kaldi_mel_banks

    want = np.log(np.maximum(kaldi_mel_banks() @ power, np.finfo(np.float32).eps))
    np.testing.assert_allclose(ours[0], want, atol=1e-3)
    # the 1 kHz bin peaks at the mel filter whose centre is nearest 1 kHz
    mel = lambda f: 1127 * np.log(1 + f / 700)  # noqa: E731
    centres = mel(20) + (np.arange(128) + 1) * (mel(8000) - mel(20)) / 129
    assert abs(int(np.argmax(ours[0])) - int(np.argmin(np.abs(centres - mel(1000))))) <= 1


# -- video -----------------------------------------------------------------------------------
def test_clip_frames_are_the_recipes(tmp_path):
    path = write_video(tmp_path / "v.mp4", 5.5, fps=10, size=(64, 48))
    clip = load_clip(path)
    assert clip.fps == 10 and clip.duration == pytest.approx(5.5, abs=0.1)
    assert clip.seconds.tolist() == [0, 1, 2, 3, 4, 5]  # floor(0) .. floor(5.5)
    assert clip.pixels.shape == (6, 3, 224, 224)
    # independent decode: every frame in order, then the ones at int(s * fps)
    import av

    with av.open(str(path)) as container:
        frames = [f.to_image() for f in container.decode(video=0)]
    assert len(frames) == 55
    want = np.stack([clip_pixels(frames[int(s * 10)]) for s in range(6)])
    np.testing.assert_array_equal(clip.pixels, want)
    neighbours = np.stack([clip_pixels(frames[int(s * 10) + 1]) for s in range(6)])
    assert not np.array_equal(clip.pixels, neighbours)
    assert load_clip(path, 2.6, 4.1).seconds.tolist() == [2, 3, 4]


def test_clip_pixels_resize_crop_normalise():
    from PIL import Image

    img = Image.new("RGB", (640, 360), (255, 255, 255))
    img.paste((0, 0, 0), (0, 0, 320, 360))  # left half black
    px = clip_pixels(img)
    # shorter side 360 -> 224, longer int(224 * 640 / 360) = 398; crop left round(87) = 87
    raw = np.asarray(img.resize((398, 224), Image.BICUBIC), np.float32)[:, 87:311] / 255
    want = (raw.transpose(2, 0, 1) - np.asarray(recipe.CLIP_MEAN)[:, None, None]) / \
        np.asarray(recipe.CLIP_STD)[:, None, None]
    np.testing.assert_allclose(px, want, atol=1e-5)
    white = (1 - np.asarray(recipe.CLIP_MEAN)) / np.asarray(recipe.CLIP_STD)
    np.testing.assert_allclose(px[:, 100, -1], white, atol=1e-5)  # right edge white
    assert px.dtype == np.float32


# -- encoders --------------------------------------------------------------------------------
def test_ast_pooled_is_mean_of_cls_and_distillation(ast_encoder):
    import torch

    x = np.random.default_rng(0).normal(size=(2, 1024, 128)).astype(np.float32)
    with torch.no_grad():
        hidden = ast_encoder.model(input_values=torch.from_numpy(x)).last_hidden_state
    np.testing.assert_allclose(ast_encoder.encode(x), ((hidden[:, 0] + hidden[:, 1]) / 2).numpy(),
                               atol=1e-5)


def test_clip_embeds_not_normalised(clip_encoder):
    x = np.random.default_rng(0).normal(size=(3, 3, 224, 224)).astype(np.float32)
    out = clip_encoder.encode(x)
    assert out.shape == (3, 512)
    assert not np.allclose(np.linalg.norm(out, axis=1), 1.0)


def test_missing_extra_names_the_install(monkeypatch):
    import builtins

    from mgsv_sk._extras import require

    real = builtins.__import__

    def fake(name, *a, **k):
        if name == "av":
            raise ImportError("No module named 'av'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    monkeypatch.delitem(__import__("sys").modules, "av", raising=False)
    with pytest.raises(ImportError, match=r'pip install "mgsv-sk\[media\]"'):
        require("av", "decoding videos")
