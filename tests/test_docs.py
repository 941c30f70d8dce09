"""The documentation runs as written.

- Every ```python block of README.md and docs/*.md is executed. The blocks of one file run
  in order, in one namespace and one fresh working folder, so a block may use what the
  blocks before it in the same file defined (a test of block i runs the blocks before it
  first when they have not run yet).
- Every shell block (```bash, ```sh, ```console, ```shell) is checked line by line: an
  ``mgsv-sk ...`` (or ``python -m mgsv_sk`` / ``python -m mgsv_sk.export``) command must parse with
  the project's own argument parser, ``python PATH`` must name a file of the repository,
  ``python -m MODULE`` an importable module, and every ``mgsv-sk[extra]`` / ``.[extra]``
  an extra of pyproject.toml. Other commands (curl, torchrun, apt-get, ...) are left alone,
  except that a script they run must exist.
- Every relative link (and its #anchor, for a Markdown page) resolves.
- The README stays a front door: at most 250 lines, its sections in a fixed order, the
  two commands first, and a link to every page of docs/.
- The example scripts run.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOC_FILES = [README, *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 250
README_SECTIONS = [
    "What it does",
    "Two commands",
    "Fit, predict, rank, save",
    "Your own videos and music",
    "Headline figures",
    "Documentation",
    "Citation",
]
SHELL_LANGS = {"bash", "sh", "console", "shell"}
#: Programs whose command lines are checked; any other (curl, apt-get, docker, ...) is not.
CHECKED = {"mgsv-sk", "python", "python3", "torchrun"}
#: ``mgsv_sk`` modules a documentation snippet may import besides the top level (those of
#: docs/api.md): the rest of the package is internal and moves between releases.
PUBLIC_SUBMODULES = {"plot", "extract", "serve", "search.sharded", "train.dask_search",
                     "train.distributed"}

_FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.S | re.M)
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
_EXTRA = re.compile(r"(?:mgsv-sk|mgsv_sk|(?<![\w/])\.)\[([A-Za-z0-9_,\- ]+)\]")


def _name(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _blocks(path: Path) -> list[tuple[str, str]]:
    """(language, body) of every fenced block of ``path``, in order."""
    return [(m.group(1).strip().lower(), m.group(2)) for m in _FENCE.finditer(path.read_text())]


def _python_blocks(path: Path) -> list[str]:
    return [body for lang, body in _blocks(path) if lang in ("python", "py")]


def _without_fences(text: str) -> str:
    return _FENCE.sub("", text)


PYTHON_CASES = [
    pytest.param(path, index, id=f"{_name(path)}-{index}")
    for path in DOC_FILES
    for index in range(len(_python_blocks(path)))
]
SHELL_CASES = [
    pytest.param(path, index, body, id=f"{_name(path)}-{index}")
    for path in DOC_FILES
    for index, (lang, body) in enumerate(_blocks(path))
    if lang in SHELL_LANGS
]


# -- the Python blocks run -------------------------------------------------------------
class _FileRun:
    """The python blocks of one page, run in order in one namespace and folder."""

    def __init__(self, path: Path, workdir: Path) -> None:
        self.path = path
        self.blocks = _python_blocks(path)
        self.workdir = workdir
        self.namespace: dict = {"__name__": "__docs__"}
        self.done = 0
        self.failed: int | None = None

    def run_through(self, index: int) -> None:
        while self.done <= index:
            i = self.done
            if self.failed is not None:
                pytest.fail(f"{_name(self.path)} python block {i} builds on block "
                            f"{self.failed}, which failed")
            self.done += 1
            code = compile(self.blocks[i], f"{_name(self.path)} python block {i}", "exec")
            try:
                exec(code, self.namespace)
            except BaseException:
                self.failed = i
                raise


@pytest.fixture(scope="module")
def file_runs(tmp_path_factory):
    runs: dict[Path, _FileRun] = {}

    def get(path: Path) -> _FileRun:
        if path not in runs:
            runs[path] = _FileRun(path, tmp_path_factory.mktemp(path.stem))
        return runs[path]

    yield get


@pytest.fixture
def one_torch_thread():
    """Snippets that leave ``n_threads`` unset use torch's thread count: one thread keeps
    the tiny fits fast and steady on a small machine shared with other work."""
    try:
        import torch
    except ImportError:  # the torch-free install: the snippets that need torch fail loudly
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(("path", "index"), PYTHON_CASES)
def test_python_block_runs(path, index, file_runs, one_torch_thread, monkeypatch):
    run = file_runs(path)
    monkeypatch.chdir(run.workdir)
    run.run_through(index)
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")


@pytest.mark.parametrize(("path", "index"), PYTHON_CASES)
def test_python_block_imports_only_public_names(path, index):
    """Snippets import ``mgsv_sk`` from its top level (or a module of docs/api.md) and the
    ``export`` package from its public modules, never an internal path."""
    code = _python_blocks(path)[index]
    for module in re.findall(r"^\s*(?:from|import)\s+(mgsv_sk\.[\w.]+)", code, flags=re.M):
        if module.startswith("mgsv_sk.export."):
            continue  # the export package: its public modules (below)
        assert module.split(".", 1)[1] in PUBLIC_SUBMODULES, (
            f"{_name(path)} python block {index} imports {module}; use `from mgsv_sk import "
            f"...` (or mgsv_sk.{{{', '.join(sorted(PUBLIC_SUBMODULES))}}})")
    for module in re.findall(r"^\s*(?:from|import)\s+((?:mgsv_sk\.)?export\.[\w.]+)", code,
                             flags=re.M):
        assert not any(part.startswith("_") for part in module.split(".")), (
            f"{_name(path)} python block {index} imports the private module {module}")


# -- the shell blocks are valid commands ---------------------------------------------
def _extras() -> set[str]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return set(project["optional-dependencies"])


def _quotes_open(text: str) -> bool:
    try:
        shlex.split(text, comments=True)
    except ValueError:
        return True
    return False


def _logical_lines(body: str) -> list[str]:
    """The block's commands: continuation lines (a trailing backslash, or a quote still
    open) joined, console prompts removed."""
    lines, current = [], ""
    for raw in body.splitlines():
        line = raw.rstrip()
        if not current and line.lstrip().startswith("$ "):
            line = line.lstrip()[2:]
        if line.endswith("\\"):
            current += line[:-1] + " "
        elif _quotes_open(current + line):
            current += line + "\n"
        else:
            lines.append(current + line)
            current = ""
    if current:
        lines.append(current)
    return [line for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _commands(line: str) -> list[list[str]]:
    """Split one shell line into simple commands (at && || ; | &), without redirections
    and comments."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|<>")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    commands: list[list[str]] = [[]]
    tokens = list(lexer)
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token and set(token) <= set(";&|"):
            commands.append([])
        elif token and set(token) <= set("<>"):
            i += 1  # the redirection's target
        else:
            commands[-1].append(token)
        i += 1
    return [command for command in commands if command]


