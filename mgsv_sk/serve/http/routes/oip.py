"""The Open Inference Protocol over HTTP: health, server and model metadata, model
readiness and ``infer``, each with and without ``/versions/{v}``.

``infer`` reads its body itself (any or no ``Content-Type``; gzip or deflate
``Content-Encoding``) as JSON tensors or with the binary tensor extension: a JSON header of
``Inference-Header-Content-Length`` bytes, then each input whose ``parameters`` hold
``binary_data_size`` as that many raw bytes, in the order of the inputs (FP32 little-endian;
BYTES as a 4-byte little-endian length before each element). Outputs come back as JSON or,
per output ``parameters.binary_data`` or the request's ``binary_data_output``, as binary
after the header, which then has its length in ``Inference-Header-Content-Length``.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import numpy as np
import simdjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from .... import __version__
from ...engine import MODEL_NAME
from ...errors import ApiError, shown, validation_message
from ...oip import (
    NO_CLASSIFICATION,
    InferCall,
    Tensor,
    by_name,
    bytes_from_wire,
    bytes_to_wire,
    check_counts,
    check_model,
    check_shape,
    check_version,
    fp32_from_wire,
    model_config,
    parameters,
    serve_infer,
    served_model,
    statistics_of,
)
from ...state import ServeState
from ..body import BodyLimits, bounded_int, disconnected, read_body
from ..schemas import InferRequest, InferResponse, errors

__all__ = ["SERVER_NAME", "client_address", "decode_http", "encode_http", "oip_router"]

SERVER_NAME = "mgsv-sk"
_MODEL = "/v2/models/{model_name}"
_VERSION = _MODEL + "/versions/{model_version}"


def client_address(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """A pydantic JSON schema with its ``$defs`` substituted (an OpenAPI body schema
    cannot point into its own ``$defs``)."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return walk(defs[ref.rsplit("/", 1)[1]])
            return {k: walk(v) for k, v in node.items()}
        return [walk(v) for v in node] if isinstance(node, list) else node

    return dict(walk(schema))


_INFER_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": _inline(InferRequest.model_json_schema())}}}}


# -- decoding a request -------------------------------------------------------------------
def _json_document(body: bytes, header_length: str | None
                   ) -> tuple[dict[str, Any], dict[int, np.ndarray], bytes]:
    """The JSON header as Python objects, with each FP32 input's ``data`` taken out as a
    flat float64 array (keyed by the input's position), and the binary bytes after it.

    simdjson parses the numbers straight into a buffer: a 50 x 512 request's 25,600 numbers
    never become Python floats (orjson then ``array`` took 1.3 ms of the event loop's time a
    request, simdjson 0.6-0.8). Nested lists are flattened in order, as Triton's reader does;
    a string, null or boolean among the numbers is a 400."""
    size = bounded_int(header_length, "Inference-Header-Content-Length")
    if size is not None and size > len(body):
        raise ApiError(400, f"Inference-Header-Content-Length is {size}, but the body has "
                            f"only {len(body)} bytes")
    head, binary = (body, b"") if size is None else (body[:size], body[size:])
    try:  # a parser per call: its documents are valid only until it parses again
        parsed = simdjson.Parser().parse(head)
    except (ValueError, RuntimeError) as exc:  # syntax, UTF-8, depth (RuntimeError)
        why = str(exc).split(". ")[0].rstrip(".")  # the parser's first sentence says it
        raise ApiError(400, f"the request body is not valid JSON ({why}); send an OIP "
                            "inference request: {\"inputs\": [...]}") from exc
    if not isinstance(parsed, simdjson.Object):
        raise ApiError(400, "the request body must be a JSON object: {\"inputs\": [...]}")
    _check_counts(parsed)
    # by key, not items(): items() converts every value, the numbers too (0.4 ms)
    document = {key: _plain(parsed[key]) for key in parsed.keys() if key != "inputs"}
    numbers: dict[int, np.ndarray] = {}
    inputs = parsed.get("inputs")
    if isinstance(inputs, simdjson.Array):
        document["inputs"] = [_input(i, item, numbers) for i, item in enumerate(inputs)]
    elif "inputs" in parsed:
        document["inputs"] = _plain(inputs)
    return document, numbers, binary


