"""The docs cannot go stale: every command and snippet in README.md, CONTRIBUTING.md and
docs/*.md is checked against the code it describes.

- `vision-batch ...` lines (and the job scripts, which take its flags) parse with the CLI's own
  parser; `databricks bundle ...` lines name a target, a job, its parameters and variables
  that the bundle has;
- Python compiles and its `from pipeline... import name` resolve; YAML loads, and a conf file
  uses only keys `pipeline.config` knows (a models file, the keys of `conf/models.yml`; a
  bundle target, variables the bundle declares);
- SQL names tables and columns the DDL in `sql/` creates (Spark's parser reads every SQL
  snippet too: tests/spark/test_docs_sql.py);
- every relative link finds its file and heading; the README is short and links every page.

Blocks without a language or marked ```text are output, and are not checked.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import importlib.util
import io
import re
import shlex
import unicodedata
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline import config
from pipeline.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
PAGES = sorted((REPO / "docs").glob("*.md"))
DOCS = [README, REPO / "CONTRIBUTING.md", *PAGES]
README_MAX_LINES = 250
FENCE = re.compile(r"^(\s*)```(\S*)\s*$")


@dataclass(frozen=True)
class Snippet:
    doc: Path
    line: int  # of the block's first line of text, 1-based
    lang: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(REPO)}:{self.line}"


def blocks(doc: Path) -> list[Snippet]:
    """The fenced code blocks of a page, dedented by their fence's indent (a block inside a
    list item is indented)."""
    found, lines = [], doc.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        opened = FENCE.match(lines[i])
        if not opened:
            i += 1
            continue
        indent, lang, start = len(opened.group(1)), opened.group(2), i + 1
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            i += 1
        body = "\n".join(line[indent:] for line in lines[start:i])
        found.append(Snippet(doc, start + 1, lang.lower(), body))
        i += 1
    return found


def prose(doc: Path) -> str:
    """The page without its code blocks (links and headings live outside them)."""
    lines, kept, inside = doc.read_text(encoding="utf-8").splitlines(), [], False
    for line in lines:
        if FENCE.match(line) or (inside and line.strip() == "```"):
            inside = not inside
            continue
        kept.append("" if inside else line)
    return "\n".join(kept)


SNIPPETS = [s for doc in DOCS for s in blocks(doc)]


def of(*langs: str) -> list[Any]:
    return [pytest.param(s, id=s.where) for s in SNIPPETS if s.lang in langs]


# -- shell commands ---------------------------------------------------------------------------

SEPARATORS = {"&&", "||", ";", "|", "&"}
ENV_PREFIX = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def commands(text: str) -> list[list[str]]:
    """Each command of a shell block as its words: `\\` continuations joined, comments
    dropped, split at `&&`, `||`, `;`, `|` and `&`, with `VAR=value` prefixes removed."""
    found = []
    for line in text.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        current: list[str] = []
        for word in [*words, ";"]:
            if word in SEPARATORS:
                while current and ENV_PREFIX.match(current[0]):
                    current.pop(0)
                if current:
                    found.append(current)
                current = []
            else:
                current.append(word)
    return found


def program(words: list[str]) -> str:
    return Path(words[0]).name


def parse_failure(argv: list[str]) -> str | None:
    """What argparse says about these arguments of `vision-batch`, or None if they parse."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse exits on an error (2), and after --help or --version (0)
        if exc.code not in (0, None):
            return err.getvalue().strip().splitlines()[-1]
    return None


def cli_argv(words: list[str]) -> list[str] | None:
    """The `vision-batch` arguments a command amounts to, or None if it runs something else.
    The job scripts take the flags of `run` (caption_images.py, less its two job flags) and of
    `report` (report.py)."""
    name = program(words)
    if name == "vision-batch":
        return words[1:]
    if name.startswith("python") and len(words) > 1 and words[1].startswith("jobs/"):
        script, rest = Path(words[1]).name, words[2:]
        if script == "report.py":
            return ["report", *rest]
        if script == "caption_images.py":
            from jobs.caption_images import job_flags

            return ["run", *job_flags().parse_known_args(rest)[1]]
    return None