def _strip_env(words: list[str]) -> list[str]:
    while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=\S*", words[0]):
        words = words[1:]
    return words


def _parse_cli(argv: list[str], where: str) -> None:
    from mgsv_sk.cli import build_parser

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(argv)
    except SystemExit as exc:
        if exc.code not in (0, None):  # --help exits 0
            pytest.fail(f"{where}: `mgsv-sk {shlex.join(argv)}` does not parse:\n"
                        f"{err.getvalue()}")


def _check_command(words: list[str], where: str) -> None:
    words = _strip_env(words)
    if not words:
        return
    program, args = Path(words[0]).name, words[1:]
    if program == "mgsv-sk":
        _parse_cli(args, where)
    elif re.fullmatch(r"python[0-9.]*", program):
        if not args or args[0] == "-c":
            return
        if args[0] == "-m":
            module, rest = args[1], args[2:]
            assert importlib.util.find_spec(module) is not None, (
                f"{where}: `python -m {module}`: no module {module!r}")
            if module == "mgsv_sk":
                _parse_cli(rest, where)
            elif module == "export":
                _parse_cli(["export", *rest], where)
            return
        script = next((a for a in args if not a.startswith("-")), None)
        if script is not None:
            assert (ROOT / script).is_file(), f"{where}: `python {script}`: no such file"
    elif program == "torchrun":
        for arg in args:
            if arg.endswith(".py"):
                assert (ROOT / arg).is_file(), f"{where}: `{program} ... {arg}`: no such file"


