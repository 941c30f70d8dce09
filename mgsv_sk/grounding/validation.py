"""The one place that imports scikit-learn's parameter-validation vocabulary.

``sklearn.utils._param_validation`` is private to scikit-learn (no deprecation cycle),
yet it is what ``BaseEstimator`` subclasses use to declare constraints, and its messages
are the ones scikit-learn users know. Every module of this package imports these names
from here, so a change in scikit-learn is one edit; the versions it is known to work with
are pinned in ``pyproject.toml`` and ``tests/test_hyperparameters.py`` exercises each name.
"""

from __future__ import annotations

from sklearn.utils._param_validation import (
    Interval,
    InvalidParameterError,
    StrOptions,
    validate_parameter_constraints,
)

__all__ = ["Interval", "InvalidParameterError", "StrOptions", "validate_parameter_constraints"]
