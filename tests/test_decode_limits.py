"""Decoding bounded by its output, not its input: a video's codec, frame size and frames
to decode are checked from its header before any frame is decoded, and a large frame is
scaled while it is converted (no full-size RGB copy). Peak memory is measured in a fresh
process (``ru_maxrss``), and for the service, as the server process's ``VmHWM``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")
pytest.importorskip("PIL")

from _media import write_big  # noqa: E402

from mgsv_sk.extract.video import (  # noqa: E402
    SERVE_LIMITS,
    VideoLimitError,
    VideoLimits,
    clip_pixels,
    load_clip,
)

ROOT = Path(__file__).resolve().parents[1]
MIB = 1 << 20


@pytest.fixture(scope="module")
def huge(tmp_path_factory) -> Path:
    """8192 x 8192, 2 frames: about 100 KB that would decode to 200 MB of RGB a frame."""
    return write_big(tmp_path_factory.mktemp("huge") / "huge.mp4", 8192, 8192, 2)


_PEAK = """
import json, resource, sys
from mgsv_sk.extract.video import VideoLimits, load_clip
limits = VideoLimits(**json.loads(sys.argv[2]))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    clip = load_clip(sys.argv[1], limits=limits)
    out = {"frames": len(clip.pixels)}
except ValueError as exc:
    out = {"error": type(exc).__name__ + ": " + str(exc)}
out["peak_mib"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(json.dumps(out))
"""


def peak(path: Path, **limits: int) -> dict:
    """load_clip in a fresh process: its result and the rise of the peak RSS it caused."""
    done = subprocess.run([sys.executable, "-c", _PEAK, str(path), json.dumps(limits)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)
    return json.loads(done.stdout)


def test_huge_frames_are_refused_from_the_header(huge):
    began = time.perf_counter()
    got = peak(huge)
    assert got["error"].startswith("VideoLimitError")
    assert "8192x8192" in got["error"] and "scale=-2:1080" in got["error"]
    # nothing decoded: one decoded frame alone would be 96 MiB (YUV 4:2:0)
    assert got["peak_mib"] < 16, got
    assert time.perf_counter() - began < 30


def test_large_frames_are_scaled_while_decoding(huge):
    """Allowed at 8192 x 8192, the clip decodes with far less than one full-size RGB
    frame (192 MiB) on top of the decoder's own frames, and matches the recipe."""
    allowed = {"max_pixels": 8192 * 8192}
    got = peak(huge, **allowed)
    assert got["frames"] == 2
    # the decoder's references (~100 MiB a frame) and nothing of RGB size beside them
    assert got["peak_mib"] < 400, got
    clip = load_clip(huge, limits=VideoLimits(**allowed))
    with av.open(str(huge)) as container:  # the recipe on the full-size frame
        exact = clip_pixels(next(container.decode(video=0)).to_image())
    assert np.abs(clip.pixels[0] - exact).mean() < 0.02
    assert np.abs(clip.pixels[0] - exact).max() < 0.25


def test_too_many_frames_are_refused_from_the_header(tmp_path):
    path = write_big(tmp_path / "fast.mp4", 64, 48, 30, fps=30)  # 1 s at 30 fps
    with pytest.raises(VideoLimitError, match=r"about 30 frames \(30 fps\).*at most 20.*-r 30"):
        load_clip(path, limits=VideoLimits(max_frames=20))
    assert len(load_clip(path, limits=VideoLimits(max_frames=30)).pixels) == 1


def test_an_uncommon_codec_is_refused_by_the_server_limits(tmp_path):
    path = write_big(tmp_path / "lossless.mkv", 64, 48, 3, codec="ffv1")
    assert len(load_clip(path).pixels) == 3  # the library decodes any codec FFmpeg has
    with pytest.raises(VideoLimitError, match=r"codec 'ffv1'.*libx264"):
        load_clip(path, limits=SERVE_LIMITS)


def test_the_server_refuses_a_huge_upload_with_its_peak_memory_flat(huge, tmp_path_factory):
    """The issue's case over HTTP: a ~100 KB 8192 x 8192 mp4 is a 422 naming the fix, and
    the server's peak RSS (VmHWM) does not move."""
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    from _serve import fixture_dir, free_port

    fx = fixture_dir(tmp_path_factory)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mgsv_sk", "serve", str(fx / "bundle"), "--port", str(port),
         "--workers", "1"], env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and server.poll() is None, "no server"
            time.sleep(0.2)

        def hwm() -> float:
            status = Path(f"/proc/{server.pid}/status").read_text()
            return int(next(line.split()[1] for line in status.splitlines()
                            if line.startswith("VmHWM:"))) / 1024

        with open(fx / "query.mp4", "rb") as fh:  # warm: the first upload's allocations
            assert httpx.post(f"{url}/v1/recommend", files={"video": ("q.mp4", fh)},
                              timeout=60).status_code == 200
        before = hwm()
        with open(huge, "rb") as fh:
            response = httpx.post(f"{url}/v1/recommend",
                                  files={"video": ("huge.mp4", fh, "video/mp4")}, timeout=60)
        assert response.status_code == 422
        assert "8192x8192" in response.text and "'huge.mp4'" in response.text
        assert str(huge.parent) not in response.text
        assert hwm() - before < 16
    finally:
        server.terminate()
        server.wait(30)
