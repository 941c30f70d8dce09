"""The Open Inference Protocol's ``infer`` for the model ``mgsv``, whatever carries it.

HTTP (:mod:`.http.routes.oip`: JSON tensors and the binary tensor extension) and gRPC
(:mod:`.grpc`) decode a request into an :class:`InferCall`; :func:`answer` checks it
against the model, runs it on the admission pool and returns the output tensors, which
each transport encodes its own way. One implementation of the checks and of the outputs.

Inputs: ``video_frames`` FP32 ``[F, video_dim]`` and optionally ``music_id`` BYTES ``[1]``
(SmG). Outputs: ``music_id`` BYTES ``[k]``, ``score`` FP32 ``[k]``, ``moments`` FP32
``[k, m, 3]`` (start, end, score; rows of -1 pad a track with fewer moments).
"""

from __future__ import annotations

import math
import struct
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mgsv_sk.data import MAX_ID_LENGTH
from mgsv_sk.errors import InvalidInputError

from .admission import unless_given_up
from .batching import Abandoned, DeadlineExceeded
from .engine import MODEL_NAME, ServedModel, TrackResult
from .errors import ApiError, shown, validation_message

__all__ = ["ALIAS_VERSION", "OUTPUTS", "InferCall", "InferParameters", "Tensor", "answer",
           "NO_CLASSIFICATION", "by_name", "bytes_from_wire", "bytes_to_wire", "check_version",
           "model_config", "parameters", "serve_infer", "served_model", "statistics_of"]

T = TypeVar("T")
R = TypeVar("R")

#: The version number clients that count versions from 1 (Triton's) may ask for; the
#: model's own version is its checksum's first 12 hex digits.
ALIAS_VERSION = "1"
#: The output tensors, in the order they are answered.
OUTPUTS = ("music_id", "score", "moments")
#: Bounds of a tensor's declared shape (checked before any allocation).
_MAX_RANK, _MAX_ELEMENTS = 4, 1 << 28
#: Most inputs, requested outputs, parameters (of the request, of one tensor) and non-FP32
#: elements a request may hold, checked before any is read. The model takes 2 inputs (one
#: BYTES element) and answers 3 outputs; unbounded, a 2 MiB request held the event loop
#: every client shares while each was read and refused: 100,000 parameters for 280 ms,
#: 100,000 outputs 390, a BYTES tensor of 400,000 elements 190. Frames of the largest
#: shape (50 x 512) sent in another datatype are still read, to be told their datatype.
MAX_INPUTS, MAX_OUTPUTS, MAX_PARAMETERS, MAX_ELEMENTS_NOT_FP32 = 8, 16, 64, 1 << 15
#: Request parameters of the protocol itself, accepted and not passed to the model.
_PROTOCOL_PARAMETERS = ("binary_data_output",)
#: Triton's parameters of stateful models, which this model is not.
_SEQUENCE_PARAMETERS = {"sequence_id", "sequence_start", "sequence_end"}
#: The answer to an output that asks for Triton's classification extension.
NO_CLASSIFICATION = ("the classification extension is not supported; ask for 'score' (the "
                     "tracks come ranked, best first)")


class InferParameters(BaseModel):
    """The model's request parameters."""

    model_config = ConfigDict(extra="forbid")
    # strict: a count is an integer, never true/false or text (k=true is not k=1)
    k: int = Field(10, ge=1, strict=True, description="tracks to return (MsG)")
    moments_per_track: int = Field(1, ge=1, strict=True,
                                   description="moments per track, best first")
    video_duration: float | None = Field(
        None, gt=0, strict=True, description="seconds of the video (the moment's length); "
                                             "default: one second per frame")
    timeout: int | None = Field(
        None, ge=0, strict=True, description="microseconds (Triton's): a request still "
        "waiting for the model after this long is not run but answered 504 (gRPC "
        "DEADLINE_EXCEEDED); 0 or none: no limit")
    priority: int | None = Field(
        None, ge=0, strict=True, description="accepted for Triton's clients; every request "
                                             "has the same priority here")


