"""The gRPC ``GRPCInferenceService`` given generated ``ModelInferRequest`` messages: any mix
of model names and versions, tensors of any name, datatype, shape and typed contents, raw
contents, request parameters of every ``InferParameter`` type, and requested outputs. The
property: an answer whose outputs hold as many elements as their shapes say, or a status
of the client's making (INVALID_ARGUMENT, NOT_FOUND, ...) with a readable message; never
INTERNAL or UNKNOWN (a server fault), and nothing logged as an error. The listed cases are
in tests/test_serve_oip.py."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("av")
grpc = pytest.importorskip("grpc")
service_pb2 = pytest.importorskip("tritonclient.grpc.service_pb2")

from _hostile import HOSTILE_FLOATS, HOSTILE_TEXT  # noqa: E402
from _serve import ThreadedServer, fixture_dir, free_port  # noqa: E402
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from mgsv_sk.serve import ServeConfig, ServedModel, create_app  # noqa: E402

pytestmark = pytest.mark.timeout(300)

#: What a client can cause; INTERNAL and UNKNOWN say the server failed.
CLIENTS_OWN = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
               grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED,
               grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNIMPLEMENTED,
               grpc.StatusCode.FAILED_PRECONDITION}
INT64 = st.integers(-2**63, 2**63 - 1)
TEXT = st.one_of(st.sampled_from(["", "mgsv", "1", "video_frames", "music_id", "score",
                                  "moments"]), HOSTILE_TEXT)


@pytest.fixture(scope="module")
def infer(tmp_path_factory):
    fx = fixture_dir(tmp_path_factory)
    model = ServedModel.load(fx / "bundle", fx / "catalogue")
    port = free_port()
    app = create_app(model, config=ServeConfig(workers=2, queue_size=4, max_video_seconds=6.0),
                     grpc_address=f"127.0.0.1:{port}")
    with ThreadedServer(app), grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                  request_serializer=lambda m: m.SerializeToString(),
                                  response_deserializer=service_pb2.ModelInferResponse.
                                  FromString), list(model.track_ids[:2])


def parameter(value) -> service_pb2.InferParameter:
    p = service_pb2.InferParameter()
    if isinstance(value, bool):
        p.bool_param = value
    elif isinstance(value, int):
        if value >= 2**63:
            p.uint64_param = value
        else:
            p.int64_param = value
    elif isinstance(value, float):
        p.double_param = value
    else:
        p.string_param = value
    return p


PARAMETER_VALUES = st.one_of(st.booleans(), INT64, st.integers(2**63, 2**64 - 1),
                             st.floats(allow_nan=True, allow_infinity=True), TEXT)
PARAMETER_NAMES = st.sampled_from(["k", "moments_per_track", "video_duration", "timeout",
                                   "priority", "binary_data_output", "sequence_id", "x"])
#: Typed contents: the field a client fills and what it puts there
CONTENTS = st.one_of(
    st.tuples(st.just("fp32_contents"), st.lists(HOSTILE_FLOATS, max_size=8)),
    st.tuples(st.just("fp64_contents"), st.lists(st.floats(), max_size=4)),
    st.tuples(st.just("int_contents"), st.lists(st.integers(-2**31, 2**31 - 1), max_size=4)),
    st.tuples(st.just("int64_contents"), st.lists(INT64, max_size=4)),
    st.tuples(st.just("bool_contents"), st.lists(st.booleans(), max_size=4)),
    st.tuples(st.just("bytes_contents"), st.lists(st.binary(max_size=40), max_size=3)))


@st.composite
def requests(draw, ids):
    """A ModelInferRequest: usually near a valid one (frames of some rows), each part
    possibly replaced by something hostile."""
    request = service_pb2.ModelInferRequest(
        model_name=draw(st.sampled_from(["mgsv"] * 8 + ["other", ""])),
        model_version=draw(st.sampled_from(["", "", "", "1", "1", "1", "7", "01"])),
        id=draw(st.one_of(st.just(""), TEXT)))
    rows = draw(st.sampled_from([1, 3, 3, 50, 0, 51]))
    frames = np.full((rows, 512), draw(st.one_of(st.just(0.5), HOSTILE_FLOATS)), np.float32)
    raw = draw(st.booleans())
    tensor = request.inputs.add(name="video_frames", datatype="FP32", shape=[rows, 512])
    if raw:
        request.raw_input_contents.append(frames.astype("<f4").tobytes())
    else:
        tensor.contents.fp32_contents.extend(frames.ravel().tolist())
    if draw(st.booleans()):  # a music_id: SMG
        music = request.inputs.add(name="music_id", datatype="BYTES", shape=[1])
        value = draw(st.one_of(st.sampled_from(list(ids)), TEXT)).encode("utf-8", "replace")
        if raw:
            request.raw_input_contents.append(len(value).to_bytes(4, "little") + value)
        else:
            music.contents.bytes_contents.append(value)
    for _ in range(draw(st.integers(0, 2))):  # hostile changes
        what = draw(st.sampled_from(["name", "datatype", "shape", "contents", "raw",
                                     "extra input", "parameter", "output",
                                     "input parameter"]))
        target = request.inputs[draw(st.integers(0, len(request.inputs) - 1))]
        if what == "name":
            target.name = draw(TEXT)
        elif what == "datatype":
            target.datatype = draw(st.one_of(st.sampled_from(
                ["FP16", "FP64", "INT64", "BYTES", "BOOL", "fp32", "UINT8"]), TEXT))
        elif what == "shape":
            target.ClearField("shape")
            target.shape.extend(draw(st.lists(INT64, max_size=4)))
        elif what == "contents":
            field, values = draw(CONTENTS)
            getattr(target.contents, field).extend(values)
        elif what == "raw":
            request.raw_input_contents.append(draw(st.binary(max_size=64)))
        elif what == "extra input":
            request.inputs.add(name=draw(TEXT), datatype="FP32", shape=[1]
                               ).contents.fp32_contents.append(1.0)
        elif what == "parameter":
            request.parameters[draw(PARAMETER_NAMES)].CopyFrom(
                parameter(draw(PARAMETER_VALUES)))
        elif what == "output":
            out = request.outputs.add(name=draw(TEXT))
            out.parameters["binary_data"].CopyFrom(parameter(draw(PARAMETER_VALUES)))
        else:
            target.parameters[draw(st.sampled_from(["binary_data_size", "x"]))].CopyFrom(
                parameter(draw(PARAMETER_VALUES)))
    return request


@given(data=st.data())
def test_model_infer_answers_any_request_or_refuses_it_as_the_clients(infer, data, caplog):
    call, ids = infer
    request = data.draw(requests(ids))
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        try:
            answer = call(request, timeout=60)
        except grpc.RpcError as err:
            assert err.code() in CLIENTS_OWN, (err.code(), err.details())
            assert err.details() and "Traceback" not in err.details()
        else:
            raw = list(answer.raw_output_contents)
            for i, out in enumerate(answer.outputs):
                count = math.prod(out.shape)
                if raw:  # the binary layout: one buffer per output, in order
                    width = 4 if out.datatype == "FP32" else None
                    if width is not None:
                        assert len(raw[i]) == width * count
                else:
                    held = (out.contents.fp32_contents if out.datatype == "FP32"
                            else out.contents.bytes_contents)
                    assert len(held) == count, (out.name, out.shape)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
