"""The Open Inference Protocol as its reference clients speak it: ``tritonclient.http`` and
``tritonclient.grpc``, unmodified, against ``mgsv-sk serve`` on 127.0.0.1 (HTTP and gRPC
from one app). Every call the protocol defines for a model; answers equal the runtime's.
"""

from __future__ import annotations

import gzip
import json
import time

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("av")
httpclient = pytest.importorskip("tritonclient.http")
grpcclient = pytest.importorskip("tritonclient.grpc")

from _serve import ThreadedServer, fixture_dir, free_port, one_lane_held, wait_until  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from mgsv_sk.serve import ServeConfig, ServedModel, create_app  # noqa: E402

FRAMES = np.random.default_rng(3).normal(size=(5, 512)).astype(np.float32)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> ServedModel:
    fx = fixture_dir(tmp_path_factory)
    return ServedModel.load(fx / "bundle", fx / "catalogue")


@pytest.fixture(scope="module")
def served(model):
    grpc_port = free_port()
    app = create_app(model, config=ServeConfig(workers=2, queue_size=4),
                     grpc_address=f"127.0.0.1:{grpc_port}")
    with ThreadedServer(app) as server:
        yield server, grpc_port


@pytest.fixture(scope="module")
def http(served):
    server, _ = served
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.port}", network_timeout=60)
    yield client
    client.close()


@pytest.fixture(scope="module")
def grpc_client(served):
    _, port = served
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
    yield client
    client.close()


def msg(model: ServedModel, k: int, moments: int) -> pd.DataFrame:
    query = pd.DataFrame({"video_id": ["q"], "video_segment_duration": [5.0]})
    return model.grounder.rank(query, k=k, features=({"q": FRAMES}, {}),
                               moments_per_track=moments)


def smg(model: ServedModel, music_id: str) -> pd.DataFrame:
    query = pd.DataFrame({"video_id": ["q"], "video_segment_duration": [5.0],
                          "music_id": [music_id]})
    return model.grounder.predict(query, features=({"q": FRAMES}, {}))


def check_msg(result, want: pd.DataFrame, names=("music_id", "score", "moments")) -> None:
    if "music_id" in names:
        got = [m.decode() if isinstance(m, bytes) else m for m in result.as_numpy("music_id")]
        assert got == want["music_id"].tolist()
    if "score" in names:
        np.testing.assert_allclose(result.as_numpy("score"), want["score"], rtol=1e-6)
    if "moments" in names:
        rows = (want["windows"].tolist() if "windows" in want else
                [[w] for w in want[["start", "end", "moment_score"]].to_numpy().tolist()])
        width = max(len(r) for r in rows)  # rows of -1 pad a track with fewer moments
        padded = [list(r) + [[-1.0, -1.0, -1.0]] * (width - len(r)) for r in rows]
        np.testing.assert_allclose(result.as_numpy("moments"), padded, rtol=1e-6)


# -- HTTP -------------------------------------------------------------------------------
def test_http_health_metadata_and_versions(http, model):
    assert http.is_server_live() and http.is_server_ready()
    assert http.is_model_ready("mgsv")
    assert http.is_model_ready("mgsv", "1") and http.is_model_ready("mgsv", model.version)
    assert not http.is_model_ready("mgsv", "7") and not http.is_model_ready("other")
    server = http.get_server_metadata()
    assert server["name"] == "mgsv-sk" and "binary_tensor_data" in server["extensions"]
    for version in ("", "1", model.version):
        meta = http.get_model_metadata("mgsv", version)
        assert meta["versions"] == [model.version]
        assert meta["inputs"][0] == {"name": "video_frames", "datatype": "FP32",
                                     "shape": [-1, 512]}
        assert "/" not in meta["parameters"]["catalogue"]  # no server path
    with pytest.raises(InferenceServerException, match="no version '7'"):
        http.get_model_metadata("mgsv", "7")
    with pytest.raises(InferenceServerException, match="no model 'other'"):
        http.get_model_metadata("other")


@pytest.mark.parametrize("binary_in", [True, False])
@pytest.mark.parametrize("binary_out", [True, False, None])
def test_http_infer_json_and_binary_tensors(http, model, binary_in, binary_out):
    frames = httpclient.InferInput("video_frames", list(FRAMES.shape), "FP32")
    frames.set_data_from_numpy(FRAMES, binary_data=binary_in)
    # None: no outputs named, so the client asks binary_data_output for all of them
    outputs = None if binary_out is None else [
        httpclient.InferRequestedOutput(n, binary_data=binary_out)
        for n in ("music_id", "score", "moments")]
    result = http.infer("mgsv", [frames], outputs=outputs, request_id="r7",
                        parameters={"k": 3, "moments_per_track": 2})
    check_msg(result, msg(model, 3, 2))
    response = result.get_response()
    assert response["id"] == "r7" and response["model_version"] == model.version
    for output in response["outputs"]:
        assert ("data" not in output) == (binary_out is not False)


