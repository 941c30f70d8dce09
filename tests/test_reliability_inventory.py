"""The boundary inventory of docs/reliability.md cannot rot: it names every public name of
docs/api.md, every command of ``mgsv-sk`` and every HTTP route, and every test it cites
exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mgsv_sk.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]


def inventory() -> str:
    text = (ROOT / "docs" / "reliability.md").read_text()
    start = text.index("### The boundary inventory")
    return text[start:text.index("\n## ", start)]


def api_names() -> set[str]:
    names = set()
    for line in (ROOT / "docs" / "api.md").read_text().splitlines():
        if not line.startswith("| `"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        first = re.findall(r"`([^`]+)`", cells[0])
        if first and first[0].startswith(("mgsv_sk.", "export.")):  # a module: its names
            names.update(re.findall(r"`([^`]+)`", cells[1]))
        else:
            names.update(first)
    return names


def test_every_public_name_is_in_the_inventory():
    section = inventory()
    missing = sorted(n for n in api_names() if f"`{n}`" not in section)
    assert not missing, f"docs/reliability.md's inventory lacks {missing}"


def test_every_command_is_in_the_inventory():
    parser = build_parser()
    commands = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    section = inventory()
    missing = sorted(c for c in commands.choices if f"`mgsv-sk {c}`" not in section)
    assert not missing, f"docs/reliability.md's inventory lacks the command(s) {missing}"


def http_routes() -> list[str]:
    """``METHOD /path`` of every route of the service's routers (built with a stand-in
    state: the routes are declared when a router is made, the state is read per request)."""
    from unittest import mock

    pytest.importorskip("fastapi")
    from mgsv_sk.serve import ServeConfig
    from mgsv_sk.serve.http import routes

    out = []
    for make in (routes.oip_router, routes.uploads_router, routes.audio_router,
                 routes.operations_router):
        for route in make(mock.MagicMock(config=ServeConfig())).routes:
            for method in sorted(getattr(route, "methods", None) or ()):
                out.append(f"{method} {route.path}")
    return out


def test_every_http_route_is_in_the_inventory():
    routes = http_routes()
    assert routes
    section = inventory()
    missing = [r for r in routes if f"`{r}`" not in section]
    assert not missing, f"docs/reliability.md's inventory lacks the route(s) {missing}"


def test_every_test_the_inventory_cites_exists():
    cited = re.findall(r"`(tests/[\w/]+\.py)(?:::(\w+))?`", inventory())
    assert cited
    for path, name in cited:
        file = ROOT / path
        assert file.is_file(), f"{path} does not exist"
        if name:
            assert re.search(rf"^def {name}\(", file.read_text(), re.M), f"{path}::{name}"
