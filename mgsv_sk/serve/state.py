"""What one app holds: its limits, metrics, admission pool and per-client gate, and the
model once loaded (or why it failed). Shared by the HTTP routes and the gRPC service."""

from __future__ import annotations

import gc
import logging
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from .admission import (
    Admission,
    ByteBudget,
    ClientGate,
    NoRoom,
    Overloaded,
    Pacer,
    TooManyFromClient,
)
from .config import ServeConfig
from .engine import ServedModel
from .errors import CLOSE, ApiError
from .metrics import Metrics

__all__ = ["ServeState"]

logger = logging.getLogger("mgsv_sk.serve")


class ServeState:
    def __init__(self, config: ServeConfig, metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
        self.admission = Admission(config.workers, config.queue_size)
        self.clients = ClientGate(config.client_share)
        self.pacer = Pacer(config.max_client_rate, config.is_trusted_proxy, self._paced)
        self.uploads = ByteBudget(config.upload_budget, tempfile.gettempdir(),
                                  config.max_upload_bytes)
        self.bodies = ByteBudget(config.body_budget)
        self.audio = ByteBudget(config.audio_budget)
        self.model: ServedModel | None = None
        self.load_error: str | None = None
        self._froze = False

    def _paced(self, seconds: float) -> None:
        self.metrics.paced.inc()
        self.metrics.paced_seconds.inc(seconds)

    def _retry(self) -> dict[str, str]:
        return {"Retry-After": str(self.config.retry_after_s)}

    def ready_model(self, probe: bool = False) -> ServedModel:
        """The model, or a 503 (counted as a rejection unless ``probe``: a health check)."""
        if self.model is None:
            message = ("the model failed to load: " + self.load_error if self.load_error
                       else "the model is loading; retry shortly")
            if not probe:
                self.metrics.rejected.labels("not_ready").inc()
            raise ApiError(503, message, self._retry())
        return self.model

    @contextmanager
    def slot(self) -> Iterator[None]:
        """One place in the admission queue for the body of the ``with``, or a 503."""
        try:
            with self.admission.slot():
                self.metrics.admitted.set(self.admission.admitted)
                yield
        except Overloaded:
            self.metrics.rejected.labels("overloaded").inc()
            raise ApiError(503, f"the server is busy ({self.admission.capacity} requests in "
                                "progress or queued); retry after the Retry-After seconds",
                           self._retry()) from None

    @contextmanager
    def upload_room(self, size: int) -> Iterator[None]:
        """``size`` bytes of the upload budget and the disk for the body of the ``with``,
        or a 503."""
        try:
            with self.uploads.reserve(size):
                yield
        except NoRoom:
            raise self._no_room("upload_room", "receiving as many uploads as it has room "
                                               "for (or its disk is nearly full)") from None

    def audio_room(self, size: int) -> Callable[[], None]:
        """Hold ``size`` bytes (at most the whole budget: a larger moment is sent alone) of
        the audio budget until the returned function is called (once); a 503 when it is
        spent."""
        try:
            return self.audio.take(min(size, self.audio.capacity))
        except NoRoom:  # a GET: no body left unread, the connection stays open
            raise self._no_room("audio_room", "sending as much moment audio as it has "
                                              "memory for", close=False) from None

    @contextmanager
    def body_room(self) -> Iterator[Callable[[int], None]]:
        """A function holding n more bytes of the bodies-in-memory budget until the
        ``with`` ends; past the budget, a 503 that closes the connection."""
        try:
            with self.bodies.holding() as hold:
                yield hold
        except NoRoom:
            raise self._no_room("body_room", "reading as many request bodies as it has "
                                             "memory for") from None

    def _no_room(self, reason: str, doing: str, close: bool = True) -> ApiError:
        """The 503 for bytes a budget refused, counted under ``reason``; with ``close``
        (a body not read further) the connection is closed, not drained."""
        self.metrics.rejected.labels(reason).inc()
        return ApiError(503, f"the server is {doing}; retry after the Retry-After seconds",
                        {**self._retry(), **(CLOSE if close else {})})

    @contextmanager
    def client(self, address: str) -> Iterator[None]:
        """Count a request of ``address`` while it is in progress, or a 429 when that
        address already has its share."""
        try:
            with self.clients.hold(address):
                yield
        except TooManyFromClient:
            self.metrics.rejected.labels("client_share").inc()
            raise ApiError(429, f"this client address already has {self.clients.per_client} "
                                "requests in progress; wait for one to finish",
                           self._retry()) from None

    def load(self, loader: Callable[[], ServedModel]) -> None:
        """Build the model with ``loader``; a failure is kept (the health check says it)."""
        try:
            model = loader()
            warmed = model.warm_up()  # before ready: no client pays for the first call
            self._freeze_heap()
            self.model = model
            logger.info("serving %d tracks (model %s; first call %.2f s)",
                        len(model.track_ids), model.version, warmed)
        except Exception as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            logger.error("cannot load the model: %s", self.load_error)
        self.mark_ready()

    def _freeze_heap(self) -> None:
        """Collect, then freeze every object that survives (:func:`gc.freeze`), once the
        model is loaded and warm. A loaded app holds some 180,000 objects the cyclic
        collector tracks (modules, the web framework, the model's wrappers), alive until
        it stops; each full collection walks all of them holding the GIL: measured at
        100 ms on one core, about once in 8 s under load at 8 clients, every request in
        flight stalled for it (the slowest 1 %). Frozen, a collection walks only what
        serving creates. :meth:`release_heap` undoes it when the app stops."""
        gc.collect()
        gc.freeze()
        self._froze = True

    def release_heap(self) -> None:
        """Give the frozen objects back to the collector (the app stopped: what it held
        can be collected again, e.g. in a process that starts several apps)."""
        if self._froze:
            gc.unfreeze()
            self._froze = False

    def mark_ready(self) -> None:
        if self.model is not None:
            self.model.batch_delay = self.config.batch_delay_ms / 1000.0
            self.metrics.ready.set(1)
            self.metrics.tracks.set(len(self.model.track_ids))
