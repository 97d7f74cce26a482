"""The one Spark session factory, for every kind of compute a user runs on.

| where                                   | session                                         |
|-----------------------------------------|-------------------------------------------------|
| a Databricks notebook or job            | the active one, untouched (classic or Connect)  |
| `--spark databricks-connect`            | `DatabricksSession` from the Databricks profile |
| `SPARK_REMOTE=sc://host:port`           | a Spark Connect client to that server           |
| `SPARK_REMOTE=local[N]`                 | a local Spark Connect server with Delta         |
| anything else (a laptop, CI)            | a classic local session with Delta              |

Nothing here, or anywhere in the package, reaches into the JVM (`sparkContext`, `_jvm`): a
Spark Connect session has none, and serverless compute and standard-access clusters are
Spark Connect underneath.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
import tempfile
import uuid
import zipimport
from contextlib import contextmanager
from functools import lru_cache
from importlib.metadata import version
from pathlib import Path
from typing import cast

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from pipeline.errors import RunError
from pipeline.resources import conf_dir

# Arrow batches into Python UDFs are bounded by bytes as well as rows: a batch of twenty
# 20 MB photos must not land in one worker at once. (On Databricks the session is not ours to
# change: set the same two values in the cluster's Spark config; see docs/compute.md.)
ARROW_MAX_BYTES = 64 * 1024 * 1024
ARROW_MAX_RECORDS = 256

# The local JVM's JIT (issue #25; benchmarks/jvm_options.py measures the candidates). C1 alone:
# a local JVM lives for one command, and on a few cores C2 costs more CPU than it saves (the
# demo: 37 s of JVM CPU against 73 s with the JVM's default, C1 and C2, and 1.5x the wall clock;
# 6000 photos: 140 s against 191 s). But with C1 alone Java 17 reserves 48 MB for compiled
# code, which Spark and Delta filled 150 s into that run ("CodeCache is full. Compiler has been
# disabled.", then a method handle that could not be linked failed a run). 256 MB holds the
# largest peak measured, 78 MB after 200 batches in 30 minutes, three times over, and leaves
# the JVM room to flush cold code (on by default) long before it is full. It is address space:
# memory is taken only as code is compiled.
JIT_OPTIONS = "-XX:TieredStopAtLevel=1 -XX:ReservedCodeCacheSize=256m"


class SessionError(RunError):
    """The requested session cannot be made here; one line for the user."""


def on_databricks() -> bool:
    return "DATABRICKS_RUNTIME_VERSION" in os.environ


def spark_log_path() -> Path:
    """Where the JVM this process starts writes its stdout and stderr: Spark's log, its
    warnings, the Python workers' stderr; the terminal gets one line (`jvm_output_to`)."""
    return Path(tempfile.gettempdir()) / f"vision-batch-spark-{os.getpid()}.log"


# The log of the JVM this process started, once it has (a failure's one line names it).
_started_log: Path | None = None


def jvm_log() -> Path | None:
    """The full output of the JVM this process started, or None if it started none (the
    session is a notebook's, a remote server's, or not made yet)."""
    return _started_log


def get_spark(app_name: str = "vision-batch", kind: str = "auto") -> SparkSession:
    """The session for this process: see the table in the module docstring."""
    if kind == "databricks-connect":
        return _databricks_connect()
    if on_databricks():
        return SparkSession.builder.getOrCreate()
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    remote = os.environ.get("SPARK_REMOTE")
    # Workers must run this interpreter (the one with our package installed), not whatever
    # `python3` comes first on PATH.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    if remote and not remote.startswith("local"):
        return _remote_client(remote, app_name)
    global _started_log
    settings = _local_settings(app_name)
    _started_log = spark_log_path()
    with jvm_output_to(_started_log):
        spark = _local_connect(remote, settings) if remote else _local_classic(settings)
    quiet_python_loggers()
    return spark


