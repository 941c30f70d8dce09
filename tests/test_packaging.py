"""What ``pip install mgsv-sk`` adds: one top-level module, ``mgsv_sk``, with the
repository's ``export/`` folder installed as ``mgsv_sk.export``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in ("mgsv_sk", "export"):
        shutil.copytree(ROOT / name, src / name, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, src / name)
    out = tmp_path_factory.mktemp("dist")
    env = {**os.environ, "PIP_NO_INDEX": "1"}  # offline: the build uses what is installed
    run = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                          "--no-build-isolation", "-q", "-w", str(out), str(src)],
                         capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    (whl,) = out.glob("mgsv_sk-*.whl")
    return whl


def test_the_wheel_holds_no_top_level_module_but_mgsv_sk(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        info = next(n for n in names if n.endswith(".dist-info/top_level.txt"))
        assert zf.read(info).decode().split() == ["mgsv_sk"]
        tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
        assert tops == {"mgsv_sk"}
        # export/ is installed as mgsv_sk.export, file for file
        for path in sorted((ROOT / "export").glob("*.py")):
            assert zf.read(f"mgsv_sk/export/{path.name}") == path.read_bytes(), path.name
        assert "mgsv_sk/serve/static/index.html" in names or any(
            n.startswith("mgsv_sk/serve/static/") for n in names)


def test_the_checkout_resolves_mgsv_sk_export_to_the_top_level_folder():
    code = ("import mgsv_sk.export.runtime as r, os, sys; "
            "print(os.path.realpath(r.__file__))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert Path(out) == (ROOT / "export" / "runtime.py").resolve()


def test_a_checkout_without_the_symlink_still_resolves_mgsv_sk_export(tmp_path):
    # git with core.symlinks=false writes the link as a small text file
    shutil.copytree(ROOT / "mgsv_sk", tmp_path / "mgsv_sk", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "export", tmp_path / "export",
                    ignore=shutil.ignore_patterns("__pycache__"))
    link = tmp_path / "mgsv_sk" / "export"
    link.unlink()
    link.write_text("../export")
    code = ("import mgsv_sk, mgsv_sk.export.manifest as m, os; "
            "print(os.path.realpath(m.__file__))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert Path(out) == (tmp_path / "export" / "manifest.py").resolve()
