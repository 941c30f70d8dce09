"""Speed of one MsG request against 2,000 tracks, in process and over HTTP on the loopback
interface, against its arithmetic floor.

The model is the default architecture (d_model 256, full X-Pool, re-ranking depth 10)
fitted briefly on synthetic features of the release's sizes (50 frames x 512, 96 snippets
x 768), serving ``--tracks`` synthetic tracks (default 2,000); its bundle carries a tiny
random CLIP image encoder.

1. **Floor**: the request's multiply-adds (the X-Pool over every track's valid snippets:
   attention logits and pooling, 2 R D, then the value/output and residual projections,
   2 N D^2; the video encoder on 50 frames; the window head on the 10 re-ranked pairs) at
   the single-thread float32 GEMM rate numpy reaches here, and the time to read the
   catalogue's X-Pool snippet states once at the single-thread streaming rate (a GEMV over
   them): the scan is memory-bound, so that read is a floor of its own.
2. **In process**, one thread: ``ServedModel.infer`` (what the server calls), stage by
   stage (video encoder, retrieval scan, re-ranking and moments, the rest), with the
   numpy X-Pool scan (the bundle's float32 states, and in the same repeats a copy of the
   bundle with its catalogue stored in float16: half the bytes for the scan to stream; its
   answers against float32's), with the score graphs (the runtime before it), and the torch
   backend (``MGSVGrounder.rank`` on one thread, in a subprocess right after); same
   answers checked. Then ``infer`` by 4 threads (requests/s).
3. **HTTP** (``mgsv-sk serve`` with its defaults, in a subprocess: on 2 cores 8 request
   threads and 2 lanes of batched inference of one thread each; OIP JSON, up to
   50 x 512 floats): p50 at concurrency 1, requests/s at concurrency 4 and p99 at
   concurrency 8, closed loop (each client a thread with a keep-alive ``http.client``
   connection), ``--repeats`` times (default 3) with their spread. At 1 client a run
   alternating each request in process and over HTTP (the same frames, one after the
   other) measures what HTTP adds, then a plain run the p50; each 4-client run follows
   its in-process twin (the server idle). The HTTP
   ratios are taken run by run: a shared machine drifts by several percent over the
   minutes the whole benchmark takes, and within one run the alternation cancels it.

The server, the load generator and (on a shared machine) other work share the cores: the
report says how busy the machine was (load average) before and after.

    python benchmarks/serve_load.py [--tracks 2000] [--seconds 6] [--repeats 3]

Writes ``benchmarks/results/serve_load.json`` and ``.md``. The bundle is cached under
``--work`` (default a folder in the system's temporary directory).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
RESULTS = ROOT / "benchmarks" / "results"
THREADS = 1  # the torch comparison's and the in-process runtime's threads (the server's default)
RERANK = 10
#: What the cached bundles in ``--work`` were built by: another value rebuilds them (the
#: catalogue holds the window head's track keys from this version on).
BUNDLE_VERSION = "4: the window head's track keys in the catalogue, one grouped convolution"


# -- the bundle (built once, in a subprocess: this process never imports torch) -------------
def build_bundle(work: Path, tracks: int) -> None:
    """Fit the default MaDe briefly, serve ``tracks`` synthetic tracks, export with a tiny
    video encoder."""
    import torch
    from _media import tiny_clip, write_video

    from mgsv_sk import MGSVGrounder, make_synthetic_mgsv
    from mgsv_sk.export.compact_bundle import compact_bundle
    from mgsv_sk.export.to_onnx import export_onnx

    torch.set_num_threads(2)
    train = make_synthetic_mgsv(600, 150, random_state=0)
    model = MGSVGrounder(features=train.features, max_epochs=1, batch_size=64,
                         validation_fraction=0, random_state=0, n_threads=2).fit(train.frame)
    gallery = make_synthetic_mgsv(tracks, tracks, random_state=1, split="test")
    model.set_catalogue(gallery.frame["music_id"], features=gallery.features)
    export_onnx(model, work / "bundle", encoders={"video": tiny_clip()}, overwrite=True,
                check=False)
    queries = [gallery.features.video(v) for v in gallery.frame["video_id"][:64]]
    np.savez(work / "frames.npz", *[q.astype(np.float32) for q in queries])  # [F_i, 512]
    model.save(work / "model", overwrite=True)  # the torch side of the comparison
    # the same bundle with its catalogue's per-snippet arrays in float16 (no first stage:
    # the full scan, as the float32 bundle's)
    compact_bundle(work / "bundle", work / "bundle_float16", states="float16",
                   index="exact", overwrite=True)
    write_video(work / "clip.mp4", 15.0, fps=30, size=(320, 240), seed=3)
    (work / "done").write_text(BUNDLE_VERSION)


def torch_worker(work: Path, seconds: float) -> None:
    """The torch backend on the same requests, one thread (``MGSVGrounder.rank``, k=10,
    the same re-ranking): prints the per-request times in ms as JSON."""
    import pandas as pd
    import torch

    from mgsv_sk import MGSVGrounder

    torch.set_num_threads(THREADS)
    model = MGSVGrounder.load(work / "model")
    model.set_params(n_threads=THREADS)  # predict sets torch's threads from it (fit's: 2)
    with np.load(work / "frames.npz") as stored:
        frames = [stored[name] for name in stored.files][:16]
    times: list[float] = []
    stop = time.monotonic() + seconds
    i = 0
    while time.monotonic() < stop or i < 8:
        f = frames[i % len(frames)]
        query = pd.DataFrame({"video_id": ["q"], "video_segment_duration": [float(len(f))]})
        began = time.perf_counter()
        model.rank(query, k=10, features=({"q": f}, {}))
        if i >= 3:  # warm-up
            times.append(1e3 * (time.perf_counter() - began))
        i += 1
    print(json.dumps(times))


def torch_p50(work: Path, seconds: float) -> float:
    done = subprocess.run([sys.executable, __file__, "--torch-worker", "--work", str(work),
                           "--seconds", str(seconds)], capture_output=True, text=True,
                          check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return round(float(np.median(json.loads(done.stdout.strip().splitlines()[-1]))), 2)


# -- the load generator ---------------------------------------------------------------------
def percentiles(ms: list[float]) -> dict[str, float]:
    if not ms:
        return {}
    a = np.asarray(ms)
    return {"p50": round(float(np.percentile(a, 50)), 1),
            "p95": round(float(np.percentile(a, 95)), 1),
            "p99": round(float(np.percentile(a, 99)), 1), "max": round(float(a.max()), 1)}


def alternating(ask: Any, send: Any, seconds: float, port: int
                ) -> tuple[float, dict[str, Any]]:
    """One client: the same request in process (``ask(i)``) and over HTTP (``send``),
    one after the other, for ``seconds`` of HTTP requests: the in-process p50 and the HTTP
    run's row (as :func:`closed_loop`'s). A pair runs within ~60 ms, so the drift of a shared
    machine over seconds falls on both alike; the server idles while the in-process call
    runs, and the reverse."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    local, remote, codes = [], [], {}
    spent, i = 0.0, 0
    try:
        while spent < seconds or i < 10:
            began = time.perf_counter()
            ask(i)
            local.append(1e3 * (time.perf_counter() - began))
            began = time.perf_counter()
            status = send(conn, i)
            took = time.perf_counter() - began
            spent += took
            codes[status] = codes.get(status, 0) + 1
            if status == 200:
                remote.append(1e3 * took)
            i += 1
    finally:
        conn.close()
    row = run_row(1, codes, {"timeouts": 0, "resets": 0, "other": 0}, remote, spent)
    return round(float(np.median(local)), 2), {**row, "alternating": True}


