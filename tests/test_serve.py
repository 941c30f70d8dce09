"""The HTTP service (``mgsv_sk.serve``) through an HTTP client, against a tiny bundle with
its own encoders and a catalogue of four generated audio tracks.

Every endpoint, every error code, ``recommend`` equal to ``OnnxGrounder.recommend`` on the
same file, Range requests, the admission queue, the metrics, SIGTERM, and a schema fuzz.
Torch-free: in CI's serving environment the fixture comes from ``MGSV_SERVE_FIXTURE``.
"""

from __future__ import annotations

import gc
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
pytest.importorskip("av")
pytest.importorskip("soundfile")

import soundfile as sf  # noqa: E402
from _serve import ThreadedServer, fixture_dir, form_head, free_port  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from mgsv_sk.serve import ServeConfig, ServedModel, create_app  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TRACKS = {"song_a": 14.0, "song_b": 20.0, "song_c": 9.0, "song_d": 16.0}
LIMITS = dict(workers=2, queue_size=2, max_video_seconds=6.0)


@pytest.fixture(scope="module")
def fx(tmp_path_factory) -> Path:
    return fixture_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def model(fx) -> ServedModel:
    return ServedModel.load(fx / "bundle", fx / "catalogue")


@pytest.fixture(scope="module")
def client(model):
    with TestClient(create_app(model, config=ServeConfig(**LIMITS))) as c:
        yield c


def post_video(client, path: Path, *, name: str | None = None, kind: str = "video/mp4",
               **params):
    with open(path, "rb") as fh:
        return client.post("/v1/recommend", params=params,
                           files={"video": (name or path.name, fh, kind)})


def frames_body(frames: np.ndarray, **parameters) -> dict:
    return {"inputs": [{"name": "video_frames", "datatype": "FP32",
                        "shape": list(frames.shape), "data": frames.ravel().tolist()}],
            "parameters": parameters}


def error_of(response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and body["error"]
    assert "Traceback" not in body["error"]
    return str(body["error"])


# -- health and metadata ------------------------------------------------------------------
def test_health_and_metadata(client, fx, model):
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert client.get("/v2/models/mgsv/ready").status_code == 200
    assert client.get("/v2").json()["name"] == "mgsv-sk"
    meta = client.get("/v2/models/mgsv").json()
    params = meta["parameters"]
    digest = hashlib.sha256((fx / "bundle" / "manifest.json").read_bytes()).hexdigest()
    assert params["bundle_sha256"] == digest and meta["versions"] == [digest[:12]]
    assert params["catalogue_tracks"] == len(TRACKS)
    assert params["max_video_seconds"] == 6.0 and params["recommend_from_video"] is True
    assert meta["inputs"][0] == {"name": "video_frames", "datatype": "FP32", "shape": [-1, 512]}


def test_not_ready_until_loaded_then_ready(fx):
    release = threading.Event()

    def slow_loader() -> ServedModel:
        release.wait(30)
        return ServedModel.load(fx / "bundle", fx / "catalogue")

    app = create_app(fx / "bundle", fx / "catalogue", loader=slow_loader)
    with TestClient(app) as c:
        response = c.get("/v2/health/ready")
        assert "loading" in error_of(response, 503)
        assert response.headers["retry-after"] == "1"
        assert c.get("/v2/health/live").status_code == 200
        error_of(c.post("/v2/models/mgsv/infer", json=frames_body(np.ones((3, 512)))), 503)
        error_of(c.get("/v2/models/mgsv"), 503)
        release.set()
        for _ in range(300):
            if c.get("/v2/health/ready").status_code == 200:
                break
            time.sleep(0.05)
        assert c.get("/v2/models/mgsv").status_code == 200


def test_the_loaded_app_is_frozen_out_of_the_collector_until_it_stops(fx):
    """Once the model is loaded and warm, what the app holds is frozen out of the cyclic
    collector (a full collection no longer walks it: 100 ms a time measured under load),
    and given back when the app stops."""
    assert gc.get_freeze_count() == 0
    app = create_app(fx / "bundle", fx / "catalogue")
    with TestClient(app) as c:
        for _ in range(300):
            if c.get("/v2/health/ready").status_code == 200:
                break
            time.sleep(0.05)
        assert gc.get_freeze_count() > 1000  # the model and everything loaded before it
        assert c.post("/v2/models/mgsv/infer",
                      json=frames_body(np.ones((3, 512)))).status_code == 200
    assert gc.get_freeze_count() == 0


def test_the_app_shortens_the_thread_switch_interval_while_it_runs(model):
    """An inference thread takes the GIL back after each native call; at CPython's 5 ms
    interval a busy event loop (one client flooding cheap GETs) held every request for
    seconds. The app runs at 0.5 ms at most, and gives the setting back when it stops."""
    before = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.004)
        with TestClient(create_app(model)):
            assert sys.getswitchinterval() == pytest.approx(0.0005, abs=2e-6)
        assert sys.getswitchinterval() == pytest.approx(0.004, abs=2e-6)
        sys.setswitchinterval(0.0001)  # a process that chose a shorter one keeps it
        with TestClient(create_app(model)):
            assert sys.getswitchinterval() == pytest.approx(0.0001, abs=2e-6)
    finally:
        sys.setswitchinterval(before)


