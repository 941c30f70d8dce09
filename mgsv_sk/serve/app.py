"""The ASGI app: Open Inference Protocol paths, the video upload API, moment audio, metrics
and the demo page (:func:`create_app`)."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from mgsv_sk.data.spans import MAX_MUSIC_SECONDS

from .. import __version__
from .admission import Admission, Overloaded
from .audio import RangeNotSatisfiable, moment_wav, parse_range
from .config import ServeConfig
from .engine import MODEL_NAME, ServedModel, TrackResult
from .errors import ApiError, install_error_handlers
from .metrics import CONTENT_TYPE_LATEST, Metrics
from .uploads import FIELD, receive_video

__all__ = ["create_app"]

logger = logging.getLogger("mgsv_sk.serve")
STATIC = Path(__file__).parent / "static"


# -- request and response bodies (they make the OpenAPI schema) -------------------------------
class ErrorBody(BaseModel):
    error: str = Field(description="What went wrong and how to fix it")


class InferTensor(BaseModel):
    """One OIP tensor; ``data`` is row-major, flat or nested."""

    name: str
    shape: list[int]
    datatype: str
    data: list[Any]


class InferParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    k: int = Field(10, ge=1, description="tracks to return (MsG)")
    moments_per_track: int = Field(1, ge=1, description="moments per track, best first")
    video_duration: float | None = Field(
        None, gt=0, description="seconds of the video (the moment's length); default: one "
                                "second per frame")


class InferRequest(BaseModel):
    id: str | None = None
    inputs: list[InferTensor] = Field(min_length=1)
    parameters: InferParameters | None = None
    outputs: list[dict[str, Any]] | None = None


class OutputTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    data: list[Any]


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[OutputTensor]
    parameters: dict[str, Any]


class MomentOut(BaseModel):
    start: float
    end: float
    score: float = Field(description="the moment head's probability, in [0, 1]")
    audio_url: str | None = Field(description="WAV of exactly this moment, or null when the "
                                              "track's audio file is not known")


class TrackOut(BaseModel):
    rank: int
    music_id: str
    score: float = Field(description="retrieval score (higher fits better)")
    track_seconds: float
    moments: list[MomentOut]


class RecommendResponse(BaseModel):
    model_name: str
    model_version: str
    video: dict[str, Any]
    tracks: list[TrackOut]
    timings_ms: dict[str, float]


_ERRORS = {code: {"model": ErrorBody, "description": what} for code, what in (
    (400, "malformed request"), (404, "unknown track or path"),
    (413, "upload or body over the limit"), (415, "not a video / not a multipart form"),
    (422, "invalid parameters, unreadable or too long video"),
    (503, "loading, or overloaded (see Retry-After)"))}


class _State:
    """What the app holds: the model once loaded (or why it failed), the pool, metrics."""

    def __init__(self, config: ServeConfig, metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
        self.admission = Admission(config.workers, config.queue_size)
        self.model: ServedModel | None = None
        self.load_error: str | None = None

    def ready_model(self, probe: bool = False) -> ServedModel:
        """The model, or a 503 (counted as a rejection unless ``probe``: a health check)."""
        if self.model is None:
            message = ("the model failed to load: " + self.load_error if self.load_error
                       else "the model is loading; retry shortly")
            if not probe:
                self.metrics.rejected.labels("not_ready").inc()
            raise ApiError(503, message, {"Retry-After": str(self.config.retry_after_s)})
        return self.model

    def overloaded(self) -> ApiError:
        self.metrics.rejected.labels("overloaded").inc()
        return ApiError(503, f"the server is busy ({self.admission.capacity} requests in "
                             "progress or queued); retry after the Retry-After seconds",
                        {"Retry-After": str(self.config.retry_after_s)})


class _MetricsMiddleware:
    """Counts every answer by route template and status, and its latency (pure ASGI: it
    does not buffer bodies)."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = [500]

        async def send_status(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        began = time.perf_counter()
        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.in_flight.dec()
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            if route.startswith("/static"):
                route = "/static"
            self.metrics.requests.labels(route, scope["method"], str(status[0])).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - began)