def closed_loop(send: Any, concurrency: int, seconds: float, requests: int,
                port: int) -> dict[str, Any]:
    """``concurrency`` threads, each sending its next request when the last is answered,
    on a keep-alive connection of its own (``send(connection) -> status``). The client is
    the standard library's ``http.client``: it costs about 0.4 ms of CPU a request where
    httpx costs 1.0 (measured on these 0.2-0.5 MB bodies), and the load generator shares
    the server's cores, so what it spends is taken from the server's figures."""
    import http.client

    lock = threading.Lock()
    latencies: list[float] = []
    codes: dict[int, int] = {}
    errors = {"timeouts": 0, "resets": 0, "other": 0}
    sent = [0]
    stop = time.monotonic() + seconds

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            while time.monotonic() < stop:
                with lock:
                    if sent[0] >= requests:
                        return
                    sent[0] += 1
                began = time.perf_counter()
                try:
                    status = send(conn)
                except TimeoutError:
                    kind = "timeouts"
                except (ConnectionError, http.client.RemoteDisconnected):
                    kind = "resets"
                except (OSError, http.client.HTTPException):
                    kind = "other"
                else:
                    elapsed = 1e3 * (time.perf_counter() - began)
                    with lock:
                        codes[status] = codes.get(status, 0) + 1
                        if status == 200:
                            latencies.append(elapsed)
                    continue
                with lock:
                    errors[kind] += 1
                conn.close()  # a fresh connection for the next request
        finally:
            conn.close()

    began = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return run_row(concurrency, codes, errors, latencies, time.perf_counter() - began)


def run_row(concurrency: int, codes: dict[int, int], errors: dict[str, int],
            latencies: list[float], wall: float) -> dict[str, Any]:
    """One run's figures: answers by status code, failures by kind (timeouts, resets,
    other), the latencies (ms) of the 200s and the seconds they took."""
    ok = codes.get(200, 0)
    return {"concurrency": concurrency, "requests": sum(codes.values()) + sum(errors.values()),
            "ok": ok, "rps": round(ok / wall, 2), "wall_s": round(wall, 1),
            "latency_ms": percentiles(latencies),
            "non_2xx": sum(n for c, n in codes.items() if not 200 <= c < 300),
            "status_503": codes.get(503, 0), **errors,
            "codes": {str(c): n for c, n in sorted(codes.items())}}


