"""The service's limits, checked once when the app is built (numbers only, no imports of the
web stack)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["ServeConfig"]


def _default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


@dataclass(frozen=True)
class ServeConfig:
    """Limits of one server process.

    Parameters
    ----------
    workers : int
        Threads that run inference (one shared set of onnxruntime sessions; ``run`` is
        thread-safe). Default: the cores, at most 4.
    queue_size : int
        Requests admitted beyond ``workers`` that wait for a thread; one more is answered
        503 with ``Retry-After`` (every request gets an answer, none waits unboundedly).
    max_upload_bytes : int
        Largest video upload (413 above it). It is streamed to a temporary file, never held
        in memory, and deleted after the request.
    max_video_seconds : float
        Longest video accepted (422 above it); the model reads its first 50 s.
    max_k : int
        Most tracks one request may ask for.
    max_moments : int
        Most moments per track one request may ask for.
    n_threads : int
        onnxruntime threads of each graph's session (per request; ``workers`` of them run
        at once).
    retry_after_s : int
        The ``Retry-After`` a 503 carries.
    max_json_bytes : int
        Largest JSON body of ``infer`` (413 above it): 50 frames x 512 floats is ~0.5 MB.
    """

    workers: int = _default_workers()
    queue_size: int = 16
    max_upload_bytes: int = 64 << 20
    max_video_seconds: float = 60.0
    max_k: int = 50
    max_moments: int = 5
    n_threads: int = 1
    retry_after_s: int = 1
    max_json_bytes: int = 8 << 20

    def __post_init__(self) -> None:
        problems = []
        for name in ("workers", "max_upload_bytes", "max_k", "max_moments",
                     "n_threads", "retry_after_s", "max_json_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                problems.append(f"{name} must be an integer >= 1, got {value!r}")
        if (isinstance(self.queue_size, bool) or not isinstance(self.queue_size, int)
                or self.queue_size < 0):
            problems.append(f"queue_size must be an integer >= 0, got {self.queue_size!r}")
        seconds = self.max_video_seconds
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not (
                0 < seconds < float("inf")):
            problems.append(f"max_video_seconds must be a positive number, got {seconds!r}")
        if problems:
            raise ValueError("invalid server limits: " + "; ".join(problems))

    def public(self) -> dict[str, Any]:
        """The limits a client needs to know (the page and the model metadata show them)."""
        out = asdict(self)
        for private in ("n_threads", "retry_after_s"):
            out.pop(private)
        return out
