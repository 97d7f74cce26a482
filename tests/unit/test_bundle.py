"""The Databricks bundle (databricks.yml and its includes), read with PyYAML and checked
against what it points at: the files, the CLI's flags, the SQL templates' markers, the model
limits and pyproject.toml. The Databricks CLI cannot be built in CI; test_bundle_typed.py
checks every resource with Databricks' typed classes."""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline import cli, config, notebook
from pipeline.endpoint.payloads import image_byte_budget
from pipeline.images.limits import load_catalog
from pipeline.images.prepare import target_size
from tests.unit import bundle_config as bundle
from tests.unit.bundle_config import REPO, Doc, docs, resolve, root

VAR_REF = re.compile(r"\$\{var\.([A-Za-z0-9_]+)\}")
TARGETS = ("dev", "prod")
PYTHON_JOB = "caption_images"
ARRIVAL_JOB = "caption_images_on_arrival"
SQL_JOB = "caption_sql"
# The table every job writes, in the schema the bundle creates.
TABLE = "${var.catalog}.${resources.schemas.vision_batch.name}.${var.table_name}"


def jobs() -> dict[str, tuple[Doc, dict[str, Any]]]:
    """Job key -> (the file that defines it, the job), the opt-in SQL job included."""
    found: dict[str, tuple[Doc, dict[str, Any]]] = {}
    for doc in docs():
        for key, job in doc.data.get("resources", {}).get("jobs", {}).items():
            assert key not in found, f"job {key} defined twice"
            found[key] = (doc, job)
    return found


def task(job_key: str, task_key: str) -> dict[str, Any]:
    _, job = jobs()[job_key]
    return next(t for t in job["tasks"] if t["task_key"] == task_key)


def strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from strings(k)
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)


def variables(target: str) -> dict[str, Any]:
    """Every variable's value for a target, substituted."""
    return bundle.configuration(target)["variables"]