def test_http_requested_outputs_only_and_mixed_binary(http, model):
    frames = httpclient.InferInput("video_frames", list(FRAMES.shape), "FP32")
    frames.set_data_from_numpy(FRAMES)
    result = http.infer("mgsv", [frames], model_version="1", parameters={"k": 4}, outputs=[
        httpclient.InferRequestedOutput("score", binary_data=False),
        httpclient.InferRequestedOutput("music_id", binary_data=True)])
    assert [o["name"] for o in result.get_response()["outputs"]] == ["music_id", "score"]
    assert result.as_numpy("moments") is None
    check_msg(result, msg(model, 4, 1), names=("music_id", "score"))


def test_http_smg_async_and_compressed(http, model):
    frames = httpclient.InferInput("video_frames", list(FRAMES.shape), "FP32")
    frames.set_data_from_numpy(FRAMES)
    track = httpclient.InferInput("music_id", [1], "BYTES")
    track.set_data_from_numpy(np.array([b"song_c"], dtype=object))
    want = smg(model, "song_c")
    for compression in (None, "gzip", "deflate"):
        result = http.async_infer("mgsv", [frames, track], model_version=model.version,
                                  request_compression_algorithm=compression,
                                  response_compression_algorithm=compression).get_result()
        check_msg(result, want)


def test_http_errors_reach_the_client(http):
    frames = httpclient.InferInput("video_frames", [2, 100], "FP32")
    frames.set_data_from_numpy(np.ones((2, 100), np.float32))
    with pytest.raises(InferenceServerException, match=r"shape \[F, 512\]"):
        http.infer("mgsv", [frames])
    good = httpclient.InferInput("video_frames", list(FRAMES.shape), "FP32")
    good.set_data_from_numpy(FRAMES)
    with pytest.raises(InferenceServerException, match="unknown output"):
        http.infer("mgsv", [good], outputs=[httpclient.InferRequestedOutput("logits")])
    with pytest.raises(InferenceServerException, match="no version '2'"):
        http.infer("mgsv", [good], model_version="2")


@pytest.mark.parametrize("value", [3e38, -1e38])
def test_finite_frames_the_model_cannot_score_are_the_clients_error(http, grpc_client, model,
                                                                      value):
    """Frames of finite numbers too large for float32 arithmetic pass the input checks but
    overflow inside the model: a 400 (gRPC INVALID_ARGUMENT) naming the frames, for MsG and
    SmG, never a 500; the server answers the next good request as before."""
    huge = np.full(FRAMES.shape, value, np.float32)
    track = np.array([b"song_c"], dtype=object)
    for client, status in ((httpclient, "400"), (grpcclient, "StatusCode.INVALID_ARGUMENT")):
        server = http if client is httpclient else grpc_client
        frames = client.InferInput("video_frames", list(huge.shape), "FP32")
        frames.set_data_from_numpy(huge)
        song = client.InferInput("music_id", [1], "BYTES")
        song.set_data_from_numpy(track)
        for inputs in ([frames], [frames, song]):
            with pytest.raises(InferenceServerException, match="video_frames: .*too large") as err:
                server.infer("mgsv", inputs)
            assert err.value.status() == status
        good = client.InferInput("video_frames", list(FRAMES.shape), "FP32")
        good.set_data_from_numpy(FRAMES)
        check_msg(server.infer("mgsv", [good], parameters={"k": 2}), msg(model, 2, 1))


def test_raw_binary_request_without_content_type(served, model):
    """The binary extension by hand: a JSON header, then raw little-endian floats."""
    import httpx

    server, _ = served
    header = json.dumps({"inputs": [{"name": "video_frames", "datatype": "FP32",
                                     "shape": list(FRAMES.shape),
                                     "parameters": {"binary_data_size": FRAMES.nbytes}}],
                         "parameters": {"k": 2, "binary_data_output": False}}).encode()
    body = header + FRAMES.astype("<f4").tobytes()
    response = httpx.post(f"{server.url}/v2/models/mgsv/versions/1/infer",
                          content=gzip.compress(body), timeout=60, headers={
                              "Inference-Header-Content-Length": str(len(header)),
                              "Content-Encoding": "gzip"})
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    assert outputs["music_id"]["data"] == msg(model, 2, 1)["music_id"].tolist()
    bad = httpx.post(f"{server.url}/v2/models/mgsv/infer", content=body, timeout=60,
                     headers={"Inference-Header-Content-Length": "9" * 5000})
    assert bad.status_code == 400 and "at most 18 digits" in bad.json()["error"]
    short = httpx.post(f"{server.url}/v2/models/mgsv/infer", content=body[:-4], timeout=60,
                       headers={"Inference-Header-Content-Length": str(len(header))})
    assert short.status_code == 400 and "binary_data_size" in short.json()["error"]
    floated = header.replace(b'"binary_data_size": %d' % FRAMES.nbytes,
                             b'"binary_data_size": %d.0' % FRAMES.nbytes)
    response = httpx.post(f"{server.url}/v2/models/mgsv/infer", content=floated + body[
        len(header):], timeout=60, headers={"Inference-Header-Content-Length": str(
            len(floated))})
    assert response.status_code == 400
    assert "binary_data_size must be an integer count of bytes" in response.json()["error"]


