"""The ASGI app (:func:`create_app`): the routers of :mod:`.http.routes` (Open Inference
Protocol, video uploads, moment audio, metrics and the page) over one :class:`.ServeState`,
behind the middleware of :mod:`.http.middleware`; optionally the OIP's gRPC service beside it
(:mod:`.grpc`), started and stopped with the app."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from .. import __version__
from .config import ServeConfig
from .engine import ServedModel
from .errors import install_error_handlers
from .http.middleware import (
    AmbiguousFraming,
    HeadAsGet,
    HeadLimits,
    MetricsMiddleware,
    RequestTarget,
)
from .http.routes import STATIC, audio_router, oip_router, operations_router, uploads_router
from .metrics import Metrics
from .state import ServeState

__all__ = ["create_app"]

#: The interpreter's thread switch interval while the app runs (CPython's default: 5 ms).
#: An inference thread takes the GIL back after each native call (onnxruntime, the pooling
#: kernel, numpy); while the event loop is busy it waits for the loop to be made to give
#: the GIL up, up to the interval each time, and a request makes many such calls. A client
#: that floods cheap requests keeps the loop busy: one address on 16 connections pipelining
#: GET /v2/health/live held a legitimate client's infer at a p50 of 4.05 s (28 ms quiet),
#: 91 ms at 0.5 ms (and 78 at 0.1, 111 at 1); GET /metrics 480 -> 151 ms.
_SWITCH_INTERVAL_S = 0.0005


def _loader(bundle: str | os.PathLike[str], catalogue: str | os.PathLike[str] | None,
            audio_dir: str | os.PathLike[str] | None,
            config: ServeConfig) -> Callable[[], ServedModel]:
    """Checks the paths now (not after start-up) and returns what loads the model."""
    from mgsv_sk.export.manifest import read_manifest

    read_manifest(bundle)
    if catalogue is not None and not Path(catalogue).is_dir():
        raise FileNotFoundError(f"catalogue store not found: {catalogue}; build one with "
                                "`mgsv-sk catalogue MUSIC_DIR OUT`")

    def load() -> ServedModel:
        return ServedModel.load(bundle, catalogue, audio_dir=audio_dir,
                                n_threads=config.n_threads, lanes=config.lanes)

    return load


def _lifespan(state: ServeState, loader: Callable[[], ServedModel] | None,
              grpc_address: str | None, background: bool) -> Any:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        task = None
        if loader is not None:  # loading runs in the background: ready says when done
            task = asyncio.get_running_loop().run_in_executor(None, state.load, loader)
            if not background:
                await task
        else:
            state.mark_ready()
        grpc_server = None
        if grpc_address is not None:
            from .grpc import start_grpc

            grpc_server = await start_grpc(state, grpc_address)  # on this event loop
        switch = sys.getswitchinterval()  # process-wide: restored when the app stops
        sys.setswitchinterval(min(switch, _SWITCH_INTERVAL_S))
        try:
            yield
        finally:
            if grpc_server is not None:  # in-flight calls finish first (30 s at most)
                await grpc_server.stop(30)
            if task is not None:
                await task
            state.admission.shutdown()
            state.release_heap()
            sys.setswitchinterval(switch)

    return lifespan


def create_app(
    bundle: str | os.PathLike[str] | ServedModel,
    catalogue: str | os.PathLike[str] | None = None,
    *,
    audio_dir: str | os.PathLike[str] | None = None,
    config: ServeConfig | None = None,
    loader: Callable[[], ServedModel] | None = None,
    grpc_address: str | None = None,
    load_in_background: bool = True,
) -> FastAPI:
    """The service as an ASGI app (serve it with uvicorn, or ``mgsv-sk serve``).

    Parameters
    ----------
    bundle : path or ServedModel
        An ONNX bundle (``mgsv-sk export``; with ``encoders=`` for video uploads), opened
        in the background when the app starts (``/v2/health/ready`` answers 503 until
        then), or a model already loaded.
    catalogue : path, optional
        A store from ``mgsv-sk catalogue`` to serve instead of the bundle's own tracks; it
        records each track's audio file, so moments can be played.
    audio_dir : path, optional
        Where to look for ``<music_id>.<ext>`` audio of tracks whose file is not recorded.
    config : ServeConfig
        Workers, queue, size, time and per-client limits.
    loader : callable, optional
        Builds the model instead of :meth:`ServedModel.load` (tests, custom encoders).
    grpc_address : str, optional
        ``host:port`` where the OIP's gRPC service (``inference.GRPCInferenceService``)
        listens while the app runs, sharing its model, queue and limits.
    load_in_background : bool
        True: the app starts serving at once and ``/v2/health/ready`` says when the model
        is loaded. False: start-up returns once it is, for hosts that route to an app only
        after its start-up (Ray Serve's replicas: one still loading got requests, 503).

    Raises
    ------
    FileNotFoundError
        ``bundle`` or ``catalogue`` does not exist (checked now, not after start-up).
    """
    config = config or ServeConfig()
    state = ServeState(config, Metrics())
    if isinstance(bundle, ServedModel):
        state.model, loader = bundle, None
    elif loader is None:
        loader = _loader(bundle, catalogue, audio_dir, config)
    else:
        _loader(bundle, catalogue, audio_dir, config)  # the same checks of the paths
    app = FastAPI(
        title="mgsv-sk", version=__version__, docs_url=None, redoc_url=None,
        lifespan=_lifespan(state, loader, grpc_address, load_in_background),
        redirect_slashes=False,  # a redirect would be built from the client's Host header
        description="Music grounding by short video: the catalogue tracks that fit a video "
                    "and the moment of each. Open Inference Protocol paths under /v2; video "
                    f"uploads (at most {config.max_video_seconds:g} s, "
                    f"{config.max_upload_bytes / 2**20:.0f} MiB) at /v1/recommend. Errors are "
                    "JSON {\"error\": ...}.")
    app.state.serve = state
    install_error_handlers(app)
    app.add_middleware(HeadAsGet)
    app.add_middleware(AmbiguousFraming)
    app.add_middleware(RequestTarget)
    app.add_middleware(HeadLimits)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)  # outermost: sees all
    for router in (oip_router(state), uploads_router(state), audio_router(state),
                   operations_router(state)):
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
