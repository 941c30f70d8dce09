"""fetch_mgsv_ec / `mgsv-sk download` against a stand-in hub on 127.0.0.1 (offline)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
pytest.importorskip("huggingface_hub")

from mgsv_sk.data.features import FeatureTree  # noqa: E402
from mgsv_sk.extract.fetch import DownloadError, fetch_mgsv_ec  # noqa: E402

REPO = "xxayt/MGSV-EC"


def _release_zip(tree_root) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        base = tree_root / "features"
        for path in sorted(base.rglob("*.pt")):
            archive.write(path, "MGSV-EC_features/" + str(path.relative_to(base)))
    return buf.getvalue()


class StandIn:
    """Serves a repository tree listing, HEAD metadata and ranged GETs like the hub."""

    def __init__(self, files: dict[str, bytes], lfs: set[str]) -> None:
        self.files, self.lfs = files, lfs
        self.ranges: list[str] = []
        self.cut_after: int | None = None  # drop the connection after this many bytes
        self.broken = False  # answer 503 to everything
        self.listed_sha: dict[str, str] = {}
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _meta(self, path):
                data = stand_in.files[path]
                sha = hashlib.sha256(data).hexdigest()
                self.send_header("X-Repo-Commit", "a" * 40)
                self.send_header("ETag", f'"{sha}"')
                if path in stand_in.lfs:
                    self.send_header("X-Linked-Etag", f'"{sha}"')
                    self.send_header("X-Linked-Size", str(len(data)))

            def _file(self):
                prefix = f"/datasets/{REPO}/resolve/main/"
                if not self.path.startswith(prefix) or self.path[len(prefix):] not in \
                        stand_in.files:
                    self.send_error(404)
                    return None
                return self.path[len(prefix):]

            def do_HEAD(self):
                if stand_in.broken:
                    self.send_error(503)
                    return
                path = self._file()
                if path is None:
                    return
                self.send_response(200)
                self._meta(path)
                self.send_header("Content-Length", str(len(stand_in.files[path])))
                self.end_headers()

            def do_GET(self):
                if stand_in.broken:
                    self.send_error(503)
                    return
                if self.path.startswith(f"/api/datasets/{REPO}/tree/main"):
                    body = json.dumps([stand_in.entry(p) for p in stand_in.files]).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                path = self._file()
                if path is None:
                    return
                data = stand_in.files[path]
                start = 0
                if "Range" in self.headers:
                    stand_in.ranges.append(self.headers["Range"])
                    start = int(self.headers["Range"].split("=")[1].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self._meta(path)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                chunk = data[start:]
                if stand_in.cut_after is not None and path == "features.zip":
                    self.wfile.write(chunk[: stand_in.cut_after])
                    stand_in.broken = True  # the network goes away
                    self.wfile.flush()
                    self.connection.shutdown(2)
                    return
                self.wfile.write(chunk)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def entry(self, path):
        data = self.files[path]
        sha = self.listed_sha.get(path, hashlib.sha256(data).hexdigest())
        out = {"type": "file", "path": path, "size": len(data),
               "oid": hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()}
        if path in self.lfs:
            out["lfs"] = {"oid": sha, "size": len(data), "pointerSize": 130}
        return out

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hub(release_tree):
    root = release_tree.root
    files = {f"dataset/{n}": (root / "dataset" / "MGSV-EC" / "train_data.csv").read_bytes()
             for n in ("train_data.csv", "val_data.csv", "test_data.csv")}
    files["features.zip"] = _release_zip(root)
    server = StandIn(files, lfs={"features.zip"})
    yield server
    server.close()


def test_download_extracts_the_release_layout(hub, release_tree, tmp_path):
    result = fetch_mgsv_ec(tmp_path / "mgsv", endpoint=hub.endpoint, pack=tmp_path / "packed")
    assert sorted(result.csvs) == ["test", "train", "val"]
    assert len(result.downloaded) == 4
    tree = FeatureTree(tmp_path / "mgsv")
    original = release_tree.features
    video_id = release_tree.frame["video_id"].iloc[0]
    assert (tree.video(video_id) == original.video(video_id)).all()
    assert sorted(result.packed.video_ids()) == sorted(original.video_ids())
    again = fetch_mgsv_ec(tmp_path / "mgsv", endpoint=hub.endpoint)  # cached: nothing fetched
    assert again.downloaded == [] and hub.ranges == []


def test_interrupted_download_resumes(hub, tmp_path, monkeypatch):
    from huggingface_hub import constants

    # the client writes in chunks of 10 MB; the stand-in's zip is smaller than one
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 1000)
    hub.cut_after = 4000
    with pytest.raises(Exception):  # noqa: B017 - whatever the client raises for a lost link
        fetch_mgsv_ec(tmp_path / "mgsv", endpoint=hub.endpoint)
    parts = list((tmp_path / "mgsv" / ".download").rglob("*.part"))
    assert parts and parts[0].stat().st_size == 4000
    hub.cut_after, hub.broken = None, False
    result = fetch_mgsv_ec(tmp_path / "mgsv", endpoint=hub.endpoint)
    assert "bytes=4000-" in hub.ranges
    assert FeatureTree(tmp_path / "mgsv").video_ids()
    assert result.csvs


def test_checksum_mismatch_is_refused(hub, tmp_path):
    hub.listed_sha["features.zip"] = "0" * 64
    with pytest.raises(DownloadError, match="does not match the hub's checksum"):
        fetch_mgsv_ec(tmp_path / "mgsv", endpoint=hub.endpoint)
    assert not list((tmp_path / "mgsv" / ".download").rglob("features.zip*"))


def test_corrupt_zip_is_refused(hub, tmp_path):
    data = bytearray(hub.files["features.zip"])
    data[200:260] = b"x" * 60  # inside the first member: its CRC fails
    hub.files["features.zip"] = bytes(data)
    with pytest.raises(DownloadError, match="not a readable zip"):
        fetch_mgsv_ec(tmp_path / "mgsv", endpoint=hub.endpoint)
    assert not (tmp_path / "mgsv" / "features" / "Kuai_feature" / "vit_feature1").exists()
