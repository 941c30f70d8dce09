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
    "MGSVGrounder": "mgsv_sk.estimators.made",
    "TrivialGrounder": "mgsv_sk.estimators.baselines",
    "RidgeGrounder": "mgsv_sk.estimators.baselines",
    "read_annotations": "mgsv_sk.data._readers",
    "validate_annotations": "mgsv_sk.data._schema",
    "AnnotationError": "mgsv_sk.data._schema",
    "ANNOTATION_COLUMNS": "mgsv_sk.data._schema",
    "FeatureSource": "mgsv_sk.data.features",
    "FeatureTree": "mgsv_sk.data.features",
    "PackedFeatures": "mgsv_sk.data.features",
    "InMemoryFeatures": "mgsv_sk.data.features",
    "FeatureError": "mgsv_sk.data.features",
    "pack_features": "mgsv_sk.data.features",
    "make_synthetic_mgsv": "mgsv_sk.data.synthetic",
    "temporal_iou": "mgsv_sk.data.spans",
    "grounding_report": "mgsv_sk.evaluation.metrics",
    "retrieval_ranks": "mgsv_sk.evaluation.metrics",
    "retrieval_report": "mgsv_sk.evaluation.metrics",
    "moment_recall_report": "mgsv_sk.evaluation.metrics",
    "get_scorer": "mgsv_sk.evaluation.scoring",
    "protocol_scorer": "mgsv_sk.evaluation.scoring",
    "evaluate": "mgsv_sk.evaluation.scoring",
    "SCORER_NAMES": "mgsv_sk.evaluation.scoring",
    "MGSVError": "mgsv_sk.errors",
    "InvalidInputError": "mgsv_sk.errors",
    "InvalidTypeError": "mgsv_sk.errors",
    "InvalidParameterError": "mgsv_sk.errors",
    "NotFittedError": "mgsv_sk.errors",
    "ArtifactError": "mgsv_sk.errors",
    "ArtifactNotFoundError": "mgsv_sk.errors",
    "ArtifactKindError": "mgsv_sk.errors",
    "ClusterError": "mgsv_sk.errors",
    "fetch_mgsv_ec": "mgsv_sk.extract.fetch",
    "extract_features": "mgsv_sk.extract.pipeline",
    # the deployment side, loaded only when asked for: OnnxGrounder is torch-free,
    # export_onnx needs the train extra (torch, onnx)
    "OnnxGrounder": "export.runtime",
    "export_onnx": "export.to_onnx",
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