@pytest.mark.parametrize(("path", "index", "body"), SHELL_CASES)
def test_shell_block_commands_are_valid(path, index, body):
    where = f"{_name(path)} block {index}"
    extras = _extras()
    for line in _logical_lines(body):
        for name in _EXTRA.findall(line):
            for extra in (part.strip() for part in name.split(",")):
                assert extra in extras, f"{where}: no extra {extra!r} in pyproject.toml ({line})"
        try:
            commands = _commands(line)
        except ValueError:  # quoting shlex cannot follow, e.g. curl -d '...'"$(...)"'...'
            first = _strip_env(line.split())
            assert first and Path(first[0]).name not in CHECKED, (
                f"{where}: cannot split {line!r} into words")
            continue
        for words in commands:
            _check_command(words, where)


@pytest.mark.parametrize("path", DOC_FILES, ids=_name)
def test_inline_pip_installs_name_existing_extras(path):
    extras = _extras()
    for command in re.findall(r"pip install[^`\n]*", _without_fences(path.read_text())):
        for name in _EXTRA.findall(command):
            for extra in (part.strip() for part in name.split(",")):
                assert extra in extras, f"{_name(path)}: no extra {extra!r} ({command})"


# -- links ------------------------------------------------------------------------------
def _slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    headings = re.findall(r"^#{1,6}\s+(.*?)\s*#*\s*$", _without_fences(path.read_text()),
                          flags=re.M)
    return {_slug(heading) for heading in headings}


@pytest.mark.parametrize("path", DOC_FILES, ids=_name)
def test_relative_links_resolve(path):
    for target in _LINK.findall(_without_fences(path.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        assert resolved.exists(), f"{_name(path)}: link {target} points to nothing"
        assert ROOT in resolved.parents or resolved == ROOT, (
            f"{_name(path)}: link {target} leaves the repository")
        if anchor and resolved.suffix == ".md":
            assert anchor in _anchors(resolved), (
                f"{_name(path)}: link {target}: no heading #{anchor} in {_name(resolved)}")


# -- the README is a front door -----------------------------------------------------------
def _readme_sections() -> list[tuple[str, str]]:
    """(title, text) of each ``## `` section of the README, in order."""
    text = README.read_text()
    parts = re.split(r"^## +(.+?)\s*$", text, flags=re.M)
    return list(zip(parts[1::2], parts[2::2]))


def test_readme_is_short():
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines (at most {README_MAX_LINES}); move reference "
        "material to docs/")


def test_readme_sections_in_order():
    sections = _readme_sections()
    assert [title for title, _ in sections] == README_SECTIONS
    body = dict(sections)
    for task in ("SmG", "V2MR", "MsG"):
        assert task in body["What it does"]
    assert "```" not in README.read_text().split("## Two commands")[0], (
        "no fenced block may come before the two commands")
    fit = body["Fit, predict, rank, save"]
    python = re.findall(r"```python\n(.*?)```", fit, flags=re.S)
    assert len(python) == 2, "a fit / predict / rank / save example, then a serving one"
    assert all(call in python[0] for call in (".fit(", ".predict(", ".rank(", ".save("))
    assert "OnnxGrounder.load(" in python[1] and "export_onnx(" in python[1]
    assert "mgsv-sk recommend" in body["Your own videos and music"]
    assert "docs/media.md" in body["Your own videos and music"]
    figures = body["Headline figures"]
    assert re.search(r"^\|.*\]\(docs/[a-z_]+\.md\)", figures, flags=re.M), (
        "each headline figure names the docs page it comes from")
    assert "arXiv" in body["Citation"]


def test_readme_links_every_docs_page_and_the_changelog():
    links = set(_LINK.findall(README.read_text()))
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"docs/{page.name}" in links, f"README.md does not link docs/{page.name}"
    assert "CHANGELOG.md" in links


def test_readme_has_the_two_commands_first():
    text = README.read_text()
    first = re.search(r"```[a-z]*\n(.*?)```", text, flags=re.S)
    assert first is not None
    lines = [line for line in first.group(1).splitlines() if line.strip()]
    assert len(lines) == 2
    assert "examples/quickstart.py" in lines[0] and "pytest" in lines[1]
    assert all("torch==2.13.0" in line for line in lines)


# -- the example scripts run -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("script", "expected"),
    [("grid_search.py", "best: {'lr'"), ("quickstart.py", "MGSVGrounder (quick)")],
)
def test_example_runs(script, expected, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", [script])
    runpy.run_path(str(ROOT / "examples" / script), run_name="__main__")
    assert expected in capsys.readouterr().out
