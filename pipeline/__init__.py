"""vision-batch: caption every image in a folder or volume with a vision model, into Delta.

    from pipeline import caption   # the Python entry point (pipeline/api.py)

Both names are looked up when first used: Spark's Python workers import this package for
every task, and must not pay for the entry point's imports (the Databricks SDK among them).
"""

from __future__ import annotations

from typing import Any

__all__ = ["__version__", "caption"]


def __getattr__(name: str) -> Any:
    if name == "caption":
        from pipeline.api import caption

        return caption
    if name == "__version__":  # the installed package's, from its metadata (pyproject.toml)
        from importlib.metadata import version

        return version("vision-batch")
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
