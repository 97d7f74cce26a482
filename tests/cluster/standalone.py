"""A Spark standalone cluster on this machine, from the pip-installed PySpark distribution: a
master and workers, each a JVM in a process group of its own, and the executors the workers
start for an application (each in its own JVM, with its own Python workers).

`Cluster.start()` returns once every worker has registered with the master (its web UI's
`/json/` says so); `stop()` ends the master, the workers and everything they started (the
executors, and the Python daemons that leave their executor's process group), and says
what, if anything, outlived a SIGKILL.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pyspark

SPARK_HOME = Path(pyspark.__file__).parent
EXECUTOR_CLASS = "org.apache.spark.executor.CoarseGrainedExecutorBackend"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Executor:
    """One executor JVM of an application, as its command line names it. `process` is bound
    to that very process: a signal never reaches another one that took its PID."""

    process: psutil.Process
    app_id: str
    executor_id: str

    @property
    def key(self) -> str:
        return f"{self.app_id}/{self.executor_id}"


@dataclass
class Cluster:
    folder: Path
    workers: int = 2
    cores: int = 2
    memory: str = "1g"
    port: int = field(default_factory=free_port)
    web_port: int = field(default_factory=free_port)
    processes: list[subprocess.Popen] = field(default_factory=list)
    # Every descendant ever noticed, bound to its process (psutil checks PID reuse)
    _seen: dict[int, psutil.Process] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"spark://127.0.0.1:{self.port}"

    @property
    def web_url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def env(self) -> dict[str, str]:
        """What points `vision-batch run` at this cluster, as a user sets it."""
        return {"VISION_BATCH_SPARK_MASTER": self.url, "VISION_BATCH_DRIVER_MEMORY": "1g"}

    # -- starting and stopping ----------------------------------------------------------------

    def start(self, timeout_s: float = 120) -> Cluster:
        """The master, then the workers; returns once all of them are ALIVE at the master."""
        (self.folder / "conf").mkdir(parents=True, exist_ok=True)  # no spark-env.sh, no defaults
        try:
            self._spawn("master", "org.apache.spark.deploy.master.Master", "--host",
                        "127.0.0.1", "--port", str(self.port), "--webui-port",
                        str(self.web_port))
            for i in range(self.workers):
                work = self.folder / f"worker-{i}"
                (work / "local").mkdir(parents=True, exist_ok=True)
                self._spawn(f"worker-{i}", "org.apache.spark.deploy.worker.Worker", self.url,
                            "--host", "127.0.0.1", "--cores", str(self.cores), "--memory",
                            self.memory, "--webui-port", str(free_port()), "--work-dir",
                            str(work), local=work / "local")
            deadline = time.monotonic() + timeout_s
            while self.alive_workers() < self.workers:
                for process in self.processes:
                    if process.poll() is not None:
                        raise RuntimeError(f"{process.args[1]} exited with {process.returncode}"
                                           f": {self.log_tail(process)}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"only {self.alive_workers()} of {self.workers} workers "
                                       f"registered within {timeout_s:.0f} s")
                time.sleep(0.5)
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, name: str, main_class: str, *args: str, local: Path | None = None) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SPARK_", "PYSPARK_"))}
        env.update(SPARK_HOME=str(SPARK_HOME), SPARK_CONF_DIR=str(self.folder / "conf"),
                   SPARK_LOCAL_IP="127.0.0.1", SPARK_DAEMON_MEMORY="256m",
                   # Every JVM of the cluster (the executors inherit the workers' environment)
                   # lives for a few short runs: C2's compiling costs more CPU than it saves,
                   # as for vision-batch's own local JVM (half the executors' CPU, measured).
                   JAVA_TOOL_OPTIONS="-XX:TieredStopAtLevel=1")
        if local is not None:  # the executors' scratch space (shuffle, spilled cache blocks)
            env["SPARK_LOCAL_DIRS"] = str(local)
        # Should this process die without stopping the cluster (SIGKILL, os._exit), the
        # master and the workers die with it (their executors follow their worker).
        orphaned = ["setpriv", "--pdeathsig", "KILL"] if shutil.which("setpriv") else []
        log = open(self.folder / f"{name}.log", "wb")  # noqa: SIM115 (closed with the process)
        with log:
            self.processes.append(subprocess.Popen(
                [*orphaned, str(SPARK_HOME / "bin" / "spark-class"), main_class, *args],
                env=env, cwd=self.folder, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            ))

    def stop(self, timeout_s: float = 30) -> list[str]:
        """SIGTERM every process group (workers first: they stop their executors), SIGKILL a
        group whose leader is still there after `timeout_s`, then every descendant ever seen
        that is still alive (Python daemons make process groups of their own). Returns the
        processes alive after all that."""
        self._notice()
        for process in reversed(self.processes):  # not reaped yet: the group is still ours
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for process in reversed(self.processes):
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)
        for child in self._seen.values():
            with contextlib.suppress(psutil.Error):
                child.kill()  # psutil refuses if the PID now belongs to another process
                child.wait(timeout=10)
        return [" ".join(child.cmdline())[:160] for child in self._seen.values()
                if _alive(child)]

    def _notice(self) -> None:
        for process in self.processes:
            with contextlib.suppress(psutil.Error):
                for child in psutil.Process(process.pid).children(recursive=True):
                    self._seen.setdefault(child.pid, child)

    def log_tail(self, process: subprocess.Popen, chars: int = 2000) -> str:
        name = "master" if process is self.processes[0] else \
            f"worker-{self.processes.index(process) - 1}"
        path = self.folder / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    # -- looking at it --------------------------------------------------------------------------

    def status(self) -> dict:
        """The master's JSON status (workers, applications)."""
        with urllib.request.urlopen(f"{self.web_url}/json/", timeout=10) as response:
            return json.loads(response.read())

    def alive_workers(self) -> int:
        try:
            return int(self.status().get("aliveworkers", 0))
        except OSError:  # the master's web UI is not up yet
            return 0

    def executors(self) -> list[Executor]:
        """The executor JVMs alive now, of any application."""
        self._notice()
        found = []
        for worker in self.processes[1:]:
            with contextlib.suppress(psutil.Error):
                for child in psutil.Process(worker.pid).children():
                    with contextlib.suppress(psutil.Error):
                        cmd = child.cmdline()
                        if EXECUTOR_CLASS in cmd:
                            found.append(Executor(child, _arg(cmd, "--app-id"),
                                                  _arg(cmd, "--executor-id")))
        return found

    def recomputed(self, app_id: str) -> set[str]:
        """Cached blocks (`rdd_<rdd>_<partition>`) of an application that more than one of its
        executors stored: made again after the executor that held them was lost. From the
        executors' own logs (the workers keep them in <work-dir>/<app-id>/<executor-id>/)."""
        stored: dict[str, set[str]] = {}
        for log in self.folder.glob(f"worker-*/{app_id}/*/stderr"):
            for block in re.findall(r"INFO MemoryStore: Block (rdd_\d+_\d+) stored",
                                    log.read_text(errors="replace")):
                stored.setdefault(block, set()).add(log.parent.name)
        return {block for block, executors in stored.items() if len(executors) > 1}