@pytest.mark.parametrize("snippet", of("bash", "sh"))
def test_every_vision_batch_command_parses(snippet: Snippet) -> None:
    problems = []
    for words in commands(snippet.text):
        argv = cli_argv(words)
        problem = None if argv is None else parse_failure(argv)
        if problem is not None:
            problems.append(f"{snippet.where}: `{shlex.join(words)}`: {problem}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("snippet", of("bash", "sh"))
def test_every_file_a_command_runs_exists(snippet: Snippet) -> None:
    """`python path.py`, `python -m module`, `python -c code`, `pytest path`: the path, the
    module, the code's imports."""
    for words in commands(snippet.text):
        name, rest = program(words), words[1:]
        if name.startswith("python") and rest[:1] == ["-m"] and rest[1] not in ("venv", "pip"):
            assert importlib.util.find_spec(rest[1]), f"{snippet.where}: no module {rest[1]}"
        elif name.startswith("python") and rest[:1] == ["-c"]:
            problems = python_problems(rest[1])
            assert not problems, f"{snippet.where}: {'; '.join(problems)}"
        elif name.startswith("python") and rest and rest[0].endswith(".py"):
            assert (REPO / rest[0]).is_file(), f"{snippet.where}: no file {rest[0]}"
        elif name == "pytest":
            for arg in rest:
                if arg.startswith("tests/"):
                    assert (REPO / arg.split("::")[0]).exists(), f"{snippet.where}: no {arg}"


# -- the bundle -------------------------------------------------------------------------------

@cache
def bundle() -> dict[str, Any]:
    """databricks.yml with the resources and variables of every file in conf/bundle/: those it
    includes and the opt-in SQL job's, whose commands the docs show for when it is included."""
    root = yaml.safe_load((REPO / "databricks.yml").read_text(encoding="utf-8"))
    jobs: dict[str, Any] = {}
    variables = dict(root.get("variables", {}))
    for path in sorted((REPO / "conf" / "bundle").glob("*.yml")):
        included = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        jobs.update(included.get("resources", {}).get("jobs", {}))
        variables.update(included.get("variables", {}))
    jobs.update(root.get("resources", {}).get("jobs", {}))
    return {"targets": root.get("targets", {}), "variables": variables, "jobs": jobs}


def option(words: list[str], *names: str) -> list[str]:
    """Every value of an option given as `-t X`, `--target X` or `--target=X`."""
    values = []
    for i, word in enumerate(words):
        for name in names:
            if word == name and i + 1 < len(words):
                values.append(words[i + 1])
            elif word.startswith(name + "="):
                values.append(word[len(name) + 1:])
    return values


def bundle_problems(words: list[str]) -> list[str]:
    b, problems = bundle(), []
    for target in option(words, "-t", "--target"):
        if target not in b["targets"]:
            problems.append(f"no target {target!r} (targets: {', '.join(b['targets'])})")
    for assignment in option(words, "--var"):
        name = assignment.split("=", 1)[0]
        if name not in b["variables"]:
            problems.append(f"no variable {name!r}")
    if words[2:3] == ["run"]:
        valued = {"-t", "--target", "--var", "--params", "-p", "--profile"}
        positional = [w for i, w in enumerate(words[3:], 3)
                      if not w.startswith("-") and words[i - 1] not in valued]
        if not positional or positional[0] not in b["jobs"]:
            return [*problems, f"no job {positional[:1]} (jobs: {', '.join(b['jobs'])})"]
        job = b["jobs"][positional[0]]
        known = {p["name"] for p in job.get("parameters", [])}
        for params in option(words, "--params"):
            for pair in params.split(","):
                name = pair.split("=", 1)[0]
                if name not in known:
                    problems.append(f"job {positional[0]} has no parameter {name!r}")
    return problems


@pytest.mark.parametrize("snippet", of("bash", "sh"))
def test_every_bundle_command_names_what_the_bundle_has(snippet: Snippet) -> None:
    for words in commands(snippet.text):
        if program(words) == "databricks" and words[1:2] == ["bundle"]:
            problems = bundle_problems(words)
            assert not problems, f"{snippet.where}: `{shlex.join(words)}`: {'; '.join(problems)}"


# -- Python -----------------------------------------------------------------------------------

def python_problems(code: str) -> list[str]:
    """Why this code would not run as far as its imports: a syntax error, or a name it takes
    from `pipeline` that is not there."""
    try:
        tree = ast.parse(code)
    except SyntaxError as exc:
        return [f"does not compile: {exc}"]
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "pipeline":
            module = importlib.import_module(node.module or "")
            problems += [f"`from {node.module} import {alias.name}`: no such name"
                         for alias in node.names if not hasattr(module, alias.name)
                         and not _submodule(module, alias.name)]
        elif isinstance(node, ast.Import):
            problems += [f"`import {alias.name}`: no such module" for alias in node.names
                         if alias.name.split(".")[0] == "pipeline"
                         and not importlib.util.find_spec(alias.name)]
    return problems


def _submodule(package: Any, name: str) -> bool:
    return hasattr(package, "__path__") and importlib.util.find_spec(
        f"{package.__name__}.{name}") is not None


@pytest.mark.parametrize("snippet", of("python", "py"))
def test_every_python_snippet_compiles_and_imports_what_exists(snippet: Snippet) -> None:
    problems = python_problems(snippet.text)
    assert not problems, f"{snippet.where}: {'; '.join(problems)}"


def test_the_python_check_catches_a_name_and_a_syntax_error() -> None:
    assert python_problems("from pipeline.config import RunConfig, NoSuchThing") == [
        "`from pipeline.config import NoSuchThing`: no such name"]
    assert python_problems("print(")[0].startswith("does not compile")


# -- YAML -------------------------------------------------------------------------------------

@cache
def family_keys() -> set[str]:
    models = yaml.safe_load((REPO / "conf" / "models.yml").read_text(encoding="utf-8"))
    return {key for family in models["families"].values() for key in family} | {"price"}


PRICE_KEYS = {"input_per_million", "output_per_million", "currency", "source"}


@pytest.mark.parametrize("snippet", of("yaml", "yml"))
def test_every_yaml_snippet_loads_with_known_keys(snippet: Snippet) -> None:
    data = yaml.safe_load(snippet.text)
    assert isinstance(data, dict), f"{snippet.where}: not a mapping"
    if "families" in data:  # a models file (conf/models.yml)
        for name, family in data["families"].items():
            unknown = set(family) - family_keys()
            assert not unknown, f"{snippet.where}: family {name}: unknown keys {unknown}"
            assert set(family.get("price", {})) <= PRICE_KEYS, snippet.where
    elif "targets" in data:  # a bundle's targets (databricks.yml)
        for target, body in data["targets"].items():
            assert target in bundle()["targets"], f"{snippet.where}: no target {target!r}"
            unknown = set(body.get("variables", {})) - set(bundle()["variables"])
            assert not unknown, f"{snippet.where}: unknown variables {unknown}"
    else:  # a run's --conf file
        try:
            config.from_mapping(data, snippet.where)
        except config.ConfigError as exc:
            raise AssertionError(str(exc)) from None


# -- SQL --------------------------------------------------------------------------------------

TABLE_KINDS = {"": "captions", "_runs": "runs", "_groups": "groups", "_claims": "claims",
               "_journal": "journal"}


@cache
def ddl_columns() -> dict[str, set[str]]:
    """Each table kind's columns, from its CREATE in sql/."""
    columns = {}
    for kind in TABLE_KINDS.values():
        ddl = (REPO / "sql" / f"create_{kind}.sql").read_text(encoding="utf-8")
        body = ddl[ddl.index("(") + 1:]
        columns[kind] = set(re.findall(r"^\s+([a-z_][a-z0-9_]*)\s+[A-Z]", body, re.M))
    return columns


SQL_WORDS = {
    "select", "from", "where", "group", "by", "order", "desc", "asc", "as", "and", "or", "not",
    "sum", "count", "avg", "min", "max", "limit", "is", "null", "in", "having", "distinct",
}
TABLE_NAME = re.compile(r"\b(?:FROM|JOIN)\s+([A-Za-z0-9_.`]+)", re.I)


def sql_problems(text: str) -> list[str]:
    """Tables a SELECT reads are named like the tables a run writes, and each word of the
    query is a column of them, an alias, a number or an SQL word."""
    query = re.sub(r"'[^']*'|--[^\n]*", " ", text)
    if not re.match(r"\s*SELECT\b", query, re.I):
        return []
    problems, known = [], set()
    tables = TABLE_NAME.findall(query)
    for table in tables:
        name = table.strip("`").split(".")[-1]
        kind = next((k for suffix, k in sorted(TABLE_KINDS.items(), key=lambda p: -len(p[0]))
                     if name.endswith(suffix)), "captions")
        known |= ddl_columns()[kind]
    aliases = {a.lower() for a in re.findall(r"\bAS\s+([A-Za-z_]\w*)", query, re.I)}
    names = {part for t in tables for part in t.strip("`").split(".")}
    for word in re.findall(r"\b[A-Za-z_]\w*\b", query):
        if word.lower() in SQL_WORDS | aliases or word in names or word in known:
            continue
        problems.append(f"{word!r} is no column of {', '.join(tables)}")
    return problems


@pytest.mark.parametrize("snippet", of("sql"))
def test_every_sql_query_names_real_tables_and_columns(snippet: Snippet) -> None:
    problems = sql_problems(snippet.text)
    assert not problems, f"{snippet.where}: {'; '.join(problems)}"


def test_the_sql_check_catches_a_misspelt_column() -> None:
    assert sql_problems("SELECT path, capton FROM main.v.captions") == [
        "'capton' is no column of main.v.captions"]
    assert sql_problems("SELECT run_id, status FROM x.y.captions_runs ORDER BY run_id") == []
    assert sql_problems("SELECT sum(total_tokens) AS paid FROM t WHERE attempts > 0") == []


# -- links and pages --------------------------------------------------------------------------

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower()
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN")
    return kept.replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for heading in re.findall(r"^#{1,6}\s+(.*)$", prose(doc), re.M):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(doc: Path) -> list[str]:
    return [target for target in LINK.findall(prose(doc))
            if not re.match(r"[a-z]+:", target)]  # http(s):, mailto: are not ours


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: str(d.relative_to(REPO)))
def test_every_relative_link_finds_its_file_and_heading(doc: Path) -> None:
    broken = []
    for target in links(doc):
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        if not file.exists():
            broken.append(f"{target}: no file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file.relative_to(REPO)}")
    assert not broken, f"{doc.relative_to(REPO)}: {'; '.join(broken)}"


