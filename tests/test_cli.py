"""The ``mgsv-sk`` command line, end to end in subprocesses on a synthetic release.

One module-scoped workspace runs ``pack`` and ``fit`` once; the other tests reuse its
outputs. Error cases that fail before torch is imported run as subprocesses too (fast);
the rest of the error mapping is checked in-process through ``main``.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import TINY

from mgsv_sk import MGSVGrounder, evaluate, make_synthetic_mgsv, read_annotations
from mgsv_sk.cli import build_parser, main, one_line
from mgsv_sk.data.features import FeatureTree, PackedFeatures
from mgsv_sk.data.jsonl import read_jsonl, records_to_frame

COMMANDS = ("pack", "fit", "evaluate", "predict", "export", "demo")
TINY_PARAMS = [f"--param={k}={v}" for k, v in TINY.items()]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mgsv_sk", *args], cwd=cwd, text=True,
                          capture_output=True, timeout=300)


def ok(*args: str, cwd: Path) -> str:
    proc = run(*args, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("mgsv-sk: error: ")
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """Release (train 120 videos / 30 tracks, test 40 / 40), packed store and a tiny model,
    made by the CLI itself."""
    root = tmp_path_factory.mktemp("cli")
    train = make_synthetic_mgsv(120, 30, random_state=0, split="train", path=root / "release")
    test = make_synthetic_mgsv(40, 40, random_state=1, split="test", path=root / "release")
    ok("pack", "release", "packed", "--csv", str(train.csv_path), "--csv",
       str(test.csv_path), cwd=root)
    fit_out = ok("fit", str(train.csv_path), "model", "-f", "packed", *TINY_PARAMS, cwd=root)
    return {"root": root, "train": train.csv_path, "test": test.csv_path, "fit_out": fit_out}


@pytest.fixture
def model(ws):
    """The fitted model, loaded afresh (tests change its catalogue)."""
    return MGSVGrounder.load(ws["root"] / "model")


def test_pack_writes_the_csvs_ids(ws):
    store = PackedFeatures(ws["root"] / "packed")
    train, test = read_annotations(ws["train"]), read_annotations(ws["test"])
    assert set(store.video_ids()) == {*train.video_id, *test.video_id}
    assert set(store.music_ids()) == {*train.music_id, *test.music_id}
    tree = FeatureTree(ws["root"] / "release")
    vid, mid = test.video_id[0], test.music_id[0]
    np.testing.assert_array_equal(store.video(vid), tree.video(vid))
    np.testing.assert_array_equal(store.music(mid), tree.music(mid))


def test_fit_saves_a_model_with_the_given_params(ws, model):
    assert "saved to model" in ws["fit_out"]
    params = model.get_params()
    assert {k: params[k] for k in TINY} == TINY
    assert Path(params["features"]) == (ws["root"] / "packed").resolve()
    assert 1 <= model.n_epochs_ <= TINY["max_epochs"]


def test_evaluate_prints_and_writes_the_protocol_table(ws, model):
    out = ok("evaluate", "model", str(ws["test"]), "--trivial", "--json", "m.json",
             cwd=ws["root"])
    report = json.loads((ws["root"] / "m.json").read_text())
    expected = evaluate(model, read_annotations(ws["test"]))
    assert report["metrics"].keys() == expected.keys()
    assert report["metrics"] == pytest.approx(expected, abs=1e-6)
    assert report["n_videos"] == 40 and report["gallery_size"] == 40
    assert report["baselines"]["trivial [0, duration]"]["R@1"] < 0.2
    for key in ("mIoU", "IoU@0.3", "IoU@0.7", "R@100", "MedianR", "MeanR", "MRR",
                "MoR@1,0.5", "MoR@100,0.7"):
        assert key in expected and any(key in line.split() for line in out.splitlines())
    assert "MGSVGrounder" in out and "trivial [0, duration]" in out
    assert f"{expected['mIoU']:.3f}" in out


def test_predict_smg_csv(ws, model):
    ok("predict", "model", str(ws["test"]), "smg.csv", cwd=ws["root"])
    got = pd.read_csv(ws["root"] / "smg.csv", dtype={"video_id": str, "music_id": str})
    test = read_annotations(ws["test"])
    want = model.predict(test)
    assert list(got.columns) == ["video_id", "music_id", "start", "end", "score",
                                 "moment_score"]
    assert got["video_id"].tolist() == test["video_id"].tolist()
    assert got["music_id"].tolist() == test["music_id"].tolist()
    np.testing.assert_allclose(got[["start", "end", "score", "moment_score"]].to_numpy(),
                               want[["start", "end", "score", "moment_score"]].to_numpy(),
                               rtol=1e-6, atol=1e-6)


def test_predict_msg_top_k_jsonl(ws, model):
    ok("predict", "model", str(ws["test"]), "top3.jsonl", "--mode", "msg", "--top-k", "3",
       "--catalogue", "input", cwd=ws["root"])
    records = read_jsonl(ws["root"] / "top3.jsonl")
    test = read_annotations(ws["test"])
    want = model.set_catalogue(test["music_id"]).rank(test.drop(columns="music_id"), k=3)
    assert [r["video_id"] for r in records] == test["video_id"].tolist()
    assert all(len(r["pred_music_ids"]) == 3 for r in records)
    got = records_to_frame(records)
    assert got["music_id"].tolist() == want["music_id"].tolist()
    np.testing.assert_allclose(got[["score", "start", "end", "moment_score"]].to_numpy(),
                               want[["score", "start", "end", "moment_score"]].to_numpy(),
                               rtol=1e-6, atol=1e-6)


def test_predict_msg_moment_weight_reranks(ws, model):
    ok("predict", "model", str(ws["test"]), "mixed.csv", "--mode", "msg", "--top-k", "2",
       "--moment-weight", "0.05", "--catalogue", "input", cwd=ws["root"])
    got = pd.read_csv(ws["root"] / "mixed.csv", dtype={"video_id": str, "music_id": str})
    test = read_annotations(ws["test"])
    want = model.set_catalogue(test["music_id"]).rank(test.drop(columns="music_id"), k=2,
                                                       moment_weight=0.05)
    assert got["music_id"].tolist() == want["music_id"].tolist()


def test_predict_several_moments_per_track_jsonl(ws, model):
    ok("predict", "model", str(ws["test"]), "moments.jsonl", "--moments-per-track", "3",
       cwd=ws["root"])
    records = read_jsonl(ws["root"] / "moments.jsonl")
    test = read_annotations(ws["test"])
    want = model.predict(test, moments_per_track=3)
    assert max(len(r["pred_relevant_windows"]) for r in records) > 1
    for record, windows in zip(records, want["windows"]):
        np.testing.assert_allclose(record["pred_relevant_windows"], windows, atol=1e-6)
        assert record["pred_windows_by_music"] == [record["pred_relevant_windows"]]


def test_predict_msg_to_stdout_with_a_catalogue_file(ws, model, capsys, tmp_path):
    test = read_annotations(ws["test"])
    tracks = test["music_id"].iloc[:5].tolist()
    listing = tmp_path / "tracks.txt"
    listing.write_text("\n".join(tracks) + "\n")
    assert main(["predict", str(ws["root"] / "model"), str(ws["test"]), "-", "--mode", "msg",
                 "--catalogue", str(listing), "--format", "jsonl"]) == 0
    records = read_jsonl(io.StringIO(capsys.readouterr().out))
    want = model.set_catalogue(tracks).predict(test.drop(columns="music_id"))
    assert [r["video_id"] for r in records] == test["video_id"].tolist()
    assert [r["pred_music_ids"] for r in records] == [[m] for m in want["music_id"]]
    assert {m for r in records for m in r["pred_music_ids"]} <= set(tracks)


def test_predict_refuses_to_overwrite(ws):
    (ws["root"] / "exists.csv").write_text("keep\n")
    proc = run("predict", "model", str(ws["test"]), "exists.csv", cwd=ws["root"])
    assert_one_line_error(proc, "exists.csv already exists", "--overwrite")
    assert (ws["root"] / "exists.csv").read_text() == "keep\n"


def test_export_writes_a_bundle(ws):
    from mgsv_sk.export.manifest import read_manifest, verify_files

    out = ok("export", "model", "bundle", "--no-check", cwd=ws["root"])
    assert "wrote ONNX bundle bundle" in out
    manifest = read_manifest(ws["root"] / "bundle")
    verify_files(ws["root"] / "bundle", manifest)
    out = ok("export", "model", "half", "--no-check", "--states", "float16", cwd=ws["root"])
    assert "float16 snippet arrays" in out
    assert read_manifest(ws["root"] / "half")["catalogue"]["states"] == "float16"


def test_demo_runs_end_to_end(tmp_path):
    out = ok("demo", "--dir", "d", "--train-videos", "60", "--train-tracks", "12",
             "--test-videos", "20", "--epochs", "1", "--n-threads", "1", cwd=tmp_path)
    assert "trivial [0, duration]" in out and "MGSVGrounder" in out and "MoR@10,0.5" in out
    reports = json.loads((tmp_path / "d" / "metrics.json").read_text())
    assert set(reports) == {"trivial [0, duration]", "ridge baseline", "MGSVGrounder"}
    assert reports["trivial [0, duration]"].keys() == reports["MGSVGrounder"].keys()
    assert {p.name for p in (tmp_path / "d").iterdir()} == {"release", "packed", "model",
                                                             "metrics.json"}


# -- help -------------------------------------------------------------------------------
@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_has_help_with_an_example(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert f"usage: mgsv-sk {command}" in text
    assert f"example:\n  mgsv-sk {command}" in text


def test_main_help_in_a_subprocess_and_the_console_script(tmp_path):
    out = ok("--help", cwd=tmp_path)
    for command in COMMANDS:
        assert command in out
    script = shutil.which("mgsv-sk")
    if script is None:
        pytest.skip("the mgsv-sk console script is not installed (pip install -e .)")
    proc = subprocess.run([script, "fit", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "--param NAME=VALUE" in proc.stdout


# -- errors -----------------------------------------------------------------------------
def test_wrong_path_is_one_line(tmp_path):
    proc = run("evaluate", "no_such_model", "test.csv", cwd=tmp_path)
    assert_one_line_error(proc, "saved model folder not found: no_such_model")


@pytest.mark.parametrize("content", [b"video_id,music_id\n1,a\n", b"\x89PNG\r\n\x1a\n\x00\xff"],
                         ids=["missing-columns", "not-a-csv"])
def test_malformed_csv_is_one_line(ws, tmp_path, content):
    bad = tmp_path / "bad.csv"
    bad.write_bytes(content)
    proc = run("evaluate", str(ws["root"] / "model"), str(bad), cwd=tmp_path)
    assert_one_line_error(proc, "bad.csv")
    if content.startswith(b"video_id"):
        assert "missing column 'music_start'" in proc.stderr
        assert "missing column 'music_end'" in proc.stderr


def test_usage_errors_exit_2(capsys):
    for argv in (["evaluate"], ["predict", "m", "c.csv", "o.csv", "--mode", "x"],
                 ["-v", "-q", "demo"], ["demo", "--epochs", "0"], []):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
    assert "usage: mgsv-sk" in capsys.readouterr().err


def _main_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("mgsv-sk: error: ")
    return err[0]


def test_unknown_param_lists_valid_names(ws, capsys, tmp_path):
    line = _main_error(["fit", str(ws["train"]), str(tmp_path / "m"), "-f",
                        str(ws["root"] / "packed"), "--param", "dmodel=3"], capsys)
    assert "unknown MGSVGrounder parameter(s) 'dmodel' (did you mean 'd_model'?)" in line
    assert "valid names:" in line and "max_epochs" in line and "early_stopping_metric" in line
    assert not (tmp_path / "m").exists()


def test_bad_param_value_and_params_file(ws, capsys, tmp_path):
    params = tmp_path / "p.json"
    params.write_text(json.dumps({"max_epochs": 0, "d_model": 32}))
    line = _main_error(["fit", str(ws["train"]), str(tmp_path / "m"), "-f",
                        str(ws["root"] / "packed"), "--params", str(params)], capsys)
    assert "'max_epochs' parameter of MGSVGrounder must be an int in the range [1, inf)" in line
    params.write_text("[1, 2]")
    line = _main_error(["fit", str(ws["train"]), str(tmp_path / "m"), "-f",
                        str(ws["root"] / "packed"), "--params", str(params)], capsys)
    assert "JSON object" in line


def test_existing_output_and_smg_without_music_id(ws, capsys, tmp_path):
    root = ws["root"]
    line = _main_error(["fit", str(ws["train"]), str(root / "model"), "-f",
                        str(root / "packed")], capsys)
    assert "already exists; pass --overwrite" in line
    videos = tmp_path / "videos.csv"
    read_annotations(ws["test"])[["video_id"]].to_csv(videos, index=False)
    line = _main_error(["predict", str(root / "model"), str(videos), str(tmp_path / "o.csv"),
                        "--mode", "smg"], capsys)
    assert "missing column 'music_id'" in line
    line = _main_error(["predict", str(root / "model"), str(videos), str(tmp_path / "o.txt")],
                       capsys)
    assert "--format csv|jsonl" in line


def test_missing_features_is_one_line(ws, capsys, tmp_path):
    other = make_synthetic_mgsv(5, 5, random_state=7, split="test", path=tmp_path / "rel")
    line = _main_error(["predict", str(ws["root"] / "model"), str(other.csv_path),
                        str(tmp_path / "o.csv")], capsys)
    assert "has no features for 5" in line


def test_debug_shows_the_exception(tmp_path):
    with pytest.raises(FileNotFoundError):
        main(["--debug", "evaluate", str(tmp_path / "nope"), "x.csv"])


def test_one_line_flattens_annotation_errors():
    from mgsv_sk import AnnotationError

    exc = AnnotationError(["missing column 'a'", "missing column 'b'"], "x.csv")
    assert one_line(exc) == ("x.csv failed validation with 2 problem(s): missing column 'a'; "
                             "missing column 'b'")


def test_subcommand_accepts_common_options_after_it():
    args = build_parser().parse_args(["-v", "demo"])
    assert args.verbose and not args.quiet
    args = build_parser().parse_args(["demo", "-q"])
    assert args.quiet and not args.verbose