def server_statistics(port: int) -> dict[str, Any]:
    """The server's own statistics of the model (the OIP statistics extension)."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/v2/models/mgsv/stats")
        stats: dict[str, Any] = json.loads(conn.getresponse().read())["model_stats"][0]
        return stats
    finally:
        conn.close()


def batching_figures(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What the server saw between two readings of its statistics: requests, model runs,
    their mean batch, and the mean wait for a thread and time in the model a request."""
    def delta(*keys: str) -> int:
        a, b = after, before
        for k in keys:
            a, b = a[k], b[k]
        return int(a) - int(b)

    requests, runs = delta("inference_count"), delta("execution_count")
    ok = max(1, delta("inference_stats", "success", "count"))
    return {"requests": requests, "model_runs": runs,
            "mean_batch": round(requests / max(1, runs), 2),
            "queue_ms_mean": round(delta("inference_stats", "queue", "ns") / ok / 1e6, 2),
            "infer_ms_mean": round(delta("inference_stats", "compute_infer", "ns") / ok / 1e6,
                                   2)}


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_defaults() -> dict[str, Any]:
    """What ``mgsv-sk serve`` runs with no options on this machine (its lanes are read
    from the running server: :func:`server_lanes`)."""
    from mgsv_sk.serve import ServeConfig

    config = ServeConfig()
    return {"options": "defaults", "workers": config.workers, "n_threads": config.n_threads,
            "queue_size": config.queue_size}


def server_lanes(port: int) -> int:
    """The lanes the running server reports (its model configuration's CPU instances)."""
    import httpx

    config = httpx.get(f"http://127.0.0.1:{port}/v2/models/mgsv/config", timeout=10).json()
    return int(config["instance_group"][0]["count"])


def start_server(work: Path, port: int, cores: set[int] | None = None,
                 options: tuple[str, ...] = ()) -> subprocess.Popen[str]:
    """``mgsv-sk serve`` with its defaults (and ``options``), on ``cores`` (default: this
    process's); it counts its cores, and so its lanes and threads, from its own affinity."""
    import httpx

    proc = subprocess.Popen(
        [sys.executable, "-m", "mgsv_sk", "serve", str(work / "bundle"), "--port", str(port),
         *options],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
        preexec_fn=None if cores is None else lambda: os.sched_setaffinity(0, cores))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2).status_code \
                    == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError("the server exited: " + (proc.stderr.read() if proc.stderr
                                                         else ""))
        time.sleep(0.2)
    raise RuntimeError("the server did not become ready in 120 s")




# -- 1. the floor ---------------------------------------------------------------------------------
def gemm_rates(n: int = 5) -> list[float]:
    """GFLOP/s of ``n`` single-thread float32 1024 x 1024 GEMMs (after one untimed)."""
    from threadpoolctl import threadpool_limits

    a = np.random.default_rng(0).standard_normal((1024, 1024), np.float32)
    out = []
    with threadpool_limits(1, user_api="blas"):
        a @ a
        for _ in range(n):
            began = time.perf_counter()
            a @ a
            out.append(2 * 1024**3 / (time.perf_counter() - began) / 1e9)
    return out


def floor(work: Path) -> dict[str, Any]:
    """Multiply-adds of one MsG request at the single-thread GEMM rate, and one read of the
    X-Pool snippet states at the single-thread streaming rate."""
    from threadpoolctl import threadpool_limits

    manifest = json.loads((work / "bundle" / "manifest.json").read_text())
    dims = manifest["dims"]
    d, f, s = dims["d_model"], dims["max_frames"], dims["max_snippets"]
    n, rows = manifest["catalogue"]["n_tracks"], manifest["catalogue"]["n_snippets"]
    ffn = 4 * d
    macs = {
        # logits and pooling over every valid snippet; values (W_o W_v) and (I + W_p)
        "xpool": 2 * rows * d + 2 * n * d * d,
        # input projection, one temporal layer (q, k, v, out; FFN; attention over F)
        "video_encoder": f * dims["video_dim"] * d + f * (4 * d * d + 2 * d * ffn)
        + 2 * f * f * d,
        # per track: snippet and content projections; per pair: frame x snippet similarity
        "moment_head_10": RERANK * (s * d * d + f * s * d) + f * d * d,
    }
    states = np.load(work / "bundle" / manifest["catalogue"]["files"]["xpool_states"])
    q = np.random.default_rng(0).standard_normal(states.shape[1]).astype(np.float32)
    gemm = gemm_rates()
    with threadpool_limits(1, user_api="blas"):
        states @ q
        stream = []
        for _ in range(5):
            began = time.perf_counter()
            states @ q
            stream.append(states.nbytes / (time.perf_counter() - began) / 1e9)
    rate, bandwidth = float(np.max(gemm)), float(np.max(stream))
    total = sum(macs.values())
    return {"macs": macs, "flop": 2 * total, "gflop": round(2 * total / 1e9, 3),
            "gemm_gflops_1t": {"best": round(rate, 1), "median": round(float(np.median(gemm)), 1)},
            "stream_gbs_1t": {"best": round(bandwidth, 2),
                              "median": round(float(np.median(stream)), 2)},
            "states_mb": round(states.nbytes / 1e6, 1),
            "compute_ms": round(2e3 * total / (rate * 1e9), 2),
            "states_read_ms": round(1e3 * states.nbytes / (bandwidth * 1e9), 2)}