def test_the_slug_is_githubs() -> None:
    assert slug("Standalone Spark clusters (`spark://`)") == "standalone-spark-clusters-spark"
    assert slug("`run`: flags and conf keys") == "run-flags-and-conf-keys"
    assert slug("A local session against a workspace's endpoint") == \
        "a-local-session-against-a-workspaces-endpoint"


def test_the_readme_is_a_front_page_that_links_every_page() -> None:
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines < README_MAX_LINES, f"README.md has {lines} lines, over {README_MAX_LINES}"
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in links(README)}
    missing = [p.name for p in PAGES if p.resolve() not in linked]
    assert not missing, f"README.md links no docs/ page {missing}"


def test_the_ci_test_command_follows_its_marker() -> None:
    """.ci/run runs the line after the marker's ```bash fence."""
    text = README.read_text(encoding="utf-8").splitlines()
    at = next(i for i, line in enumerate(text) if line.startswith("<!-- test-command"))
    assert text[at + 1] == "```bash"
    assert "pytest" in text[at + 2]


def test_the_command_check_sees_through_the_shell() -> None:
    """The parsing above: continuations, env prefixes, chains; an unknown flag is caught."""
    text = ("SPARK_REMOTE=local[2] .venv/bin/vision-batch run \\\n  --max-tokens 9  # note\n"
            "python3 -m venv .venv && .venv/bin/vision-batch report --table t --out o.html")
    found = commands(text)
    assert [cli_argv(w) for w in found] == [
        ["run", "--max-tokens", "9"], None, ["report", "--table", "t", "--out", "o.html"]]
    assert parse_failure(["run", "--max-tokens", "9"]) is None
    assert "unrecognized arguments: --no-such-flag" in (
        parse_failure(["run", "--no-such-flag"]) or "")
    assert bundle_problems(["databricks", "bundle", "run", "-t", "nope", "caption_images"])


def test_the_link_check_catches_a_missing_page_and_heading(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# A `page`: here\n\n[ok](#a-page-here) [gone](other.md) [no](#nowhere)\n"
                    "```bash\n[not a link](inside-code.md)\n```\n", encoding="utf-8")
    assert anchors(page) == {"a-page-here"}
    assert links(page) == ["#a-page-here", "other.md", "#nowhere"]
