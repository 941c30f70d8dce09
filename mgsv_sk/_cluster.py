"""Checks of a Dask client before work is sent to it, shared by the Dask helpers
(:func:`mgsv_sk.train.dask_search.grid_search_on_dask`, :func:`mgsv_sk.export.dask.predict_dask`).

A client in an unusual but legal state otherwise fails deep inside distributed (``IOLoop
is closed``, ``'NoneType' object has no attribute 'ncores'``, a worker's
``ModuleNotFoundError`` while unpickling a task) or, worse, quietly runs the work
somewhere else. Each state is a :class:`~mgsv_sk.errors.ClusterError` saying what to do.
Torch-free; distributed is imported only when a client is given or already in use.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

from mgsv_sk.errors import ClusterError

__all__ = ["check_client", "check_importable", "current_client"]


def current_client() -> Any | None:
    """The running default client of this process, if distributed is in use; else None."""
    if "distributed" not in sys.modules:
        return None
    try:
        client = sys.modules["distributed"].get_client()
    except (ValueError, RuntimeError):
        return None
    return client if getattr(client, "status", None) == "running" else None


def check_client(client: Any, who: str) -> None:
    """Refuse a client that cannot take work now: closed, closing, never started (an
    asynchronous client that was not awaited), or asynchronous (these helpers block)."""
    status = str(getattr(client, "status", "running"))
    if status in ("closing", "closed", "failed", "closed-by-scheduler"):
        raise ClusterError(
            f"{who}: the Dask client is {status}; create a new one (distributed.Client(...)) "
            "and pass it, or use it inside its `with` block")
    if getattr(client, "asynchronous", False) or status != "running":
        raise ClusterError(
            f"{who}: the Dask client is not running (status {status!r}"
            f"{', asynchronous' if getattr(client, 'asynchronous', False) else ''}); pass a "
            "started, synchronous client: distributed.Client(cluster_or_address), not one "
            "made with asynchronous=True and never awaited")


def check_importable(client: Any, modules: tuple[str, ...], who: str) -> None:
    """Refuse a cluster whose workers cannot import ``modules`` (every task of the helper
    names a function of this package, which each worker unpickles by importing it)."""
    bad: dict[str, str] = {}
    for module in modules:
        seen = client.run(importlib.util.find_spec, module, on_error="return")
        for addr, spec in seen.items():
            if spec is None or isinstance(spec, BaseException):
                why = "not installed" if spec is None else f"{type(spec).__name__}: {spec}"
                bad.setdefault(addr, f"{module} ({why})")
    if bad:
        shown = "; ".join(f"{a}: {w}" for a, w in list(bad.items())[:3])
        raise ClusterError(
            f"{who}: {len(bad)} of the cluster's Dask worker(s) cannot import this package "
            f"({shown}); install mgsv-sk (with the extras the work needs, e.g. "
            "mgsv-sk[dask,train]) in the workers' environment, or start the workers from "
            "the environment this process runs in")
