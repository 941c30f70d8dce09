"""mgsv_sk: music grounding by short video (MGSV) for scikit-learn and PyTorch users.

Find the background-music track of a catalogue that fits a short video, and the moment of
that track to play. The public names load lazily, so the torch-free parts (metrics,
scorers, the data layer) import without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "MGSVGrounder": "mgsv_sk.estimator",
    "TrivialGrounder": "mgsv_sk.baselines",
    "RidgeGrounder": "mgsv_sk.baselines",
    "read_annotations": "mgsv_sk.core._readers",
    "validate_annotations": "mgsv_sk.core._schema",
    "AnnotationError": "mgsv_sk.core._schema",
    "ANNOTATION_COLUMNS": "mgsv_sk.core._schema",
    "FeatureSource": "mgsv_sk.core.features",
    "FeatureTree": "mgsv_sk.core.features",
    "PackedFeatures": "mgsv_sk.core.features",
    "InMemoryFeatures": "mgsv_sk.core.features",
    "FeatureError": "mgsv_sk.core.features",
    "pack_features": "mgsv_sk.core.features",
    "make_synthetic_mgsv": "mgsv_sk.datasets",
    "temporal_iou": "mgsv_sk.core.spans",
    "grounding_report": "mgsv_sk.core.metrics",
    "retrieval_ranks": "mgsv_sk.core.metrics",
    "retrieval_report": "mgsv_sk.core.metrics",
    "moment_recall_report": "mgsv_sk.core.metrics",
    "get_scorer": "mgsv_sk.core.scoring",
    "protocol_scorer": "mgsv_sk.core.scoring",
    "evaluate": "mgsv_sk.core.scoring",
    "SCORER_NAMES": "mgsv_sk.core.scoring",
    "fetch_mgsv_ec": "mgsv_sk.extract.fetch",
    "extract_features": "mgsv_sk.extract.pipeline",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mgsv_sk' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
