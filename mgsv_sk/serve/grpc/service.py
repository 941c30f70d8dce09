"""``inference.GRPCInferenceService``: health, metadata, ``ModelInfer``, and Triton's
``ModelStreamInfer``, ``ModelStatistics`` (the statistics extension) and ``ModelConfig``
(its other methods answer UNIMPLEMENTED).

The server is grpcio's asyncio one, on the HTTP app's event loop. A call costs nothing
while its request message is still arriving (no thread, no place: grpcio's threaded
server held a worker thread and one of its ``maximum_concurrent_rpcs`` per call from its
headers on, so a dozen calls that never sent their message answered every other client
RESOURCE_EXHAUSTED); once the message is in, the call takes an admission slot and the
client's share like an HTTP request (``RESOURCE_EXHAUSTED`` when the queue is full,
``UNAVAILABLE`` while loading), and inference runs on the admission threads. Inputs come
as typed ``contents`` or as ``raw_input_contents``; outputs go back as
``raw_output_contents`` (FP32 little-endian; BYTES with a 4-byte length before each
element), as Triton's clients read them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import numpy as np
from google.protobuf import json_format
from google.protobuf.message import DecodeError

from ... import __version__
from ..engine import MODEL_NAME
from ..errors import ApiError, shown
from ..oip import (
    ALIAS_VERSION,
    NO_CLASSIFICATION,
    InferCall,
    Tensor,
    by_name,
    bytes_from_wire,
    bytes_to_wire,
    check_counts,
    check_shape,
    fp32_from_wire,
    model_config,
    parameters,
    serve_infer,
    served_model,
    statistics_of,
)
from . import predict_v2_pb2 as pb

__all__ = ["GRPC_SERVICE", "start_grpc"]

logger = logging.getLogger("mgsv_sk.serve")
GRPC_SERVICE = "inference.GRPCInferenceService"
#: A gRPC connection without a call for this long is closed (its client reconnects).
_IDLE_MS = 60_000
#: Calls one connection may have open (HTTP/2 streams); its client queues the rest.
_STREAMS = 32
#: A connection is closed (GOAWAY, then ``body_seconds`` for its calls to end) after this
#: long, so a call whose message never arrives ends; clients reconnect on their own.
_AGE_MS = 300_000
_CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 404: grpc.StatusCode.NOT_FOUND,
          408: grpc.StatusCode.DEADLINE_EXCEEDED, 413: grpc.StatusCode.RESOURCE_EXHAUSTED,
          422: grpc.StatusCode.INVALID_ARGUMENT, 429: grpc.StatusCode.RESOURCE_EXHAUSTED,
          501: grpc.StatusCode.UNIMPLEMENTED, 503: grpc.StatusCode.UNAVAILABLE,
          499: grpc.StatusCode.CANCELLED, 504: grpc.StatusCode.DEADLINE_EXCEEDED}


def _peer_host(context: grpc.ServicerContext) -> str:
    """``ipv4:127.0.0.1:5000`` / ``ipv6:[::1]:5000`` -> the address without the port."""
    peer = context.peer() or "unknown"
    address = peer.split(":", 1)[1] if ":" in peer else peer
    return address.rsplit(":", 1)[0].strip("[]") if ":" in address else address


def _value(parameter: Any) -> Any:
    kind = parameter.WhichOneof("parameter_choice")
    return None if kind is None else getattr(parameter, kind)


#: The typed ``contents`` field each datatype the model reads is sent in.
_CONTENTS = {"FP32": "fp32_contents", "BYTES": "bytes_contents"}


def _inputs(request: Any) -> dict[str, Tensor]:
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise ApiError(400, f"raw_input_contents holds {len(raw)} tensors for "
                            f"{len(request.inputs)} inputs; send one per input or none")
    if raw and any(item.HasField("contents") for item in request.inputs):
        raise ApiError(400, "the request has both raw_input_contents and an input's "
                            "contents; send the tensors one way (the protocol allows only "
                            "one)")
    out = []
    for i, item in enumerate(request.inputs):
        datatype = item.datatype.upper()
        shape = check_shape(item.name, list(item.shape))
        data: Any
        if raw:
            data = (fp32_from_wire(item.name, raw[i]) if datatype == "FP32" else
                    bytes_from_wire(item.name, raw[i]) if datatype == "BYTES" else raw[i])
        elif datatype in _CONTENTS:
            data = getattr(item.contents, _CONTENTS[datatype])
            other = [field.name for field, values in item.contents.ListFields()
                     if field.name != _CONTENTS[datatype] and values]
            if other and not data:
                raise ApiError(400, f"input {shown(item.name)}: {datatype} data go in "
                                    f"contents.{_CONTENTS[datatype]}, got {other[0]}")
            data = np.asarray(data, np.float32) if datatype == "FP32" else list(data)
        else:
            data = []
        out.append(Tensor(item.name, datatype, shape, data))
    return by_name(out)


def _typed_count(item: Any) -> int:
    """Elements of an input's typed contents in the field its datatype reads."""
    field = _CONTENTS.get(item.datatype.upper())
    return len(getattr(item.contents, field)) if field else 0