def _count(value: Any) -> int:
    """Entries of a parsed JSON array or object (0 for anything else)."""
    return len(value) if isinstance(value, (simdjson.Array, simdjson.Object)) else 0


def _check_counts(parsed: Any) -> None:
    """The request's inputs, outputs and parameters (its own and each tensor's) within
    the protocol's bounds (:func:`check_counts`), before any becomes a Python object."""
    inputs, outputs = parsed.get("inputs"), parsed.get("outputs")

    def objects(items: Any) -> Iterator[Any]:  # a generator: nothing read before the counts
        if isinstance(items, simdjson.Array):
            yield from (i for i in items if isinstance(i, simdjson.Object))

    check_counts(_count(parsed.get("parameters")), _count(inputs), _count(outputs),
                 ((i.get("name"), i.get("datatype"), _count(i.get("parameters")),
                   _count(i.get("data"))) for i in objects(inputs)),
                 ((o.get("name"), _count(o.get("parameters"))) for o in objects(outputs)))


def _plain(value: Any) -> Any:
    """A simdjson value as Python objects (dict, list, str, numbers, bool, None)."""
    if isinstance(value, simdjson.Object):
        return value.as_dict()
    return value.as_list() if isinstance(value, simdjson.Array) else value


def _input(position: int, item: Any, numbers: dict[int, np.ndarray]) -> Any:
    """One input object as a dict; its FP32 ``data`` goes to ``numbers[position]`` as a
    flat float64 array (left as an empty list in the dict)."""
    if not isinstance(item, simdjson.Object):
        return _plain(item)
    out = {key: _plain(item[key]) for key in item.keys() if key != "data"}
    data = item.get("data")
    datatype = out.get("datatype")
    if (isinstance(data, simdjson.Array) and isinstance(datatype, str)
            and datatype.upper() == "FP32"):
        try:
            numbers[position] = np.frombuffer(data.as_buffer(of_type="d"), np.float64)
        except TypeError as exc:  # a string, null, boolean or object among the numbers
            raise ApiError(400, f"{shown(out.get('name'))} data must be JSON numbers (a "
                                "string, null, boolean or object is among them)") from exc
        out["data"] = []
    elif "data" in item:
        out["data"] = _plain(data)
    return out


def _tensor(item: Any, binary: bytes, at: int, numbers: np.ndarray | None
            ) -> tuple[Tensor, int]:
    """One input, its data from JSON (FP32 numbers already parsed: ``numbers``) or from
    ``binary`` at offset ``at``."""
    name, datatype = item.name, item.datatype.upper()
    shape = check_shape(name, item.shape)
    size = (item.parameters or {}).get("binary_data_size")
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, int):
            raise ApiError(400, f"input {shown(name)}: binary_data_size must be an integer "
                                f"count of bytes, got {shown(size)}")
        if not 0 <= size <= len(binary) - at:
            raise ApiError(400, f"input {shown(name)}: binary_data_size {size!r} does not fit the "
                                f"{len(binary) - at} binary bytes left in the body")
        raw, at = binary[at: at + size], at + size
        data: Any = (fp32_from_wire(name, raw) if datatype == "FP32" else
                     bytes_from_wire(name, raw) if datatype == "BYTES" else raw)
    elif item.data is None:
        raise ApiError(400, f"input {shown(name)} has neither data nor binary_data_size")
    elif datatype == "FP32":  # float64 -> float32: a number past float32's range is inf
        with np.errstate(over="ignore"):
            data = (np.zeros(0, np.float32) if numbers is None else numbers.astype(np.float32))
    elif datatype == "BYTES":
        flat = np.asarray(item.data, dtype=object).ravel().tolist()
        data = [v.encode("utf-8") if isinstance(v, str) else v for v in flat]
        if not all(isinstance(v, bytes) for v in data):
            raise ApiError(400, f"input {shown(name)}: BYTES data must be strings")
    else:
        data = item.data
    return Tensor(name, datatype, shape, data), at


