"""The one Spark session factory: local Spark with Delta on a laptop, Databricks' own there."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

from pyspark.sql import SparkSession

# Arrow batches into Python UDFs are bounded by bytes as well as rows: a batch of twenty
# 20 MB photos must not land in one worker at once. (On Databricks the session is not ours to
# change: set the same two values in the cluster's Spark config; see README.)
ARROW_MAX_BYTES = 64 * 1024 * 1024
ARROW_MAX_RECORDS = 256


def on_databricks() -> bool:
    return "DATABRICKS_RUNTIME_VERSION" in os.environ


def spark_log_path() -> Path:
    return Path(tempfile.gettempdir()) / f"vision-batch-spark-{os.getpid()}.log"


def get_spark(app_name: str = "vision-batch") -> SparkSession:
    """The active session on Databricks (untouched); otherwise a local one with Delta."""
    if on_databricks():
        return SparkSession.builder.getOrCreate()
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    from delta import configure_spark_with_delta_pip

    cores = os.cpu_count() or 2
    # Workers must run this interpreter (the one with our package installed), not whatever
    # `python3` comes first on PATH.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = (
        SparkSession.builder.master(os.environ.get("VISION_BATCH_SPARK_MASTER", "local[*]"))
        .appName(app_name)
        .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
        .config("spark.sql.catalog.spark_catalog",
                "org.apache.spark.sql.delta.catalog.DeltaCatalog")
        .config("spark.driver.memory", os.environ.get("VISION_BATCH_DRIVER_MEMORY", "4g"))
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        # Small local data: a few shuffle partitions, not 200.
        .config("spark.sql.shuffle.partitions", str(max(2, cores * 2)))
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", str(ARROW_MAX_RECORDS))
        .config("spark.sql.execution.arrow.maxBytesPerBatch", str(ARROW_MAX_BYTES))
        .config("spark.databricks.delta.snapshotPartitions", "2")
        .config("spark.sql.session.timeZone", "UTC")
    )
    with _jvm_output_to(spark_log_path()):
        spark = configure_spark_with_delta_pip(builder).getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    quiet_python_loggers()
    return spark


def quiet_python_loggers() -> None:
    # PySpark logs every failed SQL statement with its JVM stack trace; we report one line.
    logging.getLogger("SQLQueryContextLogger").disabled = True
    logging.getLogger("DataFrameQueryContextLogger").disabled = True
    logging.getLogger("py4j").setLevel(logging.ERROR)


@contextmanager
def _jvm_output_to(path: Path):
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