# -- gRPC -------------------------------------------------------------------------------
def test_grpc_health_metadata_and_versions(grpc_client, model):
    assert grpc_client.is_server_live() and grpc_client.is_server_ready()
    assert grpc_client.is_model_ready("mgsv") and grpc_client.is_model_ready("mgsv", "1")
    assert grpc_client.is_model_ready("mgsv", model.version)
    assert not grpc_client.is_model_ready("mgsv", "7")
    assert not grpc_client.is_model_ready("other")
    assert grpc_client.get_server_metadata(as_json=True)["name"] == "mgsv-sk"
    for version in ("", "1"):
        meta = grpc_client.get_model_metadata("mgsv", version, as_json=True)
        assert meta["versions"] == [model.version]
        assert meta["inputs"][0] == {"name": "video_frames", "datatype": "FP32",
                                     "shape": ["-1", "512"]}  # int64 as JSON strings
    with pytest.raises(InferenceServerException, match="no model 'other'"):
        grpc_client.get_model_metadata("other")


@pytest.mark.parametrize("outputs", [None, ["score"], ["moments", "music_id"]])
def test_grpc_infer_equals_the_runtime(grpc_client, model, outputs):
    frames = grpcclient.InferInput("video_frames", list(FRAMES.shape), "FP32")
    frames.set_data_from_numpy(FRAMES)
    requested = None if outputs is None else [grpcclient.InferRequestedOutput(n)
                                              for n in outputs]
    result = grpc_client.infer("mgsv", [frames], outputs=requested, request_id="g1",
                               parameters={"k": 3, "moments_per_track": 2})
    names = outputs or ["music_id", "score", "moments"]
    check_msg(result, msg(model, 3, 2), names=names)
    response = result.get_response(as_json=True)
    assert sorted(o["name"] for o in response["outputs"]) == sorted(names)
    assert response["id"] == "g1" and response["model_version"] == model.version


def test_grpc_smg_and_errors(grpc_client, model):
    frames = grpcclient.InferInput("video_frames", list(FRAMES.shape), "FP32")
    frames.set_data_from_numpy(FRAMES)
    track = grpcclient.InferInput("music_id", [1], "BYTES")
    track.set_data_from_numpy(np.array([b"song_c"], dtype=object))
    check_msg(grpc_client.infer("mgsv", [frames, track], model_version="1"),
              smg(model, "song_c"))
    done: list = []
    grpc_client.async_infer("mgsv", [frames, track], lambda result, error: done.append(
        (result, error)), compression_algorithm="gzip")
    for _ in range(300):
        if done:
            break
        time.sleep(0.1)
    assert done and done[0][1] is None, done
    check_msg(done[0][0], smg(model, "song_c"))
    missing = grpcclient.InferInput("music_id", [1], "BYTES")
    missing.set_data_from_numpy(np.array([b"nope"], dtype=object))
    with pytest.raises(InferenceServerException, match="not in the served catalogue") as err:
        grpc_client.infer("mgsv", [frames, missing])
    assert err.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException, match="parameters.k") as err:
        grpc_client.infer("mgsv", [frames], parameters={"k": 0})
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    with pytest.raises(InferenceServerException, match="no model 'other'"):
        grpc_client.infer("other", [frames])
    with pytest.raises(InferenceServerException, match="'video_frames' is given twice") as err:
        grpc_client.infer("mgsv", [frames, frames])
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"


