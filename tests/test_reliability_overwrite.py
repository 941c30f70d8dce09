"""Issue 12, family 1: overwriting only ever replaces an artefact of ours.

``save``, ``pack_features``, ``export_onnx`` and the CLI's ``--overwrite`` go through one
mechanism (``mgsv_sk.files._atomic.check_destination`` / ``atomic_directory`` and the
``Artefact`` recognition rule): a folder is replaced only when it is empty or holds our
marker file (``manifest.json`` / ``meta.json`` with our ``format``); anything else is
refused before anything is read, written or moved, and no temporary folder is left.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import TINY

from mgsv_sk import MGSVGrounder, make_synthetic_mgsv, pack_features
from mgsv_sk.cli import main
from mgsv_sk.data.features import PackedFeatures
from mgsv_sk.export.to_onnx import export_onnx
from mgsv_sk.files._atomic import (
    MODEL_FOLDER,
    PACKED_STORE,
    Artefact,
    atomic_directory,
    check_destination,
)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def user_folder(path: Path) -> Path:
    """A folder of somebody's own files, none of them ours."""
    (path / "photos").mkdir(parents=True)
    (path / "thesis.tex").write_text("years of work")
    (path / "photos" / "cat.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic_mgsv(16, 6, random_state=0,
                               path=tmp_path_factory.mktemp("overwrite_release"))


@pytest.fixture(scope="module")
def fitted(data):
    return MGSVGrounder(features=data.features, **{**TINY, "max_epochs": 1}).fit(data.frame)


def _save(est, data, dst, overwrite):
    est.save(dst, overwrite=overwrite)


def _pack(est, data, dst, overwrite):
    pack_features(data.features, dst, annotations=data.frame.iloc[:4], overwrite=overwrite)


def _export(est, data, dst, overwrite):
    export_onnx(est, dst, overwrite=overwrite, check=False)


WRITERS = [("save", _save), ("pack", _pack), ("export", _export)]
MARKERS = {"save": "manifest.json", "pack": "meta.json", "export": "manifest.json"}


@pytest.mark.parametrize("kind, write", WRITERS, ids=[w[0] for w in WRITERS])
def test_overwrite_refuses_a_folder_of_unrelated_files_and_touches_nothing(
        kind, write, fitted, data, tmp_path):
    dst = user_folder(tmp_path / "mine")
    before = snapshot(dst)
    with pytest.raises(FileExistsError, match=r"refusing to overwrite .*mine.*not a .*"
                                              r"remove or rename it yourself"):
        write(fitted, data, dst, True)
    assert snapshot(dst) == before
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("kind, write", WRITERS, ids=[w[0] for w in WRITERS])
def test_overwrite_refuses_a_forged_or_foreign_marker(kind, write, fitted, data, tmp_path):
    dst = tmp_path / "out"
    dst.mkdir()
    marker = dst / MARKERS[kind]
    for content in ('["mgsv_sk.model/2"]', '{"format": "someone.else/1"}', "\xff\xfe",
                    '{"format": 7}', "not json"):
        marker.write_bytes(content.encode("latin-1"))
        with pytest.raises(FileExistsError, match="refusing to overwrite"):
            write(fitted, data, dst, True)
        assert marker.read_bytes() == content.encode("latin-1")
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("kind, write", WRITERS, ids=[w[0] for w in WRITERS])
def test_overwrite_replaces_our_own_artefact_and_an_empty_folder(
        kind, write, fitted, data, tmp_path):
    dst = tmp_path / "artefact"
    dst.mkdir()  # empty: nothing to lose
    write(fitted, data, dst, True)
    assert (dst / MARKERS[kind]).is_file()
    (dst / MARKERS[kind]).touch()
    write(fitted, data, dst, True)  # ours: replaced
    assert (dst / MARKERS[kind]).is_file()
    assert leftovers(tmp_path) == []


def test_each_writer_replaces_only_its_own_kind(fitted, data, tmp_path):
    store = tmp_path / "store"
    _pack(fitted, data, store, False)
    with pytest.raises(FileExistsError, match="refusing to overwrite .*saved MGSVGrounder"):
        fitted.save(store, overwrite=True)
    model = tmp_path / "model"
    fitted.save(model)
    with pytest.raises(FileExistsError, match="refusing to overwrite .*packed feature store"):
        _pack(fitted, data, model, True)
    assert PackedFeatures(store).video_ids()
    assert MGSVGrounder.load(model).catalogue_ids_ == fitted.catalogue_ids_