def _decode(request: Any, client: str) -> InferCall:
    check_counts(len(request.parameters), len(request.inputs), len(request.outputs),
                 ((i.name, i.datatype, len(i.parameters), _typed_count(i))
                  for i in request.inputs),
                 ((o.name, len(o.parameters)) for o in request.outputs))
    given = {name: _value(p) for name, p in request.parameters.items()}
    if any("classification" in o.parameters for o in request.outputs):
        raise ApiError(400, NO_CLASSIFICATION)
    outputs: dict[str, bool | None] | None = (
        {o.name: None for o in request.outputs} if request.outputs else None)
    return InferCall(_inputs(request), parameters(given), id=request.id or None,
                     outputs=outputs, client=client)


def _encode(version: str, outputs: list[Tensor], call: InferCall) -> Any:
    response = pb.ModelInferResponse(model_name=MODEL_NAME, model_version=version,
                                     id=call.id or "")
    for tensor in outputs:
        response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        response.raw_output_contents.append(
            bytes_to_wire(tensor.data) if tensor.datatype == "BYTES"
            else np.ascontiguousarray(tensor.data, "<f4").tobytes())
    for stage, seconds in call.timings.items():
        response.parameters[f"{stage}_ms"].double_param = round(seconds * 1000.0, 3)
    return response


class _Service:
    def __init__(self, state: Any) -> None:
        self.state = state

    async def server_live(self, _: Any, __: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, _: Any, __: Any) -> Any:
        return pb.ServerReadyResponse(ready=self.state.model is not None)

    async def model_ready(self, request: Any, _: Any) -> Any:
        model = self.state.model
        ready = (model is not None and request.name == MODEL_NAME
                 and request.version in ("", model.version, ALIAS_VERSION))
        return pb.ModelReadyResponse(ready=ready)

    async def server_metadata(self, _: Any, __: Any) -> Any:
        return pb.ServerMetadataResponse(name="mgsv-sk", version=__version__,
                                         extensions=["statistics"])

    async def model_metadata(self, request: Any, _: Any) -> Any:
        meta = served_model(self.state, request.name, request.version).metadata({})
        tensors = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=meta["name"], versions=meta["versions"], platform=meta["platform"],
            inputs=[tensors(name=t["name"], datatype=t["datatype"], shape=t["shape"])
                    for t in meta["inputs"]],
            outputs=[tensors(name=t["name"], datatype=t["datatype"], shape=t["shape"])
                     for t in meta["outputs"]])

    async def model_config(self, request: Any, _: Any) -> Any:
        config = model_config(served_model(self.state, request.name, request.version),
                              self.state.config.public())
        return json_format.ParseDict({"config": config}, pb.ModelConfigResponse())

    async def model_statistics(self, request: Any, _: Any) -> Any:
        # one model (which must be loaded) when named; none named: every model
        model = (served_model(self.state, request.name, request.version) if request.name
                 else self.state.model)
        return json_format.ParseDict(statistics_of(model), pb.ModelStatisticsResponse())

    async def model_infer(self, request: Any, context: Any) -> Any:
        client = _peer_host(context)

        async def read() -> Any:
            return request

        return await serve_infer(self.state, request.model_name, request.model_version,
                                 client, read, lambda r: _decode(r, client), _encode)


