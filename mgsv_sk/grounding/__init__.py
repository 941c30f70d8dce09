"""The grounder both backends share: ``base.BaseGrounder`` (predict / rank /
decision_function / score, given encode / score / ground hooks), the catalogue a call is
answered from (``catalogues``, ``sources``), the output columns and checks (``outputs``),
moment selection (``moments``), hyper-parameters declared once (``hyperparameters``) and
scikit-learn's estimator base for the trainable grounders (``sklearn_base``, with its
parameter-validation vocabulary in ``validation``).

torch-free: the onnxruntime backend (``mgsv_sk.export.runtime``) stands on it. Imports ``data``,
``evaluation`` and ``search``. Other sub-packages import the names below from
``mgsv_sk.grounding``; the scikit-learn ones load on first use, so the onnxruntime backend
imports without scikit-learn.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mgsv_sk.grounding.base import BaseGrounder, Tracks, Videos, new_fit_token
from mgsv_sk.grounding.catalogues import CatalogueHolder
from mgsv_sk.grounding.hyperparameters import Declaration, Hyper, HyperGroup, declared
from mgsv_sk.grounding.moments import check_moments, on_tracks, select_windows, window_lists
from mgsv_sk.grounding.outputs import (
    PREDICTION_COLUMNS,
    RANK_COLUMNS,
    Moments,
    TopTracks,
    check_outputs,
    moment_lengths,
    track_seconds,
)
from mgsv_sk.grounding.sources import source_identity

if TYPE_CHECKING:
    from mgsv_sk.grounding.sklearn_base import GrounderEstimator
    from mgsv_sk.grounding.validation import (
        Interval,
        InvalidParameterError,
        StrOptions,
        validate_parameter_constraints,
    )

_SKLEARN = {"GrounderEstimator": "sklearn_base", "Interval": "validation",
            "InvalidParameterError": "validation", "StrOptions": "validation",
            "validate_parameter_constraints": "validation"}

__all__ = ["PREDICTION_COLUMNS", "RANK_COLUMNS", "BaseGrounder", "CatalogueHolder",
           "Declaration", "GrounderEstimator", "Hyper", "HyperGroup", "Interval",
           "InvalidParameterError", "Moments", "StrOptions", "TopTracks", "Tracks", "Videos",
           "check_moments", "check_outputs", "declared", "moment_lengths", "new_fit_token",
           "on_tracks", "select_windows", "source_identity", "track_seconds",
           "validate_parameter_constraints", "window_lists"]


def __getattr__(name: str) -> Any:
    if name in _SKLEARN:
        return getattr(importlib.import_module(f"mgsv_sk.grounding.{_SKLEARN[name]}"), name)
    raise AttributeError(f"module 'mgsv_sk.grounding' has no attribute {name!r}")
