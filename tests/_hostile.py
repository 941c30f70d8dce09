"""Generated hostile inputs shared by the property, lifecycle and resource tests: the
containers a user can hold an array or a list of ids in, the values that break naive code,
the time boundaries of the task, and the one property every entry point keeps: the
documented result, or an error of the library's own type raised by the library's code."""

from __future__ import annotations

import itertools
import os
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from hypothesis import strategies as st

from mgsv_sk.errors import MGSVError

ROOT = Path(__file__).resolve().parents[1]
OURS = (str(ROOT / "mgsv_sk"), str(ROOT / "export"))
_COUNTER = itertools.count()


def assert_ours(exc: BaseException, *fragments: str) -> None:
    """``exc`` is the library's own error, raised by the library's code (its traceback's
    last frame is in mgsv_sk/ or export/), and names each of ``fragments``."""
    assert isinstance(exc, MGSVError), f"a raw {type(exc).__module__}.{type(exc).__name__}: {exc}"
    frames = traceback.extract_tb(exc.__traceback__)
    assert frames and frames[-1].filename.startswith(OURS), (
        f"{type(exc).__name__} raised outside the library, at {frames[-1].filename}")
    for fragment in fragments:
        assert fragment in str(exc), f"{fragment!r} not in {exc}"


def outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    """("ok", result) or ("error", exc) for an error of ours (checked); anything else fails
    the test with the raw exception."""
    try:
        return "ok", call()
    except MGSVError as exc:
        assert_ours(exc)
        return "error", exc


# -- containers ---------------------------------------------------------------------------
#: Exact spellings of a float32 array: equal values, another container or memory layout.
EXACT = ["numpy", "float64", "big-endian", "read-only", "non-contiguous", "fortran",
         "memmap", "list", "pandas", "pandas-Float64", "torch", "torch-grad",
         "torch-non-contiguous", "torch-float64", "dask"]
#: Spellings that round the values (the result equals the canonical input rounded alike).
ROUNDING = {"float16": np.float16, "torch-bfloat16": None}


def spell(arr: np.ndarray, how: str, tmp: Path | None = None) -> Any:
    """``arr`` (2-D float32) held the way ``how`` names."""
    if how == "numpy":
        return arr.copy()
    if how == "float64":
        return arr.astype(np.float64)
    if how == "big-endian":
        return arr.astype(">f4")
    if how == "read-only":
        out = arr.copy()
        out.flags.writeable = False
        return out
    if how == "non-contiguous":
        wide = np.zeros((arr.shape[0], arr.shape[1] * 2), np.float32)
        wide[:, ::2] = arr
        return wide[:, ::2]
    if how == "fortran":
        return np.asfortranarray(arr)
    if how == "memmap":
        assert tmp is not None
        path = tmp / f"m{os.getpid()}-{id(arr)}-{next(_COUNTER)}.dat"
        mm = np.memmap(path, dtype=np.float32, mode="w+", shape=arr.shape)
        mm[:] = arr
        mm.flush()
        return np.memmap(path, dtype=np.float32, mode="r", shape=arr.shape)
    if how == "list":
        return arr.tolist()
    if how == "pandas":
        return pd.DataFrame(arr)
    if how == "pandas-Float64":
        return pd.DataFrame(arr).astype("Float64")
    if how == "float16":
        return arr.astype(np.float16)
    if how == "dask":
        import dask.array as da

        return da.from_array(arr, chunks=max(1, arr.shape[0] // 2))
    import torch

    t = torch.from_numpy(arr.copy())
    if how == "torch":
        return t
    if how == "torch-grad":
        return (t * 1.0).requires_grad_()
    if how == "torch-non-contiguous":
        return t.T.contiguous().T
    if how == "torch-float64":
        return t.double()
    if how == "torch-bfloat16":
        return t.bfloat16()
    raise AssertionError(how)


def rounded(arr: np.ndarray, how: str) -> np.ndarray:
    """What a rounding spelling holds, as float32."""
    if how == "float16":
        return arr.astype(np.float16).astype(np.float32)
    if how == "torch-bfloat16":
        import torch

        return torch.from_numpy(arr).bfloat16().float().numpy()
    return arr


def id_spellings(ids: list[str]) -> st.SearchStrategy[Any]:
    """The same ids in every sequence a user may hold them in."""
    def make(how: str) -> Any:
        if how == "list":
            return list(ids)
        if how == "tuple":
            return tuple(ids)
        if how == "numpy-str":
            return np.array(ids)
        if how == "numpy-object":
            return np.array(ids, dtype=object)
        if how == "series":
            return pd.Series(ids)
        if how == "series-category":
            return pd.Series(ids).astype("category")
        if how == "series-string":
            return pd.Series(ids, dtype="string")
        if how == "index":
            return pd.Index(ids)
        if how == "dask":
            import dask.dataframe as dd

            return dd.from_pandas(pd.Series(ids), npartitions=1)
        raise AssertionError(how)

    return st.sampled_from(["list", "tuple", "numpy-str", "numpy-object", "series",
                            "series-category", "series-string", "index", "dask"]).map(make)


# -- values ---------------------------------------------------------------------------------
HOSTILE_FLOATS = st.sampled_from([np.nan, np.inf, -np.inf, 1e300, -1e300, -1.0, -0.0, 0.0,
                                  1e-300, 3.5e38, float(np.finfo(np.float32).max)])
HOSTILE_TEXT = st.one_of(
    st.sampled_from(["", " ", "\t", " a ", "é", "音楽", "NA", "None", "nan", "007", "a,b",
                     "../x", "a/b", "x" * 300, "\u200b", "\x00"]),
    st.text(min_size=0, max_size=12),
)


# -- time geometry --------------------------------------------------------------------------
def boundaries(video_end: float, track_end: float, features_end: float) -> list[float]:
    """Every boundary of the task and just past each: 0, the video's end, 50 frames, the
    track's end, the features' extent, 240 s."""
    out = []
    for b in (0.0, video_end, 50.0, track_end, features_end, 240.0):
        out += [b, b + 1e-6, b + 0.5]
    return sorted(set(out))