def _requested_outputs(request: InferRequest) -> dict[str, bool | None] | None:
    if request.outputs is None:
        return None
    wanted: dict[str, bool | None] = {}
    for output in request.outputs:
        given = output.parameters or {}
        if "classification" in given:
            raise ApiError(400, NO_CLASSIFICATION)
        binary = given.get("binary_data")
        if binary is not None and not isinstance(binary, bool):
            raise ApiError(400, f"output {shown(output.name)}: binary_data must be true or false")
        wanted[output.name] = binary
    return wanted


def decode_http(body: bytes, header_length: str | None, client: str) -> InferCall:
    """An HTTP ``infer`` body (JSON, or JSON then binary tensors) as an :class:`InferCall`."""
    document, numbers, binary = _json_document(body, header_length)
    given = document.pop("parameters", None)
    if given is not None and not isinstance(given, dict):
        raise ApiError(422, "parameters must be a JSON object")
    try:  # the request's own structure: a malformed request (400, as Triton answers it)
        request = InferRequest.model_validate(document)
    except ValidationError as exc:
        raise ApiError(400, validation_message(exc.errors())) from exc
    tensors, at = [], 0
    for i, item in enumerate(request.inputs):
        tensor, at = _tensor(item, binary, at, numbers.get(i))
        tensors.append(tensor)
    inputs = by_name(tensors)
    if at != len(binary):
        raise ApiError(400, f"{len(binary) - at} bytes of binary data follow the JSON header "
                            "but no input's binary_data_size claims them")
    binary_default = (given or {}).get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise ApiError(422, "parameters.binary_data_output must be true or false")
    return InferCall(inputs, parameters(given), id=request.id,
                     outputs=_requested_outputs(request), binary_default=binary_default,
                     client=client)


# -- encoding the answer ------------------------------------------------------------------
def _wire(tensor: Tensor) -> bytes:
    if tensor.datatype == "BYTES":
        return bytes_to_wire(tensor.data)
    return np.ascontiguousarray(tensor.data, dtype="<f4").tobytes()


def _json_data(tensor: Tensor) -> list[Any]:
    if tensor.datatype == "BYTES":
        return [b.decode("utf-8") for b in tensor.data]
    return list(np.asarray(tensor.data, np.float32).ravel().tolist())


def encode_http(version: str, outputs: list[Tensor], call: InferCall) -> Response:
    """The OIP response: JSON, or a JSON header then the binary outputs."""
    described, blobs = [], []
    for tensor in outputs:
        asked = (call.outputs or {}).get(tensor.name)
        out: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype,
                               "shape": tensor.shape}
        if call.binary_default if asked is None else asked:
            blobs.append(_wire(tensor))
            out["parameters"] = {"binary_data_size": len(blobs[-1])}
        else:
            out["data"] = _json_data(tensor)
        described.append(out)
    header = {"model_name": MODEL_NAME, "model_version": version,
              **({"id": call.id} if call.id is not None else {}), "outputs": described,
              "parameters": {f"{stage}_ms": round(s * 1000.0, 3)
                             for stage, s in call.timings.items()}}
    if not blobs:
        return JSONResponse(header)
    head = json.dumps(header, separators=(",", ":")).encode()
    return Response(head + b"".join(blobs), media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(head))})


# -- the router ---------------------------------------------------------------------------
def _both(router: APIRouter, method: str, suffix: str,
          endpoint: Callable[[Request, str, str | None], Awaitable[Any]],
          **options: Any) -> None:
    """Route ``endpoint(request, model_name, model_version)`` at the model's path and at
    its ``/versions/{model_version}`` path."""

    async def plain(request: Request, model_name: str) -> Any:
        return await endpoint(request, model_name, None)

    async def versioned(request: Request, model_name: str, model_version: str) -> Any:
        return await endpoint(request, model_name, model_version)

    for path, route in ((_MODEL + suffix, plain), (_VERSION + suffix, versioned)):
        route.__doc__ = endpoint.__doc__
        router.add_api_route(path, route, methods=[method], tags=["oip"],
                             name=f"{endpoint.__name__}{'_version' if route is versioned else ''}",
                             **options)