def test_statistics_extension_over_http_and_grpc(http, grpc_client, model):
    """Triton's statistics extension as tritonclient reads it: the calls made between two
    reads are counted, each stage has a count and a duration, and the executions add up
    to the requests they answered."""
    def stats(read):
        (entry,) = read()
        return entry

    def http_stats(version=""):
        return http.get_inference_statistics("mgsv", version)["model_stats"]

    def grpc_stats():
        got = grpc_client.get_inference_statistics("mgsv", as_json=True)["model_stats"]
        return [json.loads(json.dumps(e)) for e in got]

    before = stats(http_stats)
    frames = httpclient.InferInput("video_frames", list(FRAMES.shape), "FP32")
    frames.set_data_from_numpy(FRAMES)
    for _ in range(3):
        http.infer("mgsv", [frames])
    tensor = grpcclient.InferInput("video_frames", list(FRAMES.shape), "FP32")
    tensor.set_data_from_numpy(FRAMES)
    grpc_client.infer("mgsv", [tensor], model_version="1")
    wrong = httpclient.InferInput("video_frames", [2, 7], "FP32")
    wrong.set_data_from_numpy(np.zeros((2, 7), np.float32))
    with pytest.raises(InferenceServerException, match="shape"):
        http.infer("mgsv", [wrong])

    after = stats(http_stats)
    assert stats(lambda: http_stats("1")) == after  # by version, the same counters
    assert stats(lambda: http.get_inference_statistics()["model_stats"])["name"] == "mgsv"
    g = stats(grpc_stats)  # the same counters over gRPC (uint64 fields read as strings)
    assert int(g["inference_count"]) == after["inference_count"]
    assert after["name"] == "mgsv" and after["version"] == model.version
    s0, s1 = before["inference_stats"], after["inference_stats"]
    assert s1["success"]["count"] - s0["success"]["count"] == 4
    assert s1["fail"]["count"] - s0["fail"]["count"] == 1
    for stage in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert s1[stage]["count"] - s0[stage]["count"] == 4
        assert s1[stage]["ns"] > s0[stage]["ns"]
    assert s1["success"]["ns"] - s0["success"]["ns"] >= s1["compute_infer"]["ns"] - s0[
        "compute_infer"]["ns"]
    assert after["inference_count"] - before["inference_count"] == 4
    executions = after["execution_count"] - before["execution_count"]
    assert 1 <= executions <= 4
    assert sum(b["batch_size"] * b["compute_infer"]["count"] for b in after["batch_stats"]) \
        == after["inference_count"]
    assert after["last_inference"] >= before["last_inference"]
    assert after["last_inference"] > 1.6e12  # ms since 1970
    with pytest.raises(InferenceServerException, match="no version '7'"):
        http.get_inference_statistics("mgsv", "7")
    with pytest.raises(InferenceServerException, match="no model 'other'"):
        grpc_client.get_inference_statistics("other")
    assert "statistics" in http.get_server_metadata()["extensions"]
    assert "statistics" in grpc_client.get_server_metadata(as_json=True)["extensions"]


def test_model_config_over_http_and_grpc(http, grpc_client, model):
    """Triton's model configuration as tritonclient reads it (HTTP JSON, and gRPC decoded
    with tritonclient's own messages): the tensors of the metadata, the CPU lanes."""
    want_inputs = [{"name": "video_frames", "data_type": "TYPE_FP32", "dims": [-1, 512]},
                   {"name": "music_id", "data_type": "TYPE_STRING", "dims": [1],
                    "optional": True}]
    for version in ("", "1", model.version):
        config = http.get_model_config("mgsv", version)
        assert config["name"] == "mgsv" and config["max_batch_size"] == 0
        assert config["input"] == want_inputs
        assert [o["name"] for o in config["output"]] == ["music_id", "score", "moments"]
        assert config["output"][2]["dims"] == [-1, -1, 3]
        assert config["instance_group"] == [{"name": "mgsv", "kind": "KIND_CPU",
                                             "count": model.lanes}]
        assert config["parameters"]["catalogue_tracks"]["string_value"] == str(
            len(model.track_ids))
    message = grpc_client.get_model_config("mgsv", "1").config
    assert message.name == "mgsv" and message.max_batch_size == 0
    assert [(t.name, t.data_type, list(t.dims), t.optional) for t in message.input] == [
        ("video_frames", 11, [-1, 512], False), ("music_id", 13, [1], True)]  # FP32, STRING
    assert message.instance_group[0].count == model.lanes
    assert message.parameters["bundle_sha256"].string_value == model.checksum
    with pytest.raises(InferenceServerException, match="no version '7'"):
        http.get_model_config("mgsv", "7")
    with pytest.raises(InferenceServerException, match="no model 'other'"):
        grpc_client.get_model_config("other")


