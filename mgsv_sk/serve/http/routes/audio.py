"""``GET /v1/tracks/{music_id}/audio``: a moment of a track as WAV, with byte ranges.

Decoding a moment is CPU and memory (a whole 240 s track: 0.47 s and 41 MB of WAV), so it
is bounded as inference is: a moment is at most :attr:`ServeConfig.audio_seconds` long,
and its decoding takes a place of the admission queue (503 beyond) and one of the
client's share (429 beyond) on the same threads. The WAV then holds its bytes of the
audio budget (:attr:`ServeConfig.audio_budget`, 503 beyond) until it is sent, in slices
that each wait for the client to take the last (a client that stops reading is cut off
by the connection's send deadline, :mod:`..connections`), so clients that never read
cannot pile up answers in memory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response

from mgsv_sk.data.spans import MAX_MUSIC_SECONDS

from ...audio import RangeNotSatisfiable, moment_wav, parse_range
from ...errors import ApiError, shown
from ...state import ServeState
from ..schemas import errors
from .oip import client_address

__all__ = ["audio_router"]

#: Bytes of WAV handed to the connection at a time (each send waits while the connection
#: still holds more than its high-water mark unsent).
SLICE_BYTES = 256 << 10


class _Slices(Response):
    """``body`` sent in :data:`SLICE_BYTES` pieces; ``release`` is called once it is all
    handed over, or the client went away."""

    def __init__(self, body: bytes, release: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(b"", **kwargs)
        self._whole, self._release = body, release
        self.headers["content-length"] = str(len(body))

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await send({"type": "http.response.start", "status": self.status_code,
                        "headers": self.raw_headers})
            whole = self._whole
            for at in range(0, len(whole), SLICE_BYTES):
                await send({"type": "http.response.body", "body": whole[at: at + SLICE_BYTES],
                            "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            self._whole = b""
            self._release()


def audio_router(state: ServeState) -> APIRouter:
    router = APIRouter()

    @router.get("/v1/tracks/{music_id}/audio", tags=["recommend"], response_class=Response,
                responses={200: {"content": {"audio/wav": {}}, "description": "the moment"},
                           206: {"content": {"audio/wav": {}}, "description": "a byte range"},
                           **errors(400, 404, 416, 422, 429, 503)})
    async def moment_audio(
        music_id: str, request: Request,
        start: float = Query(ge=0, le=MAX_MUSIC_SECONDS, allow_inf_nan=False,
                             description="seconds"),
        end: float = Query(gt=0, le=MAX_MUSIC_SECONDS, allow_inf_nan=False,
                           description="seconds"),
    ) -> Response:
        """The moment ``[start, end)`` of a track as 16-bit PCM WAV; answers Range
        requests (206)."""
        model = state.ready_model()
        if not model.has_track(music_id):
            raise ApiError(404, f"no track {shown(music_id)} in the served catalogue")
        if end <= start:  # both finite: the queries refuse NaN and infinities
            raise ApiError(400, f"end must be greater than start, got start={start:g}, "
                                f"end={end:g}")
        path = model.audio_path(music_id)
        if path is None:
            raise ApiError(404, f"no audio file is known for track {shown(music_id)}; serve a "
                                "catalogue built by `mgsv-sk catalogue`, or pass --audio DIR "
                                "holding <music_id>.wav files")
        seconds = model.track_seconds(music_id)
        if start >= seconds:
            raise ApiError(400, f"start={start:g} s is past the end of track {shown(music_id)} "
                                f"({seconds:.2f} s)")
        stop, longest = min(end, seconds), state.config.audio_seconds
        if stop - start > longest:
            raise ApiError(422, f"a moment of at most {longest:g} s is played here (twice the "
                                f"longest video: a moment is as long as its video); got "
                                f"{stop - start:g} s; ask for a shorter one")
        try:  # decoding takes a place and the client's share, as inference does
            with state.client(client_address(request)), state.slot():
                wav, _ = await state.admission.run(moment_wav, path, start, stop)
        except ValueError as exc:  # the message names the file: show the track instead
            raise ApiError(422, str(exc).replace(str(path), f"track {shown(music_id)}")) from exc
        size = len(wav)
        headers = {"Accept-Ranges": "bytes", "Cache-Control": "public, max-age=3600"}
        try:
            wanted = parse_range(request.headers.get("range"), size)
        except RangeNotSatisfiable as exc:
            return JSONResponse({"error": str(exc)}, status_code=416,
                                headers={**headers, "Content-Range": f"bytes */{size}"})
        if wanted is None:
            return _Slices(wav, state.audio_room(size), media_type="audio/wav",
                           headers=headers)
        first, last = wanted
        part = wav[first: last + 1]
        del wav  # only the range is kept while it is sent
        return _Slices(part, state.audio_room(len(part)), status_code=206,
                       media_type="audio/wav",
                       headers={**headers, "Content-Range": f"bytes {first}-{last}/{size}"})

    return router
