"""The scikit-learn face of the trainable grounders: :class:`BaseGrounder` plus
scikit-learn's ``BaseEstimator`` (``get_params`` / ``set_params``, ``clone``, tags).

Separate from :mod:`mgsv_sk.grounding.base` so the onnxruntime backend, which is not
trained, serves without importing scikit-learn. Torch-free.
"""

from __future__ import annotations

from sklearn.base import BaseEstimator

from mgsv_sk.grounding.base import BaseGrounder

__all__ = ["GrounderEstimator"]


class GrounderEstimator(BaseGrounder, BaseEstimator):
    """A grounder that is a scikit-learn estimator (fitted with ``fit``)."""
