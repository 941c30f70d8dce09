"""``POST /v1/recommend``: a video upload -> the catalogue tracks that fit it.

The stages in order: the client's share (429), the body read to a temporary file under
its size and time bounds (413, 408; no inference slot held), then a slot (503) for
decoding and ranking."""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Query, Request

from ...admission import unless_given_up
from ...batching import Abandoned
from ...engine import MODEL_NAME, ServedModel, TrackResult
from ...errors import ApiError, shown
from ...state import ServeState
from ..body import BodyLimits, body_chunks, declared_length, disconnected
from ..schemas import RecommendResponse, errors
from ..uploads import FIELD, no_room, receive_video, too_large_message
from .oip import client_address

__all__ = ["uploads_router"]


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


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def _upload_schema(state: ServeState) -> dict[str, Any]:
    config = state.config
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {
        "schema": {"type": "object", "required": [FIELD], "properties": {
            FIELD: {"type": "string", "format": "binary",
                    "description": f"the video (mp4, mov, mkv, webm, avi, m4v), at most "
                                   f"{config.max_video_seconds:g} s and "
                                   f"{config.max_upload_bytes} bytes"}}}}}}}


#: The query parameters of /v1/recommend (the route's arguments below).
_OPTIONS = frozenset({"k", "moments_per_track"})


def uploads_router(state: ServeState) -> APIRouter:
    router = APIRouter()
    config = state.config
    # the form's other fields and headers ride on top of the video's cap
    limits = BodyLimits(config.max_upload_bytes + (64 << 10), config.body_idle_seconds,
                        config.body_seconds)
    too_large = too_large_message(config.max_upload_bytes)

    @router.post("/v1/recommend", tags=["recommend"], response_model=RecommendResponse,
                 openapi_extra=_upload_schema(state),
                 responses=errors(400, 408, 413, 415, 422, 429, 503))
    async def recommend(
        request: Request,
        k: int = Query(5, ge=1, le=config.max_k, description="tracks to return"),
        moments_per_track: int = Query(1, ge=1, le=config.max_moments),
    ) -> dict[str, Any]:
        """Upload a video; get the catalogue tracks that fit it, each with its moment(s)
        and a URL that plays exactly the moment."""
        began = time.perf_counter()
        # a misspelt option (?top_k=3) would otherwise be dropped and the defaults served
        unknown = sorted(set(request.query_params) - _OPTIONS)
        if unknown:
            raise ApiError(400, f"unknown query parameter {shown(unknown[0])}; /v1/recommend "
                                f"takes {', '.join(sorted(_OPTIONS))}")
        model = state.ready_model()
        if not model.can_recommend:
            raise ApiError(501, "this bundle holds no video encoder, so it cannot read "
                                "videos; export it with encoders={'video': ...}, or send "
                                f"frame features to /v2/models/{MODEL_NAME}/infer")
        try:
            folder = Path(tempfile.mkdtemp(prefix="mgsv-upload-"))
        except OSError as exc:
            raise no_room(exc) from exc
        try:
            # what it may write to disk, reserved before its first byte: the declared
            # length, else the cap (a Content-Length over the cap is a 413 before this)
            declared = declared_length(request, limits.max_bytes, too_large)
            with state.client(client_address(request)), state.upload_room(
                    min(config.max_upload_bytes, declared or config.max_upload_bytes)):
                upload = await receive_video(request, folder, config.max_upload_bytes,
                                             body_chunks(request, limits, too_large))
                state.metrics.upload_bytes.inc(upload.size)
                received = time.perf_counter()
                abandoned = threading.Event()  # its client left: not decoded nor ranked
                with state.slot():
                    result, waited = await unless_given_up(state.admission.run(
                        lambda: model.recommend(upload.path, k=k, moments=moments_per_track,
                                                max_seconds=config.max_video_seconds,
                                                name=upload.filename, abandoned=abandoned)),
                        abandoned, lambda: disconnected(request))
        except Abandoned:  # nobody reads it: the status is for the logs and the metrics
            raise ApiError(499, "the client closed its connection before its upload was "
                                "decoded, so it was not") from None
        except ValueError as exc:
            raise ApiError(422, str(exc)) from exc
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        timings = {"upload": received - began, "queue": waited, **result.timings}
        for stage, seconds in timings.items():
            state.metrics.stages.labels(stage).observe(seconds)
        timings["total"] = time.perf_counter() - began
        return {"model_name": MODEL_NAME, "model_version": model.version,
                "video": {"filename": upload.filename, "bytes": upload.size,
                          "seconds": result.video_seconds, "frames": result.frames},
                "tracks": _tracks_json(model, result.tracks),
                "timings_ms": {stage: _ms(s) for stage, s in timings.items()}}

    return router
