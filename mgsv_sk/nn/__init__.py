"""The MaDe model in torch, one architectural part per file, read leaf to root:
config -> layers -> encoders -> xpool -> detector -> model -> losses (span_ops: geometry).

May import torch and :mod:`mgsv_sk.data` (the constants and span geometry it mirrors);
never the estimator, ``train``, ``cli`` or ``export``."""

from .config import MaDeConfig
from .losses import LossTerms, LossWeights, info_nce, made_losses
from .model import (
    Grounding,
    MaDe,
    MaDeOutput,
    MusicEncoding,
    RetrievalScores,
    VideoEncoding,
    count_parameters,
)

__all__ = [
    "Grounding",
    "LossTerms",
    "LossWeights",
    "MaDe",
    "MaDeConfig",
    "MaDeOutput",
    "MusicEncoding",
    "RetrievalScores",
    "VideoEncoding",
    "count_parameters",
    "info_nce",
    "made_losses",
]
