"""Issue 22, root 1: every input is read as written, by one reader per kind of input
(CSV, id list, frame), the same through the command line and the API."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest

from mgsv_sk import pack_features, read_annotations, validate_annotations
from mgsv_sk.cli import main
from mgsv_sk.data._readers import id_list, read_id_list, read_table
from mgsv_sk.data._schema import AnnotationError

ODD_IDS = ["NA", "null", "None", "007", "nan"]  # ids pandas would read as missing / numbers


@pytest.fixture(scope="module")
def odd(tiny_fitted, small_train, tmp_path_factory):
    """A saved model whose store holds videos and tracks named like missing values."""
    root = tmp_path_factory.mktemp("odd")
    src = small_train.features
    vids, mids = small_train.frame["video_id"].tolist(), small_train.frame["music_id"].tolist()
    videos = {name: src.video(v) for name, v in zip(ODD_IDS, vids)}
    music = {name: src.music(m) for name, m in zip(ODD_IDS, dict.fromkeys(mids))}
    store = pack_features((videos, music), root / "store")
    model = copy.deepcopy(tiny_fitted).set_catalogue(ODD_IDS, features=store)
    model.set_params(features=str(store.path))
    model.save(root / "model")
    return {"root": root, "store": store, "model": model}


def _write(path, text: str, bom: bool = False, crlf: bool = False) -> str:
    if crlf:
        text = text.replace("\n", "\r\n")
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    return str(path)


def test_csv_ids_are_the_strings_written(tmp_path):
    csv = _write(tmp_path / "a.csv", "video_id,music_id,music_start,music_end,"
                 "music_total_duration\nNA,null,0,10,60\nNone,007,,1,2\n", bom=True, crlf=True)
    with pytest.raises(AnnotationError, match="'music_start' has 1 NaN/inf"):  # times: NA stays NA
        read_annotations(csv)
    _write(tmp_path / "a.csv", "video_id,music_id,music_start,music_end,music_total_duration\n"
           "NA,null,0,10,60\nNone,007,0,1,2\nnan,,0,1,2\n")
    with pytest.raises(AnnotationError, match=r"'music_id' has 1 empty value\(s\) \(rows 2\)"):
        read_annotations(csv)
    frame = read_annotations(pd.read_csv(csv, dtype=str, keep_default_na=False).iloc[:2])
    assert frame["video_id"].tolist() == ["NA", "None"]
    table = read_table(csv)
    assert table["video_id"].tolist() == ["NA", "None", "nan"]
    assert table["music_id"].iloc[:2].tolist() == ["null", "007"]


@pytest.mark.parametrize("text", ["video_id,music_id,music_id,music_start\n1,2,3,0\n",
                                  "\ufeffvideo_id,x,x\n1,2,3\n"])
def test_a_column_named_twice_in_a_csv_is_named(tmp_path, text):
    path = tmp_path / "dup.csv"
    path.write_text(text, encoding="utf-8")
    name = "music_id" if "music_id,music_id" in text else "x"
    with pytest.raises(AnnotationError, match=f"column '{name}' appears 2 times"):
        read_annotations(path, required=("video_id",))


def test_a_frame_label_repeated_is_named(small_train):
    frame = small_train.frame.iloc[:4]
    doubled = pd.concat([frame, frame[["music_id"]]], axis=1)
    with pytest.raises(AnnotationError, match="column 'music_id' appears 2 times"):
        validate_annotations(doubled)


@pytest.mark.parametrize("value, message", [
    (np.inf, "holds inf or other non-finite numbers"),
    (-np.inf, "holds inf or other non-finite numbers"),
    (2.5, "holds fractional numbers"),
])
def test_float_id_columns_are_refused_with_a_value_error(small_train, value, message):
    frame = small_train.frame.iloc[:3].copy()
    frame["video_id"] = [1.0, 2.0, value]
    with pytest.raises(AnnotationError, match=message):
        validate_annotations(frame)
    frame["video_id"] = [1.0, 2.0, 3.0]  # whole floats: the integers they stand for
    assert validate_annotations(frame)["video_id"].tolist() == ["1", "2", "3"]


def test_id_list_rule(tmp_path):
    path = _write(tmp_path / "ids.txt", "  b \n\na\nb\n\n c\n", bom=True, crlf=True)
    assert read_id_list(path) == ["b", "a", "c"]  # trimmed, blanks skipped, first kept
    assert id_list(path) == ["b", "a", "c"]  # a path is a file, never characters
    assert id_list([7, 7.0, "7", "NA"]) == ["7", "NA"]
    with pytest.raises(ValueError, match=r"item 1 \(inf\) holds inf"):
        id_list(["a", float("inf")])


def test_a_windows_id_list_reaches_the_catalogue_api_and_cli(odd, tmp_path, capsys):
    ids = _write(tmp_path / "cat.txt", "NA\n\nnull\nNA\n  007  \n", bom=True, crlf=True)
    model = copy.deepcopy(odd["model"]).set_catalogue(ids)
    assert model.catalogue_ids_ == ["NA", "null", "007"]
    csv = _write(tmp_path / "q.csv", "video_id\nNA\nnull\n")
    code = main(["predict", str(odd["root"] / "model"), csv, "-", "--catalogue", ids,
                 "-f", str(odd["store"].path), "-q"])
    assert code == 0, capsys.readouterr().err
    out = pd.read_csv(pd.io.common.StringIO(capsys.readouterr().out), dtype=str,
                      keep_default_na=False)
    assert out["video_id"].tolist() == ["NA", "null"]
    assert set(out["music_id"]) <= {"NA", "null", "007"}


def test_cli_smg_reads_missing_value_spellings_as_ids(odd, tmp_path, capsys):
    csv = _write(tmp_path / "q.csv", "video_id,music_id\nNA,null\nNone,NA\n", bom=True)
    code = main(["predict", str(odd["root"] / "model"), csv, "-", "-q"])
    assert code == 0, capsys.readouterr().err
    out = pd.read_csv(pd.io.common.StringIO(capsys.readouterr().out), dtype=str,
                      keep_default_na=False)
    assert out[["video_id", "music_id"]].values.tolist() == [["NA", "null"], ["None", "NA"]]
    dup = _write(tmp_path / "d.csv", "video_id,video_id\nNA,null\n")
    assert main(["predict", str(odd["root"] / "model"), dup, "-", "-q"]) == 1
    assert "column 'video_id' appears 2 times" in capsys.readouterr().err


def test_a_utf16_id_list_from_a_windows_editor_reads_as_utf8_does(tmp_path):
    path = tmp_path / "ids.txt"
    path.write_bytes("NA\r\n\r\nnull\r\nNA\r\n".encode("utf-16"))  # with its BOM
    assert read_id_list(path) == ["NA", "null"]
    path.write_bytes(b"\xff\xfe\x00")  # a BOM and half a character
    with pytest.raises(AnnotationError, match="not UTF-8 text"):
        read_id_list(path)