def test_grpc_stream_infer_answers_each_message_and_goes_on_after_an_error(grpc_client,
                                                                          model):
    """Triton's ModelStreamInfer as tritonclient streams it: each request answered on the
    stream as ModelInfer answers it; a bad one is its own error and the stream goes on."""
    import queue

    answers: queue.Queue = queue.Queue()
    grpc_client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        def send(frames, request_id):
            tensor = grpcclient.InferInput("video_frames", list(frames.shape), "FP32")
            tensor.set_data_from_numpy(frames)
            grpc_client.async_stream_infer("mgsv", [tensor], request_id=request_id,
                                           parameters={"k": 3, "moments_per_track": 2})

        send(FRAMES, "a")
        send(np.zeros((2, 7), np.float32), "bad")
        send(FRAMES, "b")
        got = [answers.get(timeout=60) for _ in range(3)]
    finally:
        grpc_client.stop_stream()
    (result_a, none_a), (no_result, error), (result_b, none_b) = got
    assert none_a is None and none_b is None and no_result is None
    assert "shape" in str(error)
    assert [r.get_response().id for r in (result_a, result_b)] == ["a", "b"]
    check_msg(result_a, msg(model, 3, 2))
    check_msg(result_b, msg(model, 3, 2))


def test_triton_extensions_not_served_say_so(http, grpc_client):
    """Triton's other extensions (shared memory, model repository, trace, logging): over
    HTTP a 501 naming the extension and what to do instead, over gRPC UNIMPLEMENTED."""
    calls = {"system shared memory": http.get_system_shared_memory_status,
             "CUDA shared memory": http.get_cuda_shared_memory_status,
             "model repository": lambda: http.load_model("mgsv"),
             "trace": lambda: http.get_trace_settings("mgsv"),
             "logging": http.get_log_settings}
    for what, call in calls.items():
        with pytest.raises(InferenceServerException) as err:
            call()
        assert err.value.status() == "501"
        assert f"does not implement Triton's {what} extension" in err.value.message()
    with pytest.raises(InferenceServerException) as err:
        grpc_client.get_model_repository_index()
    assert err.value.status() == "StatusCode.UNIMPLEMENTED"


def test_tritonclient_request_options(http, grpc_client):
    """The options tritonclient's infer sends as request parameters: timeout (us) is a
    deadline (one that passes before the model runs is 504 / DEADLINE_EXCEEDED), priority
    is accepted, a sequence's parameters are refused by name (not a stateful model), and
    the classification extension is refused over gRPC as over HTTP."""
    for client, module, late in ((http, httpclient, "504"),
                                 (grpc_client, grpcclient, "StatusCode.DEADLINE_EXCEEDED")):
        frames = module.InferInput("video_frames", list(FRAMES.shape), "FP32")
        frames.set_data_from_numpy(FRAMES)
        ok = client.infer("mgsv", [frames], timeout=60_000_000, priority=1)
        assert len(ok.as_numpy("music_id")) > 0
        with pytest.raises(InferenceServerException, match="longer than its timeout") as err:
            client.infer("mgsv", [frames], timeout=1)  # 1 us: gone before a thread takes it
        assert err.value.status() == late
        with pytest.raises(InferenceServerException, match="not a sequence"):
            client.infer("mgsv", [frames], sequence_id=7, sequence_start=True)
        with pytest.raises(InferenceServerException, match="classification extension"):
            client.infer("mgsv", [frames],
                         outputs=[module.InferRequestedOutput("score", class_count=2)])


def test_asyncio_clients(served, model):
    """tritonclient's asyncio clients (``tritonclient.http.aio``, ``tritonclient.grpc.aio``
    with its streaming call): concurrent calls, each the runtime's answer."""
    import asyncio

    http_aio = pytest.importorskip("tritonclient.http.aio")
    grpc_aio = pytest.importorskip("tritonclient.grpc.aio")
    server, grpc_port = served
    want = msg(model, 3, 1)

    async def run() -> None:
        for module, url in ((http_aio, f"127.0.0.1:{server.port}"),
                            (grpc_aio, f"127.0.0.1:{grpc_port}")):
            client = module.InferenceServerClient(url)
            try:
                frames = module.InferInput("video_frames", list(FRAMES.shape), "FP32")
                frames.set_data_from_numpy(FRAMES)
                results = await asyncio.gather(*[
                    client.infer("mgsv", [frames], parameters={"k": 3}) for _ in range(3)])
                for result in results:
                    check_msg(result, want)
                assert await client.is_model_ready("mgsv", "1")
            finally:
                await client.close()
        client = grpc_aio.InferenceServerClient(f"127.0.0.1:{grpc_port}")

        async def requests():
            for i in range(2):
                frames = grpc_aio.InferInput("video_frames", list(FRAMES.shape), "FP32")
                frames.set_data_from_numpy(FRAMES)
                yield {"model_name": "mgsv", "inputs": [frames], "request_id": f"s{i}",
                       "parameters": {"k": 3}}

        try:
            answers = [(r, e) async for r, e in client.stream_infer(requests())]
        finally:
            await client.close()
        assert [e for _, e in answers] == [None, None]
        assert [r.get_response().id for r, _ in answers] == ["s0", "s1"]
        check_msg(answers[0][0], want)

    asyncio.run(run())


