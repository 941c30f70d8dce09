"""Network configs and loss weights at the estimator's defaults (declared in its signature
only), for tests that build the network directly."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from mgsv_sk import MGSVGrounder
from mgsv_sk.nn import LossWeights, MaDeConfig
from mgsv_sk.train import fitting
from mgsv_sk.train.fitting import model_config


def made_config(**fields: Any) -> MaDeConfig:
    """MaDeConfig at MGSVGrounder's defaults; ``fields``: estimator parameters or
    config-only details (video_dim, max_frames, ...)."""
    params = MGSVGrounder().get_params()
    est = {k: v for k, v in fields.items() if k in params}
    details = {k: v for k, v in fields.items() if k not in params}
    video_dim, music_dim = details.pop("video_dim", 512), details.pop("music_dim", 768)
    return model_config(MGSVGrounder(**est).get_params(), video_dim, music_dim, **details)


def loss_weights(**fields: Any) -> LossWeights:
    """LossWeights at MGSVGrounder's defaults, with ``fields`` (LossWeights names) replaced."""
    return replace(fitting.loss_weights(MGSVGrounder().get_params()), **fields)
