"""The feature encoders on onnxruntime: parity with torch (cosine >= 0.9999 per
embedding, fp32), int8 graphs run, on inputs preprocessed from real media files."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("av")
pytest.importorskip("soundfile")
pytest.importorskip("transformers")

from _media import tiny_ast, tiny_clip, write_audio, write_video  # noqa: E402

from mgsv_sk.export._encoders import cosines, export_encoders  # noqa: E402
from mgsv_sk.extract.audio import load_track  # noqa: E402
from mgsv_sk.extract.fbank import ast_inputs  # noqa: E402
from mgsv_sk.extract.onnx_encoders import OrtEncoder  # noqa: E402
from mgsv_sk.extract.video import load_clip  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("enc")
    encoders = {"video": tiny_clip(), "music": tiny_ast()}
    info = export_encoders(encoders, root, quantize=True)
    return root, encoders, info


def test_encoder_parity_on_media(exported, tmp_path):
    root, encoders, info = exported
    pixels = load_clip(write_video(tmp_path / "v.mp4", 4.0)).pixels
    fbanks = ast_inputs(load_track(write_audio(tmp_path / "a.wav", 8.0)).wave, np.arange(4))
    for role, inputs in (("video", pixels), ("music", fbanks)):
        assert info[role]["min_cosine"] >= 0.9999
        want = encoders[role].encode(inputs)
        fp32 = OrtEncoder(root / info[role]["files"]["fp32"]).encode(inputs)
        assert fp32.shape == want.shape
        assert cosines(fp32, want).min() >= 0.9999
        int8 = OrtEncoder(root / info[role]["files"]["int8"]).encode(inputs)
        assert np.isfinite(int8).all() and cosines(int8, want).min() > 0.9


def test_ort_encoder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="export one with"):
        OrtEncoder(tmp_path / "missing.onnx")