def test_grpc_hostile_messages_get_their_own_status(served, grpc_client, caplog):
    # bytes that are not a ModelInferRequest: INVALID_ARGUMENT (grpcio alone answers
    # INTERNAL and logs a traceback for each); a 100,000-character input name: an error
    # the client can read (a message past its 16 KiB metadata limit is dropped as
    # RESOURCE_EXHAUSTED); k given as true: refused, not read as 1
    import grpc

    _, port = served
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        raw = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                  request_serializer=lambda b: b,
                                  response_deserializer=lambda b: b)
        for garbage in (b"\xff" * 50, b"\x0a\xff\xff\xff\xff\x0f"):
            with pytest.raises(grpc.RpcError) as err:
                raw(garbage, timeout=30)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "not a valid inference.ModelInferRequest" in err.value.details()
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    long = grpcclient.InferInput("n" * 100_000, list(FRAMES.shape), "FP32")
    long.set_data_from_numpy(FRAMES)
    with pytest.raises(InferenceServerException, match="inputs must be") as err:
        grpc_client.infer("mgsv", [long])
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert len(err.value.message()) < 1000
    frames = grpcclient.InferInput("video_frames", list(FRAMES.shape), "FP32")
    frames.set_data_from_numpy(FRAMES)
    with pytest.raises(InferenceServerException, match="parameters.k") as err:
        grpc_client.infer("mgsv", [frames], parameters={"k": True})
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    # the tensors both as raw_input_contents and as an input's contents: the protocol
    # allows one or the other, so which one counts would be a guess
    from tritonclient.grpc import service_pb2

    both = service_pb2.ModelInferRequest(model_name="mgsv")
    tensor = both.inputs.add(name="video_frames", datatype="FP32", shape=list(FRAMES.shape))
    tensor.contents.fp32_contents.extend(FRAMES.ravel().tolist())
    both.raw_input_contents.append(FRAMES.astype("<f4").tobytes())
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                    request_serializer=lambda m: m.SerializeToString(),
                                    response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as err:
            infer(both, timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "raw_input_contents and an input's contents" in err.value.details()
        both.ClearField("raw_input_contents")  # contents alone: answered
        assert infer(both, timeout=30)
        typed = service_pb2.ModelInferRequest(model_name="mgsv")  # FP32 sent as integers
        typed.inputs.add(name="video_frames", datatype="FP32", shape=list(FRAMES.shape)
                         ).contents.int_contents.extend([1] * FRAMES.size)
        with pytest.raises(grpc.RpcError) as err:
            infer(typed, timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "FP32 data go in contents.fp32_contents, got int_contents" in err.value.details()
        # on a stream: garbage, then a bad request, then a good one; each its own answer
        stream = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer",
                                       request_serializer=lambda b: b,
                                       response_deserializer=service_pb2.
                                       ModelStreamInferResponse.FromString)
        bad = service_pb2.ModelInferRequest(model_name="mgsv", id="no-such-model")
        bad.model_name = "other"
        answers = list(stream(iter([b"\xff" * 50, bad.SerializeToString(),
                                    both.SerializeToString()]), timeout=60))
        assert "not a valid inference.ModelInferRequest" in answers[0].error_message
        assert "no model 'other'" in answers[1].error_message
        assert answers[1].infer_response.id == "no-such-model"
        assert not answers[2].error_message
        assert answers[2].infer_response.outputs[0].name == "music_id"
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


def test_grpc_requests_are_counted_before_they_are_read(served):
    """The same bounds as over HTTP: past them, INVALID_ARGUMENT before any is read."""
    import grpc
    from tritonclient.grpc import service_pb2

    def request():
        r = service_pb2.ModelInferRequest(model_name="mgsv")
        r.inputs.add(name="video_frames", datatype="FP32", shape=list(FRAMES.shape)
                     ).contents.fp32_contents.extend(FRAMES.ravel().tolist())
        return r

    many_parameters, many_outputs, many_ids, tensor_parameters = (request(), request(),
                                                                  request(), request())
    for i in range(65):
        many_parameters.parameters[f"p{i}"].int64_param = i
        tensor_parameters.inputs[0].parameters[f"p{i}"].int64_param = i
    for i in range(17):
        many_outputs.outputs.add(name=f"o{i}")
    many_ids.inputs.add(name="music_id", datatype="BYTES", shape=[32769]
                        ).contents.bytes_contents.extend([b"a"] * 32769)
    _, port = served
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                    request_serializer=lambda m: m.SerializeToString(),
                                    response_deserializer=lambda b: b)
        for message, said in ((many_parameters, "65 parameters; at most 64"),
                              (many_outputs, "17 outputs; at most 16"),
                              (many_ids, "32769 data elements in input 'music_id'"),
                              (tensor_parameters, "65 parameters in input 'video_frames'")):
            with pytest.raises(grpc.RpcError) as err:
                infer(message, timeout=30)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert said in err.value.details()
        assert infer(request(), timeout=30)  # within the bounds: answered


