"""The local Spark Connect server's JVM runs with the same JIT options as the classic session
(`start_connect_server` uses the same settings): see tests/spark/test_jvm_options.py."""

from __future__ import annotations

import psutil
import pytest

from tests.spark.test_jvm_options import check_code_cache, driver_jvms, jvm_options

pytestmark = pytest.mark.connect
PLUGIN = "spark.plugins=org.apache.spark.sql.connect.SparkConnectPlugin"


def test_the_connect_server_runs_with_room_for_compiled_code(connect_session) -> None:
    servers = [jvm for jvm in driver_jvms(psutil.Process(), recursive=True)
               if PLUGIN in jvm.cmdline()]
    assert len(servers) == 1, [s.cmdline() for s in servers]
    check_code_cache(jvm_options(servers[0]))
