"""Where the shipped non-Python files live: conf/models.yml, sql/*.sql, sample photos.

The repository keeps them at the top level (conf/, sql/) so users find them; the wheel maps
the same folders into the package as `pipeline.conf` and `pipeline.sql` (see pyproject.toml).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def _folder(package: str, repo_folder: str) -> Path:
    repo = Path(__file__).resolve().parent.parent / repo_folder
    if repo.is_dir():
        return repo
    return Path(str(resources.files(package)))


def conf_dir() -> Path:
    return _folder("pipeline.conf", "conf")


def sql_dir() -> Path:
    return _folder("pipeline.sql", "sql")


def samples_dir() -> Path:
    return Path(__file__).resolve().parent / "samples" / "photos"


def sql_text(name: str) -> str:
    return (sql_dir() / name).read_text(encoding="utf-8")