@dataclass
class Tensor:
    """One tensor: FP32 as a float32 array, BYTES as a list of bytes."""

    name: str
    datatype: str
    shape: list[int]
    data: Any


@dataclass
class InferCall:
    """A decoded request: its inputs by name, the model's parameters, and which outputs
    to answer (``None``: all of them) with, per output, whether the client asked for it
    as binary (HTTP's extension; ``None``: the request's default)."""

    inputs: dict[str, Tensor]
    params: InferParameters
    id: str | None = None
    outputs: dict[str, bool | None] | None = None
    binary_default: bool = False
    client: str = "unknown"
    timings: dict[str, float] = field(default_factory=dict)
    #: Seconds spent decoding and checking the inputs (the statistics' compute_input).
    input_seconds: float = 0.0
    #: Set when the client leaves before the answer: still waiting for a lane, the call
    #: is then not run (a client that sends requests and hangs up spends no model time).
    abandoned: threading.Event = field(default_factory=threading.Event)

    def stages(self) -> dict[str, float]:
        """Its stage seconds as the statistics extension names them (once answered)."""
        return {"queue": self.timings.get("queue", 0.0), "compute_input": self.input_seconds,
                "compute_infer": self.timings.get("rank", 0.0)}


def by_name(tensors: list[Tensor]) -> dict[str, Tensor]:
    """A request's input tensors by name; 400 when a name comes twice (which one would be
    read is not the protocol's to say)."""
    out: dict[str, Tensor] = {}
    for tensor in tensors:
        if tensor.name in out:
            raise ApiError(400, f"input {shown(tensor.name)} is given twice; send each input "
                                "once")
        out[tensor.name] = tensor
    return out


def check_version(model: ServedModel, version: str | None) -> None:
    """404 unless ``version`` is empty, the model's version or :data:`ALIAS_VERSION`."""
    if version and version not in (model.version, ALIAS_VERSION):
        raise ApiError(404, f"model {MODEL_NAME!r} has no version {shown(version)}; this server "
                            f"serves version {model.version!r} (also addressable as "
                            f"{ALIAS_VERSION!r})")


#: The protocol's tensor datatypes as Triton's model configuration names them.
_CONFIG_TYPES = {"FP32": "TYPE_FP32", "BYTES": "TYPE_STRING"}


def model_config(model: ServedModel, limits: dict[str, Any]) -> dict[str, Any]:
    """The model as Triton's model configuration describes one (``GET .../config``, gRPC
    ``ModelConfig``; what ``tritonclient``'s ``get_model_config`` reads), from its metadata:
    one request is one video (``max_batch_size`` 0: no batch dimension in the tensors; the
    server batches requests itself), on ``lanes`` CPU instances; the metadata's parameters
    and the batching's as strings."""
    meta = model.metadata(limits)

    def tensor(t: dict[str, Any]) -> dict[str, Any]:
        out = {"name": t["name"], "data_type": _CONFIG_TYPES[t["datatype"]], "dims": t["shape"]}
        return {**out, "optional": True} if t.get("optional") else out

    given = {**meta["parameters"], "batch_delay_ms": round(model.batch_delay * 1000.0, 3)}
    return {"name": meta["name"], "platform": meta["platform"], "max_batch_size": 0,
            "input": [tensor(t) for t in meta["inputs"]],
            "output": [tensor(t) for t in meta["outputs"]],
            "instance_group": [{"name": meta["name"], "kind": "KIND_CPU", "count": model.lanes}],
            "parameters": {k: {"string_value": str(v).lower() if isinstance(v, bool) else str(v)}
                           for k, v in given.items() if v is not None}}


def check_model(name: str) -> None:
    if name != MODEL_NAME:
        raise ApiError(404, f"no model {shown(name)}; this server serves {MODEL_NAME!r}")


def served_model(state: Any, name: str, version: str | None) -> ServedModel:
    """The loaded model that ``name`` and ``version`` address: 404 for another model or
    version, 503 while it loads (counted as a rejection)."""
    check_model(name)
    model: ServedModel = state.ready_model()
    check_version(model, version)
    return model


