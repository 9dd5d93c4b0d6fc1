"""Static checks of the deployment files: compose.yaml, Dockerfile, .dockerignore and deploy/ (the monitoring
profile's Prometheus configuration, Grafana provisioning and dashboard, rq-dashboard image).

compose.yaml is validated against the official Compose Specification JSON schema
(github.com/compose-spec/compose-spec, schema/compose-spec.json) as vendored by the PyPI package
``check-jsonschema`` (a dev dependency); it is read from the installed distribution, never fetched.
No Docker daemon and no network are needed: these tests read the files, run ``syncnotify``'s entry point with
``--help``, parse the compose commands with the CLI's own argument parser, and list the metrics the code
exports (the queue gauges by collecting them from the test suite's own redis-server and a SQLite database).
"""

from __future__ import annotations

import argparse
import ast
import copy
import hashlib
import importlib.metadata
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version
from redis import Redis

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PYPROJECT = ROOT / "pyproject.toml"
DEPLOY = ROOT / "deploy"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
GRAFANA_DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources"
GRAFANA_DASHBOARD_PROVIDERS = DEPLOY / "grafana" / "provisioning" / "dashboards"
GRAFANA_DASHBOARD = DEPLOY / "grafana" / "dashboards" / "syncnotify.json"
RQ_DASHBOARD_DOCKERFILE = DEPLOY / "rq-dashboard" / "Dockerfile"

SCHEMA_DISTRIBUTION = "check-jsonschema"
SCHEMA_FILE = "check_jsonschema/builtin_schemas/vendor/compose-spec.json"
SCHEMA_CHECKSUM_FILE = "check_jsonschema/builtin_schemas/vendor/sha256/compose-spec.sha256"

PROJECT_SERVICES = ("migrate", "ingress", "worker", "admin")
ONE_SHOT = "no"
MONITORING_PROFILE = "monitoring"
MONITORING_SERVICES = ("prometheus", "grafana", "rq-dashboard")
# Only the ingress faces the network; these are for operators and are published on the loopback address only.
LOOPBACK_ONLY = ("admin", *MONITORING_SERVICES)
LOOPBACK = "127.0.0.1"
# ${NAME:?message}: Compose refuses to start when NAME is unset or empty.
REQUIRED_VARIABLE = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*:\?[^}]+\}$")
# ${NAME:-}: empty when unset, and no warning.
OPTIONAL_EMPTY_VARIABLE = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*:-\}$")
SECRET_KEY = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN", re.IGNORECASE)
URL_PASSWORD = re.compile(r"^[a-z][a-z0-9+.-]*://[^:/@]+:(?P<password>.+)@[^@]+$", re.IGNORECASE)


# ---------------------------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict), "compose.yaml must be a mapping"
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result = compose.get("services")
    assert isinstance(result, dict) and result, "compose.yaml defines no services"
    return result


@pytest.fixture(scope="module")
def compose_schema() -> dict[str, Any]:
    """The official Compose Specification schema, read from the installed check-jsonschema wheel."""
    try:
        dist = importlib.metadata.distribution(SCHEMA_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(
            f"{SCHEMA_DISTRIBUTION} is not installed: it ships the Compose Specification schema "
            "this test validates against (add it to the dev extras in pyproject.toml)"
        )
    schema_path = Path(str(dist.locate_file(SCHEMA_FILE)))
    checksum_path = Path(str(dist.locate_file(SCHEMA_CHECKSUM_FILE)))
    assert schema_path.is_file(), f"{SCHEMA_DISTRIBUTION} {dist.version} has no {SCHEMA_FILE}"
    raw = schema_path.read_bytes()
    if checksum_path.is_file():  # the package records the digest of what it vendored
        assert hashlib.sha256(raw).hexdigest() == checksum_path.read_text(encoding="ascii").strip()
    schema: dict[str, Any] = json.loads(raw)
    assert schema.get("title") == "Compose Specification"
    return schema


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command")
    if isinstance(command, str):
        return command.split()
    assert isinstance(command, list), f"no command: {service}"
    return [str(part) for part in command]


def _subcommand(argv: list[str]) -> list[str]:
    """``["syncnotify", "db", "upgrade", "--x"]`` -> ``["db", "upgrade"]``."""
    words: list[str] = []
    for part in argv[1:]:
        if part.startswith("-"):
            break
        words.append(part)
    return words


def _options(argv: list[str]) -> list[str]:
    return [part.split("=", 1)[0] for part in argv if part.startswith("--")]


def _environment(service: dict[str, Any]) -> dict[str, Any]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    assert isinstance(env, dict)
    return env


def _depends_on(service: dict[str, Any]) -> dict[str, str]:
    """Dependency name -> condition (the short list form means ``service_started``)."""
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def _volume_mounts(service: dict[str, Any]) -> Iterator[tuple[str | None, str, str]]:
    """(source, target, type) for each mount; type is ``volume`` for a named volume."""
    for entry in service.get("volumes") or []:
        if isinstance(entry, dict):
            yield entry.get("source"), entry["target"], entry.get("type", "volume")
            continue
        parts = entry.split(":")
        if len(parts) == 1:
            yield None, parts[0], "volume"  # anonymous volume
            continue
        source, target = parts[0], parts[1]
        kind = "bind" if source.startswith((".", "/", "~", "$")) else "volume"
        yield source, target, kind


def _healthcheck_enabled(service: dict[str, Any]) -> bool:
    check = service.get("healthcheck")
    if not check or check.get("disable") in (True, "true"):
        return False
    test = check.get("test")
    return bool(test) and test != ["NONE"]


def _healthcheck_text(service: dict[str, Any]) -> str:
    test = service["healthcheck"]["test"]
    return test if isinstance(test, str) else " ".join(test)


def _dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = (pending + stripped).strip()
        pending = ""
        if full:
            keyword, _, args = full.partition(" ")
            instructions.append((keyword.upper(), args.strip()))
    assert not pending, "Dockerfile ends inside a continued line"
    return instructions


def _project_packages() -> list[str]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    return sorted({pattern.rstrip("*").rstrip(".") for pattern in include})


# ------------------------------------------------------------------------------------------ 1. the schema


def test_compose_file_is_valid_against_the_compose_specification(
    compose: dict[str, Any], compose_schema: dict[str, Any]
) -> None:
    validator_class = jsonschema.validators.validator_for(compose_schema)
    validator_class.check_schema(compose_schema)
    validator = validator_class(compose_schema)
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors)


