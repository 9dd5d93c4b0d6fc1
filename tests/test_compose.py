"""Static checks of the deployment files: compose.yaml, Dockerfile and .dockerignore.

compose.yaml is validated against the official Compose Specification JSON schema
(github.com/compose-spec/compose-spec, schema/compose-spec.json) as vendored by the PyPI package
``check-jsonschema`` (a dev dependency); it is read from the installed distribution, never fetched.
No Docker daemon is needed: these tests read the files and, for the CLI check, run ``syncnotify``'s
entry point with ``--help``.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import json
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
CLI_MODULE = ROOT / "worker" / "cli.py"

SCHEMA_DISTRIBUTION = "check-jsonschema"
SCHEMA_FILE = "check_jsonschema/builtin_schemas/vendor/compose-spec.json"
SCHEMA_CHECKSUM_FILE = "check_jsonschema/builtin_schemas/vendor/sha256/compose-spec.sha256"

PROJECT_SERVICES = ("migrate", "ingress", "worker")
ONE_SHOT = "no"
# ${NAME:?message}: Compose refuses to start when NAME is unset or empty.
REQUIRED_VARIABLE = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*:\?[^}]+\}$")
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
    schema = json.loads(raw)
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


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
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


@pytest.mark.skipif(not CLI_MODULE.exists(), reason="worker/cli.py (the syncnotify CLI) does not exist yet")
@pytest.mark.parametrize("argv", _cli_cases())
def test_every_command_is_a_syncnotify_subcommand_the_cli_knows(argv: list[str]) -> None:
    assert argv[0] == "syncnotify", f"{argv} does not run syncnotify"
    subcommand = _subcommand(argv)
    assert subcommand, f"{argv} names no subcommand"
    # Exactly what the installed `syncnotify` console script does (worker.cli:main with argv), so the
    # check holds whether or not worker/cli.py has an `if __name__ == "__main__"` guard.
    runner = "import sys; from worker.cli import main; sys.argv = sys.argv[1:]; sys.exit(main())"
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
                assert REQUIRED_VARIABLE.match(text), f"{owner}: {key} must be ${{VAR:?…}}, not {text!r}"
                checked += 1
            match = URL_PASSWORD.match(text)
            if match:
                password = match["password"]
                assert REQUIRED_VARIABLE.match(password), f"{owner}: {key} embeds a literal password"
                checked += 1
    assert checked, "found no password setting at all: the check is looking in the wrong place"
    # A secret must never sit in the file as a default value either: ${VAR:-secret}.
    assert not re.search(r"\$\{[A-Z_]*(PASSWORD|SECRET|TOKEN)[A-Z_]*:?-", COMPOSE_FILE.read_text(encoding="utf-8"))


def test_migrations_run_once_before_ingress_and_workers(services: dict[str, dict[str, Any]]) -> None:
    migrate = services["migrate"]
    assert migrate.get("restart") == ONE_SHOT
    assert _subcommand(_command(migrate)) == ["db", "upgrade"]
    assert _depends_on(migrate).get("postgres") == "service_healthy"
    for name in ("ingress", "worker"):
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
