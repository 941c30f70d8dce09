"""The architecture the build checks: the import contracts of pyproject.toml (layers, the
torch-free serving core, who imports ``export``, private modules; run by ``lint-imports``
in .ci/run) fail on a planted violation, no sub-package reaches for another's private
names, no function grows past 80 lines, and docs/architecture.md names what exists."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

pytest.importorskip("importlinter")

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("mgsv_sk", "export")
LINT = [sys.executable, "-c", "from importlinter.cli import lint_imports_command as c; c()"]


def _modules() -> list[Path]:
    return sorted(p for d in SOURCES for p in (ROOT / d).rglob("*.py"))


def _package(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[0] == "export":  # installed as mgsv_sk.export
        return "mgsv_sk.export"
    return ".".join(parts[:2]) if parts[0] == "mgsv_sk" and len(parts) > 2 else parts[0]


def _lint(cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(LINT, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_the_import_contracts_hold():
    run = _lint(ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 broken" in run.stdout


@pytest.mark.parametrize("module, planted, contract", [
    # a function-level import counts: the runtime must never reach torch
    ("export/runtime.py", "def _planted():\n    import torch\n",
     "The serving core never imports torch or onnx"),
    ("mgsv_sk/nn/model.py", "def _planted():\n    import mgsv_sk.serve\n",
     "Layers: imports point down only"),
    ("mgsv_sk/nn/model.py", "def _planted():\n    import mgsv_sk.export.runtime\n",
     "Only the command line and the service import export"),
    ("mgsv_sk/search/topk.py",
     "def _planted():\n    from mgsv_sk.data._schema import FIT_COLUMNS\n",
     "A sub-package's private modules are its own"),
    # the two transports are siblings: gRPC reading an HTTP body helper breaks the layers
    ("mgsv_sk/serve/grpc/service.py", "def _planted():\n    from ..http import body\n",
     "The service: the app over its two transports"),
])
def test_a_planted_violation_breaks_its_contract(tmp_path, module, planted, contract):
    for name in SOURCES:
        shutil.copytree(ROOT / name, tmp_path / name, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__", "static"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    target = tmp_path / module
    target.write_text(target.read_text() + "\n\n" + planted)
    run = _lint(tmp_path)
    assert run.returncode != 0, run.stdout
    broken = run.stdout.split("Broken contracts", 1)[-1]
    assert contract in broken, run.stdout


def _imported_modules(tree: ast.AST) -> dict[str, str]:
    """Local name -> the module it is bound to, for ``import a.b as x`` and
    ``from a import b`` (b possibly a module)."""
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                out[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                out[a.asname or a.name] = f"{node.module}.{a.name}"
    return out


def _owner(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] == "mgsv_sk" and len(parts) > 1:
        return ".".join(parts[:2])
    return "mgsv_sk.export" if parts[0] == "export" else None


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_no_sub_package_imports_another_ones_private_names():
    found = []
    for path in _modules():
        own = _package(path)
        tree = ast.parse(path.read_text())
        bound = _imported_modules(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                owner = _owner(node.module)
                # the root's own helpers, shared by every layer: the install hint, and the
                # Dask client checks of the two Dask helpers (train's search, export's batch)
                if owner is None or owner == own or node.module in ("mgsv_sk._extras",
                                                                    "mgsv_sk._cluster"):
                    continue
                parts = node.module.split(".")
                names = [a.name for a in node.names if _private(a.name)]
                if any(_private(p) for p in parts[1:]) or names:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.module} {names}")
            elif (isinstance(node, ast.Attribute) and _private(node.attr)
                  and isinstance(node.value, ast.Name) and node.value.id in bound):
                owner = _owner(bound[node.value.id])
                if owner is not None and owner != own:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} "
                                 f"{node.value.id}.{node.attr}")
    assert found == []


#: Functions kept over 80 lines (docstrings not counted), with the reason: none since the
#: service's routes moved into routers per concern (``mgsv_sk/serve/http/routes/``).
LONG_FUNCTIONS: set[str] = set()


def _length(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    lines = (node.end_lineno or node.lineno) - node.lineno + 1
    first = node.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
            and isinstance(first.value.value, str):
        lines -= (first.end_lineno or first.lineno) - first.lineno + 1
    return lines


def test_no_function_over_80_lines():
    long = set()
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _length(node) > 80:
                long.add(f"{path.relative_to(ROOT)}::{node.name}")
    assert long <= LONG_FUNCTIONS, sorted(long - LONG_FUNCTIONS)


def _doc_tree() -> list[tuple[str, str]]:
    """(folder or module, its description) of docs/architecture.md's layer diagram."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    block = text.split("```", 2)[1]
    rows: list[tuple[str, str]] = []
    for line in block.splitlines():
        m = re.match(r"^ (\S+)\s+(.*)$", line)
        if m:
            rows.append((m[1], m[2]))
        elif rows and line.strip():
            rows[-1] = (rows[-1][0], rows[-1][1] + " " + line.strip())
    return rows


def _dotted(where: str) -> str:
    """``mgsv_sk/search/``, ``export/``, ``mgsv_sk.export`` -> the installed module name."""
    name = where.rstrip("/").removesuffix(".py").replace("/", ".")
    return "mgsv_sk.export" if name == "export" else name


def test_the_architecture_document_names_what_exists():
    rows = _doc_tree()
    for where, text in rows:
        folder = ROOT / where.rstrip("/")
        for name in re.findall(r"\b(\w+\.py)\b", text):
            assert (folder / name).is_file(), f"docs/architecture.md names {where}{name}"
    named = {_dotted(where) for where, _ in rows}
    packages = {f"mgsv_sk.{p.name}" for p in (ROOT / "mgsv_sk").iterdir()
                if (p / "__init__.py").is_file()} | {"mgsv_sk.export"}
    assert packages <= named, sorted(packages - named)


def test_the_architecture_document_lists_the_layers_in_the_contract_order():
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c for c in contracts["contracts"] if c["id"] == "layers")["layers"]
    order = [_dotted(m.strip()) for layer in layers for m in re.split(r"[|:]", layer)]
    in_doc = [_dotted(w) for w, _ in _doc_tree()]
    assert [m for m in in_doc if m in order] == order
