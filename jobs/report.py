"""Databricks job task (spark_python_task) and local entry point: the HTML report of a table.

Job parameters are the `vision-batch report` flags, e.g.
    ["--table=main.vision_batch.captions", "--out=/Volumes/main/vision_batch/reports/captions.html"]
Write the page outside the volume a file-arrival trigger watches, or it starts another run.
Locally: python jobs/report.py --table output/captions --out report.html
"""

import sys

from pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["report", *sys.argv[1:]]))
