"""The cluster tier: `vision-batch run` as a process against a real Spark standalone cluster
on this machine (a master and two workers from the PySpark distribution; each application's
executors in JVMs of their own), started once for the tier and stopped at its end."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cluster.standalone import Cluster


@pytest.fixture(scope="package")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Started once for the tier and stopped after its last test (not at the end of the whole
    test run: the other tiers want the cores and the memory back).

    Two workers, so an application gets two executors, one on each. Each worker offers 4
    cores, more than this machine has (the scheduler only counts them): an asking job's two
    tasks then find a free slot on both executors even while the run's first Delta writes
    (its runs row, its first claim) hold a few, and go one to each."""
    started = Cluster(tmp_path_factory.mktemp("standalone"), workers=2, cores=4,
                      memory="1g").start()
    try:
        yield started
    finally:
        leftovers = started.stop()
        assert not leftovers, f"processes outlived the cluster: {leftovers}"
