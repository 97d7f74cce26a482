"""The local JVM has room for its compiled code (issue #25). Under `-XX:TieredStopAtLevel=1`
alone Java 17 reserves 48 MB of code cache, which runs of a few minutes fill: "CodeCache is full.
Compiler has been disabled.", then an InternalError linking a method handle. The shared
session's JVM, a child of this process, must run with the options `pipeline/spark.py` chooses:
read from its command line (psutil), since nothing may reach into the JVM through PySpark."""

from __future__ import annotations

import re

import psutil

from pipeline.spark import JIT_OPTIONS

SUBMIT = "org.apache.spark.deploy.SparkSubmit"
# The largest peak measured was 78 MB (10,000 photos in 200 batches, 30 minutes;
# benchmarks/jvm_options.py): less than 128 MB would leave the JVM's flushing little room.
ENOUGH_MB = 128


def jvm_options(process: psutil.Process) -> list[str]:
    """A Spark driver JVM's own options: its arguments before the main class."""
    args = process.cmdline()
    return args[1:args.index(SUBMIT)]


def driver_jvms(parent: psutil.Process, recursive: bool = False) -> list[psutil.Process]:
    """The Spark driver JVMs under a process (not the launcher that writes their command)."""
    found = []
    for child in parent.children(recursive=recursive):
        try:
            args = child.cmdline()
        except psutil.Error:
            continue  # it ended meanwhile
        if SUBMIT in args and "org.apache.spark.launcher.Main" not in args:
            found.append(child)
    return found


def check_code_cache(options: list[str]) -> None:
    """Each of the JIT's options is the last word on its flag (the JVM takes the last), and
    the code cache reserved is at least ENOUGH_MB."""
    for option in JIT_OPTIONS.split():
        flag = option.split("=", 1)[0]
        assert [o for o in options if o.split("=", 1)[0] == flag][-1:] == [option], options
    sizes = [o.split("=", 1)[1] for o in options if o.startswith("-XX:ReservedCodeCacheSize=")]
    assert sizes, f"no -XX:ReservedCodeCacheSize in {options}"
    size = re.fullmatch(r"(\d+)([kKmMgG]?)", sizes[-1])
    assert size, sizes[-1]
    mb = int(size[1]) * {"": 2**-20, "k": 2**-10, "m": 1, "g": 1024}[size[2].lower()]
    assert mb >= ENOUGH_MB


def test_the_local_session_runs_with_room_for_compiled_code(spark) -> None:
    spark.range(1).count()  # the session's JVM is up
    jvms = driver_jvms(psutil.Process())
    assert len(jvms) == 1, [j.cmdline() for j in jvms]
    check_code_cache(jvm_options(jvms[0]))
