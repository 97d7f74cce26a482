"""The Databricks bundle as the CLI sees it for one target, without the CLI: databricks.yml and
its includes read with PyYAML, the target's overrides merged in, its mode applied, and every
`${...}` the CLI resolves at validate or deploy substituted. CI has no Databricks CLI, so the
bundle tests check this view; where `databricks bundle validate -o json` resolves a value (at
validate, not deploy), it gives the same names and paths.

What is emulated, from databricks/cli (bundle/config/mutator/resourcemutator):
- target `variables`, `resources` (maps merged key by key), `run_as`, `permissions`, `presets`;
- development mode: job names prefixed "[dev <short name>] ", schema names dev_<short name>_
  (apply_presets.go), every schedule and trigger paused by presets.trigger_pause_status;
- top-level permissions and run_as copied onto every job (CAN_VIEW and CAN_MANAGE keep their
  names on jobs);
- `${var.*}` (variables may name other variables), `${bundle.*}`, `${workspace.current_user.*}`
  and `${resources.<type>.<key>.<field>}` of a field set in the configuration. Only what exists
  after deploy, such as `${resources.jobs.<key>.id}`, stays a reference.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
ROOT_FILE = REPO / "databricks.yml"
# Resource files that databricks.yml names only in a commented-out include line: the user opts
# in by uncommenting it (the SQL job needs a warehouse; nobody else should have to name one).
OPT_IN = ("conf/bundle/sql_job.yml",)
REFERENCE = re.compile(r"\$\{([A-Za-z0-9_.\-\[\]]+)\}")
# The deploying user the resolution assumes, as `workspace.current_user` would say.
USER = {"userName": "some.developer@example.com", "short_name": "some_developer"}
# Values for variables without a default, as `--var` would give them.
GIVEN = {
    "service_principal": "6b3c2f0e-8a41-4d9b-9c3e-2f5a7d1e0b94",
    "warehouse_id": "1234567890abcdef",
}
# Job permission levels the CLI derives from top-level bundle permissions.
JOB_LEVELS = {"CAN_VIEW": "CAN_VIEW", "CAN_RUN": "CAN_MANAGE_RUN", "CAN_MANAGE": "CAN_MANAGE"}


@dataclass(frozen=True)
class Doc:
    path: Path
    data: dict[str, Any]


def _read(path: Path) -> Doc:
    return Doc(path, yaml.safe_load(path.read_text(encoding="utf-8")) or {})


@cache
def docs(opt_in: bool = True) -> tuple[Doc, ...]:
    """databricks.yml, every file its `include` globs name (as the CLI loads them), and with
    opt_in the files a user includes by uncommenting their line."""
    main = _read(ROOT_FILE)
    found = [main]
    for pattern in main.data.get("include", []):
        paths = sorted(REPO.glob(pattern))
        assert paths, f"include {pattern!r} matches no file"
        found += [_read(p) for p in paths]
    if opt_in:
        found += [_read(REPO / name) for name in OPT_IN]
    return tuple(found)


def root() -> dict[str, Any]:
    return docs()[0].data


def declared(opt_in: bool = True) -> dict[str, dict[str, Any]]:
    """Every variable declaration, whichever file holds it."""
    found: dict[str, dict[str, Any]] = {}
    for doc in docs(opt_in):
        for name, spec in (doc.data.get("variables") or {}).items():
            assert name not in found, f"variable {name} declared twice"
            found[name] = spec
    return found


def resources(opt_in: bool = True) -> dict[str, dict[str, Any]]:
    """Resource type -> key -> definition, as written (no target applied)."""
    found: dict[str, dict[str, Any]] = {}
    for doc in docs(opt_in):
        for kind, items in (doc.data.get("resources") or {}).items():
            for key, spec in items.items():
                assert key not in found.setdefault(kind, {}), f"{kind}.{key} defined twice"
                found[kind][key] = spec
    return found


def merge(base: Any, override: Any, where: str) -> Any:
    """A target's override merged into the configuration: maps key by key, values replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = merge(base[key], value, f"{where}.{key}") if key in base else value
        return merged
    # The CLI merges some lists by key (tasks by task_key...); this bundle overrides none.
    assert not isinstance(base, list), f"{where}: list overrides are not emulated"
    return override


def values(target: str, given: dict[str, Any] | None = None) -> dict[str, Any]:
    """Each variable's value for a target, as written (before substitution): `given` (--var),
    else the target's value, else the default."""
    spec = root()["targets"][target]
    found = {name: decl["default"] for name, decl in declared().items() if "default" in decl}
    for name, value in (spec.get("variables") or {}).items():
        found[name] = value.get("default", value) if isinstance(value, dict) else value
    found.update(GIVEN if given is None else given)
    return found


