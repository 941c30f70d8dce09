"""What hostile clients cost a legitimate one: the same client's requests against 2,000
tracks on a quiet server, then while hostile clients work the same server at once, each
from an address of its own on the loopback interface (every 127.x.y.z is this host).

The legitimate client (127.0.0.9) sends OIP ``infer`` requests back to back (binary
tensors, a keep-alive ``http.client`` connection) and, from a second thread, one video
upload a second. The hostile clients, for the whole attack phase:

- **stall**: 3 uploads that declare 100 kB, send their first 500 bytes and stop (each
  reopened when the server cuts it off);
- **slowloris**: 40 connections that send a request head one byte a second;
- **hang up**: whole ``infer`` requests, the connection closed at once (10 a second);
- **flood**: 16 threads from one address sending ``infer`` back to back;
- **cheap flood**: 16 connections from one address pipelining GETs that need no inference
  (health, metrics, model metadata), 8 at a time, back to back;
- **malformed**: bodies that are not JSON, shapes of 2^62, both ``Content-Length`` and
  ``Transfer-Encoding``, a gzip bomb, 2,000 header fields, a chunked body in 1-byte
  pieces, in turn;
- **huge frames**: uploads of a 2-frame 8192 x 8192 video (100 KB that would decode to
  200 MB of RGB a frame);
- **gRPC cancel**: ``ModelInfer`` calls cancelled 50 ms after they are sent;
- **gRPC cheap flood**: 16 callers on one channel sending ``ServerLive`` back to back.

Reported: the legitimate client's latencies and errors in both phases, what each hostile
client got (answers by status, connections cut), and the server's resident memory (its
peak, ``VmHWM``) after each phase.

    python benchmarks/serve_hostile.py [--seconds 20]

Writes ``benchmarks/results/serve_hostile.json`` and ``.md``. The bundle is
``serve_load.py``'s (built there on first use, under the same ``--work``).
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1]
                                                         / "tests")]
from _serve import connect, next_status, stalled_upload, video_form  # noqa: E402
from serve_load import RESULTS, free_port, oip_body, percentiles, start_server  # noqa: E402

#: The legitimate client's address (grpcio's channels cannot choose theirs: 127.0.0.1 is
#: the gRPC client's).
LEGITIMATE = "127.0.0.9"


def closed(sock: socket.socket) -> bool:
    """Whether the server has closed ``sock`` (what it sent before is read and dropped)."""
    sock.setblocking(False)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        sock.setblocking(True)


class Hostile:
    """One hostile client: ``work(stop, tally)`` runs until ``stop`` is set, counting what
    it got in ``tally``."""

    def __init__(self, name: str, work: Callable[[threading.Event, Counter[str]], None]
                 ) -> None:
        self.name, self.work, self.tally = name, work, Counter[str]()

    def start(self, stop: threading.Event) -> threading.Thread:
        def run() -> None:
            try:
                self.work(stop, self.tally)
            except Exception as exc:  # noqa: BLE001 - reported, the others go on
                self.tally[f"gave up: {type(exc).__name__}: {exc}"[:120]] += 1
        thread = threading.Thread(target=run, name=self.name, daemon=True)
        thread.start()
        return thread


def in_threads(one: Callable[[int], None], threads: int) -> None:
    """``one(j)`` for j in ``range(threads)``, each on a thread of its own; returns when all
    have."""
    pool = [threading.Thread(target=one, args=(j,), daemon=True) for j in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()


def stalled_uploads(port: int, source: str) -> Callable[..., None]:
    def work(stop: threading.Event, tally: Counter[str]) -> None:
        def open_one() -> socket.socket:
            tally["opened"] += 1
            return stalled_upload(port, source)
        socks = [open_one() for _ in range(3)]
        while not stop.wait(0.5):
            for i, sock in enumerate(socks):
                if closed(sock):
                    tally["cut off by the server"] += 1
                    sock.close()
                    socks[i] = open_one()
        for sock in socks:
            sock.close()
    return work


def slowloris(port: int, source: str, n: int = 40) -> Callable[..., None]:
    head = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 10_000

    def work(stop: threading.Event, tally: Counter[str]) -> None:
        socks = [connect(port, source) for _ in range(n)]
        sent = [0] * n
        tally["opened"] += n
        while not stop.wait(1.0):
            for i, sock in enumerate(socks):
                try:
                    if closed(sock):
                        raise ConnectionResetError
                    sock.sendall(head[sent[i] % len(head): sent[i] % len(head) + 1])
                    sent[i] += 1
                except OSError:
                    tally["cut off by the server"] += 1
                    sock.close()
                    socks[i], sent[i] = connect(port, source), 0
                    tally["opened"] += 1
        for sock in socks:
            sock.close()
    return work


def hang_ups(port: int, source: str, body: bytes, headers: dict[str, str]
             ) -> Callable[..., None]:
    request = (b"POST /v2/models/mgsv/infer HTTP/1.1\r\nHost: x\r\n"
               + b"".join(f"{k}: {v}\r\n".encode() for k, v in headers.items())
               + b"Content-Length: %d\r\n\r\n" % len(body) + body)

    def work(stop: threading.Event, tally: Counter[str]) -> None:
        while not stop.wait(0.1):
            with connect(port, source) as sock:
                sock.sendall(request)
            tally["sent and hung up on"] += 1
    return work


def flood(port: int, source: str, bodies: list[tuple[bytes, dict[str, str]]],
          threads: int = 16) -> Callable[..., None]:
    def work(stop: threading.Event, tally: Counter[str]) -> None:
        def one(j: int) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60,
                                              source_address=(source, 0))
            while not stop.is_set():
                body, headers = bodies[j % len(bodies)]
                j += threads
                try:
                    conn.request("POST", "/v2/models/mgsv/infer", body=body, headers=headers)
                    answer = conn.getresponse()
                    answer.read()
                    tally[str(answer.status)] += 1
                    if answer.status in (429, 503):
                        time.sleep(float(answer.getheader("Retry-After") or 1) / 10)
                except (OSError, http.client.HTTPException) as exc:
                    tally[type(exc).__name__] += 1
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60,
                                                      source_address=(source, 0))
            conn.close()
        in_threads(one, threads)
    return work


#: What the cheap flood asks for: answers that take no inference, only the event loop.
CHEAP_PATHS = ("/v2/health/live", "/metrics", "/v2/models/mgsv")


def cheap_flood(port: int, source: str, threads: int = 16, depth: int = 8
                ) -> Callable[..., None]:
    """``threads`` keep-alive connections from one address, each sending ``depth`` GETs
    of :data:`CHEAP_PATHS` at a time (pipelined) and reading their answers."""
    def work(stop: threading.Event, tally: Counter[str]) -> None:
        def one(j: int) -> None:
            path = CHEAP_PATHS[j % len(CHEAP_PATHS)]
            request = f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode() * depth
            with connect(port, source, timeout=60) as sock, sock.makefile("rb") as answers:
                while not stop.is_set():
                    sock.sendall(request)
                    for _ in range(depth):
                        tally[next_status(answers).decode()] += 1
        in_threads(one, threads)
    return work


def malformed_requests() -> list[tuple[str, bytes]]:
    """Whole raw requests, each with its name."""
    def post(body: bytes, *fields: bytes) -> bytes:
        return (b"POST /v2/models/mgsv/infer HTTP/1.1\r\nHost: x\r\n" + b"".join(
            f + b"\r\n" for f in fields) + b"Content-Length: %d\r\n\r\n" % len(body) + body)
    bomb = gzip.compress(b'{"inputs": [' + b" " * (64 << 20) + b"]}")
    shape = json.dumps({"inputs": [{"name": "video_frames", "datatype": "FP32",
                                    "shape": [2**62, 2**62], "data": [0.5]}]}).encode()
    chunks = b"".join(b"1\r\n%c\r\n" % c for c in b'{"inputs": []}' * 200) + b"0\r\n\r\n"
    return [
        ("not JSON", post(b"{" * 5000)),
        ("shape 2^62", post(shape)),
        ("both framings", post(b"{}", b"Transfer-Encoding: chunked")),
        ("gzip bomb", post(bomb, b"Content-Encoding: gzip")),
        ("2,000 header fields", b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n" + b"".join(
            b"X-%d: 1\r\n" % i for i in range(2000)) + b"\r\n"),
        ("1-byte chunks", b"POST /v2/models/mgsv/infer HTTP/1.1\r\nHost: x\r\n"
                          b"Transfer-Encoding: chunked\r\n\r\n" + chunks),
    ]


def malformed(port: int, source: str) -> Callable[..., None]:
    requests = malformed_requests()

    def work(stop: threading.Event, tally: Counter[str]) -> None:
        i = 0
        while not stop.wait(0.05):
            name, raw = requests[i % len(requests)]
            i += 1
            with connect(port, source) as sock:
                try:
                    sock.sendall(raw)
                    status = sock.recv(64).split(b" ")[1].decode()
                except (OSError, IndexError) as exc:
                    status = type(exc).__name__
            tally[f"{name}: {status}"] += 1
    return work


def huge_frames(port: int, source: str, path: Path) -> Callable[..., None]:
    body, kind = video_form(path.read_bytes(), path.name)

    def work(stop: threading.Event, tally: Counter[str]) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60,
                                          source_address=(source, 0))
        while not stop.wait(0.2):
            conn.request("POST", "/v1/recommend", body=body, headers={"Content-Type": kind})
            answer = conn.getresponse()
            answer.read()
            tally[str(answer.status)] += 1
        conn.close()
    return work


def grpc_cancels(port: int, frames: np.ndarray) -> Callable[..., None]:
    def work(stop: threading.Event, tally: Counter[str]) -> None:
        import grpc

        from mgsv_sk.serve.grpc import predict_v2_pb2 as pb

        request = pb.ModelInferRequest(model_name="mgsv")
        request.inputs.add(name="video_frames", datatype="FP32", shape=frames.shape)
        request.raw_input_contents.append(np.ascontiguousarray(frames, "<f4").tobytes())
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            infer = channel.unary_unary(
                "/inference.GRPCInferenceService/ModelInfer",
                request_serializer=pb.ModelInferRequest.SerializeToString,
                response_deserializer=pb.ModelInferResponse.FromString)
            while not stop.wait(0.1):
                call = infer.future(request, timeout=30)
                time.sleep(0.05)
                tally["cancelled" if call.cancel() else "answered first"] += 1
    return work


def grpc_cheap_flood(port: int, threads: int = 16) -> Callable[..., None]:
    """``threads`` callers on one channel sending ``ServerLive`` back to back."""
    def work(stop: threading.Event, tally: Counter[str]) -> None:
        import grpc

        from mgsv_sk.serve.grpc import predict_v2_pb2 as pb

        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            live = channel.unary_unary(
                "/inference.GRPCInferenceService/ServerLive",
                request_serializer=pb.ServerLiveRequest.SerializeToString,
                response_deserializer=pb.ServerLiveResponse.FromString)

            def one(_: int) -> None:
                while not stop.is_set():
                    try:
                        live(pb.ServerLiveRequest(), timeout=30)
                        tally["OK"] += 1
                    except grpc.RpcError as exc:
                        tally[exc.code().name] += 1
            in_threads(one, threads)
    return work


def timed(conn: http.client.HTTPConnection, path: str, body: bytes, headers: dict[str, str],
          ms: list[float], errors: Counter[str], what: str) -> None:
    """POST ``body`` to ``path``: its milliseconds in ``ms`` when answered 200, else its
    status counted in ``errors`` under ``what``."""
    began = time.perf_counter()
    conn.request("POST", path, body=body, headers=headers)
    answer = conn.getresponse()
    answer.read()
    if answer.status == 200:
        ms.append(1e3 * (time.perf_counter() - began))
    else:
        errors[f"{what} {answer.status}"] += 1


def legitimate(port: int, bodies: list[tuple[bytes, dict[str, str]]], clip: Path,
               seconds: float) -> dict[str, Any]:
    """The legitimate client's infer latencies (back to back) and uploads (one a second)."""
    stop = time.monotonic() + seconds
    infer_ms: list[float] = []
    upload_ms: list[float] = []
    errors: Counter[str] = Counter()

    def uploads() -> None:
        body, kind = video_form(clip.read_bytes(), clip.name)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60,
                                          source_address=(LEGITIMATE, 0))
        while time.monotonic() < stop:
            began = time.perf_counter()
            timed(conn, "/v1/recommend?k=5", body, {"Content-Type": kind}, upload_ms,
                  errors, "upload")
            time.sleep(max(0.0, 1.0 - (time.perf_counter() - began)))
        conn.close()

    uploader = threading.Thread(target=uploads, daemon=True)
    uploader.start()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60,
                                      source_address=(LEGITIMATE, 0))
    i = 0
    while time.monotonic() < stop:
        body, headers = bodies[i % len(bodies)]
        i += 1
        timed(conn, "/v2/models/mgsv/infer", body, headers, infer_ms, errors, "infer")
    conn.close()
    uploader.join()
    return {"infer": {"requests": len(infer_ms), **percentiles(infer_ms)},
            "upload": {"requests": len(upload_ms), **percentiles(upload_ms)},
            "errors": dict(errors)}