def test_the_model_answers_one_call_before_it_is_ready(fx, caplog):
    """A loaded model answers a warm-up call before /v2/health/ready says 200, so the
    first client does not pay for what a first call does once; a warm-up that fails is
    logged and the model is served anyway (its clients get the error)."""
    calls: list[str] = []

    def loader() -> ServedModel:
        model = ServedModel.load(fx / "bundle", fx / "catalogue")
        infer = model.infer

        def counted(*args, **kwargs):
            calls.append("ready" if app.state.serve.model is not None else "loading")
            return infer(*args, **kwargs)

        model.infer = counted  # type: ignore[method-assign]
        return model

    app = create_app(fx / "bundle", fx / "catalogue", loader=loader)
    with TestClient(app) as c:
        for _ in range(300):
            if c.get("/v2/health/ready").status_code == 200:
                break
            time.sleep(0.05)
        assert calls == ["loading"]  # the warm-up, before the model was served
    broken = ServedModel.load(fx / "bundle", fx / "catalogue")

    def fails(*args, **kwargs):
        raise RuntimeError("session lost")

    broken.infer = fails  # type: ignore[method-assign]
    with caplog.at_level("WARNING", logger="mgsv_sk.serve"):
        assert broken.warm_up() >= 0
    assert "session lost" in caplog.text


def test_a_failed_load_is_reported_not_raised(fx):
    def broken() -> ServedModel:
        raise ValueError("bundle damaged")

    with TestClient(create_app(fx / "bundle", loader=broken)) as c:
        for _ in range(100):
            message = error_of(c.get("/v2/health/ready"), 503)
            if "failed" in message:
                break
            time.sleep(0.05)
        assert "bundle damaged" in message


def test_wrong_paths_fail_when_the_app_is_built(fx, tmp_path):
    with pytest.raises(FileNotFoundError, match="no ONNX bundle"):
        create_app(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="catalogue store not found"):
        create_app(fx / "bundle", tmp_path / "nothing")
    with pytest.raises(ValueError, match="workers must be an integer >= 1"):
        ServeConfig(workers=0)


# -- recommend ----------------------------------------------------------------------------
@pytest.mark.parametrize("moments", [1, 2])
def test_recommend_equals_the_runtime_on_the_same_file(client, model, fx, moments):
    response = post_video(client, fx / "query.mp4", k=3, moments_per_track=moments)
    assert response.status_code == 200, response.text
    body = response.json()
    want = model.grounder.recommend(fx / "query.mp4", k=3, moments_per_track=moments)
    assert [t["music_id"] for t in body["tracks"]] == want["music_id"].tolist()
    assert [t["rank"] for t in body["tracks"]] == want["rank"].tolist()
    np.testing.assert_allclose([t["score"] for t in body["tracks"]], want["score"], rtol=1e-6)
    for track, row in zip(body["tracks"], want.itertuples()):
        windows = row.windows if moments > 1 else [[row.start, row.end, row.moment_score]]
        got = [[m["start"], m["end"], m["score"]] for m in track["moments"]]
        np.testing.assert_allclose(got, windows, rtol=1e-6)
        assert track["track_seconds"] == pytest.approx(TRACKS[track["music_id"]], abs=0.01)
        assert all(m["audio_url"].startswith(f"/v1/tracks/{track['music_id']}/audio?")
                   for m in track["moments"])
    assert body["video"] == {"filename": "query.mp4", "bytes": (fx / "query.mp4").stat().st_size,
                             "seconds": pytest.approx(4.5, abs=0.1), "frames": 5}
    assert set(body["timings_ms"]) == {"upload", "queue", "decode", "rank", "total"}
    assert body["model_version"] == model.version


