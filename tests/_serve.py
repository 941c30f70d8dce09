"""Shared by the service tests (and the service's benchmarks): the fixture folder (built
once per session), a uvicorn server on a free loopback port, in a thread, and raw clients:
connections from any loopback address, upload forms, a stalled upload."""

from __future__ import annotations

import importlib.util
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

_BUILT: dict[str, Path] = {}


def fixture_dir(tmp_path_factory: Any) -> Path:
    """``MGSV_SERVE_FIXTURE`` (CI's torch-free environment), else built here with torch."""
    given = os.environ.get("MGSV_SERVE_FIXTURE")
    if given:
        return Path(given)
    if "dir" not in _BUILT:
        if importlib.util.find_spec("torch") is None:
            pytest.skip("no MGSV_SERVE_FIXTURE and no torch to build one")
        for module in ("av", "soundfile", "transformers"):
            pytest.importorskip(module)
        from serve_fixture import build

        _BUILT["dir"] = build(tmp_path_factory.mktemp("serve"))
    return _BUILT["dir"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def connect(port: int, source: str = "127.0.0.1", timeout: float = 15) -> socket.socket:
    """A raw connection from ``source`` (any 127.x address is this machine's loopback)."""
    return socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                    source_address=(source, 0))


def form_head(filename: str = "q.mp4", boundary: str = "B") -> bytes:
    """A multipart form's opening up to the ``video`` file field's bytes."""
    return (f"--{boundary}\r\nContent-Disposition: form-data; name=\"video\"; "
            f"filename=\"{filename}\"\r\nContent-Type: video/mp4\r\n\r\n").encode()


def video_form(data: bytes, filename: str = "q.mp4", boundary: str = "B") -> tuple[bytes, str]:
    """A whole multipart form with ``data`` as its ``video`` file, and its Content-Type."""
    return (form_head(filename, boundary) + data + f"\r\n--{boundary}--\r\n".encode(),
            f"multipart/form-data; boundary={boundary}")


def next_status(answers: Any) -> bytes:
    """Read one whole answer from ``answers`` (a connection's ``makefile("rb")``, where
    pipelined answers follow each other); its status code."""
    status = answers.readline().split(b" ")[1:2]
    length = 0
    for line in iter(answers.readline, b"\r\n"):
        if not line:
            raise ConnectionError("the server closed the connection inside an answer")
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    answers.read(length)
    return status[0] if status else b"?"


def stalled_upload(port: int, source: str, forwarded: str | None = None) -> socket.socket:
    """An upload that declares 100 kB, sends its first 500 bytes and stops (saying it
    comes for ``forwarded``, as a proxy's request would)."""
    boundary = "stall"
    first = (form_head("a.mp4", boundary) + b"\x00" * 500)[:500]
    proxy = "" if forwarded is None else f"X-Forwarded-For: {forwarded}\r\n"
    sock = connect(port, source)
    sock.sendall((f"POST /v1/recommend HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
                  f"{proxy}Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n"
                  ).encode() + first)
    return sock


class ThreadedServer:
    """uvicorn serving ``app`` on 127.0.0.1 in a daemon thread (``with`` starts and stops
    it); ``url`` is its base URL."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        from mgsv_sk.serve.http.server import uvicorn_config

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn_config(app, "127.0.0.1", self.port, graceful_seconds=5,
                                log_level="warning")  # what `mgsv-sk serve` runs
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ThreadedServer:
        import httpx

        self.thread.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("the test server did not become ready in 30 s")

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def held(call: Any) -> tuple[Any, threading.Event, list[Any]]:
    """``call`` wrapped to note each call's first argument's length in ``calls`` and then
    wait for ``release`` (at most 30 s) before it runs: (wrapper, release, calls)."""
    release, calls = threading.Event(), []

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls.append(len(args[0]) if args and hasattr(args[0], "__len__") else 1)
        release.wait(30)
        return call(*args, **kwargs)

    return wrapper, release, calls


def one_lane_held(fx: Path) -> tuple[Any, threading.Event, list[int]]:
    """A served model with one lane and no batch delay whose batches wait for ``release``
    once they have noted their size in ``ran``: (model, release, ran)."""
    from mgsv_sk.serve import ServedModel

    model = ServedModel.load(fx / "bundle", fx / "catalogue", lanes=1)
    model.batch_delay = 0.0
    model._batcher._run, release, ran = held(model._batcher._run)
    return model, release, ran


def wait_until(condition: Any, seconds: float = 20) -> None:
    """Poll ``condition()`` until it holds (at most ``seconds``)."""
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
