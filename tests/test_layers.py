"""Layers point one way: the core imports nothing above it; ingest, retrieval, server and watchers use the
core but not the outer layer (kbapp: composition root, CLI, service runner) nor, mostly, each other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# package -> top-level project packages it may import
ALLOWED = {
    "kb": {"kb"},
    "ingest": {"kb", "ingest"},
    "retrieval": {"kb", "retrieval"},
    "watchers": {"kb", "watchers"},
    "server": {"kb", "server"},
}
PROJECT = {"kb", "kbapp", "ingest", "retrieval", "server", "watchers"}


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out & PROJECT


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_layers_point_one_way(package: str) -> None:
    wrong = {
        str(p.relative_to(REPO)): sorted(imports(p) - ALLOWED[package])
        for p in (REPO / package).rglob("*.py")
        if imports(p) - ALLOWED[package]
    }
    assert not wrong, f"{package} imports above its layer: {wrong}"


def test_parser_processes_do_not_load_the_composition_root(make_app) -> None:  # type: ignore[no-untyped-def]
    """The registry factory a parser process unpickles and runs lives in ingest/: the child never imports kbapp."""
    app = make_app(workers=1)
    parser = app.new_parser("fast")
    try:
        assert parser.factory.__module__.startswith("ingest.")
    finally:
        parser.close()