# -- 2. in process --------------------------------------------------------------------------------
def p50_one_thread(ask: Any, seconds: float) -> tuple[float, int]:
    """Median ms of ``ask(i)`` called back to back on this thread for ``seconds`` (at least
    10 calls), and the number of calls."""
    times = []
    stop = time.monotonic() + seconds
    i = 0
    while time.monotonic() < stop or i < 10:
        began = time.perf_counter()
        ask(i)
        times.append(1e3 * (time.perf_counter() - began))
        i += 1
    return round(float(np.median(times)), 2), len(times)


def rps_threads(ask: Any, seconds: float, threads: int = 4) -> float:
    """Calls per second of ``ask`` from ``threads`` threads in a closed loop."""
    done = [0]
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker(i: int) -> None:
        j = i
        while time.monotonic() < stop:
            ask(j)
            j += threads
            with lock:
                done[0] += 1

    began = time.perf_counter()
    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return round(done[0] / (time.perf_counter() - began), 2)


def msg_call(model: Any, frames: list[np.ndarray]) -> Callable[[int], Any]:
    """``ask(i)``: one MsG ``ServedModel.infer`` on ``frames[i]`` (cycling), top 10, one
    moment each: the request every in-process figure times."""
    def ask(i: int) -> Any:
        q = frames[i % len(frames)]
        return model.infer(q, music_id=None, k=10, moments=1, seconds=float(len(q)))
    return ask


def in_process(work: Path, frames: list[np.ndarray], repeats: int, seconds: float
               ) -> tuple[dict[str, Any], Any]:
    """``ServedModel.infer`` on one thread: stages, numpy scan (float32 states, and the
    float16 bundle's) vs score graphs (same answers), then 4 threads. Also returns the
    call it timed (float32), for the HTTP repeats."""
    from mgsv_sk.serve import ServedModel

    models = {"numpy_scan": ServedModel.load(work / "bundle", n_threads=THREADS),
              "float16_states": ServedModel.load(work / "bundle_float16", n_threads=THREADS)}
    hooks = {"video_encoder": "_encode_videos", "retrieval_scan": "_scores",
             "moments": "_ground"}
    stages: dict[str, dict[str, float]] = {}
    for name, model in models.items():
        g = model.grounder
        stages[name] = {stage: 0.0 for stage in hooks}
        for stage, hook in hooks.items():
            original = getattr(g, hook)

            def timed(*args: Any, _f: Any = original, _s: str = stage,
                      _into: dict[str, float] = stages[name]) -> Any:
                began = time.perf_counter()
                try:
                    return _f(*args)
                finally:
                    _into[_s] += time.perf_counter() - began
            setattr(g, hook, timed)
    stages["score_graphs"] = stages["numpy_scan"]  # the float32 model with its scan off
    asks = {name: msg_call(model, frames) for name, model in models.items()}
    g = models["numpy_scan"].grounder
    scan = g.numpy_xpool
    out: dict[str, Any] = {"p50_ms": {}, "stages_ms": {}, "gemm_gflops_1t_each_repeat": []}
    answers: dict[str, list[Any]] = {}

    def measure(name: str, ask: Any) -> float:
        for k in stages[name]:
            stages[name][k] = 0.0
        began = time.perf_counter()
        p50, calls = p50_one_thread(ask, seconds)
        mean = 1e3 * (time.perf_counter() - began) / calls
        per = {k: round(1e3 * v / calls, 2) for k, v in stages[name].items()}
        per["other"] = round(mean - sum(per.values()), 2)
        out["p50_ms"].setdefault(name, []).append(p50)
        out["stages_ms"][name] = per  # of the last repeat (mean per request)
        return p50

    for ask in asks.values():
        for i in range(3):
            ask(i)
    for _ in range(repeats):  # both storages in each repeat, at the GEMM rate of its minute
        out["gemm_gflops_1t_each_repeat"].append(round(max(gemm_rates()), 1))
        for name, ask in asks.items():
            measure(name, ask)
    with np.load(work / "frames.npz") as stored:  # every stored query, for the answers
        every = [stored[name] for name in stored.files]
    for name, model in models.items():
        answers[name] = [msg_call(model, every)(i) for i in range(len(every))]
    g.numpy_xpool = None  # the score graphs: the runtime before the numpy scan
    for i in range(3):
        asks["numpy_scan"](i)
    for _ in range(repeats):
        measure("score_graphs", asks["numpy_scan"])
    answers["score_graphs"] = [msg_call(models["numpy_scan"], every)(i)
                               for i in range(len(every))]
    g.numpy_xpool = scan

    def agreement(a: list[Any], b: list[Any]) -> dict[str, Any]:
        same = [[t.music_id for t in x] == [t.music_id for t in y] for x, y in zip(a, b)]
        first = [x[0].music_id == y[0].music_id for x, y in zip(a, b)]
        worst = max((float(np.max(np.abs(np.subtract([t.score for t in x],
                                                     [t.score for t in y]))))
                     for x, y, equal in zip(a, b, same) if equal), default=float("nan"))
        return {"queries": len(same), "same_ranking": int(sum(same)),
                "same_first": int(sum(first)), "max_score_diff": worst}

    out["same_answers"] = agreement(answers["numpy_scan"], answers["score_graphs"])
    out["float16_against_float32"] = agreement(answers["float16_states"],
                                               answers["numpy_scan"])
    for model in models.values():  # untimed from here on
        for hook in hooks.values():
            delattr(model.grounder, hook)
    out["rps_c4"] = rps_threads(asks["numpy_scan"], seconds)
    out["rps_c1"] = [round(1e3 / m, 2) for m in out["p50_ms"]["numpy_scan"]]
    return out, asks["numpy_scan"]


