"""Arrays from whatever container the ecosystem hands over, converted once where they
enter: a torch tensor in any state a training loop leaves it (requiring grad, on a GPU,
in bfloat16, conjugated, sparse, non-contiguous), pandas objects with extension dtypes
(nullable ``Float64`` / ``Int64`` / ``boolean`` with ``pd.NA``, categoricals, Arrow),
Dask collections, lists (of tensors too), numpy arrays of any byte order, read-only or
memory-mapped. The result is a plain numpy array whose values are the input's; what no
conversion can read is an :class:`~mgsv_sk.errors.InvalidInputError` naming the
argument, never the container library's own exception.

Torch-free: a tensor is recognised by its type's module, never by importing torch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mgsv_sk.errors import InvalidInputError

__all__ = ["as_array", "plain"]


def _is_torch(value: Any) -> bool:
    return type(value).__module__.split(".")[0] == "torch" and hasattr(value, "detach")


def _from_torch(t: Any) -> np.ndarray:
    t = t.detach()
    if getattr(t, "is_sparse", False) or str(getattr(t, "layout", "")) != "torch.strided":
        t = t.to_dense()
    if t.device.type != "cpu":
        t = t.cpu()
    if t.is_conj():
        t = t.resolve_conj()
    if t.is_neg():
        t = t.resolve_neg()
    try:
        return np.asarray(t.numpy())
    except (TypeError, RuntimeError):  # bfloat16, float8, ...: numpy has no such dtype
        return np.asarray(t.float().numpy())


def _from_pandas(value: Any) -> np.ndarray:
    import pandas as pd

    dtypes = list(value.dtypes) if isinstance(value, pd.DataFrame) else [value.dtype]
    numeric = all(pd.api.types.is_numeric_dtype(d) or pd.api.types.is_bool_dtype(d)
                  for d in dtypes)
    if numeric and any(isinstance(d, pd.api.extensions.ExtensionDtype) for d in dtypes):
        # nullable dtypes hold pd.NA, which numpy cannot read as a number: NaN instead
        return np.asarray(value.to_numpy(dtype=np.float64, na_value=np.nan))
    if isinstance(getattr(value, "dtype", None), pd.CategoricalDtype):
        return np.asarray(value.astype(value.dtype.categories.dtype).to_numpy())
    return np.asarray(value.to_numpy())


def plain(value: Any) -> Any:
    """``value`` with its container unwrapped: a numpy array for a tensor, a pandas
    object or a Dask collection; lists and tuples element-wise; anything else unchanged."""
    if isinstance(value, np.ndarray):
        return value
    if _is_torch(value):
        return _from_torch(value)
    if hasattr(value, "__dask_graph__") and hasattr(value, "compute"):
        return plain(value.compute())
    module = type(value).__module__.split(".")[0]
    if module == "pandas" and hasattr(value, "to_numpy"):
        return _from_pandas(value)
    if module in ("pyarrow", "polars") and hasattr(value, "to_numpy"):
        return np.asarray(value.to_numpy())
    if isinstance(value, (list, tuple)) and any(
            _is_torch(v) or isinstance(v, (list, tuple)) for v in value):
        return [plain(v) for v in value]
    return value


def as_array(value: Any, name: str, dtype: Any = None,
             error: type[Exception] = InvalidInputError) -> np.ndarray:
    """``value`` as a numpy array (of ``dtype`` when given), whatever holds it.

    Raises ``error`` (an :class:`~mgsv_sk.errors.InvalidInputError` by default) naming
    ``name`` when the values cannot be one array (ragged rows, text where numbers are
    expected, dates, objects).

    >>> as_array([[1, 2], [3, 4]], "x", np.float32).dtype
    dtype('float32')
    """
    if value is None:
        raise error(f"{name} is None; pass an array of numbers")
    unwrapped = plain(value)
    if getattr(getattr(unwrapped, "dtype", None), "kind", "") in ("m", "M"):
        # numpy counts dates and durations as numbers; a feature or a time is neither
        raise error(f"{name} holds {unwrapped.dtype} values; pass plain numbers (seconds "
                    "as floats)")
    try:
        arr = np.asarray(unwrapped, dtype=dtype)
        if dtype is None and arr.dtype == object:  # e.g. a list of numpy scalars and floats
            try:
                arr = arr.astype(np.float64)
            except (TypeError, ValueError):
                pass
    except (TypeError, ValueError, OverflowError) as exc:
        first = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise error(
            f"{name} cannot be read as one array{'' if dtype is None else f' of {np.dtype(dtype)}'}"
            f" ({first}); pass a rectangular array of numbers (rows of equal length)"
        ) from None
    return arr