def read_toml(path: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads(path.read_text(encoding="utf-8"))


def pyproject() -> dict[str, Any]:
    return read_toml(REPO / "pyproject.toml")


def load_script(path: Path):
    spec = importlib.util.spec_from_file_location(f"job_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- variables and targets -------------------------------------------------------------


def test_every_variable_used_is_declared_and_every_declared_one_is_used() -> None:
    declared = bundle.declared()
    used = {name for doc in docs() for text in strings(doc.data) for name in VAR_REF.findall(text)}
    assert used - set(declared) == set(), "referenced but not declared"
    assert set(declared) - used == set(), "declared but never used"
    for target in TARGETS:
        overridden = set(root()["targets"][target].get("variables") or {})
        assert overridden <= set(declared), f"{target} sets undeclared variables"
    for name, spec in declared.items():
        assert spec.get("description"), f"variable {name} has no description"
        # Without a value every command must give one; only the opt-in SQL job may ask.
        assert "default" in spec or name == "warehouse_id", f"variable {name} has no value"


def test_dev_is_the_default_development_target_and_prod_a_production_one() -> None:
    targets = root()["targets"]
    assert set(targets) == set(TARGETS)
    assert [t for t, spec in targets.items() if spec.get("default")] == ["dev"]
    assert root()["bundle"].get("databricks_cli_version")

    dev = targets["dev"]
    assert dev["mode"] == "development"
    # Development mode pauses every schedule and trigger (presets.trigger_pause_status); it is
    # written out, and a development target may not set UNPAUSED there.
    assert dev["presets"]["trigger_pause_status"] == "PAUSED"
    assert "root_path" not in dev.get("workspace", {}), "dev deploys under the user's home"

    prod = targets["prod"]
    assert prod["mode"] == "production"
    assert prod["presets"]["trigger_pause_status"] == "UNPAUSED"
    # Production mode wants an explicit root_path in the target, so one copy is deployed: in
    # the service principal's home, where no one else can write.
    assert prod["workspace"]["root_path"].startswith("/Workspace/Users/${var.service_principal}/")
    assert prod["run_as"] == {"service_principal_name": "${var.service_principal}"}


def test_no_job_pins_a_pause_status_so_the_target_decides() -> None:
    for key, (_, job) in jobs().items():
        kinds = [k for k in ("schedule", "trigger", "continuous") if k in job]
        assert len(kinds) <= 1, f"{key}: a job takes one of schedule, trigger, continuous"
        for kind in kinds:
            # An explicit UNPAUSED would run a developer's copy on schedule; PAUSED would
            # never run in prod. Left out, presets.trigger_pause_status applies per target.
            assert "pause_status" not in job[kind], f"{key}.{kind} pins its pause status"


# --- the Python (UDF path) jobs ------------------------------------------------------------


def test_the_python_job_runs_on_a_schedule_and_on_file_arrival_in_the_input_volume() -> None:
    _, job = jobs()[PYTHON_JOB]
    assert job["schedule"] == {
        "quartz_cron_expression": "${var.schedule_cron}",
        "timezone_id": "${var.schedule_timezone}",
    }
    # One job runs the work, one at a time; arrivals during a run queue behind it.
    assert job["max_concurrent_runs"] == 1 and job["queue"] == {"enabled": True}

    _, arrival = jobs()[ARRIVAL_JOB]
    assert arrival["trigger"]["file_arrival"]["url"] == "${var.input_path}"
    assert arrival["trigger"]["file_arrival"]["wait_after_last_change_seconds"] >= 60
    assert [t["run_job_task"] for t in arrival["tasks"]] == [
        {"job_id": f"${{resources.jobs.{PYTHON_JOB}.id}}"}
    ]
    for target in TARGETS:
        assert resolve("${var.input_path}", target).startswith("/Volumes/")


def test_the_report_is_written_outside_the_watched_volume() -> None:
    for target in TARGETS:
        watched = resolve("${var.input_path}", target)
        report = resolve("${var.report_path}", target)
        assert not report.startswith(watched), f"{target}: the report would trigger a run"


CAPTION_TASKS = ("caption_serverless", "caption_cluster")
REPORT_TASKS = ("report_serverless", "report_cluster")


def test_caption_task_retries_and_failures_are_reported_through_variables() -> None:
    for key in CAPTION_TASKS:
        caption = task(PYTHON_JOB, key)
        assert caption["max_retries"] >= 1
        assert caption["min_retry_interval_millis"] > 0
        # A retry resumes; a timeout is no reason to stop.
        assert caption["retry_on_timeout"] is True
    for key in REPORT_TASKS:
        # A failed caption task (exit 1 or 3) must leave the job's last task failed too: a job
        # whose leaf tasks succeed counts as succeeded, and on_failure would never fire.
        assert task(PYTHON_JOB, key).get("run_if", "ALL_SUCCESS") == "ALL_SUCCESS"
    for key in (PYTHON_JOB, SQL_JOB):
        _, job = jobs()[key]
        assert job["email_notifications"] == {"on_failure": "${var.failure_emails}"}
        assert job["webhook_notifications"] == {"on_failure": "${var.failure_webhooks}"}
        for name in ("failure_emails", "failure_webhooks"):
            assert root()["variables"][name]["type"] == "complex"


def test_serverless_is_the_default_and_a_condition_picks_one_branch() -> None:
    _, job = jobs()[PYTHON_JOB]
    assert root()["variables"]["compute"]["default"] == "serverless"
    assert job["parameters"] == [{"name": "compute", "default": "${var.compute}"}]
    choose = task(PYTHON_JOB, "choose_compute")["condition_task"]
    assert choose == {"op": "EQUAL_TO", "left": "{{job.parameters.compute}}",
                      "right": "serverless"}
    outcome = {t["task_key"]: t["depends_on"] for t in job["tasks"] if "depends_on" in t}
    assert outcome["caption_serverless"] == [{"task_key": "choose_compute", "outcome": "true"}]
    assert outcome["caption_cluster"] == [{"task_key": "choose_compute", "outcome": "false"}]
    assert outcome["report_serverless"] == [{"task_key": "caption_serverless"}]
    assert outcome["report_cluster"] == [{"task_key": "caption_cluster"}]


def test_serverless_tasks_have_an_environment_and_no_cluster() -> None:
    _, job = jobs()[PYTHON_JOB]
    (environment,) = job["environments"]
    assert environment["spec"]["dependencies"] == ["../../dist/*.whl"]
    for key in ("caption_serverless", "report_serverless"):
        t = task(PYTHON_JOB, key)
        assert t["environment_key"] == environment["environment_key"]
        assert "job_cluster_key" not in t and "libraries" not in t and "new_cluster" not in t


def test_the_job_cluster_runs_spark_4_and_autoscales() -> None:
    _, job = jobs()[PYTHON_JOB]
    (cluster,) = job["job_clusters"]
    spec = cluster["new_cluster"]
    assert spec["spark_version"] == "${var.spark_version}"
    assert spec["node_type_id"] == "${var.node_type_id}"
    assert spec["autoscale"] == {"min_workers": "${var.min_workers}",
                                 "max_workers": "${var.max_workers}"}
    assert "num_workers" not in spec
    assert spec["data_security_mode"] == "SINGLE_USER"  # dedicated: UDFs reach the network
    assert root()["variables"]["spark_version"]["default"].startswith("17.")
    for target in TARGETS:
        values = variables(target)
        assert 1 <= int(values["min_workers"]) <= int(values["max_workers"])
    for key in ("caption_cluster", "report_cluster"):
        t = task(PYTHON_JOB, key)
        assert t["job_cluster_key"] == cluster["job_cluster_key"]
        assert "environment_key" not in t


def test_both_branches_run_the_same_scripts_with_the_same_parameters() -> None:
    for pair in (CAPTION_TASKS, REPORT_TASKS):
        serverless, cluster = (task(PYTHON_JOB, key)["spark_python_task"] for key in pair)
        assert serverless == cluster


@pytest.mark.parametrize("target", TARGETS)
def test_caption_task_parameters_are_flags_the_cli_accepts(target: str) -> None:
    job_entry = load_script(REPO / "jobs" / "caption_images.py")
    params = resolve(task(PYTHON_JOB, "caption_cluster")["spark_python_task"]["parameters"],
                     target)
    flags, run_args = job_entry.job_flags().parse_known_args(job_entry.drop_unset(params))
    args = cli.build_parser().parse_args(["run", *run_args])
    cfg = config.build({k: getattr(args, k, None) for k in config.FIELDS})

    values = variables(target)
    assert cfg.input == values["input_path"]
    assert cfg.table == resolve(TABLE, target)
    assert cfg.endpoint == values["endpoint"]
    assert cfg.prompt == values["prompt"]
    assert cfg.max_concurrency == int(values["max_concurrency"])
    assert cfg.max_files_per_batch == int(values["max_files_per_batch"])
    for key in ("max_rpm", "max_itpm", "max_otpm", "max_qph"):
        assert getattr(cfg, key) == (int(values[key]) if values[key] else None), key
    assert cfg.host == (values["host"] or None)
    assert (flags.secret_scope or "", flags.secret_key or "") == (
        values["secret_scope"], values["secret_key"]
    )


def test_report_task_parameters_are_flags_the_cli_accepts() -> None:
    params = resolve(task(PYTHON_JOB, "report_cluster")["spark_python_task"]["parameters"],
                     "prod")
    args = cli.build_parser().parse_args(["report", *params])
    assert args.table == resolve(TABLE, "prod")
    assert args.out == variables("prod")["report_path"]


# --- files, the wheel and its entry point ----------------------------------------------


def task_paths() -> Iterator[tuple[str, Path]]:
    """(what, resolved path) for every file a task points to, relative to its YAML file."""
    for key, (doc, job) in jobs().items():
        for t in job["tasks"]:
            where = f"{key}.{t['task_key']}"
            for kind, field in (
                ("spark_python_task", "python_file"),
                ("notebook_task", "notebook_path"),
            ):
                if kind in t:
                    yield f"{where}.{field}", doc.path.parent / t[kind][field]
            if "file" in t.get("sql_task", {}):
                yield f"{where}.file.path", doc.path.parent / t["sql_task"]["file"]["path"]
            for library in t.get("libraries", []):
                for kind in ("requirements", "whl"):
                    if kind in library:
                        yield f"{where}.libraries.{kind}", doc.path.parent / library[kind]
            for environment in job.get("environments", []):
                if environment["environment_key"] == t.get("environment_key"):
                    for dependency in environment["spec"].get("dependencies", []):
                        if dependency.endswith(".whl"):
                            yield f"{where}.environment.libraries.whl", \
                                doc.path.parent / dependency


def test_every_file_a_task_points_to_exists() -> None:
    paths = list(task_paths())
    assert paths
    for what, path in paths:
        if "libraries.whl" in what:
            continue  # built by the artifact; checked below
        assert path.is_file(), f"{what}: {path} does not exist"


def test_the_wheel_artifact_is_this_project_and_every_task_installs_it() -> None:
    (artifact,) = root()["artifacts"].values()
    assert artifact["type"] == "whl"
    project_dir = (REPO / artifact["path"]).resolve()
    project = read_toml(project_dir / "pyproject.toml")
    assert project["project"]["name"] == pyproject()["project"]["name"] == "vision-batch"
    # dist/ must hold this wheel alone: the tasks install dist/*.whl.
    assert "--no-deps" in artifact["build"] and "dist" in artifact["build"]

    dist_name = re.sub(r"[-_.]+", "_", project["project"]["name"])
    wheel = f"{dist_name}-{project['project']['version']}-py3-none-any.whl"
    wheels = [p for what, p in task_paths() if "libraries.whl" in what]
    python_tasks = [t for _, job in jobs().values() for t in job["tasks"]
                    if "spark_python_task" in t]
    assert len(wheels) == len(python_tasks) > 0, "each Python task installs the wheel"
    for path in wheels:
        assert path.parent.resolve() == project_dir / "dist"
        assert fnmatch.fnmatch(wheel, path.name)


def test_python_tasks_call_the_entry_point_the_wheel_declares() -> None:
    (target,) = [v for k, v in pyproject()["project"]["scripts"].items() if k == "vision-batch"]
    module_name, function_name = target.split(":")
    assert (module_name, function_name) == ("pipeline.cli", "main")
    # Each task script hands over to the installed wheel (cli.main, or the Python entry point
    # it calls), never to a copy of the library.
    for what, path in task_paths():
        if what.endswith("python_file"):
            module = load_script(path)
            assert any(callable(value) and getattr(value, "__module__", "").startswith("pipeline")
                       for value in vars(module).values()), what


# --- the SQL job ----------------------------------------------------------------------


def sql_tasks() -> list[tuple[Path, dict[str, Any]]]:
    doc, job = jobs()[SQL_JOB]
    return [(doc.path.parent / t["sql_task"]["file"]["path"], t) for t in job["tasks"]
            if "sql_task" in t]


JOB_PARAMETER = re.compile(r"\{\{job\.parameters\.([A-Za-z0-9_.-]+)\}\}")


def test_sql_tasks_run_template_files_on_the_warehouse() -> None:
    tasks = sql_tasks()
    assert [p.name for p, _ in tasks] == [
        "create_captions.sql", "create_runs.sql", "caption_files.sql", "summarize_run.sql"
    ]
    for path, t in tasks:
        assert t["sql_task"]["warehouse_id"] == "${var.warehouse_id}"
        assert t["sql_task"]["file"]["source"] == "WORKSPACE"
        assert path.resolve().parent == REPO / "sql" and path.is_file()
    # The warehouse is declared by the opt-in file itself: who does not include it needs none.
    doc, _ = jobs()[SQL_JOB]
    assert set(doc.data["variables"]) == {"warehouse_id"}
    _, job = jobs()[SQL_JOB]
    deps = {t["task_key"]: [d["task_key"] for d in t.get("depends_on", [])] for t in job["tasks"]}
    assert deps["caption"] == ["create_captions_table"]
    # The structured answers are checked after the caption task and before the summary, so
    # the summary counts the rows the check failed.
    assert deps["check_answers"] == ["caption"] and deps["summarize"] == ["check_answers"]
    assert [t["task_key"] for t in job["tasks"] if "sql_task" not in t] == ["check_answers"]


def test_sql_job_parameters_are_exactly_the_markers_of_its_templates() -> None:
    _, job = jobs()[SQL_JOB]
    names = [p["name"] for p in job["parameters"]]
    assert len(names) == len(set(names))
    # Job parameters reach every SQL task; each file must find all of its markers there, and
    # no parameter may be one that no file uses (a renamed marker would leave it behind).
    used: set[str] = set()
    for path, t in sql_tasks():
        markers = notebook.markers(path.read_text(encoding="utf-8"))
        assert markers <= set(names), f"{path.name} needs {sorted(markers - set(names))}"
        assert "parameters" not in t["sql_task"], "values come from the job parameters"
        used |= markers
    # The Python check task gets no pushed-down parameter: it names each, and each exists.
    referenced = set(JOB_PARAMETER.findall(" ".join(
        task(SQL_JOB, "check_answers")["spark_python_task"]["parameters"])))
    assert referenced == {"table", "run_id", "endpoint", "response_format", "caption_field"}
    assert referenced <= used
    assert set(names) == used
    # The templates compute the prompt id from the prompt and its parameters: none names it.
    assert "prompt_id" not in names and "sql_prompt_id" not in root()["variables"]


def test_sql_run_id_is_the_job_run_and_the_question_matches_the_python_job() -> None:
    _, job = jobs()[SQL_JOB]
    defaults = {p["name"]: p["default"] for p in job["parameters"]}
    assert defaults["run_id"] == "{{job.run_id}}"
    assert defaults["table"] == TABLE
    assert defaults["runs_table"] == defaults["table"] + "_runs"
    for name in ("input_path", "endpoint", "prompt", "max_tokens"):
        assert defaults[name] == "${var." + name + "}"


def test_sql_check_task_runs_on_serverless_with_the_python_jobs_environment() -> None:
    check = task(SQL_JOB, "check_answers")
    assert "job_cluster_key" not in check and "libraries" not in check
    _, sql_job = jobs()[SQL_JOB]
    _, python_job = jobs()[PYTHON_JOB]
    # Written in both files (an anchor cannot cross them): they must not drift apart.
    assert sql_job["environments"] == python_job["environments"]
    (environment,) = sql_job["environments"]
    assert check["environment_key"] == environment["environment_key"]


@pytest.mark.parametrize("target", TARGETS)
def test_sql_check_task_parameters_are_flags_the_script_accepts(target: str) -> None:
    script = load_script(REPO / "jobs" / "check_answers.py")
    _, job = jobs()[SQL_JOB]
    defaults = {p["name"]: resolve(p["default"], target) for p in job["parameters"]}
    defaults["run_id"] = "1234"  # {{job.run_id}}, as the service fills it in

    def filled() -> list[str]:
        # What the service does with a dynamic value reference: the value, as text.
        return [JOB_PARAMETER.sub(lambda m: defaults[m.group(1)], p)
                for p in task(SQL_JOB, "check_answers")["spark_python_task"]["parameters"]]

    args = script.flags().parse_args(filled())
    assert (args.table, args.run_id, args.endpoint, args.caption_field) == (
        resolve(TABLE, target), "1234", variables(target)["endpoint"], "caption")
    assert args.response_format == "" and script.response_schema(args.response_format) is None
    # A response format passed for one run arrives whole in its one token.
    answer = {"type": "object", "properties": {"caption": {"type": "string"}}}
    defaults["response_format"] = json.dumps(
        {"type": "json_schema", "json_schema": {"name": "answer", "schema": answer,
                                                "strict": True}})
    assert script.response_schema(script.flags().parse_args(filled()).response_format) == answer


@pytest.mark.parametrize("target", TARGETS)
def test_sql_limits_are_what_models_yml_says_for_the_endpoint(target: str) -> None:
    values = variables(target)
    spec = config.RunConfig(
        endpoint=values["endpoint"], prompt=values["prompt"], max_tokens=int(values["max_tokens"])
    ).prompt_spec()
    catalog = load_catalog()
    family = catalog.family(values["endpoint"])
    expected = {
        "sql_formats": ",".join(family.formats),
        "sql_max_bytes": str(
            image_byte_budget(spec, family.max_request_bytes, family.max_image_bytes)
        ),
        "sql_max_file_bytes": str(catalog.input.max_file_bytes),
        "sql_image_tokens": str(family.image_tokens(*target_size(100_000, 100_000, family))),
    }
    assert {k: str(values[k]) for k in expected} == expected


def test_sql_defaults_agree_with_the_sql_notebook_widgets() -> None:
    widgets = {name: default for name, (default, _) in notebook.widget_defaults().items()}
    values = variables("dev")
    assert values["endpoint"] == widgets["endpoint"]
    assert values["prompt"] == widgets["prompt"]
    assert values["max_tokens"] == widgets["max_tokens"]
    for name in ("formats", "max_bytes", "max_file_bytes", "image_tokens"):
        assert values[f"sql_{name}"] == widgets[name]
