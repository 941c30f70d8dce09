"""Request and response bodies as pydantic models: they make the OpenAPI schema (the
routes read and check bodies themselves, see :mod:`.routes`)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, StrictInt

from ..oip import InferParameters

__all__ = ["ERRORS", "ErrorBody", "InferRequest", "InferResponse", "RecommendResponse",
           "errors"]


class ErrorBody(BaseModel):
    error: str = Field(description="What went wrong and how to fix it")


class InferTensor(BaseModel):
    """One OIP tensor; ``data`` is row-major, flat or nested; or, with the binary tensor
    extension, ``parameters.binary_data_size`` bytes after the JSON header."""

    name: str
    shape: list[StrictInt]  # [true, 512] is no shape (pydantic would read true as 1)
    datatype: str
    data: list[Any] | None = None
    parameters: dict[str, Any] | None = None


class RequestedOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = Field(
        None, description='{"binary_data": true} answers this output as binary')


class InferRequest(BaseModel):
    id: str | None = None
    inputs: list[InferTensor] = Field(min_length=1)
    parameters: InferParameters | None = None
    outputs: list[RequestedOutput] | None = None


class OutputTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    data: list[Any] | None = None
    parameters: dict[str, Any] | None = None


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


ERRORS = {code: {"model": ErrorBody, "description": what} for code, what in (
    (400, "malformed request"), (404, "unknown model, version, track or path"),
    (408, "the body did not arrive in time"),
    (413, "upload or body over the limit"), (415, "not a video / not a multipart form"),
    (416, "range not satisfiable"),
    (422, "invalid parameters, unreadable or too long video"),
    (429, "this client address has its share of requests in progress"),
    (503, "loading, or overloaded (see Retry-After)"),
    (504, "the request's timeout passed before the model ran it"))}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of these error codes."""
    return {code: ERRORS[code] for code in codes}