def _triton_routes(router: APIRouter, state: ServeState) -> None:
    """Triton's statistics extension and model configuration, at the model's paths."""

    @router.get("/v2/models/stats", tags=["oip"])  # before the model's own paths
    async def all_statistics() -> dict[str, Any]:
        """Every model's inference statistics (none until the model is loaded)."""
        return statistics_of(state.model)

    async def model_statistics(_: Request, model_name: str,
                               model_version: str | None) -> dict[str, Any]:
        """The model's inference statistics since it was loaded (Triton's statistics
        extension)."""
        return statistics_of(served_model(state, model_name, model_version))

    async def model_configuration(_: Request, model_name: str,
                                  model_version: str | None) -> dict[str, Any]:
        """The model as Triton's model configuration describes it."""
        return model_config(served_model(state, model_name, model_version),
                            state.config.public())

    _both(router, "GET", "/stats", model_statistics, responses=errors(404, 503))
    _both(router, "GET", "/config", model_configuration, responses=errors(404, 503))


def oip_router(state: ServeState) -> APIRouter:
    """The OIP routes. Those that only read state in memory (health, metadata,
    statistics) are ``async``: they answer on the event loop and never wait for a thread
    of the pool that sync routes share, which a busy server can fill. Under 8 clients'
    inference a liveness probe took 4.0-4.3 ms at the median (p99 15 ms) through the
    pool, 1.1-1.3 (p99 7) on the loop."""
    router = APIRouter()
    limits = BodyLimits(state.config.max_json_bytes, state.config.body_idle_seconds,
                        state.config.body_seconds)
    too_large = f"the request body is larger than {state.config.max_json_bytes} bytes"

    @router.get("/v2", tags=["oip"])
    async def server_metadata() -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": __version__,
                "extensions": ["binary_tensor_data", "statistics"]}

    @router.get("/v2/health/live", tags=["oip"])
    async def live() -> dict[str, bool]:
        return {"live": True}

    @router.get("/v2/health/ready", tags=["oip"], responses=errors(503))
    async def ready() -> dict[str, bool]:
        state.ready_model(probe=True)
        return {"ready": True}

    async def model_ready(_: Request, model_name: str,
                          model_version: str | None) -> dict[str, Any]:
        check_model(model_name)
        check_version(state.ready_model(probe=True), model_version)
        return {"name": MODEL_NAME, "ready": True}

    async def model_metadata(_: Request, model_name: str,
                             model_version: str | None) -> dict[str, Any]:
        return served_model(state, model_name, model_version).metadata(state.config.public())

    async def infer(request: Request, model_name: str, model_version: str | None) -> Response:
        """Frame features -> the top-k tracks with their moments (MsG), or the moments on
        one track when ``music_id`` is given (SmG)."""
        client = client_address(request)
        header = request.headers.get("inference-header-content-length")

        async def read() -> bytes:
            with state.body_room() as hold:
                return await read_body(request, limits, too_large, hold)

        return await serve_infer(state, model_name, model_version, client, read,
                                 lambda body: decode_http(body, header, client), encode_http,
                                 lambda: disconnected(request))

    _triton_routes(router, state)  # first: /v2/models/stats is not a model's path
    _both(router, "GET", "/ready", model_ready, responses=errors(404, 503))
    _both(router, "GET", "", model_metadata, responses=errors(404, 503))
    _both(router, "POST", "/infer", infer, response_model=InferResponse,
          openapi_extra=_INFER_BODY,
          responses=errors(400, 404, 408, 413, 415, 422, 429, 503, 504))
    return router
