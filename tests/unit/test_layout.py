"""The folders follow the data (docs/architecture.md): the stages never import the layers that
drive them, and the packages import one another without a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

STAGES = ("files", "images", "endpoint", "tables")
DRIVERS = ("runs", "report", "local", "top:cli", "top:estimate", "top:config")


def _package(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 2 or (REPO / "pipeline" / parts[1]).is_dir():
        return parts[1]
    return f"top:{parts[1]}"


def _graph() -> dict[str, set[str]]:
    """Package → the packages it imports (anywhere in its modules, functions included)."""
    graph: dict[str, set[str]] = {}
    for path in (REPO / "pipeline").rglob("*.py"):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        if module == "pipeline":
            continue
        source = _package(module)
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or not (node.module or "").startswith(
                    "pipeline"):
                continue
            targets = ([f"pipeline.{a.name}" for a in node.names] if node.module == "pipeline"
                       else [str(node.module)])
            graph.setdefault(source, set()).update(
                t for t in map(_package, targets) if t != source)
    return graph


def test_the_stages_import_none_of_the_layers_that_drive_them() -> None:
    graph = _graph()
    for stage in STAGES:
        assert not graph.get(stage, set()) & set(DRIVERS), stage


def test_the_packages_import_one_another_without_a_cycle() -> None:
    graph, done, path = _graph(), set(), []

    def visit(node: str) -> None:
        assert node not in path, " → ".join([*path[path.index(node):], node])
        if node in done:
            return
        path.append(node)
        for target in sorted(graph.get(node, ())):
            visit(target)
        path.pop()
        done.add(node)

    for node in sorted(graph):
        visit(node)
    assert Path(REPO / "pipeline" / "runs").is_dir() and "runs" in graph


def test_the_pure_stages_import_no_spark() -> None:
    """images/ and endpoint/ run the same inside a Spark task and on the driver (and in the
    unit tier): they must not need PySpark."""
    for package in ("images", "endpoint"):
        for path in (REPO / "pipeline" / package).glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                assert not any(n.split(".")[0] == "pyspark" for n in names), path
