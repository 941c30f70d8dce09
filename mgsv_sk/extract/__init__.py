"""Raw media -> MGSV-EC features, exactly as the release's recipe
(:mod:`mgsv_sk.extract.recipe`).

Needs the ``media`` extra (``pip install 'mgsv-sk[media]'``: PyAV, soundfile,
transformers, huggingface_hub); every name loads lazily and says what to install.

>>> from mgsv_sk.extract import AstEncoder, ClipImageEncoder, extract_features
>>> report = extract_features("features/", videos=["clips/"],                 # doctest: +SKIP
...                           video_encoder=ClipImageEncoder.from_pretrained(), verbose=True)
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AstEncoder": "mgsv_sk.extract.encoders",
    "ClipImageEncoder": "mgsv_sk.extract.encoders",
    "DEFAULT_AST": "mgsv_sk.extract.encoders",
    "DEFAULT_CLIP": "mgsv_sk.extract.encoders",
    "Encoder": "mgsv_sk.extract.encoders",
    "ExtractionReport": "mgsv_sk.extract.pipeline",
    "extract_features": "mgsv_sk.extract.pipeline",
    "encode_video_file": "mgsv_sk.extract.pipeline",
    "encode_music_file": "mgsv_sk.extract.pipeline",
    "media_ids": "mgsv_sk.extract.pipeline",
    "load_clip": "mgsv_sk.extract.video",
    "VideoLimits": "mgsv_sk.extract.video",
    "VideoLimitError": "mgsv_sk.extract.video",
    "load_track": "mgsv_sk.extract.audio",
    "kaldi_fbank": "mgsv_sk.extract.fbank",
    "ast_inputs": "mgsv_sk.extract.fbank",
    "OrtEncoder": "mgsv_sk.extract.onnx_encoders",
    "fetch_mgsv_ec": "mgsv_sk.extract.fetch",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mgsv_sk.extract' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
