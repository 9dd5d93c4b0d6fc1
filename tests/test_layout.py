"""The layout's promises: names resolve, imports point one way, bench stays out, the migration matches the tables."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from rq.utils import import_attribute
from sqlalchemy import Engine

from shared.queues import FAILURE_CALLBACK, STORE_JOB
from shared.schema import metadata
from worker.jobs import on_failure, store_payloads

ROOT = Path(__file__).parent.parent
PACKAGES = ["shared", "ingress", "worker", "syncnotify", "migrations", "bench"]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def test_job_names_resolve_to_the_worker_functions() -> None:
    # Written into every queued job and dead letter (kept 30 days): these exact strings must keep working.
    assert STORE_JOB == "worker.jobs.store_payloads"
    assert FAILURE_CALLBACK == "worker.jobs.on_failure"
    assert import_attribute(STORE_JOB) is store_payloads
    assert import_attribute(FAILURE_CALLBACK) is on_failure


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--config", str(root / "pyproject.toml")],
        capture_output=True,
        text=True,
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
    )


def test_the_import_contract_holds_and_each_crossing_breaks_it(tmp_path: Path) -> None:
    kept = _lint_imports(ROOT)
    assert kept.returncode == 0, kept.stdout + kept.stderr

    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    crossings = {
        "ingress/app.py": "import worker.jobs",
        "worker/jobs.py": "import syncnotify.dlq",
        "shared/settings.py": "import ingress.enqueue",
        "syncnotify/cli/__init__.py": "import bench.run",
        "worker/parse.py": "import sqlalchemy",
        "ingress/soap.py": "import sqlalchemy",
    }
    for path, line in crossings.items():
        with (tmp_path / path).open("a", encoding="utf-8") as module:
            module.write(f"\n{line}  # noqa\n")
    broken = _lint_imports(tmp_path)
    assert broken.returncode == 1, broken.stdout + broken.stderr
    for path, line in crossings.items():
        importer = path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        imported = line.removeprefix("import ")
        assert f"{importer} -> {imported}" in broken.stdout, f"{importer} -> {imported} not reported"


def test_no_syncnotify_module_loads_benchmark_code() -> None:
    code = (
        "import importlib, pkgutil, sys\n"
        "for top in ('syncnotify', 'ingress', 'worker', 'shared', 'migrations'):\n"
        "    package = importlib.import_module(top)\n"
        "    for info in pkgutil.walk_packages(package.__path__, top + '.'):\n"
        "        if info.name not in ('syncnotify.__main__', 'migrations.env'):\n"
        "            importlib.import_module(info.name)\n"
        "print(len(sys.modules), sorted(m for m in sys.modules if m == 'bench' or m.startswith('bench.')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    count, loaded = result.stdout.split(" ", 1)
    assert int(count) > 100  # the modules were really imported
    assert loaded.strip() == "[]"


def test_the_wheel_ships_the_product_without_bench(tmp_path: Path) -> None:
    source = tmp_path / "source"  # setuptools builds in the source tree: not in the checkout
    for package in PACKAGES:
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheels), str(source)],
        check=True,
        capture_output=True,
    )
    (wheel,) = wheels.glob("syncnotify-*.whl")
    tops = {name.split("/", 1)[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {"shared", "ingress", "worker", "syncnotify", "migrations"} <= tops
    assert "bench" not in tops and "tests" not in tops


def test_migration_creates_exactly_the_tables_of_the_schema(engine: Engine) -> None:
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []
