"""Issue 22, roots 2 and 3: only regular files are opened (a FIFO never hangs a command; a
mask that exists but cannot be read is an error, never "absent"), and every path read from
data stays inside its root (one check: ``mgsv_sk.files._paths.inside_root``)."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _media import StubMusicEncoder, write_audio  # noqa: E402

from mgsv_sk import make_synthetic_mgsv  # noqa: E402
from mgsv_sk.cli import main  # noqa: E402
from mgsv_sk.data.features import FeatureError, FeatureTree  # noqa: E402
from mgsv_sk.files._atomic import verify_checksums  # noqa: E402
from mgsv_sk.files._paths import (  # noqa: E402
    PathOutsideRootError,
    inside_root,
    open_regular,
    regular_file,
)

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs (POSIX)")


@pytest.fixture
def fifo(tmp_path):
    def make(name: str) -> Path:
        path = tmp_path / name
        os.mkfifo(path)
        return path
    return make


# == root 2: regular files only ==============================================================
@pytest.mark.parametrize("name", ["clip.mp4", "song.wav", "ids.txt"])
def test_a_fifo_is_refused_by_the_helpers_without_opening_it(fifo, name):
    path = fifo(name)
    with pytest.raises(ValueError, match=r"is a FIFO \(named pipe\), not a regular file"):
        regular_file(path, "input")
    with pytest.raises(ValueError, match="FIFO"):
        open_regular(path, "input")
    with pytest.raises(FileNotFoundError, match="not found"):
        regular_file(path.with_name("absent"), "input")


def test_a_fifo_video_or_track_fails_extraction_and_commands(fifo, tmp_path, monkeypatch,
                                                           capsys):
    pytest.importorskip("av")
    from mgsv_sk.extract import extract_features, load_clip, load_track
    from mgsv_sk.extract.recommend import build_catalogue, video_query

    video, track = fifo("clip.mp4"), fifo("song.wav")
    with pytest.raises(ValueError, match="FIFO"):
        load_clip(video)
    with pytest.raises(ValueError, match="FIFO"):
        load_track(track)
    with pytest.raises(ValueError, match=r"cannot read video .*FIFO"):
        video_query([video], encoder=StubMusicEncoder())
    music = tmp_path / "music"
    music.mkdir()
    write_audio(music / "good.wav", 3.0)
    os.mkfifo(music / "pipe.wav")
    report = build_catalogue([music], tmp_path / "cat", music_encoder=StubMusicEncoder())
    assert report.written == ["good"] and "FIFO" in report.failed[str(music / "pipe.wav")]
    report = extract_features(tmp_path / "tree", music=[track], music_encoder=StubMusicEncoder())
    assert report.written == [] and "FIFO" in report.failed[str(track)]
    import mgsv_sk.cli.media as media

    monkeypatch.setattr(media, "load_encoder", lambda spec, kind: StubMusicEncoder())
    assert main(["catalogue", str(track), str(tmp_path / "cat2"), "-q"]) == 1


def test_recommend_on_a_fifo_is_one_error_line(fifo, tiny_fitted, tmp_path, monkeypatch, capsys):
    pytest.importorskip("av")
    import mgsv_sk.cli.media as media

    model = tmp_path / "model"
    tiny_fitted.save(model)
    video = fifo("clip.mp4")
    monkeypatch.setattr(media, "load_encoder", lambda spec, kind: StubMusicEncoder())
    code = main(["recommend", str(video), "--model", str(model), "--video-encoder", "x"])
    err = capsys.readouterr().err
    assert code == 1 and "FIFO" in err, err


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic_mgsv(6, 3, random_state=5,
                               path=tmp_path_factory.mktemp("r3files") / "release")


@pytest.fixture
def tree(data, tmp_path):
    root = tmp_path / "tree"
    shutil.copytree(data.root, root)
    return FeatureTree(root)


def _mask(src: FeatureTree, vid: str) -> Path:
    return src.base / "vit_feature1" / "vit_mask" / f"{vid}.pt"


@pytest.mark.parametrize("kind", ["dangling", "loop", "fifo", "folder"])
def test_a_mask_that_exists_but_cannot_be_read_is_an_error(kind, tree, data, tmp_path, capsys):
    vid = data.frame["video_id"].iloc[0]
    mask = _mask(tree, vid)
    mask.unlink()
    if kind == "dangling":
        mask.symlink_to(mask.with_name("nowhere.pt"))  # inside the tree, to nothing
    elif kind == "loop":
        mask.symlink_to(mask)
    elif kind == "fifo":
        os.mkfifo(mask)
    else:
        mask.mkdir()
    message = {"dangling": "symbolic link to nothing", "loop": "symbolic link loop",
               "fifo": "FIFO", "folder": "a folder"}[kind]
    with pytest.raises(FeatureError, match=message):
        tree.video(vid)
    assert tree.has_video(vid)  # present, not "absent"
    mask.unlink() if kind != "folder" else mask.rmdir()
    assert len(tree.video(vid)) <= 50  # truly absent mask: every row is a frame


def test_a_feature_file_that_is_a_dangling_link_is_not_missing(tree, data, tmp_path):
    vid = data.frame["video_id"].iloc[0]
    feat = tree.base / "vit_feature1" / "vit_feature" / f"{vid}.pt"
    feat.unlink()
    feat.symlink_to(feat.with_name("gone.pt"))
    tree.check_available([vid], [])  # the name exists...
    with pytest.raises(FeatureError, match="symbolic link to nothing"):
        tree.video(vid)  # ...and says what is wrong with it


def test_predict_with_a_broken_mask_link_fails_through_api_and_cli(tree, data, tiny_fitted,
                                                                   tmp_path, capsys):
    # the tiny model reads 512/768-d features of any ids: ground the tree's own videos
    vid = data.frame["video_id"].iloc[0]
    mask = _mask(tree, vid)
    mask.unlink()
    mask.symlink_to(mask)
    X = data.frame.iloc[:2]
    with pytest.raises(FeatureError, match="symbolic link loop"):
        tiny_fitted.predict(X, features=tree)
    tiny_fitted.save(tmp_path / "model")
    code = main(["predict", str(tmp_path / "model"), str(data.csv_path), "-", "-f",
                 str(tree.root), "--mode", "smg"])
    err = capsys.readouterr().err
    assert code == 1 and "symbolic link loop" in err, err


# == root 3: paths from data stay inside their root =========================================
@pytest.mark.parametrize("rel, why", [
    ("../x", "'..' part"), ("a/../../x", "'..' part"), ("/etc/passwd", "absolute"),
    ("C:/x", "drive"), ("c:x", "drive"), ("a\\..\\x", "backslash"), ("", "empty"),
    ("a//b", "empty"), ("./a", "'.'"), ("a\x00b", "control"),
])
def test_inside_root_refuses_paths_that_leave(tmp_path, rel, why):
    with pytest.raises(PathOutsideRootError, match=why):
        inside_root(tmp_path, rel, "entry")


def test_inside_root_follows_links_already_on_disk(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "out").symlink_to(tmp_path)
    with pytest.raises(PathOutsideRootError, match="through a symbolic link"):
        inside_root(tmp_path / "root", "out/secret", "entry")
    assert inside_root(tmp_path / "root", "a/b.pt", "entry") == tmp_path / "root" / "a" / "b.pt"


@pytest.mark.parametrize("rel", ["..\\outside.npy", "C:/outside.npy", "link/x.npy"])
def test_a_manifest_entry_outside_its_folder_is_refused(tmp_path, rel):
    folder = tmp_path / "artefact"
    folder.mkdir()
    (folder / "link").symlink_to(tmp_path)
    (tmp_path / "x.npy").write_bytes(b"x")
    with pytest.raises(ValueError, match="lists file\\(s\\) outside the bundle"):
        verify_checksums(folder, {rel: {"bytes": 1, "sha256": "0"}}, ValueError, "bundle",
                         "re-export")


def test_a_feature_file_linked_out_of_the_tree_is_refused(tree, data, tmp_path):
    vid = data.frame["video_id"].iloc[0]
    feat = tree.base / "vit_feature1" / "vit_feature" / f"{vid}.pt"
    outside = tmp_path / "outside.pt"
    shutil.move(feat, outside)
    feat.symlink_to(outside)
    with pytest.raises(FeatureError, match="leads outside"):
        tree.video(vid)


def test_writers_keep_ids_inside_their_folder(tmp_path):
    from mgsv_sk.extract.store import NpyFolder, TreeWriter

    (tmp_path / "parts").mkdir()
    for bad in ("../x", "a/b", ".."):
        with pytest.raises(FeatureError, match="ids are data, not paths"):
            NpyFolder(tmp_path / "parts").path("video", bad)
        with pytest.raises(FeatureError, match="ids are data, not paths"):
            TreeWriter(tmp_path / "tree").write("music", bad, np.zeros((96, 768), np.float32),
                                                np.ones(96, np.float32))
    assert not any((tmp_path).glob("x*"))


def test_a_bundle_index_name_outside_the_bundle_is_refused(tiny_fitted, tmp_path):
    from mgsv_sk.export.manifest import BundleError, write_manifest
    from mgsv_sk.export.runtime import OnnxGrounder
    from mgsv_sk.export.to_onnx import export_onnx

    bundle = export_onnx(tiny_fitted, tmp_path / "bundle", check=False)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["catalogue"]["index"] = {"name": "../../etc/passwd"}
    write_manifest(bundle, {k: v for k, v in manifest.items() if k != "files"})
    with pytest.raises(BundleError, match="'..' part"):
        OnnxGrounder.load(bundle)


@pytest.mark.parametrize("artefact", ["model", "bundle"])
def test_a_fifo_manifest_is_refused_not_waited_on(artefact, tiny_fitted, tmp_path):
    from mgsv_sk import MGSVGrounder
    from mgsv_sk.estimators._persistence import ModelFileError
    from mgsv_sk.export.manifest import BundleError
    from mgsv_sk.export.runtime import OnnxGrounder
    from mgsv_sk.export.to_onnx import export_onnx

    folder = tmp_path / artefact
    if artefact == "model":
        tiny_fitted.save(folder)
    else:
        export_onnx(tiny_fitted, folder, check=False)
    (folder / "manifest.json").unlink()
    os.mkfifo(folder / "manifest.json")
    error, load = ((ModelFileError, MGSVGrounder.load) if artefact == "model"
                   else (BundleError, OnnxGrounder.load))
    with pytest.raises(error, match="FIFO"):
        load(folder)
