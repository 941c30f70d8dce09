"""Per-model inference statistics: the statistics extension of the Open Inference Protocol
as Triton defines it (``GET /v2/models[/{name}[/versions/{v}]]/stats`` and gRPC
``ModelStatistics``), so ``tritonclient``'s ``get_inference_statistics`` and the
dashboards built on it read this server as they read Triton.

Counts and cumulative nanoseconds since the model was loaded: each ``infer`` request's
outcome (success or fail, its whole time in the server) and, for the successes, its
stages (queue: waiting for a lane; compute_input: decoding and checking the tensors;
compute_infer: the model; compute_output: encoding the answer); and each execution of
the model, a batch of requests answered together (:mod:`.batching`), by batch size. The
mean batch is ``inference_count / execution_count``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["STAGES", "InferStatistics"]

#: The stages of a successful request, as the extension names them.
STAGES = ("queue", "compute_input", "compute_infer", "compute_output")


def _ns(seconds: float) -> int:
    return max(0, round(seconds * 1e9))


class InferStatistics:
    """Thread-safe counters of one model's requests and executions."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._durations = {name: [0, 0] for name in ("success", "fail", *STAGES)}
        self._batches: dict[int, list[int]] = {}  # batch size -> [executions, ns]
        self._inferences = self._executions = self._last_ms = 0

    @contextmanager
    def request(self) -> Iterator[dict[str, float]]:
        """Time the ``with`` body as one request: a success, with the stage seconds the
        body puts in the yielded dict, or a failure if it raises (a client's error, a
        full queue, a cancelled call alike)."""
        began = time.perf_counter()
        stages: dict[str, float] = {}
        try:
            yield stages
        except BaseException:
            self._add("fail", time.perf_counter() - began)
            raise
        with self._lock:
            self._add_locked("success", time.perf_counter() - began)
            for name in STAGES:
                if name in stages:
                    self._add_locked(name, stages[name])

    def executed(self, size: int, seconds: float) -> None:
        """One execution of the model on a batch of ``size`` requests."""
        with self._lock:
            self._inferences += size
            self._executions += 1
            self._last_ms = int(time.time() * 1000)
            entry = self._batches.setdefault(size, [0, 0])
            entry[0] += 1
            entry[1] += _ns(seconds)

    def report(self, name: str, version: str) -> dict[str, Any]:
        """The extension's ``$model_stat`` object (JSON; the gRPC message's fields)."""
        def duration(count: int, ns: int) -> dict[str, int]:
            return {"count": count, "ns": ns}

        zero = duration(0, 0)
        with self._lock:
            stats = {k: duration(*v) for k, v in self._durations.items()}
            batches = [{"batch_size": size, "compute_input": zero,
                        "compute_infer": duration(*entry), "compute_output": zero}
                       for size, entry in sorted(self._batches.items())]
            return {"name": name, "version": version, "last_inference": self._last_ms,
                    "inference_count": self._inferences,
                    "execution_count": self._executions,
                    "inference_stats": {**stats, "cache_hit": zero, "cache_miss": zero},
                    "batch_stats": batches}

    def _add(self, name: str, seconds: float) -> None:
        with self._lock:
            self._add_locked(name, seconds)

    def _add_locked(self, name: str, seconds: float) -> None:
        entry = self._durations[name]
        entry[0] += 1
        entry[1] += _ns(seconds)