def statistics_of(model: ServedModel | None) -> dict[str, Any]:
    """The statistics extension's answer: the model's counters, none before it loads."""
    return {"model_stats": [] if model is None else [
        model.statistics.report(MODEL_NAME, model.version)]}


async def serve_infer(state: Any, name: str, version: str | None, client: str,
                      read: Callable[[], Awaitable[T]],
                      decode: Callable[[T], InferCall],
                      encode: Callable[[str, list[Tensor], InferCall], R],
                      gone: Callable[[], Awaitable[Any]] | None = None) -> R:
    """One ``infer`` over either transport: the model it addresses, the client's share,
    the request ``read`` and ``decode``d, :func:`answer`, the answer ``encode``d; counted
    in the model's statistics (a success with its stages, or a failure). ``gone`` returns
    when the client leaves (HTTP: its connection closes); a transport that cancels the
    call instead (gRPC) marks it given up the same way
    (:func:`.admission.unless_given_up`)."""
    began = time.perf_counter()
    model = served_model(state, name, version)
    with model.statistics.request() as stages, state.client(client):
        raw = await read()
        decoding = time.perf_counter()
        call = decode(raw)
        del raw  # the body (up to max_json_bytes) is not kept while the call waits and runs
        call.input_seconds = time.perf_counter() - decoding
        answered_version, outputs = await unless_given_up(answer(state, call),
                                                          call.abandoned, gone)
        encoding = time.perf_counter()
        call.timings["total"] = encoding - began
        response = encode(answered_version, outputs, call)
        stages.update(call.stages(), compute_output=time.perf_counter() - encoding)
    return response


def parameters(given: dict[str, Any] | None) -> InferParameters:
    """The model's parameters from a request's, protocol parameters left out (422 naming
    an unknown or invalid one; their count is the transport's :func:`check_counts`)."""
    own = {k: v for k, v in (given or {}).items() if k not in _PROTOCOL_PARAMETERS}
    sequence = sorted(set(own) & _SEQUENCE_PARAMETERS)
    if sequence:
        raise ApiError(422, f"{MODEL_NAME!r} is not a sequence (stateful) model, so "
                            f"{', '.join(sequence)} do not apply; send each video as a "
                            "request of its own, without them")
    try:
        return InferParameters.model_validate(own)
    except ValidationError as exc:
        # the same words over HTTP and gRPC: the parameters named, not an HTTP schema
        raise ApiError(422, validation_message(
            exc.errors(), ("parameters",), see="the model's parameters are "
            + ", ".join(InferParameters.model_fields))) from exc


def check_shape(name: str, shape: Any) -> list[int]:
    """A tensor's shape as a list of bounded non-negative ints, or a 400."""
    if (not isinstance(shape, list) or len(shape) > _MAX_RANK or not all(
            isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= _MAX_ELEMENTS
            for d in shape) or math.prod(shape) > _MAX_ELEMENTS):
        raise ApiError(400, f"input {shown(name)}: shape must be a list of at most {_MAX_RANK} "
                            f"non-negative integers of at most {_MAX_ELEMENTS} elements in "
                            f"all, got {str(shape)[:80]}")
    return list(shape)


def check_count(what: str, count: int, most: int) -> None:
    """A 400 when a request holds more than ``most`` of ``what`` (checked before any of
    them is read)."""
    if count > most:
        raise ApiError(400, f"the request holds {count} {what}; at most {most} are read")


def check_counts(parameters: int, inputs: int, outputs: int,
                 each_input: Iterable[tuple[Any, Any, int, int]],
                 each_output: Iterable[tuple[Any, int]]) -> None:
    """A request's parameters, inputs and outputs within :data:`MAX_PARAMETERS`,
    :data:`MAX_INPUTS` and :data:`MAX_OUTPUTS`; then, from ``each_input`` (name, datatype,
    parameters, data elements) and ``each_output`` (name, parameters), each tensor's
    parameters and a non-FP32 input's elements (:data:`MAX_ELEMENTS_NOT_FP32`). Both
    transports give the per-tensor counts lazily (generators): they are looked at only
    once the request's own counts passed."""
    check_count("inputs", inputs, MAX_INPUTS)
    check_count("outputs", outputs, MAX_OUTPUTS)
    check_count("parameters", parameters, MAX_PARAMETERS)
    for name, datatype, given, elements in each_input:
        check_count(f"parameters in input {shown(name)}", given, MAX_PARAMETERS)
        if not (isinstance(datatype, str) and datatype.upper() == "FP32"):
            check_count(f"data elements in input {shown(name)} (not FP32)", elements,
                        MAX_ELEMENTS_NOT_FP32)
    for name, given in each_output:
        check_count(f"parameters in output {shown(name)}", given, MAX_PARAMETERS)


