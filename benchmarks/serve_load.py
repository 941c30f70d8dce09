"""Load test of ``mgsv-sk serve`` on the loopback interface: a closed-loop sweep, the
server's counters against the client's, resident memory over a soak, and the in-process
``OnnxGrounder`` throughput the service is compared with.

The model is the default architecture (d_model 256) fitted briefly on synthetic features
of the release's sizes (50 frames x 512, 96 snippets x 768), serving a catalogue of
``--tracks`` synthetic tracks (default 2,000); its bundle carries a tiny random CLIP
image encoder (the uploads' frames are decoded and resized for real, but encoded by a
2-layer ViT, not CLIP ViT-B/32: recommend's figures exclude the real encoder's cost).

For each endpoint (``infer``: a synthetic video's frame features, up to 50 x 512, as OIP
JSON; ``recommend``: a 15 s
320x240 mp4 upload) and concurrency 1, 2, 4, 8, 16, N client threads each send their next
request as soon as the previous one is answered, for ``--seconds`` (or ``--requests``,
whichever ends first). Reported: requests/s, latency p50/p95/p99/max, errors split into
non-2xx, 503, timeouts and connection resets, and whether the server's
``mgsv_http_requests_total`` moved by exactly the client's counts. Then ``infer`` at
concurrency 4 for ``--soak-seconds`` with the server's RSS sampled every 2 s.

The server (a subprocess, ``--workers 2 --n-threads 1``) and this load generator share the
machine's cores: on a 2-core machine the client's JSON encoding and HTTP handling compete
with the server for CPU, so the figures are a floor for a dedicated server.

    python benchmarks/serve_load.py [--tracks 2000] [--seconds 12] [--soak-seconds 300]

Writes ``benchmarks/results/serve_load.json`` and ``.md``. The bundle is cached under
``--work`` (default a folder in the system's temporary directory).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
RESULTS = ROOT / "benchmarks" / "results"
LEVELS = (1, 2, 4, 8, 16)
WORKERS, THREADS = 2, 1


# -- the bundle (built once, in a subprocess: this process never imports torch) -------------
def build_bundle(work: Path, tracks: int) -> None:
    """Fit the default MaDe briefly, serve ``tracks`` synthetic tracks, export with a tiny
    video encoder."""
    import torch
    from _media import tiny_clip, write_video

    from mgsv_sk import MGSVGrounder, make_synthetic_mgsv
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
    write_video(work / "clip.mp4", 15.0, fps=30, size=(320, 240), seed=3)
    (work / "done").write_text("ok")


# -- the load generator ---------------------------------------------------------------------
def percentiles(ms: list[float]) -> dict[str, float]:
    if not ms:
        return {}
    a = np.asarray(ms)
    return {"p50": round(float(np.percentile(a, 50)), 1),
            "p95": round(float(np.percentile(a, 95)), 1),
            "p99": round(float(np.percentile(a, 99)), 1), "max": round(float(a.max()), 1)}


def scrape(url: str) -> dict[tuple[str, str], float]:
    """(route, code) -> mgsv_http_requests_total of POST requests."""
    import httpx

    out: dict[tuple[str, str], float] = {}
    pattern = re.compile(r'^mgsv_http_requests_total\{code="(\d+)",method="POST",'
                         r'route="([^"]+)"\} ([0-9.e+]+)$')
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        m = pattern.match(line)
        if m:
            out[(m.group(2), m.group(1))] = float(m.group(3))
    return out


def closed_loop(send: Any, concurrency: int, seconds: float, requests: int) -> dict[str, Any]:
    """``concurrency`` threads, each sending its next request when the last is answered."""
    import httpx

    lock = threading.Lock()
    latencies: list[float] = []
    codes: dict[int, int] = {}
    errors = {"timeouts": 0, "resets": 0, "other": 0}
    sent = [0]
    stop = time.monotonic() + seconds

    def worker() -> None:
        with httpx.Client(timeout=60) as client:
            while time.monotonic() < stop:
                with lock:
                    if sent[0] >= requests:
                        return
                    sent[0] += 1
                began = time.perf_counter()
                try:
                    status = send(client)
                except httpx.TimeoutException:
                    with lock:
                        errors["timeouts"] += 1
                    continue
                except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError,
                        httpx.ConnectError):
                    with lock:
                        errors["resets"] += 1
                    continue
                except httpx.HTTPError:
                    with lock:
                        errors["other"] += 1
                    continue
                elapsed = 1e3 * (time.perf_counter() - began)
                with lock:
                    codes[status] = codes.get(status, 0) + 1
                    if status == 200:
                        latencies.append(elapsed)

    began = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - began
    ok = codes.get(200, 0)
    return {"concurrency": concurrency, "requests": sum(codes.values()) + sum(errors.values()),
            "ok": ok, "rps": round(ok / wall, 2), "wall_s": round(wall, 1),
            "latency_ms": percentiles(latencies),
            "non_2xx": sum(n for c, n in codes.items() if not 200 <= c < 300),
            "status_503": codes.get(503, 0), **errors,
            "codes": {str(c): n for c, n in sorted(codes.items())}}


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def in_process_baseline(work: Path, frames: list[np.ndarray], concurrency: int,
                        seconds: float) -> float:
    """Requests/s of ``ServedModel.infer`` called by ``concurrency`` threads in this
    process (the same model, sessions and calls as the server's, no HTTP)."""
    from mgsv_sk.serve import ServedModel

    model = ServedModel.load(work / "bundle", n_threads=THREADS)
    model.infer(frames[0], music_id=None, k=10, moments=1, seconds=len(frames[0]))  # warm-up
    done = [0]
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker(i: int) -> None:
        j = i
        while time.monotonic() < stop:
            query = frames[j % len(frames)]
            model.infer(query, music_id=None, k=10, moments=1, seconds=float(len(query)))
            j += concurrency
            with lock:
                done[0] += 1

    began = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return round(done[0] / (time.perf_counter() - began), 2)


def start_server(work: Path, port: int) -> subprocess.Popen[str]:
    import httpx

    proc = subprocess.Popen(
        [sys.executable, "-m", "mgsv_sk", "serve", str(work / "bundle"), "--port", str(port),
         "--workers", str(WORKERS), "--n-threads", str(THREADS), "--queue-size", "32",
         "--max-video-seconds", "60"],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tracks", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=12.0, help="per level (default 12)")
    parser.add_argument("--requests", type=int, default=400, help="per level at most")
    parser.add_argument("--soak-seconds", type=float, default=300.0)
    parser.add_argument("--work", type=Path,
                        default=Path(tempfile.gettempdir()) / "mgsv-serve-load")
    parser.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
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
    if not (work / "done").is_file():
        print(f"building the bundle ({args.tracks} tracks) in {work} ...", flush=True)
        subprocess.run([sys.executable, __file__, "--build-only", "--work", str(work),
                        "--tracks", str(args.tracks)], check=True)
    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with np.load(work / "frames.npz") as stored:
        frames = [stored[name] for name in stored.files]
    bodies = [json.dumps({"inputs": [{"name": "video_frames", "datatype": "FP32",
                                      "shape": list(f.shape), "data": f.ravel().tolist()}],
                          "parameters": {"k": 10}}).encode() for f in frames[:16]]
    video = (work / "clip.mp4").read_bytes()
    counter = iter(range(10**9))

    def send_infer(client: httpx.Client) -> int:
        body = bodies[next(counter) % len(bodies)]
        return client.post(f"{url}/v2/models/mgsv/infer", content=body,
                           headers={"content-type": "application/json"}).status_code

    def send_recommend(client: httpx.Client) -> int:
        return client.post(f"{url}/v1/recommend", params={"k": 10},
                           files={"video": ("clip.mp4", video, "video/mp4")}).status_code

    server = start_server(work, port)
    report: dict[str, Any] = {
        "machine": {"cores": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(),
                    "note": "the load generator runs on the same cores as the server"},
        "server": {"workers": WORKERS, "n_threads": THREADS, "queue_size": 32},
        "model": {"tracks": args.tracks,
                  "frames": f"{min(map(len, frames))}-{max(map(len, frames))} x 512",
                  "d_model": 256, "video_encoder": "tiny random ViT (2 layers, width 32)"},
        "sweep": {}, "counters_match": {}}
    try:
        for name, send, route in (("infer", send_infer, "/v2/models/mgsv/infer"),
                                  ("recommend", send_recommend, "/v1/recommend")):
            closed_loop(send, 2, 3.0, 10)  # warm-up, not reported
            rows = []
            for level in LEVELS:
                before = scrape(url)
                row = closed_loop(send, level, args.seconds, args.requests)
                after = scrape(url)
                server_counts = {code: int(after.get((r, code), 0) - before.get((r, code), 0))
                                 for (r, code) in after if r == route}
                server_counts = {c: n for c, n in server_counts.items() if n}
                row["server_counts"] = server_counts
                row["counters_match"] = server_counts == row["codes"]
                rows.append(row)
                print(name, json.dumps(row), flush=True)
            report["sweep"][name] = rows
        baseline = in_process_baseline(work, frames[:16], 4, args.seconds)
        report["in_process_infer_rps_c4"] = baseline
        print("in-process baseline", baseline, flush=True)

        samples: list[tuple[float, float]] = []
        soak_done = threading.Event()

        def sample() -> None:
            began = time.monotonic()
            while not soak_done.is_set():
                samples.append((round(time.monotonic() - began, 1), round(rss_mib(server.pid),
                                                                          1)))
                soak_done.wait(2.0)

        sampler = threading.Thread(target=sample)
        sampler.start()
        soak = closed_loop(send_infer, 4, args.soak_seconds, 10**9)
        soak_done.set()
        sampler.join()
        warm = [r for t, r in samples if t >= args.soak_seconds * 0.2]
        report["soak"] = {"seconds": args.soak_seconds, "concurrency": 4, "endpoint": "infer",
                          "requests": soak["requests"], "rps": soak["rps"],
                          "non_2xx": soak["non_2xx"], "errors": soak["timeouts"]
                          + soak["resets"] + soak["other"],
                          "rss_mib_start": samples[0][1] if samples else None,
                          "rss_mib_after_warmup_min": min(warm) if warm else None,
                          "rss_mib_after_warmup_max": max(warm) if warm else None,
                          "rss_mib_end": samples[-1][1] if samples else None,
                          "samples": samples}
        print("soak", {k: v for k, v in report["soak"].items() if k != "samples"}, flush=True)
    finally:
        server.send_signal(signal.SIGTERM)
        report["server_exit_code"] = server.wait(60)
    report["targets"] = targets(report)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "serve_load.json").write_text(json.dumps(report, indent=1) + "\n")
    (RESULTS / "serve_load.md").write_text(markdown(report))
    print(markdown(report))


def targets(report: dict[str, Any]) -> dict[str, Any]:
    rows = [r for rows in report["sweep"].values() for r in rows]
    infer = {r["concurrency"]: r for r in report["sweep"]["infer"]}
    ratio = infer[4]["rps"] / report["in_process_infer_rps_c4"]
    soak_ratio = report["soak"]["rps"] / report["in_process_infer_rps_c4"]
    tail = infer[8]["latency_ms"]["p99"] / infer[1]["latency_ms"]["p50"]
    soak = report["soak"]
    lo, hi = soak["rss_mib_after_warmup_min"], soak["rss_mib_after_warmup_max"]
    drift = (hi - lo) / lo if lo else float("nan")
    dropped = sum(r["timeouts"] + r["resets"] + r["other"] + r["non_2xx"] - r["status_503"]
                  for r in rows) + soak["errors"]
    return {
        "no_request_dropped": {"value": dropped, "target": "0 answers other than 200 / 503",
                               "met": dropped == 0},
        "counters_match": {"met": all(r["counters_match"] for r in rows)},
        "infer_c4_vs_in_process (sweep, 12 s)": {"value": round(ratio, 3),
                                                 "target": ">= 0.85", "met": ratio >= 0.85},
        "infer_c4_vs_in_process (soak)": {"value": round(soak_ratio, 3),
                                                 "target": ">= 0.85",
                                                 "met": soak_ratio >= 0.85},
        "p99_c8_over_p50_c1": {"value": round(tail, 2), "target": "<= 4", "met": tail <= 4},
        "rss_drift_after_warmup": {"value": round(drift, 4), "target": "<= 0.05",
                                   "met": drift <= 0.05},
    }


def markdown(report: dict[str, Any]) -> str:
    lines = ["# `mgsv-sk serve` under load (loopback, closed loop)", "",
             f"Machine: {report['machine']['cores']} cores, shared by the server "
             f"({report['server']['workers']} workers x {report['server']['n_threads']} "
             "onnxruntime thread) and the load generator. Model: d_model 256, "
             f"{report['model']['tracks']} tracks; `infer` sends up to 50 x 512 frame features "
             "(OIP JSON), `recommend` uploads a 15 s 320x240 mp4 (decoded for real, "
             "encoded by a tiny ViT).", ""]
    for name, rows in report["sweep"].items():
        lines += [f"## {name}", "",
                  "| concurrency | req/s | p50 ms | p95 ms | p99 ms | max ms | non-2xx | 503 "
                  "| timeouts | resets | server counters = client |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|"]
        for r in rows:
            lat = r["latency_ms"]
            lines.append(f"| {r['concurrency']} | {r['rps']} | {lat.get('p50')} | "
                         f"{lat.get('p95')} | {lat.get('p99')} | {lat.get('max')} | "
                         f"{r['non_2xx']} | {r['status_503']} | {r['timeouts']} | "
                         f"{r['resets']} | {'yes' if r['counters_match'] else 'NO'} |")
        lines.append("")
    soak = report["soak"]
    lines += ["## Soak and targets", "",
              f"In-process `ServedModel.infer` (no HTTP) at 4 threads: "
              f"{report['in_process_infer_rps_c4']} req/s.", "",
              f"Soak: `infer` at concurrency 4 for {soak['seconds']:g} s, {soak['requests']} "
              f"requests ({soak['rps']} req/s), server RSS {soak['rss_mib_start']} MiB at "
              f"start, {soak['rss_mib_after_warmup_min']}-{soak['rss_mib_after_warmup_max']} "
              f"MiB after warm-up (first 20 %), {soak['rss_mib_end']} MiB at the end. Server "
              f"exit code after SIGTERM: {report['server_exit_code']}.", "",
              "Reading them: the 2 cores also ran the load generator and, during this run, "
              "other work (training jobs), so one 12 s level can be far off (compare the "
              "sweep's `infer` at concurrency 4 with the soak at the same concurrency over "
              "300 s). With 2 inference workers a closed loop of 8 clients keeps about 3 "
              "requests queued ahead of each one, so p99 at concurrency 8 is at least ~4x the "
              "single-client p50 by construction on 2 cores; meeting that target needs more "
              "cores or batching requests into one onnxruntime call.", "",
              "| target | value | goal | met |", "|---|---:|---|:---:|"]
    for name, t in report["targets"].items():
        lines.append(f"| {name} | {t.get('value', '')} | {t.get('target', 'all levels')} | "
                     f"{'yes' if t['met'] else 'no'} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
