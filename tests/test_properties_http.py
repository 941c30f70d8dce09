"""Every HTTP endpoint given generated hostile requests (kept light: the service's own tests,
tests/test_serve.py, hold its behaviour and a schema fuzz). The property: a 2xx answer, or a
4xx/503 whose body is ``{"error": "..."}`` naming the problem, never a 500 and never a
traceback. Torch-free, as the service is."""

from __future__ import annotations

import json
from urllib.parse import quote

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
pytest.importorskip("av")
pytest.importorskip("soundfile")

from _hostile import HOSTILE_FLOATS, HOSTILE_TEXT  # noqa: E402
from _serve import fixture_dir  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from mgsv_sk.serve import ServeConfig, ServedModel, create_app  # noqa: E402

# a generated test that runs past this has hung (the default, 900 s, is for example fits)
pytestmark = pytest.mark.timeout(300)

GETS = ["/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/mgsv/ready",
        "/v2/models/mgsv", "/v2/models/stats", "/v2/models/mgsv/stats",
        "/v2/models/mgsv/versions/1/stats", "/v2/models/mgsv/config", "/metrics", "/"]


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    fx = fixture_dir(tmp_path_factory)
    model = ServedModel.load(fx / "bundle", fx / "catalogue")
    with TestClient(create_app(model, config=ServeConfig(workers=1, queue_size=2,
                                                         max_video_seconds=6.0))) as c:
        yield c


def answered_well(response) -> None:
    # 503: overloaded; 504: a request whose own timeout passed before the model ran it
    assert response.status_code < 500 or response.status_code in (503, 504), response.text
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error"} and body["error"] and "Traceback" not in body["error"]


@pytest.mark.parametrize("path", GETS)
def test_every_get_endpoint_answers(client, path):
    assert client.get(path).status_code == 200


JSON_VALUES = st.one_of(HOSTILE_FLOATS.map(float).filter(np.isfinite), HOSTILE_TEXT,
                        st.none(), st.booleans(), st.integers(-2, 10**6),
                        st.lists(st.floats(allow_nan=False), max_size=3))


@given(field=st.sampled_from(["name", "datatype", "shape", "data", "k", "video_duration",
                              "music_id", "moments_per_track", "timeout", "priority",
                              "sequence_id"]),
       value=JSON_VALUES, rows=st.sampled_from([0, 1, 3, 51]))
def test_infer_answers_hostile_bodies_with_an_error_body(client, field, value, rows):
    frames = np.ones((rows, 512), np.float32)
    body = {"inputs": [{"name": "video_frames", "datatype": "FP32",
                        "shape": list(frames.shape), "data": frames.ravel().tolist()}],
            "parameters": {}}
    if field in ("name", "datatype", "shape", "data"):
        body["inputs"][0][field] = value
    elif field == "music_id":
        body["inputs"].append({"name": "music_id", "datatype": "BYTES", "shape": [1],
                               "data": [value]})
    else:
        body["parameters"][field] = value
    answered_well(client.post("/v2/models/mgsv/infer", json=body))


#: Any JSON value, nested a few levels (objects, arrays, strings, numbers of any size)
ANY_JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
              st.floats(allow_nan=False, allow_infinity=False), HOSTILE_TEXT),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.sampled_from(["name", "datatype", "shape",
                                                             "data", "inputs", "x"]),
                                            inner, max_size=4)),
    max_leaves=20)


@given(data=ANY_JSON, datatype=st.sampled_from(["FP32", "fp32", "BYTES", "INT8", 3]),
       shape=st.one_of(st.just([2]), ANY_JSON), raw=st.booleans())
def test_infer_decoder_answers_any_json_tensor_with_an_error_or_its_numbers(
        data, datatype, shape, raw):
    """An input whose data, datatype and shape are any JSON (or the document itself is):
    decoded, or an ApiError naming the problem, never another exception; FP32 numbers
    nested any way come out flat, in order, as float32."""
    from mgsv_sk.serve.errors import ApiError
    from mgsv_sk.serve.http.routes.oip import decode_http

    document = data if raw else {"inputs": [{"name": "video_frames", "datatype": datatype,
                                             "shape": shape, "data": data}]}
    try:
        call = decode_http(json.dumps(document).encode(), None, "127.0.0.1")
    except ApiError as exc:
        assert 400 <= exc.status < 500 and str(exc)
        return
    if raw or datatype not in ("FP32", "fp32") or not isinstance(data, list):
        return
    flat: list[float] = []

    def walk(node):
        for v in node:
            walk(v) if isinstance(v, list) else flat.append(v)
    walk(data)
    got = call.inputs["video_frames"].data
    assert got.dtype == np.float32
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(got, np.asarray(flat, np.float64).astype(np.float32))


