"""Every resource of the bundle, as written and per target (overrides merged, variables
substituted), through the typed classes of Databricks' own `databricks-bundles` package: their
`from_dict` rejects unknown fields, wrong enum values and missing required fields, as the CLI's
`bundle validate` does. Also what the targets promise: paths that follow the catalog and schema,
no lookup that a Python-only user must satisfy, no deployment that everyone can write to."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
from databricks.bundles.jobs import Job, JobPermissionLevel
from databricks.bundles.schemas import Schema
from databricks.bundles.volumes import Volume

from tests.unit import bundle_config as bundle

TARGETS = tuple(bundle.root()["targets"])
TYPED: dict[str, Callable[[Any], Any]] = {
    "jobs": Job.from_dict,
    "schemas": Schema.from_dict,
    "volumes": Volume.from_dict,
}


def test_every_resource_type_of_the_bundle_has_a_typed_class() -> None:
    assert set(bundle.resources()) == set(TYPED)
    assert set(bundle.resources()["jobs"]) == {
        "caption_images", "caption_images_on_arrival", "caption_sql"
    }


@pytest.mark.parametrize("kind", sorted(TYPED))
def test_every_resource_as_written_is_valid(kind: str) -> None:
    for key, spec in bundle.resources()[kind].items():
        typed = TYPED[kind](copy.deepcopy(spec))
        assert typed is not None, f"{kind}.{key}"


@pytest.mark.parametrize("target", TARGETS)
def test_every_resource_of_every_target_is_valid_and_fully_resolved(target: str) -> None:
    config = bundle.configuration(target)
    for kind, items in config["resources"].items():
        for key, spec in items.items():
            TYPED[kind](copy.deepcopy(spec))
            # Only what a deploy creates is still a reference: the id of the job started by
            # the file-arrival job.
            left = bundle.references(spec)
            assert set(left) <= {"resources.jobs.caption_images.id"}, f"{kind}.{key}: {left}"


def test_the_typed_classes_catch_what_the_cli_would_refuse() -> None:
    job = bundle.configuration("prod")["resources"]["jobs"]["caption_images"]
    Job.from_dict(copy.deepcopy(job))

    def broken(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        copied = copy.deepcopy(job)
        change(copied)
        return copied

    mistakes = {
        "unknown field": lambda j: j["tasks"][1].update(max_retry=2),
        "wrong enum value": lambda j: j["tasks"][0]["condition_task"].update(op="EQUALS"),
        "missing required field": lambda j: j["tasks"][1].pop("task_key"),
        "wrong permission level": lambda j: j["permissions"][0].update(level="CAN_WRITE"),
    }
    for what, change in mistakes.items():
        with pytest.raises((ValueError, TypeError)):
            Job.from_dict(broken(change))
            pytest.fail(what)


@pytest.mark.parametrize("target", TARGETS)
def test_the_sql_jobs_check_task_is_a_serverless_python_task_the_typed_class_reads(
        target: str) -> None:
    spec = bundle.configuration(target)["resources"]["jobs"]["caption_sql"]
    job = Job.from_dict(copy.deepcopy(spec))
    tasks = {t.task_key: t for t in job.tasks}
    check = tasks["check_answers"]
    assert check.spark_python_task is not None and check.sql_task is None
    assert check.spark_python_task.python_file == "../../jobs/check_answers.py"
    assert check.job_cluster_key is None and check.new_cluster is None
    (environment,) = job.environments
    assert check.environment_key == environment.environment_key
    assert environment.spec is not None and environment.spec.environment_version == "4"
    assert [d.task_key for d in check.depends_on] == ["caption"]
    assert [d.task_key for d in tasks["summarize"].depends_on] == ["check_answers"]
    # The class refuses a mistake in this task, as the CLI would.
    index = [t["task_key"] for t in spec["tasks"]].index("check_answers")
    broken = copy.deepcopy(spec)
    broken["tasks"][index]["spark_python_task"]["python_files"] = ["x.py"]
    with pytest.raises((ValueError, TypeError)):
        Job.from_dict(broken)


# --- paths follow the catalog and the schema ----------------------------------------------


def python_job_paths(config: dict[str, Any]) -> dict[str, str]:
    jobs = config["resources"]["jobs"]
    tasks = {t["task_key"]: t for t in jobs["caption_images"]["tasks"]}
    caption = dict(p.split("=", 1) for p in tasks["caption_cluster"]["spark_python_task"]
                   ["parameters"])
    report = dict(p.split("=", 1) for p in tasks["report_cluster"]["spark_python_task"]
                  ["parameters"])
    sql = {p["name"]: p["default"] for p in jobs["caption_sql"]["parameters"]}
    return {
        "input": caption["--input"],
        "watched": jobs["caption_images_on_arrival"]["trigger"]["file_arrival"]["url"],
        "table": caption["--table"],
        "report table": report["--table"],
        "report": report["--out"],
        "sql table": sql["table"],
        "sql runs table": sql["runs_table"],
        "sql input": sql["input_path"],
    }


@pytest.mark.parametrize(("target", "schema"), [
    ("dev", f"dev_{bundle.USER['short_name']}_vision_batch"),
    ("prod", "vision_batch"),
])
def test_paths_and_tables_are_in_the_schema_the_bundle_creates(target: str, schema: str) -> None:
    config = bundle.configuration(target)
    (created,) = config["resources"]["schemas"].values()
    assert (created["catalog_name"], created["name"]) == ("main", schema)
    volumes = config["resources"]["volumes"]
    assert {v["schema_name"] for v in volumes.values()} == {schema}
    paths = python_job_paths(config)
    assert paths["input"] == paths["watched"] == paths["sql input"] == \
        f"/Volumes/main/{schema}/{volumes['photos']['name']}/"
    assert paths["report"] == f"/Volumes/main/{schema}/{volumes['reports']['name']}/captions.html"
    assert paths["table"] == paths["report table"] == paths["sql table"] == \
        f"main.{schema}.captions"
    assert paths["sql runs table"] == f"main.{schema}.captions_runs"


@pytest.mark.parametrize("target", TARGETS)
def test_one_catalog_and_schema_variable_move_every_path_and_table(target: str) -> None:
    given = {**bundle.GIVEN, "catalog": "mine", "schema": "captions_test"}
    config = bundle.configuration(target, given)
    schema = config["resources"]["schemas"]["vision_batch"]["name"]
    assert schema.endswith("captions_test")
    for what, value in python_job_paths(config).items():
        expected = f"/Volumes/mine/{schema}/" if what in {"input", "watched", "sql input",
                                                          "report"} else f"mine.{schema}."
        assert value.startswith(expected), f"{target} {what}: {value}"
    for volume in config["resources"]["volumes"].values():
        assert (volume["catalog_name"], volume["schema_name"]) == ("mine", schema)


# --- what every user can validate, and who can write ------------------------------------


def test_without_the_opt_in_sql_job_no_variable_needs_a_lookup_or_a_value() -> None:
    # A lookup (a warehouse by name...) runs on every bundle command, and a variable without a
    # default must be given on every command: neither may stand in the way of a user who
    # never runs the SQL job.
    for name, spec in bundle.declared(opt_in=False).items():
        assert "lookup" not in spec, f"variable {name} is looked up"
        assert "default" in spec, f"variable {name} must be given"
    configured = {t: bundle.configuration(t, given={"service_principal": "x"}, opt_in=False)
                  for t in TARGETS}
    assert all("caption_sql" not in c["resources"]["jobs"] for c in configured.values())
    # The SQL job's own file declares its warehouse, without a lookup: the SQL user names it.
    warehouse = bundle.declared()["warehouse_id"]
    assert "default" not in warehouse and "lookup" not in warehouse
    for name in bundle.OPT_IN:
        assert f"# - {name}" in bundle.ROOT_FILE.read_text(encoding="utf-8")


def test_every_resource_file_is_included_or_opt_in() -> None:
    files = {p.relative_to(bundle.REPO).as_posix()
             for p in (bundle.REPO / "conf" / "bundle").glob("*.yml")}
    included = {d.path.relative_to(bundle.REPO).as_posix() for d in bundle.docs(opt_in=False)}
    assert files == (included - {"databricks.yml"}) | set(bundle.OPT_IN)


@pytest.mark.parametrize("target", TARGETS)
def test_no_target_deploys_where_every_user_can_write(target: str) -> None:
    config = bundle.configuration(target)
    root_path = config["workspace"].get("root_path", "")
    # /Workspace/Shared is writable by all users; the CLI's default is the deployer's home.
    assert not root_path.startswith("/Workspace/Shared"), root_path
    for permission in config["permissions"]:
        if permission.get("group_name") in {"users", "account users"}:
            assert permission["level"] == "CAN_VIEW", permission


def test_prod_is_deployed_owned_and_run_by_its_service_principal() -> None:
    principal = bundle.GIVEN["service_principal"]
    config = bundle.configuration("prod")
    assert config["mode"] == "production"
    assert config["workspace"]["root_path"] == \
        f"/Workspace/Users/{principal}/.bundle/vision-batch/prod"
    assert config["run_as"] == {"service_principal_name": principal}
    managers = [p for p in config["permissions"] if p["level"] == "CAN_MANAGE"]
    assert managers == [{"service_principal_name": principal, "level": "CAN_MANAGE"}]
    for key, spec in config["resources"]["jobs"].items():
        job = Job.from_dict(copy.deepcopy(spec))
        assert job.run_as is not None and job.run_as.service_principal_name == principal, key
        levels = {(p.service_principal_name or p.group_name, p.level) for p in job.permissions}
        assert (principal, JobPermissionLevel.CAN_MANAGE) in levels, key
    # Nothing a deploy made is dropped by `bundle destroy -t prod`.
    for kind in ("schemas", "volumes"):
        for key, spec in config["resources"][kind].items():
            assert spec["lifecycle"] == {"prevent_destroy": True}, f"{kind}.{key}"


def test_dev_is_each_developers_own() -> None:
    config = bundle.configuration("dev")
    assert config["mode"] == "development"
    assert "root_path" not in config["workspace"], "dev deploys under the user's home"
    assert config["permissions"] == [] and config["run_as"] is None
    for spec in config["resources"].values():
        for item in spec.values():
            assert "lifecycle" not in item, "a developer's copy can be destroyed"
    for job in config["resources"]["jobs"].values():
        for kind in ("schedule", "trigger"):
            if kind in job:
                assert job[kind]["pause_status"] == "PAUSED"