def _context(target: str, given: dict[str, Any] | None,
             opt_in: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the target's configuration before substitution, the variables' values)."""
    spec = root()["targets"][target]
    config: dict[str, Any] = {
        "bundle": {"name": root()["bundle"]["name"], "target": target},
        "workspace": {**root().get("workspace", {}), **spec.get("workspace", {})},
        "resources": merge(copy.deepcopy(resources(opt_in)),
                           copy.deepcopy(spec.get("resources") or {}), "resources"),
        "run_as": spec.get("run_as", root().get("run_as")),
        "permissions": spec.get("permissions", root().get("permissions", [])),
        "presets": spec.get("presets", {}),
        "mode": spec.get("mode"),
    }
    # As in the CLI, resource names carry the mode's prefixes before anything refers to them.
    _apply_mode(config)
    return config, values(target, given)


def resolve(value: Any, target: str, given: dict[str, Any] | None = None) -> Any:
    """One value as written (e.g. "${var.input_path}"), substituted for a target."""
    config, variables = _context(target, given, opt_in=True)
    return _substitute(value, variables, config)


def configuration(target: str, given: dict[str, Any] | None = None,
                  opt_in: bool = True) -> dict[str, Any]:
    """The bundle for a target, fully substituted: {"resources", "workspace", "run_as",
    "permissions", "variables", ...} as the CLI would deploy them."""
    config, variables = _context(target, given, opt_in)
    resolved = _substitute(config, variables, config)
    resolved["variables"] = {name: _substitute(value, variables, config)
                             for name, value in variables.items()}
    for job in resolved["resources"].get("jobs", {}).values():
        if resolved["run_as"]:
            job.setdefault("run_as", resolved["run_as"])
        for permission in resolved["permissions"]:
            job.setdefault("permissions", []).append(
                {**permission, "level": JOB_LEVELS[permission["level"]]})
    return resolved


def _apply_mode(config: dict[str, Any]) -> None:
    pause = config["presets"].get("trigger_pause_status")
    for job in config["resources"].get("jobs", {}).values():
        for kind in ("schedule", "trigger", "continuous"):
            if kind in job and pause:
                job[kind].setdefault("pause_status", pause)
    if config["mode"] != "development":
        return
    short = USER["short_name"]
    for job in config["resources"].get("jobs", {}).values():
        job["name"] = f"[dev {short}] {job['name']}"
    for schema in config["resources"].get("schemas", {}).values():
        schema["name"] = f"dev_{short}_{schema['name']}"


def _lookup(path: str, variables: dict[str, Any], config: dict[str, Any],
            seen: tuple[str, ...]) -> Any:
    """The value of one `${path}`, or None when only a deploy can know it."""
    assert path not in seen, f"reference cycle: {' -> '.join((*seen, path))}"
    parts = path.split(".")
    if parts[0] == "var":
        assert parts[1] in variables, f"${{{path}}}: no such variable, or it has no value"
        return _substitute(variables[parts[1]], variables, config, (*seen, path))
    if parts[0] == "bundle":
        return config["bundle"][parts[1]]
    if parts[:2] == ["workspace", "current_user"]:
        return USER[parts[2]]
    if parts[0] == "resources" and len(parts) == 4:
        kind, key, field = parts[1:]
        assert key in config["resources"].get(kind, {}), f"${{{path}}}: no such resource"
        resource = config["resources"][kind][key]
        if field not in resource:
            return None  # an output of the deploy (id, url...)
        return _substitute(resource[field], variables, config, (*seen, path))
    raise AssertionError(f"${{{path}}}: a reference the bundle cannot resolve")


def _substitute(value: Any, variables: dict[str, Any], config: dict[str, Any],
                seen: tuple[str, ...] = ()) -> Any:
    if isinstance(value, dict):
        return {k: _substitute(v, variables, config, seen) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, variables, config, seen) for v in value]
    if not isinstance(value, str):
        return value
    whole = REFERENCE.fullmatch(value)
    if whole:  # a complex variable keeps its type
        found = _lookup(whole.group(1), variables, config, seen)
        return value if found is None else found

    def one(match: re.Match[str]) -> str:
        found = _lookup(match.group(1), variables, config, seen)
        return match.group(0) if found is None else str(found)

    return REFERENCE.sub(one, value)


def references(value: Any) -> list[str]:
    """Every `${...}` left in a value."""
    if isinstance(value, dict):
        return [r for v in value.values() for r in references(v)]
    if isinstance(value, list):
        return [r for v in value for r in references(v)]
    return REFERENCE.findall(value) if isinstance(value, str) else []