def memory(pid: int) -> dict[str, float]:
    """The server's resident memory now and at its peak, MiB."""
    fields = dict(line.split(":", 1) for line in
                  Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {name: round(int(fields[key].split()[0]) / 1024, 1)
            for name, key in (("rss_mib", "VmRSS"), ("peak_mib", "VmHWM"))}


def attack(port: int, grpc_port: int, bodies: list[tuple[bytes, dict[str, str]]],
           frames: np.ndarray, huge: Path) -> list[Hostile]:
    """The hostile clients, each from an address of its own."""
    return [
        Hostile("stall", stalled_uploads(port, "127.0.0.2")),
        Hostile("slowloris", slowloris(port, "127.0.0.3")),
        Hostile("hang up", hang_ups(port, "127.0.0.4", *bodies[0])),
        Hostile("flood", flood(port, "127.0.0.5", bodies)),
        Hostile("cheap flood", cheap_flood(port, "127.0.0.8")),
        Hostile("malformed", malformed(port, "127.0.0.6")),
        Hostile("huge frames", huge_frames(port, "127.0.0.7", huge)),
        Hostile("gRPC cancel", grpc_cancels(grpc_port, frames)),
        Hostile("gRPC cheap flood", grpc_cheap_flood(grpc_port)),
    ]


def phase(port: int, pid: int, bodies: list[tuple[bytes, dict[str, str]]], clip: Path,
          seconds: float, hostile: list[Hostile]) -> dict[str, Any]:
    """The legitimate client's figures while ``hostile`` work (2 s ahead of it)."""
    stop = threading.Event()
    threads = [h.start(stop) for h in hostile]
    if hostile:
        time.sleep(2.0)
    got = legitimate(port, bodies, clip, seconds)
    stop.set()
    for t in threads:
        t.join(30)
    got["hostile"] = {h.name: dict(h.tally) for h in hostile}
    got["server_memory"] = memory(pid)
    return got


#: The server's options per run: its defaults, then a tighter share per client address.
CONFIGS = {"defaults": (), "--max-client-requests 2": ("--max-client-requests", "2")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="per phase")
    parser.add_argument("--work", type=Path,
                        default=Path(tempfile.gettempdir()) / "mgsv-serve-load")
    args = parser.parse_args()
    work = args.work
    if not (work / "done").is_file():
        subprocess.run([sys.executable, str(Path(__file__).with_name("serve_load.py")),
                        "--build-only", "--work", str(work)], check=True)
    from _media import write_big

    huge = write_big(work / "huge.mp4", 8192, 8192, 2)
    clip = work / "clip.mp4"
    with np.load(work / "frames.npz") as stored:
        frames = [stored[name] for name in stored.files][:16]
    bodies = [oip_body(f, "binary") for f in frames]
    report: dict[str, Any] = {
        "machine": {"cores": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "server": "mgsv-sk serve with --grpc-port, 2,000 tracks", "seconds": args.seconds,
        "runs": {}}
    for config, options in CONFIGS.items():
        port, grpc_port = free_port(), free_port()
        server = start_server(work, port, options=("--grpc-port", str(grpc_port), *options))
        phases: dict[str, Any] = {}
        try:
            legitimate(port, bodies, clip, 3.0)  # warm-up
            phases["quiet"] = phase(port, server.pid, bodies, clip, args.seconds, [])
            if config == "defaults":  # each hostile client alone: what it costs
                for one in attack(port, grpc_port, bodies, frames[0], huge):
                    phases[f"{one.name} alone"] = phase(port, server.pid, bodies, clip,
                                                        args.seconds, [one])
            phases["all at once"] = phase(port, server.pid, bodies, clip, args.seconds,
                                          attack(port, grpc_port, bodies, frames[0], huge))
        finally:
            server.terminate()
            server.wait(60)
        for name, got in phases.items():
            print(config, name, json.dumps(got), flush=True)
        report["runs"][config] = phases
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "serve_hostile.json").write_text(json.dumps(report, indent=1) + "\n")
    (RESULTS / "serve_hostile.md").write_text(markdown(report))


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# A legitimate client while hostile clients work the same server",
        "",
        f"`python benchmarks/serve_hostile.py`: {report['server']}, on "
        f"{report['machine']['cores']} cores ({report['machine']['platform']}), "
        f"{report['seconds']:g} s a phase. The legitimate client (127.0.0.9) sends `infer` "
        "back to back (binary tensors) and one upload a second; each hostile client works "
        "from an address of its own, alone or all at once.",
        "",
    ]
    for config, phases in report["runs"].items():
        lines += [f"## Server options: {config}", "",
                  "| phase | infer answered | p50 ms | p99 ms | max ms | uploads answered "
                  "| upload p50 ms | the client's errors | server peak MiB | what the hostile "
                  "client(s) got |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for name, got in phases.items():
            infer, upload = got["infer"], got["upload"]
            hostile = "; ".join(
                f"{who}: " + ", ".join(f"{k} {v}" for k, v in sorted(tally.items()))
                for who, tally in got["hostile"].items()) or "(none)"
            lines.append(
                f"| {name} | {infer['requests']} | {infer.get('p50')} | {infer.get('p99')} | "
                f"{infer.get('max')} | {upload['requests']} | {upload.get('p50')} | "
                f"{got['errors'] or 'none'} | {got['server_memory']['peak_mib']} | "
                f"{hostile} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
