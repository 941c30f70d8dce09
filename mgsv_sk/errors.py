"""The library's errors: one base, :class:`MGSVError`, so a caller can catch everything
this package refuses in one place; each subclass also derives from the builtin it
refines (``ValueError``, ``TypeError``, ``FileNotFoundError``, ...), so code written
against the builtins keeps working.

Every message says what is wrong (naming the argument, row, id or file), then how to fix
it. Torch-free; importing this module imports nothing heavy.

    >>> from mgsv_sk.errors import InvalidInputError, MGSVError
    >>> issubclass(InvalidInputError, ValueError), issubclass(InvalidInputError, MGSVError)
    (True, True)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = [
    "ArtifactError", "ArtifactKindError", "ArtifactNotFoundError", "ClusterError",
    "InvalidInputError", "InvalidParameterError", "InvalidTypeError", "MGSVError",
    "NotFittedError",
]


class MGSVError(Exception):
    """Base of every error this package raises on purpose."""


class InvalidInputError(MGSVError, ValueError):
    """An argument's value (a frame, an array, an id, a time, a count) is refused; the
    message names the argument (or row, or id) and the fix."""


class InvalidTypeError(MGSVError, TypeError):
    """An argument of a type the entry point cannot read, even after converting the
    containers it documents (numpy, pandas, torch, Dask, lists)."""


class ArtifactError(MGSVError, ValueError):
    """A file or folder the library wrote (a saved model, a bundle, a packed store) is
    damaged: a checksum, a size or a record disagrees."""


class ArtifactNotFoundError(MGSVError, FileNotFoundError):
    """Nothing of the expected kind at the path given."""


class ArtifactKindError(ArtifactNotFoundError, ValueError):
    """The path holds an artefact of another kind (a bundle given where a saved model is
    expected, a packed store given as a bundle, ...) or of another format version; the
    message names what it holds and the call that reads it. Also a ``FileNotFoundError``:
    the artefact asked for is not there."""

    def __init__(self, message: str, *, found: str | None = None,
                 expected: str | None = None) -> None:
        super().__init__(message)
        self.found, self.expected = found, expected

    def __str__(self) -> str:  # OSError would format (errno, strerror)
        return str(self.args[0])


class ClusterError(MGSVError, RuntimeError):
    """A Dask client or cluster cannot run the work as asked (closed, never started, no
    workers, workers that cannot import mgsv_sk); the message says how to fix it."""


# The two errors that refine scikit-learn's own are made on first use: importing
# scikit-learn costs a second, and the runtime and the service never need it.
if TYPE_CHECKING:
    from sklearn.exceptions import NotFittedError as _SklearnNotFitted
    from sklearn.utils._param_validation import InvalidParameterError as _SklearnInvalid

    class InvalidParameterError(MGSVError, _SklearnInvalid):
        """An estimator parameter breaks its declared constraint."""

    class NotFittedError(MGSVError, _SklearnNotFitted):
        """A method that needs a fitted estimator was called before ``fit``."""


def _sklearn_refinements() -> dict[str, type]:
    from sklearn.exceptions import NotFittedError as sk_not_fitted
    from sklearn.utils._param_validation import InvalidParameterError as sk_invalid

    class InvalidParameterError(MGSVError, sk_invalid):
        """An estimator parameter breaks its declared constraint (scikit-learn's
        ``InvalidParameterError``, itself a ``ValueError`` and ``TypeError``)."""

    class NotFittedError(MGSVError, sk_not_fitted):
        """A method that needs a fitted estimator was called before ``fit`` (scikit-learn's
        ``NotFittedError``, itself a ``ValueError`` and ``AttributeError``)."""

    for cls in (InvalidParameterError, NotFittedError):
        cls.__module__, cls.__qualname__ = __name__, cls.__name__  # pickles by name
    return {"InvalidParameterError": InvalidParameterError, "NotFittedError": NotFittedError}


def __getattr__(name: str) -> Any:
    if name in ("InvalidParameterError", "NotFittedError"):
        made = _sklearn_refinements()
        globals().update(made)
        return made[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
