"""Issue 12, family 2: ids are data, not paths.

One rule (``mgsv_sk.data._schema.id_problem``) is applied by the frame validator and at the
point where ``FeatureTree`` builds a file path (and by ``pack_features`` for ids given
directly): an id that could leave the tree, probe the file system or overflow a file
name is refused with an error naming the id and the rule, before any file is opened.
"""

from __future__ import annotations

import pathlib
import shutil

import pandas as pd
import pytest
import torch

from mgsv_sk import make_synthetic_mgsv, pack_features, read_annotations
from mgsv_sk.cli import main
from mgsv_sk.data._schema import AnnotationError, id_problem, validate_annotations
from mgsv_sk.data.features import FeatureError, FeatureTree

BAD_IDS = [
    ("parent-escape", "../../secret", "contains a path separator"),
    ("slash", "a/b", "contains a path separator"),
    ("backslash", "a\\b", "contains a path separator"),
    ("absolute", "/etc/passwd", "contains a path separator"),
    ("empty", "", "is empty"),
    ("nul", "a\x00b", "control character"),
    ("newline", "a\nb", "control character"),
    ("dotdot", "..", "starts with '..'"),
    ("leading-dotdot", "..secret", "starts with '..'"),
    ("dot", ".", "is '.'"),
    ("too-long", "7" * 300, "300 bytes long, more than the 200 allowed"),
    ("too-long-utf8", "é" * 101, "202 bytes long"),
]
GOOD_IDS = ["112712471153", "7+5x4mjjeiubm49fg", "a.b=c_d-e~f@g", ".hidden", "x" * 200]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("ids")
    data = make_synthetic_mgsv(6, 3, random_state=0, path=root / "release")
    # A valid tensor file outside the tree that '../../secret'-style ids would reach.
    torch.save(torch.ones(3, 512), root / "release" / "features" / "secret.pt")
    return data


def _frame(video_id: str, music_id: str = "m1") -> pd.DataFrame:
    return pd.DataFrame({"video_id": [video_id], "music_id": [music_id], "music_start": [0.0],
                         "music_end": [10.0], "music_total_duration": [60.0]})


@pytest.mark.parametrize("value, why", [c[1:] for c in BAD_IDS], ids=[c[0] for c in BAD_IDS])
def test_the_one_id_rule(value, why):
    assert why in id_problem(value)


@pytest.mark.parametrize("value", GOOD_IDS)
def test_real_ids_pass_the_rule(value):
    assert id_problem(value) is None
    assert validate_annotations(_frame(value, value)).loc[0, "video_id"] == value


@pytest.mark.parametrize("column", ["video_id", "music_id"])
@pytest.mark.parametrize("value, why", [c[1:] for c in BAD_IDS], ids=[c[0] for c in BAD_IDS])
def test_the_frame_validator_refuses_bad_ids(column, value, why):
    frame = _frame("v1") if column == "music_id" else _frame(value)
    if column == "music_id":
        frame["music_id"] = [value]
    with pytest.raises(AnnotationError, match=rf"column '{column}' has 1 invalid id\(s\)") as e:
        validate_annotations(frame)
    assert why in str(e.value) and "an id names one feature file" in str(e.value)


def test_read_annotations_refuses_a_csv_with_an_escaping_id(tmp_path):
    csv = tmp_path / "a.csv"
    _frame("../../../etc/passwd").to_csv(csv, index=False)
    with pytest.raises(AnnotationError, match=r"'\.\./\.\./\.\./etc/passwd' contains a path"):
        read_annotations(csv)


@pytest.mark.parametrize("value, why", [c[1:] for c in BAD_IDS], ids=[c[0] for c in BAD_IDS])
def test_feature_tree_refuses_bad_ids_before_opening_any_file(value, why, tree, monkeypatch):
    src = FeatureTree(tree.root)

    def no_file_access(*args, **kwargs):
        raise AssertionError("a file was looked at for an invalid id")

    for name in ("is_file", "exists", "stat", "open"):
        monkeypatch.setattr(pathlib.Path, name, no_file_access)
    monkeypatch.setattr(torch, "load", no_file_access)
    for call in (src.video, src.music, src.has_video, src.has_music):
        with pytest.raises(FeatureError, match="invalid (video|music)_id") as e:
            call(value)
        assert why in str(e.value) and "ids are data, not paths" in str(e.value)


def test_the_escape_target_is_really_there_and_unreachable(tree):
    src = FeatureTree(tree.root)
    base = src.base / "vit_feature1" / "vit_feature"
    assert (base / "../../../secret.pt").resolve().is_file()  # what the id would reach
    with pytest.raises(FeatureError, match="invalid video_id '../../../secret'"):
        src.video("../../../secret")
    with pytest.raises(FeatureError, match="invalid video_id"):
        src.check_available(["../../../secret"], [])


def test_a_real_looking_id_reads_from_the_tree(tree, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(tree.root, root)
    src = FeatureTree(root)
    first = tree.frame["music_id"].iloc[0]
    for sub in ("ast_feature", "ast_mask"):
        folder = src.base / "ast_feature2p5" / sub
        shutil.copy(folder / f"{first}.pt", folder / "7+5x4mjjeiubm49fg.pt")
    assert src.has_music("7+5x4mjjeiubm49fg")
    assert (src.music("7+5x4mjjeiubm49fg") == src.music(first)).all()


def test_pack_features_refuses_bad_ids_before_writing(tree, tmp_path):
    with pytest.raises(FeatureError, match=r"invalid video_id '7777.*'\.\.\.: it is 300 bytes"):
        pack_features(tree.features, tmp_path / "p", video_ids=["7" * 300], music_ids=[])
    with pytest.raises(FeatureError, match="invalid music_id 'a/b'"):
        pack_features(tree.features, tmp_path / "p", video_ids=[], music_ids=["a/b"])
    bad = tree.frame.copy()
    bad.loc[0, "video_id"] = "../x"
    with pytest.raises(AnnotationError, match="invalid id"):
        pack_features(tree.features, tmp_path / "p", annotations=bad)
    assert list(tmp_path.iterdir()) == []


def test_cli_pack_with_an_over_long_id_is_one_error_line(tree, tmp_path, capsys):
    frame = tree.frame.copy()
    frame.loc[0, "video_id"] = "7" * 300
    frame.to_csv(tmp_path / "long.csv", index=False)
    code = main(["pack", str(tree.root), str(tmp_path / "out"), "--csv",
                 str(tmp_path / "long.csv")])
    err = capsys.readouterr().err.splitlines()
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith("mgsv-sk: error: ") and "300 bytes long" in err[0]
    assert not (tmp_path / "out").exists()
