"""Hyper-parameter search on a Dask cluster through joblib's Dask backend.

scikit-learn's searches run their fits with joblib, so
``with joblib.parallel_config(backend="dask"): search.fit(...)`` sends every (candidate,
fold) fit to the workers of the current ``distributed.Client``. :func:`grid_search_on_dask`
does that after checking the two things that decide whether the cluster gives the same
answer as ``n_jobs=1``, and gives it quickly:

- **one fit per worker process.** torch's random generator and thread count are global to
  a process, so two fits running in threads of one process draw each other's dropout
  masks: scores change from run to run (measured: a different ``best_params_``). Start
  workers with one thread each (``LocalCluster(threads_per_worker=1)``, ``dask worker
  --nthreads 1``); the nanny sets ``OMP_NUM_THREADS=1`` in each worker process, so a fit with
  ``n_threads=None`` uses one core, and ``n_threads=c`` suits workers started with
  ``--nworkers cores/c``.
- **how the features travel.** A packed store (:func:`mgsv_sk.pack_features`) or a feature
  tree pickles as its path: every worker opens the files itself, so the path must be
  readable on every worker (checked here). In-memory features are pickled into every fit
  task (scikit-learn's ``clone`` copies them for each candidate and fold); fine for small
  data, and warned about from :data:`IN_MEMORY_WARN_BYTES`.

Dask is imported when :func:`grid_search_on_dask` is called; install it with
``pip install "mgsv-sk[dask]"``.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import joblib

from mgsv_sk._extras import require
from mgsv_sk.data.features import FeatureTree, InMemoryFeatures, PackedFeatures
from mgsv_sk.errors import ArtifactNotFoundError, InvalidInputError

__all__ = ["IN_MEMORY_WARN_BYTES", "grid_search_on_dask"]

logger = logging.getLogger(__name__)

#: In-memory features at least this large (bytes) trigger a warning: they are pickled into
#: every fit task.
IN_MEMORY_WARN_BYTES = 64 * 2**20


def _default_client() -> Any:
    get_client = require("distributed", "grid_search_on_dask").get_client
    try:
        return get_client()
    except ValueError as exc:
        raise InvalidInputError("grid_search_on_dask found no Dask client: pass client= or create "
                         "one first, e.g. distributed.Client(LocalCluster(n_workers=2, "
                         "threads_per_worker=1)) or Client('tcp://scheduler:8786')") from exc


def _feature_params(search: Any, fit_params: dict[str, Any]) -> list[tuple[str, Any]]:
    """(name, value) of every feature source the fits will carry."""
    found: list[tuple[str, Any]] = []
    estimator = getattr(search, "estimator", None)
    if estimator is not None and hasattr(estimator, "get_params"):
        for name, value in estimator.get_params(deep=True).items():
            if (name == "features" or name.endswith("__features")) and value is not None:
                found.append((name, value))
    if fit_params.get("features") is not None:
        found.append(("fit features", fit_params["features"]))
    return found


def _in_memory_bytes(value: Any) -> int | None:
    if isinstance(value, InMemoryFeatures):
        return sum(value.video(v).nbytes for v in value.video_ids()) + sum(
            value.music(m).nbytes for m in value.music_ids())
    if isinstance(value, tuple) and len(value) == 2 and all(isinstance(d, dict) for d in value):
        return sum(int(getattr(a, "nbytes", 0)) for d in value for a in d.values())
    return None


def _feature_path(value: Any) -> str | None:
    if isinstance(value, PackedFeatures):
        return str(value.path)
    if isinstance(value, FeatureTree):
        return str(value.root)
    if isinstance(value, (str, os.PathLike)):
        return os.fspath(value)
    return None


def _path_is_dir(path: str) -> bool:  # runs on the workers
    return os.path.isdir(path)


def _check_features(client: Any, search: Any, fit_params: dict[str, Any]) -> None:
    for name, value in _feature_params(search, fit_params):
        path = _feature_path(value)
        if path is not None:
            if not os.path.isabs(path) and Path(path).exists():
                logger.warning("feature path %r is relative: workers resolve it from their "
                               "own working folder; pass an absolute path", path)
            seen = client.run(_path_is_dir, path)
            blind = sorted(addr for addr, ok in seen.items() if not ok)
            if blind:
                raise ArtifactNotFoundError(
                    f"{name}={path!r} is not a folder on {len(blind)} of {len(seen)} Dask "
                    f"worker(s) ({blind[:3]}): a packed store or feature tree travels as its "
                    "path, so every worker must read it at that path (shared storage, or "
                    "the same files on each machine)")
            continue
        size = _in_memory_bytes(value)
        if size is not None and size >= IN_MEMORY_WARN_BYTES:
            warnings.warn(
                f"{name} holds {size / 2**20:.0f} MiB of in-memory features, which are "
                "pickled into every fit task of the search; write them once with "
                "mgsv_sk.pack_features(features, path) on storage the workers share and "
                "pass the path (a packed store travels as its path)",
                RuntimeWarning, stacklevel=3)


def _check_workers(client: Any) -> None:
    pids: dict[str, int] = client.run(os.getpid)
    nthreads: dict[str, int] = client.nthreads()
    per_process: Counter[tuple[str | None, int]] = Counter()
    for addr, pid in pids.items():
        per_process[(urlparse(addr).hostname, pid)] += int(nthreads.get(addr, 1))
    crowded = {key: n for key, n in per_process.items() if n > 1}
    if crowded:
        warnings.warn(
            f"{len(crowded)} Dask worker process(es) run more than one task at a time "
            f"(threads per process: {sorted(set(crowded.values()))}); torch's random "
            "generator and thread count are global to a process, so fits sharing one are "
            "not reproducible and the search may not match n_jobs=1. Start workers with one "
            "thread and in their own processes: LocalCluster(threads_per_worker=1, "
            "processes=True) or `dask worker --nthreads 1`", RuntimeWarning, stacklevel=3)


def grid_search_on_dask(search: Any, X: Any, y: Any = None, *, client: Any = None,
                        check: bool = True, wait_for_workers_timeout: float = 10.0,
                        **fit_params: Any) -> Any:
    """Fit a scikit-learn search (``GridSearchCV``, ``RandomizedSearchCV``, ...) on a Dask
    cluster and return it.

    Each (candidate, fold) fit runs as a task on the cluster's workers; the refit of the
    best candidate runs here, as with any backend. ``search.n_jobs`` is ignored: the
    search uses every worker thread.

    Parameters
    ----------
    search : scikit-learn meta-estimator
        For instance ``GridSearchCV(MGSVGrounder(features=...), grid, scoring=...,
        refit=..., cv=GroupKFold(3))``.
    X, y
        Passed to ``search.fit``.
    client : distributed.Client, optional
        The cluster (default: the current client, ``distributed.get_client()``).
    check : bool
        Before fitting, warn if a worker process runs several tasks at once (fits would
        not be reproducible), fail if a feature path is not a folder on every worker, and
        warn when large in-memory features would be pickled into every task.
    wait_for_workers_timeout : float
        Seconds to wait for a first worker when the cluster has none yet.
    **fit_params
        Passed to ``search.fit`` (``groups=`` for grouped folds).

    Returns
    -------
    search
        Fitted: ``cv_results_``, ``best_params_``, ``best_estimator_``, ...

    Examples
    --------
    >>> from distributed import Client, LocalCluster                      # doctest: +SKIP
    >>> with LocalCluster(n_workers=2, threads_per_worker=1) as cluster, Client(cluster):
    ...     grid_search_on_dask(search, df, groups=df["music_id"])        # doctest: +SKIP
    """
    if client is None:
        client = _default_client()
    if check:
        _check_workers(client)
        _check_features(client, search, fit_params)
    with joblib.parallel_config(backend="dask", client=client,
                                wait_for_workers_timeout=wait_for_workers_timeout):
        search.fit(X, y, **fit_params)
    return search
