"""The public API: ``mgsv_sk.__all__`` is what docs/api.md lists, every name resolves,
and the package's layout keeps one home per concept (no module that only re-exports
another, the task's constants and install hints defined once)."""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

import mgsv_sk

ROOT = Path(__file__).resolve().parents[1]
API = (ROOT / "docs" / "api.md").read_text()


def _listed(table_title: str) -> str:
    return API.split(table_title, 1)[1].split("\n## ", 1)[0]


def test_every_public_name_is_documented_and_resolves():
    top = set(re.findall(r"^\| `(\w+)` \|", _listed("## `mgsv_sk`"), flags=re.M))
    assert top == set(mgsv_sk.__all__)
    assert set(dir(mgsv_sk)) >= set(mgsv_sk.__all__)
    for name in mgsv_sk.__all__:
        assert getattr(mgsv_sk, name) is not None, name


def test_the_modules_documented_names_exist():
    rows = re.findall(r"^\| `([\w.]+)`[^|]*\| (.+) \|$",
                      _listed("## Modules with their own public names"), flags=re.M)
    assert len(rows) >= 8
    for module, names in rows:
        mod = importlib.import_module(module)
        for name in re.findall(r"`(\w+)`", re.sub(r"\([^)]*\)", "", names)):
            assert hasattr(mod, name), f"{module}.{name}"


def test_importing_the_api_needs_neither_torch_nor_onnx():
    code = ("import sys, mgsv_sk\n"
            "g = mgsv_sk.OnnxGrounder; mgsv_sk.evaluate; mgsv_sk.pack_features\n"
            "assert 'torch' not in sys.modules and 'onnx' not in sys.modules, "
            "[m for m in ('torch', 'onnx') if m in sys.modules]\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def _modules() -> list[Path]:
    return sorted(p for d in ("mgsv_sk", "export") for p in (ROOT / d).rglob("*.py"))


def test_no_module_only_re_exports_another():
    for path in _modules():
        tree = ast.parse(path.read_text())
        body = [n for n in tree.body if not (isinstance(n, ast.Expr)
                                             and isinstance(n.value, ast.Constant))]
        assert "sys.modules[__name__]" not in path.read_text(), path
        if path.name != "__init__.py" and body:
            assert not all(isinstance(n, (ast.Import, ast.ImportFrom)) for n in body), path


@pytest.mark.parametrize("pattern, home", [
    (r"^(MAX_MUSIC_SECONDS|SNIPPET_HOP\w*|MAX_SECONDS|MAX_VIDEO_FRAMES|MAX_MUSIC_SNIPPETS)"
     r"\s*[:=]", "mgsv_sk/data/spans.py"),
    (r"^TWO_STAGE_MARGIN\s*=", "mgsv_sk/search/retrieval.py"),
])
def test_a_concept_is_defined_in_one_place(pattern, home):
    found = sorted(str(p.relative_to(ROOT)) for p in _modules()
                   if re.search(pattern, p.read_text(), flags=re.M))
    assert found == [home]


def test_one_spelling_of_a_thread_count():
    spelled = sorted(str(p.relative_to(ROOT)) for p in _modules()
                     if re.search(r"(?<![.\w])(intra_op_num_threads|intra_op_threads)\b",
                                  p.read_text()))
    assert spelled == []


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def test_install_hints_come_from_one_place():
    # a message telling the user to pip install an extra is written once (_extras)
    found = set()
    for path in _modules():
        tree = ast.parse(path.read_text())
        docs = _docstrings(tree)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                    and id(node) not in docs and "pip install" in node.value):
                found.add(str(path.relative_to(ROOT)))
    assert found == {"mgsv_sk/_extras.py"}


@pytest.mark.parametrize("make", [
    lambda: __import__("mgsv_sk").RidgeGrounder(alpha=-1.0),
    lambda: __import__("mgsv_sk").TrivialGrounder(random_state="seed"),
])
def test_the_baselines_check_their_parameters_as_the_estimator_does(make, small_train):
    from sklearn.utils._param_validation import InvalidParameterError

    model = make()
    with pytest.raises(InvalidParameterError, match=f"Invalid {type(model).__name__} "
                                                    "parameters"):
        model.fit(small_train.frame)
    assert not hasattr(model, "catalogue_ids_")  # refused before any fitted state