def bytes_from_wire(name: str, raw: bytes) -> list[bytes]:
    """BYTES elements from the binary layout (a 4-byte little-endian length before each),
    at most :data:`MAX_ELEMENTS_NOT_FP32` of them."""
    out: list[bytes] = []
    at = 0
    while at < len(raw):
        if len(out) == MAX_ELEMENTS_NOT_FP32:
            raise ApiError(400, f"input {shown(name)} holds more than {MAX_ELEMENTS_NOT_FP32} "
                                "BYTES elements; at most that many are read")
        if at + 4 > len(raw):
            raise ApiError(400, f"input {shown(name)}: BYTES data ends inside an element's length")
        (size,) = struct.unpack_from("<I", raw, at)
        at += 4
        if at + size > len(raw):
            raise ApiError(400, f"input {shown(name)}: a BYTES element runs past the data")
        out.append(raw[at: at + size])
        at += size
    return out


def bytes_to_wire(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


def fp32_from_wire(name: str, raw: bytes) -> np.ndarray:
    if len(raw) % 4:
        raise ApiError(400, f"input {shown(name)}: FP32 data of {len(raw)} bytes is not a whole "
                            "number of 4-byte floats")
    return np.frombuffer(raw, dtype="<f4")


# -- the model's inputs -------------------------------------------------------------------
def _frames(tensor: Tensor, model: ServedModel) -> np.ndarray:
    """``video_frames`` as (F, video_dim) float32, or a 400 naming the problem."""
    dim, most = model.frame_dim, model.max_frames
    if tensor.datatype != "FP32":
        raise ApiError(400, f"video_frames must be FP32, got {shown(tensor.datatype)}")
    shape = tensor.shape
    if len(shape) != 2 or shape[1] != dim or not 1 <= shape[0] <= most:
        raise ApiError(400, f"video_frames must have shape [F, {dim}] with 1 <= F <= {most} "
                            f"(one CLIP frame feature per second), got {shape}")
    array = tensor.data
    if array.size != shape[0] * shape[1]:
        raise ApiError(400, f"video_frames holds {array.size} numbers, but its shape {shape} "
                            f"needs {shape[0] * shape[1]}")
    array = array.reshape(shape[0], shape[1])
    if not np.isfinite(array).all():
        raise ApiError(400, "video_frames holds NaN or infinite values")
    return np.ascontiguousarray(array, dtype=np.float32)


def _music_id(tensor: Tensor, model: ServedModel) -> str:
    items = tensor.data
    if tensor.datatype != "BYTES" or tensor.shape not in ([1], [1, 1]) or len(items) != 1:
        raise ApiError(400, "music_id must be a BYTES tensor of shape [1] holding one track id "
                            "string")
    try:
        music_id = bytes(items[0]).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, "music_id must be UTF-8 text") from exc
    size = len(items[0])
    if size > MAX_ID_LENGTH:  # never echo a long id back
        raise ApiError(404, f"music_id is {size} bytes long; no track id is longer than "
                            f"{MAX_ID_LENGTH}")
    if not model.has_track(music_id):
        raise ApiError(404, f"music_id {music_id!r} is not in the served catalogue; "
                            f"GET /v2/models/{MODEL_NAME} says how many tracks it holds")
    return music_id


