"""List: the files a run reads. source lists them with Spark's binaryFile source; localfs
opens the same paths from plain Python (local folders, Unity Catalog volumes)."""
