"""The one place that imports scikit-learn's parameter-validation vocabulary.

``sklearn.utils._param_validation`` is private to scikit-learn (no deprecation cycle),
yet it is what ``BaseEstimator`` subclasses use to declare constraints, and its messages
are the ones scikit-learn users know. Every module of this package imports these names
from here, so a change in scikit-learn is one edit; the versions it is known to work with
are pinned in ``pyproject.toml`` and ``tests/test_hyperparameters.py`` exercises each name.
"""

from __future__ import annotations

from typing import Any

from sklearn.exceptions import NotFittedError as SklearnNotFittedError
from sklearn.utils._param_validation import (
    Interval,
    InvalidParameterError,
    StrOptions,
    validate_parameter_constraints,
)
from sklearn.utils.validation import check_is_fitted

from mgsv_sk.errors import NotFittedError

__all__ = ["Interval", "InvalidParameterError", "StrOptions", "check_fitted",
           "validate_parameter_constraints"]


def check_fitted(estimator: Any) -> None:
    """scikit-learn's ``check_is_fitted``, raising the library's
    :class:`~mgsv_sk.errors.NotFittedError` (a subclass of scikit-learn's) with its
    message."""
    try:
        check_is_fitted(estimator)
    except SklearnNotFittedError as exc:
        raise NotFittedError(str(exc)) from None
