"""Spark paths and their os paths: what plain Python can open, and what only Spark can."""

from __future__ import annotations

import os

import pytest

from pipeline.files import localfs


@pytest.mark.parametrize(("spark_path", "expected"), [
    ("file:/tmp/photos/a b#1%41.jpg", "/tmp/photos/a b#1%41.jpg"),  # Hadoop paths: no URL escapes
    ("file:///tmp/photos/x.jpg", "/tmp/photos/x.jpg"),
    ("file://localhost/tmp/x.jpg", "/tmp/x.jpg"),
    ("/tmp/photos", "/tmp/photos"),
    ("dbfs:/Volumes/main/media/photos/a.jpg", "/Volumes/main/media/photos/a.jpg"),
    ("/Volumes/main/media/photos", "/Volumes/main/media/photos"),
    ("s3://bucket/photos/a.jpg", None),
    ("abfss://c@account.dfs.core.windows.net/photos", None),
    ("dbfs:/mnt/legacy/photos", None),
])
def test_os_paths_of_spark_paths(spark_path: str, expected: str | None) -> None:
    assert localfs.os_path(spark_path) == expected


def test_a_relative_folder_is_made_absolute(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert localfs.os_path("photos") == str(tmp_path / "photos")


@pytest.mark.parametrize(("path", "prefix"), [
    ("/tmp/photos", "file:"), ("file:/tmp/photos", "file:"), ("/Volumes/m/s/v", "dbfs:"),
    ("dbfs:/Volumes/m/s/v", "dbfs:"), ("s3://bucket/x", "s3:"),
])
def test_the_prefix_spark_lists_an_input_with(path: str, prefix: str) -> None:
    assert localfs.spark_prefix(path) == prefix


@pytest.mark.parametrize(("name", "hidden"), [
    ("_SUCCESS", True), (".DS_Store", True), ("_delta_log", True), ("a.jpg._COPYING_", True),
    ("year=2024", False), ("_year=2024", False), ("photo.jpg", False), ("a_b.jpg", False),
])
def test_names_spark_skips(name: str, hidden: bool) -> None:
    assert localfs.hidden(name) is hidden


def test_the_walk_does_not_follow_links_and_ends_on_a_loop(tmp_path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "x.jpg").write_bytes(b"x")
    (tmp_path / "a" / "b" / "up").symlink_to("../..", target_is_directory=True)
    (tmp_path / "a" / "y.jpg").symlink_to(tmp_path / "a" / "b" / "x.jpg")
    (tmp_path / "a" / ".hidden.jpg").write_bytes(b"h")
    found = sorted((os.path.relpath(p, tmp_path), link) for p, link in localfs.walk(str(tmp_path)))
    assert found == [("a/b/up", True), ("a/b/x.jpg", False), ("a/y.jpg", True)]