class _Malformed:
    """A request whose bytes are not its message (what the deserializer gives instead of
    raising: grpcio would answer INTERNAL and log a traceback for each)."""


def _reader(request_type: Any) -> Callable[[bytes], Any]:
    def read(data: bytes) -> Any:
        try:
            return request_type.FromString(data)
        except DecodeError:
            return _Malformed()
    return read


#: The calls the per-client share of inference places bounds: not charged to the pace.
_BOUNDED = frozenset(f"/{GRPC_SERVICE}/{name}" for name in ("ModelInfer", "ModelStreamInfer"))


def _malformed(request_type: Any) -> str:
    return (f"the request is not a valid inference.{request_type.__name__} message; "
            "send the KServe v2 protocol's message")


async def _counted(state: Any, route: str, method: Callable[[Any, Any], Awaitable[Any]],
                   request: Any, context: Any, malformed: str
                   ) -> tuple[Any, grpc.StatusCode, str]:
    """``method(request, context)`` -> (response or None, status code, error message): an
    ApiError becomes its status code, a request that is not its message INVALID_ARGUMENT,
    anything else INTERNAL (logged); counted in the HTTP metrics under a closed set of
    labels. A client past its rate (:class:`..admission.Pacer`, shared with HTTP) waits
    first: the event loop runs every call's handler, as it reads every HTTP request
    (inference that runs is not charged, its share of inference places bounds it, but
    makes its client active; an inference call refused or malformed is charged after)."""
    peer, loop = _peer_host(context), asyncio.get_running_loop()
    bounded = route in _BOUNDED
    wait = state.pacer.wait(peer, loop.time(), charge=not bounded)
    if wait > 0:
        await asyncio.sleep(wait)
    began = time.perf_counter()
    code, message, response = grpc.StatusCode.OK, "", None
    try:
        if isinstance(request, _Malformed):  # a new error each call (its own traceback)
            raise ApiError(400, malformed)
        response = await method(request, context)
    except ApiError as exc:
        code, message = _CODES.get(exc.status, grpc.StatusCode.INVALID_ARGUMENT), exc.message
    except Exception:
        logger.exception("unexpected error in %s", route)
        code, message = (grpc.StatusCode.INTERNAL,
                         "internal error; the server log has the details")
    finally:
        state.metrics.requests.labels(route, "GRPC", code.name).inc()
        state.metrics.latency.labels(route).observe(time.perf_counter() - began)
    if bounded and code != grpc.StatusCode.OK:  # its debt delays the client's next call
        state.pacer.charge(peer, loop.time())
    return response, code, message


def _handler(state: Any, name: str, method: Callable[[Any, Any], Awaitable[Any]],
             request_type: Any, response_type: Any) -> Any:
    """``method`` as a unary gRPC handler (errors and metrics as :func:`_counted`)."""
    route, malformed = f"/{GRPC_SERVICE}/{name}", _malformed(request_type)

    async def call(request: Any, context: Any) -> Any:
        response, code, message = await _counted(state, route, method, request, context,
                                                 malformed)
        if code != grpc.StatusCode.OK:
            await context.abort(code, message)
        return response

    return grpc.unary_unary_rpc_method_handler(
        call, request_deserializer=_reader(request_type),
        response_serializer=response_type.SerializeToString)


