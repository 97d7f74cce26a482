"""What the benchmarks share: the local endpoint in a process of its own, generated photos,
and `vision-batch` run as users run it, a command timed by the wall clock."""

from __future__ import annotations

import io
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from PIL import Image

ENDPOINT = "bench-vlm"
REPO = Path(__file__).resolve().parents[1]


def jpeg(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.linear_gradient("L").resize((width, height)).convert("RGB").save(buf, "JPEG")
    return buf.getvalue()


def photos(folder: Path, count: int) -> Path:
    """`count` small photos, each of its own size (a caption names the image it saw)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (folder / f"img{i:05}.jpg").write_bytes(jpeg(64 + i % 97, 48 + i // 97 % 500))
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Endpoint:
    """`vision-batch serve-local` in a subprocess, so its work is not in our process."""

    def __init__(self, latency_ms: float, capacity: int, *extra: str) -> None:
        self.port = free_port()
        self.token = secrets.token_urlsafe(16)
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "DATABRICKS_TOKEN": self.token}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "serve-local", "--port", str(self.port),
             "--latency-ms", str(latency_ms), "--max-concurrency", str(capacity),
             "--endpoint", ENDPOINT, *extra],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        for _ in range(100):
            try:
                self.stats()
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("the local endpoint did not start")

    def stats(self) -> dict:
        response = httpx.get(f"{self.url}/local/stats",
                             headers={"Authorization": f"Bearer {self.token}"}, timeout=5)
        response.raise_for_status()
        return response.json()

    def flags(self) -> list[str]:
        return ["--host", self.url, "--endpoint", ENDPOINT]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)

    def __enter__(self) -> Endpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def rate(stats: dict) -> tuple[float, float]:
    """(images answered per second from the first request to the last answer, share of
    requests turned away with 429)."""
    window = stats["last_answer_at"] - stats["first_request_at"]
    refused = stats["by_status"].get("429", 0) / max(1, stats["requests"])
    return stats["images"] / window, refused


def command(*args: str, cwd: Path, token: str | None = None, env: dict | None = None,
            pythonpath: Path | None = None, timeout: float = 1800,
            program: tuple[str, ...] = ("-m", "pipeline.cli")) -> tuple[float, str]:
    """`vision-batch ARGS` as a fresh process: its wall time (interpreter start, JVM start
    and all) and what it printed; it must succeed. `program` runs another entry point with
    the same arguments (a baseline variant of the command)."""
    full = {k: v for k, v in os.environ.items()
            if not k.startswith(("DATABRICKS_", "SPARK_REMOTE"))}
    full.update(env or {})
    if token:
        full["DATABRICKS_TOKEN"] = token
    if pythonpath is not None:  # another checkout of the code, with this environment's deps
        full["PYTHONPATH"] = str(pythonpath)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, *program, *args], cwd=cwd, env=full,
                          capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"vision-batch {' '.join(args)} failed: {done.stderr[-2000:]}")
    return wall, done.stdout