def _arg(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1] if name in cmd else "?"


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class Asking:
    """Which executors have tasks asking an endpoint on 127.0.0.1:`port` right now: the
    connections to it (from /proc/net/tcp, tcp6), each traced to the executor whose Python
    worker (one per running task) holds it. Cheap when nothing changed: the owners of the
    sockets already seen are remembered, and processes are looked at only for new ones."""

    def __init__(self, cluster: Cluster, port: int) -> None:
        self.cluster, self.port = cluster, port
        self._owners: dict[int, tuple[str, int] | None] = {}  # socket inode -> (executor, pid)

    def now(self) -> dict[str, int]:
        """Tasks asking by executor ("app-id/executor-id"), for the executors that have any."""
        inodes = _connected_to(self.port)
        if inodes - self._owners.keys():
            self._trace(inodes - self._owners.keys())
        tasks: dict[str, set[int]] = {}
        for inode in inodes:
            owner = self._owners.get(inode)
            if owner is not None:
                tasks.setdefault(owner[0], set()).add(owner[1])
        return {key: len(pids) for key, pids in sorted(tasks.items())}

    def _trace(self, inodes: set[int]) -> None:
        for executor in self.cluster.executors():
            with contextlib.suppress(psutil.Error):
                for child in executor.process.children(recursive=True):
                    for inode in _sockets(child.pid) & inodes:
                        self._owners[inode] = (executor.key, child.pid)
        for inode in inodes:  # the driver's own, or a socket already closed
            self._owners.setdefault(inode, None)


def _connected_to(port: int) -> set[int]:
    """Inodes of the established TCP sockets whose far end is 127.0.0.1:`port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as lines:
            next(lines, None)
            for line in lines:
                fields = line.split()
                # remote address as hex "ADDR:PORT"; state 01 is ESTABLISHED
                if int(fields[2].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                    found.add(int(fields[9]))
    return found


def _sockets(pid: int) -> set[int]:
    """Inodes of the sockets process `pid` holds."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(int(target[8:-1]))
    return inodes
