"""Batch prediction over a Dask DataFrame with the torch-free ONNX runtime.

:func:`predict_dask` maps :meth:`export.runtime.OnnxGrounder.predict` (or ``rank``) over the
partitions of a Dask DataFrame. An onnxruntime session cannot be pickled, so the tasks carry
the bundle's *path*: each worker process loads the bundle once (a cache keyed by the path,
the manifest's identity, the thread count and the precision) and every partition it
computes reuses those sessions. A packed feature store given as a path is opened once per
worker process the same way; both paths must be readable at the same location on every
worker (a shared filesystem, or the same files copied to each machine).

Like :mod:`export.runtime`, this module never imports torch (only mgsv_sk's torch-free
layers). Dask is imported when a function is called; install it with
``pip install "mgsv-sk[dask]"``.

    >>> import dask.dataframe as dd                                      # doctest: +SKIP
    >>> ddf = dd.read_csv("test_data.csv",                               # doctest: +SKIP
    ...                   dtype={"video_id": str, "music_id": str})
    >>> out = predict_dask(ddf, "bundle/", "packed/", mode="msg")       # doctest: +SKIP
    >>> out.compute()                                                    # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mgsv_sk._extras import require
from mgsv_sk.data.features import PackedFeatures as PackedFeatureStore
from mgsv_sk.errors import InvalidInputError, InvalidTypeError

from . import _cache
from .manifest import read_manifest
from .runtime import PREDICTION_COLUMNS, RANK_COLUMNS, OnnxGrounder

__all__ = ["MODES", "clear_worker_cache", "predict_dask", "prediction_meta"]

#: ``mode`` values of :func:`predict_dask`.
MODES = ("auto", "smg", "msg", "rank")


def _dask_dataframe() -> Any:
    return require("dask.dataframe", "predict_dask (dask's DataFrame, which brings pyarrow)")


def clear_worker_cache() -> None:
    """Forget the bundles and stores this process has opened (``client.run`` it on every
    worker to release their memory)."""
    _cache.clear()


def _features(features: Any) -> Any:
    if not isinstance(features, (str, os.PathLike)):
        return features
    folder = Path(features)
    if not (folder / "meta.json").is_file():
        return PackedFeatureStore(folder)  # raises the runtime's explanatory error
    key = ("store", *_cache.identity(folder, "meta.json"))
    return _cache.cached(key, lambda: PackedFeatureStore(folder))


def prediction_meta(mode: str, index: pd.Index | None = None) -> pd.DataFrame:
    """An empty frame with the columns and dtypes :func:`predict_dask` returns.

    Parameters
    ----------
    mode : {"auto", "smg", "msg", "rank"}
        "rank" gives :data:`export.runtime.RANK_COLUMNS`, the others
        :data:`export.runtime.PREDICTION_COLUMNS`.
    index : pandas Index, optional
        Empty index whose dtype the result's index has (default: int64).

    Examples
    --------
    >>> list(prediction_meta("smg").columns)
    ['music_id', 'start', 'end', 'score', 'moment_score']
    >>> prediction_meta("rank")["rank"].dtype
    dtype('int64')
    """
    if mode not in MODES:
        raise InvalidInputError(f"mode must be one of {MODES}, got {mode!r}")
    text = pd.Series(["x"]).dtype  # the dtype pandas gives a column of str (as the runtime's)
    index = pd.RangeIndex(0) if index is None else index[:0]
    columns = RANK_COLUMNS if mode == "rank" else PREDICTION_COLUMNS
    dtypes = {"video_id": text, "music_id": text, "rank": np.dtype(np.int64),
              "score": np.dtype(np.float32)}
    return pd.DataFrame({c: pd.Series([], dtype=dtypes.get(c, np.dtype(np.float64)))
                         for c in columns}, index=index)


def _predict_partition(part: pd.DataFrame, bundle: str, features: Any, rank: bool, k: int,
                       n_threads: int | None, precision: str | None) -> pd.DataFrame:
    if len(part) == 0:  # the runtime refuses empty frames; a filtered partition may be one
        return prediction_meta("rank" if rank else "auto", part.index)
    grounder = OnnxGrounder.shared(bundle, n_threads, precision)
    source = _features(features)
    if rank:
        out = grounder.rank(part, k=k, features=source)
        out.index = part.index.repeat(len(out) // len(part))  # each video's k rows keep its label
        return out
    return grounder.predict(part, features=source)


def _local_path(path: str | os.PathLike[str]) -> str:
    """An absolute path when it exists here (workers may run in another folder)."""
    return str(Path(path).resolve()) if Path(path).exists() else os.fspath(path)


def predict_dask(ddf: Any, bundle: str | os.PathLike[str], features: Any, *,
                 mode: str = "auto", k: int = 10, n_threads: int | None = 1,
                 precision: str | None = None, check_bundle: bool = True) -> Any:
    """Ground (or rank) every row of a Dask DataFrame with an exported bundle.

    Parameters
    ----------
    ddf : dask.dataframe.DataFrame
        One video per row: ``video_id``, and ``music_id`` for SmG.
    bundle : path
        A folder written by :func:`export.to_onnx.export_onnx`, readable by every worker.
        Each worker process loads it once and keeps it for later partitions and calls.
    features : path or in-memory features
        A packed store folder (``mgsv_sk.pack_features``), readable by every worker and
        opened once per worker process; or anything :meth:`OnnxGrounder.predict` accepts
        (a ``(videos, music)`` pair of dicts of arrays, an object with ``video(id)`` and
        ``music(id)`` methods), which travels once to each worker that needs it (and through
        the scheduler): fine for small data, a packed store for large.
    mode : {"auto", "smg", "msg", "rank"}
        "smg": ground each video on its own ``music_id``; "msg": on the best catalogue
        track (``music_id``, if present, is ignored); "auto": SmG when ``ddf`` has
        ``music_id``, else MsG; "rank": the top-``k`` catalogue tracks per video.
    k : int
        Tracks per video for ``mode="rank"``.
    n_threads : int or None
        onnxruntime threads per session (default 1: a worker computes as many partitions
        at once as it has n_threads, each on one core). None: onnxruntime's default (all
        cores, which oversubscribes a worker with more than one thread).
    precision : {"fp32", "int8"}, optional
        Graphs to serve (default: the bundle's).
    check_bundle : bool
        Read the bundle's manifest here first, so that a wrong path fails now rather than
        in the workers. Set False when this machine cannot see the workers' files.

    Returns
    -------
    dask.dataframe.DataFrame
        Lazy; for "smg"/"msg" the columns of ``OnnxGrounder.predict`` (``music_id``,
        ``start``, ``end``, ``score``, ``moment_score``) with ``ddf``'s index and
        divisions; for "rank" those of ``OnnxGrounder.rank`` (``video_id``, ``rank``,
        ``music_id``, ``score``, ``start``, ``end``, ``moment_score``), ``min(k, catalogue
        size)`` rows per video, each labelled with its video's index label.

    Raises
    ------
    FileNotFoundError, export.manifest.BundleError
        With ``check_bundle``: no bundle at ``bundle``, or not a valid one.
    """
    dd = _dask_dataframe()
    import dask

    if not isinstance(ddf, dd.DataFrame):
        raise InvalidTypeError(f"ddf must be a dask DataFrame, got {type(ddf).__name__}; for a "
                               f"pandas "
                        "frame call OnnxGrounder.predict directly, or wrap it with "
                        "dask.dataframe.from_pandas(frame, npartitions=...)")
    if mode not in MODES:
        raise InvalidInputError(f"mode must be one of {MODES}, got {mode!r}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InvalidInputError(f"k must be a positive integer, got {k!r}")
    columns = list(ddf.columns)
    missing = [c for c in ("video_id", "music_id") if c not in columns
               and (c == "video_id" or mode == "smg")]
    if missing:
        raise InvalidInputError(f"ddf lacks the column(s) {missing} needed for mode={mode!r} "
                         f"(it has {columns}); rename them or pick another mode")
    if check_bundle:
        read_manifest(bundle)
    use_music = mode == "smg" or (mode == "auto" and "music_id" in columns)
    keep = ["video_id", "music_id"] if use_music else ["video_id"]
    # the videos' lengths are the moments' lengths: ship them to the workers too
    keep += [c for c in ("video_segment_duration", "video_start", "video_end") if c in columns]
    if isinstance(features, (str, os.PathLike)):
        features = _local_path(features)
    else:  # one graph node that every task depends on, not a copy pickled into each task
        features = dask.delayed(features, pure=False)
    return ddf[keep].map_partitions(
        _predict_partition, _local_path(bundle), features, mode == "rank", int(k),
        n_threads, precision,
        meta=prediction_meta(mode, ddf._meta.index), align_dataframes=False,
    )
