"""Issue 12, family 5: the CLI's contract.

Every error while a command runs is one line ``mgsv-sk: error: ...`` on stderr and exit
status 1 (2 stays argparse's usage errors): library errors with their own message, other
library exceptions (TypeError, KeyError, OSError, ...) prefixed with their type, and an
unexpected exception with its type, message and where it was raised; ``--debug`` re-raises.
"""

from __future__ import annotations

import errno
import json
import subprocess
import sys

import pytest

import mgsv_sk.cli._parser as cli
from mgsv_sk import make_synthetic_mgsv
from mgsv_sk.cli import main


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_rel")
    data = make_synthetic_mgsv(8, 3, random_state=0, path=root / "release")
    bad_model = root / "list_manifest"
    bad_model.mkdir()
    (bad_model / "manifest.json").write_text("[1, 2, 3]")
    return {"root": root, "data": data, "csv": data.csv_path, "bad_model": bad_model}


def one_error_line(code: int, capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.splitlines()
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith("mgsv-sk: error: ")
    return err[0]


def test_param_n_threads_0_is_one_line(release, capsys, tmp_path):
    argv = ["fit", str(release["csv"]), str(tmp_path / "m"), "-f", str(release["data"].root),
            "--param", "n_threads=0", "--param", "max_epochs=1"]
    line = one_error_line(main(argv), capsys)
    # refused by the estimator's own parameter check, before any training
    assert "'n_threads' parameter of MGSVGrounder must be an int in the range [1, inf)" in line
    assert "unexpected" not in line
    assert not (tmp_path / "m").exists()
    with pytest.raises(ValueError, match="'n_threads' parameter"):
        main(["--debug", *argv])


def test_predict_on_a_model_whose_manifest_is_a_list_is_one_line(release, capsys, tmp_path):
    line = one_error_line(main(["predict", str(release["bad_model"]), str(release["csv"]),
                                str(tmp_path / "o.csv")]), capsys)
    assert "manifest.json holds a JSON list, expected the manifest" in line
    assert not (tmp_path / "o.csv").exists()


def test_the_same_in_a_real_process_prints_no_traceback(release, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mgsv_sk", "evaluate",
                           str(release["bad_model"]), str(release["csv"])],
                          cwd=tmp_path, text=True, capture_output=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("mgsv-sk: error: ") and "JSON list" in proc.stderr


def test_pack_with_an_over_long_id_is_one_line(release, capsys, tmp_path):
    frame = release["data"].frame.copy()
    frame.loc[1, "music_id"] = "m" * 250
    frame.to_csv(tmp_path / "long.csv", index=False)
    line = one_error_line(main(["pack", str(release["data"].root), str(tmp_path / "p"),
                                "--csv", str(tmp_path / "long.csv")]), capsys)
    assert "column 'music_id' has 1 invalid id(s)" in line and "250 bytes long" in line


@pytest.mark.parametrize("error, expected", [
    (KeyError("music_total_duration"), "KeyError: 'music_total_duration'"),
    (TypeError("features must be a path"), "TypeError: features must be a path"),
    (OSError(errno.EIO, "Input/output error"), "[Errno 5] Input/output error"),
    (PermissionError(errno.EACCES, "Permission denied", "model/"), "Permission denied"),
    (EOFError("Ran out of input"), "EOFError: Ran out of input"),
    (json.JSONDecodeError("Expecting value", "x", 0), "Expecting value: line 1 column 1"),
], ids=["KeyError", "TypeError", "OSError", "PermissionError", "EOFError", "JSONDecodeError"])
def test_library_error_kinds_are_one_line_with_their_message(error, expected, monkeypatch,
                                                             capsys, tmp_path):
    def boom(args):
        raise error

    monkeypatch.setattr(cli, "cmd_evaluate", boom)
    line = one_error_line(main(["evaluate", str(tmp_path), "x.csv"]), capsys)
    assert expected in line and "unexpected" not in line
    with pytest.raises(type(error)):
        main(["--debug", "evaluate", str(tmp_path), "x.csv"])


def test_an_unexpected_exception_keeps_its_message_and_origin(monkeypatch, capsys, tmp_path):
    def boom(args):
        return 1 // 0

    monkeypatch.setattr(cli, "cmd_evaluate", boom)
    line = one_error_line(main(["evaluate", str(tmp_path), "x.csv"]), capsys)
    assert "ZeroDivisionError: integer division or modulo by zero" in line
    assert "test_reliability_cli.py" in line and "in boom" in line
    assert "rerun with --debug for the traceback" in line


def test_usage_errors_still_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["fit"])
    assert info.value.code == 2
