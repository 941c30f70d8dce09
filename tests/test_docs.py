"""The README's Python snippets and the example scripts run as written."""

from __future__ import annotations

import re
import runpy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _python_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_has_the_two_commands_first():
    text = (ROOT / "README.md").read_text()
    first = re.search(r"```[a-z]*\n(.*?)```", text, flags=re.S)
    assert first is not None
    lines = [line for line in first.group(1).splitlines() if line.strip()]
    assert len(lines) == 2
    assert "examples/quickstart.py" in lines[0] and "pytest" in lines[1]
    assert all("torch==2.13.0" in line for line in lines)


@pytest.mark.parametrize("index", range(len(_python_blocks())))
def test_readme_snippet_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(_python_blocks()[index], f"README.md block {index}", "exec"), {})


@pytest.mark.parametrize(
    ("script", "expected"),
    [("grid_search.py", "best: {'lr'"), ("quickstart.py", "MGSVGrounder (quick)")],
)
def test_example_runs(script, expected, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", [script])
    runpy.run_path(str(ROOT / "examples" / script), run_name="__main__")
    assert expected in capsys.readouterr().out
