"""Two replicas of the service on Ray Serve behind one endpoint (127.0.0.1): both answer
(distinct ``X-MGSV-Replica`` process ids), and their answers equal ``OnnxGrounder``'s.

Needs the ``replicas`` extra (Ray Serve); CI runs it in its own environment (``.ci/run``),
so Ray's HTTP stack never changes the other tests' server. Starting Ray and two replicas
takes about 30-60 s on 2 cores."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray.serve")
pytest.importorskip("httpx")
pytest.importorskip("fastapi")

import httpx  # noqa: E402
from _serve import fixture_dir, free_port  # noqa: E402

from mgsv_sk.serve.replicas import REPLICA_HEADER, app_builder, deployment  # noqa: E402


def test_two_replicas_answer_behind_one_endpoint(tmp_path_factory):
    import ray
    from ray import serve

    from mgsv_sk.export.runtime import OnnxGrounder

    fx = fixture_dir(tmp_path_factory)
    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(deployment(fx / "bundle", fx / "catalogue", replicas=2, num_cpus=0.5),
                  route_prefix="/", name="mgsv", blocking=False)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:  # both replicas load the bundle in the background
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the replicas did not become ready"
            time.sleep(0.5)
        rng = np.random.default_rng(0)
        frames = rng.standard_normal((12, 512)).astype(np.float32)
        body = {"inputs": [{"name": "video_frames", "datatype": "FP32",
                            "shape": list(frames.shape), "data": frames.ravel().tolist()}],
                "parameters": {"k": 3}}
        seen: dict[str, dict] = {}
        lock = threading.Lock()

        def ask() -> None:
            with httpx.Client(timeout=60) as client:
                for _ in range(10):
                    r = client.post(f"{url}/v2/models/mgsv/infer", content=json.dumps(body),
                                    headers={"content-type": "application/json"})
                    assert r.status_code == 200, r.text
                    with lock:
                        seen[r.headers[REPLICA_HEADER]] = r.json()
                    if len(seen) >= 2:
                        return

        threads = [threading.Thread(target=ask) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(seen) == 2, f"answered by {sorted(seen)} only"
        local = OnnxGrounder.load(fx / "bundle", 1)
        from mgsv_sk.data.packed import PackedFeatures

        store = PackedFeatures(fx / "catalogue")
        local.set_catalogue(store.music_ids(), features=store)
        import pandas as pd

        want = local.rank(pd.DataFrame({"video_id": ["q"], "video_segment_duration": [12.0]}),
                          k=3, features=({"q": frames}, {}))
        for answer in seen.values():
            outputs = {o["name"]: o["data"] for o in answer["outputs"]}
            assert outputs["music_id"] == want["music_id"].tolist()
            np.testing.assert_allclose(outputs["score"], want["score"], atol=1e-5)
    finally:
        serve.shutdown()
        ray.shutdown()


def test_the_config_builder_checks_its_args():
    with pytest.raises(ValueError, match="need bundle"):
        app_builder({})
    with pytest.raises(ValueError, match=r"unknown args \['replica'\]"):
        app_builder({"bundle": "b", "replica": 2})


def test_the_shipped_ray_serve_config_is_valid(tmp_path_factory):
    import yaml
    from ray.serve import Application
    from ray.serve.schema import ServeDeploySchema

    root = Path(__file__).resolve().parents[1]
    config = yaml.safe_load((root / "examples/deploy/ray_serve.yaml").read_text())
    app = ServeDeploySchema.model_validate(config).applications[0]
    assert app.import_path == "mgsv_sk.serve.replicas:app_builder"
    fx = fixture_dir(tmp_path_factory)
    built = app_builder({**app.args, "bundle": str(fx / "bundle"),
                         "catalogue": str(fx / "catalogue")})
    assert isinstance(built, Application)