def _requested(call: InferCall) -> list[str]:
    if call.outputs is None:
        return list(OUTPUTS)
    unknown = sorted(set(call.outputs) - set(OUTPUTS))
    if unknown:
        raise ApiError(400, f"unknown output(s) {', '.join(shown(n) for n in unknown[:5])}; "
                            f"this model answers {list(OUTPUTS)}")
    return [name for name in OUTPUTS if name in call.outputs]


def _outputs(tracks: list[TrackResult], wanted: list[str]) -> list[Tensor]:
    width = max((len(t.moments) for t in tracks), default=0)
    moments = np.full((len(tracks), width, 3), -1.0, np.float32)
    for i, t in enumerate(tracks):  # rows of -1 pad a track with fewer moments
        for j, m in enumerate(t.moments):
            moments[i, j] = (m.start, m.end, m.score)
    n = len(tracks)
    every = {
        "music_id": Tensor("music_id", "BYTES", [n], [t.music_id.encode() for t in tracks]),
        "score": Tensor("score", "FP32", [n], np.array([t.score for t in tracks], np.float32)),
        "moments": Tensor("moments", "FP32", [n, width, 3], moments),
    }
    return [every[name] for name in wanted]


async def answer(state: Any, call: InferCall) -> tuple[str, list[Tensor]]:
    """Check ``call`` against the served model, run it on the admission pool (503 when
    the queue is full) and return the model's version and the requested outputs."""
    preparing = time.perf_counter()
    model, prepared = _prepare(state, call)
    call.input_seconds += time.perf_counter() - preparing
    with state.slot():
        run_began = time.perf_counter()
        try:
            tracks, waited = await state.admission.run(prepared)
        except InvalidInputError as exc:  # finite numbers the model still cannot score
            raise ApiError(400, f"video_frames: {exc}") from exc
        except DeadlineExceeded:
            raise ApiError(504, f"the request waited longer than its timeout "
                                f"({call.params.timeout} us) for the model and was not run; "
                                "retry with a longer timeout, or later") from None
        except Abandoned:  # nobody reads it: the status is for the logs and the metrics
            raise ApiError(499, "the client closed its connection before the model ran the "
                                "request, so it was not run") from None
    _observe(state, call, waited, time.perf_counter() - run_began - waited)
    return model.version, _outputs(tracks, _requested(call))


def _prepare(state: Any, call: InferCall) -> tuple[ServedModel, Any]:
    model: ServedModel = state.ready_model()
    config = state.config
    unknown = sorted(set(call.inputs) - {"video_frames", "music_id"})
    if unknown or "video_frames" not in call.inputs:
        raise ApiError(400, f"inputs must be 'video_frames' (FP32 [F, {model.frame_dim}]) "
                            f"and optionally 'music_id' (BYTES [1]); got "
                            f"{', '.join(shown(n) for n in sorted(call.inputs)[:5]) or 'none'}")
    params = call.params
    if params.k > config.max_k or params.moments_per_track > config.max_moments:
        raise ApiError(422, f"k must be <= {config.max_k} and moments_per_track <= "
                            f"{config.max_moments}; got {params.k} and "
                            f"{params.moments_per_track}")
    _requested(call)
    frames = _frames(call.inputs["video_frames"], model)
    music_id = (_music_id(call.inputs["music_id"], model) if "music_id" in call.inputs
                else None)
    seconds = params.video_duration or float(len(frames))
    if seconds > config.max_video_seconds:
        raise ApiError(422, f"video_duration is {seconds:g} s; this server takes videos of "
                            f"at most {config.max_video_seconds:g} s")

    # Triton's timeout counts from here (the request decoded), in microseconds; the batcher
    # answers a call whose deadline passed before a lane took it without running it
    deadline = time.monotonic() + params.timeout / 1e6 if params.timeout else None

    def run() -> list[TrackResult]:
        return model.infer(frames, music_id=music_id, k=params.k,
                           moments=params.moments_per_track, seconds=seconds,
                           deadline=deadline, abandoned=call.abandoned)

    return model, run


def _observe(state: Any, call: InferCall, waited: float, ran: float) -> None:
    state.metrics.stages.labels("queue").observe(waited)
    state.metrics.stages.labels("rank").observe(ran)
    call.timings.update(queue=waited, rank=ran)
