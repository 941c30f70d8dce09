"""Issue 22, roots 3 and 5: downloads check what they used to trust. A hostile listing
never writes outside the target folder; "extracted" markers are checked against the tree;
a `.part` that cannot be the file's start is restarted; the hub client's errors become ours;
a zip is capped relative to the size the listing gives it."""

from __future__ import annotations

import io
import os
import zipfile

import pytest

os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
pytest.importorskip("huggingface_hub")

from test_fetch import REPO, StandIn, _release_zip  # noqa: E402

from mgsv_sk.cli import main  # noqa: E402
from mgsv_sk.data.features import FeatureTree  # noqa: E402
from mgsv_sk.extract.fetch import DownloadError, fetch_mgsv_ec  # noqa: E402


def _csvs(release_tree) -> dict[str, bytes]:
    data = (release_tree.root / "dataset" / "MGSV-EC" / "train_data.csv").read_bytes()
    return {f"dataset/{n}": data for n in ("train_data.csv", "val_data.csv", "test_data.csv")}


@pytest.fixture
def serve():
    servers = []

    def make(files: dict[str, bytes], lfs: set[str] = frozenset({"features.zip"})) -> StandIn:
        servers.append(StandIn(files, set(lfs)))
        return servers[-1]
    yield make
    for s in servers:
        s.close()


def _everything(folder) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.mark.parametrize("hostile", ["../../evil/train_data.csv", "/tmp/abs/train_data.csv",
                                     "dataset/..\\..\\train_data.csv", "a/./features.zip"])
def test_a_hostile_listing_writes_nothing_outside(serve, release_tree, tmp_path, hostile, capsys):
    files = _csvs(release_tree)
    files[hostile] = b"payload"
    files["features.zip"] = _release_zip(release_tree.root)
    hub = serve(files)
    (tmp_path / "work").mkdir()
    before = _everything(tmp_path)
    with pytest.raises(DownloadError, match=r"the hub listing of xxayt/MGSV-EC: entry"):
        fetch_mgsv_ec(tmp_path / "work" / "mgsv", endpoint=hub.endpoint)
    assert _everything(tmp_path) == before  # nothing fetched, nothing written
    assert main(["download", str(tmp_path / "work" / "mgsv"), "--endpoint", hub.endpoint]) == 1
    assert "refusing it" in capsys.readouterr().err


@pytest.fixture
def hub(serve, release_tree):
    return serve({**_csvs(release_tree), "features.zip": _release_zip(release_tree.root)})


def test_the_extracted_marker_is_checked_against_the_tree(hub, tmp_path):
    import shutil

    root = tmp_path / "mgsv"
    fetch_mgsv_ec(root, endpoint=hub.endpoint)
    n = len(FeatureTree(root).video_ids())
    shutil.rmtree(root / "features")  # the user deleted the features; the marker stays
    again = fetch_mgsv_ec(root, endpoint=hub.endpoint)
    assert again.downloaded == [] and len(FeatureTree(root).video_ids()) == n
    one = next((root / "features").rglob("*.pt"))
    one.write_bytes(b"truncated")  # a changed file is extracted again too
    fetch_mgsv_ec(root, endpoint=hub.endpoint)
    assert one.stat().st_size > len(b"truncated")


@pytest.mark.parametrize("prefix", [b"<!DOCTYPE html><html><body>503</body></html>",
                                    b"  <html>rate limited</html>", b"not a zip at all"])
def test_a_part_that_cannot_be_the_file_start_is_restarted(hub, tmp_path, prefix):
    root = tmp_path / "mgsv"
    part = root / ".download" / "features.zip.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(prefix)
    fetch_mgsv_ec(root, endpoint=hub.endpoint)
    assert f"bytes={len(prefix)}-" not in hub.ranges  # restarted from the first byte
    assert FeatureTree(root).video_ids()


def test_a_resumed_part_failing_its_checksum_is_fetched_again_from_the_start(hub, tmp_path):
    root = tmp_path / "mgsv"
    part = root / ".download" / "features.zip.part"
    part.parent.mkdir(parents=True)
    good = hub.files["features.zip"]
    part.write_bytes(good[:4] + b"\x00" * 60)  # starts as a zip, but its bytes are wrong
    fetch_mgsv_ec(root, endpoint=hub.endpoint)
    assert "bytes=64-" in hub.ranges  # resumed once, failed its checksum, restarted
    assert (root / ".download" / "features.zip").read_bytes() == good


def test_hub_errors_are_ours_with_this_apis_advice(hub, tmp_path, capsys, monkeypatch):
    import huggingface_hub.utils._http as http

    monkeypatch.setattr(http.time, "sleep", lambda s: None)  # the client's retries, at once
    with pytest.raises(DownloadError, match=r"'nobody/none' was not found .*check repo_id=") as e:
        fetch_mgsv_ec(tmp_path / "a", endpoint=hub.endpoint, repo_id="nobody/none")
    assert "force_download" not in str(e.value) and "local_files_only" not in str(e.value)
    hub.broken = True
    with pytest.raises(DownloadError, match="answered HTTP 503; try again later"):
        fetch_mgsv_ec(tmp_path / "b", endpoint=hub.endpoint)
    with pytest.raises(DownloadError, match="cannot reach the hub at http://127.0.0.1:9"):
        fetch_mgsv_ec(tmp_path / "c", endpoint="http://127.0.0.1:9")
    assert main(["download", str(tmp_path / "d"), "--endpoint", hub.endpoint]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("mgsv-sk: error: ") and "HTTP 503" in last


def test_a_zip_bomb_is_refused_before_anything_lands(serve, release_tree, tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("MGSV-EC_features/vit_feature1/vit_feature/big.pt", b"\0" * (64 << 20))
    hub = serve({**_csvs(release_tree), "features.zip": buf.getvalue()})
    assert len(buf.getvalue()) < 200_000
    with pytest.raises(DownloadError, match=r"would expand to 67108864 bytes .*more than 100"):
        fetch_mgsv_ec(tmp_path / "mgsv", endpoint=hub.endpoint)
    assert not list((tmp_path / "mgsv").rglob("*.pt"))


def test_a_zip_member_leaving_the_tree_is_refused(serve, release_tree, tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("MGSV-EC_features/vit_feature1/vit_feature/a.pt", b"x")
        archive.writestr("../../outside.pt", b"x")
    hub = serve({**_csvs(release_tree), "features.zip": buf.getvalue()})
    with pytest.raises(DownloadError, match="member '../../outside.pt' holds"):
        fetch_mgsv_ec(tmp_path / "mgsv", endpoint=hub.endpoint)
    assert not (tmp_path / "outside.pt").exists()


assert REPO == "xxayt/MGSV-EC"