# -- 3. over HTTP ---------------------------------------------------------------------------------
def split_cores(work: Path, frames: list[np.ndarray], sender: Any, repeats: int,
                seconds: float) -> dict[str, Any] | None:
    """The 4-client ratio with the load generator off the server's core: the server, and
    its in-process twin, on the first usable core (one lane, the defaults for one core),
    the clients on the second. The shared run charges the load generator's CPU and the
    server's to the same two cores; this one measures what the server itself adds, as
    with clients on other machines. None on a machine with one usable core."""
    from mgsv_sk.serve import ServedModel

    everywhere = os.sched_getaffinity(0)
    if len(everywhere) < 2:
        return None
    first, second = sorted(everywhere)[:2]
    server_core, client_core = {first}, {second}
    out: dict[str, Any] = {"server_core": first, "client_core": second}
    rows: dict[str, dict[str, list[Any]]] = {
        mode: {"in_process_rps_c4": [], "rps_c4": [], "mean_batch": []} for mode in BODIES}
    port = free_port()
    server = start_server(work, port, server_core)
    try:
        os.sched_setaffinity(0, server_core)  # this thread, and the threads it starts
        model = ServedModel.load(work / "bundle", n_threads=THREADS)  # one core: one lane
        out["lanes"] = model.lanes
        out["server_lanes"] = server_lanes(port)
        ask = msg_call(model, frames)
        for i in range(3):
            ask(i)
        for mode in BODIES:
            os.sched_setaffinity(0, client_core)
            closed_loop(sender(mode), 2, 2.0, 20, port)  # warm-up, not reported
        for _ in range(repeats):
            for mode in BODIES:
                os.sched_setaffinity(0, server_core)
                rows[mode]["in_process_rps_c4"].append(rps_threads(ask, seconds))
                os.sched_setaffinity(0, client_core)
                before = server_statistics(port)
                row = closed_loop(sender(mode), 4, seconds, 10**6, port)
                rows[mode]["rps_c4"].append(row["rps"])
                rows[mode]["mean_batch"].append(
                    batching_figures(before, server_statistics(port))["mean_batch"])
                print(f"split cores {mode} c4", json.dumps(row),
                      rows[mode]["in_process_rps_c4"][-1], flush=True)
    finally:
        os.sched_setaffinity(0, everywhere)
        server.send_signal(signal.SIGTERM)
        out["server_exit_code"] = server.wait(60)
    for mode in BODIES:
        r = rows[mode]
        out[mode] = {"in_process_rps_c4": spread(r["in_process_rps_c4"]),
                     "rps_c4": spread(r["rps_c4"]), "mean_batch": r["mean_batch"],
                     "ratio": round(float(np.median(np.divide(r["rps_c4"],
                                                              r["in_process_rps_c4"]))), 3)}
    return out