def test_two_users_at_once_get_their_own_results(client, fx):
    alone = {name: post_video(client, fx / name, k=4).json()["tracks"]
             for name in ("query.mp4", "other.mp4")}
    together: dict[str, list] = {}

    def ask(name: str) -> None:
        together[name] = post_video(client, fx / name, k=4).json()["tracks"]

    threads = [threading.Thread(target=ask, args=(n,)) for n in alone for _ in range(1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert together == alone
    assert alone["query.mp4"] != alone["other.mp4"]


def test_the_video_part_is_read_by_its_field_name_whatever_names_the_file(client, fx):
    """RFC 7578 lets a client name the file with ``filename*`` (RFC 5987: what clients
    send for a name outside ASCII) or send the bytes as the field's value with no file
    name; both are the video, the extended name shown decoded."""
    clip = (fx / "query.mp4").read_bytes()
    want = post_video(client, fx / "query.mp4", k=3).json()["tracks"]
    for disposition, shown_as in [
            ("filename*=UTF-8''%C3%A9t%C3%A9%20%E2%80%94%20clip.mp4",
             "\u00e9t\u00e9 \u2014 clip.mp4"),
            ('filename="plain.mp4"; filename*=utf-8\'\'%C3%A9.mp4', "\u00e9.mp4"),
            ("filename*=iso-8859-1'fr'%E9t%E9.mp4", "\u00e9t\u00e9.mp4"),
            ("", "upload")]:
        body = (f'--B\r\nContent-Disposition: form-data; name="video"; {disposition}\r\n'
                "\r\n").encode() + clip + b"\r\n--B--\r\n"
        response = client.post("/v1/recommend?k=3", content=body,
                               headers={"content-type": "multipart/form-data; boundary=B"})
        assert response.status_code == 200, (disposition, response.text)
        assert response.json()["video"]["filename"] == shown_as
        assert response.json()["tracks"] == want
    # a nameless part that is not a video is the decoder's clear 422, not a 413 or 415
    body = b'--B\r\nContent-Disposition: form-data; name="video"\r\n\r\nhello\r\n--B--\r\n'
    assert "as a video" in error_of(client.post(
        "/v1/recommend", content=body,
        headers={"content-type": "multipart/form-data; boundary=B"}), 422)


def test_an_unknown_query_parameter_is_named_before_the_upload_is_read(client, fx):
    # a misspelt option must not be dropped silently and the defaults served
    for query in ("top_k=3", "k=3&moments=2", "K=3"):
        message = error_of(client.post(f"/v1/recommend?{query}", content=b"never read",
                                       headers={"content-type": "multipart/form-data; "
                                                                "boundary=B"}), 400)
        name = query.split("&")[-1].split("=")[0]
        assert f"unknown query parameter '{name}'" in message, message
        assert "k, moments_per_track" in message


def test_recommend_errors(client, fx, tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where uploads are spooled
    assert "not a video" in error_of(post_video(client, fx / "notes.txt", kind="text/plain"),
                                     415)
    error_of(client.post("/v1/recommend", json={"video": "x"}), 415)
    assert "no 'video' file field" in error_of(
        client.post("/v1/recommend", files={"clip": ("a.mp4", b"123", "video/mp4")}), 400)
    two = [("video", (name, (fx / name).read_bytes(), "video/mp4"))
           for name in ("query.mp4", "other.mp4")]
    assert "more than one 'video' file" in error_of(
        client.post("/v1/recommend", files=two), 400)
    assert "FFmpeg" in error_of(post_video(client, fx / "broken.mp4"), 422)
    # the first half of a real video: FFmpeg's words, not its internal error number
    half = (fx / "query.mp4").read_bytes()
    message = error_of(client.post("/v1/recommend", files={
        "video": ("half.mp4", half[: len(half) // 2], "video/mp4")}), 422)
    assert "'half.mp4'" in message and "Errno" not in message, message
    message = error_of(post_video(client, fx / "long.mp4"), 422)  # 8 s > the 6 s cap
    assert "8.0 s long" in message and "at most 6 s" in message
    error_of(post_video(client, fx / "query.mp4", k=0), 422)
    error_of(post_video(client, fx / "query.mp4", k=10_000), 422)
    error_of(post_video(client, fx / "query.mp4", moments_per_track="many"), 422)
    error_of(client.post("/v1/recommend", files={"video": ("e.mp4", b"", "video/mp4")}), 422)
    # a form cut off inside the video (no closing boundary) is not read as a whole video;
    # a boundary the parser cannot use is the client's error (400), not the server's
    clip = (fx / "query.mp4").read_bytes()
    head = form_head()
    assert "no closing boundary" in error_of(client.post(
        "/v1/recommend", content=head + clip + b"\r\n",
        headers={"content-type": "multipart/form-data; boundary=B"}), 400)
    assert client.post("/v1/recommend", content=head + clip + b"\r\n--B--\r\n", headers={
        "content-type": "multipart/form-data; boundary=B"}).status_code == 200
    assert "boundary is not usable" in error_of(client.post(
        "/v1/recommend", content=head.replace(b"--B", b"--" + b"b" * 5000),
        headers={"content-type": "multipart/form-data; boundary=" + "b" * 5000}), 400)
    assert not list(tmp_path.iterdir()), "uploads must be deleted after the request"


def test_uploads_over_the_cap_are_refused(model, fx, tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    small = ServeConfig(workers=1, max_upload_bytes=1024)
    with TestClient(create_app(model, config=small)) as c:
        big = {"video": ("big.mp4", b"\x00" * 200_000, "video/mp4")}
        assert "MiB" in error_of(c.post("/v1/recommend", files=big), 413)  # Content-Length
        error_of(post_video(c, fx / "query.mp4"), 413)  # 3 kB: refused while streaming
        boundary = "b0undary"

        def chunked():  # no Content-Length: refused while streaming, once past the cap
            yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"video\"; "
                   f"filename=\"big.mp4\"\r\nContent-Type: video/mp4\r\n\r\n").encode()
            for _ in range(10):
                yield b"\x00" * 1024
            yield f"\r\n--{boundary}--\r\n".encode()

        response = c.post("/v1/recommend", content=chunked(), headers={
            "content-type": f"multipart/form-data; boundary={boundary}"})
        error_of(response, 413)
        metrics = c.get("/metrics").text
        assert 'mgsv_http_requests_total{code="413",method="POST",route="/v1/recommend"} 3.0' \
            in metrics
    assert not list(tmp_path.iterdir())


def test_a_bundle_without_a_video_encoder_says_so(model):
    class NoEncoder(ServedModel):
        can_recommend = False  # type: ignore[assignment]

    bare = NoEncoder(model.grounder, checksum=model.checksum)
    with TestClient(create_app(bare)) as c:
        response = c.post("/v1/recommend", files={"video": ("a.mp4", b"1", "video/mp4")})
        assert "no video encoder" in error_of(response, 501)


# -- moment audio -------------------------------------------------------------------------
def test_moment_audio_is_exactly_the_moment(client, fx):
    track = post_video(client, fx / "query.mp4", k=1).json()["tracks"][0]
    moment = track["moments"][0]
    response = client.get(moment["audio_url"])
    assert response.status_code == 200 and response.headers["content-type"] == "audio/wav"
    assert response.headers["accept-ranges"] == "bytes"
    data, rate = sf.read(io.BytesIO(response.content), dtype="float32", always_2d=True)
    start, end = round(moment["start"], 3), round(moment["end"], 3)
    assert len(data) / rate == pytest.approx(end - start, abs=1e-3)
    source, source_rate = sf.read(fx / "music" / f"{track['music_id']}.wav", dtype="float32",
                                  always_2d=True)
    first = int(round(start * source_rate))
    np.testing.assert_allclose(data, source[first: first + len(data)], atol=1 / 32768 + 1e-6)


def test_range_requests(client):
    url = "/v1/tracks/song_b/audio?start=2&end=5"
    whole = client.get(url).content
    size = len(whole)
    part = client.get(url, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == whole[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{size}"
    assert int(part.headers["content-length"]) == 100
    tail = client.get(url, headers={"Range": "bytes=-64"})
    assert tail.status_code == 206 and tail.content == whole[-64:]
    rest = client.get(url, headers={"Range": f"bytes={size - 10}-"})
    assert rest.content == whole[-10:]
    response = client.get(url, headers={"Range": f"bytes={size}-"})
    error_of(response, 416)
    assert response.headers["content-range"] == f"bytes */{size}"
    assert client.get(url, headers={"Range": "bytes=abc"}).status_code == 200  # ignored


def test_audio_errors(client, model):
    assert "no track" in error_of(client.get("/v1/tracks/nope/audio?start=0&end=1"), 404)
    error_of(client.get("/v1/tracks/song_a/audio?start=5&end=2"), 400)
    assert "past the end" in error_of(client.get("/v1/tracks/song_c/audio?start=9.5&end=12"),
                                      400)
    error_of(client.get("/v1/tracks/song_a/audio?start=-1&end=2"), 422)
    error_of(client.get("/v1/tracks/song_a/audio?start=0"), 422)
    for bad in ("start=nan&end=2", "start=0&end=inf"):  # named as not finite, not as > 240
        assert "finite number" in error_of(client.get(f"/v1/tracks/song_a/audio?{bad}"), 422)
    # the bundle's own catalogue records no audio files: 404 unless --audio finds them
    bare = ServedModel(model.grounder, checksum=model.checksum)
    with TestClient(create_app(bare)) as c:
        assert "--audio" in error_of(c.get("/v1/tracks/song_a/audio?start=0&end=1"), 404)


def test_audio_found_by_music_id_in_an_audio_folder(model, fx):
    found = ServedModel(model.grounder, checksum=model.checksum, audio_dir=fx / "music")
    with TestClient(create_app(found)) as c:
        assert c.get("/v1/tracks/song_a/audio?start=0&end=1").status_code == 200


# -- OIP infer ----------------------------------------------------------------------------
def test_infer_msg_and_smg_match_the_runtime(client, model):
    frames = np.random.default_rng(0).normal(size=(5, 512)).astype(np.float32)
    body = client.post("/v2/models/mgsv/infer",
                       json={"id": "r1", **frames_body(frames, k=3, moments_per_track=2,
                                                       video_duration=4.5)}).json()
    assert body["id"] == "r1" and body["model_name"] == "mgsv"
    outputs = {o["name"]: o for o in body["outputs"]}
    query = {"video_id": ["q"], "video_segment_duration": [4.5]}
    import pandas as pd

    want = model.grounder.rank(pd.DataFrame(query), k=3, features=({"q": frames}, {}),
                               moments_per_track=2)
    assert outputs["music_id"]["data"] == want["music_id"].tolist()
    np.testing.assert_allclose(outputs["score"]["data"], want["score"], rtol=1e-6)
    assert outputs["moments"]["shape"] == [3, 2, 3]
    np.testing.assert_allclose(np.reshape(outputs["moments"]["data"], (3, 2, 3)),
                               np.array(want["windows"].tolist()), rtol=1e-6)
    smg = client.post("/v2/models/mgsv/infer", json={"inputs": [
        frames_body(frames)["inputs"][0],
        {"name": "music_id", "datatype": "BYTES", "shape": [1], "data": ["song_c"]}]}).json()
    got = {o["name"]: o for o in smg["outputs"]}
    assert got["music_id"]["data"] == ["song_c"]
    pred = model.grounder.predict(pd.DataFrame({**query, "music_id": ["song_c"],
                                                "video_segment_duration": [5.0]}),
                                  features=({"q": frames}, {}))
    np.testing.assert_allclose(got["moments"]["data"], pred[["start", "end", "moment_score"]]
                               .to_numpy().ravel(), rtol=1e-6)


def test_infer_accepts_nested_data(client):
    """Nested (even unevenly, as Triton's reader takes them) or flat, and integers among
    the floats: the same frames, the same answer."""
    frames = np.random.default_rng(3).standard_normal((3, 512)).astype(np.float32)
    frames[0, :4] = [1, -2, 0, 3]
    answers = []
    for data in (frames.ravel().tolist(), frames.tolist(),
                 [frames[0].tolist(), [frames[1].tolist(), [frames[2].tolist()]]],
                 [int(v) if float(v).is_integer() else float(v) for v in frames.ravel()]):
        body = frames_body(frames)
        body["inputs"][0]["data"] = data
        answer = client.post("/v2/models/mgsv/infer", json=body)
        assert answer.status_code == 200, answer.text
        answers.append(answer.json()["outputs"])
    assert all(a == answers[0] for a in answers[1:])


@pytest.mark.parametrize(("change", "status", "says"), [
    (lambda b: b["inputs"][0].update(datatype="INT32"), 400, "must be FP32"),
    (lambda b: b["inputs"][0].update(shape=[3, 100]), 400, "shape [F, 512]"),
    (lambda b: b["inputs"][0].update(shape=[60, 512]), 400, "F <= 50"),
    (lambda b: b["inputs"][0].update(data=[1.0, 2.0]), 400, "holds 2 numbers"),
    (lambda b: b["inputs"][0].update(data=["a"] * 1536), 400, "data must be JSON numbers"),
    # numbers only, as Triton reads them: numpy would have parsed the string "0.5"
    (lambda b: b["inputs"][0].update(data=["0.5"] * 1536), 400, "data must be JSON numbers"),
    (lambda b: b["inputs"][0].update(data=[0.5] * 1535 + [None]), 400, "must be JSON numbers"),
    (lambda b: b["inputs"][0].update(data=[0.5] * 1535 + [True]), 400, "must be JSON numbers"),
    (lambda b: b["inputs"][0].update(data=[0.5] * 1535 + [{"a": 1}]), 400,
     "must be JSON numbers"),
    (lambda b: b["inputs"][0].update(data=[[0.5] * 512, [0.5] * 512, [0.5, "x"]]), 400,
     "must be JSON numbers"),
    # nested lists are flattened in order, as Triton's reader does: the count must still fit
    (lambda b: b["inputs"][0].update(data=[[0.5] * 512, [0.5] * 512, 0.5]), 400,
     "holds 1025 numbers"),
    (lambda b: b["inputs"][0].update(data=[1e39] * 1536), 400, "NaN or infinite"),
    (lambda b: b["inputs"][0].update(data=[[0.5] * 512, [0.5] * 512, [0.5] * 511]), 400,
     "holds 1535 numbers"),
    (lambda b: b["inputs"][0].update(name="frames"), 400, "inputs must be 'video_frames'"),
    (lambda b: b["inputs"].append({"name": "music_id", "datatype": "BYTES", "shape": [1],
                                   "data": ["nope"]}), 404, "not in the served catalogue"),
    (lambda b: b["inputs"].append({"name": "music_id", "datatype": "BYTES", "shape": [1],
                                   "data": [3]}), 400, "BYTES data must be strings"),
    (lambda b: b["inputs"].append({"name": "music_id", "datatype": "BYTES", "shape": [1],
                                   "data": ["x" * 5000]}), 404, "5000 bytes long"),
    (lambda b: b["inputs"].append(dict(b["inputs"][0])), 400,
     "input 'video_frames' is given twice"),
    (lambda b: b.update(parameters={"top_k": 3}), 422, "parameters.top_k"),
    (lambda b: b.update(parameters={"top_k": 3}), 422,  # the same words over gRPC
     "the model's parameters are k, moments_per_track, video_duration"),
    (lambda b: b.update(parameters={"k": 0}), 422, "parameters.k"),
    # a count is an integer: true is not 1, "3" is not 3, 2.0 is not 2
    (lambda b: b.update(parameters={"k": True}), 422, "parameters.k"),
    (lambda b: b.update(parameters={"k": "3"}), 422, "parameters.k"),
    (lambda b: b.update(parameters={"moments_per_track": 2.0}), 422,
     "parameters.moments_per_track"),
    (lambda b: b.update(parameters={"video_duration": "2"}), 422,
     "parameters.video_duration"),
    (lambda b: b.update(parameters={"k": 51}), 422, "k must be <= 50"),
    (lambda b: b.update(parameters={"video_duration": 7.0}), 422, "at most 6 s"),
    # the request's structure is a malformed request (400, as Triton answers it); its
    # parameters' values are invalid parameters (422)
    (lambda b: b.pop("inputs"), 400, "inputs: Field required"),
    (lambda b: b.update(inputs=[]), 400, "at least 1 item"),
    (lambda b: b["inputs"][0].update(shape=[True, 512]), 400, "inputs.0.shape.0"),
    (lambda b: b["inputs"][0].update(shape=[1.5, 512]), 400, "inputs.0.shape.0"),
    (lambda b: b["inputs"][0].update(datatype=32), 400, "inputs.0.datatype"),
])
def test_infer_errors(client, change, status, says):
    body = frames_body(np.ones((3, 512), np.float32))
    change(body)
    assert says in error_of(client.post("/v2/models/mgsv/infer", json=body), status)


@pytest.mark.parametrize("change", [
    lambda b, long: b["inputs"][0].update(name=long),
    lambda b, long: b["inputs"].append({"name": long, "datatype": "FP32", "shape": [1],
                                        "data": [1.0]}),
    lambda b, long: b["inputs"][0].update(datatype=long),
    lambda b, long: b.update(outputs=[{"name": long}]),
    lambda b, long: b.update(parameters={long: 1}),
])
def test_errors_never_repeat_a_long_client_text(client, change):
    # an error names what was wrong, but quotes at most a few dozen characters of it: a
    # 100,000-character name never comes back (nor past a gRPC client's 16 KiB limit)
    long = "n" * 100_000
    body = frames_body(np.ones((3, 512), np.float32))
    change(body, long)
    response = client.post("/v2/models/mgsv/infer", json=body)
    assert 400 <= response.status_code < 500 and len(response.content) < 1000, response.text
    assert "n" * 200 not in error_of(response, response.status_code)
    for path in (f"/v2/models/{long[:5000]}/infer", f"/v2/models/mgsv/versions/{long[:5000]}"
                 "/infer", f"/v1/tracks/{long[:5000]}/audio?start=0&end=1"):
        response = client.post(path, json=frames_body(np.ones((3, 512), np.float32))) if \
            path.endswith("infer") else client.get(path)
        assert response.status_code == 404 and len(response.content) < 1000, response.text


def test_infer_malformed_json_and_large_bodies(client, model):
    response = client.post("/v2/models/mgsv/infer", content=b"{not json",
                           headers={"content-type": "application/json"})
    assert "not valid JSON" in error_of(response, 400)
    assert "must be a JSON object" in error_of(
        client.post("/v2/models/mgsv/infer", content=b"[1, 2]"), 400)
    with TestClient(create_app(model, config=ServeConfig(max_json_bytes=1000))) as c:
        assert "larger than 1000 bytes" in error_of(
            c.post("/v2/models/mgsv/infer", json=frames_body(np.ones((3, 512)))), 413)
        raw = json.dumps(frames_body(np.ones((3, 512)))).encode()
        chunked = c.post("/v2/models/mgsv/infer", content=iter([raw[:800], raw[800:]]),
                         headers={"content-type": "application/json"})
        assert "larger than 1000 bytes" in error_of(chunked, 413)  # no Content-Length: cut
        # at the cap


# -- load: admission, metrics -------------------------------------------------------------
def test_a_full_queue_answers_503_with_retry_after(model):
    gate, entered = threading.Event(), threading.Event()

    class Slow(ServedModel):
        def infer(self, *args, **kwargs):
            entered.set()
            gate.wait(30)
            return super().infer(*args, **kwargs)

    slow = Slow(model.grounder, checksum=model.checksum)
    body = frames_body(np.ones((3, 512), np.float32))
    config = ServeConfig(workers=1, queue_size=0, max_client_requests=4)
    with TestClient(create_app(slow, config=config)) as c:
        first: dict = {}
        thread = threading.Thread(target=lambda: first.update(
            r=c.post("/v2/models/mgsv/infer", json=body)))
        thread.start()
        assert entered.wait(30)
        response = c.post("/v2/models/mgsv/infer", json=body)
        assert "busy" in error_of(response, 503)
        assert response.headers["retry-after"] == "1"
        gate.set()
        thread.join(30)
        assert first["r"].status_code == 200
        assert c.post("/v2/models/mgsv/infer", json=body).status_code == 200
        metrics = c.get("/metrics").text
    assert 'mgsv_rejected_total{reason="overloaded"} 1.0' in metrics
    assert ('mgsv_http_requests_total{code="200",method="POST",'
            'route="/v2/models/{model_name}/infer"} 2.0') in metrics


def test_metrics_count_what_clients_saw(model):
    with TestClient(create_app(model)) as c:
        for _ in range(3):
            c.get("/v2/health/live")
        c.get("/nowhere")
        text = c.get("/metrics").text
    assert text.startswith("# HELP")
    assert 'mgsv_http_requests_total{code="200",method="GET",route="/v2/health/live"} 3.0' in text
    assert 'mgsv_http_requests_total{code="404",method="GET",route="unmatched"} 1.0' in text
    assert f"mgsv_catalogue_tracks {float(len(TRACKS))}" in text
    assert "mgsv_model_ready 1.0" in text


# -- the rest of the surface --------------------------------------------------------------
def test_page_static_files_and_openapi(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert '<script src="/static/app.js">' in page.text and "cdn" not in page.text.lower()
    for name, kind in (("app.js", "javascript"), ("style.css", "text/css")):
        response = client.get(f"/static/{name}")
        assert response.status_code == 200 and kind in response.headers["content-type"]
        assert "http://" not in response.text and "https://" not in response.text
    schema = client.get("/openapi.json").json()
    assert {"/v2/health/live", "/v2/health/ready", "/v2/models/{model_name}",
            "/v2/models/{model_name}/infer",
            "/v2/models/{model_name}/versions/{model_version}/infer",
            "/v1/recommend", "/v1/tracks/{music_id}/audio", "/metrics"} <= set(schema["paths"])
    assert "multipart/form-data" in schema["paths"]["/v1/recommend"]["post"]["requestBody"][
        "content"]
    error_of(client.get("/static/nothing.js"), 404)
    error_of(client.get("/nowhere"), 404)
    # 405 names the method and what the path takes, and Allow lists HEAD wherever GET is
    wrong = client.delete("/v2/health/live")
    assert "method 'DELETE' is not allowed on this path; use GET or HEAD" in error_of(wrong,
                                                                                       405)
    assert wrong.headers["allow"] == "GET, HEAD"
    assert client.get("/v2/models/mgsv/infer").headers["allow"] == "POST"


def test_schema_fuzz_finds_no_server_error(model):
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, settings
    from schemathesis.checks import not_a_server_error

    app = create_app(model, config=ServeConfig(**LIMITS))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    failures: list[str] = []
    seen: dict[str, set[int]] = {}
    operations = 0
    for operation in schema.get_all_operations():
        op = operation.ok()
        operations += 1

        @settings(max_examples=12, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @schemathesis_given(op)
        def run(case) -> None:
            response = case.call()
            seen.setdefault(f"{case.method} {case.path}", set()).add(response.status_code)
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path}: {response.status_code} "
                                f"{response.text[:200]}")
            case.validate_response(response, checks=[not_a_server_error])

        run()
    assert not failures, failures
    assert operations >= 15 and len(seen) == operations, seen  # each one was exercised
    print(seen)


def schemathesis_given(operation):
    from hypothesis import given

    return given(case=operation.as_strategy())


def test_serving_imports_no_torch(fx):
    """The service path, upload to moment audio, with torch and transformers unimportable."""
    code = f"""
import sys
sys.modules["torch"] = None
sys.modules["transformers"] = None  # the serve extra does not install it
from fastapi.testclient import TestClient
from mgsv_sk.serve import create_app
with TestClient(create_app({str(fx / "bundle")!r}, {str(fx / "catalogue")!r})) as c:
    import time
    while c.get("/v2/health/ready").status_code != 200:
        time.sleep(0.05)
    with open({str(fx / "query.mp4")!r}, "rb") as f:
        r = c.post("/v1/recommend", files={{"video": ("q.mp4", f, "video/mp4")}})
    assert r.status_code == 200, r.text
    assert c.get(r.json()["tracks"][0]["moments"][0]["audio_url"]).status_code == 200
assert not [m for m in sys.modules if m.startswith("torch") and sys.modules[m] is not None]
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "ok"


def test_cli_serve_finishes_in_flight_requests_on_sigterm(fx):
    import httpx

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mgsv_sk", "serve", str(fx / "bundle"), "--catalogue",
         str(fx / "catalogue"), "--port", str(port), "--workers", "1", "--queue-size", "8"],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            pytest.fail("the server did not become ready: " + proc.stderr.read())
        video = (fx / "query.mp4").read_bytes()
        results: list = []
        connected = threading.Barrier(5)

        def ask() -> None:
            with httpx.Client(base_url=url, timeout=60) as c:
                c.get("/v2/health/live")  # connect first: SIGTERM refuses new connections
                connected.wait()
                r = c.post("/v1/recommend", files={"video": ("q.mp4", video, "video/mp4")})
                results.append((r.status_code, time.monotonic()))

        threads = [threading.Thread(target=ask) for _ in range(4)]
        for t in threads:
            t.start()
        connected.wait()
        time.sleep(0.05)  # the requests are sent and queued on the one worker
        stopped = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(60)
        assert proc.wait(60) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert [s for s, _ in results] == [200] * 4
    assert any(t > stopped for _, t in results), "no request was in flight at SIGTERM"


def test_threaded_uvicorn_server_answers(model):
    with ThreadedServer(create_app(model)) as server:
        import httpx

        assert httpx.get(f"{server.url}/v2/health/live").json() == {"live": True}
        assert json.loads(httpx.get(f"{server.url}/v2/models/mgsv").text)["name"] == "mgsv"


def test_fuzz_near_valid_requests_find_no_server_error(client):
    """The schema fuzz mostly meets the first check; this one starts from valid requests
    (known tracks, real tensors) and varies the numbers, ranges and parameters."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    numbers = st.floats(allow_nan=False, allow_infinity=False, width=32)
    ascii_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=12)
    ranges = st.one_of(st.none(), ascii_text,
                       st.builds(lambda a, b: f"bytes={a}-{b}",
                                 st.integers(0, 10**6), st.integers(0, 10**6)))

    @settings(max_examples=40, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(music_id=st.sampled_from([*TRACKS, "nope", "a/b", " "]), start=numbers,
           end=numbers, range_header=ranges)
    def audio(music_id, start, end, range_header):
        headers = {} if range_header is None else {"Range": range_header}
        response = client.get(f"/v1/tracks/{music_id}/audio",
                              params={"start": start, "end": end}, headers=headers)
        assert response.status_code in (200, 206, 400, 404, 416, 422), response.text

    @settings(max_examples=40, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(frames=st.integers(0, 60), width=st.sampled_from([512, 511, 0]), value=numbers,
           k=st.integers(-2, 60), moments=st.integers(-1, 7),
           duration=st.one_of(st.none(), numbers),
           music=st.one_of(st.none(), st.sampled_from([*TRACKS, "nope"])))
    def infer(frames, width, value, k, moments, duration, music):
        tensor = {"name": "video_frames", "datatype": "FP32", "shape": [frames, width],
                  "data": [value] * (frames * width)}
        inputs = [tensor] + ([] if music is None else [
            {"name": "music_id", "datatype": "BYTES", "shape": [1], "data": [music]}])
        parameters = {"k": k, "moments_per_track": moments}
        if duration is not None:
            parameters["video_duration"] = duration
        response = client.post("/v2/models/mgsv/infer",
                               json={"inputs": inputs, "parameters": parameters})
        assert response.status_code in (200, 400, 404, 422), response.text

    audio()
    infer()


# -- the catalogue's audio files and the command line ---------------------------------------
def test_the_catalogue_store_records_each_tracks_audio_file(fx, tmp_path):
    import shutil

    from mgsv_sk.cli import main
    from mgsv_sk.data.packed import PackedFeatures

    sources = PackedFeatures(fx / "catalogue").music_sources()
    assert set(sources) == set(TRACKS)
    assert all(Path(p).is_absolute() and Path(p).name == f"{m}.wav" for m, p in sources.items())
    # a rerun (everything already extracted) and an extension keep / add the paths
    store = tmp_path / "catalogue"
    shutil.copytree(fx / "catalogue", store)
    manifest = json.loads((fx / "bundle" / "manifest.json").read_text())
    encoder = str(fx / "bundle" / manifest["encoders"]["music"]["files"]["fp32"])
    assert main(["-q", "catalogue", str(fx / "music"), str(store), "--music-encoder",
                 encoder]) == 0
    assert PackedFeatures(store).music_sources() == sources
    extra = tmp_path / "more"
    extra.mkdir()
    shutil.copy(fx / "music" / "song_a.wav", extra / "song_e.wav")
    assert main(["-q", "catalogue", str(extra), str(store), "--music-encoder", encoder]) == 0
    grown = PackedFeatures(store).music_sources()
    assert grown == {**sources, "song_e": str((extra / "song_e.wav").resolve())}


def test_a_store_without_recorded_files_has_no_sources(tmp_path):
    from mgsv_sk import make_synthetic_mgsv, pack_features

    data = make_synthetic_mgsv(4, 2, random_state=0)
    assert pack_features(data.features, tmp_path / "p").music_sources() == {}


def test_cli_serve_help_and_errors(fx, tmp_path, capsys):
    from mgsv_sk.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--help"])
    assert exit_info.value.code == 0
    assert "example:\n  mgsv-sk serve" in capsys.readouterr().out
    assert main(["serve", str(tmp_path / "nothing")]) == 1
    assert "ONNX bundle not found" in capsys.readouterr().err
    assert main(["serve", str(fx / "bundle"), "--queue-size", "-1"]) == 1
    assert "queue_size must be an integer >= 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["serve", str(fx / "bundle"), "--workers", "0"])


def test_cli_names_a_host_it_cannot_listen_on(fx, capsys):
    """Refused before the model loads (uvicorn said only "Name or service not known")."""
    from mgsv_sk.cli import main

    code = main(["serve", str(fx / "bundle"), "--host", "999.1.1.1", "--port", "1"])
    err = capsys.readouterr().err
    assert code == 1 and "cannot listen on --host '999.1.1.1'" in err and "0.0.0.0" in err