def _stream_handler(state: Any, infer: Callable[[Any, Any], Awaitable[Any]]) -> Any:
    """Triton's ``ModelStreamInfer``: each ``ModelInferRequest`` of the stream answered in
    turn, as ``ModelInfer`` answers it, on the stream; an error is that message's
    ``error_message`` and the stream goes on (as Triton's clients expect). One message of a
    stream is in progress at a time, so a stream holds at most one admission place."""
    name = "ModelStreamInfer"
    route, malformed = f"/{GRPC_SERVICE}/{name}", _malformed(pb.ModelInferRequest)

    async def stream(requests: Any, context: Any) -> AsyncIterator[Any]:
        async for request in requests:
            response, code, message = await _counted(state, route, infer, request, context,
                                                     malformed)
            if code == grpc.StatusCode.OK:
                yield pb.ModelStreamInferResponse(infer_response=response)
            else:  # the request's id, so a client can tell which message failed
                named = pb.ModelInferResponse(
                    id="" if isinstance(request, _Malformed) else request.id)
                yield pb.ModelStreamInferResponse(error_message=message, infer_response=named)

    return grpc.stream_stream_rpc_method_handler(
        stream, request_deserializer=_reader(pb.ModelInferRequest),
        response_serializer=pb.ModelStreamInferResponse.SerializeToString)


async def start_grpc(state: Any, address: str) -> Any:
    """Serve ``inference.GRPCInferenceService`` on ``address`` (``host:port``) on the
    running event loop; returns the started ``grpc.aio.Server`` (``await stop(grace)``
    ends it).

    Raises
    ------
    RuntimeError
        The address cannot be bound (in use, or not an address of this machine).
    """
    service = _Service(state)
    methods = {
        "ServerLive": (service.server_live, pb.ServerLiveRequest, pb.ServerLiveResponse),
        "ServerReady": (service.server_ready, pb.ServerReadyRequest, pb.ServerReadyResponse),
        "ModelReady": (service.model_ready, pb.ModelReadyRequest, pb.ModelReadyResponse),
        "ServerMetadata": (service.server_metadata, pb.ServerMetadataRequest,
                           pb.ServerMetadataResponse),
        "ModelMetadata": (service.model_metadata, pb.ModelMetadataRequest,
                          pb.ModelMetadataResponse),
        "ModelInfer": (service.model_infer, pb.ModelInferRequest, pb.ModelInferResponse),
        "ModelStatistics": (service.model_statistics, pb.ModelStatisticsRequest,
                            pb.ModelStatisticsResponse),
        "ModelConfig": (service.model_config, pb.ModelConfigRequest, pb.ModelConfigResponse),
    }
    handlers = {name: _handler(state, name, *spec) for name, spec in methods.items()}
    handlers["ModelStreamInfer"] = _stream_handler(state, service.model_infer)
    config = state.config
    server = grpc.aio.server(
        handlers=[grpc.method_handlers_generic_handler(GRPC_SERVICE, handlers)],
        options=[("grpc.max_receive_message_length", config.max_json_bytes),
                 ("grpc.so_reuseport", 0),
                 # a connection that never completes its handshake, or idles, is closed
                 # (grpcio's defaults: 120 s and never); a channel reconnects on its own
                 ("grpc.server_handshake_timeout_ms", int(config.header_seconds * 1000)),
                 ("grpc.max_connection_idle_ms", _IDLE_MS),
                 ("grpc.max_concurrent_streams", _STREAMS),
                 # its own share of the descriptors: past it grpcio refuses a connection
                 # (it cannot close an idle one to make room, as the HTTP port does)
                 ("grpc.max_allowed_incoming_connections", max(1, config.connections // 2)),
                 ("grpc.max_connection_age_ms", _AGE_MS),
                 ("grpc.max_connection_age_grace_ms", int(config.body_seconds * 1000))])
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise RuntimeError(f"cannot listen for gRPC on {address}: {exc}") from exc
    if port == 0:
        raise RuntimeError(f"cannot listen for gRPC on {address}; is the port in use?")
    await server.start()
    return server