@pytest.mark.parametrize("path", [".", "..", "sub/..", "sub/."])
def test_dot_paths_are_refused_without_debris(path, fitted, tmp_path, monkeypatch):
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    fitted.save(work / "sub" / "inner")
    monkeypatch.chdir(work)
    with pytest.raises(ValueError, match="name the folder itself"):
        fitted.save(path, overwrite=True)
    assert leftovers(work) == [] and leftovers(tmp_path) == [] and leftovers(work / "sub") == []
    assert (work / "sub" / "inner" / "manifest.json").is_file()


def test_the_current_folder_and_the_root_are_refused(fitted, tmp_path, monkeypatch):
    model = tmp_path / "model"
    fitted.save(model)
    monkeypatch.chdir(model)
    with pytest.raises(ValueError, match="it is \\(or contains\\) the current folder"):
        fitted.save(model, overwrite=True)
    with pytest.raises(ValueError, match="it is \\(or contains\\) the current folder"):
        fitted.save(tmp_path, overwrite=True)  # a parent of the current folder
    assert (model / "manifest.json").is_file() and leftovers(tmp_path) == []
    with pytest.raises(ValueError, match="filesystem root"):
        check_destination(Path("/"), overwrite=True)


def test_a_symbolic_link_is_never_replaced(fitted, tmp_path):
    model = tmp_path / "model"
    fitted.save(model)
    link = tmp_path / "link"
    os.symlink(model, link)
    with pytest.raises(FileExistsError, match="is a symbolic link"):
        fitted.save(link, overwrite=True)
    assert link.is_symlink() and (model / "manifest.json").is_file()
    assert leftovers(tmp_path) == []


def test_a_folder_that_changes_while_writing_is_rechecked_before_the_rename(tmp_path):
    rule = Artefact("meta.json", "mine/", "test artefact")
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "meta.json").write_text(json.dumps({"format": "mine/1"}))
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        with atomic_directory(dst, overwrite=True, replaces=rule) as tmp:
            (tmp / "meta.json").write_text(json.dumps({"format": "mine/1"}))
            (dst / "meta.json").unlink()  # someone else's files arrive meanwhile
            (dst / "notes.txt").write_text("keep me")
    assert (dst / "notes.txt").read_text() == "keep me"
    assert leftovers(tmp_path) == []


def test_the_default_rule_accepts_only_our_known_formats(tmp_path):
    ours = tmp_path / "ours"
    ours.mkdir()
    (ours / "manifest.json").write_text(json.dumps({"format": "mgsv_sk.onnx/1"}))
    assert check_destination(ours, overwrite=True) == ours  # an older bundle of ours
    assert MODEL_FOLDER.recognises(ours) is False and PACKED_STORE.recognises(ours) is False
    foreign = user_folder(tmp_path / "foreign")
    with pytest.raises(FileExistsError, match="saved MGSVGrounder .* or a packed feature "
                                              "store .* or a ONNX bundle"):
        check_destination(foreign, overwrite=True)


def test_cli_fit_and_pack_overwrite_refuse_unrelated_folders_before_any_work(
        data, tmp_path, capsys):
    dst = user_folder(tmp_path / "mine")
    before = snapshot(dst)
    data.frame.to_csv(tmp_path / "train.csv", index=False)
    code = main(["fit", str(tmp_path / "train.csv"), str(dst), "-f", str(data.root),
                 "--overwrite", "--param", "max_epochs=1"])
    err = capsys.readouterr().err.splitlines()
    assert code == 1 and len(err) == 1
    assert err[0].startswith("mgsv-sk: error: refusing to overwrite") and "mine" in err[0]
    code = main(["pack", str(data.root), str(dst), "--overwrite"])
    err = capsys.readouterr().err.splitlines()
    assert code == 1 and len(err) == 1 and "refusing to overwrite" in err[0]
    assert snapshot(dst) == before and leftovers(tmp_path) == []
