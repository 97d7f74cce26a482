"""The shared Spark Connect server of the tests' Connect tier, in a process of its own, as
serverless compute or a shared cluster would be: `python -m tests.connect_server PORT`.

It prints `ready` once clients (`SPARK_REMOTE=sc://localhost:PORT`, with the token in
SPARK_CONNECT_AUTHENTICATE_TOKEN) can connect, and serves until it is terminated.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

from pipeline.spark import jvm_output_to, spark_log_path, start_connect_server


def main() -> None:
    port = int(sys.argv[1])
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    with jvm_output_to(spark_log_path()):
        start_connect_server(os.environ.get("VISION_BATCH_CONNECT_MASTER", "local[3]"),
                             port=port)
    print("ready", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()


if __name__ == "__main__":
    main()
