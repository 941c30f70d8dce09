"""The scikit-learn face of the trainable grounders: :class:`BaseGrounder` plus
scikit-learn's ``BaseEstimator`` (``get_params`` / ``set_params``, ``clone``, tags), and
the one check of their parameters.

Separate from :mod:`mgsv_sk.grounding.base` so the onnxruntime backend, which is not
trained, serves without importing scikit-learn. Torch-free.
"""

from __future__ import annotations

from typing import Any, ClassVar

from sklearn.base import BaseEstimator

from mgsv_sk.grounding.base import BaseGrounder, Tracks, Videos
from mgsv_sk.grounding.validation import InvalidParameterError, validate_parameter_constraints

__all__ = ["GrounderEstimator", "InvalidParameterError"]


class GrounderEstimator(BaseGrounder[Videos, Tracks], BaseEstimator):
    """A grounder that is a scikit-learn estimator (fitted with ``fit``).

    Each subclass declares its parameters' constraints in ``_parameter_constraints``
    (scikit-learn's vocabulary: ``Interval``, ``StrOptions``, types, ``None``); ``fit``
    calls :meth:`_check_params` first, so an invalid parameter is refused before any
    fitted state changes, every violation in one message.
    """

    _parameter_constraints: ClassVar[dict[str, Any]] = {}

    def _check_params(self) -> None:
        """Every constraint of ``_parameter_constraints``; all violations in one
        ``InvalidParameterError`` (a ValueError and a TypeError)."""
        params = self.get_params(deep=False)
        problems = []
        for name, constraints in self._parameter_constraints.items():
            try:
                validate_parameter_constraints({name: constraints}, {name: params[name]},
                                               caller_name=type(self).__name__)
            except InvalidParameterError as exc:
                problems.append(str(exc))
        if problems:
            raise InvalidParameterError(f"Invalid {type(self).__name__} parameters:\n  - "
                                        + "\n  - ".join(problems))