#: float32 values at the edges (each its own case: drawn from a strategy, the largest
#: finite one, which overflows inside the model, was one draw in a hundred)
FRAME_VALUES = [np.nan, np.inf, -np.inf, float(np.finfo(np.float32).max),
                -float(np.finfo(np.float32).max), 3e38, 1e30, 1e-45, -0.0]


@pytest.mark.parametrize("value", FRAME_VALUES)
@given(rows=st.sampled_from([1, 4, 51]), spread=st.booleans(),
       music_id=st.sampled_from([None, "song_a"]))
def test_infer_answers_frames_of_any_float32_value(client, value, rows, spread, music_id):
    """Frames of a valid shape whose numbers are any float32 (NaN, infinities, the largest
    finite ones, which overflow inside the model, subnormals, signed zeros), in one cell or
    all of them, sent as raw binary tensors: 200, or an error body, never a 500."""
    frames = np.ones((rows, 512), np.float32)
    if spread:
        frames[:] = np.float32(value)
    else:
        frames[rows // 2, 7] = np.float32(value)
    raw = frames.astype("<f4").tobytes()
    inputs = [{"name": "video_frames", "datatype": "FP32", "shape": list(frames.shape),
               "parameters": {"binary_data_size": len(raw)}}]
    if music_id is not None:
        inputs.append({"name": "music_id", "datatype": "BYTES", "shape": [1],
                       "data": [music_id]})
    head = json.dumps({"inputs": inputs}).encode()
    answered_well(client.post("/v2/models/mgsv/infer", content=head + raw,
                              headers={"Inference-Header-Content-Length": str(len(head))}))


@given(music_id=HOSTILE_TEXT, range_header=st.one_of(st.none(), HOSTILE_TEXT,
                                                     st.sampled_from(["bytes=0-", "bytes=-1",
                                                                      "bytes=5-2",
                                                                      "bytes=0-99999999"])),
       start=st.one_of(st.none(), HOSTILE_FLOATS.map(str), HOSTILE_TEXT))
def test_track_audio_answers_hostile_requests_with_an_error_body(client, music_id,
                                                                range_header, start):
    # headers are ASCII on the wire (the client refuses anything else itself)
    headers = {} if range_header is None else {"Range": range_header.encode(
        "ascii", "replace").decode("ascii").replace("\x00", "?")}
    params = {} if start is None else {"start": start}
    response = client.get(f"/v1/tracks/{quote(music_id, safe='') or 'x'}/audio",
                          headers=headers, params=params)
    answered_well(response)


@given(payload=st.sampled_from([b"", b"\x00" * 64, b"not a video", b"RIFF....WAVE"]),
       kind=st.sampled_from(["video/mp4", "application/octet-stream", "text/plain"]),
       k=st.one_of(st.none(), st.integers(-1, 100), HOSTILE_TEXT))
def test_recommend_answers_hostile_uploads_with_an_error_body(client, payload, kind, k):
    params = {} if k is None else {"k": k}
    response = client.post("/v1/recommend", params=params,
                           files={"video": ("clip.mp4", payload, kind)})
    answered_well(response)


@given(target=st.one_of(
           st.text(max_size=40),
           st.builds("".join, st.lists(st.sampled_from(
               ["http://", "HTTPS://", "/", "*", "a", "evil.example", ":80", "?q=1", "%2F",
                "://", "\u2603", "//"]), max_size=8))),
       method=st.sampled_from(["GET", "OPTIONS", "POST", "PRI", "HEAD"]),
       version=st.sampled_from(["1.0", "1.1", "2.0", "0.9", "3"]))
def test_any_request_target_is_routed_by_a_path_or_answered(target, method, version):
    """The request-target middleware, given any target, method and version: another
    version than 1.0/1.1 is 505; ``OPTIONS *`` is 204; an absolute-form target reaches the
    app as its path (starting with "/", no authority); any other target as it came."""
    import asyncio

    from mgsv_sk.serve.http.middleware import RequestTarget

    reached: list[dict] = []
    sent: list[dict] = []

    async def app(scope, receive, send):
        reached.append(dict(scope))

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": method, "path": target, "http_version": version,
             "raw_path": target.encode("utf-8", "surrogatepass"), "headers": [],
             "query_string": b""}
    asyncio.run(RequestTarget(app)(dict(scope), receive, send))
    if version not in ("1.0", "1.1"):
        assert sent[0]["status"] == 505 and not reached
    elif target == "*" and method == "OPTIONS":
        assert sent[0]["status"] == 204 and not reached
    else:
        assert len(reached) == 1 and not sent
        path = reached[0]["path"]
        scheme, sep, rest = target.partition("://")
        if sep and scheme.lower() in ("http", "https") and "/" not in scheme:
            assert path.startswith("/") and rest.endswith(path.lstrip("/")) or path == "/"
            assert reached[0]["raw_path"].startswith(b"/")
        else:
            assert path == target