def is_connect(spark: SparkSession) -> bool:
    """A Spark Connect session (serverless, standard access, Databricks Connect, SPARK_REMOTE)."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


def is_local(spark: SparkSession) -> bool:
    """Spark runs on this machine (local mode, or PySpark's own local Connect server)."""
    return "SPARK_LOCAL_REMOTE" in os.environ or (
        not on_databricks() and _master(spark).startswith("local"))


def _master(spark: SparkSession) -> str:
    """The master URL, or "" where the session will not tell (serverless hides it)."""
    try:
        return spark.conf.get("spark.master", "") or ""
    except Exception:
        return ""


@lru_cache(maxsize=4)
def _parallelism(session_id: int, spark: SparkSession) -> int:
    master = _master(spark)
    local = re.fullmatch(r"local\[(\d+|\*)(?:,\d+)?\]|local", master)
    if local:
        cores = local.group(1) if local.lastindex else "1"
        return (os.cpu_count() or 1) if cores == "*" else int(cores)
    # Elsewhere `range` splits into the default parallelism (the task slots), a figure only
    # the JVM knows; counting the partitions it makes asks without touching the JVM.
    row = (spark.range(0, 1 << 16).select(F.spark_partition_id().alias("p"))
           .agg(F.max("p").alias("last")).first())
    assert row is not None  # an aggregate without groupBy has exactly one row
    return int(row["last"]) + 1


def parallelism(spark: SparkSession) -> int:
    """Task slots Spark runs at once (its default parallelism), found once per session."""
    return _parallelism(id(spark), spark)


def _local_settings(app_name: str) -> dict[str, str]:
    cores = os.cpu_count() or 2
    log4j = conf_dir() / "log4j2.properties"
    return {
        # A task slot per core, and one more: the executor caller's asking task mostly
        # waits on the network, and must not keep preparing and merging from a core.
        "spark.master": os.environ.get("VISION_BATCH_SPARK_MASTER", f"local[{cores + 1}]"),
        "spark.app.name": app_name,
        # Delta's jars from Maven Central (cached in ~/.ivy2.5.2 after the first start), the
        # version the pip package delta-spark pins.
        "spark.jars.packages": f"io.delta:delta-spark_2.13:{version('delta-spark')}",
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        "spark.driver.memory": os.environ.get("VISION_BATCH_DRIVER_MEMORY", "4g"),
        # Spark's own log level, set by file rather than through the JVM (see module doc);
        # then the JIT's options, which VISION_BATCH_JVM_OPTIONS replaces for
        # benchmarks/jvm_options.py alone (it compares candidates; not a user setting).
        "spark.driver.extraJavaOptions": f"-Dlog4j2.configurationFile=file:{log4j} "
                                         + os.environ.get("VISION_BATCH_JVM_OPTIONS", JIT_OPTIONS),
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        # Batches overlap: the scheduler shares slots between the jobs of a prepare, a
        # request stage and a MERGE, instead of queueing one behind the other.
        "spark.scheduler.mode": "FAIR",
        # Small local data: a few shuffle partitions, not 200.
        "spark.sql.shuffle.partitions": str(max(2, cores * 2)),
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.execution.arrow.maxRecordsPerBatch": str(ARROW_MAX_RECORDS),
        "spark.sql.execution.arrow.maxBytesPerBatch": str(ARROW_MAX_BYTES),
        "spark.databricks.delta.snapshotPartitions": "2",
        # A batch's files are read by their paths: on a local disk, their statuses are
        # quicker to get on the driver than through a listing job for every batch.
        "spark.sql.sources.parallelPartitionDiscovery.threshold": "100000",
        # Spark packs files into scan tasks as if opening each cost 4 MB, so a listing of
        # small files (metadata only: nothing is opened) became one task per 32 files. A
        # batch's reads are coalesced to the task slots anyway.
        "spark.sql.files.openCostInBytes": "65536",
        "spark.sql.session.timeZone": "UTC",
    }


def _local_classic(settings: dict[str, str]) -> SparkSession:
    builder = SparkSession.builder
    for key, value in settings.items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


def _local_connect(master: str, settings: dict[str, str]) -> SparkSession:
    """PySpark's own local Spark Connect server (what `SPARK_REMOTE=local[N]` means), on a
    free port of its own: two runs at once must not share one server on the default port."""
    from pyspark.sql.connect.session import SparkSession as ConnectSession

    port = start_connect_server(master, settings)
    os.environ["SPARK_LOCAL_REMOTE"] = "1"  # stop() then stops the local server too
    os.environ["SPARK_CONNECT_MODE_ENABLED"] = "1"
    session = ConnectSession.builder.remote(f"sc://localhost:{port}").getOrCreate()
    # Not a subclass of the classic SparkSession, but the same API: PySpark's own
    # SparkSession.builder hands it out as one too.
    return cast(SparkSession, session)


def start_connect_server(master: str, settings: dict[str, str] | None = None,
                         port: int = 0) -> int:
    """Start PySpark's local Spark Connect server in this process, with Delta (the way
    `SPARK_REMOTE=local[N]` does, on `port` or a free one); the port it listens on. Clients
    must send the token in SPARK_CONNECT_AUTHENTICATE_TOKEN, which it sets if unset."""
    from pyspark.sql.connect.session import SparkSession as ConnectSession

    port = port or _free_port()
    settings = settings or _local_settings("vision-batch-connect")
    server = {**settings, "spark.master": master, "spark.connect.grpc.binding.port": str(port)}
    # The server checks this token on every call; only this process (and whoever it tells)
    # knows it.
    os.environ.setdefault("SPARK_CONNECT_AUTHENTICATE_TOKEN", uuid.uuid4().hex)
    ConnectSession._start_connect_server(master, server)
    return port


def _remote_client(url: str, app_name: str) -> SparkSession:
    """A client of a running Spark Connect server; its static settings (Delta, memory) are
    the server's. Only the Arrow batch bounds are asked for."""
    spark = SparkSession.builder.remote(url).appName(app_name).getOrCreate()
    for key, value in (("spark.sql.execution.arrow.maxRecordsPerBatch", ARROW_MAX_RECORDS),
                       ("spark.sql.execution.arrow.maxBytesPerBatch", ARROW_MAX_BYTES)):
        try:
            spark.conf.set(key, str(value))
        except Exception:  # a server may pin them; its own values then apply
            pass
    quiet_python_loggers()
    return spark


def _databricks_connect() -> SparkSession:
    """Databricks Connect: the workspace, cluster or serverless compute of the Databricks
    profile (DATABRICKS_CONFIG_PROFILE, or the variables the SDK reads)."""
    try:
        from databricks.connect import DatabricksSession
    except ImportError:
        raise SessionError(
            "--spark databricks-connect needs the databricks-connect package, in a Python "
            "3.12 environment without pyspark: pip install 'databricks-connect>=17,<18'"
        ) from None
    try:
        return DatabricksSession.builder.getOrCreate()
    except Exception as exc:  # its errors name the profile or host, never a token
        first = next((line for line in str(exc).splitlines() if line.strip()), "")
        raise SessionError(f"Databricks Connect: {type(exc).__name__}: {first[:300]}") from None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def quiet_python_loggers() -> None:
    # PySpark logs every failed SQL statement with its JVM stack trace; we report one line.
    logging.getLogger("SQLQueryContextLogger").disabled = True
    logging.getLogger("DataFrameQueryContextLogger").disabled = True
    logging.getLogger("py4j").setLevel(logging.ERROR)


@contextmanager
def jvm_output_to(path: Path):
    """Send the JVM's stdout/stderr (Ivy resolution, log4j) to a file instead of the terminal.

    The JVM inherits the file descriptors at launch and keeps them for its lifetime, so its
    later warnings and the Python workers' stderr land in the same file.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def analyze(frame: DataFrame) -> StructType:
    """Analyze a plan now, so a missing path or table fails here: a Connect session only
    analyzes when asked (a classic one already has)."""
    return frame.schema


def in_worker() -> None:
    """Called first in every Python task. PySpark's worker calls importlib.invalidate_caches()
    before each task, and before Python 3.12 that makes zipimport re-read the whole of
    pyspark.zip's directory: about 0.1 s a task. The zips on a worker's path never change
    while it lives (files shipped later come as new paths), so that re-read is skipped."""
    if sys.version_info < (3, 12):
        zipimport.zipimporter.invalidate_caches = _keep_zip_directory  # type: ignore[method-assign]


def _keep_zip_directory(self: zipimport.zipimporter) -> None:
    return None