def spread(values: list[float]) -> dict[str, Any]:
    return {"runs": values, "median": round(float(np.median(values)), 2),
            "min": min(values), "max": max(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tracks", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=6.0, help="per level and repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", type=Path,
                        default=Path(tempfile.gettempdir()) / "mgsv-serve-load")
    parser.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--render", action="store_true",
                        help="only rewrite the .md (and targets) from the .json")
    args = parser.parse_args()
    if args.render:
        report = json.loads((RESULTS / "serve_load.json").read_text())
        report["targets"] = targets(report)
        (RESULTS / "serve_load.json").write_text(json.dumps(report, indent=1) + "\n")
        (RESULTS / "serve_load.md").write_text(markdown(report))
        return
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    if args.build_only:
        build_bundle(work, args.tracks)
        return
    if args.torch_worker:
        torch_worker(work, args.seconds)
        return
    done = work / "done"
    if (not done.is_file() or done.read_text() != BUNDLE_VERSION
            or not (work / "model").is_dir()):
        print(f"building the bundle ({args.tracks} tracks) in {work} ...", flush=True)
        subprocess.run([sys.executable, __file__, "--build-only", "--work", str(work),
                        "--tracks", str(args.tracks)], check=True)

    with np.load(work / "frames.npz") as stored:
        frames = [stored[name] for name in stored.files][:16]
    report: dict[str, Any] = {
        "machine": {"cores": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(),
                    "load_average_before": [round(x, 2) for x in os.getloadavg()]},
        "model": {"tracks": args.tracks, "d_model": 256, "xpool": "full scan",
                  "rerank_depth": RERANK,
                  "frames": f"{min(map(len, frames))}-{max(map(len, frames))} x 512"},
        "server": server_defaults()}
    report["floor"] = floor(work)
    print("floor", json.dumps(report["floor"]), flush=True)
    report["in_process"], ask = in_process(work, frames, args.repeats, args.seconds)
    # torch right after, in the same conditions (a subprocess: this one stays torch-free)
    report["in_process"]["torch_p50_ms"] = torch_p50(work, args.seconds)
    print("in process", json.dumps(report["in_process"]), flush=True)

    bodies = {mode: [oip_body(f, mode) for f in frames] for mode in BODIES}
    counter = iter(range(10**9))
    port = free_port()

    def sender(mode: str) -> Any:
        def send(conn: Any, i: int | None = None) -> int:
            at = next(counter) if i is None else i  # alternating: frames[i], as ask(i)
            body, headers = bodies[mode][at % len(frames)]
            conn.request("POST", "/v2/models/mgsv/infer", body=body, headers=headers)
            answer = conn.getresponse()
            answer.read()
            return int(answer.status)
        return send

    server = start_server(work, port)
    report["server"]["lanes"] = server_lanes(port)
    http = {mode: {"c1": [], "c1_alternating": [], "c4": [], "c8": []} for mode in BODIES}
    # each 1- and 4-client run's in-process twin: a shared machine drifts by several percent
    # over minutes, and the ratios must not
    adjacent = {mode: {"p50_ms_c1": [], "rps_c4": []} for mode in BODIES}
    try:
        for mode in BODIES:
            closed_loop(sender(mode), 2, 2.0, 20, port)  # warm-up, not reported
        for _ in range(args.repeats):
            for level in (1, 4, 8):
                for mode in BODIES:
                    if level == 1:  # the overhead's measure, then the plain 1-client run
                        local, pair = alternating(ask, sender(mode), args.seconds, port)
                        adjacent[mode]["p50_ms_c1"].append(local)
                        http[mode]["c1_alternating"].append(pair)
                        print(f"http {mode} c1 alternating", json.dumps(pair), flush=True)
                    if level == 4:
                        adjacent[mode]["rps_c4"].append(rps_threads(ask, args.seconds))
                    before = server_statistics(port)
                    row = closed_loop(sender(mode), level, args.seconds, 10**6, port)
                    row["server"] = batching_figures(before, server_statistics(port))
                    http[mode][f"c{level}"].append(row)
                    print(f"http {mode} c{level}", json.dumps(row), flush=True)
    finally:
        server.send_signal(signal.SIGTERM)
        report["server_exit_code"] = server.wait(60)
    for mode in BODIES:
        report["http" if mode == "json" else f"http_{mode}"] = http_figures(http[mode],
                                                                           adjacent[mode])
    report["split_cores"] = split_cores(work, frames, sender, args.repeats, args.seconds)
    report["machine"]["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    report["targets"] = targets(report)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "serve_load.json").write_text(json.dumps(report, indent=1) + "\n")
    (RESULTS / "serve_load.md").write_text(markdown(report))
    print(markdown(report))


#: The request bodies measured over HTTP: OIP JSON tensors, and the binary tensor
#: extension (what tritonclient sends by default: a JSON header, then the raw float32s).
BODIES = ("json", "binary")


def oip_body(frames: np.ndarray, mode: str) -> tuple[bytes, dict[str, str]]:
    """An OIP ``infer`` body for ``frames`` (k = 10) and its headers."""
    tensor: dict[str, Any] = {"name": "video_frames", "datatype": "FP32",
                              "shape": list(frames.shape)}
    raw = np.ascontiguousarray(frames, "<f4").tobytes()
    if mode == "json":
        tensor["data"] = frames.ravel().tolist()
    else:
        tensor["parameters"] = {"binary_data_size": len(raw)}
    head = json.dumps({"inputs": [tensor], "parameters": {"k": 10}}).encode()
    if mode == "json":
        return head, {"Content-Type": "application/json"}
    return head + raw, {"Content-Type": "application/octet-stream",
                        "Inference-Header-Content-Length": str(len(head))}


def http_figures(levels: dict[str, list[dict[str, Any]]],
                 adjacent: dict[str, list[float]]) -> dict[str, Any]:
    return {
        "p50_ms_c1": spread([r["latency_ms"]["p50"] for r in levels["c1"]]),
        "p50_ms_c1_alternating": spread([r["latency_ms"]["p50"]
                                         for r in levels["c1_alternating"]]),
        "rps_c4": spread([r["rps"] for r in levels["c4"]]),
        "p99_ms_c8": spread([r["latency_ms"]["p99"] for r in levels["c8"]]),
        "errors": sum(r["non_2xx"] + r["timeouts"] + r["resets"] + r["other"]
                      for rows in levels.values() for r in rows),
        "in_process_adjacent": {k: spread(v) for k, v in adjacent.items()},
        "levels": levels}


def targets(report: dict[str, Any]) -> dict[str, Any]:
    ip, fl = report["in_process"], report["floor"]
    p50 = float(np.median(ip["p50_ms"]["numpy_scan"]))
    # each repeat against the floor at the GEMM rate measured just before it (the median)
    floors = [fl["flop"] / (rate * 1e6) for rate in ip["gemm_gflops_1t_each_repeat"]]
    over = float(np.median(np.divide(ip["p50_ms"]["numpy_scan"], floors)))
    out = {
        "in_process_p50_over_floor": {"value": round(over, 2), "target": "<= 3",
                                      "met": over <= 3},
        "in_process_faster_than_torch": {"value": f"{p50:.1f} vs {ip['torch_p50_ms']:.1f} ms",
                                         "target": "faster", "met": p50 < ip["torch_p50_ms"]}}
    if "float16_states" in ip["p50_ms"]:  # the float16 bundle, repeat by repeat as well
        half = float(np.median(np.divide(ip["p50_ms"]["float16_states"], floors)))
        out["in_process_p50_over_floor (float16 states)"] = {
            "value": round(half, 2), "target": "<= 3", "met": half <= 3}
    for mode in BODIES:
        http = report["http" if mode == "json" else f"http_{mode}"]
        # per repeat, against the in-process figure measured just before it; the median
        near = http["in_process_adjacent"]
        overhead = float(np.median(np.divide(http["p50_ms_c1_alternating"]["runs"],
                                             near["p50_ms_c1"]["runs"]) - 1))
        c4 = float(np.median(np.divide(http["rps_c4"]["runs"], near["rps_c4"]["runs"])))
        tail = http["p99_ms_c8"]["median"] / http["p50_ms_c1"]["median"]
        out.update({
            f"http_adds_to_p50_c1 ({mode})": {"value": round(overhead, 3), "target": "<= 0.10",
                                              "met": overhead <= 0.10},
            f"http_rps_c4_over_in_process ({mode})": {"value": round(c4, 3),
                                                      "target": ">= 0.9", "met": c4 >= 0.9},
            f"p99_c8_over_p50_c1 ({mode})": {"value": round(tail, 2), "target": "<= 4",
                                             "met": tail <= 4},
            f"no_errors ({mode})": {"value": http["errors"], "target": "0",
                                    "met": http["errors"] == 0}})
    split = report.get("split_cores")
    for mode in BODIES if split else ():
        ratio = split[mode]["ratio"]
        out[f"http_rps_c4_over_in_process, load generator on its own core ({mode})"] = {
            "value": ratio, "target": ">= 0.9", "met": ratio >= 0.9}
    return out


def markdown(report: dict[str, Any]) -> str:
    fl, ip = report["floor"], report["in_process"]
    m = report["machine"]
    lines = [
        "# One MsG request against 2,000 tracks: floor, in process, over HTTP", "",
        f"Machine: {m['cores']} cores, load average {m['load_average_before']} before and "
        f"{m['load_average_after']} after (the 1-minute figure: above about 1, other "
        "work shared the cores). The load generator runs on the same cores as the server. "
        f"Model: d_model 256, full X-Pool over {report['model']['tracks']} tracks, "
        f"re-ranking depth {RERANK}; requests of {report['model']['frames']} frame "
        "features.", "",
        "## Floor", "",
        f"{fl['gflop']} GFLOP (X-Pool {fl['macs']['xpool'] / 1e6:.0f} M multiply-adds, video "
        f"encoder {fl['macs']['video_encoder'] / 1e6:.0f} M, moment head on 10 pairs "
        f"{fl['macs']['moment_head_10'] / 1e6:.0f} M) at {fl['gemm_gflops_1t']['best']} "
        f"GFLOP/s (single-thread float32 GEMM here, best of 5): **{fl['compute_ms']} ms**. "
        f"The scan also reads the catalogue's {fl['states_mb']} MB of X-Pool snippet states, "
        f"at least once: {fl['states_read_ms']} ms at {fl['stream_gbs_1t']['best']} GB/s "
        "(single-thread GEMV over them, best of 5).", "",
        "## In process (`ServedModel.infer`, one thread)", "",
        "| scorer | p50 ms (each repeat) | video encoder | retrieval scan | moments | rest |",
        "|---|---|---:|---:|---:|---:|"]
    for name in (n for n in ("numpy_scan", "float16_states", "score_graphs")
                 if n in ip["p50_ms"]):
        st = ip["stages_ms"][name]
        lines.append(f"| {name.replace('_', ' ')} | {ip['p50_ms'][name]} | "
                     f"{st['video_encoder']} | {st['retrieval_scan']} | {st['moments']} | "
                     f"{st['other']} |")
    same = ip["same_answers"]
    rates = ip["gemm_gflops_1t_each_repeat"]
    floors = [round(fl["flop"] / (r * 1e6), 2) for r in rates]
    lines += ["", f"Each numpy-scan repeat against the floor at the GEMM rate measured just "
              f"before it ({rates} GFLOP/s): floors {floors} ms, p50 / floor "
              f"{[round(p / f, 2) for p, f in zip(ip['p50_ms']['numpy_scan'], floors)]}."]
    if "float16_states" in ip["p50_ms"]:
        half = ip["float16_against_float32"]
        lines += ["", "float16 states: the same bundle with its catalogue's per-snippet "
                  "arrays stored in float16 (`compact_bundle(..., states=\"float16\", "
                  "index=\"exact\")`: still the full scan), measured in the same repeats "
                  "right after the float32 bundle: p50 / floor "
                  f"{[round(p / f, 2) for p, f in zip(ip['p50_ms']['float16_states'], floors)]}"
                  f". Its answers against float32's on {half['queries']} queries: "
                  f"{half['same_ranking']} top-10 rankings identical, {half['same_first']} "
                  f"first tracks identical, scores within {half['max_score_diff']:.1e} where "
                  "the rankings are."]
    lines += ["", f"torch backend (`MGSVGrounder.rank`, one thread): {ip['torch_p50_ms']} ms "
              f"p50. Same answers, numpy scan vs score graphs: {same['same_ranking']} of "
              f"{same['queries']} rankings identical, scores within "
              f"{same['max_score_diff']:.1e}. 4 threads: {ip['rps_c4']} requests/s.", "",
              f"## Over HTTP (`mgsv-sk serve`: {report['server']['workers']} threads, "
              f"{report['server'].get('lanes', 2)} lanes)", "",
              "OIP JSON tensors, and the binary tensor extension (what `tritonclient` "
              "sends by default). Each client is a thread with a keep-alive `http.client` "
              "connection.", "",
              "| figure | body | runs | median |", "|---|---|---|---:|"]
    for mode in BODIES:
        h = report["http" if mode == "json" else f"http_{mode}"]
        near = h["in_process_adjacent"]
        lines += [
            f"| p50 at concurrency 1 (ms) | {mode} | {h['p50_ms_c1']['runs']} | "
            f"{h['p50_ms_c1']['median']} |",
            f"| p50 at concurrency 1, alternating with in process (ms) | {mode} | "
            f"{h['p50_ms_c1_alternating']['runs']} | {h['p50_ms_c1_alternating']['median']} |",
            f"| requests/s at concurrency 4 | {mode} | {h['rps_c4']['runs']} | "
            f"{h['rps_c4']['median']} |",
            f"| p99 at concurrency 8 (ms) | {mode} | {h['p99_ms_c8']['runs']} | "
            f"{h['p99_ms_c8']['median']} |",
            f"| in process, alternating with the 1-client run: p50 (ms) | {mode} | "
            f"{near['p50_ms_c1']['runs']} | {near['p50_ms_c1']['median']} |",
            f"| in process just before each 4-client run: requests/s | {mode} | "
            f"{near['rps_c4']['runs']} | {near['rps_c4']['median']} |"]
        for level in (4, 8):  # the server's own statistics of the runs
            batches = [r["server"]["mean_batch"] for r in h["levels"][f"c{level}"]
                       if "server" in r]
            if batches:
                lines.append(f"| mean batch at concurrency {level} (the server's statistics) "
                             f"| {mode} | {batches} | {float(np.median(batches))} |")
    lines += ["", "The HTTP ratios below compare each run with its in-process twin (the "
              "median of the repeats' ratios): at 1 client each request runs in process "
              "and over HTTP one after the other (each then finds the caches holding the "
              "other process's data, so both are slower than alone); the 4-client run "
              "follows an in-process run of 4 threads. The tail's ratio divides by the "
              "plain 1-client run's p50.", ""]
    split = report.get("split_cores")
    if split:
        lines += ["## 4 clients, the load generator on a core of its own", "",
                  f"The server (`mgsv-sk serve` with its defaults for one core: "
                  f"{split['server_lanes']} lane) and its in-process twin "
                  f"(`ServedModel.infer` from 4 threads, {split['lanes']} lane) on core "
                  f"{split['server_core']}, the load generator on core "
                  f"{split['client_core']}: what the server itself adds, as with clients "
                  "on other machines. Each HTTP run follows its in-process twin.", "",
                  "| body | in process: requests/s | over HTTP: requests/s | mean batch "
                  "(the server's statistics) | ratio (median of the repeats') |",
                  "|---|---|---|---|---:|"]
        for mode in BODIES:
            r = split[mode]
            lines.append(f"| {mode} | {r['in_process_rps_c4']['runs']} | "
                         f"{r['rps_c4']['runs']} | {r['mean_batch']} | {r['ratio']} |")
        lines.append("")
    lines += ["## Targets", "", "| target | value | goal | met |", "|---|---:|---|:---:|"]
    for name, t in report["targets"].items():
        lines.append(f"| {name} | {t['value']} | {t['target']} | "
                     f"{'yes' if t['met'] else 'no'} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