def test_grpc_calls_whose_message_never_comes_hold_no_place(model):
    # twelve calls open their stream and never send the request: a thirteenth client is
    # answered at once (grpcio's threaded server gave each a worker thread and a place of
    # its concurrent-call limit: every other call was RESOURCE_EXHAUSTED)
    import threading

    import grpc

    from mgsv_sk.serve.grpc import predict_v2_pb2 as pb

    port = free_port()
    app = create_app(model, config=ServeConfig(workers=1, queue_size=2),
                     grpc_address=f"127.0.0.1:{port}")
    release = threading.Event()

    def never():  # a request stream that sends nothing until released
        release.wait(60)
        yield from ()

    method = "/inference.GRPCInferenceService/ModelInfer"
    with ThreadedServer(app):
        channels = [grpc.insecure_channel(f"127.0.0.1:{port}") for _ in range(12)]
        hanging = [c.stream_unary(method, request_serializer=lambda m: m.SerializeToString(),
                                  response_deserializer=pb.ModelInferResponse.FromString
                                  ).future(never(), timeout=60) for c in channels]
        time.sleep(0.5)
        frames = grpcclient.InferInput("video_frames", list(FRAMES.shape), "FP32")
        frames.set_data_from_numpy(FRAMES)
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
        began = time.monotonic()
        result = client.infer("mgsv", [frames], client_timeout=20)
        assert time.monotonic() - began < 10 and result.as_numpy("score") is not None
        release.set()
        for call in hanging:
            call.cancel()
        for c in channels:
            c.close()
        client.close()


def test_a_grpc_call_its_client_cancelled_is_not_run(tmp_path_factory):
    """A call cancelled by its client while it waits for the lane is dropped unrun (as an
    HTTP request whose connection closes); the one already running finishes."""

    import grpc

    from mgsv_sk.serve.grpc import predict_v2_pb2 as pb

    model, release, ran = one_lane_held(fixture_dir(tmp_path_factory))
    port = free_port()
    request = pb.ModelInferRequest(model_name="mgsv")
    request.inputs.add(name="video_frames", datatype="FP32", shape=FRAMES.shape)
    request.raw_input_contents.append(FRAMES.tobytes())
    with ThreadedServer(create_app(model, grpc_address=f"127.0.0.1:{port}")):
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                    request_serializer=pb.ModelInferRequest.SerializeToString,
                                    response_deserializer=pb.ModelInferResponse.FromString)
        first = infer.future(request, timeout=60)
        wait_until(lambda: ran)
        leaving = [infer.future(request, timeout=60) for _ in range(3)]
        time.sleep(0.5)  # decoded and waiting for the lane
        for call in leaving:
            call.cancel()
        time.sleep(0.5)
        release.set()
        assert first.result(timeout=30).outputs
        time.sleep(0.3)
        assert ran == [1], ran  # the three cancelled were never run
        assert infer(request, timeout=30).outputs and ran == [1, 1]
        channel.close()


def test_a_silent_grpc_connection_is_closed(model):
    # grpcio alone waits 120 s for a connection's handshake; the server waits
    # header_seconds, as for HTTP headers
    import socket

    port = free_port()
    app = create_app(model, config=ServeConfig(workers=1, queue_size=2, header_seconds=1.0),
                     grpc_address=f"127.0.0.1:{port}")
    with ThreadedServer(app):
        sock = socket.create_connection(("127.0.0.1", port), timeout=15)
        began = time.monotonic()
        while sock.recv(1000):  # the server's HTTP/2 settings, then the close
            pass
        assert time.monotonic() - began < 5
        sock.close()


def test_grpc_calls_share_the_pace_of_their_address_with_http(model):
    """A gRPC client past ``max_client_rate`` while an HTTP client is active waits
    before each call (the event loop runs both transports' handlers); none is refused."""
    import httpx

    port = free_port()
    app = create_app(model, config=ServeConfig(workers=1, queue_size=2, max_client_rate=20),
                     grpc_address=f"127.0.0.1:{port}")
    with ThreadedServer(app) as running:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
        began = time.monotonic()
        assert all(client.is_server_live() for _ in range(40))  # alone: at once
        alone = time.monotonic() - began
        other = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.5"))
        assert other.get(f"{running.url}/v2/health/live").status_code == 200
        began = time.monotonic()
        assert all(client.is_server_live() for _ in range(40))  # another client active
        paced = time.monotonic() - began
        # 40 calls at 20 a second, the bucket emptied by the 40 before: about 2 s
        assert paced >= 1.5 > alone, (paced, alone)
        other.close()
        client.close()