class _BodyTooLarge(Exception):
    """A JSON body passed the cap while it was read."""


class _JsonBodyLimit:
    """Caps the JSON body of ``path`` before FastAPI reads and parses it: a declared
    ``Content-Length`` over ``limit`` is answered 413 at once; a chunked body stops being
    read at the cap (FastAPI then answers 400), so memory stays bounded either way."""

    def __init__(self, app: Any, path: str, limit: int, metrics: Metrics) -> None:
        self.app, self.path, self.limit, self.metrics = app, path, limit, metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            self.metrics.rejected.labels("too_large").inc()
            response = JSONResponse({"error": f"the request body is larger than "
                                              f"{self.limit} bytes"}, status_code=413)
            await response(scope, receive, send)
            return
        seen = [0]

        async def counted() -> Any:
            message = await receive()
            seen[0] += len(message.get("body", b""))
            if seen[0] > self.limit:
                raise _BodyTooLarge
            return message

        await self.app(scope, counted, send)


def _audio_url(music_id: str, start: float, end: float) -> str:
    return f"/v1/tracks/{quote(music_id, safe='')}/audio?start={start:.3f}&end={end:.3f}"


def _tracks_json(model: ServedModel, tracks: list[TrackResult]) -> list[dict[str, Any]]:
    out = []
    for t in tracks:
        playable = model.audio_path(t.music_id) is not None
        out.append({
            "rank": t.rank, "music_id": t.music_id, "score": t.score,
            "track_seconds": model.track_seconds(t.music_id),
            "moments": [{"start": m.start, "end": m.end, "score": m.score,
                         "audio_url": _audio_url(t.music_id, m.start, m.end) if playable
                         else None} for m in t.moments]})
    return out


def _frames(tensor: InferTensor, model: ServedModel) -> np.ndarray:
    """The ``video_frames`` tensor as (F, video_dim) float32, or a 400 naming the problem."""
    dim, most = model.frame_dim, model.max_frames
    if tensor.datatype.upper() != "FP32":
        raise ApiError(400, f"video_frames must be FP32, got {tensor.datatype!r}")
    shape = tensor.shape
    if len(shape) != 2 or shape[1] != dim or not 1 <= shape[0] <= most:
        raise ApiError(400, f"video_frames must have shape [F, {dim}] with 1 <= F <= {most} "
                            f"(one CLIP frame feature per second), got {shape}")
    try:
        array = np.asarray(tensor.data, dtype=np.float32)
    except (ValueError, TypeError, OverflowError) as exc:
        raise ApiError(400, f"video_frames data is not a list of numbers ({exc})") from exc
    if array.size != shape[0] * shape[1]:
        raise ApiError(400, f"video_frames holds {array.size} numbers, but its shape {shape} "
                            f"needs {shape[0] * shape[1]}")
    array = array.reshape(shape[0], shape[1])
    if not np.isfinite(array).all():
        raise ApiError(400, "video_frames holds NaN or infinite values")
    return array


def _music_id(tensor: InferTensor, model: ServedModel) -> str:
    if tensor.datatype.upper() != "BYTES" or len(tensor.data) != 1 or not isinstance(
            tensor.data[0], str):
        raise ApiError(400, "music_id must be a BYTES tensor of shape [1] holding one track id "
                            "string")
    music_id = tensor.data[0]
    if not model.has_track(music_id):
        raise ApiError(404, f"music_id {music_id!r} is not in the served catalogue; "
                            f"GET /v2/models/{MODEL_NAME} says how many tracks it holds")
    return music_id


