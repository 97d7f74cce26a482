"""Databricks job task (spark_python_task) and local entry point: caption a folder or volume.

Job parameters are the `vision-batch run` flags, e.g.
    ["--input", "/Volumes/main/media/photos", "--table", "main.vision.captions",
     "--endpoint", "databricks-llama-4-maverick"]
Locally: python jobs/caption_images.py --input ./photos --table output/captions
"""

import sys

from pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