def test_grpc_inference_calls_refused_before_inference_are_paced(model):
    """An inference call that runs is not charged to its client's pace; one refused before
    inference (a malformed tensor) costs only the event loop and is charged after it."""
    import grpc
    import httpx

    from mgsv_sk.serve.grpc import predict_v2_pb2 as pb

    port = free_port()
    app = create_app(model, config=ServeConfig(workers=1, queue_size=2, max_client_rate=20),
                     grpc_address=f"127.0.0.1:{port}")
    bad = pb.ModelInferRequest(model_name="mgsv")
    bad.inputs.add(name="video_frames", datatype="FP32", shape=[0, 512])
    bad.raw_input_contents.append(b"")
    with ThreadedServer(app) as running, grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        infer = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString)
        with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.5")) as other:
            assert other.get(f"{running.url}/v2/health/live").status_code == 200
            began = time.monotonic()
            for _ in range(60):
                with pytest.raises(grpc.RpcError) as refused:
                    infer(bad, timeout=30)
                assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            # 40 past the burst of 20, at 20 a second: 2 s
            assert time.monotonic() - began >= 1.5


def test_grpc_connections_are_capped_and_leave_http_its_own(model):
    """The gRPC port holds half of max_connections: more silent connections are refused
    (closed at once), so they cannot take the descriptors HTTP needs."""
    import socket

    import httpx

    port = free_port()
    app = create_app(model, config=ServeConfig(workers=1, queue_size=2, header_seconds=30,
                                               max_connections=4),
                     grpc_address=f"127.0.0.1:{port}")
    with ThreadedServer(app) as running:
        silent = [socket.create_connection(("127.0.0.1", port), timeout=15,
                                           source_address=(f"127.0.0.{i}", 0))
                  for i in range(2, 8)]
        time.sleep(0.5)
        closed = 0
        for sock in silent:
            sock.settimeout(2)
            try:
                while sock.recv(1000):  # HTTP/2 settings of an accepted one; no close
                    pass
                closed += 1
            except TimeoutError:
                pass
        assert closed == 4  # 2 held, the rest refused
        body = {"inputs": [{"name": "video_frames", "datatype": "FP32",
                            "shape": list(FRAMES.shape), "data": FRAMES.ravel().tolist()}]}
        assert httpx.post(f"{running.url}/v2/models/mgsv/infer", json=body,
                          timeout=30).status_code == 200
        for sock in silent:
            sock.close()


def test_cli_serves_grpc_beside_http_and_stops_on_sigterm(tmp_path_factory):
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    fx = fixture_dir(tmp_path_factory)
    port, grpc_port = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mgsv_sk", "serve", str(fx / "bundle"), "--port", str(port),
         "--grpc-port", str(grpc_port), "--workers", "1"],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if client.is_model_ready("mgsv", "1"):
                    break
            except InferenceServerException:
                pass
            time.sleep(0.2)
        else:
            pytest.fail("the gRPC service did not become ready")
        frames = grpcclient.InferInput("video_frames", list(FRAMES.shape), "FP32")
        frames.set_data_from_numpy(FRAMES)
        assert len(client.infer("mgsv", [frames]).as_numpy("score")) == 4
        assert httpclient.InferenceServerClient(f"127.0.0.1:{port}").is_server_ready()
        client.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_cli_grpc_port_errors(tmp_path_factory, capsys):
    from mgsv_sk.cli import main

    fx = fixture_dir(tmp_path_factory)
    assert main(["serve", str(fx / "bundle"), "--port", "8123", "--grpc-port", "8123"]) == 1
    assert "port of its own" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["serve", str(fx / "bundle"), "--grpc-port", "0"])
    with pytest.raises(ValueError, match="max_client_requests must be an integer >= 1"):
        ServeConfig(max_client_requests=0)
    with pytest.raises(ValueError, match="body_seconds must be a positive number"):
        ServeConfig(body_seconds=0)
    with pytest.raises(ValueError, match="header_seconds must be a positive number"):
        ServeConfig(header_seconds=float("nan"))
    with pytest.raises(ValueError, match="max_client_connections must be an integer >= 1"):
        ServeConfig(max_client_connections=0)
    assert ServeConfig(workers=2, queue_size=4).client_connections == 64
    assert ServeConfig(workers=4, queue_size=16).client_connections == 80
    for rate in (0, -1, float("inf"), float("nan"), True, "200"):
        with pytest.raises(ValueError, match="max_client_rate must be a positive number"):
            ServeConfig(max_client_rate=rate)
    assert ServeConfig(max_client_rate=None).max_client_rate is None
    with pytest.raises(SystemExit):
        main(["serve", str(fx / "bundle"), "--max-client-rate", "-5"])