#: Pieces of a multipart form a client can get wrong: boundaries, part heads, bodies
BOUNDARIES = st.one_of(st.sampled_from(["b", "x" * 70, "a b", "\"q\"", "é", "--", ""]),
                       st.text(st.characters(min_codepoint=33, max_codepoint=126),
                               min_size=1, max_size=80))
PART_HEADS = st.lists(st.one_of(
    st.sampled_from([
        'Content-Disposition: form-data; name="video"; filename="clip.mp4"',
        'Content-Disposition: form-data; name="video"',
        'Content-Disposition: form-data; name="video"; filename="../../etc/passwd"',
        'Content-Disposition: form-data; name="video"; filename="<b>x</b>.mp4"',
        'Content-Disposition: form-data; name="video"; filename*=UTF-8\'\'%E9%9F%B3.mp4',
        'Content-Disposition: form-data; name=video; filename=clip.mp4',
        'Content-Disposition: attachment; name="video"; filename="a"',
        'Content-Disposition: form-data; name="other"; filename="x.mp4"',
        'Content-Type: video/mp4', 'Content-Type: multipart/mixed; boundary=z',
        'Content-Transfer-Encoding: base64', 'X: ' + "y" * 5000]),
    st.builds(lambda k, v: f"{k}: {v}", st.sampled_from(["Content-Disposition",
                                                         "Content-Type", "X"]), HOSTILE_TEXT)),
    max_size=4)


@given(boundary=BOUNDARIES, parts=st.lists(st.tuples(PART_HEADS, st.sampled_from(
           [b"", b"\x00" * 64, b"not a video", b"--b\r\n", b"\r\n--b--"])), max_size=3),
       preamble=st.sampled_from([b"", b"junk\r\n", b"\r\n"]),
       ending=st.sampled_from(["--\r\n", "--", "", "\r\n", "--\r\nepilogue"]),
       declared=st.sampled_from(["multipart/form-data; boundary={b}", "multipart/form-data",
                                 "multipart/form-data; boundary=\"{b}\"", "text/plain",
                                 "multipart/form-data; boundary={b}; boundary=z"]))
def test_recommend_answers_any_multipart_form_with_an_error_body(client, boundary, parts,
                                                                  preamble, ending, declared):
    """Forms of any structure (boundaries of any length and characters, part heads missing,
    repeated or hostile, bodies holding boundary-like bytes, no closing boundary): a
    result or an error body, never a 500."""
    b = boundary.encode("utf-8", "replace")
    body = preamble
    for heads, payload in parts:
        body += b"--" + b + b"\r\n" + "\r\n".join(heads).encode("utf-8", "replace")
        body += b"\r\n\r\n" + payload + b"\r\n"
    body += b"--" + b + ending.encode()
    content_type = declared.format(b=boundary).encode("utf-8", "replace")  # sent as bytes
    answered_well(client.post("/v1/recommend", content=body,
                              headers={"Content-Type": content_type}))