@pytest.mark.parametrize(
    ("where", "key", "value"),
    [
        (("services", "worker"), "restrat", "always"),  # a misspelt key
        (("services", "worker", "deploy"), "replicas", [2]),  # a wrong type
        (("services", "migrate", "depends_on", "postgres"), "condition", "service_completed"),  # not in enum
        ((), "servics", {}),  # a misspelt top-level key
    ],
)
def test_the_schema_really_rejects_mistakes(
    compose: dict[str, Any], compose_schema: dict[str, Any], where: tuple[str, ...], key: str, value: Any
) -> None:
    """Guards the guard: the validator must not wave through what Compose would refuse."""
    broken = copy.deepcopy(compose)
    node = broken
    for step in where:
        node = node[step]
    node[key] = value
    validator = jsonschema.validators.validator_for(compose_schema)(compose_schema)
    assert list(validator.iter_errors(broken)), f"schema accepted {key}={value!r} at {'/'.join(where)}"


def test_no_obsolete_version_key(compose: dict[str, Any]) -> None:
    assert "version" not in compose, "the Compose specification ignores `version:`; leave it out"


# ------------------------------------------------------------------------------------------ 2. the CLI


def _cli_cases() -> list[Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    cases = []
    for name in PROJECT_SERVICES:
        argv = _command(data["services"][name])
        cases.append(pytest.param(argv, id=f"{name}: {' '.join(_subcommand(argv))}"))
    cmd = next(args for keyword, args in _dockerfile_instructions() if keyword == "CMD")
    # Shell form is reported by the Dockerfile test; here it is only split into words.
    argv = json.loads(cmd) if cmd.startswith("[") else shlex.split(cmd)
    cases.append(pytest.param(argv, id="Dockerfile CMD"))
    return cases


@pytest.mark.parametrize("argv", _cli_cases())
def test_every_command_is_a_syncnotify_subcommand_the_cli_knows(argv: list[str]) -> None:
    assert argv[0] == "syncnotify", f"{argv} does not run syncnotify"
    subcommand = _subcommand(argv)
    assert subcommand, f"{argv} names no subcommand"
    # Exactly what the installed `syncnotify` console script does (syncnotify.cli:main with argv), so the
    # check holds whatever the module's `__main__` does.
    runner = "import sys; from syncnotify.cli import main; sys.argv = sys.argv[1:]; sys.exit(main())"
    result = subprocess.run(
        [sys.executable, "-c", runner, "syncnotify", *subcommand, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"`syncnotify {' '.join(subcommand)} --help` exited {result.returncode}:\n{output}"
    assert output.strip(), f"`syncnotify {' '.join(subcommand)} --help` printed nothing"
    for option in _options(argv):
        assert option in output, f"`syncnotify {' '.join(subcommand)}` does not document {option}:\n{output}"


# ------------------------------------------------------------------------------------------ 3. promises


def test_redis_keeps_an_append_only_file_on_a_named_volume(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    redis = services["redis"]
    assert str(redis["image"]).startswith("redis:7")
    command = " ".join(_command(redis))
    assert "--appendonly yes" in command
    assert "--appendfsync everysec" in command
    mounts = {target: (source, kind) for source, target, kind in _volume_mounts(redis)}
    source, kind = mounts["/data"]
    assert kind == "volume" and source in (compose.get("volumes") or {})
    assert "redis-cli ping" in _healthcheck_text(redis)


def test_postgres_password_is_required_and_data_is_on_a_named_volume(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    postgres = services["postgres"]
    assert str(postgres["image"]).startswith("postgres:16")
    assert REQUIRED_VARIABLE.match(_environment(postgres)["POSTGRES_PASSWORD"])
    mounts = {target: (source, kind) for source, target, kind in _volume_mounts(postgres)}
    source, kind = mounts["/var/lib/postgresql/data"]
    assert kind == "volume" and source in (compose.get("volumes") or {})
    assert "pg_isready" in _healthcheck_text(postgres)


def test_no_plaintext_passwords(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    environments = {name: _environment(service) for name, service in services.items()}
    environments.update({key: value for key, value in compose.items() if key.startswith("x-") and "env" in key})
    checked = 0
    for owner, env in environments.items():
        for key, value in env.items():
            if value is None:
                continue
            text = str(value)
            if SECRET_KEY.search(key):
                # ${VAR:?…} would stop `docker compose up` for everyone if it sat in a profile-only service
                # (Compose interpolates the whole file before it applies profiles): there ${VAR:-} is allowed,
                # provided the container refuses to start with it empty (test_grafana_refuses_...).
                service = services.get(owner, {})
                optional = bool(service.get("profiles")) and OPTIONAL_EMPTY_VARIABLE.match(text)
                assert REQUIRED_VARIABLE.match(text) or optional, f"{owner}: {key} must be ${{VAR:?…}}, not {text!r}"
                if optional:
                    assert _entrypoint_refuses_empty(service, key), f"{owner} starts with {key} empty"
                checked += 1
            match = URL_PASSWORD.match(text)
            if match:
                password = match["password"]
                assert REQUIRED_VARIABLE.match(password), f"{owner}: {key} embeds a literal password"
                checked += 1
    assert checked, "found no password setting at all: the check is looking in the wrong place"
    # A secret must never sit in the file as a default value either: ${VAR:-secret} (${VAR:-} is no secret).
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    assert not re.search(r"\$\{[A-Z_]*(PASSWORD|SECRET|TOKEN)[A-Z_]*:?-(?!\})", text)


def test_migrations_run_once_before_ingress_and_workers(services: dict[str, dict[str, Any]]) -> None:
    migrate = services["migrate"]
    assert migrate.get("restart") == ONE_SHOT
    assert _subcommand(_command(migrate)) == ["db", "upgrade"]
    assert _depends_on(migrate).get("postgres") == "service_healthy"
    for name in ("ingress", "worker", "admin"):
        deps = _depends_on(services[name])
        assert deps.get("migrate") == "service_completed_successfully", name
        assert deps.get("redis") == "service_healthy", name


def test_workers_are_replicated(services: dict[str, dict[str, Any]]) -> None:
    worker = services["worker"]
    assert int(worker["deploy"]["replicas"]) >= 2
    assert "container_name" not in worker, "a fixed container_name makes replicas impossible"
    assert not worker.get("ports"), "replicas cannot share a published host port"
    assert _subcommand(_command(worker)) == ["worker"]


def test_long_running_services_are_health_checked(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if service.get("restart", ONE_SHOT) == ONE_SHOT:
            continue
        deps = _depends_on(service)
        healthy_deps = [dep for dep, condition in deps.items() if condition == "service_healthy"]
        ordered = all(c in ("service_healthy", "service_completed_successfully") for c in deps.values())
        assert _healthcheck_enabled(service) or (healthy_deps and ordered), (
            f"{name} runs for good but neither has a healthcheck nor waits for healthy dependencies"
        )
    for name, service in services.items():
        for dep, condition in _depends_on(service).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            if condition == "service_healthy":
                assert _healthcheck_enabled(services[dep]), f"{name} waits for {dep} to be healthy: it has no check"
            if condition == "service_completed_successfully":
                assert services[dep].get("restart") == ONE_SHOT, f"{dep} must run once for {name} to wait on it"


def test_ingress_serves_8080_with_a_curl_free_healthcheck(services: dict[str, dict[str, Any]]) -> None:
    ingress = services["ingress"]
    argv = _command(ingress)
    assert _subcommand(argv) == ["ingress"]
    assert argv[argv.index("--host") + 1] == "0.0.0.0"
    assert argv[argv.index("--port") + 1] == "8080"
    published = [str(p["target"]) if isinstance(p, dict) else str(p).rsplit(":", 1)[-1] for p in ingress["ports"]]
    assert "8080" in [p.split("/")[0] for p in published]
    check = _healthcheck_text(ingress)
    assert "curl" not in check and "wget" not in check, "the image has neither curl nor wget"
    assert "python" in check and "urllib.request" in check and "127.0.0.1:8080/healthz" in check
    assert ingress.get("restart") == "unless-stopped"
    assert ingress.get("stop_grace_period")


def test_spool_dir_is_on_a_named_volume(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    named_volumes = compose.get("volumes") or {}
    users = {name: s for name, s in services.items() if _environment(s).get("SYNCNOTIFY_SPOOL_DIR")}
    assert "ingress" in users, "the ingress must be told where its spool is"
    for name, service in users.items():
        spool = PurePosixPath(str(_environment(service)["SYNCNOTIFY_SPOOL_DIR"]))
        assert spool.is_absolute(), f"{name}: spool dir {spool} is relative to the working directory"
        mounts = [
            (source, PurePosixPath(target))
            for source, target, kind in _volume_mounts(service)
            if kind == "volume" and source in named_volumes
        ]
        assert any(spool == target or target in spool.parents for _, target in mounts), (
            f"{name}: spool dir {spool} is not inside a named volume, so it dies with the container"
        )


def test_project_services_share_one_image_and_one_environment(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    project = [services[name] for name in PROJECT_SERVICES]
    assert len({str(s.get("image")) for s in project}) == 1, "one image for every role"
    builds = [s.get("build") for s in project]
    assert all(b == builds[0] for b in builds) and builds[0], "one build, from the project's Dockerfile"
    build = builds[0] if isinstance(builds[0], dict) else {"context": builds[0]}
    assert Path(ROOT, build.get("context", "."), build.get("dockerfile", "Dockerfile")).resolve() == DOCKERFILE
    common = set.intersection(*(set(_environment(s)) for s in project))
    assert {"SYNCNOTIFY_REDIS_URL", "SYNCNOTIFY_DATABASE_URL"} <= common
    assert any(key.startswith("x-") for key in compose), "shared settings belong in an x- extension field"
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    assert text.count("SYNCNOTIFY_DATABASE_URL:") == 1, "the environment is written once and reused by anchor"


def test_every_named_volume_is_declared(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    declared = set(compose.get("volumes") or {})
    for name, service in services.items():
        for source, target, kind in _volume_mounts(service):
            if kind == "volume":
                assert source in declared, f"{name}: {target} is on an anonymous or undeclared volume"


def test_dockerfile_builds_a_non_root_syncnotify_image(services: dict[str, dict[str, Any]]) -> None:
    instructions = _dockerfile_instructions()
    keywords = [keyword for keyword, _ in instructions]
    assert instructions[0] == ("FROM", "python:3.11-slim")
    assert keywords.count("FROM") == 1

    pip_installs = [args for keyword, args in instructions if keyword == "RUN" and "pip install" in args]
    assert any(re.search(r"pip install --no-cache-dir \.(\s|$)", args) for args in pip_installs), (
        "the image must install the project itself: pip install --no-cache-dir ."
    )

    users = [args for keyword, args in instructions if keyword == "USER"]
    assert users, "no USER: the container would run as root"
    final_user = users[-1].split(":")[0]
    assert final_user not in ("root", "0")
    assert keywords.index("USER") > max(i for i, k in enumerate(keywords) if k == "RUN"), "USER after the last RUN"

    cmd = [args for keyword, args in instructions if keyword == "CMD"]
    assert len(cmd) == 1 and cmd[0].startswith("["), "CMD in exec form, so signals reach syncnotify"
    assert json.loads(cmd[0]) == ["syncnotify", "ingress", "--host", "0.0.0.0", "--port", "8080"]
    assert any(keyword == "EXPOSE" and "8080" in args.split() for keyword, args in instructions)

    # The spool directory is created (and chowned) in the image, so a fresh named volume on it is
    # initialised from the image and writable by the non-root user.
    spool = str(_environment(services["ingress"])["SYNCNOTIFY_SPOOL_DIR"])
    assert any(keyword == "RUN" and "chown" in args and spool in args for keyword, args in instructions)


def test_build_context_holds_the_project_and_no_secrets() -> None:
    lines = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    assert lines[0] == "*", ".dockerignore should be an allow-list starting with `*`"
    allowed = {line[1:].strip("/") for line in lines if line.startswith("!")}
    needed = {"pyproject.toml", *_project_packages()}
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    readme = pyproject["project"].get("readme")
    if isinstance(readme, str):
        needed.add(readme)
    assert needed <= allowed, f".dockerignore leaves out what `pip install .` needs: {sorted(needed - allowed)}"
    assert not allowed & {".env", ".venv", "tests", ".git", "spool"}


# ------------------------------------------------------------------- 4. the status page and the monitoring profile

PORT_SHORT_SYNTAX = re.compile(
    r"^(?:(?P<ip>\d{1,3}(?:\.\d{1,3}){3}|\[[0-9A-Fa-f:.]+\]):)?"
    r"(?:(?P<published>\$\{[^}]*\}|[^:]+):)?"
    r"(?P<target>\d+(?:-\d+)?)(?:/(?P<protocol>tcp|udp))?$"
)
#: Labels Prometheus adds to every series it scrapes.
TARGET_LABELS = frozenset({"job", "instance"})
#: Grafana's built-in variables a query may use.
GRAFANA_BUILTIN_VARIABLES = frozenset({"__rate_interval", "__interval", "__interval_ms", "__range", "__range_s"})
#: Series suffixes of each metric type in the text exposition (``_created`` left out: no panel needs it, and
#: the workers' multiprocess collector does not export it), with the labels each suffix adds.
SERIES_SUFFIXES: dict[str, dict[str, tuple[str, ...]]] = {
    "counter": {"_total": ()},
    "gauge": {"": ()},
    "histogram": {"_bucket": ("le",), "_sum": (), "_count": ()},
    "summary": {"": ("quantile",), "_sum": (), "_count": ()},
}


@dataclass(frozen=True)
class Series:
    """A series name an exporter really serves: its labels, and every value of a label where it lists them all."""

    labels: frozenset[str]
    values: dict[str, frozenset[str]] = field(default_factory=dict)
    #: Read from Redis/the database at scrape time, so every worker replica reports the same number.
    same_on_every_replica: bool = False


#: Series Prometheus writes itself for each target.
PROMETHEUS_SERIES = {"up": Series(frozenset())}


@dataclass
class Query:
    selectors: list[tuple[str, list[tuple[str, str, str]]]] = field(default_factory=list)
    grouping: set[str] = field(default_factory=set)
    calls: set[str] = field(default_factory=set)


_PROMQL_TOKEN = re.compile(
    r"""\s+
    | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
    | (?P<range>\[[^\]]*\])
    | (?P<punct>[{}(),])
    | (?P<number>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)
    | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
    | (?P<op>=~|!~|!=|==|>=|<=|[-+*/%^<>=])""",
    re.VERBOSE,
)
_DURATION = r"(?:\d+(?:ms|[smhdwy]))+"
_RANGE = re.compile(rf"^\[(?:{_DURATION}|\$__(?:rate_interval|interval|range))(?::(?:{_DURATION})?)?\]$")
_GROUPING = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
_KEYWORDS = frozenset({"and", "or", "unless", "bool", "inf", "nan"})
# Aggregations may put their grouping first: sum by (le) (…).
_AGGREGATIONS = frozenset(
    {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk", "quantile"}
)


def _parse_promql(expr: str) -> Query:  # noqa: C901 - one small recursive-descent tokenizer
    """The metric selectors, grouping labels and functions of a PromQL expression (enough of PromQL for the
    dashboard's queries; anything it cannot read is an error, not a pass)."""
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(expr):
        match = _PROMQL_TOKEN.match(expr, pos)
        if not match:
            raise ValueError(f"cannot read {expr[pos : pos + 20]!r}")
        pos = match.end()
        if match.lastgroup:
            tokens.append((match.lastgroup, match.group(match.lastgroup)))
    if tokens.count(("punct", "(")) != tokens.count(("punct", ")")):
        raise ValueError("unbalanced parentheses")
    query = Query()
    i = 0
    try:
        while i < len(tokens):
            kind, text = tokens[i]
            following = tokens[i + 1] if i + 1 < len(tokens) else ("", "")
            if kind == "range" and not _RANGE.match(text):
                raise ValueError(f"range {text} is neither a duration nor $__rate_interval/$__interval/$__range")
            if kind == "punct" and text == "{":
                raise ValueError("a selector without a metric name ({__name__=…}): name the metric")
            if kind == "ident" and text in _GROUPING:
                i += 1
                if following == ("punct", "("):
                    i += 1
                    while tokens[i] != ("punct", ")"):
                        if tokens[i][0] == "ident":
                            query.grouping.add(tokens[i][1])
                        elif tokens[i] != ("punct", ","):
                            raise ValueError(f"unexpected {tokens[i][1]!r} in a label list")
                        i += 1
                    i += 1
                continue
            if kind == "ident" and (following == ("punct", "(") or text in _AGGREGATIONS):
                query.calls.add(text)
            elif kind == "ident" and text == "offset":
                raise ValueError("offset is not used by these dashboards")
            elif kind == "ident" and text.lower() not in _KEYWORDS:
                matchers: list[tuple[str, str, str]] = []
                i += 1
                if i < len(tokens) and tokens[i] == ("punct", "{"):
                    i += 1
                    while tokens[i] != ("punct", "}"):
                        (label_kind, label), (op_kind, op), (value_kind, value) = tokens[i : i + 3]
                        if label_kind != "ident" or op not in ("=", "!=", "=~", "!~") or value_kind != "string":
                            raise ValueError(f"cannot read the matcher {label}{op}{value} of {text}")
                        matchers.append((label, op, str(ast.literal_eval(value))))
                        i += 3
                        if tokens[i] == ("punct", ","):
                            i += 1
                    i += 1
                query.selectors.append((text, matchers))
                continue
            i += 1
    except IndexError:
        raise ValueError("the expression ends early") from None
    return query


def _expression_problems(expr: str, exported: dict[str, Series], jobs: set[str]) -> list[str]:
    """Why ``expr`` would chart nothing (or the wrong thing) against what syncnotify really exports."""
    try:
        query = _parse_promql(expr)
    except ValueError as exc:
        return [f"{expr}: {exc}"]
    problems: list[str] = []
    if not query.selectors:
        problems.append(f"{expr}: selects no metric")
    known_labels = set(TARGET_LABELS)
    for metric, matchers in query.selectors:
        series = exported.get(metric)
        if series is None:
            problems.append(f"{metric} is not a series syncnotify exports (or Prometheus writes)")
            continue
        known_labels |= series.labels
        for label, op, value in matchers:
            if label not in series.labels | TARGET_LABELS:
                problems.append(f"{metric} has no label {label!r} (it has {sorted(series.labels)})")
                continue
            allowed = jobs if label == "job" else series.values.get(label)
            if allowed is None:
                continue  # the exporter does not list this label's values up front
            if op in ("=", "!="):
                wanted = [value]
            elif re.fullmatch(r"[\w|]+", value):
                wanted = value.split("|")  # a plain alternation
            else:
                wanted = []
            problems += [
                f"{metric}{{{label}}} is never {v!r} (only {sorted(allowed)})" for v in wanted if v not in allowed
            ]
        if series.same_on_every_replica and query.calls & {"sum", "count"}:
            problems.append(f"{metric} is the same on every worker replica: aggregate it with max(), not sum()")
    for label in sorted(query.grouping - known_labels):
        problems.append(f"{expr}: groups by {label!r}, which none of its series has")
    return problems


def _selects(query: Query, metric: str, **equal: str) -> bool:
    return any(
        name == metric and all((label, "=", value) in matchers for label, value in equal.items())
        for name, matchers in query.selectors
    )


def _ports(service: dict[str, Any]) -> list[tuple[str | None, str | None, str]]:
    """(host address, published port, container port) of each published port, short or long syntax."""
    result: list[tuple[str | None, str | None, str]] = []
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            published = entry.get("published")
            result.append((entry.get("host_ip"), None if published is None else str(published), str(entry["target"])))
            continue
        match = PORT_SHORT_SYNTAX.match(str(entry))
        assert match, f"cannot read the port {entry!r}"
        result.append((match["ip"], match["published"], match["target"]))
    return result


def _read_only_targets(service: dict[str, Any]) -> set[str]:
    targets: set[str] = set()
    for entry in service.get("volumes") or []:
        if isinstance(entry, dict):
            if entry.get("read_only"):
                targets.add(entry["target"])
            continue
        parts = entry.split(":")
        if len(parts) > 2 and "ro" in parts[2].split(","):
            targets.add(parts[1])
    return targets


def _repo_path_of(service: dict[str, Any], container_path: str) -> Path | None:
    """The repository file or folder behind ``container_path`` of ``service``, through its bind mounts."""
    path = PurePosixPath(container_path)
    best: tuple[str, PurePosixPath] | None = None
    for source, target, kind in _volume_mounts(service):
        if kind != "bind" or not source or source.startswith(("/", "~", "$")):
            continue
        mount = PurePosixPath(target)
        if (path == mount or mount in path.parents) and (best is None or len(mount.parts) > len(best[1].parts)):
            best = (source, mount)
    if best is None:
        return None
    return (ROOT / best[0] / path.relative_to(best[1])).resolve()


def _cli_args(service: dict[str, Any]) -> argparse.Namespace:
    """The service's command as the syncnotify CLI itself parses it: its options with the CLI's defaults."""
    from syncnotify.cli import build_parser

    argv = _command(service)
    assert argv[0] == "syncnotify", f"{argv} does not run syncnotify"
    try:
        return build_parser().parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"the syncnotify CLI refuses {argv}")


def _run_entrypoint(service: dict[str, Any], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run the service's ``/bin/sh -c`` entrypoint here, its final ``exec`` of the image's own entrypoint
    replaced by a stub that prints ``started``."""
    entrypoint = service.get("entrypoint")
    assert isinstance(entrypoint, list) and entrypoint[:2] == ["/bin/sh", "-c"], f"not a sh -c entrypoint: {entrypoint}"
    raw = str(entrypoint[2])
    assert "$" not in raw.replace("$$", ""), "a single $ is Compose interpolation: write $$ for the shell"
    script = raw.replace("$$", "$")
    handover = re.search(r"\bexec\s+(\S+)", script)
    assert handover, "the entrypoint never hands over to the image's own (exec …)"
    with tempfile.TemporaryDirectory() as tmp:
        stub = Path(tmp) / "entrypoint"
        stub.write_text('#!/bin/sh\necho started "$@"\n', encoding="utf-8")
        stub.chmod(0o755)
        script = script[: handover.start(1)] + str(stub) + script[handover.end(1) :]
        return subprocess.run(
            ["/bin/sh", "-c", script, *map(str, entrypoint[3:])],
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )


def _entrypoint_refuses_empty(service: dict[str, Any], key: str) -> bool:
    if not isinstance(service.get("entrypoint"), list):
        return False
    empty = _run_entrypoint(service, {key: ""})
    real = _run_entrypoint(service, {key: "a-real-one-4711"})
    return empty.returncode != 0 and real.returncode == 0 and "started" in real.stdout


def _yaml_documents(folder: Path) -> list[dict[str, Any]]:
    files = sorted([*folder.glob("*.yml"), *folder.glob("*.yaml")])
    assert files, f"no provisioning file in {folder}"
    documents = [yaml.safe_load(path.read_text(encoding="utf-8")) for path in files]
    assert all(isinstance(doc, dict) and doc.get("apiVersion") == 1 for doc in documents), f"{folder}: apiVersion 1"
    return documents


def _provisioned_datasources() -> list[dict[str, Any]]:
    return [ds for doc in _yaml_documents(GRAFANA_DATASOURCES) for ds in doc.get("datasources") or []]


def _scrape_jobs(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    jobs = {job["job_name"]: job for job in config.get("scrape_configs") or []}
    assert len(jobs) == len(config.get("scrape_configs") or []), "two scrape jobs share a name"
    return jobs


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard.get("panels") or []:
        yield panel
        yield from panel.get("panels") or []  # a collapsed row keeps its panels inside


def _targets(dashboard: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(panel, target) for panel in _panels(dashboard) for target in panel.get("targets") or []]


def _wrappers(module: Any) -> list[Any]:
    """The prometheus_client metrics (Counter, Histogram, …) defined at module level in ``module``."""
    from prometheus_client.metrics import MetricWrapperBase

    return [metric for metric in vars(module).values() if isinstance(metric, MetricWrapperBase)]


def _wrapper_series(module: Any, registry: Any) -> dict[str, Series]:
    """The series of ``module``'s metrics, each of which must be registered in ``registry``."""
    registered = {family.name for family in registry.collect()}
    series: dict[str, Series] = {}
    for metric in _wrappers(module):
        family = metric.describe()[0]
        assert family.name in registered, f"{family.name} is not in the registry {module.__name__} serves"
        labels = frozenset(metric._labelnames)  # prometheus_client has no public accessor for these
        for suffix, extra in SERIES_SUFFIXES[family.type].items():
            series[family.name + suffix] = Series(labels | set(extra))
    return series


@pytest.fixture(scope="module")
def prometheus_config() -> dict[str, Any]:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    assert isinstance(config, dict) and config.get("scrape_configs"), f"{PROMETHEUS_CONFIG} has no scrape_configs"
    return config


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data = json.loads(GRAFANA_DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(data, dict) and data.get("panels"), f"{GRAFANA_DASHBOARD} has no panels"
    return data


@pytest.fixture
def exported(redis: Redis, tmp_path: Path) -> dict[str, Series]:
    """Every series name syncnotify serves on a /metrics endpoint, from the code itself: the ingress registry's
    metrics, the workers' module-level metrics (their Graph upkeep's too), and the gauges
    syncnotify.metrics.QueueCollector yields (collected from a real Redis and a migrated SQLite database, so
    nothing is guessed from source text)."""
    import prometheus_client

    import ingress.metrics
    import syncnotify.graph.upkeep
    import syncnotify.metrics
    import worker.metrics
    from migrations import upgrade
    from shared.schema import make_engine

    series = dict(PROMETHEUS_SERIES)
    # The ingress renders its own REGISTRY on /metrics; the workers' metrics are in the default registry, and
    # `syncnotify worker` serves the sum of every worker process's values of them.
    series.update(_wrapper_series(ingress.metrics, ingress.metrics.REGISTRY))
    series.update(_wrapper_series(worker.metrics, prometheus_client.REGISTRY))
    series.update(_wrapper_series(syncnotify.graph.upkeep, prometheus_client.REGISTRY))  # the workers' Graph upkeep

    engine = make_engine(f"sqlite:///{tmp_path / 'metrics.db'}")
    try:
        upgrade(engine)
        for family in syncnotify.metrics.QueueCollector(redis, engine).collect():
            values: dict[str, set[str]] = {}
            for sample in family.samples:
                for label, value in sample.labels.items():
                    values.setdefault(label, set()).add(value)
            for suffix, extra in SERIES_SUFFIXES[family.type].items():
                series[family.name + suffix] = Series(
                    frozenset(values) | set(extra),
                    {label: frozenset(v) for label, v in values.items()},
                    same_on_every_replica=True,
                )
    finally:
        engine.dispose()
    return series


def test_the_status_page_is_served_on_loopback_only(services: dict[str, dict[str, Any]]) -> None:
    admin = services["admin"]
    args = _cli_args(admin)
    assert _subcommand(_command(admin)) == ["admin"]
    # 0.0.0.0 inside the container, or the published port reaches nothing; 127.0.0.1 on the host.
    assert args.host == "0.0.0.0"
    assert _ports(admin) == [(LOOPBACK, str(args.port), str(args.port))], "publish it as 127.0.0.1:PORT:PORT"
    assert not admin.get("profiles"), "the status page belongs to the default profile"
    deps = _depends_on(admin)
    assert deps.get("migrate") == "service_completed_successfully"
    assert deps.get("redis") == "service_healthy"
    check = _healthcheck_text(admin)
    assert "curl" not in check and "wget" not in check, "the project image has neither curl nor wget"
    assert "python" in check and "urllib.request" in check and f"127.0.0.1:{args.port}/healthz" in check
    assert admin.get("restart") == "unless-stopped"


def test_the_status_page_counts_the_ingress_spool(services: dict[str, dict[str, Any]]) -> None:
    ingress, admin = services["ingress"], services["admin"]
    spool = str(_environment(ingress)["SYNCNOTIFY_SPOOL_DIR"])
    assert _environment(admin).get("SYNCNOTIFY_SPOOL_DIR") == spool
    ingress_volume = {target: source for source, target, kind in _volume_mounts(ingress) if kind == "volume"}
    admin_volume = {target: source for source, target, kind in _volume_mounts(admin) if kind == "volume"}
    assert admin_volume.get(spool) == ingress_volume[spool], "the page must read the ingress's own spool volume"
    assert spool in _read_only_targets(admin), "the status page only reads the spool: mount it :ro"


def test_monitoring_is_an_optional_profile(services: dict[str, dict[str, Any]]) -> None:
    for name in MONITORING_SERVICES:
        assert services[name].get("profiles") == [MONITORING_PROFILE], f"{name} belongs to the monitoring profile"
    profiled = {name for name, service in services.items() if service.get("profiles")}
    assert profiled == set(MONITORING_SERVICES), "only the monitoring services are optional"
    for name, service in services.items():
        if service.get("profiles"):
            continue
        for dep in _depends_on(service):
            assert not services[dep].get("profiles"), f"{name} (default profile) depends on optional {dep}"


def test_only_the_ingress_faces_the_network(services: dict[str, dict[str, Any]]) -> None:
    for name in LOOPBACK_ONLY:
        assert _ports(services[name]), f"{name} publishes no port"
    for name, service in services.items():
        if name == "ingress":
            continue
        for host_ip, published, target in _ports(service):
            assert host_ip == LOOPBACK, f"{name} publishes {published}:{target} on every address; bind {LOOPBACK}"


def test_every_file_mounted_from_the_repository_exists(services: dict[str, dict[str, Any]]) -> None:
    checked = 0
    for name, service in services.items():
        read_only = _read_only_targets(service)
        for source, target, kind in _volume_mounts(service):
            if kind != "bind":
                continue
            assert source and not source.startswith(("/", "~", "$")), f"{name}: {source} is outside the repository"
            assert (ROOT / source).exists(), f"{name}: {source} (mounted at {target}) is not in the repository"
            assert target in read_only, f"{name}: mount {source} read-only (:ro)"
            checked += 1
        build = service.get("build")
        if build:
            build = build if isinstance(build, dict) else {"context": build}
            dockerfile = ROOT / build.get("context", ".") / build.get("dockerfile", "Dockerfile")
            assert dockerfile.is_file(), f"{name}: no {dockerfile.relative_to(ROOT)}"
    assert checked, "no repository file is mounted anywhere: the check looks in the wrong place"


def test_monitoring_images_are_pinned(services: dict[str, dict[str, Any]]) -> None:
    for name in MONITORING_SERVICES:
        service = services[name]
        if service.get("build"):
            continue
        repository, _, tag = str(service["image"]).rpartition(":")
        assert repository and tag and "/" not in tag and tag != "latest", f"{name}: pin a version, not {tag!r}"


def test_prometheus_scrapes_the_ingress_and_every_worker_replica(
    prometheus_config: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    jobs = _scrape_jobs(prometheus_config)

    ingress_job = jobs["ingress"]
    ingress_port = _cli_args(services["ingress"]).port
    targets = [target for static in ingress_job.get("static_configs") or [] for target in static["targets"]]
    assert targets == [f"ingress:{ingress_port}"], "scrape the ingress service on the port its command serves"
    assert ingress_job.get("metrics_path", "/metrics") == "/metrics"

    worker = services["worker"]
    args = _cli_args(worker)
    assert args.metrics_port, "the workers' metrics are switched off (--metrics-port 0)"
    assert args.metrics_host in ("0.0.0.0", "::"), "metrics on loopback cannot be scraped from another container"
    worker_job = jobs["worker"]
    assert not worker_job.get("static_configs"), "a static target reaches one replica, not all of them"
    assert worker_job.get("metrics_path", "/metrics") == "/metrics"
    (discovery,) = worker_job["dns_sd_configs"]
    assert discovery["names"] == ["worker"], "Docker's DNS answers the service name with every replica"
    assert discovery.get("type") == "A", "Docker's DNS has A records for the replicas, no SRV records"
    assert int(discovery["port"]) == args.metrics_port
    assert int(worker["deploy"]["replicas"]) >= 2


def test_prometheus_reads_the_repository_config_and_keeps_its_data(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    prometheus = services["prometheus"]
    flags = dict(arg.split("=", 1) for arg in _command(prometheus) if arg.startswith("--") and "=" in arg)
    assert _repo_path_of(prometheus, flags["--config.file"]) == PROMETHEUS_CONFIG
    mounts = {target: (source, kind) for source, target, kind in _volume_mounts(prometheus)}
    source, kind = mounts[flags["--storage.tsdb.path"]]
    assert kind == "volume" and source in (compose.get("volumes") or {})
    assert _healthcheck_enabled(prometheus)


def test_grafana_is_provisioned_from_the_repository(
    services: dict[str, dict[str, Any]], prometheus_config: dict[str, Any]
) -> None:
    grafana = services["grafana"]
    assert _repo_path_of(grafana, "/etc/grafana/provisioning/datasources") == GRAFANA_DATASOURCES
    assert _repo_path_of(grafana, "/etc/grafana/provisioning/dashboards") == GRAFANA_DASHBOARD_PROVIDERS

    datasources = _provisioned_datasources()
    assert [ds["type"] for ds in datasources] == ["prometheus"]
    (datasource,) = datasources
    assert datasource.get("uid"), "the dashboard refers to its datasource by uid: fix it"
    assert datasource["url"] == "http://prometheus:9090" and "prometheus" in services
    interval = datasource.get("jsonData", {}).get("timeInterval")
    assert interval == prometheus_config["global"]["scrape_interval"], "$__rate_interval needs the scrape interval"

    providers = [p for doc in _yaml_documents(GRAFANA_DASHBOARD_PROVIDERS) for p in doc.get("providers") or []]
    assert [p["type"] for p in providers] == ["file"]
    (provider,) = providers
    assert provider.get("allowUiUpdates") is False, "the dashboard is kept in the repository, not in Grafana"
    assert _repo_path_of(grafana, provider["options"]["path"]) == GRAFANA_DASHBOARD.parent
    home = _environment(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert _repo_path_of(grafana, home) == GRAFANA_DASHBOARD


def test_grafana_refuses_to_start_without_a_real_admin_password(services: dict[str, dict[str, Any]]) -> None:
    grafana = services["grafana"]
    env = _environment(grafana)
    # Not ${…:?}: Compose would demand it for the default profile too (it interpolates before profiles).
    assert env["GF_SECURITY_ADMIN_PASSWORD"] == "${GRAFANA_ADMIN_PASSWORD:-}"
    assert str(env["GF_AUTH_ANONYMOUS_ENABLED"]).lower() == "false"
    assert str(env["GF_USERS_ALLOW_SIGN_UP"]).lower() == "false"
    for password, starts in (("", False), ("admin", False), ("c0rrect-horse", True)):
        result = _run_entrypoint(grafana, {"GF_SECURITY_ADMIN_PASSWORD": password})
        assert (result.returncode == 0 and "started" in result.stdout) == starts, (password, result)
        if not starts:
            assert "GRAFANA_ADMIN_PASSWORD" in result.stderr, "say which variable to set"


def test_rq_dashboard_watches_the_projects_queue_with_the_projects_rq(services: dict[str, dict[str, Any]]) -> None:
    dash = services["rq-dashboard"]
    env = _environment(dash)
    assert env["RQ_DASHBOARD_REDIS_URL"] == _environment(services["worker"])["SYNCNOTIFY_REDIS_URL"]
    # Its failed-job registry is the dead-letter queue: emptied with `syncnotify dlq purge`, not a click.
    assert str(env.get("RQ_DASHBOARD_DISABLE_DELETE")).lower() == "true"

    build = dash["build"] if isinstance(dash["build"], dict) else {"context": dash["build"]}
    dockerfile = (ROOT / build["context"] / build.get("dockerfile", "Dockerfile")).resolve()
    assert dockerfile == RQ_DASHBOARD_DOCKERFILE
    instructions = _dockerfile_instructions(dockerfile)
    installs = " ".join(args for keyword, args in instructions if keyword == "RUN" and "pip install" in args)
    pins = {name.lower(): version for name, version in re.findall(r"\b([A-Za-z0-9_.-]+)==([0-9][\w.]*)", installs)}
    assert "rq-dashboard" in pins
    pyproject = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))
    project = {Requirement(r).name.lower(): Requirement(r) for r in pyproject["project"]["dependencies"]}
    for name in ("rq", "redis"):  # what reads and writes the jobs in Redis
        assert name in pins, f"pin {name} in {RQ_DASHBOARD_DOCKERFILE.relative_to(ROOT)}"
        assert project[name].specifier.contains(Version(pins[name])), f"{name}=={pins[name]} is not {project[name]}"
    users = [args for keyword, args in instructions if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "rq-dashboard runs as root"

    argv = _command(dash)
    port = argv[argv.index("--port") + 1]
    assert argv[argv.index("--bind") + 1] == "0.0.0.0"
    assert _ports(dash) == [(LOOPBACK, port, port)]
    assert f"127.0.0.1:{port}/" in _healthcheck_text(dash)


def test_dashboard_is_provisionable(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "syncnotify"
    assert isinstance(dashboard.get("schemaVersion"), int) and dashboard["schemaVersion"] >= 36
    (datasource,) = _provisioned_datasources()
    ids = [panel.get("id") for panel in _panels(dashboard)]
    assert all(isinstance(i, int) for i in ids) and len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"] for v in (dashboard.get("templating") or {}).get("list") or []}
    charts = [panel for panel in _panels(dashboard) if panel.get("type") != "row"]
    assert charts
    for panel in charts:
        title = panel.get("title")
        assert title, f"panel {panel['id']} has no title"
        assert panel["datasource"] == {"type": "prometheus", "uid": datasource["uid"]}, title
        assert panel.get("targets"), f"{title} queries nothing"
        for target in panel["targets"]:
            assert target.get("datasource", panel["datasource"])["uid"] == datasource["uid"], title
            assert str(target.get("expr", "")).strip(), f"{title}: a target without a query"
            for name in re.findall(r"\$\{?(\w+)", target["expr"]):
                assert name in GRAFANA_BUILTIN_VARIABLES | variables, f"{title}: ${name} is not defined"
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= 24, title


def test_dashboard_queries_only_metrics_the_code_exports(
    dashboard: dict[str, Any], exported: dict[str, Series], prometheus_config: dict[str, Any]
) -> None:
    assert {"syncnotify_ingress_requests_total", "syncnotify_events_stored_total", "syncnotify_queue_depth"} <= set(
        exported
    ), "the exported metrics were not found: the check looks in the wrong place"
    jobs = set(_scrape_jobs(prometheus_config))
    problems = [
        f"panel {panel['title']!r}: {problem}"
        for panel, target in _targets(dashboard)
        for problem in _expression_problems(target["expr"], exported, jobs)
    ]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    "expr",
    [
        "sum(rate(syncnotify_events_stored[5m]))",  # the counter's family name, not its _total series
        "max(syncnotify_queue_size)",  # no such metric
        'sum(rate(syncnotify_ingress_requests_total{stauts="200"}[5m]))',  # a label it does not have
        "max by (states) (syncnotify_subscriptions)",  # grouping by a label nobody has
        'max(syncnotify_subscriptions{state="stael"})',  # a state that does not exist
        "sum(syncnotify_queue_depth)",  # counted once per worker replica
        'count(up{job="workers"})',  # not a scrape job
        '{__name__="syncnotify_queue_depth"}',  # a selector without a metric name
        "max(syncnotify_queue_depth",  # unbalanced
        "rate(syncnotify_gaps_total[$__rate])",  # not a Grafana interval
    ],
)
def test_the_query_check_really_rejects_mistakes(
    expr: str, exported: dict[str, Series], prometheus_config: dict[str, Any]
) -> None:
    """Guards the guard: a panel charting a metric (or label) that does not exist must fail."""
    assert _expression_problems(expr, exported, set(_scrape_jobs(prometheus_config))), f"{expr} passed"


ISSUE_ITEMS: dict[str, Callable[[Query], bool]] = {
    "acks/s": lambda q: _selects(q, "syncnotify_ingress_requests_total", status="200") and "rate" in q.calls,
    "ack latency": lambda q: (
        _selects(q, "syncnotify_ingress_enqueue_seconds_bucket") and "histogram_quantile" in q.calls
    ),
    "queue depth": lambda q: _selects(q, "syncnotify_queue_depth"),
    "events stored": lambda q: _selects(q, "syncnotify_events_stored_total"),
    "duplicates": lambda q: _selects(q, "syncnotify_duplicates_dropped_total"),
    "gaps": lambda q: _selects(q, "syncnotify_gaps_total"),
    "dead-lettered": lambda q: _selects(q, "syncnotify_dead_lettered_total"),
    "stale subscriptions": lambda q: _selects(q, "syncnotify_subscriptions", state="stale"),
}


@pytest.mark.parametrize("item", sorted(ISSUE_ITEMS))
def test_dashboard_shows_what_the_issue_asks_for(item: str, dashboard: dict[str, Any]) -> None:
    queries = [_parse_promql(target["expr"]) for _, target in _targets(dashboard)]
    assert any(ISSUE_ITEMS[item](query) for query in queries), f"no panel shows {item}"