def _infer_outputs(tracks: list[TrackResult]) -> list[dict[str, Any]]:
    width = max((len(t.moments) for t in tracks), default=0)
    moments: list[float] = []
    for t in tracks:  # rows of -1 pad a track with fewer moments than the widest
        rows = [[m.start, m.end, m.score] for m in t.moments]
        moments.extend(v for row in rows + [[-1.0, -1.0, -1.0]] * (width - len(rows))
                       for v in row)
    n = len(tracks)
    return [
        {"name": "music_id", "datatype": "BYTES", "shape": [n],
         "data": [t.music_id for t in tracks]},
        {"name": "score", "datatype": "FP32", "shape": [n], "data": [t.score for t in tracks]},
        {"name": "moments", "datatype": "FP32", "shape": [n, width, 3], "data": moments},
    ]


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def create_app(
    bundle: str | os.PathLike[str] | ServedModel,
    catalogue: str | os.PathLike[str] | None = None,
    *,
    audio_dir: str | os.PathLike[str] | None = None,
    config: ServeConfig | None = None,
    loader: Callable[[], ServedModel] | None = None,
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
        Workers, queue and size limits.
    loader : callable, optional
        Builds the model instead of :meth:`ServedModel.load` (tests, custom encoders).

    Raises
    ------
    FileNotFoundError
        ``bundle`` or ``catalogue`` does not exist (checked now, not after start-up).
    """
    config = config or ServeConfig()
    metrics = Metrics()
    state = _State(config, metrics)
    if isinstance(bundle, ServedModel):
        state.model = bundle
    else:
        from mgsv_sk.export.manifest import read_manifest

        read_manifest(bundle)  # fail now on a wrong path, not in the background
        if catalogue is not None and not Path(catalogue).is_dir():
            raise FileNotFoundError(f"catalogue store not found: {catalogue}; build one with "
                                    "`mgsv-sk catalogue MUSIC_DIR OUT`")
        if loader is None:
            def loader() -> ServedModel:
                return ServedModel.load(bundle, catalogue, audio_dir=audio_dir,
                                        n_threads=config.n_threads)

    def load() -> None:
        assert loader is not None
        try:
            state.model = loader()
            logger.info("serving %d tracks (model %s)", len(state.model.track_ids),
                        state.model.version)
        except Exception as exc:
            state.load_error = f"{type(exc).__name__}: {exc}"
            logger.error("cannot load the model: %s", state.load_error)

    def on_ready() -> None:
        if state.model is not None:
            metrics.ready.set(1)
            metrics.tracks.set(len(state.model.track_ids))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        task = None
        if state.model is None:
            async def load_then_mark() -> None:
                await asyncio.get_running_loop().run_in_executor(None, load)
                on_ready()
            task = asyncio.create_task(load_then_mark())
        else:
            on_ready()
        try:
            yield
        finally:
            if task is not None and not task.done():
                await task
            state.admission.shutdown()

    app = FastAPI(
        title="mgsv-sk", version=__version__, lifespan=lifespan, docs_url=None,
        redoc_url=None,
        description="Music grounding by short video: the catalogue tracks that fit a video "
                    "and the moment of each. Open Inference Protocol paths under /v2; video "
                    f"uploads (at most {config.max_video_seconds:g} s, "
                    f"{config.max_upload_bytes / 2**20:.0f} MiB) at /v1/recommend. Errors are "
                    "JSON {\"error\": ...}.")
    app.state.serve = state
    install_error_handlers(app)
    app.add_middleware(_JsonBodyLimit, path=f"/v2/models/{MODEL_NAME}/infer",
                       limit=config.max_json_bytes, metrics=metrics)
    app.add_middleware(_MetricsMiddleware, metrics=metrics)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    # -- Open Inference Protocol --------------------------------------------------------------
    @app.get("/v2", tags=["oip"])
    def server_metadata() -> dict[str, Any]:
        return {"name": "mgsv-sk", "version": __version__, "extensions": []}

    @app.get("/v2/health/live", tags=["oip"])
    def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready", tags=["oip"], responses={503: _ERRORS[503]})
    def ready() -> dict[str, bool]:
        state.ready_model(probe=True)
        return {"ready": True}

    @app.get(f"/v2/models/{MODEL_NAME}/ready", tags=["oip"], responses={503: _ERRORS[503]})
    def model_ready() -> dict[str, Any]:
        state.ready_model(probe=True)
        return {"name": MODEL_NAME, "ready": True}

    @app.get(f"/v2/models/{MODEL_NAME}", tags=["oip"], responses={503: _ERRORS[503]})
    def model_metadata() -> dict[str, Any]:
        return state.ready_model().metadata(config.public())

    @app.post(f"/v2/models/{MODEL_NAME}/infer", tags=["oip"], response_model=InferResponse,
              responses={c: _ERRORS[c] for c in (400, 404, 413, 422, 503)})
    async def infer(body: InferRequest) -> dict[str, Any]:
        """Frame features -> the top-k tracks with their moments (MsG), or the moments on
        one track when ``music_id`` is given (SmG)."""
        began = time.perf_counter()
        model = state.ready_model()
        tensors = {t.name: t for t in body.inputs}
        unknown = sorted(set(tensors) - {"video_frames", "music_id"})
        if unknown or "video_frames" not in tensors:
            raise ApiError(400, f"inputs must be 'video_frames' (FP32 [F, {model.frame_dim}]) "
                                f"and optionally 'music_id' (BYTES [1]); got "
                                f"{sorted(tensors)}")
        params = body.parameters or InferParameters.model_validate({})
        if params.k > config.max_k or params.moments_per_track > config.max_moments:
            raise ApiError(422, f"k must be <= {config.max_k} and moments_per_track <= "
                                f"{config.max_moments}; got {params.k} and "
                                f"{params.moments_per_track}")
        frames = _frames(tensors["video_frames"], model)
        music_id = _music_id(tensors["music_id"], model) if "music_id" in tensors else None
        seconds = params.video_duration or float(len(frames))
        if seconds > config.max_video_seconds:
            raise ApiError(422, f"video_duration is {seconds:g} s; this server takes videos of "
                                f"at most {config.max_video_seconds:g} s")
        try:
            with state.admission.slot():
                metrics.admitted.set(state.admission.admitted)
                run_began = time.perf_counter()
                tracks, waited = await state.admission.run(
                    lambda: model.infer(frames, music_id=music_id, k=params.k,
                                        moments=params.moments_per_track, seconds=seconds))
        except Overloaded:
            raise state.overloaded() from None
        ran = time.perf_counter() - run_began - waited
        metrics.stages.labels("queue").observe(waited)
        metrics.stages.labels("rank").observe(ran)
        return {"model_name": MODEL_NAME, "model_version": model.version, "id": body.id,
                "outputs": _infer_outputs(tracks),
                "parameters": {"timings_ms": {"queue": _ms(waited), "rank": _ms(ran),
                                              "total": _ms(time.perf_counter() - began)}}}

    # -- video upload -------------------------------------------------------------------------
    upload_body = {"requestBody": {"required": True, "content": {"multipart/form-data": {
        "schema": {"type": "object", "required": [FIELD], "properties": {
            FIELD: {"type": "string", "format": "binary",
                    "description": f"the video (mp4, mov, mkv, webm, avi, m4v), at most "
                                   f"{config.max_video_seconds:g} s and "
                                   f"{config.max_upload_bytes} bytes"}}}}}}}

    @app.post("/v1/recommend", tags=["recommend"], response_model=RecommendResponse,
              openapi_extra=upload_body,
              responses={c: _ERRORS[c] for c in (400, 413, 415, 422, 503)})
    async def recommend(
        request: Request,
        k: int = Query(5, ge=1, le=config.max_k, description="tracks to return"),
        moments_per_track: int = Query(1, ge=1, le=config.max_moments),
    ) -> dict[str, Any]:
        """Upload a video; get the catalogue tracks that fit it, each with its moment(s)
        and a URL that plays exactly the moment."""
        began = time.perf_counter()
        model = state.ready_model()
        if not model.can_recommend:
            raise ApiError(501, "this bundle holds no video encoder, so it cannot read "
                                "videos; export it with encoders={'video': ...}, or send "
                                f"frame features to /v2/models/{MODEL_NAME}/infer")
        try:
            with state.admission.slot():
                metrics.admitted.set(state.admission.admitted)
                folder = Path(tempfile.mkdtemp(prefix="mgsv-upload-"))
                try:
                    upload = await receive_video(request, folder, config.max_upload_bytes)
                    metrics.upload_bytes.inc(upload.size)
                    received = time.perf_counter()
                    result, waited = await state.admission.run(
                        lambda: model.recommend(upload.path, k=k, moments=moments_per_track,
                                                max_seconds=config.max_video_seconds,
                                                name=upload.filename))
                except ValueError as exc:
                    raise ApiError(422, str(exc)) from exc
                finally:
                    shutil.rmtree(folder, ignore_errors=True)
        except Overloaded:
            raise state.overloaded() from None
        timings = {"upload": received - began, "queue": waited, **result.timings}
        for stage, seconds in timings.items():
            metrics.stages.labels(stage).observe(seconds)
        timings["total"] = time.perf_counter() - began
        return {"model_name": MODEL_NAME, "model_version": model.version,
                "video": {"filename": upload.filename, "bytes": upload.size,
                          "seconds": result.video_seconds, "frames": result.frames},
                "tracks": _tracks_json(model, result.tracks),
                "timings_ms": {stage: _ms(s) for stage, s in timings.items()}}

    # -- moment audio -------------------------------------------------------------------------
    @app.get("/v1/tracks/{music_id}/audio", tags=["recommend"],
             response_class=Response,
             responses={200: {"content": {"audio/wav": {}}, "description": "the moment"},
                        206: {"content": {"audio/wav": {}}, "description": "a byte range"},
                        **{c: _ERRORS[c] for c in (400, 404, 422, 503)},
                        416: {"model": ErrorBody, "description": "range not satisfiable"}})
    async def moment_audio(
        music_id: str, request: Request,
        start: float = Query(ge=0, le=MAX_MUSIC_SECONDS, description="seconds"),
        end: float = Query(gt=0, le=MAX_MUSIC_SECONDS, description="seconds"),
    ) -> Response:
        """The moment ``[start, end)`` of a track as 16-bit PCM WAV; answers Range
        requests (206)."""
        model = state.ready_model()
        if not model.has_track(music_id):
            raise ApiError(404, f"no track {music_id!r} in the served catalogue")
        if not (math.isfinite(start) and math.isfinite(end)) or end <= start:
            raise ApiError(400, f"end must be greater than start, got start={start:g}, "
                                f"end={end:g}")
        path = model.audio_path(music_id)
        if path is None:
            raise ApiError(404, f"no audio file is known for track {music_id!r}; serve a "
                                "catalogue built by `mgsv-sk catalogue`, or pass --audio DIR "
                                "holding <music_id>.wav files")
        seconds = model.track_seconds(music_id)
        if start >= seconds:
            raise ApiError(400, f"start={start:g} s is past the end of track {music_id!r} "
                                f"({seconds:.2f} s)")
        try:
            wav = await run_in_threadpool(moment_wav, path, start, min(end, seconds))
        except ValueError as exc:
            raise ApiError(422, str(exc)) from exc
        size = len(wav)
        headers = {"Accept-Ranges": "bytes", "Cache-Control": "public, max-age=3600"}
        try:
            wanted = parse_range(request.headers.get("range"), size)
        except RangeNotSatisfiable as exc:
            return JSONResponse({"error": str(exc)}, status_code=416,
                                headers={**headers, "Content-Range": f"bytes */{size}"})
        if wanted is None:
            return Response(wav, media_type="audio/wav", headers=headers)
        first, last = wanted
        return Response(wav[first: last + 1], status_code=206, media_type="audio/wav",
                        headers={**headers, "Content-Range": f"bytes {first}-{last}/{size}"})

    # -- operations and the page --------------------------------------------------------------
    @app.get("/metrics", tags=["operations"], response_class=Response,
             responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
    def prometheus() -> Response:
        metrics.admitted.set(state.admission.admitted)
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    return app
