"""Spark paths that plain Python can open too: local folders, and Unity Catalog volumes, which
Databricks mounts at /Volumes on the driver and on every executor.

Spark spells a local file `file:/tmp/photos/a.jpg` and a volume file
`dbfs:/Volumes/main/media/photos/a.jpg`; the os module wants `/tmp/photos/a.jpg` and
`/Volumes/main/media/photos/a.jpg`. Object stores (s3://, abfss://, gs://) have no such
path: for them every answer here is None.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

VOLUMES = "/Volumes/"
# Spark's paths are Hadoop paths, not URLs: `file:/tmp/a b#1.jpg` means exactly that file
# (nothing is percent-encoded, `#` starts no fragment), so they are cut by hand.
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")


def os_path(path: str) -> str | None:
    """The os path of a Spark path or URI, or None when only Spark can read it."""
    match = _SCHEME.match(path)
    scheme = match.group(1).lower() if match else ""
    rest = path[match.end():] if match else path
    if scheme in ("", "file"):
        if scheme and rest.startswith("//"):  # file:///tmp/x, file://localhost/tmp/x
            slash = rest.find("/", 2)
            rest = rest[slash:] if slash >= 0 else "/"
        return os.path.abspath(rest) if rest else None
    if scheme == "dbfs" and rest.startswith(VOLUMES):
        return rest
    return None


def spark_prefix(path: str) -> str:
    """What Spark puts before the os path when it lists this input: `file:` for a local
    folder, `dbfs:` for a volume (the Databricks file system's scheme)."""
    match = _SCHEME.match(path)
    if match:
        return f"{match.group(1)}:"
    return "dbfs:" if path.startswith(VOLUMES) else "file:"


def hidden(name: str) -> bool:
    """Names Spark's file listing skips (`_SUCCESS`, `.DS_Store`, `_delta_log`, files being
    copied), by the rule of its InMemoryFileIndex."""
    return ((name.startswith("_") and "=" not in name) or name.startswith(".")
            or name.endswith("._COPYING_"))


def walk(top: str) -> Iterator[tuple[str, bool]]:
    """(os path, is a symbolic link) of every file and link under the folder `top`, names
    Spark skips left out. Links are not followed, so a loop (`sub/up -> ..`) ends here: only
    directory entries are read, no file is opened or stat'ed."""
    folders = [top]
    while folders:
        try:
            entries = list(os.scandir(folders.pop()))
        except OSError:  # gone, or unreadable: Spark's listing says so for itself
            continue
        for entry in entries:
            if hidden(entry.name):
                continue
            if entry.is_symlink():
                yield entry.path, True
            elif entry.is_dir(follow_symlinks=False):
                folders.append(entry.path)
            elif entry.is_file(follow_symlinks=False):
                yield entry.path, False
