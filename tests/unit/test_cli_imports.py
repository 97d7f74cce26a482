"""Building the command line loads neither the local server nor its reference model: every
command would pay for them otherwise. They are imported when `serve-local` runs, or when a run
with no host starts the local endpoint (pipeline/local/command.py, pipeline/cli.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("pipeline.local.server", "pipeline.local.describer")


def modules_after(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running `code`."""
    probe = f"import json, sys\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # this checkout's code, whatever is installed
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120, check=True)
    return set(json.loads(done.stdout.splitlines()[-1]))


def test_the_cli_and_its_parser_do_not_load_the_local_server() -> None:
    loaded = modules_after("import pipeline.cli\npipeline.cli.build_parser()")
    assert "pipeline.local.command" in loaded  # the probe sees the modules the parser uses
    assert not loaded & set(HEAVY)


def test_the_probe_sees_an_eager_import() -> None:
    assert set(HEAVY) <= modules_after("import pipeline.local.server")
