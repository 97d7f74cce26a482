"""No module reaches into the JVM: Spark Connect (serverless, standard access, Databricks
Connect) has none, so `sparkContext`, `_jvm`, `_jsc` and RDDs would break every run there."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SOURCES = sorted([*(REPO / "pipeline").rglob("*.py"), *(REPO / "jobs").rglob("*.py")])
BANNED = {"sparkContext", "_jvm", "_jsc", "rdd", "_jdf", "_jsparkSession"}


def jvm_uses(source: str) -> list[tuple[int, str]]:
    """Attribute accesses and names that reach the JVM (comments and strings do not count)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr in BANNED:
            found.append((node.lineno, node.attr))
        elif isinstance(node, ast.Name) and node.id in {"SparkContext", "JavaGateway"}:
            found.append((node.lineno, node.id))
        elif isinstance(node, ast.ImportFrom) and node.module in {"py4j", "pyspark.core.context"}:
            found.append((node.lineno, node.module))
    return found


def test_the_check_catches_each_way_in() -> None:
    assert jvm_uses("spark.sparkContext.setLogLevel('ERROR')") == [(1, "sparkContext")]
    assert [attr for _, attr in jvm_uses("sc._jvm.org.apache.hadoop.fs.Path(p)")] == ["_jvm"]
    assert jvm_uses("df.rdd.getNumPartitions()") == [(1, "rdd")]
    assert jvm_uses("conf = spark._jsc.hadoopConfiguration()") == [(1, "_jsc")]
    assert jvm_uses("# spark.sparkContext in a comment\nx = 'spark._jvm'") == []


@pytest.mark.parametrize("module", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_module_touches_the_jvm(module: Path) -> None:
    assert jvm_uses(module.read_text(encoding="utf-8")) == []
